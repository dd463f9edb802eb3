//! Webhook notifications against a real HTTP receiver (axum on 127.0.0.1, port 0) that
//! records raw bodies and headers and answers scripted statuses: signatures (checked by
//! `verify` and by Python's `hmac`), retries, `Retry-After`, 410, timeouts, redirects,
//! bad input, the filters of the seed's `notify`, several workers on one store, and a
//! `kill -9` between a run's end and its POST.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use procession::notify::{
    send_all, verify, Channel, ConfigError, DeliveryError, DeliveryOptions, RetrySchedule, Secret,
    WebhookConfig,
};
use procession::prelude::*;
use procession::store::{Delivery, DeliveryQuery, DeliveryState, MemoryStore};
use procession::EventKind;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ------------------------------------------------------------------ the processes

#[derive(Debug, thiserror::Error)]
#[error("upstream said no")]
struct Upstream;

#[derive(Debug, thiserror::Error)]
#[error("beta failed")]
struct BetaFailed(#[source] Upstream);

#[task]
fn alpha() -> u32 {
    1
}

#[task]
fn beta(x: u32) -> Result<u32, BetaFailed> {
    if x > 1_000 {
        return Ok(x);
    }
    Err(BetaFailed(Upstream))
}

#[task]
fn gamma(x: u32) -> u32 {
    x + 1
}

/// alpha succeeds, beta errors, gamma (after beta) is skipped.
#[process]
fn mixed(p: &mut Builder) {
    let a = p.task(Alpha::new());
    let b = p.task(Beta::new(a));
    p.task(Gamma::new(b));
}

/// Succeeds.
#[process]
fn fine(p: &mut Builder) {
    let a = p.task(Alpha::new());
    p.task(Gamma::new(a));
}

// ------------------------------------------------------------------ the receiver

#[derive(Debug, Clone)]
enum Reply {
    Status(u16),
    RetryAfter(u16, &'static str),
    Redirect(&'static str),
    Hang,
}

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Reply>,
    received: Vec<Received>,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<Shared>>,
    arrived: Arc<tokio::sync::Notify>,
}

async fn hook(
    State(r): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut g = r.state.lock().unwrap();
        g.received.push(Received {
            path: uri.path().to_owned(),
            headers,
            body,
            at: Instant::now(),
        });
        g.script.pop_front()
    };
    r.arrived.notify_waiters();
    match reply {
        None | Some(Reply::Status(200)) => StatusCode::OK.into_response(),
        Some(Reply::Status(s)) => StatusCode::from_u16(s).unwrap().into_response(),
        Some(Reply::RetryAfter(s, after)) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", after)],
            "slow down",
        )
            .into_response(),
        Some(Reply::Redirect(to)) => {
            (StatusCode::TEMPORARY_REDIRECT, [("location", to)], "").into_response()
        }
        Some(Reply::Hang) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}

impl Receiver {
    async fn start(script: impl IntoIterator<Item = Reply>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            url: format!("http://{addr}/hook"),
            state: Arc::new(Mutex::new(Shared {
                script: script.into_iter().collect(),
                received: Vec::new(),
            })),
            arrived: Arc::new(tokio::sync::Notify::new()),
        };
        let app = Router::new().fallback(hook).with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// Waits until `n` requests arrived (10 s at most).
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            if self.count() >= n {
                return self.received();
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests arrived",
                self.count()
            );
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

// ------------------------------------------------------------------ helpers

fn quick(attempts: usize, delay: Duration) -> DeliveryOptions {
    let mut delays = vec![Duration::ZERO];
    delays.extend(std::iter::repeat_n(delay, attempts - 1));
    DeliveryOptions::default()
        .schedule(RetrySchedule::new(delays).unwrap())
        .jitter(0.0)
        .poll(Duration::from_millis(20))
}

fn hook_cfg(r: &Receiver) -> WebhookConfig {
    WebhookConfig::new(&r.url).unwrap()
}

/// Waits until delivery of `run` to `channel` is settled (delivered or failed).
async fn settled(rt: &Runtime, run: &str, channel: &str) -> Delivery {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = rt
            .deliveries(DeliveryQuery::new().run(run).channel(channel))
            .await
            .unwrap();
        if let Some(d) = page
            .deliveries
            .into_iter()
            .find(|d| d.state != DeliveryState::Pending)
        {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "delivery of {run} to {channel} never settled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks `r`'s signatures with Python's `hmac` module: the Standard Webhooks signature
/// with `secret`, and the hex header keyed by `legacy_key`.
fn python_checks(r: &Received, secret: &str, legacy_key: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "procession-py-{}-{}",
        std::process::id(),
        fastrand()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let body = dir.join("body");
    std::fs::write(&body, &r.body).unwrap();
    let script = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts, sigs, legacy_key, legacy_sig, path = sys.argv[1:]
body = open(path, "rb").read()
key = base64.b64decode(secret[len("whsec_"):])
expected = base64.b64encode(hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256).digest()).decode()
sw = any(hmac.compare_digest(s[3:], expected) for s in sigs.split() if s.startswith("v1,"))
legacy = hmac.compare_digest(hmac.new(legacy_key.encode(), body, hashlib.sha256).hexdigest(), legacy_sig)
print("sw=%s legacy=%s" % (sw, legacy))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            secret,
            r.header("webhook-id"),
            r.header("webhook-timestamp"),
            r.header("webhook-signature"),
            legacy_key,
            r.header("x-signature-sha256"),
            body.to_str().unwrap(),
        ])
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn fastrand() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

// ------------------------------------------------------------------ signatures and payload

// PROC-93 (hex HMAC header, by source: lowercase hex of the exact body bytes) and the
// Standard Webhooks headers, checked by `verify` and independently by Python's `hmac`;
// the body is the report's JSON, lossless, plus the run's ids and timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_post_checked_by_verify_and_by_python() {
    let r = Receiver::start([]).await;
    let rt = Runtime::in_memory()
        .register::<Mixed>()
        .notify(Channel::webhook("ops", hook_cfg(&r).secret(SECRET).unwrap()).unwrap())
        .delivery(quick(1, Duration::ZERO))
        .start()
        .await
        .unwrap();
    let report = rt.run(Launch::new(Mixed {}).id("mixed-1")).await.unwrap();
    let got = r.wait_for(1).await.remove(0);
    let d = settled(&rt, "mixed-1", "ops").await;
    assert_eq!(d.state, DeliveryState::Delivered);
    assert_eq!(d.attempts, 1);

    // Headers.
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.header("webhook-id"), d.id);
    assert!(d.id.starts_with("msg_") && d.id.ends_with("_ops"));
    let ts: u64 = got.header("webhook-timestamp").parse().unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts) < 60);
    let secret = Secret::parse(SECRET).unwrap();
    assert_eq!(
        verify(
            &got.headers,
            &got.body,
            std::slice::from_ref(&secret),
            SystemTime::now()
        )
        .unwrap(),
        d.id
    );
    let hex = got.header("x-signature-sha256");
    assert_eq!(hex.len(), 64);
    assert!(hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(python_checks(&got, SECRET, SECRET), "sw=True legacy=True");
    // A tampered body fails both checks.
    let mut tampered = got.clone();
    tampered.body = Bytes::from(got.body.iter().copied().chain(*b" ").collect::<Vec<u8>>());
    assert!(verify(
        &tampered.headers,
        &tampered.body,
        &[secret],
        SystemTime::now()
    )
    .is_err());
    assert_eq!(
        python_checks(&tampered, SECRET, SECRET),
        "sw=False legacy=False"
    );

    // Body: the report's own JSON, plus ids, type and timing.
    let body = got.json();
    let own: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    for key in ["process", "run_id", "status", "tasks"] {
        assert_eq!(
            body[key], own[key],
            "`{key}` differs from RunReport::to_json"
        );
    }
    assert_eq!(body["type"], "run.failed");
    assert_eq!(body["process_id"], "mixed-1");
    assert!(body["ended_at"].as_u64().unwrap() >= body["started_at"].as_u64().unwrap());
    let beta = &body["tasks"][1];
    assert_eq!(
        beta["error"]["chain"],
        serde_json::json!(["beta failed", "upstream said no"])
    );
    assert_eq!(
        beta["error"]["downstream_impact"],
        serde_json::json!(["gamma"])
    );
    rt.shutdown().await.unwrap();
}

