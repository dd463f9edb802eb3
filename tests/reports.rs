//! Run reports (acceptance area 18): per-task status, attempts, timings, results and
//! errors; accessors that partition the tasks; lossless JSON.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::rt;
use procession::prelude::*;
use procession::{NonRetryable, OutputNotSerializable, ResultError};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ApplyError(String);

#[task]
fn load() -> Vec<u32> {
    vec![1, 2, 3]
}

#[task]
fn apply(xs: Vec<u32>) -> Result<u32, ApplyError> {
    Err(ApplyError(format!("cannot apply {} rows", xs.len())))
}

#[task]
fn notify(total: u32) -> u32 {
    total
}

#[process]
fn job(p: &mut Builder) {
    let xs = p.task(Load::new());
    let total = p.task(Apply::new(xs));
    p.task(Notify::new(total));
}

#[process(mode = "concurrent")]
fn job_parallel(p: &mut Builder) {
    let xs = p.task(Load::new());
    let total = p.task(Apply::new(xs));
    p.task(Notify::new(total));
}

fn assert_partition(report: &RunReport) {
    assert_eq!(report.ids(report.successes()), vec!["load"]);
    assert_eq!(report.ids(report.errored()), vec!["apply"]);
    assert_eq!(report.ids(report.skipped()), vec!["notify"]);
    assert!(report.cancelled().is_empty());
    let total = report.successes().len()
        + report.errored().len()
        + report.skipped().len()
        + report.cancelled().len();
    assert_eq!(total, report.tasks.len());
    assert_eq!(report.task("load").unwrap().status, TaskStatus::Success);
    assert_eq!(report.task("apply").unwrap().status, TaskStatus::Errored);
    assert_eq!(report.task("notify").unwrap().status, TaskStatus::Skipped);
    assert_eq!(report.status, RunStatus::Failed);
}

// PROC-14: the accessors partition the tasks: successes {load}, errored {apply}, skipped
// {notify}.
#[tokio::test]
async fn proc_14_accessors_partition_the_tasks() {
    let report = rt().await.run(Job {}).await.unwrap();
    assert_partition(&report);
}

// PROC-15: the same classification when the tasks run concurrently with 4 slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proc_15_parallel_report_classifies_each_task() {
    let report = rt()
        .await
        .run(Launch::new(JobParallel {}).max_concurrency(4))
        .await
        .unwrap();
    assert_partition(&report);
}

#[task]
fn answer() -> u32 {
    42
}

#[process]
fn all_good(p: &mut Builder) {
    p.task(Answer::new());
}

// PROC-16: all success: the entry has result 42; errored and skipped are empty.
#[tokio::test]
async fn proc_16_all_success_report() {
    let report = rt().await.run(AllGood {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded);
    assert!(report.is_success());
    let t = report.task("answer").unwrap();
    assert!(t.is_success());
    assert_eq!(t.result_as::<u32>().unwrap(), 42);
    assert!(t.error.is_none());
    assert!(report.errored().is_empty());
    assert!(report.skipped().is_empty());
    assert!(report.cancelled().is_empty());
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Nested {
    k: u32,
    nested: Vec<u32>,
}

#[task(name = "ok")]
fn ok_task() -> Nested {
    Nested {
        k: 1,
        nested: vec![1, 2],
    }
}

#[task]
fn boom() -> Result<u32, std::io::Error> {
    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "nope"))
}

#[task]
fn down(x: u32) -> u32 {
    x
}

/// A task with a description.
#[task]
fn unit_result() {}

#[process]
fn lossless(p: &mut Builder) {
    p.task(OkTask::new());
    p.task(UnitResult::new());
    let b = p.concurrent(|p| p.task(Boom::new()));
    p.concurrent(|p| p.task(Down::new(b)));
}

