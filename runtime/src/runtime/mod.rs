//! The public [`Runtime`] (the top layer: the only place where every layer meets and the
//! only one naming `Runtime` or the API [`Error`]): launches runs of processes, keeps
//! their records in a store, resumes them after a restart, and answers queries.
//!
//! # What a crash can lose
//!
//! Every state change and every task result goes through one writer thread that applies
//! them in order and flushes once per group of writes (group commit). A task's end is
//! reported as finished (events, [`RunHandle::wait`], the run's record) only after its
//! write is flushed. A crash of the process (`kill -9`) therefore loses at most the
//! progress and log entries not yet flushed and the ends of tasks not yet reported, which
//! are then run again; never a result reported as finished. With the sled store, a power
//! loss can also lose the writes of the last ~500 ms unless the store is opened in strict
//! mode ([`RuntimeBuilder::strict`]), which fsyncs once per group.

pub(crate) mod children;
mod limits;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::events::{self, Event, EventKind, EventStream};
use crate::exec::{execute, Resume, RunConfig};
use crate::graph::process::{Process, ProcessMeta};
use crate::graph::{Graph, GraphError, TaskGraph};
use crate::hooks::Hooks;
use crate::journal::{start_writer, RunJournal, WriterHandle};
use crate::record::{InvalidTransition, ListFilter, ProcessRecord, RecordKind, RunMeta, State};
use crate::report::{ErrorReport, Json, RunReport, RunStatus, TaskReport, TaskStatus};
use crate::schedule::{plan, Schedule};
use crate::store::{
    Batch, MemoryStore, Page, Query, SledStore, Store, StoreError, TaskRow, Update,
};
use crate::task::ctx::RuntimeHandle;

