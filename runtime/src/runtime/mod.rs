//! The public [`Runtime`] (the top layer: the only place where every layer meets and the
//! only one naming `Runtime` or the API [`Error`]): launches runs of processes, keeps
//! their records in a store, resumes them after a restart, and answers queries.

mod builder;
pub(crate) mod children;
mod control;
mod deliveries;
mod drive;
mod error;
mod launch;
mod limits;
mod query;
mod remote;
mod resume;
mod retention;
mod scheduler;
mod shutdown;
mod spread;
mod workers;

pub use builder::{AdhocOptions, Definition, RuntimeBuilder};
pub use error::{Error, Result};
pub use launch::{IntoGraph, Launch};
pub use query::RunSummary;
pub use remote::{GroupCancel, LaunchSpec};
pub use resume::ResyncReport;
pub use shutdown::Shutdown;
pub use spread::{RemoteTaskError, TaskStats};

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventKind, EventStream};
use crate::hooks::Hooks;
use crate::journal::WriterHandle;
use crate::record::ProcessRecord;
use crate::report::RunReport;
use crate::store::{Batch, Query, Store, StoreError, TaskRow, Update};
use crate::task::resource::Resources;

use builder::{to_value, Registered};
use children::ChildSpawner;
use drive::{drive, Run};
use launch::{check_id, LEASE_TTL};
use scheduler::scheduler;

/// A run registered as live before its launch is written.
struct Reserved {
    cancel: CancellationToken,
    tx: EndTx,
    /// The run's end, for its handles (one seat count for all of them).
    end: End,
}

/// How a run ended, as its driver hands it to the run's handles: a take-once cell. The
/// last handle of the run to wait takes the report out of it (no copy, whatever the
/// thread that sent it is doing meanwhile); a handle that waits while other handles of
/// the run may still wait gets a copy.
pub(crate) struct Ended {
    /// The run's status (an event stream reads it without the report).
    pub(crate) status: crate::report::RunStatus,
    report: Mutex<Option<RunReport>>,
}

impl Ended {
    pub(crate) fn new(report: RunReport) -> Arc<Ended> {
        Arc::new(Ended {
            status: report.status,
            report: Mutex::new(Some(report)),
        })
    }
}

/// The sending side of a run's [`End`]: its driver sends the [`Ended`] cell once.
pub(crate) type EndTx = watch::Sender<Option<Arc<Ended>>>;

/// A handle's side of a run's end: the signal (`None` while the run runs) and a seat
/// among the run's handles, shared by all of them (its count says whether another handle
/// may still want the report).
#[derive(Clone)]
pub(crate) struct End {
    pub(crate) rx: watch::Receiver<Option<Arc<Ended>>>,
    seat: Arc<()>,
}

impl End {
    /// A run's end signal, not sent yet.
    pub(crate) fn channel() -> (EndTx, End) {
        let (tx, rx) = watch::channel(None);
        (
            tx,
            End {
                rx,
                seat: Arc::new(()),
            },
        )
    }

    /// The end of a run that has ended with `report`.
    pub(crate) fn ended(report: RunReport) -> End {
        let (_tx, rx) = watch::channel(Some(Ended::new(report)));
        End {
            rx,
            seat: Arc::new(()),
        }
    }

    /// Waits for the run's report: taken out of the cell when no other handle of the run
    /// remains, copied otherwise. `None` when the sender went without one.
    pub(crate) async fn take(mut self) -> Option<RunReport> {
        let ended = self.rx.wait_for(Option::is_some).await.ok()?.clone()?;
        drop(self.rx);
        let report = {
            let mut slot = ended
                .report
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Every handle holds a seat and reads (or not) before it lets go of it; new
            // handles are made only from existing ones (the runtime's copy goes before
            // the report is sent): alone, no other handle can read after this one.
            if Arc::strong_count(&self.seat) == 1 {
                slot.take()
            } else {
                slot.clone()
            }
        };
        drop(self.seat);
        report
    }
}

