//! Lifecycle hooks (acceptance area 20): started, completed, failed(task, error),
//! cancelled, and around-task, set per process (`#[process(hooks = T)]`) or per runtime.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::error::Error as StdError;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use common::rt;
use procession::prelude::*;
use procession::{Attempt, DependencyFailed, Hooks, RunInfo, TaskInfo};

/// Records every hook call as a line of text.
#[derive(Clone, Default)]
struct Recorder {
    tag: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn new(tag: &'static str) -> Self {
        Recorder {
            tag,
            log: Arc::default(),
        }
    }

    fn push(&self, line: String) {
        let line = if self.tag.is_empty() {
            line
        } else {
            format!("{}:{line}", self.tag)
        };
        self.log.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Hooks for Recorder {
    fn started(&self, run: &RunInfo) {
        self.push(format!("started {} {}", run.process, run.run_id));
    }

    fn completed(&self, run: &RunInfo, report: &RunReport) {
        self.push(format!("completed {} {:?}", run.run_id, report.status));
    }

    fn failed(&self, _run: &RunInfo, task: &str, error: &(dyn StdError + 'static)) {
        self.push(format!("failed {task}: {error}"));
    }

    fn cancelled(&self, run: &RunInfo, report: &RunReport) {
        self.push(format!("cancelled {} {:?}", run.run_id, report.status));
    }

    fn around_task<'a>(&'a self, task: &'a TaskInfo, attempt: Attempt<'a>) -> Attempt<'a> {
        self.push(format!("before {} #{}", task.node_id, task.attempt));
        Box::pin(async move {
            let outcome = attempt.await;
            self.push(format!(
                "after {} #{} ok={}",
                task.node_id,
                task.attempt,
                outcome.is_ok()
            ));
            outcome
        })
    }
}

#[task]
fn fine() -> u32 {
    1
}

#[process(mode = "sequential")]
fn all_fine(p: &mut Builder) {
    p.task(Fine::new());
    p.task(Fine::new());
}

// TT-9: on success, `completed` is called once with the report, after `started` and the
// attempts; `failed` and `cancelled` are not called.
#[tokio::test]
async fn tt_9_completed_is_called_on_success() {
    let rec = Recorder::new("");
    let rt = Runtime::in_memory()
        .hooks(rec.clone())
        .start()
        .await
        .unwrap();
    let report = rt.run(Launch::new(AllFine {}).id("r1")).await.unwrap();
    assert!(report.is_success());
    assert_eq!(
        rec.lines(),
        vec![
            "started all_fine r1",
            "before fine #1",
            "after fine #1 ok=true",
            "before fine#1 #1",
            "after fine#1 #1 ok=true",
            "completed r1 Succeeded",
        ]
    );
}

#[derive(Debug, thiserror::Error)]
#[error("not implemented")]
struct NotImplemented;

/// Records whether `failed` received the original error value.
#[derive(Clone, Default)]
struct TypedFailure(Arc<Mutex<Vec<(String, bool)>>>);

impl Hooks for TypedFailure {
    fn failed(&self, _run: &RunInfo, task: &str, error: &(dyn StdError + 'static)) {
        self.0
            .lock()
            .unwrap()
            .push((task.to_owned(), error.is::<NotImplemented>()));
    }
}

#[task]
fn unimplemented_step() -> Result<u32, NotImplemented> {
    Err(NotImplemented)
}

#[process(mode = "concurrent")]
fn one_fails(p: &mut Builder) {
    p.task(Fine::new());
    p.sequential(|p| p.task(UnimplementedStep::new()));
}

// TT-6: a failing task calls `failed(run, task, error)` with its node id and the original
// error, and the failure still reaches the report (status Failed, the error kept);
// `completed` is not called.
#[tokio::test]
async fn tt_6_failed_is_called_with_the_task_and_the_original_error() {
    let rec = Recorder::new("");
    let typed = TypedFailure::default();
    let rt = Runtime::in_memory()
        .hooks(rec.clone())
        .hooks(typed.clone())
        .start()
        .await
        .unwrap();
    let report = rt.run(Launch::new(OneFails {}).id("r2")).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let lines = rec.lines();
    assert!(
        lines.contains(&"failed sequential/unimplemented_step: not implemented".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"after sequential/unimplemented_step #1 ok=false".to_owned()),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("completed") || l.starts_with("cancelled")),
        "{lines:?}"
    );
    assert_eq!(
        *typed.0.lock().unwrap(),
        vec![("sequential/unimplemented_step".to_owned(), true)]
    );
    let err = report
        .task("sequential/unimplemented_step")
        .unwrap()
        .error
        .as_ref()
        .unwrap();
    assert!(err.error().unwrap().is::<NotImplemented>());
}

/// Overrides nothing: every hook is the default.
#[derive(Default)]
struct Defaults;

impl Hooks for Defaults {}

#[process(hooks = Defaults)]
fn with_defaults(p: &mut Builder) {
    p.task(Fine::new());
}

// TT-54 / TT-56 / TT-58: the default started, completed and cancelled (and failed,
// around_task) do nothing and never fail; a process using them runs normally.
#[tokio::test]
async fn tt_54_56_58_default_hooks_do_nothing() {
    let info = RunInfo {
        process: "p".into(),
        run_id: "foo".into(),
    };
    let report = rt().await.run(WithDefaults {}).await.unwrap();
    assert!(report.is_success());
    assert_eq!(report.result::<u32>("fine").unwrap(), 1);
    let h = Defaults;
    h.started(&info);
    h.completed(&info, &report);
    h.cancelled(&info, &report);
    h.failed(&info, "fine", &NotImplemented);
}

static PROCESS_HOOK_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A process's own hooks: created by the runtime with `Default`.
#[derive(Default)]
struct ProcessHooks;

impl Hooks for ProcessHooks {
    fn started(&self, run: &RunInfo) {
        PROCESS_HOOK_LOG
            .lock()
            .unwrap()
            .push(format!("process:started {}", run.run_id));
    }

