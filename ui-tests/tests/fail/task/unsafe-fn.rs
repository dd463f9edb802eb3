// the runtime calls tasks without an `unsafe` block, so a task cannot be an `unsafe fn`
use procession::prelude::*;

#[task]
unsafe fn poke(addr: usize) -> usize {
    addr
}

fn main() {}
