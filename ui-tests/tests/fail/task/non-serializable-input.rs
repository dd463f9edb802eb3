// task inputs are stored between tasks, so their type must implement `Serialize` and `Deserialize`: one error, naming the parameter
use procession::prelude::*;

struct Config {
    verbose: bool,
}

#[task]
fn configure(config: Config) -> bool {
    config.verbose
}

fn main() {}