struct ActiveRun {
    token: u64,
    cancel: CancellationToken,
    done: End,
    /// The lease token of the run's claim (0 while its launch is being written).
    lease: u64,
    /// Stops the run without recording anything (its lease was taken by another worker).
    halt: Arc<crate::exec::Halt>,
}

struct Inner {
    /// Taken (and so closed once the writer lets go of it) by `shutdown`.
    store: Mutex<Option<Arc<dyn Store>>>,
    /// Where the store is, for messages (also after it was closed).
    location: String,
    /// Identifies this runtime as the owner of the runs it claims.
    worker: String,
    /// How long a claim on a run lasts, in ms (renewed every third of it on a shared
    /// store).
    lease_ms: u64,
    /// Whether other worker processes share the store (heartbeats and takeovers run).
    shared: bool,
    /// The store is the memory store, whose id counter is an atomic: run ids are taken
    /// in place, not on the blocking pool (see `Runtime::next_id`).
    in_memory: bool,
    /// Stops the heartbeat and takeover loops at shutdown.
    stop_loops: CancellationToken,
    /// This worker's row (see [`Runtime::workers`]).
    me: crate::store::WorkerInfo,
    writer: WriterHandle,
    events: broadcast::Sender<Event>,
    permits: Option<Arc<Semaphore>>,
    process_concurrency: Option<usize>,
    grace: Duration,
    /// How long a resync waits for the cancelled runs of records no longer defined.
    resync_grace: Duration,
    progress_flush: Duration,
    hooks: Vec<Arc<dyn Hooks>>,
    registry: HashMap<&'static str, Registered>,
    definitions: Mutex<Vec<Definition>>,
    active: Mutex<HashMap<String, ActiveRun>>,
    /// Children started so far per parent run (the order of the next one).
    siblings: Mutex<HashMap<String, u32>>,
    shutting_down: AtomicBool,
    /// Cancelled by a suspending shutdown: drivers stop starting tasks and end without
    /// recording an end, so the next start resumes their runs.
    halt: Arc<crate::exec::Halt>,
    scheduler_wake: Arc<tokio::sync::Notify>,
    clock: Clock,
    task_records: bool,
    /// Shared resources, by type (see [`RuntimeBuilder::resource`]).
    resources: Arc<Resources>,
    /// Ended runs each record keeps besides its current one.
    keep_runs: usize,
    /// The notification channels and delivery options.
    notifier: Arc<crate::notify::worker::Notifier>,
    /// The delivery worker, when this runtime sends notifications.
    deliverer: Option<crate::notify::worker::Worker>,
    /// Task spreading over the workers of a shared store, when on
    /// ([`RuntimeBuilder::spread_tasks`]).
    spread: Option<Arc<spread::Spread>>,
}

/// Wall time that follows tokio's clock (so a paused test clock drives the scheduler).
#[derive(Clone, Copy)]
struct Clock {
    wall0: std::time::SystemTime,
    inst0: tokio::time::Instant,
}

impl Clock {
    fn now(self) -> std::time::SystemTime {
        self.wall0 + self.inst0.elapsed()
    }

    /// [`now`](Clock::now) in ms since the Unix epoch.
    fn now_ms(self) -> u64 {
        crate::util::unix_ms(self.now())
    }

