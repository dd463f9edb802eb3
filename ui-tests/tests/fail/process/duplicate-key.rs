// each `#[process]` argument may be given once; the error points at the repeated `mode`
use procession::prelude::*;

#[process(mode = "sequential", mode = "concurrent")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
