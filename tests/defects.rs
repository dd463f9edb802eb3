//! Regression tests for the durability and control defects found by new-user, crash,
//! race and fuzz testing (issue "Nothing lost, nothing stuck"). Each test names its
//! defect by number and failed on the code before the fix.

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procession::prelude::*;
use procession::store::{SledStore, Store, Update};
use procession::{Definition, Error, ProcessRecord, RunMeta, Shutdown, State};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "procession-defects-{name}-{}-{}",
        std::process::id(),
        fastish()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn fastish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[task]
fn one() -> u32 {
    1
}

#[process]
fn single(p: &mut Builder) {
    p.task(One::new());
}

static HOOK_COMPLETED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct CountCompleted;

impl procession::Hooks for CountCompleted {
    fn completed(&self, _run: &procession::RunInfo, _report: &RunReport) {
        HOOK_COMPLETED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Defect 1: a finished run's end never reached the disk; `shutdown` left the store
/// locked for a while, and every later start "resumed" the run and fired `completed`
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_01_a_finished_runs_end_is_on_disk_and_the_store_reopens_at_once() {
    let dir = temp_dir("end-on-disk");
    let rt = Runtime::open(&dir)
        .register::<Single>()
        .hooks(CountCompleted)
        .start()
        .await
        .unwrap();
    let report = rt.run(Launch::new(Single {}).id("one-task")).await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded);
    rt.shutdown().await.unwrap();
    let before = HOOK_COMPLETED.load(Ordering::SeqCst);
    // No sleep: the store is closed when `shutdown` returns.
    let store = SledStore::open(&dir).unwrap();
    let rec = store.get("one-task").unwrap().unwrap();
    assert_eq!(rec.state(), State::Done);
    let rows = store.tasks("one-task").unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1.state, State::Done);
    drop(store);
    let rt = Runtime::open(&dir)
        .register::<Single>()
        .hooks(CountCompleted)
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        HOOK_COMPLETED.load(Ordering::SeqCst),
        before,
        "the finished run ran again"
    );
    rt.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

static GATE_RUNS: AtomicU32 = AtomicU32::new(0);
static GATE_OPEN: AtomicU32 = AtomicU32::new(0);

/// Waits until the test opens the gate (a long task interrupted by a deploy).
#[task]
async fn gated() -> u32 {
    GATE_RUNS.fetch_add(1, Ordering::SeqCst);
    while GATE_OPEN.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    7
}

#[task]
fn after_gate(x: u32) -> u32 {
    x + 1
}

#[process]
fn deploy(p: &mut Builder) {
    let g = p.task(Gated::new());
    p.task(AfterGate::new(g));
}

/// Defect 2: a clean shutdown cancelled in-flight runs for good. The default now
/// suspends: no cancel is recorded and the next start resumes the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_02_a_clean_shutdown_suspends_and_the_next_start_resumes() {
    let dir = temp_dir("suspend");
    let rt = Runtime::open(&dir)
        .register::<Deploy>()
        .cancel_grace(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let run = rt
        .launch(Launch::new(Deploy {}).id("deploy"))
        .await
        .unwrap();
    while GATE_RUNS.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rt.shutdown().await.unwrap();
    assert!(run.wait().await.is_err(), "a suspended run has no report");
    let store = SledStore::open(&dir).unwrap();
    let rec = store.get("deploy").unwrap().unwrap();
    assert!(
        rec.state().is_active(),
        "suspended, not ended: {}",
        rec.state()
    );
    assert!(!rec
        .log
        .iter()
        .any(|l| l.message.contains("cancel_requested")));
    drop(store);
    GATE_OPEN.store(1, Ordering::SeqCst);
    let rt = Runtime::open(&dir)
        .register::<Deploy>()
        .start()
        .await
        .unwrap();
    let report = rt.wait("deploy").await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded, "{}", report.summary());
    assert_eq!(report.result::<u32>("after_gate").unwrap(), 8);
    rt.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[task]
async fn slowish() -> u32 {
    tokio::time::sleep(Duration::from_millis(30)).await;
    5
}

#[process]
fn invoice(p: &mut Builder) {
    p.task(Slowish::new());
}