// PROC-93: with the seed's plain secret alone, only the hex header is sent, keyed by it;
// with no secret at all, no signature header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_secret_and_no_secret() {
    let r = Receiver::start([]).await;
    let seed = Channel::webhook("seed", hook_cfg(&r).hmac_secret("s3cr3t").unwrap()).unwrap();
    let bare = Channel::webhook("bare", hook_cfg(&r)).unwrap();
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .start()
        .await
        .unwrap();
    let report = rt.run(Fine {}).await.unwrap();
    let results = send_all(&report, &[seed, bare]).await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    let got = r.wait_for(2).await;
    assert!(got[0].headers.get("webhook-signature").is_none());
    let python = python_checks(&got[0], SECRET, "s3cr3t");
    assert!(python.ends_with("legacy=True"), "{python}");
    assert!(got[1].headers.get("x-signature-sha256").is_none());
    assert!(got[1].headers.get("webhook-signature").is_none());
    assert!(got[1].headers.get("webhook-id").is_some());
}

// Key rotation: two secrets, two signatures; a receiver knowing either one accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_sends_one_signature_per_secret() {
    let r = Receiver::start([]).await;
    let new = Secret::parse("whsec_YSBzZWNvbmQgc2VjcmV0LCBmb3Igcm90YXRpb25zISE=").unwrap();
    let cfg = hook_cfg(&r)
        .secret(new.expose())
        .unwrap()
        .secret(SECRET)
        .unwrap();
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .start()
        .await
        .unwrap();
    let report = rt.run(Fine {}).await.unwrap();
    Channel::webhook("rot", cfg)
        .unwrap()
        .send(&report)
        .await
        .unwrap();
    let got = r.wait_for(1).await.remove(0);
    assert_eq!(got.header("webhook-signature").split(' ').count(), 2);
    for s in [new.clone(), Secret::parse(SECRET).unwrap()] {
        assert!(verify(&got.headers, &got.body, &[s], SystemTime::now()).is_ok());
    }
    assert!(python_checks(&got, SECRET, new.expose()).starts_with("sw=True"));
}

