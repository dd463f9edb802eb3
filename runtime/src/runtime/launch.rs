//! Launching runs: [`Launch`] options, `launch`/`run`/`launch_id`/`launch_graph`, the
//! write of a launch (`enqueue`) and the handing of a run to its driver (`spawn_run`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::exec::{execute, run_span, Remains, Resume, RunConfig};
use crate::graph::process::Process;
use crate::graph::{Graph, GraphError, TaskGraph};
use crate::hooks::Hooks;
use crate::record::{ProcessRecord, RecordKind, RunMeta, State};
use crate::report::RunReport;
use crate::store::{Batch, Keyed, StoreError, Update};

use super::{
    archiving, clearing, drive, state_event, to_value, ActiveRun, End, Ended, Error, Reserved,
    Result, Run, RunHandle, Runtime,
};

/// A launch of a process with options: id, launch options, concurrency, idempotency key.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// #[task] fn dump() {}
/// #[process]
/// fn job(p: &mut Builder) { if p.option("debug").unwrap_or(false) { p.task(Dump::new()); } }
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::in_memory().start().await?;
/// let run = rt.launch(Launch::new(Job {}).id("job-1").option("debug", true)?.max_concurrency(2)).await?;
/// assert_eq!(run.id(), "job-1");
/// assert_eq!(run.wait().await?.tasks.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Launch<P> {
    pub(super) process: P,
    pub(super) id: Option<String>,
    pub(super) options: BTreeMap<String, Value>,
    pub(super) max_concurrency: Option<usize>,
    pub(super) idempotency_key: Option<String>,
    pub(super) ephemeral: bool,
    pub(super) metadata: BTreeMap<String, Value>,
}

impl<P: Process> Launch<P> {
    /// A launch of `process` with default settings.
    pub fn new(process: P) -> Self {
        Launch {
            process,
            id: None,
            options: BTreeMap::new(),
            max_concurrency: None,
            idempotency_key: None,
            ephemeral: false,
            metadata: BTreeMap::new(),
        }
    }

    /// The run's id (default: `<process name>-<n>`). Launching an id whose record has
    /// ended relaunches it: the previous run moves to the record's history (see
    /// [`RuntimeBuilder::keep_runs`](crate::RuntimeBuilder::keep_runs)) and its child
    /// processes are deleted.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// A launch option, read by the builder with [`Builder::option`](crate::Builder::option).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when `value` does not serialize.
    pub fn option(mut self, name: impl Into<String>, value: impl Serialize) -> Result<Self> {
        let name = name.into();
        let value = to_value(&value, &format!("launch option `{name}`"))?;
        self.options.insert(name, value);
        Ok(self)
    }

    /// At most `n` tasks of this run at once (zero is refused by the launch with
    /// [`Error::Config`]).
    #[must_use]
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// A second launch with the same key returns the run of the first instead of starting
    /// another (also across restarts).
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Delete the record (and its task records) as soon as the run ends.
    #[must_use]
    pub fn ephemeral(mut self) -> Self {
        self.ephemeral = true;
        self
    }

    /// A metadata pair stored on the record, for [`Runtime::list`].
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

impl<P: Process> From<P> for Launch<P> {
    fn from(process: P) -> Self {
        Launch::new(process)
    }
}

/// How long a claim on a run lasts by default (see [`RuntimeBuilder::lease`]). The sled
/// and memory stores serve one process, so nothing takes an expired run over there; on a
/// shared store the runtime renews its leases every third of this.
///
/// [`RuntimeBuilder::lease`]: super::RuntimeBuilder::lease
pub(super) const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// What the launch's write found.
pub(super) enum Enqueued {
    /// Written and claimed with this lease token.
    Written(Box<ProcessRecord>, u64),
    /// The idempotency key names this run already.
    Existing(String),
    /// Refused; nothing was written.
    Refused(Error),
}

pub(super) fn check_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > 512 {
        "it is longer than 512 bytes"
    } else if id.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidId {
        id: id.to_owned(),
        reason,
    })
}