    fn instant_for(self, t: std::time::SystemTime) -> tokio::time::Instant {
        self.inst0 + t.duration_since(self.wall0).unwrap_or_default()
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T> {
    store_call(tokio::task::spawn_blocking(f)).await
}

/// Waits for a store call started on tokio's blocking pool.
async fn store_call<T>(call: tokio::task::JoinHandle<Result<T, StoreError>>) -> Result<T> {
    call.await
        .map_err(|e| Error::Store(StoreError::io("(store thread)", e)))?
        .map_err(Error::from)
}

/// The event of a record's state, as published once it is durable.
/// The batch that clears run `id`: its task rows, and the records below it (the children
/// of its runs, found through the store's root index). Written in the same write as the
/// record change that needs it (a relaunch, a dismiss, an ephemeral run's end).
pub(super) fn clearing(store: &dyn Store, id: &str) -> Result<Batch, StoreError> {
    let below = store
        .list_all(&Query::new().root(id))?
        .into_iter()
        .map(|r| r.id)
        .filter(|c| c != id)
        .collect();
    Ok(Batch {
        clear_runs: vec![id.to_owned()],
        delete_processes: below,
        ..Batch::default()
    })
}

/// [`Error::MissingResource`] for the first task of `graph` that needs a resource
/// `resources` lacks. Free for a graph none of whose tasks declares a resource (known
/// from its build); otherwise one pass over its nodes.
fn check_resources(resources: &Resources, graph: &crate::graph::Graph) -> Result<()> {
    if !graph.needs_resources {
        return Ok(());
    }
    for (node, id) in graph.nodes.iter().zip(graph.ids.iter()) {
        if let Some(key) = node.meta.resources.iter().find(|k| !resources.contains(k)) {
            return Err(Error::MissingResource {
                process: graph.name().to_owned(),
                task: id.to_string(),
                resource: key.type_name(),
            });
        }
    }
    Ok(())
}

/// The batch that keeps `prev`, a record as its ended run left it, in the history of
/// `owner` (with the rows of run `rows_of`), when the runtime keeps past runs and `prev`
/// had a run.
pub(super) fn archiving(keep: usize, owner: &str, prev: &ProcessRecord, rows_of: &str) -> Batch {
    let Some(run) = prev.run.as_ref().filter(|_| keep > 0) else {
        return Batch::default();
    };
    Batch {
        archive: vec![crate::store::Archive {
            owner: owner.to_owned(),
            run: crate::store::PastRun {
                seq: run.seq,
                record: prev.clone(),
            },
            rows_of: rows_of.to_owned(),
            keep,
        }],
        ..Batch::default()
    }
}

fn state_event(rec: &ProcessRecord) -> Event {
    Event {
        id: rec.id.clone(),
        run: rec.id.clone(),
        root: rec.root.clone(),
        kind: EventKind::State { state: rec.state() },
    }
}

/// The async face of the store: reads on tokio's blocking pool, every write through the
/// writer (one ordered path, group commit, events after the flush).
impl Inner {
    /// The registered process type `name`, or [`Error::UnknownProcessType`].
    fn registered(&self, name: &str) -> Result<&Registered> {
        self.registry
            .get(name)
            .ok_or_else(|| Error::UnknownProcessType {
                name: name.to_owned(),
            })
    }

    /// The hooks of a run: its process type's own (`own`), then the runtime's.
    fn run_hooks(&self, own: Option<Arc<dyn Hooks>>) -> Vec<Arc<dyn Hooks>> {
        own.into_iter().chain(self.hooks.iter().cloned()).collect()
    }

    /// The store, unless the runtime has shut down.
    fn store(&self) -> Result<Arc<dyn Store>> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(Error::ShuttingDown)
    }

    /// Runs a read against the store off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T> {
        let store = self.store()?;
        blocking(move || f(&*store)).await
    }

