//! What a run writes to the store, and the group-commit writer that writes it (the
//! journal layer, above `store`: the executor reaches storage only through it).
//!
//! The executor records every task state change in the run's [`RunJournal`] (in memory)
//! and wakes the writer (`writer.rs`), one thread per runtime: it takes everything
//! dirty from every journal, applies it in order (see [`writer`]), flushes once, and only then
//! publishes the corresponding events. Under load many transitions share one flush (group
//! commit); no transition waits for a flush of its own. Progress and log entries only mark
//! rows dirty without waking the writer, so they reach the store at the next tick (the
//! progress flush interval) or with the next state change.

mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) use self::writer::{start_writer, WriterHandle};

use crate::events::{Event, EventKind};
use crate::record::Level;
use crate::record::{now_ms, LogEntry, Progress, State, MAX_LOG};
use crate::store::{Batch, CompactRow, MemoryStore, RareFields, RowSink, StoreError, TaskRow};
use crate::task::ctx::Reporter;
use crate::util::IdList;
use crate::util::{mono_ns, nanos};
use smol_str::SmolStr;

/// More than this many progress messages from one task within one flush window is an
/// avalanche: the extra messages are counted, not logged.
pub(crate) const AVALANCHE: u32 = 10;

struct Throttle {
    window_start: Instant,
    in_window: u32,
    dropped: u32,
    last_dropped: Option<String>,
}

/// A task row as the journal keeps it: a [`CompactRow`], the layout the memory store
/// keeps too (written there as a copy), with the journal's [`CompactRow::SETTLED`] bit.
/// Its rare fields (error, its chain, the progress message, the log), which most tasks
/// never have, are kept beside the rows ([`Rows::rare`]); its task's name and node id
/// are the run's shared strings, looked up by index. A [`TaskRow`] is made from it only
/// when it is written to a store other than the memory store ([`Rows::push_row`]).
///
/// 72 bytes, under a third of a [`TaskRow`] (a 100k-task run keeps the rows of its
/// running part).
type Row = CompactRow;

/// The rows of a run, by node index, in chunks of [`RowChunks::CHUNK`] rows. A chunk is
/// made when a row of its own is first touched, and freed once each of its rows is
/// written in an end state (done, failed, cancelled), which it never leaves: the store
/// has them. So a run's launch writes 4 bytes per node (its task name and optional
/// flag), not a whole row; a row is written next to the rows that ran just before it
/// (a layered graph's layer), still in the cache, not into memory written at the launch
/// and evicted since; and the journal of a run holds the rows of its running part, not
/// of all its nodes (a freed chunk's room is the next chunk's, see
/// [`RowChunks::spare`], instead of new pages that each fault once).
struct RowChunks {
    chunks: Vec<Chunk>,
    /// Per node: the index of its task's name, with [`RowChunks::OPTIONAL`] set when it is
    /// optional.
    meta: Box<[u32]>,
    /// Freed chunks' rows ([`RowChunks::SPARE`] at most, each of [`RowChunks::CHUNK`]
    /// rows), kept for the next chunks: a chunk made from one writes its rows over the
    /// old ones (each old row dropped in the cache line its new row is written to), not
    /// into new room after a pass that drops every old row of a chunk freed (a read of
    /// its 36 KiB, long out of the cache, on the writer's cycle).
    spare: Vec<Vec<Row>>,
}

#[derive(Default)]
struct Chunk {
    /// `None` before its first row is touched and after its last row is settled. Its
    /// room is made for the chunk's every row at once, but its rows are made up to the
    /// highest touched so far (see [`RowChunks::get_mut`]); a spare chunk's room (see
    /// [`RowChunks::spare`]) holds old rows past those.
    rows: Option<Vec<Row>>,
    /// Its rows made: the first `made` of `rows` are the chunk's.
    made: u32,
    /// Its rows written in an end state (see [`Row::settled`]).
    settled: u32,
}

impl RowChunks {
    /// Rows per chunk: a chunk (40 KiB) is below the allocator's thresholds for
    /// mapping its own pages and for consolidating its free lists.
    const CHUNK: usize = 512;
    const OPTIONAL: u32 = 1 << 31;
    /// Rows made at once when a row past a chunk's made ones is touched (see
    /// [`RowChunks::make`]): 1 KiB, rows touched soon (rows are mostly touched in order).
    const BLOCK: usize = 16;
    /// Freed chunks kept for the next ones (see [`RowChunks::spare`]): a chain's rows
    /// free a chunk as the one after the next is made, a layered graph's a few.
    const SPARE: usize = 4;

    fn new(meta: Box<[u32]>) -> Self {
        let chunks = std::iter::repeat_with(Chunk::default)
            .take(meta.len().div_ceil(Self::CHUNK))
            .collect();
        RowChunks {
            chunks,
            meta,
            spare: Vec::new(),
        }
    }

    /// The number of rows (0 once released).
    fn len(&self) -> usize {
        self.meta.len()
    }

    /// The number of rows of chunk `c`.
    fn chunk_len(&self, c: usize) -> usize {
        Self::chunk_len_of(self.len(), c)
    }

    /// Row `i`, made when first touched (with its chunk's room, and the rows of its
    /// chunk before it not made yet); `None` when `i` is out of range (the rows were
    /// released) or its chunk was freed (every row of it settled).
    ///
    /// A row is made (scheduled), with a few next to it ([`RowChunks::BLOCK`]), just
    /// before its first change is written into it, while its cache line is still there,
    /// not with its whole chunk long before (its line then written twice, the second
    /// time after it left the cache): rows are mostly touched in order of their nodes
    /// (a chain's, a layered graph's layer by layer).
    #[inline]
    fn get_mut(&mut self, i: usize) -> Option<&mut Row> {
        if i >= self.len() {
            return None;
        }
        let (c, k) = (i / Self::CHUNK, i % Self::CHUNK);
        if k < self.chunks[c].made as usize {
            self.chunks[c]
                .rows
                .as_mut()
                .and_then(|rows| rows.get_mut(k))
        } else {
            self.make(c, k)
        }
    }

    /// Row `k` of chunk `c`, first touched: made with the rows before it not made yet
    /// and the rest of its block, and the chunk's room when it is the chunk's first (see
    /// [`RowChunks::get_mut`]); `None` when the chunk was freed already. Out of line:
    /// once per block of rows.
    #[inline(never)]
    fn make(&mut self, c: usize, k: usize) -> Option<&mut Row> {
        let whole = Self::chunk_len_of(self.meta.len(), c);
        let Chunk {
            rows,
            made,
            settled,
        } = &mut self.chunks[c];
        let rows = match rows {
            Some(rows) => rows,
            None if *settled as usize == whole => return None, // freed: each row written
            // A whole chunk takes a spare's room (see `RowChunks::spare`).
            None if whole == Self::CHUNK => rows.insert(
                self.spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(whole)),
            ),
            None => rows.insert(Vec::with_capacity(whole)),
        };
        // A block of rows at a time (a few cache lines, written in one go and touched
        // next): not a call per row.
        let start = c * Self::CHUNK;
        let from = *made as usize;
        let end = (k + 1).next_multiple_of(Self::BLOCK).min(whole);
        let meta = self.meta.get(start + from..start + end).unwrap_or_default();
        let new = |&m: &u32| {
            Row::new(
                State::Scheduled,
                m & !Self::OPTIONAL,
                m & Self::OPTIONAL != 0,
            )
        };
        // Over a spare's old rows first (as far as it has them), then past them.
        let over = rows.len().saturating_sub(from).min(meta.len());
        if let Some(old) = rows.get_mut(from..from + over) {
            for (row, m) in old.iter_mut().zip(meta) {
                *row = new(m);
            }
        }
        rows.extend(meta.get(over..).unwrap_or_default().iter().map(new));
        // Within a chunk: below `CHUNK`.
        #[allow(clippy::cast_possible_truncation)]
        {
            *made = end.max(from) as u32;
        }
        rows.get_mut(k)
    }

    /// The number of rows of chunk `c` of `len` rows.
    fn chunk_len_of(len: usize, c: usize) -> usize {
        (len - c * Self::CHUNK).min(Self::CHUNK)
    }

    /// Row `i` is in the store in an end state: counted once; its chunk, when that was
    /// its last row, is handed back to be dropped (by the caller, outside the lock).
    fn settle(&mut self, i: usize) -> Option<Vec<Row>> {
        if !self.get_mut(i)?.settle_end() {
            return None;
        }
        self.count_settled(i)
    }

    /// Counts row `i`, just marked settled; hands back its chunk when that was its last.
    fn count_settled(&mut self, i: usize) -> Option<Vec<Row>> {
        let c = i / Self::CHUNK;
        let whole = self.chunk_len(c);
        let chunk = &mut self.chunks[c];
        chunk.settled += 1;
        if chunk.settled as usize == whole {
            chunk.made = 0;
            chunk.rows.take()
        } else {
            None
        }
    }

    /// Keeps `rows`, a chunk's freed (their rare fields dropped already), for the next
    /// chunks when there is room in [`RowChunks::spare`] and they are a whole chunk's;
    /// else gives them back, to be dropped by the caller (outside the lock).
    fn recycle(&mut self, rows: Vec<Row>) -> Option<Vec<Row>> {
        if self.spare.len() < Self::SPARE && rows.len() == Self::CHUNK {
            self.spare.push(rows);
            return None;
        }
        Some(rows)
    }
}

struct Rows {
    items: RowChunks,
    /// Node ids, by node index: the graph's one copy (`Graph::ids`), which the executor
    /// shares too.
    nodes: IdList,
    /// The distinct task names ([`Row::task`] indexes them), static text.
    names: Vec<SmolStr>,
    /// The run's lease token, which every row of the run carries.
    lease: u64,
    /// Number of tasks (kept when the rows are freed, see
    /// [`RunJournal::release_when_written`]).
    len: usize,
    /// The rows to write, each once: a row in it is flagged [`Row::DIRTY`] (a flag in
    /// the row, which its change writes anyway, not an array of its own by node), as
    /// the state last announced by an event is kept in the row ([`Row::announced`]).
    dirty_list: Vec<u32>,
    /// Room for sorting [`Rows::dirty_list`] (see [`sort_nodes`]), kept from one take
    /// to the next.
    sort_bits: Vec<u64>,
    throttle: HashMap<u32, Throttle>,
    window: Duration,
    /// Sum of every task's share of the run's progress (see [`share`]).
    shares: f64,
    /// The run's progress changed since it was last written to the run's record.
    rollup_dirty: bool,
    /// The last progress message of any task.
    last_message: Option<String>,
    /// The rare fields of the rows flagged [`CompactRow::RARE`], by node: most rows have
    /// none. Those of a freed chunk's rows are dropped with it (see [`Rows::freed`]).
    rare: rustc_hash::FxHashMap<u32, RareFields>,
}

