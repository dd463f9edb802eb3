// a process is found by its stable name, so `name` cannot be empty
use procession::prelude::*;

#[process(name = "")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
