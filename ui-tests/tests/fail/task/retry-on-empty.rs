// an empty `retry_on` would retry nothing; leave the key out to retry every error
use procession::prelude::*;

#[task(retries = 2, retry_on = [])]
fn fetch() {}

fn main() {}
