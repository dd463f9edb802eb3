//! Picking up after a restart: `resync` and the resumption of interrupted runs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::exec::Resume;
use crate::record::{ProcessRecord, RecordKind, RunMeta, State};
use crate::store::{Lease, Query, Store, StoreError, Update};

use super::{check_id, store_call, Definition, Error, Result, Runtime};

/// The end signal of a live run.
type LiveEnd = tokio::sync::watch::Receiver<Option<std::sync::Arc<super::Ended>>>;

impl Runtime {
    /// Syncs the definitions given to [`RuntimeBuilder::define`](super::RuntimeBuilder::define)
    /// (or to [`redefine`](Runtime::redefine)) with the store: missing records are created
    /// idle; name, description, parameters and metadata of existing records are updated
    /// without touching their run state; records of definitions no longer declared are
    /// deleted, with their task records, children and history.
    ///
    /// A record no longer declared whose run is active is cancelled first (optio's
    /// cancel-stale step): a run of this runtime is asked to stop, and the resync waits
    /// for it to end, up to [`RuntimeBuilder::resync_grace`](super::RuntimeBuilder::resync_grace)
    /// (then its record is deleted anyway, with a warning: [`ResyncReport::abandoned`]); a
    /// record with no run here (scheduled, or left active by a lost process) ends
    /// `cancelled` at once. Runs still defined are left alone. A record that does not
    /// allow a cancel ([`Definition::cancellable`](super::Definition::cancellable)) is
    /// kept until its run has ended ([`ResyncReport::kept_active`]).
    ///
    /// On a store shared by several workers, whose definitions may differ, records no
    /// longer declared here are left alone (listed in no report).
    ///
    /// # Errors
    ///
    /// [`Error::Store`](super::Error::Store).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::Definition;
    ///
    /// #[task] fn work() {}
    /// #[process] fn nightly(p: &mut Builder) { p.task(Work::new()); }
    ///
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory()
    ///     .register::<Nightly>()
    ///     .define(Definition::new("nightly", Nightly {})?)
    ///     .start()
    ///     .await?;
    /// // The next deploy no longer declares it: its record goes.
    /// rt.redefine(Vec::new())?;
    /// let report = rt.resync().await?;
    /// assert_eq!(report.deleted, vec!["nightly".to_string()]);
    /// assert!(rt.get("nightly").await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn resync(&self) -> Result<ResyncReport> {
        let defs = self
            .inner
            .definitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut report = ResyncReport::default();
        for d in &defs {
            check_id(&d.id)?;
            let d2 = d.clone();
            let (_, created) = self
                .inner
                .update(&d.id, move |cur| {
                    let mut r = match cur {
                        Some(r) => r.clone(),
                        None => ProcessRecord::new_root(
                            &d2.id,
                            d2.process_type,
                            &d2.name,
                            &d2.description,
                            d2.params.clone(),
                        ),
                    };
                    r.name.clone_from(&d2.name);
                    r.description.clone_from(&d2.description);
                    r.params = d2.params.clone();
                    r.metadata = d2.metadata.clone();
                    r.special = d2.special;
                    r.warning.clone_from(&d2.warning);
                    r.cancellable = d2.cancellable;
                    r.adhoc = false;
                    if r.schedule != d2.schedule {
                        r.schedule.clone_from(&d2.schedule);
                        r.last_fire = Some(crate::record::now_ms());
                    }
                    (Update::Put(Box::new(r)), cur.is_none())
                })
                .await?;
            if created {
                report.created.push(d.id.clone());
            } else {
                report.updated.push(d.id.clone());
            }
        }
        if self.inner.shared {
            // Other workers sharing the store may define records this one does not:
            // only a single-process store knows that a record is no longer defined.
            return Ok(report);
        }
        let mut query = Query::new();
        query.definitions = true;
        let defined = self.inner.read(move |s| s.list_all(&query)).await?;
        // Stale records: every cancel is asked for first, then one grace is waited out
        // for all of them, then they are deleted.
        let mut stale = Vec::new();
        for r in defined {
            if r.adhoc || r.depth != 0 || defs.iter().any(|d| d.id == r.id) {
                continue;
            }
            if r.state().is_active() {
                if !r.cancellable {
                    report.kept_active.push(r.id.clone());
                    continue;
                }
                if let Some(live) = self.cancel_stale(&r.id).await? {
                    report.cancelled.push(r.id.clone());
                    stale.push((r.id, Some(live)));
                    continue;
                }
                report.cancelled.push(r.id.clone());
            }
            stale.push((r.id, None));
        }
        let deadline = tokio::time::Instant::now() + self.inner.resync_grace;
        for (id, live) in stale {
            let mut force = false;
            if let Some((token, mut done)) = live {
                let ended = tokio::time::timeout_at(deadline, done.wait_for(Option::is_some))
                    .await
                    .is_ok();
                if !ended {
                    tracing::warn!(
                        run = %id,
                        grace_ms = self.inner.resync_grace.as_millis() as u64,
                        "cancel-stale grace exceeded: the run of a record no longer defined did not end; its record is deleted anyway"
                    );
                    // Its tracking goes before its record: nothing reaches the run
                    // through this runtime any more (its late end finds no record).
                    let mut active = self.inner.active();
                    if active.get(&id).is_some_and(|a| a.token == token) {
                        active.remove(&id);
                    }
                    drop(active);
                    report.abandoned.push(id.clone());
                    force = true;
                }
            }
            if self.delete_stale(&id, force).await? {
                report.deleted.push(id);
            } else if !force {
                // Active again (a launch came in between): it is left to a later resync.
                report.kept_active.push(id);
            }
        }
        Ok(report)
    }

    /// Replaces the declared definitions (those given to
    /// [`RuntimeBuilder::define`](super::RuntimeBuilder::define)); the next
    /// [`resync`](Runtime::resync) applies them: a configuration reloaded at run time,
    /// as optio's resync reads its definitions again. Registered processes with a schedule
    /// of their own and no definition keep theirs, as at start.
    ///
    /// # Errors
    ///
    /// As [`RuntimeBuilder::start`](super::RuntimeBuilder::start):
    /// [`Error::UnknownProcessType`](super::Error::UnknownProcessType),
    /// [`Error::MissingResource`](super::Error::MissingResource); the declared definitions
    /// are unchanged then.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::Definition;
    ///
    /// #[task] fn work() {}
    /// #[process] fn report(p: &mut Builder) { p.task(Work::new()); }
    ///
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().register::<Report>().start().await?;
    /// rt.redefine([Definition::new("daily-report", Report {})?])?;
    /// let sync = rt.resync().await?;
    /// assert_eq!(sync.created, vec!["daily-report".to_string()]);
    /// # Ok(()) }
    /// ```
    pub fn redefine(&self, definitions: impl IntoIterator<Item = Definition>) -> Result<()> {
        let defs = super::builder::checked_definitions(
            definitions.into_iter().collect(),
            &self.inner.registry,
            &self.inner.resources,
        )?;
        *self
            .inner
            .definitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = defs;
        Ok(())
    }

    /// Cancels active stale record `id`: the run of this runtime behind it (its lease
    /// token and its end signal, to wait for), or `None` once the record has ended
    /// `cancelled` at once (no run here: a scheduled record, or one a lost process left
    /// active).
    async fn cancel_stale(&self, id: &str) -> Result<Option<(u64, LiveEnd)>> {
        let live = self
            .inner
            .active()
            .get(id)
            .map(|a| (a.token, a.done.rx.clone()));
        match self.cancel(id).await {
            // Ended meanwhile, or already being cancelled: what is left is below.
            Ok(_) | Err(Error::NotCancellableState { .. }) => {}
            Err(Error::NotFound { .. } | Error::NotCancellable { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        if live.is_some() {
            return Ok(live);
        }
        // No run here: a record left `cancel_requested` or `cancelling` by a lost process
        // is settled now (a scheduled one was ended by the cancel).
        self.settle(id, None, State::Cancelled, None).await?;
        Ok(None)
    }

    /// Deletes stale record `id` with its task records, children and history, when it is
    /// not active (or regardless, when `force`d after the grace); whether it was.
    async fn delete_stale(&self, id: &str, force: bool) -> Result<bool> {
        let id = id.to_owned();
        self.inner
            .write(move |s| {
                let mut deleted = false;
                s.update(&id, &mut |cur| match cur {
                    Some(c) if !c.adhoc && (force || !c.state().is_active()) => {
                        deleted = true;
                        Update::Delete
                    }
                    _ => Update::Keep,
                })?;
                if deleted {
                    let mut batch = super::clearing(s, &id)?;
                    batch.delete_processes.push(id.clone());
                    s.apply(batch)?;
                }
                Ok((deleted, Vec::new()))
            })
            .await
    }

    /// Resumes every run a previous process left active.
    ///
    /// Children are resumed before their parents, so that a parent's task that runs
    /// again finds its children's runs live and re-attaches to them. On a shared store
    /// only the runs no live worker holds are taken (see [`take_over`](Runtime::take_over)).
    pub(super) async fn resume_all(&self) -> Result<()> {
        if self.inner.shared {
            self.take_over().await?;
            return Ok(());
        }
        let mut active = self
            .inner
            .read(|s| {
                let mut out = Vec::new();
                for state in State::ALL.into_iter().filter(|s| s.is_active()) {
                    out.extend(s.list_all(&Query::new().state(state))?);
                }
                Ok(out)
            })
            .await?;
        active.sort_by(|a, b| b.depth.cmp(&a.depth).then(a.created_at.cmp(&b.created_at)));
        for rec in active {
            if rec.kind != RecordKind::Process || !rec.state().is_active() {
                continue;
            }
            self.resume_one(rec, None).await?;
        }
        Ok(())
    }

    /// Claims run `id` for this worker; `None` when another live worker holds it.
    pub(super) async fn claim_run(&self, id: &str) -> Result<Option<Lease>> {
        let (id, worker, ttl) = (
            id.to_owned(),
            self.inner.worker.clone(),
            self.inner.lease_ms,
        );
        self.inner
            .write(move |s| match s.claim(&id, &worker, ttl) {
                Ok(l) => Ok((Some(l), Vec::new())),
                Err(StoreError::Leased { .. }) => Ok((None, Vec::new())),
                Err(e) => Err(e),
            })
            .await
    }

    /// Gives up a claim this worker made but does not run under.
    pub(super) async fn release_run(&self, lease: Lease) {
        let run = lease.run.clone();
        if let Err(e) = self
            .inner
            .write(move |s| Ok((s.release(&lease)?, Vec::new())))
            .await
        {
            tracing::warn!(run = %run, error = %e, "cannot release a run's lease");
        }
    }

    /// Resumes run `rec` under `lease` (claimed by the caller), or claims it first
    /// (nothing happens when another live worker holds it).
    pub(super) async fn resume_one(&self, rec: ProcessRecord, lease: Option<Lease>) -> Result<()> {
        if self.inner.active().contains_key(&rec.id) {
            return Ok(()); // live here already
        }
        let lease = match lease {
            Some(l) => l,
            None => match self.claim_run(&rec.id).await? {
                Some(l) => l,
                None => return Ok(()),
            },
        };
        let out = self.resume_claimed(rec, &lease).await;
        if !matches!(out, Ok(true)) {
            self.release_run(lease).await;
        }
        out.map(drop)
    }

    /// [`resume_one`](Runtime::resume_one) under `lease`; `true` when the run was
    /// started (it then owns the lease), `false` when it was settled or had ended.
    async fn resume_claimed(&self, rec: ProcessRecord, lease: &Lease) -> Result<bool> {
        let id = rec.id.clone();
        let token = rec.run.as_ref().map(|m| m.token);
        if matches!(rec.state(), State::CancelRequested | State::Cancelling) {
            // The cancel had been accepted before the restart: finish it.
            return self
                .settle(&id, token, State::Cancelled, None)
                .await
                .map(|()| false);
        }
        let Some(reg) = self.inner.registry.get(rec.process_type.as_str()).cloned() else {
            let msg = format!(
                "process type `{}` is not registered in this binary: the interrupted run was not resumed",
                rec.process_type
            );
            tracing::warn!(run = %id, "{msg}");
            return self
                .settle(&id, token, State::Failed, Some(msg))
                .await
                .map(|()| false);
        };
        let meta = rec.run.clone().unwrap_or(RunMeta {
            token: 0,
            fingerprint: 0,
            options: BTreeMap::new(),
            tasks: 0,
            idempotency_key: None,
            max_concurrency: None,
            resumes: 0,
            seq: 0,
            overlap_of: None,
            fired_at: None,
            traceparent: None,
        });
        // The stored rows are read while the graph is rebuilt (both take a while for a
        // large run).
        let rows = {
            let store = self.inner.store()?;
            let id = id.clone();
            tokio::task::spawn_blocking(move || store.resume_rows(&id))
        };
        let graph = match (reg.build)(rec.params.clone(), meta.options.clone()) {
            Ok(g) => g,
            Err(e) => {
                let msg = format!("the interrupted run could not be rebuilt: {e}");
                return self
                    .settle(&id, token, State::Failed, Some(msg))
                    .await
                    .map(|()| false);
            }
        };
        if let Err(e) = self.inner.check_resources(&graph) {
            let msg = format!("{e}: the interrupted run was not resumed");
            tracing::warn!(run = %id, "{msg}");
            return self
                .settle(&id, token, State::Failed, Some(msg))
                .await
                .map(|()| false);
        }
        if !graph.matches_fingerprint(meta.fingerprint) {
            let msg = format!(
                "the graph of `{}` changed since this run started (fingerprint {:016x}, now {:016x}): the interrupted run was not resumed",
                rec.process_type,
                meta.fingerprint,
                graph.fingerprint()
            );
            tracing::warn!(run = %id, "{msg}");
            return self
                .settle(&id, token, State::Failed, Some(msg))
                .await
                .map(|()| false);
        }
        let rows = store_call(rows).await?;
        // Attempt numbers of this resumption start above every number an earlier one
        // could have used (its starts may not have reached the disk): a task never sees
        // the same attempt number twice, so it can fence side effects with it.
        let resumes = meta.resumes.saturating_add(1);
        let mut resume = Resume {
            done: Vec::new(),
            attempts: graph
                .nodes
                .iter()
                .map(|n| resumes.saturating_mul(n.meta.policy.max_attempts.max(1)))
                .collect(),
        };
        for (i, row) in &rows {
            if let Some(a) = resume.attempts.get_mut(*i as usize) {
                *a = (*a).max(row.attempts);
            }
            if row.state == State::Done && (*i as usize) < graph.len() {
                // A result that is not valid JSON (a damaged store) is not trusted: the
                // task runs again.
                if let Some(json) = row
                    .result
                    .as_ref()
                    .filter(|j| serde_json::from_str::<&serde_json::value::RawValue>(j).is_ok())
                {
                    resume.done.push((
                        *i,
                        json.clone(),
                        row.attempts,
                        Duration::from_nanos(row.elapsed_ns),
                    ));
                }
            }
        }
        let hooks = self.inner.run_hooks(reg.hooks.clone());
        // scheduled or running: (re)start from scheduled so the driver's CAS applies; the
        // run is claimed again (a new lease token fences out anything older).
        let id2 = id.clone();
        let claimed = self
            .inner
            .write(move |store| {
                let rec = store.update(&id2, &mut |cur| match cur {
                    Some(r) if r.state().is_active() => {
                        let mut r = r.clone();
                        r.status.state = State::Scheduled;
                        if let Some(m) = &mut r.run {
                            m.resumes = resumes;
                        }
                        r.push_log(crate::record::Level::Info, "Resumed after restart".into());
                        Update::Put(Box::new(r))
                    }
                    _ => Update::Keep,
                })?;
                Ok((rec.filter(|r| r.state() == State::Scheduled), Vec::new()))
            })
            .await?;
        let Some(rec) = claimed else {
            return Ok(false);
        };
        tracing::info!(run = %id, worker = %self.inner.worker, finished = resume.done.len(), tasks = graph.len(), "resuming run");
        let token = rec.run.as_ref().map_or(0, |m| m.token);
        drop(self.spawn_run(rec, graph, hooks, Some(resume), token, lease.token, None));
        Ok(true)
    }
}

/// What [`Runtime::resync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResyncReport {
    /// Records created.
    pub created: Vec<String>,
    /// Records updated.
    pub updated: Vec<String>,
    /// Records deleted (no longer defined), those of `cancelled` included.
    pub deleted: Vec<String>,
    /// Records no longer defined whose run was active: cancelled, then deleted. A run of
    /// this runtime was asked to stop and waited for; a record with no run here ended
    /// `cancelled` at once.
    pub cancelled: Vec<String>,
    /// Of `cancelled`, the runs that had not ended when the resync grace
    /// ([`RuntimeBuilder::resync_grace`](super::RuntimeBuilder::resync_grace)) ran out:
    /// their records were deleted anyway (a warning is logged); their tasks may still be
    /// running until the cancel grace abandons them.
    pub abandoned: Vec<String>,
    /// Records no longer defined left alone because they are active and do not allow a
    /// cancel ([`Definition::cancellable`](super::Definition::cancellable)(false)), or
    /// were launched again during the resync: a later resync deletes them once ended.
    pub kept_active: Vec<String>,
}
