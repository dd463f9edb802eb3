//! Storage of process records and task rows (the store layer: imports only `record`,
//! `error` and `schedule`, so it compiles without the engine): the [`Store`] interface
//! and its two implementations, [`SledStore`] (embedded, the default) and [`MemoryStore`].
//!
//! The runtime reaches data only through [`Store`]: reads from tokio's blocking pool,
//! every write through one writer thread (one order, group commit). A server-backed
//! store (PostgreSQL, for several workers sharing runs) implements the same trait; its
//! documentation is the whole contract.

use std::collections::BTreeMap;
use std::sync::Arc;

use smol_str::SmolStr;

mod codec;
mod index;
mod memory;
mod outbox;
#[cfg(feature = "postgres")]
mod postgres;
mod sled;
mod tasks;

pub use self::memory::MemoryStore;
pub(crate) use self::memory::RowSink;
pub use self::outbox::{
    ChannelState, Delivery, DeliveryAttempt, DeliveryCursor, DeliveryPage, DeliveryQuery,
    DeliveryState, DeliveryUpdate, MAX_ATTEMPT_HISTORY,
};
#[cfg(feature = "postgres")]
pub use self::postgres::PgStore;
pub use self::sled::SledStore;
pub use self::tasks::{
    ClaimReport, ClaimedTask, EndedTask, TaskBeat, TaskChanges, TaskClaim, TaskEnd, TaskNews,
    TaskOffer, TaskQueue, TaskWake, WatchedTask,
};

use crate::record::{LogEntry, ProcessRecord, Progress, RecordKind, State, Status, SCHEMA_VERSION};

/// The cause of a [`StoreError`]: the underlying library's error, kept whole.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Error returned by a [`Store`].
///
/// Cheap to clone (causes are shared), so one failed group write can be reported to every
/// caller waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be opened.
    #[error("cannot open the store at `{path}`")]
    Open {
        /// The store's location.
        path: String,
        /// What went wrong.
        #[source]
        source: Source,
    },
    /// A read or write failed.
    #[error("store `{path}`: a read or write failed")]
    Io {
        /// The store's location.
        path: String,
        /// What went wrong.
        #[source]
        source: Source,
    },
    /// A stored value does not decode: the file is damaged or was written by other software.
    #[error("store `{path}` holds a damaged record `{key}`: {message}")]
    Corrupt {
        /// The store's location.
        path: String,
        /// The record's key.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// The store was written by a newer version of procession.
    #[error("store `{path}` has schema version {found}, this build reads up to {supported}; upgrade procession or open another path")]
    Incompatible {
        /// The store's location.
        path: String,
        /// Version found.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// Another worker holds an unexpired lease on the run.
    #[error("run `{run}` is leased by `{owner}` until {expires_at} ms")]
    Leased {
        /// The run.
        run: String,
        /// The current holder.
        owner: String,
        /// When its lease expires (ms since the Unix epoch).
        expires_at: u64,
    },
    /// A store on a server (PostgreSQL) lost its connection and could not make a new
    /// one, or kept losing it, for the whole retry window; the source is the last error
    /// (a refused connection, a terminated session, …).
    #[error("store `{path}` is unreachable: its connection broke and was not restored within {waited_ms} ms ({attempts} attempts){}", unsure_commit.map_or_else(String::new, |x| format!("; whether transaction {x} committed is unknown")))]
    Unavailable {
        /// The store's location.
        path: String,
        /// From the first broken attempt to giving up.
        waited_ms: u64,
        /// Attempts that failed on a broken connection (or failed to connect).
        attempts: u32,
        /// A transaction whose `COMMIT` was sent and answered by no one: it may have
        /// been written.
        unsure_commit: Option<u64>,
        /// The last error.
        #[source]
        source: Source,
    },
    /// A write fenced by a lease ([`Store::update_leased`]) was refused: the lease's
    /// token is no longer the run's current one (another worker took the run over).
    #[error("run `{run}`: lease token {token} is stale (another worker took the run over): the write was refused")]
    Fenced {
        /// The run.
        run: String,
        /// The stale token.
        token: u64,
    },
    /// The store was closed (the runtime shut down).
    #[error("the store is closed: the runtime has shut down")]
    Closed,
    /// The store's data files lost writes that had been made durable (a damaged or
    /// truncated file): opening it would bring back an older state and run again work
    /// that was reported finished, so it is refused.
    #[error("store `{path}` is damaged: writes after sequence {found_seq} were lost (it had made writes up to {expected_seq} durable); restore it from a backup, or delete `{path}/procession.seq` to open it as it is")]
    Damaged {
        /// The store's location.
        path: String,
        /// The write sequence that was made durable, as recorded outside the data files.
        expected_seq: u64,
        /// The write sequence found in the data files.
        found_seq: u64,
    },
}

impl StoreError {
    /// An [`StoreError::Io`] at `path` caused by `source` (an error or a message).
    pub fn io(
        path: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Io {
            path: path.into(),
            source: Arc::from(source.into()),
        }
    }

    /// An [`StoreError::Open`] at `path` caused by `source` (an error or a message).
    pub fn open(
        path: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Open {
            path: path.into(),
            source: Arc::from(source.into()),
        }
    }
}

/// The compact record of one task of a run, as stored.
///
/// Names and the result are [`SmolStr`]s: text of up to 23 bytes (most task names, node
/// ids such as `step#123`, results such as `42` or `"ok"`) is kept inline, longer text is
/// shared, so cloning a row allocates nothing for a task that logged nothing.
///
/// # Examples
///
/// ```
/// use procession::store::TaskRow;
/// use procession::{SmolStr, State};
///
/// let row = TaskRow {
///     task: SmolStr::new_static("add"),
///     node: "add#1".into(),
///     state: State::Done,
///     attempts: 1,
///     started_at: Some(1),
///     ended_at: Some(2),
///     elapsed_ns: 1_000,
///     skipped: false,
///     error: None,
///     chain: Vec::new(),
///     progress: Default::default(),
///     log: Vec::new(),
///     result: Some("42".into()),
///     lease: 0,
///     optional: false,
/// };
/// assert_eq!(row.node, "add#1");
/// assert_eq!(row.result.as_deref(), Some("42"));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskRow {
    /// The task's name.
    pub task: SmolStr,
    /// The node id in the graph.
    pub node: SmolStr,
    /// State (running, done, failed, cancelled; scheduled before it starts).
    pub state: State,
    /// Attempts started so far.
    pub attempts: u32,
    /// When the first attempt started (ms since the Unix epoch).
    pub started_at: Option<u64>,
    /// When it ended (ms since the Unix epoch).
    pub ended_at: Option<u64>,
    /// Wall time of all attempts, in nanoseconds, measured as
    /// [`TaskReport::elapsed`](crate::TaskReport::elapsed) is.
    pub elapsed_ns: u64,
    /// Skipped because a dependency did not succeed (the state is then `cancelled`).
    pub skipped: bool,
    /// The error, if it failed.
    pub error: Option<String>,
    /// Source chain of the error.
    #[serde(default)]
    pub chain: Vec<String>,
    /// Last progress.
    #[serde(default)]
    pub progress: Progress,
    /// The task's log (bounded).
    #[serde(default)]
    pub log: Vec<LogEntry>,
    /// The task's output as JSON text, once it is done: stored in the same record as its
    /// end, so a finished task costs one write.
    #[serde(default)]
    pub result: Option<SmolStr>,
    /// The lease token of the run when this row was written (see [`Lease`]); 0 for a row
    /// written without a lease, which is never fenced.
    #[serde(default)]
    pub lease: u64,
    /// The task is optional: its failure does not fail the run.
    #[serde(default)]
    pub optional: bool,
}

