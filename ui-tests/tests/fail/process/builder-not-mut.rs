// adding tasks changes the builder, so it is taken as `&mut Builder`
use procession::prelude::*;

#[process]
fn nightly(p: &Builder) {
    let _ = p;
}

fn main() {}
