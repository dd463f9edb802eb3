// every part of a compound duration needs a unit: `"1m30"` could end in seconds or milliseconds
use procession::prelude::*;

#[task(timeout = "1m30")]
fn slow() {}

fn main() {}