/// What a resumption reads of a stored task row (see [`Store::resume_rows`]): less
/// than a [`TaskRow`], so that a store can skip decoding the rest (names, error, log,
/// progress) of every row of a large run.
///
/// # Examples
///
/// ```
/// use procession::store::{MemoryStore, ResumeRow, Store};
/// let store = MemoryStore::new();
/// let rows: Vec<(u32, ResumeRow)> = store.resume_rows("no-such-run").unwrap();
/// assert!(rows.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ResumeRow {
    /// The task's state when the run was interrupted.
    pub state: State,
    /// Attempts started so far.
    pub attempts: u32,
    /// Wall time of all attempts, in nanoseconds.
    pub elapsed_ns: u64,
    /// The task's output as JSON text (a done task's).
    pub result: Option<SmolStr>,
}

impl From<TaskRow> for ResumeRow {
    fn from(row: TaskRow) -> Self {
        ResumeRow {
            state: row.state,
            attempts: row.attempts,
            elapsed_ns: row.elapsed_ns,
            result: row.result,
        }
    }
}

/// The fields of a [`TaskRow`] that most tasks leave empty (error, its chain, the
/// progress message, the log), kept behind one box by the compact rows of the journal
/// and of the memory store, so that a row without them allocates nothing for them.
#[derive(Debug, Clone, Default)]
pub(crate) struct RareFields {
    pub(crate) error: Option<String>,
    pub(crate) chain: Vec<String>,
    pub(crate) message: Option<String>,
    pub(crate) log: Vec<LogEntry>,
}

/// The fields of a task row that every task has, compact: what a run's journal keeps per
/// row and what the memory store keeps per row, in one layout, so that the journal's
/// write of a row to the memory store is a copy of it (its flags included), not a
/// rebuild field by field. The optional times and percentage are plain values with a
/// presence bit each (an `Option` of each would take twice the room), the task's name is
/// an index into its run's names, and the rare fields ([`RareFields`]), which most rows
/// never have, are kept beside the rows, by node, flagged by [`CompactRow::RARE`]: a
/// row without them has nothing to box, and nothing to free but its result.
#[derive(Debug, Clone)]
pub(crate) struct CompactRow {
    pub(crate) result: Option<SmolStr>,
    /// Meaningful when [`CompactRow::STARTED`] is set.
    pub(crate) started_at: u64,
    /// Meaningful when [`CompactRow::ENDED`] is set.
    pub(crate) ended_at: u64,
    pub(crate) elapsed_ns: u64,
    /// Meaningful when [`CompactRow::PERCENT`] is set.
    pub(crate) percent: f64,
    pub(crate) attempts: u32,
    /// Index of the task's name in the names of the row's run (the journal's, or the
    /// store's).
    pub(crate) task: u32,
    pub(crate) state: State,
    /// [`CompactRow::SKIPPED`], [`CompactRow::OPTIONAL`], the presence bits, and the
    /// journal's own [`CompactRow::SETTLED`] and [`CompactRow::DIRTY`].
    pub(crate) flags: u8,
    /// The journal's: the state last announced by an event (a row written again without
    /// a change of state, for its progress or its log, announces nothing). Kept in the
    /// row's padding (the row stays 72 bytes), read and written with the row in the
    /// same cache line, not in an array of its own. A store ignores it.
    pub(crate) announced: State,
}

impl CompactRow {
    pub(crate) const SKIPPED: u8 = 1;
    pub(crate) const OPTIONAL: u8 = 2;
    pub(crate) const STARTED: u8 = 4;
    pub(crate) const ENDED: u8 = 8;
    pub(crate) const PERCENT: u8 = 16;
    /// The row has rare fields, kept beside it.
    pub(crate) const RARE: u8 = 32;
    /// The journal's: the row was written to the store in an end state.
    pub(crate) const SETTLED: u8 = 64;
    /// The journal's: the row changed since it was last written (it is in the journal's
    /// list of rows to write).
    pub(crate) const DIRTY: u8 = 128;
    /// The bits a store keeps (not the journal's [`CompactRow::SETTLED`] and
    /// [`CompactRow::DIRTY`]).
    pub(crate) const STORED: u8 = Self::SETTLED - 1;

    /// A row in state `state` with nothing else set, of task name number `task`.
    pub(crate) fn new(state: State, task: u32, optional: bool) -> Self {
        CompactRow {
            result: None,
            started_at: 0,
            ended_at: 0,
            elapsed_ns: 0,
            percent: 0.0,
            attempts: 0,
            task,
            state,
            flags: if optional { Self::OPTIONAL } else { 0 },
            announced: state,
        }
    }

    /// Makes this row a copy of `src`, field by field in place (no row made aside and
    /// moved in), but for the journal's [`announced`](Self::announced) state.
    #[inline]
    pub(crate) fn copy_from(&mut self, src: &CompactRow) {
        self.result.clone_from(&src.result);
        self.started_at = src.started_at;
        self.ended_at = src.ended_at;
        self.elapsed_ns = src.elapsed_ns;
        self.percent = src.percent;
        self.attempts = src.attempts;
        self.task = src.task;
        self.state = src.state;
        self.flags = src.flags;
    }

    #[inline]
    pub(crate) fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    #[inline]
    pub(crate) fn set(&mut self, bit: u8, on: bool) {
        self.flags = (self.flags & !bit) | if on { bit } else { 0 };
    }

    /// When the first attempt started (ms since the Unix epoch).
    #[inline]
    pub(crate) fn started_at(&self) -> Option<u64> {
        self.has(Self::STARTED).then_some(self.started_at)
    }

    #[inline]
    pub(crate) fn set_started_at(&mut self, ms: u64) {
        self.started_at = ms;
        self.flags |= Self::STARTED;
    }

    /// When it ended (ms since the Unix epoch).
    #[inline]
    pub(crate) fn ended_at(&self) -> Option<u64> {
        self.has(Self::ENDED).then_some(self.ended_at)
    }

    #[inline]
    pub(crate) fn set_ended_at(&mut self, ms: u64) {
        self.ended_at = ms;
        self.flags |= Self::ENDED;
    }

    /// The last percentage reported.
    #[inline]
    pub(crate) fn percent(&self) -> Option<f64> {
        self.has(Self::PERCENT).then_some(self.percent)
    }

    #[inline]
    pub(crate) fn set_percent(&mut self, percent: Option<f64>) {
        self.percent = percent.unwrap_or(0.0);
        self.set(Self::PERCENT, percent.is_some());
    }

    #[inline]
    pub(crate) fn skipped(&self) -> bool {
        self.has(Self::SKIPPED)
    }

    #[inline]
    pub(crate) fn optional(&self) -> bool {
        self.has(Self::OPTIONAL)
    }

    /// Marks the row [`CompactRow::SETTLED`] when it is in an end state not yet marked
    /// so; whether it was marked now (its write to the store settles it).
    #[inline]
    pub(crate) fn settle_end(&mut self) -> bool {
        let settles = !self.has(Self::SETTLED) && self.state.is_end();
        if settles {
            self.flags |= Self::SETTLED;
        }
        settles
    }