impl Runtime {
    /// Builds the process's graph, writes its record (scheduled) and starts running it.
    ///
    /// # Errors
    ///
    /// [`Error::Graph`] when the graph is invalid (nothing is written then),
    /// [`Error::NotLaunchable`] when a record with this id is active,
    /// [`Error::ShuttingDown`] after [`shutdown`](Runtime::shutdown),
    /// [`Error::Config`] for [`Launch::max_concurrency`]`(0)` (nothing is written then).
    pub async fn launch<P: Process>(&self, launch: impl Into<Launch<P>>) -> Result<RunHandle> {
        let launch = launch.into();
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        crate::runtime::limits::at_least_one("Launch::max_concurrency", launch.max_concurrency)?;
        // The key first: every launch with a known key gets the one run it names.
        if let Some(key) = launch.idempotency_key.clone() {
            if let Some(owner) = self.inner.read(move |s| s.idempotent(&key)).await? {
                return self.attach(&owner).await;
            }
        }
        let params = to_value(
            &launch.process,
            &format!("parameters of `{}`", P::META.name),
        )?;
        let id = match launch.id.clone() {
            Some(id) => id,
            None => format!("{}-{}", P::META.name, self.next_id().await?),
        };
        check_id(&id)?;
        let graph = Graph::with_options(launch.process, launch.options.clone())?;
        let hooks = self.inner.run_hooks(P::hooks());
        let meta = RunMeta {
            token: 0,
            fingerprint: graph.fingerprint(),
            options: launch.options,
            tasks: graph.len() as u32,
            idempotency_key: launch.idempotency_key,
            max_concurrency: launch.max_concurrency,
            resumes: 0,
            seq: 0,
            overlap_of: None,
            fired_at: None,
            traceparent: super::drive::caller_trace(),
        };
        let fresh = ProcessRecord {
            adhoc: true,
            ephemeral: launch.ephemeral,
            metadata: launch.metadata,
            ..ProcessRecord::new_root(
                &id,
                P::META.name,
                P::META.name,
                P::META.description,
                params.clone(),
            )
        };
        self.enqueue(&id, P::META.name, Some(params), fresh, meta, graph, hooks)
            .await
    }

    /// Launches and waits: the report of a full run.
    pub async fn run<P: Process>(&self, launch: impl Into<Launch<P>>) -> Result<RunReport> {
        self.launch(launch).await?.wait().await
    }

    /// Launches the existing record `id` (a definition or an ad-hoc process), rebuilding
    /// its graph from the stored parameters.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::NotLaunchable`], [`Error::UnknownProcessType`].
    pub async fn launch_id(&self, id: &str) -> Result<RunHandle> {
        self.launch_fired(id, None).await
    }

