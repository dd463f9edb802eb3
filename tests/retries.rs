//! Retries and backoff (acceptance area 7, and "naive implementation" item 2): retry
//! counts, `retry_on` filtering (default: every error), `NonRetryable`, wrapping of the
//! last error in `RetryExhausted` only when more than one attempt ran, and exact
//! backoff arithmetic.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::rt;
use procession::prelude::*;
use procession::{Backoff, Policy, RetryExhausted, TaskReport, Timeout};

#[derive(Debug, thiserror::Error)]
#[error("runtime error: {0}")]
struct RuntimeErr(String);

#[derive(Debug, thiserror::Error)]
#[error("value error: {0}")]
struct ValueErr(String);

#[derive(Debug, thiserror::Error)]
#[error("key error")]
struct KeyErr;

fn connection_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")
}

/// The single task's entry of a one-task report.
fn only(report: &RunReport) -> &TaskReport {
    assert_eq!(report.tasks.len(), 1);
    &report.tasks[0]
}

fn exhausted(t: &TaskReport) -> &RetryExhausted {
    let err = t.error.as_ref().expect("the task errored");
    err.error()
        .unwrap()
        .downcast_ref::<RetryExhausted>()
        .unwrap_or_else(|| panic!("expected RetryExhausted, got {err:?}"))
}

// ------------------------------------------------------------ PROC-54

static P54_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2)]
fn p54_always_refused() -> Result<u32, io::Error> {
    P54_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(connection_error())
}

#[process]
fn p54(p: &mut Builder) {
    p.task(P54AlwaysRefused::new());
}

// PROC-54: retries = 2 and an error every time: 3 calls, attempts 3, errored; the final
// error is RetryExhausted whose source is the connection error.
#[tokio::test]
async fn proc_54_retries_exhausted() {
    let report = rt().await.run(P54 {}).await.unwrap();
    let t = only(&report);
    assert_eq!(t.status, TaskStatus::Errored);
    assert_eq!(t.attempts, 3);
    assert_eq!(P54_CALLS.load(Ordering::SeqCst), 3);
    let e = exhausted(t);
    assert_eq!(e.attempts, 3);
    assert_eq!(e.task, "p54_always_refused");
    assert_eq!(
        e.last.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionRefused
    );
    let err = t.error.as_ref().unwrap();
    assert_eq!(
        err.message,
        "task `p54_always_refused` failed after 3 attempts: connection refused"
    );
    assert_eq!(err.chain.last().unwrap(), "connection refused");
}

// ---------------------------------------------------- PROC-55 / WF-40 / WF-27

static P55_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 0)]
fn p55_no_retry() -> Result<u32, ValueErr> {
    P55_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(ValueErr("expected".into()))
}

#[process]
fn p55(p: &mut Builder) {
    p.task(P55NoRetry::new());
}

// PROC-55 / WF-40: retries = 0 means one call. WF-27: the error is the original one, not
// wrapped (only one attempt ran).
#[tokio::test]
async fn proc_55_wf_40_wf_27_zero_retries_one_call_original_error() {
    let report = rt().await.run(P55 {}).await.unwrap();
    let t = only(&report);
    assert_eq!(t.status, TaskStatus::Errored);
    assert_eq!(t.attempts, 1);
    assert_eq!(P55_CALLS.load(Ordering::SeqCst), 1);
    let err = t.error.as_ref().unwrap();
    assert_eq!(err.message, "value error: expected");
    let original = err.error().unwrap().downcast_ref::<ValueErr>().unwrap();
    assert_eq!(original.0, "expected");
}

// ------------------------------------------------------ PROC-57 / WF-41

static P57_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 3, retry_on = [std::io::Error])]
fn p57_value_error() -> Result<u32, ValueErr> {
    P57_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(ValueErr("bad input".into()))
}

static WF41_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 3, retry_on = [ValueErr])]
fn wf41_runtime_error() -> Result<u32, RuntimeErr> {
    WF41_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(RuntimeErr("boom".into()))
}

#[process(mode = "concurrent")]
fn not_listed(p: &mut Builder) {
    p.task(P57ValueError::new());
    p.task(Wf41RuntimeError::new());
}

