//! The in-memory executor (the exec layer, above `graph` and `journal`; never `store`):
//! runs a [`Graph`] on tokio.
//!
//! A node starts as soon as its own dependencies have ended. Ready nodes run as tokio
//! tasks, which resolve their inputs, run their attempts (retries, backoff, timeout,
//! panics) and, on success, record the end, count the node off its dependents and start
//! those now ready themselves: the first one in the same tokio task, the others spawned.
//! One driver task per run handles everything else over a channel: failures and the
//! dependents they settle (skip, fail, run anyway), concurrency limits, cancellation and
//! the grace period; at the end it reads the successes the workers left in the shared
//! per-node state and builds the report.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::error::Error as StdError;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{
    chain, BoxError, CancelGraceExceeded, DependencyFailed, RetryExhausted, TaskPanicked, Timeout,
};
use crate::graph::Graph;
use crate::hooks::{Attempt, AttemptOutcome, Hooks, RunInfo, TaskInfo};
use crate::journal::{Ended, RunJournal};
use crate::record::Level;
use crate::record::State;
use crate::report::{ErrorReport, Json, RunReport, RunStatus, TaskReport, TaskStatus};
use crate::task::arg::{Inputs, Slot};
use crate::task::ctx::{Ctx, Reporter, RunScope, RuntimeHandle};
use crate::task::erased::ErasedTask;
use crate::task::{OnDepFailure, TaskMeta};

/// Settings of one run.
pub(crate) struct RunConfig {
    pub(crate) run_id: Arc<str>,
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) permits: Option<Arc<Semaphore>>,
    pub(crate) hooks: Vec<Arc<dyn Hooks>>,
    pub(crate) cancel: CancellationToken,
    /// Cancelled when the runtime suspends: no task starts any more, running ones have
    /// the grace period to end, and nothing is recorded for the rest (the run resumes at
    /// the next start).
    pub(crate) halt: CancellationToken,
    pub(crate) grace: Duration,
    /// Where task state changes are recorded (durable runs).
    pub(crate) journal: Option<Arc<RunJournal>>,
    /// What an earlier, interrupted run of the same graph already finished.
    pub(crate) resume: Option<Resume>,
    /// Lets tasks start child processes (recorded runs only).
    pub(crate) runtime: Option<RuntimeHandle>,
}

/// The finished part of an interrupted run.
#[derive(Default)]
pub(crate) struct Resume {
    /// Nodes that finished successfully: their stored result, attempts and elapsed time.
    pub(crate) done: Vec<(u32, Arc<str>, u32, Duration)>,
    /// Attempts already started, per node (the count continues after a restart).
    pub(crate) attempts: Vec<u32>,
}

/// Where a node stands in the driver's view of the run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NodeStatus {
    Pending,
    Success,
    Errored,
    Skipped,
    Cancelled,
}

