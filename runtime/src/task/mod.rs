//! What a task is (the task layer, above `record`): the [`Task`] trait that `#[task]`
//! implements and the policy a task runs under, its inputs ([`arg`]), the [`Data`] bound,
//! the context it runs with ([`ctx`]) and the type erasure a graph node holds it in
//! ([`erased`]).
//!
//! [`Data`]: data::Data

pub(crate) mod arg;
pub mod checks;
pub(crate) mod ctx;
pub(crate) mod data;
pub(crate) mod erased;
mod finite;
pub(crate) mod resource;
pub(crate) mod spec;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::{BoxError, InputError};
use crate::task::arg::{Inputs, Read};
use crate::task::ctx::Ctx;
use crate::task::data::Data;

/// An attempt's future, boxed: for a hand-written [`Task::call`] whose branches return
/// futures of different types (`call` itself returns its future unboxed, and the runtime
/// keeps a small one inside the task, without an allocation).
///
/// # Examples
///
/// ```
/// use procession::{BoxError, TaskFuture};
///
/// fn attempt(fast: bool) -> TaskFuture<u32> {
///     if fast {
///         Box::pin(std::future::ready(Ok::<_, BoxError>(1)))
///     } else {
///         Box::pin(async { Ok(2) })
///     }
/// }
/// # let _ = attempt(true);
/// ```
pub type TaskFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'static>>;

/// A unit of work with typed inputs and a typed output.
///
/// `#[task]` implements this trait on the struct it generates; implementing it by hand is
/// possible but rarely useful. The runtime uses it to read the task's static description
/// ([`Task::META`]), to find the tasks it depends on, to resolve its inputs once those
/// tasks have finished, and to run attempts.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// /// Doubles a number.
/// #[task(retries = 2)]
/// fn double(x: u64) -> u64 { x * 2 }
///
/// assert_eq!(<Double as Task>::META.name, "double");
/// assert_eq!(<Double as Task>::META.description, "Doubles a number.");
/// assert_eq!(<Double as Task>::META.policy.max_attempts, 3);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a task",
    label = "expected a task value such as `FetchOrders::new(..)`",
    note = "`#[task] fn fetch_orders(..)` generates the task type `FetchOrders`: add `FetchOrders::new(..)` with its arguments, not the function itself"
)]
pub trait Task: Send + Sized + 'static {
    /// The value a successful attempt produces.
    type Output: Data;
    /// The task's inputs, resolved, as a tuple in parameter order.
    type Args: Data;
    /// Name, description and policy, fixed at compile time.
    const META: TaskMeta;

    /// Calls `f` for every read this task makes of an upstream task's output.
    fn visit_inputs(&self, f: &mut dyn FnMut(Read));

    /// Resolves the inputs: constant values are moved out, handles are replaced by the
    /// results of the tasks they point at.
    fn into_args(self, inputs: &Inputs<'_>) -> Result<Self::Args, InputError>;

    /// Starts one attempt with resolved inputs: the attempt is the future returned, run
    /// until it ends, or dropped (a timeout, a cancel).
    ///
    /// The future is returned unboxed: the runtime keeps it inside the task's node while
    /// it runs (boxing it only when it is large), so an attempt of a small task allocates
    /// nothing. `#[task]` returns the function's future; a hand-written `call` may be an
    /// `async fn` (its future owns its inputs and `ctx`) or return an `async move` block.
    fn call(
        args: Self::Args,
        ctx: Ctx,
    ) -> impl Future<Output = Result<Self::Output, BoxError>> + Send + 'static;

    /// Whether [`call`](Task::call) uses its `ctx`. `#[task]` says `false` for a function
    /// that takes neither a context nor a resource: the runtime then makes such a task's
    /// context without the run's shared state (a clone of it is a locked increment and
    /// decrement per attempt on a counter every worker shares), and the generated `call`
    /// drops it unused. `true`, the default, for a hand-written task; one that says
    /// `false` and reads its context anyway finds an inert one (no run id, progress to
    /// nowhere, never cancelled).
    #[doc(hidden)]
    const TAKES_CTX: bool = true;

    /// How to copy an output of this task, when [`Output`](Task::Output) is `Clone`:
    /// then every task that reads it gets a copy of the value, not one decoded from its
    /// JSON (only the last reader gets the value itself). `#[task]` fills it in; `None`
    /// (the default) decodes the copies.
    #[doc(hidden)]
    fn output_cloner() -> Option<arg::OutputCloner> {
        None
    }
}

