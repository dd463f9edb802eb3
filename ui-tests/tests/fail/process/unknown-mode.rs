// a process runs its top level `sequential` or `concurrent`; `parallel` is not a mode
use procession::prelude::*;

#[process(mode = "parallel")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
