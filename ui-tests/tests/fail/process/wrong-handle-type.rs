// inside a process body, the output of `count` (`usize`) cannot feed `greet`'s `String` input
use procession::prelude::*;

#[task]
fn count(names: Vec<String>) -> usize {
    names.len()
}

#[task]
fn greet(name: String) -> String {
    format!("hello {name}")
}

#[process]
fn welcome(p: &mut Builder, names: Vec<String>) {
    let n = p.task(Count::new(names));
    p.task(Greet::new(n));
}

fn main() {}
