//! Every value read from a store is untrusted: extreme numbers, NaN floats, huge strings,
//! random states and random bytes in the store never panic the runtime and never hang a
//! run. Damaged values become typed errors (or are ignored), never a panic.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use procession::prelude::*;
use procession::store::{Batch, MemoryStore, SledStore, Store, StoreError, TaskRow};
use procession::{
    Child, ChildError, ListFilter, LogEntry, ProcessRecord, Progress, RecordKind, RunMeta, SmolStr,
    State,
};
use proptest::prelude::*;

/// How long one exercise of a store may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(10);

#[task(retries = 2)]
fn flaky(n: u32) -> Result<u32, std::io::Error> {
    if n.is_multiple_of(2) {
        Ok(n)
    } else {
        Err(std::io::Error::other("odd input"))
    }
}

#[task]
fn add_one(x: u32) -> u32 {
    x.wrapping_add(1)
}

#[process]
fn small(p: &mut Builder, n: u32) {
    let a = p.task(Flaky::new(n));
    p.task(AddOne::new(a));
}

#[task]
async fn spawn_child(ctx: &Ctx) -> Result<u32, ChildError> {
    ctx.run_child(Child::new(Small { n: 2 })).await?;
    Ok(1)
}

#[process]
fn parent(p: &mut Builder) {
    p.task(SpawnChild::new());
}

