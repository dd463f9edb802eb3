// the constructor takes one argument per task input: `double` has one, two are given
use procession::prelude::*;

#[task]
fn double(x: u32) -> u32 {
    x * 2
}

#[process]
fn doubles(p: &mut Builder) {
    p.task(Double::new(1, 2));
}

fn main() {}
