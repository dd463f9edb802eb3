// `#[task]` turns a function into a task; it cannot be put on a const
use procession::prelude::*;

#[task]
const LIMIT: u32 = 10;

fn main() {}