/// Counts panics on any thread (a panic inside a spawned run is otherwise swallowed by
/// tokio and only shows as a run that never ends).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // This file's own assertions (and proptest's) are not the runtime panicking.
            let ours = info.location().is_some_and(|l| {
                l.file().ends_with("untrusted.rs") || l.file().contains("proptest")
            });
            if !ours {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

fn small_fingerprint(n: u32) -> u64 {
    Graph::of(Small { n }).unwrap().fingerprint()
}

/// A stored run of `small` (or `parent`) that was interrupted while running.
fn running(
    id: &str,
    process_type: &str,
    params: serde_json::Value,
    fingerprint: u64,
) -> ProcessRecord {
    let mut rec = ProcessRecord::new_root(id, process_type, process_type, "", params);
    rec.status.state = State::Running;
    // Launched (launches make ad hoc records): a record of a definition no longer
    // declared would be cancelled and deleted by the start's resync, not resumed.
    rec.adhoc = true;
    rec.run = Some(RunMeta {
        token: 7,
        fingerprint,
        options: BTreeMap::new(),
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

fn row(node: &str, state: State) -> TaskRow {
    TaskRow {
        task: node.into(),
        node: node.into(),
        state,
        attempts: 1,
        started_at: Some(1),
        ended_at: None,
        elapsed_ns: 0,
        skipped: false,
        error: None,
        chain: Vec::new(),
        progress: Progress::default(),
        log: Vec::new(),
        result: None,
        lease: 0,
        optional: false,
    }
}

fn put(store: &dyn Store, records: Vec<ProcessRecord>, rows: Vec<(&str, u32, TaskRow)>) {
    let batch = Batch {
        processes: records,
        tasks: rows
            .into_iter()
            .map(|(run, i, r)| (Arc::from(run), i, r))
            .collect(),
        ..Batch::default()
    };
    store.apply(batch).unwrap();
}

async fn start(store: Arc<dyn Store>) -> procession::Result<Runtime> {
    Runtime::with_store(store)
        .register::<Small>()
        .register::<Parent>()
        .start()
        .await
}

// A stored `status.duration` too large for a `Duration` (or NaN, negative, infinite)
// made `Runtime::report` and `Runtime::wait` panic ("cannot convert float seconds to
// Duration"): a finished run's report is rebuilt from the store with a bounded elapsed.
#[tokio::test]
async fn stored_duration_out_of_range_does_not_panic_report_or_wait() {
    let store = Arc::new(MemoryStore::new());
    let mut records = Vec::new();
    for (i, d) in [
        1.9e19,
        1e300,
        f64::MAX,
        f64::NAN,
        -1.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ]
    .into_iter()
    .enumerate()
    {
        let mut rec = ProcessRecord::new_root(
            &format!("d{i}"),
            "small",
            "small",
            "",
            serde_json::json!({"n": 2}),
        );
        rec.status.state = State::Done;
        rec.status.duration = Some(d);
        rec.adhoc = true;
        records.push(rec);
    }
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    put(&*store, records, Vec::new());
    let rt = start(store).await.unwrap();
    for id in &ids {
        let report = rt.report(id).await.unwrap();
        let _ = report.to_json();
        let report = tokio::time::timeout(HANG, rt.wait(id))
            .await
            .unwrap()
            .unwrap();
        assert!(report.elapsed <= Duration::MAX);
    }
}

// A stored `attempts = u32::MAX` on an interrupted task overflowed `attempt + 1` in the
// executor on resume (a panic in debug builds, a retry loop that never ends in release):
// the resumed run ends, failed, with its attempt count saturated.
#[tokio::test]
async fn stored_attempts_u32_max_resumes_and_ends() {
    count_panics();
    let store = Arc::new(MemoryStore::new());
    let mut r = row("flaky", State::Running);
    r.attempts = u32::MAX;
    put(
        &*store,
        vec![running(
            "att",
            "small",
            serde_json::json!({"n": 1}),
            small_fingerprint(1),
        )],
        vec![("att", 0, r)],
    );
    let before = PANICS.load(Ordering::SeqCst);
    let rt = start(store).await.unwrap();
    let report = tokio::time::timeout(HANG, rt.wait("att"))
        .await
        .expect("the resumed run ends")
        .unwrap();
    assert_eq!(report.status, RunStatus::Failed, "{}", report.summary());
    assert_eq!(report.task("flaky").unwrap().attempts, u32::MAX);
    assert_eq!(PANICS.load(Ordering::SeqCst), before, "nothing panicked");
}

// A stored `depth = u32::MAX` overflowed `depth + 1` when the run's tasks were shown as
// child records (`TaskRow::to_record`) and when a task of the resumed run launched a
// child process (`parent_rec.depth + 1`).
#[tokio::test]
async fn stored_depth_u32_max_does_not_overflow() {
    count_panics();
    let store = Arc::new(MemoryStore::new());
    let mut rec = running(
        "deep",
        "parent",
        serde_json::json!({}),
        Graph::of(Parent {}).unwrap().fingerprint(),
    );
    rec.depth = u32::MAX;
    let mut shown =
        ProcessRecord::new_root("shown", "small", "small", "", serde_json::json!({"n": 2}));
    shown.status.state = State::Done;
    shown.depth = u32::MAX;
    shown.adhoc = true;
    let mut ended = row("flaky", State::Done);
    ended.ended_at = Some(2);
    ended.result = Some("2".into());
    put(&*store, vec![rec, shown], vec![("shown", 0, ended)]);
    let before = PANICS.load(Ordering::SeqCst);
    let rt = start(store).await.unwrap();
    let tasks = rt
        .list(ListFilter::new().root("shown").with_tasks())
        .await
        .unwrap();
    assert!(tasks
        .iter()
        .any(|r| r.kind == RecordKind::Task && r.depth == u32::MAX));
    assert!(rt.get("shown/flaky").await.unwrap().is_some());
    let report = tokio::time::timeout(HANG, rt.wait("deep"))
        .await
        .expect("the resumed run ends")
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(PANICS.load(Ordering::SeqCst), before, "nothing panicked");
}

// Stored node indices beyond the graph (and a `RunMeta.tasks` that does not match it)
// are ignored on resume, never used as an index; a stored result that is not JSON is
// not handed to a report as if it were.
#[tokio::test]
async fn stored_node_index_beyond_graph_is_ignored() {
    count_panics();
    let store = Arc::new(SledStore::temporary().unwrap());
    let mut rec = running(
        "far",
        "small",
        serde_json::json!({"n": 2}),
        small_fingerprint(2),
    );
    rec.run.as_mut().unwrap().tasks = u32::MAX;
    let mut done = row("flaky", State::Done);
    done.result = Some("2".into());
    let mut bad = row("add_one", State::Done);
    bad.result = Some("{not json".into());
    put(
        &*store,
        vec![rec],
        vec![
            ("far", 5, done.clone()),
            ("far", u32::MAX, done),
            ("far", 1, bad),
        ],
    );
    let before = PANICS.load(Ordering::SeqCst);
    let rt = start(store).await.unwrap();
    let report = tokio::time::timeout(HANG, rt.wait("far"))
        .await
        .expect("the resumed run ends")
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.result::<u32>("add_one").unwrap(), 3);
    let _ = rt.report("far").await.unwrap().to_json();
    assert_eq!(PANICS.load(Ordering::SeqCst), before, "nothing panicked");
}

// --------------------------------------------------------------- properties

fn extreme_u64() -> BoxedStrategy<u64> {
    prop_oneof![
        Just(0),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        0..10_000u64,
        any::<u64>(),
    ]
    .boxed()
}

fn extreme_u32() -> BoxedStrategy<u32> {
    prop_oneof![
        Just(0),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        0..4u32,
        any::<u32>()
    ]
    .boxed()
}

fn weird_f64() -> BoxedStrategy<f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-1.0),
        Just(1.9e19),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        0.0..100.0f64,
        any::<f64>(),
    ]
    .boxed()
}

