//! optio's remote-control scenarios (launch blocks, group cancel, dismiss, resync, typed
//! outcomes) driven through the admin API, plus launch blocks against a schedule whose
//! overlap policy is `allow` (issue 15).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use procession::admin::{self, AdminConfig};
use procession::prelude::*;
use procession::store::Query;
use procession::{Definition, Error, State};
use serde_json::Value;
use tower::ServiceExt;

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn post(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!("procession-{tag}-{}-{nanos}", std::process::id()))
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

static STUBBORN_RELEASE: AtomicBool = AtomicBool::new(false);
static STUBBORN_STARTED: AtomicBool = AtomicBool::new(false);

/// Ignores cancellation until the test releases it.
#[task]
async fn stubborn() {
    STUBBORN_STARTED.store(true, Ordering::SeqCst);
    while !STUBBORN_RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[process]
fn mule(p: &mut Builder) {
    p.task(Stubborn::new());
}

/// The runtime a task reaches back into (OPT-171).
static RT: OnceLock<Runtime> = OnceLock::new();

/// Cancels its own group, then waits for its own cancel.
#[task]
async fn cancel_own_group(ctx: &Ctx) -> Result<usize, Error> {
    let rt = RT.get().expect("set before the launch");
    let out = rt
        .cancel_matching(&Query::new().metadata("team", "self"))
        .await?;
    while ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(out.cancelled.len())
}

#[process]
fn self_canceller(p: &mut Builder) {
    p.task(CancelOwnGroup::new());
}

// OPT-330, OPT-331, OPT-332, OPT-333: every verb answers `ok` when it succeeds (no error
// field), and a refusal keeps its reason as a stable code and a message.
#[tokio::test]
async fn outcomes_are_ok_or_a_typed_reason() {
    let rt = Runtime::in_memory()
        .register::<Quick>()
        .define(Definition::new("quick", Quick {}).unwrap())
        .start()
        .await
        .unwrap();
    let app = admin::router(rt.clone(), AdminConfig::default());
    let (s, v) = call(&app, post("/api/runs/quick/launch", "")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(
        (v["ok"].clone(), v["id"].clone()),
        (true.into(), "quick".into())
    );
    assert!(v.get("error").is_none(), "{v}");
    rt.wait("quick").await.unwrap();
    for (uri, status, reason) in [
        ("/api/runs/nope/launch", StatusCode::NOT_FOUND, "not-found"),
        ("/api/runs/nope/cancel", StatusCode::NOT_FOUND, "not-found"),
        (
            "/api/runs/quick/cancel",
            StatusCode::CONFLICT,
            "not-cancellable-state",
        ),
    ] {
        let (s, v) = call(&app, post(uri, "")).await;
        assert_eq!((s, code(&v)), (status, reason), "{uri}: {v}");
        assert_eq!(v["error"]["status"], status.as_u16());
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, _) = call(&app, post("/api/runs/quick/dismiss", "")).await;
    assert_eq!(s, StatusCode::OK);
    // Idle now: a second dismiss is refused with its reason.
    let (s, v) = call(&app, post("/api/runs/quick/dismiss", "")).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "not-dismissable"),
        "{v}"
    );
}

