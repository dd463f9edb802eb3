//! Failure isolation and skip propagation (acceptance area 6, and "naive
//! implementation" items 3-4): a failed task skips only what depends on it, by data or by
//! sequence; skipped tasks never run (attempts 0, elapsed exactly zero); panics become
//! task failures; `on_dep_failure` chooses between skip, fail and run anyway.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use common::{rendezvous, rt, sorted};
use procession::prelude::*;
use procession::{DependencyFailed, InputError, TaskPanicked};
use tokio::sync::Barrier;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Boom(String);

// ------------------------------------------------- PROC-5 / PROC-6 / PROC-13

static P5_CALLS: [AtomicU32; 5] = [const { AtomicU32::new(0) }; 5];

#[task]
fn p5_root(i: usize, fail: bool) -> Result<u32, Boom> {
    P5_CALLS[i].fetch_add(1, Ordering::SeqCst);
    if fail {
        Err(Boom("root failed".into()))
    } else {
        Ok(1)
    }
}

#[task]
fn p5_child(i: usize, x: u32) -> u32 {
    P5_CALLS[i].fetch_add(1, Ordering::SeqCst);
    x + 1
}

#[process(mode = "concurrent")]
fn cascade(p: &mut Builder) {
    let a = p.task(P5Root::new(0_usize, true));
    let b = p.task(P5Child::new(1_usize, a));
    p.task(P5Child::new(2_usize, b));
    let d = p.task(P5Root::new(3_usize, false));
    p.task(P5Child::new(4_usize, d));
}

// PROC-5 / PROC-13: tasks downstream of a failure are skipped, not errored; their
// function is never called; attempts 0 and elapsed exactly zero. The independent
// branch runs.
// PROC-6: the failure's downstream impact lists the transitive skipped descendants.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proc_5_6_13_cascade_skips_descendants_only() {
    let report = rt().await.run(Cascade {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.ids(report.errored()), vec!["p5_root"]);
    assert_eq!(report.ids(report.skipped()), vec!["p5_child", "p5_child#1"]);
    assert_eq!(
        report.ids(report.successes()),
        vec!["p5_root#1", "p5_child#2"]
    );
    for id in ["p5_child", "p5_child#1"] {
        let t = report.task(id).unwrap();
        assert_eq!(t.status, TaskStatus::Skipped);
        assert_eq!(t.attempts, 0);
        assert_eq!(t.elapsed(), Duration::ZERO);
        assert!(t.result.is_none());
        assert!(t.error.is_none());
    }
    let calls: Vec<u32> = P5_CALLS.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(calls, vec![1, 0, 0, 1, 1]);
    let root = report.task("p5_root").unwrap();
    assert_eq!(
        root.error.as_ref().unwrap().downstream_impact,
        vec!["p5_child", "p5_child#1"]
    );
    assert!(report.task("p5_root#1").unwrap().error.is_none());
}

static SEQ_SKIP_CALLS: AtomicUsize = AtomicUsize::new(0);

#[task]
fn fails() -> Result<(), Boom> {
    Err(Boom("step failed".into()))
}

#[task]
fn counted_step() {
    SEQ_SKIP_CALLS.fetch_add(1, Ordering::SeqCst);
}

#[process(mode = "sequential")]
fn sequence_after_failure(p: &mut Builder) {
    p.task(Fails::new());
    p.task(CountedStep::new());
    p.task(CountedStep::new());
}

// PROC-5 by sequence: in a sequential process, the steps after a failed step are
// skipped too (no data edge needed), with attempts 0 and elapsed zero.
#[tokio::test]
async fn proc_5_sequence_edges_skip_like_data_edges() {
    let report = rt().await.run(SequenceAfterFailure {}).await.unwrap();
    assert_eq!(
        report.ids(report.skipped()),
        vec!["counted_step", "counted_step#1"]
    );
    for t in report.skipped() {
        assert_eq!((t.attempts, t.elapsed()), (0, Duration::ZERO));
    }
    assert_eq!(SEQ_SKIP_CALLS.load(Ordering::SeqCst), 0);
    assert_eq!(
        report
            .task("fails")
            .unwrap()
            .error
            .as_ref()
            .unwrap()
            .downstream_impact,
        vec!["counted_step", "counted_step#1"]
    );
}

// ---------------------------------------------------------------- PROC-28

const CHAINS: usize = 16;
const DEPTH: usize = 4;
static P28_CALLS: [AtomicU32; CHAINS * DEPTH] = [const { AtomicU32::new(0) }; CHAINS * DEPTH];
static P28_BARRIER: LazyLock<Barrier> = LazyLock::new(|| Barrier::new(CHAINS));

