// the constructor takes one argument per task input: `add` has two, only one is given
use procession::prelude::*;

#[task]
fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[process]
fn sums(p: &mut Builder) {
    p.task(Add::new(1));
}

fn main() {}