fn weird_string() -> BoxedStrategy<String> {
    prop_oneof![
        "\\PC{0,12}",
        Just(String::new()),
        Just("flaky".to_owned()),
        Just("add_one".to_owned()),
        Just("x".repeat(100_000)),
        Just("a/b\u{0}c".to_owned()),
    ]
    .boxed()
}

fn any_state() -> BoxedStrategy<State> {
    prop::sample::select(State::ALL.to_vec()).boxed()
}

fn weird_result() -> BoxedStrategy<Option<SmolStr>> {
    prop::option::of(
        prop_oneof![
            Just("2".to_owned()),
            Just("null".to_owned()),
            Just("{oops".to_owned()),
            Just("\"text\"".to_owned()),
            Just("1e999".to_owned()),
            Just(format!("[{}]", "1,".repeat(10_000) + "1")),
            weird_string(),
        ]
        .prop_map(SmolStr::from),
    )
    .boxed()
}

prop_compose! {
    fn any_row()(
        task in weird_string(),
        node in weird_string(),
        state in any_state(),
        attempts in extreme_u32(),
        started_at in prop::option::of(extreme_u64()),
        ended_at in prop::option::of(extreme_u64()),
        elapsed_ns in extreme_u64(),
        skipped in any::<bool>(),
        error in prop::option::of(weird_string()),
        percent in prop::option::of(weird_f64()),
        timestamp in extreme_u64(),
        result in weird_result(),
    ) -> TaskRow {
        TaskRow {
            task: task.into(),
            node: node.into(),
            state,
            attempts,
            started_at,
            ended_at,
            elapsed_ns,
            skipped,
            error: error.clone(),
            chain: error.into_iter().collect(),
            progress: Progress { percent, message: None },
            log: vec![LogEntry { timestamp, level: Level::Info, message: "m".into(), data: None }],
            result,
            lease: 0,
            optional: false,
        }
    }
}

/// Schedules as a store may hold them (built from JSON: the constructors refuse these).
fn any_schedule() -> BoxedStrategy<procession::Schedule> {
    (
        prop_oneof![Just("every"), Just("at"), Just("cron")],
        extreme_u64(),
        extreme_u64(),
        prop_oneof![Just("* * * * *"), Just("nonsense"), Just("0 2 * * *")],
        any::<i32>(),
    )
        .prop_map(|(kind, ms, anchor_ms, expr, utc_offset)| {
            serde_json::from_value(serde_json::json!({
                "kind": kind, "ms": ms, "anchor_ms": anchor_ms, "expr": expr,
                "utc_offset": utc_offset,
            }))
            .unwrap()
        })
        .boxed()
}

