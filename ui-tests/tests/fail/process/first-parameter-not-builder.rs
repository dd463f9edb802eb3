// the builder comes first; a process whose first parameter is a value has no builder
use procession::prelude::*;

#[process]
fn nightly(day: u32) {
    let _ = day;
}

fn main() {}
