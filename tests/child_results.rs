//! Children return results: `run_child`'s outcome and each result of a parallel group
//! carry the child's report, read typed by task id or as the child's output (its last
//! task); a parent that runs again after a restart gets the report of a child that
//! ended before it, from the store.

// Task inputs are owned values (they are stored between tasks).
#![allow(clippy::needless_pass_by_value)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use procession::prelude::*;
use procession::{Child, ChildError, GroupError, GroupOptions, ResultError, State};
use tokio::sync::Notify;

#[task]
fn double(n: u32) -> u32 {
    n * 2
}

#[task]
fn describe(n: u32) -> String {
    format!("{n} doubled")
}

#[task]
fn refuse(n: u32) -> Result<u32, String> {
    Err(format!("{n} is odd"))
}

/// A child whose first task's result is read by id, whose last is its output; odd
/// numbers fail (in order: `double` waits for `refuse`, so it is skipped when it fails).
#[process(mode = "sequential")]
fn doubling(p: &mut Builder, n: u32) {
    if n % 2 == 1 {
        p.task(Refuse::new(n));
    }
    let d = p.task(Double::new(n));
    p.task(Describe::new(d));
}

#[task]
async fn fan_out(ctx: &Ctx, n: u32) -> Result<Vec<(u32, Option<String>)>, GroupError> {
    let mut group =
        ctx.parallel_group(GroupOptions::new().max_concurrency(3).survive_failure(true));
    for i in 0..n {
        group
            .spawn(Child::new(Doubling { n: i }).id(format!("dbl-{i}")))
            .await?;
    }
    let results = group.finish().await?;
    Ok(results
        .iter()
        .map(|r| {
            let doubled = r.result::<u32>("double").unwrap_or(u32::MAX);
            (doubled, r.output::<String>().ok())
        })
        .collect())
}

#[process]
fn fanning(p: &mut Builder, n: u32) {
    p.task(FanOut::new(n));
}

// OPT-36, OPT-134: each result of a parallel group carries the child's typed results,
// in spawn order; a failed child has no output (`survive_failure` keeps it a result).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_results_carry_the_childrens_typed_results() {
    let rt = Runtime::in_memory()
        .register::<Doubling>()
        .start()
        .await
        .unwrap();
    let report = rt.run(Fanning { n: 6 }).await.unwrap();
    let got: Vec<(u32, Option<String>)> = report.result("fan_out").unwrap();
    let expected: Vec<(u32, Option<String>)> = (0..6)
        .map(|i| {
            if i % 2 == 0 {
                (i * 2, Some(format!("{} doubled", i * 2)))
            } else {
                // `double` was skipped after `refuse` failed: no result.
                (u32::MAX, None)
            }
        })
        .collect();
    assert_eq!(got, expected);
}

#[task]
async fn one_child(ctx: &Ctx, n: u32) -> Result<(u32, String), ChildError> {
    let outcome = ctx.run_child(Child::new(Doubling { n })).await?;
    assert_eq!(outcome.state, State::Done);
    let doubled = outcome.result::<u32>("double").expect("a typed result");
    // A wrong type or id is a typed error, not a panic.
    assert!(matches!(
        outcome.result::<String>("double"),
        Err(ResultError::Decode { .. })
    ));
    assert!(matches!(
        outcome.result::<u32>("nope"),
        Err(ResultError::UnknownTask { .. })
    ));
    Ok((doubled, outcome.output().expect("the last task's result")))
}

#[process]
fn one_child_job(p: &mut Builder, n: u32) {
    p.task(OneChild::new(n));
}

// OPT-113: `run_child` gives the child's typed results.
#[tokio::test]
async fn run_child_gives_the_childs_typed_results() {
    let rt = Runtime::in_memory()
        .register::<Doubling>()
        .start()
        .await
        .unwrap();
    let report = rt.run(OneChildJob { n: 20 }).await.unwrap();
    assert_eq!(
        report.result::<(u32, String)>("one_child").unwrap(),
        (40, "40 doubled".to_owned())
    );
}

// ------------------------------------------------------- across a restart

static CHILD_RUNS: AtomicU32 = AtomicU32::new(0);
static HOLD: AtomicBool = AtomicBool::new(true);
static HELD: Notify = Notify::const_new();

#[task]
fn counted_double(n: u32) -> u32 {
    CHILD_RUNS.fetch_add(1, Ordering::SeqCst);
    n * 2
}

#[process]
fn counted(p: &mut Builder, n: u32) {
    p.task(CountedDouble::new(n));
}

#[task]
async fn parent_after_child(ctx: &Ctx) -> Result<u32, ChildError> {
    let outcome = ctx.run_child(Child::new(Counted { n: 21 })).await?;
    if HOLD.load(Ordering::SeqCst) {
        // First run: the child has ended; the runtime stops before this task does.
        HELD.notify_one();
        std::future::pending::<()>().await;
    }
    Ok(outcome
        .output::<u32>()
        .expect("the child's result, after the restart too"))
}

#[process]
fn restart_parent(p: &mut Builder) {
    p.task(ParentAfterChild::new());
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "procession-{name}-{}-{}",
        std::process::id(),
        fastrand_ish()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn fastrand_ish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

// A parent whose task runs again after a restart (its run was suspended while the task
// waited, after its child ended) finds the child done, does not run it again, and reads
// the child's result from the report built from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_parent_gets_the_report_of_a_child_that_ended_before() {
    let dir = temp_dir("child-results");
    let open = || {
        Runtime::open(&dir)
            .register::<RestartParent>()
            .register::<Counted>()
            .cancel_grace(Duration::from_millis(50))
    };
    let rt = open().start().await.unwrap();
    let run = rt
        .launch(Launch::new(RestartParent {}).id("parent-1"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), HELD.notified())
        .await
        .expect("the parent's task reached its hold");
    rt.shutdown().await.unwrap();
    drop(run);
    drop(rt);
    assert_eq!(CHILD_RUNS.load(Ordering::SeqCst), 1);

    HOLD.store(false, Ordering::SeqCst);
    let rt = open().start().await.unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        rt.launch(Launch::new(RestartParent {}).id("parent-1")),
    )
    .await
    .expect("launch answers");
    // The run was resumed at start: a second launch of the active id is refused...
    assert!(report.is_err());
    // ...and the resumed run ends with the child's result.
    let report = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let rec = rt.get("parent-1").await.unwrap().unwrap();
            if rec.state().is_end() {
                break rt.report("parent-1").await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the resumed parent ends");
    assert_eq!(report.result::<u32>("parent_after_child").unwrap(), 42);
    assert_eq!(CHILD_RUNS.load(Ordering::SeqCst), 1, "the child ran once");
    rt.shutdown().await.unwrap();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
