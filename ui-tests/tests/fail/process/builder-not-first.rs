// the builder comes first; the other parameters become the fields of the process struct
use procession::prelude::*;

#[process]
fn nightly(sources: Vec<String>, p: &mut Builder) {
    let _ = (sources, p);
}

fn main() {}
