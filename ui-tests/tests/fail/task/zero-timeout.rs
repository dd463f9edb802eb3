// PROC-50, WF-53: a timeout of zero would fail every attempt; leave `timeout` out for no limit
use procession::prelude::*;

#[task(timeout = "0s")]
fn slow() {}

fn main() {}