/// Error returned by the runtime's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process's graph is invalid.
    #[error("invalid graph: {0}")]
    Graph(#[from] GraphError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A launch option or a process's parameters could not be serialized.
    #[error("`{name}` could not be serialized: {source}")]
    Serialize {
        /// What was being serialized.
        name: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// No record has this id.
    #[error("no process `{id}`")]
    NotFound {
        /// The id.
        id: String,
    },
    /// A record with this id exists already.
    #[error("process `{id}` already exists")]
    AlreadyExists {
        /// The id.
        id: String,
    },
    /// The record is not in a launchable state (idle, done, failed, cancelled).
    #[error("process `{id}` cannot be launched: it is {state}")]
    NotLaunchable {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// The record does not allow a cancel ([`Definition::cancellable`]`(false)`).
    #[error("process `{id}` is not cancellable")]
    NotCancellable {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// The record is not in a cancellable state: it has ended, or a cancel is under way.
    #[error("process `{id}` cannot be cancelled: it is {state}")]
    NotCancellableState {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// The record is not in a dismissable state (done, failed, cancelled).
    #[error("process `{id}` cannot be dismissed: it is {state}")]
    NotDismissable {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// The record is active; the operation needs it ended.
    #[error("process `{id}` is {state}; end it first")]
    Active {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// A record names a process type this runtime does not know.
    #[error("process type `{name}` is not registered with this runtime (use `RuntimeBuilder::register`)")]
    UnknownProcessType {
        /// The type's name.
        name: String,
    },
    /// A record of another process type exists under this id.
    #[error("process `{id}` is a `{found}`, not a `{expected}`")]
    WrongType {
        /// The id.
        id: String,
        /// The type of the stored record.
        found: String,
        /// The type launched.
        expected: String,
    },
    /// A refused state transition.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// A malformed schedule.
    #[error(transparent)]
    Schedule(#[from] crate::schedule::ScheduleError),
    /// An id is empty, too long or contains a NUL character.
    #[error("invalid process id `{id}`: {reason}")]
    InvalidId {
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// The runtime is shutting down and accepts no new work.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The run ended without a report (its driver was stopped).
    #[error("run `{run_id}` ended abnormally: {message}")]
    RunAborted {
        /// The run.
        run_id: String,
        /// What happened.
        message: String,
    },
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

type BuildFn = fn(Value, BTreeMap<String, Value>) -> Result<Graph>;

fn build_erased<P: Process>(params: Value, options: BTreeMap<String, Value>) -> Result<Graph> {
    let p: P = serde_json::from_value(params).map_err(|source| Error::Serialize {
        name: format!("parameters of `{}`", P::META.name),
        source,
    })?;
    Ok(Graph::with_options(p, options)?)
}

#[derive(Clone)]
struct Registered {
    meta: ProcessMeta,
    build: BuildFn,
    hooks: Option<Arc<dyn Hooks>>,
}

/// A process declared in code: resynced into the store as an idle record with this id.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// use procession::Definition;
/// #[task] fn ping() {}
/// #[process] fn health(p: &mut Builder) { p.task(Ping::new()); }
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::in_memory()
///     .register::<Health>()
///     .define(Definition::new("health-eu", Health {})?.metadata("region", "eu"))
///     .start()
///     .await?;
/// assert_eq!(rt.get("health-eu").await?.unwrap().state(), procession::State::Idle);
/// let report = rt.launch_id("health-eu").await?.wait().await?;
/// assert!(report.is_success());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Definition {
    id: String,
    process_type: &'static str,
    name: String,
    description: String,
    params: Value,
    metadata: BTreeMap<String, Value>,
    special: bool,
    warning: Option<String>,
    cancellable: bool,
    schedule: Option<Schedule>,
}

impl Definition {
    /// A definition of `process` under `id`.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when the parameters do not serialize.
    #[allow(clippy::needless_pass_by_value)] // takes the process like `launch` does
    pub fn new<P: Process>(id: impl Into<String>, process: P) -> Result<Self> {
        Ok(Definition {
            id: id.into(),
            process_type: P::META.name,
            name: P::META.name.to_owned(),
            description: P::META.description.to_owned(),
            params: to_value(&process, P::META.name)?,
            metadata: BTreeMap::new(),
            special: false,
            warning: None,
            cancellable: true,
            schedule: P::META.schedule.map(Schedule::cron).transpose()?,
        })
    }

    /// Launch the record on this schedule (default: the process's
    /// `#[process(schedule = ...)]`, if any).
    #[must_use]
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// Never launch it on a schedule, whatever the process declares.
    #[must_use]
    pub fn unscheduled(mut self) -> Self {
        self.schedule = None;
        self
    }

    /// A display name (default: the process type's name).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// A metadata pair, for filtering.
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Hidden from default views.
    #[must_use]
    pub fn special(mut self, special: bool) -> Self {
        self.special = special;
        self
    }

    /// Text shown before a launch.
    #[must_use]
    pub fn warning(mut self, warning: impl Into<String>) -> Self {
        self.warning = Some(warning.into());
        self
    }

    /// Whether a cancel is allowed (default true).
    #[must_use]
    pub fn cancellable(mut self, cancellable: bool) -> Self {
        self.cancellable = cancellable;
        self
    }
}

fn to_value<T: Serialize>(v: &T, name: &str) -> Result<Value> {
    serde_json::to_value(v).map_err(|source| Error::Serialize {
        name: name.to_owned(),
        source,
    })
}

enum StoreChoice {
    Memory,
    Path(PathBuf),
    Temporary,
    Custom(Arc<dyn Store>),
}

/// Configures and starts a [`Runtime`].
///
/// # Examples
///
/// ```
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// use std::time::Duration;
/// let rt = procession::Runtime::temporary()
///     .max_concurrency(8)
///     .cancel_grace(Duration::from_secs(2))
///     .progress_flush(Duration::from_millis(50))
///     .start()
///     .await?;
/// rt.shutdown().await?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct RuntimeBuilder {
    store: StoreChoice,
    strict: bool,
    max_concurrency: Option<usize>,
    process_concurrency: Option<usize>,
    grace: Duration,
    progress_flush: Duration,
    hooks: Vec<Arc<dyn Hooks>>,
    registry: HashMap<&'static str, Registered>,
    definitions: Vec<Definition>,
    task_records: bool,
}

impl fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("max_concurrency", &self.max_concurrency)
            .field("process_concurrency", &self.process_concurrency)
            .field("grace", &self.grace)
            .field("progress_flush", &self.progress_flush)
            .field("registered", &self.registry.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Default progress flush interval; `PROCESSION_PROGRESS_FLUSH_MS` overrides it.
const DEFAULT_PROGRESS_FLUSH: Duration = Duration::from_millis(100);

fn progress_flush_from_env() -> Duration {
    std::env::var("PROCESSION_PROGRESS_FLUSH_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(DEFAULT_PROGRESS_FLUSH, Duration::from_millis)
}

impl RuntimeBuilder {
    fn new(store: StoreChoice) -> Self {
        RuntimeBuilder {
            store,
            strict: false,
            max_concurrency: None,
            process_concurrency: None,
            grace: Duration::from_secs(5),
            progress_flush: progress_flush_from_env(),
            hooks: Vec::new(),
            registry: HashMap::new(),
            definitions: Vec::new(),
            task_records: true,
        }
    }

    /// Whether the tasks of each run are recorded as child records (default true). Without
    /// them a run keeps only its process record and its report: a little faster, but a
    /// run interrupted by a crash starts over instead of resuming task by task.
    pub fn task_records(mut self, yes: bool) -> Self {
        self.task_records = yes;
        self
    }

    /// At most `n` tasks run at once across all runs of this runtime (default: no limit;
    /// zero is refused by [`start`](RuntimeBuilder::start) with [`Error::Config`]).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// At most `n` tasks of one run run at once, unless the launch says otherwise (zero is
    /// refused by [`start`](RuntimeBuilder::start) with [`Error::Config`]).
    pub fn process_concurrency(mut self, n: usize) -> Self {
        self.process_concurrency = Some(n);
        self
    }

    /// How long a cancelled task may keep running before it is abandoned and ends
    /// errored (default 5 s). The first cancel of a run fixes its deadline.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How often buffered progress reaches the store (default 100 ms, or
    /// `PROCESSION_PROGRESS_FLUSH_MS`). Task ends are written at once regardless.
    pub fn progress_flush(mut self, every: Duration) -> Self {
        self.progress_flush = every.max(Duration::from_millis(1));
        self
    }

    /// Fsync once per group of writes (survives power loss; the default survives a crash
    /// of the process). Only the sled store is affected.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Hooks called for every run of this runtime (after the process's own).
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks.push(Arc::new(hooks));
        self
    }

    /// Declares a process type: runs of it can be launched by id and are resumed after a
    /// restart. A run whose type is not registered is not resumed (it ends failed).
    pub fn register<P: Process>(mut self) -> Self {
        self.registry.insert(
            P::META.name,
            Registered {
                meta: P::META,
                build: build_erased::<P>,
                hooks: P::hooks(),
            },
        );
        self
    }

    /// Declares a process record kept in sync with the store (see [`Runtime::resync`]).
    pub fn define(mut self, definition: Definition) -> Self {
        self.definitions.push(definition);
        self
    }

    /// Opens the store, resyncs the definitions and resumes the runs a previous process
    /// left unfinished.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero concurrency limit, [`Error::Store`] when the store
    /// cannot be opened (a damaged or newer store names its path).
    pub async fn start(self) -> Result<Runtime> {
        crate::runtime::limits::at_least_one(
            "RuntimeBuilder::max_concurrency",
            self.max_concurrency,
        )?;
        crate::runtime::limits::at_least_one(
            "RuntimeBuilder::process_concurrency",
            self.process_concurrency,
        )?;
        // A definition the scheduler could never launch is refused now, not at its fire.
        for d in &self.definitions {
            if !self.registry.contains_key(d.process_type) {
                return Err(Error::UnknownProcessType {
                    name: d.process_type.to_owned(),
                });
            }
        }
        let strict = self.strict;
        let store: Arc<dyn Store> = match self.store {
            StoreChoice::Memory => Arc::new(MemoryStore::new()),
            StoreChoice::Custom(s) => s,
            StoreChoice::Path(p) => {
                let s = blocking(move || SledStore::open(p)).await?;
                Arc::new(s.strict(strict))
            }
            StoreChoice::Temporary => {
                let s = blocking(SledStore::temporary).await?;
                Arc::new(s.strict(strict))
            }
        };
        let (events, _) = broadcast::channel(4096);
        let writer = start_writer(store.clone(), self.progress_flush, events.clone())?;
        let rt = Runtime {
            inner: Arc::new(Inner {
                location: store.location(),
                store: Mutex::new(Some(store)),
                worker: format!("worker-{:016x}", fastrand::u64(..)),
                writer,
                events,
                permits: self
                    .max_concurrency
                    .map(|n| Arc::new(Semaphore::new(crate::runtime::limits::permits(n)))),
                process_concurrency: self.process_concurrency,
                grace: self.grace,
                progress_flush: self.progress_flush,
                hooks: self.hooks,
                registry: self.registry,
                definitions: Mutex::new(self.definitions),
                active: Mutex::new(HashMap::new()),
                siblings: Mutex::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
                halt: CancellationToken::new(),
                scheduler_wake: Arc::new(tokio::sync::Notify::new()),
                clock: Clock {
                    wall0: std::time::SystemTime::now(),
                    inst0: tokio::time::Instant::now(),
                },
                task_records: self.task_records,
            }),
        };
        rt.resync().await?;
        rt.resume_all().await?;
        tokio::spawn(scheduler(Arc::downgrade(&rt.inner)));
        Ok(rt)
    }
}

/// A run registered as live before its launch is written.
struct Reserved {
    cancel: CancellationToken,
    tx: watch::Sender<Option<Arc<RunReport>>>,
}

struct ActiveRun {
    token: u64,
    cancel: CancellationToken,
    done: watch::Receiver<Option<Arc<RunReport>>>,
}

struct Inner {
    /// Taken (and so closed once the writer lets go of it) by `shutdown`.
    store: Mutex<Option<Arc<dyn Store>>>,
    /// Where the store is, for messages (also after it was closed).
    location: String,
    /// Identifies this runtime as the owner of the runs it claims.
    worker: String,
    writer: WriterHandle,
    events: broadcast::Sender<Event>,
    permits: Option<Arc<Semaphore>>,
    process_concurrency: Option<usize>,
    grace: Duration,
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
    halt: CancellationToken,
    scheduler_wake: Arc<tokio::sync::Notify>,
    clock: Clock,
    task_records: bool,
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
fn state_event(rec: &ProcessRecord) -> Event {
    Event {
        id: rec.id.clone(),
        root: rec.root.clone(),
        kind: EventKind::State { state: rec.state() },
    }
}

/// The async face of the store: reads on tokio's blocking pool, every write through the
/// writer (one ordered path, group commit, events after the flush).
impl Inner {
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

    /// Deletes the task records and results of `id`'s last run, durably.
    async fn clear_run(&self, id: &str) -> Result<()> {
        self.writer
            .write(Batch {
                clear_runs: vec![id.to_owned()],
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
        mut f: impl FnMut(Option<&ProcessRecord>) -> (Update, R) + Send + 'static,
    ) -> Result<(Option<ProcessRecord>, R)> {
        let id = id.to_owned();
        self.write(move |store| {
            let mut decided = None;
            let mut before = None;
            let mut put = false;
            let rec = store.update(&id, &mut |cur| {
                before = cur.map(ProcessRecord::state);
                let (u, r) = f(cur);
                put = matches!(u, Update::Put(_));
                decided = Some(r);
                u
            })?;
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
    process: P,
    id: Option<String>,
    options: BTreeMap<String, Value>,
    max_concurrency: Option<usize>,
    idempotency_key: Option<String>,
    ephemeral: bool,
    metadata: BTreeMap<String, Value>,
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
    /// ended relaunches it (the previous run's task records are deleted).
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

/// A run in progress: wait for its report, or cancel it.
pub struct RunHandle {
    id: String,
    cancel: CancellationToken,
    done: watch::Receiver<Option<Arc<RunReport>>>,
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
        self.done.borrow().is_some()
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

    /// A token that cancels this run's tasks; send it to another task or thread. The
    /// run's record then moves through `cancel_requested` and `cancelling` to
    /// `cancelled` like after [`cancel`](RunHandle::cancel).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits for the run to end and returns its report.
    ///
    /// # Errors
    ///
    /// [`Error::RunAborted`] when the run's driver stopped without a report (the tokio
    /// runtime shut down under it).
    pub async fn wait(mut self) -> Result<RunReport> {
        let report = match self.done.wait_for(Option::is_some).await {
            Ok(r) => r.as_ref().expect("waited for Some").clone(),
            Err(_) => {
                return Err(Error::RunAborted {
                    run_id: self.id.clone(),
                    message: "the run's driver stopped before it ended".into(),
                })
            }
        };
        drop(self.done);
        // The run's task drops its sender right after sending: give it a few turns to do
        // so, then the report is handed over without a copy. Copied only when another
        // handle of the same run still holds it.
        let mut report = report;
        for _ in 0..16 {
            match Arc::try_unwrap(report) {
                Ok(r) => return Ok(r),
                Err(shared) => report = shared,
            }
            tokio::task::yield_now().await;
        }
        Ok((*report).clone())
    }
}

/// How long a claim on a run lasts. The sled and memory stores serve one process, so
/// nothing takes an expired run over there; a shared store renews leases.
const LEASE_TTL_MS: u64 = 30_000;

/// What the launch's write found.
enum Enqueued {
    /// Written and claimed with this lease token.
    Written(Box<ProcessRecord>, u64),
    /// The idempotency key names this run already.
    Existing(String),
    /// Refused; nothing was written.
    Refused(Error),
}

fn check_id(id: &str) -> Result<()> {
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

/// How [`Runtime::shutdown_with`] stops the runtime. In every case launches and the
/// scheduler stop first, and the store is flushed and closed last.
///
/// | | records a cancel | the next start |
/// |---|---|---|
/// | `Suspend` (default) | no | resumes every unfinished run |
/// | `Drain(d)` | no | resumes what did not end within `d` |
/// | `Cancel` | yes | finds the runs `cancelled` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Shutdown {
    /// Stop starting tasks, give running tasks the cancel grace period to end, record no
    /// cancel: what a clean stop must do, since it must never lose more than a crash.
    #[default]
    Suspend,
    /// Let runs go on (starting tasks) until they end or this much time passed, then
    /// suspend what is left.
    Drain(Duration),
    /// Cancel every active run here and wait the cancel grace period for them to end.
    Cancel,
}

/// Options of [`Runtime::adhoc_define`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AdhocOptions {
    /// Delete the record as soon as a run of it ends.
    pub ephemeral: bool,
    /// Metadata pairs.
    pub metadata: BTreeMap<String, Value>,
}

impl Runtime {
    /// A runtime on the embedded sled store in directory `path` (created if missing):
    /// runs survive a crash and are resumed by the next `start`.
    pub fn open(path: impl Into<PathBuf>) -> RuntimeBuilder {
        RuntimeBuilder::new(StoreChoice::Path(path.into()))
    }

    /// A runtime on a sled store in a temporary directory, deleted at exit: for tests.
    pub fn temporary() -> RuntimeBuilder {
        RuntimeBuilder::new(StoreChoice::Temporary)
    }

    /// A runtime that keeps its records in memory: nothing survives the process.
    pub fn in_memory() -> RuntimeBuilder {
        RuntimeBuilder::new(StoreChoice::Memory)
    }

    /// A runtime on your own [`Store`].
    pub fn with_store(store: impl Store) -> RuntimeBuilder {
        RuntimeBuilder::new(StoreChoice::Custom(Arc::new(store)))
    }

    /// Names of the registered process types.
    pub fn registered(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.inner.registry.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The progress flush interval in force.
    pub fn progress_flush(&self) -> Duration {
        self.inner.progress_flush
    }

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
        let mut hooks: Vec<Arc<dyn Hooks>> = P::hooks().into_iter().collect();
        hooks.extend(self.inner.hooks.iter().cloned());
        let meta = RunMeta {
            token: 0,
            fingerprint: graph.fingerprint(),
            options: launch.options,
            tasks: graph.len() as u32,
            idempotency_key: launch.idempotency_key,
            max_concurrency: launch.max_concurrency,
            resumes: 0,
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

    /// Same as [`run`](Runtime::run).
    pub async fn launch_and_wait<P: Process>(
        &self,
        launch: impl Into<Launch<P>>,
    ) -> Result<RunReport> {
        self.run(launch).await
    }

    /// Launches the existing record `id` (a definition or an ad-hoc process), rebuilding
    /// its graph from the stored parameters.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::NotLaunchable`], [`Error::UnknownProcessType`].
    pub async fn launch_id(&self, id: &str) -> Result<RunHandle> {
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
        let reg = self
            .inner
            .registry
            .get(rec.process_type.as_str())
            .cloned()
            .ok_or_else(|| Error::UnknownProcessType {
                name: rec.process_type.clone(),
            })?;
        let options = BTreeMap::new();
        let graph = (reg.build)(rec.params.clone(), options.clone())?;
        let mut hooks: Vec<Arc<dyn Hooks>> = reg.hooks.clone().into_iter().collect();
        hooks.extend(self.inner.hooks.iter().cloned());
        let meta = RunMeta {
            token: 0,
            fingerprint: graph.fingerprint(),
            options,
            tasks: graph.len() as u32,
            idempotency_key: None,
            max_concurrency: None,
            resumes: 0,
        };
        self.enqueue(id, reg.meta.name, None, rec, meta, graph, hooks)
            .await
    }

    async fn next_id(&self) -> Result<u64> {
        self.inner.write(|s| Ok((s.next_id()?, Vec::new()))).await
    }

    /// Writes the record as scheduled (CAS on a launchable state) and claims the run,
    /// clears the previous run's task records, and starts the driver. With an
    /// idempotency key, the key is taken in the same write; a key taken meanwhile gives
    /// a handle on its run instead.
    #[allow(clippy::too_many_arguments)]
    async fn enqueue(
        &self,
        id: &str,
        process_type: &'static str,
        params: Option<Value>,
        fresh: ProcessRecord,
        mut meta: RunMeta,
        graph: Graph,
        hooks: Vec<Arc<dyn Hooks>>,
    ) -> Result<RunHandle> {
        // Distinguishes this run from earlier and later runs of the same record.
        meta.token = fastrand::u64(1..);
        let token = meta.token;
        let key = meta.idempotency_key.clone();
        let (id_owned, worker) = (id.to_owned(), self.inner.worker.clone());
        let decide =
            move |cur: Option<&ProcessRecord>| -> std::result::Result<ProcessRecord, Error> {
                let mut r = match cur {
                    None => fresh.clone(),
                    Some(cur)
                        if cur.kind != RecordKind::Process || !cur.state().is_launchable() =>
                    {
                        return Err(Error::NotLaunchable {
                            id: id_owned.clone(),
                            state: cur.state(),
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
                r.run = Some(meta.clone());
                Ok(r)
            };
        let id_owned = id.to_owned();
        let reserved = self.reserve(id, token);
        let outcome = self
            .inner
            .write(move |store| {
                if let Some(k) = &key {
                    if let Some(owner) = store.idempotent(k)? {
                        return Ok((Enqueued::Existing(owner), Vec::new()));
                    }
                }
                let mut refusal = None;
                let rec = store.update(&id_owned, &mut |cur| match decide(cur) {
                    Ok(r) => Update::Put(Box::new(r)),
                    Err(e) => {
                        refusal = Some(e);
                        Update::Keep
                    }
                })?;
                if let Some(e) = refusal {
                    return Ok((Enqueued::Refused(e), Vec::new()));
                }
                let Some(rec) = rec else {
                    return Ok((
                        Enqueued::Refused(Error::NotFound { id: id_owned }),
                        Vec::new(),
                    ));
                };
                if let Some(k) = &key {
                    store.claim_idempotent(k, &id_owned)?;
                }
                let lease = store.claim(&id_owned, &worker, LEASE_TTL_MS)?;
                let events = vec![state_event(&rec)];
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
        if rec.depth == 0 {
            self.delete_descendants(id).await?;
        }
        // The previous run's task records and results go; the launch is durable before
        // the call returns.
        self.inner.clear_run(id).await?;
        Ok(self.spawn_run(rec, graph, hooks, None, token, lease, reserved))
    }

    /// Makes run `token` of record `id` findable before its launch is written, so that a
    /// concurrent launch with the same idempotency key finds it live. `None` when another
    /// run of `id` is live here (the launch's write then refuses).
    fn reserve(&self, id: &str, token: u64) -> Option<Reserved> {
        let mut active = self.inner.active();
        if active.contains_key(id) {
            return None;
        }
        let cancel = CancellationToken::new();
        let (tx, rx) = watch::channel(None);
        active.insert(
            id.to_owned(),
            ActiveRun {
                token,
                cancel: cancel.clone(),
                done: rx,
            },
        );
        Some(Reserved { cancel, tx })
    }

    /// Forgets a reservation whose launch was refused.
    fn unreserve(&self, id: &str, token: u64) {
        let mut active = self.inner.active();
        if active.get(id).is_some_and(|a| a.token == token) {
            active.remove(id);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_run(
        &self,
        rec: ProcessRecord,
        graph: Graph,
        hooks: Vec<Arc<dyn Hooks>>,
        resume: Option<Resume>,
        token: u64,
        lease: u64,
        reserved: Option<Reserved>,
    ) -> RunHandle {
        let Reserved { cancel, tx } = reserved.unwrap_or_else(|| {
            let (tx, _) = watch::channel(None);
            Reserved {
                cancel: CancellationToken::new(),
                tx,
            }
        });
        let rx = tx.subscribe();
        self.inner.active().insert(
            rec.id.clone(),
            ActiveRun {
                token,
                cancel: cancel.clone(),
                done: rx.clone(),
            },
        );
        let handle = RunHandle {
            id: rec.id.clone(),
            cancel: cancel.clone(),
            done: rx,
            runtime: Some(Arc::downgrade(&self.inner)),
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let id = rec.id.clone();
            let run = Run {
                rec,
                graph,
                hooks,
                resume,
                token,
                lease,
                cancel,
            };
            let report = drive(inner.clone(), run).await;
            {
                let mut active = inner.active();
                if active.get(&id).is_some_and(|a| a.token == token) {
                    active.remove(&id);
                }
            }
            // A suspended run has no report: its waiters learn that the runtime stopped.
            if let Some(report) = report {
                let _ = tx.send(Some(Arc::new(report)));
            }
        });
        handle
    }

    /// A handle on an existing run: live when the run is active here (launched or
    /// resumed, or being launched), otherwise ended with the report the store holds.
    async fn attach(&self, id: &str) -> Result<RunHandle> {
        if let Some(h) = self.live_handle(id) {
            return Ok(h);
        }
        // Ended, or active in the store with no run here: after `start` every run this
        // store holds is resumed (children first), so such a record was orphaned; what
        // the store says is the answer.
        let report = self.report(id).await?;
        let (_tx, rx) = watch::channel(Some(Arc::new(report)));
        Ok(RunHandle {
            id: id.to_owned(),
            cancel: CancellationToken::new(),
            done: rx,
            runtime: Some(Arc::downgrade(&self.inner)),
        })
    }

    fn live_handle(&self, id: &str) -> Option<RunHandle> {
        self.inner.active().get(id).map(|a| RunHandle {
            id: id.to_owned(),
            cancel: a.cancel.clone(),
            done: a.done.clone(),
            runtime: Some(Arc::downgrade(&self.inner)),
        })
    }

    /// The report of run `id` rebuilt from the store (the last run of that record).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such process record exists.
    pub async fn report(&self, id: &str) -> Result<RunReport> {
        let rec = self
            .inner
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let rows = self.inner.rows(id).await?;
        Ok(RunReport::from_rows(&rec, &rows))
    }

    /// Cancels a scheduled or running process, and its child processes.
    ///
    /// A scheduled process ends `cancelled` at once. A running one moves to
    /// `cancel_requested` and its tasks are signalled; it ends `cancelled` once they
    /// return (or `failed` if one ignores the cancel past the grace period). A record that
    /// is active in the store with no run behind it in this runtime (its run was lost) is
    /// settled `cancelled` at once. Of several concurrent cancels exactly one succeeds;
    /// a cancel that races the run's end either wins (the run ends `cancelled`) or is
    /// refused because the run has ended.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::NotCancellable`] (the record does not allow a
    /// cancel), [`Error::NotCancellableState`] (not scheduled or running: ended, or
    /// already being cancelled).
    pub async fn cancel(&self, id: &str) -> Result<ProcessRecord> {
        let id_owned = id.to_owned();
        let rec = self
            .inner
            .try_update(id, move |cur| match cur {
                None => (
                    Update::Keep,
                    Some(Error::NotFound {
                        id: id_owned.clone(),
                    }),
                ),
                Some(r) if r.kind != RecordKind::Process => (
                    Update::Keep,
                    Some(Error::NotFound {
                        id: id_owned.clone(),
                    }),
                ),
                Some(r) if !r.cancellable => (
                    Update::Keep,
                    Some(Error::NotCancellable {
                        id: id_owned.clone(),
                        state: r.state(),
                    }),
                ),
                Some(r) if !r.state().is_cancellable() => (
                    Update::Keep,
                    Some(Error::NotCancellableState {
                        id: id_owned.clone(),
                        state: r.state(),
                    }),
                ),
                Some(r) => {
                    let mut r = r.clone();
                    if r.state() == State::Scheduled {
                        r.set_state(State::Cancelled);
                    } else {
                        r.set_state(State::CancelRequested);
                    }
                    (Update::Put(Box::new(r)), None)
                }
            })
            .await?;
        let live = self.inner.active().get(id).map(|a| a.cancel.clone());
        let mut rec = rec;
        match live {
            Some(token) => token.cancel(),
            None if rec.state() == State::CancelRequested => {
                // No run behind the record here: nothing will acknowledge the cancel.
                self.settle(id, None, State::Cancelled, None).await?;
                rec = self.inner.get(id).await?.unwrap_or(rec);
            }
            None => {}
        }
        self.cancel_children(id).await;
        Ok(rec)
    }

    /// Cancels the active children of `id` (through the store's links, so children with no
    /// run in memory are reached too).
    async fn cancel_children(&self, id: &str) {
        let parent = id.to_owned();
        let Ok(children) = self.inner.read(move |s| s.children(&parent)).await else {
            return;
        };
        for c in children {
            if c.state().is_active() && c.kind == RecordKind::Process {
                // Boxed: a tree of children is cancelled recursively.
                let _ = Box::pin(self.cancel(&c.id)).await;
            }
        }
    }

    /// Resets an ended process to idle: clears the last run's fields and deletes its task
    /// records.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::NotDismissable`] (not done, failed or cancelled).
    pub async fn dismiss(&self, id: &str) -> Result<ProcessRecord> {
        let id_owned = id.to_owned();
        let rec = self
            .inner
            .try_update(id, move |cur| match cur {
                None => (
                    Update::Keep,
                    Some(Error::NotFound {
                        id: id_owned.clone(),
                    }),
                ),
                Some(r) if !r.state().is_dismissable() || r.kind != RecordKind::Process => (
                    Update::Keep,
                    Some(Error::NotDismissable {
                        id: id_owned.clone(),
                        state: r.state(),
                    }),
                ),
                Some(r) => {
                    let mut r = r.clone();
                    if let Err(e) = r.transition(State::Idle) {
                        return (Update::Keep, Some(e.into()));
                    }
                    r.clear_run();
                    r.run = None;
                    (Update::Put(Box::new(r)), None)
                }
            })
            .await?;
        self.delete_descendants(id).await?;
        self.inner.clear_run(id).await?;
        Ok(rec)
    }

    /// The record `id`: a process, or a task of a run (`<run id>/<node id>`).
    pub async fn get(&self, id: &str) -> Result<Option<ProcessRecord>> {
        if let Some(r) = self.inner.get(id).await? {
            return Ok(Some(r));
        }
        // A task record: the longest prefix that is a run.
        for (pos, _) in id.match_indices('/').collect::<Vec<_>>().into_iter().rev() {
            let (run, node) = (&id[..pos], &id[pos + 1..]);
            if let Some(root) = self.inner.get(run).await? {
                let rows = self.rows(run).await?;
                return Ok(rows
                    .iter()
                    .find(|(_, r)| &*r.node == node)
                    .map(|(i, r)| r.to_record(&root, *i)));
            }
        }
        Ok(None)
    }

    async fn rows(&self, id: &str) -> Result<Vec<(u32, TaskRow)>> {
        self.inner.rows(id).await
    }

    /// Records matching `filter`, ordered by depth, then order among siblings, then
    /// creation time.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::{ListFilter, State};
    /// #[task] fn a() {}
    /// #[process] fn p(b: &mut Builder) { b.task(A::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().start().await?;
    /// rt.run(Launch::new(P {}).id("p-1").metadata("team", "alpha")).await?;
    /// let done = rt.list(ListFilter::new().state(State::Done).metadata("team", "alpha")).await?;
    /// assert_eq!(done.len(), 1);
    /// let tree = rt.list(ListFilter::new().root("p-1").with_tasks()).await?;
    /// assert_eq!(tree.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["p-1", "p-1/a"]);
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<ProcessRecord>> {
        let mut out = self
            .inner
            .read(move |store| {
                let mut query = Query::new();
                query.root.clone_from(&filter.root);
                if !filter.include_tasks {
                    // Task records are not in the store's index: only process records can be
                    // narrowed by state and metadata there.
                    query.states.clone_from(&filter.states);
                    query.metadata.clone_from(&filter.metadata);
                }
                let mut out = Vec::new();
                for r in store.list_all(&query)? {
                    if filter.include_tasks
                        && filter.root.as_ref().is_none_or(|root| &r.root == root)
                    {
                        for (i, row) in store.tasks(&r.id)? {
                            let t = row.to_record(&r, i);
                            if filter.matches(&t) {
                                out.push(t);
                            }
                        }
                    }
                    if filter.matches(&r) {
                        out.push(r);
                    }
                }
                Ok::<_, StoreError>(out)
            })
            .await?;
        out.sort_by(|a, b| {
            (a.depth, a.order, a.created_at, &a.id).cmp(&(b.depth, b.order, b.created_at, &b.id))
        });
        Ok(out)
    }

    /// One page of the process records matching `query`, ordered by creation time, then
    /// id; pass the page's `next` to [`Query::after`] for the next one.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::store::Query;
    /// #[task] fn a() {}
    /// #[process] fn p(b: &mut Builder) { b.task(A::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().start().await?;
    /// for i in 0..5 {
    ///     rt.run(Launch::new(P {}).id(format!("p-{i}"))).await?;
    /// }
    /// let first = rt.list_page(Query::new().process_type("p").limit(2)).await?;
    /// assert_eq!(first.records.len(), 2);
    /// let second = rt.list_page(Query::new().process_type("p").limit(2).after(first.next)).await?;
    /// assert_eq!(second.records.len(), 2);
    /// assert_ne!(first.records[0].id, second.records[0].id);
    /// # Ok(()) }
    /// ```
    pub async fn list_page(&self, query: Query) -> Result<Page> {
        self.inner.read(move |s| s.list(&query)).await
    }

    /// How many process records match `query`.
    pub async fn count(&self, query: Query) -> Result<u64> {
        self.inner.read(move |s| s.count(&query)).await
    }

    /// Creates an idle ad-hoc record for `process` under `id`; launch it with
    /// [`launch_id`](Runtime::launch_id). Its type must be registered.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`], [`Error::UnknownProcessType`].
    pub async fn adhoc_define<P: Process>(
        &self,
        id: &str,
        process: P,
        options: AdhocOptions,
    ) -> Result<ProcessRecord> {
        check_id(id)?;
        if !self.inner.registry.contains_key(P::META.name) {
            return Err(Error::UnknownProcessType {
                name: P::META.name.to_owned(),
            });
        }
        let params = to_value(&process, P::META.name)?;
        let mut fresh =
            ProcessRecord::new_root(id, P::META.name, P::META.name, P::META.description, params);
        fresh.adhoc = true;
        fresh.ephemeral = options.ephemeral;
        fresh.metadata = options.metadata;
        let id_owned = id.to_owned();
        let rec = self
            .inner
            .try_update(id, move |cur| match cur {
                Some(_) => (
                    Update::Keep,
                    Some(Error::AlreadyExists {
                        id: id_owned.clone(),
                    }),
                ),
                None => (Update::Put(Box::new(fresh.clone())), None),
            })
            .await?;
        Ok(rec)
    }

    /// Deletes an ad-hoc record and its task records.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] (also for records that are not ad-hoc), [`Error::Active`].
    pub async fn adhoc_delete(&self, id: &str) -> Result<()> {
        let id_owned = id.to_owned();
        let (_, refusal) = self
            .inner
            .update(id, move |cur| match cur {
                Some(r) if r.adhoc && r.state().is_active() => (
                    Update::Keep,
                    Some(Error::Active {
                        id: id_owned.clone(),
                        state: r.state(),
                    }),
                ),
                Some(r) if r.adhoc => (Update::Delete, None),
                _ => (
                    Update::Keep,
                    Some(Error::NotFound {
                        id: id_owned.clone(),
                    }),
                ),
            })
            .await?;
        if let Some(e) = refusal {
            return Err(e);
        }
        self.inner.clear_run(id).await?;
        Ok(())
    }

    /// Syncs the definitions given to [`RuntimeBuilder::define`] with the store: missing
    /// records are created idle; records of definitions no longer declared are deleted
    /// when not active; name, description, parameters and metadata of existing records
    /// are updated without touching their run state.
    ///
    /// # Errors
    ///
    /// [`Error::Store`].
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
        let mut query = Query::new();
        query.definitions = true;
        let defined = self.inner.read(move |s| s.list_all(&query)).await?;
        for r in defined {
            if r.adhoc || r.depth != 0 || defs.iter().any(|d| d.id == r.id) {
                continue;
            }
            if r.state().is_active() {
                report.kept_active.push(r.id.clone());
                continue;
            }
            let (_, deleted) = self
                .inner
                .update(&r.id, |cur| match cur {
                    Some(c) if !c.adhoc && !c.state().is_active() => (Update::Delete, true),
                    _ => (Update::Keep, false),
                })
                .await?;
            if deleted {
                self.inner.clear_run(&r.id).await?;
                report.deleted.push(r.id);
            }
        }
        Ok(report)
    }

    /// Resumes every run a previous process left active.
    ///
    /// Children are resumed before their parents, so that a parent's task that runs
    /// again finds its children's runs live and re-attaches to them.
    async fn resume_all(&self) -> Result<()> {
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
            self.resume_one(rec).await?;
        }
        Ok(())
    }

    async fn settle(
        &self,
        id: &str,
        token: Option<u64>,
        to: State,
        error: Option<String>,
    ) -> Result<()> {
        let (rec, ()) = self
            .inner
            .update(id, move |cur| match cur {
                Some(r)
                    if r.state().is_active()
                        && (token.is_none() || r.run.as_ref().map(|m| m.token) == token) =>
                {
                    let mut r = r.clone();
                    r.status.error.clone_from(&error);
                    if to == State::Cancelled && r.state() == State::CancelRequested {
                        r.set_state(State::Cancelling);
                    }
                    r.set_state(to);
                    (Update::Put(Box::new(r)), ())
                }
                _ => (Update::Keep, ()),
            })
            .await?;
        drop(rec);
        Ok(())
    }

    async fn resume_one(&self, rec: ProcessRecord) -> Result<()> {
        let id = rec.id.clone();
        let token = rec.run.as_ref().map(|m| m.token);
        if matches!(rec.state(), State::CancelRequested | State::Cancelling) {
            // The cancel had been accepted before the restart: finish it.
            return self.settle(&id, token, State::Cancelled, None).await;
        }
        let Some(reg) = self.inner.registry.get(rec.process_type.as_str()).cloned() else {
            let msg = format!(
                "process type `{}` is not registered in this binary: the interrupted run was not resumed",
                rec.process_type
            );
            tracing::warn!(run = %id, "{msg}");
            return self.settle(&id, token, State::Failed, Some(msg)).await;
        };
        let meta = rec.run.clone().unwrap_or(RunMeta {
            token: 0,
            fingerprint: 0,
            options: BTreeMap::new(),
            tasks: 0,
            idempotency_key: None,
            max_concurrency: None,
            resumes: 0,
        });
        // The stored rows are read while the graph is rebuilt (both take a while for a
        // large run).
        let rows = {
            let store = self.inner.store()?;
            let id = id.clone();
            tokio::task::spawn_blocking(move || store.tasks(&id))
        };
        let graph = match (reg.build)(rec.params.clone(), meta.options.clone()) {
            Ok(g) => g,
            Err(e) => {
                let msg = format!("the interrupted run could not be rebuilt: {e}");
                return self.settle(&id, token, State::Failed, Some(msg)).await;
            }
        };
        if graph.fingerprint() != meta.fingerprint {
            let msg = format!(
                "the graph of `{}` changed since this run started (fingerprint {:016x}, now {:016x}): the interrupted run was not resumed",
                rec.process_type,
                meta.fingerprint,
                graph.fingerprint()
            );
            tracing::warn!(run = %id, "{msg}");
            return self.settle(&id, token, State::Failed, Some(msg)).await;
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
        let mut hooks: Vec<Arc<dyn Hooks>> = reg.hooks.clone().into_iter().collect();
        hooks.extend(self.inner.hooks.iter().cloned());
        // scheduled or running: (re)start from scheduled so the driver's CAS applies; the
        // run is claimed again (a new lease token fences out anything older).
        let (id2, worker) = (id.clone(), self.inner.worker.clone());
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
                match rec.filter(|r| r.state() == State::Scheduled) {
                    Some(rec) => {
                        let lease = store.claim(&id2, &worker, LEASE_TTL_MS)?;
                        Ok((Some((rec, lease.token)), Vec::new()))
                    }
                    None => Ok((None, Vec::new())),
                }
            })
            .await?;
        let Some((rec, lease)) = claimed else {
            return Ok(());
        };
        tracing::info!(run = %id, finished = resume.done.len(), tasks = graph.len(), "resuming run");
        let token = rec.run.as_ref().map_or(0, |m| m.token);
        drop(self.spawn_run(rec, graph, hooks, Some(resume), token, lease, None));
        Ok(())
    }

    /// Events of every record: state changes (once durable), progress, log entries.
    /// A subscriber that falls behind receives [`EventKind::Lagged`] with the number of
    /// events it missed; the runtime never waits for it.
    pub fn subscribe(&self) -> EventStream {
        events::stream(self.inner.events.subscribe())
    }

    /// Waits for run `id` to end (if it is active here) and returns its report.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such record exists.
    pub async fn wait(&self, id: &str) -> Result<RunReport> {
        self.attach(id).await?.wait().await
    }

    /// Stops the runtime without losing work: [`Shutdown::Suspend`], what a SIGTERM
    /// handler should call on a deploy.
    ///
    /// The scheduler and launches stop, no task starts any more, running tasks have the
    /// cancel grace period to end (their ends are recorded), and no cancel is recorded:
    /// the next start on the same store resumes the runs as after a crash. Every pending
    /// write is then flushed and the store is closed, so the same directory can be opened
    /// again at once.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the final flush fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn a() {}
    /// #[process] fn p(b: &mut Builder) { b.task(A::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let dir = std::env::temp_dir().join(format!("procession-doc-sd-{}", std::process::id()));
    /// let rt = Runtime::open(&dir).register::<P>().start().await?;
    /// rt.run(P {}).await?;
    /// rt.shutdown().await?;
    /// // Closed: the directory opens again at once.
    /// let rt = Runtime::open(&dir).register::<P>().start().await?;
    /// # rt.shutdown().await?; let _ = std::fs::remove_dir_all(&dir);
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_with(Shutdown::Suspend).await
    }

    /// Stops the runtime the way `how` says; see [`Shutdown`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the final flush fails.
    pub async fn shutdown_with(&self, how: Shutdown) -> Result<()> {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.inner.scheduler_wake.notify_one();
        let grace = self.inner.grace;
        match how {
            Shutdown::Suspend => {}
            Shutdown::Drain(within) => {
                self.until_idle(tokio::time::Instant::now() + within).await;
            }
            Shutdown::Cancel => {
                let runs: Vec<String> = self.inner.active().keys().cloned().collect();
                for id in &runs {
                    let _ = self.cancel(id).await;
                }
                self.until_idle(tokio::time::Instant::now() + grace + Duration::from_secs(1))
                    .await;
            }
        }
        // What is left is suspended: it resumes at the next start.
        self.inner.halt.cancel();
        self.until_idle(tokio::time::Instant::now() + grace + Duration::from_secs(1))
            .await;
        let store = self
            .inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let closed = self.inner.writer.close().await;
        if let Some(store) = store {
            // Reads still under way hold the store a moment; then it is closed here, so
            // that the return of this call means the files are released.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        }
        Ok(closed?)
    }

    /// Waits until no run is active here, or `deadline`.
    async fn until_idle(&self, deadline: tokio::time::Instant) {
        while !self.inner.active().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Starts running a graph assembled by name (or an already built [`Graph`]). Such
    /// runs have no parameters to rebuild from, so they are not recorded or resumed.
    pub async fn launch_graph(&self, graph: impl IntoGraph) -> Result<RunHandle> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let graph = graph.into_graph()?;
        let id = format!("{}-{}", graph.name(), self.next_id().await?);
        let cancel = CancellationToken::new();
        let (tx, rx) = watch::channel(None);
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
        };
        tokio::spawn(async move {
            if let Some(report) = execute(graph, cfg).await {
                let _ = tx.send(Some(Arc::new(report)));
            }
        });
        Ok(RunHandle {
            id,
            cancel,
            done: rx,
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

impl Runtime {
    /// Launches record `id` on `schedule` from now on (replacing its schedule). The
    /// schedule is stored with the record, so it survives restarts.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::UnknownProcessType`] when its type is not registered
    /// (the scheduler could not launch it).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::{Definition, Schedule};
    /// use std::time::Duration;
    /// #[task] fn tick() {}
    /// #[process] fn ticker(p: &mut Builder) { p.task(Tick::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory()
    ///     .register::<Ticker>()
    ///     .define(Definition::new("ticker", Ticker {})?)
    ///     .start()
    ///     .await?;
    /// rt.schedule("ticker", Schedule::every(Duration::from_secs(3600))?).await?;
    /// assert!(rt.get("ticker").await?.unwrap().schedule.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn schedule(&self, id: &str, schedule: Schedule) -> Result<ProcessRecord> {
        self.set_schedule(id, Some(schedule)).await
    }

    /// Removes record `id`'s schedule.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`].
    pub async fn unschedule(&self, id: &str) -> Result<ProcessRecord> {
        self.set_schedule(id, None).await
    }

    async fn set_schedule(&self, id: &str, schedule: Option<Schedule>) -> Result<ProcessRecord> {
        let rec = self
            .inner
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if schedule.is_some() && !self.inner.registry.contains_key(rec.process_type.as_str()) {
            return Err(Error::UnknownProcessType {
                name: rec.process_type,
            });
        }
        let now = crate::record::now_ms_at(self.inner.clock.now());
        let id_owned = id.to_owned();
        let rec = self
            .inner
            .try_update(id, move |cur| match cur {
                Some(r) if r.kind == RecordKind::Process => {
                    let mut r = r.clone();
                    r.schedule.clone_from(&schedule);
                    r.last_fire = Some(now);
                    (Update::Put(Box::new(r)), None)
                }
                _ => (
                    Update::Keep,
                    Some(Error::NotFound {
                        id: id_owned.clone(),
                    }),
                ),
            })
            .await?;
        self.inner.scheduler_wake.notify_one();
        Ok(rec)
    }
}

/// Launches scheduled records when their schedule fires; see [`Schedule`].
async fn scheduler(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let rt = Runtime { inner: strong };
        let next = match scheduler_pass(&rt).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "scheduler pass failed");
                Some(rt.inner.clock.now() + Duration::from_secs(1))
            }
        };
        let wake = rt.inner.scheduler_wake.clone();
        let deadline = next.map(|t| rt.inner.clock.instant_for(t));
        drop(rt);
        match deadline {
            Some(d) => {
                tokio::select! {
                    () = tokio::time::sleep_until(d) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// Fires what is due; returns when to look again.
async fn scheduler_pass(rt: &Runtime) -> Result<Option<std::time::SystemTime>> {
    let mut query = Query::new();
    query.scheduled = true;
    let recs = rt.inner.read(move |s| s.list_all(&query)).await?;
    let now = rt.inner.clock.now();
    let mut earliest: Option<std::time::SystemTime> = None;
    for r in recs {
        let Some(s) = r.schedule.clone() else {
            continue;
        };
        if r.kind != RecordKind::Process {
            continue;
        }
        let last = r.last_fire.map_or_else(
            || std::time::UNIX_EPOCH + Duration::from_millis(r.created_at),
            |ms| std::time::UNIX_EPOCH + Duration::from_millis(ms),
        );
        let p = plan(&s, last, now, rt.inner.clock.wall0);
        if p.fire && r.state().is_active() {
            tracing::info!(id = %r.id, "schedule fired while the process is still active: not launched again");
        }
        let mut failure = None;
        if p.fire && !r.state().is_active() {
            let launched = rt.launch_id(&r.id).await;
            match &launched {
                Ok(h) => tracing::info!(id = %h.id(), "launched by its schedule"),
                Err(e) => tracing::warn!(id = %r.id, error = %e, "scheduled launch failed"),
            }
            if let Err(e) = launched {
                if !matches!(e, Error::ShuttingDown) {
                    failure = Some(format!("scheduled launch failed: {e}"));
                }
            }
        }
        if p.mark.is_some() || failure.is_some() {
            // The fire is marked, and a failed fire is written on the record's log: a
            // schedule never fails silently.
            let mark = p.mark.map(crate::record::now_ms_at);
            rt.inner
                .update(&r.id, move |cur| match cur {
                    Some(c) => {
                        let mut c = c.clone();
                        if let Some(m) = mark {
                            c.last_fire = Some(m);
                        }
                        if let Some(msg) = &failure {
                            c.push_log(crate::record::Level::Error, msg.clone());
                        }
                        (Update::Put(Box::new(c)), ())
                    }
                    None => (Update::Keep, ()),
                })
                .await?;
        }
        if let Some(n) = p.next {
            earliest = Some(earliest.map_or(n, |e| e.min(n)));
        }
    }
    Ok(earliest)
}

/// Starts the children of one run's tasks.
pub(crate) struct ChildSpawner {
    inner: std::sync::Weak<Inner>,
    parent: String,
}

impl ChildSpawner {
    pub(crate) fn launch_child(
        &self,
        req: crate::runtime::children::ChildRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<crate::runtime::children::ChildRun>> + Send>,
    > {
        let inner = self.inner.upgrade();
        let parent = self.parent.clone();
        Box::pin(async move {
            let inner = inner.ok_or(Error::ShuttingDown)?;
            Runtime { inner }.launch_child(&parent, req).await
        })
    }

    pub(crate) fn events(&self) -> Option<broadcast::Receiver<Event>> {
        self.inner.upgrade().map(|i| i.events.subscribe())
    }
}

impl Runtime {
    /// Starts (or finds) the child `req.id` of run `parent`.
    async fn launch_child(
        &self,
        parent: &str,
        req: crate::runtime::children::ChildRequest,
    ) -> Result<crate::runtime::children::ChildRun> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        check_id(&req.id)?;
        let parent_rec = self
            .inner
            .get(parent)
            .await?
            .ok_or_else(|| Error::NotFound {
                id: parent.to_owned(),
            })?;
        if let Some(existing) = self.inner.get(&req.id).await? {
            // The task runs again (retry or restart): reuse what its children did. An
            // active child is re-attached whether or not its run was resumed yet; a
            // finished one gives its report.
            if existing.state().is_active() || existing.state() == State::Done {
                let handle = self.attach(&req.id).await?;
                return Ok(crate::runtime::children::ChildRun {
                    id: handle.id,
                    cancel: handle.cancel,
                    done: handle.done,
                });
            }
        }
        let siblings = self.next_sibling(parent).await?;
        let mut fresh = ProcessRecord::new_root(
            &req.id,
            req.process_type,
            &req.name,
            &req.description,
            req.params.clone(),
        );
        fresh.parent = Some(parent.to_owned());
        fresh.root.clone_from(&parent_rec.root);
        fresh.depth = parent_rec.depth.saturating_add(1);
        fresh.order = siblings;
        fresh.metadata.clone_from(&parent_rec.metadata);
        fresh.adhoc = true;
        let meta = RunMeta {
            token: 0,
            fingerprint: req.graph.fingerprint(),
            options: BTreeMap::new(),
            tasks: req.graph.len() as u32,
            idempotency_key: None,
            max_concurrency: None,
            resumes: 0,
        };
        let mut hooks = req.hooks;
        hooks.extend(self.inner.hooks.iter().cloned());
        let handle = self
            .enqueue(
                &req.id,
                req.process_type,
                Some(req.params),
                fresh,
                meta,
                req.graph,
                hooks,
            )
            .await?;
        Ok(crate::runtime::children::ChildRun {
            id: handle.id,
            cancel: handle.cancel,
            done: handle.done,
        })
    }

    /// The order of the next child of `parent`: counted in memory, from the store's
    /// count of its children the first time (one query per parent, not per child).
    async fn next_sibling(&self, parent: &str) -> Result<u32> {
        let known = self
            .inner
            .siblings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(parent)
            .copied();
        let n = match known {
            Some(n) => n,
            None => {
                let p = parent.to_owned();
                let n = self
                    .inner
                    .read(move |s| s.count(&Query::new().parent(p)))
                    .await?;
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        };
        let mut g = self
            .inner
            .siblings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = g.entry(parent.to_owned()).or_insert(n);
        let order = *slot;
        *slot = slot.saturating_add(1);
        Ok(order)
    }

    /// Deletes the records below root `id` (the children of its runs), with their tasks.
    async fn delete_descendants(&self, id: &str) -> Result<()> {
        let root = id.to_owned();
        let ids: Vec<String> = self
            .inner
            .read(move |s| {
                Ok(s.list_all(&Query::new().root(root.clone()))?
                    .into_iter()
                    .filter(|r| r.id != root)
                    .map(|r| r.id)
                    .collect())
            })
            .await?;
        if !ids.is_empty() {
            self.inner
                .writer
                .write(Batch {
                    delete_processes: ids,
                    ..Batch::default()
                })
                .await?;
        }
        Ok(())
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
    /// Records deleted (no longer defined).
    pub deleted: Vec<String>,
    /// Records no longer defined but left alone because they are active.
    pub kept_active: Vec<String>,
}

/// One run handed to [`drive`].
struct Run {
    rec: ProcessRecord,
    graph: Graph,
    hooks: Vec<Arc<dyn Hooks>>,
    resume: Option<Resume>,
    /// Distinguishes this run of the record from earlier and later ones.
    token: u64,
    /// The lease token every task row of this run carries (fencing).
    lease: u64,
    cancel: CancellationToken,
}

/// Runs one graph for record `rec` and writes the outcome; `None` when the runtime
/// suspended the run (nothing is recorded then: the next start resumes it).
async fn drive(inner: Arc<Inner>, run: Run) -> Option<RunReport> {
    let Run {
        rec,
        graph,
        hooks,
        resume,
        token,
        lease,
        cancel,
    } = run;
    let id = rec.id.clone();
    let run_meta = rec.run.clone();
    // scheduled -> running, unless a cancel got there first.
    let started = inner
        .update(&id, move |cur| match cur {
            Some(r) if r.run.as_ref().map(|m| m.token) == Some(token) => {
                let mut r = r.clone();
                match r.transition(State::Running) {
                    Ok(()) => (Update::Put(Box::new(r)), true),
                    Err(_) => (Update::Keep, false),
                }
            }
            _ => (Update::Keep, false),
        })
        .await;
    let running = match started {
        Ok((Some(_), true)) => true,
        Ok(_) => false,
        Err(e) => {
            tracing::error!(run = %id, error = %e, "cannot start run");
            false
        }
    };
    if !running {
        cancel.cancel();
    }
    // One shared copy of each task name, whatever the number of nodes running it.
    let mut names: rustc_hash::FxHashMap<&'static str, Arc<str>> = HashMap::default();
    let rows: Vec<TaskRow> = graph
        .nodes
        .iter()
        .map(|n| TaskRow {
            task: names
                .entry(n.meta.name)
                .or_insert_with(|| Arc::from(n.meta.name))
                .clone(),
            node: n.id.clone(),
            state: State::Scheduled,
            attempts: 0,
            started_at: None,
            ended_at: None,
            elapsed_ns: 0,
            skipped: false,
            error: None,
            chain: Vec::new(),
            progress: crate::record::Progress::default(),
            log: Vec::new(),
            result: None,
            lease,
        })
        .collect();
    let journal = if running && inner.task_records {
        Some(RunJournal::new(
            Arc::from(id.as_str()),
            rows,
            inner.writer.clone(),
            inner.progress_flush,
        ))
    } else {
        None
    };
    // The executor acknowledges a cancel: cancel_requested -> cancelling. A cancel that
    // came through the run's token alone (a parent cancelling its child, a user's token)
    // is recorded as requested first, so the record follows the state table.
    let ack = {
        let inner = inner.clone();
        let cancel = cancel.clone();
        let id = id.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            let _ = inner
                .update(&id, move |cur| match cur {
                    Some(r)
                        if matches!(r.state(), State::CancelRequested | State::Running)
                            && r.run.as_ref().map(|m| m.token) == Some(token) =>
                    {
                        let mut r = r.clone();
                        if r.state() == State::Running {
                            r.set_state(State::CancelRequested);
                        }
                        r.set_state(State::Cancelling);
                        (Update::Put(Box::new(r)), ())
                    }
                    _ => (Update::Keep, ()),
                })
                .await;
        })
    };
    let cfg = RunConfig {
        run_id: Arc::from(id.as_str()),
        max_concurrency: run_meta
            .as_ref()
            .and_then(|m| m.max_concurrency)
            .or(inner.process_concurrency),
        permits: inner.permits.clone(),
        hooks,
        cancel: cancel.clone(),
        halt: inner.halt.clone(),
        grace: inner.grace,
        journal: journal.clone(),
        resume,
        runtime: Some(RuntimeHandle(Arc::new(ChildSpawner {
            inner: Arc::downgrade(&inner),
            parent: id.clone(),
        }))),
    };
    let report = execute(graph, cfg).await;
    if let Some(j) = &journal {
        if let Err(e) = j.sync().await {
            tracing::error!(run = %id, error = %e, "cannot record the run's tasks");
        }
    }
    // Wait for the acknowledgement of a cancel, so that it is written before the end.
    if cancel.is_cancelled() {
        let _ = ack.await;
    } else {
        ack.abort();
    }
    let Some(mut report) = report else {
        return None; // suspended: the record stays active and is resumed at the next start
    };
    if !running {
        return Some(report);
    }
    let end = match report.status {
        RunStatus::Succeeded => State::Done,
        RunStatus::Failed => State::Failed,
        RunStatus::Cancelled => State::Cancelled,
    };
    let error = (end == State::Failed).then(|| run_error(&report));
    let id2 = id.clone();
    // The end is one write: the record's state (a cancel that came first wins: the run
    // ends cancelled, whatever its tasks did) and, for an ephemeral record, its deletion
    // with its children and task rows.
    let ended = inner
        .write(move |store| {
            let mut final_state = None;
            let mut delete = false;
            let rec = store.update(&id2, &mut |cur| match cur {
                Some(r)
                    if r.state().is_active() && r.run.as_ref().map(|m| m.token) == Some(token) =>
                {
                    let mut r = r.clone();
                    // A cancel that came before the end wins over a success (the table
                    // has no cancel_requested -> done); a task that ignored it past the
                    // grace period still fails the run.
                    let cancel_won = end == State::Done
                        && matches!(r.state(), State::CancelRequested | State::Cancelling);
                    let end = if cancel_won { State::Cancelled } else { end };
                    final_state = Some(end);
                    if r.ephemeral {
                        delete = true;
                        return Update::Delete;
                    }
                    if r.state() == State::CancelRequested {
                        r.set_state(State::Cancelling);
                    }
                    r.status.error = if end == State::Failed {
                        error.clone()
                    } else {
                        None
                    };
                    r.set_state(end);
                    if end == State::Done {
                        r.progress.percent = Some(100.0);
                    }
                    Update::Put(Box::new(r))
                }
                _ => Update::Keep,
            })?;
            let mut events = Vec::new();
            if delete {
                let mut doomed: Vec<String> = store
                    .list_all(&Query::new().root(id2.clone()))?
                    .into_iter()
                    .map(|r| r.id)
                    .filter(|c| c != &id2)
                    .collect();
                doomed.push(id2.clone());
                store.apply(Batch {
                    delete_processes: doomed,
                    ..Batch::default()
                })?;
            } else if let Some(r) = &rec {
                if final_state.is_some() {
                    events.push(state_event(r));
                }
            }
            Ok((final_state, events))
        })
        .await;
    match ended {
        Ok(Some(State::Cancelled)) if report.status != RunStatus::Cancelled => {
            // The cancel won the race with the end: the live report says what the store says.
            report.status = RunStatus::Cancelled;
        }
        Ok(_) => {}
        Err(e) => tracing::error!(run = %id, error = %e, "cannot record the run's end"),
    }
    drop(journal);
    Some(report)
}

/// The message stored on a failed run's record.
fn run_error(report: &RunReport) -> String {
    let errored: Vec<&TaskReport> = report.errored();
    match errored.first() {
        None => "the run failed".into(),
        Some(t) => {
            let msg = t.error.as_ref().map_or("", |e| e.message.as_str());
            if errored.len() == 1 {
                format!("task `{}` failed: {msg}", t.id)
            } else {
                format!(
                    "task `{}` failed: {msg} (and {} more)",
                    t.id,
                    errored.len() - 1
                )
            }
        }
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

impl RunReport {
    /// The report of record `rec`'s last run, rebuilt from its stored task rows.
    ///
    /// Everything read from a store is untrusted: a stored duration that is no
    /// [`Duration`] (NaN, negative, infinite, too large) is clamped, never a panic; a
    /// stored result that is not JSON is not passed on as one (the task is reported
    /// errored, saying its stored result is damaged).
    pub(crate) fn from_rows(rec: &ProcessRecord, rows: &[(u32, TaskRow)]) -> RunReport {
        let tasks = rows.iter().map(|(_, r)| task_from_row(r)).collect();
        RunReport {
            process: rec.process_type.clone(),
            run_id: rec.id.clone(),
            status: match rec.state() {
                State::Done => RunStatus::Succeeded,
                State::Cancelled => RunStatus::Cancelled,
                _ => RunStatus::Failed,
            },
            elapsed: stored_seconds(rec.status.duration),
            tasks,
        }
    }
}

/// A stored duration in seconds as a [`Duration`]: missing, NaN or negative is zero,
/// infinite or beyond [`Duration::MAX`] is [`Duration::MAX`].
pub(crate) fn stored_seconds(secs: Option<f64>) -> Duration {
    match secs {
        Some(s) if s > 0.0 => Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX),
        _ => Duration::ZERO,
    }
}

/// One task's entry rebuilt from its stored row.
fn task_from_row(r: &TaskRow) -> TaskReport {
    let mut status = match (r.state, r.skipped) {
        (State::Done, _) => TaskStatus::Success,
        (State::Failed, _) => TaskStatus::Errored,
        (_, true) => TaskStatus::Skipped,
        _ => TaskStatus::Cancelled,
    };
    let mut error = r.error.as_ref().map(|m| ErrorReport {
        message: m.clone(),
        chain: r.chain.clone(),
        downstream_impact: Vec::new(),
        source: None,
    });
    let result = match r.result.as_deref().map(Json::parse) {
        None => None,
        Some(Ok(json)) => Some(json),
        Some(Err(e)) => {
            let message = format!("the stored result of task `{}` is damaged: {e}", r.node);
            tracing::warn!(task = %r.node, "{message}");
            if status == TaskStatus::Success {
                status = TaskStatus::Errored;
                error = Some(ErrorReport {
                    chain: vec![message.clone()],
                    message,
                    downstream_impact: Vec::new(),
                    source: None,
                });
            }
            None
        }
    };
    TaskReport {
        id: r.node.clone(),
        name: Cow::Owned(r.task.to_string()),
        function: Cow::Borrowed(""),
        description: Cow::Borrowed(""),
        status,
        attempts: r.attempts,
        elapsed: Duration::from_nanos(r.elapsed_ns),
        result,
        error,
    }
}

#[cfg(test)]
mod stored_report_tests {
    use super::*;

    #[test]
    fn stored_seconds_never_panics() {
        assert_eq!(stored_seconds(None), Duration::ZERO);
        assert_eq!(stored_seconds(Some(f64::NAN)), Duration::ZERO);
        assert_eq!(stored_seconds(Some(-1.0)), Duration::ZERO);
        assert_eq!(stored_seconds(Some(f64::INFINITY)), Duration::MAX);
        assert_eq!(stored_seconds(Some(1e20)), Duration::MAX);
        assert_eq!(stored_seconds(Some(1.5)), Duration::from_millis(1500));
    }
}