/// Sorts `list`, node indexes each in it once (a run's rows to write), with `bits` as
/// room: a list in order already (a chain's) is left as it is; one whose nodes are
/// close together (a layer's) is sorted by setting a bit per node and reading the bits
/// back in order (a few instructions per node, where a sort by comparisons takes about
/// a hundred for a list of thousands); a sparse one is sorted by comparisons.
fn sort_nodes(list: &mut Vec<u32>, bits: &mut Vec<u64>) {
    let Some(&first) = list.first() else {
        return;
    };
    // One pass: whether in order, and the range.
    let (mut min, mut max, mut prev, mut sorted) = (first, first, first, true);
    for &n in list.iter() {
        sorted &= prev <= n;
        prev = n;
        min = min.min(n);
        max = max.max(n);
    }
    if sorted {
        return;
    }
    let span = (max - min) as usize + 1;
    if span / 8 > list.len() {
        list.sort_unstable();
        return;
    }
    bits.clear();
    bits.resize(span.div_ceil(64), 0);
    for &n in list.iter() {
        let d = (n - min) as usize;
        if let Some(word) = bits.get_mut(d / 64) {
            *word |= 1 << (d % 64);
        }
    }
    // Written back in place: as many nodes as were in it (fewer if one was twice).
    let mut k = 0;
    for (w, &word) in bits.iter().enumerate() {
        // Below `span`, from nodes of `list`: within u32.
        #[allow(clippy::cast_possible_truncation)]
        let base = min + (w * 64) as u32;
        let mut x = word;
        while x != 0 {
            if let Some(slot) = list.get_mut(k) {
                *slot = base + x.trailing_zeros();
            }
            k += 1;
            x &= x - 1;
        }
    }
    list.truncate(k);
}

/// Marks `row` (node `node`'s) to be written, once: it joins `list` unless it is in it.
#[inline]
fn mark_row(list: &mut Vec<u32>, row: &mut Row, node: u32) {
    if !row.has(Row::DIRTY) {
        row.flags |= Row::DIRTY;
        list.push(node);
    }
}

/// A task's share of its run's rolled-up progress, in percent: 100 once done or
/// skipped (nothing is left to do for it), otherwise the last percentage it reported (0
/// when none, or indeterminate): a task that failed or was cancelled stays where it
/// stopped, so a run that did not end done shows how far it got.
fn share(row: &Row) -> f64 {
    if row.state == State::Done || row.skipped() {
        100.0
    } else {
        row.percent().unwrap_or(0.0)
    }
}

/// What [`Rows::free_rows`] took, to be dropped outside the lock.
type FreedRows = (
    RowChunks,
    IdList,
    HashMap<u32, Throttle>,
    rustc_hash::FxHashMap<u32, RareFields>,
);

impl Rows {
    /// Takes the rows and what goes with them, unless some are still to be written
    /// (see [`RunJournal::release_when_written`]); later changes are ignored.
    fn free_rows(&mut self) -> Option<FreedRows> {
        if !self.dirty_list.is_empty() {
            return None;
        }
        Some((
            std::mem::replace(&mut self.items, RowChunks::new(Box::default())),
            std::mem::replace(&mut self.nodes, Arc::from(Vec::new())),
            std::mem::take(&mut self.throttle),
            std::mem::take(&mut self.rare),
        ))
    }

    /// Runs `f` on row `node`, keeping the rolled-up progress up to date; false, without
    /// running it, when the rows were released or the row ended and was written.
    fn change(&mut self, node: u32, f: impl FnOnce(&mut Row)) -> bool {
        let Some(row) = self.items.get_mut(node as usize) else {
            return false;
        };
        let before = share(row);
        f(row);
        let after = share(row);
        self.reshare(before, after);
        true
    }

    /// A row's share of the run's progress went from `before` to `after`.
    #[inline]
    fn reshare(&mut self, before: f64, after: f64) {
        // Exact: an unchanged share is the same value, not a nearby one.
        #[allow(clippy::float_cmp)]
        let changed = after != before;
        if changed {
            self.shares += after - before;
            self.rollup_dirty = true;
        }
    }

    /// The run's progress: the mean of its tasks' shares, with the last task message.
    fn rollup(&self) -> Progress {
        let n = self.len;
        let percent = if n == 0 {
            100.0
        } else {
            #[allow(clippy::cast_precision_loss)] // a graph has far fewer than 2^52 nodes
            let mean = self.shares / n as f64;
            // Sums of floats drift; the result stays within 0..=100.
            mean.clamp(0.0, 100.0)
        };
        Progress {
            percent: Some(percent),
            message: self.last_message.clone(),
        }
    }

    /// Marks row `node` to be written (nothing when the rows were released or its chunk
    /// freed: there is nothing left to write).
    fn mark(&mut self, node: u32) {
        if let Some(row) = self.items.get_mut(node as usize) {
            mark_row(&mut self.dirty_list, row, node);
        }
    }

    fn push_log(&mut self, node: u32, level: Level, message: String) {
        self.push_entry(
            node,
            LogEntry {
                timestamp: now_ms(),
                level,
                message,
                data: None,
            },
        );
    }

    fn push_entry(&mut self, node: u32, entry: LogEntry) {
        let Some(row) = self.items.get_mut(node as usize) else {
            return; // released, or ended and written
        };
        row.flags |= Row::RARE;
        let log = &mut self.rare.entry(node).or_default().log;
        log.push(entry);
        if log.len() > MAX_LOG {
            let extra = log.len() - MAX_LOG;
            log.drain(..extra);
        }
    }

    /// Writes the "(N messages dropped)" note and the last dropped message, if any.
    fn settle_burst(&mut self, node: u32) {
        if self.throttle.is_empty() {
            return; // no task reported progress: nothing to look up (called on every end)
        }
        let Some(t) = self.throttle.get_mut(&node) else {
            return;
        };
        if t.dropped == 0 {
            return;
        }
        // The last dropped message is written after the note, so it is not counted in it.
        let n = t.dropped - 1;
        let last = t.last_dropped.take();
        t.dropped = 0;
        if n > 0 {
            self.push_log(node, Level::Info, format!("({n} messages dropped)"));
        }
        if let Some(m) = last {
            self.push_log(node, Level::Info, m);
        }
    }
}

/// What a row written by a take is written with, beside the row: the run's shared
/// lists and the rows' rare fields (see [`RunJournal::drain`]).
struct RowParts<'a> {
    nodes: &'a [SmolStr],
    names: &'a [SmolStr],
    rare: &'a rustc_hash::FxHashMap<u32, RareFields>,
    lease: u64,
}

impl RowParts<'_> {
    /// Writes row `r` (node `node`'s) into the memory store's `sink`, as
    /// [`push_row`](Self::push_row) pushes it (same result), without making a
    /// [`TaskRow`]: the store copies the row.
    #[inline]
    fn put_row(&self, node: u32, r: &Row, sink: &mut RowSink<'_>) {
        sink.put(node, r, r.rare_in(self.rare, node));
    }

    /// Pushes row `r` (node `node`'s) as the store takes it onto `out`, as run `run`'s
    /// (made in place: a task row is about 240 bytes, each move of it a copy).
    fn push_row(
        &self,
        node: u32,
        r: &Row,
        run: &Arc<str>,
        out: &mut Vec<(Arc<str>, u32, TaskRow)>,
    ) {
        let rare = r.rare_in(self.rare, node);
        out.push((
            run.clone(),
            node,
            r.to_task_row(
                self.names.get(r.task as usize).cloned().unwrap_or_default(),
                self.nodes.get(node as usize).cloned().unwrap_or_default(),
                rare,
                self.lease,
            ),
        ));
    }
}

impl Rows {
    /// Chunk `c`'s rows, `rows`, were freed (each ended and was written): their rare
    /// fields go with them, and their room to the next chunks when it is kept (see
    /// [`RowChunks::spare`]); returns the rows not kept, to be dropped after the lock.
    fn freed(&mut self, c: usize, rows: Vec<Row>) -> Option<Vec<Row>> {
        // No row has any rare field in most runs.
        if !self.rare.is_empty() {
            for (k, row) in rows.iter().enumerate() {
                if row.has(Row::RARE) {
                    let node = u32::try_from(c * RowChunks::CHUNK + k).unwrap_or(u32::MAX);
                    self.rare.remove(&node);
                }
            }
        }
        self.items.recycle(rows)
    }
}

/// The in-memory image of a run's task rows, and what changed since the last write.
///
/// It also rolls the tasks' progress up into the run's: every task weighs the same; a
/// task done or skipped counts 100 %, any other the last percentage it reported (0
/// without one). The run's record receives it once per progress flush (see
/// [`take_rollup`](RunJournal::take_rollup)), never once per progress call.
pub(crate) struct RunJournal {
    pub(crate) run_id: Arc<str>,
    /// The root of the run's tree, for events.
    pub(crate) root: Arc<str>,
    /// The run's token: the roll-up is written only to this run of the record.
    pub(crate) token: u64,
    /// A wake-up is on its way to the writer: further changes need not send another.
    woken: std::sync::atomic::AtomicBool,
    /// The rows are to be freed once none is left to write (see
    /// [`release_when_written`](Self::release_when_written)). Beside the rows' lock, not
    /// under it: the run's driver asks without waiting for a write cycle that holds them.
    release_asked: std::sync::atomic::AtomicBool,
    rows: Mutex<Rows>,
    /// Ends not written into the rows yet, one list per [`StagedShard`]: the ends
    /// recorded while the rows were locked (by the writer taking them, mostly). A task's
    /// worker does not wait for a write cycle to record its end. Applied to the rows
    /// before anything reads or takes them (see [`RunJournal::lock_applied`]).
    staged: [StagedShard<Staged>; STAGED_SHARDS],
    /// The nodes that succeeded and whose rows are not written yet, by number, one list
    /// per [`StagedShard`]: their facts are read from [`successes`](Self::successes)
    /// when they are applied (see [`succeeded`](Self::succeeded)).
    succeeded: [StagedShard<u32>; STAGED_SHARDS],
    /// Where the facts of the nodes in [`succeeded`](Self::succeeded) are read: the
    /// run's executor state, set once it is made (see
    /// [`read_successes_from`](Self::read_successes_from)).
    successes: std::sync::OnceLock<std::sync::Weak<dyn Successes>>,
    writer: WriterHandle,
    /// The wall clock (ms since the Unix epoch) and the monotonic clock ([`mono_ns`])
    /// read together when the journal was made: an end given as a monotonic time (see
    /// [`Ended::at`]) is turned into wall-clock time without another clock read.
    clock0: (u64, u64),
    /// Its rows are still to be made (see [`RunJournal::awaiting_rows`]).
    awaiting: std::sync::atomic::AtomicBool,
}

