//! What is stored about a process (the data layer, above `schedule` and `error` only):
//! process records, their state machine, log entries with their [`Level`], progress,
//! and the filters of a listing.

mod log;
mod state;

pub use log::{Level, LogEntry, Progress, MAX_LOG};
pub use state::{InvalidTransition, State};

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the record layout written by this build. Records carry it; a store holding
/// records of a newer version is refused rather than misread.
///
/// Version 4 keeps past runs of records (the `history` and `past_tasks` trees; an older
/// store opens with an empty history). Version 3 adds the records' secondary index
/// (built at the first open of an older store). Version 2 stores task rows in
/// `MessagePack` with the task's result inside the row; version 1 stores (JSON rows,
/// results apart) are still read.
pub const SCHEMA_VERSION: u32 = 4;

/// Whether a record is a process or one task of a process's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A process (a root, or a child process).
    Process,
    /// A task of a process's graph, shown as a child of the run.
    Task,
}

/// Runtime status of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Current state.
    pub state: State,
    /// Error of the last run (failed state).
    pub error: Option<String>,
    /// When the last run started running (ms since the Unix epoch).
    pub running_since: Option<u64>,
    /// When the last run ended done (ms since the Unix epoch).
    pub done_at: Option<u64>,
    /// When the last run ended failed (ms since the Unix epoch).
    pub failed_at: Option<u64>,
    /// When the last run ended cancelled (ms since the Unix epoch).
    pub stopped_at: Option<u64>,
    /// Duration of the last run, in seconds.
    pub duration: Option<f64>,
}

impl Status {
    pub(crate) fn idle() -> Self {
        Status {
            state: State::Idle,
            error: None,
            running_since: None,
            done_at: None,
            failed_at: None,
            stopped_at: None,
            duration: None,
        }
    }
}

/// Bookkeeping of the current (or last) run of a process record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Distinguishes runs of the same record: late writes of an older run are ignored.
    pub token: u64,
    /// Fingerprint of the graph the run was started with.
    pub fingerprint: u64,
    /// Launch options the graph was built with.
    pub options: BTreeMap<String, Value>,
    /// Number of tasks in the graph.
    pub tasks: u32,
    /// Idempotency key of the launch, if any.
    pub idempotency_key: Option<String>,
    /// Max tasks at once for this run.
    pub max_concurrency: Option<usize>,
    /// How many times the run was resumed after a restart: attempt numbers of each
    /// resumption start in a block of their own, so that a task never sees the same
    /// attempt number twice.
    #[serde(default)]
    pub resumes: u32,
    /// The run's number among the runs of its record (1 for the first): its key in the
    /// record's history. 0 for a run started before runs were numbered.
    #[serde(default)]
    pub seq: u64,
    /// For a run that a schedule started alongside the record's running run
    /// ([`Overlap::Allow`](crate::Overlap::Allow)): the scheduled record, whose history
    /// this run joins when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_of: Option<String>,
    /// When the schedule fire that started this run was due (ms since the Unix epoch);
    /// `None` for a run launched by a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at: Option<u64>,
    /// The run's W3C trace context (`traceparent`), kept with cargo feature `otel` when
    /// an OpenTelemetry layer records spans: the spans of a resumed run join this trace.
    /// Read from the store, so untrusted: an invalid value is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A process record: identity, definition, status, progress and log.
///
/// The tasks of a run appear as child records of kind [`RecordKind::Task`], with id
/// `<process id>/<node id>`, depth `parent depth + 1` and `order` = the node's index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Layout version ([`SCHEMA_VERSION`] when written by this build).
    pub schema: u32,
    /// Unique id (user string).
    pub id: String,
    /// Process or task.
    pub kind: RecordKind,
    /// The process type (`#[process]` name) or, for a task record, the task's name.
    pub process_type: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Parameters (the process struct as JSON).
    pub params: Value,
    /// Metadata for filtering.
    pub metadata: BTreeMap<String, Value>,
    /// Parent record id (`None` for a root).
    pub parent: Option<String>,
    /// Root record id (its own id for a root).
    pub root: String,
    /// Depth in the tree (0 for a root).
    pub depth: u32,
    /// Order among siblings.
    pub order: u32,
    /// Whether a cancel is allowed.
    pub cancellable: bool,
    /// Created at run time by `adhoc_define`.
    pub adhoc: bool,
    /// Deleted (with its children) as soon as it ends.
    pub ephemeral: bool,
    /// Administrative record, hidden by default in user interfaces.
    pub special: bool,
    /// Text shown before launching.
    pub warning: Option<String>,
    /// Runtime status.
    pub status: Status,
    /// Progress. For a task: what it reported last (100 once done). For a run: its
    /// tasks' progress rolled up, counted per task (every task weighs the same; a task
    /// done or skipped counts 100 %, any other the last percentage it reported, 0 without
    /// one: a failed or cancelled run shows how far it got) with the last message any
    /// task reported. A run's progress is
    /// written at the progress flush cadence
    /// ([`RuntimeBuilder::progress_flush`](crate::RuntimeBuilder::progress_flush)) and at
    /// its end (100 when done); only runs that keep task records
    /// ([`RuntimeBuilder::task_records`](crate::RuntimeBuilder::task_records)) have it.
    pub progress: Progress,
    /// The last run's log (bounded).
    pub log: Vec<LogEntry>,
    /// Creation time (ms since the Unix epoch).
    pub created_at: u64,
    /// Attempts of the last run (task records).
    #[serde(default)]
    pub attempts: u32,
    /// The current or last run's bookkeeping (process records).
    #[serde(default)]
    pub run: Option<RunMeta>,
    /// When the scheduler launches this record.
    #[serde(default)]
    pub schedule: Option<crate::schedule::Schedule>,
    /// The scheduler's last fire (ms since the Unix epoch), launched or skipped.
    #[serde(default)]
    pub last_fire: Option<u64>,
    /// How many runs of this record were started (the last run's
    /// [`RunMeta::seq`]); kept by a dismiss, so run numbers never repeat.
    #[serde(default)]
    pub runs: u64,
    /// A fire that came while the record was active under
    /// [`Overlap::QueueOne`](crate::Overlap::QueueOne) (when it was due, ms since the Unix
    /// epoch): the scheduler launches the record as soon as the run ends. Any launch
    /// takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_fire: Option<u64>,
    /// Set while launches of this record are blocked
    /// ([`Runtime::block_launches`](crate::Runtime::block_launches)): every launch of it,
    /// by its schedule too, is refused until it is unblocked. Kept across restarts.
    #[serde(default)]
    pub launch_block: Option<LaunchBlock>,
}