// ------------------------------------------------------------------ retries

// 500 twice, then 200: three attempts with the same webhook-id; each attempt is in the
// delivery's history and is an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_accepted_with_a_stable_id() {
    let r = Receiver::start([Reply::Status(500), Reply::Status(503)]).await;
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .notify(Channel::webhook("ops", hook_cfg(&r)).unwrap())
        .delivery(quick(4, Duration::from_millis(50)))
        .start()
        .await
        .unwrap();
    let mut events = rt.subscribe();
    rt.run(Launch::new(Fine {}).id("fine-1")).await.unwrap();
    let d = settled(&rt, "fine-1", "ops").await;
    assert_eq!(d.state, DeliveryState::Delivered);
    assert_eq!(d.attempts, 3);
    let got = r.received();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|g| g.header("webhook-id") == d.id));
    assert!(got
        .windows(2)
        .all(|w| w[1].at.duration_since(w[0].at) >= Duration::from_millis(45)));
    let statuses: Vec<Option<u16>> = d.history.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![Some(500), Some(503), None]);
    assert!(d.history[2].error.is_none());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap();
        if let EventKind::Delivery {
            attempts,
            settled,
            error,
            ..
        } = e.kind
        {
            assert_eq!(e.id, "fine-1");
            seen.push((attempts, settled, error.is_some()));
        }
    }
    assert_eq!(
        seen,
        vec![(1, false, true), (2, false, true), (3, true, false)]
    );
    rt.shutdown().await.unwrap();
}

// A 500 forever: the delivery fails after the schedule, stays listable, and a replay
// (once the receiver is back) delivers it with the same id. PROC-70's "failure visible".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_the_schedule_then_replays() {
    let r = Receiver::start(std::iter::repeat_n(Reply::Status(500), 3)).await;
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .notify(Channel::webhook("ops", hook_cfg(&r)).unwrap())
        .delivery(quick(3, Duration::from_millis(20)))
        .start()
        .await
        .unwrap();
    rt.run(Launch::new(Fine {}).id("fine-2")).await.unwrap();
    let d = settled(&rt, "fine-2", "ops").await;
    assert_eq!(d.state, DeliveryState::Failed);
    assert_eq!(d.attempts, 3);
    assert!(
        d.last_error.as_deref().unwrap().contains("500"),
        "{:?}",
        d.last_error
    );
    // The run's own log says so.
    let rec = rt.get("fine-2").await.unwrap().unwrap();
    let note = rec.log.last().unwrap();
    assert_eq!(note.level, procession::Level::Warning);
    assert!(
        note.message.starts_with(
            "notification to `ops` failed after 3 attempts: the receiver answered 500"
        ),
        "{}",
        note.message
    );
    let failed = rt
        .deliveries(DeliveryQuery::new().state(DeliveryState::Failed))
        .await
        .unwrap();
    assert_eq!(failed.deliveries.len(), 1);
    assert!(matches!(
        rt.replay_delivery("msg_nope").await,
        Err(procession::Error::DeliveryNotFound { .. })
    ));
    let replayed = rt.replay_delivery(&d.id).await.unwrap();
    assert_eq!(
        (replayed.state, replayed.attempts),
        (DeliveryState::Pending, 0)
    );
    let d2 = settled(&rt, "fine-2", "ops").await;
    assert_eq!(d2.state, DeliveryState::Delivered);
    assert_eq!(d2.history.len(), 4, "the history is kept across a replay");
    assert!(r.received().iter().all(|g| g.header("webhook-id") == d.id));
    rt.shutdown().await.unwrap();
}

