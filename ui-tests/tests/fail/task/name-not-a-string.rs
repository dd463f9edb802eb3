// `name` is the stable name stored with each run, so it must be a string literal
use procession::prelude::*;

#[task(name = 5)]
fn fetch() {}

fn main() {}
