//! Child processes started by a task at run time: one at a time with
//! [`Ctx::run_child`](crate::Ctx::run_child), or many with
//! [`Ctx::parallel_group`](crate::Ctx::parallel_group); and helpers that turn children's
//! progress into the parent's.
//!
//! A child is a process record of its own (parent, root, depth, order among siblings), run
//! by the same runtime, resumed after a crash like any run. Its default id is derived from
//! the parent run, the task's node and the child's process name, so a task that runs again
//! (a retry, or after a restart) finds its children: a child that already ended done is
//! not run again, a running one is awaited, a failed or cancelled one is relaunched.
//!
//! A failed child is not a cancel of its parent. A cancelled child cascades up (the parent's
//! run is asked to stop) unless `survive_cancel` is set. Cancelling the parent cancels its
//! children.
//!
//! Here: the public child API and `impl Ctx { run_child, parallel_group }`; [`ParallelGroup`]
//! in `group.rs`; the progress tracker in `tracker.rs` and its public helpers in
//! [`progress`]; the runtime side (launching, numbering and deleting children) in
//! `spawner.rs`. A task's context reaches the runtime only through the opaque
//! `RuntimeHandle`, downcast in one place (`Ctx::spawner`, below).

mod group;
pub mod progress;
mod spawner;
mod tracker;

pub use group::{GroupError, GroupOptions, ParallelGroup};
pub(crate) use spawner::ChildSpawner;

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::graph::process::Process;
use crate::graph::Graph;
use crate::hooks::Hooks;
use crate::record::State;
use crate::report::{ResultError, RunReport};
use crate::runtime::Error;
use crate::task::ctx::Ctx;

use tracker::Tracker;

pub(crate) struct ChildRequest {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) process_type: &'static str,
    pub(crate) params: Value,
    pub(crate) graph: Graph,
    pub(crate) hooks: Vec<Arc<dyn Hooks>>,
}

pub(crate) struct ChildRun {
    pub(crate) id: String,
    pub(crate) cancel: CancellationToken,
    pub(crate) done: super::End,
}

/// A callback receiving the progress of every child of a [`run_child`](Ctx::run_child)
/// call or a [`ParallelGroup`].
pub type ProgressCallback = Arc<dyn Fn(&[ChildProgress]) + Send + Sync>;

/// A child process to run, with its options.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// use procession::Child;
///
/// #[task] fn work(n: u32) -> u32 { n * 2 }
/// #[process] fn worker(p: &mut Builder, n: u32) { p.task(Work::new(n)); }
///
/// #[task]
/// async fn parent(ctx: &Ctx) -> Result<u32, procession::ChildError> {
///     let outcome = ctx.run_child(Child::new(Worker { n: 21 }).name("Worker 21")).await?;
///     Ok(outcome.report.unwrap().result::<u32>("work").unwrap())
/// }
/// #[process] fn boss(p: &mut Builder) { p.task(Parent::new()); }
///
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::in_memory().register::<Worker>().start().await?;
/// let report = rt.run(Launch::new(Boss {}).id("boss")).await?;
/// assert_eq!(report.result::<u32>("parent").unwrap(), 42);
/// let child = rt.get("boss/parent/worker").await?.unwrap();
/// assert_eq!((child.depth, child.parent.as_deref()), (1, Some("boss")));
/// # Ok(()) }
/// ```
pub struct Child<P> {
    process: P,
    id: Option<String>,
    name: Option<String>,
    description: Option<String>,
    survive_failure: bool,
    survive_cancel: bool,
    on_progress: Option<ProgressCallback>,
}

impl<P> fmt::Debug for Child<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("survive_failure", &self.survive_failure)
            .field("survive_cancel", &self.survive_cancel)
            .finish_non_exhaustive()
    }
}

impl<P: Process> Child<P> {
    /// A child running `process`.
    pub fn new(process: P) -> Self {
        Child {
            process,
            id: None,
            name: None,
            description: None,
            survive_failure: false,
            survive_cancel: false,
            on_progress: None,
        }
    }

