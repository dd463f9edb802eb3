//! Cancellation of a run: cooperative through `ctx.should_continue()` /
//! `ctx.cancelled()` and `RunHandle::cancel()`. Tasks not started end cancelled, tasks
//! that stop end cancelled, tasks that ignore the request past the grace period are
//! abandoned and end errored.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::error::Error as StdError;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::rt;
use procession::prelude::*;
use procession::{CancelGraceExceeded, Cancelled, Hooks, RunHandle, RunInfo};
use tokio::sync::Notify;

const FOREVER: Duration = Duration::from_mins(10);
const RUN_DEADLINE: Duration = Duration::from_secs(20);

async fn wait(handle: RunHandle) -> RunReport {
    tokio::time::timeout(RUN_DEADLINE, handle.wait())
        .await
        .expect("the cancelled run did not end")
        .unwrap()
}

async fn started(n: &Notify) {
    tokio::time::timeout(RUN_DEADLINE, n.notified())
        .await
        .expect("the task never started");
}

/// Records the run-level hooks.
#[derive(Clone, Default)]
struct Ends(Arc<Mutex<Vec<String>>>);

impl Hooks for Ends {
    fn completed(&self, _run: &RunInfo, _report: &RunReport) {
        self.0.lock().unwrap().push("completed".into());
    }
    fn failed(&self, _run: &RunInfo, task: &str, _error: &(dyn StdError + 'static)) {
        self.0.lock().unwrap().push(format!("failed {task}"));
    }
    fn cancelled(&self, _run: &RunInfo, _report: &RunReport) {
        self.0.lock().unwrap().push("cancelled".into());
    }
}

// ---------------------------------------------------- cooperative cancel

static LOOPER_STARTED: Notify = Notify::const_new();
static AFTER_LOOPER_CALLS: AtomicU32 = AtomicU32::new(0);

#[task]
async fn looper(ctx: &Ctx) -> Result<u32, Cancelled> {
    LOOPER_STARTED.notify_one();
    while ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(Cancelled {
        task: ctx.task_name().into(),
    })
}

#[task]
fn after_looper() -> u32 {
    AFTER_LOOPER_CALLS.fetch_add(1, Ordering::SeqCst);
    1
}

#[process(mode = "sequential")]
fn cooperative(p: &mut Builder) {
    p.task(Looper::new());
    p.task(AfterLooper::new());
    p.task(AfterLooper::new());
}

// A running task sees `should_continue()` turn false and stops: it ends cancelled; the
// steps after it never start and end cancelled (attempts 0, elapsed zero), not skipped;
// the run ends cancelled and the `cancelled` hook is called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_cancel_stops_the_run() {
    let ends = Ends::default();
    let rt = Runtime::in_memory()
        .hooks(ends.clone())
        .start()
        .await
        .unwrap();
    let run = rt.launch(Cooperative {}).await.unwrap();
    started(&LOOPER_STARTED).await;
    assert!(!run.is_finished());
    run.cancel().await.unwrap();
    let report = wait(run).await;
    assert_eq!(report.status, RunStatus::Cancelled, "{}", report.summary());
    assert_eq!(report.task("looper").unwrap().status, TaskStatus::Cancelled);
    assert_eq!(report.task("looper").unwrap().attempts, 1);
    for id in ["after_looper", "after_looper#1"] {
        let t = report.task(id).unwrap();
        assert_eq!(
            t.status,
            TaskStatus::Cancelled,
            "{id}: {}",
            report.summary()
        );
        assert_eq!((t.attempts, t.elapsed()), (0, Duration::ZERO));
    }
    assert!(report.skipped().is_empty());
    assert_eq!(report.ids(report.cancelled()).len(), 3);
    assert_eq!(AFTER_LOOPER_CALLS.load(Ordering::SeqCst), 0);
    assert_eq!(*ends.0.lock().unwrap(), vec!["cancelled"]);
}

// ------------------------------------------- cancel from another thread

static WAITER_STARTED: Notify = Notify::const_new();

#[task]
async fn waiter(ctx: &Ctx) -> Result<u32, String> {
    WAITER_STARTED.notify_one();
    tokio::select! {
        () = ctx.cancelled() => Err("stopped".into()),
        () = tokio::time::sleep(FOREVER) => Ok(1),
    }
}

#[process]
fn waiting(p: &mut Builder) {
    p.task(Waiter::new());
}

// A cancel sent from another OS thread (through the run's token) interrupts a task
// awaiting `ctx.cancelled()` at once: the run ends long before the task's sleep would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_another_thread_interrupts_an_awaiting_task() {
    let run = rt().await.launch(Waiting {}).await.unwrap();
    started(&WAITER_STARTED).await;
    let token = run.cancel_token();
    std::thread::spawn(move || token.cancel()).join().unwrap();
    let report = wait(run).await;
    assert_eq!(report.status, RunStatus::Cancelled);
    let t = report.task("waiter").unwrap();
    assert_eq!(t.status, TaskStatus::Cancelled);
    assert!(t.error.is_none());
}

