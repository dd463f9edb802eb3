// a process using every builder block: sequential, concurrent, each, transform,
// sub_process, after and option, plus `schedule`, `mode`, `name` and `hooks`
use procession::prelude::*;

#[derive(Default)]
struct Quiet;

impl procession::Hooks for Quiet {}

#[task]
fn fetch(source: String) -> Vec<u32> {
    vec![source.len() as u32]
}

#[task]
fn merge(parts: Vec<Vec<u32>>) -> Vec<u32> {
    parts.concat()
}

#[task]
fn check(x: u32) -> bool {
    x > 0
}

#[task]
fn notify(to: String) {
    let _ = to;
}

#[process(mode = "concurrent")]
fn validate(p: &mut Builder, x: u32) {
    p.task(Check::new(x));
}

#[process(
    name = "nightly_report",
    description = "fetches, merges and notifies",
    schedule = "30 2 * * MON-FRI",
    mode = "sequential",
    hooks = Quiet,
)]
fn nightly(p: &mut Builder, sources: Vec<String>, recipients: Vec<String>, threshold: u32) {
    let parts = p.concurrent(|p| {
        sources
            .iter()
            .map(|s| p.task(Fetch::new(s.clone())))
            .collect::<Vec<_>>()
    });
    let merged = p.sequential(|p| p.task(Merge::new(parts)));
    p.transform(
        threshold,
        |t| t * 2,
        |p, doubled| {
            p.task(Check::new(doubled));
        },
    );
    p.sub_process(Validate { x: threshold });
    p.after(&[merged.node()], |p| {
        p.each(recipients, |p, to| p.task(Notify::new(to)));
    });
    if p.option::<bool>("debug").unwrap_or(false) {
        p.task(Check::new(0));
    }
}

#[process(schedule = "@daily")]
fn daily(p: &mut Builder) {
    p.task(Check::new(1));
}

fn main() {
    let g = Graph::of(Nightly {
        sources: vec!["eu".into(), "us".into()],
        recipients: vec!["ops".into()],
        threshold: 3,
    })
    .unwrap();
    assert_eq!(g.name(), "nightly_report");
    assert_eq!(g.len(), 6);
    assert_eq!(
        <Nightly as Process>::META.schedule,
        Some("30 2 * * MON-FRI")
    );
    assert_eq!(Graph::of(Daily {}).unwrap().len(), 1);
}