struct NodeState {
    status: NodeStatus,
    attempts: u32,
    elapsed: Duration,
    error: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

struct Completion {
    node: u32,
    attempts: u32,
    elapsed: Duration,
    result: Result<(), BoxError>,
}

/// Emits progress and log entries to `tracing` (the durable runtime adds records).
struct TraceReporter;

impl Reporter for TraceReporter {
    fn progress(&self, _node: u32, _percent: Option<f64>, _message: &str) {}
    fn log(&self, _node: u32, _level: Level, _message: &str) {}
}

struct Shared {
    slots: Box<[Slot]>,
    ids: Box<[Arc<str>]>,
    metas: Box<[&'static TaskMeta]>,
    tag: u32,
    remap: Option<Vec<u32>>,
    scope: Arc<RunScope>,
    hooks: Vec<Arc<dyn Hooks>>,
    process: String,
    run_id: Arc<str>,
    permits: Option<Arc<Semaphore>>,
    journal: Option<Arc<RunJournal>>,
    /// Dependencies not yet ended, per node.
    remaining: Box<[AtomicU32]>,
    /// Set (release) when a node succeeded: its result is in its slot.
    done_ok: Box<[AtomicBool]>,
    /// Set when a node was started or settled: it is started at most once.
    claimed: Box<[AtomicBool]>,
    /// Set by whoever ends a started node first: its worker, or the driver abandoning it
    /// after the cancellation grace period. The other one leaves the node alone.
    ended: Box<[AtomicBool]>,
    tasks: Box<[TaskCell]>,
    /// Attempts and elapsed nanoseconds of each node that succeeded, written by its
    /// worker before `done_ok` (a success is not reported to the driver).
    attempts_run: Box<[AtomicU32]>,
    elapsed_ns: Box<[AtomicU64]>,
    /// Cancelled when the cancellation grace period is over: running nodes are dropped.
    abandon: CancellationToken,
    /// The runtime suspends: nothing starts any more.
    halt: CancellationToken,
    /// Dependents (CSR) and dependencies (CSR).
    offsets: Box<[u32]>,
    targets: Box<[u32]>,
    dep_offsets: Box<[u32]>,
    dep_targets: Box<[u32]>,
    /// Attempts each node already made in an earlier, interrupted run of the graph.
    prior_attempts: Box<[u32]>,
    /// Workers start ready dependents themselves (no per-run concurrency limit).
    workers_start_dependents: bool,
    /// Nodes started and not yet ended: counted off by the node's worker for an
    /// unreported success, by the driver when it reads a report or abandons the node.
    in_flight: AtomicUsize,
    tx: mpsc::UnboundedSender<Msg>,
}

/// A node's task until it is started.
type TaskCell = Mutex<Option<Box<dyn ErasedTask>>>;

enum Msg {
    /// A node ended without success (or, under a concurrency limit, ended at all).
    Done(Completion),
    /// No node is running any more: the driver decides whether the run is over.
    Idle,
    /// All dependencies of the node ended, but it cannot be started without the driver
    /// (a dependency did not succeed, the run is cancelled, or a limit applies).
    Settle(u32),
}

impl Shared {
    fn dependents(&self, i: u32) -> &[u32] {
        &self.targets[self.offsets[i as usize] as usize..self.offsets[i as usize + 1] as usize]
    }

    fn deps(&self, i: u32) -> &[u32] {
        &self.dep_targets
            [self.dep_offsets[i as usize] as usize..self.dep_offsets[i as usize + 1] as usize]
    }

    fn all_deps_ok(&self, i: u32) -> bool {
        self.deps(i)
            .iter()
            .all(|&d| self.done_ok[d as usize].load(Ordering::Acquire))
    }

    /// Starts node `i` unless it was started or settled already.
    fn start(self: &Arc<Self>, i: u32) -> bool {
        let Some(task) = self.claim(i) else {
            return false;
        };
        let shared = self.clone();
        // The spawned future stays small while it waits in the run queue (a wide graph
        // queues every root at once); the node's real state machine is boxed when it runs.
        drop(tokio::spawn(async move {
            Box::pin(run_node(shared, i, task)).await;
        }));
        true
    }

    /// Takes node `i`'s task to start it (counted in flight), unless it was started or
    /// settled already.
    fn claim(&self, i: u32) -> Option<Box<dyn ErasedTask>> {
        if self.halt.is_cancelled() || self.claimed[i as usize].swap(true, Ordering::AcqRel) {
            return None;
        }
        let task = lock(&self.tasks[i as usize]).take()?;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(task)
    }

