// every `#[task]` argument is `key = value`; a bare key is a syntax error
use procession::prelude::*;

#[task(retries)]
fn fetch() {}

fn main() {}
