// WF-95: a step of 0 never advances
use procession::prelude::*;

#[process(schedule = "*/0 * * * *")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
