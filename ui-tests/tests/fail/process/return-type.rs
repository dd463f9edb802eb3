// a process function adds tasks to the builder and returns nothing
use procession::prelude::*;

#[task]
fn two() -> u32 {
    2
}

#[process]
fn nightly(p: &mut Builder) -> Out<u32> {
    p.task(Two::new())
}

fn main() {}
