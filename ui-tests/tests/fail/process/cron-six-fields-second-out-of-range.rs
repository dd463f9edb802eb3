// Six fields put seconds first (0-59): `60` is no second.
use procession::prelude::*;

#[process(schedule = "60 0 2 * * *")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
