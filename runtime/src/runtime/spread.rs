//! One run's tasks spread over the workers of a shared store (PostgreSQL, issue 14,
//! points 2-4), opt-in with [`RuntimeBuilder::spread_tasks`](super::RuntimeBuilder::spread_tasks).
//!
//! - The worker holding a run's lease stays its **coordinator**: its executor decides
//!   what is ready and settles failures, skips, retries-exhausted and cancellation as
//!   always, records the tasks' ends and the run's end. A ready node is not run there
//!   but **offered** ([`RunDispatch`], through [`TaskQueue::offer`] in batches).
//! - Every worker (the coordinator too) **claims** offered tasks of the process types it
//!   registered, in batches ([`claim_loop`]): ready tasks, and running ones whose claim
//!   expired (a dead or paused worker) or whose hard deadline passed (a hung task). It
//!   rebuilds the run's graph from the stored parameters (cached per run), fills the
//!   node's inputs from its dependencies' stored results, runs its attempts with the
//!   executor's own code, and **finishes** it with one fenced statement: a claim that
//!   another worker took since writes nothing (the result is dropped and counted,
//!   [`TaskStats::fenced`]).
//! - The worker's heartbeat renews its task claims with its run leases, in one
//!   statement; a refused renewal stops that task's future at once
//!   ([`TaskStats::refused`]); a run's cancel marks its task rows, and the worker running
//!   one cancels its `ctx` at its next heartbeat.
//! - The coordinator **collects** ended tasks ([`collect_loop`]) and feeds them into its
//!   executor. `LISTEN/NOTIFY` wakes the loops; they poll too. A pass reads the rows of
//!   the tasks offered since the last pass by name
//!   ([`TaskQueue::watch`](crate::store::TaskQueue::watch)), and of the others only the
//!   rows written since the last pass
//!   ([`TaskQueue::changes`](crate::store::TaskQueue::changes)): its cost follows what
//!   changed, not how many tasks the runs wait for (a wide run's pass read every one of
//!   its unfinished tasks before).
//! - Claims read the ready rows only
//!   ([`TaskQueue::claim_ready`](crate::store::TaskQueue::claim_ready)), except one
//!   claim per poll interval at most that also takes the expired and overdue claims
//!   ([`TaskQueue::claim`](crate::store::TaskQueue::claim)): a claim does not read past
//!   the running tasks.
//! - **Cascade**: when the run starts ([`RunDispatch::prepare`]), the coordinator also
//!   writes a *waiting* row for every node whose dependencies have not all succeeded,
//!   with the count of those; each offered or waiting row lists its dependents. A
//!   successful finish counts its dependents down in the same statement and those
//!   reaching 0 become claimable at once: a layered graph no longer pays a round trip
//!   through the coordinator per layer. The same statement claims them for the
//!   finishing worker, as many as it has room for
//!   ([`TaskQueue::finish_and_claim`](crate::store::TaskQueue::finish_and_claim)): a
//!   cascaded task costs no claim statement and no write of its own to be claimed (the
//!   rest become ready for any worker's claim; the claim loop and the finishes reserve
//!   their room (`Spread::reserve`) so that together they never take more than the
//!   capacity). Only successes cascade: failures, skips and
//!   tolerated dependencies stay the executor's decisions (it offers such a node itself,
//!   which turns its waiting row ready), nothing cascades once the run asked for a
//!   cancel, and a run under a concurrency limit (the run's or the runtime's) does not
//!   cascade at all (the executor decides when its nodes start). When the executor
//!   finds a cascaded node ready, the run's first coordinator (the worker that launched
//!   it) does not offer it: every dependency succeeded through a finish that counted
//!   its waiting row down, so the collector only waits for its end (a run's cancel
//!   marks a waiting row a finish left at the cancel, which ends it). A resumed or
//!   taken-over run offers it: the offer leaves the row as it is (claimed, running or
//!   ended) and the collector waits for its end: it does not run twice. A count that
//!   never reaches 0 (a dependency's end stored before the waiting row existed, e.g.
//!   after a takeover) just leaves the node to the executor's offer; a finish that
//!   finds the waiting row locked by a concurrent finish waits for it (in (run, node)
//!   order), so that several workers ending a layer together still cascade.
//! - Wakes: a finish notifies the other workers only when it left ready rows it did
//!   not take, or ended tasks of a run another worker coordinates that the coordinator
//!   acts on (a failure, a cancel, a task without dependents; a success that counted
//!   its dependents down is read at the coordinator's next poll); a claim loop that
//!   a task ending here wakes runs a claim only when one may find ready rows (an offer
//!   or a notification said so since its last claim, or its last claim was full), or
//!   when its periodic full claim is due: an idle worker does not ask after every task
//!   it finishes.
//! - A coordinator that dies: its run is taken over (run leases) and resumed; the new
//!   coordinator re-offers the unfinished nodes, which adopts the rows running on live
//!   workers and finds the results of those that ended: a finished task does not run
//!   again.
//! - A spread task runs inside the hooks of the worker that runs it (its process type's,
//!   then the runtime's: the order and the [`TaskInfo`](crate::TaskInfo) of a local
//!   task), so `around_task` sees every attempt wherever it runs; the run-level hooks
//!   (`started`, `failed`, `completed`, `cancelled`) run on the coordinator.
//! - What a spread task reports reaches its run's task row as a local task's does: its
//!   worker keeps its attempt, progress and log entries (the last
//!   [`MAX_LOG`](crate::MAX_LOG), each cut at [`MAX_MESSAGE`] bytes) and writes them to
//!   its claim row, every progress-flush interval while they change ([`report_loop`],
//!   one statement for every task running there, fenced per claim as the heartbeat
//!   is), and with its end (the log written just before it ended is in the row with
//!   the end). The coordinator's collector reads, in the same statements that find the
//!   ends, the claim rows whose claim or report number changed
//!   ([`TaskQueue::changes`](crate::store::TaskQueue::changes)) and records them in the
//!   run's task rows: running with its attempt once an attempt waits (as a local
//!   task's start is recorded: one that ends in its first poll is not shown running,
//!   and costs its coordinator nothing before its end), its progress, and its new log
//!   entries with their timestamps. A separate statement,
//!   not the heartbeat: the heartbeat runs every third of the lease, too seldom for
//!   progress, and its statement stays as it is. The claim row does not name the
//!   worker in the run's task row (the task row has no field for it); the claim row's
//!   `owner` does.
//! - A worker that shuts down cleanly gives its unfinished claims up after its drain,
//!   in one statement ([`release`]): another worker claims them at once instead of
//!   after their lease; their attempt numbers keep growing, and a released claim whose
//!   run asked for a cancel ends cancelled.
//!
//! - A spread task's child processes are launched by the runtime of the worker running
//!   it, into the shared store (same ids, parent, root and depth as a local task's
//!   children): that worker coordinates them, a task that runs again (a retry, or
//!   elsewhere after a takeover) finds them by id, a child launched meanwhile by another
//!   worker is attached to, and cancelling the run cancels them through the task.
//!   A task's own `ctx.cancel()` (e.g. after a cancelled child) cancels what runs here at
//!   once and asks its run to stop when the task ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::BoxError;
use crate::exec::{Dispatch, Dispatched, RemoteRun};
use crate::graph::Graph;
use crate::journal::RunJournal;
use crate::record::{now_ms, Level, LogEntry, Progress, MAX_LOG};
use crate::store::{
    ClaimReport, ClaimedTask, TaskClaim, TaskEnd, TaskNews, TaskOffer, TaskWake, WatchedTask,
};
use crate::task::ctx::{Reporter, RuntimeHandle};

use super::children::ChildSpawner;
use super::{Inner, Runtime};

/// Tasks claimed per statement.
const CLAIM_BATCH: usize = 64;
/// Spread tasks running here at most, unless configured.
pub(super) const DEFAULT_CAPACITY: usize = 256;
/// Offers written per statement.
const OFFER_BATCH: usize = 512;
/// Task ends written per statement.
const FINISH_BATCH: usize = 256;
/// Times a statement writing task ends is run before its tasks are given up (their
/// claims expire and they run again); also the tries of a run's cancel mark after an
/// offer (see [`mark_cancelled_again`]).
const FINISH_TRIES: u32 = 4;
/// The pause before the next try of a statement writing task ends (or a cancel mark),
/// times the tries.
const FINISH_RETRY: Duration = Duration::from_millis(50);
/// Rebuilt graphs kept.
const CACHE_RUNS: usize = 64;
/// How often the loops poll when no notification wakes them.
const POLL: Duration = Duration::from_millis(200);

