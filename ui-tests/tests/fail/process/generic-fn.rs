// a process's parameters are stored with each run, so it cannot be generic over them
use procession::prelude::*;

#[process]
fn nightly<T>(p: &mut Builder, value: T) {
    let _ = (p, value);
}

fn main() {}
