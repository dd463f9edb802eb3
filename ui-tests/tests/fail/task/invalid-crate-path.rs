// `crate` names the path procession is reachable at, so it must parse as a path
use procession::prelude::*;

#[task(crate = "not a path")]
fn fetch() {}

fn main() {}
