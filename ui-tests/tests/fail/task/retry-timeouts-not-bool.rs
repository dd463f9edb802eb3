// `retry_timeouts` is a switch: `true` or `false`, not a string
use procession::prelude::*;

#[task(retries = 2, retry_timeouts = "no")]
fn fetch() {}

fn main() {}
