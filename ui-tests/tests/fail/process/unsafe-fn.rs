// the runtime calls the process function without an `unsafe` block
use procession::prelude::*;

#[process]
unsafe fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
