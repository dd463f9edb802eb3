//! Remote control on the runtime (issue 15): persisted launch blocks, launches described
//! as data, cancels by filter. The admin API exposes these; here they are checked on the
//! runtime itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use procession::prelude::*;
use procession::store::Query;
use procession::{Definition, Error, LaunchSpec, Schedule, State};

static TICKS: AtomicUsize = AtomicUsize::new(0);

#[task]
fn tick() {
    TICKS.fetch_add(1, Ordering::SeqCst);
}

#[process]
fn ticker(p: &mut Builder) {
    p.task(Tick::new());
}

#[task]
fn noop() {}

#[process]
fn quick(p: &mut Builder) {
    p.task(Noop::new());
}

/// Waits until cancelled (cooperative).
#[task]
async fn wait_for_cancel(ctx: &Ctx) {
    while ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[process]
fn waiter(p: &mut Builder, team: String) {
    let _ = team;
    p.task(WaitForCancel::new());
}

#[task]
fn greet(name: String) -> String {
    format!("hello {name}")
}

#[process]
fn hello(p: &mut Builder, name: String) {
    p.task(Greet::new(name));
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!("procession-{tag}-{}-{nanos}", std::process::id()))
}

// OPT-240, OPT-349: a blocked record refuses launches with the typed reason
// (`launch-blocked`), by id and by value; after the unblock it runs.
#[tokio::test]
async fn a_blocked_record_refuses_launches_until_unblocked() {
    let rt = Runtime::in_memory()
        .register::<Quick>()
        .define(Definition::new("quick", Quick {}).unwrap())
        .start()
        .await
        .unwrap();
    let rec = rt
        .block_launches("quick", Some("maintenance".into()))
        .await
        .unwrap();
    assert_eq!(
        rec.launch_block.unwrap().reason.as_deref(),
        Some("maintenance")
    );
    let by_id = rt.launch_id("quick").await.unwrap_err();
    assert!(
        matches!(&by_id, Error::LaunchBlocked { id, reason } if id == "quick" && reason.as_deref() == Some("maintenance")),
        "{by_id:?}"
    );
    let by_value = rt
        .launch(Launch::new(Quick {}).id("quick"))
        .await
        .unwrap_err();
    assert!(
        matches!(by_value, Error::LaunchBlocked { .. }),
        "{by_value:?}"
    );
    // Nothing was written by the refusals.
    assert_eq!(rt.get("quick").await.unwrap().unwrap().state(), State::Idle);
    rt.unblock_launches("quick").await.unwrap();
    assert!(rt
        .launch_id("quick")
        .await
        .unwrap()
        .wait()
        .await
        .unwrap()
        .is_success());
    assert!(matches!(
        rt.block_launches("nope", None).await,
        Err(Error::NotFound { .. })
    ));
}

// OPT-231: a persistent block survives a restart (it is stored on the record), and a
// resync of the definitions keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_survives_a_restart_and_a_resync() {
    let dir = temp_dir("blocks");
    let open = || {
        Runtime::open(&dir)
            .register::<Quick>()
            .define(Definition::new("quick", Quick {}).unwrap())
    };
    let rt = open().start().await.unwrap();
    rt.block_launches("quick", Some("r".into())).await.unwrap();
    rt.shutdown().await.unwrap();
    drop(rt);
    let rt = open().start().await.unwrap();
    rt.resync().await.unwrap();
    let err = rt.launch_id("quick").await.unwrap_err();
    assert!(matches!(err, Error::LaunchBlocked { .. }), "{err:?}");
    rt.unblock_launches("quick").await.unwrap();
    assert!(rt
        .run(Launch::new(Quick {}).id("quick"))
        .await
        .unwrap()
        .is_success());
    rt.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

