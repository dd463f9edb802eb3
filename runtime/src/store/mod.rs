//! Storage of process records, task records and task results.
//!
//! The executor and the runtime talk to storage only through the [`Store`] trait, so a
//! server-backed store (`PostgreSQL`, for several machines sharing work) can be added
//! without touching them. Two implementations ship: [`SledStore`] (embedded, the default)
//! and [`MemoryStore`].

use std::collections::BTreeMap;
use std::sync::Arc;

mod codec;
mod memory;
mod sled;

pub use self::memory::MemoryStore;
pub use self::sled::SledStore;

use crate::record::{LogEntry, ProcessRecord, Progress, RecordKind, State, Status, SCHEMA_VERSION};

/// Error returned by a [`Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be opened.
    #[error("cannot open the store at `{path}`: {message}")]
    Open {
        /// The store's location.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A read or write failed.
    #[error("store `{path}`: {message}")]
    Io {
        /// The store's location.
        path: String,
        /// What went wrong.
        message: String,
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

/// The compact record of one task of a run, as stored.
///
/// Names are shared (`Arc<str>`): a run's rows, its graph and its journal hold one copy
/// of each node id, and cloning a row allocates nothing for a task that logged nothing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskRow {
    /// The task's name.
    pub task: Arc<str>,
    /// The node id in the graph.
    pub node: Arc<str>,
    /// State (running, done, failed, cancelled; scheduled before it starts).
    pub state: State,
    /// Attempts started so far.
    pub attempts: u32,
    /// When the first attempt started (ms since the Unix epoch).
    pub started_at: Option<u64>,
    /// When it ended (ms since the Unix epoch).
    pub ended_at: Option<u64>,
    /// Wall time of all attempts, in nanoseconds.
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
    pub result: Option<Arc<str>>,
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
            depth: root.depth + 1,
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
        }
    }
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
    /// Process records deleted (with their runs' rows and results).
    pub delete_processes: Vec<String>,
}

impl Batch {
    /// True when the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.processes.is_empty()
            && self.clear_runs.is_empty()
            && self.delete_processes.is_empty()
    }

    /// Appends `other`, keeping order.
    pub fn extend(&mut self, other: Batch) {
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

/// Storage of records, task rows and results.
///
/// Implementations must make [`Store::update`] atomic (compare-and-swap) and
/// [`Store::apply`] all-or-nothing, and must keep writes in order: once a write is
/// durable, every earlier write is too.
pub trait Store: Send + Sync + 'static {
    /// Where the data lives, for messages.
    fn location(&self) -> String;
    /// One process record.
    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError>;
    /// Every process record.
    fn all(&self) -> Result<Vec<ProcessRecord>, StoreError>;
    /// Atomically replaces record `id` by what `f` decides from its current value; `f`
    /// may be called more than once and must not have side effects. Returns the record
    /// as written (or as it was, for [`Update::Keep`]).
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError>;
    /// The task rows of run `id` (with their results), by node index.
    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError>;
    /// Applies a batch atomically.
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    /// Makes every applied write survive a crash of this process.
    fn flush(&self) -> Result<(), StoreError>;
    /// A number never returned before by this store.
    fn next_id(&self) -> Result<u64, StoreError>;
    /// The run id an idempotency key was first used for.
    fn idempotent(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Records `key` → `id` unless the key is taken; returns the id it maps to.
    fn claim_idempotent(&self, key: &str, id: &str) -> Result<String, StoreError>;
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        (**self).get(id)
    }
    fn all(&self) -> Result<Vec<ProcessRecord>, StoreError> {
        (**self).all()
    }
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        (**self).update(id, f)
    }
    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        (**self).tasks(id)
    }
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        (**self).apply(batch)
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
}