/// What the task-spreading machinery of this worker did (see
/// [`Runtime::task_stats`](super::Runtime::task_stats)).
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::in_memory().start().await?;
/// assert_eq!(rt.task_stats().fenced, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskStats {
    /// Tasks this worker claimed.
    pub claimed: u64,
    /// Tasks this worker finished and whose end was stored.
    pub finished: u64,
    /// Task ends this worker had, refused because another worker had claimed the task
    /// since (fenced out: the result was dropped).
    pub fenced: u64,
    /// Task claims whose renewal was refused (another worker claimed the task): their
    /// futures were stopped before they ended.
    pub refused: u64,
    /// Tasks offered by the runs this worker coordinates. A node whose waiting row the
    /// cascade made ready is not offered by its run's first coordinator (it is claimed
    /// from that row); a resumed or taken-over run offers every node it runs.
    pub offered: u64,
}

/// A task running here for its run's coordinator.
struct Held {
    claim: TaskClaim,
    /// Stops the task's future (its renewal was refused).
    abort: CancellationToken,
    /// Its run's rebuilt graph, once built.
    remote: Option<Arc<RemoteRun>>,
    /// What it reported (attempt, progress, log), for its claim row.
    report: Reported,
}

/// Longest progress message or log entry written to a claim row (longer ones are cut
/// at a character boundary): a claim row stays small whatever a task writes.
const MAX_MESSAGE: usize = 4096;

fn bounded(mut m: String) -> String {
    if m.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
    }
    m
}

/// What a task running here reported, kept until it is written to its claim row (by
/// [`report_loop`], and with its end).
#[derive(Default)]
struct Reported {
    attempt: u32,
    progress: Progress,
    /// The last [`MAX_LOG`] entries.
    log: std::collections::VecDeque<LogEntry>,
    /// Entries written since the claim (dropped ones included).
    logged: u64,
    /// The attempt or the progress changed since the last write.
    dirty: bool,
    /// The log changed since the last write.
    log_dirty: bool,
}

impl Reported {
    /// What is to be written, if anything changed (then marked written).
    fn take(&mut self) -> Option<ClaimReport> {
        if !self.dirty && !self.log_dirty {
            return None;
        }
        let log = self.log_dirty.then(|| self.log.iter().cloned().collect());
        self.dirty = false;
        self.log_dirty = false;
        Some(ClaimReport {
            attempt: self.attempt,
            progress: self.progress.clone(),
            log,
            logged: self.logged,
        })
    }

    /// `r` (taken by [`take`](Reported::take)) was not written: to be written again.
    fn untake(&mut self, r: &ClaimReport) {
        self.dirty = true;
        self.log_dirty |= r.log.is_some();
    }
}

/// The [`Reporter`] of the tasks of one run running here: keeps their progress and
/// log entries (bounded) in their [`Held`] entries, for their claim rows.
struct HeldReporter {
    spread: Weak<Spread>,
    run: String,
}

impl HeldReporter {
    fn with(&self, node: u32, f: impl FnOnce(&mut Reported)) {
        let Some(spread) = self.spread.upgrade() else {
            return;
        };
        let mut held = lock(&spread.held);
        if let Some(h) = held.get_mut(&(self.run.clone(), node)) {
            f(&mut h.report);
        }
    }
}

impl Reporter for HeldReporter {
    fn progress(&self, node: u32, percent: Option<f64>, message: &str) {
        self.with(node, |r| {
            r.progress.percent = percent;
            if !message.is_empty() {
                r.progress.message = Some(bounded(message.to_owned()));
            }
            r.dirty = true;
        });
    }

    fn log(&self, node: u32, level: Level, message: &str) {
        self.with(node, |r| {
            r.log.push_back(LogEntry {
                timestamp: now_ms(),
                level,
                message: bounded(message.to_owned()),
                data: None,
            });
            if r.log.len() > MAX_LOG {
                r.log.pop_front();
            }
            r.logged += 1;
            r.log_dirty = true;
        });
    }

    fn attempt(&self, node: u32, attempt: u32) {
        self.with(node, |r| {
            if r.attempt != attempt {
                r.attempt = attempt;
                r.dirty = true;
            }
        });
    }
}

/// A task end on its way to the store, with what its worker reported of it and not
/// written yet, and where to say whether it was stored (`Ok(false)`: fenced out).
type Finish = (
    TaskClaim,
    TaskEnd,
    Option<ClaimReport>,
    oneshot::Sender<Result<bool, String>>,
);

/// The task-spreading state of one runtime.
pub(super) struct Spread {
    /// Runs coordinated here, by id.
    coordinated: Mutex<HashMap<String, Arc<RunDispatch>>>,
    /// Tasks running here, by (run, node).
    held: Mutex<HashMap<(String, u32), Held>>,
    /// Rebuilt graphs, by run: (run token, graph).
    cache: Mutex<HashMap<String, (u64, Arc<RemoteRun>)>>,
    offers: mpsc::UnboundedSender<TaskOffer>,
    offers_rx: Mutex<Option<mpsc::UnboundedReceiver<TaskOffer>>>,
    finishes: mpsc::UnboundedSender<Finish>,
    finishes_rx: Mutex<Option<mpsc::UnboundedReceiver<Finish>>>,
    /// Wakes the claim loop (a task was offered or freed here).
    claim_wake: Notify,
    /// A claim may find ready rows: set by what makes rows ready (an offer written
    /// here, a notification that a finish or an offer left ready rows, a full claim),
    /// cleared when a claim statement starts. A task that ends here frees room but
    /// makes nothing ready for others: the claim loop it wakes runs no statement
    /// unless this is set (or its periodic full claim is due), so that a worker whose
    /// claims come back empty does not ask again after every task it finishes.
    maybe_ready: AtomicBool,
    /// Wakes the collector (a task ended).
    collect_wake: Notify,
    /// Spread tasks running here at most.
    capacity: usize,
    /// Places of `capacity` a claim statement in flight may fill (the claim loop's and
    /// the finishing statement's, which takes the tasks its successes made ready):
    /// counted with `held`, so that the two never claim more than the room together.
    reserved: AtomicUsize,
    /// Runs coordinated here cascade ([`RunDispatch::prepare`]).
    cascade: bool,
    /// Held while reports are taken and written, and while ends are written: a report
    /// taken before a task ended is written before its end (a report written after
    /// the end would be refused, and its log entries lost).
    report_gate: tokio::sync::Mutex<()>,
    claimed: AtomicU64,
    finished: AtomicU64,
    fenced: AtomicU64,
    refused: AtomicU64,
    offered: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Spread {
    pub(super) fn new(capacity: usize, cascade: bool) -> Arc<Spread> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ftx, frx) = mpsc::unbounded_channel();
        Arc::new(Spread {
            finishes: ftx,
            finishes_rx: Mutex::new(Some(frx)),
            coordinated: Mutex::default(),
            held: Mutex::default(),
            cache: Mutex::default(),
            offers: tx,
            offers_rx: Mutex::new(Some(rx)),
            claim_wake: Notify::new(),
            maybe_ready: AtomicBool::new(true),
            collect_wake: Notify::new(),
            capacity: capacity.max(1),
            reserved: AtomicUsize::new(0),
            cascade,
            report_gate: tokio::sync::Mutex::new(()),
            claimed: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            offered: AtomicU64::new(0),
        })
    }

    /// Reserves up to `want` places for tasks a statement about to run may claim: the
    /// room left by the tasks held here (less `ending` of them, which ended and whose
    /// ends the statement writes) and the places reserved already. Given back with
    /// [`unreserve`](Spread::unreserve) once the claimed tasks are held.
    fn reserve(&self, want: usize, ending: usize) -> usize {
        let held = lock(&self.held);
        let reserved = self.reserved.load(Ordering::Acquire);
        let room = self
            .capacity
            .saturating_sub(held.len().saturating_sub(ending) + reserved)
            .min(want);
        self.reserved.fetch_add(room, Ordering::AcqRel);
        room
    }

    fn unreserve(&self, n: usize) {
        let _held = lock(&self.held);
        self.reserved.fetch_sub(n, Ordering::AcqRel);
    }

    pub(super) fn stats(&self) -> TaskStats {
        TaskStats {
            claimed: self.claimed.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            offered: self.offered.load(Ordering::Relaxed),
        }
    }

    /// Wakes the loops a notification is for (or both, the connection was restored).
    fn wake(&self, what: TaskWake) {
        if what.ready {
            self.maybe_ready.store(true, Ordering::Release);
            self.claim_wake.notify_one();
        }
        if what.ended {
            self.collect_wake.notify_one();
        }
    }

    /// The claims running here, for the heartbeat.
    pub(super) fn held_claims(&self) -> Vec<TaskClaim> {
        lock(&self.held).values().map(|h| h.claim.clone()).collect()
    }

    /// Stops the futures of claims whose renewal was refused.
    pub(super) fn refused(&self, worker: &str, refused: &[(String, u32)]) {
        let held = lock(&self.held);
        for key in refused {
            if let Some(h) = held.get(key) {
                if !h.abort.is_cancelled() {
                    tracing::warn!(run = %key.0, node = key.1, worker = %worker, token = h.claim.token, "the task's claim was taken by another worker (this worker paused or lost the database past its lease): stopping it here, its result would be fenced out");
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    h.abort.cancel();
                }
            }
        }
    }

    /// Cancels the tasks whose run asked them to stop.
    pub(super) fn cancel(&self, worker: &str, cancel: &[(String, u32)]) {
        let held = lock(&self.held);
        for key in cancel {
            if let Some(h) = held.get(key) {
                tracing::info!(run = %key.0, node = key.1, worker = %worker, "cancel of a spread task requested by its run");
                if let Some(r) = &h.remote {
                    r.cancel();
                }
            }
        }
    }

    /// Waits until no spread task runs here, or `deadline`; then stops what still runs
    /// and returns its claims (to [`release`]).
    pub(super) async fn drain(&self, deadline: tokio::time::Instant) -> Vec<TaskClaim> {
        while !lock(&self.held).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let held = lock(&self.held);
        for h in held.values() {
            h.abort.cancel();
        }
        held.values().map(|h| h.claim.clone()).collect()
    }

    /// Stops every task running here (self-fencing: no heartbeat reached the database
    /// for nearly the lease time).
    pub(super) fn abort_all(&self) {
        for h in lock(&self.held).values() {
            if !h.abort.is_cancelled() {
                self.refused.fetch_add(1, Ordering::Relaxed);
                h.abort.cancel();
            }
        }
    }
}