    /// Node `i` succeeded: count it off its dependents and start those now ready. The
    /// first of them is not spawned but returned, claimed, for the caller to run itself
    /// (a chain then runs in one tokio task, without a spawn and a wake-up per link);
    /// not under a runtime-wide limit, where every node waits for a permit of its own.
    fn release_success(self: &Arc<Self>, i: u32) -> Option<(u32, Box<dyn ErasedTask>)> {
        let keep_one = self.permits.is_none();
        self.done_ok[i as usize].store(true, Ordering::Release);
        let mut next = None;
        for &d in self.dependents(i) {
            if self.remaining[d as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
                if self.workers_start_dependents
                    && !self.scope.cancel.is_cancelled()
                    && self.all_deps_ok(d)
                {
                    if keep_one && next.is_none() {
                        next = self.claim(d).map(|t| (d, t));
                    } else {
                        self.start(d);
                    }
                } else {
                    let _ = self.tx.send(Msg::Settle(d));
                }
            }
        }
        next
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn csr(n: usize, edges: impl Iterator<Item = (u32, u32)> + Clone) -> (Box<[u32]>, Box<[u32]>) {
    let mut offsets = vec![0u32; n + 1];
    for (from, _) in edges.clone() {
        offsets[from as usize + 1] += 1;
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    let mut fill = offsets.clone();
    let mut targets = vec![0u32; offsets[n] as usize];
    for (from, to) in edges {
        targets[fill[from as usize] as usize] = to;
        fill[from as usize] += 1;
    }
    (offsets.into(), targets.into())
}

/// Runs `graph` to the end and returns its report; `None` when the runtime suspended the
/// run (see [`RunConfig::halt`]).
pub(crate) async fn execute(mut graph: Graph, mut cfg: RunConfig) -> Option<RunReport> {
    let started = Instant::now();
    let n = graph.nodes.len();
    let ids: Box<[Arc<str>]> = graph.nodes.iter().map(|n| n.id.clone()).collect();
    let ids_for_ctx = ids.clone();
    let scope = Arc::new(RunScope {
        process_id: cfg.run_id.clone(),
        node_ids: Arc::new(move |i| ids_for_ctx[i as usize].clone()),
        cancel: cfg.cancel.clone(),
        reporter: match &cfg.journal {
            Some(j) => j.clone(),
            None => Arc::new(TraceReporter),
        },
        runtime: cfg.runtime.clone(),
        child_seq: std::sync::Mutex::default(),
    });
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let (offsets, targets) = csr(
        n,
        graph
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, node)| node.deps().iter().map(move |&d| (d, i as u32))),
    );
    let (dep_offsets, dep_targets) = csr(
        n,
        graph
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, node)| node.deps().iter().map(move |&d| (i as u32, d))),
    );
    let resume = cfg.resume.take().unwrap_or_default();
    let mut prior_attempts = resume.attempts;
    prior_attempts.resize(n, 0);
    let shared = Arc::new(Shared {
        slots: graph.nodes.iter().map(|n| Slot::new(n.readers)).collect(),
        ids,
        metas: graph.nodes.iter().map(|n| n.meta).collect(),
        tag: graph.tag,
        remap: graph.remap.take(),
        scope,
        hooks: cfg.hooks.clone(),
        process: graph.name.clone(),
        run_id: cfg.run_id.clone(),
        permits: cfg.permits.clone(),
        journal: cfg.journal.clone(),
        remaining: graph
            .nodes
            .iter()
            .map(|n| AtomicU32::new(n.deps().len() as u32))
            .collect(),
        done_ok: (0..n).map(|_| AtomicBool::new(false)).collect(),
        claimed: (0..n).map(|_| AtomicBool::new(false)).collect(),
        ended: (0..n).map(|_| AtomicBool::new(false)).collect(),
        tasks: graph
            .nodes
            .iter_mut()
            .map(|n| Mutex::new(n.task.take()))
            .collect(),
        attempts_run: (0..n).map(|_| AtomicU32::new(0)).collect(),
        elapsed_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
        abandon: CancellationToken::new(),
        halt: cfg.halt.clone(),
        offsets,
        targets,
        dep_offsets,
        dep_targets,
        prior_attempts: prior_attempts.into(),
        workers_start_dependents: cfg.max_concurrency.is_none(),
        in_flight: AtomicUsize::new(0),
        tx,
    });
    let info = RunInfo {
        process: graph.name.clone(),
        run_id: cfg.run_id.to_string(),
    };
    for h in &cfg.hooks {
        h.started(&info);
    }
    tracing::info!(process = %info.process, run = %info.run_id, tasks = n, "run started");

    let mut state: Vec<NodeState> = (0..n)
        .map(|_| NodeState {
            status: NodeStatus::Pending,
            attempts: 0,
            elapsed: Duration::ZERO,
            error: None,
        })
        .collect();
    let mut ready: VecDeque<u32> = VecDeque::new();
    let mut settle: Vec<u32> = Vec::new();
    for (i, json, attempts, elapsed) in resume.done {
        let idx = i as usize;
        if idx >= n || shared.claimed[idx].swap(true, Ordering::AcqRel) {
            continue;
        }
        shared.slots[idx].fill(json, None);
        lock(&shared.tasks[idx]).take();
        state[idx] = NodeState {
            status: NodeStatus::Success,
            attempts,
            elapsed,
            error: None,
        };
        shared.done_ok[idx].store(true, Ordering::Release);
        count_off(&shared, i, &mut settle);
    }
    settle.extend(
        (0..n as u32).filter(|&i| shared.remaining[i as usize].load(Ordering::Acquire) == 0),
    );
    let limit = cfg.max_concurrency.unwrap_or(usize::MAX).max(1);
    let mut cancel_seen = false;
    let grace = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
    tokio::pin!(grace);
    let mut grace_armed = false;
    let mut halt_seen = false;
    let mut suspended = false;
    let mut batch: Vec<Msg> = Vec::with_capacity(64);

