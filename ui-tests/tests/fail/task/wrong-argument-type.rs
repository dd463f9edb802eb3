// a task constructor takes each input as its declared type (or an `Out` of it): `&str` is not a `u32`
use procession::prelude::*;

#[task]
fn square(x: u32) -> u32 {
    x * x
}

#[process]
fn squares(p: &mut Builder) {
    p.task(Square::new("three"));
}

fn main() {}