/// The dispatch of one run coordinated here: offers its ready nodes and waits for
/// their ends, which the collector hands over.
pub(super) struct RunDispatch {
    spread: Arc<Spread>,
    run: String,
    run_token: u64,
    process_type: String,
    /// Per node: attempts per claim, and the hard deadline of a claim in ms.
    limits: Box<[(u32, Option<u64>)]>,
    waiting: Mutex<HashMap<u32, Waiting>>,
    /// Nodes whose offers are written: only their ends are collected. A task made ready
    /// by a cascade (or one that ended before a takeover) may end before its offer is
    /// written; collected then, the run could end and delete its rows before the offer
    /// is written, which would make the task claimable again.
    offered: Mutex<std::collections::HashSet<u32>>,
    /// Nodes whose offers are written and which the collector has not looked at since:
    /// it reads their rows once by name ([`TaskQueue::watch`]: an end written before
    /// then, as a cascaded task's or one found after a takeover), then only what
    /// changed ([`TaskQueue::changes`]).
    ///
    /// [`TaskQueue::watch`]: crate::store::TaskQueue::watch
    /// [`TaskQueue::changes`]: crate::store::TaskQueue::changes
    fresh: Mutex<std::collections::HashSet<u32>>,
    /// The run's cancel: a node the executor starts after it is not offered.
    cancel: CancellationToken,
    /// Per node: its dependencies, each once.
    deps: PerNode,
    /// Per node: the dependents whose waiting rows its successful finish counts down;
    /// set by [`prepare`](RunDispatch::prepare) when the run cascades.
    cascade: std::sync::OnceLock<PerNode>,
    /// This worker is the run's first coordinator (a fresh launch, not a resumed or
    /// taken-over run): every waiting row of the run was written here, before the
    /// offers of its dependencies, so their successful finishes counted it down.
    first: bool,
    /// Per node: it has a waiting row the cascade makes ready (set with `cascade`, on
    /// the first coordinator only).
    cascaded: std::sync::OnceLock<Box<[bool]>>,
    /// Nodes whose task the collector found succeeded.
    succeeded: Mutex<std::collections::HashSet<u32>>,
    /// The run's task rows, where the collector records what the workers running its
    /// tasks report (their start, attempt, progress and log) as a local task's.
    journal: Option<Arc<RunJournal>>,
}

/// A task offered by a run coordinated here, not ended yet: where to hand its end,
/// and what of it the collector saw and recorded.
struct Waiting {
    tx: oneshot::Sender<Dispatched>,
    /// Its claim token and report number last seen.
    token: u64,
    seq: u64,
    /// Its attempt recorded running (0: none yet).
    attempt: u32,
    /// Its progress recorded.
    progress: Progress,
    /// Log entries of its current claim recorded.
    logged: u64,
}

/// The hard deadline of one claim of a task: every attempt's timeout, every backoff
/// between them, the cancellation grace and one lease; `None` for a task without a
/// timeout (only its lease then: a live worker keeps it).
fn deadline(meta: &crate::task::TaskMeta, grace: Duration, lease: Duration) -> Option<u64> {
    let p = &meta.policy;
    let t = p.timeout?;
    let n = p.max_attempts.max(1);
    let backoff: Duration = (1..n).map(|a| p.backoff.delay(a)).sum();
    let total = t.saturating_mul(n) + backoff + grace + lease;
    Some(u64::try_from(total.as_millis()).unwrap_or(u64::MAX))
}