fn any_params() -> BoxedStrategy<serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!({"n": 1})),
        Just(serde_json::json!({"n": 2})),
        Just(serde_json::json!({})),
        Just(serde_json::json!(null)),
        Just(serde_json::json!({"n": -1})),
        Just(serde_json::json!({"n": 1e300})),
        Just(serde_json::json!({"n": u64::MAX})),
        Just(serde_json::json!([1, 2, 3])),
    ]
    .boxed()
}

prop_compose! {
    fn any_record(id: String)(
        process_type in prop_oneof![Just("small"), Just("parent"), Just("unknown")],
        params in any_params(),
        kind in prop_oneof![Just(RecordKind::Process), Just(RecordKind::Task)],
        state in any_state(),
        duration in prop::option::of(weird_f64()),
        times in prop::array::uniform4(prop::option::of(extreme_u64())),
        depth in extreme_u32(),
        order in extreme_u32(),
        percent in prop::option::of(weird_f64()),
        created_at in extreme_u64(),
        attempts in extreme_u32(),
        real_fingerprint in any::<bool>(),
        adhoc in any::<bool>(),
        schedule in prop::option::of(any_schedule()),
        last_fire in prop::option::of(extreme_u64()),
        fingerprint in any::<u64>(),
        run in prop::option::of((extreme_u64(), extreme_u32(), prop::option::of(prop_oneof![Just(0usize), Just(1), Just(usize::MAX)]))),
        name in weird_string(),
    ) -> ProcessRecord {
        let mut r = ProcessRecord::new_root(&id, process_type, &name, "", params.clone());
        r.kind = kind;
        r.adhoc = adhoc;
        r.schedule = schedule;
        r.last_fire = last_fire;
        r.status.state = state;
        r.status.duration = duration;
        r.status.running_since = times[0];
        r.status.done_at = times[1];
        r.status.failed_at = times[2];
        r.status.stopped_at = times[3];
        r.depth = depth;
        r.order = order;
        r.progress.percent = percent;
        r.created_at = created_at;
        r.attempts = attempts;
        r.run = run.map(|(token, tasks, max_concurrency)| RunMeta {
            token,
            fingerprint: match (real_fingerprint, process_type, params.get("n").and_then(serde_json::Value::as_u64)) {
                (true, "small", Some(n)) => u32::try_from(n).map_or(fingerprint, small_fingerprint),
                (true, "parent", _) => Graph::of(Parent {}).unwrap().fingerprint(),
                _ => fingerprint,
            },
            options: BTreeMap::new(),
            tasks,
            idempotency_key: None,
            max_concurrency,
            resumes: 0,
            seq: 0,
            overlap_of: None,
            fired_at: None,
            traceparent: None,
        });
        r
    }
}

fn records() -> BoxedStrategy<Vec<ProcessRecord>> {
    (1..4usize)
        .prop_flat_map(|n| {
            (0..n)
                .map(|i| any_record(format!("run-{i}")).boxed())
                .collect::<Vec<_>>()
        })
        .boxed()
}

/// Writes `records` and `rows` into `store`, then reads everything back through a
/// runtime that resumes what looks interrupted: nothing may panic or hang.
async fn exercise(
    store: Arc<dyn Store>,
    records: Vec<ProcessRecord>,
    rows: Vec<(usize, u32, TaskRow)>,
) {
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let batch = Batch {
        tasks: rows
            .into_iter()
            .map(|(run, i, r)| (Arc::from(ids[run % ids.len()].as_str()), i, r))
            .collect(),
        processes: records,
        ..Batch::default()
    };
    store.apply(batch).unwrap();
    let Ok(rt) = start(store).await else {
        return; // a typed error is an acceptable answer to a damaged store
    };
    for id in &ids {
        let _ = rt.get(id).await;
        if let Ok(report) = rt.report(id).await {
            let _ = report.to_json();
            let _ = report.summary();
        }
        let _ = rt.list(ListFilter::new().with_tasks()).await;
        let _ = rt
            .list(ListFilter::new().root(id.clone()).with_tasks())
            .await;
        if let Ok(report) = rt.wait(id).await {
            let _ = report.to_json();
        }
    }
    let _ = rt.shutdown().await;
}

