//! Run history (issue 12, point 7): a relaunch or a dismiss keeps the ended run, with its
//! task records, in the record's history (the last N), listable and reportable; only the
//! current run resumes; deleting a record deletes its history.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use procession::prelude::*;
use procession::store::{MemoryStore, Store};
use procession::{AdhocOptions, Error, State};

#[derive(Debug, thiserror::Error)]
#[error("asked to fail")]
struct Asked;

#[task]
fn step(n: u32, fail: bool) -> Result<u32, Asked> {
    if fail {
        Err(Asked)
    } else {
        Ok(n * 10)
    }
}

#[process]
fn job(p: &mut Builder, n: u32, fail: bool) {
    p.task(Step::new(n, fail));
}

fn launch(n: u32, fail: bool) -> Launch<Job> {
    Launch::new(Job { n, fail }).id("job")
}

// Relaunching keeps the last N ended runs with their task records; older ones go.
#[tokio::test]
async fn relaunch_keeps_the_last_n_runs() {
    let rt = Runtime::temporary().keep_runs(3).start().await.unwrap();
    for n in 1..=5 {
        let report = rt.run(launch(n, n == 2 || n == 4)).await.unwrap();
        assert_eq!(report.is_success(), n != 2 && n != 4);
    }
    let runs = rt.history("job").await.unwrap();
    assert_eq!(
        runs.iter().map(|r| (r.seq, r.current)).collect::<Vec<_>>(),
        vec![(5, true), (4, false), (3, false), (2, false)]
    );
    assert!(runs.iter().all(|r| r.run_id == "job" && r.tasks == 1));
    assert_eq!(runs[1].state, State::Failed);
    assert!(runs[1].error.as_deref().unwrap().contains("asked to fail"));
    assert_eq!(runs[2].state, State::Done);
    assert!(runs[2].started_at.is_some() && runs[2].ended_at.is_some());
    assert!(runs[2].ended_at >= runs[2].started_at);
    assert_eq!(runs[2].fired_at, None, "launched by a call");
    // Each kept run reports its own results, not the current run's.
    let third = rt.past_report("job", 3).await.unwrap();
    assert_eq!(third.result::<u32>("step").unwrap(), 30);
    let fourth = rt.past_report("job", 4).await.unwrap();
    assert_eq!(fourth.status, RunStatus::Failed);
    assert_eq!(fourth.errored().len(), 1);
    let current = rt.past_report("job", 5).await.unwrap();
    assert_eq!(current.result::<u32>("step").unwrap(), 50);
    assert_eq!(
        current.result::<u32>("step").unwrap(),
        rt.report("job")
            .await
            .unwrap()
            .result::<u32>("step")
            .unwrap()
    );
    assert!(matches!(
        rt.past_report("job", 1).await,
        Err(Error::RunNotKept { seq: 1, .. })
    ));
    assert!(matches!(
        rt.history("nope").await,
        Err(Error::NotFound { .. })
    ));
    // The current run's task record is the record's own child, as before.
    assert_eq!(
        rt.get("job/step").await.unwrap().unwrap().state(),
        State::Done
    );
}

// OPT-434 with history off: `keep_runs(0)` deletes the previous run's task records at the
// relaunch, as before history existed.
#[tokio::test]
async fn keep_runs_zero_keeps_no_past_run() {
    let store = Arc::new(MemoryStore::new());
    let rt = Runtime::with_store(store.clone())
        .keep_runs(0)
        .start()
        .await
        .unwrap();
    rt.run(launch(1, false)).await.unwrap();
    rt.run(launch(2, false)).await.unwrap();
    let runs = rt.history("job").await.unwrap();
    assert_eq!(
        runs.iter().map(|r| (r.seq, r.current)).collect::<Vec<_>>(),
        vec![(2, true)]
    );
    assert!(store.history("job").unwrap().is_empty());
    assert!(matches!(
        rt.past_report("job", 1).await,
        Err(Error::RunNotKept { .. })
    ));
}