impl RunDispatch {
    /// The dispatch of run `run` (token `run_token`) of `graph`, registered with the
    /// collector until [`unregister`](RunDispatch::unregister); what the workers report
    /// of its tasks goes to `journal`. `first`: this worker launched the run (it is not
    /// resumed nor taken over), so nothing of it was offered before.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn register(
        spread: &Arc<Spread>,
        run: &str,
        run_token: u64,
        graph: &Graph,
        grace: Duration,
        lease: Duration,
        cancel: CancellationToken,
        journal: Option<Arc<RunJournal>>,
        first: bool,
    ) -> Arc<RunDispatch> {
        let d = Arc::new(RunDispatch {
            spread: spread.clone(),
            run: run.to_owned(),
            run_token,
            process_type: graph.name().to_owned(),
            limits: graph
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.meta.policy.max_attempts.max(1),
                        deadline(n.meta, grace, lease),
                    )
                })
                .collect(),
            waiting: Mutex::default(),
            offered: Mutex::default(),
            fresh: Mutex::default(),
            cancel,
            deps: graph
                .nodes
                .iter()
                .map(|n| {
                    let mut d = n.deps(&graph.far).to_vec();
                    d.sort_unstable();
                    d.dedup();
                    d.into_boxed_slice()
                })
                .collect(),
            cascade: std::sync::OnceLock::new(),
            first,
            cascaded: std::sync::OnceLock::new(),
            succeeded: Mutex::default(),
            journal,
        });
        lock(&spread.coordinated).insert(run.to_owned(), d.clone());
        d
    }

    /// Records what changed of task `node` (`news`, from [`TaskQueue::watch`]) in the
    /// run's task row, as a local task's start, attempts, progress and log are; hands
    /// its end to the executor once it ended.
    ///
    /// [`TaskQueue::watch`]: crate::store::TaskQueue::watch
    fn apply(&self, news: TaskNews) {
        let mut waiting = lock(&self.waiting);
        let Some(w) = waiting.get_mut(&news.node) else {
            return;
        };
        if news.token != w.token {
            // Claimed (again): its log starts anew with this claim.
            w.token = news.token;
            w.logged = 0;
        }
        w.seq = news.seq;
        let node = news.node;
        let r = news.report;
        if let Some(j) = &self.journal {
            if news.end.is_none() && r.attempt > w.attempt {
                // Running, on the worker `news.owner` (its attempt from the claim on).
                w.attempt = r.attempt;
                j.started(node, r.attempt, Duration::ZERO);
            }
            if r.progress != w.progress && r.progress != Progress::default() {
                j.progress(
                    node,
                    r.progress.percent,
                    r.progress.message.as_deref().unwrap_or(""),
                );
                w.progress = r.progress;
            }
            if let Some(log) = r.log {
                let new = r.logged.saturating_sub(w.logged);
                let skip = log
                    .len()
                    .saturating_sub(usize::try_from(new).unwrap_or(usize::MAX));
                for e in log.into_iter().skip(skip) {
                    j.log_entry(node, e);
                }
                w.logged = r.logged;
            }
        }
        let Some(end) = news.end else {
            return;
        };
        let Some(w) = waiting.remove(&node) else {
            return;
        };
        drop(waiting);
        lock(&self.offered).remove(&node);
        if end.outcome.is_ok() {
            lock(&self.succeeded).insert(node);
        }
        let outcome = end
            .outcome
            .map_err(|chain| BoxError::from(Box::new(RemoteTaskError::from_chain(&chain))));
        let _ = w.tx.send(Dispatched {
            attempts: end.attempts,
            outcome,
        });
    }

    pub(super) fn unregister(&self) {
        let mut c = lock(&self.spread.coordinated);
        if c.get(&self.run)
            .is_some_and(|d| d.run_token == self.run_token)
        {
            c.remove(&self.run);
        }
    }
}

/// Per node, the nodes it lists (its dependents, or its dependencies).
type PerNode = Box<[Box<[u32]>]>;

impl RunDispatch {
    /// Whether the cascade made `node` ready, so that its offer is not needed: on the
    /// run's first coordinator only (a run resumed or taken over cannot know which
    /// waiting rows were written before the ends of their dependencies), for a node
    /// with a waiting row whose every dependency the collector found succeeded (each
    /// such finish counted the row down in its statement; a failed, skipped or
    /// tolerated dependency leaves the node to its offer). A run whose cancel came
    /// meanwhile does not cascade, but its cancel marks the waiting row, which ends the
    /// node cancelled.
    fn cascade_made_ready(&self, node: u32) -> bool {
        if !self.first
            || !self
                .cascaded
                .get()
                .and_then(|c| c.get(node as usize))
                .copied()
                .unwrap_or(false)
        {
            return false;
        }
        let Some(deps) = self.deps.get(node as usize) else {
            return false;
        };
        let ok = lock(&self.succeeded);
        deps.iter().all(|d| ok.contains(d))
    }

    /// The waiting rows of a run that cascades, and each node's dependents counted down
    /// by its successful finish: nodes that succeeded already (`done`) are left out, a
    /// waiting node counts the dependencies that did not. `None` when the run does not
    /// cascade (`limited`: the executor decides when its nodes start; or cancelled).
    fn cascade_plan(
        &self,
        done: &[bool],
        prior_attempts: &[u32],
        limited: bool,
    ) -> Option<(PerNode, Vec<TaskOffer>)> {
        if limited || !self.spread.cascade || self.cancel.is_cancelled() {
            return None;
        }
        let n = self.deps.len();
        let ok = |d: u32| done.get(d as usize).copied().unwrap_or(false);
        let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut pending = vec![0u32; n];
        for (j, deps) in self.deps.iter().enumerate() {
            if ok(j as u32) {
                continue;
            }
            for &d in deps.iter().filter(|&&d| !ok(d)) {
                if let Some(list) = dependents.get_mut(d as usize) {
                    list.push(j as u32);
                    pending[j] += 1;
                }
            }
        }
        let offers = (0..n)
            .filter(|&j| pending[j] > 0)
            .map(|j| {
                let (max_attempts, deadline_ms) = self.limits.get(j).copied().unwrap_or((1, None));
                TaskOffer {
                    run: self.run.clone(),
                    run_token: self.run_token,
                    node: j as u32,
                    process_type: self.process_type.clone(),
                    attempts: prior_attempts.get(j).copied().unwrap_or(0),
                    max_attempts,
                    deadline_ms,
                    pending_deps: pending[j],
                    dependents: dependents[j].clone(),
                }
            })
            .collect();
        Some((
            dependents.into_iter().map(Vec::into_boxed_slice).collect(),
            offers,
        ))
    }
}

impl Dispatch for RunDispatch {
    fn prepare(&self, done: &[bool], prior_attempts: &[u32], limited: bool) {
        let Some((dependents, waiting)) = self.cascade_plan(done, prior_attempts, limited) else {
            return;
        };
        if self.cascade.set(dependents).is_err() {
            return;
        }
        if self.first {
            let mut cascaded = vec![false; self.deps.len()];
            for w in &waiting {
                if let Some(c) = cascaded.get_mut(w.node as usize) {
                    *c = true;
                }
            }
            let _ = self.cascaded.set(cascaded.into_boxed_slice());
        }
        // Before any offer of the run, on the same channel: written no later than the
        // offers of their dependencies.
        for w in waiting {
            let _ = self.spread.offers.send(w);
        }
    }

    fn run(&self, node: u32, first: u32) -> futures::future::BoxFuture<'static, Dispatched> {
        if self.cancel.is_cancelled() {
            // Started as the cancel came (a worker released it): not offered, since
            // the run's rows may have been asked to cancel already.
            return Box::pin(std::future::ready(Dispatched {
                attempts: first,
                outcome: Err(BoxError::from(Box::new(RemoteTaskError::from_chain(&[])))),
            }));
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(
            node,
            Waiting {
                tx,
                token: 0,
                seq: 0,
                attempt: 0,
                progress: Progress::default(),
                logged: 0,
            },
        );
        if self.cascade_made_ready(node) {
            // Its waiting row was counted down to 0 by its dependencies' finishes: it
            // is claimable (or claimed, or ended) already and its offer would find
            // nothing to do. Only watched for its end.
            lock(&self.offered).insert(node);
            lock(&self.fresh).insert(node);
            self.spread.collect_wake.notify_one();
            return Box::pin(async move {
                rx.await.unwrap_or_else(|_| Dispatched {
                    attempts: first,
                    outcome: Err(BoxError::from(
                        "the runtime stopped before the spread task ended",
                    )),
                })
            });
        }
        let (max_attempts, deadline_ms) =
            self.limits.get(node as usize).copied().unwrap_or((1, None));
        self.spread.offered.fetch_add(1, Ordering::Relaxed);
        let _ = self.spread.offers.send(TaskOffer {
            run: self.run.clone(),
            run_token: self.run_token,
            node,
            process_type: self.process_type.clone(),
            attempts: first,
            max_attempts,
            deadline_ms,
            pending_deps: 0,
            dependents: self
                .cascade
                .get()
                .and_then(|c| c.get(node as usize))
                .map(|d| d.to_vec())
                .unwrap_or_default(),
        });
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| Dispatched {
                attempts: first,
                outcome: Err(BoxError::from(
                    "the runtime stopped before the spread task ended",
                )),
            })
        })
    }
}

/// A spread task failed on the worker that ran it: its error's messages, outermost
/// first (the sources follow as [`source`](std::error::Error::source)s).
///
/// # Examples
///
/// ```
/// use procession::RemoteTaskError;
/// // A hook or a report reader can tell a failure that happened on another worker.
/// fn on_another_worker(e: &(dyn std::error::Error + 'static)) -> bool {
///     e.is::<RemoteTaskError>()
/// }
/// assert!(!on_another_worker(&std::fmt::Error));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RemoteTaskError {
    message: String,
    #[source]
    source: Option<Box<RemoteTaskError>>,
}

