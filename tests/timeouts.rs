//! Timeouts (acceptance area 8, and "naive implementation" item 1): a timeout ends one
//! attempt with a `procession::Timeout` error, which follows the normal retry rule:
//! retried by default (PROC-64), final with `retry_timeouts = false` (WF-52) or when
//! `retry_on` lists other types only.
//!
//! Tasks that time out wait far longer than the test is allowed to run, so a run that
//! waited for them would fail the test by its own deadline; nothing measures time.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{rt, wait_until};
use procession::prelude::*;
use procession::{RetryExhausted, TaskReport, Timeout};

/// What a timed-out task would wait for: much longer than any test may take.
const FOREVER: Duration = Duration::from_mins(10);
/// The deadline of a run whose tasks time out: a run that waited for them misses it.
const RUN_DEADLINE: Duration = Duration::from_secs(20);

async fn run<P: Process>(p: P) -> RunReport {
    tokio::time::timeout(RUN_DEADLINE, async { rt().await.run(p).await.unwrap() })
        .await
        .expect("the run waited for a task that should have timed out")
}

fn timeout_of(t: &TaskReport) -> &Timeout {
    let err = t.error.as_ref().expect("the task errored");
    err.error()
        .unwrap()
        .downcast_ref::<Timeout>()
        .unwrap_or_else(|| panic!("expected a Timeout, got {err:?}"))
}

// ------------------------------------------------ PROC-45 / WF-49

#[task(timeout = "50ms")]
async fn t_slow() -> u32 {
    tokio::time::sleep(FOREVER).await;
    1
}

#[process]
fn slow_alone(p: &mut Builder) {
    p.task(TSlow::new());
}

// PROC-45 / WF-49: an async task sleeping past its timeout ends errored with a Timeout
// ("timed out"), and the run does not wait for the sleep.
#[tokio::test]
async fn proc_45_wf_49_timeout_fires() {
    let report = run(SlowAlone {}).await;
    let t = report.task("t_slow").unwrap();
    assert_eq!(t.status, TaskStatus::Errored);
    assert_eq!(t.attempts, 1);
    let to = timeout_of(t);
    assert_eq!(to.after, Duration::from_millis(50));
    assert_eq!(to.task, "t_slow");
    let message = &t.error.as_ref().unwrap().message;
    assert!(message.contains("timed out"), "{message}");
    assert_eq!(message, "task `t_slow` timed out after 50ms");
}

// ------------------------------------------------ PROC-46 / WF-50

#[task(timeout = "5s")]
async fn t_fast() -> u32 {
    42
}

#[task(timeout = "5s")]
fn t_fast_blocking() -> u32 {
    43
}

#[process(mode = "concurrent")]
fn fast(p: &mut Builder) {
    p.task(TFast::new());
    p.task(TFastBlocking::new());
}

// PROC-46 / WF-50: a task well within its timeout returns its value, one attempt.
#[tokio::test]
async fn proc_46_wf_50_fast_task_is_not_timed_out() {
    let report = run(Fast {}).await;
    assert!(report.is_success());
    assert_eq!(report.result::<u32>("t_fast").unwrap(), 42);
    assert_eq!(report.result::<u32>("t_fast_blocking").unwrap(), 43);
    let t = report.task("t_fast").unwrap();
    assert_eq!(t.attempts, 1);
    assert!(t.error.is_none());
}

// ------------------------------------------------ PROC-47 / PROC-48 / PROC-49

#[task]
fn t_other() -> u32 {
    2
}

#[task]
fn t_child(x: u32) -> u32 {
    x
}

#[process(mode = "sequential")]
fn slow_sequential(p: &mut Builder) {
    p.task(TOther::new());
    p.task(TSlow::new());
}

#[process(mode = "concurrent")]
fn slow_parallel(p: &mut Builder) {
    p.task(TOther::new());
    p.task(TSlow::new());
}

#[process(mode = "concurrent")]
fn slow_with_child(p: &mut Builder) {
    let root = p.task(TSlow::new());
    p.task(TChild::new(root));
    p.task(TOther::new());
}

// PROC-47 (sequential) / PROC-48 (concurrent): the timed-out task is errored, not a
// success; the others succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_47_48_timeout_in_sequential_and_parallel_processes() {
    for report in [run(SlowSequential {}).await, run(SlowParallel {}).await] {
        assert_eq!(report.ids(report.errored()), vec!["t_slow"]);
        assert_eq!(report.ids(report.successes()), vec!["t_other"]);
        assert_eq!(report.status, RunStatus::Failed);
    }
}

// PROC-49: a timed-out root skips the child that reads its result.
#[tokio::test]
async fn proc_49_timeout_cascades_to_dependants() {
    let report = run(SlowWithChild {}).await;
    assert_eq!(report.ids(report.errored()), vec!["t_slow"]);
    assert_eq!(report.ids(report.skipped()), vec!["t_child"]);
    assert_eq!(report.ids(report.successes()), vec!["t_other"]);
    assert_eq!(report.task("t_child").unwrap().attempts, 0);
}

