// the runtime calls a task as a Rust function, so it cannot have an `extern` ABI
use procession::prelude::*;

#[task]
extern "C" fn fetch() {}

fn main() {}