// Pruning deletes delivered deliveries older than the cutoff and keeps failed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_what_failed() {
    let r = Receiver::start([Reply::Status(410)]).await;
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .notify(Channel::webhook("ops", hook_cfg(&r)).unwrap())
        .delivery(quick(1, Duration::ZERO))
        .start()
        .await
        .unwrap();
    for i in 0..3 {
        rt.run(Launch::new(Fine {}).id(format!("p-{i}")))
            .await
            .unwrap();
        settled(&rt, &format!("p-{i}"), "ops").await;
    }
    let all = rt
        .deliveries(DeliveryQuery::new())
        .await
        .unwrap()
        .deliveries;
    let states: Vec<DeliveryState> = all.iter().map(|d| d.state).collect();
    // 410, then twice "channel disabled".
    assert_eq!(states, vec![DeliveryState::Failed; 3]);
    assert_eq!(
        rt.prune_deliveries(SystemTime::UNIX_EPOCH).await.unwrap(),
        0
    );
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(
        rt.prune_deliveries(later).await.unwrap(),
        0,
        "the channel was disabled: nothing was delivered"
    );
    rt.enable_channel("ops").await.unwrap();
    rt.run(Launch::new(Fine {}).id("p-3")).await.unwrap();
    assert_eq!(
        settled(&rt, "p-3", "ops").await.state,
        DeliveryState::Delivered
    );
    let later = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(rt.prune_deliveries(later).await.unwrap(), 1);
    let left = rt
        .deliveries(DeliveryQuery::new())
        .await
        .unwrap()
        .deliveries;
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|d| d.state == DeliveryState::Failed));
    rt.shutdown().await.unwrap();
}

// 429 with Retry-After: 1 delays the next attempt by at least a second, though the
// schedule says 10 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_obeyed() {
    let r = Receiver::start([Reply::RetryAfter(429, "1")]).await;
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .notify(Channel::webhook("ops", hook_cfg(&r)).unwrap())
        .delivery(quick(3, Duration::from_millis(10)))
        .start()
        .await
        .unwrap();
    rt.run(Launch::new(Fine {}).id("fine-3")).await.unwrap();
    let d = settled(&rt, "fine-3", "ops").await;
    assert_eq!(d.state, DeliveryState::Delivered);
    let got = r.received();
    assert_eq!(got.len(), 2);
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert_eq!(d.history[0].status, Some(429));
    rt.shutdown().await.unwrap();
}

// 410 Gone disables the channel, persistently: later deliveries fail without a request,
// also after a restart; replays are refused until the channel is enabled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_channel_across_restarts() {
    let r = Receiver::start([Reply::Status(410)]).await;
    let dir = std::env::temp_dir().join(format!("procession-410-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = || {
        Runtime::open(&dir)
            .register::<Fine>()
            .notify(Channel::webhook("ops", hook_cfg(&r)).unwrap())
            .delivery(quick(5, Duration::from_millis(10)))
            .start()
    };
    let rt = start().await.unwrap();
    rt.run(Launch::new(Fine {}).id("f-1")).await.unwrap();
    let first = settled(&rt, "f-1", "ops").await;
    assert_eq!(
        (first.state, first.attempts),
        (DeliveryState::Failed, 1),
        "410 is not retried"
    );
    assert!(rt.channel_state("ops").await.unwrap().is_some());
    rt.shutdown().await.unwrap();

    let rt = start().await.unwrap();
    assert!(
        rt.channel_state("ops").await.unwrap().is_some(),
        "kept across a restart"
    );
    rt.run(Launch::new(Fine {}).id("f-2")).await.unwrap();
    let second = settled(&rt, "f-2", "ops").await;
    assert_eq!(second.state, DeliveryState::Failed);
    assert!(second.last_error.as_deref().unwrap().contains("disabled"));
    assert_eq!(r.count(), 1, "nothing was sent to a disabled channel");
    assert!(matches!(
        rt.replay_delivery(&second.id).await,
        Err(procession::Error::ChannelDisabled { .. })
    ));
    rt.enable_channel("ops").await.unwrap();
    rt.replay_delivery(&second.id).await.unwrap();
    assert_eq!(
        settled(&rt, "f-2", "ops").await.state,
        DeliveryState::Delivered
    );
    rt.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

// A receiver that never answers: the attempt ends at the timeout and is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_times_out() {
    let r = Receiver::start([Reply::Hang]).await;
    let cfg = hook_cfg(&r).timeout(Duration::from_millis(300));
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .notify(Channel::webhook("ops", cfg).unwrap())
        .delivery(quick(2, Duration::from_millis(10)))
        .start()
        .await
        .unwrap();
    rt.run(Launch::new(Fine {}).id("fine-4")).await.unwrap();
    let d = settled(&rt, "fine-4", "ops").await;
    assert_eq!(d.state, DeliveryState::Delivered);
    let first = d.history[0].error.as_deref().unwrap();
    assert!(first.contains("no answer within"), "{first}");
    assert!(d.history[0].took_ms < 2_000);
    rt.shutdown().await.unwrap();
}

