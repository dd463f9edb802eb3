//! Items used by the code `#[task]` and `#[process]` generate. Not public API: reached only
//! through `procession::__private`, and may change in any release.

#![allow(missing_docs, unreachable_pub)]

pub use crate::error::{BoxError, InputError};
pub use crate::graph::process::{Mode, Process, ProcessMeta};
pub use crate::graph::Builder;
pub use crate::hooks::Hooks;
pub use crate::schedule::Overlap;
pub use crate::task::arg::{
    Arg, CloneProbe, CloneProbeNo, CloneProbeYes, Inputs, IntoArg, NodeRef, Out, OutputCloner,
    PlainInputs, Read,
};
pub use crate::task::checks::{RetryOn, StoredInput, StoredOutput, StoredParam};
pub use crate::task::ctx::Ctx;
pub use crate::task::data::Data;
pub use crate::task::resource::{Res, Resource, ResourceKey};
pub use crate::task::{Backoff, ErrorMatcher, OnDepFailure, Policy, Task, TaskMeta};
pub use core::future::Future;
pub use core::option::Option::{self, None, Some};
pub use core::result::Result::{self, Err, Ok};
pub use serde;
pub use std::boxed::Box;
pub use std::sync::Arc;
pub use std::time::Duration;

use crate::error::TaskPanicked;

/// The `Result` types a task may return.
pub trait TaskReturn {
    type Ok;
    type Err;
}

impl<T, E> TaskReturn for Result<T, E> {
    type Ok = T;
    type Err = E;
}

/// The error types a task may return.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error type of a task",
    label = "a task's error must implement `std::error::Error + Send + Sync + 'static`",
    note = "use your own error type (for example with `thiserror`), `Box<dyn std::error::Error + Send + Sync>`, or `String`"
)]
pub trait IntoTaskError {
    fn into_task_error(self) -> BoxError;
}

impl<E: Into<BoxError>> IntoTaskError for E {
    fn into_task_error(self) -> BoxError {
        self.into()
    }
}

/// Converts the value returned by a `Result`-returning task.
#[inline]
pub fn task_result<T, E: IntoTaskError>(r: Result<T, E>) -> Result<T, BoxError> {
    r.map_err(IntoTaskError::into_task_error)
}

/// The resource of type `T` for a `Res<T>` parameter of a task. The runtime checked the
/// graph before it ran, so this fails only for a context without it (detached).
#[inline]
pub fn resource<T: Resource>(ctx: &Ctx) -> Result<Res<T>, BoxError> {
    ctx.resource::<T>().map_err(BoxError::from)
}

/// Runs an `async fn` task attempt: `fut` itself, unboxed (the runtime keeps it inside
/// the task). Pins down the type of the `async` block's result.
#[inline]
pub fn run_async<T, F>(fut: F) -> F
where
    F: core::future::Future<Output = Result<T, BoxError>> + Send + 'static,
{
    fut
}

/// Runs an `async fn` task attempt that takes no context: the function's future `fut`,
/// its output converted by `convert` when it ends. Its size is `fut`'s (an `async` block
/// awaiting it would hold its inputs a second time).
#[inline]
pub fn run_async_then<T, F, C>(
    fut: F,
    convert: C,
) -> impl core::future::Future<Output = Result<T, BoxError>> + Send + 'static
where
    F: core::future::Future + Send + 'static,
    C: FnOnce(F::Output) -> Result<T, BoxError> + Send + 'static,
{
    futures::FutureExt::map(fut, convert)
}

/// Runs a plain `fn` task attempt on tokio's blocking pool.
pub async fn run_blocking<T, F>(task: &'static str, f: F) -> Result<T, BoxError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, BoxError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => Err(Box::new(TaskPanicked {
            task: task.to_owned(),
            message: crate::error::panic_message(&*e.into_panic()),
        }) as BoxError),
        Err(e) => Err(Box::new(e) as BoxError),
    }
}
