//! Configuring and starting a runtime: [`RuntimeBuilder`], registered [`Definition`]s,
//! the store choice, and ad hoc definitions made at run time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, Semaphore};

use crate::graph::process::{Process, ProcessMeta};
use crate::graph::Graph;
use crate::hooks::Hooks;
use crate::journal::start_writer;
use crate::record::ProcessRecord;
use crate::schedule::Schedule;
use crate::store::{MemoryStore, SledStore, Store, Update};
use crate::task::resource::{Resource, Resources};

use super::{blocking, check_id, scheduler, Clock, Error, Inner, Result, Runtime};

pub(super) type BuildFn = fn(Value, BTreeMap<String, Value>) -> Result<Graph>;

pub(super) fn build_erased<P: Process>(
    params: Value,
    options: BTreeMap<String, Value>,
) -> Result<Graph> {
    let p: P = serde_json::from_value(params).map_err(|source| Error::Serialize {
        name: format!("parameters of `{}`", P::META.name),
        source,
    })?;
    Ok(Graph::with_options(p, options)?)
}

#[derive(Clone)]
pub(super) struct Registered {
    pub(super) meta: ProcessMeta,
    pub(super) build: BuildFn,
    pub(super) hooks: Option<Arc<dyn Hooks>>,
    /// The record `register` schedules for a process declaring a schedule.
    pub(super) scheduled: fn() -> Option<Result<Definition>>,
}

/// The definition of a process's own schedule: the record whose id is the process's name,
/// with no parameters. `None` when the process declares no schedule or takes parameters.
fn scheduled_definition<P: Process>() -> Option<Result<Definition>> {
    P::META.schedule?;
    P::without_parameters().map(|p| Definition::new(P::META.name, p))
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
    pub(super) id: String,
    pub(super) process_type: &'static str,
    pub(super) name: String,
    pub(super) description: String,
    pub(super) params: Value,
    pub(super) metadata: BTreeMap<String, Value>,
    pub(super) special: bool,
    pub(super) warning: Option<String>,
    pub(super) cancellable: bool,
    pub(super) schedule: Option<Schedule>,
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
            schedule: P::META
                .schedule
                .map(|cron| Schedule::from_meta(cron, P::META.tz, P::META.overlap))
                .transpose()?,
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

pub(super) fn to_value<T: Serialize>(v: &T, name: &str) -> Result<Value> {
    serde_json::to_value(v).map_err(|source| Error::Serialize {
        name: name.to_owned(),
        source,
    })
}

pub(super) enum StoreChoice {
    Memory,
    Path(PathBuf),
    Temporary,
    Custom(Arc<dyn Store>),
    /// A PostgreSQL database, by URL.
    #[cfg(feature = "postgres")]
    Postgres(String),
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
    pub(super) store: StoreChoice,
    pub(super) strict: bool,
    pub(super) sled_cache: u64,
    pub(super) max_concurrency: Option<usize>,
    pub(super) process_concurrency: Option<usize>,
    pub(super) grace: Duration,
    pub(super) resync_grace: Duration,
    pub(super) progress_flush: Duration,
    pub(super) hooks: Vec<Arc<dyn Hooks>>,
    pub(super) registry: HashMap<&'static str, Registered>,
    pub(super) definitions: Vec<Definition>,
    pub(super) task_records: bool,
    pub(super) resources: Resources,
    pub(super) keep_runs: usize,
    pub(super) event_buffer: usize,
    pub(super) channels: Vec<crate::notify::Channel>,
    pub(super) delivery: crate::notify::DeliveryOptions,
    pub(super) lease: Duration,
    pub(super) retention: Option<Duration>,
    pub(super) spread_tasks: bool,
    pub(super) spread_capacity: usize,
    pub(super) spread_cascade: bool,
}

impl fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("max_concurrency", &self.max_concurrency)
            .field("process_concurrency", &self.process_concurrency)
            .field("grace", &self.grace)
            .field("resync_grace", &self.resync_grace)
            .field("progress_flush", &self.progress_flush)
            .field("registered", &self.registry.keys().collect::<Vec<_>>())
            .field("resources", &self.resources.names())
            .finish_non_exhaustive()
    }
}