// A 3xx is a failure: the Location is not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let r = Receiver::start([Reply::Redirect("/elsewhere")]).await;
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .start()
        .await
        .unwrap();
    let report = rt.run(Fine {}).await.unwrap();
    let err = Channel::webhook("ops", hook_cfg(&r))
        .unwrap()
        .send(&report)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        DeliveryError::Status {
            status: 307,
            retry_after: None
        }
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.count(), 1);
    assert!(r.received().iter().all(|g| g.path == "/hook"));
}

// ------------------------------------------------------------------ bad input

// An invalid URL, a short or malformed secret, a bad header: typed errors at
// configuration. An unreachable host, a host that accepts and never answers, a TLS
// mismatch: typed errors in bounded time, and through the outbox the delivery ends failed
// and visible. Also the figure "time to give up on a dead host".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_typed_errors_in_bounded_time() {
    assert!(matches!(
        WebhookConfig::new("not a url"),
        Err(ConfigError::Url { .. })
    ));
    assert!(matches!(
        WebhookConfig::new("gopher://x"),
        Err(ConfigError::Url { .. })
    ));
    let ok = WebhookConfig::new("http://127.0.0.1:9/").unwrap();
    assert!(matches!(
        ok.clone().secret("whsec_c2hvcnQ="),
        Err(ConfigError::SecretTooShort { bytes: 5, min: 24 })
    ));
    assert!(matches!(
        ok.clone().secret("s3cr3t"),
        Err(ConfigError::Secret { .. })
    ));
    assert!(matches!(
        ok.clone().header("bad header", "x"),
        Err(ConfigError::Header { .. })
    ));
    assert!(matches!(
        Channel::webhook("has space", ok.clone()),
        Err(ConfigError::ChannelName { .. })
    ));
    assert!(matches!(
        Runtime::in_memory()
            .notify(Channel::webhook("a", ok.clone()).unwrap())
            .notify(Channel::webhook("a", ok).unwrap())
            .start()
            .await,
        Err(procession::Error::Config(_))
    ));

    let rt = Runtime::in_memory()
        .register::<Fine>()
        .start()
        .await
        .unwrap();
    let report = rt.run(Fine {}).await.unwrap();
    // Unreachable: a port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let t = Instant::now();
    let err = Channel::webhook(
        "dead",
        WebhookConfig::new(&format!("http://{dead}/")).unwrap(),
    )
    .unwrap()
    .send(&report)
    .await
    .unwrap_err();
    assert!(matches!(err, DeliveryError::Connect { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Accepts the connection, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let t = Instant::now();
    let err = Channel::webhook(
        "silent",
        WebhookConfig::new(&format!("http://{silent_addr}/"))
            .unwrap()
            .timeout(Duration::from_millis(400)),
    )
    .unwrap()
    .send(&report)
    .await
    .unwrap_err();
    assert!(matches!(err, DeliveryError::Timeout { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    // TLS mismatch: https to a plain HTTP receiver.
    let r = Receiver::start([]).await;
    let https = r.url.replace("http://", "https://");
    let err = Channel::webhook("tls", WebhookConfig::new(&https).unwrap())
        .unwrap()
        .send(&report)
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Tls { .. }), "{err:?}");
    assert!(err.is_retryable());

    // Through the outbox: the dead host's delivery ends failed, visible, after the
    // schedule; the time to give up is the schedule plus the refused connections.
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .notify(
            Channel::webhook(
                "dead",
                WebhookConfig::new(&format!("http://{dead}/")).unwrap(),
            )
            .unwrap(),
        )
        .delivery(quick(3, Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    let t = Instant::now();
    rt.run(Launch::new(Fine {}).id("dead-1")).await.unwrap();
    let d = settled(&rt, "dead-1", "dead").await;
    let gave_up = t.elapsed();
    assert_eq!((d.state, d.attempts), (DeliveryState::Failed, 3));
    assert!(d
        .history
        .iter()
        .all(|a| a.error.as_deref().unwrap().starts_with("cannot connect")));
    eprintln!(
        "figure: time to give up on a dead host (refused connections, 3 attempts at 0 + 100 ms + 100 ms): {:.0} ms",
        gave_up.as_secs_f64() * 1e3
    );
    rt.shutdown().await.unwrap();
}

// ------------------------------------------------------------------ which runs, which entries

// PROC-88 (only_errors keeps ERRORED, drops SKIPPED), PROC-73/74 (tasks filter,
// case-insensitive, original keys), PROC-75 (an empty task list still sends a report),
// PROC-89 (content without the error chain), and the run filters: only failed runs,
// touching named tasks, process types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_choose_runs_and_entries() {
    let r = Receiver::start([]).await;
    let ch = |name: &str| {
        Channel::webhook(name, hook_cfg(&r).header("x-channel", name).unwrap()).unwrap()
    };
    let rt = Runtime::in_memory()
        .register::<Mixed>()
        .register::<Fine>()
        .notify(ch("errors").only_errors())
        .notify(ch("some").tasks(["ALPHA", "Gamma"]))
        .notify(ch("none").tasks(Vec::<String>::new()))
        .notify(ch("nochain").show_chain(false))
        .notify(ch("failed").only_failed_runs())
        .notify(ch("beta").touching(["BETA"]))
        .notify(ch("fine").processes(["fine"]))
        .delivery(quick(1, Duration::ZERO))
        .start()
        .await
        .unwrap();
    rt.run(Launch::new(Mixed {}).id("m")).await.unwrap();
    rt.run(Launch::new(Fine {}).id("f")).await.unwrap();
    // mixed: errors, some, none, nochain, failed, beta; fine: errors, some, none, nochain, fine.
    let got = r.wait_for(11).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        r.count(),
        11,
        "no delivery for a run a channel does not want"
    );
    let by: HashMap<(String, String), serde_json::Value> = got
        .iter()
        .map(|g| {
            let b = g.json();
            (
                (
                    b["process_id"].as_str().unwrap().to_owned(),
                    g.header("x-channel").to_owned(),
                ),
                b,
            )
        })
        .collect();
    let ids = |run: &str, ch: &str| -> Vec<String> {
        by[&(run.to_owned(), ch.to_owned())]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("m", "errors"), vec!["beta"]);
    assert_eq!(ids("f", "errors"), Vec::<String>::new());
    assert_eq!(ids("m", "some"), vec!["alpha", "gamma"]);
    assert_eq!(ids("m", "none"), Vec::<String>::new());
    assert_eq!(ids("m", "nochain"), vec!["alpha", "beta", "gamma"]);
    let beta = &by[&("m".to_owned(), "nochain".to_owned())]["tasks"][1]["error"];
    assert!(beta.get("chain").is_none() && beta.get("message").is_some());
    assert!(by.contains_key(&("m".to_owned(), "failed".to_owned())));
    assert!(!by.contains_key(&("f".to_owned(), "failed".to_owned())));
    assert!(by.contains_key(&("m".to_owned(), "beta".to_owned())));
    assert!(!by.contains_key(&("f".to_owned(), "beta".to_owned())));
    assert!(by.contains_key(&("f".to_owned(), "fine".to_owned())));
    assert!(!by.contains_key(&("m".to_owned(), "fine".to_owned())));
    rt.shutdown().await.unwrap();
}

// The seed's extra_payload and nest_under: extra keys at the top level, winning over the
// report's own on a clash; the report's fields under the nesting key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_payload_and_nesting() {
    let r = Receiver::start([]).await;
    let rt = Runtime::in_memory()
        .register::<Fine>()
        .start()
        .await
        .unwrap();
    let report = rt.run(Fine {}).await.unwrap();
    let nested = hook_cfg(&r).extra("chat_id", "-100").nest_under("data");
    let flat = hook_cfg(&r).extra("status", "overridden");
    for cfg in [nested, flat] {
        Channel::webhook("x", cfg)
            .unwrap()
            .send(&report)
            .await
            .unwrap();
    }
    let got = r.wait_for(2).await;
    let nested = got[0].json();
    assert_eq!(nested["chat_id"], "-100");
    assert_eq!(nested["data"]["status"], "succeeded");
    assert!(nested.get("tasks").is_none());
    let flat = got[1].json();
    assert_eq!(flat["status"], "overridden");
    assert_eq!(flat["tasks"].as_array().unwrap().len(), 2);
}

// PROC-68 and PROC-70: channels are tried in order, each once with the full report; a
// channel that fails does not stop the next one, nor the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_channel_never_stops_the_others() {
    let r = Receiver::start([]).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let broken = Channel::webhook(
        "broken",
        WebhookConfig::new(&format!("http://{dead}/")).unwrap(),
    )
    .unwrap();
    let spy = Channel::webhook("spy", hook_cfg(&r)).unwrap();
    let rt = Runtime::in_memory()
        .register::<Mixed>()
        .notify(broken.clone())
        .notify(spy.clone())
        .delivery(quick(1, Duration::ZERO))
        .start()
        .await
        .unwrap();
    let report = rt.run(Launch::new(Mixed {}).id("m")).await.unwrap();
    assert_eq!(
        report.status,
        RunStatus::Failed,
        "the run's own outcome, nothing else"
    );
    assert_eq!(
        settled(&rt, "m", "spy").await.state,
        DeliveryState::Delivered
    );
    assert_eq!(
        settled(&rt, "m", "broken").await.state,
        DeliveryState::Failed
    );
    // Direct sends, in order.
    let results = send_all(&report, &[broken, spy]).await;
    let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["broken", "spy"]);
    assert!(results[0].1.is_err() && results[1].1.is_ok());
    let got = r.wait_for(2).await;
    assert_eq!(
        got[1].json()["tasks"].as_array().unwrap().len(),
        3,
        "the full report"
    );
    rt.shutdown().await.unwrap();
}

