// `shedule` is not a `#[process]` argument; the message lists the valid ones and suggests
// `schedule`, and the process type is still usable below (one mistake, one error)
use procession::prelude::*;

#[process(shedule = "0 2 * * *")]
fn nightly(p: &mut Builder, sources: Vec<String>) {
    let _ = (p, sources);
}

#[process]
fn weekly(p: &mut Builder) {
    p.sub_process(Nightly {
        sources: vec!["eu".into()],
    });
}

fn main() {
    let _ = Graph::of(Nightly {
        sources: Vec::new(),
    });
}