// ------------------------------------------------ a task that cancels its run

static AFTER_STOP_CALLS: AtomicU32 = AtomicU32::new(0);

#[task]
async fn stopper(ctx: &Ctx) -> u32 {
    ctx.cancel();
    1
}

#[task]
fn after_stop(x: u32) -> u32 {
    AFTER_STOP_CALLS.fetch_add(1, Ordering::SeqCst);
    x
}

#[process]
fn self_cancel(p: &mut Builder) {
    let x = p.task(Stopper::new());
    p.task(AfterStop::new(x));
}

// A task that cancels its own run and returns: its value stands, but nothing starts
// after the cancel request, even when the driver learns of the task's end and of the
// cancel at the same moment.
#[tokio::test]
async fn nothing_starts_after_a_cancel_request() {
    let report = wait(rt().await.launch(SelfCancel {}).await.unwrap()).await;
    assert_eq!(
        AFTER_STOP_CALLS.load(Ordering::SeqCst),
        0,
        "{}",
        report.summary()
    );
    assert_eq!(report.task("stopper").unwrap().status, TaskStatus::Success);
    assert_eq!(
        report.task("after_stop").unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(report.status, RunStatus::Cancelled);
}

#[task]
async fn self_cancel_and_fail(ctx: &Ctx) -> Result<u32, String> {
    ctx.cancel();
    Err("stopped on request".into())
}

#[process]
fn self_cancel_error(p: &mut Builder) {
    let x = p.task(SelfCancelAndFail::new());
    p.task(AfterStop::new(x));
}

// A task that stops with an error because its run was cancelled ends cancelled, not
// errored; the run ends cancelled, not failed.
#[tokio::test]
async fn an_error_after_a_cancel_request_is_a_cancellation() {
    let ends = Ends::default();
    let rt = Runtime::in_memory()
        .hooks(ends.clone())
        .start()
        .await
        .unwrap();
    let report = wait(rt.launch(SelfCancelError {}).await.unwrap()).await;
    assert_eq!(
        report.task("self_cancel_and_fail").unwrap().status,
        TaskStatus::Cancelled,
        "{}",
        report.summary()
    );
    assert_eq!(
        report.task("after_stop").unwrap().status,
        TaskStatus::Cancelled
    );
    assert_eq!(report.status, RunStatus::Cancelled);
    assert_eq!(*ends.0.lock().unwrap(), vec!["cancelled"]);
}

// ------------------------------------ dependents of a cancelled task

static STRICT_STARTED: Notify = Notify::const_new();

#[task]
async fn strict_root(ctx: &Ctx) -> Result<u32, Cancelled> {
    STRICT_STARTED.notify_one();
    ctx.cancelled().await;
    Err(Cancelled {
        task: ctx.task_name().into(),
    })
}

#[task(on_dep_failure = "fail")]
fn strict_child(x: u32) -> u32 {
    x
}

#[task(on_dep_failure = "run_anyway")]
fn lenient_child() -> u32 {
    2
}

#[process(mode = "sequential")]
fn strict_chain(p: &mut Builder) {
    let x = p.task(StrictRoot::new());
    p.concurrent(|p| {
        p.task(StrictChild::new(x));
        p.task(LenientChild::new());
    });
}

// A task that depends on a cancelled task was not failed by it: whatever its
// `on_dep_failure`, it ends cancelled (not errored with DependencyFailed, not skipped),
// `failed` is not called, and the run ends cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_of_a_cancelled_task_are_cancelled() {
    let ends = Ends::default();
    let rt = Runtime::in_memory()
        .hooks(ends.clone())
        .start()
        .await
        .unwrap();
    let run = rt.launch(StrictChain {}).await.unwrap();
    started(&STRICT_STARTED).await;
    run.cancel().await.unwrap();
    let report = wait(run).await;
    for id in [
        "strict_root",
        "concurrent/strict_child",
        "concurrent/lenient_child",
    ] {
        assert_eq!(
            report.task(id).unwrap().status,
            TaskStatus::Cancelled,
            "{id}: {}",
            report.summary()
        );
    }
    assert_eq!(report.status, RunStatus::Cancelled);
    assert_eq!(*ends.0.lock().unwrap(), vec!["cancelled"]);
}

// ------------------------------------------------ the grace period

static STUBBORN_STARTED: Notify = Notify::const_new();

#[task]
async fn stubborn() -> u32 {
    STUBBORN_STARTED.notify_one();
    tokio::time::sleep(FOREVER).await;
    1
}

#[process(mode = "concurrent")]
fn stubborn_job(p: &mut Builder) {
    p.task(Stubborn::new());
}

