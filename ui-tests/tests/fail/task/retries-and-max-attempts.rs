// WF-8: `retries` and `max_attempts` together are refused, even when they agree
use procession::prelude::*;

#[task(retries = 1, max_attempts = 2)]
fn flaky() {}

fn main() {}
