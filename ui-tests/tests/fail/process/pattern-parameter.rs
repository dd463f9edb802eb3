// process parameters become named fields, so a pattern parameter is refused
use procession::prelude::*;

#[process]
fn nightly(p: &mut Builder, (from, to): (u32, u32)) {
    let _ = (p, from, to);
}

fn main() {}