impl RemoteTaskError {
    fn from_chain(chain: &[String]) -> RemoteTaskError {
        let mut err: Option<Box<RemoteTaskError>> = None;
        for m in chain.iter().rev() {
            err = Some(Box::new(RemoteTaskError {
                message: m.clone(),
                source: err,
            }));
        }
        err.map_or_else(
            || RemoteTaskError {
                message: "the task was cancelled before any worker started it".into(),
                source: None,
            },
            |b| *b,
        )
    }
}

/// Starts the loops of task spreading (offers, claims, collection, notifications).
pub(super) fn start(inner: &Arc<Inner>, spread: &Arc<Spread>) {
    let rx = lock(&spread.offers_rx).take();
    if let Some(rx) = rx {
        tokio::spawn(offer_loop(Arc::downgrade(inner), rx));
    }
    let rx = lock(&spread.finishes_rx).take();
    if let Some(rx) = rx {
        tokio::spawn(finish_loop(Arc::downgrade(inner), rx));
    }
    tokio::spawn(claim_loop(Arc::downgrade(inner)));
    tokio::spawn(collect_loop(Arc::downgrade(inner)));
    tokio::spawn(report_loop(Arc::downgrade(inner), inner.progress_flush));
    let stop = Arc::new(AtomicBool::new(false));
    let weak = Arc::downgrade(spread);
    let wake: Arc<dyn Fn(TaskWake) + Send + Sync> = Arc::new(move |what| {
        if let Some(s) = weak.upgrade() {
            s.wake(what);
        }
    });
    if let Ok(store) = inner.store() {
        if let Some(q) = store.task_queue() {
            if let Err(e) = q.listen(wake, stop.clone()) {
                tracing::warn!(error = %e, "cannot start the task listener: polling only");
            }
        }
    }
    let loops = inner.stop_loops.clone();
    tokio::spawn(async move {
        loops.cancelled().await;
        stop.store(true, Ordering::Release);
    });
}

fn spread_of(inner: &Inner) -> Option<Arc<Spread>> {
    inner.spread.clone()
}

