//! [`ParallelGroup`]: many children of one task, run with a concurrency limit.

use std::fmt;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::graph::process::Process;
use crate::record::State;
use crate::task::ctx::Ctx;

use super::{
    await_child, outcome_of, Child, ChildError, ChildProcessFailed, ChildProgress, ChildResult,
    ProgressCallback, SynthesizedError, Tracker,
};

/// Error returned by [`ParallelGroup::finish`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// Children failed and `survive_failure` was not set: every failure is listed.
    #[error("{} child process(es) failed: {}", failures.len(), failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Failed {
        /// Every failure, in spawn order.
        failures: Vec<ChildProcessFailed>,
        /// The result of every child.
        results: Vec<ChildResult>,
    },
    /// Children were cancelled and `survive_cancel` was not set; the parent's run has
    /// been asked to stop.
    #[error("child process(es) were cancelled: {}", cancelled.join(", "))]
    Cancelled {
        /// Ids of the cancelled children.
        cancelled: Vec<String>,
        /// The result of every child.
        results: Vec<ChildResult>,
    },
    /// A child could not be launched.
    #[error(transparent)]
    Child(#[from] ChildError),
}

/// Options of [`Ctx::parallel_group`].
///
/// # Examples
///
/// ```
/// let opts = procession::GroupOptions::new().max_concurrency(4).survive_failure(true);
/// assert_eq!(opts.max_concurrency, 4);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct GroupOptions {
    /// Children running at once (default 10; zero is refused when a child is spawned).
    pub max_concurrency: usize,
    /// A failed child is a result, not an error, and does not cancel its siblings.
    pub survive_failure: bool,
    /// A cancelled child does not cancel its siblings and the parent.
    pub survive_cancel: bool,
    /// Progress callback over all children.
    pub on_progress: Option<ProgressCallback>,
}

impl fmt::Debug for GroupOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupOptions")
            .field("max_concurrency", &self.max_concurrency)
            .field("survive_failure", &self.survive_failure)
            .field("survive_cancel", &self.survive_cancel)
            .finish_non_exhaustive()
    }
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl GroupOptions {
    /// Ten at once, fail-fast, cancel cascades.
    pub fn new() -> Self {
        GroupOptions {
            max_concurrency: 10,
            survive_failure: false,
            survive_cancel: false,
            on_progress: None,
        }
    }

    /// Children running at once. Zero is refused when a child is spawned into the
    /// group ([`ChildError::Launch`] carrying an [`Error::Config`](crate::Error::Config)
    /// that names this method), like every other zero concurrency limit.
    #[must_use]
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// See the field.
    #[must_use]
    pub fn survive_failure(mut self, yes: bool) -> Self {
        self.survive_failure = yes;
        self
    }

    /// See the field.
    #[must_use]
    pub fn survive_cancel(mut self, yes: bool) -> Self {
        self.survive_cancel = yes;
        self
    }

    /// Progress callback over all children.
    #[must_use]
    pub fn on_progress(mut self, f: impl Fn(&[ChildProgress]) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }
}

/// Children started together; see [`Ctx::parallel_group`].
pub struct ParallelGroup {
    pub(super) ctx: Ctx,
    pub(super) opts: GroupOptions,
    pub(super) slots: Arc<Semaphore>,
    pub(super) cancel: CancellationToken,
    pub(super) running: Vec<tokio::task::JoinHandle<ChildResult>>,
    pub(super) tracker: Option<Tracker>,
}

