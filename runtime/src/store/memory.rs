//! The store in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::outbox::{
    due_key, id_of_due, id_of_state, state_key, state_range, states_to_scan, time_of_due,
    ChannelState, Delivery, DeliveryPage, DeliveryQuery, DeliveryUpdate, Pager,
};
use super::{
    index, Applied, Batch, CompactRow, Enqueue, Lease, Page, PastRun, Query, RareFields, Store,
    StoreError, TaskRow, Update,
};
use crate::record::{now_ms, ProcessRecord};
use crate::util::IdList;
use smol_str::SmolStr;

/// A store in memory: nothing survives the process. Used by
/// [`Runtime::in_memory`](crate::Runtime::in_memory).
///
/// # Examples
///
/// ```
/// use procession::store::{MemoryStore, Store};
/// let store = MemoryStore::new();
/// assert_eq!(store.next_id().unwrap(), 1);
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemInner>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct MemInner {
    processes: BTreeMap<String, ProcessRecord>,
    index: BTreeSet<Vec<u8>>,
    /// Task rows per run, by node index.
    runs: HashMap<Arc<str>, RunRows>,
    keys: BTreeMap<String, String>,
    leases: HashMap<String, Lease>,
    /// Kept past runs per record, by seq, with their task rows.
    history: HashMap<String, BTreeMap<u64, Kept>>,
    outbox: MemOutbox,
}

/// The task rows of one run, by node index, in chunks of [`RunRows::CHUNK`]: a run's
/// rows arrive in many batches, and a single vector grown to fit them would hold up to
/// twice their size, plus a copy of them at each growth (a 100k-task run: about 40 MiB
/// for 22 MiB of rows).
#[derive(Debug, Default)]
struct RunRows {
    /// A chunk is allocated when its first row arrives, and grows (by powers of two, up
    /// to `CHUNK` rows) as far as its highest row: a small run holds a few rows, not
    /// `CHUNK` (10,000 runs of 10 tasks would otherwise take 2 GiB of mostly empty slots).
    chunks: Vec<Option<Vec<Option<MemRow>>>>,
    /// The run's distinct task names: a row keeps the index of its own (a run has
    /// millions of rows but a few task names).
    names: Vec<SmolStr>,
    /// The index of each name in `names`.
    by_name: rustc_hash::FxHashMap<SmolStr, u32>,
    /// The name the last row named (neighbouring rows mostly run the same task).
    last_name: u32,
    /// The rows' node ids, by node index: the run's graph's own list when its journal
    /// wrote them (one shared list, not a string per row), else a list of their own.
    nodes: NodeIds,
    /// The rare fields of the rows flagged [`CompactRow::RARE`], by node index: most
    /// rows have none, and keep no room for them.
    rare: rustc_hash::FxHashMap<u32, Box<RareFields>>,
}

/// The node ids of a run's rows (see [`RunRows::nodes`]).
#[derive(Debug)]
enum NodeIds {
    /// The journal's list (the graph's ids), shared.
    Shared(IdList),
    /// Ids given row by row (a batch of [`TaskRow`]s), or differing from the shared list.
    Own(Vec<SmolStr>),
}

impl Default for NodeIds {
    fn default() -> Self {
        NodeIds::Own(Vec::new())
    }
}

impl NodeIds {
    /// The id of node `i` (empty when none was given).
    fn get(&self, i: usize) -> SmolStr {
        let ids: &[SmolStr] = match self {
            NodeIds::Shared(ids) => ids,
            NodeIds::Own(ids) => ids,
        };
        ids.get(i).cloned().unwrap_or_default()
    }

    /// Node `i`'s id is `node`: nothing to do when the list says so already.
    fn set(&mut self, i: usize, node: &SmolStr) {
        if let NodeIds::Shared(ids) = self {
            if ids.get(i) == Some(node) {
                return;
            }
            *self = NodeIds::Own(ids.to_vec());
        }
        if let NodeIds::Own(ids) = self {
            if ids.len() <= i {
                // Grown like a vector (amortised), not slot by slot.
                ids.resize(i + 1, SmolStr::default());
            }
            ids[i] = node.clone();
        }
    }

    /// The rows of a journal whose node ids are `shared` are written: the list is
    /// shared when it holds the ids of every row present (checked once per list, not
    /// per row); false when it cannot be (rows with other ids), then ids go row by row.
    fn share(&mut self, shared: &IdList, present: impl Iterator<Item = u32>) -> bool {
        match self {
            NodeIds::Shared(ids) if Arc::ptr_eq(ids, shared) => return true,
            NodeIds::Own(ids) if ids.is_empty() => {}
            _ => {
                let cur = &*self;
                let same = present
                    .into_iter()
                    .all(|i| shared.get(i as usize) == Some(&cur.get(i as usize)));
                if !same {
                    return false;
                }
            }
        }
        *self = NodeIds::Shared(shared.clone());
        true
    }
}

/// A task row as the memory store keeps it: its [`CompactRow`] (optional times and
/// percentage as plain values with a presence bit each, its task name as an index into
/// the run's names), its node id in the run's list of ids ([`RunRows::nodes`]), its rare
/// fields (error, chain, progress message, log), which most rows never have, beside it
/// ([`RunRows::rare`]), and its lease: 80 bytes, against 240 for a `TaskRow` (a 1M-task
/// run keeps 1M of them), and nothing to free for most but its result. The store gives
/// back the same `TaskRow` it was given.
#[derive(Debug)]
struct MemRow {
    row: CompactRow,
    lease: u64,
}

