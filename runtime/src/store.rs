//! Storage of process records, task records and task results.
//!
//! The executor and the runtime talk to storage only through the [`Store`] trait, so a
//! server-backed store (`PostgreSQL`, for several machines sharing work) can be added
//! without touching them. Two implementations ship: [`SledStore`] (embedded, the default)
//! and [`MemoryStore`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

fn run_key(id: &str, order: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 5);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(&order.to_be_bytes());
    k
}

fn run_prefix(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k
}

fn order_of(key: &[u8]) -> u32 {
    let n = key.len();
    if n < 4 {
        return 0;
    }
    u32::from_be_bytes([key[n - 4], key[n - 3], key[n - 2], key[n - 1]])
}

/// The embedded store: one sled database in a directory.
///
/// Durability: [`Store::flush`] writes sled's buffers to the operating system, so a
/// killed process (even `kill -9`) loses nothing that was flushed; with
/// [`SledStore::strict`], every flush also fsyncs the data file, so a power loss loses
/// nothing that was flushed either. The runtime flushes once per group of writes, never
/// once per transition.
pub struct SledStore {
    db: sled::Db,
    processes: sled::Tree,
    tasks: sled::Tree,
    results: sled::Tree,
    keys: sled::Tree,
    path: PathBuf,
    strict: bool,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the directory cannot be used or its files are damaged,
    /// [`StoreError::Incompatible`] when it was written by a newer schema. Never panics.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::{SledStore, Store};
    /// let dir = std::env::temp_dir().join(format!("procession-doc-{}", std::process::id()));
    /// let store = SledStore::open(&dir).unwrap();
    /// assert!(store.all().unwrap().is_empty());
    /// # drop(store); let _ = std::fs::remove_dir_all(&dir);
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let config = sled::Config::new().path(&path);
        Self::with_config(&config, path)
    }

    /// A store in a temporary directory, deleted when dropped: for tests.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the temporary directory cannot be created.
    pub fn temporary() -> Result<SledStore, StoreError> {
        let config = sled::Config::new().temporary(true);
        Self::with_config(&config, PathBuf::from("(temporary)"))
    }

    /// Also fsync the data file on every flush (power-loss safe; slower).
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    fn with_config(config: &sled::Config, path: PathBuf) -> Result<SledStore, StoreError> {
        let shown = path.display().to_string();
        let open_err = |message: String| StoreError::Open {
            path: shown.clone(),
            message,
        };
        // sled may panic on some damaged files: a damaged store is an error, never a panic.
        let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|p| {
                open_err(format!(
                    "damaged store files ({})",
                    crate::exec::panic_message(&*p)
                ))
            })?
            .map_err(|e| open_err(e.to_string()))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        let store = SledStore {
            processes: tree("processes")?,
            tasks: tree("tasks")?,
            results: tree("results")?,
            keys: tree("keys")?,
            db,
            path,
            strict: false,
        };
        match store
            .db
            .get(b"schema")
            .map_err(|e| open_err(e.to_string()))?
        {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| open_err("the schema marker is damaged".into()))?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::Incompatible {
                        path: shown,
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                if found < SCHEMA_VERSION {
                    // This build reads the older layout and writes the newer one: mark the
                    // store so that older builds refuse it instead of misreading it.
                    store
                        .db
                        .insert(b"schema", &SCHEMA_VERSION.to_be_bytes())
                        .map_err(|e| open_err(e.to_string()))?;
                }
            }
            None => {
                store
                    .db
                    .insert(b"schema", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| open_err(e.to_string()))?;
            }
        }
        Ok(store)
    }

    fn io(&self, e: impl fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.location(),
            message: e.to_string(),
        }
    }

    fn decode_record(&self, key: &[u8], bytes: &[u8]) -> Result<ProcessRecord, StoreError> {
        decode_record(&self.location(), key, bytes)
    }
}

