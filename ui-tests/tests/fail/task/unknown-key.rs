// `retrys` is not a `#[task]` argument; the message lists the valid ones and suggests
// `retries`, and the task's uses below still type-check (one mistake, one error)
use procession::prelude::*;

#[task(retrys = 3)]
fn fetch(source: String) -> Vec<u32> {
    vec![source.len() as u32]
}

#[task]
fn total(xs: Vec<u32>) -> u32 {
    xs.iter().sum()
}

#[process]
fn nightly(p: &mut Builder) {
    let xs = p.task(Fetch::new("eu"));
    p.task(Total::new(xs));
}

fn main() {}