/// Why and since when launches of a record are blocked (see
/// [`ProcessRecord::launch_block`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchBlock {
    /// The reason given by whoever blocked it, shown in the refusal.
    pub reason: Option<String>,
    /// When the block was set (ms since the Unix epoch).
    pub since: u64,
}

impl ProcessRecord {
    /// A new idle root record (for custom stores and tests; the runtime creates records
    /// itself).
    pub fn new_root(
        id: &str,
        process_type: &str,
        name: &str,
        description: &str,
        params: Value,
    ) -> Self {
        ProcessRecord {
            schema: SCHEMA_VERSION,
            id: id.to_owned(),
            kind: RecordKind::Process,
            process_type: process_type.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
            params,
            metadata: BTreeMap::new(),
            parent: None,
            root: id.to_owned(),
            depth: 0,
            order: 0,
            cancellable: true,
            adhoc: false,
            ephemeral: false,
            special: false,
            warning: None,
            status: Status::idle(),
            progress: Progress::default(),
            log: Vec::new(),
            created_at: now_ms(),
            attempts: 0,
            run: None,
            schedule: None,
            last_fire: None,
            runs: 0,
            queued_fire: None,
            launch_block: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.status.state
    }

    /// Moves to `to` if the table allows it, stamping the status fields and logging the
    /// change. A refused transition changes nothing.
    pub(crate) fn transition(&mut self, to: State) -> Result<(), InvalidTransition> {
        self.status.state.validate_transition(to)?;
        self.set_state(to);
        Ok(())
    }

    /// Sets the state without checking the table (the scheduled → cancelled shortcut,
    /// settling after a restart), stamping the status fields.
    pub(crate) fn set_state(&mut self, to: State) {
        let now = now_ms();
        match to {
            State::Running => {
                self.status.running_since = Some(now);
                self.status.error = None;
            }
            State::Done => self.status.done_at = Some(now),
            State::Failed => self.status.failed_at = Some(now),
            State::Cancelled => self.status.stopped_at = Some(now),
            _ => {}
        }
        if to.is_end() {
            self.status.duration = self
                .status
                .running_since
                .map(|s| Duration::from_millis(now.saturating_sub(s)).as_secs_f64());
        }
        self.status.state = to;
        self.push_log(Level::Info, format!("State changed to {to}"));
    }

    /// Clears the last run's fields (dismiss, relaunch).
    pub(crate) fn clear_run(&mut self) {
        let state = self.status.state;
        self.status = Status::idle();
        self.status.state = state;
        self.progress = Progress::default();
        self.log.clear();
        self.attempts = 0;
    }

    pub(crate) fn push_log(&mut self, level: Level, message: String) {
        self.log.push(LogEntry {
            timestamp: now_ms(),
            level,
            message,
            data: None,
        });
        if self.log.len() > MAX_LOG {
            let extra = self.log.len() - MAX_LOG;
            self.log.drain(..extra);
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    crate::util::unix_ms(SystemTime::now())
}

/// Filters of [`Runtime::list`](crate::Runtime::list).
///
/// # Examples
///
/// ```
/// use procession::{ListFilter, State};
/// let f = ListFilter::new().state(State::Running).metadata("customer", "2");
/// assert_eq!(f.states, vec![State::Running]);
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ListFilter {
    /// Only records in one of these states (any when empty).
    pub states: Vec<State>,
    /// Only records of this tree.
    pub root: Option<String>,
    /// Only records whose metadata has all these pairs.
    pub metadata: BTreeMap<String, Value>,
    /// Include task records (children of runs); default false.
    pub include_tasks: bool,
}

impl ListFilter {
    /// Every process record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a state to match.
    #[must_use]
    pub fn state(mut self, state: State) -> Self {
        self.states.push(state);
        self
    }

    /// Only the tree under `root` (the root included).
    #[must_use]
    pub fn root(mut self, root: impl Into<String>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Adds a metadata pair to match.
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Also list the task records of runs.
    #[must_use]
    pub fn with_tasks(mut self) -> Self {
        self.include_tasks = true;
        self
    }

    pub(crate) fn matches(&self, r: &ProcessRecord) -> bool {
        (self.states.is_empty() || self.states.contains(&r.status.state))
            && self.root.as_ref().is_none_or(|root| &r.root == root)
            && self
                .metadata
                .iter()
                .all(|(k, v)| r.metadata.get(k) == Some(v))
            && (self.include_tasks || r.kind == RecordKind::Process)
    }
}
