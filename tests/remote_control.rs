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
