//! Every task of a graph is dropped exactly once, whatever happens to it: it succeeds,
//! fails, retries, panics, is abandoned after the cancellation grace period, is never run
//! (its dependency failed, its run resumed after it had succeeded, its graph was dropped
//! or never built), or belongs to a [`TaskGraph`] (removed before the build, remapped).
//! Tasks live in their graph's arena and are dropped in place (issue 17): a missed or a
//! doubled drop is counted by the tasks' arguments (see `common/drops.rs`), half of them
//! small, half carrying 320 bytes.

#[path = "common/drops.rs"]
mod drops;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use procession::prelude::*;
use procession::Launch;

use drops::{all_dropped_once, all_dropped_once_now, Big, Counted};

#[task]
fn small(c: Counted, x: u64) -> u64 {
    drop(c);
    x
}

#[task]
#[allow(clippy::unused_async)] // async on purpose: its future lives in the task
async fn heavy(c: Big, x: u64) -> u64 {
    x + c.seven() - 7
}

#[task]
fn sum(c: Counted, xs: Vec<u64>) -> u64 {
    drop(c);
    xs.iter().sum()
}

#[task]
fn fails(c: Big) -> Result<u64, String> {
    Err(format!("refused ({})", c.seven()))
}

#[task]
fn panics(c: Big) -> u64 {
    assert!(c.seven() == 0, "boom");
    1
}

#[task(retries = 2, backoff = "fixed(1ms)")]
fn flaky(ctx: &Ctx, c: Big) -> Result<u64, String> {
    if ctx.attempt() < 3 {
        return Err(format!("not yet ({})", c.seven()));
    }
    Ok(c.seven())
}

static STUCK_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[task]
async fn stuck(c: Big) -> u64 {
    STUCK_STARTED.notify_one();
    std::future::pending::<()>().await;
    c.seven()
}

/// `n` small and `n` big leaves, each summed in groups of four, and a total.
#[process(mode = "concurrent")]
fn healthy(p: &mut Builder, tag: u32, n: u64) {
    let leaves: Vec<Out<u64>> = p
        .each(0..n, |p, i| {
            let a = p.task(Small::new(Counted::new(tag), i));
            let b = p.task(Heavy::new(Big::new(tag), i));
            (a, b)
        })
        .into_iter()
        .flat_map(|(a, b)| [a, b])
        .collect();
    let sums: Vec<Out<u64>> = leaves
        .chunks(4)
        .map(|c| p.task(Sum::new(Counted::new(tag), c.to_vec())))
        .collect();
    p.task(Sum::new(Counted::new(tag), sums).id("total"));
}

/// A failing, a panicking, a retried and a healthy branch; the dependents of the first
/// two never run.
#[process(mode = "concurrent")]
fn troubled(p: &mut Builder, tag: u32) {
    let f = p.task(Fails::new(Big::new(tag)));
    p.task(Small::new(Counted::new(tag), f));
    let x = p.task(Panics::new(Big::new(tag)));
    p.task(Heavy::new(Big::new(tag), x));
    let r = p.task(Flaky::new(Big::new(tag)));
    p.task(Small::new(Counted::new(tag), r).id("after_retries"));
    p.each(0..20, |p, i| p.task(Heavy::new(Big::new(tag), i)));
}

/// A task that never ends (abandoned after the grace period) and its dependent.
#[process(mode = "concurrent")]
fn abandoned(p: &mut Builder, tag: u32) {
    let s = p.task(Stuck::new(Big::new(tag)));
    p.task(Small::new(Counted::new(tag), s));
    p.each(0..10, |p, i| p.task(Heavy::new(Big::new(tag), i)));
}

/// Two explicit ids alike: the build fails after every task was added.
#[process(mode = "concurrent")]
fn misbuilt(p: &mut Builder, tag: u32) {
    p.task(Heavy::new(Big::new(tag), 1).id("twice"));
    p.task(Small::new(Counted::new(tag), 2));
    p.task(Heavy::new(Big::new(tag), 3).id("twice"));
}

// Tags, one per test (the tallies are global to the binary).
const HEALTHY: u32 = 1;
const TROUBLED: u32 = 2;
const ABANDONED: u32 = 3;
const UNRUN: u32 = 4;
const MISBUILT: u32 = 5;
const TASK_GRAPH: u32 = 6;
const TASK_GRAPH_UNBUILT: u32 = 7;
const RESUMED: u32 = 8;
const LIMITED: u32 = 9;
const RUN_GRAPH: u32 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_tasks_are_dropped_once() {
    let rt = Runtime::in_memory()
        .register::<Healthy>()
        .start()
        .await
        .unwrap();
    let report = rt
        .run(Healthy {
            tag: HEALTHY,
            n: 200,
        })
        .await
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(
        report.result::<u64>("total").unwrap(),
        2 * (0..200).sum::<u64>()
    );
    rt.shutdown().await.unwrap();
    // 400 leaves, 100 sums and the total.
    all_dropped_once(HEALTHY, 501).await;
}

