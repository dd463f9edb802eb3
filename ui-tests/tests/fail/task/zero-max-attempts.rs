// a task runs at least once, so `max_attempts` starts at 1
use procession::prelude::*;

#[task(max_attempts = 0)]
fn flaky() {}

fn main() {}