    fn completed(&self, run: &RunInfo, _report: &RunReport) {
        PROCESS_HOOK_LOG
            .lock()
            .unwrap()
            .push(format!("process:completed {}", run.run_id));
    }
}

#[process(hooks = ProcessHooks)]
fn hooked(p: &mut Builder) {
    p.task(Fine::new());
}

// `#[process(hooks = T)]` installs the process's hooks for each of its runs, called
// before the runtime's own hooks.
#[tokio::test]
async fn process_hooks_run_before_runtime_hooks() {
    let rec = Recorder {
        tag: "runtime",
        log: Arc::default(),
    };
    let rt = Runtime::in_memory()
        .hooks(rec.clone())
        .start()
        .await
        .unwrap();
    rt.run(Launch::new(Hooked {}).id("h1")).await.unwrap();
    let process_log = PROCESS_HOOK_LOG.lock().unwrap().clone();
    assert_eq!(
        process_log,
        vec!["process:started h1", "process:completed h1"]
    );
    let lines = rec.lines();
    assert_eq!(lines.first().unwrap(), "runtime:started hooked h1");
    assert_eq!(lines.last().unwrap(), "runtime:completed h1 Succeeded");
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2)]
fn flaky() -> Result<u32, NotImplemented> {
    if FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) < 2 {
        Err(NotImplemented)
    } else {
        Ok(3)
    }
}

#[process]
fn flaky_job(p: &mut Builder) {
    p.task(Flaky::new());
}

