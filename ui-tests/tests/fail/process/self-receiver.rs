// a process is a free function taking the builder first, not a method
use procession::prelude::*;

struct Jobs;

impl Jobs {
    #[process]
    fn nightly(&self) {}
}

fn main() {}