fn decode_record(path: &str, key: &[u8], bytes: &[u8]) -> Result<ProcessRecord, StoreError> {
    #[derive(serde::Deserialize)]
    struct Version {
        schema: u32,
    }
    let corrupt = |message: String| StoreError::Corrupt {
        path: path.to_owned(),
        key: String::from_utf8_lossy(key).into_owned(),
        message,
    };
    let v: Version = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if v.schema > SCHEMA_VERSION {
        return Err(StoreError::Incompatible {
            path: path.to_owned(),
            found: v.schema,
            supported: SCHEMA_VERSION,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records are plain data")
}

/// Task rows are the bulk of a store (one or two writes per task): `MessagePack` with
/// fields by position is about a third of their JSON size, and sled's write cost grows
/// with the bytes written.
fn encode_row(row: &TaskRow) -> Vec<u8> {
    rmp_serde::to_vec(row).expect("task rows are plain data")
}

/// Decodes a task row: `MessagePack`, or JSON as written by schema 1 (a JSON object
/// starts with `{`, which is a positive fixint in `MessagePack` and never starts a row).
fn decode_row(bytes: &[u8]) -> Result<TaskRow, String> {
    if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    } else {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl Store for SledStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        match self.processes.get(id.as_bytes()).map_err(|e| self.io(e))? {
            Some(v) => self.decode_record(id.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    fn all(&self) -> Result<Vec<ProcessRecord>, StoreError> {
        self.processes
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                self.decode_record(&k, &v)
            })
            .collect()
    }

    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        loop {
            let old = self.processes.get(id.as_bytes()).map_err(|e| self.io(e))?;
            let current = match &old {
                Some(v) => Some(self.decode_record(id.as_bytes(), v)?),
                None => None,
            };
            let (new, result) = match f(current.as_ref()) {
                Update::Keep => return Ok(current),
                Update::Delete => (None, None),
                Update::Put(r) => (Some(encode(&*r)), Some(*r)),
            };
            let swapped = self
                .processes
                .compare_and_swap(id.as_bytes(), old, new)
                .map_err(|e| self.io(e))?;
            if swapped.is_ok() {
                return Ok(result);
            }
            // Raced with another writer: decide again on the new value.
        }
    }

    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        let mut rows = self
            .tasks
            .scan_prefix(run_prefix(id))
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                let row = decode_row(&v).map_err(|message| StoreError::Corrupt {
                    path: self.location(),
                    key: format!("{id}/#{}", order_of(&k)),
                    message,
                })?;
                Ok((order_of(&k), row))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Rows written before results moved into them (schema 1) keep their results in
        // a tree of their own.
        if rows
            .iter()
            .any(|(_, r)| r.state == State::Done && r.result.is_none())
        {
            let mut legacy = HashMap::new();
            for kv in self.results.scan_prefix(run_prefix(id)) {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                legacy.insert(order_of(&k), Arc::<str>::from(String::from_utf8_lossy(&v)));
            }
            for (i, r) in &mut rows {
                if r.result.is_none() {
                    r.result = legacy.remove(i);
                }
            }
        }
        Ok(rows)
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        use sled::Transactional;
        let mut tasks = sled::Batch::default();
        let mut results = sled::Batch::default();
        let mut processes = sled::Batch::default();
        let mut cleared = Vec::new();
        for id in batch.clear_runs.iter().chain(&batch.delete_processes) {
            for k in self.tasks.scan_prefix(run_prefix(id)).keys() {
                cleared.push((true, k.map_err(|e| self.io(e))?));
            }
            for k in self.results.scan_prefix(run_prefix(id)).keys() {
                cleared.push((false, k.map_err(|e| self.io(e))?));
            }
        }
        let cleared_results = cleared.iter().any(|(is_task, _)| !is_task);
        for (is_task, k) in cleared {
            if is_task {
                tasks.remove(k);
            } else {
                results.remove(k);
            }
        }
        for id in &batch.delete_processes {
            processes.remove(id.as_bytes());
        }
        for (id, order, row) in &batch.tasks {
            tasks.insert(run_key(id, *order), encode_row(row));
        }
        for r in &batch.processes {
            processes.insert(r.id.as_bytes(), encode(r));
        }
        if batch.processes.is_empty() && batch.delete_processes.is_empty() && !cleared_results {
            // Only task rows (every write cycle of a run): one tree's batch is atomic on
            // its own, and about twice as fast as a transaction, which reads every key
            // it writes.
            return self.tasks.apply_batch(tasks).map_err(|e| self.io(e));
        }
        (&self.tasks, &self.results, &self.processes)
            .transaction(|(t, r, p)| {
                t.apply_batch(&tasks)?;
                r.apply_batch(&results)?;
                p.apply_batch(&processes)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.io(format!("{e:?}")))
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.io(e))?;
        if self.strict {
            let file = std::fs::File::open(self.path.join("db")).map_err(|e| self.io(e))?;
            file.sync_all().map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        // A counter in the store (sled's own `generate_id` skips a million after each
        // restart, which makes ugly run ids).
        let v = self
            .db
            .update_and_fetch(b"next_id", |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| self.io(e))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(1, u64::from_be_bytes);
        Ok(v)
    }

    fn idempotent(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .keys
            .get(key.as_bytes())
            .map_err(|e| self.io(e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn claim_idempotent(&self, key: &str, id: &str) -> Result<String, StoreError> {
        match self
            .keys
            .compare_and_swap(key.as_bytes(), None::<&[u8]>, Some(id.as_bytes()))
            .map_err(|e| self.io(e))?
        {
            Ok(()) => Ok(id.to_owned()),
            Err(e) => Ok(e.current.map_or_else(
                || id.to_owned(),
                |v| String::from_utf8_lossy(&v).into_owned(),
            )),
        }
    }
}

/// A store in memory: nothing survives the process. Used by [`Runtime::in_memory`](crate::Runtime::in_memory).
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemInner>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct MemInner {
    processes: BTreeMap<String, ProcessRecord>,
    /// Task rows per run, by node index.
    runs: HashMap<Arc<str>, Vec<Option<TaskRow>>>,
    keys: BTreeMap<String, String>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn location(&self) -> String {
        "(memory)".into()
    }

    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        Ok(self.lock().processes.get(id).cloned())
    }

    fn all(&self) -> Result<Vec<ProcessRecord>, StoreError> {
        Ok(self.lock().processes.values().cloned().collect())
    }

    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        let mut g = self.lock();
        let current = g.processes.get(id).cloned();
        match f(current.as_ref()) {
            Update::Keep => Ok(current),
            Update::Delete => {
                g.processes.remove(id);
                Ok(None)
            }
            Update::Put(r) => {
                g.processes.insert(id.to_owned(), (*r).clone());
                Ok(Some(*r))
            }
        }
    }

    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        Ok(self.lock().runs.get(id).map_or_else(Vec::new, |rows| {
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| Some((i as u32, r.clone()?)))
                .collect()
        }))
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut g = self.lock();
        for id in batch.clear_runs.iter().chain(&batch.delete_processes) {
            g.runs.remove(id.as_str());
        }
        for id in &batch.delete_processes {
            g.processes.remove(id);
        }
        // A batch holds long stretches of one run's rows: one map lookup per stretch.
        let mut tasks = batch.tasks.into_iter().peekable();
        while let Some((id, order, row)) = tasks.next() {
            let rows = g.runs.entry(id.clone()).or_default();
            let mut put = |order: u32, row: TaskRow| {
                let i = order as usize;
                if rows.len() <= i {
                    rows.resize(i + 1, None);
                }
                rows[i] = Some(row);
            };
            put(order, row);
            while let Some((_, order, row)) = tasks.next_if(|(next, _, _)| *next == id) {
                put(order, row);
            }
        }
        for r in batch.processes {
            g.processes.insert(r.id.clone(), r);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn idempotent(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().keys.get(key).cloned())
    }

    fn claim_idempotent(&self, key: &str, id: &str) -> Result<String, StoreError> {
        Ok(self
            .lock()
            .keys
            .entry(key.to_owned())
            .or_insert_with(|| id.to_owned())
            .clone())
    }
}
