// `retries` is capped at 1000: a larger count is almost certainly a mistake
use procession::prelude::*;

#[task(retries = 5000)]
fn flaky() {}

fn main() {}
