// `crate = "..."` lets a crate that re-exports procession use the macros through its own path
mod reexport {
    pub use procession;
}

use procession::prelude::*;

#[task(crate = "reexport::procession")]
fn one() -> u32 {
    1
}

#[process(crate = "reexport::procession")]
fn ones(p: &mut Builder) {
    p.task(One::new());
}

fn main() {
    assert_eq!(Graph::of(Ones {}).unwrap().len(), 1);
}
