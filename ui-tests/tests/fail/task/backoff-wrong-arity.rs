// a fixed backoff takes one delay; a second duration is a mistake, not a cap
use procession::prelude::*;

#[task(retries = 2, backoff = "fixed(1s, 5s)")]
fn fetch() {}

fn main() {}
