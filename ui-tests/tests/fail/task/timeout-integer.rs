// `timeout` is a duration string with a unit; a bare integer is refused with the fix spelled out
use procession::prelude::*;

#[task(timeout = 30)]
fn slow() {}

fn main() {}
