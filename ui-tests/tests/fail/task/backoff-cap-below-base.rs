// the cap of a backoff is the longest delay, so it cannot be shorter than the base delay
use procession::prelude::*;

#[task(retries = 3, backoff = "exponential(5s, 100ms)")]
fn flaky() {}

fn main() {}
