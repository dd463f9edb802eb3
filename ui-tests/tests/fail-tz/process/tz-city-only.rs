// IANA names carry their region: `Paris` alone is `Europe/Paris`.
use procession::prelude::*;

#[process(schedule = "0 2 * * *", tz = "Paris")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