// `around_task` wraps every attempt, retries included, sees each attempt's number and
// outcome; `failed` is only called for a task's final failure.
#[tokio::test]
async fn around_task_wraps_every_attempt() {
    let rec = Recorder::new("");
    let rt = Runtime::in_memory()
        .hooks(rec.clone())
        .start()
        .await
        .unwrap();
    let report = rt.run(Launch::new(FlakyJob {}).id("r3")).await.unwrap();
    assert_eq!(report.result::<u32>("flaky").unwrap(), 3);
    assert_eq!(
        rec.lines(),
        vec![
            "started flaky_job r3",
            "before flaky #1",
            "after flaky #1 ok=false",
            "before flaky #2",
            "after flaky #2 ok=false",
            "before flaky #3",
            "after flaky #3 ok=true",
            "completed r3 Succeeded",
        ]
    );
}

#[task(on_dep_failure = "fail")]
fn strict(x: u32) -> u32 {
    x
}

#[process]
fn strict_after_failure(p: &mut Builder) {
    let x = p.task(UnimplementedStep::new());
    p.task(Strict::new(x));
}

// A task errored by `on_dep_failure = "fail"` is reported to `failed` too, with its
// DependencyFailed error.
#[tokio::test]
async fn failed_is_called_for_dependency_failures() {
    #[derive(Clone, Default)]
    struct DepFailures(Arc<Mutex<Vec<String>>>);
    impl Hooks for DepFailures {
        fn failed(&self, _run: &RunInfo, task: &str, error: &(dyn StdError + 'static)) {
            if let Some(d) = error.downcast_ref::<DependencyFailed>() {
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("{task} <- {}", d.failed.join(",")));
            }
        }
    }
    let seen = DepFailures::default();
    let rt = Runtime::in_memory()
        .hooks(seen.clone())
        .start()
        .await
        .unwrap();
    let report = rt.run(StrictAfterFailure {}).await.unwrap();
    assert_eq!(
        report.ids(report.errored()),
        vec!["unimplemented_step", "strict"]
    );
    assert_eq!(
        *seen.0.lock().unwrap(),
        vec!["strict <- unimplemented_step"]
    );
}

// Runtime hooks also see runs of graphs assembled by name.
#[tokio::test]
async fn runtime_hooks_see_task_graph_runs() {
    let rec = Recorder::new("");
    let rt = Runtime::in_memory()
        .hooks(rec.clone())
        .start()
        .await
        .unwrap();
    let mut g = TaskGraph::named("adhoc");
    g.add("Only", Fine::new()).unwrap();
    let report = rt.run_graph(g).await.unwrap();
    let lines = rec.lines();
    assert_eq!(lines[0], format!("started adhoc {}", report.run_id));
    assert_eq!(lines[1], "before only #1");
    assert_eq!(
        lines.last().unwrap(),
        &format!("completed {} Succeeded", report.run_id)
    );
}

/// Replaces nothing but times each attempt: the hook's own code runs around the attempt.
#[derive(Clone, Default)]
struct Timing(Arc<Mutex<Vec<(String, bool)>>>);

impl Hooks for Timing {
    fn around_task<'a>(&'a self, task: &'a TaskInfo, attempt: Attempt<'a>) -> Attempt<'a> {
        Box::pin(async move {
            let start = std::time::Instant::now();
            let out = attempt.await;
            self.0.lock().unwrap().push((
                task.task.to_owned(),
                start.elapsed() > std::time::Duration::ZERO,
            ));
            out
        })
    }
}

// Several runtime hooks nest: each wraps the attempt, and the results still flow.
#[tokio::test]
async fn several_around_task_hooks_nest() {
    let timing = Timing::default();
    let rec = Recorder::new("outer");
    let rt = Runtime::in_memory()
        .hooks(rec.clone())
        .hooks(timing.clone())
        .start()
        .await
        .unwrap();
    let report = rt.run(AllFine {}).await.unwrap();
    assert_eq!(report.result::<u32>("fine#1").unwrap(), 1);
    assert_eq!(timing.0.lock().unwrap().len(), 2);
    assert_eq!(
        rec.lines()
            .iter()
            .filter(|l| l.starts_with("outer:before"))
            .count(),
        2
    );
}
