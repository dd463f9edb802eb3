// PROC-52: a duration needs a unit; `"30"` could be seconds or milliseconds
use procession::prelude::*;

#[task(timeout = "30")]
fn slow() {}

fn main() {}
