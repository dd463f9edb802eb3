//! OpenTelemetry export of the runtime's spans (cargo feature `otel`).
//!
//! The runtime emits `tracing` spans: `run` for each run (`process`, `run`, `worker`,
//! `resumes`) and `task` for each task attempt inside it (`process`, `run`, `task`,
//! `node`, `attempt`, `worker`), with events for retries, timeouts, cancels and failures.
//! [`layer`] turns them into OpenTelemetry spans with your tracer (any exporter: OTLP,
//! stdout, in-memory).
//!
//! With this feature, each run keeps its W3C trace context (`traceparent`) on its record
//! ([`RunMeta::traceparent`](crate::RunMeta::traceparent)): the caller's current span when
//! it was launched (a child process: the attempt that started it), otherwise the run's
//! own span when it first started. A run resumed after a crash, or claimed by another
//! worker, starts its new `run` span as a child of that context: its spans are in the
//! same trace as the first ones.
//!
//! # Flushing
//!
//! The tracer provider is yours (you chose its exporter and its batching), so flushing
//! it is yours too: call [`Runtime::shutdown`](crate::Runtime::shutdown) first (the runs
//! suspend and their spans close), then `provider.shutdown()` (a batch processor exports
//! what it holds; call it outside async code or from `spawn_blocking` with a blocking
//! exporter). Spans not yet exported when the process exits are lost.
//!
//! The versions of [`opentelemetry`], [`opentelemetry_sdk`] and [`tracing_opentelemetry`]
//! must match exactly (a skew exports nothing, without an error): use the re-exports
//! here, or the same versions (0.33 and 0.34), and an `opentelemetry-otlp` 0.33.
//!
//! # Examples
//!
//! ```
//! use procession::otel::{layer, opentelemetry::trace::TracerProvider as _, opentelemetry_sdk};
//! use tracing_subscriber::layer::SubscriberExt as _;
//!
//! let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
//!     .with_simple_exporter(exporter.clone())
//!     .build();
//! let subscriber = tracing_subscriber::registry().with(layer(provider.tracer("procession")));
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::info_span!("work").in_scope(|| {});
//! });
//! provider.force_flush().unwrap();
//! assert_eq!(exporter.get_finished_spans().unwrap()[0].name, "work");
//! provider.shutdown().unwrap();
//! ```

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt as _};
use tracing_subscriber::registry::LookupSpan;

pub use opentelemetry;
pub use opentelemetry_sdk;
pub use tracing_opentelemetry;

/// The header name of the W3C trace context.
const TRACEPARENT: &str = "traceparent";

/// A `tracing` layer exporting spans (the runtime's and yours) through `tracer`:
/// `tracing_opentelemetry::layer().with_tracer(tracer)`.
///
/// # Examples
///
/// ```
/// use procession::otel::{layer, opentelemetry::trace::TracerProvider as _, opentelemetry_sdk};
/// use tracing_subscriber::layer::SubscriberExt as _;
///
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
/// let subscriber = tracing_subscriber::registry().with(layer(provider.tracer("my-app")));
/// let _guard = tracing::subscriber::set_default(subscriber);
/// ```
pub fn layer<S, T>(tracer: T) -> OpenTelemetryLayer<S, T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    T: opentelemetry::trace::Tracer + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::layer().with_tracer(tracer)
}

/// The W3C `traceparent` of `span`, if an OpenTelemetry layer records it.
pub(crate) fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes the (not yet entered) `span` a child of the stored `traceparent`; false when the
/// value is not a valid trace context (it is read from the store: untrusted) or the span
/// is not recorded by an OpenTelemetry layer.
pub(crate) fn join(span: &tracing::Span, traceparent: &str) -> bool {
    if span.is_disabled() {
        return false;
    }
    let carrier: HashMap<String, String> =
        HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}