// ------------------------------------------------------------ PROC-64

static P64_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(timeout = "50ms", retries = 1)]
async fn p64_slow_then_fast() -> String {
    if P64_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(FOREVER).await;
    }
    "fast".into()
}

#[process]
fn p64(p: &mut Builder) {
    p.task(P64SlowThenFast::new());
}

// PROC-64: a timeout is retried by default: the second attempt returns "fast"; 2 calls.
#[tokio::test]
async fn proc_64_timeout_is_retried_by_default() {
    let report = run(P64 {}).await;
    assert_eq!(
        report.result::<String>("p64_slow_then_fast").unwrap(),
        "fast"
    );
    assert_eq!(report.task("p64_slow_then_fast").unwrap().attempts, 2);
    assert_eq!(P64_CALLS.load(Ordering::SeqCst), 2);
}

// ------------------------------------------------------------ PROC-65

static P65_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(timeout = "50ms", retries = 2)]
async fn p65_always_slow() -> u32 {
    P65_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(FOREVER).await;
    1
}

#[process]
fn p65(p: &mut Builder) {
    p.task(P65AlwaysSlow::new());
}

// PROC-65: every attempt times out: exactly 3 calls; the error is RetryExhausted over the
// last Timeout.
#[tokio::test]
async fn proc_65_timeout_retries_exhausted() {
    let report = run(P65 {}).await;
    let t = report.task("p65_always_slow").unwrap();
    assert_eq!(t.status, TaskStatus::Errored);
    assert_eq!(t.attempts, 3);
    assert_eq!(P65_CALLS.load(Ordering::SeqCst), 3);
    let err = t.error.as_ref().unwrap();
    let e = err
        .error()
        .unwrap()
        .downcast_ref::<RetryExhausted>()
        .unwrap();
    assert!(e.last.is::<Timeout>());
    assert!(
        err.chain.last().unwrap().contains("timed out"),
        "{:?}",
        err.chain
    );
}

// ------------------------------------------------ WF-51 / WF-52 (blocking tasks)

static WF51_RELEASE: AtomicBool = AtomicBool::new(false);
static WF51_BODY_DONE: AtomicBool = AtomicBool::new(false);

#[task(timeout = "50ms")]
fn wf51_blocking() -> u32 {
    // Blocks its thread until the test releases it (the runtime cannot kill it).
    wait_until(|| WF51_RELEASE.load(Ordering::SeqCst));
    WF51_BODY_DONE.store(true, Ordering::SeqCst);
    1
}

#[process]
fn wf51(p: &mut Builder) {
    p.task(Wf51Blocking::new());
}

// WF-51: a blocking task past its timeout ends errored with Timeout, although its body
// (which cannot be killed) is still running when the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wf_51_blocking_task_times_out_while_its_body_runs() {
    let report = run(Wf51 {}).await;
    assert!(
        !WF51_BODY_DONE.load(Ordering::SeqCst),
        "the run waited for the blocked body"
    );
    WF51_RELEASE.store(true, Ordering::SeqCst);
    let t = report.task("wf51_blocking").unwrap();
    assert_eq!(t.status, TaskStatus::Errored);
    timeout_of(t);
}

static WF52_CALLS: AtomicU32 = AtomicU32::new(0);
static WF52_RELEASE: AtomicBool = AtomicBool::new(false);

#[task(timeout = "50ms", retries = 3, retry_timeouts = false)]
fn wf52_blocking() -> u32 {
    WF52_CALLS.fetch_add(1, Ordering::SeqCst);
    wait_until(|| WF52_RELEASE.load(Ordering::SeqCst));
    1
}

#[process]
fn wf52(p: &mut Builder) {
    p.task(Wf52Blocking::new());
}

// WF-52: with `retry_timeouts = false`, a timeout is final even with retries = 3: one
// call, and the error is the Timeout itself (not RetryExhausted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wf_52_timeout_not_retried_when_retry_timeouts_is_false() {
    let report = run(Wf52 {}).await;
    WF52_RELEASE.store(true, Ordering::SeqCst);
    let t = report.task("wf52_blocking").unwrap();
    assert_eq!(t.attempts, 1);
    assert_eq!(WF52_CALLS.load(Ordering::SeqCst), 1);
    timeout_of(t);
}

// ------------------------------------------------ retry_on and timeouts

static IO_ONLY_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(timeout = "50ms", retries = 3, retry_on = [std::io::Error])]
async fn io_only_slow() -> Result<u32, std::io::Error> {
    IO_ONLY_CALLS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(FOREVER).await;
    Ok(1)
}

static LISTED_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(timeout = "50ms", retries = 3, retry_on = [procession::Timeout])]
async fn timeout_listed() -> Result<u32, std::io::Error> {
    if LISTED_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(FOREVER).await;
    }
    Ok(2)
}

