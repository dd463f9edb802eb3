// a process function takes exactly one builder
use procession::prelude::*;

#[process]
fn nightly(p: &mut Builder, q: &mut Builder) {
    let _ = (p, q);
}

fn main() {}
