//! The durable runtime: records, the state machine, outcomes of bad calls, cancellation,
//! resume refusals, damaged stores, progress coalescing, events and definitions.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use procession::prelude::*;
use procession::store::{MemoryStore, SledStore, Store, StoreError, Update};
use procession::{
    AdhocOptions, Definition, Error, EventKind, ListFilter, ProcessRecord, RunMeta, State,
};

#[task]
fn one() -> u32 {
    1
}

#[task]
fn plus(x: u32, y: u32) -> u32 {
    x + y
}

#[process]
fn small(p: &mut Builder) {
    let a = p.task(One::new());
    p.task(Plus::new(a, 2));
}

/// Loops until cancelled (cooperative).
#[task]
async fn polite(ctx: &Ctx) -> u32 {
    while ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    0
}

#[process]
fn polite_proc(p: &mut Builder) {
    p.task(Polite::new());
}

/// Ignores cancellation.
#[task]
async fn stubborn() -> u32 {
    tokio::time::sleep(Duration::from_secs(30)).await;
    0
}

#[process]
fn stubborn_proc(p: &mut Builder) {
    p.task(Stubborn::new());
}

async fn wait_state(rt: &Runtime, id: &str, state: State) -> ProcessRecord {
    for _ in 0..400 {
        if let Some(r) = rt.get(id).await.unwrap() {
            if r.state() == state {
                return r;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "`{id}` never reached {state}: {:?}",
        rt.get(id).await.unwrap().map(|r| r.state())
    );
}

// OPT-1, OPT-2, OPT-3: exactly 14 valid transitions; everything else is refused.
#[test]
fn state_machine_table() {
    use State::{CancelRequested, Cancelled, Cancelling, Done, Failed, Idle, Running, Scheduled};
    let valid = [
        (Idle, Scheduled),
        (Scheduled, Running),
        (Scheduled, CancelRequested),
        (Running, Done),
        (Running, Failed),
        (Running, CancelRequested),
        (CancelRequested, Cancelling),
        (Cancelling, Cancelled),
        (Done, Scheduled),
        (Failed, Scheduled),
        (Cancelled, Scheduled),
        (Done, Idle),
        (Failed, Idle),
        (Cancelled, Idle),
    ];
    let mut count = 0;
    for from in State::ALL {
        for to in State::ALL {
            let ok = valid.contains(&(from, to));
            assert_eq!(from.can_transition(to), ok, "{from} -> {to}");
            count += usize::from(from.can_transition(to));
        }
    }
    assert_eq!(count, 14);
    for (from, to) in [
        (Idle, Running),
        (Idle, Done),
        (Running, Idle),
        (Done, Running),
        (Scheduled, Done),
    ] {
        let e = from.validate_transition(to).unwrap_err();
        assert!(e.to_string().starts_with("invalid state transition"), "{e}");
    }
}

// OPT-51, OPT-356, OPT-343, OPT-435: a run ends done with timestamps; dismiss resets it to
// idle, clears its log and deletes its task records.
#[tokio::test]
async fn run_record_then_dismiss() {
    let rt = Runtime::temporary()
        .register::<Small>()
        .start()
        .await
        .unwrap();
    let report = rt.run(Launch::new(Small {}).id("s1")).await.unwrap();
    assert!(report.is_success());
    let r = rt.get("s1").await.unwrap().unwrap();
    assert_eq!(r.state(), State::Done);
    assert!(r.status.done_at.is_some() && r.status.duration.is_some());
    let tasks = rt
        .list(ListFilter::new().root("s1").with_tasks())
        .await
        .unwrap();
    assert_eq!(tasks.len(), 3, "the run and its two tasks");
    let t = rt.get("s1/plus").await.unwrap().unwrap();
    assert_eq!(
        (t.state(), t.attempts, t.depth, t.parent.as_deref()),
        (State::Done, 1, 1, Some("s1"))
    );
    let d = rt.dismiss("s1").await.unwrap();
    assert_eq!(d.state(), State::Idle);
    assert!(d.log.is_empty());
    assert_eq!(rt.get("s1").await.unwrap().unwrap().state(), State::Idle);
    assert!(
        rt.get("s1/plus").await.unwrap().is_none(),
        "task records are deleted"
    );
}

// OPT-338, OPT-339, OPT-341, OPT-342, OPT-344, OPT-345: bad lifecycle calls are typed
// errors and change nothing.
#[tokio::test]
async fn lifecycle_outcomes() {
    let rt = Runtime::in_memory()
        .register::<Small>()
        .register::<PolitePoc>()
        .define(Definition::new("idle-one", Small {}).unwrap())
        .start()
        .await
        .unwrap();
    assert!(matches!(
        rt.cancel("nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        rt.cancel("idle-one").await,
        Err(Error::NotCancellableState {
            state: State::Idle,
            ..
        })
    ));
    assert!(matches!(
        rt.dismiss("nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        rt.dismiss("idle-one").await,
        Err(Error::NotDismissable {
            state: State::Idle,
            ..
        })
    ));
    assert!(matches!(
        rt.launch_id("nope").await,
        Err(Error::NotFound { .. })
    ));
    let run = rt
        .launch(Launch::new(PolitePoc {}).id("busy"))
        .await
        .unwrap();
    wait_state(&rt, "busy", State::Running).await;
    assert!(matches!(
        rt.launch(Launch::new(PolitePoc {}).id("busy")).await,
        Err(Error::NotLaunchable {
            state: State::Running,
            ..
        })
    ));
    assert!(matches!(
        rt.dismiss("busy").await,
        Err(Error::NotDismissable { .. })
    ));
    assert_eq!(
        rt.get("idle-one").await.unwrap().unwrap().state(),
        State::Idle
    );
    run.cancel().await.unwrap();
    assert_eq!(run.wait().await.unwrap().status, RunStatus::Cancelled);
    // A record of another type under the same id is refused.
    assert!(matches!(
        rt.launch(Launch::new(Small {}).id("busy")).await,
        Err(Error::WrongType { .. })
    ));
}

// Process params are registered under a name that differs from the struct in this test.
#[process(name = "polite_poc")]
fn polite_poc(p: &mut Builder) {
    p.task(Polite::new());
}

// OPT-53, OPT-355, OPT-190: a cooperative task that returns after the cancel ends the run
// cancelled (not done); the record goes running -> cancel_requested -> cancelling -> cancelled.
#[tokio::test]
async fn cooperative_cancel_ends_cancelled() {
    let rt = Runtime::temporary().start().await.unwrap();
    let run = rt
        .launch(Launch::new(PoliteProc {}).id("c1"))
        .await
        .unwrap();
    wait_state(&rt, "c1", State::Running).await;
    let r = rt.cancel("c1").await.unwrap();
    assert_eq!(r.state(), State::CancelRequested);
    let report = run.wait().await.unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    let r = rt.get("c1").await.unwrap().unwrap();
    assert_eq!(r.state(), State::Cancelled);
    assert!(r.status.stopped_at.is_some());
    let states: Vec<&str> = r.log.iter().map(|l| l.message.as_str()).collect();
    assert!(
        states.ends_with(&[
            "State changed to cancel_requested",
            "State changed to cancelling",
            "State changed to cancelled"
        ]),
        "{states:?}"
    );
}

// OPT-69, OPT-188, OPT-189, OPT-191: a task that ignores the cancel past the grace period
// is abandoned and the run ends failed with the grace-period error.
#[tokio::test]
async fn stubborn_task_ends_failed_after_grace() {
    let rt = Runtime::temporary()
        .cancel_grace(Duration::from_millis(150))
        .start()
        .await
        .unwrap();
    let run = rt
        .launch(Launch::new(StubbornProc {}).id("st"))
        .await
        .unwrap();
    wait_state(&rt, "st", State::Running).await;
    rt.cancel("st").await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(5), run.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let r = rt.get("st").await.unwrap().unwrap();
    assert_eq!(r.state(), State::Failed);
    assert!(r
        .status
        .error
        .unwrap()
        .contains("did not unwind within cancellation grace period"));
}

// OPT-151: of three concurrent cancels exactly one succeeds.
#[tokio::test]
async fn concurrent_cancels_one_wins() {
    let rt = Runtime::temporary().start().await.unwrap();
    let run = rt
        .launch(Launch::new(PoliteProc {}).id("cc"))
        .await
        .unwrap();
    wait_state(&rt, "cc", State::Running).await;
    let (a, b, c) = tokio::join!(rt.cancel("cc"), rt.cancel("cc"), rt.cancel("cc"));
    let oks = [a.is_ok(), b.is_ok(), c.is_ok()]
        .iter()
        .filter(|x| **x)
        .count();
    assert_eq!(oks, 1);
    for r in [a, b, c] {
        if let Err(e) = r {
            assert!(matches!(e, Error::NotCancellableState { .. }), "{e}");
        }
    }
    assert_eq!(run.wait().await.unwrap().status, RunStatus::Cancelled);
}

// OPT-340, OPT-326: cancelling a scheduled record ends it cancelled at once.
#[tokio::test]
async fn cancel_of_scheduled_ends_cancelled() {
    let store = Arc::new(MemoryStore::new());
    let rt = Runtime::with_store(store.clone()).start().await.unwrap();
    let mut rec = ProcessRecord::new_root("sched", "small", "small", "", serde_json::json!({}));
    rec.status.state = State::Scheduled;
    store
        .update("sched", &mut |_| Update::Put(Box::new(rec.clone())))
        .unwrap();
    let r = rt.cancel("sched").await.unwrap();
    assert_eq!(r.state(), State::Cancelled);
    assert_eq!(
        rt.get("sched").await.unwrap().unwrap().state(),
        State::Cancelled
    );
}

fn stored_run(id: &str, process_type: &str, fingerprint: u64, state: State) -> ProcessRecord {
    let mut rec =
        ProcessRecord::new_root(id, process_type, process_type, "", serde_json::json!({}));
    rec.status.state = state;
    // A launched run, as a previous process left it (launches make ad hoc records; a
    // record of a definition no longer declared would be cancelled and deleted by the
    // start's resync instead of resumed).
    rec.adhoc = true;
    rec.run = Some(RunMeta {
        token: 7,
        fingerprint,
        options: std::collections::BTreeMap::new(),
        tasks: 2,
        idempotency_key: None,
        max_concurrency: None,
        resumes: 0,
        seq: 0,
        overlap_of: None,
        fired_at: None,
        traceparent: None,
    });
    rec
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "procession-{name}-{}-{}",
        std::process::id(),
        fastish()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn fastish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

// Issue 4: a run whose type is not registered, or whose graph changed, is not resumed
// blindly: it ends failed with a message that says why. A run whose cancel had been
// accepted ends cancelled.
#[tokio::test]
async fn resume_refuses_unknown_type_and_changed_graph() {
    let dir = temp_dir("resume");
    {
        let store = SledStore::open(&dir).unwrap();
        for rec in [
            stored_run("ghost-run", "ghost", 1, State::Running),
            stored_run("changed-run", "small", 12345, State::Running),
            stored_run("was-cancelling", "small", 1, State::Cancelling),
            // Stored by an earlier version: the fingerprint of `small` as FNV-1a.
            stored_run("legacy-run", "small", 0x9400_5503_20e8_4af1, State::Running),
        ] {
            store
                .update(&rec.id.clone(), &mut |_| Update::Put(Box::new(rec.clone())))
                .unwrap();
        }
        store.flush().unwrap();
    }
    let rt = Runtime::open(&dir)
        .register::<Small>()
        .start()
        .await
        .unwrap();
    let ghost = rt.get("ghost-run").await.unwrap().unwrap();
    assert_eq!(ghost.state(), State::Failed);
    assert!(ghost
        .status
        .error
        .unwrap()
        .contains("`ghost` is not registered"));
    let changed = rt.get("changed-run").await.unwrap().unwrap();
    assert_eq!(changed.state(), State::Failed);
    assert!(changed
        .status
        .error
        .unwrap()
        .contains("changed since this run started"));
    assert_eq!(
        rt.get("was-cancelling").await.unwrap().unwrap().state(),
        State::Cancelled
    );
    // The fingerprint's definition changed: a run stored with the earlier value of the
    // same graph is still resumed, and ends.
    let mut legacy = rt.get("legacy-run").await.unwrap().unwrap();
    for _ in 0..500 {
        if legacy.state().is_end() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        legacy = rt.get("legacy-run").await.unwrap().unwrap();
    }
    assert_eq!(legacy.state(), State::Done, "{:?}", legacy.status.error);
    rt.shutdown().await.unwrap();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

// Issue 4: a damaged store file is a typed error naming the path, never a panic; a record
// that does not decode names its key; a newer schema is refused.
#[tokio::test]
async fn damaged_store_is_a_typed_error() {
    let dir = temp_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("conf"), b"this is not a sled config \xff\xfe").unwrap();
    std::fs::write(dir.join("db"), vec![0xA5u8; 8192]).unwrap();
    match Runtime::open(&dir).start().await {
        Err(Error::Store(e)) => assert!(e.to_string().contains(&dir.display().to_string()), "{e}"),
        other => panic!("expected a store error, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);

    let dir = temp_dir("badrecord");
    {
        let db = sled::open(&dir).unwrap();
        db.open_tree("processes")
            .unwrap()
            .insert("broken", &b"{not json"[..])
            .unwrap();
        db.open_tree("processes")
            .unwrap()
            .insert("future", &br#"{"schema": 99, "id": "future"}"#[..])
            .unwrap();
        db.flush().unwrap();
        // While the raw Db holds the files, opening them is refused; the wait below
        // recognises the refusal through the error's causes.
        match SledStore::open(&dir) {
            Err(refused) => assert!(common::sled_lock_held(&refused), "{refused:?}"),
            Ok(_) => panic!("the store opened while a raw sled Db held its files"),
        }
    }
    let store = common::open_sled_when_released(&dir);
    match store.get("broken") {
        Err(StoreError::Corrupt { key, path, .. }) => {
            assert_eq!(key, "broken");
            assert_eq!(path, dir.display().to_string());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.get("future"),
        Err(StoreError::Incompatible { found: 99, .. })
    ));
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

// A store written by schema 1 (JSON task rows, results in a tree of their own) is still
// read: rows decode and carry their results; the store is marked with the new schema so
// that an older build refuses it rather than misreading the new rows.
#[test]
fn schema_1_rows_and_results_are_read() {
    let dir = temp_dir("schema1");
    let key = |order: u32| {
        let mut k = b"old-run\0".to_vec();
        k.extend_from_slice(&order.to_be_bytes());
        k
    };
    {
        let db = sled::open(&dir).unwrap();
        db.insert(b"schema", &1u32.to_be_bytes()).unwrap();
        let row = |node: &str, state: &str| {
            format!(
                r#"{{"task":"one","node":"{node}","state":"{state}","attempts":1,"started_at":1,"ended_at":2,"elapsed_ns":5,"skipped":false,"error":null}}"#
            )
        };
        let tasks = db.open_tree("tasks").unwrap();
        tasks.insert(key(0), row("a", "done").as_bytes()).unwrap();
        tasks
            .insert(key(1), row("b", "running").as_bytes())
            .unwrap();
        db.open_tree("results")
            .unwrap()
            .insert(key(0), &b"41"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = common::open_sled_when_released(&dir);
    let rows = store.tasks("old-run").unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].0, &*rows[0].1.node), (0, "a"));
    assert_eq!(rows[0].1.state, State::Done);
    assert_eq!(rows[0].1.result.as_deref(), Some("41"));
    assert_eq!(rows[1].1.state, State::Running);
    assert_eq!(rows[1].1.result, None);
    drop(store);
    let db = sled::open(&dir).unwrap();
    let marker = db.get(b"schema").unwrap().unwrap();
    assert_eq!(
        u32::from_be_bytes(marker.as_ref().try_into().unwrap()),
        procession::store::SledStore::SCHEMA
    );
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

#[task]
#[allow(clippy::unused_async)] // runs as an async task on purpose
async fn chatty(ctx: &Ctx, n: u32, warn_at: u32) -> u32 {
    for i in 0..n {
        if i == warn_at {
            ctx.log(Level::Warning, "careful");
        }
        ctx.progress(f64::from(i), format!("burst-{i}"));
    }
    n
}

#[process]
fn chatty_proc(p: &mut Builder, n: u32, warn_at: u32) {
    p.task(Chatty::new(n, warn_at));
}

#[task]
fn percent_only(ctx: &Ctx) {
    ctx.progress(30.0, "");
    ctx.progress(None, "");
}

#[process]
fn percent_proc(p: &mut Builder) {
    p.task(PercentOnly::new());
}

fn messages(r: &ProcessRecord) -> Vec<String> {
    r.log.iter().map(|l| l.message.clone()).collect()
}

// OPT-405: ten messages within the window are all logged, in order, without a drop note.
// OPT-397: a burst of 200 ends with "(N messages dropped)" then the last message, and the
// logged + dropped counts add up to 200.
// OPT-408: a warning is never dropped and is preceded by the pending burst's summary.
// OPT-411: percent-only updates never write a log line.
#[tokio::test]
async fn progress_avalanche_is_coalesced() {
    let rt = Runtime::in_memory()
        .progress_flush(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    rt.run(Launch::new(ChattyProc { n: 10, warn_at: 99 }).id("quiet"))
        .await
        .unwrap();
    let quiet = messages(&rt.get("quiet/chatty").await.unwrap().unwrap());
    assert_eq!(
        quiet,
        (0..10).map(|i| format!("burst-{i}")).collect::<Vec<_>>()
    );

    rt.run(
        Launch::new(ChattyProc {
            n: 200,
            warn_at: 999,
        })
        .id("loud"),
    )
    .await
    .unwrap();
    let loud = messages(&rt.get("loud/chatty").await.unwrap().unwrap());
    let n = loud.len();
    assert_eq!(loud[n - 1], "burst-199");
    let dropped: usize = loud[n - 2]
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(" messages dropped)"))
        .expect("a drop summary")
        .parse()
        .unwrap();
    let logged = loud.iter().filter(|m| m.starts_with("burst-")).count();
    assert_eq!(logged + dropped, 200, "{loud:?}");

    rt.run(Launch::new(ChattyProc { n: 60, warn_at: 30 }).id("warned"))
        .await
        .unwrap();
    let rec = rt.get("warned/chatty").await.unwrap().unwrap();
    let warned = messages(&rec);
    let w = warned
        .iter()
        .position(|m| m == "careful")
        .expect("the warning is kept");
    assert_eq!(warned.iter().filter(|m| *m == "careful").count(), 1);
    assert_eq!(warned[w - 1], "burst-29");
    assert!(warned[w - 2].ends_with("messages dropped)"), "{warned:?}");
    assert_eq!(rec.log[w].level, Level::Warning);

    rt.run(Launch::new(PercentProc {}).id("pct")).await.unwrap();
    let pct = rt.get("pct/percent_only").await.unwrap().unwrap();
    assert!(pct.log.is_empty(), "{:?}", pct.log);
}

// Issue 4: events stream state changes; a subscriber that does not keep up is told how
// many events it missed and never slows the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_lagging_subscribers() {
    // A small bus, so that the flood below overflows it.
    let rt = Runtime::in_memory()
        .event_buffer(1_024)
        .start()
        .await
        .unwrap();
    let mut live = rt.subscribe();
    let mut sleepy = rt.subscribe();
    rt.run(Launch::new(Small {}).id("ev")).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), live.next()).await {
        if let EventKind::State { state } = e.kind {
            seen.push((e.id, state));
        }
    }
    assert!(
        seen.contains(&("ev".to_owned(), State::Scheduled)),
        "{seen:?}"
    );
    assert!(seen.contains(&("ev".to_owned(), State::Running)));
    assert!(seen.contains(&("ev".to_owned(), State::Done)));
    assert!(seen.contains(&("ev/plus".to_owned(), State::Done)));
    // Progress and log entries are events too.
    rt.run(Launch::new(ChattyProc { n: 2, warn_at: 1 }).id("evp"))
        .await
        .unwrap();
    let (mut progress, mut logs) = (0, 0);
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), live.next()).await {
        match e.kind {
            EventKind::Progress(p) if e.id == "evp/chatty" => {
                assert!(p.message.unwrap().starts_with("burst-"));
                progress += 1;
            }
            EventKind::Log(l) if e.id == "evp/chatty" && l.message == "careful" => logs += 1,
            _ => {}
        }
    }
    assert_eq!((progress, logs), (2, 1));
    // Flood: many short runs produce more events than the bus holds.
    for i in 0..1500 {
        rt.run(Launch::new(Small {}).id(format!("flood-{i}")))
            .await
            .unwrap();
    }
    let first = sleepy.next().await.unwrap();
    assert!(
        matches!(first.kind, EventKind::Lagged { missed } if missed > 0),
        "{first:?}"
    );
}

// Issue 4: a second launch with the same idempotency key returns the first run.
#[tokio::test]
async fn idempotent_launch_returns_existing_run() {
    let rt = Runtime::temporary().start().await.unwrap();
    let first = rt
        .launch(Launch::new(Small {}).idempotency_key("order-42"))
        .await
        .unwrap();
    let id = first.id().to_owned();
    first.wait().await.unwrap();
    let again = rt
        .launch(Launch::new(Small {}).idempotency_key("order-42"))
        .await
        .unwrap();
    assert_eq!(again.id(), id);
    let report = again.wait().await.unwrap();
    assert_eq!(report.result::<u32>("plus").unwrap(), 3);
    assert_eq!(
        rt.list(ListFilter::new()).await.unwrap().len(),
        1,
        "no second run"
    );
}

// Issue 4: an ephemeral record is deleted with its task records when it ends.
#[tokio::test]
async fn ephemeral_records_are_deleted() {
    let rt = Runtime::temporary().start().await.unwrap();
    let report = rt
        .run(Launch::new(Small {}).id("eph").ephemeral())
        .await
        .unwrap();
    assert!(report.is_success());
    assert!(rt.get("eph").await.unwrap().is_none());
    assert!(rt.get("eph/plus").await.unwrap().is_none());
}

// Issue 4 / OPT-360..362: adhoc_define + launch_id; list by state, metadata and root.
#[tokio::test]
async fn adhoc_and_list_filters() {
    let rt = Runtime::temporary()
        .register::<Small>()
        .start()
        .await
        .unwrap();
    let mut opts = AdhocOptions::default();
    opts.metadata.insert("customer".into(), "2".into());
    let rec = rt.adhoc_define("adhoc-1", Small {}, opts).await.unwrap();
    assert!(rec.adhoc && rec.state() == State::Idle);
    assert!(matches!(
        rt.adhoc_define("adhoc-1", Small {}, AdhocOptions::default())
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    rt.launch_id("adhoc-1").await.unwrap().wait().await.unwrap();
    rt.run(Launch::new(Small {}).id("other").metadata("customer", "3"))
        .await
        .unwrap();
    let by_meta = rt
        .list(ListFilter::new().metadata("customer", "2"))
        .await
        .unwrap();
    assert_eq!(
        by_meta.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec!["adhoc-1"]
    );
    assert_eq!(
        rt.list(ListFilter::new().state(State::Done))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        rt.list(ListFilter::new().state(State::Running))
            .await
            .unwrap()
            .len(),
        0
    );
    let tree = rt
        .list(ListFilter::new().root("other").with_tasks())
        .await
        .unwrap();
    assert_eq!(
        tree.iter().map(|r| r.depth).collect::<Vec<_>>(),
        vec![0, 1, 1]
    );
    rt.adhoc_delete("adhoc-1").await.unwrap();
    assert!(rt.get("adhoc-1").await.unwrap().is_none());
    assert!(matches!(
        rt.adhoc_delete("adhoc-1").await,
        Err(Error::NotFound { .. })
    ));
}

// Issue 4: resync creates missing definitions, updates metadata without touching run
// state, and deletes idle records no longer defined.
#[tokio::test]
async fn resync_definitions() {
    let dir = temp_dir("resync");
    {
        let rt = Runtime::open(&dir)
            .register::<Small>()
            .define(Definition::new("keep", Small {}).unwrap().metadata("v", 1))
            .define(Definition::new("drop-me", Small {}).unwrap())
            .start()
            .await
            .unwrap();
        rt.launch_id("keep").await.unwrap().wait().await.unwrap();
        rt.shutdown().await.unwrap();
    }
    // No pause: the store is closed when `shutdown` returns.
    let rt = Runtime::open(&dir)
        .register::<Small>()
        .define(Definition::new("keep", Small {}).unwrap().metadata("v", 2))
        .start()
        .await
        .unwrap();
    let keep = rt.get("keep").await.unwrap().unwrap();
    assert_eq!(keep.state(), State::Done, "run state untouched");
    assert_eq!(keep.metadata.get("v"), Some(&serde_json::json!(2)));
    assert!(rt.get("drop-me").await.unwrap().is_none());
    rt.shutdown().await.unwrap();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

// OPT-196: shutdown cancels running work (cooperative -> cancelled, stubborn -> failed),
// then refuses new launches.
#[tokio::test]
async fn shutdown_finalizes_running_work() {
    let rt = Runtime::temporary()
        .cancel_grace(Duration::from_millis(150))
        .start()
        .await
        .unwrap();
    let a = rt
        .launch(Launch::new(PoliteProc {}).id("coop"))
        .await
        .unwrap();
    let b = rt
        .launch(Launch::new(StubbornProc {}).id("stub"))
        .await
        .unwrap();
    wait_state(&rt, "coop", State::Running).await;
    wait_state(&rt, "stub", State::Running).await;
    rt.shutdown_with(procession::Shutdown::Cancel)
        .await
        .unwrap();
    assert_eq!(a.wait().await.unwrap().status, RunStatus::Cancelled);
    assert_eq!(b.wait().await.unwrap().status, RunStatus::Failed);
    assert!(matches!(
        rt.launch(Small {}).await,
        Err(Error::ShuttingDown)
    ));
}

// OPT-434: relaunching an ended record replaces the previous run's task records.
#[tokio::test]
async fn relaunch_replaces_task_records() {
    let rt = Runtime::temporary().start().await.unwrap();
    rt.run(Launch::new(ChattyProc { n: 3, warn_at: 99 }).id("again"))
        .await
        .unwrap();
    rt.run(Launch::new(Small {}).id("again")).await.unwrap_err();
    rt.run(Launch::new(ChattyProc { n: 1, warn_at: 99 }).id("again"))
        .await
        .unwrap();
    let t = rt.get("again/chatty").await.unwrap().unwrap();
    assert_eq!(messages(&t), vec!["burst-0"]);
    assert_eq!(t.attempts, 1);
}

// Task rows round-trip through the sled store's encoding (MessagePack, fields by
// position) whatever they hold: a result, an error and its chain, progress, log entries
// with and without structured data.
#[test]
fn task_rows_round_trip_through_sled() {
    use procession::store::{Batch, TaskRow};
    use procession::{LogEntry, Progress};
    let dir = temp_dir("rows");
    let store = SledStore::open(&dir).unwrap();
    let full = TaskRow {
        task: "fetch".into(),
        node: "each[3]/fetch".into(),
        state: State::Failed,
        attempts: 3,
        started_at: Some(1_700_000_000_000),
        ended_at: Some(1_700_000_000_250),
        elapsed_ns: 250_000_000,
        skipped: false,
        error: Some("connection refused".into()),
        chain: vec!["io error".into(), "os error 111".into()],
        progress: Progress {
            percent: Some(42.5),
            message: Some("halfway".into()),
        },
        log: vec![
            LogEntry {
                timestamp: 1,
                level: Level::Info,
                message: "plain".into(),
                data: None,
            },
            LogEntry {
                timestamp: 2,
                level: Level::Warning,
                message: "with data".into(),
                data: Some(serde_json::json!({"retry_in_ms": 500, "hosts": ["a", "b"]})),
            },
        ],
        result: None,
        lease: 3,
        optional: false,
    };
    let done = TaskRow {
        state: State::Done,
        error: None,
        chain: Vec::new(),
        log: Vec::new(),
        result: Some(r#"{"total":42.0,"items":[1,2]}"#.into()),
        ..full.clone()
    };
    let mut batch = Batch::default();
    batch.tasks.push((Arc::from("run-1"), 0, full.clone()));
    batch.tasks.push((Arc::from("run-1"), 7, done.clone()));
    store.apply(batch).unwrap();
    let rows = store.tasks("run-1").unwrap();
    assert_eq!(rows, vec![(0, full), (7, done)]);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[task]
fn numbered(i: u64) -> u64 {
    i
}

#[process]
fn many_numbered(p: &mut Builder, n: u64) {
    p.each(0..n, |p, i| {
        p.task(Numbered::new(i));
    });
}

// A run larger than one write chunk (its rows reach the store 2,048 at a time, and the
// memory store keeps them in chunks of 1,024): every task's row is stored done with its
// result, and every task's end is announced once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_run_stores_every_row_once() {
    const N: u64 = 5000;
    let stores: Vec<Arc<dyn Store>> = vec![
        Arc::new(MemoryStore::new()),
        Arc::new(SledStore::temporary().unwrap()),
    ];
    for store in stores {
        let rt = Runtime::with_store(store.clone())
            .register::<ManyNumbered>()
            .start()
            .await
            .unwrap();
        let events = rt.subscribe();
        let run = rt
            .launch(Launch::new(ManyNumbered { n: N }).id("many"))
            .await
            .unwrap();
        let report = run.wait().await.unwrap();
        assert!(report.is_success());
        let rows = store.tasks("many").unwrap();
        assert_eq!(rows.len(), N as usize, "{}", store.location());
        for (k, (i, row)) in rows.iter().enumerate() {
            assert_eq!(*i as usize, k);
            assert_eq!(row.state, State::Done);
            assert_eq!(row.result.as_deref(), Some(i.to_string().as_str()));
        }
        let done_state = EventKind::State { state: State::Done };
        let done = events
            .take_while(|e| std::future::ready(!(e.id == "many" && e.kind == done_state)))
            .filter(|e| std::future::ready(e.kind == done_state))
            .count();
        let done = tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .expect("the run's end event");
        assert_eq!(done, N as usize, "one done event per task");
        rt.shutdown().await.unwrap();
    }
}
