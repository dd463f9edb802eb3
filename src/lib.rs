//! # procession
//!
//! Typed tasks and process graphs, checked by the compiler and run by a small tokio
//! runtime.
//!
//! - [`#[task]`](macro@task) turns a function into a task: a typed struct whose
//!   constructor takes each input as a value or as the output of another task, with
//!   retries, backoff, timeout and dependency-failure policy parsed at compile time.
//! - [`#[process]`](macro@process) turns a function taking a [`Builder`] into a process:
//!   a serializable struct of its parameters that builds a graph of tasks. The graph
//!   follows its data: a task starts when the tasks whose outputs it takes have ended
//!   (`mode = "sequential"`, [`Builder::sequential`] and [`Builder::after`] order work
//!   without data).
//! - Tasks take options where they are added ([`TaskExt`]): an id of your choosing, whose
//!   result a typed [`TaskKey`] reads back from the report ([`RunReport::get`]); optional
//!   (its failure does not fail the run); and a `run_anyway` fan-in takes
//!   `Vec<Option<T>>`, receiving the inputs that succeeded.
//! - [`Runtime`] runs graphs: a task starts as soon as its own dependencies end, failures
//!   skip only what depends on them, panics become task failures, and every run ends with
//!   a [`RunReport`].
//! - Runs are [process records](ProcessRecord) in a [`Store`](store::Store) (embedded sled by default,
//!   [`Runtime::open`]) with a [state machine](State) of their own; a restarted binary
//!   resumes unfinished runs without running finished tasks again ([`Runtime`] says what a
//!   crash can lose).
//! - Tasks start [child processes](Ctx::run_child) and [parallel groups](Ctx::parallel_group)
//!   and read their typed results; the scheduler launches records on a [`Schedule`]
//!   (cron, interval, one-shot).
//! - Tasks share what cannot be stored (a database pool, an HTTP client) as
//!   [resources](Res): registered once with [`RuntimeBuilder::resource`], declared as a
//!   `Res<T>` parameter of a `#[task]` function, checked before a graph runs.
//! - Every run has its own [event stream](RunHandle::events) (state changes once per
//!   change, progress, log entries) and its record shows its tasks' progress rolled up;
//!   [`Ctx::check_cancelled`] lets a task stop on a cancel and be recorded cancelled.
//! - Run ends are [notified](notify) by signed webhooks and HTML e-mail, written to the
//!   store with the end and retried across restarts.
//!
//! The documentation of each macro lists every key it takes, with its syntax, its default
//! and an example.
//!
//! # Cargo features
//!
//! None is on by default.
//!
//! - `tz`: named time zones (IANA, daylight saving included) for cron schedules:
//!   `#[process(schedule = "0 2 * * *", tz = "Europe/Paris")]` and `Schedule::tz`. Off by
//!   default: the zone database (chrono-tz) adds about 8 s to a clean build.
//! - `webhook`: webhook notifications (reqwest with rustls; Standard Webhooks signatures
//!   and the hex `X-Signature-SHA256` header; `notify::verify` for receivers).
//! - `email`: e-mail notifications (lettre over tokio with rustls: STARTTLS, implicit TLS
//!   or plain, chosen explicitly).
//! - `logs`: per-task or per-run log files from `tracing` events ([`logs::TaskLogLayer`],
//!   a `tracing-subscriber` layer; paths from [`logs::TaskLogLayer::file_of`]).
//! - `otel`: OpenTelemetry export ([`otel::layer`], tracing-opentelemetry 0.34 with
//!   opentelemetry 0.33); each run keeps its W3C trace context on its record, so that a
//!   resumed run's spans join its trace. Flushing the tracer provider is yours, after
//!   `Runtime::shutdown`.
//! - `postgres`: the PostgreSQL store (`Runtime::connect("postgres://…")`,
//!   `store::PgStore`) through the blocking rust-postgres client; one worker per
//!   database for now. A restarted server or a killed session is ridden out: calls
//!   reconnect and run again for up to 30 s (`?retry_window=10s` in the URL), then fail
//!   with `StoreError::Unavailable`.
//!
//! # Tracing
//!
//! Every run is a `run` span (fields `process`, `run`, `worker`, `resumes`) and every
//! task attempt a `task` span inside it (`process`, `run`, `task`, `node`, `attempt`,
//! `worker`), with events for retries, timeouts, cancels and failures; `ctx.log`
//! entries are events of their attempt. With no subscriber installed, a span costs an
//! atomic load.
//!
//! # Example
//!
//! ```
//! use procession::prelude::*;
//!
//! #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
//! struct Order { amount: f64 }
//!
//! /// Loads the orders of one source.
//! #[task(retries = 2, backoff = "exponential(10ms, 1s)", timeout = "5s")]
//! async fn fetch_orders(ctx: &Ctx, source: String) -> Result<Vec<Order>, std::io::Error> {
//!     ctx.progress(50, format!("querying {source}"));
//!     Ok(vec![Order { amount: 10.0 }, Order { amount: 5.5 }])
//! }
//!
//! #[task]
//! fn merge_orders(parts: Vec<Vec<Order>>) -> Vec<Order> { parts.concat() }
//!
//! #[task]
//! fn total_revenue(orders: Vec<Order>) -> f64 { orders.iter().map(|o| o.amount).sum() }
//!
//! /// The day's revenue, read back from the run's report.
//! const REVENUE: TaskKey<f64> = TaskKey::new("revenue");
//!
//! #[process(description = "Nightly revenue report")]
//! fn daily_report(p: &mut Builder, sources: Vec<String>) {
//!     // The fetches take nothing from each other: they run side by side.
//!     let fetched: Vec<Out<Vec<Order>>> =
//!         sources.iter().map(|s| p.task(FetchOrders::new(s.clone()))).collect();
//!     let all = p.task(MergeOrders::new(fetched));
//!     p.task(TotalRevenue::new(all).id(REVENUE));
//! }
//!
//! # #[tokio::main] async fn main() -> procession::Result<()> {
//! let rt = Runtime::in_memory().register::<DailyReport>().start().await?;
//! let report = rt.run(DailyReport { sources: vec!["eu".into(), "us".into()] }).await?;
//! assert_eq!(report.get(&REVENUE), Some(31.0));
//! # Ok(()) }
//! ```

