// `hooks = Type` builds the hooks with `Default::default()`, so the type must implement `Default`
use procession::prelude::*;

struct Audit {
    sink: String,
}

impl procession::Hooks for Audit {}

#[process(hooks = Audit)]
fn audited(p: &mut Builder) {
    let _ = p;
}

fn main() {
    let _ = Audit {
        sink: String::new(),
    }
    .sink;
}