// ------------------------------------------------------------------ several workers, throughput

// Two runtimes on one store (two workers): every delivery is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_store_send_each_delivery_once() {
    let r = Receiver::start([]).await;
    let store = Arc::new(MemoryStore::new());
    let start = || {
        Runtime::with_store(store.clone())
            .register::<Fine>()
            .notify(Channel::webhook("ops", hook_cfg(&r)).unwrap())
            .delivery(quick(3, Duration::from_millis(10)).concurrency(4))
            .start()
    };
    let (a, b) = (start().await.unwrap(), start().await.unwrap());
    for i in 0..40 {
        let rt = if i % 2 == 0 { &a } else { &b };
        rt.run(Launch::new(Fine {}).id(format!("run-{i}")))
            .await
            .unwrap();
    }
    let got = r.wait_for(40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for g in r.received() {
        *per_id.entry(g.header("webhook-id").to_owned()).or_default() += 1;
    }
    assert_eq!(got.len(), 40);
    assert_eq!(per_id.len(), 40);
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

// A measured figure, not a timed assertion: deliveries per second from one runtime's
// worker to a local receiver (the deliveries are written first by a runtime that does not
// send, then a second runtime on the same store sends them all), on memory and on sled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_per_second_to_a_local_receiver() {
    let memory: Arc<dyn procession::store::Store> = Arc::new(MemoryStore::new());
    measure_deliveries(memory, "memory store").await;
    let sled: Arc<dyn procession::store::Store> =
        Arc::new(procession::store::SledStore::temporary().unwrap());
    measure_deliveries(
        sled,
        "sled store: a claim and an outcome are flushed writes",
    )
    .await;
}