    /// The child's id (default: `<run>/<node>/<process name>`, with `#k` for the k-th
    /// child of that type started by the same attempt).
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// A display name (default: the process's name).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A description (default: the process's).
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// When true, a failed child is an outcome, not an error (default false).
    #[must_use]
    pub fn survive_failure(mut self, yes: bool) -> Self {
        self.survive_failure = yes;
        self
    }

    /// When true, a cancelled child does not cancel the parent (default false).
    #[must_use]
    pub fn survive_cancel(mut self, yes: bool) -> Self {
        self.survive_cancel = yes;
        self
    }

    /// Called with the child's progress as it changes (see [`progress`]).
    #[must_use]
    pub fn on_progress(mut self, f: impl Fn(&[ChildProgress]) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }
}

/// Progress of one child, as callbacks see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildProgress {
    /// The child's id.
    pub process_id: String,
    /// Its display name.
    pub name: String,
    /// Its state.
    pub state: State,
    /// Its progress in percent (the share of its tasks that ended), if known.
    pub percent: Option<f64>,
    /// The last progress message of its tasks.
    pub message: Option<String>,
}

/// How a child ended, with its report: read its tasks' typed results with
/// [`result`](ChildOutcome::result) or [`output`](ChildOutcome::output).
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// use procession::Child;
///
/// #[task] fn fetch(n: u32) -> Vec<u32> { (0..n).collect() }
/// #[task] fn total(xs: Vec<u32>) -> u32 { xs.iter().sum() }
/// #[process]
/// fn summing(p: &mut Builder, n: u32) {
///     let xs = p.task(Fetch::new(n));
///     p.task(Total::new(xs));
/// }
///
/// #[task]
/// async fn parent(ctx: &Ctx) -> Result<u32, procession::BoxError> {
///     let outcome = ctx.run_child(Child::new(Summing { n: 5 })).await?;
///     // By task id, or the last task's result:
///     assert_eq!(outcome.result::<Vec<u32>>("fetch")?, vec![0, 1, 2, 3, 4]);
///     Ok(outcome.output::<u32>()?)
/// }
/// #[process] fn boss(p: &mut Builder) { p.task(Parent::new()); }
///
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::in_memory().register::<Summing>().start().await?;
/// let report = rt.run(Boss {}).await?;
/// assert_eq!(report.result::<u32>("parent").unwrap(), 10);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ChildOutcome {
    /// The child's id.
    pub id: String,
    /// Its display name.
    pub name: String,
    /// done, failed or cancelled.
    pub state: State,
    /// The error message, when it failed.
    pub error: Option<String>,
    /// The original error of the task that failed, for downcasting.
    pub original: Option<Arc<dyn StdError + Send + Sync>>,
    /// The child's report (`None` when it was never started: the parent was cancelled).
    /// Shared, not copied: the same report the child's run handed over. A child that
    /// had ended before this task ran again (a retry, or a restart) gives the report
    /// built from the store, results included.
    pub report: Option<Arc<RunReport>>,
}

impl ChildOutcome {
    /// The typed result of the child's task `task` (an id, as in
    /// [`RunReport::result`]).
    ///
    /// # Errors
    ///
    /// [`ResultError`]: the child never started, has no such task, the task has no
    /// result (it did not succeed), or its result does not decode as `T`.
    pub fn result<T: DeserializeOwned>(&self, task: &str) -> Result<T, ResultError> {
        report_result(self.report.as_deref(), &self.id, Some(task))
    }

    /// The child's output: the typed result of its last task (the last one its
    /// process's builder added; in a process that ends with one final task, that task).
    ///
    /// # Errors
    ///
    /// As [`result`](ChildOutcome::result).
    pub fn output<T: DeserializeOwned>(&self) -> Result<T, ResultError> {
        report_result(self.report.as_deref(), &self.id, None)
    }
}