#[task]
async fn p28_root(chain: usize) -> Result<u32, String> {
    P28_CALLS[chain * DEPTH].fetch_add(1, Ordering::SeqCst);
    if !rendezvous(&P28_BARRIER).await {
        return Err("the 16 roots did not run at once".into());
    }
    if chain < CHAINS / 2 {
        Err(format!("root {chain} failed"))
    } else {
        Ok(0)
    }
}

#[task]
fn p28_step(chain: usize, level: usize, prev: u32) -> u32 {
    P28_CALLS[chain * DEPTH + level].fetch_add(1, Ordering::SeqCst);
    prev + 1
}

fn p28_name(chain: usize, level: usize) -> String {
    format!("c{chain:02}_l{level}")
}

// PROC-28: 8 failing and 8 passing chains of 4 (64 tasks), the 16 roots meeting at a
// barrier, 20 slots, 5 iterations: no task runs twice or is lost; failing roots run once
// and their descendants never; (errored ∪ skipped) is exactly the failing chains and
// successes exactly the passing ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proc_28_high_fanout_cascading_failures_have_no_races() {
    for iteration in 0..5 {
        for c in &P28_CALLS {
            c.store(0, Ordering::SeqCst);
        }
        let mut g = TaskGraph::new();
        for chain in 0..CHAINS {
            let mut prev = g.add(&p28_name(chain, 0), P28Root::new(chain)).unwrap();
            for level in 1..DEPTH {
                prev = g
                    .add(&p28_name(chain, level), P28Step::new(chain, level, prev))
                    .unwrap();
            }
        }
        let rt = Runtime::in_memory()
            .max_concurrency(20)
            .start()
            .await
            .unwrap();
        let report = rt.run_graph(g).await.unwrap();

        let failing: Vec<String> = (0..CHAINS / 2)
            .flat_map(|c| (0..DEPTH).map(move |l| p28_name(c, l)))
            .collect();
        let passing: Vec<String> = (CHAINS / 2..CHAINS)
            .flat_map(|c| (0..DEPTH).map(move |l| p28_name(c, l)))
            .collect();
        let errored = report.ids(report.errored());
        let skipped = report.ids(report.skipped());
        let mut failed: Vec<&str> = errored.iter().chain(&skipped).copied().collect();
        failed.sort_unstable();
        assert_eq!(
            failed,
            sorted(&failing),
            "iteration {iteration}: {}",
            report.summary()
        );
        assert_eq!(
            sorted(report.ids(report.successes())),
            sorted(&passing),
            "iteration {iteration}"
        );
        assert_eq!(errored.len(), CHAINS / 2, "only the roots errored");
        assert_eq!(report.tasks.len(), CHAINS * DEPTH);

        for chain in 0..CHAINS {
            for level in 0..DEPTH {
                let calls = P28_CALLS[chain * DEPTH + level].load(Ordering::SeqCst);
                let expected = u32::from(level == 0 || chain >= CHAINS / 2);
                assert_eq!(
                    calls,
                    expected,
                    "iteration {iteration}: {} ran {calls} times",
                    p28_name(chain, level)
                );
            }
        }
    }
}

// ---------------------------------------------------------------- PROC-39

/// A value whose serialized form cannot be read back: resolving it as an input fails.
#[derive(Debug)]
struct Unreadable;

impl serde::Serialize for Unreadable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("unreadable")
    }
}

impl<'de> serde::Deserialize<'de> for Unreadable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("resolve blew up"))
    }
}

static P39_READS: AtomicUsize = AtomicUsize::new(0);

#[task]
fn make_unreadable() -> Unreadable {
    Unreadable
}

#[task]
fn read_unreadable(value: Unreadable) -> u32 {
    let Unreadable = value;
    P39_READS.fetch_add(1, Ordering::SeqCst);
    1
}

#[process(mode = "concurrent")]
fn resolution_failure(p: &mut Builder) {
    let v = p.task(MakeUnreadable::new());
    p.task(ReadUnreadable::new(v));
    p.task(ReadUnreadable::new(v));
}

