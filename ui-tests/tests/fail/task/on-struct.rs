// `#[task]` turns a function into a task; it cannot be put on a struct
use procession::prelude::*;

#[task]
struct Fetch {
    url: String,
}

fn main() {}