impl fmt::Debug for ParallelGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelGroup")
            .field("opts", &self.opts)
            .field("spawned", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl ParallelGroup {
    /// Starts a child once a slot is free (waits otherwise). After the group or the
    /// parent was cancelled, no child is started: it is recorded as cancelled.
    ///
    /// # Errors
    ///
    /// [`ChildError::Launch`] (also for a group of zero `max_concurrency`, with an
    /// [`Error::Config`](crate::Error::Config) naming `GroupOptions::max_concurrency`),
    /// [`ChildError::NoRuntime`].
    pub async fn spawn<P: Process>(&mut self, child: Child<P>) -> Result<(), ChildError> {
        if self.opts.max_concurrency == 0 {
            return Err(ChildError::Launch {
                id: child.id.unwrap_or_else(|| P::META.name.to_owned()),
                source: crate::runtime::limits::zero("GroupOptions::max_concurrency"),
            });
        }
        let name = child
            .name
            .clone()
            .unwrap_or_else(|| P::META.name.to_owned());
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            () = self.cancel.cancelled() => None,
        };
        let Some(permit) = permit.filter(|_| !self.cancel.is_cancelled()) else {
            let id = child.id.clone().unwrap_or_default();
            self.running.push(tokio::spawn(async move {
                ChildResult {
                    process_id: id,
                    name,
                    state: State::Cancelled,
                    error: None,
                    original: None,
                    report: None,
                }
            }));
            return Ok(());
        };
        let spawner = self.ctx.spawner().ok_or(ChildError::NoRuntime)?;
        let (req, opts) = self.ctx.prepare_child(child)?;
        if let Some(t) = &self.tracker {
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
        self.ctx
            .log(crate::record::Level::Info, format!("Spawned child: {name}"));
        let group = self.cancel.clone();
        let fail_fast = !self.opts.survive_failure;
        let cascade = !self.opts.survive_cancel;
        let tracker = self.tracker.clone();
        self.running.push(tokio::spawn(async move {
            let report = await_child(group.clone(), run).await;
            drop(permit);
            let outcome = outcome_of(&id, &name, &report);
            if let Some(t) = &tracker {
                t.set_state(&id, outcome.state);
            }
            match outcome.state {
                // Fail fast: the siblings are cancelled, the parent is not.
                State::Failed if fail_fast => group.cancel(),
                State::Cancelled if cascade => group.cancel(),
                _ => {}
            }
            ChildResult {
                process_id: outcome.id,
                name: outcome.name,
                state: outcome.state,
                error: outcome.error,
                original: outcome.original,
                report: outcome.report,
            }
        }));
        Ok(())
    }

    /// Waits for every child and returns their results in spawn order.
    ///
    /// # Errors
    ///
    /// [`GroupError::Failed`] (every failure listed) when children failed and
    /// `survive_failure` is off; otherwise [`GroupError::Cancelled`] when children were
    /// cancelled and `survive_cancel` is off, in which case the parent's run is asked to
    /// stop. A failure dominates a cancel: it leaves the parent's run alone.
    pub async fn finish(self) -> Result<Vec<ChildResult>, GroupError> {
        let mut results = Vec::with_capacity(self.running.len());
        for h in self.running {
            match h.await {
                Ok(r) => results.push(r),
                Err(e) => results.push(ChildResult {
                    process_id: String::new(),
                    name: String::new(),
                    state: State::Failed,
                    error: Some(e.to_string()),
                    original: None,
                    report: None,
                }),
            }
        }
        let failures: Vec<ChildProcessFailed> = results
            .iter()
            .filter(|r| r.state == State::Failed)
            .map(|r| ChildProcessFailed {
                name: r.name.clone(),
                process_id: r.process_id.clone(),
                original: r.original.clone().unwrap_or_else(|| {
                    Arc::new(SynthesizedError(r.error.clone().unwrap_or_default()))
                }),
            })
            .collect();
        if !failures.is_empty() && !self.opts.survive_failure {
            return Err(GroupError::Failed { failures, results });
        }
        let cancelled: Vec<String> = results
            .iter()
            .filter(|r| r.state == State::Cancelled)
            .map(|r| r.process_id.clone())
            .collect();
        if !cancelled.is_empty() && !self.opts.survive_cancel {
            self.ctx.cancel();
            return Err(GroupError::Cancelled { cancelled, results });
        }
        Ok(results)
    }
}