/// The result of task `task` (the last task for `None`) in the report of child `child`.
fn report_result<T: DeserializeOwned>(
    report: Option<&RunReport>,
    child: &str,
    task: Option<&str>,
) -> Result<T, ResultError> {
    let Some(report) = report else {
        // Never started (its parent was cancelled first): nothing of it succeeded.
        return Err(ResultError::NoResult {
            task: format!("{child}/{}", task.unwrap_or("(output)")),
            status: crate::report::TaskStatus::Cancelled,
        });
    };
    match task {
        Some(id) => report.result(id),
        None => report
            .tasks
            .last()
            .ok_or_else(|| ResultError::UnknownTask {
                task: format!("{child}/(output)"),
            })?
            .result_as(),
    }
}

/// A child process failed; the original error is kept (typed) as the source.
#[derive(Clone)]
pub struct ChildProcessFailed {
    /// The child's display name.
    pub name: String,
    /// The child's id.
    pub process_id: String,
    /// The error of the child's task that failed.
    pub original: Arc<dyn StdError + Send + Sync>,
}

impl fmt::Debug for ChildProcessFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildProcessFailed")
            .field("name", &self.name)
            .field("process_id", &self.process_id)
            .field("original", &self.original)
            .finish()
    }
}

impl fmt::Display for ChildProcessFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "child process `{}` ({}) failed: {:?}",
            self.name, self.process_id, self.original
        )
    }
}

impl StdError for ChildProcessFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.original)
    }
}

/// Error returned by [`Ctx::run_child`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The child failed and `survive_failure` was not set.
    #[error(transparent)]
    Failed(#[from] ChildProcessFailed),
    /// The child could not be launched.
    #[error("child process `{id}` could not be launched: {source}")]
    Launch {
        /// The child's id.
        id: String,
        /// Why.
        #[source]
        source: Error,
    },
    /// This task cannot start children (a detached context, or a run without a record).
    #[error(
        "this task cannot start child processes: it does not belong to a recorded run of a runtime"
    )]
    NoRuntime,
}

/// The result of one child of a [`ParallelGroup`], with its report: read its tasks'
/// typed results with [`result`](ChildResult::result) or
/// [`output`](ChildResult::output).
#[derive(Debug, Clone)]
pub struct ChildResult {
    /// The child's id.
    pub process_id: String,
    /// Its display name.
    pub name: String,
    /// done, failed or cancelled.
    pub state: State,
    /// The error message, when it failed.
    pub error: Option<String>,
    /// The original error, when it failed.
    pub original: Option<Arc<dyn StdError + Send + Sync>>,
    /// The child's report (`None` when it was never started). Shared with the child's
    /// run, not copied, so a group of many children costs one pointer per child.
    pub report: Option<Arc<RunReport>>,
}

impl ChildResult {
    /// The typed result of the child's task `task` (an id, as in
    /// [`RunReport::result`]).
    ///
    /// # Errors
    ///
    /// As [`ChildOutcome::result`].
    pub fn result<T: DeserializeOwned>(&self, task: &str) -> Result<T, ResultError> {
        report_result(self.report.as_deref(), &self.process_id, Some(task))
    }

    /// The child's output: the typed result of its last task (see
    /// [`ChildOutcome::output`]).
    ///
    /// # Errors
    ///
    /// As [`ChildOutcome::result`].
    pub fn output<T: DeserializeOwned>(&self) -> Result<T, ResultError> {
        report_result(self.report.as_deref(), &self.process_id, None)
    }
}

impl Ctx {
    /// The runtime's child spawner, when this context belongs to a recorded run: the only
    /// place that looks inside the opaque [`RuntimeHandle`](crate::task::ctx::RuntimeHandle).
    fn spawner(&self) -> Option<Arc<ChildSpawner>> {
        self.runtime_handle()?
            .0
            .clone()
            .downcast::<ChildSpawner>()
            .ok()
    }