/// Writes the offers of the runs coordinated here, in batches.
async fn offer_loop(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<TaskOffer>) {
    let mut batch = Vec::with_capacity(OFFER_BATCH);
    loop {
        if batch.is_empty() && rx.recv_many(&mut batch, OFFER_BATCH).await == 0 {
            return;
        }
        let Some(i) = inner.upgrade() else { return };
        let sent = batch.clone();
        let out = i
            .read(move |s| match s.task_queue() {
                Some(q) => q.offer(&sent),
                None => Ok(()),
            })
            .await;
        match out {
            Ok(()) => {
                let cancelled = spread_of(&i).map(|s| written(&s, &batch));
                batch.clear();
                for (run, token) in cancelled.into_iter().flatten() {
                    // Offered as (or after) its run's cancel marked its rows: marked
                    // again, or the row would be claimed and run with no cancel to come.
                    mark_cancelled_again(&i, &run, token).await;
                }
                if let Some(s) = spread_of(&i) {
                    s.maybe_ready.store(true, Ordering::Release);
                    s.claim_wake.notify_one();
                    // A node offered after its task was made ready by a cascade may
                    // have ended already: no notification comes for it any more.
                    s.collect_wake.notify_one();
                }
            }
            Err(super::Error::ShuttingDown) => return,
            Err(e) => {
                // Kept and offered again (an offer is an upsert that keeps what is there).
                tracing::warn!(error = %e, offers = batch.len(), "cannot offer tasks; trying again");
                drop(i);
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// Marks the rows of run `run` (token `token`) cancelled again, after an offer written
/// once its cancel had come; given up, a row offered ready stays claimable with no
/// cancel to come, and its coordinator waits for its end until its cancellation grace
/// runs out (hence [`tried`]).
async fn mark_cancelled_again(inner: &Inner, run: &str, token: u64) {
    let what = format!("cannot ask the spread tasks of run {run} to cancel");
    let out = tried(&what, || {
        let r = run.to_owned();
        inner.read(move |s| match s.task_queue() {
            Some(q) => q.cancel(&r, token),
            None => Ok(()),
        })
    })
    .await;
    match out {
        Ok(()) | Err(super::Error::ShuttingDown) => {}
        Err(e) => {
            tracing::warn!(run = %run, error = %e, "cannot ask the run's spread tasks to cancel");
        }
    }
}

/// Runs a statement writing task ends (or a cancel mark) up to [`FINISH_TRIES`] times,
/// pausing [`FINISH_RETRY`] times the tries between them, until it succeeds or the
/// runtime shuts down: a deadlock victim or a broken connection is tried again (`what`
/// says what failed, in the log).
async fn tried<T, F, Fut>(what: &str, mut call: F) -> Result<T, super::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, super::Error>>,
{
    let mut tries: u32 = 0;
    loop {
        tries += 1;
        match call().await {
            Err(e) if tries < FINISH_TRIES && !matches!(e, super::Error::ShuttingDown) => {
                tracing::warn!(error = %e, tries, "{what}; trying again");
                tokio::time::sleep(FINISH_RETRY * tries).await;
            }
            out => return out,
        }
    }
}

/// Marks the offers of `batch` (not its waiting rows) as written, for the collector;
/// returns the runs of `batch` (id, run token) whose cancel has come: checked after the
/// write, so that a cancel coming later marks the rows written here itself.
fn written(spread: &Spread, batch: &[TaskOffer]) -> Vec<(String, u64)> {
    let coordinated = lock(&spread.coordinated);
    let mut cancelled: Vec<(String, u64)> = Vec::new();
    for o in batch {
        let Some(d) = coordinated
            .get(&o.run)
            .filter(|d| d.run_token == o.run_token)
        else {
            continue;
        };
        if o.pending_deps == 0 {
            lock(&d.offered).insert(o.node);
            lock(&d.fresh).insert(o.node);
        }
        if d.cancel.is_cancelled() && !cancelled.iter().any(|c| c.0 == o.run) {
            cancelled.push((o.run.clone(), o.run_token));
        }
    }
    cancelled
}

/// Claims offered tasks of the process types registered here and runs them.
async fn claim_loop(inner: Weak<Inner>) {
    let mut types: Vec<&'static str> = match inner.upgrade() {
        Some(i) => i.registry.keys().copied().collect(),
        None => return,
    };
    types.sort_unstable();
    // Expired and overdue claims are looked for at most every `POLL` (the claims in
    // between read only the ready rows, not past the running ones).
    let mut full_at: Option<tokio::time::Instant> = None;
    loop {
        let (spread, stop) = match inner.upgrade() {
            Some(i) => match spread_of(&i) {
                Some(s) => (s, i.stop_loops.clone()),
                None => return,
            },
            None => return,
        };
        // Expired and overdue claims are looked for at most every `POLL`, ready rows
        // when a claim may find some (`maybe_ready`) or with the full claim.
        let full = full_at.is_none_or(|t| t.elapsed() >= POLL);
        let worth = full || spread.maybe_ready.load(Ordering::Acquire);
        let limit = if worth {
            spread.reserve(CLAIM_BATCH, 0)
        } else {
            0
        };
        if limit > 0 {
            let Some(i) = inner.upgrade() else {
                spread.unreserve(limit);
                return;
            };
            if i.shutting_down.load(Ordering::Acquire) {
                spread.unreserve(limit);
                return;
            }
            let (worker, ttl, types2) = (i.worker.clone(), i.lease_ms, types.clone());
            if full {
                full_at = Some(tokio::time::Instant::now());
            }
            // Cleared before the statement: rows made ready while it runs set it again.
            spread.maybe_ready.store(false, Ordering::Release);
            match i
                .read(move |s| match s.task_queue() {
                    Some(q) if full => q.claim(&worker, &types2, ttl, limit),
                    Some(q) => q.claim_ready(&worker, &types2, ttl, limit),
                    None => Ok(Vec::new()),
                })
                .await
            {
                Ok(claimed) => {
                    let got = claimed.len();
                    start_claimed(&i, &spread, claimed, limit).await;
                    if got == limit {
                        // A full batch: there may be more.
                        spread.maybe_ready.store(true, Ordering::Release);
                        continue;
                    }
                }
                Err(super::Error::ShuttingDown) => {
                    spread.unreserve(limit);
                    return;
                }
                Err(e) => {
                    spread.unreserve(limit);
                    spread.maybe_ready.store(true, Ordering::Release);
                    tracing::warn!(error = %e, "task claim failed");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = spread.claim_wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Runs the tasks just claimed here (by a claim, or handed over by a finish) and gives
/// back the `reserved` places their statement had ([`Spread::reserve`]) once they are
/// held.
async fn start_claimed(
    inner: &Arc<Inner>,
    spread: &Arc<Spread>,
    claimed: Vec<ClaimedTask>,
    reserved: usize,
) {
    spread
        .claimed
        .fetch_add(claimed.len() as u64, Ordering::Relaxed);
    prefetch(inner, spread, &claimed).await;
    for c in claimed {
        start_task(inner, spread, c);
    }
    spread.unreserve(reserved);
}

/// Rebuilds (or finds cached) the graphs of the runs of `claimed` and reads the
/// results their tasks need, one statement per run: the tasks of a batch do not each
/// read their inputs (a wide run's tasks all read the same one).
async fn prefetch(inner: &Arc<Inner>, spread: &Arc<Spread>, claimed: &[ClaimedTask]) {
    let mut by_run: HashMap<(&str, u64), Vec<&ClaimedTask>> = HashMap::new();
    for c in claimed {
        by_run
            .entry((c.claim.run.as_str(), c.claim.run_token))
            .or_default()
            .push(c);
    }
    for ((run, token), tasks) in by_run {
        // A run whose graph cannot be built here: each of its tasks says why.
        let Ok(remote) = remote_run(inner, spread, tasks[0]).await else {
            continue;
        };
        let mut need: Vec<u32> = tasks
            .iter()
            .flat_map(|c| remote.missing(remote.deps(c.claim.node)))
            .collect();
        need.sort_unstable();
        need.dedup();
        if need.is_empty() {
            continue;
        }
        let run2 = run.to_owned();
        match inner
            .read(move |s| match s.task_queue() {
                Some(q) => q.results(&run2, token, &need),
                None => Ok(Vec::new()),
            })
            .await
        {
            Ok(got) => {
                for (d, json) in got {
                    remote.fill(d, json);
                }
            }
            // Each task reads its own then.
            Err(e) => tracing::debug!(run = %run, error = %e, "cannot read a batch's inputs"),
        }
    }
}

/// Registers claimed task `c` as held here and runs it on a tokio task of its own.
fn start_task(inner: &Arc<Inner>, spread: &Arc<Spread>, c: ClaimedTask) {
    let abort = CancellationToken::new();
    let key = (c.claim.run.clone(), c.claim.node);
    // Held (renewed by the heartbeat, counted against the capacity) from now on.
    lock(&spread.held).insert(
        key.clone(),
        Held {
            claim: c.claim.clone(),
            abort: abort.clone(),
            remote: None,
            // Its first report is the start of an attempt that waits: a task that
            // ends at once is not shown running, as a local one.
            report: Reported::default(),
        },
    );
    let inner = inner.clone();
    let spread = spread.clone();
    tokio::spawn(async move {
        let out = run_claimed(&inner, &spread, &c, &abort).await;
        // Held (and renewed) until its end is stored: a shutdown waits for that.
        let release = |spread: &Spread| {
            lock(&spread.held).remove(&key);
            spread.claim_wake.notify_one();
        };
        let Some(end) = out else {
            release(&spread);
            return;
        };
        pass_on_cancel(&inner, &spread, &key).await;
        // What it reported and was not written yet goes with its end.
        let report = lock(&spread.held)
            .get_mut(&key)
            .and_then(|h| h.report.take());
        let (tx, rx) = oneshot::channel();
        let _ = spread.finishes.send((c.claim.clone(), end, report, tx));
        let finished = rx
            .await
            .unwrap_or_else(|_| Err("the runtime stopped".to_owned()));
        if matches!(finished, Ok(true)) {
            // Its result is the stored one: dependents claimed here may read it.
            if let Some(r) = lock(&spread.held).get(&key).and_then(|h| h.remote.clone()) {
                r.mark_stored(c.claim.node);
            }
        }
        release(&spread);
        match finished {
            Ok(true) => {
                spread.finished.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                spread.fenced.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(run = %c.claim.run, node = c.claim.node, token = c.claim.token, worker = %inner.worker, "task result fenced out: another worker claimed the task since; the result is dropped");
            }
            Err(e) => {
                tracing::warn!(run = %c.claim.run, node = c.claim.node, error = %e, "cannot finish a spread task: its claim expires and another worker runs it again");
            }
        }
    });
}

/// A task that cancelled its own run (`ctx.cancel()`, e.g. after a cancelled child
/// without `survive_cancel`) cancelled only what runs here: its run is asked to stop, as
/// a local task's `ctx.cancel()` does, once the task ended.
async fn pass_on_cancel(inner: &Arc<Inner>, spread: &Spread, key: &(String, u32)) {
    let remote = lock(&spread.held).get(key).and_then(|h| h.remote.clone());
    if !remote.is_some_and(|r| r.cancelled_by_a_task()) {
        return;
    }
    tracing::info!(run = %key.0, node = key.1, worker = %inner.worker, "a spread task cancelled its run: the run is asked to stop");
    let rt = Runtime {
        inner: inner.clone(),
    };
    if let Err(e) = rt.cancel(&key.0).await {
        tracing::warn!(run = %key.0, node = key.1, error = %e, "cannot pass a spread task's cancel on to its run");
    }
}

/// Writes the ends of the tasks run here, in batches (one statement, fenced per task),
/// and runs the tasks the statement handed over (waiting tasks its successes made
/// ready, claimed for this worker in the same write, as many as there is room for:
/// [`TaskQueue::finish_and_claim`](crate::store::TaskQueue::finish_and_claim)).
async fn finish_loop(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Finish>) {
    let mut batch = Vec::with_capacity(FINISH_BATCH);
    let mut types: Vec<&'static str> = match inner.upgrade() {
        Some(i) => i.registry.keys().copied().collect(),
        None => return,
    };
    types.sort_unstable();
    loop {
        if rx.recv_many(&mut batch, FINISH_BATCH).await == 0 {
            return;
        }
        let Some(i) = inner.upgrade() else { return };
        let mut reports = Vec::new();
        let (ends, replies): (Vec<(TaskClaim, TaskEnd)>, Vec<_>) = batch
            .drain(..)
            .map(|(c, e, r, tx)| {
                if let Some(r) = r {
                    reports.push((c.clone(), r));
                }
                ((c, e), tx)
            })
            .unzip();
        let (worker, ttl, types2) = (i.worker.clone(), i.lease_ms, types.clone());
        let spread = spread_of(&i);
        let _gate = match &spread {
            Some(sp) => Some(sp.report_gate.lock().await),
            None => None,
        };
        // As many as there is room for, up to the dependents of its successes (a
        // layer's dependents made ready together come here, not through claims; a
        // finish that can make nothing ready takes no room from the claim loop); none
        // while the worker drains: it takes no new task.
        let room = match &spread {
            Some(sp) if !i.shutting_down.load(Ordering::Acquire) => {
                let want: usize = {
                    let held = lock(&sp.held);
                    ends.iter()
                        .filter(|(_, e)| e.outcome.is_ok())
                        .filter_map(|(c, _)| {
                            let r = held.get(&(c.run.clone(), c.node))?.remote.as_ref()?;
                            Some(r.dependents(c.node))
                        })
                        .sum()
                };
                if want == 0 {
                    0
                } else {
                    sp.reserve(want, ends.len())
                }
            }
            _ => 0,
        };
        let keys: Vec<(String, u32)> = ends.iter().map(|(c, _)| (c.run.clone(), c.node)).collect();
        let (ends, reports) = (Arc::new(ends), Arc::new(reports));
        // Tried again (see `tried`): a task given up here is claimed again only once its
        // claim expires, and one its run asked to cancel never (its coordinator waits for
        // its end until its grace runs out). A repeat of a statement whose answer was lost
        // finds its own ends (see `TaskQueue::finish_and_claim`).
        let out = tried("cannot write the ends of spread tasks", || {
            let (worker, types2, ends, reports) = (
                worker.clone(),
                types2.clone(),
                ends.clone(),
                reports.clone(),
            );
            i.read(move |s| match s.task_queue() {
                Some(q) => {
                    // Their last reports first (fenced as the ends are): the log a task
                    // wrote just before it ended is in its row with its end.
                    if let Err(e) = q.report(&worker, &reports) {
                        tracing::debug!(error = %e, "cannot write the last reports of spread tasks");
                    }
                    q.finish_and_claim(&ends, &worker, &types2, ttl, room)
                }
                None => Ok((vec![false; ends.len()], Vec::new())),
            })
        })
        .await;
        match out {
            Ok((stored, claimed)) => {
                if let Some(sp) = &spread {
                    // Their results are the stored ones before a task handed over
                    // here reads them: it runs on the same rebuilt graph.
                    let held = lock(&sp.held);
                    for (key, _) in keys.iter().zip(&stored).filter(|(_, ok)| **ok) {
                        if let Some(r) = held.get(key).and_then(|h| h.remote.as_ref()) {
                            r.mark_stored(key.1);
                        }
                    }
                }
                for (tx, ok) in replies.into_iter().zip(stored) {
                    let _ = tx.send(Ok(ok));
                }
                match &spread {
                    Some(sp) if !claimed.is_empty() => {
                        let (i2, sp2) = (i.clone(), sp.clone());
                        tokio::spawn(async move {
                            start_claimed(&i2, &sp2, claimed, room).await;
                        });
                    }
                    Some(sp) => sp.unreserve(room),
                    None => {}
                }
                if let Some(sp) = &spread {
                    // The runs coordinated here need no notification's round trip
                    // through the listener; a cascade may have made tasks ready.
                    sp.collect_wake.notify_one();
                    sp.claim_wake.notify_one();
                }
            }
            Err(e) => {
                if let Some(sp) = &spread {
                    sp.unreserve(room);
                }
                let msg = e.to_string();
                for tx in replies {
                    let _ = tx.send(Err(msg.clone()));
                }
            }
        }
    }
}

/// Runs claimed task `c` (its graph rebuilt or cached, its inputs read); `None` when its
/// claim was lost meanwhile (nothing is to be written).
async fn run_claimed(
    inner: &Arc<Inner>,
    spread: &Arc<Spread>,
    c: &ClaimedTask,
    abort: &CancellationToken,
) -> Option<TaskEnd> {
    let failed = |attempts: u32, msg: String| TaskEnd {
        attempts,
        elapsed_ns: 0,
        outcome: Err(vec![msg]),
    };
    let remote = match remote_run(inner, spread, c).await {
        Ok(r) => r,
        Err(Refusal::Fail(msg)) => {
            tracing::warn!(run = %c.claim.run, node = c.claim.node, "{msg}");
            return Some(failed(c.attempts, msg));
        }
        Err(Refusal::Retry(msg)) => {
            tracing::warn!(run = %c.claim.run, node = c.claim.node, "{msg}");
            return None;
        }
        Err(Refusal::Gone(msg)) => {
            // Left over by a run that ended without its coordinator (settled after a
            // takeover): nothing is to run; the rows go.
            tracing::info!(run = %c.claim.run, node = c.claim.node, "{msg}: its task rows are deleted");
            clear(inner, &c.claim.run, c.claim.run_token).await;
            return None;
        }
    };
    if let Some(h) = lock(&spread.held).get_mut(&(c.claim.run.clone(), c.claim.node)) {
        h.remote = Some(remote.clone());
    }
    // Results already read for another task of the run on this worker are kept in
    // the rebuilt graph: only the others are read.
    let deps = remote.missing(remote.deps(c.claim.node));
    let inputs = match inputs(inner, &c.claim, deps).await {
        Ok(v) => v,
        Err(e) => {
            // The claim expires and the task is claimed again (here or elsewhere).
            tracing::warn!(run = %c.claim.run, node = c.claim.node, error = %e, "cannot read a spread task's inputs");
            return None;
        }
    };
    let ran = tokio::select! {
        biased;
        () = abort.cancelled() => return None,
        r = remote.run(c.claim.node, c.attempts, inputs) => r,
    };
    let Some((attempts, elapsed, out)) = ran else {
        return Some(failed(
            c.attempts,
            format!(
                "node {} of run `{}` cannot run here: it is not in the rebuilt graph",
                c.claim.node, c.claim.run
            ),
        ));
    };
    Some(TaskEnd {
        attempts,
        elapsed_ns: u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        outcome: out.map_err(|e| crate::error::chain(&*e)),
    })
}

/// The stored results of `deps` (of a run of `claim`): from the task queue, and for
/// dependencies that ended before the run was spread (resumed runs), from the run's
/// task rows.
async fn inputs(
    inner: &Arc<Inner>,
    claim: &TaskClaim,
    deps: Vec<u32>,
) -> super::Result<Vec<(u32, Arc<str>)>> {
    if deps.is_empty() {
        return Ok(Vec::new());
    }
    let (run, token) = (claim.run.clone(), claim.run_token);
    inner
        .read(move |s| {
            let Some(q) = s.task_queue() else {
                return Ok(Vec::new());
            };
            let mut got = q.results(&run, token, &deps)?;
            if got.len() < deps.len() {
                // A dependency with no result here: failed (no result anywhere), or
                // finished before its run was taken over: its task row has it.
                let rows = s.tasks(&run)?;
                for (i, row) in rows {
                    if row.state == crate::record::State::Done
                        && deps.binary_search(&i).is_ok()
                        && !got.iter().any(|(n, _)| *n == i)
                    {
                        if let Some(json) = row.result {
                            got.push((i, json.into()));
                        }
                    }
                }
            }
            Ok(got)
        })
        .await
}

/// Why a claimed task cannot run here.
enum Refusal {
    /// Its run ended, or is another run of the record now: its rows are left over.
    Gone(String),
    /// The run could not be read: the claim expires and the task is claimed again.
    Retry(String),
    /// It can never run here: it ends failed.
    Fail(String),
}

/// The rebuilt graph of `c`'s run: cached, or built from the run's record.
async fn remote_run(
    inner: &Arc<Inner>,
    spread: &Arc<Spread>,
    c: &ClaimedTask,
) -> Result<Arc<RemoteRun>, Refusal> {
    let (run, token, node) = (&c.claim.run, c.claim.run_token, c.claim.node);
    if let Some((t, r)) = lock(&spread.cache).get(run) {
        if *t == token && r.can_run(node) {
            return Ok(r.clone());
        }
    }
    let rec = inner
        .get(run)
        .await
        .map_err(|e| {
            Refusal::Retry(format!(
                "cannot read run `{run}` to run its node {node}: {e}"
            ))
        })?
        .ok_or_else(|| Refusal::Gone(format!("run `{run}` of a spread task no longer exists")))?;
    if !rec.state().is_active() {
        return Err(Refusal::Gone(format!(
            "run `{run}` of a spread task has ended"
        )));
    }
    let meta = rec
        .run
        .as_ref()
        .filter(|m| m.token == token)
        .ok_or_else(|| {
            Refusal::Gone(format!(
                "run `{run}` is no longer the run (token {token}) that offered node {node}"
            ))
        })?;
    let reg = inner
        .registry
        .get(rec.process_type.as_str())
        .ok_or_else(|| {
            Refusal::Fail(format!(
                "process type `{}` is not registered on this worker",
                rec.process_type
            ))
        })?;
    let graph = (reg.build)(rec.params.clone(), meta.options.clone()).map_err(|e| {
        Refusal::Fail(format!(
            "the graph of run `{run}` could not be rebuilt here: {e}"
        ))
    })?;
    if !graph.matches_fingerprint(meta.fingerprint) {
        return Err(Refusal::Fail(format!(
            "the graph of `{}` on this worker differs from the run's (fingerprint {:016x}, here {:016x}): node {node} not run here",
            rec.process_type,
            meta.fingerprint,
            graph.fingerprint()
        )));
    }
    inner
        .check_resources(&graph)
        .map_err(|e| Refusal::Fail(e.to_string()))?;
    // This worker's hooks, in the order a local run of the process has them.
    let hooks = inner.run_hooks(reg.hooks.clone());
    let reporter: Arc<dyn Reporter> = Arc::new(HeldReporter {
        spread: Arc::downgrade(spread),
        run: run.clone(),
    });
    let remote = Arc::new(RemoteRun::new(
        graph,
        Arc::from(run.as_str()),
        Arc::from(inner.worker.as_str()),
        inner.resources.clone(),
        hooks,
        Some(reporter),
        // Its tasks' children are launched by this worker's runtime, into the shared
        // store, as a local task's are by its own.
        Some(RuntimeHandle(Arc::new(ChildSpawner {
            inner: Arc::downgrade(inner),
            parent: run.clone(),
        }))),
    ));
    let mut cache = lock(&spread.cache);
    if cache.len() >= CACHE_RUNS && !cache.contains_key(run) {
        if let Some(k) = cache.keys().next().cloned() {
            cache.remove(&k);
        }
    }
    cache.insert(run.clone(), (token, remote.clone()));
    Ok(remote)
}

/// Hands the ends of the tasks offered by the runs coordinated here to their
/// executors, and records what their workers report. Each pass reads the rows of the
/// newly offered tasks by name, and of the others only what changed since the last
/// pass ([`TaskQueue::changes`](crate::store::TaskQueue::changes)): a pass costs what
/// changed, not what the runs wait for.
async fn collect_loop(inner: Weak<Inner>) {
    // Where the next poll of changes starts (0: everything).
    let mut since = 0u64;
    loop {
        let (spread, stop) = match inner.upgrade() {
            Some(i) => match spread_of(&i) {
                Some(s) => (s, i.stop_loops.clone()),
                None => return,
            },
            None => return,
        };
        let mut runs: Vec<(String, u64)> = Vec::new();
        let mut fresh: Vec<WatchedTask> = Vec::new();
        for d in lock(&spread.coordinated).values() {
            let offered = lock(&d.offered);
            if offered.is_empty() {
                continue;
            }
            runs.push((d.run.clone(), d.run_token));
            let mut f = lock(&d.fresh);
            if f.is_empty() {
                continue;
            }
            let waiting = lock(&d.waiting);
            fresh.extend(f.drain().filter_map(|n| {
                waiting.get(&n).map(|w| WatchedTask {
                    run: d.run.clone(),
                    run_token: d.run_token,
                    node: n,
                    token: w.token,
                    seq: w.seq,
                })
            }));
        }
        if !runs.is_empty() {
            let Some(i) = inner.upgrade() else { return };
            let named = fresh.clone();
            let from = since;
            match i
                .read(move |s| match s.task_queue() {
                    Some(q) => {
                        let mut news = q.watch(&named)?;
                        let changed = q.changes(&runs, from)?;
                        news.extend(changed.news);
                        Ok((news, changed.since))
                    }
                    None => Ok((Vec::new(), from)),
                })
                .await
            {
                Ok((news, next)) => {
                    since = next;
                    let coordinated = lock(&spread.coordinated);
                    for n in news {
                        // Only the ends of offers written (a cascaded task's end read
                        // before its offer was written is read again by name then).
                        if let Some(d) = coordinated
                            .get(&n.run)
                            .filter(|d| lock(&d.offered).contains(&n.node))
                        {
                            d.apply(n);
                        }
                    }
                }
                Err(super::Error::ShuttingDown) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the spread tasks' news");
                    // Read by name again next time.
                    let coordinated = lock(&spread.coordinated);
                    for w in fresh {
                        if let Some(d) = coordinated
                            .get(&w.run)
                            .filter(|d| d.run_token == w.run_token)
                        {
                            lock(&d.fresh).insert(w.node);
                        }
                    }
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = spread.collect_wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Writes what the tasks running here reported (attempt, progress, log) to their claim
/// rows, every `every` while something changed: one statement for all of them.
async fn report_loop(inner: Weak<Inner>, every: Duration) {
    let every = every.max(Duration::from_millis(20));
    loop {
        let Some(i) = inner.upgrade() else { return };
        let stop = i.stop_loops.clone();
        let Some(spread) = spread_of(&i) else { return };
        let gate = spread.report_gate.lock().await;
        let reports: Vec<(TaskClaim, ClaimReport)> = lock(&spread.held)
            .values_mut()
            .filter_map(|h| h.report.take().map(|r| (h.claim.clone(), r)))
            .collect();
        if !reports.is_empty() {
            let worker = i.worker.clone();
            let sent = reports.clone();
            let out = i
                .read(move |s| match s.task_queue() {
                    Some(q) => q.report(&worker, &sent),
                    None => Ok(()),
                })
                .await;
            match out {
                Ok(()) => {}
                Err(super::Error::ShuttingDown) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot write the reports of spread tasks; trying again");
                    let mut held = lock(&spread.held);
                    for (c, r) in &reports {
                        if let Some(h) = held
                            .get_mut(&(c.run.clone(), c.node))
                            .filter(|h| h.claim.token == c.token)
                        {
                            h.report.untake(r);
                        }
                    }
                }
            }
        }
        drop(gate);
        drop((i, spread));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Gives up the claims a clean shutdown stopped (`claims`, from [`Spread::drain`]) in
/// one statement: another worker claims their tasks at once instead of after their
/// lease.
pub(super) async fn release(inner: &Inner, claims: Vec<TaskClaim>) {
    if claims.is_empty() {
        return;
    }
    let worker = inner.worker.clone();
    let n = claims.len();
    match inner
        .read(move |s| match s.task_queue() {
            Some(q) => q.release(&worker, &claims),
            None => Ok(0),
        })
        .await
    {
        Ok(released) => {
            tracing::info!(worker = %inner.worker, released, stopped = n, "gave up the claims of the spread tasks stopped by the shutdown: other workers claim them at once");
        }
        Err(e) => {
            tracing::warn!(worker = %inner.worker, error = %e, "cannot give up the claims of the spread tasks stopped by the shutdown: they are claimed again once they expire");
        }
    }
}

/// Asks the tasks of run `run` to cancel, once its token is cancelled; then the
/// coordinator's grace applies to them as to local tasks.
pub(super) async fn cancel_on(
    inner: Weak<Inner>,
    run: String,
    run_token: u64,
    cancel: CancellationToken,
    done: CancellationToken,
) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = done.cancelled() => return,
    }
    // Until it is written (or the run ended): a node the cascade made ready is not
    // offered, and its waiting row, left waiting by a finish that saw the cancel, ends
    // only with this mark.
    loop {
        let Some(i) = inner.upgrade() else { return };
        let r = run.clone();
        match i
            .read(move |s| match s.task_queue() {
                Some(q) => q.cancel(&r, run_token),
                None => Ok(()),
            })
            .await
        {
            Ok(()) | Err(super::Error::ShuttingDown) => return,
            Err(e) => {
                tracing::warn!(run = %run, error = %e, "cannot ask the run's spread tasks to cancel; trying again");
            }
        }
        drop(i);
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = done.cancelled() => return,
        }
    }
}

/// Deletes the task rows of run `run`, which ended.
pub(super) async fn clear(inner: &Inner, run: &str, run_token: u64) {
    let r = run.to_owned();
    if let Err(e) = inner
        .read(move |s| match s.task_queue() {
            Some(q) => q.clear(&r, run_token),
            None => Ok(()),
        })
        .await
    {
        tracing::warn!(run = %run, error = %e, "cannot delete the ended run's task rows");
    }
}

#[cfg(test)]
mod tests {
    use super::RemoteTaskError;

    #[test]
    fn a_remote_error_keeps_its_messages_as_a_source_chain() {
        let e = RemoteTaskError::from_chain(&["outer".into(), "middle".into(), "inner".into()]);
        assert_eq!(
            crate::error::chain(&e),
            vec!["outer".to_owned(), "middle".into(), "inner".into()]
        );
        let none = RemoteTaskError::from_chain(&[]);
        assert!(none.to_string().contains("cancelled before any worker"));
        assert!(std::error::Error::source(&none).is_none());
    }
}
