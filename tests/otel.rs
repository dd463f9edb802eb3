//! OpenTelemetry export (cargo feature `otel`): the span tree of a run (run span, one
//! span per task attempt with its fields, retry events) through the SDK's in-memory
//! exporter; OTLP/HTTP export to a receiver on 127.0.0.1; a resumed run whose new spans
//! join the trace stored on its record.
//!
//! The subscriber is installed per test with `set_default` on a current-thread runtime
//! (the driver and the workers of a run are tasks of that thread).

#![allow(clippy::unused_async)]

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Value;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use procession::prelude::*;
use procession::{Launch, State};
use tracing_subscriber::layer::SubscriberExt as _;

fn in_memory() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (exporter, provider)
}

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn attr_str(span: &SpanData, key: &str) -> String {
    match attr(span, key) {
        Some(v) => v.as_str().into_owned(),
        None => panic!("span `{}` has no `{key}`: {:?}", span.name, span.attributes),
    }
}

fn attr_i64(span: &SpanData, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::I64(n)) => n,
        // tracing-opentelemetry records unsigned integers as strings
        Some(Value::String(s)) if s.as_str().parse::<i64>().is_ok() => s.as_str().parse().unwrap(),
        other => panic!("span `{}`: `{key}` is {other:?}", span.name),
    }
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 1, backoff = "fixed(1ms)")]
async fn otel_flaky(ctx: &Ctx) -> Result<u32, io::Error> {
    ctx.log(procession::Level::Info, "calling");
    if FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(io::Error::other("first call fails"));
    }
    Ok(1)
}

#[task]
async fn otel_after(x: u32) -> u32 {
    x + 1
}

#[process]
fn traced(p: &mut Builder) {
    let a = p.task(OtelFlaky::new());
    p.task(OtelAfter::new(a));
}

// The run is one span; each task attempt is a span inside it with process, run, task,
// node, attempt and worker; the retry is an event of the failed attempt; the attempt's
// `ctx.log` entry is an event of its span.
#[tokio::test(flavor = "current_thread")]
async fn span_tree_of_a_run_with_a_retry() {
    let (exporter, provider) = in_memory();
    let subscriber =
        tracing_subscriber::registry().with(procession::otel::layer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let report = common::rt().await.run(Traced {}).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let runs: Vec<&SpanData> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(runs.len(), 1, "{spans:#?}");
    let run = runs[0];
    assert_eq!(attr_str(run, "process"), "traced");
    assert_eq!(attr_str(run, "run"), report.run_id);
    let worker = attr_str(run, "worker");
    assert!(worker.starts_with("worker-"), "{worker}");

    let mut attempts: Vec<&SpanData> = spans.iter().filter(|s| s.name == "task").collect();
    attempts.sort_by_key(|s| (attr_str(s, "node"), attr_i64(s, "attempt")));
    let seen: Vec<(String, i64)> = attempts
        .iter()
        .map(|s| (attr_str(s, "node"), attr_i64(s, "attempt")))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("otel_after".to_owned(), 1),
            ("otel_flaky".to_owned(), 1),
            ("otel_flaky".to_owned(), 2)
        ]
    );
    for s in &attempts {
        assert_eq!(s.parent_span_id, run.span_context.span_id());
        assert_eq!(s.span_context.trace_id(), run.span_context.trace_id());
        assert_eq!(attr_str(s, "process"), "traced");
        assert_eq!(attr_str(s, "run"), report.run_id);
        assert_eq!(attr_str(s, "worker"), worker);
        assert_eq!(attr_str(s, "task"), attr_str(s, "node"));
    }
    let events = |s: &SpanData| -> Vec<String> {
        s.events.events.iter().map(|e| e.name.to_string()).collect()
    };
    let first = events(attempts[1]);
    assert!(first.contains(&"retrying".to_owned()), "{first:?}");
    assert!(first.contains(&"calling".to_owned()), "{first:?}");
    assert!(!events(attempts[2]).contains(&"retrying".to_owned()));
    // The run's own events are on the run span.
    let run_events = events(run);
    assert!(
        run_events.contains(&"run started".to_owned()),
        "{run_events:?}"
    );
    assert!(
        run_events.contains(&"run ended".to_owned()),
        "{run_events:?}"
    );
    provider.shutdown().unwrap();
}

/// What the OTLP receiver got: path, content type, body.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

#[task]
async fn exported() -> u32 {
    3
}

#[process]
fn otlp_proc(p: &mut Builder) {
    p.task(Exported::new());
}

