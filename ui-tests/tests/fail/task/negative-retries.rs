// WF-6, PROC-61: `retries` counts extra attempts, so it cannot be negative
use procession::prelude::*;

#[task(retries = -1)]
fn flaky() {}

fn main() {}
