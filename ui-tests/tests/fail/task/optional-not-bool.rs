// `optional` is a flag (`optional` or `optional = true`), not a string
use procession::prelude::*;

#[task(optional = "yes")]
fn notify() {}

fn main() {}