/// Defect 6: 100 concurrent launches with one idempotency key start one run and every
/// caller gets a handle on it with its real report; a relaunch with the key returns the
/// same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_06_concurrent_launches_with_one_key_share_one_run() {
    let rt = Runtime::in_memory()
        .register::<Invoice>()
        .start()
        .await
        .unwrap();
    let launches = (0..100).map(|_| {
        let rt = rt.clone();
        tokio::spawn(async move {
            rt.launch(Launch::new(Invoice {}).idempotency_key("invoice-42"))
                .await
                .unwrap()
                .wait()
                .await
                .unwrap()
        })
    });
    let reports = futures::future::join_all(launches).await;
    let ids: std::collections::BTreeSet<String> = reports
        .iter()
        .map(|r| r.as_ref().unwrap().run_id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    for r in reports {
        let r = r.unwrap();
        assert_eq!(r.status, RunStatus::Succeeded);
        assert_eq!(r.result::<u32>("slowish").unwrap(), 5);
    }
    // Same id and key again, after the end: the same run, not a second one.
    let again = rt
        .run(Launch::new(Invoice {}).idempotency_key("invoice-42"))
        .await
        .unwrap();
    assert_eq!(Some(&again.run_id), ids.iter().next());
    let runs = rt
        .list(procession::ListFilter::new())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.process_type == "invoice")
        .count();
    assert_eq!(runs, 1);
}

/// Defect 6 (restart): a launch with the key of a run that is being resumed gets a
/// handle on it, not `NotLaunchable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_06_a_key_relaunch_during_resume_attaches() {
    let store = Arc::new(procession::store::MemoryStore::new());
    let mut rec = ProcessRecord::new_root("inv", "invoice", "invoice", "", serde_json::json!({}));
    rec.status.state = State::Running;
    rec.adhoc = true;
    let fingerprint = {
        let rt = Runtime::in_memory()
            .register::<Invoice>()
            .start()
            .await
            .unwrap();
        let r = rt.run(Launch::new(Invoice {}).id("probe")).await.unwrap();
        drop(r);
        rt.get("probe")
            .await
            .unwrap()
            .unwrap()
            .run
            .unwrap()
            .fingerprint
    };
    rec.run = Some(RunMeta {
        token: 9,
        fingerprint,
        options: std::collections::BTreeMap::new(),
        tasks: 1,
        idempotency_key: Some("k-1".into()),
        max_concurrency: None,
        resumes: 0,
        seq: 0,
        overlap_of: None,
        fired_at: None,
        traceparent: None,
    });
    store
        .update("inv", &mut |_| Update::Put(Box::new(rec.clone())))
        .unwrap();
    store.claim_idempotent("k-1", "inv").unwrap();
    let rt = Runtime::with_store(store)
        .register::<Invoice>()
        .start()
        .await
        .unwrap();
    let report = rt
        .run(Launch::new(Invoice {}).id("inv").idempotency_key("k-1"))
        .await
        .unwrap();
    assert_eq!(report.run_id, "inv");
    assert_eq!(report.status, RunStatus::Succeeded);
}

static ATTEMPTS_SEEN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[task]
fn records_attempt(ctx: &Ctx) -> u32 {
    ATTEMPTS_SEEN.lock().unwrap().push(ctx.attempt());
    1
}

#[process]
fn attempt_proc(p: &mut Builder) {
    p.task(RecordsAttempt::new());
}

/// Defect 7: after a crash that lost a task's start, the task saw attempt 1 again.
/// Attempt numbers of a resumption start above anything an earlier one could use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_07_attempt_numbers_never_repeat_after_a_restart() {
    let fingerprint = {
        let rt = Runtime::in_memory()
            .register::<AttemptProc>()
            .start()
            .await
            .unwrap();
        rt.run(Launch::new(AttemptProc {}).id("probe"))
            .await
            .unwrap();
        rt.get("probe")
            .await
            .unwrap()
            .unwrap()
            .run
            .unwrap()
            .fingerprint
    };
    ATTEMPTS_SEEN.lock().unwrap().clear();
    // A run that was running when the process died; the start of its task (attempt 1)
    // had not been flushed, so the stored row says nothing about it.
    let store = Arc::new(procession::store::MemoryStore::new());
    let mut rec = ProcessRecord::new_root(
        "a",
        "attempt_proc",
        "attempt_proc",
        "",
        serde_json::json!({}),
    );
    rec.status.state = State::Running;
    rec.adhoc = true;
    rec.run = Some(RunMeta {
        token: 3,
        fingerprint,
        options: std::collections::BTreeMap::new(),
        tasks: 1,
        idempotency_key: None,
        max_concurrency: None,
        resumes: 0,
        seq: 0,
        overlap_of: None,
        fired_at: None,
        traceparent: None,
    });
    store
        .update("a", &mut |_| Update::Put(Box::new(rec.clone())))
        .unwrap();
    let rt = Runtime::with_store(store)
        .register::<AttemptProc>()
        .start()
        .await
        .unwrap();
    let report = rt.wait("a").await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded);
    let seen = ATTEMPTS_SEEN.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0] > 1,
        "attempt {} may repeat one before the crash",
        seen[0]
    );
}

