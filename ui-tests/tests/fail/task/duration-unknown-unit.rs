// durations take the units `ms`, `s`, `m` and `h`; `days` is not one of them
use procession::prelude::*;

#[task(timeout = "5 days")]
fn slow() {}

fn main() {}