// PROC-66: `to_json` is complete and lossless: every task with its id, name, function,
// description, status ("success" / "errored" / "skipped"), attempts, elapsed, result
// (the value's JSON verbatim, null unless success) and error (message, chain, downstream
// impact; null unless errored); reading it back gives the same JSON.
#[tokio::test]
async fn proc_66_to_json_is_complete_and_lossless() {
    let report = rt()
        .await
        .run(Launch::new(Lossless {}).id("run-66"))
        .await
        .unwrap();
    let json = report.to_json();
    let data: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(data["process"], "lossless");
    assert_eq!(data["run_id"], "run-66");
    assert_eq!(data["status"], "failed");
    assert!(data["elapsed_ns"].as_u64().is_some());
    let tasks = data["tasks"].as_array().unwrap();
    let ids: Vec<&str> = tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec!["ok", "unit_result", "concurrent/boom", "concurrent#1/down"]
    );
    for t in tasks {
        for field in [
            "id",
            "name",
            "function",
            "description",
            "status",
            "attempts",
            "elapsed_ns",
            "result",
            "error",
        ] {
            assert!(
                t.get(field).is_some(),
                "task {} lacks `{field}`: {t}",
                t["id"]
            );
        }
    }
    let by_id = |id: &str| tasks.iter().find(|t| t["id"] == id).unwrap();

    let ok = by_id("ok");
    assert_eq!(ok["status"], "success");
    assert_eq!(ok["result"], json!({"k": 1, "nested": [1, 2]}));
    assert!(ok["error"].is_null());
    assert_eq!(ok["attempts"], 1);
    assert_eq!(ok["name"], "ok");
    assert!(ok["function"].as_str().unwrap().ends_with("::ok_task"));

    let unit = by_id("unit_result");
    assert_eq!(unit["status"], "success");
    assert!(unit["result"].is_null());
    assert_eq!(unit["description"], "A task with a description.");

    let boom = by_id("concurrent/boom");
    assert_eq!(boom["status"], "errored");
    assert!(boom["result"].is_null());
    assert!(boom["error"]["message"].as_str().unwrap().contains("nope"));
    assert!(!boom["error"]["chain"].as_array().unwrap().is_empty());
    assert_eq!(
        boom["error"]["downstream_impact"],
        json!(["concurrent#1/down"])
    );

    let down = by_id("concurrent#1/down");
    assert_eq!(down["status"], "skipped");
    assert!(down["result"].is_null());
    assert!(down["error"].is_null());
    assert_eq!(down["attempts"], 0);
    assert_eq!(down["elapsed_ns"], 0);

    let back = RunReport::from_json(&json).unwrap();
    assert_eq!(back.to_json(), json);
    assert_eq!(back.result::<Nested>("ok").unwrap().nested, vec![1, 2]);
    assert_eq!(
        back.task("concurrent#1/down").unwrap().elapsed(),
        Duration::ZERO
    );
    assert_eq!(
        back.task("ok").unwrap().elapsed(),
        report.task("ok").unwrap().elapsed()
    );
    // The original error value does not survive JSON; its message and chain do.
    let restored = back
        .task("concurrent/boom")
        .unwrap()
        .error
        .as_ref()
        .unwrap();
    assert!(restored.error().is_none());
    assert_eq!(
        restored.chain,
        report
            .task("concurrent/boom")
            .unwrap()
            .error
            .as_ref()
            .unwrap()
            .chain
    );
    assert!(report
        .task("concurrent/boom")
        .unwrap()
        .error
        .as_ref()
        .unwrap()
        .error()
        .is_some());
}

// PROC-67: the indented form has newlines and parses as the same report.
#[tokio::test]
async fn proc_67_pretty_json_is_valid() {
    let report = rt().await.run(AllGood {}).await.unwrap();
    let pretty = report.to_json_pretty();
    assert!(pretty.contains('\n'));
    let a: Value = serde_json::from_str(&pretty).unwrap();
    let b: Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        RunReport::from_json(&pretty)
            .unwrap()
            .result::<u32>("answer")
            .unwrap(),
        42
    );
}

// `result` explains why there is no value: unknown id, no result (with the status), or a
// result of another type.
#[tokio::test]
async fn result_errors_name_the_problem() {
    let report = rt().await.run(Job {}).await.unwrap();
    assert_eq!(
        report.result::<u32>("ghost").unwrap_err(),
        ResultError::UnknownTask {
            task: "ghost".into()
        }
    );
    assert_eq!(
        report.result::<u32>("notify").unwrap_err(),
        ResultError::NoResult {
            task: "notify".into(),
            status: TaskStatus::Skipped
        }
    );
    assert!(matches!(
        report.result::<String>("load"),
        Err(ResultError::Decode { .. })
    ));
    assert_eq!(report.result::<Vec<u32>>("load").unwrap(), vec![1, 2, 3]);
}

