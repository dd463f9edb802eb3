// a day-of-week range runs forwards: `5-1` (friday to monday) is reversed
use procession::prelude::*;

#[process(schedule = "0 9 * * 5-1")]
fn weekly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
