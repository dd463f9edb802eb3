// a task's inputs are stored, so they cannot borrow: no lifetime parameters
use procession::prelude::*;

#[task]
fn fetch<'a>() -> u32 {
    1
}

fn main() {}
