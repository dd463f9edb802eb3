// `#[process]` turns a function taking `&mut Builder` into a process; it cannot be put on a struct
use procession::prelude::*;

#[process]
struct Nightly {
    sources: Vec<String>,
}

fn main() {}
