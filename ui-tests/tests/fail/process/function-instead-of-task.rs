// `p.task` takes the task value `Fetch::new()`, not the `#[task]` function `fetch`
use procession::prelude::*;

#[task]
fn fetch() -> u32 {
    1
}

#[process]
fn daily(p: &mut Builder) {
    p.task(fetch);
}

fn main() {}