    loop {
        // The token is the truth: a cancel requested while messages were being handled
        // (the select below prefers them) must stop new starts before the next one.
        if !cancel_seen && cfg.cancel.is_cancelled() {
            cancel_seen = true;
            grace
                .as_mut()
                .reset(tokio::time::Instant::now() + cfg.grace);
            grace_armed = true;
            tracing::info!(run = %info.run_id, "run cancelled");
        }
        while let Some(d) = settle.pop() {
            decide(
                d,
                &graph,
                &shared,
                &mut state,
                &mut ready,
                &mut settle,
                &cfg.hooks,
                &info,
            );
        }
        if !cancel_seen && !halt_seen {
            while shared.in_flight.load(Ordering::Acquire) < limit {
                let Some(i) = ready.pop_front() else { break };
                shared.start(i);
            }
        }
        if shared.in_flight.load(Ordering::Acquire) == 0
            && (cancel_seen || halt_seen || ready.is_empty())
            && (settle.is_empty() || halt_seen)
        {
            // A worker sends what it has to say before it counts itself off: once the
            // count is zero, anything left is already in the channel.
            match rx.try_recv() {
                Ok(m) => {
                    batch.push(m);
                    handle_batch(&mut batch, &shared, &mut state, &mut settle, &cfg, &info);
                    continue;
                }
                Err(_) => break,
            }
        }
        tokio::select! {
            biased;
            got = rx.recv_many(&mut batch, 256) => {
                debug_assert!(got > 0, "the driver holds a sender");
                handle_batch(&mut batch, &shared, &mut state, &mut settle, &cfg, &info);
            }
            () = cfg.halt.cancelled(), if !halt_seen => {
                halt_seen = true;
                if !grace_armed {
                    grace.as_mut().reset(tokio::time::Instant::now() + cfg.grace);
                    grace_armed = true;
                }
                tracing::info!(run = %info.run_id, "run suspended: no task starts any more");
            }
            () = cfg.cancel.cancelled(), if !cancel_seen => {
                cancel_seen = true;
                grace.as_mut().reset(tokio::time::Instant::now() + cfg.grace);
                grace_armed = true;
                tracing::info!(run = %info.run_id, "run cancelled");
            }
            () = &mut grace, if grace_armed => {
                grace_armed = false;
                if halt_seen && !cancel_seen {
                    // Suspended: what still runs is dropped, nothing is recorded for it.
                    shared.abandon.cancel();
                    suspended = true;
                    break;
                }
                for (i, s) in state.iter_mut().enumerate() {
                    // Started (claimed while pending) and not ended by its worker: a
                    // worker that ended first has its end recorded or on the way.
                    let running = s.status == NodeStatus::Pending
                        && shared.claimed[i].load(Ordering::Acquire)
                        && !shared.done_ok[i].load(Ordering::Acquire);
                    if running && !shared.ended[i].swap(true, Ordering::AcqRel) {
                        let e: Arc<dyn StdError + Send + Sync> = Arc::new(CancelGraceExceeded {
                            task: shared.metas[i].name.to_owned(),
                            grace: cfg.grace,
                        });
                        for h in &cfg.hooks {
                            h.failed(&info, &shared.ids[i], &*e);
                        }
                        s.status = NodeStatus::Errored;
                        s.error = Some(e);
                        // Its row says so too: the stored report agrees with this one.
                        if let Some(j) = &shared.journal {
                            record_end(j, &shared, i, s);
                        }
                        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                shared.abandon.cancel();
            }
        }
    }

    // Successes were not reported one by one: their workers left them in `shared`.
    suspended |= halt_seen
        && state.iter().enumerate().any(|(i, s)| {
            s.status == NodeStatus::Pending && !shared.done_ok[i].load(Ordering::Acquire)
        });
    if suspended {
        tracing::info!(run = %info.run_id, "run suspended");
        return None;
    }
    for (i, s) in state.iter_mut().enumerate() {
        if s.status == NodeStatus::Pending && shared.done_ok[i].load(Ordering::Acquire) {
            s.status = NodeStatus::Success;
            s.attempts = shared.attempts_run[i].load(Ordering::Acquire);
            s.elapsed = Duration::from_nanos(shared.elapsed_ns[i].load(Ordering::Acquire));
        }
    }

    let cancelled = cancel_seen || cfg.cancel.is_cancelled();
    for (i, s) in state.iter_mut().enumerate() {
        if s.status == NodeStatus::Pending {
            s.status = NodeStatus::Cancelled;
            if let Some(j) = &shared.journal {
                record_end(j, &shared, i, s);
            }
        }
    }
    let report = build_report(
        &graph,
        &shared,
        &state,
        &shared.offsets,
        &shared.targets,
        cancelled,
        started.elapsed(),
    );
    match report.status {
        RunStatus::Succeeded => cfg.hooks.iter().for_each(|h| h.completed(&info, &report)),
        RunStatus::Cancelled => cfg.hooks.iter().for_each(|h| h.cancelled(&info, &report)),
        RunStatus::Failed => {}
    }
    tracing::info!(process = %info.process, run = %info.run_id, status = ?report.status, "run ended");
    Some(report)
}

/// Handles the workers' messages: ends without success (and, under a concurrency limit,
/// successes) and nodes whose dependencies all ended.
fn handle_batch(
    batch: &mut Vec<Msg>,
    shared: &Shared,
    state: &mut [NodeState],
    settle: &mut Vec<u32>,
    cfg: &RunConfig,
    info: &RunInfo,
) {
    for m in batch.drain(..) {
        let c = match m {
            Msg::Settle(d) => {
                settle.push(d);
                continue;
            }
            Msg::Idle => continue,
            Msg::Done(c) => c,
        };
        let i = c.node as usize;
        if state[i].status != NodeStatus::Pending {
            continue; // abandoned after the grace period; its late end is ignored
        }
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        state[i].attempts = c.attempts;
        state[i].elapsed = c.elapsed;
        match c.result {
            Ok(()) => state[i].status = NodeStatus::Success,
            // An attempt that stopped once the run was asked to stop was cancelled,
            // whether or not the driver has seen the request yet.
            Err(e) if cfg.cancel.is_cancelled() => {
                state[i].status = NodeStatus::Cancelled;
                state[i].error = Some(Arc::from(e));
            }
            Err(e) => {
                let e: Arc<dyn StdError + Send + Sync> = Arc::from(e);
                tracing::warn!(task = %shared.ids[i], error = %e, "task failed");
                for h in &cfg.hooks {
                    h.failed(info, &shared.ids[i], &*e);
                }
                state[i].status = NodeStatus::Errored;
                state[i].error = Some(e);
            }
        }
        // A success was recorded and counted off by its worker; anything else is
        // recorded and counted off here, and its dependents are settled by the driver.
        if state[i].status != NodeStatus::Success {
            if let Some(j) = &shared.journal {
                record_end(j, shared, i, &state[i]);
            }
            count_off(shared, c.node, settle);
        }
    }
}

/// Node `i` ended without success (or was found done at resume): count it off its
/// dependents; those with no dependency left are settled by [`decide`].
fn count_off(shared: &Shared, i: u32, settle: &mut Vec<u32>) {
    for &d in shared.dependents(i) {
        if shared.remaining[d as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
            settle.push(d);
        }
    }
}

/// Node `d` has no dependency left: queue it to start, or settle it by its policy.
#[allow(clippy::too_many_arguments)]
fn decide(
    d: u32,
    graph: &Graph,
    shared: &Shared,
    state: &mut [NodeState],
    ready: &mut VecDeque<u32>,
    settle: &mut Vec<u32>,
    hooks: &[Arc<dyn Hooks>],
    info: &RunInfo,
) {
    let di = d as usize;
    if shared.claimed[di].load(Ordering::Acquire) || state[di].status != NodeStatus::Pending {
        return;
    }
    if shared.scope.cancel.is_cancelled() {
        return; // ends cancelled with the run
    }
    let ok = |x: u32| shared.done_ok[x as usize].load(Ordering::Acquire);
    let node = &graph.nodes[di];
    let failed: Vec<u32> = node.deps().iter().copied().filter(|&x| !ok(x)).collect();
    if failed.is_empty() {
        ready.push_back(d);
        return;
    }
    if failed
        .iter()
        .any(|&x| state[x as usize].status == NodeStatus::Cancelled)
    {
        // A cancelled dependency did not fail this task: it stays pending and ends
        // cancelled with the run (its own dependents with it).
        return;
    }
    let failed_data: Vec<u32> = node
        .data_deps()
        .iter()
        .copied()
        .filter(|&x| !ok(x))
        .collect();
    let policy = node.meta.policy.on_dep_failure;
    let names = |xs: &[u32]| {
        xs.iter()
            .map(|&x| shared.ids[x as usize].to_string())
            .collect::<Vec<_>>()
    };
    match policy {
        OnDepFailure::RunAnyway if failed_data.is_empty() => {
            ready.push_back(d);
            return;
        }
        OnDepFailure::Skip => state[di].status = NodeStatus::Skipped,
        OnDepFailure::Fail | OnDepFailure::RunAnyway => {
            let list = if policy == OnDepFailure::Fail {
                &failed
            } else {
                &failed_data
            };
            let e = Arc::new(DependencyFailed {
                task: node.id.to_string(),
                failed: names(list),
            });
            for h in hooks {
                h.failed(info, &node.id, &*e);
            }
            state[di].status = NodeStatus::Errored;
            state[di].error = Some(e);
        }
    }
    shared.claimed[di].store(true, Ordering::Release);
    if let Some(j) = &shared.journal {
        record_end(j, shared, di, &state[di]);
    }
    count_off(shared, d, settle);
}

/// Writes how node `i` ended to the run's journal.
fn record_end(j: &RunJournal, shared: &Shared, i: usize, s: &NodeState) {
    let (state, skipped) = match s.status {
        NodeStatus::Success => (State::Done, false),
        NodeStatus::Errored => (State::Failed, false),
        NodeStatus::Skipped => (State::Cancelled, true),
        NodeStatus::Cancelled | NodeStatus::Pending => (State::Cancelled, false),
    };
    let result = if s.status == NodeStatus::Success {
        shared.slots[i].json().cloned()
    } else {
        None
    };
    j.ended(
        i as u32,
        Ended {
            state,
            skipped,
            attempts: s.attempts,
            elapsed: s.elapsed,
            error: s.error.as_ref().map(ToString::to_string),
            chain: s.error.as_ref().map(|e| chain(&**e)).unwrap_or_default(),
        },
        result,
    );
}

/// Runs node `i`, then, while one of the dependents it made ready can be run here, that
/// one (see [`Shared::release_success`]).
async fn run_node(shared: Arc<Shared>, mut i: u32, mut task: Box<dyn ErasedTask>) {
    while let Some(next) = run_one(&shared, i, task).await {
        // Give the worker's other tasks a turn now and then on a long chain.
        tokio::task::consume_budget().await;
        (i, task) = next;
    }
}
/// Runs node `i`; returns the dependent to run next in the same tokio task, if any.
async fn run_one(
    shared: &Arc<Shared>,
    i: u32,
    task: Box<dyn ErasedTask>,
) -> Option<(u32, Box<dyn ErasedTask>)> {
    let _permit = match &shared.permits {
        Some(sem) => sem.clone().acquire_owned().await.ok(),
        None => None,
    };
    let first = shared.prior_attempts[i as usize];
    let meta = shared.metas[i as usize];
    let started = Instant::now();
    let ran = tokio::select! {
        biased;
        r = attempts(shared, i, first, meta, task, started) => Some(r),
        () = shared.abandon.cancelled() => None,
    };
    let elapsed = started.elapsed();
    // Abandoned after the cancellation grace period: the driver ended it.
    let (attempts, result) = ran?;
    if shared.ended[i as usize].swap(true, Ordering::AcqRel) {
        return None;
    }
    let ok = result.is_ok();
    let mut next = None;
    if ok {
        // Record the end and start the dependents now ready from here: the driver is
        // off the critical path.
        if let Some(j) = &shared.journal {
            record_end(
                j,
                shared,
                i as usize,
                &NodeState {
                    status: NodeStatus::Success,
                    attempts,
                    elapsed,
                    error: None,
                },
            );
        }
        shared.attempts_run[i as usize].store(attempts, Ordering::Relaxed);
        shared.elapsed_ns[i as usize].store(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        next = shared.release_success(i);
    }
    // A success is reported only when the driver starts nodes itself (a concurrency
    // limit): otherwise its worker has done everything the driver would. A reported node
    // is counted off by the driver when it reads the report, so that a freed slot is
    // seen together with its report; an unreported one is counted off here, after the
    // next node was claimed (which counted that one in): the count only reaches zero
    // when nothing runs, and then everything the workers sent is in the channel.
    if !ok || !shared.workers_start_dependents {
        let _ = shared.tx.send(Msg::Done(Completion {
            node: i,
            attempts,
            elapsed,
            result,
        }));
    } else if shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
        let _ = shared.tx.send(Msg::Idle);
    }
    next
}

async fn attempts(
    shared: &Shared,
    i: u32,
    first: u32,
    meta: &'static TaskMeta,
    mut task: Box<dyn ErasedTask>,
    node_started: Instant,
) -> (u32, Result<(), BoxError>) {
    let policy = &meta.policy;
    let prepared = {
        let names = |idx: u32| shared.ids[idx as usize].to_string();
        let inputs = Inputs {
            slots: &shared.slots,
            names: &names,
            graph: shared.tag,
            remap: shared.remap.as_deref(),
        };
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            task.prepare(
                &inputs,
                policy.max_attempts > 1,
                shared.slots[i as usize].has_readers(),
            )
        }))
    };
    match prepared {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return (first, Err(Box::new(e))),
        Err(panic) => return (first, Err(panicked(meta, &*panic))),
    }
    // `first` comes from the store (attempts before a restart) and is untrusted: the
    // attempts of this run are counted apart, and the attempt number saturates.
    let mut this_run: u32 = 0;
    loop {
        this_run = this_run.saturating_add(1);
        let attempt = first.saturating_add(this_run);
        let ctx = Ctx::new(shared.scope.clone(), i, meta.name, attempt);
        let outcome = run_attempt(shared, i, meta, attempt, &mut *task, ctx, node_started).await;
        let Some(err) = outcome.error else {
            if let Some(done) = outcome.payload {
                shared.slots[i as usize].fill(done.json, done.typed);
            }
            return (attempt, Ok(()));
        };
        let cancelled = shared.scope.cancel.is_cancelled();
        if !cancelled && this_run < policy.max_attempts && policy.is_retryable(&*err) {
            let delay = policy.backoff.jittered_delay(attempt);
            tracing::info!(task = meta.name, attempt, ?delay, error = %err, "retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => continue,
                () = shared.scope.cancel.cancelled() => return (attempt, Err(err)),
            }
        }
        if this_run > 1 && !cancelled {
            return (
                attempt,
                Err(Box::new(RetryExhausted {
                    task: meta.name.to_owned(),
                    attempts: attempt,
                    last: err,
                })),
            );
        }
        return (attempt, Err(err));
    }
}

