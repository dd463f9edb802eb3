//! The per-run state the driver and the workers share: the graph in CSR form, per-node
//! atomics and task slots.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use smol_str::SmolStr;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::graph::arena::{Arena, TaskBox};
use crate::graph::spare::Spare;
use crate::hooks::Hooks;
use crate::journal::RunJournal;
use crate::task::arg::Slot;
use crate::task::ctx::RunScope;
use crate::task::TaskMeta;
use crate::util::IdList;

use super::worker::run_pooled;
use super::{run_node, Msg};

pub(super) struct Shared {
    /// The run's span: the parent of every attempt's span (workers are spawned tasks,
    /// which do not inherit the driver's span).
    pub(super) span: tracing::Span,
    /// The worker id of the runtime running the run.
    pub(super) worker: Arc<str>,
    /// Each node's result (in the memory of the last large run, see [`spare`](crate::graph::spare)).
    pub(super) slots: Vec<Slot>,
    pub(super) ids: IdList,
    pub(super) tag: u32,
    pub(super) remap: Option<Vec<u32>>,
    pub(super) scope: Arc<RunScope>,
    pub(super) hooks: Vec<Arc<dyn Hooks>>,
    pub(super) process: String,
    pub(super) run_id: Arc<str>,
    pub(super) permits: Option<Arc<Semaphore>>,
    pub(super) journal: Option<Arc<RunJournal>>,
    /// Each node's counters, flags, task and description (see [`NodeCell`]), in one array
    /// (in the memory of the last large run, see [`spare`](crate::graph::spare)).
    pub(super) nodes: Vec<NodeCell>,
    /// Set (release) by the driver before it counts off a node that did not succeed (see
    /// [`count_off_failed`](super::count_off_failed)). A worker whose count-off ends a
    /// dependent's wait (an acquire on the same counter) sees it if any of the dependent's
    /// dependencies failed: while it is not set, every one of them succeeded, and the
    /// dependencies need not be looked at one by one.
    pub(super) some_failed: AtomicBool,
    /// When the run started, a [`mono_ns`](crate::util::mono_ns) reading (see
    /// [`NodeCell::started_ns`]).
    pub(super) epoch: u64,
    /// Cancelled when the cancellation grace period is over: running nodes are dropped.
    pub(super) abandon: CancellationToken,
    /// The runtime suspends: nothing starts any more.
    pub(super) halt: Arc<super::Halt>,
    /// Dependents (CSR) and dependencies (CSR).
    pub(super) offsets: Box<[u32]>,
    pub(super) targets: Box<[u32]>,
    pub(super) dep_offsets: Box<[u32]>,
    pub(super) dep_targets: Box<[u32]>,
    /// Attempts each node already made in an earlier, interrupted run of the graph
    /// (shorter than the graph, empty for a fresh run: the nodes past its end made none;
    /// read through [`prior_attempts`](Self::prior_attempts)).
    pub(super) prior_attempts: Box<[u32]>,
    /// Workers start ready dependents themselves (no per-run concurrency limit).
    pub(super) workers_start_dependents: bool,
    /// Nodes started and not yet ended: counted off by the node's worker for an
    /// unreported success, by the driver when it reads a report or abandons the node.
    ///
    /// On a cache line of its own, as [`active`](Self::active) is: both workers change
    /// it for most nodes (up as a node is queued, down as a runner's chain ends), and
    /// each change took the line from the other core with the fields beside it, which
    /// every node reads, so that the next read of those missed. Measured (in memory, 2
    /// workers, medians of 56-84 runs alternated): layered 100x1k 44.2 -> 41.4 ms, wide
    /// 100k 32.7 -> 28.3 ms, fan 1->10k->1 4.16 -> 3.67 ms, wide 10k 3.52 -> 3.37 ms, a
    /// chain the same.
    pub(super) in_flight: CachePadded<AtomicUsize>,
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    /// Where nodes run when not here (see [`super::Dispatch`]).
    pub(super) dispatch: Option<Arc<dyn super::Dispatch>>,
    /// Started nodes waiting for a runner (see [`Shared::start`]), when [`pooled`](Self::pooled).
    /// Lock-free: with a lock, the runners that queue the dependents they made ready and
    /// take the next node (most of a layered graph's nodes do one or the other) waited
    /// for each other on it, and its line went from one core to the other on every use.
    /// Measured (in memory, 2 workers, medians of 70-140 runs): layered 100x1k
    /// 47 -> 41 ms, wide 100k 33.5 -> 31.8 ms, wide 10k 3.85 -> 3.57 ms, fan 1->10k->1
    /// 4.3 -> 3.9 ms, a chain (which never queues) the same. Its first block is made at
    /// the first push (crossbeam-deque's `Injector`, measured the same on these graphs,
    /// makes a 1.5 KiB block with every run).
    pub(super) queue: crossbeam_queue::SegQueue<(u32, TaskBox)>,
    /// Runners alive and not waiting inside a node (see [`Shared::start`]). On a line of
    /// its own (see [`in_flight`](Self::in_flight)).
    pub(super) active: CachePadded<AtomicUsize>,
    /// How many runners keep the queue moving while none of them waits: the tokio
    /// runtime's worker threads.
    pub(super) runners: usize,
    /// Started nodes run on a pool of runners instead of a tokio task each: no
    /// runtime-wide permits (a node waiting for one would hold its runner) and workers
    /// start dependents themselves (no per-run limit).
    pub(super) pooled: bool,
    /// Where the nodes' tasks live (the graph's, taken over): declared after `nodes` and
    /// `queue`, dropped after every task still in them; a worker holding a task holds
    /// the `Arc` of this state.
    pub(super) _arena: Arena,
}