    /// The row's rare fields in `map` (its run's, by node), when it is flagged
    /// [`CompactRow::RARE`]: a row without them costs no lookup.
    #[inline]
    pub(crate) fn rare_in<'a, V: std::borrow::Borrow<RareFields>, S: std::hash::BuildHasher>(
        &self,
        map: &'a std::collections::HashMap<u32, V, S>,
        node: u32,
    ) -> Option<&'a RareFields> {
        if self.has(Self::RARE) {
            map.get(&node).map(V::borrow)
        } else {
            None
        }
    }

    /// The row as a [`TaskRow`], with its task name, node id, rare fields and lease.
    pub(crate) fn to_task_row(
        &self,
        task: SmolStr,
        node: SmolStr,
        rare: Option<&RareFields>,
        lease: u64,
    ) -> TaskRow {
        // Most rows have no rare field: nothing to copy, no call.
        let (error, chain, message, log) = match rare {
            None => (None, Vec::new(), None, Vec::new()),
            rare => RareFields::parts(rare),
        };
        TaskRow {
            task,
            node,
            state: self.state,
            attempts: self.attempts,
            started_at: self.started_at(),
            ended_at: self.ended_at(),
            elapsed_ns: self.elapsed_ns,
            skipped: self.skipped(),
            error,
            chain,
            progress: Progress {
                percent: self.percent(),
                message,
            },
            log,
            result: self.result.clone(),
            lease,
            optional: self.optional(),
        }
    }
}

/// [`RareFields`] as a [`TaskRow`] holds them: error, chain, progress message, log.
pub(crate) type RareParts = (Option<String>, Vec<String>, Option<String>, Vec<LogEntry>);

impl RareFields {
    /// The fields boxed, or `None` when all are empty.
    pub(crate) fn boxed((error, chain, message, log): RareParts) -> Option<Box<RareFields>> {
        (error.is_some() || !chain.is_empty() || message.is_some() || !log.is_empty()).then(|| {
            Box::new(RareFields {
                error,
                chain,
                message,
                log,
            })
        })
    }

    /// The fields back, copied (empty ones for `None`).
    pub(crate) fn parts(rare: Option<&RareFields>) -> RareParts {
        match rare {
            Some(x) => (
                x.error.clone(),
                x.chain.clone(),
                x.message.clone(),
                x.log.clone(),
            ),
            None => (None, Vec::new(), None, Vec::new()),
        }
    }
}

impl TaskRow {
    /// The row as a child record of run `root` (whose depth is `root_depth`).
    pub fn to_record(&self, root: &ProcessRecord, order: u32) -> ProcessRecord {
        let mut status = Status::idle();
        status.state = self.state;
        status.error.clone_from(&self.error);
        status.running_since = self.started_at;
        match self.state {
            State::Done => status.done_at = self.ended_at,
            State::Failed => status.failed_at = self.ended_at,
            State::Cancelled => status.stopped_at = self.ended_at,
            _ => {}
        }
        if self.ended_at.is_some() {
            status.duration = Some(std::time::Duration::from_nanos(self.elapsed_ns).as_secs_f64());
        }
        ProcessRecord {
            schema: SCHEMA_VERSION,
            id: format!("{}/{}", root.id, self.node),
            kind: RecordKind::Task,
            process_type: self.task.to_string(),
            name: self.node.to_string(),
            description: if self.skipped {
                "skipped".into()
            } else {
                String::new()
            },
            params: serde_json::Value::Null,
            metadata: BTreeMap::new(),
            parent: Some(root.id.clone()),
            root: root.root.clone(),
            depth: root.depth.saturating_add(1),
            order,
            cancellable: false,
            adhoc: false,
            ephemeral: false,
            special: false,
            warning: None,
            status,
            progress: self.progress.clone(),
            log: self.log.clone(),
            created_at: self.started_at.unwrap_or(root.created_at),
            attempts: self.attempts,
            run: None,
            schedule: None,
            last_fire: None,
            runs: 0,
            queued_fire: None,
            launch_block: None,
        }
    }
}

/// An ended run of a record, as kept in its history (see [`Archive`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PastRun {
    /// The run's number among the runs of its record
    /// ([`RunMeta::seq`](crate::RunMeta::seq)); later runs have larger numbers.
    pub seq: u64,
    /// The run's record as the run left it: state, times, error, progress, log, parameters
    /// and run bookkeeping. Its id is the record the run ran as: the owner's id, or an
    /// overlapping run's own id (`<owner>@<seq>`).
    pub record: ProcessRecord,
}

/// Keeps an ended run in a record's history, with a copy of its task rows: one of the
/// writes of a [`Batch`].
#[derive(Debug, Clone)]
pub struct Archive {
    /// The record whose history keeps the run.
    pub owner: String,
    /// The run.
    pub run: PastRun,
    /// The run whose task rows are copied (as they are before the batch's other writes):
    /// the owner itself, or the record an overlapping run ran as.
    pub rows_of: String,
    /// How many past runs the owner keeps: the oldest beyond this number are deleted
    /// with their rows (0 keeps none, and the archive writes nothing).
    pub keep: usize,
}

/// A group of writes applied atomically.
#[derive(Debug, Default)]
pub struct Batch {
    /// Task rows to write: (run id, node index, row).
    pub tasks: Vec<(Arc<str>, u32, TaskRow)>,
    /// Process records to write whole.
    pub processes: Vec<ProcessRecord>,
    /// Runs whose task rows and results are deleted (before the writes above).
    pub clear_runs: Vec<String>,
    /// Process records deleted (with their runs' rows and results, and their history).
    pub delete_processes: Vec<String>,
    /// Runs kept in their record's history (before every other write of the batch).
    pub archive: Vec<Archive>,
}

impl Batch {
    /// True when the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.processes.is_empty()
            && self.clear_runs.is_empty()
            && self.delete_processes.is_empty()
            && self.archive.is_empty()
    }

    /// Appends `other`, keeping order.
    pub fn extend(&mut self, other: Batch) {
        self.archive.extend(other.archive);
        self.clear_runs.extend(other.clear_runs);
        self.delete_processes.extend(other.delete_processes);
        self.tasks.extend(other.tasks);
        self.processes.extend(other.processes);
    }
}

/// What an update function decides.
#[derive(Debug)]
pub enum Update {
    /// Write this record.
    Put(Box<ProcessRecord>),
    /// Delete the record.
    Delete,
    /// Change nothing.
    Keep,
}

/// What [`Store::update_keyed`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Keyed {
    /// The key was free: the update ran (the record as written, or as it was for
    /// [`Update::Keep`]), and a write took the key.
    Written(Option<Box<ProcessRecord>>),
    /// The key already names this run: nothing was written.
    Taken(String),
}

/// The function of [`Store::update_enqueue`]: decides the record's update from its
/// current value, and the deliveries written with it.
pub type Enqueue<'a> = dyn FnMut(Option<&ProcessRecord>) -> (Update, Vec<Delivery>) + 'a;

/// What a [`Store::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Applied {
    /// Task rows dropped because they carried a stale lease token (see [`Lease`]).
    pub fenced: u64,
}

/// A run claimed by one worker: while the lease holds, only writes that carry its
/// `token` change the run's task rows.
///
/// Tokens of one run only grow: every [`Store::claim`] returns a token greater than any
/// returned before for that run, so a worker that lost its lease (it paused, its lease
/// expired and another worker claimed the run) can no longer write: its rows carry a
/// smaller token and [`Store::apply`] drops them ([`Applied::fenced`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The run (process record id).
    pub run: String,
    /// Who holds it (a worker id chosen by the runtime at start).
    pub owner: String,
    /// The fencing token: written into every task row of the run
    /// ([`TaskRow::lease`]).
    pub token: u64,
    /// When it expires, in ms since the Unix epoch on the store's clock.
    pub expires_at: u64,
}

