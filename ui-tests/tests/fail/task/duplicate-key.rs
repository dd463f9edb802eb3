// each `#[task]` argument may be given once; the error points at the repeated `timeout`
use procession::prelude::*;

#[task(timeout = "30s", retries = 2, timeout = "1m")]
fn slow() {}

fn main() {}
