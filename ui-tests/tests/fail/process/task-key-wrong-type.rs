// a `TaskKey<String>` names a task returning `String`; `count` returns `usize`
use procession::prelude::*;

const LABEL: TaskKey<String> = TaskKey::new("label");

#[task]
fn count(names: Vec<String>) -> usize {
    names.len()
}

#[process]
fn census(p: &mut Builder, names: Vec<String>) {
    p.task(Count::new(names).id(LABEL));
}

fn main() {}
