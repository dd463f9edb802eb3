//! Lifecycle hooks: code that runs when a run starts, ends, or a task fails, and around
//! every task attempt.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::error::BoxError;
use crate::report::RunReport;

/// Identity of a run, passed to every hook.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The process (or task graph) name.
    pub process: String,
    /// The run's id.
    pub run_id: String,
}

/// Identity of one task attempt, passed to [`Hooks::around_task`].
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// The process (or task graph) name.
    pub process: String,
    /// The run's id.
    pub run_id: String,
    /// The task's name.
    pub task: &'static str,
    /// The task's node id.
    pub node_id: String,
    /// The attempt number, from 1.
    pub attempt: u32,
}

/// How one attempt ended, as seen by [`Hooks::around_task`].
pub struct AttemptOutcome {
    pub(crate) error: Option<BoxError>,
    pub(crate) payload: Option<crate::task::erased::Finished>,
}

impl AttemptOutcome {
    /// True when the attempt succeeded.
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    /// The attempt's error, if it failed.
    pub fn error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.error.as_deref()
    }
}

impl fmt::Debug for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            None => f.write_str("AttemptOutcome::Ok"),
            Some(e) => write!(f, "AttemptOutcome::Err({e})"),
        }
    }
}

/// A boxed attempt, as [`Hooks::around_task`] receives and returns it.
pub type Attempt<'a> = Pin<Box<dyn Future<Output = AttemptOutcome> + Send + 'a>>;

/// Lifecycle hooks of a run. Every method has a default that does nothing, so implement
/// only what you need. Hooks are set per process (`#[process(hooks = Type)]`, with
/// `Type: Hooks + Default`) or per runtime ([`RuntimeBuilder::hooks`](crate::RuntimeBuilder::hooks)).
///
/// Hooks run on the executor: keep them short.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// use procession::{Attempt, Hooks, TaskInfo};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// #[derive(Default)]
/// struct CountAttempts(AtomicUsize);
///
/// impl Hooks for CountAttempts {
///     fn around_task<'a>(&'a self, _task: &'a TaskInfo, attempt: Attempt<'a>) -> Attempt<'a> {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         attempt
///     }
/// }
///
/// #[task] fn one() -> u8 { 1 }
/// #[process(hooks = CountAttempts)]
/// fn counted(p: &mut Builder) { p.task(One::new()); p.task(One::new()); }
/// # #[tokio::main] async fn main() {
/// let rt = Runtime::in_memory().start().await.unwrap();
/// let report = rt.run(Counted {}).await.unwrap();
/// assert!(report.is_success());
/// # }
/// ```
pub trait Hooks: Send + Sync + 'static {
    /// The run is about to start its first task.
    fn started(&self, run: &RunInfo) {
        let _ = run;
    }

    /// Every task succeeded.
    fn completed(&self, run: &RunInfo, report: &RunReport) {
        let _ = (run, report);
    }

    /// A task ended errored (after its last attempt).
    fn failed(&self, run: &RunInfo, task: &str, error: &(dyn StdError + 'static)) {
        let _ = (run, task, error);
    }

    /// The run was cancelled.
    fn cancelled(&self, run: &RunInfo, report: &RunReport) {
        let _ = (run, report);
    }

    /// Wraps every attempt of every task: time it, enter a span, set resources up and
    /// down. Return `attempt` (possibly wrapped); not awaiting it drops the attempt.
    fn around_task<'a>(&'a self, task: &'a TaskInfo, attempt: Attempt<'a>) -> Attempt<'a> {
        let _ = task;
        attempt
    }
}
