//! The admin API's notification routes (issue 15): deliveries listed with keyset pages,
//! shown with their attempts, replayed after the receiver recovers, and channels that a
//! receiver disabled, seen and enabled again. A real webhook channel posts to a receiver
//! on 127.0.0.1 (port 0) whose answer the test switches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use procession::admin::{self, AdminConfig};
use procession::notify::{Channel, DeliveryOptions, RetrySchedule, WebhookConfig};
use procession::prelude::*;
use procession::store::DeliveryState;
use serde_json::Value;
use tower::ServiceExt;

#[task]
fn one() -> u32 {
    1
}

#[process]
fn fine(p: &mut Builder) {
    p.task(One::new());
}

// ------------------------------------------------------------------ the receiver

/// Answers `status` to every POST and counts them by `webhook-id`.
#[derive(Clone)]
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    *r.seen.lock().unwrap().entry(id).or_default() += 1;
    StatusCode::from_u16(r.status.load(Ordering::SeqCst)).unwrap()
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            url: format!("http://{addr}/hook"),
            status: Arc::new(AtomicU16::new(status)),
            seen: Arc::default(),
        };
        let app = Router::new().fallback(hook).with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn posts(&self, id: &str) -> usize {
        self.seen.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

// ------------------------------------------------------------------ helpers

/// Two attempts 20 ms apart, no jitter, a quick poll.
fn quick() -> DeliveryOptions {
    DeliveryOptions::default()
        .schedule(RetrySchedule::new([Duration::ZERO, Duration::from_millis(20)]).unwrap())
        .jitter(0.0)
        .poll(Duration::from_millis(20))
}

async fn runtime(r: &Receiver, options: DeliveryOptions) -> Runtime {
    Runtime::in_memory()
        .register::<Fine>()
        .notify(Channel::webhook("ops", WebhookConfig::new(&r.url).unwrap()).unwrap())
        .delivery(options)
        .start()
        .await
        .unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str) -> Request<Body> {
    Request::post(uri).body(Body::empty()).unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Polls `GET /api/deliveries/{id}` until its state is `want` (15 s at most).
async fn wait_state(app: &Router, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = call(app, get(&format!("/api/deliveries/{id}"))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v["delivery"]["state"] == want {
            return v["delivery"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "delivery {id} never became {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The one delivery of `run`, once the list shows it in `state`.
async fn listed(app: &Router, run: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = call(
            app,
            get(&format!("/api/deliveries?run={run}&state={state}")),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if let Some(d) = v["deliveries"].as_array().and_then(|l| l.first()) {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {state} delivery of {run}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------------ the tests

// A delivery fails against a receiver that answers 500, is listed as failed with its
// attempts, and once the receiver recovers a replay through the API delivers it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_replayed_through_the_api_and_delivered_once() {
    let r = Receiver::start(500).await;
    let rt = runtime(&r, quick()).await;
    let app = admin::router(rt.clone(), AdminConfig::default());
    rt.run(Launch::new(Fine {}).id("fine-1")).await.unwrap();

    let d = listed(&app, "fine-1", "failed").await;
    let id = d["id"].as_str().unwrap().to_owned();
    assert_eq!(d["channel"], "ops");
    assert_eq!(d["attempts"], 2);
    assert!(d["last_error"].as_str().unwrap().contains("500"), "{d}");
    assert!(d.get("payload").is_none(), "lists leave the payload out");
    assert_eq!(r.posts(&id), 2);

    // Shown with its attempts and its payload (the webhook's JSON body).
    let (s, v) = call(&app, get(&format!("/api/deliveries/{id}"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let shown = &v["delivery"];
    assert_eq!(shown["history"].as_array().unwrap().len(), 2);
    assert_eq!(shown["history"][0]["status"], 500);
    assert_eq!(shown["payload"]["process_id"], "fine-1", "{shown}");

    // The receiver recovers; the replay is accepted and delivers it, once.
    r.answer(200);
    let (s, v) = call(&app, post(&format!("/api/deliveries/{id}/replay"))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["delivery"]["state"], "pending");
    let done = wait_state(&app, &id, "delivered").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["history"].as_array().unwrap().len(), 3, "history kept");
    assert!(done["delivered_at"].is_u64());
    // Nothing more is sent: give the worker time to misbehave, then count.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.posts(&id), 3, "two failures and one delivery");
    let (_, v) = call(&app, get("/api/deliveries?state=failed")).await;
    assert_eq!(v["deliveries"].as_array().unwrap().len(), 0);
    rt.shutdown().await.unwrap();
}

// A pending delivery is not replayed (typed 409); unknown ids, bad filters and bad
// cursors get 4xx; pages are keyset pages without repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_keyset_pages() {
    let r = Receiver::start(200).await;
    // This runtime writes deliveries but never sends them: they stay pending.
    let rt = runtime(&r, quick().deliver(false)).await;
    let app = admin::router(rt.clone(), AdminConfig::default());
    for i in 0..5 {
        rt.run(Launch::new(Fine {}).id(format!("fine-{i}")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut uri = "/api/deliveries?state=pending&channel=ops&limit=2".to_owned();
    loop {
        let (s, v) = call(&app, get(&uri)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let page = v["deliveries"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|d| d["run"].as_str().unwrap().to_owned()));
        match v["next"].as_str() {
            Some(next) => {
                uri = format!(
                    "/api/deliveries?state=pending&channel=ops&limit=2&after={}",
                    next.replace(':', "%3A")
                );
            }
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["fine-0", "fine-1", "fine-2", "fine-3", "fine-4"]);

    let d = listed(&app, "fine-0", "pending").await;
    let id = d["id"].as_str().unwrap();
    let (s, v) = call(&app, post(&format!("/api/deliveries/{id}/replay"))).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "delivery-pending"),
        "{v}"
    );
    assert_eq!(r.posts(id), 0);

    for (uri, status, want) in [
        (
            "/api/deliveries/msg_nope",
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            "/api/deliveries?state=lost",
            StatusCode::BAD_REQUEST,
            "invalid-filter",
        ),
        (
            "/api/deliveries?after=pending:x",
            StatusCode::BAD_REQUEST,
            "invalid-filter",
        ),
        (
            "/api/deliveries?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid-filter",
        ),
        (
            "/api/deliveries?colour=red",
            StatusCode::BAD_REQUEST,
            "invalid-filter",
        ),
        ("/api/channels/nope", StatusCode::NOT_FOUND, "not-found"),
    ] {
        let (s, v) = call(&app, get(uri)).await;
        assert_eq!((s, code(&v)), (status, want), "{uri}: {v}");
    }
    for uri in [
        "/api/deliveries/msg_nope/replay",
        "/api/channels/nope/enable",
    ] {
        let (s, v) = call(&app, post(uri)).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::NOT_FOUND, "not-found"),
            "{uri}: {v}"
        );
    }
    rt.shutdown().await.unwrap();
}

// A receiver that answers 410 disables the channel: the API shows why, refuses to
// replay into it, enables it, and the replay then delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_channel_is_shown_enabled_and_replayed_into() {
    let r = Receiver::start(410).await;
    let rt = runtime(&r, quick()).await;
    let app = admin::router(rt.clone(), AdminConfig::default());
    let (s, v) = call(&app, get("/api/channels")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["channels"][0]["name"], "ops");
    assert_eq!(v["channels"][0]["kind"], "webhook");
    assert_eq!(v["channels"][0]["enabled"], true);

    rt.run(Launch::new(Fine {}).id("fine-gone")).await.unwrap();
    let d = listed(&app, "fine-gone", "failed").await;
    let id = d["id"].as_str().unwrap().to_owned();
    let (s, v) = call(&app, get("/api/channels/ops")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ch = &v["channel"];
    assert_eq!(
        (ch["enabled"].clone(), ch["configured"].clone()),
        (false.into(), true.into())
    );
    assert!(ch["reason"].as_str().unwrap().contains("410"), "{ch}");

    let (s, v) = call(&app, post(&format!("/api/deliveries/{id}/replay"))).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "channel-disabled"),
        "{v}"
    );

    r.answer(200);
    let (s, v) = call(&app, post("/api/channels/ops/enable")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["channel"]["enabled"], true);
    let (s, v) = call(&app, post(&format!("/api/deliveries/{id}/replay"))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    wait_state(&app, &id, "delivered").await;
    assert_eq!(r.posts(&id), 2, "the 410 and the replay");
    rt.shutdown().await.unwrap();
}

// Replay and enable are mutations: a token, the CSRF rule and read-only apply to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_mutations_are_guarded() {
    let r = Receiver::start(500).await;
    let rt = runtime(&r, quick()).await;
    rt.run(Launch::new(Fine {}).id("fine-g")).await.unwrap();
    let failed = loop {
        let page = rt
            .deliveries(procession::store::DeliveryQuery::new().state(DeliveryState::Failed))
            .await
            .unwrap();
        if let Some(d) = page.deliveries.into_iter().next() {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let replay = format!("/api/deliveries/{}/replay", failed.id);

    let ro = admin::router(rt.clone(), AdminConfig::default().read_only(true));
    let (s, v) = call(&ro, post(&replay)).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "read-only"), "{v}");
    let (s, v) = call(&ro, post("/api/channels/ops/enable")).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "read-only"), "{v}");
    let (s, _) = call(&ro, get("/api/deliveries")).await;
    assert_eq!(s, StatusCode::OK, "reading stays allowed");

    let locked = admin::router(rt.clone(), AdminConfig::default().token("t0k"));
    let (s, v) = call(&locked, post(&replay)).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "{v}"
    );
    let (s, v) = call(&locked, get("/api/deliveries")).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "{v}"
    );

    let open = admin::router(rt.clone(), AdminConfig::default());
    let from_browser = Request::post(&replay)
        .header("origin", "http://127.0.0.1:1")
        .body(Body::empty())
        .unwrap();
    let (s, v) = call(&open, from_browser).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "csrf"), "{v}");
    // None of these changed it.
    let still = rt.delivery(&failed.id).await.unwrap().unwrap();
    assert_eq!(still.state, DeliveryState::Failed);
    rt.shutdown().await.unwrap();
}