// A dismiss keeps the ended run too; run numbers go on after it (never reused).
#[tokio::test]
async fn dismiss_keeps_the_run_and_numbers_go_on() {
    let rt = Runtime::in_memory().start().await.unwrap();
    rt.run(launch(1, false)).await.unwrap();
    let idle = rt.dismiss("job").await.unwrap();
    assert_eq!(idle.state(), State::Idle);
    assert!(rt.get("job/step").await.unwrap().is_none());
    let runs = rt.history("job").await.unwrap();
    assert_eq!(
        runs.iter().map(|r| (r.seq, r.current)).collect::<Vec<_>>(),
        vec![(1, false)],
        "no current run after a dismiss"
    );
    rt.run(launch(2, false)).await.unwrap();
    let runs = rt.history("job").await.unwrap();
    assert_eq!(
        runs.iter().map(|r| (r.seq, r.current)).collect::<Vec<_>>(),
        vec![(2, true), (1, false)]
    );
    assert_eq!(
        rt.past_report("job", 1)
            .await
            .unwrap()
            .result::<u32>("step")
            .unwrap(),
        10
    );
}

// Deleting a record deletes its history: an ephemeral relaunch, and `adhoc_delete`.
#[tokio::test]
async fn deleted_records_take_their_history_along() {
    let store = Arc::new(MemoryStore::new());
    let rt = Runtime::with_store(store.clone())
        .register::<Job>()
        .start()
        .await
        .unwrap();
    rt.run(launch(1, false)).await.unwrap();
    rt.run(launch(2, false).ephemeral()).await.unwrap();
    assert!(rt.get("job").await.unwrap().is_none());
    assert!(store.history("job").unwrap().is_empty());
    rt.adhoc_define("adhoc", Job { n: 1, fail: false }, AdhocOptions::default())
        .await
        .unwrap();
    rt.launch_id("adhoc").await.unwrap().wait().await.unwrap();
    rt.launch_id("adhoc").await.unwrap().wait().await.unwrap();
    assert_eq!(store.history("adhoc").unwrap().len(), 1);
    rt.adhoc_delete("adhoc").await.unwrap();
    assert!(store.history("adhoc").unwrap().is_empty());
    assert!(store.past_tasks("adhoc", 1).unwrap().is_empty());
}

static RESUMED_RUNS: AtomicUsize = AtomicUsize::new(0);
static RESUME_GATE: AtomicBool = AtomicBool::new(false);

#[task]
async fn gated(n: u32) -> u32 {
    RESUMED_RUNS.fetch_add(1, Ordering::SeqCst);
    while n > 1 && !RESUME_GATE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n
}

#[process]
fn gated_job(p: &mut Builder, n: u32) {
    p.task(Gated::new(n));
}

// Only the current run resumes after a restart; the history survives it unchanged.
#[tokio::test]
async fn only_the_current_run_resumes() {
    let dir = std::env::temp_dir().join(format!(
        "procession-history-{}-{}",
        std::process::id(),
        line!()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let rt = Runtime::open(&dir)
            .register::<GatedJob>()
            .start()
            .await
            .unwrap();
        rt.run(Launch::new(GatedJob { n: 1 }).id("g"))
            .await
            .unwrap();
        rt.launch(Launch::new(GatedJob { n: 2 }).id("g"))
            .await
            .unwrap();
        while RESUMED_RUNS.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Suspends: the next start resumes the run.
        rt.shutdown().await.unwrap();
    }
    let rt = Runtime::open(&dir)
        .register::<GatedJob>()
        .start()
        .await
        .unwrap();
    RESUME_GATE.store(true, Ordering::SeqCst);
    let report = rt.wait("g").await.unwrap();
    assert_eq!(report.result::<u32>("gated").unwrap(), 2);
    // Run 1 never ran again; run 2 ran again once (at-least-once).
    assert_eq!(RESUMED_RUNS.load(Ordering::SeqCst), 3);
    let runs = rt.history("g").await.unwrap();
    assert_eq!(
        runs.iter()
            .map(|r| (r.seq, r.current, r.state))
            .collect::<Vec<_>>(),
        vec![(2, true, State::Done), (1, false, State::Done)]
    );
    assert_eq!(
        rt.past_report("g", 1)
            .await
            .unwrap()
            .result::<u32>("gated")
            .unwrap(),
        1
    );
    rt.shutdown().await.unwrap();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
