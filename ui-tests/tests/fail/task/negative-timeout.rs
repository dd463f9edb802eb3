// PROC-51, WF-53: a timeout cannot be negative
use procession::prelude::*;

#[task(timeout = "-1s")]
fn slow() {}

fn main() {}