// The OTLP/HTTP (protobuf) exporter posts the run's spans to a collector: here an axum
// receiver on 127.0.0.1. The provider is flushed by its owner after the runtime's shutdown.
#[test]
fn otlp_http_export_reaches_a_receiver() {
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let received: Received = Arc::default();
    let addr = {
        let received = received.clone();
        tokio_rt.block_on(async move {
            let app = axum::Router::new().fallback(
                move |uri: axum::http::Uri,
                      headers: axum::http::HeaderMap,
                      body: axum::body::Bytes| {
                    let received = received.clone();
                    async move {
                        let ct = headers
                            .get(axum::http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        received
                            .lock()
                            .unwrap()
                            .push((uri.path().to_owned(), ct, body.to_vec()));
                        axum::http::StatusCode::OK
                    }
                },
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        })
    };
    // Built outside the tokio runtime: the blocking client runs its own.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("http://{addr}/v1/traces"))
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    let subscriber =
        tracing_subscriber::registry().with(procession::otel::layer(provider.tracer("otlp")));
    let run_id = "otlp-run-7f3a";
    // The subscriber is the current thread's: the run's tasks run on this thread.
    let run_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        run_rt.block_on(async {
            let rt = common::rt().await;
            let report = rt.run(Launch::new(OtlpProc {}).id(run_id)).await.unwrap();
            assert!(report.is_success());
            rt.shutdown().await.unwrap();
        });
    });
    drop(run_rt);
    provider.shutdown().unwrap();
    let got = received.lock().unwrap();
    assert!(!got.is_empty(), "nothing exported");
    let (path, ct, body) = &got[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(ct, "application/x-protobuf");
    let all: Vec<u8> = got.iter().flat_map(|(_, _, b)| b.clone()).collect();
    assert!(
        all.windows(run_id.len()).any(|w| w == run_id.as_bytes()),
        "the run id is not in the exported spans"
    );
    assert!(!body.is_empty());
    drop(got);
    tokio_rt.shutdown_timeout(Duration::from_secs(5));
}

static HOLD: AtomicBool = AtomicBool::new(true);
static HELD: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[task]
async fn otel_held() -> u32 {
    HELD.notify_one();
    while HOLD.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    5
}

#[process]
fn held_proc(p: &mut Builder) {
    p.task(OtelHeld::new());
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("procession-otel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

// The run's trace context is stored on its record; a runtime stopped while the run was
// running leaves it to be resumed, and the resumed run's spans are in the same trace,
// under the first run span.
#[tokio::test(flavor = "current_thread")]
async fn resumed_run_joins_its_stored_trace() {
    let (exporter, provider) = in_memory();
    let subscriber =
        tracing_subscriber::registry().with(procession::otel::layer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = temp_dir("resume");
    let open = || {
        Runtime::open(&dir)
            .register::<HeldProc>()
            .cancel_grace(Duration::from_millis(30))
    };
    let id = "traced-resume";
    let rt = open().start().await.unwrap();
    rt.launch(Launch::new(HeldProc {}).id(id)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), HELD.notified())
        .await
        .expect("the task started");
    let rec = rt.get(id).await.unwrap().unwrap();
    let tp = rec
        .run
        .as_ref()
        .and_then(|m| m.traceparent.clone())
        .expect("the running run has a trace context");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    let (trace_id, first_span) = (parts[1].to_owned(), parts[2].to_owned());
    rt.shutdown().await.unwrap();
    drop(rt);

    HOLD.store(false, Ordering::SeqCst);
    let rt = open().start().await.unwrap();
    let done = common::wait_until_async_fut(|| async {
        rt.get(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|r| r.state() == State::Done)
    })
    .await;
    assert!(done, "the resumed run ended done");
    let rec = rt.get(id).await.unwrap().unwrap();
    assert_eq!(
        rec.run.as_ref().and_then(|m| m.traceparent.as_deref()),
        Some(tp.as_str()),
        "the stored context is the first run's"
    );
    rt.shutdown().await.unwrap();
    drop(rt);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let mut runs: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "run" && attr_str(s, "run") == id)
        .collect();
    runs.sort_by_key(|s| attr_i64(s, "resumes"));
    assert_eq!(runs.len(), 2, "{spans:#?}");
    assert_eq!(runs[0].span_context.span_id().to_string(), first_span);
    assert_eq!(attr_i64(runs[1], "resumes"), 1);
    assert_eq!(runs[1].parent_span_id.to_string(), first_span);
    for s in spans
        .iter()
        .filter(|s| attr(s, "run").is_some_and(|v| v.as_str() == id))
    {
        assert_eq!(
            s.span_context.trace_id().to_string(),
            trace_id,
            "{}",
            s.name
        );
    }
    let attempts = spans.iter().filter(|s| s.name == "task").count();
    assert_eq!(attempts, 2, "one attempt before the stop, one after");
    let _ = std::fs::remove_dir_all(&dir);
    provider.shutdown().unwrap();
}
