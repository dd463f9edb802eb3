// `on_dep_failure` is one of `fail`, `skip`, `run_anyway`; `ignore` is not
use procession::prelude::*;

#[task(on_dep_failure = "ignore")]
fn cleanup() {}

fn main() {}
