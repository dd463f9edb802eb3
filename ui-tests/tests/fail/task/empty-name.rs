// a task's stable name names its nodes and stored results, so it cannot be empty
use procession::prelude::*;

#[task(name = "")]
fn load() {}

fn main() {}