// PROC-57 / WF-41: an error whose type `retry_on` does not list is not retried: one call,
// the original error (processes' default {ConnectionError, TimeoutError} is written
// explicitly here, as our default retries every error).
#[tokio::test]
async fn proc_57_wf_41_errors_not_in_retry_on_are_final() {
    let report = rt().await.run(NotListed {}).await.unwrap();
    assert_eq!(P57_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(WF41_CALLS.load(Ordering::SeqCst), 1);
    let a = report.task("p57_value_error").unwrap();
    assert_eq!(a.attempts, 1);
    assert!(a.error.as_ref().unwrap().error().unwrap().is::<ValueErr>());
    let b = report.task("wf41_runtime_error").unwrap();
    assert_eq!(b.attempts, 1);
    assert!(b
        .error
        .as_ref()
        .unwrap()
        .error()
        .unwrap()
        .is::<RuntimeErr>());
}

// ------------------------------------------------------------ PROC-58

static P58_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 3, retry_on = [RuntimeErr])]
fn p58_flaky() -> Result<String, RuntimeErr> {
    if P58_CALLS.fetch_add(1, Ordering::SeqCst) < 2 {
        Err(RuntimeErr("transient".into()))
    } else {
        Ok("ok".into())
    }
}

#[process]
fn p58(p: &mut Builder) {
    p.task(P58Flaky::new());
}

// PROC-58: retry_on = [RuntimeErr]; two failures then "ok": success after 3 calls.
#[tokio::test]
async fn proc_58_custom_retry_on_retries_listed_errors() {
    let report = rt().await.run(P58 {}).await.unwrap();
    assert_eq!(report.result::<String>("p58_flaky").unwrap(), "ok");
    assert_eq!(only(&report).attempts, 3);
    assert_eq!(P58_CALLS.load(Ordering::SeqCst), 3);
}

// ------------------------------------------------------------ PROC-59

static P59_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 1)]
async fn p59_refused_once() -> Result<u32, io::Error> {
    if P59_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        Err(connection_error())
    } else {
        Ok(1)
    }
}

#[process]
fn p59(p: &mut Builder) {
    p.task(P59RefusedOnce::new());
}

// PROC-59: retries = 1 with the default retry_on retries a connection error: 2 calls.
#[tokio::test]
async fn proc_59_default_retry_on_retries_connection_errors() {
    let report = rt().await.run(P59 {}).await.unwrap();
    assert!(report.is_success());
    assert_eq!(only(&report).attempts, 2);
    assert_eq!(P59_CALLS.load(Ordering::SeqCst), 2);
}

// ------------------------------------------------------------ WF-38

static WF38_CALLS: AtomicU32 = AtomicU32::new(0);
static WF38_ATTEMPTS_SEEN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[task(retries = 3)]
fn wf38_eventually(ctx: &Ctx) -> Result<u32, RuntimeErr> {
    WF38_ATTEMPTS_SEEN.lock().unwrap().push(ctx.attempt());
    if WF38_CALLS.fetch_add(1, Ordering::SeqCst) < 2 {
        Err(RuntimeErr("not yet".into()))
    } else {
        Ok(42)
    }
}

#[process]
fn wf38(p: &mut Builder) {
    p.task(Wf38Eventually::new());
}

// WF-38: default retry_on retries every error: 42 after 3 calls, attempts 3; the task
// sees its attempt number through the context.
#[tokio::test]
async fn wf_38_default_retry_on_is_every_error() {
    assert!(<Wf38Eventually as Task>::META.policy.retry_on.is_none());
    let report = rt().await.run(Wf38 {}).await.unwrap();
    assert_eq!(report.result::<u32>("wf38_eventually").unwrap(), 42);
    assert_eq!(only(&report).attempts, 3);
    assert_eq!(WF38_CALLS.load(Ordering::SeqCst), 3);
    assert_eq!(*WF38_ATTEMPTS_SEEN.lock().unwrap(), vec![1, 2, 3]);
}

// ------------------------------------------------------------ WF-39

#[task(retries = 2)]
fn wf39_always() -> Result<u32, RuntimeErr> {
    Err(RuntimeErr("nope".into()))
}

#[process]
fn wf39(p: &mut Builder) {
    p.task(Wf39Always::new());
}

