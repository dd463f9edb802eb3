// a task's output is stored, so it needs a concrete type, not `impl Trait`
use procession::prelude::*;

#[task]
fn numbers() -> impl Iterator<Item = u32> {
    0..3
}

fn main() {}
