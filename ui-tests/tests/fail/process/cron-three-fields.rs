// WF-93: a cron schedule has 5 fields (minute hour day-of-month month day-of-week)
use procession::prelude::*;

#[process(schedule = "* * *")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