#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use procession_macros::{process, task};
pub use procession_runtime::{
    checks, notify, progress, store, AdhocOptions, Arg, Attempt, AttemptOutcome, Backoff, BoxError,
    Builder, CancelGraceExceeded, CancellationToken, Cancelled, CatchUp, Child, ChildError,
    ChildOutcome, ChildProcessFailed, ChildProgress, ChildResult, Ctx, Data, Definition,
    DependencyFailed, Error, ErrorMatcher, ErrorReport, Event, EventKind, EventStream, Graph,
    GraphError, GroupCancel, GroupError, GroupOptions, Hooks, InputError, IntoArg, IntoGraph,
    IntoPercent, IntoTaskId, IntoTaskSpec, InvalidTransition, Json, Launch, LaunchBlock,
    LaunchSpec, Level, ListFilter, LogEntry, MissingResource, Mode, NodeRef, NonRetryable,
    OnDepFailure, Out, OutputNotSerializable, Overlap, ParallelGroup, PlainInputs, Policy, Process,
    ProcessMeta, ProcessRecord, Progress, ProgressCallback, Read, RecordKind, RemoteTaskError, Res,
    Resource, ResourceKey, Result, ResultError, ResultKey, ResyncReport, RetryExhausted, RunHandle,
    RunInfo, RunMeta, RunReport, RunStatus, RunSummary, Runtime, RuntimeBuilder, Schedule,
    ScheduleError, Shutdown, SmolStr, State, Status, StrArg, Task, TaskExt, TaskFuture, TaskGraph,
    TaskInfo, TaskKey, TaskMeta, TaskPanicked, TaskReport, TaskSpec, TaskStats, TaskStatus,
    Timeout, MAX_LOG, SCHEMA_VERSION,
};

/// The names most programs need: `use procession::prelude::*;`.
pub mod prelude {
    pub use procession_macros::{process, task};
    pub use procession_runtime::{
        Builder, Ctx, Graph, GraphError, Launch, Level, Mode, NonRetryable, OnDepFailure, Out,
        Process, Res, RunReport, RunStatus, Runtime, Task, TaskExt, TaskGraph, TaskKey, TaskStatus,
    };
}

/// The admin HTTP API (cargo feature `admin`): mount [`admin::router`] in your axum app
/// or start [`admin::serve`]; see the module's documentation for routes and security.
#[cfg(feature = "admin")]
pub use procession_runtime::admin;

/// Per-task or per-run log files (cargo feature `logs`): install
/// [`logs::TaskLogLayer`] in your `tracing` subscriber.
#[cfg(feature = "logs")]
pub use procession_runtime::logs;

/// OpenTelemetry export of the runtime's spans (cargo feature `otel`): [`otel::layer`],
/// trace context kept on each run so that resumed runs join their trace.
#[cfg(feature = "otel")]
pub use procession_runtime::otel;

#[doc(hidden)]
pub mod __private {
    pub use procession_runtime::macro_support::*;
}