async fn run_attempt(
    shared: &Shared,
    i: u32,
    meta: &'static TaskMeta,
    attempt: u32,
    prepared: &mut dyn ErasedTask,
    ctx: Ctx,
    node_started: Instant,
) -> AttemptOutcome {
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| prepared.attempt(ctx)));
    match started {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return AttemptOutcome {
                error: Some(e),
                payload: None,
            }
        }
        Err(panic) => {
            return AttemptOutcome {
                error: Some(panicked(meta, &*panic)),
                payload: None,
            }
        }
    }
    let fut = Running {
        prepared,
        journal: shared.journal.as_deref(),
        node: i,
        attempt,
        node_started,
    };
    let timeout = meta.policy.timeout;
    let inner = async move {
        let guarded = AssertUnwindSafe(fut).catch_unwind();
        let res = match timeout {
            Some(t) => match tokio::time::timeout(t, guarded).await {
                Ok(r) => r,
                Err(_) => {
                    return AttemptOutcome {
                        error: Some(Box::new(Timeout {
                            task: meta.name.to_owned(),
                            after: t,
                        })),
                        payload: None,
                    }
                }
            },
            None => guarded.await,
        };
        match res {
            Ok(Ok(done)) => AttemptOutcome {
                error: None,
                payload: Some(done),
            },
            Ok(Err(e)) => AttemptOutcome {
                error: Some(e),
                payload: None,
            },
            Err(panic) => AttemptOutcome {
                error: Some(panicked(meta, &*panic)),
                payload: None,
            },
        }
    };
    if shared.hooks.is_empty() {
        return inner.await;
    }
    let info = TaskInfo {
        process: shared.process.clone(),
        run_id: shared.run_id.to_string(),
        task: meta.name,
        node_id: shared.ids[i as usize].to_string(),
        attempt,
    };
    let mut fut: Attempt<'_> = Box::pin(inner);
    for h in shared.hooks.iter().rev() {
        fut = h.around_task(&info, fut);
    }
    fut.await
}

