//! The runtime of [`procession`](https://docs.rs/procession): graphs, executor and
//! reports. Depend on `procession`, which re-exports everything here; this crate's name
//! may change.
//!
//! # Layers
//!
//! One folder or file per concept, and each imports only the ones at or below its own
//! layer (lowest first):
//!
//! `error`, `util` → `schedule` → `record` → `events`, `report` → `task` → `hooks` →
//! `graph` → `store` → `journal` → `notify` → `exec` → `runtime` (→ `macro_support`, the
//! door for generated code).
//!
//! `store` imports only `record`, `error`, `schedule` and `util`, so storage compiles
//! without the engine; `exec` never imports `store` (it writes through `journal`); only
//! `runtime` names `Runtime` or the API `Error`. Mutual imports inside one folder are
//! fine. `.ci/check-cycles.py` checks all of this in CI.
//!
//! # Features
//!
//! - `webhook`: webhook notifications of run ends (reqwest with rustls, HMAC-SHA256
//!   signatures, `notify::verify` for receivers).
//! - `email`: e-mail notifications of run ends (lettre over tokio with rustls).
//! - `logs`: per-task or per-run log files written from `tracing` events
//!   (`logs::TaskLogLayer`, a `tracing-subscriber` layer).
//! - `otel`: OpenTelemetry export of the runtime's spans (`otel::layer`), with each run's
//!   trace context stored on its record so that resumed runs join their trace.
//!
//! None is on by default.

#![doc(test(attr(deny(warnings))))]
// Denied, not forbidden: five modules allow it, each block with its argument:
// `graph::arena` (where a graph's tasks live), `task::erased` (a task's attempt polled in
// place, and the `unsafe trait Place` that keeps it sound), `exec::shared` (a node's task
// cell, guarded by its claim flag instead of a lock; `exec::worker` vouches for the one
// success it marks) and `util` (the monotonic clock read through `libc`).
#![deny(unsafe_code)]

/// Implements `Task` for the unit struct `$ty`: a task named `$name` that reads nothing,
/// returns `()` and does nothing, for the graphs unit tests build (each test keeps a type
/// of its own when it counts drops or names its process).
#[cfg(test)]
#[macro_export]
macro_rules! no_op_task {
    ($ty:ty, $name:literal) => {
        impl $crate::task::Task for $ty {
            type Output = ();
            type Args = ();
            const META: $crate::task::TaskMeta = $crate::task::TaskMeta {
                name: $name,
                function: $name,
                description: "",
                is_async: false,
                policy: $crate::task::Policy::DEFAULT,
                resources: &[],
            };
            fn visit_inputs(&self, _: &mut dyn FnMut($crate::task::arg::Read)) {}
            fn into_args(
                self,
                _: &$crate::task::arg::Inputs<'_>,
            ) -> Result<(), $crate::error::InputError> {
                Ok(())
            }
            async fn call(
                (): (),
                _: $crate::task::ctx::Ctx,
            ) -> Result<(), $crate::error::BoxError> {
                Ok(())
            }
        }
    };
}

#[cfg(feature = "admin")]
pub mod admin;
mod error;
mod events;
mod exec;
mod graph;
mod hooks;
mod journal;
#[cfg(feature = "logs")]
pub mod logs;
#[doc(hidden)]
pub mod macro_support;
pub mod notify;
#[cfg(feature = "otel")]
pub mod otel;
mod record;
mod report;
mod runtime;
mod schedule;
pub mod store;
mod task;
mod util;

pub use error::{
    BoxError, CancelGraceExceeded, Cancelled, DependencyFailed, InputError, MissingResource,
    NonRetryable, OutputNotSerializable, RetryExhausted, TaskPanicked, Timeout,
};
pub use events::{Event, EventKind, EventStream};
pub use graph::process::{Mode, Process, ProcessMeta};
pub use graph::{Builder, Graph, GraphError, TaskGraph};
pub use hooks::{Attempt, AttemptOutcome, Hooks, RunInfo, TaskInfo};
pub use record::{
    InvalidTransition, LaunchBlock, Level, ListFilter, LogEntry, ProcessRecord, Progress,
    RecordKind, RunMeta, State, Status, MAX_LOG, SCHEMA_VERSION,
};
pub use report::{
    ErrorReport, Json, ResultError, ResultKey, RunReport, RunStatus, TaskReport, TaskStatus,
};
pub use runtime::children::{
    progress, Child, ChildError, ChildOutcome, ChildProcessFailed, ChildProgress, ChildResult,
    GroupError, GroupOptions, ParallelGroup, ProgressCallback,
};
pub use runtime::{
    AdhocOptions, Definition, Error, GroupCancel, IntoGraph, Launch, LaunchSpec, RemoteTaskError,
    Result, ResyncReport, RunHandle, RunSummary, Runtime, RuntimeBuilder, Shutdown, TaskStats,
};
pub use schedule::{CatchUp, Overlap, Schedule, ScheduleError};
/// The string type of node ids, task names in stored rows and results: text of up to 23
/// bytes inline (no allocation), longer text shared (a clone is a reference count).
/// It derefs to `str`, compares with `&str` and `String`, and serializes as a string.
///
/// ```
/// let id = procession::SmolStr::new("step#123");
/// assert_eq!(id, "step#123");
/// assert!(!id.is_heap_allocated());
/// assert_eq!(serde_json::to_string(&id).unwrap(), "\"step#123\"");
/// ```
pub use smol_str::SmolStr;
pub use task::arg::{Arg, IntoArg, NodeRef, Out, PlainInputs, Read, StrArg};
pub use task::checks;
pub use task::ctx::{Ctx, IntoPercent};
pub use task::data::Data;
pub use task::resource::{Res, Resource, ResourceKey};
pub use task::spec::{IntoTaskId, IntoTaskSpec, TaskExt, TaskKey, TaskSpec};
pub use task::{Backoff, ErrorMatcher, OnDepFailure, Policy, Task, TaskFuture, TaskMeta};
pub use tokio_util::sync::CancellationToken;