    /// Runs a write on the writer thread, in order with every other write; returns once
    /// it is durable (its events are published then).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<(T, Vec<Event>), StoreError> + Send + 'static,
    ) -> Result<T> {
        Ok(self.writer.op(f).await?)
    }

    /// Deletes what is left of deleted record `id`: its last run's task records and
    /// results, and its history, durably.
    async fn forget(&self, id: &str) -> Result<()> {
        self.writer
            .write(Batch {
                delete_processes: vec![id.to_owned()],
                ..Batch::default()
            })
            .await?;
        Ok(())
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveRun>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Atomic read-decide-write of record `id`, through the writer. A change of state is
    /// published as an event once durable.
    async fn update<R: Send + 'static>(
        &self,
        id: &str,
        f: impl FnMut(Option<&ProcessRecord>) -> (Update, R) + Send + 'static,
    ) -> Result<(Option<ProcessRecord>, R)> {
        self.update_leased(id, 0, f).await
    }

    /// [`update`](Inner::update) fenced by this worker's lease `token` on run `id`
    /// (none when 0): a worker that another took the run from gets
    /// [`StoreError::Fenced`] and writes nothing.
    async fn update_leased<R: Send + 'static>(
        &self,
        id: &str,
        token: u64,
        mut f: impl FnMut(Option<&ProcessRecord>) -> (Update, R) + Send + 'static,
    ) -> Result<(Option<ProcessRecord>, R)> {
        let id = id.to_owned();
        let owner = self.worker.clone();
        self.write(move |store| {
            let mut decided = None;
            let mut before = None;
            let mut put = false;
            let mut decide = |cur: Option<&ProcessRecord>| {
                before = cur.map(ProcessRecord::state);
                let (u, r) = f(cur);
                put = matches!(u, Update::Put(_));
                decided = Some(r);
                u
            };
            let rec = if token == 0 {
                store.update(&id, &mut decide)?
            } else {
                let lease = crate::store::Lease {
                    run: id.clone(),
                    owner: owner.clone(),
                    token,
                    expires_at: 0,
                };
                store.update_leased(&id, &lease, &mut decide)?
            };
            let events = match &rec {
                Some(r) if put && before != Some(r.state()) => vec![state_event(r)],
                _ => Vec::new(),
            };
            let decided = decided.ok_or_else(|| {
                StoreError::io(store.location(), "the update function did not run")
            })?;
            Ok(((rec, decided), events))
        })
        .await
    }

    /// [`update`](Inner::update) whose function may refuse with an error (nothing is
    /// written then); returns the record as written.
    async fn try_update(
        &self,
        id: &str,
        f: impl FnMut(Option<&ProcessRecord>) -> (Update, Option<Error>) + Send + 'static,
    ) -> Result<ProcessRecord> {
        match self.update(id, f).await? {
            (_, Some(refusal)) => Err(refusal),
            (Some(rec), None) => Ok(rec),
            (None, None) => Err(Error::NotFound { id: id.to_owned() }),
        }
    }

    /// Refuses `graph` when one of its tasks needs a resource this runtime lacks.
    fn check_resources(&self, graph: &crate::graph::Graph) -> Result<()> {
        check_resources(&self.resources, graph)
    }

    async fn get(&self, id: &str) -> Result<Option<ProcessRecord>> {
        let id = id.to_owned();
        self.read(move |s| s.get(&id)).await
    }

    async fn rows(&self, id: &str) -> Result<Vec<(u32, TaskRow)>> {
        let id = id.to_owned();
        self.read(move |s| s.tasks(&id)).await
    }
}

/// Runs processes, keeps their records, resumes them after a restart.
///
/// Cheap to clone: clones share the same store, limits and hooks.
///
/// # What a crash can lose
///
/// Every state change and every task result goes through one writer thread that applies
/// them in order and flushes once per group of writes (group commit). A task's end is
/// reported as finished (events, [`RunHandle::wait`], the run's record) only after its
/// write is flushed. A crash of the process (`kill -9`) therefore loses at most the
/// progress and log entries not yet flushed and the ends of tasks not yet reported, which
/// are then run again; never a result reported as finished. With the sled store, a power
/// loss can also lose the writes of the last ~500 ms unless the store is opened in strict
/// mode ([`RuntimeBuilder::strict`]), which fsyncs once per group.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task] fn add(a: u32, b: u32) -> u32 { a + b }
///
/// #[process]
/// fn sum(p: &mut Builder) {
///     let x = p.task(Add::new(1, 2));
///     p.task(Add::new(x, 10));
/// }
///
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::temporary().register::<Sum>().start().await?;
/// let run = rt.launch(Sum {}).await?;
/// let report = run.wait().await?;
/// assert_eq!(report.result::<u32>("add#1").unwrap(), 13);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("store", &self.inner.location)
            .field("registered", &self.registered())
            .finish_non_exhaustive()
    }
}