/// Runs long enough for a cancel to race its end.
#[task]
async fn brief() -> u32 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    1
}

#[process]
fn race(p: &mut Builder) {
    p.task(Brief::new());
}

/// Defect 8: a cancel racing the run's end returned success and the run then ended
/// `done` (`cancel_requested -> done`, forbidden by the state table), and events came out
/// of order. Now either the cancel wins (cancelled, live report included) or it is
/// refused because the run ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_08_cancel_racing_the_end_wins_or_is_refused() {
    let rt = Runtime::in_memory()
        .register::<Race>()
        .start()
        .await
        .unwrap();
    for i in 0..60 {
        let id = format!("race-{i}");
        let run = rt
            .launch(Launch::new(Race {}).id(id.clone()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_micros(200 * (i % 10))).await;
        let cancelled = rt.cancel(&id).await;
        let report = run.wait().await.unwrap();
        let rec = rt.get(&id).await.unwrap().unwrap();
        match cancelled {
            Ok(_) => {
                assert_eq!(rec.state(), State::Cancelled, "{id}");
                assert_eq!(report.status, RunStatus::Cancelled, "{id}");
            }
            Err(Error::NotCancellableState { .. }) => {
                assert_eq!(rec.state(), State::Done, "{id}");
                assert_eq!(report.status, RunStatus::Succeeded, "{id}");
            }
            Err(e) => panic!("{id}: {e}"),
        }
        // The log follows the state table.
        let states: Vec<&str> = rec
            .log
            .iter()
            .filter_map(|l| l.message.strip_prefix("State changed to "))
            .collect();
        for w in states.windows(2) {
            let (a, b) = (parse_state(w[0]), parse_state(w[1]));
            assert!(
                a.can_transition(b) || (a == State::Scheduled && b == State::Cancelled),
                "{id}: {} -> {}",
                w[0],
                w[1]
            );
        }
    }
}

fn parse_state(s: &str) -> State {
    State::ALL
        .into_iter()
        .find(|x| x.as_str() == s)
        .unwrap_or_else(|| panic!("unknown state {s}"))
}

#[task]
async fn polite(ctx: &Ctx) -> u32 {
    while ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    0
}

#[process]
fn polite_proc(p: &mut Builder) {
    p.task(Polite::new());
}

/// Defect 9: `RunHandle::cancel` bypassed the state machine and ignored
/// `cancellable(false)`. Both cancel paths are one, and the refusal says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_09_run_handle_cancel_respects_not_cancellable() {
    let rt = Runtime::in_memory()
        .register::<PoliteProc>()
        .define(
            Definition::new("keep-going", PoliteProc {})
                .unwrap()
                .cancellable(false),
        )
        .cancel_grace(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let run = rt.launch_id("keep-going").await.unwrap();
    let refused = run.cancel().await.unwrap_err();
    assert!(matches!(refused, Error::NotCancellable { .. }), "{refused}");
    assert_eq!(
        refused.to_string(),
        "process `keep-going` is not cancellable"
    );
    assert!(!run.is_finished());
    let rec = rt.get("keep-going").await.unwrap().unwrap();
    assert!(matches!(rec.state(), State::Scheduled | State::Running));
    rt.shutdown_with(Shutdown::Suspend).await.unwrap();
}

#[task]
async fn deaf() -> u32 {
    tokio::time::sleep(Duration::from_secs(30)).await;
    0
}

#[process]
fn deaf_proc(p: &mut Builder) {
    p.task(Deaf::new());
}

/// Defect 10: a task that ignored cancellation stayed `running` in the store, and the
/// report rebuilt from the store said `Cancelled` where the live one said `Errored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_10_stored_and_live_reports_agree_on_an_abandoned_task() {
    let rt = Runtime::temporary()
        .register::<DeafProc>()
        .cancel_grace(Duration::from_millis(30))
        .start()
        .await
        .unwrap();
    let run = rt
        .launch(Launch::new(DeafProc {}).id("deaf"))
        .await
        .unwrap();
    while rt.get("deaf").await.unwrap().unwrap().state() != State::Running {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.cancel("deaf").await.unwrap();
    let live = run.wait().await.unwrap();
    let stored = rt.report("deaf").await.unwrap();
    assert_eq!(live.status, RunStatus::Failed);
    assert_eq!(stored.status, live.status);
    assert_eq!(
        stored.task("deaf").unwrap().status,
        live.task("deaf").unwrap().status
    );
    let task = rt.get("deaf/deaf").await.unwrap().unwrap();
    assert_eq!(task.state(), State::Failed);
}