/// How long a resync waits by default for the cancelled runs of records no longer defined.
pub(super) const DEFAULT_RESYNC_GRACE: Duration = Duration::from_secs(30);
/// Ended runs each record keeps by default, besides its current one.
pub(super) const DEFAULT_KEEP_RUNS: usize = 10;
/// Events the runtime's event bus holds for a subscriber that has not read them yet.
pub(super) const DEFAULT_EVENT_BUFFER: usize = 16_384;

/// Default progress flush interval; `PROCESSION_PROGRESS_FLUSH_MS` overrides it.
pub(super) const DEFAULT_PROGRESS_FLUSH: Duration = Duration::from_millis(100);

pub(super) fn progress_flush_from_env() -> Duration {
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
            sled_cache: SledStore::DEFAULT_CACHE,
            max_concurrency: None,
            process_concurrency: None,
            grace: Duration::from_secs(5),
            resync_grace: DEFAULT_RESYNC_GRACE,
            progress_flush: progress_flush_from_env(),
            hooks: Vec::new(),
            registry: HashMap::new(),
            definitions: Vec::new(),
            task_records: true,
            resources: Resources::default(),
            keep_runs: DEFAULT_KEEP_RUNS,
            event_buffer: DEFAULT_EVENT_BUFFER,
            channels: Vec::new(),
            delivery: crate::notify::DeliveryOptions::default(),
            lease: super::LEASE_TTL,
            retention: None,
            spread_tasks: false,
            spread_capacity: super::spread::DEFAULT_CAPACITY,
            spread_cascade: true,
        }
    }

    /// How long this worker's claim on a run lasts without renewal (default 30 s, at
    /// least 30 ms). On a store shared by several workers (PostgreSQL) the runtime
    /// renews all its leases every third of this, and another worker takes a run over
    /// once its lease expired (a crashed or paused worker's runs wait at most about this
    /// long, plus half of it for the next takeover poll). Shorter means faster
    /// takeover, at the cost of more heartbeat statements and of fencing out a worker
    /// that pauses (a long GC-like stall, a saturated host) for longer than this. A
    /// worker whose renewals fail (it cannot reach the database) stops its runs by
    /// itself when none succeeded for four fifths of this (at least 100 ms before the
    /// expiry, at most a third of the lease), before another worker can take them over.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use procession::prelude::*;
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().lease(Duration::from_secs(10)).start().await?;
    /// # rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// How long finished runs are kept (default `None`: forever). With a retention, a
    /// background sweep (every quarter of it, between 100 ms and 1 min) deletes, 100
    /// per write, the run trees whose root ended longer ago than this: the root record
    /// with its child runs, task rows, kept history, lease and idempotency key (a later
    /// launch with the key starts a new run), and the delivered or failed notifications
    /// created as long ago.
    ///
    /// Only launched (ad-hoc) roots without a schedule that are done, failed or
    /// cancelled go. Never deleted: active runs, records defined in code
    /// (definitions) and their runs, scheduled records, idle records (dismissed, or
    /// defined ad-hoc), pending notifications; a child run goes only with its root
    /// (a kept root keeps its children), and a tree with any active record is kept
    /// whole. On a store shared by several workers (PostgreSQL) every worker with a
    /// retention sweeps; their sweeps skip each other's rows.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use procession::prelude::*;
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let week = Duration::from_secs(7 * 24 * 3600);
    /// let rt = Runtime::in_memory().retention(week).start().await?;
    /// # rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn retention(mut self, keep: impl Into<Option<Duration>>) -> Self {
        self.retention = keep.into();
        self
    }

    /// Spreads the tasks of each run over every worker sharing the store (PostgreSQL;
    /// off by default, and without effect on single-process stores). The worker holding
    /// a run's lease stays its coordinator (readiness, failures, skips, cancellation,
    /// the report and the run's end), but offers each ready task in a task queue;
    /// any worker that registered the process type claims it (a fencing token per task,
    /// an expiry on the database clock renewed by the heartbeat, a hard deadline of its
    /// timeouts, backoffs, the grace and one lease), rebuilds the run's graph from its
    /// stored parameters, runs the task's attempts and stores its result with one fenced
    /// statement; a late result of a worker that lost the claim is dropped and counted
    /// ([`Runtime::task_stats`](super::Runtime::task_stats)).
    ///
    /// A spread task runs inside the hooks of the worker running it (`around_task`, in
    /// the order of a local run); its attempt, progress and log entries reach its task
    /// row through its claim row (shown running once an attempt waits); a worker that shuts
    /// down cleanly gives up its unfinished claims so that another worker claims them
    /// at once. A spread task's child processes are launched by the worker running it,
    /// with the ids and records a local task's children get. A failed task's
    /// error reaches the report as its messages
    /// ([`RemoteTaskError`](super::RemoteTaskError)).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// // No effect on a single-process store: every task runs here.
    /// let rt = Runtime::in_memory().spread_tasks(true).start().await?;
    /// # rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn spread_tasks(mut self, on: bool) -> Self {
        self.spread_tasks = on;
        self
    }

    /// How many spread tasks (of any run, whoever coordinates it) this worker runs at
    /// once, at least 1 (default 256): a worker claims no more than this, so that the
    /// tasks of a wide run go to every worker. See
    /// [`spread_tasks`](RuntimeBuilder::spread_tasks).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().spread_tasks(true).spread_capacity(8).start().await?;
    /// # rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn spread_capacity(mut self, n: usize) -> Self {
        self.spread_capacity = n.max(1);
        self
    }

    /// Whether the spread tasks of a run coordinated here *cascade* (default on): the
    /// run's start writes a waiting row for every task whose dependencies have not all
    /// succeeded, and a successful finish makes the dependents whose dependencies all
    /// succeeded claimable in the same statement, instead of waiting for the
    /// coordinator to collect the end and offer them (a round trip through the
    /// coordinator per layer of a graph). Off: the coordinator offers every task once
    /// it is ready. Measured on 2 cores (2 runs of layered 10x100, 1/2/4 workers, % of
    /// a pgbench claim-and-finish ceiling): 40/32/27% on, 33/29/30% off; a wide graph
    /// has nothing to cascade. See [`spread_tasks`](RuntimeBuilder::spread_tasks).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().spread_tasks(true).spread_cascade(false).start().await?;
    /// # rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn spread_cascade(mut self, on: bool) -> Self {
        self.spread_cascade = on;
        self
    }

    /// Registers a shared resource (a database pool, an HTTP client, a configuration)
    /// that tasks read by type: as a `Res<T>` parameter of a `#[task]` function, or with
    /// [`Ctx::resource`](crate::Ctx::resource). One value per type (registering a type
    /// again replaces it); it is shared as an `Arc` by every task of every run, child
    /// runs and resumed runs included, and never stored.
    ///
    /// A graph with a task whose `Res<T>` the runtime does not hold is refused before
    /// it runs: by [`start`](RuntimeBuilder::start) for the processes of
    /// [`define`](RuntimeBuilder::define)d records (so a scheduled process cannot fail on
    /// it at its first fire), and by every launch, with [`Error::MissingResource`]
    /// naming the process, the task and the type.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    ///
    /// /// A stand-in for an HTTP client.
    /// struct Http { base: String }
    ///
    /// #[task]
    /// async fn fetch(http: Res<Http>, path: String) -> String {
    ///     format!("{}/{path}", http.base)
    /// }
    /// #[process]
    /// fn crawl(p: &mut Builder) { p.task(Fetch::new("index.html")); }
    ///
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory()
    ///     .resource(Http { base: "https://example.org".into() })
    ///     .start()
    ///     .await?;
    /// let report = rt.run(Crawl {}).await?;
    /// assert_eq!(report.result::<String>("fetch").unwrap(), "https://example.org/index.html");
    ///
    /// // Without the resource, the launch is refused before anything runs:
    /// let bare = Runtime::in_memory().start().await?;
    /// let err = bare.launch(Crawl {}).await.unwrap_err();
    /// assert!(matches!(err, procession::Error::MissingResource { .. }));
    /// # Ok(()) }
    /// ```
    pub fn resource<T: Resource>(self, value: T) -> Self {
        self.resource_shared(Arc::new(value))
    }

    /// [`resource`](RuntimeBuilder::resource) for a value already behind an `Arc` (the
    /// resource's type is `T`, not `Arc<T>`): the runtime shares that allocation.
    pub fn resource_shared<T: Resource>(mut self, value: Arc<T>) -> Self {
        self.resources.insert(value);
        self
    }

    /// Notifies `channel` of the ends of the runs it wants (see [`crate::notify`]):
    /// written to the store with each run's end, delivered and retried by the runtime.
    /// Channel names must be unique ([`start`](RuntimeBuilder::start) refuses a repeat
    /// with [`Error::Config`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "webhook")] #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use procession::notify::{Channel, WebhookConfig};
    /// let rt = procession::Runtime::in_memory()
    ///     .notify(Channel::webhook("ops", WebhookConfig::new("http://127.0.0.1:9/hook")?)?.only_failed_runs())
    ///     .start()
    ///     .await?;
    /// # rt.shutdown().await?; Ok(()) }
    /// # #[cfg(not(feature = "webhook"))] fn main() {}
    /// ```
    pub fn notify(mut self, channel: crate::notify::Channel) -> Self {
        self.channels.push(channel);
        self
    }

    /// How notifications are delivered: retry schedule, lease, concurrency (see
    /// [`DeliveryOptions`](crate::notify::DeliveryOptions)).
    pub fn delivery(mut self, options: crate::notify::DeliveryOptions) -> Self {
        self.delivery = options;
        self
    }

    /// Whether the tasks of each run are recorded as child records (default true). Without
    /// them a run keeps only its process record and its report: a little faster, but a
    /// run interrupted by a crash starts over instead of resuming task by task.
    pub fn task_records(mut self, yes: bool) -> Self {
        self.task_records = yes;
        self
    }

    /// How many ended runs each record keeps besides its current one (default 10), with
    /// their task records, listed by [`Runtime::history`] and reported by
    /// [`Runtime::past_report`]. A relaunch (or a dismiss) moves the ended run into the
    /// history; the oldest past run beyond `n` is then deleted. `0` keeps none: a relaunch
    /// deletes the previous run's task records, as before history existed.
    ///
    /// Kept: the run's own record as it ended (state, times, error, progress, log) and
    /// its task rows. Not kept: the child processes a run started (they are deleted by
    /// the relaunch, as always). An ephemeral record is deleted with its history.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn work() -> u32 { 7 }
    /// #[process] fn job(p: &mut Builder) { p.task(Work::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().keep_runs(2).start().await?;
    /// for _ in 0..4 {
    ///     rt.run(Launch::new(Job {}).id("job")).await?;
    /// }
    /// let runs = rt.history("job").await?;
    /// // The current run (4) and the two before it; run 1 was pushed out.
    /// assert_eq!(runs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 3, 2]);
    /// let old = rt.past_report("job", 2).await?;
    /// assert_eq!(old.result::<u32>("work").unwrap(), 7);
    /// # Ok(()) }
    /// ```
    pub fn keep_runs(mut self, n: usize) -> Self {
        self.keep_runs = n;
        self
    }

    /// How many events the runtime keeps for each subscriber
    /// ([`Runtime::subscribe`](crate::Runtime::subscribe), run event streams, the admin
    /// API's live feed) that has not read them yet (default 16,384; zero is refused by
    /// [`start`](RuntimeBuilder::start) with [`Error::Config`]). The runtime never waits
    /// for a subscriber: one that falls further behind gets
    /// [`EventKind::Lagged`](crate::EventKind::Lagged) (the admin feed then tells its
    /// clients to resync). A burst of many short tasks emits about two events per task;
    /// raise it when a subscriber must see every one of a larger burst. The buffer is
    /// allocated at start: a few hundred bytes per slot.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = procession::Runtime::in_memory().event_buffer(65_536).start().await?;
    /// # drop(rt); Ok(()) }
    /// ```
    pub fn event_buffer(mut self, n: usize) -> Self {
        self.event_buffer = n;
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

    /// How long [`Runtime::resync`] waits for the runs it cancels because their record is
    /// no longer defined (default 30 s, as optio's cancel-stale step). A run still going
    /// when the grace runs out has its record deleted anyway, with a warning, and is
    /// listed in [`ResyncReport::abandoned`](crate::ResyncReport::abandoned); the resync
    /// never waits longer. A cancelled run usually ends sooner: its tasks are abandoned
    /// after [`cancel_grace`](RuntimeBuilder::cancel_grace) (5 s by default), which ends
    /// the run.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = procession::Runtime::in_memory()
    ///     .resync_grace(Duration::from_secs(2))
    ///     .start()
    ///     .await?;
    /// rt.resync().await?; // waits at most 2 s for the runs it cancels
    /// # Ok(()) }
    /// ```
    pub fn resync_grace(mut self, grace: Duration) -> Self {
        self.resync_grace = grace;
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

    /// At most `bytes` of memory for sled's page cache (default
    /// [`SledStore::DEFAULT_CACHE`], 64 MiB; sled's own default is 1 GiB). Only the sled
    /// store ([`Runtime::open`], [`Runtime::temporary`]) is affected; a larger cache
    /// saves reads of the store's file, a smaller one bounds the process's memory.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = procession::Runtime::temporary()
    ///     .sled_cache(16 * 1024 * 1024)
    ///     .start()
    ///     .await?;
    /// rt.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub fn sled_cache(mut self, bytes: u64) -> Self {
        self.sled_cache = bytes;
        self
    }

    /// Hooks called for every run of this runtime (after the process's own).
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks.push(Arc::new(hooks));
        self
    }

    /// Declares a process type: runs of it can be launched by id and are resumed after a
    /// restart. A run whose type is not registered is not resumed (it ends failed).
    ///
    /// # Schedules
    ///
    /// A process declaring `#[process(schedule = "…")]` and taking no parameters is run on
    /// that schedule: [`start`](RuntimeBuilder::start) keeps a record for it whose id is the
    /// process's name (`nightly_cleanup` below; `#[process(name = "…")]` changes it), like
    /// a [`Definition`] would. Giving a `Definition` of the process type instead (for
    /// other ids, or to pass parameters) replaces that record; so does
    /// [`Definition::unscheduled`]. A scheduled process with parameters is only run on
    /// its schedule through a `Definition` giving them (`start` logs a warning otherwise).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn vacuum() {}
    ///
    /// /// Compacts the database every night at 03:00 UTC.
    /// #[process(schedule = "0 3 * * *")]
    /// fn nightly_cleanup(p: &mut Builder) { p.task(Vacuum::new()); }
    ///
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().register::<NightlyCleanup>().start().await?;
    /// let record = rt.get("nightly_cleanup").await?.expect("kept by `start`");
    /// assert_eq!(record.schedule, Some(procession::Schedule::cron("0 3 * * *")?));
    /// # Ok(()) }
    /// ```
    pub fn register<P: Process>(mut self) -> Self {
        self.registry.insert(
            P::META.name,
            Registered {
                meta: P::META,
                build: build_erased::<P>,
                hooks: P::hooks(),
                scheduled: scheduled_definition::<P>,
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
    /// cannot be opened (a damaged or newer store names its path),
    /// [`Error::UnknownProcessType`] for a definition of a process that is not
    /// registered, [`Error::MissingResource`] for a definition whose tasks need a
    /// resource that was not registered.
    pub async fn start(self) -> Result<Runtime> {
        crate::runtime::limits::at_least_one(
            "RuntimeBuilder::max_concurrency",
            self.max_concurrency,
        )?;
        crate::runtime::limits::at_least_one(
            "RuntimeBuilder::process_concurrency",
            self.process_concurrency,
        )?;
        if self.event_buffer == 0 {
            return Err(Error::Config(
                "`RuntimeBuilder::event_buffer(0)`: the event bus needs at least one slot".into(),
            ));
        }
        let definitions = checked_definitions(self.definitions, &self.registry, &self.resources)?;
        let notifier = Arc::new(
            crate::notify::worker::Notifier::new(self.channels, self.delivery)
                .map_err(|e| Error::Config(e.to_string()))?,
        );
        let strict = self.strict;
        let in_memory = matches!(self.store, StoreChoice::Memory);
        let store: Arc<dyn Store> = match self.store {
            StoreChoice::Memory => Arc::new(MemoryStore::new()),
            StoreChoice::Custom(s) => s,
            StoreChoice::Path(p) => {
                let cache = self.sled_cache;
                let s = blocking(move || SledStore::open_with_cache(p, cache)).await?;
                Arc::new(s.strict(strict))
            }
            StoreChoice::Temporary => {
                let cache = self.sled_cache;
                let s = blocking(move || SledStore::temporary_with_cache(cache)).await?;
                Arc::new(s.strict(strict))
            }
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres(url) => {
                Arc::new(blocking(move || crate::store::PgStore::connect(&url)).await?)
            }
        };
        let (events, _) = broadcast::channel(self.event_buffer);
        // The memory store's writes are durable once applied: the runtime's writes run on
        // their callers' threads when the writer is idle (no hand-off to it and back).
        let writer = start_writer(
            store.clone(),
            self.progress_flush,
            events.clone(),
            in_memory,
        )?;
        let worker = format!("worker-{:016x}", fastrand::u64(..));
        let shared = store.is_shared();
        let me = crate::store::WorkerInfo::this_process(&worker);
        if shared {
            let (store, me) = (store.clone(), me.clone());
            blocking(move || store.register_worker(&me)).await?;
        }
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let spread = (shared && self.spread_tasks && store.task_queue().is_some())
            .then(|| super::spread::Spread::new(self.spread_capacity, self.spread_cascade));
        let clock = Clock {
            wall0: std::time::SystemTime::now(),
            inst0: tokio::time::Instant::now(),
        };
        let deliverer = (!notifier.is_empty() && notifier.options.deliver).then(|| {
            crate::notify::worker::Worker::spawn(
                notifier.clone(),
                store.clone(),
                writer.clone(),
                worker.clone(),
                Arc::new(move || clock.now_ms()),
                self.grace,
            )
        });
        let rt = Runtime {
            inner: Arc::new(Inner {
                location: store.location(),
                store: Mutex::new(Some(store)),
                worker,
                lease_ms,
                shared,
                in_memory,
                stop_loops: tokio_util::sync::CancellationToken::new(),
                me,
                writer,
                events,
                permits: self
                    .max_concurrency
                    .map(|n| Arc::new(Semaphore::new(crate::runtime::limits::permits(n)))),
                process_concurrency: self.process_concurrency,
                grace: self.grace,
                resync_grace: self.resync_grace,
                progress_flush: self.progress_flush,
                hooks: self.hooks,
                registry: self.registry,
                definitions: Mutex::new(definitions),
                active: Mutex::new(HashMap::new()),
                siblings: Mutex::new(HashMap::new()),
                shutting_down: AtomicBool::new(false),
                halt: Arc::default(),
                scheduler_wake: Arc::new(tokio::sync::Notify::new()),
                clock,
                task_records: self.task_records,
                resources: Arc::new(self.resources),
                keep_runs: self.keep_runs,
                notifier,
                deliverer,
                spread,
            }),
        };
        if shared {
            // The heartbeat first: runs resumed below hold leases from then on.
            tokio::spawn(super::workers::heartbeat(
                Arc::downgrade(&rt.inner),
                self.lease / 3,
            ));
        }
        if let Some(s) = &rt.inner.spread {
            super::spread::start(&rt.inner, s);
        }
        rt.resync().await?;
        rt.resume_all().await?;
        if shared {
            tokio::spawn(super::workers::takeover(
                Arc::downgrade(&rt.inner),
                self.lease / 2,
            ));
        }
        if let Some(keep) = self.retention {
            tokio::spawn(super::retention::sweep(Arc::downgrade(&rt.inner), keep));
        }
        tokio::spawn(scheduler(Arc::downgrade(&rt.inner)));
        Ok(rt)
    }
}

/// `definitions` checked and completed: a definition the scheduler could never launch is
/// refused now, not at its fire (an unknown type, or a graph whose tasks need a resource
/// this runtime lacks); then [`with_scheduled`].
pub(super) fn checked_definitions(
    definitions: Vec<Definition>,
    registry: &HashMap<&'static str, Registered>,
    resources: &Resources,
) -> Result<Vec<Definition>> {
    for d in &definitions {
        let Some(reg) = registry.get(d.process_type) else {
            return Err(Error::UnknownProcessType {
                name: d.process_type.to_owned(),
            });
        };
        // A graph that does not build is reported by its launch, as before.
        if let Ok(graph) = (reg.build)(d.params.clone(), BTreeMap::new()) {
            super::check_resources(resources, &graph)?;
        }
    }
    with_scheduled(definitions, registry)
}

/// `definitions` and, for each registered process with a schedule of its own and no
/// `Definition` of its type nor of its name, the record that runs it on that schedule.
fn with_scheduled(
    mut definitions: Vec<Definition>,
    registry: &HashMap<&'static str, Registered>,
) -> Result<Vec<Definition>> {
    let mut names: Vec<&&'static str> = registry.keys().collect();
    names.sort_unstable();
    for name in names {
        let reg = &registry[*name];
        let Some(cron) = reg.meta.schedule else {
            continue;
        };
        if definitions
            .iter()
            .any(|d| d.process_type == *name || d.id == *name)
        {
            continue;
        }
        match (reg.scheduled)() {
            Some(d) => definitions.push(d?),
            None => tracing::warn!(
                process = name,
                schedule = cron,
                "process declares a schedule but takes parameters, and no `Definition` gives them: it is not run on its schedule"
            ),
        }
    }
    Ok(definitions)
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

    /// A runtime on the PostgreSQL database at `url` (feature `postgres`): the schema is
    /// created or migrated at `start`, and runs survive a crash of the worker and are
    /// resumed by the next `start`, as with [`Runtime::open`]. Several workers (processes,
    /// hosts) may share the database: each runs the runs it claimed, renews its leases
    /// (see [`RuntimeBuilder::lease`]) and takes over the runs of a worker that died
    /// (see [`PgStore`](crate::store::PgStore)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use procession::prelude::*;
    ///
    /// #[task]
    /// fn hello() -> String { "hello".into() }
    /// #[process]
    /// fn greet(p: &mut Builder) { p.task(Hello::new()); }
    ///
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::connect("postgres://postgres@127.0.0.1/procession")
    ///     .register::<Greet>()
    ///     .start()
    ///     .await?;
    /// let report = rt.run(Greet {}).await?;
    /// assert_eq!(report.result::<String>("hello").unwrap(), "hello");
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn connect(url: impl Into<String>) -> RuntimeBuilder {
        RuntimeBuilder::new(StoreChoice::Postgres(url.into()))
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
        self.inner.forget(id).await?;
        Ok(())
    }
}