// Under a concurrency limit the driver starts every node (no worker runs a dependent
// in place of the node that made it ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_under_a_concurrency_limit_are_dropped_once() {
    let rt = Runtime::in_memory()
        .register::<Healthy>()
        .start()
        .await
        .unwrap();
    let report = rt
        .run(
            Launch::new(Healthy {
                tag: LIMITED,
                n: 50,
            })
            .max_concurrency(3),
        )
        .await
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    rt.shutdown().await.unwrap();
    all_dropped_once(LIMITED, 126).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_panicked_retried_and_skipped_tasks_are_dropped_once() {
    let rt = Runtime::in_memory()
        .register::<Troubled>()
        .start()
        .await
        .unwrap();
    let report = rt.run(Troubled { tag: TROUBLED }).await.unwrap();
    assert!(!report.is_success());
    assert_eq!(report.result::<u64>("after_retries").unwrap(), 7);
    assert_eq!(report.task("flaky").unwrap().attempts, 3);
    assert_eq!(report.task("fails").unwrap().status, TaskStatus::Errored);
    assert_eq!(report.task("panics").unwrap().status, TaskStatus::Errored);
    rt.shutdown().await.unwrap();
    // 26 tasks, and two more values deserialized for the retried task's later attempts.
    all_dropped_once(TROUBLED, 28).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_abandoned_after_the_grace_period_are_dropped_once() {
    let rt = Runtime::in_memory()
        .register::<Abandoned>()
        .cancel_grace(Duration::from_millis(20))
        .start()
        .await
        .unwrap();
    let run = rt.launch(Abandoned { tag: ABANDONED }).await.unwrap();
    tokio::time::timeout(Duration::from_mins(1), STUCK_STARTED.notified())
        .await
        .expect("the stuck task starts");
    run.cancel().await.unwrap();
    let report = run.wait().await.unwrap();
    assert_eq!(report.task("stuck").unwrap().status, TaskStatus::Errored);
    rt.shutdown().await.unwrap();
    all_dropped_once(ABANDONED, 12).await;
}

#[test]
fn graphs_dropped_without_running_drop_their_tasks_once() {
    let g = Graph::of(Healthy { tag: UNRUN, n: 30 }).unwrap();
    assert_eq!(g.len(), 60 + 15 + 1);
    drop(g);
    all_dropped_once_now(UNRUN, 76);
    // A build that fails drops the tasks added before it failed.
    assert!(Graph::of(Misbuilt { tag: MISBUILT }).is_err());
    all_dropped_once_now(MISBUILT, 3);
}

/// A task graph: the tasks it keeps are remapped to node indices when built; a removed
/// task is dropped when removed.
fn task_graph(tag: u32) -> TaskGraph {
    let mut g = TaskGraph::new();
    for i in 0..6 {
        g.add(&format!("big{i}"), Heavy::new(Big::new(tag), i))
            .unwrap();
    }
    let xs: Vec<Out<u64>> = (0..6)
        .map(|i| g.output::<u64>(&format!("big{i}")))
        .collect();
    g.add("total", Sum::new(Counted::new(tag), xs)).unwrap();
    g.add("spare", Small::new(Counted::new(tag), 1)).unwrap();
    g.remove("spare").unwrap();
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_graph_tasks_are_dropped_once() {
    let rt = Runtime::in_memory().start().await.unwrap();
    let g = task_graph(TASK_GRAPH);
    let report = rt.run_graph(g).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.result::<u64>("total").unwrap(), 15);
    // Built, not run; and never built.
    drop(task_graph(TASK_GRAPH_UNBUILT).build().unwrap());
    drop(task_graph(TASK_GRAPH_UNBUILT));
    // A process's graph run by `run_graph`.
    let report = rt
        .run_graph(
            Graph::of(Healthy {
                tag: RUN_GRAPH,
                n: 10,
            })
            .unwrap(),
        )
        .await
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    rt.shutdown().await.unwrap();
    all_dropped_once(TASK_GRAPH, 8).await;
    all_dropped_once(TASK_GRAPH_UNBUILT, 16).await;
    all_dropped_once(RUN_GRAPH, 26).await;
}

static GATE_RUNS: AtomicU32 = AtomicU32::new(0);
static GATE_OPEN: AtomicU32 = AtomicU32::new(0);

#[task]
async fn gated(c: Big) -> u64 {
    GATE_RUNS.fetch_add(1, Ordering::SeqCst);
    while GATE_OPEN.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.seven()
}

/// Ten leaves that end at once, and a gated task waiting for them.
#[process(mode = "concurrent")]
fn interrupted(p: &mut Builder, tag: u32) {
    let xs = p.each(0..10, |p, i| p.task(Heavy::new(Big::new(tag), i)));
    let s = p.task(Sum::new(Counted::new(tag), xs));
    let g = p.task(Gated::new(Big::new(tag)).id("gated"));
    p.task(Sum::new(Counted::new(tag), vec![s, g]).id("total"));
}

// A run suspended by a clean shutdown and resumed by the next start: the tasks that
// succeeded before are not run again (their tasks in the rebuilt graph are dropped
// unrun), the others run; every task of both graphs is dropped once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_resumed_run_are_dropped_once() {
    let dir = std::env::temp_dir().join(format!("procession-drops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = Runtime::open(&dir)
        .register::<Interrupted>()
        .cancel_grace(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let run = rt
        .launch(Launch::new(Interrupted { tag: RESUMED }).id("interrupted"))
        .await
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_mins(1);
    while GATE_RUNS.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The leaves and their sum end at once; give them the time to be recorded.
    let until = std::time::Instant::now() + Duration::from_mins(1);
    while std::time::Instant::now() < until {
        let rows = rt.task_rows("interrupted").await.unwrap();
        if rows
            .iter()
            .filter(|(_, r)| r.state == procession::State::Done)
            .count()
            >= 11
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.shutdown().await.unwrap();
    assert!(run.wait().await.is_err(), "a suspended run has no report");
    GATE_OPEN.store(1, Ordering::SeqCst);
    let rt = Runtime::open(&dir)
        .register::<Interrupted>()
        .start()
        .await
        .unwrap();
    let report = rt.wait("interrupted").await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.result::<u64>("total").unwrap(), 45 + 7);
    rt.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // Two graphs of 13 tasks.
    all_dropped_once(RESUMED, 26).await;
}