#[process(mode = "concurrent")]
fn retry_on_timeouts(p: &mut Builder) {
    p.task(IoOnlySlow::new());
    p.task(TimeoutListed::new());
}

// A `retry_on` list without `Timeout` makes timeouts final; listing `Timeout` retries them.
#[tokio::test]
async fn retry_on_decides_whether_timeouts_are_retried() {
    let report = run(RetryOnTimeouts {}).await;
    let io_only = report.task("io_only_slow").unwrap();
    assert_eq!(io_only.attempts, 1);
    assert_eq!(IO_ONLY_CALLS.load(Ordering::SeqCst), 1);
    timeout_of(io_only);
    assert_eq!(report.result::<u32>("timeout_listed").unwrap(), 2);
    assert_eq!(LISTED_CALLS.load(Ordering::SeqCst), 2);
}

// ------------------------------------------------ the timeout is per attempt

static PER_ATTEMPT_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(timeout = "10s", retries = 3)]
async fn per_attempt(ctx: &Ctx) -> Result<u32, std::io::Error> {
    PER_ATTEMPT_CALLS.fetch_add(1, Ordering::SeqCst);
    if ctx.attempt() < 3 {
        Err(std::io::Error::other("transient"))
    } else {
        Ok(ctx.attempt())
    }
}

#[process]
fn per_attempt_run(p: &mut Builder) {
    p.task(PerAttempt::new());
}

// Errors other than timeouts are retried normally under a timeout policy.
#[tokio::test]
async fn other_errors_are_retried_under_a_timeout_policy() {
    let report = run(PerAttemptRun {}).await;
    assert_eq!(report.result::<u32>("per_attempt").unwrap(), 3);
    assert_eq!(PER_ATTEMPT_CALLS.load(Ordering::SeqCst), 3);
}

// ------------------------------------------------ a timed-out attempt is dropped at once

/// Counts drops of the guard held by `t_holds_guard` attempts.
static GUARDS_DROPPED: AtomicU32 = AtomicU32::new(0);

struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        GUARDS_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

#[task(timeout = "50ms", retries = 1, backoff = "fixed(10s)")]
async fn t_holds_guard() -> u32 {
    let _guard = Guard;
    tokio::time::sleep(FOREVER).await;
    1
}

#[process]
fn holds_guard(p: &mut Builder) {
    p.task(THoldsGuard::new());
}

// A timed-out attempt's future is dropped when the timeout fires (what it holds is
// released), not kept until the next attempt replaces it: here the next attempt is 10 s
// of backoff away, and the guard is dropped long before.
#[tokio::test]
async fn timed_out_attempt_is_dropped_before_the_backoff() {
    let rt = rt().await;
    let run = rt.launch(HoldsGuard {}).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while GUARDS_DROPPED.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timed-out attempt still holds its guard"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.cancel(run.id()).await.unwrap();
}

// ------------------------------------------------------------ attempts kept in place

static INPLACE_DROPS: AtomicU32 = AtomicU32::new(0);
static INPLACE_CTX_DROPS: AtomicU32 = AtomicU32::new(0);
static INPLACE_CALLS: AtomicU32 = AtomicU32::new(0);

/// Counts its drops in the counter it points at.
struct DropCount(&'static AtomicU32);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[task(timeout = "50ms", retries = 2)]
async fn t_inplace(x: u64) -> u64 {
    let _guard = DropCount(&INPLACE_DROPS);
    INPLACE_CALLS.fetch_add(1, Ordering::SeqCst);
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(FOREVER).await;
    x
}

#[task(timeout = "50ms", retries = 2)]
async fn t_inplace_ctx(ctx: &Ctx, x: u64) -> u64 {
    let _guard = DropCount(&INPLACE_CTX_DROPS);
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(FOREVER).await;
    x + u64::from(ctx.attempt())
}

#[process(mode = "concurrent")]
fn inplace_timeouts(p: &mut Builder) {
    p.task(TInplace::new(1));
    p.task(TInplaceCtx::new(2));
}

// An attempt's future lives inside its task (not in a box of its own): a timed-out one is
// dropped there, exactly once, and the next attempt is made in the same place. Three
// attempts time out: three drops for each task, after the run ended as before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_attempts_kept_in_place_are_dropped_once() {
    let report = run(InplaceTimeouts {}).await;
    for name in ["t_inplace", "t_inplace_ctx"] {
        let t = report.task(name).unwrap();
        assert_eq!(t.status, TaskStatus::Errored, "{name}");
        assert_eq!(t.attempts, 3, "{name}");
        let e = t.error.as_ref().unwrap().error().unwrap();
        assert!(
            e.downcast_ref::<RetryExhausted>()
                .unwrap()
                .last
                .is::<Timeout>(),
            "{name}"
        );
    }
    assert_eq!(INPLACE_CALLS.load(Ordering::SeqCst), 3);
    assert_eq!(INPLACE_DROPS.load(Ordering::SeqCst), 3);
    assert_eq!(INPLACE_CTX_DROPS.load(Ordering::SeqCst), 3);
}