impl RunJournal {
    /// The journal of a run whose tasks are all still to run: one row per node, each
    /// `scheduled`, from the node's id (`ids`, by node index: shared with the executor,
    /// see [`node_ids`](Self::node_ids)), task name and whether it is optional (a run's
    /// journal has its rows from the executor instead, see
    /// [`awaiting_rows`](Self::awaiting_rows)).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        run_id: Arc<str>,
        root: Arc<str>,
        token: u64,
        lease: u64,
        ids: IdList,
        nodes: impl ExactSizeIterator<Item = NewRow>,
        writer: WriterHandle,
        window: Duration,
    ) -> Arc<Self> {
        let mut meta = RowMeta::with_capacity(nodes.len());
        for node in nodes {
            meta.push(node.task, node.optional);
        }
        let j = Self::awaiting_rows(run_id, root, token, lease, ids, writer, window);
        j.set_rows(meta);
        j
    }

    /// A journal as [`new`](Self::new) makes it, but whose rows' task names and
    /// optional flags (a [`RowMeta`]) come later, by [`set_rows`](Self::set_rows) (from
    /// the executor's own walk of the graph's nodes, not a walk of its own): until then it
    /// has no rows (changes are ignored). One row per node id of `ids`.
    pub(crate) fn awaiting_rows(
        run_id: Arc<str>,
        root: Arc<str>,
        token: u64,
        lease: u64,
        ids: IdList,
        writer: WriterHandle,
        window: Duration,
    ) -> Arc<Self> {
        let n = ids.len();
        // Nothing is done yet: every share is 0.
        let shares = 0.0;
        let j = Arc::new(RunJournal {
            run_id,
            root,
            token,
            woken: std::sync::atomic::AtomicBool::new(false),
            release_asked: std::sync::atomic::AtomicBool::new(false),
            rows: Mutex::new(Rows {
                items: RowChunks::new(Box::default()),
                nodes: ids,
                names: Vec::new(),
                lease,
                len: n,
                // Room for the rows a busy cycle marks (16 KiB at most): the workers do
                // not grow it from nothing at the run's start.
                dirty_list: Vec::with_capacity(n.min(4096)),
                sort_bits: Vec::new(),
                throttle: HashMap::new(),
                window,
                shares,
                rollup_dirty: false,
                last_message: None,
                rare: rustc_hash::FxHashMap::default(),
            }),
            staged: Default::default(),
            succeeded: Default::default(),
            successes: std::sync::OnceLock::new(),
            writer,
            clock0: (now_ms(), mono_ns()),
            awaiting: std::sync::atomic::AtomicBool::new(true),
        });
        j.writer.register(&j);
        j
    }

    /// Whether the rows' task names and optional flags are still to come (see
    /// [`awaiting_rows`](Self::awaiting_rows)).
    pub(crate) fn awaits_rows(&self) -> bool {
        self.awaiting.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes the rows, one per node, `scheduled`, from their task names and optional
    /// flags `meta` (see [`awaiting_rows`](Self::awaiting_rows)); once: later calls change
    /// nothing. Nodes that do not match the ids (a bug) are named by empty strings
    /// rather than fail, and the error is logged.
    pub(crate) fn set_rows(&self, meta: RowMeta) {
        if !self
            .awaiting
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let mut g = self.lock();
        let RowMeta { names, meta, .. } = meta;
        let n = meta.len();
        if n != g.nodes.len() {
            tracing::error!(
                ids = g.nodes.len(),
                nodes = n,
                "a run's node ids do not match its nodes"
            );
            g.nodes = Arc::new(vec![SmolStr::default(); n]);
            g.len = n;
        }
        g.items = RowChunks::new(meta.into());
        g.names = names;
    }

    /// The wall-clock time (ms since the Unix epoch) of `at` (a [`mono_ns`] reading),
    /// from the clocks read when the journal was made: whole milliseconds after (or
    /// before) that, the part below a millisecond cut. A row's start and end stamps
    /// both come from here, so that its start is never after its end.
    #[inline]
    fn wall_ms(&self, at: u64) -> u64 {
        let (wall0, mono0) = self.clock0;
        if at >= mono0 {
            wall0.saturating_add((at - mono0) / 1_000_000)
        } else {
            wall0.saturating_sub((mono0 - at) / 1_000_000)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Attempt `attempt` of `node` is running; the node started `since` ago.
    pub(crate) fn started(&self, node: u32, attempt: u32, since: Duration) {
        {
            let mut guard = self.lock();
            let g = &mut *guard;
            let Some(row) = g.items.get_mut(node as usize) else {
                return; // released: the run is over
            };
            if row.started_at().is_none() {
                // From the same clocks as its end (see `wall_ms`): a start read from the
                // wall clock could be stamped up to a millisecond after an end converted
                // from a monotonic reading.
                row.set_started_at(self.wall_ms(mono_ns().saturating_sub(nanos(since))));
            }
            row.state = State::Running;
            row.attempts = attempt;
            mark_row(&mut g.dirty_list, row, node);
        }
        self.writer.wake(self);
    }

    /// `node` ended; `result` is its output as JSON when it succeeded.
    ///
    /// When the rows are locked (the writer takes them for a write cycle, which holds
    /// the lock for its whole drain), the end is staged instead of waited for: the task's
    /// worker goes on, and the end is applied before the rows are next read or taken
    /// (the next cycle, which this end wakes, or a [`sync`](Self::sync)).
    pub(crate) fn ended(&self, node: u32, outcome: Ended, result: Option<SmolStr>) {
        // Outside the lock (the writer thread takes it too).
        let at_ms = self.wall_ms(outcome.at.unwrap_or_else(mono_ns));
        let facts = EndFacts::of(&outcome, at_ms);
        self.end(node, facts, outcome.failure, result);
    }

    /// `node` succeeded; its attempts, time, end and result's text are read from the
    /// run's [`Successes`] when its row is written. The same as [`ended`](Self::ended)
    /// with a `Done` outcome, for the common end, a worker's success.
    ///
    /// Only the node's number is staged, in the calling thread's list, never written
    /// into the rows here:
    /// - the rows' lock is one cache line that every worker ending tasks would otherwise
    ///   pass back and forth (with the writer), a locked swap and a miss per task, even
    ///   when no one else holds it (in memory on 2 workers, a wide graph of 100k tasks
    ///   runs about a fifth faster without it, a layered one about a tenth);
    /// - the facts themselves are in the node's executor cell, which its worker wrote
    ///   anyway: a copy of them staged here (64 bytes) was one more line a success wrote
    ///   into a list the writer had read, each write waiting for the writer's core to let
    ///   the line go; a number is 4 bytes, 16 to a line (chain 10k in memory: the
    ///   tasks' time 1.9 -> 1.65 ms).
    ///
    /// The writer writes the row in its next cycle (which writes it to the store anyway).
    /// The caller has made the node's facts readable (see [`Successes`]) before this
    /// call.
    #[inline]
    pub(crate) fn succeeded(&self, node: u32) {
        self.succeeded[shard_of_this_thread()].lock().push(node);
        // After the push: a cycle that clears the flag after this reads it takes the
        // staged success (see `WriterHandle::wake`).
        self.writer.wake(self);
    }

    /// Reads the facts of the nodes [`succeeded`](Self::succeeded) names from `source`
    /// from now on (the run's executor state, as soon as it is made; once per journal).
    /// Weak: the state holds the journal, not the other way round; a success is staged
    /// only while a worker of the run holds the state, and the run's end or
    /// [`sync`](Self::sync) applies every staged one before the state goes.
    pub(crate) fn read_successes_from(&self, source: std::sync::Weak<dyn Successes>) {
        let set = self.successes.set(source);
        debug_assert!(set.is_ok(), "one executor state per journal");
    }

    /// Writes `node`'s end into its row, or stages it when the writer holds the rows
    /// (the path of [`ended`](Self::ended)).
    #[inline]
    fn end(
        &self,
        node: u32,
        facts: EndFacts,
        failure: Option<Box<Failure>>,
        result: Option<SmolStr>,
    ) {
        let mut g = match self.rows.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.stage(Staged {
                    node,
                    facts,
                    failure,
                    result,
                });
                return;
            }
        };
        let changed = g.end(node, facts, failure, result);
        drop(g);
        if changed {
            self.writer.wake(self);
        }
    }

    /// Stages an end recorded while the rows were locked in the calling thread's shard
    /// (see [`ended`](Self::ended)), and wakes the writer. Out of line: a success no
    /// longer comes here (see [`succeeded`](Self::succeeded)), and the common end stays
    /// short.
    #[cold]
    #[inline(never)]
    fn stage(&self, end: Staged) {
        self.staged[shard_of_this_thread()].lock().push(end);
        // After the push: a cycle that clears the flag after this reads it takes the
        // staged end (see `WriterHandle::wake`).
        self.writer.wake(self);
    }

    /// The rows, locked, with every staged end applied (see [`ended`](Self::ended)).
    /// A shard's ends are taken out under its lock and applied after it (its thread
    /// goes on staging meanwhile); its list is then given back emptied, when the shard
    /// has none bigger, so that it keeps its room from one cycle to the next.
    fn lock_applied(&self) -> std::sync::MutexGuard<'_, Rows> {
        let mut g = self.lock();
        for shard in &self.staged {
            shard.drain_into(|s| {
                g.end(s.node, s.facts, s.failure, s.result);
            });
        }
        // The state is looked for only with a success staged: one is staged only while a
        // worker of the run holds the state (see `read_successes_from`), so this never
        // holds the last reference to it (whose drop would run here, under the rows).
        if self.succeeded.iter().any(|s| !s.lock().is_empty()) {
            match self.successes.get().and_then(std::sync::Weak::upgrade) {
                Some(source) => {
                    for shard in &self.succeeded {
                        shard.drain_all(|nodes| {
                            for (k, &node) in nodes.iter().enumerate() {
                                // The nodes ended on the workers' cores: their facts are
                                // a miss each. Asked for a few nodes ahead, the misses
                                // overlap the work on the nodes before.
                                if let Some(&ahead) = nodes.get(k + SUCCESS_LOOKAHEAD) {
                                    source.prefetch(ahead);
                                }
                                let s = source.success(node);
                                let facts = EndFacts {
                                    state: State::Done,
                                    skipped: false,
                                    attempts: s.attempts,
                                    elapsed_ns: s.elapsed_ns,
                                    at_ms: self.wall_ms(s.ended_at),
                                };
                                g.end(node, facts, None, s.result);
                            }
                        });
                    }
                }
                // Only a bug gets here: a success staged with no state to read it from.
                None => {
                    debug_assert!(false, "a success staged without its executor state");
                    tracing::error!(run = %self.run_id, "task successes staged after their run's state went: their rows stay as they were");
                    self.succeeded.iter().for_each(|s| s.lock().clear());
                }
            }
        }
        g
    }

    /// Whether no end and no success is staged.
    fn nothing_staged(&self) -> bool {
        self.staged.iter().all(|s| s.lock().is_empty())
            && self.succeeded.iter().all(|s| s.lock().is_empty())
    }

    /// The number of ends and successes staged and not applied yet.
    #[cfg(test)]
    fn staged_len(&self) -> usize {
        self.staged.iter().map(|s| s.lock().len()).sum::<usize>()
            + self.succeeded.iter().map(|s| s.lock().len()).sum::<usize>()
    }
}