/// A success's row is written from the node's cell (see [`RunJournal::succeeded`]): its
/// worker wrote the attempts, the time and the start there before it set
/// [`done_ok`](NodeCell::done_ok) and staged the node's number, and the cell is not
/// written again but for the result's text, made here when its worker made none.
impl crate::journal::Successes for Shared {
    fn success(&self, node: u32) -> crate::journal::Success {
        let cell = &self.nodes[node as usize];
        // The facts written before `done_ok` are seen: the list's lock, taken after the
        // worker's push, orders them.
        let result = match cell.text() {
            Some(text) => Some(text.clone()),
            // An integer's or a boolean's: its worker left it as a word in the slot (see
            // `NodeCell`'s docs, rule 3). Made once, here, off the tasks' path; the
            // report reads the copy the cell keeps.
            None => {
                let text = self.slots[node as usize].json();
                if let Some(t) = &text {
                    cell.offer_text(t.clone());
                }
                text
            }
        };
        let elapsed_ns = cell.elapsed_ns.load(Ordering::Relaxed);
        let started = self.started_at(node as usize).unwrap_or(self.epoch);
        crate::journal::Success {
            attempts: cell.attempts_run.load(Ordering::Relaxed),
            elapsed_ns,
            ended_at: started.saturating_add(elapsed_ns),
            result,
        }
    }

    #[inline]
    fn prefetch(&self, node: u32) {
        if let Some(cell) = self.nodes.get(node as usize) {
            crate::util::prefetch(cell);
        }
        if let Some(slot) = self.slots.get(node as usize) {
            crate::util::prefetch(slot);
        }
    }
}

/// The node cells of the last large run, for the next one (see [`spare`](crate::graph::spare)).
pub(super) static CELLS: Spare<NodeCell> = Spare::new();
/// The result slots of the last large run, for the next one (see [`spare`](crate::graph::spare)).
pub(super) static SLOTS: Spare<Slot> = Spare::new();

impl Drop for Shared {
    fn drop(&mut self) {
        // The cells (and the tasks still in them) go before the arena, as the fields'
        // order has it.
        CELLS.give(std::mem::take(&mut self.nodes));
        SLOTS.give(std::mem::take(&mut self.slots));
    }
}

/// One node's counters, flags, task and description, together in one array of the run
/// and in one cache line: a worker that starts a node, runs it and ends it reads and writes
/// several of them, and so does one that counts a node off as a dependent and claims it;
/// with nodes ending in any order, each array more would be one cache miss more per node.
/// A run also makes one array (one allocation, one pass) instead of one per field.
///
/// # The node's task and result text ([`held`](Self::held))
///
/// The cell holds the node's task until the node is claimed, and then, once it succeeded,
/// its result's text (for the report: the text made for the run's journal, so that the
/// report neither makes it again nor locks the slot to read it). No lock guards it: the
/// flags say who may touch it, and when.
///
/// 1. Claim: whoever swaps [`claimed`](Self::claimed) from false to true (acquire-release:
///    after the cell was filled, before the state was shared) takes the task, at once,
///    and only then. One swap wins, so one party takes it, once. The driver also sets `claimed`
///    (a store) for a node it settles without running it: that node's cell is not touched
///    again until the state is dropped.
/// 2. Success: the worker that ran the node (it took the task in 1, or was handed it
///    through tokio's spawn or the run's queue, both of which order the claim before the
///    run) and then won [`ended`](Self::ended) puts the text in, when the result was
///    serialized to one, marks it [`TEXT_READY`] (release), and only then sets
///    [`done_ok`](Self::done_ok) (release) ([`succeed`](Self::succeed), unsafe: the
///    caller vouches for being that worker). One `ended` swap wins, so there is one such
///    worker, and it writes once; a node ended by the driver (abandoned) has no writer.
/// 3. Text made later: an integer's or a boolean's result is kept as a word in its slot,
///    and its worker makes no text (it would be on the run's critical path); whoever
///    writes the node's journal row makes it then, and offers it to the cell
///    ([`offer_text`](Self::offer_text)): after `done_ok` is seen set (acquire: the
///    worker and the claim are done with the cell), the one whose swap of
///    [`text_state`](Self::text_state) from [`TEXT_NONE`] to [`TEXT_WRITING`] wins puts
///    it in, and marks it [`TEXT_READY`] (release). One swap wins, so it is written once.
/// 4. Read: anyone who sees `text_state` at [`TEXT_READY`] (acquire) reads the text
///    ([`text`](Self::text)): it was written before, and the cell is not written again
///    (the task went in 1, the text's one writer, of 2 or 3, is done), so shared reads do
///    not race. A reader who sees it not ready makes the text from the slot itself.
/// 5. Drop: through `&mut`, when the run's state goes, whatever is left (a task that was
///    never started, the text) is dropped.
///
/// No user code runs while the cell is borrowed: a task taken out is dropped or run
/// outside it, so a panicking task's drop or attempt cannot leave it half-written.
#[repr(align(64))]
pub(super) struct NodeCell {
    /// Dependencies not yet ended.
    pub(super) remaining: AtomicU32,
    /// Attempts made, written by the node's worker before `done_ok` when it succeeded (a
    /// success is not reported to the driver), and as each attempt starts, for a node
    /// abandoned after the cancellation grace period.
    pub(super) attempts_run: AtomicU32,
    /// Nanoseconds the node ran when it succeeded, written with `attempts_run`.
    pub(super) elapsed_ns: AtomicU64,
    /// When the node started: nanoseconds after [`Shared::epoch`], plus one; 0 while not
    /// started. Written when the node first waits (how long an abandoned node had run)
    /// and when it succeeds (when it ended, with `elapsed_ns`, for its journal row).
    pub(super) started_ns: AtomicU64,
    /// Set (release) when the node succeeded: its result is in its slot (and its text,
    /// if its worker made one, in [`held`](Self::held)).
    pub(super) done_ok: AtomicBool,
    /// Set when the node was started or settled: it is started at most once.
    pub(super) claimed: AtomicBool,
    /// Whether [`held`](Self::held) holds the result's text: [`TEXT_NONE`],
    /// [`TEXT_WRITING`] or [`TEXT_READY`] (see the type's docs, rules 2 to 4).
    text_state: AtomicU8,
    /// Set by whoever ends the started node first: its worker, or the driver abandoning
    /// it after the cancellation grace period. The other one leaves the node alone.
    pub(super) ended: AtomicBool,
    /// The node's task until it is claimed, then its result's text once it succeeded
    /// (see the type's docs for who may touch it, and when).
    held: UnsafeCell<Held>,
    /// The node's task description.
    pub(super) meta: &'static TaskMeta,
}

