// A time zone must be an IANA name: `Europe/Pariss` is a typo.
use procession::prelude::*;

#[process(schedule = "0 2 * * *", tz = "Europe/Pariss")]
fn nightly(p: &mut Builder) {
    let _ = p;
}

fn main() {}