/// How many lists of staged ends a journal has (see [`RunJournal::staged`]): a thread
/// stages into list `k mod STAGED_SHARDS`, `k` its number in the order the process's
/// threads first staged an end, so that up to this many threads that end tasks at once
/// (a runtime's workers, mostly) each have one of their own. Threads that share a list
/// share its lock, and nothing else: the lists only spread the contention.
const STAGED_SHARDS: usize = 4;

/// One list of a journal's staged ends (or numbers of nodes that succeeded), under a
/// lock of its own, on a cache line of its own (a shard's line moves only between its
/// thread and the writer).
#[repr(align(64))]
struct StagedShard<T>(Mutex<Vec<T>>);

impl<T> Default for StagedShard<T> {
    fn default() -> Self {
        StagedShard(Mutex::new(Vec::new()))
    }
}

impl<T> StagedShard<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the shard's list out (its thread goes on staging meanwhile), applies each
    /// of its items with `apply`, and gives the list back emptied when the shard has
    /// none bigger, so that it keeps its room from one cycle to the next.
    fn drain_into(&self, mut apply: impl FnMut(T)) {
        self.drain_all(|items| items.drain(..).for_each(&mut apply));
    }

    /// [`drain_into`](Self::drain_into), the items given all at once: `apply` takes
    /// what it applies out of the list (what it leaves is dropped).
    fn drain_all(&self, apply: impl FnOnce(&mut Vec<T>)) {
        let mut taken = std::mem::take(&mut *self.lock());
        if taken.is_empty() {
            return;
        }
        apply(&mut taken);
        taken.clear();
        let mut list = self.lock();
        if list.capacity() < taken.capacity() {
            taken.append(&mut list);
            *list = taken;
        }
    }
}

/// The calling thread's shard: threads are numbered as they first stage an end.
fn shard_of_this_thread() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize =
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STAGED_SHARDS;
    }
    SHARD.with(|s| *s)
}

/// What a run's journal reads of a node that succeeded (see [`RunJournal::succeeded`]):
/// the executor's state, where the node's worker wrote it.
pub(crate) trait Successes: Send + Sync {
    /// Node `node`'s success. Called by whoever applies the staged successes, after it
    /// took `node`'s number out of the list its worker put it in under the list's lock:
    /// the worker wrote the facts before it put the number in.
    fn success(&self, node: u32) -> Success;

    /// Asks the CPU for what [`success`](Self::success) will read of `node`, without
    /// waiting for it (a hint: nothing changes).
    fn prefetch(&self, node: u32);
}

/// How many staged successes ahead of the one it applies the writer asks for the facts
/// of (see [`Successes::prefetch`]). Measured (in memory, 2 workers, medians of 175 runs
/// alternated): layered 100x1k 51.2 -> 49.3 ms with 4; 8 and 16 the same as 4.
const SUCCESS_LOOKAHEAD: usize = 4;

/// A node's success, as its row takes it.
#[derive(Clone, Debug)]
pub(crate) struct Success {
    /// Attempts it made, the last one succeeded.
    pub(crate) attempts: u32,
    /// Nanoseconds from its start to its end.
    pub(crate) elapsed_ns: u64,
    /// When it ended, a [`mono_ns`] reading.
    pub(crate) ended_at: u64,
    /// Its result's text, the one the report shows (`None` when the result has none).
    pub(crate) result: Option<SmolStr>,
}

/// An end recorded while the rows were locked (see [`RunJournal::ended`]).
struct Staged {
    node: u32,
    facts: EndFacts,
    failure: Option<Box<Failure>>,
    result: Option<SmolStr>,
}

/// The plain facts of an end, as its row takes them (see [`Rows::end`]).
#[derive(Clone, Copy)]
struct EndFacts {
    state: State,
    skipped: bool,
    attempts: u32,
    elapsed_ns: u64,
    /// When it ended (ms since the Unix epoch).
    at_ms: u64,
}

impl EndFacts {
    fn of(outcome: &Ended, at_ms: u64) -> Self {
        EndFacts {
            state: outcome.state,
            skipped: outcome.skipped,
            attempts: outcome.attempts,
            elapsed_ns: nanos(outcome.elapsed),
            at_ms,
        }
    }
}

impl Rows {
    /// The rare fields of `node`'s end: its failure's error and chain, or none (a retry
    /// that succeeded clears an earlier attempt's). Out of line: most ends have none.
    #[cold]
    #[inline(never)]
    fn end_rare(
        map: &mut rustc_hash::FxHashMap<u32, RareFields>,
        row: &mut Row,
        node: u32,
        failure: Option<Box<Failure>>,
    ) {
        if let Some(failure) = failure {
            row.flags |= Row::RARE;
            let rare = map.entry(node).or_default();
            rare.error = Some(failure.error);
            rare.chain = failure.chain;
        } else if let Some(rare) = map.get_mut(&node) {
            rare.error = None;
            rare.chain = Vec::new();
        }
    }

    /// Writes `node`'s end into its row and marks it; false when the rows were released
    /// or the row ended and was written already. Inlined: a worker's end (once per task)
    /// does not pay a call for it, and a success's constant facts fold into it.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn end(
        &mut self,
        node: u32,
        facts: EndFacts,
        failure: Option<Box<Failure>>,
        result: Option<SmolStr>,
    ) -> bool {
        if !self.throttle.is_empty() {
            self.settle_burst(node); // only a task that reported progress has a burst
        }
        // As `change` does, without a closure: one end path both for a worker's end and
        // for a staged one, each inlined.
        let Some(row) = self.items.get_mut(node as usize) else {
            return false; // released (the run is over), or ended and written already
        };
        let before = share(row);
        write_end(row, facts, result);
        if row.has(Row::RARE) || failure.is_some() {
            Self::end_rare(&mut self.rare, row, node, failure);
        }
        let after = share(row);
        mark_row(&mut self.dirty_list, row, node);
        self.reshare(before, after);
        true
    }
}

/// Writes an end (see [`Rows::end`]) into `row`, but for its rare fields (see
/// [`Rows::end_rare`]).
#[allow(clippy::inline_always)]
#[inline(always)]
fn write_end(row: &mut Row, facts: EndFacts, result: Option<SmolStr>) {
    row.state = facts.state;
    row.set(Row::SKIPPED, facts.skipped);
    row.attempts = row.attempts.max(facts.attempts);
    row.elapsed_ns = facts.elapsed_ns;
    row.set_ended_at(facts.at_ms);
    if row.started_at().is_none() && facts.attempts > 0 {
        // Ended in its first poll: its start was not recorded on its own. Whole
        // milliseconds of its elapsed time before its end, the part below one cut.
        row.set_started_at(facts.at_ms.saturating_sub(facts.elapsed_ns / 1_000_000));
    }
    if facts.state == State::Done {
        row.set_percent(Some(100.0));
    }
    row.result = result;
}

impl RunJournal {
    /// `node` had finished before the run was interrupted (its row is in the store
    /// already): the in-memory row says so too, without writing it again.
    pub(crate) fn restored(&self, node: u32, attempts: u32, elapsed: Duration, result: SmolStr) {
        let mut g = self.lock();
        let changed = g.change(node, |row| {
            row.state = State::Done;
            row.announced = State::Done;
            row.attempts = attempts;
            row.elapsed_ns = nanos(elapsed);
            row.set_percent(Some(100.0));
            row.result = Some(result);
        });
        if !changed {
            return;
        }
        // Written already: what changed is the run's progress only, and the row is settled.
        let freed = g
            .items
            .settle(node as usize)
            .and_then(|rows| g.freed(node as usize / RowChunks::CHUNK, rows));
        drop(g);
        drop(freed);
    }

    /// Frees the rows now when everything recorded is written (after
    /// [`sync`](Self::sync)), as [`release_when_written`](Self::release_when_written)
    /// does later; returns whether they were freed (not when rows are still dirty).
    #[cfg(test)]
    pub(crate) fn release(&self) -> bool {
        let mut g = self.lock_applied();
        let freed = g.free_rows();
        drop(g);
        freed.is_some()
    }

    /// Frees the rows once everything recorded is written, without waiting for it (at
    /// the run's end, when no task changes any more): the writer's next take of this run
    /// writes what is left and then frees them (or the take of the run's end, whichever
    /// comes first), while the caller goes on. The store has them, and the report built
    /// meanwhile need not sit next to a second copy. The roll-up stays; later changes
    /// are ignored.
    ///
    /// The rows' lock is not taken: the writer may hold it for a whole cycle, and the
    /// driver asks this between its last task and its report (chain 10k in memory: 50 to
    /// 70 µs of waiting when it took it). A wake-up of its own is sent after the flag is
    /// raised, not one saved by [`woken`](Self::woken): the take that it brings begins
    /// after the flag is raised, and sees it.
    pub(crate) fn release_when_written(&self) {
        self.release_asked
            .store(true, std::sync::atomic::Ordering::Release);
        self.writer.wake_now(self);
    }

    /// Ends a take: frees the rows when that was asked for and none is left to write
    /// (see [`release_when_written`](Self::release_when_written)), outside the lock.
    ///
    /// The ask can come while a take holds the rows, after the take applied the staged
    /// ends: one staged since is not written yet, though the rows' dirty list is empty.
    /// Every end is staged before the ask (the driver asks once the run's tasks are
    /// over, and later changes are ignored), so the lists are looked at after the flag.
    fn end_take(&self, mut g: std::sync::MutexGuard<'_, Rows>) {
        use std::sync::atomic::Ordering;
        let freed = if self.release_asked.load(Ordering::Acquire) && self.nothing_staged() {
            let freed = g.free_rows();
            if freed.is_some() {
                // Under the rows' lock, as every take ends: one take frees them.
                self.release_asked.store(false, Ordering::Relaxed);
            }
            freed
        } else {
            None
        };
        drop(g);
        drop(freed);
    }