impl MemRow {
    /// Row `r` with task name number `task`, and its rare fields; takes its fields,
    /// leaving defaults (the row is read in place from the batch: no copy of the whole
    /// row).
    fn take(r: &mut TaskRow, task: u32) -> (Self, Option<Box<RareFields>>) {
        // Most rows have no rare field: checked in place, before moving any of them.
        let common = r.error.is_none()
            && r.chain.is_empty()
            && r.progress.message.is_none()
            && r.log.is_empty();
        let rare = if common {
            None
        } else {
            RareFields::boxed((
                r.error.take(),
                std::mem::take(&mut r.chain),
                r.progress.message.take(),
                std::mem::take(&mut r.log),
            ))
        };
        let mut row = CompactRow::new(r.state, task, r.optional);
        row.result = r.result.take();
        if let Some(ms) = r.started_at {
            row.set_started_at(ms);
        }
        if let Some(ms) = r.ended_at {
            row.set_ended_at(ms);
        }
        row.elapsed_ns = r.elapsed_ns;
        row.set_percent(r.progress.percent);
        row.attempts = r.attempts;
        row.set(CompactRow::SKIPPED, r.skipped);
        row.set(CompactRow::RARE, rare.is_some());
        (
            MemRow {
                row,
                lease: r.lease,
            },
            rare,
        )
    }

    fn to_row(&self, node: SmolStr, names: &[SmolStr], rare: Option<&RareFields>) -> TaskRow {
        let task = names
            .get(self.row.task as usize)
            .cloned()
            .unwrap_or_default();
        self.row.to_task_row(task, node, rare, self.lease)
    }
}

impl RunRows {
    const CHUNK: usize = 1024;

    /// The number of task name `name` in this run's names (added when new).
    fn name(&mut self, name: &SmolStr) -> u32 {
        if let Some(last) = self.names.get(self.last_name as usize) {
            // Rows of one run share their name's text (a static string, or one shared
            // copy): the same address is the same name, without comparing the text.
            let same_text = std::ptr::eq(last.as_str(), name.as_str());
            if same_text || last == name {
                return self.last_name;
            }
        }
        let next = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let k = *self.by_name.entry(name.clone()).or_insert(next);
        if k == next {
            self.names.push(name.clone());
        }
        self.last_name = k;
        k
    }

    /// Keeps row `row` as node `i`'s, taking its fields (see [`MemRow::take`]).
    fn put(&mut self, i: usize, row: &mut TaskRow) {
        let task = self.name(&row.task);
        self.nodes.set(i, &row.node);
        let (row, rare) = MemRow::take(row, task);
        self.keep(i, row, rare);
    }

    /// Keeps `row` as node `i`'s, with its rare fields `rare` (flagged in `row` by
    /// [`CompactRow::RARE`] when some).
    fn keep(&mut self, i: usize, row: MemRow, rare: Option<Box<RareFields>>) {
        let slot = self.slot(i, 0);
        let had = slot.as_ref().is_some_and(|r| r.row.has(CompactRow::RARE));
        *slot = Some(row);
        if had || rare.is_some() {
            Self::keep_rare(&mut self.rare, i, rare);
        }
    }

    /// Node `i`'s slot, made when missing. `total`: the number of the run's nodes when
    /// known (a journal's rows), else 0: a chunk's room is then made whole at once, not grown
    /// row by row (each growth a copy of the chunk), and still no larger than the run.
    #[inline]
    fn slot(&mut self, i: usize, total: usize) -> &mut Option<MemRow> {
        let (c, k) = (i / Self::CHUNK, i % Self::CHUNK);
        if self.chunks.len() <= c {
            self.chunks.resize_with(c + 1, || None);
        }
        let chunk = self.chunks[c].get_or_insert_with(Vec::new);
        // Only the slots up to row `k` are written (empty), just before their rows
        // arrive (rows mostly arrive in order: the next slot), not the whole chunk at
        // once, long before (each slot's line then written twice, the second time after
        // it left the cache).
        if chunk.len() == k && k < chunk.capacity() {
            chunk.push(None);
        } else if chunk.len() <= k {
            Self::grow(chunk, c, k, total);
        }
        &mut chunk[k]
    }

    /// Makes room in chunk `c` for row `k` (see [`RunRows::slot`]) and fills the slots up
    /// to it, empty.
    #[cold]
    fn grow(chunk: &mut Vec<Option<MemRow>>, c: usize, k: usize, total: usize) {
        let whole = total.saturating_sub(c * Self::CHUNK).min(Self::CHUNK);
        let room = if whole > k {
            whole
        } else {
            (k + 1).next_power_of_two().min(Self::CHUNK)
        };
        chunk.reserve_exact(room - chunk.len());
        chunk.resize_with(k + 1, || None);
    }