// WF-39: retries = 2, always failing: RetryExhausted with attempts 3, caused by the
// original error.
#[tokio::test]
async fn wf_39_exhausted_retries_wrap_the_last_error() {
    let report = rt().await.run(Wf39 {}).await.unwrap();
    let t = only(&report);
    assert_eq!(t.status, TaskStatus::Errored);
    let e = exhausted(t);
    assert_eq!(e.attempts, 3);
    let cause = std::error::Error::source(e).unwrap();
    assert_eq!(cause.downcast_ref::<RuntimeErr>().unwrap().0, "nope");
    assert_eq!(
        t.error.as_ref().unwrap().chain,
        vec![
            "task `wf39_always` failed after 3 attempts: runtime error: nope",
            "runtime error: nope"
        ]
    );
}

// ------------------------------------------------------------ WF-42

static WF42_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2, retry_on = [ValueErr, KeyErr])]
fn wf42_listed() -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    match WF42_CALLS.fetch_add(1, Ordering::SeqCst) {
        0 => Err(Box::new(ValueErr("first".into()))),
        1 => Err(Box::new(KeyErr)),
        _ => Ok(7),
    }
}

#[process]
fn wf42(p: &mut Builder) {
    p.task(Wf42Listed::new());
}

// WF-42: retry_on lists two types; errors of either are retried: 7 after 3 calls.
#[tokio::test]
async fn wf_42_retry_on_several_types() {
    let report = rt().await.run(Wf42 {}).await.unwrap();
    assert_eq!(report.result::<u32>("wf42_listed").unwrap(), 7);
    assert_eq!(WF42_CALLS.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------- retry_on and sources

#[derive(Debug, thiserror::Error)]
#[error("fetch failed")]
struct FetchError(#[source] io::Error);

static CHAIN_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 1, retry_on = [std::io::Error])]
fn wrapped_io() -> Result<u32, FetchError> {
    if CHAIN_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        Err(FetchError(connection_error()))
    } else {
        Ok(3)
    }
}

#[process]
fn chain_match(p: &mut Builder) {
    p.task(WrappedIo::new());
}

// `retry_on` matches an error of the listed type anywhere in the source chain.
#[tokio::test]
async fn retry_on_matches_along_the_source_chain() {
    let report = rt().await.run(ChainMatch {}).await.unwrap();
    assert_eq!(report.result::<u32>("wrapped_io").unwrap(), 3);
    assert_eq!(CHAIN_CALLS.load(Ordering::SeqCst), 2);
}

// ------------------------------------------------------------ TT-7

static TT7_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 5)]
fn tt7_final() -> Result<u32, NonRetryable> {
    TT7_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(NonRetryable::msg("token expired"))
}

#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("bad credentials")]
    Auth(#[source] NonRetryable),
}

static TT7_SOURCE_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 5)]
async fn tt7_final_inside() -> Result<u32, LoginError> {
    TT7_SOURCE_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(LoginError::Auth(NonRetryable::new(io::Error::other(
        "expired",
    ))))
}

#[process(mode = "concurrent")]
fn tt7(p: &mut Builder) {
    p.task(Tt7Final::new());
    p.task(Tt7FinalInside::new());
}

