// Data-flow top level, ids, typed keys, optional tasks and partial fan-in compile as
// documented.
use procession::prelude::*;

const TOTAL: TaskKey<u32> = TaskKey::new("total");

#[task]
fn fetch(source: String) -> u32 {
    source.len() as u32
}

#[task(optional)]
fn notify(_total: u32) {}

#[task(on_dep_failure = "run_anyway")]
fn aggregate(parts: Vec<Option<u32>>, first: Option<u32>, label: String) -> u32 {
    let _ = label;
    parts.into_iter().flatten().sum::<u32>() + first.unwrap_or(0)
}

#[process(mode = "dataflow")]
fn daily(p: &mut Builder, sources: Vec<String>) {
    let parts: Vec<Out<u32>> = sources.iter().map(|s| p.task(Fetch::new(s.clone()))).collect();
    let first = parts[0];
    let total = p.task(Aggregate::new(parts, first, "label").id(TOTAL));
    p.task(Notify::new(total).id("notify").description("tells the team"));
    p.task(Notify::new(&total).optional());
}

#[process(mode = "concurrent")]
fn synonym(_p: &mut Builder) {}

#[process(mode = "sequential")]
fn in_order(_p: &mut Builder) {}

fn main() {
    let g = Graph::of(Daily { sources: vec!["eu".into()] }).unwrap();
    assert_eq!(g.node_ids(), vec!["fetch", "total", "notify", "notify#1"]);
    assert_eq!(<Synonym as Process>::META.mode, Mode::Dataflow);
    assert_eq!(<InOrder as Process>::META.mode, Mode::Sequential);
    let _: fn(&RunReport) -> Option<u32> = |r| r.get(&TOTAL);
}