/// A run in progress: wait for its report, or cancel it.
pub struct RunHandle {
    id: String,
    cancel: CancellationToken,
    done: End,
    /// The runtime, for a recorded run (cancels go through its state machine).
    runtime: Option<std::sync::Weak<Inner>>,
}

impl fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunHandle")
            .field("id", &self.id)
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True once the run has ended.
    pub fn is_finished(&self) -> bool {
        self.done.rx.borrow().is_some()
    }

    /// Asks the run to stop, as [`Runtime::cancel`] does: tasks not started end
    /// cancelled, running tasks see [`Ctx::should_continue`](crate::Ctx::should_continue)
    /// turn false and are abandoned (ending errored) if they do not return within the
    /// runtime's grace period.
    ///
    /// # Errors
    ///
    /// As [`Runtime::cancel`]: [`Error::NotCancellable`] when the record does not allow
    /// a cancel (then nothing is signalled) or the run has ended.
    pub async fn cancel(&self) -> Result<()> {
        match self.runtime.as_ref().map(std::sync::Weak::upgrade) {
            Some(Some(inner)) => Runtime { inner }.cancel(&self.id).await.map(drop),
            // A graph run is not recorded: its token is all there is.
            None => {
                self.cancel.cancel();
                Ok(())
            }
            Some(None) => Err(Error::ShuttingDown),
        }
    }

    /// The events of this run as they happen: its record's state changes and rolled-up
    /// progress, and its tasks' state changes, progress and log entries. The stream
    /// starts at this call (earlier events are not replayed) and ends once the run has
    /// ended: its last event is always the run's end state (made from the report when
    /// the stream was opened after it). A run suspended by a shutdown ends the stream
    /// without one.
    ///
    /// Child processes started by its tasks are runs of their own and are not included;
    /// to follow a whole tree, filter [`Runtime::subscribe`] on [`Event::root`]. A run
    /// of [`Runtime::launch_graph`] keeps no records, so its stream is empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use procession::prelude::*;
    /// use procession::{EventKind, State};
    ///
    /// #[task]
    /// async fn step(ctx: &Ctx) {
    ///     ctx.progress(50.0, "halfway");
    /// }
    /// #[process]
    /// fn job(p: &mut Builder) { p.task(Step::new()); }
    ///
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().start().await?;
    /// let run = rt.launch(Launch::new(Job {}).id("job-1")).await?;
    /// let events: Vec<_> = run.events().collect().await;
    /// // Every event is of this run; the last one is its end.
    /// assert!(events.iter().all(|e| e.run == "job-1"));
    /// let last = events.last().unwrap();
    /// assert_eq!((last.id.as_str(), &last.kind), ("job-1", &EventKind::State { state: State::Done }));
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> EventStream {
        let Some(inner) = self.runtime.as_ref().and_then(std::sync::Weak::upgrade) else {
            return Box::pin(futures::stream::empty());
        };
        let rx = inner.events.subscribe();
        let mut done = self.done.rx.clone();
        // Also when the run is suspended (its sender goes without a report).
        let ended = async move {
            match done.wait_for(Option::is_some).await {
                Ok(r) => r.as_ref().map(|r| r.status.end_state()),
                Err(_) => None,
            }
        };
        crate::events::run_stream(rx, self.id.clone(), ended)
    }

    /// A token that cancels this run's tasks; send it to another task or thread. The
    /// run's record then moves through `cancel_requested` and `cancelling` to
    /// `cancelled` like after [`cancel`](RunHandle::cancel).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits for the run to end and returns its report.
    ///
    /// The report is handed over without a copy, unless another handle of the same run
    /// (an idempotent launch's, a [`Runtime::wait`] of the live run) may still wait for
    /// it: then this one gets a copy and the last one the original.
    ///
    /// The run's graph and executor state are freed only after the report is handed
    /// over; a large run's (4096 tasks or more) on tokio's blocking pool, so that a
    /// waiter running on the driver's worker thread does not wait for it.
    ///
    /// # Errors
    ///
    /// [`Error::RunAborted`] when the run's driver stopped without a report (the tokio
    /// runtime shut down under it).
    pub async fn wait(self) -> Result<RunReport> {
        let id = self.id;
        self.done.take().await.ok_or_else(|| Error::RunAborted {
            run_id: id,
            message: "the run's driver stopped before it ended".into(),
        })
    }
}

