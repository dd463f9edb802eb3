//! The runtime of [`procession`](https://docs.rs/procession): graphs, executor and
//! reports. Depend on `procession`, which re-exports everything here; this crate's name
//! may change.

#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

mod arg;
mod children;
mod ctx;
mod data;
mod erased;
mod error;
mod events;
mod exec;
mod finite;
mod graph;
mod hooks;
mod journal;
mod limits;
#[doc(hidden)]
pub mod macro_support;
mod process;
mod record;
mod report;
mod runtime;
mod schedule;
pub mod store;
mod task;

pub use arg::{Arg, IntoArg, NodeRef, Out};
pub use children::{
    progress, Child, ChildError, ChildOutcome, ChildProcessFailed, ChildProgress, ChildResult,
    GroupError, GroupOptions, ParallelGroup, ProgressCallback,
};
pub use ctx::Ctx;
pub use data::Data;
pub use error::{
    BoxError, CancelGraceExceeded, Cancelled, DependencyFailed, InputError, NonRetryable,
    OutputNotSerializable, RetryExhausted, TaskPanicked, Timeout,
};
pub use events::{Event, EventKind, EventStream};
pub use graph::{Builder, Graph, GraphError, TaskGraph};
pub use hooks::{Attempt, AttemptOutcome, Hooks, RunInfo, TaskInfo};
pub use process::{Mode, Process, ProcessMeta};
pub use record::{
    InvalidTransition, Level, ListFilter, LogEntry, ProcessRecord, Progress, RecordKind, RunMeta,
    State, Status, MAX_LOG, SCHEMA_VERSION,
};
pub use report::{ErrorReport, Json, ResultError, RunReport, RunStatus, TaskReport, TaskStatus};
pub use runtime::{
    AdhocOptions, Definition, Error, IntoGraph, Launch, Result, ResyncReport, RunHandle, Runtime,
    RuntimeBuilder, Shutdown,
};
pub use schedule::{CatchUp, Schedule, ScheduleError};
pub use task::{Backoff, ErrorMatcher, OnDepFailure, Policy, Task, TaskFuture, TaskMeta};
pub use tokio_util::sync::CancellationToken;
