// an input is stored between tasks, so it needs a concrete type, not `impl Trait`
use procession::prelude::*;

#[task]
fn greet(name: impl Into<String>) -> String {
    name.into()
}

fn main() {}