// PROC-39: when resolving a task's inputs fails (before any attempt), the run does not
// propagate it: the task is errored with the resolution error and 0 attempts. (Of two
// readers one gets the original value, the other has to decode the stored copy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proc_39_input_resolution_failure_is_an_errored_task_with_zero_attempts() {
    let report = rt().await.run(ResolutionFailure {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let errored = report.errored();
    assert_eq!(errored.len(), 1, "{}", report.summary());
    let t = errored[0];
    assert_eq!(t.name(), "read_unreadable");
    assert_eq!(t.attempts, 0);
    let err = t.error.as_ref().unwrap();
    assert!(err.message.contains("resolve blew up"), "{}", err.message);
    assert!(matches!(
        err.error().unwrap().downcast_ref::<InputError>(),
        Some(InputError::Decode { .. })
    ));
    assert_eq!(report.successes().len(), 2);
    assert_eq!(P39_READS.load(Ordering::SeqCst), 1);
}

// -------------------------------------------- WF-20 / WF-21 / WF-22

static WF22_GOOD: AtomicUsize = AtomicUsize::new(0);

#[task]
fn bad() -> Result<u32, Boom> {
    Err(Boom("nope".into()))
}

#[task]
async fn good() -> u32 {
    WF22_GOOD.fetch_add(1, Ordering::SeqCst);
    1
}

#[process]
fn bad_then_good(p: &mut Builder) {
    p.concurrent(|p| {
        p.task(Bad::new());
        p.task(Good::new());
    });
}

// WF-20 / WF-22: a failing task does not stop the run or its independent siblings: the
// run returns a report (no error, no panic), bad errored, good succeeded.
// WF-21: the error is available as the original value, with its message "nope".
#[tokio::test]
async fn wf_20_21_22_independent_tasks_are_isolated() {
    let report = rt().await.run(BadThenGood {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    assert!(!report.is_success());
    assert_eq!(
        report.task("concurrent/bad").unwrap().status,
        TaskStatus::Errored
    );
    assert_eq!(
        report.task("concurrent/good").unwrap().status,
        TaskStatus::Success
    );
    assert_eq!(WF22_GOOD.load(Ordering::SeqCst), 1);
    let err = report
        .task("concurrent/bad")
        .unwrap()
        .error
        .as_ref()
        .unwrap();
    assert_eq!(err.message, "nope");
    assert_eq!(err.chain, vec!["nope"]);
    assert!(err.error().unwrap().is::<Boom>());
}

// ------------------------------------------------- WF-33 / WF-34 / run_anyway

static DOWNSTREAM_CALLS: AtomicUsize = AtomicUsize::new(0);

#[task(on_dep_failure = "fail")]
fn downstream_fail(x: u32) -> u32 {
    DOWNSTREAM_CALLS.fetch_add(1, Ordering::SeqCst);
    x
}

#[task]
fn after_downstream(x: u32) -> u32 {
    DOWNSTREAM_CALLS.fetch_add(1, Ordering::SeqCst);
    x
}

#[process]
fn dep_fail(p: &mut Builder) {
    let b = p.task(Bad::new());
    let d = p.task(DownstreamFail::new(b));
    p.task(AfterDownstream::new(d));
}

// WF-33: with `on_dep_failure = "fail"` the dependent is errored without running, with a
// DependencyFailed error naming the failed dependency, 0 attempts and zero elapsed; its
// own dependents are skipped and counted in the root failure's downstream impact.
#[tokio::test]
async fn wf_33_dependency_failure_policy_fail() {
    let report = rt().await.run(DepFail {}).await.unwrap();
    assert_eq!(report.ids(report.errored()), vec!["bad", "downstream_fail"]);
    assert_eq!(report.ids(report.skipped()), vec!["after_downstream"]);
    let t = report.task("downstream_fail").unwrap();
    assert_eq!((t.attempts, t.elapsed()), (0, Duration::ZERO));
    let err = t.error.as_ref().unwrap();
    assert_eq!(
        err.message,
        "task `downstream_fail` has failed dependencies: bad"
    );
    let dep = err
        .error()
        .unwrap()
        .downcast_ref::<DependencyFailed>()
        .unwrap();
    assert_eq!(dep.failed, vec!["bad"]);
    assert_eq!(dep.task, "downstream_fail");
    assert_eq!(err.downstream_impact, vec!["after_downstream"]);
    assert_eq!(
        report
            .task("bad")
            .unwrap()
            .error
            .as_ref()
            .unwrap()
            .downstream_impact,
        vec!["downstream_fail", "after_downstream"]
    );
    assert_eq!(DOWNSTREAM_CALLS.load(Ordering::SeqCst), 0);
}

static SKIP_CALLS: AtomicUsize = AtomicUsize::new(0);

#[task(on_dep_failure = "skip")]
fn downstream_skip(x: u32) -> u32 {
    SKIP_CALLS.fetch_add(1, Ordering::SeqCst);
    x
}

#[task]
fn downstream_default(x: u32) -> u32 {
    SKIP_CALLS.fetch_add(1, Ordering::SeqCst);
    x
}

#[process(mode = "concurrent")]
fn dep_skip(p: &mut Builder) {
    let b = p.task(Bad::new());
    p.task(DownstreamSkip::new(b));
    p.task(DownstreamDefault::new(b));
}

// WF-34: `on_dep_failure = "skip"` (also the default) skips the dependent, whose body
// never runs.
#[tokio::test]
async fn wf_34_dependency_failure_policy_skip_is_the_default() {
    assert_eq!(
        <DownstreamDefault as Task>::META.policy.on_dep_failure,
        OnDepFailure::Skip
    );
    let report = rt().await.run(DepSkip {}).await.unwrap();
    assert_eq!(report.ids(report.errored()), vec!["bad"]);
    assert_eq!(
        report.ids(report.skipped()),
        vec!["downstream_skip", "downstream_default"]
    );
    assert_eq!(SKIP_CALLS.load(Ordering::SeqCst), 0);
}

static CLEANUP_CALLS: AtomicUsize = AtomicUsize::new(0);

#[task(on_dep_failure = "run_anyway")]
fn cleanup() -> u32 {
    CLEANUP_CALLS.fetch_add(1, Ordering::SeqCst);
    7
}

#[task(on_dep_failure = "run_anyway")]
fn reads_maybe(x: Option<u32>) -> u32 {
    CLEANUP_CALLS.fetch_add(100, Ordering::SeqCst);
    x.unwrap_or(99)
}

#[process(mode = "sequential")]
fn run_anyway(p: &mut Builder) {
    let b = p.concurrent(|p| p.task(Bad::new()));
    p.task(Cleanup::new()); // after `bad` by sequence only
    p.concurrent(|p| p.task(ReadsMaybe::new(b))); // reads `bad`'s value as an `Option`
}

// `on_dep_failure = "run_anyway"`: a task ordered after a failure still runs, and a task
// that takes the failed task's output as an `Option` runs with `None` (a plain `u32` input
// would not compile: ui-tests `fail/task/run-anyway-plain-input.rs`).
#[tokio::test]
async fn run_anyway_runs_with_none_for_a_failed_input() {
    let report = rt().await.run(RunAnyway {}).await.unwrap();
    assert_eq!(report.task("cleanup").unwrap().status, TaskStatus::Success);
    assert_eq!(report.result::<u32>("cleanup").unwrap(), 7);
    let t = report.task("concurrent#1/reads_maybe").unwrap();
    assert_eq!(t.status, TaskStatus::Success);
    assert_eq!(t.attempts, 1);
    assert_eq!(
        report.result::<u32>("concurrent#1/reads_maybe").unwrap(),
        99
    );
    assert_eq!(CLEANUP_CALLS.load(Ordering::SeqCst), 101);
    // `bad` was not optional: the run failed.
    assert_eq!(report.status, RunStatus::Failed);
}

// ---------------------------------------------------------------- panics

#[task]
fn panics_sync() -> u32 {
    panic!("sync kaboom")
}

#[task]
async fn panics_async() -> u32 {
    panic!("async kaboom")
}

#[task]
fn after_panic(x: u32) -> u32 {
    x
}

#[task]
async fn survivor() -> u32 {
    5
}

#[process(mode = "concurrent")]
fn panicking(p: &mut Builder) {
    let a = p.task(PanicsSync::new());
    p.task(AfterPanic::new(a));
    p.task(PanicsAsync::new());
    p.task(Survivor::new());
}

// A panicking task (sync or async) becomes an errored task with TaskPanicked carrying the
// message; its dependents are skipped, its siblings run, and the runtime keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_task_failures_and_the_runtime_lives_on() {
    let rt = rt().await;
    let report = rt.run(Panicking {}).await.unwrap();
    assert_eq!(
        report.ids(report.errored()),
        vec!["panics_sync", "panics_async"]
    );
    assert_eq!(report.ids(report.skipped()), vec!["after_panic"]);
    assert_eq!(report.result::<u32>("survivor").unwrap(), 5);
    for (id, msg) in [
        ("panics_sync", "sync kaboom"),
        ("panics_async", "async kaboom"),
    ] {
        let err = report.task(id).unwrap().error.as_ref().unwrap();
        let p = err.error().unwrap().downcast_ref::<TaskPanicked>().unwrap();
        assert_eq!(p.message, msg);
        assert_eq!(p.task, id);
        assert!(err.message.contains(msg), "{}", err.message);
        assert_eq!(report.task(id).unwrap().attempts, 1);
    }
    // The same runtime runs the next process.
    let again = rt.run(Panicking {}).await.unwrap();
    assert_eq!(again.result::<u32>("survivor").unwrap(), 5);
}

#[process(mode = "concurrent")]
fn mostly_fine(p: &mut Builder) {
    p.task(Survivor::new());
    p.task(Bad::new());
    p.task(Survivor::new());
}

// The run is Failed as soon as one task failed, even when most tasks succeeded; the
// summary says which.
#[tokio::test]
async fn a_single_failure_fails_the_run() {
    let report = rt().await.run(MostlyFine {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.errored().len(), 1);
    assert!(report.summary().contains("ERROR"), "{}", report.summary());
}