// TT-7: an error marked NonRetryable (directly, or as the source of the task's own
// error) is never retried, whatever the policy, and keeps its kind (not RetryExhausted).
#[tokio::test]
async fn tt_7_non_retryable_errors_are_final() {
    let report = rt().await.run(Tt7 {}).await.unwrap();
    assert_eq!(TT7_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(TT7_SOURCE_CALLS.load(Ordering::SeqCst), 1);
    let a = report.task("tt7_final").unwrap();
    assert_eq!(a.attempts, 1);
    let err = a.error.as_ref().unwrap();
    assert!(err.error().unwrap().is::<NonRetryable>());
    assert_eq!(err.message, "token expired");
    let b = report.task("tt7_final_inside").unwrap();
    assert_eq!(b.attempts, 1);
    assert!(b
        .error
        .as_ref()
        .unwrap()
        .error()
        .unwrap()
        .is::<LoginError>());
}

// ---------------------------------------------- retries of tasks with inputs

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Batch {
    id: u32,
    rows: Vec<String>,
}

#[task]
fn make_batch() -> Batch {
    Batch {
        id: 9,
        rows: vec!["a".into(), "b".into()],
    }
}

static INPUT_SEEN: Mutex<Vec<Batch>> = Mutex::new(Vec::new());

#[task(retries = 2)]
fn flaky_consumer(ctx: &Ctx, batch: Batch, extra: String) -> Result<usize, RuntimeErr> {
    INPUT_SEEN.lock().unwrap().push(batch.clone());
    if ctx.attempt() < 3 {
        Err(RuntimeErr(format!("attempt {}", ctx.attempt())))
    } else {
        Ok(batch.rows.len() + extra.len())
    }
}

#[process]
fn retried_with_inputs(p: &mut Builder) {
    let b = p.task(MakeBatch::new());
    p.task(FlakyConsumer::new(b, "xyz"));
}

// Every attempt of a retried task gets the same inputs, upstream values included.
#[tokio::test]
async fn every_attempt_gets_the_same_inputs() {
    let report = rt().await.run(RetriedWithInputs {}).await.unwrap();
    assert_eq!(report.result::<usize>("flaky_consumer").unwrap(), 5);
    let seen = INPUT_SEEN.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|b| *b == make_batch()));
}

// ------------------------------------------------ backoff arithmetic

// WF-43: linear backoff waits base * attempt, counted from attempt 1: [0.5 s, 1.0 s].
#[test]
fn wf_43_linear_delays() {
    let b = Backoff::Linear {
        base: Duration::from_millis(500),
        cap: Some(Duration::from_secs(10)),
        jitter: false,
    };
    let delays: Vec<Duration> = (1..=2).map(|n| b.delay(n)).collect();
    assert_eq!(
        delays,
        vec![Duration::from_millis(500), Duration::from_secs(1)]
    );
    assert_eq!(b.delay(30), Duration::from_secs(10));
    // Attempt 0 is treated as attempt 1.
    assert_eq!(b.delay(0), Duration::from_millis(500));
}

// WF-44: exponential backoff waits base * 2^(attempt-1).
#[test]
fn wf_44_exponential_delays() {
    let b = Backoff::Exponential {
        base: Duration::from_millis(100),
        cap: None,
        jitter: false,
    };
    let delays: Vec<u128> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
    assert_eq!(delays, vec![100, 200, 400, 800, 1600]);
}

// WF-45: the cap holds at attempt 100 (and at u32::MAX) without overflowing or panicking.
#[test]
fn wf_45_cap_holds_for_huge_attempt_numbers() {
    let capped = Backoff::Exponential {
        base: Duration::from_secs(1),
        cap: Some(Duration::from_secs(5)),
        jitter: false,
    };
    assert_eq!(capped.delay(100), Duration::from_secs(5));
    assert_eq!(capped.delay(u32::MAX), Duration::from_secs(5));
    assert_eq!(capped.delay(3), Duration::from_secs(4));
    let uncapped = Backoff::Exponential {
        base: Duration::from_secs(1),
        cap: None,
        jitter: true,
    };
    assert!(uncapped.delay(100) >= Duration::from_secs(1 << 31));
    assert!(uncapped.jittered_delay(u32::MAX) > Duration::ZERO);
    let linear = Backoff::Linear {
        base: Duration::from_secs(u64::MAX / 2),
        cap: None,
        jitter: false,
    };
    assert_eq!(
        linear.delay(u32::MAX),
        Duration::from_secs(u64::MAX / 2).saturating_mul(u32::MAX)
    );
    assert_eq!(Backoff::None.delay(100), Duration::ZERO);
    let fixed = Backoff::Fixed {
        delay: Duration::from_millis(250),
        jitter: false,
    };
    assert_eq!(fixed.delay(1), fixed.delay(50));
}

