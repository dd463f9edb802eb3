// a `run_anyway` fan-in runs when some of its inputs failed, so it cannot gather them as
// a plain `Vec<u32>`: the parameter must be `Vec<Option<u32>>`
use procession::prelude::*;

#[task]
fn fetch(source: String) -> u32 {
    source.len() as u32
}

#[task(on_dep_failure = "run_anyway")]
fn aggregate(parts: Vec<u32>) -> u32 {
    parts.iter().sum()
}

#[process]
fn daily(p: &mut Builder) {
    let eu = p.task(Fetch::new("eu"));
    let us = p.task(Fetch::new("us"));
    p.task(Aggregate::new(vec![eu, us]));
}

fn main() {}