// OPT-495: dismissing a running run is refused (`not-dismissable`) and the record is kept,
// still running. OPT-309: a resync while a defined record runs leaves it running, not
// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_record_is_neither_dismissed_nor_cancelled_by_a_resync() {
    let rt = Runtime::in_memory()
        .register::<Waiter>()
        .define(
            Definition::new(
                "w",
                Waiter {
                    team: "alpha".into(),
                },
            )
            .unwrap(),
        )
        .start()
        .await
        .unwrap();
    let app = admin::router(rt.clone(), AdminConfig::default());
    let run = rt.launch_id("w").await.unwrap();
    // Running, not merely scheduled.
    for _ in 0..2000 {
        if rt.get("w").await.unwrap().unwrap().state() == State::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (s, v) = call(&app, post("/api/runs/w/dismiss", "")).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "not-dismissable"),
        "{v}"
    );
    let (s, v) = call(&app, post("/api/resync", "")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for key in ["cancelled", "abandoned", "deleted", "kept_active"] {
        assert_eq!(v[key], serde_json::json!([]), "{key}: {v}");
    }
    let rec = rt.get("w").await.unwrap().expect("kept");
    assert_eq!(rec.state(), State::Running);
    assert!(!run.is_finished(), "no cancel was requested");
    let (s, v) = call(&app, post("/api/runs/w/cancel", "")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let report = run.wait().await.unwrap();
    assert!(!report.is_success());
    assert_eq!(
        rt.get("w").await.unwrap().unwrap().state(),
        State::Cancelled
    );
}

// OPT-306 through the API: once its definition is gone, `POST /api/resync` cancels the
// running run, waits for its end, deletes the record and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_through_the_api_reports_the_stale_run_it_cancelled() {
    let rt = Runtime::in_memory()
        .register::<Waiter>()
        .define(
            Definition::new(
                "w",
                Waiter {
                    team: "beta".into(),
                },
            )
            .unwrap(),
        )
        .start()
        .await
        .unwrap();
    let app = admin::router(rt.clone(), AdminConfig::default());
    let run = rt.launch_id("w").await.unwrap();
    for _ in 0..2000 {
        if rt.get("w").await.unwrap().unwrap().state() == State::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rt.redefine(Vec::new()).unwrap();
    let (s, v) = call(&app, post("/api/resync", "")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["cancelled"], serde_json::json!(["w"]), "{v}");
    assert_eq!(v["deleted"], serde_json::json!(["w"]), "{v}");
    assert_eq!(v["abandoned"], serde_json::json!([]), "{v}");
    assert!(run.is_finished());
    let res = app
        .clone()
        .oneshot(Request::get("/api/runs/w").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

// OPT-166: a cancel-and-wait never hangs on a run that ignores its cancel: it returns at
// its ceiling and names the run that has not ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_wait_returns_at_its_ceiling_naming_what_did_not_end() {
    let rt = Runtime::in_memory()
        .register::<Mule>()
        .start()
        .await
        .unwrap();
    let app = admin::router(rt.clone(), AdminConfig::default());
    let run = rt
        .launch(Launch::new(Mule {}).id("mule-1").metadata("team", "m"))
        .await
        .unwrap();
    // Running, not merely scheduled (a scheduled run is cancelled at once).
    for _ in 0..2000 {
        if STUBBORN_STARTED.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(STUBBORN_STARTED.load(Ordering::SeqCst), "the task started");
    let (s, v) = call(
        &app,
        post(
            "/api/cancel",
            r#"{"filter":{"metadata":{"team":"m"}},"wait_ms":300}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["cancelled"], serde_json::json!(["mule-1"]));
    assert_eq!(v["unfinished"], serde_json::json!(["mule-1"]));
    STUBBORN_RELEASE.store(true, Ordering::SeqCst);
    let _ = run.wait().await;
    assert!(!rt.get("mule-1").await.unwrap().unwrap().state().is_active());
}

// OPT-171: a task that cancels its own group gets the answer back (no deadlock), then
// sees its own cancel and ends cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelling_its_own_group_ends_cancelled() {
    let rt = Runtime::in_memory()
        .register::<SelfCanceller>()
        .start()
        .await
        .unwrap();
    assert!(RT.set(rt.clone()).is_ok(), "one runtime per test binary");
    let run = rt
        .launch(
            Launch::new(SelfCanceller {})
                .id("me")
                .metadata("team", "self"),
        )
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), run.wait())
        .await
        .expect("no deadlock")
        .unwrap();
    assert!(!report.is_success());
    assert_eq!(
        rt.get("me").await.unwrap().unwrap().state(),
        State::Cancelled
    );
}

// OPT-234: the refusal of a blocked launch carries the block's reason. OPT-237: an unblock
// removes the stored block too: after a restart, the record launches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocks_reason_is_in_the_refusal_and_an_unblock_is_stored() {
    let dir = temp_dir("unblock");
    let open = || {
        Runtime::open(&dir)
            .register::<Quick>()
            .define(Definition::new("quick", Quick {}).unwrap())
    };
    let rt = open().start().await.unwrap();
    let app = admin::router(rt.clone(), AdminConfig::default());
    let (s, _) = call(
        &app,
        post("/api/runs/quick/block", r#"{"reason":"backup window"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&app, post("/api/runs/quick/launch", "")).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "launch-blocked"));
    assert_eq!(
        v["error"]["message"],
        "launches of process `quick` are blocked: backup window"
    );
    let err = rt.launch_id("quick").await.unwrap_err();
    assert!(
        matches!(&err, Error::LaunchBlocked { reason, .. } if reason.as_deref() == Some("backup window")),
        "{err:?}"
    );
    let (s, v) = call(&app, post("/api/runs/quick/unblock", "")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["record"]["launch_block"].is_null(), "{v}");
    drop(app);
    rt.shutdown().await.unwrap();
    drop(rt);
    let rt = open().start().await.unwrap();
    assert!(rt
        .get("quick")
        .await
        .unwrap()
        .unwrap()
        .launch_block
        .is_none());
    assert!(rt
        .run(Launch::new(Quick {}).id("quick"))
        .await
        .unwrap()
        .is_success());
    rt.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ schedules

static OVERLAP_RUNS: AtomicUsize = AtomicUsize::new(0);
static OVERLAP_RELEASE: AtomicBool = AtomicBool::new(false);

#[task]
async fn overlap_slow() -> usize {
    let n = OVERLAP_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    while !OVERLAP_RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n
}

/// Every ten seconds; a fire while a run is active starts another one beside it.
#[process(schedule = "*/10 * * * * *", overlap = "allow")]
fn overlapping(p: &mut Builder) {
    p.task(OverlapSlow::new());
}

/// Waits a little real time: the store works on other threads, which the paused clock
/// does not wait for.
async fn real_pause() {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)))
        .await
        .unwrap();
}

// A blocked record whose schedule allows overlapping runs: the fire that would start a
// run beside the active one is refused (`launch-blocked`, written on the record's log),
// no `<id>@<seq>` record is made; once unblocked, the next fire starts it.
#[tokio::test(start_paused = true)]
async fn a_blocked_record_refuses_the_overlapping_run_of_its_schedule() {
    let rt = Runtime::in_memory()
        .register::<Overlapping>()
        .define(Definition::new("ov", Overlapping {}).unwrap())
        .start()
        .await
        .unwrap();
    // The first fire starts run 1, which holds.
    let mut started = false;
    for _ in 0..200 {
        tokio::time::advance(Duration::from_secs(1)).await;
        real_pause().await;
        if OVERLAP_RUNS.load(Ordering::SeqCst) == 1 {
            started = true;
            break;
        }
    }
    assert!(started, "the schedule started run 1");
    rt.block_launches("ov", Some("hold on".into()))
        .await
        .unwrap();
    // Fires come while run 1 is active: each is refused and logged.
    let mut logged = None;
    for _ in 0..200 {
        tokio::time::advance(Duration::from_secs(1)).await;
        real_pause().await;
        let rec = rt.get("ov").await.unwrap().unwrap();
        if let Some(l) = rec
            .log
            .iter()
            .find(|l| l.message.contains("scheduled launch failed"))
        {
            logged = Some(l.message.clone());
            break;
        }
    }
    let logged = logged.expect("the refused fire is on the record's log");
    assert!(
        logged.contains("blocked") && logged.contains("hold on"),
        "{logged}"
    );
    assert_eq!(OVERLAP_RUNS.load(Ordering::SeqCst), 1, "nothing ran beside");
    assert!(rt.get("ov@2").await.unwrap().is_none());
    assert_eq!(rt.get("ov").await.unwrap().unwrap().state(), State::Running);
    // Unblocked, a later fire starts run 2 beside run 1.
    rt.unblock_launches("ov").await.unwrap();
    let mut beside = false;
    for _ in 0..200 {
        tokio::time::advance(Duration::from_secs(1)).await;
        real_pause().await;
        if OVERLAP_RUNS.load(Ordering::SeqCst) >= 2 {
            beside = true;
            break;
        }
    }
    assert!(beside, "the next fire after the unblock ran beside run 1");
    let rec = rt.get("ov@2").await.unwrap().expect("the overlapping run");
    assert_eq!(rec.run.as_ref().unwrap().overlap_of.as_deref(), Some("ov"));
    OVERLAP_RELEASE.store(true, Ordering::SeqCst);
    rt.wait("ov").await.unwrap();
}