    /// The run's rolled-up progress (see the type's docs).
    pub(crate) fn rollup(&self) -> Progress {
        self.lock_applied().rollup()
    }

    /// The run's rolled-up progress when it changed since the last call.
    pub(crate) fn take_rollup(&self) -> Option<Progress> {
        let mut g = self.lock_applied();
        if !std::mem::take(&mut g.rollup_dirty) {
            return None;
        }
        Some(g.rollup())
    }

    /// Everything dirty, as a batch; clears the dirty marks. The state changes taken go to
    /// `events` when anyone listens (see [`listening`](Self::listening)).
    pub(crate) fn take(&self, batch: &mut Batch, events: &mut Vec<(SmolStr, State)>) {
        let mut g = self.begin_take();
        if g.dirty_list.is_empty() {
            self.end_take(g);
            return;
        }
        let events = self.listening().then_some(events);
        batch.tasks.reserve(g.dirty_list.len());
        let freed = Self::drain(&mut g, events, |parts, node, row| {
            parts.push_row(node, row, &self.run_id, &mut batch.tasks);
        });
        self.end_take(g);
        drop(freed);
    }

    /// Everything dirty, written straight into the memory store `store` (no
    /// [`TaskRow`] made per row, see [`MemoryStore::put_journal_rows`]); clears the dirty
    /// marks. Returns the number of rows written, and of rows the store dropped for a
    /// stale lease.
    pub(crate) fn take_into(
        &self,
        store: &MemoryStore,
        events: &mut Vec<(SmolStr, State)>,
    ) -> (usize, u64) {
        let mut g = self.begin_take();
        let n = g.dirty_list.len();
        if n == 0 {
            self.end_take(g);
            return (0, 0);
        }
        let events = self.listening().then_some(events);
        // The run's shared lists, for the store (a few names; the ids by reference).
        let (ids, names, lease) = (g.nodes.clone(), g.names.clone(), g.lease);
        let mut freed = Vec::new();
        let fenced = store.put_journal_rows(&self.run_id, &ids, &names, lease, |sink| {
            freed = Self::drain(&mut g, events, |parts, node, row| {
                parts.put_row(node, row, sink);
            });
        });
        self.end_take(g);
        drop(freed);
        (n, fenced)
    }

    /// Whether anyone listens to events, read by a take with the rows locked: every
    /// change it takes was made under that lock before, so a subscriber that subscribed
    /// before a change was made is counted and receives its state (one read per run and
    /// cycle; the state events of a cycle nobody listens to are not built).
    fn listening(&self) -> bool {
        self.writer.events.receiver_count() > 0
    }

    /// Locks the rows for a write cycle: later changes need a new wake-up, and bursts
    /// whose window passed are summarised.
    fn begin_take(&self) -> std::sync::MutexGuard<'_, Rows> {
        // Changes made from now on need a new wake-up.
        self.woken
            .store(false, std::sync::atomic::Ordering::Release);
        // Staged ends are taken after the flag is cleared: one staged later wakes the
        // writer again.
        let mut g = self.lock_applied();
        if g.throttle.is_empty() {
            return g; // no task reported progress: no burst
        }
        // A burst whose window has passed is summarised at the flush ("(N messages
        // dropped)" and the last dropped message); one still inside its window is
        // summarised by its next message, a warning, or the task's end.
        let window = g.window;
        let bursting: Vec<u32> = g
            .throttle
            .iter()
            .filter(|(_, t)| t.dropped > 0 && t.window_start.elapsed() >= window)
            .map(|(n, _)| *n)
            .collect();
        for node in bursting {
            g.settle_burst(node);
            g.mark(node);
        }
        g
    }

    /// Writes every dirty row with `put` (given the run's lists, the row's node and the
    /// row), in node order, clears the marks and gathers the state events (in node order
    /// too: those of one take are published together, after its flush); returns the rows
    /// of chunks freed (each of their rows written in an end state, see
    /// [`RowChunks::settle`]) that are not kept for the next chunks (see
    /// [`RowChunks::spare`]), to be dropped after the lock.
    fn drain(
        g: &mut Rows,
        mut events: Option<&mut Vec<(SmolStr, State)>>,
        mut put: impl FnMut(&RowParts<'_>, u32, &Row),
    ) -> Vec<Vec<Row>> {
        // The list is given back, emptied, once read: it keeps its room from one cycle to
        // the next instead of growing again from nothing (each growth a copy, and a large
        // one a consolidation of the allocator's free lists) while the workers mark rows.
        let mut list = std::mem::take(&mut g.dirty_list);
        // In node order: rows next to each other (a journal row or a store slot is not a
        // whole cache line, and a chunk's slots are added in order) are read and written
        // together, each line once, not once per row in the order the rows changed (a
        // layer's tasks end in any order).
        sort_nodes(&mut list, &mut g.sort_bits);
        // Chunks whose every row is now written in an end state: dropped after the lock.
        let mut freed = Vec::new();
        let Rows {
            items,
            nodes,
            names,
            lease,
            rare,
            ..
        } = g;
        let parts = RowParts {
            nodes,
            names,
            rare,
            lease: *lease,
        };
        for &node in &list {
            let i = node as usize;
            let Some(row) = items.get_mut(i) else {
                continue; // a late change to a row written in its end state
            };
            row.flags &= !Row::DIRTY;
            let settles = row.settle_end();
            put(&parts, node, row);
            // A state is announced once: a row written again for its progress or its
            // log is not a new state.
            let state = row.state;
            if row.announced != state {
                row.announced = state;
                if let Some(ev) = events.as_deref_mut() {
                    ev.push((parts.nodes[i].clone(), state));
                }
            }
            // Applied in this cycle (before any later write of this run): the store
            // has it from now on.
            if settles {
                if let Some(chunk) = items.count_settled(i) {
                    freed.push((i / RowChunks::CHUNK, chunk));
                }
            }
        }
        // Their rows' rare fields go with them (no row of theirs is read again), and
        // their room to the next chunks (what is not kept is dropped after the lock).
        let mut dropped = Vec::new();
        for (c, chunk) in freed {
            dropped.extend(g.freed(c, chunk));
        }
        list.clear();
        g.dirty_list = list;
        dropped
    }

    /// Waits until everything recorded so far is durable.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        self.writer.wake(self);
        self.writer.flush().await
    }
}

impl Drop for RunJournal {
    fn drop(&mut self) {
        self.writer.forget(&self.run_id);
    }
}

/// The task names and optional flags of a run's nodes, in node order, as its journal's
/// rows begin (see [`RunJournal::set_rows`]): one name per task type, not per node.
pub(crate) struct RowMeta {
    /// The distinct task names.
    names: Vec<SmolStr>,
    /// Their indexes, by the names' static text.
    index: rustc_hash::FxHashMap<&'static str, u32>,
    /// The last name pushed, and its index.
    last: Option<(&'static str, u32)>,
    /// Per node: the index of its task's name, with [`RowChunks::OPTIONAL`] set when it
    /// is optional.
    meta: Vec<u32>,
}

impl RowMeta {
    /// Room for `n` nodes.
    pub(crate) fn with_capacity(n: usize) -> Self {
        RowMeta {
            names: Vec::new(),
            index: rustc_hash::FxHashMap::default(),
            last: None,
            meta: Vec::with_capacity(n),
        }
    }

    /// The next node runs task `task`, optional or not.
    #[inline]
    pub(crate) fn push(&mut self, task: &'static str, optional: bool) {
        // Neighbouring nodes mostly run the same task: the last name is tried first
        // (the same static string), then the index of names (a graph of many task
        // types stays linear).
        let k = match self.last {
            Some((name, k)) if std::ptr::eq(name, task) => k,
            _ => self.name(task),
        };
        self.meta
            .push(if optional { k | RowChunks::OPTIONAL } else { k });
    }

    /// The index of name `task`, added when new (out of line: once per change of task
    /// type between neighbours).
    #[inline(never)]
    fn name(&mut self, task: &'static str) -> u32 {
        // Below the optional bit: a graph has far fewer than 2^31 task types.
        let next = u32::try_from(self.names.len()).unwrap_or(u32::MAX) & !RowChunks::OPTIONAL;
        let k = *self.index.entry(task).or_insert(next);
        if k == next {
            self.names.push(SmolStr::new_static(task));
        }
        self.last = Some((task, k));
        k
    }
}

/// A node of a run about to start, as its journal row begins (see [`RunJournal::new`]).
#[cfg(test)]
pub(crate) struct NewRow {
    /// The task's name.
    pub(crate) task: &'static str,
    /// The task is optional.
    pub(crate) optional: bool,
}

/// How a node ended, for its row.
pub(crate) struct Ended {
    pub(crate) state: State,
    pub(crate) skipped: bool,
    pub(crate) attempts: u32,
    pub(crate) elapsed: Duration,
    /// Its error, when it failed; boxed: a success (most ends) moves and drops one
    /// pointer, not two empty collections.
    pub(crate) failure: Option<Box<Failure>>,
    /// When it ended (a [`mono_ns`] reading), if the caller read the clock already (a
    /// worker timing the node): no second clock read per node. `None`: now.
    pub(crate) at: Option<u64>,
}

/// A failed node's error, for its row (see [`Ended::failure`]).
pub(crate) struct Failure {
    /// The error's text.
    pub(crate) error: String,
    /// The messages of the error and its sources, outermost first.
    pub(crate) chain: Vec<String>,
}

impl RunJournal {
    fn publish(&self, node_id: &str, kind: EventKind) {
        if self.writer.events.receiver_count() > 0 {
            let _ = self.writer.events.send(Event {
                id: format!("{}/{node_id}", self.run_id),
                run: self.run_id.to_string(),
                root: self.root.to_string(),
                kind,
            });
        }
    }
}

impl Reporter for RunJournal {
    fn progress(&self, node: u32, percent: Option<f64>, message: &str) {
        let mut g = self.lock();
        let window = g.window;
        let i = node as usize;
        let changed = g.change(node, |row| {
            row.set_percent(percent);
            if !message.is_empty() {
                row.flags |= Row::RARE;
            }
        });
        if !changed {
            return; // released (the run is over), or ended and written already
        }
        if !message.is_empty() {
            g.rare.entry(node).or_default().message = Some(message.to_owned());
            if g.last_message.as_deref() != Some(message) {
                g.last_message = Some(message.to_owned());
                g.rollup_dirty = true;
            }
            let now = Instant::now();
            let t = g.throttle.entry(node).or_insert(Throttle {
                window_start: now,
                in_window: 0,
                dropped: 0,
                last_dropped: None,
            });
            if now.duration_since(t.window_start) >= window {
                t.window_start = now;
                t.in_window = 0;
            }
            t.in_window += 1;
            if t.in_window > AVALANCHE {
                t.dropped += 1;
                t.last_dropped = Some(message.to_owned());
            } else {
                g.settle_burst(node);
                g.push_log(node, Level::Info, message.to_owned());
            }
        }
        g.mark(node);
        let Some(row) = g.items.get_mut(i) else {
            return;
        };
        let percent = row.percent();
        let progress = Progress {
            percent,
            message: g.rare.get(&node).and_then(|r| r.message.clone()),
        };
        let node_id = g.nodes[i].clone();
        drop(g);
        self.publish(&node_id, EventKind::Progress(progress));
        // No wake: progress reaches the store at the next tick.
    }

