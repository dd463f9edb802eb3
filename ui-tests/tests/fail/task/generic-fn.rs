// a task's inputs and output are stored, so a task cannot be generic over them
use procession::prelude::*;

#[task]
fn identity<T: serde::Serialize>(value: T) -> T {
    value
}

fn main() {}
