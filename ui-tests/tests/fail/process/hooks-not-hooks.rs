// `hooks = Type` takes a type implementing `procession::Hooks`; `String` does not
use procession::prelude::*;

#[process(hooks = String)]
fn audited(p: &mut Builder) {
    let _ = p;
}

fn main() {}