/// The static description of a task.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task(name = "fetch", timeout = "30s")]
/// async fn fetch_orders(source: String) -> Vec<String> { vec![source] }
///
/// let meta = &<FetchOrders as Task>::META;
/// assert_eq!(meta.name, "fetch");
/// assert!(meta.function.ends_with("fetch_orders"));
/// assert_eq!(meta.policy.timeout, Some(std::time::Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TaskMeta {
    /// Stable name: the function's name unless `#[task(name = "…")]` says otherwise.
    pub name: &'static str,
    /// The function's path (`module::fn`), shown in reports.
    pub function: &'static str,
    /// The first paragraph of the doc comment, or `#[task(description = "…")]`.
    pub description: &'static str,
    /// Whether the function is `async` (runs as a tokio task) or not (runs on the blocking pool).
    pub is_async: bool,
    /// Retries, backoff, timeout and dependency-failure handling.
    pub policy: Policy,
    /// The resources the task reads (its `Res<T>` parameters): the runtime refuses a
    /// graph with a task whose resource it does not hold, before anything runs.
    pub resources: &'static [resource::ResourceKey],
}

/// Retry, backoff, timeout and dependency-failure policy of a task.
///
/// Every field is set at compile time by `#[task(...)]`.
///
/// # Timeouts and retries
///
/// A timeout ends one attempt with a [`Timeout`](crate::Timeout) error. Whether that attempt
/// is retried follows one rule, the same as for every other error: it is retried when attempts
/// remain and the error is retryable. A timeout is retryable when `retry_timeouts` is true
/// (the default) and, if `retry_on` lists types, `Timeout` is among them. So
/// `#[task(retries = 3, timeout = "1s")]` retries timeouts, while
/// `#[task(retries = 3, timeout = "1s", retry_timeouts = false)]` makes a timeout final.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// use std::time::Duration;
///
/// #[task(max_attempts = 4, backoff = "exponential(100ms, 5s)", on_dep_failure = "run_anyway")]
/// fn flaky() -> u32 { 1 }
///
/// let policy = <Flaky as Task>::META.policy;
/// assert_eq!(policy.max_attempts, 4);
/// assert_eq!(policy.backoff.delay(1), Duration::from_millis(100));
/// assert_eq!(policy.backoff.delay(3), Duration::from_millis(400));
/// assert_eq!(policy.backoff.delay(100), Duration::from_secs(5));
/// assert_eq!(policy.on_dep_failure, OnDepFailure::RunAnyway);
/// ```
#[derive(Clone, Copy)]
pub struct Policy {
    /// Attempts in total, the first included (`retries + 1`); at least 1.
    pub max_attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// Time allowed for one attempt; `None` means no limit.
    pub timeout: Option<Duration>,
    /// Only errors of these types are retried; `None` means every error.
    pub retry_on: Option<&'static [ErrorMatcher]>,
    /// Whether a timed-out attempt may be retried (see the type's docs).
    pub retry_timeouts: bool,
    /// What happens to this task when one of its dependencies did not succeed.
    pub on_dep_failure: OnDepFailure,
    /// Whether the task's failure leaves its run successful (`#[task(optional)]`; see
    /// [`TaskExt::optional`](crate::TaskExt::optional) for the rules).
    pub optional: bool,
}

impl Policy {
    /// One attempt, no backoff, no timeout, skip on a failed dependency.
    ///
    /// # Examples
    ///
    /// ```
    /// let p = procession::Policy::DEFAULT;
    /// assert_eq!(p.max_attempts, 1);
    /// assert!(p.timeout.is_none());
    /// ```
    pub const DEFAULT: Policy = Policy {
        max_attempts: 1,
        backoff: Backoff::None,
        timeout: None,
        retry_on: None,
        retry_timeouts: true,
        on_dep_failure: OnDepFailure::Skip,
        optional: false,
    };

    /// Number of retries after the first attempt (`max_attempts - 1`).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task(retries = 2)]
    /// fn f() {}
    /// assert_eq!(<F as Task>::META.policy.retries(), 2);
    /// ```
    pub const fn retries(&self) -> u32 {
        self.max_attempts.saturating_sub(1)
    }