/// What one [`Store::heartbeat`] found.
///
/// # Examples
///
/// ```
/// use procession::store::{MemoryStore, Store};
/// let store = MemoryStore::new();
/// let lease = store.claim("run-1", "w1", 1_000)?;
/// let beat = store.heartbeat("w1", &[lease], 1_000)?;
/// assert!(beat.refused.is_empty());
/// # Ok::<(), procession::store::StoreError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Beat {
    /// Runs whose lease was not renewed: their token is no longer current (another
    /// worker claimed the run), so their holder is fenced out and must stop them.
    pub refused: Vec<String>,
    /// Renewed runs whose record asks for a cancel (`cancel_requested`, written by
    /// another worker): their holder cancels them.
    pub cancel_requested: Vec<String>,
    /// The worker's row was not in the workers table (another worker removed it as
    /// dead: its heartbeat had been silent for ten lease times, a long pause, or that
    /// worker's lease is much shorter): the runtime registers it again.
    pub forgotten: bool,
}

/// A worker process of a shared store (see [`Store::register_worker`]): one row per
/// process start.
///
/// # Examples
///
/// ```
/// use procession::store::WorkerInfo;
/// let me = WorkerInfo::this_process("worker-1");
/// assert_eq!(me.pid, std::process::id());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// The worker id (unique per process start; the owner of its leases).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id on that host.
    pub pid: u32,
    /// The procession version it runs.
    pub version: String,
    /// When it started, in ms since the Unix epoch (the store's clock where it has one).
    pub started_at: u64,
    /// Its last heartbeat, in ms since the Unix epoch (the store's clock where it has
    /// one).
    pub last_heartbeat: u64,
}

impl WorkerInfo {
    /// The row of worker `id` in this process: host name, pid, version, started now.
    ///
    /// # Examples
    ///
    /// ```
    /// let w = procession::store::WorkerInfo::this_process("w");
    /// assert!(!w.host.is_empty());
    /// ```
    pub fn this_process(id: &str) -> WorkerInfo {
        let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| {
                std::fs::read_to_string(p)
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unknown".to_owned());
        let now = crate::record::now_ms();
        WorkerInfo {
            id: id.to_owned(),
            host,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: now,
            last_heartbeat: now,
        }
    }
}

/// What one [`Store::sweep_finished`] deleted.
///
/// # Examples
///
/// ```
/// use procession::store::{MemoryStore, Store};
/// let store = MemoryStore::new();
/// let swept = store.sweep_finished(u64::MAX, 100)?;
/// assert_eq!((swept.runs, swept.records, swept.deliveries), (0, 0, 0));
/// # Ok::<(), procession::store::StoreError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Swept {
    /// Finished run trees deleted (counted by their roots).
    pub runs: u64,
    /// Process records deleted: the roots and the child runs under them.
    pub records: u64,
    /// Ended (delivered or failed) deliveries deleted.
    pub deliveries: u64,
}

/// When run `r` ended, if the retention sweep ([`Store::sweep_finished`]) may ever
/// delete it: an ad-hoc root (a launched run, not a record defined in code, not a child),
/// without a schedule, in an end state (done, failed, cancelled). `None` for every
/// other record: active runs, definitions, scheduled records, idle (dismissed or
/// defined ad-hoc) records and child runs (which go with their root).
///
/// The end time is the state's timestamp (`done_at`, `failed_at`, `stopped_at`), or
/// the creation time when the record has none.
///
/// # Examples
///
/// ```
/// use procession::store::sweepable_end;
/// use procession::{ProcessRecord, State};
/// let mut r = ProcessRecord::new_root("r-1", "report", "report", "", serde_json::Value::Null);
/// r.adhoc = true;
/// assert_eq!(sweepable_end(&r), None); // idle
/// r.status.state = State::Done;
/// r.status.done_at = Some(42);
/// assert_eq!(sweepable_end(&r), Some(42));
/// ```
pub fn sweepable_end(r: &ProcessRecord) -> Option<u64> {
    if !r.adhoc
        || r.depth != 0
        || r.parent.is_some()
        || r.schedule.is_some()
        || r.kind != RecordKind::Process
    {
        return None;
    }
    let at = match r.status.state {
        State::Done => r.status.done_at,
        State::Failed => r.status.failed_at,
        State::Cancelled => r.status.stopped_at,
        _ => return None,
    };
    Some(at.unwrap_or(r.created_at))
}

/// Records read per page by the default [`Store::sweep_finished`].
const SWEEP_PAGE: usize = 256;

/// The default [`Store::sweep_finished`], for single-process stores (called from the
/// runtime's one writer, so nothing changes between its reads and its writes): pages
/// through the ended records created before `ended_before` (an end comes after the
/// creation), deletes each sweepable tree with one batch, then the ended deliveries.
fn sweep_by_listing<S: Store + ?Sized>(
    store: &S,
    ended_before: u64,
    limit: usize,
) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    if limit == 0 {
        return Ok(swept);
    }
    // Records skipped (ended too recently, definitions, children of kept roots) cost a
    // read each: bound them per sweep, so that a sweep's time stays bounded.
    let budget = limit.saturating_mul(16).max(4 * SWEEP_PAGE);
    let mut scanned = 0usize;
    let mut q = Query::new()
        .state(State::Done)
        .state(State::Failed)
        .state(State::Cancelled)
        .created(None, Some(ended_before))
        .limit(SWEEP_PAGE);
    'pages: loop {
        let page = store.list(&q)?;
        for r in &page.records {
            scanned += 1;
            if sweepable_end(r).is_none_or(|t| t >= ended_before) {
                continue;
            }
            let tree = store.list_all(&Query::new().root(&r.id))?;
            if tree.iter().any(|c| c.state().is_active()) {
                continue;
            }
            let mut ids: Vec<String> = Vec::with_capacity(tree.len() + 1);
            for c in &tree {
                let key = c.run.as_ref().and_then(|m| m.idempotency_key.as_deref());
                store.forget_run(&c.id, key)?;
                ids.push(c.id.clone());
            }
            if !ids.contains(&r.id) {
                let key = r.run.as_ref().and_then(|m| m.idempotency_key.as_deref());
                store.forget_run(&r.id, key)?;
                ids.push(r.id.clone());
            }
            swept.records += ids.len() as u64;
            swept.runs += 1;
            store.apply(Batch {
                delete_processes: ids,
                ..Batch::default()
            })?;
            if swept.runs >= limit as u64 {
                break 'pages;
            }
        }
        match page.next {
            Some(c) if scanned < budget => q.after = Some(c),
            _ => break,
        }
    }
    let mut left = limit;
    for state in [DeliveryState::Delivered, DeliveryState::Failed] {
        if left == 0 {
            break;
        }
        let page = store.deliveries(&DeliveryQuery::new().state(state).limit(left))?;
        for d in page
            .deliveries
            .iter()
            .take_while(|d| d.created_at < ended_before)
        {
            store.update_delivery(&d.id, &mut |cur| match cur {
                Some(c) if c.state == state => DeliveryUpdate::Delete,
                _ => DeliveryUpdate::Keep,
            })?;
            swept.deliveries += 1;
            left -= 1;
        }
    }
    Ok(swept)
}

/// A position in a listing: records strictly after it come next (keyset pagination).
///
/// Listings are ordered by creation time, then id; a cursor is stable under concurrent
/// inserts (a page never repeats or skips a record that existed when the listing began).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Cursor {
    /// The creation time of the last record seen.
    pub created_at: u64,
    /// Its id.
    pub id: String,
}

impl Cursor {
    /// The cursor just after `record`.
    pub fn after(record: &ProcessRecord) -> Cursor {
        Cursor {
            created_at: record.created_at,
            id: record.id.clone(),
        }
    }
}

