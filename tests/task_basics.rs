//! Task definition and execution basics (acceptance area 4), and what `#[task]`
//! generates: the plain function stays callable (sync and async, with
//! `Ctx::detached`), `<T as Task>::META` holds name, description and policy, and the
//! constructor takes each input as a value or as a handle.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::rt;
use procession::prelude::*;
use procession::{Backoff, Launch, Read};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("division by zero")]
struct DivByZero;

/// Divides ten by `a`.
#[task]
fn div10(a: i64) -> Result<i64, DivByZero> {
    if a == 0 {
        Err(DivByZero)
    } else {
        Ok(10 / a)
    }
}

#[process(mode = "concurrent")]
fn divisions(p: &mut Builder) {
    p.task(Div10::new(2));
    p.task(Div10::new(0));
}

// PROC-1: called directly, a task is the plain function: a value, or the original error.
#[test]
fn proc_1_direct_call_returns_the_value_or_the_original_error() {
    assert_eq!(div10(2), Ok(5));
    assert_eq!(div10(0), Err(DivByZero));
}

// PROC-1: run by the runtime, the first task succeeds with 5; the second errors with the
// original error (one attempt ran, so it is not wrapped) and has no result.
#[tokio::test]
async fn proc_1_run_reports_the_value_or_the_original_error() {
    let report = rt().await.run(Divisions {}).await.unwrap();
    let ok = report.task("div10").unwrap();
    assert_eq!(ok.status, TaskStatus::Success);
    assert!(ok.error.is_none());
    assert_eq!(report.result::<i64>("div10").unwrap(), 5);

    let bad = report.task("div10#1").unwrap();
    assert_eq!(bad.status, TaskStatus::Errored);
    assert!(bad.result.is_none());
    assert_eq!(bad.attempts, 1);
    let err = bad.error.as_ref().unwrap();
    assert_eq!(err.message, "division by zero");
    assert!(err.error().unwrap().is::<DivByZero>());
    assert_eq!(report.status, RunStatus::Failed);
}

static HELLO_CALLS: AtomicUsize = AtomicUsize::new(0);

#[task]
fn hello() -> String {
    HELLO_CALLS.fetch_add(1, Ordering::SeqCst);
    "hello".into()
}

#[task]
fn world() -> String {
    "world".into()
}

#[process(mode = "sequential")]
fn single(p: &mut Builder) {
    p.task(Hello::new());
}

#[process(mode = "sequential")]
fn two_independent(p: &mut Builder) {
    p.task(Hello::new());
    p.task(World::new());
}