/// Polls the attempt running inside a prepared task. Dropping it ends the attempt: the
/// task's future is dropped with it, as a timed-out or abandoned attempt's must be.
///
/// The attempt's start is recorded (state running, attempt number) when it first waits:
/// an attempt that ends in its first poll is recorded once, by its end.
struct Running<'a> {
    prepared: &'a mut dyn ErasedTask,
    /// Where to record the start; `None` once recorded (or for runs without records).
    journal: Option<&'a RunJournal>,
    node: u32,
    attempt: u32,
    node_started: Instant,
}

impl std::future::Future for Running<'_> {
    type Output = Result<crate::task::erased::Finished, BoxError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let polled = self.prepared.poll_attempt(cx);
        if polled.is_pending() {
            if let Some(j) = self.journal.take() {
                j.started(self.node, self.attempt, self.node_started.elapsed());
            }
        }
        polled
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.prepared.end_attempt();
    }
}

fn panicked(meta: &TaskMeta, panic: &(dyn std::any::Any + Send)) -> BoxError {
    Box::new(TaskPanicked {
        task: meta.name.to_owned(),
        message: crate::error::panic_message(panic),
    })
}

fn build_report(
    graph: &Graph,
    shared: &Shared,
    state: &[NodeState],
    offsets: &[u32],
    targets: &[u32],
    cancelled: bool,
    elapsed: Duration,
) -> RunReport {
    let mut tasks = Vec::with_capacity(state.len());
    let mut any_errored = false;
    let mut all_success = true;
    for (i, (node, s)) in graph.nodes.iter().zip(state).enumerate() {
        let status = match s.status {
            NodeStatus::Success => TaskStatus::Success,
            NodeStatus::Errored => TaskStatus::Errored,
            NodeStatus::Skipped => TaskStatus::Skipped,
            NodeStatus::Cancelled | NodeStatus::Pending => TaskStatus::Cancelled,
        };
        any_errored |= status == TaskStatus::Errored;
        all_success &= status == TaskStatus::Success;
        let error = match (&s.error, status) {
            (Some(e), TaskStatus::Errored) => Some(ErrorReport {
                message: e.to_string(),
                chain: chain(&**e),
                downstream_impact: downstream(i as u32, shared, state, offsets, targets),
                source: Some(e.clone()),
            }),
            _ => None,
        };
        let result = if status == TaskStatus::Success {
            shared.slots[i].json().cloned().map(Json::trusted)
        } else {
            None
        };
        tasks.push(TaskReport {
            id: node.id.clone(),
            name: Cow::Borrowed(node.meta.name),
            function: Cow::Borrowed(node.meta.function),
            description: node
                .description
                .clone()
                .map_or(Cow::Borrowed(node.meta.description), Cow::Owned),
            status,
            attempts: s.attempts,
            elapsed: if matches!(s.status, NodeStatus::Skipped | NodeStatus::Pending) {
                Duration::ZERO
            } else {
                s.elapsed
            },
            result,
            error,
        });
    }
    // A run that was asked to stop ends cancelled even when its tasks returned normally
    // (a cooperative task that sees the cancel and returns has not done the full job).
    let status = if any_errored {
        RunStatus::Failed
    } else if cancelled {
        RunStatus::Cancelled
    } else if all_success {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    RunReport {
        process: graph.name.clone(),
        run_id: shared.run_id.to_string(),
        status,
        elapsed,
        tasks,
    }
}

/// Ids of the nodes that did not run because `failed` did not succeed, transitively.
fn downstream(
    failed: u32,
    shared: &Shared,
    state: &[NodeState],
    offsets: &[u32],
    targets: &[u32],
) -> Vec<String> {
    let mut seen = vec![false; state.len()];
    let mut out = Vec::new();
    let mut stack = vec![failed];
    while let Some(x) = stack.pop() {
        for &d in &targets[offsets[x as usize] as usize..offsets[x as usize + 1] as usize] {
            let di = d as usize;
            if seen[di] {
                continue;
            }
            let did_not_run = state[di].status == NodeStatus::Skipped
                || (state[di].status == NodeStatus::Errored
                    && state[di].attempts == 0
                    && state[di]
                        .error
                        .as_ref()
                        .is_some_and(|e| e.is::<DependencyFailed>()));
            if did_not_run {
                seen[di] = true;
                out.push(d);
                stack.push(d);
            }
        }
    }
    out.sort_unstable();
    out.into_iter()
        .map(|d| shared.ids[d as usize].to_string())
        .collect()
}