    /// [`launch_id`](Runtime::launch_id), recording the schedule fire that asked for the
    /// run (ms since the Unix epoch), if any.
    pub(super) async fn launch_fired(&self, id: &str, fired_at: Option<u64>) -> Result<RunHandle> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let rec = self
            .inner
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if rec.kind != RecordKind::Process {
            return Err(Error::NotFound { id: id.to_owned() });
        }
        if !rec.state().is_launchable() {
            return Err(Error::NotLaunchable {
                id: id.to_owned(),
                state: rec.state(),
            });
        }
        if let Some(b) = &rec.launch_block {
            return Err(Error::LaunchBlocked {
                id: id.to_owned(),
                reason: b.reason.clone(),
            });
        }
        let reg = self.inner.registered(&rec.process_type)?.clone();
        let options = BTreeMap::new();
        let graph = (reg.build)(rec.params.clone(), options.clone())?;
        let hooks = self.inner.run_hooks(reg.hooks.clone());
        let meta = RunMeta {
            token: 0,
            fingerprint: graph.fingerprint(),
            options,
            tasks: graph.len() as u32,
            idempotency_key: None,
            max_concurrency: None,
            resumes: 0,
            seq: 0,
            overlap_of: None,
            fired_at,
            traceparent: super::drive::caller_trace(),
        };
        self.enqueue(id, reg.meta.name, None, rec, meta, graph, hooks)
            .await
    }

    /// Starts a run of scheduled record `owner` alongside its running one
    /// ([`Overlap::Allow`](crate::Overlap::Allow)): a record of its own,
    /// `<owner>@<seq>`, numbered as the owner's next run, that joins the owner's history
    /// when it ends.
    pub(super) async fn launch_overlap(&self, owner: &str, fired_at: u64) -> Result<RunHandle> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let rec = self
            .inner
            .get(owner)
            .await?
            .ok_or_else(|| Error::NotFound {
                id: owner.to_owned(),
            })?;
        let reg = self.inner.registered(&rec.process_type)?.clone();
        let seq = rec.runs.saturating_add(1);
        let id = format!("{owner}@{seq}");
        check_id(&id)?;
        let options = BTreeMap::new();
        let graph = (reg.build)(rec.params.clone(), options.clone())?;
        let hooks = self.inner.run_hooks(reg.hooks.clone());
        let meta = RunMeta {
            token: 0,
            fingerprint: graph.fingerprint(),
            options,
            tasks: graph.len() as u32,
            idempotency_key: None,
            max_concurrency: None,
            resumes: 0,
            seq,
            overlap_of: Some(owner.to_owned()),
            fired_at: Some(fired_at),
            traceparent: None,
        };
        let fresh = ProcessRecord {
            adhoc: true,
            metadata: rec.metadata.clone(),
            cancellable: rec.cancellable,
            special: rec.special,
            ..ProcessRecord::new_root(
                &id,
                &rec.process_type,
                &rec.name,
                &rec.description,
                rec.params.clone(),
            )
        };
        self.enqueue(&id, reg.meta.name, None, fresh, meta, graph, hooks)
            .await
    }

    /// The next number of the store's counter, for a run id.
    ///
    /// On a store of this process alone (memory, sled) the counter is incremented without
    /// a write cycle of its own: sled's counter is on disk before any record holding the
    /// id, since that record is written (and flushed) after it. The memory store's is an
    /// atomic, taken in place; sled's on the blocking pool (it waits for the store's
    /// write lock, which a large write holds for milliseconds). A shared store's counter
    /// is a round trip to the server: through the writer.
    pub(super) async fn next_id(&self) -> Result<u64> {
        if self.inner.in_memory {
            return Ok(self.inner.store()?.next_id()?);
        }
        if !self.inner.shared {
            return self.inner.read(crate::store::Store::next_id).await;
        }
        self.durable_next_id().await
    }

    /// [`next_id`](Runtime::next_id), on disk when returned.
    async fn durable_next_id(&self) -> Result<u64> {
        self.inner.write(|s| Ok((s.next_id()?, Vec::new()))).await
    }

    /// A number from the store's persisted counter, greater than every one it gave
    /// before (restarts included): the epoch of an admin event feed.
    #[cfg(feature = "admin")]
    pub(crate) async fn feed_epoch(&self) -> Result<u64> {
        self.durable_next_id().await
    }

    /// Writes the record as scheduled (CAS on a launchable state) and claims the run,
    /// clears the previous run's task records, and starts the driver. With an
    /// idempotency key, the key is taken in the same write; a key taken meanwhile gives
    /// a handle on its run instead.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn enqueue(
        &self,
        id: &str,
        process_type: &'static str,
        params: Option<Value>,
        fresh: ProcessRecord,
        mut meta: RunMeta,
        graph: Graph,
        hooks: Vec<Arc<dyn Hooks>>,
    ) -> Result<RunHandle> {
        // Every launch comes here (by value, by id, by a schedule, as a child): a graph
        // whose tasks need a resource this runtime lacks is refused before any write.
        self.inner.check_resources(&graph)?;
        // Distinguishes this run from earlier and later runs of the same record.
        meta.token = fastrand::u64(1..);
        let token = meta.token;
        let key = meta.idempotency_key.clone();
        let (id_owned, worker) = (id.to_owned(), self.inner.worker.clone());
        let keep = self.inner.keep_runs;
        let overlap_of = meta.overlap_of.clone();
        let seq = meta.seq;
        // Whether the launch's write also starts the run (see `start` below).
        let start = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let start_in_decide = start.clone();
        // The record written, and the record as its previous run left it (to keep in
        // its history), or the refusal.
        let decide = move |cur: Option<&ProcessRecord>| -> std::result::Result<
            (ProcessRecord, Option<ProcessRecord>),
            Error,
        > {
            let mut prev = None;
            let mut r = match cur {
                None => fresh.clone(),
                Some(cur) if cur.kind != RecordKind::Process || !cur.state().is_launchable() => {
                    return Err(Error::NotLaunchable {
                        id: id_owned.clone(),
                        state: cur.state(),
                    })
                }
                Some(cur) if cur.launch_block.is_some() => {
                    return Err(Error::LaunchBlocked {
                        id: id_owned.clone(),
                        reason: cur.launch_block.as_ref().and_then(|b| b.reason.clone()),
                    })
                }
                Some(cur) if cur.process_type != process_type => {
                    return Err(Error::WrongType {
                        id: id_owned.clone(),
                        found: cur.process_type.clone(),
                        expected: process_type.to_owned(),
                    })
                }
                Some(cur) => {
                    if cur.run.is_some() && cur.state() != State::Idle {
                        prev = Some(cur.clone());
                    }
                    let mut r = cur.clone();
                    r.clear_run();
                    if let Some(p) = &params {
                        r.params = p.clone();
                    }
                    r.ephemeral |= fresh.ephemeral;
                    r.metadata.extend(fresh.metadata.clone());
                    r
                }
            };
            r.transition(State::Scheduled)?;
            if start_in_decide.load(Ordering::Relaxed) {
                // scheduled -> running in the same write: the driver need not write it
                // (one write and one flush fewer per run); both changes are published.
                r.transition(State::Running)?;
            }
            let mut meta = meta.clone();
            if meta.overlap_of.is_some() {
                // Numbered by the scheduled record it overlaps (in the same write).
                r.runs = meta.seq;
            } else {
                r.runs = r.runs.saturating_add(1);
                meta.seq = r.runs;
            }
            // Any launch takes a queued fire: the run it asked for is this one.
            r.queued_fire = None;
            r.run = Some(meta);
            Ok((r, prev))
        };
        let id_owned = id.to_owned();
        let reserved = self.reserve(id, token);
        // The run is claimed before its record says it is active, so that no other
        // worker's takeover sees it active with no live lease. Not when another run of
        // the record is live here: its lease is this worker's, and the launch's write
        // refuses anyway.
        let claim_first = reserved.is_some();
        // A run claimed here is also started by the launch's write (scheduled, then
        // running, in one write): nothing can come between the two, since the run's
        // handle is not out yet and the record is claimed by this worker.
        start.store(claim_first, Ordering::Relaxed);
        let lease_ms = self.inner.lease_ms;
        let outcome = self
            .inner
            .write(move |store| {
                if let Some(k) = &key {
                    if let Some(owner) = store.idempotent(k)? {
                        return Ok((Enqueued::Existing(owner), Vec::new()));
                    }
                }
                if let Some(owner) = &overlap_of {
                    // An overlapping run takes the next number of the scheduled record;
                    // a launch of that record numbered meanwhile refuses this one.
                    let mut numbered = false;
                    let mut blocked = None;
                    store.update(owner, &mut |cur| match cur {
                        Some(o) if o.launch_block.is_some() => {
                            numbered = false;
                            blocked = o.launch_block.as_ref().map(|b| b.reason.clone());
                            Update::Keep
                        }
                        Some(o) if o.runs.saturating_add(1) == seq => {
                            numbered = true;
                            let mut o = o.clone();
                            o.runs = seq;
                            Update::Put(Box::new(o))
                        }
                        _ => {
                            numbered = false;
                            Update::Keep
                        }
                    })?;
                    if let Some(reason) = blocked {
                        return Ok((
                            Enqueued::Refused(Error::LaunchBlocked {
                                id: owner.clone(),
                                reason,
                            }),
                            Vec::new(),
                        ));
                    }
                    if !numbered {
                        return Ok((
                            Enqueued::Refused(Error::NotLaunchable {
                                id: owner.clone(),
                                state: State::Running,
                            }),
                            Vec::new(),
                        ));
                    }
                }
                let early = if claim_first {
                    match store.claim(&id_owned, &worker, lease_ms) {
                        Ok(l) => Some(l),
                        Err(StoreError::Leased { .. }) => {
                            // Another worker runs it: the record is active there.
                            let state = store.get(&id_owned)?.map_or(State::Running, |r| r.state());
                            return Ok((
                                Enqueued::Refused(Error::NotLaunchable {
                                    id: id_owned.clone(),
                                    state,
                                }),
                                Vec::new(),
                            ));
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    None
                };
                let mut refusal = None;
                let mut prev = None;
                let mut decided = |cur: Option<&ProcessRecord>| match decide(cur) {
                    Ok((r, p)) => {
                        prev = p;
                        Update::Put(Box::new(r))
                    }
                    Err(e) => {
                        refusal = Some(e);
                        Update::Keep
                    }
                };
                // With a key, the key is taken in the record's write: of two launches
                // with one key on two workers at once, one writes, the other gets its
                // run.
                let rec = match &key {
                    Some(k) => match store.update_keyed(k, &id_owned, &mut decided)? {
                        Keyed::Written(rec) => rec.map(|r| *r),
                        Keyed::Taken(owner) => {
                            if let Some(l) = &early {
                                store.release(l)?;
                            }
                            return Ok((Enqueued::Existing(owner), Vec::new()));
                        }
                    },
                    None => store.update(&id_owned, &mut decided)?,
                };
                if refusal.is_some() || rec.is_none() {
                    if let Some(l) = &early {
                        store.release(l)?;
                    }
                }
                if let Some(e) = refusal {
                    return Ok((Enqueued::Refused(e), Vec::new()));
                }
                let Some(rec) = rec else {
                    return Ok((
                        Enqueued::Refused(Error::NotFound { id: id_owned }),
                        Vec::new(),
                    ));
                };
                // In the same write: the previous run joins the history (with its task
                // rows), then its task rows and children go.
                let mut batch = prev.map_or_else(Batch::default, |p| {
                    archiving(keep, &id_owned, &p, &id_owned)
                });
                batch.extend(clearing(store, &id_owned)?);
                store.apply(batch)?;
                let lease = match early {
                    Some(l) => l,
                    None => store.claim(&id_owned, &worker, lease_ms)?,
                };
                let mut events = Vec::with_capacity(2);
                if rec.state() == State::Running {
                    let mut scheduled = state_event(&rec);
                    scheduled.kind = crate::events::EventKind::State {
                        state: State::Scheduled,
                    };
                    events.push(scheduled);
                }
                events.push(state_event(&rec));
                Ok((Enqueued::Written(Box::new(rec), lease.token), events))
            })
            .await;
        let (rec, lease) = match outcome {
            Ok(Enqueued::Written(rec, lease)) => (*rec, lease),
            Ok(Enqueued::Existing(owner)) => {
                self.unreserve(id, token);
                return self.attach(&owner).await;
            }
            Ok(Enqueued::Refused(e)) | Err(e) => {
                self.unreserve(id, token);
                return Err(e);
            }
        };
        Ok(self.spawn_run(rec, graph, hooks, None, token, lease, reserved))
    }

    /// Makes run `token` of record `id` findable before its launch is written, so that a
    /// concurrent launch with the same idempotency key finds it live. `None` when another
    /// run of `id` is live here (the launch's write then refuses).
    pub(super) fn reserve(&self, id: &str, token: u64) -> Option<Reserved> {
        let mut active = self.inner.active();
        if active.contains_key(id) {
            return None;
        }
        let cancel = CancellationToken::new();
        let (tx, end) = End::channel();
        active.insert(
            id.to_owned(),
            ActiveRun {
                token,
                cancel: cancel.clone(),
                done: end.clone(),
                lease: 0,
                halt: crate::exec::Halt::child(&self.inner.halt),
            },
        );
        Some(Reserved { cancel, tx, end })
    }

    /// Forgets a reservation whose launch was refused.
    pub(super) fn unreserve(&self, id: &str, token: u64) {
        let mut active = self.inner.active();
        if active.get(id).is_some_and(|a| a.token == token) {
            active.remove(id);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn_run(
        &self,
        rec: ProcessRecord,
        graph: Graph,
        hooks: Vec<Arc<dyn Hooks>>,
        resume: Option<Resume>,
        token: u64,
        lease: u64,
        reserved: Option<Reserved>,
    ) -> RunHandle {
        let Reserved { cancel, tx, end } = reserved.unwrap_or_else(|| {
            let (tx, end) = End::channel();
            Reserved {
                cancel: CancellationToken::new(),
                tx,
                end,
            }
        });
        let halt = crate::exec::Halt::child(&self.inner.halt);
        self.inner.active().insert(
            rec.id.clone(),
            ActiveRun {
                token,
                cancel: cancel.clone(),
                done: end.clone(),
                lease,
                halt: halt.clone(),
            },
        );
        let handle = RunHandle {
            id: rec.id.clone(),
            cancel: cancel.clone(),
            done: end,
            runtime: Some(Arc::downgrade(&self.inner)),
        };
        let inner = self.inner.clone();
        // Boxed: the driver's future holds the whole run (its graph, its executor's
        // state) and tokio moves a spawned future several times (into its task cell, out
        // as it completes): moving a box instead of kilobytes per run.
        tokio::spawn(Box::pin(async move {
            let id = rec.id.clone();
            let run = Run {
                started: rec.state() == State::Running,
                rec,
                graph,
                hooks,
                resume,
                token,
                lease,
                cancel,
                halt,
            };
            let scheduled = run.rec.schedule.is_some();
            let (report, remains) = drive(inner.clone(), run).await;
            {
                let mut active = inner.active();
                if active.get(&id).is_some_and(|a| a.token == token) {
                    active.remove(&id);
                }
            }
            // A fire queued while this run was active is launched now.
            if scheduled {
                inner.scheduler_wake.notify_one();
            }
            // A suspended run has no report: its waiters learn that the runtime stopped.
            // A run another worker took over (this one was fenced out) ends there: its
            // waiters here get that worker's report, read from the store.
            if let Some(report) = report {
                let tasks = report.tasks.len();
                let _ = tx.send(Some(Ended::new(report)));
                // Freed once the report is on its way, and out of its waiter's way.
                free(remains, tasks);
            } else if inner.shared && !inner.shutting_down.load(Ordering::Acquire) {
                drop(remains);
                let followed = Runtime { inner }.follow(&id);
                drop(id);
                if let Ok(report) = followed.wait().await {
                    let _ = tx.send(Some(Ended::new(report)));
                }
            }
        }));
        handle
    }

    /// A handle on an existing run: live when the run is active here (launched or
    /// resumed, or being launched), otherwise ended with the report the store holds.
    pub(super) async fn attach(&self, id: &str) -> Result<RunHandle> {
        if let Some(h) = self.live_handle(id) {
            return Ok(h);
        }
        if self.inner.shared {
            if let Some(rec) = self.inner.get(id).await? {
                if rec.state().is_active() && rec.kind == RecordKind::Process {
                    return Ok(self.follow(id));
                }
            }
        }
        // Ended, or active in the store with no run here: after `start` every run this
        // store holds is resumed (children first), so such a record was orphaned; what
        // the store says is the answer.
        let report = self.report(id).await?;
        Ok(RunHandle {
            id: id.to_owned(),
            cancel: CancellationToken::new(),
            done: End::ended(report),
            runtime: Some(Arc::downgrade(&self.inner)),
        })
    }

    /// A handle on run `id`, active on another worker sharing the store: its report
    /// comes once the store says the run ended (polled every quarter lease), or from
    /// this worker if it takes the run over meanwhile.
    fn follow(&self, id: &str) -> RunHandle {
        let (tx, end) = End::channel();
        let weak = Arc::downgrade(&self.inner);
        let every = std::time::Duration::from_millis((self.inner.lease_ms / 4).clamp(10, 1_000));
        let run = id.to_owned();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let rt = Runtime { inner };
                if let Some(h) = rt.live_handle(&run) {
                    drop(rt);
                    if let Ok(r) = h.wait().await {
                        let _ = tx.send(Some(Ended::new(r)));
                    }
                    return;
                }
                match rt.inner.get(&run).await {
                    Ok(Some(rec)) if rec.state().is_active() => {}
                    Ok(_) => {
                        if let Ok(report) = rt.report(&run).await {
                            let _ = tx.send(Some(Ended::new(report)));
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(run = %run, error = %e, "cannot follow a run of another worker");
                        return;
                    }
                }
            }
        });
        RunHandle {
            id: id.to_owned(),
            cancel: CancellationToken::new(),
            done: end,
            runtime: Some(Arc::downgrade(&self.inner)),
        }
    }

    pub(super) fn live_handle(&self, id: &str) -> Option<RunHandle> {
        self.inner.active().get(id).map(|a| RunHandle {
            id: id.to_owned(),
            cancel: a.cancel.clone(),
            done: a.done.clone(),
            runtime: Some(Arc::downgrade(&self.inner)),
        })
    }

    /// Starts running a graph assembled by name (or an already built [`Graph`]). Such
    /// runs have no parameters to rebuild from, so they are not recorded or resumed.
    pub async fn launch_graph(&self, graph: impl IntoGraph) -> Result<RunHandle> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let graph = graph.into_graph()?;
        self.inner.check_resources(&graph)?;
        let id = format!("{}-{}", graph.name(), self.next_id().await?);
        let cancel = CancellationToken::new();
        let (tx, end) = End::channel();
        let cfg = RunConfig {
            run_id: Arc::from(id.as_str()),
            max_concurrency: self.inner.process_concurrency,
            permits: self.inner.permits.clone(),
            hooks: self.inner.hooks.clone(),
            cancel: cancel.clone(),
            halt: self.inner.halt.clone(),
            grace: self.inner.grace,
            journal: None,
            resume: None,
            runtime: None,
            resources: self.inner.resources.clone(),
            span: run_span(graph.name(), &id, &self.inner.worker, 0),
            worker: Arc::from(self.inner.worker.as_str()),
            dispatch: None,
        };
        tokio::spawn(async move {
            let (report, remains) = execute(graph, cfg).await;
            if let Some(report) = report {
                let tasks = report.tasks.len();
                let _ = tx.send(Some(Ended::new(report)));
                free(remains, tasks);
            }
        });
        Ok(RunHandle {
            id,
            cancel,
            done: end,
            runtime: None,
        })
    }

    /// Runs a graph assembled by name (or an already built [`Graph`]) to the end.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn producer() -> i64 { 21 }
    /// #[task] fn consumer(x: i64) -> i64 { x * 2 }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let mut g = TaskGraph::new();
    /// let x = g.add("Producer", Producer::new())?;
    /// g.add("Consumer", Consumer::new(x))?;
    /// let rt = Runtime::in_memory().start().await?;
    /// let report = rt.run_graph(g).await?;
    /// assert_eq!(report.result::<i64>("consumer").unwrap(), 42);
    /// # Ok(()) }
    /// ```
    pub async fn run_graph(&self, graph: impl IntoGraph) -> Result<RunReport> {
        self.launch_graph(graph).await?.wait().await
    }
}

