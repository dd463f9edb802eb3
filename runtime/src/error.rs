//! Errors a task attempt can end with, and errors of the runtime itself.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A boxed error, as task errors are carried inside the runtime.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Wraps an error to say it must never be retried, whatever the task's policy.
///
/// The runtime looks for it at the top of an error and along its `source()` chain, so it
/// can be returned directly or kept as the `#[source]` of your own error type.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[derive(Debug, thiserror::Error)]
/// enum FetchError {
///     #[error("server busy")]
///     Busy,
///     #[error("bad credentials")]
///     Auth(#[source] NonRetryable),
/// }
///
/// #[task(retries = 5)]
/// fn login(ok: bool) -> Result<u32, FetchError> {
///     if ok { Ok(1) } else { Err(FetchError::Auth(NonRetryable::msg("token expired"))) }
/// }
/// # let p = <Login as Task>::META.policy;
/// # assert!(!p.is_retryable(&FetchError::Auth(NonRetryable::msg("x"))));
/// # assert!(p.is_retryable(&FetchError::Busy));
/// ```
#[derive(Debug)]
pub struct NonRetryable {
    inner: BoxError,
}

impl NonRetryable {
    /// Marks `error` as final.
    pub fn new(error: impl Into<BoxError>) -> Self {
        NonRetryable {
            inner: error.into(),
        }
    }

    /// A final error with a message.
    pub fn msg(message: impl Into<String>) -> Self {
        NonRetryable {
            inner: message.into().into(),
        }
    }

    /// The wrapped error.
    pub fn into_inner(self) -> BoxError {
        self.inner
    }
}

impl fmt::Display for NonRetryable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl StdError for NonRetryable {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.inner)
    }
}

/// An error and its `source()` chain, outermost first.
pub(crate) fn sources<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

pub(crate) fn is_non_retryable(error: &(dyn StdError + 'static)) -> bool {
    sources(error).any(<dyn StdError>::is::<NonRetryable>)
}

/// An attempt ran longer than the task's `timeout`.
///
/// # Examples
///
/// ```
/// let t = procession::Timeout { task: "fetch".into(), after: std::time::Duration::from_millis(50) };
/// assert_eq!(t.to_string(), "task `fetch` timed out after 50ms");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("task `{task}` timed out after {after:?}")]
pub struct Timeout {
    /// The task's name.
    pub task: String,
    /// The timeout that was exceeded.
    pub after: Duration,
}

/// Every attempt of a task failed; the last error is the source.
///
/// Only used when more than one attempt ran; a task that failed on its only attempt
/// keeps its original error.
#[derive(Debug, thiserror::Error)]
#[error("task `{task}` failed after {attempts} attempts: {last}")]
pub struct RetryExhausted {
    /// The task's name.
    pub task: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    #[source]
    pub last: BoxError,
}

/// A task did not run because tasks it depends on did not succeed
/// (`on_dep_failure = "fail"`, or `run_anyway` with a missing input).
///
/// # Examples
///
/// ```
/// let e = procession::DependencyFailed { task: "report".into(), failed: vec!["fetch".into()] };
/// assert_eq!(e.to_string(), "task `report` has failed dependencies: fetch");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("task `{task}` has failed dependencies: {}", failed.join(", "))]
pub struct DependencyFailed {
    /// The task that did not run.
    pub task: String,
    /// Ids of the dependencies that did not succeed.
    pub failed: Vec<String>,
}

/// A task panicked; the panic was caught and the runtime carried on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("task `{task}` panicked: {message}")]
pub struct TaskPanicked {
    /// The task's name.
    pub task: String,
    /// The panic payload, when it was a string.
    pub message: String,
}

/// A task ended because its run was cancelled: the error of
/// [`Ctx::check_cancelled`](crate::Ctx::check_cancelled). A task that returns it (or
/// any error) after its run was asked to stop is recorded cancelled.
#[derive(Debug, Clone, thiserror::Error)]
#[error("task `{task}` was cancelled")]
pub struct Cancelled {
    /// The task's name.
    pub task: String,
}

/// For tasks whose error type is `String`: `ctx.check_cancelled()?` works there too.
///
/// # Examples
///
/// ```
/// let s: String = procession::Cancelled { task: "crawl".into() }.into();
/// assert_eq!(s, "task `crawl` was cancelled");
/// ```
impl From<Cancelled> for String {
    fn from(c: Cancelled) -> String {
        c.to_string()
    }
}

/// A task asked for a resource the runtime does not hold: the error of
/// [`Ctx::resource`](crate::Ctx::resource). (A task that declares the resource as a
/// `Res<T>` parameter never sees it: its run is refused before it starts.)
///
/// # Examples
///
/// ```
/// let ctx = procession::Ctx::detached("load");
/// let err = ctx.resource::<String>().unwrap_err();
/// assert_eq!(err.resource, "alloc::string::String");
/// assert!(err.to_string().contains("RuntimeBuilder::resource"));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("task `{task}` needs the resource `{resource}`, which this runtime does not hold: register it with `RuntimeBuilder::resource`")]
pub struct MissingResource {
    /// The task's name.
    pub task: String,
    /// The resource's type.
    pub resource: &'static str,
}

/// A cancelled task kept running past the grace period and was abandoned.
#[derive(Debug, Clone, thiserror::Error)]
#[error("task `{task}` did not unwind within cancellation grace period ({grace:?})")]
pub struct CancelGraceExceeded {
    /// The task's name.
    pub task: String,
    /// The grace period.
    pub grace: Duration,
}

/// A task's output could not be serialized, so it could not be stored.
///
/// Also the error of an output JSON cannot hold losslessly: a NaN or infinite float
/// (which JSON writers turn into `null`) anywhere in it; the message names where.
#[derive(Debug, thiserror::Error)]
#[error("output of task `{task}` could not be serialized: {source}")]
pub struct OutputNotSerializable {
    /// The task's name.
    pub task: String,
    /// The serializer's error.
    #[source]
    pub source: serde_json::Error,
}

/// Error returned when a task's inputs could not be resolved from upstream results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The input points at a node of another graph.
    #[error("input refers to a node that is not part of this graph")]
    UnknownNode,
    /// The upstream task has no result.
    #[error("task `{task}` has no result to read")]
    Missing {
        /// The upstream task.
        task: String,
    },
    /// The stored result does not decode into the expected type.
    #[error("result of task `{task}` does not decode as `{expected}`: {message}")]
    Decode {
        /// The upstream task.
        task: String,
        /// The type the input expects.
        expected: &'static str,
        /// The decoder's message.
        message: String,
    },
}

/// The messages of `error` and of each of its sources on one line, joined by `": "`; a
/// message an outer one already contains is left out. Transports hide the useful part
/// (a refused connection, a TLS alert) a few sources down.
#[cfg_attr(
    not(any(
        feature = "webhook",
        feature = "email",
        feature = "admin",
        feature = "postgres"
    )),
    allow(dead_code)
)]
pub(crate) fn one_line(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    for s in sources(error).skip(1) {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
    }
    out
}

/// Walks an error and its sources into a list of messages, outermost first.
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> Vec<String> {
    sources(error).map(ToString::to_string).collect()
}

/// The message of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}