    fn log(&self, node: u32, level: Level, message: &str) {
        self.log_entry(
            node,
            LogEntry {
                timestamp: now_ms(),
                level,
                message: message.to_owned(),
                data: None,
            },
        );
    }
}

impl RunJournal {
    /// Adds `entry` to the log of `node` as [`Reporter::log`] does, keeping its
    /// timestamp (an entry written on another worker: a spread task's).
    pub(crate) fn log_entry(&self, node: u32, entry: LogEntry) {
        let level = entry.level;
        let mut g = self.lock();
        if g.items.get_mut(node as usize).is_none() {
            return; // released (the run is over), or ended and written already
        }
        // A warning or error is never dropped, and writes any pending burst before itself.
        g.settle_burst(node);
        g.push_entry(node, entry);
        g.mark(node);
        let node_id = g.nodes[node as usize].clone();
        let entry = g.rare.get(&node).and_then(|r| r.log.last().cloned());
        drop(g);
        if let Some(entry) = entry {
            self.publish(&node_id, EventKind::Log(entry));
        }
        if level >= Level::Warning {
            self.writer.wake(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};

    /// A node of a test journal.
    struct TestRow {
        task: &'static str,
        id: SmolStr,
        optional: bool,
    }

    /// A journal of run `run` (lease 9) over `nodes`, writing to a fresh memory store.
    fn journal(
        nodes: impl ExactSizeIterator<Item = TestRow>,
    ) -> (Arc<MemoryStore>, WriterHandle, Arc<RunJournal>) {
        let nodes: Vec<TestRow> = nodes.collect();
        let ids: IdList = Arc::new(nodes.iter().map(|r| r.id.clone()).collect());
        let store = Arc::new(MemoryStore::new());
        let (events, _) = tokio::sync::broadcast::channel(16);
        let writer =
            start_writer(store.clone(), Duration::from_millis(50), events, false).expect("writer");
        let j = RunJournal::new(
            Arc::from("run"),
            Arc::from("run"),
            1,
            9,
            ids,
            nodes.iter().map(|r| NewRow {
                task: r.task,
                optional: r.optional,
            }),
            writer.clone(),
            Duration::from_millis(50),
        );
        (store, writer, j)
    }

    /// The facts of the nodes a test says succeeded, kept as an executor's cells keep
    /// them (see [`Successes`]).
    #[derive(Default)]
    struct TestCells(Mutex<HashMap<u32, Success>>);

    impl Successes for TestCells {
        fn success(&self, node: u32) -> Success {
            let cells = self.0.lock().expect("cells");
            cells.get(&node).cloned().expect("a staged node's facts")
        }

        fn prefetch(&self, _node: u32) {}
    }

    impl TestCells {
        /// The cells journal `j` reads its successes from.
        fn of(j: &RunJournal) -> Arc<TestCells> {
            let cells = Arc::new(TestCells::default());
            let weak: std::sync::Weak<TestCells> = Arc::downgrade(&cells);
            j.read_successes_from(weak);
            cells
        }

        /// Node `node` succeeded after `attempts`, `elapsed_ns` long, ending at
        /// `ended_at` (a [`mono_ns`] reading): its facts are written, then its number
        /// is staged, as a worker does.
        fn succeed(
            &self,
            j: &RunJournal,
            node: u32,
            (attempts, elapsed_ns, ended_at): (u32, u64, u64),
            result: &str,
        ) {
            let success = Success {
                attempts,
                elapsed_ns,
                ended_at,
                result: Some(result.into()),
            };
            self.0.lock().expect("cells").insert(node, success);
            j.succeeded(node);
        }
    }

    /// [`journal`] of `n` nodes of task `load`, with ids `n0`, `n1`, ...
    fn loads(n: usize) -> (Arc<MemoryStore>, WriterHandle, Arc<RunJournal>) {
        journal((0..n).map(|i| TestRow {
            task: "load",
            id: format!("n{i}").into(),
            optional: false,
        }))
    }

    /// A successful end after one attempt of `elapsed`, at `at`.
    fn done(elapsed: Duration, at: Option<u64>) -> Ended {
        Ended {
            state: State::Done,
            skipped: false,
            attempts: 1,
            elapsed,
            failure: None,
            at,
        }
    }

    // The journal's rows start from the nodes alone: each node's id, task name (shared
    // between the nodes of one task, across interleaved task types), optional flag and
    // the run's lease come back from the store once written.
    #[tokio::test]
    async fn rows_start_from_the_nodes() {
        let names = ["load", "load", "save", "load"];
        let (store, writer, j) = journal(names.iter().enumerate().map(|(i, &task)| TestRow {
            task,
            id: format!("n{i}").into(),
            optional: i == 2,
        }));
        for i in 0..4 {
            j.ended(
                i,
                done(Duration::from_millis(1), None),
                Some(i.to_string().into()),
            );
        }
        j.sync().await.expect("sync");
        let rows = store.tasks("run").unwrap();
        assert_eq!(rows.len(), 4);
        for (i, row) in rows {
            let k = i as usize;
            assert_eq!(&*row.task, names[k]);
            assert_eq!(&*row.node, format!("n{i}"));
            assert_eq!(row.optional, k == 2);
            assert_eq!(row.lease, 9);
            assert_eq!(row.state, State::Done);
            assert_eq!(row.result.as_deref(), Some(i.to_string().as_str()));
        }
        assert_eq!(j.rollup().percent, Some(100.0));
        // The two `load` rows share one name.
        assert_eq!(j.lock().names.len(), 2);
        writer.close().await.expect("close");
    }

    // A row's start and end are stamped from the same clocks (those read when the journal
    // was made): a start reported while the node runs is never stamped after the end
    // given as a monotonic reading. A start read from the wall clock was, by up to a
    // millisecond, whenever the two readings' fractions of a millisecond added up to one
    // (about every other node here).
    #[tokio::test]
    async fn a_rows_start_is_stamped_from_the_clocks_of_its_end() {
        let (store, writer, j) = loads(200);
        let mut bounds = Vec::new();
        for i in 0..200 {
            // Each node started a different time ago (fractions of a millisecond apart).
            let since = Duration::from_micros(37 * u64::from(i));
            let before = mono_ns();
            j.started(i, 1, since);
            let after = mono_ns();
            let (earliest, latest) = (
                j.wall_ms(before.saturating_sub(nanos(since))),
                j.wall_ms(after.saturating_sub(nanos(since))),
            );
            // It ends at once, at the monotonic reading right after.
            j.ended(i, done(since, Some(after)), None);
            bounds.push((earliest, latest, j.wall_ms(after)));
        }
        j.sync().await.expect("sync");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        for (i, (earliest, latest, end)) in bounds.into_iter().enumerate() {
            let row = &rows[&(i as u32)];
            let started = row.started_at.expect("started");
            assert!(earliest <= started && started <= latest, "{i}: {row:?}");
            assert_eq!(row.ended_at, Some(end), "{i}");
            assert!(started <= end, "{i}: {row:?}");
        }
        writer.close().await.expect("close");
    }

    // A node's end given as a monotonic clock reading (a worker read the clock already) is stamped
    // from the clocks read when the journal was made, not from a new clock read: an end
    // an hour after the journal's start is stamped an hour after it, and its start (it
    // ended in its first poll) its elapsed time before that.
    #[tokio::test]
    async fn an_end_given_as_a_clock_reading_is_stamped_from_it() {
        let (store, writer, j) = loads(2);
        let (wall0, mono0) = j.clock0;
        let hour = nanos(Duration::from_hours(1));
        for (i, at) in [(0, mono0 + hour), (1, mono0)] {
            j.ended(i, done(Duration::from_secs(2), Some(at)), None);
        }
        j.sync().await.expect("sync");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows[&0].ended_at, Some(wall0 + 3_600_000));
        assert_eq!(rows[&0].started_at, Some(wall0 + 3_598_000));
        assert_eq!(rows[&1].ended_at, Some(wall0));
        assert_eq!(rows[&1].started_at, Some(wall0 - 2_000));
        writer.close().await.expect("close");
    }

    // A chunk of rows is freed once each of its rows is written in an end state (the
    // store has them), not before: a chunk with a row still running stays, and so does
    // the late log of a row whose chunk stays; the store keeps every row as written, and
    // a change to a row of a freed chunk is ignored (its end is in the store).
    #[tokio::test]
    async fn a_chunk_is_freed_once_its_rows_ended_and_were_written() {
        let n = RowChunks::CHUNK * 2 + 10;
        let (store, writer, j) = loads(n);
        // Nothing is made at the launch.
        assert!(j.lock().items.chunks.iter().all(|c| c.rows.is_none()));
        // The first chunk ends whole, in random order; the second all but its last row,
        // which is running.
        let mut order: Vec<u32> = (0..u32::try_from(RowChunks::CHUNK * 2).unwrap()).collect();
        order.reverse();
        order.swap(3, 700);
        let last = u32::try_from(RowChunks::CHUNK * 2 - 1).unwrap();
        for &i in &order {
            if i == last {
                j.started(i, 1, Duration::ZERO);
            } else {
                j.ended(
                    i,
                    done(Duration::from_millis(1), None),
                    Some(i.to_string().into()),
                );
            }
        }
        j.sync().await.expect("sync");
        {
            let g = j.lock();
            assert!(
                g.items.chunks[0].rows.is_none(),
                "every row of chunk 0 ended"
            );
            assert!(g.items.chunks[1].rows.is_some(), "a row of chunk 1 runs");
            assert!(
                g.items.chunks[2].rows.is_none(),
                "chunk 2 was never touched"
            );
        }
        // A late log line of an ended row whose chunk stays is written as before.
        let chunk1 = u32::try_from(RowChunks::CHUNK).unwrap();
        j.log(chunk1, Level::Warning, "late");
        // One of a freed chunk changes nothing.
        j.log(1, Level::Warning, "ignored");
        j.ended(last, done(Duration::from_millis(1), None), Some("x".into()));
        j.sync().await.expect("sync");
        assert!(j.lock().items.chunks[1].rows.is_none(), "chunk 1 ended too");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows.len(), RowChunks::CHUNK * 2);
        for i in 0..u32::try_from(RowChunks::CHUNK * 2).unwrap() {
            let row = &rows[&i];
            assert_eq!(row.state, State::Done, "row {i}");
            assert_eq!(&*row.node, format!("n{i}"));
            let want = if i == last {
                "x".to_owned()
            } else {
                i.to_string()
            };
            assert_eq!(row.result.as_deref(), Some(want.as_str()));
        }
        assert_eq!(rows[&chunk1].log.len(), 1);
        assert_eq!(rows[&chunk1].log[0].message, "late");
        assert!(rows[&1].log.is_empty());
        // The run's progress counts every ended row.
        #[allow(clippy::cast_precision_loss)]
        let want = 100.0 * (RowChunks::CHUNK * 2) as f64 / n as f64;
        assert!((j.rollup().percent.unwrap() - want).abs() < 1e-9);
        writer.close().await.expect("close");
    }

