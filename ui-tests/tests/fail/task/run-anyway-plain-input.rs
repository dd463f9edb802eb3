// a `run_anyway` task runs when the task it reads from failed, so it cannot take that
// task's output as a plain `u32`: the parameter must be `Option<u32>`
use procession::prelude::*;

#[task]
fn fetch() -> u32 {
    1
}

#[task(on_dep_failure = "run_anyway")]
fn report(total: u32) -> String {
    format!("total {total}")
}

#[process]
fn daily(p: &mut Builder) {
    let total = p.task(Fetch::new());
    p.task(Report::new(total));
}

fn main() {}
