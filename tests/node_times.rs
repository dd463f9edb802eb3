//! A task's reported time covers its own work and no other task's: in a chain, a worker
//! goes from one node straight to the next and takes the first one's end as the second
//! one's start (one clock read per node); a node after a wait is timed the same way.

// Some tasks are `async` only to run on a worker (their work blocks it, as a chain's
// nodes would run back to back there).
#![allow(clippy::unused_async)]

mod common;

use std::time::Duration;

use common::rt;
use procession::prelude::*;

const WORK: Duration = Duration::from_millis(20);

/// Works 20 ms without waiting: the worker runs it in one poll, and then its dependent.
#[task]
async fn busy(prev: u32) -> u32 {
    std::thread::sleep(WORK);
    prev + 1
}

/// Waits 20 ms: the worker parks while it waits.
#[task]
async fn nap(prev: u32) -> u32 {
    tokio::time::sleep(WORK).await;
    prev + 1
}

fn chain(g: &mut TaskGraph) {
    let first = g.add("a", Busy::new(0)).unwrap();
    let second = g.add("b", Busy::new(first)).unwrap();
    let waits = g.add("c", Nap::new(second)).unwrap();
    let after = g.add("d", Busy::new(waits)).unwrap();
    g.add("e", Busy::new(after)).unwrap();
}

#[process]
fn timed_chain(p: &mut Builder) {
    let first = p.task(Busy::new(0));
    let second = p.task(Busy::new(first));
    let waits = p.task(Nap::new(second));
    let after = p.task(Busy::new(waits));
    p.task(Busy::new(after));
}

/// Every node's time covers its 20 ms of work, and the times do not overlap: the nodes
/// of a chain run one after another, so their times add up to no more than the run's.
fn check(report: &RunReport) {
    assert!(report.is_success(), "{report:?}");
    let mut sum = Duration::ZERO;
    for t in &report.tasks {
        assert!(t.elapsed() >= WORK, "{}: {:?}", t.id, t.elapsed());
        sum += t.elapsed();
    }
    assert!(
        sum <= report.elapsed,
        "the nodes' times overlap: {sum:?} in a run of {:?}",
        report.elapsed
    );
}

// A run without records (`run_graph`): the chain runs in one worker's task.
#[tokio::test]
async fn chain_times_cover_each_node_once() {
    let mut g = TaskGraph::new();
    chain(&mut g);
    let report = rt().await.run_graph(g).await.unwrap();
    assert_eq!(report.tasks.len(), 5);
    check(&report);
}

// A recorded run: the same times in the report.
#[tokio::test]
async fn recorded_chain_times_cover_each_node_once() {
    let report = rt().await.run(TimedChain {}).await.unwrap();
    assert_eq!(report.tasks.len(), 5);
    check(&report);
}
