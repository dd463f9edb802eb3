// The overlap policies are `skip`, `queue_one` and `allow`.
use procession::prelude::*;

#[process(schedule = "*/5 * * * *", overlap = "queue")]
fn poll(p: &mut Builder) {
    let _ = p;
}

fn main() {}