/// A cursor as text: `<created_at>:<id>` (the `next` of a page in the admin API and the
/// command line).
///
/// # Examples
///
/// ```
/// use procession::store::Cursor;
/// let c: Cursor = "1700000000000:report-7".parse().unwrap();
/// assert_eq!(c.created_at, 1_700_000_000_000);
/// assert_eq!(c.id, "report-7");
/// assert_eq!(c.to_string(), "1700000000000:report-7");
/// assert!("report-7".parse::<Cursor>().is_err());
/// ```
impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.created_at, self.id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Cursor, InvalidCursor> {
        s.split_once(':')
            .and_then(|(t, id)| {
                Some(Cursor {
                    created_at: t.parse().ok()?,
                    id: id.to_owned(),
                })
            })
            .ok_or_else(|| InvalidCursor(s.to_owned()))
    }
}

/// A text that is not a [`Cursor`] (`<created_at>:<id>`); it holds the text.
///
/// # Examples
///
/// ```
/// use procession::store::Cursor;
/// let err = "yesterday".parse::<Cursor>().unwrap_err();
/// assert_eq!(err.to_string(), "`yesterday` is not a page cursor (`<created_at>:<id>`)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a page cursor (`<created_at>:<id>`)")]
pub struct InvalidCursor(pub String);

/// Which process records to list, and which page.
///
/// Every condition set must hold. Results come ordered by creation time, then id
/// (both descending with [`newest_first`](Query::newest_first)).
///
/// # Examples
///
/// ```
/// use procession::store::{MemoryStore, Query, Store};
/// use procession::State;
/// let store = MemoryStore::new();
/// let page = store.list(&Query::new().state(State::Running).limit(50)).unwrap();
/// assert!(page.records.is_empty() && page.next.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Query {
    /// Only records in one of these states (any when empty).
    pub states: Vec<State>,
    /// Only records of this process type.
    pub process_type: Option<String>,
    /// Only the tree under this root (the root included).
    pub root: Option<String>,
    /// Only the children of this record.
    pub parent: Option<String>,
    /// Only records whose metadata has all these pairs.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Only records defined in code (not ad-hoc), at the top of their tree, when true.
    pub definitions: bool,
    /// Only records that have a schedule, when true.
    pub scheduled: bool,
    /// Only records created at or after this time (ms since the Unix epoch).
    pub created_from: Option<u64>,
    /// Only records created before this time (ms since the Unix epoch).
    pub created_until: Option<u64>,
    /// Start after this position (below it when [`newest_first`](Query::newest_first)).
    pub after: Option<Cursor>,
    /// At most this many records (all when `None`).
    pub limit: Option<usize>,
    /// List newest first: by creation time, then id, both descending.
    pub newest_first: bool,
}

impl Query {
    /// Every record.
    pub fn new() -> Query {
        Query::default()
    }

    /// Adds a state to match.
    #[must_use]
    pub fn state(mut self, state: State) -> Query {
        self.states.push(state);
        self
    }

    /// Only records of process type `name`.
    #[must_use]
    pub fn process_type(mut self, name: impl Into<String>) -> Query {
        self.process_type = Some(name.into());
        self
    }

    /// Only the tree under `root` (the root included).
    #[must_use]
    pub fn root(mut self, root: impl Into<String>) -> Query {
        self.root = Some(root.into());
        self
    }

    /// Only the children of `parent`.
    #[must_use]
    pub fn parent(mut self, parent: impl Into<String>) -> Query {
        self.parent = Some(parent.into());
        self
    }