/// Defect 11: cancelling a record that is active in the store with no live run left it
/// `cancel_requested` for good; cancels did not reach children through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_11_a_record_with_no_live_run_is_settled_with_its_children() {
    let store = Arc::new(procession::store::MemoryStore::new());
    let rt = Runtime::with_store(store.clone()).start().await.unwrap();
    // Records left active by a lost run (written behind the runtime's back).
    let mut parent = ProcessRecord::new_root("lost", "gone", "gone", "", serde_json::json!({}));
    parent.status.state = State::Running;
    let mut child =
        ProcessRecord::new_root("lost/x/child", "gone", "gone", "", serde_json::json!({}));
    child.status.state = State::Running;
    child.parent = Some("lost".into());
    child.root = "lost".into();
    child.depth = 1;
    for r in [parent, child] {
        store
            .update(&r.id.clone(), &mut |_| Update::Put(Box::new(r.clone())))
            .unwrap();
    }
    rt.cancel("lost").await.unwrap();
    assert_eq!(
        rt.get("lost").await.unwrap().unwrap().state(),
        State::Cancelled
    );
    assert_eq!(
        rt.get("lost/x/child").await.unwrap().unwrap().state(),
        State::Cancelled
    );
    // Settled: dismiss and relaunch work again.
    rt.dismiss("lost").await.unwrap();
    assert!(rt.get("lost/x/child").await.unwrap().is_none());
}

#[process(schedule = "*/5 * * * *")]
fn nightly(p: &mut Builder) {
    p.task(One::new());
}

/// Defect 12: a scheduled definition of an unregistered process type was accepted and
/// silently never ran. It is refused at `start()`.
#[tokio::test]
async fn defect_12_a_definition_of_an_unregistered_type_is_refused_at_start() {
    let err = Runtime::in_memory()
        .define(Definition::new("nightly", Nightly {}).unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownProcessType { name } if name == "nightly"),
        "{err}"
    );
}

/// A process that nests a child of itself `depth` times.
#[task]
async fn descend(ctx: &Ctx, depth: u32) -> Result<u32, procession::ChildError> {
    if depth == 0 {
        return Ok(0);
    }
    let o = ctx
        .run_child(procession::Child::new(Nest { depth: depth - 1 }))
        .await?;
    assert_eq!(o.state, State::Done);
    Ok(depth)
}

#[process]
fn nest(p: &mut Builder, depth: u32) {
    p.task(Descend::new(depth));
}

/// Defect 15: default child ids grew 13 bytes per level and nesting failed at depth 39
/// against the 512-byte id limit. Depth 100 works with default ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_15_nesting_depth_100_with_default_child_ids() {
    let rt = Runtime::in_memory()
        .register::<Nest>()
        .start()
        .await
        .unwrap();
    let report = rt
        .run(Launch::new(Nest { depth: 100 }).id("nest"))
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Succeeded, "{}", report.summary());
    let tree = rt
        .list(procession::ListFilter::new().root("nest"))
        .await
        .unwrap();
    assert_eq!(tree.len(), 101);
    assert_eq!(tree.iter().map(|r| r.depth).max(), Some(100));
    assert!(tree.iter().all(|r| r.id.len() <= 512));
}

#[task]
async fn spawns_one(ctx: &Ctx) -> Result<u32, procession::ChildError> {
    ctx.run_child(procession::Child::new(Single {})).await?;
    Ok(1)
}

#[process]
fn parent_of_one(p: &mut Builder) {
    p.task(SpawnsOne::new());
}

/// Defect 11 (ephemeral): an ephemeral parent's children outlived it with a dangling
/// parent id. Its end deletes its whole tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_11_an_ephemeral_parent_takes_its_children_with_it() {
    let rt = Runtime::in_memory()
        .register::<ParentOfOne>()
        .register::<Single>()
        .start()
        .await
        .unwrap();
    let report = rt
        .run(Launch::new(ParentOfOne {}).id("eph").ephemeral())
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Succeeded);
    assert!(rt.get("eph").await.unwrap().is_none());
    let left = rt
        .list(procession::ListFilter::new().root("eph"))
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "{:?}",
        left.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
}
