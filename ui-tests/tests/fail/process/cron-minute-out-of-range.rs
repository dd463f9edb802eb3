// WF-94: minutes run from 0 to 59
use procession::prelude::*;

#[process(schedule = "60 * * * *")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