    /// Node `i`'s rare fields are now `rare` (out of line: most rows have none).
    #[cold]
    fn keep_rare(
        map: &mut rustc_hash::FxHashMap<u32, Box<RareFields>>,
        i: usize,
        rare: Option<Box<RareFields>>,
    ) {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        match rare {
            Some(rare) => {
                map.insert(i, rare);
            }
            None => {
                map.remove(&i);
            }
        }
    }

    /// Every row present, with its node index.
    fn rows(&self) -> Vec<(u32, TaskRow)> {
        self.iter()
            .map(|(i, r)| {
                let rare = r.row.rare_in(&self.rare, i);
                (i, r.to_row(self.nodes.get(i as usize), &self.names, rare))
            })
            .collect()
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &MemRow)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk.iter().flat_map(move |rows| {
                rows.iter()
                    .enumerate()
                    .filter_map(move |(k, r)| Some(((c * Self::CHUNK + k) as u32, r.as_ref()?)))
            })
        })
    }
}

/// Where a journal writes a run's rows, under the store's lock (see
/// [`MemoryStore::put_journal_rows`]).
pub(crate) struct RowSink<'a> {
    /// `None` when the journal's lease is stale: its rows are dropped (fenced).
    rows: Option<&'a mut RunRows>,
    /// The store's index of each of the journal's task names.
    names: Vec<u32>,
    ids: &'a IdList,
    /// The run's rows take their node ids from `ids` (shared): none is kept per row.
    shared: bool,
    lease: u64,
    fenced: u64,
}

impl RowSink<'_> {
    /// Keeps `r` as node `i`'s row, with its rare fields `rare` (see
    /// [`CompactRow::RARE`]): a copy of it, its task name's number and flags the store's.
    #[inline]
    pub(crate) fn put(&mut self, i: u32, r: &CompactRow, rare: Option<&RareFields>) {
        let Some(rows) = self.rows.as_deref_mut() else {
            self.fenced += 1;
            return;
        };
        let i = i as usize;
        if !self.shared {
            let node = self.ids.get(i).cloned().unwrap_or_default();
            rows.nodes.set(i, &node);
        }
        let total = self.ids.len();
        let task = self.names.get(r.task as usize).copied().unwrap_or(u32::MAX);
        let flags = (r.flags & CompactRow::STORED & !CompactRow::RARE)
            | if rare.is_some() { CompactRow::RARE } else { 0 };
        let lease = self.lease;
        // A row written first (most rows, once each): made in one write, not a blank row
        // written over.
        let fresh = || MemRow {
            row: CompactRow {
                result: r.result.clone(),
                task,
                flags,
                ..*r
            },
            lease,
        };
        // Most rows: written first, into the next slot of a chunk with room (rows mostly
        // come in order), in one write: no empty slot written first and read back.
        let (chunk_no, at) = (i / RunRows::CHUNK, i % RunRows::CHUNK);
        if let Some(Some(chunk)) = rows.chunks.get_mut(chunk_no) {
            if chunk.len() == at && at < chunk.capacity() {
                chunk.push(Some(fresh()));
                if rare.is_some() {
                    RunRows::keep_rare(&mut rows.rare, i, rare.map(|x| Box::new(x.clone())));
                }
                return;
            }
        }
        let slot = rows.slot(i, total);
        let had = match slot {
            // Written again: field by field into its slot (no row made aside and moved
            // in).
            Some(m) => {
                let had = m.row.has(CompactRow::RARE);
                m.row.copy_from(r);
                m.row.task = task;
                m.row.flags = flags;
                m.lease = lease;
                had
            }
            None => {
                *slot = Some(fresh());
                false
            }
        };
        if had || rare.is_some() {
            RunRows::keep_rare(&mut rows.rare, i, rare.map(|x| Box::new(x.clone())));
        }
    }
}

/// The outbox: deliveries by id, their listing and due indexes, the channels' states.
#[derive(Debug, Default)]
struct MemOutbox {
    deliveries: HashMap<String, Delivery>,
    by_state: BTreeSet<Vec<u8>>,
    due: BTreeSet<Vec<u8>>,
    channels: HashMap<String, ChannelState>,
}

impl MemOutbox {
    fn put(&mut self, id: &str, new: Option<Delivery>) {
        if let Some(old) = self.deliveries.remove(id) {
            self.by_state.remove(&state_key(&old));
            if let Some(k) = due_key(&old) {
                self.due.remove(&k);
            }
        }
        if let Some(d) = new {
            self.by_state.insert(state_key(&d));
            if let Some(k) = due_key(&d) {
                self.due.insert(k);
            }
            self.deliveries.insert(id.to_owned(), d);
        }
    }
}

/// A kept past run and its task rows, by node index.
type Kept = (PastRun, Vec<(u32, TaskRow)>);

impl MemInner {
    fn put(&mut self, r: ProcessRecord) {
        if let Some(old) = self.processes.get(&r.id) {
            for k in index::keys(old) {
                self.index.remove(&k);
            }
        }
        self.index.extend(index::keys(&r));
        self.processes.insert(r.id.clone(), r);
    }

    fn delete(&mut self, id: &str) {
        if let Some(old) = self.processes.remove(id) {
            for k in index::keys(&old) {
                self.index.remove(&k);
            }
        }
    }