    /// Whether an attempt that ended with `error` may be retried (ignoring the attempt
    /// count). Errors marked [`NonRetryable`](crate::NonRetryable) anywhere in their source
    /// chain are never retried.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::{NonRetryable, Policy};
    /// let p = Policy::DEFAULT;
    /// let io = std::io::Error::other("network down");
    /// assert!(p.is_retryable(&io));
    /// assert!(!p.is_retryable(&NonRetryable::new(io)));
    /// ```
    pub fn is_retryable(&self, error: &(dyn StdError + 'static)) -> bool {
        if crate::error::is_non_retryable(error) {
            return false;
        }
        let is_timeout = error.is::<crate::Timeout>();
        if is_timeout && !self.retry_timeouts {
            return false;
        }
        match self.retry_on {
            None => true,
            Some(matchers) => matchers.iter().any(|m| (m.matches)(error)),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .field(
                "retry_on",
                &self
                    .retry_on
                    .map(|m| m.iter().map(|m| m.name).collect::<Vec<_>>()),
            )
            .field("retry_timeouts", &self.retry_timeouts)
            .field("on_dep_failure", &self.on_dep_failure)
            .field("optional", &self.optional)
            .finish()
    }
}

/// Matches an error of one type, for `#[task(retry_on = [...])]`.
///
/// # Examples
///
/// ```
/// use procession::ErrorMatcher;
/// const IO: ErrorMatcher = ErrorMatcher::of::<std::io::Error>("std::io::Error");
/// assert!((IO.matches)(&std::io::Error::other("x")));
/// assert_eq!(IO.name, "std::io::Error");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorMatcher {
    /// The type as written in the attribute.
    pub name: &'static str,
    /// True when the error (or, through `source()`, an error it wraps) is of that type.
    pub matches: fn(&(dyn StdError + 'static)) -> bool,
}

impl ErrorMatcher {
    /// A matcher for errors of type `E`, anywhere in the source chain.
    pub const fn of<E: StdError + 'static>(name: &'static str) -> Self {
        ErrorMatcher {
            name,
            matches: chain_has::<E>,
        }
    }
}

impl fmt::Debug for ErrorMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

pub(crate) fn chain_has<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    crate::error::sources(error).any(<dyn StdError>::is::<E>)
}

/// Delay between two attempts of a task.
///
/// Attempts are numbered from 1: `delay(n)` is the wait after attempt `n` failed.
/// Linear waits `base * n`, exponential `base * 2^(n-1)`; both are capped and never
/// overflow. With `jitter`, the wait is drawn uniformly from `[d/2, d]`.
///
/// # Examples
///
/// ```
/// use procession::Backoff;
/// use std::time::Duration;
/// let b = Backoff::Linear { base: Duration::from_millis(500), cap: Some(Duration::from_secs(10)), jitter: false };
/// assert_eq!(b.delay(1), Duration::from_millis(500));
/// assert_eq!(b.delay(2), Duration::from_millis(1000));
/// assert_eq!(Backoff::None.delay(7), Duration::ZERO);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Retry at once.
    None,
    /// The same wait every time.
    Fixed {
        /// The wait.
        delay: Duration,
        /// Draw the wait from `[delay/2, delay]`.
        jitter: bool,
    },
    /// `base * attempt`, capped.
    Linear {
        /// Wait after the first attempt.
        base: Duration,
        /// Upper bound on any wait.
        cap: Option<Duration>,
        /// Draw the wait from `[d/2, d]`.
        jitter: bool,
    },
    /// `base * 2^(attempt-1)`, capped.
    Exponential {
        /// Wait after the first attempt.
        base: Duration,
        /// Upper bound on any wait.
        cap: Option<Duration>,
        /// Draw the wait from `[d/2, d]`.
        jitter: bool,
    },
}

impl Backoff {
    /// The wait after failed attempt `attempt` (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let n = attempt.max(1);
        let (raw, cap) = match *self {
            Backoff::None => return Duration::ZERO,
            Backoff::Fixed { delay, .. } => (delay, None),
            Backoff::Linear { base, cap, .. } => (base.saturating_mul(n), cap),
            Backoff::Exponential { base, cap, .. } => {
                let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
                (base.saturating_mul(factor), cap)
            }
        };
        match cap {
            Some(cap) => raw.min(cap),
            None => raw,
        }
    }

    /// The wait after failed attempt `attempt`, with jitter applied when configured.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff::Fixed { delay: Duration::from_secs(2), jitter: true };
    /// let d = b.jittered_delay(1);
    /// assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2));
    /// ```
    pub fn jittered_delay(&self, attempt: u32) -> Duration {
        let d = self.delay(attempt);
        let jitter = match *self {
            Backoff::None => false,
            Backoff::Fixed { jitter, .. }
            | Backoff::Linear { jitter, .. }
            | Backoff::Exponential { jitter, .. } => jitter,
        };
        if !jitter || d.is_zero() {
            return d;
        }
        let half = d / 2;
        let spread = d.saturating_sub(half).as_nanos().min(u128::from(u64::MAX)) as u64;
        half + Duration::from_nanos(fastrand::u64(0..=spread))
    }
}

/// What a task does when a task it depends on did not succeed.
///
/// # Examples
///
/// ```
/// use procession::OnDepFailure;
/// assert_eq!(OnDepFailure::default(), OnDepFailure::Skip);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDepFailure {
    /// End as errored with a [`DependencyFailed`](crate::DependencyFailed) error, without running.
    Fail,
    /// End as skipped, without running (the default).
    #[default]
    Skip,
    /// Run anyway. Failed dependencies that only order the task are ignored, and an
    /// output it takes as an `Option` (`Option<T>`, `Vec<Option<T>>`) is `None` when its
    /// task did not succeed: a fan-in receives the inputs that succeeded. `#[task]` only
    /// lets such a task take outputs in those `Option` forms (see
    /// [`PlainInputs`](crate::PlainInputs)); a hand-written task that reads a plain output
    /// whose task failed ends errored with [`DependencyFailed`](crate::DependencyFailed).
    RunAnyway,
}