// The summary has a line per task with its status, and names what a failure skipped.
#[tokio::test]
async fn summary_lists_every_task() {
    let report = rt().await.run(Job {}).await.unwrap();
    let summary = report.summary();
    assert_eq!(summary.lines().count(), 1 + report.tasks.len(), "{summary}");
    assert!(summary.contains("ok      load"), "{summary}");
    assert!(summary.contains("ERROR   apply"), "{summary}");
    assert!(summary.contains("skipped notify"), "{summary}");
    assert!(
        summary.contains("skipped because of it: notify"),
        "{summary}"
    );
}

/// A value whose serialization fails at run time.
#[derive(Debug)]
struct Opaque;

impl serde::Serialize for Opaque {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("cannot store this"))
    }
}

impl<'de> serde::Deserialize<'de> for Opaque {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Opaque)
    }
}

static UNSTORABLE_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 3)]
fn unstorable() -> Opaque {
    UNSTORABLE_CALLS.fetch_add(1, Ordering::SeqCst);
    Opaque
}

#[process]
fn unstorable_job(p: &mut Builder) {
    p.task(Unstorable::new());
}

// PROC-66's "result that is not JSON" in a typed port: an output whose serialization
// fails makes the task errored with OutputNotSerializable (never a panic, never a dropped
// result), and it is not retried: serializing again would fail again.
#[tokio::test]
async fn output_that_cannot_be_serialized_is_a_final_error() {
    let report = rt().await.run(UnstorableJob {}).await.unwrap();
    let t = report.task("unstorable").unwrap();
    assert_eq!(t.status, TaskStatus::Errored);
    assert_eq!(t.attempts, 1);
    assert_eq!(UNSTORABLE_CALLS.load(Ordering::SeqCst), 1);
    let err = t.error.as_ref().unwrap();
    let e = err.error().unwrap();
    assert!(e.is::<NonRetryable>());
    let mut found = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        found |= x.is::<OutputNotSerializable>();
        cur = x.source();
    }
    assert!(found, "{err:?}");
    assert!(err.message.contains("cannot store this"), "{}", err.message);
}

// Every task that ran has an elapsed time and the run's elapsed covers them; tasks are
// listed in the order they were added.
#[tokio::test]
async fn timings_and_order() {
    let report = rt().await.run(Job {}).await.unwrap();
    assert_eq!(
        report.ids(report.tasks.iter().collect()),
        vec!["load", "apply", "notify"]
    );
    for id in ["load", "apply"] {
        let t = report.task(id).unwrap();
        assert!(t.elapsed() > Duration::ZERO, "{id}");
        assert!(t.elapsed() <= report.elapsed, "{id}");
        assert_eq!(t.attempts, 1);
    }
    assert!(report.run_id.starts_with("job-"), "{}", report.run_id);
}

// ------------------------------------------------ results are stored losslessly

#[task]
fn not_a_number() -> f64 {
    f64::NAN
}

#[task]
fn infinite() -> f32 {
    f32::INFINITY
}

#[task]
fn series() -> Vec<f64> {
    vec![1.0, 2.5, f64::NAN, 4.0]
}

#[task]
fn after_series(xs: Vec<f64>) -> usize {
    xs.len()
}

#[process]
fn nan_job(p: &mut Builder) {
    p.task(NotANumber::new());
}

#[process]
fn inf_job(p: &mut Builder) {
    p.task(Infinite::new());
}

#[process]
fn nan_series_job(p: &mut Builder) {
    let xs = p.task(Series::new());
    p.task(AfterSeries::new(xs));
}

/// The task's error, which must be (or wrap) [`OutputNotSerializable`].
fn unstorable_message(report: &RunReport, id: &str) -> String {
    let t = report.task(id).unwrap();
    assert_eq!(t.status, TaskStatus::Errored, "{}", report.summary());
    assert!(t.result.is_none());
    let err = t.error.as_ref().unwrap();
    let mut found = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = err.error().map(|e| e as _);
    while let Some(x) = cur {
        found |= x.is::<OutputNotSerializable>();
        cur = x.source();
    }
    assert!(found, "{err:?}");
    err.message.clone()
}