// A task that ignores the cancel request is abandoned after the grace period and ends
// errored ("did not unwind within cancellation grace period"), not cancelled; the run
// ends failed, and the failure is reported to the `failed` hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ignoring_cancel_is_abandoned_after_the_grace_period() {
    let ends = Ends::default();
    let rt = Runtime::in_memory()
        .cancel_grace(Duration::from_millis(50))
        .hooks(ends.clone())
        .start()
        .await
        .unwrap();
    let run = rt.launch(StubbornJob {}).await.unwrap();
    started(&STUBBORN_STARTED).await;
    run.cancel().await.unwrap();
    let report = wait(run).await;
    let t = report.task("stubborn").unwrap();
    assert_eq!(t.status, TaskStatus::Errored);
    let err = t.error.as_ref().unwrap();
    assert!(err.error().unwrap().is::<CancelGraceExceeded>());
    assert!(
        err.message
            .contains("did not unwind within cancellation grace period"),
        "{}",
        err.message
    );
    // Its time is the time it ran until abandoned: at least the grace period (its start
    // is recorded when it first waits).
    assert!(
        t.elapsed() >= Duration::from_millis(50),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(*ends.0.lock().unwrap(), vec!["failed stubborn"]);
}

// ------------------------------------------------ cancel during backoff

static BACKOFF_FAILED: Notify = Notify::const_new();

#[task(retries = 3, backoff = "fixed(600s)")]
fn fails_then_waits() -> Result<u32, String> {
    BACKOFF_FAILED.notify_one();
    Err("first attempt failed".into())
}

#[process]
fn backoff_job(p: &mut Builder) {
    p.task(FailsThenWaits::new());
}

// A cancel during the wait between two attempts ends the wait at once: no further
// attempt, the task ends cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_interrupts_the_backoff_wait() {
    let run = rt().await.launch(BackoffJob {}).await.unwrap();
    started(&BACKOFF_FAILED).await;
    run.cancel().await.unwrap();
    let report = wait(run).await;
    let t = report.task("fails_then_waits").unwrap();
    assert_eq!(t.status, TaskStatus::Cancelled, "{}", report.summary());
    assert_eq!(t.attempts, 1);
    assert_eq!(report.status, RunStatus::Cancelled);
}

// ------------------------------------------------ cancel after the end

#[task]
fn quick() -> u32 {
    1
}

#[process]
fn quick_job(p: &mut Builder) {
    p.task(Quick::new());
}

// Cancelling a run that already ended changes nothing.
#[tokio::test]
async fn cancel_after_the_end_changes_nothing() {
    let rt = rt().await;
    let run = rt.launch(QuickJob {}).await.unwrap();
    let token = run.cancel_token();
    let deadline = std::time::Instant::now() + RUN_DEADLINE;
    while !run.is_finished() {
        assert!(std::time::Instant::now() < deadline, "the run did not end");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Refused, with the reason: the run has ended.
    let refused = run.cancel().await.unwrap_err();
    assert!(
        matches!(
            refused,
            procession::Error::NotCancellableState {
                state: procession::State::Done,
                ..
            }
        ),
        "{refused}"
    );
    token.cancel();
    let report = wait(run).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(report.result::<u32>("quick").unwrap(), 1);
}

// ------------------------------------------------ an abandoned attempt, dropped once

static HELD_STARTED: Notify = Notify::const_new();
static HELD_DROPS: AtomicU32 = AtomicU32::new(0);

/// Counts its drops.
struct Held;

impl Drop for Held {
    fn drop(&mut self) {
        HELD_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[task]
async fn holds_until_abandoned(ctx: &Ctx) -> u32 {
    let _held = Held;
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    HELD_STARTED.notify_one();
    // Ignores the cancel: abandoned after the grace period.
    tokio::time::sleep(FOREVER).await;
    ctx.attempt()
}

#[process(mode = "concurrent")]
fn held_job(p: &mut Builder) {
    p.task(HoldsUntilAbandoned::new());
}

// An attempt's future lives inside its task: when a cancelled run abandons the attempt
// mid-way, the future is dropped there exactly once (what it holds is released).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_attempt_is_dropped_once() {
    let rt = Runtime::in_memory()
        .cancel_grace(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let run = rt.launch(HeldJob {}).await.unwrap();
    started(&HELD_STARTED).await;
    run.cancel().await.unwrap();
    let report = wait(run).await;
    let t = report.task("holds_until_abandoned").unwrap();
    assert!(t
        .error
        .as_ref()
        .unwrap()
        .error()
        .unwrap()
        .is::<CancelGraceExceeded>());
    let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
    while HELD_DROPS.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned attempt was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.shutdown().await.unwrap();
    assert_eq!(HELD_DROPS.load(Ordering::SeqCst), 1);
}
