// `exponentail` is not a backoff kind; the message suggests `exponential`
use procession::prelude::*;

#[task(retries = 3, backoff = "exponentail(100ms, 5s)")]
fn flaky() {}

fn main() {}
