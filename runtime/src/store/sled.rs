//! The embedded store: one sled database in a directory.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[path = "sled_blocks.rs"]
mod blocks;
#[path = "sled_guard.rs"]
mod guard;
#[path = "sled_outbox.rs"]
mod outbox;

use self::blocks::{block_key, classify, merge_block, Entry, RowKey, BLOCK_ROWS, OWN_KEY_FROM};
use self::guard::{Sidecar, SEQ_KEY};

use super::codec::{decode_record, decode_resume_row, decode_row, encode, encode_row};
use super::outbox::{ChannelState, Delivery, DeliveryPage, DeliveryQuery, DeliveryUpdate};
use super::{
    index, Applied, Batch, Enqueue, Lease, Page, PastRun, Query, ResumeRow, Store, StoreError,
    TaskRow, Update,
};
use crate::record::{now_ms, ProcessRecord, State};

/// Encoded task rows to write, per (run id, block), each with its node index, in write
/// order (`None`: the row goes to a key of its own).
type BlockWrites<'a> = std::collections::BTreeMap<(&'a str, u32), Vec<(u32, Option<Vec<u8>>)>>;

/// The key of row `order` of run `id` when the row is kept in a key of its own (a large
/// row; every row before schema 5).
fn row_key(id: &str, order: u32) -> Vec<u8> {
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

/// Key of past run `seq` of record `id` in the `history` tree, and the prefix of its rows
/// in the `past_tasks` tree (each row's key adds its node index).
fn past_key(id: &str, seq: u64) -> Vec<u8> {
    let mut k = run_prefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The seq of a `history` key (`None` for a key that is not one of ours).
fn seq_of(prefix_len: usize, key: &[u8]) -> Option<u64> {
    let tail = key.get(prefix_len..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
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
///
/// Damage: every write carries the next number of a write sequence, and each flush records
/// the number reached in `procession.seq` beside sled's files, so a flipped byte, a
/// truncation or zeroed bytes in the `db` file, or a deleted `db`, that lose flushed writes
/// make the open fail with [`StoreError::Damaged`] (writes after sequence N were lost)
/// instead of opening an older or empty store; damage to data that an earlier open already
/// snapshotted, or to `conf` or a snapshot, is [`StoreError::Open`] (or, for a record's
/// page, [`StoreError::Io`] when it is read); a deleted `conf` or snapshot is rebuilt by
/// sled from its log; and the `snap.*.generating` file that a kill during open leaves
/// (sled issue 1527) is removed before opening, with a warning. A store whose loss is
/// known and accepted opens again once `procession.seq` is deleted.
///
/// Layout: a run's task rows are kept 64 to a sled key (sled's cost is per key written,
/// not per byte: a run on sled then writes its rows faster than raw sled inserts one
/// record per key); a row of 2 KiB or more keeps a key of its own. Stores written by
/// earlier builds (one key per row) are read as they are; see [`SledStore::SCHEMA`].
pub struct SledStore {
    db: sled::Db,
    processes: sled::Tree,
    tasks: sled::Tree,
    results: sled::Tree,
    keys: sled::Tree,
    /// Secondary index of the records (see `index.rs`).
    index: sled::Tree,
    /// Run id → its current [`Lease`] (`MessagePack`).
    leases: sled::Tree,
    /// Kept past runs: `<record id>\0<seq>` → the run's record (JSON), schema 4.
    history: sled::Tree,
    /// Their task rows: `<record id>\0<seq><node index>` → the row, as in `tasks`.
    past_tasks: sled::Tree,
    /// The outbox: delivery id → [`Delivery`] (`MessagePack`), its listing index (state,
    /// creation time, id), its due index (due time, id; pending only), and the channels'
    /// persisted states (see `sled_outbox.rs`).
    outbox: outbox::Trees,
    /// The current lease token of each run seen by this process (the fencing check of a
    /// task row write must not read the lease tree every time).
    tokens: Mutex<HashMap<String, u64>>,
    path: PathBuf,
    strict: bool,
    /// The last write sequence number given to a write. Held while a write and its
    /// number are written, so that a flush never records a number whose write is not in
    /// sled yet.
    seq: Mutex<u64>,
    /// `None` for a temporary store.
    sidecar: Option<Sidecar>,
    /// Declared last, so dropped after sled's handles: see [`Released`].
    _released: Released,
}

/// Waits, when a store is dropped, until sled has let go of its file lock: sled's
/// background threads hold the database a moment after the last handle is dropped, and
/// a store that was closed must open again at once (a restart in the same process, a
/// test). Bounded: after 5 s it gives up, and the next open reports the lock.
#[derive(Debug)]
struct Released(Option<PathBuf>);

impl Drop for Released {
    fn drop(&mut self) {
        let Some(dir) = &self.0 else { return };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let Ok(file) = std::fs::File::open(dir.join("db")) else {
                return;
            };
            match file.try_lock() {
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    drop(file);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                // Free (the lock goes with `file`), or an error: nothing to wait for.
                _ => return,
            }
        }
    }
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
    /// [`StoreError::Damaged`] when its data files lost writes that a flush had made
    /// durable, [`StoreError::Incompatible`] when it was written by a newer schema. Never
    /// panics.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::store::{SledStore, Store, StoreError};
    /// let dir = std::env::temp_dir().join(format!("procession-doc-{}", std::process::id()));
    /// let store = SledStore::open(&dir).unwrap();
    /// assert!(store.all().unwrap().is_empty());
    /// drop(store);
    /// match SledStore::open(&dir) {
    ///     Ok(_) => {}
    ///     // The data files are behind what was flushed: restore a backup rather than
    ///     // resume an older state (which would run finished tasks again).
    ///     Err(StoreError::Damaged { found_seq, .. }) => eprintln!("lost writes after {found_seq}"),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StoreError> {
        Self::open_with_cache(path, Self::DEFAULT_CACHE)
    }

    /// The default of [`open_with_cache`](SledStore::open_with_cache): 64 MiB of sled's
    /// page cache (sled's own default is 1 GiB, which a long-lived process reaches: a
    /// 100k-task run then held about 350 MiB).
    pub const DEFAULT_CACHE: u64 = 64 * 1024 * 1024;

    /// Opens (or creates) the store in directory `path`, with at most `cache_bytes` of
    /// sled's page cache: the pages of records read or written recently, kept in memory.
    /// A larger cache saves reads of the `db` file (listing many runs, resuming a large
    /// run); it bounds memory, not what is stored. Values below 1 MiB are raised to it.
    ///
    /// # Errors
    ///
    /// As [`open`](SledStore::open).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::store::{SledStore, Store};
    /// let dir = std::env::temp_dir().join(format!("procession-doc-cache-{}", std::process::id()));
    /// let store = SledStore::open_with_cache(&dir, 16 * 1024 * 1024).unwrap();
    /// assert!(store.all().unwrap().is_empty());
    /// # drop(store);
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// ```
    pub fn open_with_cache(
        path: impl AsRef<Path>,
        cache_bytes: u64,
    ) -> Result<SledStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        guard::clear_interrupted_open(&path).map_err(|e| {
            StoreError::open(
                path.display().to_string(),
                format!("cannot clear what an interrupted open left: {e}"),
            )
        })?;
        let config = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes.max(Self::MIN_CACHE));
        let sidecar = Sidecar::new(&path);
        Self::with_config(&config, path, Some(sidecar))
    }

    /// The smallest cache [`open_with_cache`](SledStore::open_with_cache) gives sled.
    const MIN_CACHE: u64 = 1024 * 1024;

    /// The layout version in the store's `schema` marker: the records' schema
    /// ([`SCHEMA_VERSION`](crate::record::SCHEMA_VERSION)) up to 4; 5 keeps task rows in
    /// blocks of 64 per key (a fraction of sled's cost per key written). A
    /// store marked with a higher version (a newer build's) is refused with
    /// [`StoreError::Incompatible`]; one with a lower version is read as is, and marked
    /// with this one at open (older builds then refuse it instead of misreading it).
    pub const SCHEMA: u32 = 5;

    /// Task rows per sled batch in a larger write.
    ///
    /// sled keeps every node version a batch replaces until the batch ends (one epoch
    /// guard for the whole batch), and a transaction holds its writes in memory too: a
    /// 100k-task write in one batch took over 100 MiB. Each chunk is atomic and carries
    /// the write sequence; the chunks are written before the rest of the write (records,
    /// history), so a crash between them leaves task rows ahead of their record, which
    /// is what a crash during a run leaves anyway (each row states only what happened),
    /// never a record ahead of its rows. sled's log keeps a prefix of its writes, so
    /// rows of a run whose record was lost are those of a run id that is not reused.
    const CHUNK_ROWS: usize = 2048;

    /// From this many task rows, [`Store::resume_rows`] reads a run with two threads.
    const PARALLEL_ROWS: u32 = 8192;

    /// A store in a temporary directory, deleted when dropped: for tests.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the temporary directory cannot be created.
    pub fn temporary() -> Result<SledStore, StoreError> {
        Self::temporary_with_cache(Self::DEFAULT_CACHE)
    }

    /// [`temporary`](SledStore::temporary) with at most `cache_bytes` of page cache.
    pub(crate) fn temporary_with_cache(cache_bytes: u64) -> Result<SledStore, StoreError> {
        let config = sled::Config::new()
            .temporary(true)
            .cache_capacity(cache_bytes.max(Self::MIN_CACHE));
        Self::with_config(&config, PathBuf::from("(temporary)"), None)
    }

    /// Also fsync the data file on every flush (power-loss safe; slower).
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    fn with_config(
        config: &sled::Config,
        path: PathBuf,
        sidecar: Option<Sidecar>,
    ) -> Result<SledStore, StoreError> {
        let released = sidecar.as_ref().map(|_| path.clone());
        let shown = path.display().to_string();
        let open_err = |e: String| StoreError::open(shown.clone(), e);
        // sled may panic on some damaged files: a damaged store is an error, never a panic.
        let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|p| {
                open_err(format!(
                    "damaged store files ({})",
                    crate::error::panic_message(&*p)
                ))
            })?
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                source: Arc::new(e),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        let store = SledStore {
            processes: tree("processes")?,
            tasks: tree("tasks")?,
            results: tree("results")?,
            keys: tree("keys")?,
            index: tree("index")?,
            leases: tree("leases")?,
            history: tree("history")?,
            past_tasks: tree("past_tasks")?,
            outbox: outbox::Trees {
                deliveries: tree("outbox")?,
                by_state: tree("outbox_state")?,
                due: tree("outbox_due")?,
                channels: tree("channels")?,
            },
            tokens: Mutex::default(),
            db,
            path,
            strict: false,
            seq: Mutex::new(0),
            sidecar,
            // Every drop of a store on a directory waits for sled's lock, also the drop
            // of a store refused below (a second open must see the same refusal).
            _released: Released(released),
        };
        // Before anything is written: a store that lost writes is refused as it was found.
        let durable = guard::decode_seq(
            store
                .tasks
                .get(SEQ_KEY)
                .map_err(|e| open_err(e.to_string()))?
                .as_deref(),
        )
        .map_err(&open_err)?;
        if let Some(side) = &store.sidecar {
            let expected = side.read().map_err(&open_err)?.unwrap_or(0);
            if durable < expected {
                tracing::error!(
                    path = %shown,
                    expected_seq = expected,
                    found_seq = durable,
                    "the store's data files lost writes that had been flushed"
                );
                return Err(StoreError::Damaged {
                    path: shown,
                    expected_seq: expected,
                    found_seq: durable,
                });
            }
        }
        *store.lock_seq() = durable;
        let found = match store
            .db
            .get(b"schema")
            .map_err(|e| open_err(e.to_string()))?
        {
            Some(v) => <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| open_err("the schema marker is damaged".into()))?,
            None => Self::SCHEMA,
        };
        if found > Self::SCHEMA {
            return Err(StoreError::Incompatible {
                path: shown,
                found,
                supported: Self::SCHEMA,
            });
        }
        if found < 3 {
            // Schema 3 added the index: build it once, from the records.
            store.rebuild_index()?;
        }
        if found < Self::SCHEMA || store.db.get(b"schema").ok().flatten().is_none() {
            // This build reads the older layout and writes the newer one: mark the
            // store so that older builds refuse it instead of misreading it.
            store
                .db
                .insert(b"schema", &Self::SCHEMA.to_be_bytes())
                .map_err(|e| open_err(e.to_string()))?;
        }
        Ok(store)
    }

    fn rebuild_index(&self) -> Result<(), StoreError> {
        self.index.clear().map_err(|e| self.io(e))?;
        let mut batch = sled::Batch::default();
        for kv in &self.processes {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            // A damaged record stays out of the index; reading it by id still says it
            // is damaged.
            match self.decode_record(&k, &v) {
                Ok(r) => {
                    for key in index::keys(&r) {
                        batch.insert(key, &[]);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "record left out of the index"),
            }
        }
        self.index.apply_batch(batch).map_err(|e| self.io(e))
    }

    /// The writes of `batch` to the history trees: its archives (rows copied as they
    /// are now, before the batch's other writes), the past runs they push out, and the
    /// history of deleted records. The flag says whether there is any.
    fn history_batches(
        &self,
        batch: &Batch,
    ) -> Result<(sled::Batch, sled::Batch, bool), StoreError> {
        let mut history = sled::Batch::default();
        let mut past = sled::Batch::default();
        let mut any = false;
        // The seqs each owner keeps, as this batch leaves them.
        let mut kept: HashMap<&str, std::collections::BTreeSet<u64>> = HashMap::new();
        for a in batch.archive.iter().filter(|a| a.keep > 0) {
            any = true;
            let key = past_key(&a.owner, a.run.seq);
            // A run kept again under the same seq replaces the old one, rows included.
            for k in self.past_tasks.scan_prefix(&key).keys() {
                past.remove(k.map_err(|e| self.io(e))?);
            }
            // Raw bytes: a row is copied as stored, never decoded (a damaged row must
            // not stop a relaunch; reading it back says it is damaged).
            let entries = self.run_entries(&a.rows_of)?;
            for (order, v) in self.row_bytes(&a.rows_of, &entries, true)? {
                let mut row_key = key.clone();
                row_key.extend_from_slice(&order.to_be_bytes());
                past.insert(row_key, v);
            }
            history.insert(key, super::codec::encode(&a.run.record));
            let owner_prefix = run_prefix(&a.owner);
            let seqs = match kept.entry(a.owner.as_str()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut seqs = std::collections::BTreeSet::new();
                    for k in self.history.scan_prefix(&owner_prefix).keys() {
                        let k = k.map_err(|e| self.io(e))?;
                        if let Some(seq) = seq_of(owner_prefix.len(), &k) {
                            seqs.insert(seq);
                        }
                    }
                    e.insert(seqs)
                }
            };
            seqs.insert(a.run.seq);
            while seqs.len() > a.keep {
                let Some(old) = seqs.pop_first() else { break };
                let old_key = past_key(&a.owner, old);
                for k in self.past_tasks.scan_prefix(&old_key).keys() {
                    past.remove(k.map_err(|e| self.io(e))?);
                }
                history.remove(old_key);
            }
        }
        for id in &batch.delete_processes {
            let prefix = run_prefix(id);
            for k in self.history.scan_prefix(&prefix).keys() {
                history.remove(k.map_err(|e| self.io(e))?);
                any = true;
            }
            for k in self.past_tasks.scan_prefix(&prefix).keys() {
                past.remove(k.map_err(|e| self.io(e))?);
                any = true;
            }
        }
        Ok((history, past, any))
    }

    /// Every key and value under run `id`'s prefix in the `tasks` tree: its blocks, and
    /// its rows of their own (schema 1 to 4).
    fn run_entries(&self, id: &str) -> Result<Vec<(sled::IVec, sled::IVec)>, StoreError> {
        self.tasks
            .scan_prefix(run_prefix(id))
            .map(|kv| kv.map_err(|e| self.io(e)))
            .collect()
    }

    /// The rows of run `id` in its `entries` (from [`run_entries`](Self::run_entries)):
    /// the latest bytes of each node index, in index order. A damaged block, or a row a
    /// block marks as kept in its own key when that key is missing, is
    /// [`StoreError::Corrupt`]; with `keep_damaged`, a damaged block is kept whole as the
    /// row of its first index (decoding that row says it is damaged) and a missing row is
    /// left out.
    fn row_bytes<'a>(
        &self,
        id: &str,
        entries: &'a [(sled::IVec, sled::IVec)],
        keep_damaged: bool,
    ) -> Result<Vec<(u32, &'a [u8])>, StoreError> {
        let prefix_len = id.len() + 1;
        let mut own = Vec::new();
        let mut rows = Vec::new();
        let mut outside = false;
        for (k, v) in entries {
            match classify(prefix_len, k) {
                RowKey::Row(order) => own.push((order, v.as_ref())),
                RowKey::Block(block) => match blocks::decode_block(block, v) {
                    Ok(r) => {
                        outside |= r.iter().any(|(_, e)| *e == Entry::Outside);
                        rows.extend(r);
                    }
                    Err(message) if keep_damaged => {
                        tracing::warn!(run = id, block, %message, "damaged block of task rows kept as is");
                        rows.push((block.saturating_mul(BLOCK_ROWS), Entry::Row(v.as_ref())));
                    }
                    Err(message) => {
                        return Err(StoreError::Corrupt {
                            path: self.location(),
                            key: format!("{id}/block {block}"),
                            message,
                        })
                    }
                },
                RowKey::Other => {}
            }
        }
        // Blocks come in key order, which is index order; a row in a block is newer than
        // a key of its own (see `sled_blocks.rs`), unless the block says it is outside.
        if own.is_empty() && !outside {
            return Ok(rows
                .into_iter()
                .filter_map(|(o, e)| match e {
                    Entry::Row(r) => Some((o, r)),
                    Entry::Outside => None,
                })
                .collect());
        }
        let mut merged: std::collections::BTreeMap<u32, &[u8]> = own.into_iter().collect();
        for (order, e) in rows {
            match e {
                Entry::Row(r) => {
                    merged.insert(order, r);
                }
                Entry::Outside if merged.contains_key(&order) || keep_damaged => {}
                Entry::Outside => {
                    return Err(StoreError::Corrupt {
                        path: self.location(),
                        key: format!("{id}/#{order}"),
                        message: "the row's own key is missing".into(),
                    })
                }
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Adds to `out` the blocks that `rows` (per run and block, in write order) change:
    /// each block as stored with those rows replaced or added, or (for a run in `fresh`,
    /// whose stored rows this write removes) those rows alone.
    fn put_blocks(
        &self,
        out: &mut sled::Batch,
        rows: BlockWrites<'_>,
        fresh: &std::collections::HashSet<&str>,
    ) -> Result<(), StoreError> {
        for ((id, block), updates) in rows {
            let key = block_key(id, block);
            let old = if fresh.contains(id) {
                None
            } else {
                self.tasks.get(&key).map_err(|e| self.io(e))?
            };
            let (bytes, back) = merge_block(block, old.as_deref(), updates).map_err(|message| {
                StoreError::Corrupt {
                    path: self.location(),
                    key: format!("{id}/block {block}"),
                    message,
                }
            })?;
            out.insert(key, bytes);
            for order in back {
                out.remove(row_key(id, order));
            }
        }
        Ok(())
    }

    fn lock_seq(&self) -> MutexGuard<'_, u64> {
        self.seq.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `next` as the write sequence, after a write that was not counted in its own
    /// batch. sled keeps writes in order (a recovered write implies every earlier one),
    /// so the number covers the write before it.
    fn bump(&self, seq: &mut MutexGuard<'_, u64>, next: u64) -> Result<(), StoreError> {
        self.tasks
            .insert(SEQ_KEY, &next.to_be_bytes())
            .map_err(|e| self.io(e))?;
        **seq = next;
        Ok(())
    }

    fn io(&self, e: impl fmt::Display) -> StoreError {
        StoreError::io(self.location(), e.to_string())
    }

    fn decode_record(&self, key: &[u8], bytes: &[u8]) -> Result<ProcessRecord, StoreError> {
        decode_record(&self.location(), key, bytes)
    }

    fn scan(&self, span: index::Span) -> index::Keys<'_> {
        let keys = self
            .index
            .range::<Vec<u8>, _>((span.lower, span.upper))
            .keys();
        let key = |k: sled::Result<sled::IVec>| k.map(|k| k.to_vec()).map_err(|e| self.io(e));
        if span.rev {
            Box::new(keys.rev().map(key))
        } else {
            Box::new(keys.map(key))
        }
    }

    /// The current lease token of `run` (0 when it was never claimed).
    fn token(&self, run: &str) -> Result<u64, StoreError> {
        if let Some(t) = lock(&self.tokens).get(run) {
            return Ok(*t);
        }
        let t = self.lease(run)?.map_or(0, |l| l.token);
        lock(&self.tokens).insert(run.to_owned(), t);
        Ok(t)
    }

    fn lease(&self, run: &str) -> Result<Option<Lease>, StoreError> {
        match self.leases.get(run.as_bytes()).map_err(|e| self.io(e))? {
            None => Ok(None),
            Some(v) => rmp_serde::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path: self.location(),
                    key: format!("lease of {run}"),
                    message: e.to_string(),
                }),
        }
    }

    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec(lease).map_err(|e| self.io(e))?;
        let mut seq = self.lock_seq();
        self.leases
            .insert(lease.run.as_bytes(), bytes)
            .map_err(|e| self.io(e))?;
        let next = *seq + 1;
        self.bump(&mut seq, next)?;
        drop(seq);
        lock(&self.tokens).insert(lease.run.clone(), lease.token);
        Ok(())
    }

    /// A record compare-and-swap, and (`with_outbox`) the deliveries `f` returns added
    /// to the outbox in the same transaction when `f` writes.
    fn update_tx(
        &self,
        id: &str,
        f: &mut Enqueue<'_>,
        with_outbox: bool,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let location = self.location();
        let f = std::cell::RefCell::new(f);
        // The write sequence is written in the same transaction as the record: a record
        // write is never uncounted.
        let mut seq = self.lock_seq();
        let next = *seq + 1;
        let wrote = std::cell::Cell::new(false);
        let mut trees = vec![&self.processes, &self.index, &self.tasks];
        if with_outbox {
            trees.extend(self.outbox.all());
        }
        let out = trees.as_slice().transaction(|view| {
            let (p, ix, t) = (&view[0], &view[1], &view[2]);
            wrote.set(false);
            let current = match p.get(id.as_bytes())? {
                Some(v) => Some(
                    decode_record(&location, id.as_bytes(), &v)
                        .map_err(ConflictableTransactionError::Abort)?,
                ),
                None => None,
            };
            let (decided, deliveries) = (f.borrow_mut())(current.as_ref());
            let written = match decided {
                Update::Keep => return Ok(current),
                Update::Delete => {
                    put_tx(p, ix, current.as_ref(), None, id)?;
                    None
                }
                Update::Put(r) => {
                    put_tx(p, ix, current.as_ref(), Some(&r), id)?;
                    Some(*r)
                }
            };
            if with_outbox {
                outbox::enqueue_tx(&view[3..], &deliveries)?;
            }
            t.insert(SEQ_KEY, &next.to_be_bytes())?;
            wrote.set(true);
            Ok(written)
        });
        match out {
            Ok(r) => {
                if wrote.get() {
                    *seq = next;
                }
                Ok(r)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(self.io(e)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The transactional update of one record and its index keys.
fn put_tx(
    p: &sled::transaction::TransactionalTree,
    ix: &sled::transaction::TransactionalTree,
    old: Option<&ProcessRecord>,
    new: Option<&ProcessRecord>,
    id: &str,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let old_keys = old.map(index::keys).unwrap_or_default();
    let new_keys = new.map(index::keys).unwrap_or_default();
    for k in &old_keys {
        if !new_keys.contains(k) {
            ix.remove(k.as_slice())?;
        }
    }
    for k in &new_keys {
        if !old_keys.contains(k) {
            ix.insert(k.as_slice(), &[])?;
        }
    }
    match new {
        Some(r) => p.insert(id.as_bytes(), encode(r))?,
        None => p.remove(id.as_bytes())?,
    };
    Ok(())
}

/// Frees the node versions sled replaced during a write of about `rows` keys.
///
/// sled 0.34 hands every node version a write replaces to crossbeam's global epoch
/// collector, which frees at most 8 bags of 64 per collection and collects once every
/// 128 pins; a batch pins once for all its keys. A writer of large batches therefore
/// produced garbage far faster than it was freed: a 100k-task run's peak held 100-150 MiB
/// of old node versions. Each `flush` hands this thread's bag over and collects once.
/// A small write's garbage is left to sled's own collection (once per 128 pins, which
/// its own reads and writes make): freeing it here would lengthen a small run's write.
fn reclaim(rows: usize) {
    if rows < 256 {
        return;
    }
    // About two versions per key (the leaf, and its parent on a split), 512 per collection.
    for _ in 0..rows / 256 + 2 {
        crossbeam_epoch::pin().flush();
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

    fn list(&self, query: &Query) -> Result<Page, StoreError> {
        index::list(query, |span| self.scan(span), |id| self.get(id))
    }

    fn count(&self, query: &Query) -> Result<u64, StoreError> {
        index::count(query, |span| self.scan(span), |id| self.get(id))
    }

    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.update_tx(id, &mut |cur| (f(cur), Vec::new()), false)
    }

    fn update_enqueue(
        &self,
        id: &str,
        f: &mut Enqueue<'_>,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.update_tx(id, f, true)
    }

    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        let entries = self.run_entries(id)?;
        let mut rows = self
            .row_bytes(id, &entries, false)?
            .into_iter()
            .map(|(order, v)| {
                let row = decode_row(v).map_err(|message| StoreError::Corrupt {
                    path: self.location(),
                    key: format!("{id}/#{order}"),
                    message,
                })?;
                Ok((order, row))
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
                legacy.insert(
                    order_of(&k),
                    smol_str::SmolStr::new(String::from_utf8_lossy(&v)),
                );
            }
            for (i, r) in &mut rows {
                if r.result.is_none() {
                    r.result = legacy.remove(i);
                }
            }
        }
        Ok(rows)
    }

    fn resume_rows(&self, id: &str) -> Result<Vec<(u32, ResumeRow)>, StoreError> {
        let entries = self.run_entries(id)?;
        let raw = self.row_bytes(id, &entries, false)?;
        let decode = |part: &[(u32, &[u8])]| {
            part.iter()
                .map(|&(order, v)| {
                    let row = decode_resume_row(v).map_err(|message| StoreError::Corrupt {
                        path: self.location(),
                        key: format!("{id}/#{order}"),
                        message,
                    })?;
                    Ok((order, row))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        };
        // A large run's rows are decoded by two threads, each half of them.
        let rows = if raw.len() >= Self::PARALLEL_ROWS as usize {
            let (lower, upper) = raw.split_at(raw.len() / 2);
            std::thread::scope(|scope| {
                let upper = scope.spawn(|| decode(upper));
                let mut rows = decode(lower)?;
                let upper = upper
                    .join()
                    .map_err(|_| self.io("a thread decoding task rows panicked"))??;
                rows.extend(upper);
                Ok::<_, StoreError>(rows)
            })?
        } else {
            decode(&raw)?
        };
        // Rows of schema 1 keep their results in a tree of their own: read them whole.
        if rows
            .iter()
            .any(|(_, r)| r.state == State::Done && r.result.is_none())
        {
            return Ok(self
                .tasks(id)?
                .into_iter()
                .map(|(i, row)| (i, ResumeRow::from(row)))
                .collect());
        }
        Ok(rows)
    }

    fn apply(&self, batch: Batch) -> Result<Applied, StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        let mut applied = Applied::default();
        let mut tasks = sled::Batch::default();
        let mut results = sled::Batch::default();
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
        let cleared_tasks = cleared.iter().any(|(is_task, _)| *is_task);
        let (history, past, history_writes) = self.history_batches(&batch)?;
        for (is_task, k) in cleared {
            if is_task {
                tasks.remove(k);
            } else {
                results.remove(k);
            }
        }
        // A large write's task rows go to sled in batches of their own, ahead of the rest
        // (see `CHUNK_ROWS`), unless this write also removes rows.
        let chunked = batch.tasks.len() > Self::CHUNK_ROWS && !cleared_tasks;
        // Runs whose stored rows this write removes: their blocks are written afresh.
        let fresh: std::collections::HashSet<&str> = batch
            .clear_runs
            .iter()
            .chain(&batch.delete_processes)
            .map(String::as_str)
            .collect();
        let mut blocks = BlockWrites::new();
        let mut seq = self.lock_seq();
        let mut run: Option<(&str, u64)> = None;
        let mut in_chunk = 0;
        for (id, order, row) in &batch.tasks {
            if row.lease != 0 {
                let current = match run {
                    Some((r, t)) if r == &**id => t,
                    _ => {
                        let t = self.token(id)?;
                        run = Some((id, t));
                        t
                    }
                };
                if row.lease < current {
                    applied.fenced += 1;
                    continue;
                }
            }
            let bytes = encode_row(row);
            // A large row (a large result) gets a key of its own: its block, rewritten
            // for its other rows, then does not copy it each time.
            let bytes = if bytes.len() >= OWN_KEY_FROM {
                tasks.insert(row_key(id, *order), bytes);
                None
            } else {
                Some(bytes)
            };
            blocks
                .entry((&**id, *order / BLOCK_ROWS))
                .or_default()
                .push((*order, bytes));
            in_chunk += 1;
            if chunked && in_chunk == Self::CHUNK_ROWS {
                self.put_blocks(&mut tasks, std::mem::take(&mut blocks), &fresh)?;
                let next = *seq + 1;
                tasks.insert(SEQ_KEY, &next.to_be_bytes());
                self.tasks
                    .apply_batch(std::mem::take(&mut tasks))
                    .map_err(|e| self.io(e))?;
                *seq = next;
                in_chunk = 0;
                reclaim(Self::CHUNK_ROWS);
            }
        }
        self.put_blocks(&mut tasks, blocks, &fresh)?;
        // The write sequence rides in the batch: one more key, atomic with the rest.
        let next = *seq + 1;
        tasks.insert(SEQ_KEY, &next.to_be_bytes());
        if batch.processes.is_empty()
            && batch.delete_processes.is_empty()
            && !cleared_results
            && !history_writes
        {
            // Only task rows (every write cycle of a run): one tree's batch is atomic on
            // its own, and about twice as fast as a transaction, which reads every key
            // it writes.
            self.tasks.apply_batch(tasks).map_err(|e| self.io(e))?;
            *seq = next;
            drop(seq);
            reclaim(batch.tasks.len());
            return Ok(applied);
        }
        let location = self.location();
        let trees = (
            &self.tasks,
            &self.results,
            &self.processes,
            &self.index,
            &self.history,
            &self.past_tasks,
        );
        let out = trees.transaction(|(t, r, p, ix, h, past_rows)| {
            t.apply_batch(&tasks)?;
            r.apply_batch(&results)?;
            h.apply_batch(&history)?;
            past_rows.apply_batch(&past)?;
            let decode = |id: &str, v: &[u8]| {
                decode_record(&location, id.as_bytes(), v)
                    .map_err(ConflictableTransactionError::Abort)
            };
            for id in &batch.delete_processes {
                if let Some(v) = p.get(id.as_bytes())? {
                    let old = decode(id, &v)?;
                    put_tx(p, ix, Some(&old), None, id)?;
                }
            }
            for rec in &batch.processes {
                let old = match p.get(rec.id.as_bytes())? {
                    Some(v) => Some(decode(&rec.id, &v)?),
                    None => None,
                };
                put_tx(p, ix, old.as_ref(), Some(rec), &rec.id)?;
            }
            Ok(())
        });
        match out {
            Ok(()) => {
                *seq = next;
                drop(seq);
                reclaim(batch.tasks.len());
                Ok(applied)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(self.io(e)),
        }
    }

    fn history(&self, id: &str) -> Result<Vec<PastRun>, StoreError> {
        let prefix = run_prefix(id);
        let mut out = Vec::new();
        for kv in self.history.scan_prefix(&prefix).rev() {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            // A key that does not end with a seq is not one of ours: skipped.
            let Some(seq) = seq_of(prefix.len(), &k) else {
                continue;
            };
            let shown = format!("{id} (past run {seq})");
            let record = decode_record(&self.location(), shown.as_bytes(), &v)?;
            out.push(PastRun { seq, record });
        }
        Ok(out)
    }

    fn past_tasks(&self, id: &str, seq: u64) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        let prefix = past_key(id, seq);
        self.past_tasks
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                let order = order_of(&k);
                let row = decode_row(&v).map_err(|message| StoreError::Corrupt {
                    path: self.location(),
                    key: format!("{id} (past run {seq})/#{order}"),
                    message,
                })?;
                Ok((order, row))
            })
            .collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every write numbered up to `reached` is in sled before this flush starts.
        let reached = *self.lock_seq();
        self.db.flush().map_err(|e| self.io(e))?;
        if self.strict {
            let file = std::fs::File::open(self.path.join("db")).map_err(|e| self.io(e))?;
            file.sync_all().map_err(|e| self.io(e))?;
        }
        // Only now, after sled's flush returned: a crash in between leaves the sidecar
        // behind sled, never ahead of it.
        if let Some(side) = &self.sidecar {
            side.record(reached, self.strict).map_err(|e| {
                StoreError::io(
                    self.location(),
                    format!("cannot write `{}`: {e}", side.path().display()),
                )
            })?;
        }
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        // A counter in the store (sled's own `generate_id` skips a million after each
        // restart, which makes ugly run ids).
        let mut seq = self.lock_seq();
        let v = self
            .db
            .update_and_fetch(b"next_id", |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes);
                Some(n.saturating_add(1).to_be_bytes().to_vec())
            })
            .map_err(|e| self.io(e))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(1, u64::from_be_bytes);
        let next = *seq + 1;
        self.bump(&mut seq, next)?;
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
        let mut seq = self.lock_seq();
        match self
            .keys
            .compare_and_swap(key.as_bytes(), None::<&[u8]>, Some(id.as_bytes()))
            .map_err(|e| self.io(e))?
        {
            Ok(()) => {
                let next = *seq + 1;
                self.bump(&mut seq, next)?;
                Ok(id.to_owned())
            }
            Err(e) => Ok(e.current.map_or_else(
                || id.to_owned(),
                |v| String::from_utf8_lossy(&v).into_owned(),
            )),
        }
    }

    fn claim(&self, run: &str, owner: &str, ttl_ms: u64) -> Result<Lease, StoreError> {
        // One process owns a sled directory (sled holds a file lock): a claim always
        // succeeds and raises the token, fencing out whatever an earlier owner left.
        let token = self.lease(run)?.map_or(0, |l| l.token).saturating_add(1);
        let lease = Lease {
            run: run.to_owned(),
            owner: owner.to_owned(),
            token,
            expires_at: now_ms().saturating_add(ttl_ms),
        };
        self.put_lease(&lease)?;
        Ok(lease)
    }

    fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, StoreError> {
        match self.lease(&lease.run)? {
            Some(mut l) if l.token == lease.token => {
                l.expires_at = now_ms().saturating_add(ttl_ms);
                self.put_lease(&l)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn forget_run(&self, run: &str, key: Option<&str>) -> Result<(), StoreError> {
        let mut seq = self.lock_seq();
        self.leases.remove(run.as_bytes()).map_err(|e| self.io(e))?;
        if let Some(k) = key {
            // Only while the key still names this run; a swap that finds another value
            // changes nothing, which is what is wanted.
            let _ = self
                .keys
                .compare_and_swap(k.as_bytes(), Some(run.as_bytes()), None::<&[u8]>)
                .map_err(|e| self.io(e))?;
        }
        let next = *seq + 1;
        self.bump(&mut seq, next)?;
        drop(seq);
        lock(&self.tokens).remove(run);
        Ok(())
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        match self.lease(&lease.run)? {
            Some(mut l) if l.token == lease.token => {
                // The token stays (tokens only grow); the lease just expires now.
                l.expires_at = 0;
                self.put_lease(&l)
            }
            _ => Ok(()),
        }
    }

    fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.outbox_get(id)
    }

    fn deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        self.outbox_list(query)
    }

    fn next_delivery_at(&self) -> Result<Option<u64>, StoreError> {
        self.outbox_next_at()
    }

    fn claim_deliveries(
        &self,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.outbox_claim(owner, now_ms, lease_ms, limit)
    }

    fn update_delivery(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&Delivery>) -> DeliveryUpdate,
    ) -> Result<Option<Delivery>, StoreError> {
        self.outbox_update(id, f)
    }

    fn channel_state(&self, name: &str) -> Result<Option<ChannelState>, StoreError> {
        self.channel_get(name)
    }

    fn set_channel_state(
        &self,
        name: &str,
        state: Option<&ChannelState>,
    ) -> Result<(), StoreError> {
        self.channel_set(name, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_seq(store: &SledStore) -> u64 {
        guard::decode_seq(store.tasks.get(SEQ_KEY).unwrap().as_deref()).unwrap()
    }

    fn sidecar_seq(store: &SledStore) -> Option<u64> {
        Sidecar::new(&store.path).read().unwrap()
    }

    // A resumption reads the same rows as `tasks`, whether the run is read by one thread
    // or, when large, by two (each half of its rows), and nothing of runs whose ids
    // extend its id.
    #[test]
    fn resume_rows_are_the_rows_of_the_run_small_or_large() {
        let store = SledStore::temporary().unwrap();
        let row = |i: u32| TaskRow {
            task: "t".into(),
            node: format!("n{i}").into(),
            state: if i.is_multiple_of(3) {
                State::Done
            } else {
                State::Running
            },
            attempts: i % 5,
            started_at: None,
            ended_at: None,
            elapsed_ns: u64::from(i),
            skipped: false,
            error: None,
            chain: Vec::new(),
            progress: crate::record::Progress::default(),
            log: Vec::new(),
            result: i.is_multiple_of(3).then(|| i.to_string().into()),
            lease: 0,
            optional: false,
        };
        let large = SledStore::PARALLEL_ROWS * 2 + 7;
        for (run, n) in [("small", 10), ("large", large), ("large-2", 3), ("larg", 2)] {
            // Written out of order, in two batches.
            let mut tasks: Vec<_> = (0..n).rev().map(|i| (Arc::from(run), i, row(i))).collect();
            let second = tasks.split_off(tasks.len() / 2);
            for tasks in [tasks, second] {
                store
                    .apply(Batch {
                        tasks,
                        ..Batch::default()
                    })
                    .unwrap();
            }
        }
        for (run, n) in [("small", 10), ("large", large), ("nothing", 0)] {
            let want: Vec<(u32, ResumeRow)> = store
                .tasks(run)
                .unwrap()
                .into_iter()
                .map(|(i, r)| (i, ResumeRow::from(r)))
                .collect();
            assert_eq!(want.len(), n as usize);
            assert_eq!(store.resume_rows(run).unwrap(), want, "run {run}");
        }
    }

    // A write larger than a chunk lands whole, rows first and then the record, each chunk
    // counted in the write sequence (so the damage check at open still holds); a write
    // that also clears rows is not split, so its removals and inserts stay one batch.
    #[test]
    fn a_large_write_goes_in_chunks_and_lands_whole() {
        let dir = std::env::temp_dir().join(format!(
            "procession-chunks-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store = SledStore::open(&dir).unwrap();
        let row = |i: u32| TaskRow {
            task: "t".into(),
            node: format!("n{i}").into(),
            state: State::Done,
            attempts: 1,
            started_at: None,
            ended_at: None,
            elapsed_ns: u64::from(i),
            skipped: false,
            error: None,
            chain: Vec::new(),
            progress: crate::record::Progress::default(),
            log: Vec::new(),
            result: Some(i.to_string().into()),
            lease: 0,
            optional: false,
        };
        let n = SledStore::CHUNK_ROWS as u32 * 2 + 5;
        let rec = ProcessRecord::new_root("big", "t", "t", "", serde_json::Value::Null);
        store
            .apply(Batch {
                tasks: (0..n).map(|i| (Arc::from("big"), i, row(i))).collect(),
                processes: vec![rec.clone()],
                ..Batch::default()
            })
            .unwrap();
        // Two full chunks, then the rest with the record.
        assert_eq!(stored_seq(&store), 3);
        let rows = store.tasks("big").unwrap();
        assert_eq!(rows.len(), n as usize);
        assert!(rows.iter().enumerate().all(
            |(i, (o, r))| *o == i as u32 && r.result.as_deref() == Some(i.to_string().as_str())
        ));
        assert!(store.get("big").unwrap().is_some());
        // Rows only: chunks as well.
        store
            .apply(Batch {
                tasks: (0..n).map(|i| (Arc::from("rows"), i, row(i))).collect(),
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(stored_seq(&store), 6);
        assert_eq!(store.tasks("rows").unwrap().len(), n as usize);
        // Clearing a run and writing fewer rows: one batch, nothing of the old rows left.
        store
            .apply(Batch {
                tasks: (0..n - 1).map(|i| (Arc::from("big"), i, row(i))).collect(),
                processes: vec![rec],
                clear_runs: vec!["big".into()],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(stored_seq(&store), 7);
        assert_eq!(store.tasks("big").unwrap().len(), n as usize - 1);
        store.flush().unwrap();
        drop(store);
        // The damage check at open agrees with what was written.
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(*store.lock_seq(), 7);
        assert_eq!(store.tasks("rows").unwrap().len(), n as usize);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_write_counts_and_only_a_flush_records_it() {
        let dir = std::env::temp_dir().join(format!(
            "procession-seq-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store = SledStore::open(&dir).unwrap();
        assert_eq!((stored_seq(&store), sidecar_seq(&store)), (0, None));
        let rec = ProcessRecord::new_root("r", "t", "t", "", serde_json::Value::Null);
        store
            .update("r", &mut |_| Update::Put(Box::new(rec.clone())))
            .unwrap();
        assert_eq!(stored_seq(&store), 1);
        store.update("r", &mut |_| Update::Keep).unwrap();
        assert_eq!(stored_seq(&store), 1, "no write, no number");
        store.next_id().unwrap();
        assert_eq!(stored_seq(&store), 2);
        store.claim_idempotent("k", "r").unwrap();
        store.claim_idempotent("k", "other").unwrap();
        assert_eq!(stored_seq(&store), 3, "a taken key writes nothing");
        let row = TaskRow {
            task: "t".into(),
            node: "n".into(),
            state: State::Done,
            attempts: 1,
            started_at: None,
            ended_at: None,
            elapsed_ns: 0,
            skipped: false,
            error: None,
            chain: Vec::new(),
            progress: crate::record::Progress::default(),
            log: Vec::new(),
            result: Some("1".into()),
            lease: 0,
            optional: false,
        };
        // Rows only (one tree's batch), then rows and a record (a transaction).
        store
            .apply(Batch {
                tasks: vec![(Arc::from("r"), 0, row.clone())],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(stored_seq(&store), 4);
        store
            .apply(Batch {
                tasks: vec![(Arc::from("r"), 1, row)],
                processes: vec![rec],
                clear_runs: vec!["gone".into()],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(stored_seq(&store), 5);
        assert_eq!(sidecar_seq(&store), None, "written only after a flush");
        store.flush().unwrap();
        assert_eq!(sidecar_seq(&store), Some(5));
        // The number is not a row of any run.
        assert_eq!(store.tasks("r").unwrap().len(), 2);
        drop(store);
        let store = SledStore::open(&dir).unwrap();
        assert_eq!(*store.lock_seq(), 5);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn done_row(node: &str, result: &str) -> TaskRow {
        TaskRow {
            task: "t".into(),
            node: node.into(),
            state: State::Done,
            attempts: 1,
            started_at: None,
            ended_at: None,
            elapsed_ns: 0,
            skipped: false,
            error: None,
            chain: Vec::new(),
            progress: crate::record::Progress::default(),
            log: Vec::new(),
            result: Some(result.into()),
            lease: 0,
            optional: false,
        }
    }

    fn rows_only(run: &str, rows: &[(u32, TaskRow)]) -> Batch {
        Batch {
            tasks: rows
                .iter()
                .map(|(i, r)| (Arc::from(run), *i, r.clone()))
                .collect(),
            ..Batch::default()
        }
    }

    fn results(rows: &[(u32, TaskRow)]) -> Vec<(u32, String)> {
        rows.iter()
            .map(|(i, r)| (*i, r.result.as_deref().unwrap_or("").to_owned()))
            .collect()
    }

    // Rows of one block written by several writes all stay; a row written again (in a
    // later write, or twice in one write) reads as its last version; rows of their own
    // (schema 1 to 4) are read, and a block's version of the same row wins; the keys are
    // one per 64 rows.
    #[test]
    fn rows_of_a_block_merge_across_writes_and_the_latest_wins() {
        let store = SledStore::temporary().unwrap();
        // An older build's row of its own, for index 2 and index 200.
        for (i, r) in [(2u32, "old2"), (200, "old200")] {
            let mut k = run_prefix("r");
            k.extend_from_slice(&i.to_be_bytes());
            store
                .tasks
                .insert(k, encode_row(&done_row("n", r)))
                .unwrap();
        }
        store
            .apply(rows_only(
                "r",
                &[(0, done_row("a", "0")), (70, done_row("b", "70"))],
            ))
            .unwrap();
        store
            .apply(rows_only(
                "r",
                &[
                    (1, done_row("c", "1")),
                    (2, done_row("d", "2a")),
                    (0, done_row("a", "0b")),
                    (2, done_row("d", "2b")),
                ],
            ))
            .unwrap();
        let want = vec![
            (0, "0b".to_owned()),
            (1, "1".to_owned()),
            (2, "2b".to_owned()),
            (70, "70".to_owned()),
            (200, "old200".to_owned()),
        ];
        assert_eq!(results(&store.tasks("r").unwrap()), want);
        let resumed: Vec<(u32, String)> = store
            .resume_rows("r")
            .unwrap()
            .into_iter()
            .map(|(i, r)| (i, r.result.as_deref().unwrap_or("").to_owned()))
            .collect();
        assert_eq!(resumed, want);
        // Two blocks and the two rows of their own.
        assert_eq!(store.run_entries("r").unwrap().len(), 4);
        // Another run's rows are not this run's.
        assert!(store.tasks("r2").unwrap().is_empty());
    }

    // A large row goes to a key of its own and its block keeps a mark: rewriting the
    // block for its other rows does not copy the large row; written small again, the row
    // is back in its block and its own key is gone; a mark whose key is missing is
    // `Corrupt`.
    #[test]
    fn a_large_row_has_a_key_of_its_own_until_it_is_small_again() {
        let store = SledStore::temporary().unwrap();
        let big = "x".repeat(OWN_KEY_FROM * 2);
        store
            .apply(rows_only("r", &[(3, done_row("big", &big))]))
            .unwrap();
        for i in 0..5 {
            store
                .apply(rows_only("r", &[(i + 10, done_row("small", "1"))]))
                .unwrap();
        }
        let block = store.tasks.get(block_key("r", 0)).unwrap().unwrap();
        assert!(
            block.len() < 1024,
            "the block holds the large row: {}",
            block.len()
        );
        assert_eq!(store.run_entries("r").unwrap().len(), 2);
        let rows = store.tasks("r").unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].1.result.as_deref(), Some(big.as_str()));
        let resumed = store.resume_rows("r").unwrap();
        assert_eq!(resumed[0].1.result.as_deref(), Some(big.as_str()));
        // Small again: back in the block, in the same write as the own key's removal.
        store
            .apply(rows_only("r", &[(3, done_row("big", "small now"))]))
            .unwrap();
        assert_eq!(store.run_entries("r").unwrap().len(), 1);
        assert_eq!(
            store.tasks("r").unwrap()[0].1.result.as_deref(),
            Some("small now")
        );
        // Large, then small in one write: the small one, in the block.
        store
            .apply(rows_only(
                "r",
                &[(3, done_row("big", &big)), (3, done_row("big", "last"))],
            ))
            .unwrap();
        assert_eq!(store.run_entries("r").unwrap().len(), 1);
        assert_eq!(
            store.tasks("r").unwrap()[0].1.result.as_deref(),
            Some("last")
        );
        // Large again, and its own key lost: `Corrupt` naming the row.
        store
            .apply(rows_only("r", &[(3, done_row("big", &big))]))
            .unwrap();
        store.tasks.remove(row_key("r", 3)).unwrap();
        assert!(matches!(
            store.tasks("r"),
            Err(StoreError::Corrupt { key, .. }) if key == "r/#3"
        ));
    }

    // A damaged block is `Corrupt` (naming the run and block) when read, never a panic and
    // never fewer rows; a relaunch that archives the run copies it as it is, and reading
    // that past row says it is damaged.
    #[test]
    fn a_damaged_block_is_corrupt_and_an_archive_keeps_it() {
        let store = SledStore::temporary().unwrap();
        store
            .apply(rows_only(
                "r",
                &[(0, done_row("a", "0")), (1, done_row("b", "1"))],
            ))
            .unwrap();
        let key = block_key("r", 0);
        let mut bytes = store.tasks.get(&key).unwrap().unwrap().to_vec();
        bytes.truncate(bytes.len() - 3);
        store.tasks.insert(&key, bytes).unwrap();
        for err in [
            store.tasks("r").map(|_| ()).unwrap_err(),
            store.resume_rows("r").map(|_| ()).unwrap_err(),
        ] {
            assert!(
                matches!(&err, StoreError::Corrupt { key, .. } if key == "r/block 0"),
                "{err}"
            );
        }
        // Writing into the damaged block is refused too (its rows cannot be kept).
        assert!(matches!(
            store.apply(rows_only("r", &[(2, done_row("c", "2"))])),
            Err(StoreError::Corrupt { .. })
        ));
        let rec = ProcessRecord::new_root("r", "t", "t", "", serde_json::Value::Null);
        store
            .apply(Batch {
                archive: vec![crate::store::Archive {
                    owner: "r".into(),
                    run: PastRun {
                        seq: 1,
                        record: rec.clone(),
                    },
                    rows_of: "r".into(),
                    keep: 1,
                }],
                clear_runs: vec!["r".into()],
                processes: vec![rec],
                tasks: vec![(Arc::from("r"), 5, done_row("e", "5"))],
                ..Batch::default()
            })
            .unwrap();
        assert!(matches!(
            store.past_tasks("r", 1),
            Err(StoreError::Corrupt { .. })
        ));
        // The relaunched run has only its new row.
        assert_eq!(
            results(&store.tasks("r").unwrap()),
            vec![(5, "5".to_owned())]
        );
    }

    // An archive copies a run's rows out of its blocks, row by row, as they are.
    #[test]
    fn an_archive_copies_the_rows_of_blocks() {
        let store = SledStore::temporary().unwrap();
        let rows: Vec<(u32, TaskRow)> = (0..150)
            .map(|i| (i, done_row("n", &i.to_string())))
            .collect();
        store.apply(rows_only("r", &rows)).unwrap();
        let rec = ProcessRecord::new_root("r", "t", "t", "", serde_json::Value::Null);
        store
            .apply(Batch {
                archive: vec![crate::store::Archive {
                    owner: "r".into(),
                    run: PastRun {
                        seq: 1,
                        record: rec.clone(),
                    },
                    rows_of: "r".into(),
                    keep: 1,
                }],
                clear_runs: vec!["r".into()],
                processes: vec![rec],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(results(&store.past_tasks("r", 1).unwrap()), results(&rows));
        assert!(store.tasks("r").unwrap().is_empty());
    }

    // The store is marked with its layout version; a newer one is refused, not misread.
    #[test]
    fn the_schema_marker_is_the_layout_version_and_a_newer_one_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "procession-marker-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store = SledStore::open(&dir).unwrap();
        let marker = store.db.get(b"schema").unwrap().unwrap();
        assert_eq!(marker.as_ref(), SledStore::SCHEMA.to_be_bytes());
        store
            .db
            .insert(b"schema", &(SledStore::SCHEMA + 1).to_be_bytes())
            .unwrap();
        store.flush().unwrap();
        drop(store);
        assert!(matches!(
            SledStore::open(&dir),
            Err(StoreError::Incompatible { found, .. }) if found == SledStore::SCHEMA + 1
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn temporary_store_has_no_sidecar() {
        let store = SledStore::temporary().unwrap();
        store.next_id().unwrap();
        store.flush().unwrap();
        assert!(store.sidecar.is_none());
    }
}