// PROC-21: one task, sequential run: completes, the task ran once.
#[tokio::test]
async fn proc_21_single_task_sequential_run() {
    let before = HELLO_CALLS.load(Ordering::SeqCst);
    let report = rt().await.run(Single {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(report.tasks.len(), 1);
    assert_eq!(report.result::<String>("hello").unwrap(), "hello");
    assert!(HELLO_CALLS.load(Ordering::SeqCst) > before);
}

// PROC-23: two independent tasks, sequential: both succeed.
#[tokio::test]
async fn proc_23_independent_tasks_sequential_run() {
    let report = rt().await.run(TwoIndependent {}).await.unwrap();
    assert!(report.is_success());
    assert_eq!(report.ids(report.successes()), vec!["hello", "world"]);
}

#[task]
fn square(x: i64) -> i64 {
    x * x
}

// WF-1: a bare `#[task]` keeps the function callable; the task's name is the function's
// name and `function` is its module path (the Rust equivalent of the qualified name);
// the policy is the default one.
#[test]
fn wf_1_bare_task_keeps_the_function_and_gets_default_meta() {
    assert_eq!(square(5), 25);
    let meta = <Square as Task>::META;
    assert_eq!(meta.name, "square");
    assert_eq!(meta.function, concat!(module_path!(), "::square"));
    assert_eq!(meta.description, "");
    assert!(!meta.is_async);
    let policy = meta.policy;
    assert_eq!(policy.max_attempts, 1);
    assert_eq!(policy.retries(), 0);
    assert_eq!(policy.backoff, Backoff::None);
    assert_eq!(policy.timeout, None);
    assert!(policy.retry_on.is_none());
    assert!(policy.retry_timeouts);
    assert_eq!(policy.on_dep_failure, OnDepFailure::Skip);
}

#[task(name = "custom", retries = 2, timeout = "5s")]
fn with_args(x: u32) -> u32 {
    x + 1
}

// WF-2: name, retries and timeout from the attribute; max_attempts = retries + 1; a
// plain `fn` is a blocking task (the port's "thread pool").
#[test]
fn wf_2_attribute_values_reach_the_meta() {
    let meta = <WithArgs as Task>::META;
    assert_eq!(meta.name, "custom");
    assert!(meta.function.ends_with("::with_args"));
    assert_eq!(meta.policy.retries(), 2);
    assert_eq!(meta.policy.max_attempts, 3);
    assert_eq!(meta.policy.timeout, Some(Duration::from_secs(5)));
    assert!(!meta.is_async);
    assert_eq!(with_args(1), 2);
}

#[process]
fn custom_named(p: &mut Builder) {
    p.task(WithArgs::new(41_u32));
}

// WF-2: the custom name is the node id and the report's name.
#[tokio::test]
async fn wf_2_custom_name_is_used_in_the_report() {
    let report = rt().await.run(CustomNamed {}).await.unwrap();
    let t = report.task("custom").unwrap();
    assert_eq!(t.name(), "custom");
    assert!(t.function().ends_with("::with_args"));
    assert_eq!(report.result::<u32>("custom").unwrap(), 42);
}

#[task(max_attempts = 3)]
fn with_max_attempts() {}

// WF-7: `max_attempts = 3` is `retries = 2`.
#[test]
fn wf_7_max_attempts_alias() {
    let policy = <WithMaxAttempts as Task>::META.policy;
    assert_eq!(policy.max_attempts, 3);
    assert_eq!(policy.retries(), 2);
}

/// Loads the orders
/// of one source.
#[task]
async fn documented(source: String) -> String {
    source
}

/// Sends the report.
///
/// Everything after the first paragraph stays out of the description.
#[task]
fn two_paragraphs() {}

/// This doc comment loses against the attribute.
#[task(description = "explicit description")]
fn described() {}

// The description is the doc comment's first paragraph (lines joined), or the
// `description` attribute, which wins over the doc comment.
#[test]
fn description_comes_from_the_doc_comment_or_the_attribute() {
    assert_eq!(
        <Documented as Task>::META.description,
        "Loads the orders of one source."
    );
    const { assert!(<Documented as Task>::META.is_async) };
    assert_eq!(
        <Described as Task>::META.description,
        "explicit description"
    );
}

// Only the first paragraph of the doc comment is the description.
#[test]
fn description_is_only_the_first_paragraph() {
    assert_eq!(
        <TwoParagraphs as Task>::META.description,
        "Sends the report."
    );
}

#[task(
    retries = 4,
    backoff = "exponential(100ms, 5s, jitter)",
    timeout = "1.5m",
    retry_on = [std::io::Error, DivByZero],
    retry_timeouts = false,
    on_dep_failure = "run_anyway"
)]
async fn full_policy() {}

#[task(backoff = "linear(250ms)", on_dep_failure = "fail")]
fn linear_policy() {}

#[task(backoff = "fixed(2s)")]
fn fixed_policy() {}

// Every policy key lands in `META.policy` as parsed at compile time.
#[test]
fn policy_values_are_generated() {
    let p = <FullPolicy as Task>::META.policy;
    assert_eq!(p.max_attempts, 5);
    assert_eq!(
        p.backoff,
        Backoff::Exponential {
            base: Duration::from_millis(100),
            cap: Some(Duration::from_secs(5)),
            jitter: true
        }
    );
    assert_eq!(p.timeout, Some(Duration::from_secs(90)));
    let names: Vec<&str> = p.retry_on.unwrap().iter().map(|m| m.name).collect();
    assert_eq!(names, vec!["std::io::Error", "DivByZero"]);
    assert!(!p.retry_timeouts);
    assert_eq!(p.on_dep_failure, OnDepFailure::RunAnyway);
    // The matchers test the error type.
    assert!(p.is_retryable(&std::io::Error::other("x")));
    assert!(p.is_retryable(&DivByZero));
    assert!(!p.is_retryable(&std::fmt::Error));

    let l = <LinearPolicy as Task>::META.policy;
    assert_eq!(
        l.backoff,
        Backoff::Linear {
            base: Duration::from_millis(250),
            cap: None,
            jitter: false
        }
    );
    assert_eq!(l.on_dep_failure, OnDepFailure::Fail);
    let f = <FixedPolicy as Task>::META.policy;
    assert_eq!(
        f.backoff,
        Backoff::Fixed {
            delay: Duration::from_secs(2),
            jitter: false
        }
    );
}