    fn prepare_child<P: Process>(
        &self,
        child: Child<P>,
    ) -> Result<(ChildRequest, ChildOpts), ChildError> {
        let Some(_) = self.spawner() else {
            return Err(ChildError::NoRuntime);
        };
        let name = child
            .name
            .clone()
            .unwrap_or_else(|| P::META.name.to_owned());
        let id = match &child.id {
            Some(id) => id.clone(),
            None => self.default_child_id(P::META.name),
        };
        let params = serde_json::to_value(&child.process).map_err(|source| ChildError::Launch {
            id: id.clone(),
            source: Error::Serialize {
                name: format!("parameters of `{}`", P::META.name),
                source,
            },
        })?;
        let graph = Graph::of(child.process).map_err(|e| ChildError::Launch {
            id: id.clone(),
            source: e.into(),
        })?;
        let opts = ChildOpts {
            survive_failure: child.survive_failure,
            survive_cancel: child.survive_cancel,
            on_progress: child.on_progress,
            tasks: graph.len() as u32,
        };
        Ok((
            ChildRequest {
                id,
                name,
                description: child
                    .description
                    .unwrap_or_else(|| P::META.description.to_owned()),
                process_type: P::META.name,
                params,
                graph,
                hooks: P::hooks().into_iter().collect(),
            },
            opts,
        ))
    }

    /// Runs a child process and waits for it.
    ///
    /// A child is a process record of its own (parent, root, depth, order among
    /// siblings), run by the same runtime, resumed after a crash like any run. Its default
    /// id is derived from the parent run, the task's node and the child's process name, so
    /// a task that runs again (a retry, or after a restart) finds its children: a child
    /// that already ended done is not run again, a running one is awaited, a failed or
    /// cancelled one is relaunched. Cancelling the parent cancels its children.
    ///
    /// Returns the outcome: `done`; `failed` only with `survive_failure` (otherwise an
    /// error carrying the child's original error); `cancelled` (and unless
    /// `survive_cancel`, this task's run is asked to stop). When this task's run is
    /// already cancelled no child is started and the outcome is `cancelled`.
    ///
    /// # Errors
    ///
    /// [`ChildError::Failed`], [`ChildError::Launch`], [`ChildError::NoRuntime`].
    pub async fn run_child<P: Process>(&self, child: Child<P>) -> Result<ChildOutcome, ChildError> {
        let name = child
            .name
            .clone()
            .unwrap_or_else(|| P::META.name.to_owned());
        if self.is_cancelled() {
            return Ok(ChildOutcome {
                id: child.id.clone().unwrap_or_default(),
                name,
                state: State::Cancelled,
                error: None,
                original: None,
                report: None,
            });
        }
        let spawner = self.spawner().ok_or(ChildError::NoRuntime)?;
        let (req, opts) = self.prepare_child(child)?;
        let tracker = opts
            .on_progress
            .clone()
            .map(|cb| Tracker::start(cb, spawner.events()));
        if let Some(t) = &tracker {
            t.add(&req.id, &req.name, opts.tasks);
        }
        let id = req.id.clone();
        let run = spawner
            .launch_child(req)
            .await
            .map_err(|source| ChildError::Launch {
                id: id.clone(),
                source,
            })?;
        self.log(crate::record::Level::Info, format!("Spawned child: {name}"));
        let report = await_child(self.cancel_token(), run).await;
        if let Some(t) = &tracker {
            t.set_state(&id, end_state(&report));
        }
        let outcome = outcome_of(&id, &name, &report);
        match outcome.state {
            State::Failed if !opts.survive_failure => Err(ChildError::Failed(failure_of(&outcome))),
            State::Cancelled if !opts.survive_cancel => {
                self.cancel();
                Ok(outcome)
            }
            _ => Ok(outcome),
        }
    }

