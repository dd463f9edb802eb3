// a task input that cannot be stored is reported once, by name, also when the parameter
// shares its name with a module in its type
use procession::prelude::*;

mod config {
    pub struct Config {
        pub verbose: bool,
    }
}

#[task]
fn configure(config: config::Config) -> bool {
    config.verbose
}

fn main() {}