// Jitter draws each wait from [d/2, d].
#[test]
fn jitter_stays_within_half_to_full_delay() {
    let b = Backoff::Exponential {
        base: Duration::from_millis(100),
        cap: Some(Duration::from_secs(1)),
        jitter: true,
    };
    let draws: Vec<Duration> = (0..200).map(|_| b.jittered_delay(3)).collect();
    for d in &draws {
        assert!(
            *d >= Duration::from_millis(200) && *d <= Duration::from_millis(400),
            "{d:?}"
        );
    }
    assert!(draws.iter().any(|d| *d != draws[0]), "jitter varies");
    let plain = Backoff::Linear {
        base: Duration::from_millis(100),
        cap: None,
        jitter: false,
    };
    assert_eq!(plain.jittered_delay(2), Duration::from_millis(200));
}

const IO_ONLY: &[procession::ErrorMatcher] =
    &[procession::ErrorMatcher::of::<io::Error>("std::io::Error")];
const TIMEOUTS: &[procession::ErrorMatcher] = &[procession::ErrorMatcher::of::<Timeout>("Timeout")];

// Naive item 1: one retry rule for every error. A timeout is retryable by default
// (PROC-64), final with `retry_timeouts = false` (WF-52) or when `retry_on` lists other
// types only; NonRetryable always wins.
#[test]
fn one_retry_rule_for_timeouts_and_other_errors() {
    let timeout = Timeout {
        task: "t".into(),
        after: Duration::from_millis(5),
    };
    let default = Policy::DEFAULT;
    assert!(default.is_retryable(&timeout));
    assert!(default.is_retryable(&RuntimeErr("x".into())));
    let no_timeouts = Policy {
        retry_timeouts: false,
        ..Policy::DEFAULT
    };
    assert!(!no_timeouts.is_retryable(&timeout));
    assert!(no_timeouts.is_retryable(&RuntimeErr("x".into())));
    let io_only = Policy {
        retry_on: Some(IO_ONLY),
        ..Policy::DEFAULT
    };
    assert!(!io_only.is_retryable(&timeout));
    assert!(io_only.is_retryable(&connection_error()));
    let timeouts = Policy {
        retry_on: Some(TIMEOUTS),
        ..Policy::DEFAULT
    };
    assert!(timeouts.is_retryable(&timeout));
    assert!(!timeouts.is_retryable(&NonRetryable::new(timeout.clone())));
}

// ------------------------------------------ backoff, end to end (WF-43)

static BACKOFF_STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
static BACKOFF_LAST_END: Mutex<Option<Instant>> = Mutex::new(None);

#[task(retries = 2, backoff = "linear(100ms)")]
async fn backed_off(ctx: &Ctx) -> Result<u32, RuntimeErr> {
    BACKOFF_STARTS.lock().unwrap().push(Instant::now());
    if ctx.attempt() == 3 {
        *BACKOFF_LAST_END.lock().unwrap() = Some(Instant::now());
    }
    Err(RuntimeErr("again".into()))
}

#[process]
fn backoff_run(p: &mut Builder) {
    p.task(BackedOff::new());
}

// WF-43 end to end: the runtime waits at least base * attempt between attempts (100 ms,
// then 200 ms), and does not wait after the final attempt. Waits are checked from below
// only (a sleep never ends early); the absence of a 300 ms wait after the last attempt is
// checked with a 300 ms margin. (A paused-clock version needs tokio's `test-util`.)
#[tokio::test]
async fn wf_43_backoff_waits_between_attempts_only() {
    let report = rt().await.run(BackoffRun {}).await.unwrap();
    let ended = Instant::now();
    assert_eq!(only(&report).attempts, 3);
    let starts = BACKOFF_STARTS.lock().unwrap().clone();
    assert_eq!(starts.len(), 3);
    assert!(
        starts[1] - starts[0] >= Duration::from_millis(100),
        "{:?}",
        starts[1] - starts[0]
    );
    assert!(
        starts[2] - starts[1] >= Duration::from_millis(200),
        "{:?}",
        starts[2] - starts[1]
    );
    let last_end = BACKOFF_LAST_END.lock().unwrap().unwrap();
    assert!(
        ended - last_end < Duration::from_millis(300),
        "slept after the final attempt: {:?}",
        ended - last_end
    );
    assert!(only(&report).elapsed() >= Duration::from_millis(300));
}

// ------------------------------------------------------------ attempts kept in place