    /// A group of children running side by side, at most `max_concurrency` at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::{Child, GroupOptions};
    ///
    /// #[task] fn square(n: u32) -> u32 { n * n }
    /// #[process] fn one_square(p: &mut Builder, n: u32) { p.task(Square::new(n)); }
    ///
    /// #[task]
    /// async fn fan_out(ctx: &Ctx) -> Result<usize, procession::GroupError> {
    ///     let mut group = ctx.parallel_group(GroupOptions::new().max_concurrency(2));
    ///     for n in 0..5 {
    ///         group.spawn(Child::new(OneSquare { n }).id(format!("sq-{n}"))).await?;
    ///     }
    ///     let results = group.finish().await?;
    ///     Ok(results.iter().filter(|r| r.state == procession::State::Done).count())
    /// }
    /// #[process] fn squares(p: &mut Builder) { p.task(FanOut::new()); }
    ///
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().register::<OneSquare>().start().await?;
    /// let report = rt.run(Squares {}).await?;
    /// assert_eq!(report.result::<usize>("fan_out").unwrap(), 5);
    /// # Ok(()) }
    /// ```
    pub fn parallel_group(&self, opts: GroupOptions) -> ParallelGroup {
        let spawner = self.spawner();
        let tracker = opts
            .on_progress
            .clone()
            .map(|cb| Tracker::start(cb, spawner.as_ref().and_then(|s| s.events())));
        ParallelGroup {
            ctx: self.clone(),
            slots: Arc::new(Semaphore::new(crate::runtime::limits::permits(
                opts.max_concurrency,
            ))),
            cancel: self.cancel_token().child_token(),
            opts,
            running: Vec::new(),
            tracker,
        }
    }
}

struct ChildOpts {
    survive_failure: bool,
    survive_cancel: bool,
    on_progress: Option<ProgressCallback>,
    tasks: u32,
}

/// Waits for a child's report; a cancel of `parent` is passed on to the child.
async fn await_child(parent: CancellationToken, run: ChildRun) -> Arc<RunReport> {
    let link = {
        let child = run.cancel.clone();
        tokio::spawn(async move {
            parent.cancelled().await;
            child.cancel();
        })
    };
    let report = run.done.take().await;
    link.abort();
    match report {
        Some(r) => Arc::new(r),
        // The child's run stopped without an end: the runtime is suspending (a clean
        // shutdown). This task gets no answer: it is dropped after the grace period and
        // runs again at the next start, when it finds the resumed child.
        None => {
            tracing::info!(child = %run.id, "child run suspended: waiting to be dropped");
            std::future::pending().await
        }
    }
}

fn end_state(report: &RunReport) -> State {
    report.status.end_state()
}

fn outcome_of(id: &str, name: &str, report: &Arc<RunReport>) -> ChildOutcome {
    let state = end_state(report);
    let failed = report
        .errored()
        .into_iter()
        .next()
        .and_then(|t| t.error.clone());
    let original: Option<Arc<dyn StdError + Send + Sync>> = match (&failed, state) {
        (Some(e), State::Failed) => Some(match &e.source {
            Some(src) => src.clone(),
            None => Arc::new(SynthesizedError(e.message.clone())),
        }),
        (None, State::Failed) => Some(Arc::new(SynthesizedError(format!(
            "child process `{name}` failed"
        )))),
        _ => None,
    };
    ChildOutcome {
        id: id.to_owned(),
        name: name.to_owned(),
        state,
        error: original.as_ref().map(ToString::to_string),
        original,
        report: Some(report.clone()),
    }
}

fn failure_of(outcome: &ChildOutcome) -> ChildProcessFailed {
    ChildProcessFailed {
        name: outcome.name.clone(),
        process_id: outcome.id.clone(),
        original: outcome.original.clone().unwrap_or_else(|| {
            Arc::new(SynthesizedError(format!(
                "child process `{}` failed",
                outcome.name
            )))
        }),
    }
}

/// An error made up when a child ended without an error value of its own (its original
/// error was lost in a restart, or it was cancelled).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SynthesizedError(pub(crate) String);
