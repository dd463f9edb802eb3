// task inputs must be owned because they are stored between tasks: take `String`, not `&str`
use procession::prelude::*;

#[task]
fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