/// [`NodeCell::text_state`]: no text in the cell (yet).
const TEXT_NONE: u8 = 0;
/// [`NodeCell::text_state`]: a text is being put in (by the one who won the swap to it).
const TEXT_WRITING: u8 = 1;
/// [`NodeCell::text_state`]: the text is in, and stays as it is.
const TEXT_READY: u8 = 2;

/// What a [`NodeCell`] holds besides its counters and flags (one at a time: the task
/// goes before the text comes).
enum Held {
    Empty,
    /// The node's task, until it is claimed.
    Task(TaskBox),
    /// The text of the node's result, put in by its worker when it succeeded, or later
    /// by the writer of its journal row (see [`NodeCell::offer_text`]).
    Text(SmolStr),
}

// The task and the text share the cell's 24 bytes, and the node its 64-byte line (debug
// builds' task boxes carry a counter more).
#[cfg(not(debug_assertions))]
const _: () = assert!(
    std::mem::size_of::<Held>() == std::mem::size_of::<SmolStr>()
        && std::mem::size_of::<NodeCell>() == 64
);

// SAFETY: `held` is the only field that is not `Sync`. Its content is written by one
// party at a time, each ordered after the one before by the flags' atomics (the claim's
// swap, the handover of the claimed task, the `ended` swap, `done_ok`'s release and
// acquire, `text_state`'s swap, release and acquire), and only read by several at once
// when no one writes it any more (see `NodeCell`'s docs); what it holds is `Send` (a task
// box, a `SmolStr`), and a shared read gives out only a `&SmolStr`, which is `Sync`.
#[allow(unsafe_code)]
unsafe impl Sync for NodeCell {}

impl NodeCell {
    /// A node with `remaining` dependencies, holding `task`.
    pub(super) fn new(remaining: u32, task: Option<TaskBox>, meta: &'static TaskMeta) -> Self {
        NodeCell {
            remaining: AtomicU32::new(remaining),
            attempts_run: AtomicU32::new(0),
            elapsed_ns: AtomicU64::new(0),
            started_ns: AtomicU64::new(0),
            done_ok: AtomicBool::new(false),
            claimed: AtomicBool::new(false),
            text_state: AtomicU8::new(TEXT_NONE),
            ended: AtomicBool::new(false),
            held: UnsafeCell::new(task.map_or(Held::Empty, Held::Task)),
            meta,
        }
    }