    /// Adds a metadata pair to match.
    #[must_use]
    pub fn metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Query {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Only records created in `[from, until)` (ms since the Unix epoch).
    #[must_use]
    pub fn created(mut self, from: Option<u64>, until: Option<u64>) -> Query {
        self.created_from = from;
        self.created_until = until;
        self
    }

    /// Start after `cursor` (the `next` of the previous [`Page`]).
    #[must_use]
    pub fn after(mut self, cursor: Option<Cursor>) -> Query {
        self.after = cursor;
        self
    }

    /// At most `n` records.
    #[must_use]
    pub fn limit(mut self, n: usize) -> Query {
        self.limit = Some(n);
        self
    }

    /// Newest first: records come by creation time, then id, both descending; the
    /// [`after`](Query::after) cursor (the `next` of the previous page) is then the last
    /// record seen, and the next page continues below it. The time range still bounds it.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::store::{MemoryStore, Query, Store};
    /// let store = MemoryStore::new();
    /// let page = store.list(&Query::new().newest_first().limit(20)).unwrap();
    /// assert!(page.records.is_empty() && page.next.is_none());
    /// // The next page: the same query after the last page's cursor.
    /// let _ = store.list(&Query::new().newest_first().limit(20).after(page.next));
    /// ```
    #[must_use]
    pub fn newest_first(mut self) -> Query {
        self.newest_first = true;
        self
    }

    /// Whether `r` meets every condition (not the page bounds).
    pub fn matches(&self, r: &ProcessRecord) -> bool {
        (self.states.is_empty() || self.states.contains(&r.status.state))
            && self
                .process_type
                .as_ref()
                .is_none_or(|t| &r.process_type == t)
            && self.root.as_ref().is_none_or(|root| &r.root == root)
            && self
                .parent
                .as_ref()
                .is_none_or(|p| r.parent.as_ref() == Some(p))
            && self
                .metadata
                .iter()
                .all(|(k, v)| r.metadata.get(k) == Some(v))
            && (!self.definitions || (!r.adhoc && r.depth == 0))
            && (!self.scheduled || r.schedule.is_some())
            && self.created_from.is_none_or(|t| r.created_at >= t)
            && self.created_until.is_none_or(|t| r.created_at < t)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Page {
    /// The records, ordered by creation time, then id (descending when the query was
    /// [`newest_first`](Query::newest_first)).
    pub records: Vec<ProcessRecord>,
    /// Where the next page starts (in the query's direction); `None` on the last page.
    pub next: Option<Cursor>,
}

/// Storage of process records and task rows: the only way the runtime reaches data.
///
/// This documentation is the contract; a new implementation can be written from it and
/// checked by the conformance suite (`tests/store_conformance.rs` in the repository: one
/// generic set of checks run against every shipped store).
///
/// # Calls
///
/// Methods block; the runtime calls reads from tokio's blocking pool and every write
/// from one writer thread (see below), never from an async task. Implementations must
/// be `Send + Sync`.
///
/// # Writes
///
/// - **One ordered path.** The runtime sends every write ([`update`](Store::update),
///   [`apply`](Store::apply), [`next_id`](Store::next_id),
///   [`claim_idempotent`](Store::claim_idempotent), [`claim`](Store::claim) and friends)
///   through one writer, in one order, then calls [`flush`](Store::flush) once per group
///   (group commit). It reports a write (events, `wait()`, return of the API call) only
///   after that flush returned.
/// - **Prefix durability.** Once a write is durable, every write made before it is too.
///   After `flush` returns, every write made before the call survives a crash of the
///   process.
/// - **Atomicity.** [`update`](Store::update) is a compare-and-swap of one record; a
///   [`Batch`] is applied all-or-nothing except that its task rows may be split across
///   several applies by the caller (in order).
/// - **Refusals change nothing.** An update function that returns [`Update::Keep`]
///   writes nothing.
/// - **Fencing.** A task row whose [`TaskRow::lease`] is non-zero and below the run's
///   current lease token is dropped and counted in [`Applied::fenced`]; it never
///   overwrites a newer row. On a shared store, a record write of a run's holder
///   ([`update_leased`](Store::update_leased)) with a stale token is refused
///   ([`StoreError::Fenced`]).
///
/// # Reads
///
/// - [`get`](Store::get), [`tasks`](Store::tasks) and [`list`](Store::list) see every
///   write that was applied before they started.
/// - [`list`](Store::list) is a query, not a scan the caller narrows: an implementation
///   answers filters by parent, root, state, process type, definitions and schedules
///   from indexes, in time proportional to the page (plus the records a remaining
///   filter skips), never to the whole store.
/// - Values read back are untrusted by the runtime, but a store must never return a
///   record it cannot decode: it returns [`StoreError::Corrupt`] naming the key.
///
/// # History
///
/// - An [`Archive`] in a [`Batch`] is applied before the batch's other writes: it copies
///   the task rows of run [`rows_of`](Archive::rows_of) as they are at that moment, and
///   keeps them with the [`PastRun`] under (owner, seq). An archive with an existing
///   (owner, seq) replaces it. Then the owner keeps only its
///   [`keep`](Archive::keep) newest past runs (by seq): the older ones go with their rows.
/// - [`history`](Store::history) lists the kept runs of a record, newest first;
///   [`past_tasks`](Store::past_tasks) gives the rows of one of them.
/// - [`clear_runs`](Batch::clear_runs) never touches history; deleting a record
///   ([`delete_processes`](Batch::delete_processes)) deletes its history too. A
///   record deleted by [`update`](Store::update) keeps its history until a batch
///   deletes it (the runtime deletes records with a batch).
///
/// # Leases
///
/// The sled and memory stores serve one process at a time (sled holds a file lock), so
/// their [`claim`](Store::claim) always succeeds and only raises the token; a shared
/// store (PostgreSQL, [`is_shared`](Store::is_shared)) refuses a claim while another
/// owner's lease is unexpired. On a shared store the runtime renews all its leases
/// with one [`heartbeat`](Store::heartbeat) every third of the lease time, stops at
/// once a run whose renewal is refused, and takes over runs whose lease expired with
/// [`claim_expired`](Store::claim_expired) (no leader: every worker polls).
///
/// # The outbox
///
/// Notifications of run ends ([`Delivery`]) live in an outbox beside the records:
///
/// - **Written with the end.** [`update_enqueue`](Store::update_enqueue) is
///   [`update`](Store::update) plus the deliveries its function returns, in one atomic
///   write: a crash can lose both or neither. A delivery whose id is already in the
///   outbox is left as it is (the write is idempotent).
/// - **Claimed with a lease.** [`claim_deliveries`](Store::claim_deliveries) takes, in
///   one atomic write, up to `limit` pending deliveries due at `now_ms`, oldest due
///   first; each gets the claimer as owner, its `lease` token raised by one and its
///   `next_at` moved to `now_ms + lease_ms`, the time its claim expires. A claimed
///   delivery is therefore not due again until then, and an expired claim (a worker that
///   died mid-attempt) makes it claimable again. Two claims never return the same
///   delivery with the same token, also when several workers share the store (a
///   PostgreSQL store claims with `FOR UPDATE SKIP LOCKED` and may use its own clock
///   instead of `now_ms`).
/// - **Settled with a fenced compare-and-swap.** [`update_delivery`](Store::update_delivery)
///   sees the current value; the runtime writes an attempt's outcome only when the stored
///   `lease` is still the one it claimed, so a worker whose claim expired and was taken
///   over changes nothing.
/// - **Indexed.** [`deliveries`](Store::deliveries) answers a state filter from an index
///   (the other filters narrow while scanning), and [`next_delivery_at`](Store::next_delivery_at)
///   reads the earliest due time without a scan.
/// - **Channel states** ([`ChannelState`]: disabled by a receiver's `410 Gone`) are kept
///   by name and survive restarts.
pub trait Store: Send + Sync + 'static {
    /// Where the data lives, for messages.
    fn location(&self) -> String;
    /// One process record.
    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError>;
    /// One page of the records matching `query`, ordered by creation time, then id.
    fn list(&self, query: &Query) -> Result<Page, StoreError>;
    /// How many records match `query` (its page bounds ignored).
    fn count(&self, query: &Query) -> Result<u64, StoreError>;
    /// Atomically replaces record `id` by what `f` decides from its current value; `f`
    /// may be called more than once and must not have side effects. Returns the record
    /// as written (or as it was, for [`Update::Keep`]).
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError>;
    /// [`update`](Store::update) of run record `id`, fenced by `lease`: written only
    /// while `lease`'s token is the run's current one, checked in the same transaction as
    /// the write (a concurrent claim waits for it to end). A holder that was fenced out
    /// (another worker took the run over) gets [`StoreError::Fenced`] and nothing is
    /// written.
    ///
    /// The default (single-process stores: sled, memory, where nobody else takes a run)
    /// is [`update`](Store::update).
    ///
    /// # Errors
    ///
    /// [`StoreError::Fenced`] for a stale token; the errors of
    /// [`update`](Store::update).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::store::{MemoryStore, Store, Update};
    /// let store = MemoryStore::new();
    /// let lease = store.claim("run-1", "w1", 1_000)?;
    /// let written = store.update_leased("run-1", &lease, &mut |_| Update::Keep)?;
    /// assert!(written.is_none());
    /// # Ok::<(), procession::store::StoreError>(())
    /// ```
    fn update_leased(
        &self,
        id: &str,
        lease: &Lease,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        let _ = lease;
        self.update(id, f)
    }
    /// The task rows of run `id` (with their results), by node index.
    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError>;
    /// The task rows of run `id` as a resumption reads them (state, attempts, elapsed
    /// time, result), by node index. The default reads [`tasks`](Store::tasks); a store
    /// can decode less (the sled store skips names, errors, logs and progress).
    fn resume_rows(&self, id: &str) -> Result<Vec<(u32, ResumeRow)>, StoreError> {
        Ok(self
            .tasks(id)?
            .into_iter()
            .map(|(i, row)| (i, ResumeRow::from(row)))
            .collect())
    }
    /// Applies a batch atomically (see the fencing rule and the history rules above).
    fn apply(&self, batch: Batch) -> Result<Applied, StoreError>;
    /// Applies `batch` as [`apply`](Store::apply) does and leaves it empty. A store may
    /// keep the batch's vectors (their room, not their items), so that a writer filling
    /// one batch after another does not grow each of them again from nothing; the default
    /// takes the batch whole.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::store::{Batch, MemoryStore, Store};
    /// let store = MemoryStore::new();
    /// let mut batch = Batch::default();
    /// store.apply_in_place(&mut batch).unwrap();
    /// assert!(batch.is_empty());
    /// ```
    fn apply_in_place(&self, batch: &mut Batch) -> Result<Applied, StoreError> {
        self.apply(std::mem::take(batch))
    }
    /// The kept past runs of record `id`, newest first (empty when it has none).
    fn history(&self, id: &str) -> Result<Vec<PastRun>, StoreError>;
    /// The task rows of past run `seq` of record `id`, by node index (empty when that run
    /// is not kept or had no rows).
    fn past_tasks(&self, id: &str, seq: u64) -> Result<Vec<(u32, TaskRow)>, StoreError>;
    /// Makes every applied write survive a crash of this process.
    fn flush(&self) -> Result<(), StoreError>;
    /// A number never returned before by this store.
    fn next_id(&self) -> Result<u64, StoreError>;
    /// The run id an idempotency key was first used for.
    fn idempotent(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Records `key` → `id` unless the key is taken; returns the id it maps to.
    fn claim_idempotent(&self, key: &str, id: &str) -> Result<String, StoreError>;
    /// Claims run `run` for `owner` until `ttl_ms` from now, with a token greater than any
    /// returned before for this run.
    ///
    /// # Errors
    ///
    /// [`StoreError::Leased`] when another owner holds an unexpired lease (never for
    /// single-process stores).
    fn claim(&self, run: &str, owner: &str, ttl_ms: u64) -> Result<Lease, StoreError>;
    /// Extends `lease` by `ttl_ms` from now; `false` (nothing changed) when its token is no
    /// longer current: the holder was fenced out and must stop writing.
    fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, StoreError>;
    /// Gives `lease` up (another owner may claim at once); a stale token changes nothing.
    fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Launch's write of a run whose launch carries idempotency key `key`, in one
    /// atomic step: when `key` is already taken (by any run), nothing is written and
    /// [`Keyed::Taken`] names its run; otherwise record `id` is updated as by
    /// [`update`](Store::update) and, when `f` writes it, `key` is taken for `id` in the
    /// same atomic write (when `f` keeps it, the key stays free). Two launches with one
    /// key, on two workers of a shared store at the same moment, so get one run.
    ///
    /// The default (single-process stores, whose writes all come from the runtime's
    /// one writer) reads the key, updates, then takes the key.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::store::{Keyed, MemoryStore, Store, Update};
    /// use procession::ProcessRecord;
    /// let store = MemoryStore::new();
    /// let r = ProcessRecord::new_root("a", "t", "t", "", serde_json::Value::Null);
    /// let put = |r: &ProcessRecord| {
    ///     let r = r.clone();
    ///     move |_: Option<&ProcessRecord>| Update::Put(Box::new(r.clone()))
    /// };
    /// let first = store.update_keyed("k", "a", &mut put(&r))?;
    /// assert!(matches!(first, Keyed::Written(Some(_))));
    /// let second = store.update_keyed("k", "b", &mut put(&r))?;
    /// assert_eq!(second, Keyed::Taken("a".into()));
    /// # Ok::<(), procession::store::StoreError>(())
    /// ```
    fn update_keyed(
        &self,
        key: &str,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Keyed, StoreError> {
        if let Some(owner) = self.idempotent(key)? {
            return Ok(Keyed::Taken(owner));
        }
        let mut wrote = false;
        let out = self.update(id, &mut |cur| {
            let u = f(cur);
            wrote = !matches!(u, Update::Keep);
            u
        })?;
        if wrote {
            let owner = self.claim_idempotent(key, id)?;
            if owner != id {
                return Ok(Keyed::Taken(owner));
            }
        }
        Ok(Keyed::Written(out.map(Box::new)))
    }

    /// Deletes what a deleted run leaves beside its record: its lease row, and its
    /// idempotency key `key` when the key still names `run` (a later launch with the
    /// key then starts a new run). Called by the retention sweep.
    fn forget_run(&self, run: &str, key: Option<&str>) -> Result<(), StoreError>;

    /// The retention sweep: deletes up to `limit` finished run trees whose root ended
    /// before `ended_before` (ms since the Unix epoch), and up to `limit` ended
    /// deliveries created before it.
    ///
    /// - **What goes**: a root for which [`sweepable_end`] is before `ended_before`
    ///   (an ad-hoc root, unscheduled, done, failed or cancelled), with every record of
    ///   its tree (child runs, at any depth), their task rows, their kept history, their
    ///   leases and idempotency keys ([`forget_run`](Store::forget_run)), in one atomic
    ///   write per tree; delivered and failed deliveries created before `ended_before`.
    /// - **What stays**: every active run, definition record (defined in code),
    ///   scheduled record, idle record (dismissed or defined ad-hoc), pending delivery,
    ///   and a whole tree while any of its records is active. A child run is never
    ///   deleted on its own: it goes with its root, so a kept root keeps its children.
    /// - **Several workers**: any worker may sweep a shared store at any time; a
    ///   PostgreSQL store locks the roots it deletes with `FOR UPDATE SKIP LOCKED` and
    ///   deletes idempotently, so sweeping workers never wait for each other, and a run
    ///   relaunched meanwhile (its record locked by the launch) is skipped.
    ///
    /// The default pages through the ended records with [`list`](Store::list) and
    /// deletes with [`apply`](Store::apply) (single-process stores, whose writes all come
    /// from the runtime's one writer).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::store::{MemoryStore, Store};
    /// let store = MemoryStore::new();
    /// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    /// let week = std::time::Duration::from_secs(7 * 24 * 3600);
    /// // Runs that ended more than a week ago, 100 trees at most.
    /// let swept = store.sweep_finished((now - week).as_millis() as u64, 100)?;
    /// assert_eq!(swept.runs, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn sweep_finished(&self, ended_before: u64, limit: usize) -> Result<Swept, StoreError> {
        sweep_by_listing(self, ended_before, limit)
    }

    /// Removes the rows of workers whose last heartbeat is older than `silent_ms`
    /// (killed without a clean shutdown); returns how many. Nothing for single-process
    /// stores.
    fn forget_workers(&self, silent_ms: u64) -> Result<u64, StoreError> {
        let _ = silent_ms;
        Ok(0)
    }

    /// Whether several worker processes share this store (PostgreSQL): then the runtime
    /// heartbeats its leases and takes over runs whose lease expired. `false` for
    /// single-process stores (sled, memory), whose leases nobody else can take.
    fn is_shared(&self) -> bool {
        false
    }

    /// Renews every lease of `leases` held by `worker` by `ttl_ms` from now (a shared
    /// store does it in one statement, on its own clock, and records the worker's
    /// heartbeat); returns the runs whose renewal was refused (stale token: another
    /// worker took them) and the renewed runs whose record is `cancel_requested`.
    ///
    /// The default renews one lease at a time with [`renew`](Store::renew) and reads
    /// the records' states.
    fn heartbeat(&self, worker: &str, leases: &[Lease], ttl_ms: u64) -> Result<Beat, StoreError> {
        let _ = worker;
        let mut beat = Beat::default();
        for l in leases {
            if !self.renew(l, ttl_ms)? {
                beat.refused.push(l.run.clone());
            } else if self
                .get(&l.run)?
                .is_some_and(|r| r.state() == State::CancelRequested)
            {
                beat.cancel_requested.push(l.run.clone());
            }
        }
        Ok(beat)
    }

    /// Records worker `info` as started (a shared store lists it in
    /// [`workers`](Store::workers)); nothing for single-process stores.
    fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        let _ = info;
        Ok(())
    }

    /// Removes worker `id` from [`workers`](Store::workers) (a clean shutdown).
    fn unregister_worker(&self, id: &str) -> Result<(), StoreError> {
        let _ = id;
        Ok(())
    }

    /// The workers registered with this store, oldest first (empty for single-process
    /// stores).
    fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        Ok(Vec::new())
    }

    /// The task queue of a shared store (task-level claims, see [`TaskQueue`]); `None`
    /// for single-process stores, whose runs run all their tasks where they run.
    fn task_queue(&self) -> Option<&dyn TaskQueue> {
        None
    }

    /// The store as the [`MemoryStore`] it is, if it is one: the runtime's journal then
    /// writes task rows into it directly, without a [`TaskRow`] per row. Other stores
    /// keep the default, `None`.
    #[doc(hidden)]
    fn as_memory_store(&self) -> Option<&MemoryStore> {
        None
    }

    /// Claims for `owner`, until `ttl_ms` from now, up to `limit` active runs of the
    /// given process types that no live worker holds (their lease expired, or they
    /// have none), deepest first; returns the new leases. A shared store does it in one
    /// statement that skips rows another claim holds locked, so two workers never
    /// take the same run. Single-process stores return nothing: their runs are resumed
    /// at start.
    fn claim_expired(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        let _ = (owner, process_types, ttl_ms, limit);
        Ok(Vec::new())
    }

    /// [`claim_expired`](Store::claim_expired) that also takes the expired leases of
    /// `owner` itself, except those of the runs in `live` (the runs `owner` drives now,
    /// whose leases its heartbeat renews). Such a lease is one `owner` does not know it
    /// holds: a claim whose answer was lost (the statement committed, the connection
    /// broke, the retry found the lease already its own), or a run it stopped itself
    /// when it lost the store. Without it, a single worker would never resume that run.
    ///
    /// The default calls [`claim_expired`](Store::claim_expired) (no lease of `owner`
    /// is taken): right for single-process stores, which return nothing anyway.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::store::{MemoryStore, Store};
    /// let store = MemoryStore::new();
    /// // A single-process store resumes its runs at start: nothing to take over.
    /// let taken = store.claim_expired_except("w1", &["job"], 30_000, 64, &["run-1"])?;
    /// assert!(taken.is_empty());
    /// # Ok::<(), procession::store::StoreError>(())
    /// ```
    fn claim_expired_except(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
        live: &[&str],
    ) -> Result<Vec<Lease>, StoreError> {
        let _ = live;
        self.claim_expired(owner, process_types, ttl_ms, limit)
    }

    /// [`update`](Store::update), and when `f` writes (a put or a delete), the deliveries
    /// it returned added to the outbox in the same atomic write; deliveries whose id is
    /// already there are left as they are.
    fn update_enqueue(
        &self,
        id: &str,
        f: &mut Enqueue<'_>,
    ) -> Result<Option<ProcessRecord>, StoreError>;
    /// One delivery of the outbox.
    fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError>;
    /// One page of the deliveries matching `query`: grouped by state (pending,
    /// delivered, failed), each group by creation time, then id.
    fn deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError>;
    /// The earliest `next_at` of a pending delivery (claimed ones included: theirs is
    /// when their claim expires).
    fn next_delivery_at(&self) -> Result<Option<u64>, StoreError>;
    /// Claims up to `limit` pending deliveries due at `now_ms` for `owner`, until
    /// `now_ms + lease_ms` (see the outbox rules above); returns them as written.
    fn claim_deliveries(
        &self,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Atomically replaces delivery `id` by what `f` decides from its current value (`f`
    /// may be called more than once and must not have side effects); the id of a put is
    /// forced to `id`. Returns the delivery as written (or as it was, for
    /// [`DeliveryUpdate::Keep`]).
    fn update_delivery(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&Delivery>) -> DeliveryUpdate,
    ) -> Result<Option<Delivery>, StoreError>;
    /// The persisted state of channel `name` (`None`: enabled).
    fn channel_state(&self, name: &str) -> Result<Option<ChannelState>, StoreError>;
    /// Sets (or, with `None`, clears) the state of channel `name`.
    fn set_channel_state(&self, name: &str, state: Option<&ChannelState>)
        -> Result<(), StoreError>;

    /// Every record matching `query`, all pages.
    fn list_all(&self, query: &Query) -> Result<Vec<ProcessRecord>, StoreError> {
        let mut out = Vec::new();
        let mut q = query.clone();
        loop {
            let page = self.list(&q)?;
            out.extend(page.records);
            match page.next {
                Some(c) if query.limit.is_none() => q.after = Some(c),
                _ => return Ok(out),
            }
        }
    }

    /// The children of record `parent`, oldest first.
    fn children(&self, parent: &str) -> Result<Vec<ProcessRecord>, StoreError> {
        self.list_all(&Query::new().parent(parent))
    }

    /// Every process record (a full listing: for tools and tests, never used by the
    /// runtime).
    fn all(&self) -> Result<Vec<ProcessRecord>, StoreError> {
        self.list_all(&Query::new())
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        (**self).get(id)
    }
    fn list(&self, query: &Query) -> Result<Page, StoreError> {
        (**self).list(query)
    }
    fn count(&self, query: &Query) -> Result<u64, StoreError> {
        (**self).count(query)
    }
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        (**self).update(id, f)
    }
    fn update_leased(
        &self,
        id: &str,
        lease: &Lease,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        (**self).update_leased(id, lease, f)
    }
    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        (**self).tasks(id)
    }
    fn resume_rows(&self, id: &str) -> Result<Vec<(u32, ResumeRow)>, StoreError> {
        (**self).resume_rows(id)
    }
    fn apply(&self, batch: Batch) -> Result<Applied, StoreError> {
        (**self).apply(batch)
    }
    fn apply_in_place(&self, batch: &mut Batch) -> Result<Applied, StoreError> {
        (**self).apply_in_place(batch)
    }
    fn history(&self, id: &str) -> Result<Vec<PastRun>, StoreError> {
        (**self).history(id)
    }
    fn past_tasks(&self, id: &str, seq: u64) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        (**self).past_tasks(id, seq)
    }
    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        (**self).next_id()
    }
    fn idempotent(&self, key: &str) -> Result<Option<String>, StoreError> {
        (**self).idempotent(key)
    }
    fn claim_idempotent(&self, key: &str, id: &str) -> Result<String, StoreError> {
        (**self).claim_idempotent(key, id)
    }
    fn claim(&self, run: &str, owner: &str, ttl_ms: u64) -> Result<Lease, StoreError> {
        (**self).claim(run, owner, ttl_ms)
    }
    fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, StoreError> {
        (**self).renew(lease, ttl_ms)
    }
    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        (**self).release(lease)
    }
    fn update_keyed(
        &self,
        key: &str,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Keyed, StoreError> {
        (**self).update_keyed(key, id, f)
    }
    fn forget_run(&self, run: &str, key: Option<&str>) -> Result<(), StoreError> {
        (**self).forget_run(run, key)
    }
    fn sweep_finished(&self, ended_before: u64, limit: usize) -> Result<Swept, StoreError> {
        (**self).sweep_finished(ended_before, limit)
    }
    fn forget_workers(&self, silent_ms: u64) -> Result<u64, StoreError> {
        (**self).forget_workers(silent_ms)
    }
    fn is_shared(&self) -> bool {
        (**self).is_shared()
    }
    fn heartbeat(&self, worker: &str, leases: &[Lease], ttl_ms: u64) -> Result<Beat, StoreError> {
        (**self).heartbeat(worker, leases, ttl_ms)
    }
    fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        (**self).register_worker(info)
    }
    fn unregister_worker(&self, id: &str) -> Result<(), StoreError> {
        (**self).unregister_worker(id)
    }
    fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        (**self).workers()
    }
    fn claim_expired(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        (**self).claim_expired(owner, process_types, ttl_ms, limit)
    }
    fn claim_expired_except(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
        live: &[&str],
    ) -> Result<Vec<Lease>, StoreError> {
        (**self).claim_expired_except(owner, process_types, ttl_ms, limit, live)
    }
    fn task_queue(&self) -> Option<&dyn TaskQueue> {
        (**self).task_queue()
    }
    fn as_memory_store(&self) -> Option<&MemoryStore> {
        (**self).as_memory_store()
    }
    fn update_enqueue(
        &self,
        id: &str,
        f: &mut Enqueue<'_>,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        (**self).update_enqueue(id, f)
    }
    fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        (**self).delivery(id)
    }
    fn deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        (**self).deliveries(query)
    }
    fn next_delivery_at(&self) -> Result<Option<u64>, StoreError> {
        (**self).next_delivery_at()
    }
    fn claim_deliveries(
        &self,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        (**self).claim_deliveries(owner, now_ms, lease_ms, limit)
    }
    fn update_delivery(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&Delivery>) -> DeliveryUpdate,
    ) -> Result<Option<Delivery>, StoreError> {
        (**self).update_delivery(id, f)
    }
    fn channel_state(&self, name: &str) -> Result<Option<ChannelState>, StoreError> {
        (**self).channel_state(name)
    }
    fn set_channel_state(
        &self,
        name: &str,
        state: Option<&ChannelState>,
    ) -> Result<(), StoreError> {
        (**self).set_channel_state(name, state)
    }
}
