// a task's output is stored for the tasks that read it, so it is owned: return `String`, not `&str`
use procession::prelude::*;

#[task]
fn greeting() -> &'static str {
    "hello"
}

fn main() {}
