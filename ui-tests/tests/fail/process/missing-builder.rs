// a process adds its tasks to a builder, so its function takes `&mut Builder` first
use procession::prelude::*;

#[process]
fn nightly() {}

fn main() {}
