// the parts of a compound duration go from the largest unit to the smallest, each once
use procession::prelude::*;

#[task(backoff = "exponential(30s1m, 5m)")]
fn flaky() {}

fn main() {}
