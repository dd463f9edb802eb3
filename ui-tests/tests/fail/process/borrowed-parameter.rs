// process parameters are stored with each run, so they are owned: take `String`, not `&str`
use procession::prelude::*;

#[process]
fn nightly(p: &mut Builder, source: &str) {
    let _ = (p, source);
}

fn main() {}
