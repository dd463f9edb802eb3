// generated code names its locals `__procession_*`, so an input cannot use that prefix
use procession::prelude::*;

#[task]
fn fetch(__procession_url: String) -> String {
    __procession_url
}

fn main() {}