#[task]
fn no_args() -> String {
    "invoked".into()
}

#[task]
fn many_args(a: u8, b: String, c: Vec<u32>, d: Option<bool>) -> String {
    format!("{a}/{b}/{c:?}/{d:?}")
}

#[task]
async fn with_ctx(ctx: &Ctx, tag: String) -> (String, String, String, u32, String, String) {
    (
        ctx.task_name().to_owned(),
        ctx.node_id().to_string(),
        ctx.process_id().to_owned(),
        ctx.attempt(),
        ctx.idempotency_key(),
        tag,
    )
}

#[process]
fn invocations(p: &mut Builder) {
    p.task(NoArgs::new());
    p.task(ManyArgs::new(7_u8, "x", vec![1_u32, 2], Some(true)));
    p.concurrent(|p| p.task(WithCtx::new("t")));
}

// TT-3: a task without parameters runs with no context injected.
// TT-4: a task with several parameters of different types gets each of them.
// TT-5: a task declaring `ctx: &Ctx` gets the context of its run: its name, node id, the
// run's id, the attempt number and a stable idempotency key. (`#[task]` tells the runtime
// which functions take a context: the others get an inert one they never see, made
// without the run's shared state.)
#[tokio::test]
async fn tt_3_4_5_tasks_are_invoked_with_or_without_context() {
    // Checked as the test compiles (the constants are the macro's output).
    const {
        assert!(!<NoArgs as procession::Task>::TAKES_CTX);
        assert!(!<ManyArgs as procession::Task>::TAKES_CTX);
        assert!(<WithCtx as procession::Task>::TAKES_CTX);
    }
    let run = rt()
        .await
        .launch(Launch::new(Invocations {}).id("tt5-run"))
        .await
        .unwrap();
    let report = run.wait().await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.run_id, "tt5-run");
    assert_eq!(report.result::<String>("no_args").unwrap(), "invoked");
    assert_eq!(
        report.result::<String>("many_args").unwrap(),
        "7/x/[1, 2]/Some(true)"
    );
    let (name, node, process, attempt, key, tag) = report
        .result::<(String, String, String, u32, String, String)>("concurrent/with_ctx")
        .unwrap();
    assert_eq!(name, "with_ctx");
    assert_eq!(node, "concurrent/with_ctx");
    assert_eq!(process, "tt5-run");
    assert_eq!(attempt, 1);
    assert_eq!(key, "tt5-run/concurrent/with_ctx");
    assert_eq!(tag, "t");
}

#[task]
async fn reports_progress(ctx: &Ctx) -> u32 {
    ctx.progress(50.0, "half way");
    ctx.progress(100.0, "done");
    ctx.progress(None, "indeterminate");
    ctx.log(Level::Info, "finished");
    1
}

#[process]
fn progress_job(p: &mut Builder) {
    p.task(ReportsProgress::new());
}

