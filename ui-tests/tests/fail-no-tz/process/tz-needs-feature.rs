// Named time zones need the `tz` feature (the zone database is not compiled in without it).
use procession::prelude::*;

#[process(schedule = "0 2 * * *", tz = "Europe/Paris")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
