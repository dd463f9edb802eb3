// `overlap` says what a fire of the schedule does while a run is active; without a
// schedule it means nothing.
use procession::prelude::*;

#[process(overlap = "queue_one")]
fn poll(p: &mut Builder) {
    let _ = p;
}

fn main() {}