// OPT-51: a task that reports progress 50 then 100 ends done; the run has a duration.
#[tokio::test]
async fn opt_51_progress_reporting_task_runs_to_done() {
    let report = rt().await.run(ProgressJob {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded);
    let t = report.task("reports_progress").unwrap();
    assert_eq!(t.status, TaskStatus::Success);
    assert_eq!(t.attempts, 1);
    assert!(t.elapsed() > Duration::ZERO);
    assert!(report.elapsed >= t.elapsed());
}

#[task]
fn greet(ctx: &Ctx, name: String) -> String {
    format!(
        "{} greets {name} (attempt {})",
        ctx.task_name(),
        ctx.attempt()
    )
}

#[task]
async fn count_until_cancelled(ctx: &Ctx, limit: u32) -> u32 {
    let mut n = 0;
    while ctx.should_continue() && n < limit {
        n += 1;
        tokio::task::yield_now().await;
    }
    n
}

// Issue 2: a sync task that takes a context is called directly with `Ctx::detached`.
#[test]
fn direct_call_of_a_sync_task_with_a_detached_context() {
    let ctx = Ctx::detached("greet");
    assert_eq!(greet(&ctx, "bob".into()), "greet greets bob (attempt 1)");
    assert_eq!(ctx.process_id(), "detached");
    assert_eq!(&*ctx.node_id(), "greet");
    assert_eq!(ctx.idempotency_key(), "detached/greet");
}

// Issue 2: an async task is called directly (no runtime involved beyond the test's), and
// cancelling the detached context is seen by the task.
#[tokio::test]
async fn direct_call_of_an_async_task_with_a_detached_context() {
    assert_eq!(documented("eu".into()).await, "eu");
    let ctx = Ctx::detached("count_until_cancelled");
    assert_eq!(count_until_cancelled(&ctx, 5).await, 5);
    assert!(ctx.should_continue());
    ctx.cancel();
    assert!(ctx.is_cancelled());
    assert_eq!(count_until_cancelled(&ctx, 5).await, 0);
    // `cancelled()` completes at once for a cancelled context.
    tokio::time::timeout(Duration::from_secs(5), ctx.cancelled())
        .await
        .unwrap();
}

#[task]
fn label(text: String) -> String {
    format!("<{text}>")
}

#[task]
fn join_parts(parts: Vec<String>) -> String {
    parts.join("+")
}

#[process(mode = "concurrent")]
fn conversions(p: &mut Builder) {
    let la = p.task(Label::new("a")); // &str for String
    let lb = p.task(Label::new(String::from("b"))); // a String value
    let lc = p.task(Label::new(la)); // Out<String>
    #[allow(clippy::needless_borrows_for_generic_args)] // `&Out<T>` is what is tested
    let ld = p.task(Label::new(&lb)); // &Out<String>
    p.task(JoinParts::new(vec![la, lb])); // Vec<Out<String>> for Vec<String>
    p.task(JoinParts::new(&[lc, ld][..])); // &[Out<String>]
    p.task(JoinParts::new([la, ld, la])); // [Out<String>; N], one handle twice
    p.task(JoinParts::new(vec!["x".to_owned(), "y".to_owned()])); // Vec<String> value
    p.task(JoinParts::new(Vec::<Out<String>>::new())); // no handle at all
}

// Issue 2: constructors accept values and handles: `&str` and `String` for `String`,
// `Out<T>` and `&Out<T>` for `T`, and `Vec<Out<T>>`, `&[Out<T>]`, `[Out<T>; N]` for
// `Vec<T>` (gathered in order).
#[tokio::test]
async fn constructors_accept_values_and_handles() {
    let graph = Graph::of(Conversions {}).unwrap();
    assert_eq!(graph.dependencies("label#2").unwrap(), vec!["label"]);
    assert_eq!(
        graph.dependencies("join_parts").unwrap(),
        vec!["label", "label#1"]
    );
    assert!(graph.dependencies("join_parts#3").unwrap().is_empty());

    let report = rt().await.run(Conversions {}).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    let r = |id: &str| report.result::<String>(id).unwrap();
    assert_eq!(r("label"), "<a>");
    assert_eq!(r("label#1"), "<b>");
    assert_eq!(r("label#2"), "<<a>>");
    assert_eq!(r("label#3"), "<<b>>");
    assert_eq!(r("join_parts"), "<a>+<b>");
    assert_eq!(r("join_parts#1"), "<<a>>+<<b>>");
    assert_eq!(r("join_parts#2"), "<a>+<<b>>+<a>");
    assert_eq!(r("join_parts#3"), "x+y");
    assert_eq!(r("join_parts#4"), "");
}

// A constructor call builds a value that can be inspected: values are constants,
// handles point at nodes.
#[test]
fn constructed_tasks_report_their_inputs() {
    let mut g = TaskGraph::new();
    let a = g.add("a", Label::new("a")).unwrap();
    let mut seen = Vec::new();
    Label::new(a).visit_inputs(&mut |r| seen.push(r));
    assert_eq!(
        seen,
        vec![Read {
            node: a.node(),
            required: true
        }]
    );
    let mut none = Vec::new();
    Label::new("x").visit_inputs(&mut |r| none.push(r));
    assert!(none.is_empty());
}