    // A freed chunk's room is kept for the next chunk (see `RowChunks::spare`), whose rows
    // are made over the old ones as new: each with its own task name, optional flag and
    // state, and none of the old rows' results (long ones too), times or rare fields.
    #[tokio::test]
    async fn a_freed_chunks_room_makes_the_next_chunk_anew() {
        let n = RowChunks::CHUNK * 3;
        let task = |i: usize| if i.is_multiple_of(3) { "save" } else { "load" };
        let (store, writer, j) = journal((0..n).map(|i| TestRow {
            task: task(i),
            id: format!("n{i}").into(),
            optional: i.is_multiple_of(5),
        }));
        let long = |i: u32| format!("a result too long to be inline, of node {i}");
        let chunk = u32::try_from(RowChunks::CHUNK).unwrap();
        for i in 0..chunk {
            if i == 7 {
                j.log(i, Level::Warning, "old");
            }
            j.ended(
                i,
                done(Duration::from_millis(1), None),
                Some(long(i).into()),
            );
        }
        j.sync().await.expect("sync");
        {
            let g = j.lock();
            assert!(g.items.chunks[0].rows.is_none(), "chunk 0 ended");
            assert_eq!(g.items.spare.len(), 1, "its room is kept");
        }
        // Chunk 2's rows: one running, the rest untouched until they end (no result).
        j.started(2 * chunk + 7, 1, Duration::ZERO);
        assert!(j.lock().items.spare.is_empty(), "chunk 2 took the room");
        j.sync().await.expect("sync");
        let row = &store.tasks("run").unwrap()[chunk as usize];
        assert_eq!(row.0, 2 * chunk + 7);
        let row = &row.1;
        assert_eq!(row.state, State::Running);
        assert_eq!(&*row.task, task(2 * RowChunks::CHUNK + 7));
        assert!(row.result.is_none() && row.log.is_empty() && row.ended_at.is_none());
        for i in 2 * chunk..3 * chunk {
            j.ended(i, done(Duration::from_millis(1), None), None);
        }
        j.sync().await.expect("sync");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows.len(), RowChunks::CHUNK * 2);
        for i in (0..chunk).chain(2 * chunk..3 * chunk) {
            let (row, k) = (&rows[&i], i as usize);
            assert_eq!(row.state, State::Done, "row {i}");
            assert_eq!(&*row.task, task(k), "row {i}");
            assert_eq!(row.optional, k.is_multiple_of(5), "row {i}");
            assert_eq!(&*row.node, format!("n{i}"));
            let want = (i < chunk).then(|| long(i));
            assert_eq!(row.result.as_deref(), want.as_deref(), "row {i}");
            assert_eq!(row.log.len(), usize::from(i == 7), "row {i}");
        }
        {
            let g = j.lock();
            assert!(g.items.chunks[2].rows.is_none(), "chunk 2 ended");
            assert_eq!(g.items.spare.len(), 1, "its room is kept in turn");
            assert!(g.rare.is_empty());
        }
        writer.close().await.expect("close");
    }