    fn scan(&self, span: index::Span) -> index::Keys<'_> {
        let keys = self.index.range((span.lower, span.upper));
        if span.rev {
            Box::new(keys.rev().map(|k| Ok(k.clone())))
        } else {
            Box::new(keys.map(|k| Ok(k.clone())))
        }
    }
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

    /// Writes task rows of run `run` straight from its journal, as
    /// [`apply`](Store::apply) writes the same rows as [`TaskRow`]s (fenced by `lease`
    /// likewise), without making a `TaskRow` per row: `fill` puts each row into the
    /// sink. The rows' node ids are `ids[i]`, and their task names `names[task]`; the
    /// store shares `ids` with the journal instead of a string per row. Returns the
    /// number of rows dropped for a stale lease.
    pub(crate) fn put_journal_rows(
        &self,
        run: &Arc<str>,
        ids: &IdList,
        names: &[SmolStr],
        lease: u64,
        fill: impl FnOnce(&mut RowSink<'_>),
    ) -> u64 {
        let mut g = self.lock();
        let inner = &mut *g;
        let current = inner.leases.get(&**run).map_or(0, |l| l.token);
        let mut sink = RowSink {
            rows: None,
            names: Vec::new(),
            ids,
            shared: false,
            lease,
            fenced: 0,
        };
        if lease == 0 || lease >= current {
            let rows = inner.runs.entry(run.clone()).or_default();
            sink.names = names.iter().map(|n| rows.name(n)).collect();
            let present: Vec<u32> = match &rows.nodes {
                NodeIds::Shared(shared) if Arc::ptr_eq(shared, ids) => Vec::new(),
                _ => rows.iter().map(|(i, _)| i).collect(),
            };
            sink.shared = rows.nodes.share(ids, present.into_iter());
            sink.rows = Some(rows);
        }
        fill(&mut sink);
        sink.fenced
    }
}

impl Store for MemoryStore {
    fn location(&self) -> String {
        "(memory)".into()
    }