    /// Claims the node: its task, unless it was claimed (started or settled) already.
    #[inline]
    pub(super) fn claim(&self) -> Option<TaskBox> {
        if self.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: this call's swap set `claimed` (rule 1 of the type's docs): no one else
        // touches the cell until this task is started, and the borrow ends here.
        #[allow(unsafe_code)]
        let held = unsafe { &mut *self.held.get() };
        match std::mem::replace(held, Held::Empty) {
            Held::Task(task) => Some(task),
            // No task: the node's graph had none for it (never so for a built graph).
            _ => None,
        }
    }

    /// Marks the node succeeded (release: with its result in its slot, its attempts and
    /// time), keeping `text`, its result's text if one was made, for the journal and the
    /// report.
    ///
    /// # Safety
    ///
    /// The caller is the worker that ran the node (it was handed the task its claim took)
    /// and won [`ended`](Self::ended), and calls this once (rule 2 of the type's docs).
    #[inline]
    #[allow(unsafe_code)]
    pub(super) unsafe fn succeed(&self, text: Option<SmolStr>) {
        debug_assert!(self.claimed.load(Ordering::Relaxed) && self.ended.load(Ordering::Relaxed));
        if let Some(text) = text {
            // SAFETY: the caller's promise (rule 2): the claim's taker is done with the
            // cell, the driver does not touch it for a node its worker ended, and no one
            // reads it before `done_ok`, set below.
            let held = unsafe { &mut *self.held.get() };
            *held = Held::Text(text);
            self.text_state.store(TEXT_READY, Ordering::Release);
        }
        self.done_ok.store(true, Ordering::Release);
    }

    /// Keeps `text`, the text of the node's result made after its success (rule 3 of the
    /// type's docs), for whoever reads it next: unless the node has not succeeded, or
    /// its cell holds a text already (its worker's, or one offered before), which stays.
    pub(super) fn offer_text(&self, text: SmolStr) {
        if !self.done_ok.load(Ordering::Acquire)
            || self
                .text_state
                .compare_exchange(
                    TEXT_NONE,
                    TEXT_WRITING,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        // SAFETY: `done_ok` is set (acquire): the claim took the task and the worker is
        // done with the cell (rules 1 and 2); this call's swap won (rule 3): no one else
        // writes it, and no one reads it before `TEXT_READY`, set below.
        #[allow(unsafe_code)]
        let held = unsafe { &mut *self.held.get() };
        *held = Held::Text(text);
        self.text_state.store(TEXT_READY, Ordering::Release);
    }

    /// The text of the node's result, once the node succeeded and its text was made
    /// (by its worker, or offered since); `None` before, or when none was made (an
    /// integer's or a boolean's whose row was not written yet, or without a journal, a
    /// result restored from an earlier run: its slot has it).
    #[inline]
    pub(super) fn text(&self) -> Option<&SmolStr> {
        if self.text_state.load(Ordering::Acquire) != TEXT_READY {
            return None;
        }
        // SAFETY: the text is ready (acquire): it was written before (rules 2 and 3), and
        // the cell is not written again while `self` is shared (rule 4).
        #[allow(unsafe_code)]
        let held = unsafe { &*self.held.get() };
        match held {
            Held::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// How many nodes a worker queues before it looks for idle runners (and once more after
/// its last): a large fan-out is taken up while it is still being queued.
const QUEUE_BATCH: usize = 64;

impl Shared {
    /// Records that node `i` started at `at` (a [`mono_ns`](crate::util::mono_ns) reading).
    pub(super) fn mark_started(&self, i: u32, at: u64) {
        let ns = at.saturating_sub(self.epoch).min(u64::MAX - 1);
        self.nodes[i as usize]
            .started_ns
            .store(ns + 1, Ordering::Relaxed);
    }

    /// When node `i` started (a [`mono_ns`](crate::util::mono_ns) reading), as
    /// [`mark_started`](Self::mark_started) recorded it; `None` when it never started.
    fn started_at(&self, i: usize) -> Option<u64> {
        match self.nodes[i].started_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch.saturating_add(ns - 1)),
        }
    }

    /// How long node `i` has been running (zero when it never started).
    pub(super) fn running_for(&self, i: usize) -> Duration {
        self.started_at(i)
            .map_or(Duration::ZERO, crate::util::mono_since)
    }

    /// Attempts node `i` already made in an earlier, interrupted run of the graph.
    pub(super) fn prior_attempts(&self, i: u32) -> u32 {
        self.prior_attempts.get(i as usize).copied().unwrap_or(0)
    }

    /// Asks for the cache lines running node `i` (whose task is `task`) will touch, all
    /// at once, before the run touches them one by one: its task, its result slot, the
    /// slots of its first dependencies (its inputs) and the cells of its first dependents
    /// (counted down once it succeeded). In a large run they were written at its start
    /// and have left the cache since, and each miss would stall the worker in turn (a
    /// count-down is a locked read-modify-write, which waits for every miss before it);
    /// asked for together, the misses overlap. Up to [`PREFETCH_LINKS`] of each list: a
    /// node with many more reads or starts them in a loop the CPU prefetches for itself.
    /// Measured (in memory, 2 workers, medians of 9 runs): layered 100x1k 63-65 ->
    /// 53.5-57 ms; the other graphs (a chain, a fan, wide ones) the same within their noise.
    #[inline]
    pub(super) fn prefetch_run(&self, i: u32, task: &TaskBox) {
        use crate::util::prefetch;
        prefetch(&**task);
        if let Some(slot) = self.slots.get(i as usize) {
            prefetch(slot);
        }
        for &d in self.deps(i).iter().take(PREFETCH_LINKS) {
            if let Some(slot) = self.slots.get(d as usize) {
                prefetch(slot);
            }
        }
        for &d in self.dependents(i).iter().take(PREFETCH_LINKS) {
            if let Some(cell) = self.nodes.get(d as usize) {
                prefetch(cell);
            }
        }
    }

    pub(super) fn dependents(&self, i: u32) -> &[u32] {
        &self.targets[self.offsets[i as usize] as usize..self.offsets[i as usize + 1] as usize]
    }

    pub(super) fn deps(&self, i: u32) -> &[u32] {
        &self.dep_targets
            [self.dep_offsets[i as usize] as usize..self.dep_offsets[i as usize + 1] as usize]
    }

    pub(super) fn all_deps_ok(&self, i: u32) -> bool {
        self.deps(i)
            .iter()
            .all(|&d| self.nodes[d as usize].done_ok.load(Ordering::Acquire))
    }

    /// Starts node `i` unless it was started or settled already.
    ///
    /// [Pooled](Self::pooled): the node is queued for a small pool of runners (tokio
    /// tasks that run queued nodes one after the other), not given a tokio task of its
    /// own: a wide graph does not hold a spawned task per ready node (a 100k-task graph:
    /// 22 MiB of them) nor pay a spawn per node. A runner whose node waits (its first
    /// `Pending`) hands the queue over to a new runner, so nodes that wait still run
    /// concurrently, as spawned ones would.
    pub(super) fn start(self: &Arc<Self>, i: u32) -> bool {
        let Some(task) = self.claim(i, true) else {
            return false;
        };
        if self.pooled {
            self.queue.push((i, task));
            self.ensure_runner();
            return true;
        }
        // The task goes first in one captured tuple: a spawned future dropped before its
        // first poll (a runtime shutting down) drops its captures in the order they were
        // captured, and the task must go before the run state that holds its arena (see
        // `graph::arena`). Captured apart, the run state went first.
        let job = (task, self.clone());
        // The spawned future stays small while it waits in the run queue (a wide graph
        // queues every root at once); the node's real state machine is boxed when it runs.
        drop(tokio::spawn(async move {
            let (task, shared) = job;
            Box::pin(run_node(shared, i, task)).await;
        }));
        true
    }

    /// Starts every node of `ready` ([pooled](Self::pooled) runs only: no limit applies),
    /// as [`start`](Self::start) does one, but a batch at a time: the suspension flag read
    /// and the nodes counted in flight once per batch, runners looked for once per
    /// batch.
    pub(super) fn start_all(self: &Arc<Self>, ready: &mut VecDeque<u32>) {
        const BATCH: usize = 64;
        let mut batch: Vec<(u32, TaskBox)> = Vec::with_capacity(BATCH.min(ready.len()));
        while !ready.is_empty() {
            if self.halt.is_halted() {
                ready.clear();
                return;
            }
            while let Some(i) = ready.pop_front() {
                if let Some(task) = self.nodes[i as usize].claim() {
                    batch.push((i, task));
                    if batch.len() == BATCH {
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                // Counted before any of them can run (and end).
                self.in_flight.fetch_add(batch.len(), Ordering::AcqRel);
                for node in batch.drain(..) {
                    self.queue.push(node);
                }
                self.ensure_runner();
            }
        }
    }

    /// Spawns a runner unless enough of them are active.
    pub(super) fn ensure_runner(self: &Arc<Self>) {
        let mut n = self.active.load(Ordering::Acquire);
        loop {
            if n >= self.runners {
                return;
            }
            match self
                .active
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        let shared = self.clone();
        drop(tokio::spawn(async move {
            Box::pin(run_pooled(shared)).await;
        }));
    }

    /// The next queued node, for an active runner; `None` (and the runner counted off)
    /// when the queue is empty.
    pub(super) fn next_queued(&self) -> Option<(u32, TaskBox)> {
        loop {
            if let Some(x) = self.queue.pop() {
                return Some(x);
            }
            self.active.fetch_sub(1, Ordering::AcqRel);
            // A node queued while this runner was still counted may have found enough
            // runners: look again, and stay while it is there and runners are missing.
            loop {
                if self.queue.is_empty() {
                    return None;
                }
                let n = self.active.load(Ordering::Acquire);
                if n >= self.runners {
                    return None;
                }
                if self
                    .active
                    .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    break;
                }
            }
        }
    }

    /// Takes node `i`'s task to start it, unless it was started or settled already;
    /// `count`: count it in flight (not when it takes the place of the node that made it
    /// ready, in the same worker, see [`release_success`](Self::release_success)).
    pub(super) fn claim(&self, i: u32, count: bool) -> Option<TaskBox> {
        if self.halt.is_halted() {
            return None;
        }
        let task = self.take_task(i)?;
        if count {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        Some(task)
    }

    /// Node `i`'s task, unless it was started or settled already ([`claim`](Self::claim)
    /// without the suspension check, which the caller made).
    #[inline]
    fn take_task(&self, i: u32) -> Option<TaskBox> {
        self.nodes[i as usize].claim()
    }

    /// Node `i` succeeded (and was marked so, see [`NodeCell::succeed`]): count it off
    /// its dependents and start those now ready. The first of them is not spawned but
    /// returned, claimed, for the caller to run itself (a chain then runs in one tokio
    /// task, without a spawn and a wake-up per link); not under a runtime-wide limit,
    /// where every node waits for a permit of its own.
    pub(super) fn release_success(self: &Arc<Self>, i: u32) -> Option<(u32, TaskBox)> {
        let keep_one = self.permits.is_none();
        let mut next = None;
        // Read once per node, not per dependent (an atomic load of the run's flag): a
        // cancel that comes during the loop is as if it came after it.
        let mut cancelled = None;
        // The same for the suspension (two loads: the run's halt and the runtime's): a
        // dependent is not started once it is seen, and stays pending for the next start.
        let mut halted = None;
        // The others, in a pooled run: queued, runners looked for every `QUEUE_BATCH`
        // and once after.
        let mut queued = 0;
        for &d in self.dependents(i) {
            if self.nodes[d as usize]
                .remaining
                .fetch_sub(1, Ordering::AcqRel)
                == 1
            {
                if self.workers_start_dependents
                    && !*cancelled.get_or_insert_with(|| self.scope.cancelled.is_set())
                    && (!self.some_failed.load(Ordering::Acquire) || self.all_deps_ok(d))
                {
                    if *halted.get_or_insert_with(|| self.halt.is_halted()) {
                        continue;
                    }
                    if keep_one && next.is_none() {
                        // Counted in flight in place of `i`, whose worker runs it
                        // next (no increment here, no decrement for `i`).
                        next = self.take_task(d).map(|t| (d, t));
                    } else if self.pooled {
                        if let Some(task) = self.take_task(d) {
                            // Counted in flight before it is queued (and can end).
                            self.in_flight.fetch_add(1, Ordering::AcqRel);
                            self.queue.push((d, task));
                            queued += 1;
                            if queued % QUEUE_BATCH == 0 {
                                self.ensure_runner();
                            }
                        }
                    } else {
                        self.start(d);
                    }
                } else {
                    let _ = self.tx.send(Msg::Settle(d));
                }
            }
        }
        if queued % QUEUE_BATCH != 0 {
            self.ensure_runner();
        }
        next
    }
}

/// How many of a node's dependencies and of its dependents [`Shared::prefetch_run`] asks
/// for (the layered benchmark's nodes have three of each).
const PREFETCH_LINKS: usize = 8;

/// A graph in CSR form: the dependents of node `i` are
/// `targets[offsets[i]..offsets[i + 1]]`, its dependencies
/// `dep_targets[dep_offsets[i]..dep_offsets[i + 1]]`.
pub(super) struct Csr {
    pub(super) offsets: Box<[u32]>,
    pub(super) targets: Box<[u32]>,
    pub(super) dep_offsets: Box<[u32]>,
    pub(super) dep_targets: Box<[u32]>,
}

/// The graph in CSR form, from each node's dependencies (the `i`th item: node `i`'s).
/// One pass over the graph's dependencies, then one over their copy: no intermediate edge list.
#[cfg(test)]
pub(super) fn csr<'a>(deps: impl Iterator<Item = &'a [u32]>, n: usize) -> Csr {
    let mut b = CsrBuilder::new(n);
    for ds in deps {
        b.push(ds);
    }
    b.finish().0
}

/// Makes a [`Csr`] from each node's dependencies, pushed in the nodes' order, so that
/// the caller's one walk of the graph's nodes can make the rest of its per-node state
/// at the same time (see [`new_shared`](super::new_shared)): each walk more of a large
/// graph's nodes (a hundred bytes each) is one cache miss more per node or two.
pub(super) struct CsrBuilder {
    n: usize,
    /// Node `d`'s count of dependents in `offsets[d]` while pushing.
    offsets: Vec<u32>,
    dep_offsets: Vec<u32>,
    dep_targets: Vec<u32>,
    /// The nodes without dependencies, in order.
    roots: Vec<u32>,
}

impl CsrBuilder {
    /// A builder for `n` nodes.
    pub(super) fn new(n: usize) -> Self {
        let mut dep_offsets = Vec::with_capacity(n + 1);
        dep_offsets.push(0u32);
        CsrBuilder {
            n,
            offsets: vec![0u32; n + 1],
            dep_offsets,
            dep_targets: Vec::new(),
            roots: Vec::new(),
        }
    }

    /// The next node's dependencies.
    #[inline]
    pub(super) fn push(&mut self, ds: &[u32]) {
        if ds.is_empty() {
            // This node's number: one per push so far.
            let node = self.dep_offsets.len() - 1;
            self.roots.push(u32::try_from(node).unwrap_or(u32::MAX));
        }
        for &d in ds {
            self.offsets[d as usize] += 1;
        }
        self.dep_targets.extend_from_slice(ds);
        self.dep_offsets
            .push(u32::try_from(self.dep_targets.len()).unwrap_or(u32::MAX));
    }

    /// The graph in CSR form, once every node was pushed (one pass over the
    /// dependencies' copy, no intermediate edge list), and the nodes without
    /// dependencies, in order.
    pub(super) fn finish(self) -> (Csr, Vec<u32>) {
        let CsrBuilder {
            n,
            mut offsets,
            dep_offsets,
            dep_targets,
            roots,
        } = self;
        debug_assert_eq!(dep_offsets.len(), n + 1, "one push per node");
        // Dependents: node `d`'s count in `offsets[d]`, summed up to where its list
        // ends, then filled from the back (nodes in reverse order), each decrement
        // leaving `offsets[d]` where the list starts: no second array of positions.
        let mut sum = 0u32;
        for o in &mut offsets[..n] {
            sum += *o;
            *o = sum;
        }
        offsets[n] = sum;
        let mut targets = vec![0u32; sum as usize];
        for i in (0..n).rev() {
            let ds = &dep_targets[dep_offsets[i] as usize..dep_offsets[i + 1] as usize];
            for &d in ds {
                let at = &mut offsets[d as usize];
                *at -= 1;
                targets[*at as usize] = i as u32;
            }
        }
        let csr = Csr {
            offsets: offsets.into(),
            targets: targets.into(),
            dep_offsets: dep_offsets.into(),
            dep_targets: dep_targets.into(),
        };
        (csr, roots)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    use smol_str::SmolStr;

    use super::{csr, NodeCell};
    use crate::graph::process::{Process, ProcessMeta};
    use crate::graph::{Builder, Graph};

    /// Tasks of [`Counted`] dropped.
    static DROPPED: AtomicUsize = AtomicUsize::new(0);

    /// A task that counts its drops.
    struct Counted;

    impl Drop for Counted {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, Ordering::SeqCst);
        }
    }

    crate::no_op_task!(Counted, "counted");

    /// `n` [`Counted`] tasks.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Many {
        n: usize,
    }

    impl Process for Many {
        const META: ProcessMeta = ProcessMeta::dataflow("exec::shared::tests::many");
        fn build(self, p: &mut Builder) {
            for _ in 0..self.n {
                p.task(Counted);
            }
        }
    }

    // Threads racing to claim the same nodes (as workers counting off a shared dependent,
    // the driver settling or starting it): each node's task goes to one of them, once,
    // and each task is dropped once; a node's text is seen by every reader once it is
    // marked succeeded, and not before.
    #[test]
    fn a_node_is_claimed_once_and_its_text_read_after_its_success() {
        const N: usize = 2_000;
        const THREADS: usize = 4;
        // The graph (and its arena) outlives the cells, as the run's state has it.
        let mut graph = Graph::of(Many { n: N }).unwrap();
        let before = DROPPED.load(Ordering::SeqCst);
        let cells: Vec<NodeCell> = graph
            .nodes
            .iter()
            .zip(graph.tasks.drain(..))
            .map(|(n, task)| NodeCell::new(0, Some(task), n.meta))
            .collect();
        let won: Vec<AtomicU32> = (0..N).map(|_| AtomicU32::new(0)).collect();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (cells, won) = (&cells, &won);
                s.spawn(move || {
                    // Every thread walks the nodes from another place.
                    for k in 0..N {
                        let i = (k + t * N / THREADS) % N;
                        if let Some(task) = cells[i].claim() {
                            won[i].fetch_add(1, Ordering::SeqCst);
                            drop(task);
                        }
                    }
                });
            }
        });
        assert!(won.iter().all(|w| w.load(Ordering::SeqCst) == 1));
        assert_eq!(DROPPED.load(Ordering::SeqCst) - before, N);
        // The winner of each node's `ended` marks it succeeded while others read.
        std::thread::scope(|s| {
            let cells = &cells;
            s.spawn(move || {
                for (i, c) in cells.iter().enumerate() {
                    assert!(c.text().is_none());
                    assert!(!c.ended.swap(true, Ordering::AcqRel));
                    // SAFETY: this thread claimed nothing but is the only one to end the
                    // nodes, once each, and the claims above are over (rule 2).
                    #[allow(unsafe_code)]
                    unsafe {
                        c.succeed((i % 2 == 0).then(|| SmolStr::new(i.to_string())));
                    }
                }
            });
            for _ in 0..THREADS - 1 {
                s.spawn(move || {
                    for (i, c) in cells.iter().enumerate().rev() {
                        let want = (i % 2 == 0).then(|| i.to_string());
                        while !c.done_ok.load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                        assert_eq!(c.text().map(SmolStr::as_str), want.as_deref());
                    }
                });
            }
        });
        // Claimed already: nothing more to take.
        assert!(cells.iter().all(|c| c.claim().is_none()));
        drop(cells);
        assert_eq!(DROPPED.load(Ordering::SeqCst) - before, N);
        // Cells dropped unclaimed drop their tasks.
        let mut graph = Graph::of(Many { n: 10 }).unwrap();
        let cells: Vec<NodeCell> = graph
            .nodes
            .iter()
            .zip(graph.tasks.drain(..))
            .map(|(n, task)| NodeCell::new(0, Some(task), n.meta))
            .collect();
        drop(cells);
        assert_eq!(DROPPED.load(Ordering::SeqCst) - before, N + 10);
    }

    /// A cell whose task was claimed and whose node its worker ended, as a worker leaves
    /// it: succeeded, with `text` if one was made.
    fn succeeded_cell(text: Option<&str>) -> NodeCell {
        let cell = NodeCell::new(0, None, &PLAIN_META);
        assert!(cell.claim().is_none());
        assert!(!cell.ended.swap(true, Ordering::AcqRel));
        // SAFETY: this thread claimed the node and won its `ended`, once (rule 2).
        #[allow(unsafe_code)]
        unsafe {
            cell.succeed(text.map(SmolStr::new));
        }
        cell
    }

    static PLAIN_META: crate::task::TaskMeta = <Plain as crate::task::Task>::META;

    // Rule 3 of `NodeCell`'s docs: a text made after the success is kept once; a text
    // offered for a node that has not succeeded, or that holds one, changes nothing.
    #[test]
    fn a_text_offered_after_the_success_is_kept_once() {
        const THREADS: usize = 4;
        const N: usize = 2_000;
        let pending = NodeCell::new(0, None, &PLAIN_META);
        pending.offer_text(SmolStr::new("1"));
        assert!(pending.text().is_none(), "not succeeded: nothing kept");

        let word = succeeded_cell(None);
        assert!(word.text().is_none(), "no text made by its worker");
        word.offer_text(SmolStr::new("42"));
        assert_eq!(word.text().map(SmolStr::as_str), Some("42"));
        word.offer_text(SmolStr::new("43"));
        assert_eq!(word.text().map(SmolStr::as_str), Some("42"), "kept once");

        let serialized = succeeded_cell(Some(r#""ok""#));
        serialized.offer_text(SmolStr::new("42"));
        assert_eq!(serialized.text().map(SmolStr::as_str), Some(r#""ok""#));

        // Offered from several threads at once: one text wins, and a reader that sees a
        // text sees it whole.
        let cells: Vec<NodeCell> = (0..N).map(|_| succeeded_cell(None)).collect();
        let long = |t: usize| SmolStr::new(format!("{t}").repeat(40));
        let seen: Vec<Vec<Option<SmolStr>>> = std::thread::scope(|s| {
            let readers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let cells = &cells;
                    s.spawn(move || {
                        cells
                            .iter()
                            .map(|c| {
                                c.offer_text(long(t));
                                // Not ready while the winner puts it in: `None`.
                                c.text().cloned()
                            })
                            .collect()
                    })
                })
                .collect();
            readers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for (i, c) in cells.iter().enumerate() {
            let kept = c.text().expect("a text is kept once offered");
            assert!((0..THREADS).any(|w| *kept == long(w)), "{kept}");
            for by_thread in &seen {
                if let Some(text) = &by_thread[i] {
                    assert_eq!(text, kept, "every reader sees the one text kept");
                }
            }
        }
    }

    /// A task that does nothing (and counts nothing: [`Counted`]'s drops are another
    /// test's).
    struct Plain;

    crate::no_op_task!(Plain, "plain");

    /// Two [`Plain`] tasks.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Two;

    impl Process for Two {
        const META: ProcessMeta = ProcessMeta::dataflow("exec::shared::tests::two");
        fn build(self, p: &mut Builder) {
            p.task(Plain);
            p.task(Plain);
        }
    }

    // A resumed run's restored node is reported with the attempts and time it had (the
    // driver puts them in its cell, where a worker leaves a success's); the other node
    // runs.
    #[test]
    fn a_restored_node_keeps_its_attempts_and_time() {
        use std::time::Duration;

        use crate::exec::{run_bare, Resume};
        use crate::report::TaskStatus;

        let resume = Resume {
            done: vec![(0, SmolStr::new("null"), 3, Duration::from_millis(7))],
            attempts: vec![3],
        };
        let report = run_bare(Graph::of(Two).unwrap(), "restored", Some(resume));
        let (a, b) = (&report.tasks[0], &report.tasks[1]);
        assert_eq!(a.status, TaskStatus::Success);
        assert_eq!((a.attempts, a.elapsed()), (3, Duration::from_millis(7)));
        assert_eq!((b.status, b.attempts), (TaskStatus::Success, 1));
    }

    #[test]
    fn csr_lists_dependents_and_dependencies() {
        // 0 -> 2, 1 -> 2, 0 -> 3, 2 -> 3; node 4 stands alone.
        let deps: Vec<Vec<u32>> = vec![vec![], vec![], vec![0, 1], vec![0, 2], vec![]];
        let g = csr(deps.iter().map(Vec::as_slice), deps.len());
        let (offsets, targets) = (&g.offsets, &g.targets);
        let (dep_offsets, dep_targets) = (&g.dep_offsets, &g.dep_targets);
        let dependents = |i: usize| &targets[offsets[i] as usize..offsets[i + 1] as usize];
        let dependencies =
            |i: usize| &dep_targets[dep_offsets[i] as usize..dep_offsets[i + 1] as usize];
        assert_eq!(dependents(0), [2, 3]);
        assert_eq!(dependents(1), [2]);
        assert_eq!(dependents(2), [3]);
        assert!(dependents(3).is_empty() && dependents(4).is_empty());
        for (i, d) in deps.iter().enumerate() {
            assert_eq!(dependencies(i), d.as_slice());
        }
    }
}
