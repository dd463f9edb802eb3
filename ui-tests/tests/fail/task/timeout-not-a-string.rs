// `timeout` is a duration string with a unit, not an expression
use procession::prelude::*;

#[task(timeout = 30 * 1000)]
fn fetch() {}

fn main() {}
