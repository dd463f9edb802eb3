//! # procession
//!
//! Typed tasks and process graphs, checked by the compiler and run by a small tokio
//! runtime.
//!
//! - [`#[task]`](macro@task) turns a function into a task: a typed struct whose
//!   constructor takes each input as a value or as the output of another task, with
//!   retries, backoff, timeout and dependency-failure policy parsed at compile time.
//! - [`#[process]`](macro@process) turns a function taking a [`Builder`] into a process:
//!   a serializable struct of its parameters that builds a graph of tasks.
//! - [`Runtime`] runs graphs: a task starts as soon as its own dependencies end, failures
//!   skip only what depends on them, panics become task failures, and every run ends with
//!   a [`RunReport`].
//! - Runs are [process records](ProcessRecord) in a [`Store`](store::Store) (embedded sled by default,
//!   [`Runtime::open`]) with optio's [state machine](State); a restarted binary resumes
//!   unfinished runs without running finished tasks again (see the `runtime` module's
//!   notes on what a crash can lose).
//! - Tasks start [child processes](Ctx::run_child) and [parallel groups](Ctx::parallel_group)
//!   and read their typed results; the scheduler launches records on a [`Schedule`]
//!   (cron, interval, one-shot).
//! - Tasks share what cannot be stored (a database pool, an HTTP client) as
//!   [resources](Res): registered once with [`RuntimeBuilder::resource`], declared as a
//!   `Res<T>` parameter of a `#[task]` function, checked before a graph runs.
//! - Every run has its own [event stream](RunHandle::events) (state changes once per
//!   change, progress, log entries) and its record shows its tasks' progress rolled up;
//!   [`Ctx::check_cancelled`] lets a task stop on a cancel and be recorded cancelled.
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
//!     ctx.progress(50.0, format!("querying {source}"));
//!     Ok(vec![Order { amount: 10.0 }, Order { amount: 5.5 }])
//! }
//!
//! #[task]
//! fn merge_orders(parts: Vec<Vec<Order>>) -> Vec<Order> { parts.concat() }
//!
//! #[task]
//! fn total_revenue(orders: Vec<Order>) -> f64 { orders.iter().map(|o| o.amount).sum() }
//!
//! #[process(description = "Nightly revenue report")]
//! fn daily_report(p: &mut Builder, sources: Vec<String>) {
//!     let fetched = p.concurrent(|p| {
//!         sources.iter().map(|s| p.task(FetchOrders::new(s.clone()))).collect::<Vec<_>>()
//!     });
//!     let all = p.task(MergeOrders::new(fetched));
//!     p.task(TotalRevenue::new(all));
//! }
//!
//! # #[tokio::main] async fn main() -> procession::Result<()> {
//! let rt = Runtime::in_memory().register::<DailyReport>().start().await?;
//! let report = rt.run(DailyReport { sources: vec!["eu".into(), "us".into()] }).await?;
//! assert_eq!(report.result::<f64>("total_revenue").unwrap(), 31.0);
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
    progress, store, AdhocOptions, Arg, Attempt, AttemptOutcome, Backoff, BoxError, Builder,
    CancelGraceExceeded, CancellationToken, Cancelled, CatchUp, Child, ChildError, ChildOutcome,
    ChildProcessFailed, ChildProgress, ChildResult, Ctx, Data, Definition, DependencyFailed, Error,
    ErrorMatcher, ErrorReport, Event, EventKind, EventStream, Graph, GraphError, GroupCancel,
    GroupError, GroupOptions, Hooks, InputError, IntoArg, IntoGraph, InvalidTransition, Json,
    Launch, LaunchBlock, LaunchSpec, Level, ListFilter, LogEntry, MissingResource, Mode, NodeRef,
    NonRetryable, OnDepFailure, Out, OutputNotSerializable, ParallelGroup, Policy, Process,
    ProcessMeta, ProcessRecord, Progress, ProgressCallback, RecordKind, Res, Resource, ResourceKey,
    Result, ResultError, ResyncReport, RetryExhausted, RunHandle, RunInfo, RunMeta, RunReport,
    RunStatus, Runtime, RuntimeBuilder, Schedule, ScheduleError, Shutdown, State, Status, Task,
    TaskFuture, TaskGraph, TaskInfo, TaskMeta, TaskPanicked, TaskReport, TaskStatus, Timeout,
    MAX_LOG, SCHEMA_VERSION,
};

/// The names most programs need: `use procession::prelude::*;`.
pub mod prelude {
    pub use procession_macros::{process, task};
    pub use procession_runtime::{
        Builder, Ctx, Graph, GraphError, Launch, Level, Mode, NonRetryable, OnDepFailure, Out,
        Process, Res, RunReport, RunStatus, Runtime, Task, TaskGraph, TaskStatus,
    };
}

/// The admin HTTP API (cargo feature `admin`): mount [`admin::router`] in your axum app
/// or start [`admin::serve`]; see the module's documentation for routes and security.
#[cfg(feature = "admin")]
pub use procession_runtime::admin;

#[doc(hidden)]
pub mod __private {
    pub use procession_runtime::macro_support::*;
}
