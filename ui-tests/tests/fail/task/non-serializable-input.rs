// task inputs are stored between tasks, so their type must implement `Serialize` and `Deserialize`
use procession::prelude::*;

struct Config {
    verbose: bool,
}

#[task]
fn configure(config: Config) -> bool {
    config.verbose
}

fn main() {}