/// From this many tasks on, what a run leaves is freed on the blocking pool.
const FREE_ON_BLOCKING_FROM: usize = 4096;

/// Frees what a run of `tasks` tasks leaves (its graph, its executor's state: ~400
/// instructions a task, 10 ms or more for 100k tasks) once its report was sent. A waiter
/// that is a task of this runtime, woken by the send from this worker thread, runs next
/// on this thread (tokio's LIFO slot, which no other worker steals), after the freeing:
/// a large run's remains are freed on the blocking pool instead, so that the waiter (and
/// this worker's other tasks) need not wait for them. A small run's are freed here (at
/// most ~0.5 ms; yielding first cost 4% more instructions per run with 2,000
/// concurrent small runs).
fn free(remains: Remains, tasks: usize) {
    if tasks >= FREE_ON_BLOCKING_FROM {
        // Not awaited: nothing waits for the freeing. Should the runtime be shutting
        // down, the closure is dropped unrun, which frees them too.
        drop(tokio::task::spawn_blocking(move || drop(remains)));
    } else {
        drop(remains);
    }
}

/// Something the runtime can turn into a [`Graph`]: a [`TaskGraph`] or a built graph.
pub trait IntoGraph {
    /// Validates and converts.
    fn into_graph(self) -> Result<Graph, GraphError>;
}

impl IntoGraph for TaskGraph {
    fn into_graph(self) -> Result<Graph, GraphError> {
        self.build()
    }
}

impl IntoGraph for Graph {
    fn into_graph(self) -> Result<Graph, GraphError> {
        Ok(self)
    }
}