// A blocked definition's schedule fires but launches nothing; the refusal is on the
// record's log (a schedule never fails silently); unblocked, the next fire runs.
#[tokio::test(start_paused = true)]
async fn a_blocked_schedule_launches_nothing_until_unblocked() {
    let rt = Runtime::in_memory()
        .register::<Ticker>()
        .define(Definition::new("ticker", Ticker {}).unwrap())
        .start()
        .await
        .unwrap();
    rt.block_launches("ticker", None).await.unwrap();
    rt.schedule("ticker", Schedule::every(Duration::from_secs(10)).unwrap())
        .await
        .unwrap();
    // The paused clock jumps while the store works: advance fire by fire until the
    // refusal is on the log.
    let blocked_msg = "launches of process `ticker` are blocked";
    // Bounded by real time (generous), not by a number of jumps: on a loaded machine the
    // scheduler's store round trips (blocking threads) take longer than a few jumps.
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    let mut logged = false;
    while std::time::Instant::now() < deadline {
        tokio::time::advance(Duration::from_secs(10)).await;
        let rec = rt.get("ticker").await.unwrap().unwrap();
        if rec.log.iter().any(|l| l.message.contains(blocked_msg)) {
            logged = true;
            break;
        }
    }
    assert!(logged, "the refused fire is logged on the record");
    assert_eq!(TICKS.load(Ordering::SeqCst), 0);
    rt.unblock_launches("ticker").await.unwrap();
    // The next fire launches a run; the run then needs a few store round trips (blocking
    // threads, real time) before its task ticks: poll by the record's run count and the
    // counter, not by a fixed number of clock jumps.
    let mut fired = false;
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while std::time::Instant::now() < deadline {
        if TICKS.load(Ordering::SeqCst) > 0 {
            break;
        }
        if fired {
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        fired |= rt.get("ticker").await.unwrap().unwrap().runs > 0;
    }
    // The run can tick before the record's run count was read after its fire: read the
    // count again (real time, bounded) rather than trust the loop's last reading.
    while !fired && std::time::Instant::now() < deadline {
        fired = rt.get("ticker").await.unwrap().unwrap().runs > 0;
        if !fired {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(fired, "a fire after the unblock launched a run");
    assert!(
        TICKS.load(Ordering::SeqCst) >= 1,
        "the unblocked run ran its task"
    );
}

// Launch as data: parameters checked against the registered type, with a message that
// names the field; an unknown type is refused by name.
#[tokio::test]
async fn a_launch_spec_checks_its_parameters_against_the_type() {
    let rt = Runtime::in_memory()
        .register::<Hello>()
        .start()
        .await
        .unwrap();
    let report = rt
        .launch_spec(LaunchSpec::new("hello", serde_json::json!({"name": "ada"})).id("h-1"))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(report.result::<String>("greet").unwrap(), "hello ada");
    let err = rt
        .launch_spec(LaunchSpec::new("hello", serde_json::json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParams { .. }), "{err:?}");
    assert!(err.to_string().contains("missing field `name`"), "{err}");
    let err = rt
        .launch_spec(LaunchSpec::new("nope", serde_json::Value::Null))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownProcessType { .. }), "{err:?}");
    assert!(rt.get("h-2").await.unwrap().is_none());
}

// OPT-160: a cancel by an empty filter is refused (it would cancel everything).
#[tokio::test]
async fn a_cancel_by_an_empty_filter_is_refused() {
    let rt = Runtime::in_memory().start().await.unwrap();
    assert!(matches!(
        rt.cancel_matching(&Query::new()).await,
        Err(Error::EmptyFilter)
    ));
    assert!(matches!(
        rt.cancel_preview(&Query::new().limit(5)).await,
        Err(Error::EmptyFilter)
    ));
}

// OPT-164: cancel-and-wait on `team: alpha` returns once the 3 cooperative alpha runs are
// cancelled; the beta run is untouched (OPT-173's snapshot semantics: only matches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_matching_and_wait_returns_with_every_match_cancelled() {
    let rt = Runtime::in_memory()
        .register::<Waiter>()
        .start()
        .await
        .unwrap();
    for i in 0..3 {
        rt.launch(
            Launch::new(Waiter {
                team: "alpha".into(),
            })
            .id(format!("a-{i}"))
            .metadata("team", "alpha"),
        )
        .await
        .unwrap();
    }
    let beta = rt
        .launch(
            Launch::new(Waiter {
                team: "beta".into(),
            })
            .id("b-0")
            .metadata("team", "beta"),
        )
        .await
        .unwrap();
    let q = Query::new().metadata("team", "alpha");
    let mut preview = rt.cancel_preview(&q).await.unwrap();
    preview.sort();
    assert_eq!(preview, vec!["a-0", "a-1", "a-2"]);
    let out = rt
        .cancel_matching_and_wait(&q, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(out.cancelled.len(), 3);
    assert!(out.unfinished.is_empty() && out.refused.is_empty());
    for i in 0..3 {
        let rec = rt.get(&format!("a-{i}")).await.unwrap().unwrap();
        assert_eq!(rec.state(), State::Cancelled);
    }
    assert!(!beta.is_finished());
    beta.cancel().await.unwrap();
}

// ---- resync cancels the runs of records no longer defined (optio's cancel-stale step) ----

/// Counts the warnings that name the cancel-stale grace, on the thread that installed it
/// (the test's own: `resync` logs from the caller's task).
#[derive(Clone, Default)]
struct GraceWarnings(std::sync::Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for GraceWarnings {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut m = Message(String::new());
            event.record(&mut m);
            if m.0.contains("cancel-stale grace exceeded") {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn capture_grace_warnings() -> (GraceWarnings, tracing::subscriber::DefaultGuard) {
    use tracing_subscriber::layer::SubscriberExt;
    let warnings = GraceWarnings::default();
    let subscriber = tracing_subscriber::registry().with(warnings.clone());
    (warnings, tracing::subscriber::set_default(subscriber))
}

static STALE_STARTED: AtomicUsize = AtomicUsize::new(0);
static STALE_RETURNED: AtomicUsize = AtomicUsize::new(0);

/// Cooperative: returns once its run is cancelled, and says so.
#[task]
async fn until_cancelled(ctx: &Ctx) {
    STALE_STARTED.fetch_add(1, Ordering::SeqCst);
    while ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    STALE_RETURNED.fetch_add(1, Ordering::SeqCst);
}

#[process]
fn cooperative(p: &mut Builder) {
    p.task(UntilCancelled::new());
}

static DEAF_STARTED: AtomicUsize = AtomicUsize::new(0);
static DEAF_RELEASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Uncooperative: ignores its cancel until the test releases it.
#[task]
async fn deaf() {
    DEAF_STARTED.fetch_add(1, Ordering::SeqCst);
    while !DEAF_RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[process]
fn uncooperative(p: &mut Builder) {
    p.task(Deaf::new());
}

async fn until_running(rt: &Runtime, id: &str) {
    for _ in 0..4000 {
        if rt.get(id).await.unwrap().map(|r| r.state()) == Some(State::Running) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{id} never ran");
}

/// The state events of run `id` received within `ceiling`, up to and including `last`.
async fn states_until(
    events: &mut procession::EventStream,
    id: &str,
    last: State,
    ceiling: Duration,
) -> Vec<State> {
    use futures::StreamExt;
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(ceiling, async {
        while let Some(e) = events.next().await {
            if let procession::EventKind::State { state } = e.kind {
                if e.id == id {
                    seen.push(state);
                    if state == last {
                        return;
                    }
                }
            }
        }
    })
    .await;
    seen
}

// OPT-306: a running cooperative run whose definition disappeared is cancelled by the
// resync, which waits for it: the task returns (its cancellation), the run ends
// `cancelled`, its tracking is gone before its record is deleted (the run's handle is
// signalled after the runtime forgets the run), and the record is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_cancels_a_running_run_whose_definition_disappeared_then_deletes_it() {
    let rt = Runtime::in_memory()
        .register::<Cooperative>()
        .define(Definition::new("t1", Cooperative {}).unwrap())
        .start()
        .await
        .unwrap();
    let run = rt.launch_id("t1").await.unwrap();
    until_running(&rt, "t1").await;
    // The record says running from the launch on, before the task starts: a cancel that
    // came first would end the run without the task ever running.
    for _ in 0..4000 {
        if STALE_STARTED.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut events = rt.subscribe();
    rt.redefine(Vec::new()).unwrap();
    let (warnings, _guard) = capture_grace_warnings();
    let report = rt.resync().await.unwrap();
    assert_eq!(report.cancelled, vec!["t1".to_string()], "{report:?}");
    assert_eq!(report.deleted, vec!["t1".to_string()], "{report:?}");
    assert!(report.abandoned.is_empty() && report.kept_active.is_empty());
    assert_eq!(warnings.0.load(Ordering::SeqCst), 0);
    // The run ended before the resync returned: its handle is signalled only after the
    // runtime dropped its tracking of the run.
    assert!(run.is_finished(), "the resync waited for the run's end");
    assert_eq!(
        STALE_RETURNED.load(Ordering::SeqCst),
        1,
        "the task returned"
    );
    assert!(rt.get("t1").await.unwrap().is_none(), "record deleted");
    assert!(rt.task_rows("t1").await.unwrap().is_empty());
    // Nothing tracks it any more: no live run answers for the id.
    assert!(matches!(rt.wait("t1").await, Err(Error::NotFound { .. })));
    let ended = run.wait().await.unwrap();
    assert_eq!(ended.status, procession::RunStatus::Cancelled);
    // Its end went through the cancel's states before the deletion.
    let states = states_until(&mut events, "t1", State::Cancelled, Duration::from_secs(5)).await;
    assert_eq!(states.last(), Some(&State::Cancelled), "{states:?}");
    assert!(states.contains(&State::CancelRequested), "{states:?}");
    rt.shutdown().await.unwrap();
}

// OPT-308: a run that ignores its cancel does not hold the resync: once the resync grace
// (0.3 s here) has passed, the record is deleted anyway with a warning, and the run is
// reported abandoned. Its late end later resurrects nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_deletes_a_stale_record_whose_run_ignores_its_cancel_after_the_grace() {
    let rt = Runtime::in_memory()
        .register::<Uncooperative>()
        .define(Definition::new("t1", Uncooperative {}).unwrap())
        // The run's own cancel grace is far longer: only the resync's grace ends the wait.
        .cancel_grace(Duration::from_mins(2))
        .resync_grace(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let run = rt.launch_id("t1").await.unwrap();
    until_running(&rt, "t1").await;
    for _ in 0..4000 {
        if DEAF_STARTED.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.redefine(Vec::new()).unwrap();
    let (warnings, guard) = capture_grace_warnings();
    let t0 = std::time::Instant::now();
    let report = rt.resync().await.unwrap();
    let took = t0.elapsed();
    drop(guard);
    println!("resync with an uncooperative stale run took {took:?} (grace 300 ms)");
    // A generous bound: the resync does not hang on the run (its cancel grace is 2 min).
    assert!(took < Duration::from_mins(1), "{took:?}");
    assert_eq!(report.cancelled, vec!["t1".to_string()], "{report:?}");
    assert_eq!(report.abandoned, vec!["t1".to_string()], "{report:?}");
    assert_eq!(report.deleted, vec!["t1".to_string()], "{report:?}");
    assert_eq!(warnings.0.load(Ordering::SeqCst), 1, "one grace warning");
    assert!(rt.get("t1").await.unwrap().is_none(), "deleted anyway");
    assert!(!run.is_finished(), "the task still ignores its cancel");
    // Nothing tracks it any more.
    assert!(matches!(rt.wait("t1").await, Err(Error::NotFound { .. })));
    // Released, the run ends; its end finds no record and writes none.
    DEAF_RELEASE.store(true, Ordering::SeqCst);
    run.wait().await.unwrap();
    assert!(
        rt.get("t1").await.unwrap().is_none(),
        "the late end wrote nothing"
    );
    assert!(
        rt.task_rows("t1").await.unwrap().is_empty(),
        "nor left its task records"
    );
    rt.shutdown().await.unwrap();
}

// OPT-310: a stale record left `scheduled` with no run behind it ends `cancelled` at once
// (a direct end, as `cancel` of a scheduled record) and is deleted: the resync does not
// wait out its grace (30 s by default) and logs no grace warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_ends_a_stale_scheduled_record_with_no_run_at_once() {
    use procession::store::{MemoryStore, Store, Update};
    let store = std::sync::Arc::new(MemoryStore::new());
    let rt = Runtime::with_store(store.clone())
        .register::<Quick>()
        .define(Definition::new("t1", Quick {}).unwrap())
        .start()
        .await
        .unwrap();
    // Forced to `scheduled` behind the runtime's back: no run of it exists anywhere.
    store
        .update("t1", &mut |cur| {
            let mut r = cur.expect("defined").clone();
            r.status.state = State::Scheduled;
            Update::Put(Box::new(r))
        })
        .unwrap();
    let mut events = rt.subscribe();
    rt.redefine(Vec::new()).unwrap();
    let (warnings, guard) = capture_grace_warnings();
    let t0 = std::time::Instant::now();
    let report = rt.resync().await.unwrap();
    let took = t0.elapsed();
    drop(guard);
    println!("resync of a stale scheduled record took {took:?} (grace 30 s)");
    assert!(
        took < Duration::from_secs(20),
        "the grace was not waited out: {took:?}"
    );
    assert_eq!(report.cancelled, vec!["t1".to_string()], "{report:?}");
    assert_eq!(report.deleted, vec!["t1".to_string()], "{report:?}");
    assert!(report.abandoned.is_empty(), "{report:?}");
    assert_eq!(warnings.0.load(Ordering::SeqCst), 0, "no grace warning");
    assert!(rt.get("t1").await.unwrap().is_none());
    // scheduled -> cancelled directly, before the deletion.
    let states = states_until(&mut events, "t1", State::Cancelled, Duration::from_secs(5)).await;
    assert_eq!(states, vec![State::Cancelled]);
    rt.shutdown().await.unwrap();
}

// A record no longer defined that does not allow a cancel keeps its run: the resync
// leaves it active (`kept_active`); once the run has ended, the next resync deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_record_that_allows_no_cancel_is_kept_until_its_run_ends() {
    let rt = Runtime::in_memory()
        .register::<Waiter>()
        .define(
            Definition::new("keep", Waiter { team: "k".into() })
                .unwrap()
                .cancellable(false),
        )
        .start()
        .await
        .unwrap();
    let run = rt.launch_id("keep").await.unwrap();
    until_running(&rt, "keep").await;
    rt.redefine(Vec::new()).unwrap();
    let report = rt.resync().await.unwrap();
    assert_eq!(report.kept_active, vec!["keep".to_string()], "{report:?}");
    assert!(report.cancelled.is_empty() && report.deleted.is_empty());
    assert_eq!(
        rt.get("keep").await.unwrap().unwrap().state(),
        State::Running
    );
    assert!(!run.is_finished());
    // Its handle still stops it (a token is not the record's cancel).
    run.cancel_token().cancel();
    run.wait().await.unwrap();
    let report = rt.resync().await.unwrap();
    assert_eq!(report.deleted, vec!["keep".to_string()], "{report:?}");
    assert!(rt.get("keep").await.unwrap().is_none());
    rt.shutdown().await.unwrap();
}

// A deploy that drops a definition: the run its previous process left running is not
// resumed by the next start (whose resync runs first) but ended `cancelled` and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_a_definition_ends_and_deletes_its_interrupted_run() {
    let dir = temp_dir("stale-restart");
    let rt = Runtime::open(&dir)
        .register::<Waiter>()
        .define(Definition::new("gone", Waiter { team: "g".into() }).unwrap())
        .start()
        .await
        .unwrap();
    let _run = rt.launch_id("gone").await.unwrap();
    until_running(&rt, "gone").await;
    // A suspending shutdown leaves the run active in the store, to be resumed.
    rt.shutdown().await.unwrap();
    drop(rt);
    let rt = Runtime::open(&dir)
        .register::<Waiter>()
        .start()
        .await
        .unwrap();
    assert!(
        rt.get("gone").await.unwrap().is_none(),
        "not resumed: deleted"
    );
    rt.shutdown().await.unwrap();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
