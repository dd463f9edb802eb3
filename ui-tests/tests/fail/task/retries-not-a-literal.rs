// `retries` is read at compile time, so it must be an integer literal, not a constant
use procession::prelude::*;

const RETRIES: u32 = 3;

#[task(retries = RETRIES)]
fn fetch() {}

fn main() {}
