// a backoff with arguments must close its parenthesis
use procession::prelude::*;

#[task(retries = 3, backoff = "linear(1s")]
fn flaky() {}

fn main() {}