// serde_json writes NaN and infinities as `null`: a task returning NaN reported success
// with a stored `null` that no reader could decode as `f64`. Such a result is the task's
// error, naming the task and saying why; the run fails.
#[tokio::test]
async fn nan_result_is_an_error_not_a_lost_value() {
    let report = rt().await.run(NanJob {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let msg = unstorable_message(&report, "not_a_number");
    assert!(msg.contains("not_a_number"), "{msg}");
    assert!(msg.contains("NaN"), "{msg}");

    let report = rt().await.run(InfJob {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let msg = unstorable_message(&report, "infinite");
    assert!(msg.contains("inf"), "{msg}");
}

// A NaN inside a collection is lost the same way: the task errors (the message says
// where the value is) and its dependent is skipped.
#[tokio::test]
async fn nan_inside_vec_result_is_an_error_not_a_lost_value() {
    let report = rt().await.run(NanSeriesJob {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let msg = unstorable_message(&report, "series");
    assert!(msg.contains("[2]"), "{msg}");
    assert_eq!(
        report.task("after_series").unwrap().status,
        TaskStatus::Skipped
    );
}

#[task]
fn floats(seed: u64) -> Vec<f64> {
    // Finite floats from every part of the range (a simple xorshift: no dependency).
    let mut x = seed | 1;
    let mut out = vec![
        0.1,
        -0.0,
        1e-310,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        5e-324,
    ];
    while out.len() < 2_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = f64::from_bits(x);
        if f.is_finite() {
            out.push(f);
        }
    }
    out
}

#[task]
fn same_floats(xs: Vec<f64>) -> Vec<f64> {
    xs
}

#[process]
fn float_job(p: &mut Builder) {
    let xs = p.task(Floats::new(0x9e37_79b9_7f4a_7c15));
    p.task(SameFloats::new(xs));
}

// Finite floats round-trip bit for bit through the stored JSON (serde_json's default
// parser is not always correctly rounded).
#[tokio::test]
async fn finite_float_results_round_trip_losslessly() {
    let report = rt().await.run(FloatJob {}).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    let expected = floats(0x9e37_79b9_7f4a_7c15);
    let first_difference = |got: &[f64]| {
        assert_eq!(got.len(), expected.len());
        got.iter()
            .zip(&expected)
            .position(|(a, b)| a.to_bits() != b.to_bits())
            .map(|i| (i, got[i], expected[i]))
    };
    for id in ["floats", "same_floats"] {
        let got: Vec<f64> = report.result(id).unwrap();
        assert_eq!(first_difference(&got), None, "{id}");
    }
    let back = RunReport::from_json(&report.to_json()).unwrap();
    let got: Vec<f64> = back.result("floats").unwrap();
    assert_eq!(first_difference(&got), None);
}

// ---------------------------------------------------------------- large runs

#[task]
fn quiet(i: u32) -> u32 {
    i
}

#[task]
async fn noisy(ctx: &Ctx) -> Result<u32, String> {
    ctx.progress(50, "halfway");
    ctx.log(procession::Level::Warning, "careful");
    Err("boom".into())
}

#[process(mode = "concurrent")]
fn many_quiet_one_noisy(p: &mut Builder) {
    p.each(0..5000, |p, i| p.task(Quiet::new(i)));
    p.task(Noisy::new());
}

// A large run keeps its task rows compact (the rare fields boxed) and frees the
// journal's copy before it builds its report: the rows in the store and the report still
// hold everything, the error, log and progress message of the one noisy task included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_run_keeps_every_field_of_its_rows_and_report() {
    let rt = rt().await;
    let run = rt.launch(ManyQuietOneNoisy {}).await.unwrap();
    let id = run.id().to_owned();
    let report = run.wait().await.unwrap();
    assert_eq!(report.tasks.len(), 5001);
    assert_eq!(report.successes().len(), 5000);
    let failed = report.errored();
    assert_eq!(failed.len(), 1);
    let error = failed[0].error.as_ref().unwrap();
    assert!(error.message.contains("boom"), "{}", error.message);
    let rows = rt.task_rows(&id).await.unwrap();
    assert_eq!(rows.len(), 5001);
    let mut results = 0u64;
    for (_, row) in &rows {
        if &*row.task == "noisy" {
            assert_eq!(row.state, procession::State::Failed);
            assert!(row.error.as_deref().unwrap().contains("boom"));
            assert_eq!(row.progress.message.as_deref(), Some("halfway"));
            assert!(
                row.log.iter().any(|e| e.message == "careful"),
                "{:?}",
                row.log
            );
            assert_eq!(row.attempts, 1);
        } else {
            assert_eq!(row.state, procession::State::Done);
            assert_eq!(row.progress.percent, Some(100.0));
            results += row.result.as_deref().unwrap().parse::<u64>().unwrap();
            assert!(row.ended_at.is_some() && row.started_at.is_some());
        }
    }
    assert_eq!(results, (0..5000u64).sum::<u64>());
}

#[task]
fn ping(i: u32) -> u32 {
    i
}

#[task]
fn pong(i: u32) -> u32 {
    i
}

#[process(mode = "concurrent")]
fn ping_pong(p: &mut Builder) {
    p.each(0..50u32, |p, i| {
        if i.is_multiple_of(3) {
            p.task(Pong::new(i))
        } else {
            p.task(Ping::new(i))
        }
    });
}

// Task rows keep their task's name by index into the run's names: interleaved task types
// keep theirs.
#[tokio::test]
async fn task_rows_keep_interleaved_task_names() {
    let rt = rt().await;
    let run = rt.launch(PingPong {}).await.unwrap();
    let id = run.id().to_owned();
    let report = run.wait().await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    let rows = rt.task_rows(&id).await.unwrap();
    assert_eq!(rows.len(), 50);
    for (i, row) in &rows {
        let entry = &report.tasks[*i as usize];
        assert_eq!(&*row.node, &*entry.id);
        assert_eq!(&*row.task, entry.name());
        let v: u32 = row.result.as_deref().unwrap().parse().unwrap();
        assert_eq!(
            &*row.task,
            if v.is_multiple_of(3) { "pong" } else { "ping" }
        );
    }
}

/// Tells a [`Held`] value that its run's waiter has the report.
#[derive(Default)]
struct Gate {
    reported: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
    /// Set when the armed value is dropped: whether the waiter had the report then.
    freed_after_report: std::sync::Mutex<Option<bool>>,
}

/// An argument of a task that never runs (skipped), so it is freed with what its run
/// leaves. Freed before the run's waiter got its report, it waits for it (up to 20 s):
/// a waiter that cannot run meanwhile makes it wait the whole time.
#[derive(serde::Serialize, serde::Deserialize)]
struct Held {
    #[serde(skip)]
    gate: Option<std::sync::Arc<Gate>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(gate) = self.gate.take() else { return };
        let reported = gate.reported.lock().unwrap();
        let (reported, _) = gate
            .wake
            .wait_timeout_while(reported, Duration::from_secs(20), |r| !*r)
            .unwrap();
        *gate.freed_after_report.lock().unwrap() = Some(*reported);
    }
}

#[task]
fn fails_first() -> Result<u32, String> {
    Err("no".into())
}

#[task]
fn never_runs(x: u32, held: Held) -> u32 {
    drop(held);
    x
}

/// Runs a graph whose skipped task holds `held` (and `extra` no-op tasks) from a task of
/// a one-worker runtime, and says whether its run was freed after the waiter had the
/// report.
async fn freed_after_report(extra: u32) -> Option<bool> {
    let gate = std::sync::Arc::new(Gate::default());
    let held = Held {
        gate: Some(gate.clone()),
    };
    let rt = rt().await;
    let g2 = gate.clone();
    let waiter = tokio::spawn(async move {
        let mut g = TaskGraph::new();
        let x = g.add("fails_first", FailsFirst::new()).unwrap();
        g.add("never_runs", NeverRuns::new(x, held)).unwrap();
        for i in 0..extra {
            g.add(&format!("q{i}"), Quiet::new(i)).unwrap();
        }
        let report = rt.run_graph(g).await.unwrap();
        *g2.reported.lock().unwrap() = true;
        g2.wake.notify_all();
        report
    });
    let report = waiter.await.unwrap();
    assert_eq!(report.ids(report.skipped()), vec!["never_runs"]);
    for _ in 0..400 {
        if let Some(after) = *gate.freed_after_report.lock().unwrap() {
            return Some(after);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// What a large run leaves is freed on the blocking pool, after the report reached its
/// waiter, even when the waiter is a task on the driver's own worker thread (a small
/// run's is freed by the driver at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_large_run_is_freed_after_its_waiter_has_the_report() {
    assert_eq!(freed_after_report(5_000).await, Some(true));
}

/// Returns `i`, or fails when `i == bad`.
#[task]
fn numbered(i: u32, bad: u32) -> Result<u32, ApplyError> {
    if i == bad {
        Err(ApplyError(format!("{i} is the bad one")))
    } else {
        Ok(i)
    }
}

/// Adds up what it reads.
#[task]
fn sum_of(xs: Vec<u32>) -> u64 {
    xs.iter().map(|&x| u64::from(x)).sum()
}

/// Numbered tasks in a large graph.
const LARGE: u32 = 20_000;
/// Its readers, each of three numbered tasks.
const READERS: u32 = 2_000;

/// `LARGE` numbered tasks, every 1,000th with a description of its own and every
/// 1,500th optional (and `bad` too when `bad_optional`), then `READERS` tasks that each
/// read three of them, spread over the whole list: 22,000 tasks, more than the 16,384
/// from which the executor prepares a run in two walks side by side and writes its
/// report's two halves side by side.
#[process(mode = "concurrent")]
fn large(p: &mut Builder, bad: u32, bad_optional: bool) {
    let outs = p.each(0..LARGE, |p, i| {
        let mut t = procession::TaskSpec::new(Numbered::new(i, bad));
        if i % 1000 == 7 {
            t = t.description(format!("own {i}"));
        }
        if i % 1500 == 3 || (i == bad && bad_optional) {
            t = t.optional();
        }
        p.task(t)
    });
    p.each(0..READERS, |p, j| {
        let j = j as usize;
        p.task(SumOf::new([outs[j], outs[j + 9_000], outs[19_999 - j]]))
    });
}

/// What a large run's entry `i` should say, other than its status.
fn check_large_entry(report: &RunReport, ids: &[&str], i: usize) {
    let t = &report.tasks[i];
    assert_eq!(&*t.id, ids[i], "entry {i}");
    if i < LARGE as usize {
        let n = i as u32;
        let description = if n % 1000 == 7 {
            format!("own {n}")
        } else {
            "Returns `i`, or fails when `i == bad`.".to_owned()
        };
        assert_eq!(t.description(), description, "entry {i}");
        assert_eq!(t.optional, n % 1500 == 3, "entry {i}");
    } else {
        assert_eq!(t.description(), "Adds up what it reads.", "entry {i}");
        assert!(!t.optional, "entry {i}");
    }
}

/// The report of a run of [`Large`].
async fn run_large(rt: &Runtime, bad: u32, bad_optional: bool) -> RunReport {
    rt.run(Large { bad, bad_optional }).await.unwrap()
}

// A large run's report (built in two halves side by side) has every entry in node
// order, with its own id, description, optional flag, status and result, and a failure
// in either half decides the run's status as in a small run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_runs_report_has_every_entry_whichever_half_fails() {
    let rt = rt().await;
    let graph = Graph::of(Large {
        bad: u32::MAX,
        bad_optional: false,
    })
    .unwrap();
    let ids = graph.node_ids();
    let total = (LARGE + READERS) as usize;
    assert_eq!(ids.len(), total);

    // No failure: every entry, each reader's sum read across both halves.
    let report = run_large(&rt, u32::MAX, false).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(report.tasks.len(), total);
    for i in 0..total {
        check_large_entry(&report, &ids, i);
        assert!(report.tasks[i].is_success(), "entry {i}");
    }
    for j in 0..READERS {
        let t = &report.tasks[(LARGE + j) as usize];
        let want = u64::from(j) + u64::from(j + 9_000) + u64::from(19_999 - j);
        assert_eq!(t.result_as::<u64>().unwrap(), want, "reader {j}");
    }

    // A failure in the upper half (of the 22,000: above 11,000) fails the run; the one
    // reader of it is skipped and listed as its downstream impact.
    let bad = 19_994;
    let report = run_large(&rt, bad, false).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.tasks.len(), total);
    let reader = (LARGE + 5) as usize;
    for i in 0..total {
        check_large_entry(&report, &ids, i);
        let want = match i {
            i if i == bad as usize => TaskStatus::Errored,
            i if i == reader => TaskStatus::Skipped,
            _ => TaskStatus::Success,
        };
        assert_eq!(report.tasks[i].status, want, "entry {i}");
    }
    let e = report.tasks[bad as usize].error.as_ref().unwrap();
    assert_eq!(e.message, "19994 is the bad one");
    assert_eq!(e.downstream_impact, vec![ids[reader].to_owned()]);

    // The same failure made optional: tolerated, the run succeeds with a warning.
    let report = run_large(&rt, bad, true).await;
    assert_eq!(report.status, RunStatus::Succeeded);
    assert!(report.tasks[bad as usize].optional);
    assert_eq!(report.tasks[bad as usize].status, TaskStatus::Errored);
    assert_eq!(report.ids(report.warnings()), vec![ids[bad as usize]]);

    // A failure in the lower half fails the run too.
    let report = run_large(&rt, 5, false).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.tasks[5].status, TaskStatus::Errored);
    assert_eq!(report.tasks[reader].status, TaskStatus::Skipped);
    assert_eq!(report.errored().len(), 1);
    rt.shutdown().await.unwrap();
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

/// Fails its first attempt, then succeeds after a short wait.
#[task(retries = 1)]
async fn flaky_then_slow(x: u32) -> Result<u32, String> {
    if FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err("first attempt".into());
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    Ok(x + 1)
}

/// Waits, then succeeds in its first attempt.
#[task]
async fn slow_once(x: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(20)).await;
    x * 2
}

#[process(mode = "concurrent")]
fn quick_slow_flaky(p: &mut Builder) {
    let a = p.task(Quiet::new(7));
    let b = p.task(SlowOnce::new(a));
    p.task(FlakyThenSlow::new(b));
}

// A success's row is written from what its worker left in the executor's node cell:
// the row says what the report says (attempts, time to the nanosecond, result), and its
// stamps fall inside the run, its end its start plus its time (each stamp cut to the
// millisecond), for a task that ended at once, one that waited, and one that succeeded
// after a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_row_says_what_the_report_says() {
    let rt = rt().await;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = now_ms();
    let run = rt.launch(QuickSlowFlaky {}).await.unwrap();
    let id = run.id().to_owned();
    let report = run.wait().await.unwrap();
    let after = now_ms();
    assert!(report.is_success(), "{}", report.summary());
    let rows = rt.task_rows(&id).await.unwrap();
    assert_eq!(rows.len(), 3);
    for (_, row) in &rows {
        let entry = report
            .tasks
            .iter()
            .find(|t| t.id == row.node.as_str())
            .expect("an entry per row");
        assert_eq!(row.state, procession::State::Done, "{}", row.node);
        assert_eq!(row.attempts, entry.attempts, "{}", row.node);
        assert_eq!(
            row.elapsed_ns,
            entry.elapsed().as_nanos() as u64,
            "{}",
            row.node
        );
        assert_eq!(
            row.result.as_deref(),
            entry.result.as_ref().map(procession::Json::get),
            "{}",
            row.node
        );
        let (started, ended) = (row.started_at.unwrap(), row.ended_at.unwrap());
        assert!(
            before <= started && started <= ended && ended <= after,
            "{row:?}"
        );
        // Both stamps are cut to the millisecond, each on its own.
        let elapsed_ms = row.elapsed_ns / 1_000_000;
        assert!((ended - started).abs_diff(elapsed_ms) <= 1, "{row:?}");
    }
    let flaky = rows
        .iter()
        .find(|(_, r)| &*r.task == "flaky_then_slow")
        .unwrap();
    assert_eq!(flaky.1.attempts, 2);
    assert_eq!(flaky.1.result.as_deref(), Some("15"));
    assert!(flaky.1.elapsed_ns >= 30_000_000);
    let slow = rows.iter().find(|(_, r)| &*r.task == "slow_once").unwrap();
    assert!(slow.1.elapsed_ns >= 20_000_000);
    // The flaky task starts once the slow one ended (it reads its result).
    assert!(
        flaky.1.started_at.unwrap() + 1 >= slow.1.ended_at.unwrap(),
        "{flaky:?} {slow:?}"
    );
}
