// `tz` says how to read the schedule's fields; without a schedule it means nothing.
use procession::prelude::*;

#[process(tz = "Europe/Paris")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