fn check(
    store: Arc<dyn Store>,
    records: Vec<ProcessRecord>,
    rows: Vec<(usize, u32, TaskRow)>,
) -> Result<(), TestCaseError> {
    count_panics();
    let before = PANICS.load(Ordering::SeqCst);
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Boxed: the runtime's futures are large in debug builds and the test thread's stack
    // is small.
    let ended = tokio_rt.block_on(async move {
        tokio::time::timeout(HANG, Box::pin(exercise(store, records, rows))).await
    });
    tokio_rt.shutdown_background();
    prop_assert!(ended.is_ok(), "reading the store hung");
    prop_assert_eq!(PANICS.load(Ordering::SeqCst), before, "something panicked");
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(40))]

    // Arbitrary records and task rows in a memory store (node indices kept small: the
    // memory store holds a run's rows in a vector indexed by node).
    #[test]
    fn stored_rows_and_records_never_panic_or_hang_memory(
        records in records(),
        rows in prop::collection::vec((0..4usize, 0..6u32, any_row().boxed()), 0..6),
    ) {
        check(Arc::new(MemoryStore::new()), records, rows)?;
    }
}

proptest! {
    #![proptest_config(config(16))]

    // The same through sled's encodings, with node indices anywhere in `u32`.
    #[test]
    fn stored_rows_and_records_never_panic_or_hang_sled(
        records in records(),
        rows in prop::collection::vec((0..4usize, prop_oneof![0..6u32, Just(u32::MAX), any::<u32>()], any_row().boxed()), 0..6),
    ) {
        check(Arc::new(SledStore::temporary().unwrap()), records, rows)?;
    }
}

fn temp_dir() -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "procession-untrusted-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

fn random_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        // MessagePack and JSON prefixes that claim more than follows.
        prop::collection::vec(any::<u8>(), 0..32).prop_map(|mut v| {
            v.insert(0, 0x9d);
            v
        }),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(|mut v| {
            v.splice(0..0, *b"{\"schema\":1,");
            v
        }),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(|mut v| {
            v.splice(0..0, [0xdd, 0xff, 0xff, 0xff, 0xff]);
            v
        }),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(24))]

    // Random bytes as the encoded values of the sled trees (records are JSON, task rows
    // MessagePack): decoding returns `StoreError::Corrupt` (or reads a valid value by
    // chance), never panics.
    #[test]
    fn random_bytes_in_sled_trees_decode_as_corrupt(
        records in prop::collection::vec(random_bytes(), 1..4),
        rows in prop::collection::vec((any::<u32>(), random_bytes()), 1..4),
    ) {
        count_panics();
        let before = PANICS.load(Ordering::SeqCst);
        let dir = temp_dir();
        {
            let db = sled::open(&dir).unwrap();
            db.insert(b"schema", &2u32.to_be_bytes()).unwrap();
            let processes = db.open_tree("processes").unwrap();
            for (i, v) in records.iter().enumerate() {
                processes.insert(format!("p{i}").as_bytes(), v.as_slice()).unwrap();
            }
            let tasks = db.open_tree("tasks").unwrap();
            for (order, v) in &rows {
                let mut k = b"run".to_vec();
                k.push(0);
                k.extend_from_slice(&order.to_be_bytes());
                tasks.insert(k, v.as_slice()).unwrap();
            }
            db.flush().unwrap();
        }
        let store = common::open_sled_when_released(&dir);
        for i in 0..records.len() {
            match store.get(&format!("p{i}")) {
                Ok(_) | Err(StoreError::Corrupt { .. } | StoreError::Incompatible { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        match store.all() {
            Ok(_) | Err(StoreError::Corrupt { .. } | StoreError::Incompatible { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        match store.tasks("run") {
            Ok(_) | Err(StoreError::Corrupt { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), before, "something panicked");
    }
}
