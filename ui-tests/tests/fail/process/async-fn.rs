// a process function only builds the graph; the async work belongs in `#[task]` functions
use procession::prelude::*;

#[process]
async fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