#[cfg(test)]
mod wait_tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::{End, Ended, RunHandle};
    use crate::report::{RunReport, RunStatus};

    fn report() -> RunReport {
        RunReport {
            process: "p".into(),
            run_id: "p-1".into(),
            status: RunStatus::Succeeded,
            elapsed: Duration::ZERO,
            tasks: Vec::with_capacity(4),
            handles: None,
        }
    }

    fn handle(done: End) -> RunHandle {
        RunHandle {
            id: "p-1".into(),
            cancel: CancellationToken::new(),
            done,
            runtime: None,
        }
    }

    /// A sender that stays a while after sending (a run's thread slower than the waiter)
    /// still hands its report over without a copy.
    #[tokio::test]
    async fn wait_hands_the_report_over_when_the_sender_lingers() {
        let (tx, end) = End::channel();
        let handle = handle(end);
        let sent = report();
        let tasks_at = sent.tasks.as_ptr() as usize;
        let sender = tokio::spawn(async move {
            let _ = tx.send(Some(Ended::new(sent)));
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(tx);
        });
        let got = handle.wait().await.unwrap();
        assert_eq!(
            got.tasks.as_ptr() as usize,
            tasks_at,
            "the report was copied"
        );
        sender.await.unwrap();
    }

    /// A sender's thread preempted after it closed the channel but before it let go of
    /// what it sent (held here for a while on purpose) does not make the waiter copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wait_takes_the_report_while_the_sender_still_holds_it() {
        let (tx, end) = End::channel();
        let handle = handle(end);
        let sent = report();
        let tasks_at = sent.tasks.as_ptr() as usize;
        let sender = tokio::spawn(async move {
            let ended = Ended::new(sent);
            let _ = tx.send(Some(ended.clone()));
            drop(tx);
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(ended);
        });
        let got = handle.wait().await.unwrap();
        assert_eq!(
            got.tasks.as_ptr() as usize,
            tasks_at,
            "the report was copied"
        );
        sender.await.unwrap();
    }

    /// Another handle of the same run may still wait: the first waiter gets a copy, the
    /// last one the report itself.
    #[tokio::test]
    async fn wait_copies_a_report_another_handle_holds() {
        let sent = report();
        let tasks_at = sent.tasks.as_ptr() as usize;
        let end = End::ended(sent);
        let other = handle(end.clone());
        let got = handle(end).wait().await.unwrap();
        assert_eq!(got.run_id, "p-1");
        assert_ne!(
            got.tasks.as_ptr() as usize,
            tasks_at,
            "taken from the other"
        );
        assert!(other.is_finished());
        let last = other.wait().await.unwrap();
        assert_eq!(
            last.tasks.as_ptr() as usize,
            tasks_at,
            "the report was copied"
        );
    }

    /// A run whose driver went without a report: its waiters are told so.
    #[tokio::test]
    async fn wait_reports_a_driver_gone_without_a_report() {
        let (tx, end) = End::channel();
        drop(tx);
        let err = handle(end).wait().await.unwrap_err();
        assert!(matches!(err, super::Error::RunAborted { .. }), "{err}");
    }
}
