// process parameters are stored with each run, so they must implement `Serialize` and `Deserialize`
use procession::prelude::*;

struct Settings {
    verbose: bool,
}

#[process]
fn nightly(p: &mut Builder, settings: Settings) {
    let _ = (p, settings.verbose);
}

fn main() {}