    fn as_memory_store(&self) -> Option<&MemoryStore> {
        Some(self)
    }

    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        Ok(self.lock().processes.get(id).cloned())
    }

    fn list(&self, query: &Query) -> Result<Page, StoreError> {
        let g = self.lock();
        index::list(
            query,
            |span| g.scan(span),
            |id| Ok(g.processes.get(id).cloned()),
        )
    }

    fn count(&self, query: &Query) -> Result<u64, StoreError> {
        let g = self.lock();
        index::count(
            query,
            |span| g.scan(span),
            |id| Ok(g.processes.get(id).cloned()),
        )
    }

    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.update_enqueue(id, &mut |cur| (f(cur), Vec::new()))
    }

    fn update_enqueue(
        &self,
        id: &str,
        f: &mut Enqueue<'_>,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        let mut g = self.lock();
        let current = g.processes.get(id).cloned();
        let (decided, deliveries) = f(current.as_ref());
        let written = match decided {
            Update::Keep => return Ok(current),
            Update::Delete => {
                g.delete(id);
                None
            }
            Update::Put(r) => {
                g.put((*r).clone());
                Some(*r)
            }
        };
        for d in deliveries {
            if !g.outbox.deliveries.contains_key(&d.id) {
                let id = d.id.clone();
                g.outbox.put(&id, Some(d));
            }
        }
        Ok(written)
    }

    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        Ok(self
            .lock()
            .runs
            .get(id)
            .map_or_else(Vec::new, RunRows::rows))
    }

    fn apply(&self, mut batch: Batch) -> Result<Applied, StoreError> {
        self.apply_in_place(&mut batch)
    }

    fn apply_in_place(&self, batch: &mut Batch) -> Result<Applied, StoreError> {
        let mut g = self.lock();
        let mut applied = Applied::default();
        for a in batch.archive.drain(..) {
            if a.keep == 0 {
                continue;
            }
            let rows: Vec<(u32, TaskRow)> = g
                .runs
                .get(a.rows_of.as_str())
                .map_or_else(Vec::new, RunRows::rows);
            let kept = g.history.entry(a.owner).or_default();
            kept.insert(a.run.seq, (a.run, rows));
            while kept.len() > a.keep {
                kept.pop_first();
            }
        }
        for id in batch.clear_runs.iter().chain(&batch.delete_processes) {
            g.runs.remove(id.as_str());
        }
        for id in &batch.delete_processes {
            g.delete(id);
            g.history.remove(id);
        }
        batch.clear_runs.clear();
        batch.delete_processes.clear();
        // A batch holds long stretches of one run's rows: one map lookup per stretch.
        let inner = &mut *g;
        let (runs, leases) = (&mut inner.runs, &inner.leases);
        let mut stretch: Option<(Arc<str>, u64, &mut RunRows)> = None;
        // Rows are read in place (their fields taken), not moved out whole: a task row is
        // about 240 bytes, and each move of it a copy. The emptied vector keeps its room
        // for the caller's next batch (see `Store::apply_in_place`).
        for (id, order, row) in &mut batch.tasks {
            let (current, rows) = match &mut stretch {
                Some((run, current, rows)) if Arc::ptr_eq(run, id) || **run == **id => {
                    (*current, rows)
                }
                _ => {
                    stretch = None;
                    let current = leases.get(&**id).map_or(0, |l| l.token);
                    let rows = runs.entry(id.clone()).or_default();
                    let (_, current, rows) = stretch.insert((id.clone(), current, rows));
                    (*current, rows)
                }
            };
            if row.lease != 0 && row.lease < current {
                applied.fenced += 1;
                continue;
            }
            rows.put(*order as usize, row);
        }
        drop(stretch);
        batch.tasks.clear();
        for r in batch.processes.drain(..) {
            g.put(r);
        }
        Ok(applied)
    }

    fn history(&self, id: &str) -> Result<Vec<PastRun>, StoreError> {
        Ok(self.lock().history.get(id).map_or_else(Vec::new, |kept| {
            kept.values().rev().map(|(run, _)| run.clone()).collect()
        }))
    }

    fn past_tasks(&self, id: &str, seq: u64) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        Ok(self
            .lock()
            .history
            .get(id)
            .and_then(|kept| kept.get(&seq))
            .map_or_else(Vec::new, |(_, rows)| rows.clone()))
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

    fn claim(&self, run: &str, owner: &str, ttl_ms: u64) -> Result<Lease, StoreError> {
        let mut g = self.lock();
        let token = g.leases.get(run).map_or(0, |l| l.token).saturating_add(1);
        let lease = Lease {
            run: run.to_owned(),
            owner: owner.to_owned(),
            token,
            expires_at: now_ms().saturating_add(ttl_ms),
        };
        g.leases.insert(run.to_owned(), lease.clone());
        Ok(lease)
    }

    fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut g = self.lock();
        match g.leases.get_mut(&lease.run) {
            Some(l) if l.token == lease.token => {
                l.expires_at = now_ms().saturating_add(ttl_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn forget_run(&self, run: &str, key: Option<&str>) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.leases.remove(run);
        if let Some(k) = key {
            if g.keys.get(k).is_some_and(|v| v == run) {
                g.keys.remove(k);
            }
        }
        Ok(())
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut g = self.lock();
        if let Some(l) = g.leases.get_mut(&lease.run) {
            if l.token == lease.token {
                // The token stays (tokens only grow); the lease just expires now.
                l.expires_at = 0;
            }
        }
        Ok(())
    }

    fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        Ok(self.lock().outbox.deliveries.get(id).cloned())
    }

    fn deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        let g = self.lock();
        let mut pager = Pager::new(query);
        'states: for state in states_to_scan(query) {
            for k in g
                .outbox
                .by_state
                .range(state_range(state, query.after.as_ref()))
            {
                let Some(d) = id_of_state(k).and_then(|id| g.outbox.deliveries.get(id)) else {
                    continue;
                };
                if !pager.offer(d.clone()) {
                    break 'states;
                }
            }
        }
        Ok(pager.finish())
    }

    fn next_delivery_at(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().outbox.due.first().and_then(|k| time_of_due(k)))
    }

    fn claim_deliveries(
        &self,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut g = self.lock();
        let ids: Vec<String> = g
            .outbox
            .due
            .iter()
            .take_while(|k| time_of_due(k).is_some_and(|t| t <= now_ms))
            .filter_map(|k| id_of_due(k).map(str::to_owned))
            .take(limit)
            .collect();
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(mut d) = g.outbox.deliveries.get(&id).cloned() else {
                continue;
            };
            if !d.is_due(now_ms) {
                continue;
            }
            d.owner = Some(owner.to_owned());
            d.lease = d.lease.saturating_add(1);
            d.next_at = now_ms.saturating_add(lease_ms);
            g.outbox.put(&id, Some(d.clone()));
            claimed.push(d);
        }
        Ok(claimed)
    }

    fn update_delivery(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&Delivery>) -> DeliveryUpdate,
    ) -> Result<Option<Delivery>, StoreError> {
        let mut g = self.lock();
        let current = g.outbox.deliveries.get(id).cloned();
        match f(current.as_ref()) {
            DeliveryUpdate::Keep => Ok(current),
            DeliveryUpdate::Delete => {
                g.outbox.put(id, None);
                Ok(None)
            }
            DeliveryUpdate::Put(d) => {
                let mut d = *d;
                id.clone_into(&mut d.id);
                g.outbox.put(id, Some(d.clone()));
                Ok(Some(d))
            }
        }
    }

    fn channel_state(&self, name: &str) -> Result<Option<ChannelState>, StoreError> {
        Ok(self.lock().outbox.channels.get(name).cloned())
    }

    fn set_channel_state(
        &self,
        name: &str,
        state: Option<&ChannelState>,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        match state {
            Some(s) => g.outbox.channels.insert(name.to_owned(), s.clone()),
            None => g.outbox.channels.remove(name),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Level, LogEntry, Progress, State};

    fn row(node: &str, rare: bool) -> TaskRow {
        TaskRow {
            task: "t".into(),
            node: node.into(),
            state: if rare { State::Failed } else { State::Done },
            attempts: 3,
            started_at: Some(10),
            ended_at: Some(20),
            elapsed_ns: 1234,
            skipped: false,
            error: rare.then(|| "boom".to_owned()),
            chain: if rare {
                vec!["cause".to_owned()]
            } else {
                Vec::new()
            },
            progress: Progress {
                percent: Some(40.0),
                message: rare.then(|| "halfway".to_owned()),
            },
            log: if rare {
                vec![LogEntry {
                    timestamp: 5,
                    level: Level::Warning,
                    message: "careful".to_owned(),
                    data: None,
                }]
            } else {
                Vec::new()
            },
            result: (!rare).then(|| "42".into()),
            lease: 7,
            optional: rare,
        }
    }

    // Rows are kept compact (rare fields boxed): every field comes back as it was given,
    // with or without the rare ones, across chunks.
    #[test]
    fn task_rows_come_back_whole() {
        let store = MemoryStore::new();
        let run: Arc<str> = Arc::from("r");
        // Short text is kept inline, long text (over 23 bytes, here with non-ASCII
        // characters) shared: both come back as given.
        let long = TaskRow {
            node: "étape/über-lange-kennung#12345".into(),
            result: Some(r#"{"grüße":"ein längeres Ergebnis"}"#.into()),
            ..row("d", false)
        };
        assert!(long.node.len() > 23 && long.result.as_ref().unwrap().len() > 23);
        // Rows without times or a percentage, and of other tasks (names are kept once
        // per run, rows by number), come back as given too.
        let other = TaskRow {
            task: "another task".into(),
            ..plain_row(7)
        };
        let given = vec![
            (0, row("a", false)),
            (1, row("b", true)),
            (3, other.clone()),
            (4, plain_row(4)),
            (5, long),
            (6, other),
            (2000, row("c", true)),
        ];
        let mut batch = Batch::default();
        for (i, r) in &given {
            batch.tasks.push((run.clone(), *i, r.clone()));
        }
        store.apply(batch).unwrap();
        assert_eq!(store.tasks("r").unwrap(), given);
    }

    // A row is checked for rare fields in place, and its task name matched by address
    // before its text: a row with any one rare field keeps it, and names of the same
    // text at other addresses, or of other text, come back as given.
    #[test]
    fn one_rare_field_and_names_by_address_or_text_come_back() {
        let store = MemoryStore::new();
        let run: Arc<str> = Arc::from("r");
        let base = plain_row(0);
        let entry = LogEntry {
            timestamp: 5,
            level: Level::Info,
            message: "note".to_owned(),
            data: None,
        };
        let shared = SmolStr::new_static("load");
        let given = vec![
            (
                0,
                TaskRow {
                    error: Some("boom".into()),
                    ..base.clone()
                },
            ),
            (
                1,
                TaskRow {
                    chain: vec!["cause".into()],
                    ..base.clone()
                },
            ),
            (
                2,
                TaskRow {
                    progress: Progress {
                        percent: None,
                        message: Some("half".into()),
                    },
                    ..base.clone()
                },
            ),
            (
                3,
                TaskRow {
                    log: vec![entry],
                    ..base.clone()
                },
            ),
            (
                4,
                TaskRow {
                    task: shared.clone(),
                    ..base.clone()
                },
            ),
            (
                5,
                TaskRow {
                    task: shared,
                    ..base.clone()
                },
            ),
            // Same text, another address; then other text of the same length.
            (
                6,
                TaskRow {
                    task: SmolStr::new(String::from("load")),
                    ..base.clone()
                },
            ),
            (
                7,
                TaskRow {
                    task: "lost".into(),
                    ..base.clone()
                },
            ),
            (
                8,
                TaskRow {
                    task: "load".into(),
                    ..base
                },
            ),
        ];
        let mut batch = Batch::default();
        for (i, r) in &given {
            batch.tasks.push((run.clone(), *i, r.clone()));
        }
        store.apply(batch).unwrap();
        assert_eq!(store.tasks("r").unwrap(), given);
    }

    fn plain_row(node: u32) -> TaskRow {
        TaskRow {
            task: "t".into(),
            node: node.to_string().into(),
            state: State::Done,
            attempts: 1,
            started_at: None,
            ended_at: None,
            elapsed_ns: 0,
            skipped: false,
            error: None,
            chain: Vec::new(),
            progress: Progress::default(),
            log: Vec::new(),
            result: None,
            lease: 0,
            optional: false,
        }
    }

    // A million-task run keeps a million rows: each stays 80 bytes (a `TaskRow` is 240),
    // its node id in the run's shared list.
    #[test]
    fn a_kept_row_is_small() {
        assert!(
            std::mem::size_of::<Option<MemRow>>() <= 80,
            "{} bytes",
            std::mem::size_of::<Option<MemRow>>()
        );
    }

    #[test]
    fn a_small_run_holds_few_row_slots() {
        let mut rows = RunRows::default();
        for i in (0..10).rev() {
            rows.put(i, &mut plain_row(i as u32));
        }
        let slots: usize = rows.chunks.iter().flatten().map(Vec::capacity).sum();
        assert!(slots <= 16, "10 rows took {slots} slots");
        let order: Vec<u32> = rows.iter().map(|(i, _)| i).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn rows_across_chunks_keep_their_index() {
        let mut rows = RunRows::default();
        let n = RunRows::CHUNK * 2 + 5;
        for i in 0..n {
            rows.put(i, &mut plain_row(i as u32));
        }
        rows.put(3, &mut plain_row(3));
        let got: Vec<(u32, String)> = rows
            .iter()
            .map(|(i, _)| (i, rows.nodes.get(i as usize).to_string()))
            .collect();
        assert_eq!(got.len(), n);
        assert!(got.iter().all(|(i, node)| i.to_string() == *node));
        let slots: usize = rows.chunks.iter().flatten().map(Vec::capacity).sum();
        assert!(
            slots <= RunRows::CHUNK * 2 + 8,
            "{n} rows took {slots} slots"
        );
    }

    // A batch that goes back and forth between runs (several journals in one write cycle):
    // each row lands in its own run, and each run's rows are fenced by that run's lease.
    #[test]
    fn interleaved_runs_are_applied_and_fenced_per_run() {
        let store = MemoryStore::new();
        store.claim("a", "w", 60_000).unwrap();
        store.claim("a", "w", 60_000).unwrap(); // run a's lease is now 2
        store.claim("b", "w", 60_000).unwrap(); // run b's, 1
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let leased = |node: u32, lease: u64| TaskRow {
            lease,
            ..plain_row(node)
        };
        let mut batch = Batch::default();
        batch.tasks.push((a.clone(), 0, leased(0, 2)));
        batch.tasks.push((a.clone(), 1, leased(1, 1))); // stale in a
        batch.tasks.push((b.clone(), 0, leased(10, 1)));
        // The same run again, through another `Arc` of the same text.
        batch.tasks.push((Arc::from("a"), 2, leased(2, 2)));
        batch.tasks.push((b, 1, leased(11, 1)));
        batch.tasks.push((a, 3, leased(3, 0))); // no lease: never fenced
        let applied = store.apply(batch).unwrap();
        assert_eq!(applied.fenced, 1);
        let nodes = |run: &str| -> Vec<(u32, String)> {
            let rows = store.tasks(run).unwrap();
            rows.into_iter()
                .map(|(i, r)| (i, r.node.to_string()))
                .collect()
        };
        assert_eq!(
            nodes("a"),
            vec![(0, "0".into()), (2, "2".into()), (3, "3".into())]
        );
        assert_eq!(nodes("b"), vec![(0, "10".into()), (1, "11".into())]);
    }

    /// `r` as a journal hands it over (its compact row, and its rare fields when it has
    /// any), its task name number `task`.
    fn compact(r: &TaskRow, task: u32) -> (CompactRow, Option<RareFields>) {
        let rare = RareFields::boxed((
            r.error.clone(),
            r.chain.clone(),
            r.progress.message.clone(),
            r.log.clone(),
        ));
        let mut c = CompactRow::new(r.state, task, r.optional);
        c.attempts = r.attempts;
        if let Some(ms) = r.started_at {
            c.set_started_at(ms);
        }
        if let Some(ms) = r.ended_at {
            c.set_ended_at(ms);
        }
        c.elapsed_ns = r.elapsed_ns;
        c.set_percent(r.progress.percent);
        c.set(CompactRow::SKIPPED, r.skipped);
        c.set(CompactRow::RARE, rare.is_some());
        // The journal's own bit is not the store's: written or not, the same row.
        c.flags |= CompactRow::SETTLED;
        c.result.clone_from(&r.result);
        (c, rare.map(|b| *b))
    }

    /// Puts `r` (task name number `task`) into `sink` as node `i`'s row.
    fn put(sink: &mut RowSink<'_>, i: u32, r: &TaskRow, task: u32) {
        let (c, rare) = compact(r, task);
        sink.put(i, &c, rare.as_ref());
    }

    // Rows written straight from a journal come back as the same rows applied as
    // `TaskRow`s would, with the journal's node ids (one shared list, no string per row)
    // and task names; a later `TaskRow` with another node id for one of them, or for a
    // new row, keeps its own id without changing the others'.
    #[test]
    fn journal_rows_come_back_as_task_rows() {
        let store = MemoryStore::new();
        let run: Arc<str> = Arc::from("r");
        let ids: IdList = Arc::new((0..2000).map(|i| SmolStr::from(format!("n{i}"))).collect());
        let names = [SmolStr::new_static("t"), SmolStr::new_static("u")];
        let plain = |i: u32| TaskRow {
            node: ids[i as usize].clone(),
            lease: 7,
            ..row("x", false)
        };
        let rare = |i: u32| TaskRow {
            node: ids[i as usize].clone(),
            task: "u".into(),
            lease: 7,
            ..row("x", true)
        };
        let fenced = store.put_journal_rows(&run, &ids, &names, 7, |sink| {
            for i in [3, 1999, 0] {
                put(sink, i, &plain(i), 0);
            }
            put(sink, 5, &rare(5), 1);
        });
        assert_eq!(fenced, 0);
        {
            let g = store.lock();
            let rows = &g.runs["r"];
            assert!(matches!(&rows.nodes, NodeIds::Shared(s) if Arc::ptr_eq(s, &ids)));
            // Each chunk is made whole at once, and no larger than the run.
            let room: Vec<usize> = rows.chunks.iter().flatten().map(Vec::capacity).collect();
            assert_eq!(room, vec![RunRows::CHUNK, 2000 - RunRows::CHUNK]);
        }
        let want = vec![
            (0, plain(0)),
            (3, plain(3)),
            (5, rare(5)),
            (1999, plain(1999)),
        ];
        assert_eq!(store.tasks("r").unwrap(), want);
        // A row given as a `TaskRow` with its own id.
        let mut batch = Batch::default();
        let renamed = TaskRow {
            node: "other".into(),
            ..plain(3)
        };
        batch.tasks.push((run.clone(), 3, renamed.clone()));
        batch.tasks.push((run.clone(), 4000, plain_row(4000)));
        store.apply(batch).unwrap();
        let want = vec![
            (0, plain(0)),
            (3, renamed),
            (5, rare(5)),
            (1999, plain(1999)),
            (4000, plain_row(4000)),
        ];
        assert_eq!(store.tasks("r").unwrap(), want);
        // The journal writes on: its rows keep the journal's ids.
        store.put_journal_rows(&run, &ids, &names, 7, |sink| {
            put(sink, 1, &plain(1), 0);
        });
        let rows: HashMap<u32, TaskRow> = store.tasks("r").unwrap().into_iter().collect();
        assert_eq!(rows[&1], plain(1));
        assert_eq!(&*rows[&3].node, "other");
        assert_eq!(&*rows[&4000].node, "4000");
    }

    // Rare fields are kept beside the rows, by node: a row written again without them
    // (from a journal or as a `TaskRow`) comes back without them and leaves none behind,
    // one written again with other ones comes back with those, and the other rows keep
    // theirs.
    #[test]
    fn a_row_written_again_keeps_only_its_new_rare_fields() {
        let store = MemoryStore::new();
        let run: Arc<str> = Arc::from("r");
        let ids: IdList = Arc::new((0..4).map(|i| SmolStr::from(format!("n{i}"))).collect());
        let names = [SmolStr::new_static("t")];
        let with = |i: u32, error: &str| TaskRow {
            node: ids[i as usize].clone(),
            error: Some(error.to_owned()),
            ..plain_row(i)
        };
        let without = |i: u32| TaskRow {
            node: ids[i as usize].clone(),
            ..plain_row(i)
        };
        store.put_journal_rows(&run, &ids, &names, 0, |sink| {
            for i in 0..3 {
                put(sink, i, &with(i, "first"), 0);
            }
        });
        store.put_journal_rows(&run, &ids, &names, 0, |sink| {
            put(sink, 0, &without(0), 0);
            put(sink, 1, &with(1, "second"), 0);
        });
        let mut batch = Batch::default();
        batch.tasks.push((run.clone(), 2, without(2)));
        batch.tasks.push((run.clone(), 3, with(3, "third")));
        store.apply(batch).unwrap();
        let rows = store.tasks("r").unwrap();
        let want = vec![
            (0, without(0)),
            (1, with(1, "second")),
            (2, without(2)),
            (3, with(3, "third")),
        ];
        assert_eq!(rows, want);
        let kept: BTreeSet<u32> = store.lock().runs["r"].rare.keys().copied().collect();
        assert_eq!(kept, BTreeSet::from([1, 3]), "no rare fields left behind");
    }

    // A journal whose lease is stale writes nothing (its rows are counted as fenced); a
    // journal without a lease is never fenced.
    #[test]
    fn journal_rows_with_a_stale_lease_are_dropped() {
        let store = MemoryStore::new();
        store.claim("r", "w", 60_000).unwrap();
        store.claim("r", "w", 60_000).unwrap(); // the run's lease is now 2
        let run: Arc<str> = Arc::from("r");
        let ids: IdList = Arc::new((0..3).map(|i| SmolStr::from(i.to_string())).collect());
        let names = [SmolStr::new_static("t")];
        let r = plain_row(0);
        let fenced = store.put_journal_rows(&run, &ids, &names, 1, |sink| {
            put(sink, 0, &r, 0);
            put(sink, 1, &r, 0);
        });
        assert_eq!(fenced, 2);
        assert!(store.tasks("r").unwrap().is_empty());
        for lease in [0, 2] {
            let fenced = store.put_journal_rows(&run, &ids, &names, lease, |sink| {
                put(sink, 2, &r, 0);
            });
            assert_eq!(fenced, 0);
        }
        let rows = store.tasks("r").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0, rows[0].1.lease, &*rows[0].1.node), (2, 2, "2"));
    }

    // A batch applied in place is written as a batch given whole, and comes back empty
    // with its task rows' room kept (the writer fills it again next cycle).
    #[test]
    fn a_batch_applied_in_place_keeps_its_room() {
        let store = MemoryStore::new();
        let run: Arc<str> = Arc::from("r");
        let mut batch = Batch::default();
        for i in 0..64 {
            batch
                .tasks
                .push((run.clone(), i, row(&format!("n{i}"), i % 2 == 0)));
        }
        let room = batch.tasks.capacity();
        store.apply_in_place(&mut batch).unwrap();
        assert!(batch.is_empty());
        assert_eq!(batch.tasks.capacity(), room);
        let rows = store.tasks("r").unwrap();
        assert_eq!(rows.len(), 64);
        for (i, r) in rows {
            let want = row(&format!("n{i}"), i % 2 == 0);
            assert_eq!(r.node, want.node);
            assert_eq!(r.error, want.error);
            assert_eq!(r.log.len(), want.log.len());
            assert_eq!(r.result, want.result);
        }
    }
}