async fn measure_deliveries(store: Arc<dyn procession::store::Store>, label: &str) {
    const N: usize = 400;
    let r = Receiver::start([]).await;
    let writer = Runtime::with_store(store.clone())
        .register::<Fine>()
        .notify(Channel::webhook("ops", hook_cfg(&r).secret(SECRET).unwrap()).unwrap())
        .delivery(DeliveryOptions::default().deliver(false))
        .start()
        .await
        .unwrap();
    for i in 0..N {
        writer
            .run(Launch::new(Fine {}).id(format!("run-{i}")))
            .await
            .unwrap();
    }
    let t = Instant::now();
    let sender = Runtime::with_store(store.clone())
        .register::<Fine>()
        .notify(Channel::webhook("ops", hook_cfg(&r).secret(SECRET).unwrap()).unwrap())
        .delivery(quick(3, Duration::from_millis(10)).concurrency(16))
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let done = sender
            .deliveries(DeliveryQuery::new().state(DeliveryState::Delivered))
            .await
            .unwrap()
            .deliveries
            .len();
        if done == N {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of {N} delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    assert_eq!(r.count(), N);
    eprintln!(
        "figure: {N} signed deliveries to a local receiver in {:.0} ms: {:.0} deliveries/s ({label}, concurrency 16)",
        took.as_secs_f64() * 1e3,
        N as f64 / took.as_secs_f64()
    );
    writer.shutdown().await.unwrap();
    sender.shutdown().await.unwrap();
}

// ------------------------------------------------------------------ kill -9

/// The worker of the kill tests: runs one process (unless it has already ended) with a
/// webhook channel, then waits for its delivery to settle. `PROCESSION_NOTIFY_SEND=0`
/// writes deliveries without sending them.
#[test]
fn notify_crash_worker_entry() {
    let Ok(dir) = std::env::var("PROCESSION_NOTIFY_DIR") else {
        return;
    };
    let url = std::env::var("PROCESSION_NOTIFY_URL").unwrap();
    let send = std::env::var("PROCESSION_NOTIFY_SEND").as_deref() != Ok("0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let rt = Runtime::open(Path::new(&dir).join("store"))
            .register::<Fine>()
            .notify(
                Channel::webhook(
                    "ops",
                    WebhookConfig::new(&url)
                        .unwrap()
                        .timeout(Duration::from_secs(30)),
                )
                .unwrap(),
            )
            .delivery(
                quick(5, Duration::from_millis(50))
                    .lease(Duration::from_millis(1500))
                    .deliver(send),
            )
            .start()
            .await
            .expect("store opens");
        if rt.get("crash-run").await.unwrap().is_none() {
            rt.run(Launch::new(Fine {}).id("crash-run")).await.unwrap();
        }
        println!("ended");
        loop {
            let page = rt
                .deliveries(DeliveryQuery::new().run("crash-run"))
                .await
                .unwrap();
            if page
                .deliveries
                .iter()
                .any(|d| d.state == DeliveryState::Delivered)
            {
                println!("delivered");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rt.shutdown().await.unwrap();
    });
}

fn spawn_worker(dir: &Path, url: &str, send: bool) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "notify_crash_worker_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROCESSION_NOTIFY_DIR", dir)
        .env("PROCESSION_NOTIFY_URL", url)
        .env("PROCESSION_NOTIFY_SEND", if send { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker starts")
}

fn wait_line(child: &mut std::process::Child, want: &str) {
    use std::io::BufRead;
    let out = child.stdout.as_mut().unwrap();
    let mut reader = std::io::BufReader::new(out);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        if line.contains(want) {
            return;
        }
        line.clear();
    }
    panic!("the worker ended without printing `{want}`");
}

// kill -9 after the run's end is durable and before any POST; the restarted process
// delivers the notification, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_the_end_and_the_post_delivers_once() {
    let r = Receiver::start([]).await;
    let dir = std::env::temp_dir().join(format!("procession-notify-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = r.url.clone();
    let d2 = dir.clone();
    tokio::task::spawn_blocking(move || {
        let mut first = spawn_worker(&d2, &url, false);
        wait_line(&mut first, "ended");
        first.kill().unwrap(); // SIGKILL
        first.wait().unwrap();
    })
    .await
    .unwrap();
    assert_eq!(r.count(), 0, "nothing was posted before the kill");
    let url = r.url.clone();
    let d2 = dir.clone();
    tokio::task::spawn_blocking(move || {
        let mut second = spawn_worker(&d2, &url, true);
        wait_line(&mut second, "delivered");
        assert!(second.wait().unwrap().success());
    })
    .await
    .unwrap();
    let ids: Vec<String> = r
        .received()
        .iter()
        .map(|g| g.header("webhook-id").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "delivered exactly once: {ids:?}");
    assert_eq!(r.received()[0].json()["process_id"], "crash-run");
    let _ = std::fs::remove_dir_all(&dir);
}

// kill -9 while the POST is under way (the receiver holds it): after the restart the
// claim expires and the same webhook-id is sent again, and accepted once: the receiver
// sees one event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_post_resends_the_same_id() {
    let r = Receiver::start([Reply::Hang]).await;
    let dir = std::env::temp_dir().join(format!("procession-notify-kill2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = r.url.clone();
    let d2 = dir.clone();
    let mut first = tokio::task::spawn_blocking(move || spawn_worker(&d2, &url, true))
        .await
        .unwrap();
    r.wait_for(1).await;
    first.kill().unwrap(); // SIGKILL, with the POST held by the receiver
    let _ = first.wait();
    let url = r.url.clone();
    let d2 = dir.clone();
    tokio::task::spawn_blocking(move || {
        let mut second = spawn_worker(&d2, &url, true);
        wait_line(&mut second, "delivered");
        assert!(second.wait().unwrap().success());
    })
    .await
    .unwrap();
    let ids: Vec<String> = r
        .received()
        .iter()
        .map(|g| g.header("webhook-id").to_owned())
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "the held attempt and the one after the restart"
    );
    assert_eq!(ids[0], ids[1], "one event id across the restart");
    let _ = std::fs::remove_dir_all(&dir);
}