    // An end recorded while the rows are locked (the writer draining them) is staged, not
    // waited for; it reaches the run's progress, the store (with its result and times) and
    // the release check as an end recorded directly does.
    #[tokio::test]
    async fn an_end_recorded_while_the_rows_are_locked_is_staged_then_written() {
        let (store, writer, j) = loads(2);
        let (wall0, mono0) = j.clock0;
        {
            let held = j.lock();
            std::thread::scope(|s| {
                s.spawn(|| {
                    j.ended(
                        1,
                        done(Duration::from_secs(1), Some(mono0 + 5_000_000_000)),
                        Some("41".into()),
                    );
                });
            });
            // Checked while the rows are held: the writer, woken by the end, applies
            // staged ends only once it has the rows.
            assert_eq!(j.staged_len(), 1, "staged, not waited for");
            drop(held);
        }
        // The run's progress counts it (applied by the writer's cycle or by this read).
        assert_eq!(j.rollup().percent, Some(50.0));
        assert_eq!(j.staged_len(), 0);
        let held = j.lock();
        std::thread::scope(|s| {
            s.spawn(|| j.ended(0, done(Duration::ZERO, None), Some("40".into())));
        });
        assert_eq!(j.staged_len(), 1);
        drop(held);
        // The rows are released only once the staged end is written (by the writer's
        // cycle, which may come first; either order is right, never a release before it).
        if j.release() {
            let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
            assert_eq!(
                rows[&0].state,
                State::Done,
                "released before the staged end was written"
            );
        }
        j.sync().await.expect("sync");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[&1].state, State::Done);
        assert_eq!(rows[&1].result.as_deref(), Some("41"));
        assert_eq!(rows[&1].ended_at, Some(wall0 + 5_000));
        assert_eq!(rows[&1].started_at, Some(wall0 + 4_000));
        assert_eq!(rows[&0].result.as_deref(), Some("40"));
        assert_eq!(j.rollup().percent, Some(100.0));
        assert!(j.release(), "every end written: the rows are released");
        writer.close().await.expect("close");
    }

    // A success never takes the rows' lock (the line every worker ending tasks would pass
    // back and forth): it is staged even when nobody holds the rows, and the next read
    // (here the roll-up) applies it. (The writer is closed first: no cycle of its own
    // applies the staged end before the check.)
    #[tokio::test]
    async fn a_success_is_staged_even_when_the_rows_are_free() {
        let (_store, writer, j) = loads(2);
        writer.close().await.expect("close");
        let (_, mono0) = j.clock0;
        let cells = TestCells::of(&j);
        cells.succeed(&j, 0, (2, 1_000_000, mono0 + 3_000_000), "12");
        assert_eq!(
            j.staged_len(),
            1,
            "staged, not written under the rows' lock"
        );
        assert_eq!(j.rollup().percent, Some(50.0));
        assert_eq!(j.staged_len(), 0, "applied before the rows were read");
    }

    // Workers record successes at once, from several threads (several shards, or one
    // shared by two threads), while the writer's cycles take them: every end reaches the
    // store once, with its own result, and the rows are released only after the last.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn successes_staged_from_many_threads_at_once_all_reach_the_store() {
        const THREADS: u32 = 6;
        const EACH: u32 = 500;
        let (store, writer, j) = loads(THREADS as usize * EACH as usize);
        let (_, mono0) = j.clock0;
        let cells = TestCells::of(&j);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (j, cells) = (&j, &cells);
                s.spawn(move || {
                    for k in 0..EACH {
                        let node = k * THREADS + t;
                        cells.succeed(j, node, (1, 1_000, mono0), &node.to_string());
                        if k % 50 == 0 {
                            // A read between the stages, as the progress roll-up makes.
                            let _ = j.rollup();
                        }
                    }
                });
            }
        });
        j.sync().await.expect("sync");
        assert_eq!(j.staged_len(), 0);
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows.len(), (THREADS * EACH) as usize);
        for (node, row) in &rows {
            assert_eq!(row.state, State::Done, "row {node}");
            assert_eq!(
                row.result.as_deref(),
                Some(node.to_string().as_str()),
                "row {node}"
            );
        }
        assert_eq!(j.rollup().percent, Some(100.0));
        assert!(j.release(), "every end written: the rows are released");
        writer.close().await.expect("close");
    }

    // A worker's success recorded through `succeeded` writes the same row as the same
    // end through `ended` (a `Done` outcome), directly and when staged behind the
    // writer's lock: state, attempts, elapsed time, result, progress, and the end and
    // start stamps to the millisecond (a sub-millisecond part is cut),
    // also for an end before the journal's clocks were read.
    #[tokio::test]
    async fn a_success_writes_the_same_row_as_a_done_end() {
        let (store, writer, j) = loads(8);
        let (wall0, mono0) = j.clock0;
        let cells = TestCells::of(&j);
        // (at, elapsed) pairs: later than the clocks with sub-millisecond parts, and
        // earlier than them.
        let cases = [
            (mono0 + 5_999_999, 2_500_001),
            (mono0.saturating_sub(1_500_000), 700_000),
        ];
        for (k, &(at, elapsed_ns)) in cases.iter().enumerate() {
            let base = 4 * u32::try_from(k).unwrap();
            let via_ended = |node: u32| {
                j.ended(
                    node,
                    Ended {
                        state: State::Done,
                        skipped: false,
                        attempts: 3,
                        elapsed: Duration::from_nanos(elapsed_ns),
                        failure: None,
                        at: Some(at),
                    },
                    Some("7".into()),
                );
            };
            let via_succeeded = |node: u32| cells.succeed(&j, node, (3, elapsed_ns, at), "7");
            via_ended(base);
            via_succeeded(base + 1);
            // The same two, staged behind the writer's lock (while it is held, nothing
            // applies staged ends: earlier ones the writer has not applied yet stay).
            let held = j.lock();
            let before = j.staged_len();
            std::thread::scope(|s| {
                s.spawn(|| {
                    via_ended(base + 2);
                    via_succeeded(base + 3);
                });
            });
            let staged = j.staged_len();
            assert_eq!(staged, before + 2, "staged, not waited for");
            drop(held);
        }
        j.sync().await.expect("sync");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows.len(), 8);
        let wants = [
            (wall0 + 5, wall0 + 3),
            (wall0.saturating_sub(1), wall0.saturating_sub(1)),
        ];
        for (k, &(ended, started)) in wants.iter().enumerate() {
            let base = 4 * u32::try_from(k).unwrap();
            let want = &rows[&base];
            assert_eq!(want.ended_at, Some(ended));
            assert_eq!(want.started_at, Some(started));
            for node in base + 1..base + 4 {
                let row = &rows[&node];
                assert_eq!(row.state, want.state, "row {node}");
                assert_eq!(row.attempts, want.attempts, "row {node}");
                assert_eq!(row.elapsed_ns, want.elapsed_ns, "row {node}");
                assert_eq!(row.started_at, want.started_at, "row {node}");
                assert_eq!(row.ended_at, want.ended_at, "row {node}");
                assert_eq!(row.result, want.result, "row {node}");
                assert_eq!(row.progress, want.progress, "row {node}");
                assert_eq!(row.skipped, want.skipped, "row {node}");
                assert_eq!(row.error, want.error, "row {node}");
            }
        }
        assert_eq!(j.rollup().percent, Some(100.0));
        writer.close().await.expect("close");
    }

    // A take writes its rows in node order, whichever way its list was sorted: in
    // order already, close together (by bits), or sparse (by comparisons).
    #[test]
    fn rows_to_write_are_sorted_by_node() {
        let mut bits = Vec::new();
        let cases: [Vec<u32>; 6] = [
            vec![],
            vec![7],
            vec![1, 2, 3, 90],
            vec![1005, 1000, 1063, 1064, 1001, 1127, 1128, 1999, 1500],
            vec![4_000_000_000, 3, u32::MAX, 0, 70],
            (0..3000).rev().map(|i| i * 2 + 5).collect(),
        ];
        for list in cases {
            let mut want = list.clone();
            want.sort_unstable();
            let mut got = list;
            sort_nodes(&mut got, &mut bits);
            assert_eq!(got, want);
        }
    }

    // A journal row stays small (a 100k-task run's running part keeps thousands).
    #[test]
    fn a_journal_row_is_small() {
        assert!(
            std::mem::size_of::<Row>() <= 72,
            "{} bytes",
            std::mem::size_of::<Row>()
        );
    }

    // A row's rare fields (its log, its error) are kept beside the rows while its chunk
    // lives, written with the row, and dropped with the chunk once every row of it
    // ended and was written; a retry that succeeds clears an earlier attempt's error.
    #[tokio::test]
    async fn rare_fields_are_written_and_go_with_their_chunk() {
        let n = RowChunks::CHUNK + 2;
        let (store, writer, j) = loads(n);
        let last = u32::try_from(n - 1).unwrap();
        let failed = |error: &str| Ended {
            state: State::Failed,
            skipped: false,
            attempts: 1,
            elapsed: Duration::ZERO,
            failure: Some(Box::new(Failure {
                error: error.to_owned(),
                chain: vec![error.to_owned(), "cause".to_owned()],
            })),
            at: None,
        };
        j.log(0, Level::Warning, "zero");
        j.ended(1, failed("one"), None);
        j.ended(last, failed("first attempt"), None);
        j.sync().await.expect("sync");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows[&0].log[0].message, "zero");
        assert_eq!(rows[&1].error.as_deref(), Some("one"));
        assert_eq!(rows[&1].chain, vec!["one".to_owned(), "cause".to_owned()]);
        assert_eq!(rows[&last].error.as_deref(), Some("first attempt"));
        assert_eq!(j.lock().rare.len(), 3);
        // The last row runs again and succeeds: its error is gone, in the journal and in
        // the store.
        j.ended(last, done(Duration::ZERO, None), Some("ok".into()));
        j.sync().await.expect("sync");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows[&last].error, None);
        assert!(rows[&last].chain.is_empty());
        assert_eq!(rows[&last].result.as_deref(), Some("ok"));
        // Every row of the first chunk ends: the chunk and its rows' rare fields go.
        for i in 0..u32::try_from(RowChunks::CHUNK).unwrap() {
            if i != 1 {
                j.ended(i, done(Duration::ZERO, None), None);
            }
        }
        j.sync().await.expect("sync");
        {
            let g = j.lock();
            assert!(g.items.chunks[0].rows.is_none());
            let left: Vec<u32> = g.rare.keys().copied().collect();
            assert_eq!(
                left,
                vec![last],
                "only the live chunk's row keeps its fields"
            );
        }
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows[&0].log[0].message, "zero", "the store keeps them");
        assert_eq!(rows[&1].error.as_deref(), Some("one"));
        writer.close().await.expect("close");
    }

    // A row's state is announced once per change (the last announced state is kept in
    // the row): a row written again for its log announces nothing, and a row restored
    // (written before) nothing either; each row is written once per cycle however many
    // times it changed, and the store keeps none of the journal's own flags.
    #[tokio::test]
    async fn a_state_is_announced_once_per_change() {
        let (store, writer, j) = loads(3);
        let mut rx = writer.events.subscribe();
        j.started(0, 1, Duration::ZERO);
        j.started(0, 1, Duration::ZERO);
        assert_eq!(j.lock().dirty_list, vec![0], "marked once");
        j.sync().await.expect("sync");
        j.log(0, Level::Warning, "busy");
        j.sync().await.expect("sync");
        j.restored(1, 1, Duration::ZERO, "1".into());
        j.ended(0, done(Duration::ZERO, None), Some("0".into()));
        j.sync().await.expect("sync");
        // Row 2 runs: the chunk stays, and row 0 can still be written again.
        j.started(2, 1, Duration::ZERO);
        j.log(0, Level::Warning, "late");
        j.sync().await.expect("sync");
        // Events are published after the cycle answers its waiters: waited for.
        let mut states = Vec::new();
        while states.len() < 3 {
            let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("an event")
                .expect("open");
            if let EventKind::State { state } = e.kind {
                states.push((e.id, state));
            }
        }
        j.sync().await.expect("sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(e) = rx.try_recv() {
            if let EventKind::State { state } = e.kind {
                states.push((e.id, state));
            }
        }
        assert_eq!(
            states,
            vec![
                ("run/n0".to_owned(), State::Running),
                ("run/n0".to_owned(), State::Done),
                ("run/n2".to_owned(), State::Running),
            ]
        );
        assert!(j.lock().dirty_list.is_empty());
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows[&0].log.len(), 2);
        assert_eq!(rows[&0].state, State::Done);
        assert!(
            !rows.contains_key(&1),
            "a restored row is not written again"
        );
        writer.close().await.expect("close");
    }

    // Asked at a run's end, the rows are freed by the writer's next take of the run once
    // every row is written, with nobody waiting for it: the rows still to write are
    // written first, every one of them, and later changes are ignored.
    #[tokio::test]
    async fn rows_asked_to_go_are_freed_once_written() {
        let n = RowChunks::CHUNK + 3;
        let (store, writer, j) = loads(n);
        let last = u32::try_from(n - 1).unwrap();
        for i in 0..=last {
            j.ended(i, done(Duration::ZERO, None), Some(i.to_string().into()));
        }
        j.log(last, Level::Info, "late");
        j.release_when_written();
        let start = Instant::now();
        while j.lock().items.len() > 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never freed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        {
            let g = j.lock();
            assert!(g.dirty_list.is_empty());
            assert!(g.nodes.is_empty());
            assert!(!j.release_asked.load(std::sync::atomic::Ordering::Relaxed));
        }
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows.len(), n);
        for i in 0..=last {
            assert_eq!(rows[&i].state, State::Done, "row {i}");
            assert_eq!(rows[&i].result.as_deref(), Some(i.to_string().as_str()));
        }
        assert_eq!(rows[&last].log[0].message, "late");
        // Later changes are ignored; the run's progress stays.
        j.log(last, Level::Warning, "ignored");
        j.sync().await.expect("sync");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows[&last].log.len(), 1);
        assert_eq!(j.rollup().percent, Some(100.0));
        writer.close().await.expect("close");
    }

    // The driver asks for the rows to go between its last task and its report: it does
    // not wait for a write cycle that holds the rows, and the rows still go once written,
    // even when a wake-up was already on its way (the ask brings a take of its own).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn asking_the_rows_to_go_does_not_wait_for_the_writer() {
        let (store, writer, j) = loads(3);
        for i in 0..3 {
            j.ended(i, done(Duration::ZERO, None), Some(i.to_string().into()));
        }
        {
            // As the writer holds them during a cycle.
            let held = j.lock();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::scope(|s| {
                s.spawn(|| {
                    j.release_when_written();
                    let _ = tx.send(());
                });
                let asked = rx.recv_timeout(Duration::from_secs(10));
                drop(held);
                assert!(asked.is_ok(), "waited for the rows' lock");
            });
        }
        let start = Instant::now();
        while j.lock().items.len() > 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "never freed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows.len(), 3);
        assert!(rows.values().all(|r| r.state == State::Done));
        assert!(!j.release_asked.load(std::sync::atomic::Ordering::Relaxed));
        writer.close().await.expect("close");
    }

    // The ask may come while a write cycle holds the rows after it applied the staged
    // ends: an end staged meanwhile keeps the rows until it is written.
    #[tokio::test]
    async fn an_end_staged_during_a_take_keeps_the_rows_until_written() {
        let (store, writer, j) = loads(2);
        let (_, mono0) = j.clock0;
        // A take: the rows held, the staged ends applied (none), the dirty list taken.
        let held = j.lock_applied();
        let cells = TestCells::of(&j);
        cells.succeed(&j, 0, (1, 1_000, mono0), "40");
        cells.succeed(&j, 1, (1, 1_000, mono0), "41");
        j.release_when_written();
        j.end_take(held);
        assert_eq!(j.lock().items.len(), 2, "freed with two ends staged");
        j.sync().await.expect("sync");
        let rows: HashMap<u32, TaskRow> = store.tasks("run").unwrap().into_iter().collect();
        assert_eq!(rows[&0].state, State::Done);
        assert_eq!(rows[&1].result.as_deref(), Some("41"));
        writer.close().await.expect("close");
    }

    // The dirty list keeps its room from one write cycle to the next: the workers marking
    // rows do not grow it again from nothing each cycle.
    #[tokio::test]
    async fn the_dirty_list_keeps_its_room_across_cycles() {
        let (_store, writer, j) = loads(100);
        for i in 0..100 {
            j.started(i, 1, Duration::ZERO);
        }
        j.sync().await.expect("sync");
        let (empty, room) = {
            let g = j.lock();
            (g.dirty_list.is_empty(), g.dirty_list.capacity())
        };
        assert!(empty);
        assert!(room >= 100);
        writer.close().await.expect("close");
    }
}