// An attempt's future is kept inside its task (not boxed) and remade in the same place
// for the next attempt. These tasks await several times before they fail or succeed, each
// attempt holding a guard that counts its drops: every attempt's future is dropped
// exactly once. One takes `ctx` (its future is an `async` block that owns it), one does
// not (its future is the function's own).

static INPLACE_DROPS: AtomicU32 = AtomicU32::new(0);
static INPLACE_CTX_DROPS: AtomicU32 = AtomicU32::new(0);

/// Counts its drops in the counter it points at.
struct DropCount(&'static AtomicU32);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

static INPLACE_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2)]
async fn inplace_awaits(x: u64, label: String) -> Result<String, RuntimeErr> {
    let _guard = DropCount(&INPLACE_DROPS);
    let values = [x, x + 1];
    // Borrowed across the awaits: the future refers to itself while it waits.
    let first = &values[0];
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    let call = INPLACE_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if call < 3 {
        return Err(RuntimeErr(format!("call {call}")));
    }
    Ok(format!("{label}:{}", *first + u64::from(call)))
}

#[task(retries = 2)]
async fn inplace_ctx_awaits(ctx: &Ctx, x: u64) -> Result<u64, RuntimeErr> {
    let _guard = DropCount(&INPLACE_CTX_DROPS);
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    if ctx.attempt() < 3 {
        return Err(RuntimeErr(format!("attempt {}", ctx.attempt())));
    }
    Ok(x * u64::from(ctx.attempt()))
}

#[process]
fn inplace(p: &mut Builder) {
    p.task(InplaceAwaits::new(10, "l"));
    p.task(InplaceCtxAwaits::new(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_attempts_are_remade_in_place_and_dropped_once() {
    let report = rt().await.run(Inplace {}).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.result::<String>("inplace_awaits").unwrap(), "l:13");
    assert_eq!(report.result::<u64>("inplace_ctx_awaits").unwrap(), 21);
    assert_eq!(report.task("inplace_awaits").unwrap().attempts, 3);
    assert_eq!(report.task("inplace_ctx_awaits").unwrap().attempts, 3);
    assert_eq!(INPLACE_CALLS.load(Ordering::SeqCst), 3);
    assert_eq!(INPLACE_DROPS.load(Ordering::SeqCst), 3);
    assert_eq!(INPLACE_CTX_DROPS.load(Ordering::SeqCst), 3);
}

// ------------------------------------------ attempts that end in their first poll

static AT_ONCE_CALLS: AtomicU32 = AtomicU32::new(0);

/// Fails twice, then succeeds, never waiting: each attempt ends in its first poll.
#[task(retries = 2)]
async fn at_once_flaky(ctx: &Ctx) -> Result<u64, RuntimeErr> {
    AT_ONCE_CALLS.fetch_add(1, Ordering::SeqCst);
    if ctx.attempt() < 3 {
        return Err(RuntimeErr(format!("attempt {}", ctx.attempt())));
    }
    Ok(u64::from(ctx.attempt()) * 10)
}

/// Fails every time without waiting.
#[task(retries = 1)]
#[allow(clippy::unused_async)]
async fn at_once_refused() -> Result<u64, io::Error> {
    Err(connection_error())
}

#[process]
fn at_once(p: &mut Builder) {
    p.task(AtOnceFlaky::new());
    p.task(AtOnceRefused::new());
}

// An attempt that fails in its first poll (the worker's common path, no state of its own)
// is retried as one that waited is: the retries run, count and end the same way.
#[tokio::test]
async fn attempts_failing_in_their_first_poll_are_retried() {
    let report = rt().await.run(AtOnce {}).await.unwrap();
    let flaky = report.task("at_once_flaky").unwrap();
    assert_eq!(flaky.status, TaskStatus::Success);
    assert_eq!(flaky.attempts, 3);
    assert_eq!(report.result::<u64>("at_once_flaky").unwrap(), 30);
    assert_eq!(AT_ONCE_CALLS.load(Ordering::SeqCst), 3);
    let refused = report.task("at_once_refused").unwrap();
    assert_eq!(refused.status, TaskStatus::Errored);
    assert_eq!(refused.attempts, 2);
    let e = exhausted(refused);
    assert_eq!(e.attempts, 2);
    assert_eq!(
        e.last.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionRefused
    );
}
