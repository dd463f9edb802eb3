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

mod remote;
mod report;
mod shared;
mod worker;

pub(crate) use remote::RemoteRun;

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use smol_str::SmolStr;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{chain, BoxError, CancelGraceExceeded, DependencyFailed};
use crate::graph::arena::TaskBox;
use crate::graph::{Graph, Node};
use crate::hooks::{Hooks, RunInfo};
use crate::journal::{Ended, Failure, RowMeta, RunJournal};
use crate::record::Level;
use crate::record::State;
use crate::report::{RunReport, RunStatus};
use crate::task::arg::Slot;
use crate::task::ctx::{CancelFlag, Reporter, RunScope, RuntimeHandle};
use crate::task::resource::Resources;
use crate::task::OnDepFailure;
use crate::util::nanos;
use crate::util::IdList;

use report::build_report;
use shared::{CsrBuilder, Shared};
use worker::run_node;

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
    pub(crate) halt: Arc<Halt>,
    pub(crate) grace: Duration,
    /// Where task state changes are recorded (durable runs).
    pub(crate) journal: Option<Arc<RunJournal>>,
    /// What an earlier, interrupted run of the same graph already finished.
    pub(crate) resume: Option<Resume>,
    /// Lets tasks start child processes (recorded runs only).
    pub(crate) runtime: Option<RuntimeHandle>,
    /// The runtime's shared resources, read by tasks.
    pub(crate) resources: Arc<Resources>,
    /// The run's span ([`run_span`]): the driver runs in it and every task attempt's
    /// span is its child.
    pub(crate) span: tracing::Span,
    /// The runtime running this run (its worker id), for the attempt spans.
    pub(crate) worker: Arc<str>,
    /// Where ready nodes run when they do not run here (task spreading over the
    /// workers of a shared store); `None`: every node runs here.
    pub(crate) dispatch: Option<Arc<dyn Dispatch>>,
}

/// Runs `graph` as run `run_id` on a two-worker runtime of its own, with nothing but
/// the executor (no journal, hooks, limits or dispatch), resumed from `resume` if given,
/// and returns its report (tests of the executor alone).
#[cfg(test)]
pub(crate) fn run_bare(graph: Graph, run_id: &str, resume: Option<Resume>) -> RunReport {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime");
    rt.block_on(async {
        let cfg = RunConfig {
            run_id: Arc::from(run_id),
            max_concurrency: None,
            permits: None,
            hooks: Vec::new(),
            cancel: CancellationToken::new(),
            halt: Arc::new(Halt::default()),
            grace: Duration::ZERO,
            journal: None,
            resume,
            runtime: None,
            resources: Arc::default(),
            span: run_span(graph.name(), run_id, "w", 1),
            worker: Arc::from("w"),
            dispatch: None,
        };
        let (report, remains) = execute(graph, cfg).await;
        drop(remains);
        report.expect("a run that is not suspended has a report")
    })
}

/// Runs a ready node elsewhere (another worker of a shared store may run it) and tells
/// how it ended. The executor keeps its own semantics: it decides what is ready, settles
/// failures, skips and cancellation, and builds the report; only the node's attempts
/// (inputs, retries, backoff, timeout, panics) run where the dispatch sends them.
pub(crate) trait Dispatch: Send + Sync {
    /// Runs node `node` of the run, whose attempts before are `first` (its next attempt
    /// is `first + 1`).
    fn run(&self, node: u32, first: u32) -> futures::future::BoxFuture<'static, Dispatched>;

    /// Called once, before the first node is dispatched: `done` says which nodes
    /// succeeded already (a resumed run's restored ones), `prior_attempts` the attempts
    /// each node made before (shorter than the graph: the nodes past its end made none;
    /// empty for a fresh run); `limited`: a concurrency limit (the run's or the
    /// runtime's) decides when a node starts, so none may start without the executor.
    fn prepare(&self, _done: &[bool], _prior_attempts: &[u32], _limited: bool) {}
}

/// How a dispatched node ended.
pub(crate) struct Dispatched {
    /// The number of its last attempt.
    pub(crate) attempts: u32,
    /// Its result as JSON on success, its error otherwise.
    pub(crate) outcome: Result<Arc<str>, BoxError>,
}

/// The span of one run: `run{process, run, worker, resumes}`, at level INFO, target
/// `procession_runtime::exec`. With no subscriber installed it costs an atomic load and
/// formats nothing.
pub(crate) fn run_span(process: &str, run_id: &str, worker: &str, resumes: u32) -> tracing::Span {
    tracing::info_span!(
        "run",
        process = %process,
        run = %run_id,
        worker = %worker,
        resumes,
    )
}

/// The runtime's suspension signal, shared by every run: a flag read where tasks start
/// (an atomic load, not the mutex a `CancellationToken` takes, since every run reads it
/// for every task), and a token the drivers wait on.
///
/// A run may have its own ([`Halt::child`]): halted with the runtime's, or alone (a run
/// whose lease another worker took is stopped [`at once`](Halt::halt_now)).
#[derive(Debug, Default)]
pub(crate) struct Halt {
    flag: std::sync::atomic::AtomicBool,
    /// Abandon what still runs without waiting for the grace period.
    now: std::sync::atomic::AtomicBool,
    token: CancellationToken,
    parent: Option<Arc<Halt>>,
}

impl Halt {
    /// A halt of one run: halted when `parent` is, or by itself.
    pub(crate) fn child(parent: &Arc<Halt>) -> Arc<Halt> {
        Arc::new(Halt {
            flag: std::sync::atomic::AtomicBool::new(false),
            now: std::sync::atomic::AtomicBool::new(false),
            token: parent.token.child_token(),
            parent: Some(parent.clone()),
        })
    }

    /// Suspends every run: no task starts any more.
    pub(crate) fn halt(&self) {
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Halts and drops the tasks still running at once (no grace period): the run is
    /// no longer this worker's, nothing it does would be kept.
    pub(crate) fn halt_now(&self) {
        self.now.store(true, Ordering::Release);
        self.halt();
    }

    /// Whether [`halt`](Halt::halt) was called (here or on the parent).
    pub(crate) fn is_halted(&self) -> bool {
        self.flag.load(Ordering::Acquire) || self.parent.as_ref().is_some_and(|p| p.is_halted())
    }

    /// How long running tasks get once halted: `grace`, or nothing after
    /// [`halt_now`](Halt::halt_now).
    fn grace(&self, grace: Duration) -> Duration {
        if self.now.load(Ordering::Acquire) {
            Duration::ZERO
        } else {
            grace
        }
    }

    /// Completes once [`halt`](Halt::halt) was called (here or on the parent).
    pub(crate) async fn halted(&self) {
        self.token.cancelled().await;
    }
}

/// The finished part of an interrupted run.
#[derive(Default)]
pub(crate) struct Resume {
    /// Nodes that finished successfully: their stored result, attempts and elapsed time.
    pub(crate) done: Vec<(u32, SmolStr, u32, Duration)>,
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

/// The driver's view of the nodes: a byte of status each, and what it knows of the
/// nodes it ended itself (failures, skips, cancels), kept apart.
///
/// Most nodes of most runs succeed, and a success is left by its worker in its cell
/// (attempts, time, text; a restored one's too, put there by the driver): a run where
/// nothing fails makes, walks and drops a byte per node here, not a 40-byte state (a
/// cache miss per node fewer in each of the driver's passes: its start, its end and
/// the report).
struct NodeStates {
    status: Vec<NodeStatus>,
    /// Indexed by node, made (with an entry for every node) when the driver ends a
    /// node itself for the first time: empty while none was.
    ended: Vec<NodeState>,
}

/// What the driver knows of a node it ended itself (the default for every other one).
#[derive(Default)]
struct NodeState {
    attempts: u32,
    elapsed: Duration,
    error: Option<Arc<dyn StdError + Send + Sync + 'static>>,
    /// Skipped only because of failures that do not fail the run (optional tasks, or
    /// tasks skipped only because of those).
    tolerated: bool,
}

/// The state of a node the driver did not end itself.
static NOT_ENDED: NodeState = NodeState {
    attempts: 0,
    elapsed: Duration::ZERO,
    error: None,
    tolerated: false,
};

impl NodeStates {
    /// `n` pending nodes.
    fn new(n: usize) -> Self {
        NodeStates {
            status: vec![NodeStatus::Pending; n],
            ended: Vec::new(),
        }
    }

    #[inline]
    fn status(&self, i: usize) -> NodeStatus {
        self.status[i]
    }

    /// What the driver knows of node `i` (nothing, the default, unless it ended it).
    #[inline]
    fn get(&self, i: usize) -> &NodeState {
        self.ended.get(i).unwrap_or(&NOT_ENDED)
    }

    /// Ends node `i` with `status` and returns its state, to be filled in.
    fn end(&mut self, i: usize, status: NodeStatus) -> &mut NodeState {
        self.status[i] = status;
        if self.ended.is_empty() {
            self.ended
                .resize_with(self.status.len(), NodeState::default);
        }
        &mut self.ended[i]
    }
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

enum Msg {
    /// A node ended without success (or, under a concurrency limit, ended at all).
    Done(Completion),
    /// No node is running any more: the driver decides whether the run is over.
    Idle,
    /// All dependencies of the node ended, but it cannot be started without the driver
    /// (a dependency did not succeed, the run is cancelled, or a limit applies).
    Settle(u32),
}

/// From this many tasks on, a recorded run has the journal's copy of its rows freed once
/// they are written (see [`RunJournal::release_when_written`]).
const RELEASE_ROWS_FROM: usize = 4096;

/// What a run leaves once its report is built: its graph and the executor's per-node
/// state (task slots, results, the run's journal while nothing else holds it). The caller
/// drops it after it handed the report over, so that the report's waiter does not wait
/// for the ~200 instructions per task that freeing them takes.
#[must_use = "dropped after the report is handed over"]
pub(crate) struct Remains {
    _graph: Graph,
    _shared: Arc<Shared>,
    /// The driver ended some node itself (a failure, a skip, a cancel). When it did not,
    /// no task errored: every node succeeded (see [`Remains::may_have_failures`]).
    driver_ended: bool,
}

impl Remains {
    /// Whether a task of the run may have failed: `false` guarantees that none did, so
    /// that a caller need not look through every entry of the report for one.
    pub(crate) fn may_have_failures(&self) -> bool {
        self.driver_ended
    }
}

/// Runs `graph` to the end and returns its report; `None` when the runtime suspended the
/// run (see [`RunConfig::halt`]). The [`Remains`] are to be dropped after the report is
/// handed over.
pub(crate) async fn execute(graph: Graph, cfg: RunConfig) -> (Option<RunReport>, Remains) {
    use tracing::Instrument as _;
    let span = cfg.span.clone();
    drive_run(graph, cfg).instrument(span).await
}

/// [`execute`], inside the run's span.
async fn drive_run(mut graph: Graph, mut cfg: RunConfig) -> (Option<RunReport>, Remains) {
    let started = Instant::now();
    let n = graph.nodes.len();
    let resume = cfg.resume.take().unwrap_or_default();
    let (shared, mut rx, roots) = new_shared(&mut graph, &cfg, resume.attempts, None);
    let info = RunInfo {
        process: graph.name.clone(),
        run_id: cfg.run_id.to_string(),
    };
    for h in &cfg.hooks {
        h.started(&info);
    }
    tracing::info!(process = %info.process, run = %info.run_id, tasks = n, "run started");

    let mut state = NodeStates::new(n);
    let mut ready: VecDeque<u32> = VecDeque::new();
    let mut settle: Vec<u32> = Vec::new();
    for (i, json, attempts, elapsed) in resume.done {
        let idx = i as usize;
        // Claimed here (its task dropped): it does not run again.
        if idx >= n || shared.nodes[idx].claim().is_none() {
            continue;
        }
        if let Some(j) = &shared.journal {
            j.restored(i, attempts, elapsed, json.clone());
        }
        shared.slots[idx].fill(Some(json), None);
        // In its cell, as a worker's success is (the cell was claimed here).
        state.status[idx] = NodeStatus::Success;
        let cell = &shared.nodes[idx];
        cell.attempts_run.store(attempts, Ordering::Relaxed);
        cell.elapsed_ns.store(nanos(elapsed), Ordering::Relaxed);
        cell.done_ok.store(true, Ordering::Release);
        count_off(&shared, i, &mut settle);
    }
    if let Some(d) = &cfg.dispatch {
        let done: Vec<bool> = shared
            .nodes
            .iter()
            .map(|c| c.done_ok.load(Ordering::Acquire))
            .collect();
        d.prepare(
            &done,
            &shared.prior_attempts,
            cfg.max_concurrency.is_some() || cfg.permits.is_some(),
        );
    }
    if settle.is_empty() {
        // The usual case (a fresh run, or nothing restored made a node ready): the nodes
        // without dependencies are those with none left, found without a pass over the
        // cells.
        settle.extend(roots);
    } else {
        settle.extend(
            (0..n as u32)
                .filter(|&i| shared.nodes[i as usize].remaining.load(Ordering::Acquire) == 0),
        );
    }
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
        if !halt_seen && cfg.halt.is_halted() {
            halt_seen = true;
            let within = cfg.halt.grace(cfg.grace);
            if !grace_armed || within.is_zero() {
                grace.as_mut().reset(tokio::time::Instant::now() + within);
                grace_armed = true;
            }
        }
        if !cancel_seen && cfg.cancel.is_cancelled() {
            cancel_seen = true;
            grace
                .as_mut()
                .reset(tokio::time::Instant::now() + cfg.grace);
            grace_armed = true;
            tracing::info!(run = %info.run_id, "run cancelled");
        }
        // Read once per pass, not per node: a cancel that comes during the pass is as if
        // it came after it.
        let cancelled = !settle.is_empty() && shared.scope.cancelled.is_set();
        while let Some(d) = settle.pop() {
            decide(
                d,
                cancelled,
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
            if shared.pooled {
                // No limit: every ready node is queued, counted in flight a batch at a time.
                shared.start_all(&mut ready);
            }
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
            () = cfg.halt.halted(), if !halt_seen => {
                halt_seen = true;
                let within = cfg.halt.grace(cfg.grace);
                if !grace_armed || within.is_zero() {
                    grace.as_mut().reset(tokio::time::Instant::now() + within);
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
                for i in 0..n {
                    // Started (claimed while pending) and not ended by its worker: a
                    // worker that ended first has its end recorded or on the way.
                    let running = state.status(i) == NodeStatus::Pending
                        && shared.nodes[i].claimed.load(Ordering::Acquire)
                        && !shared.nodes[i].done_ok.load(Ordering::Acquire);
                    if running && !shared.nodes[i].ended.swap(true, Ordering::AcqRel) {
                        let e: Arc<dyn StdError + Send + Sync> = Arc::new(CancelGraceExceeded {
                            task: shared.nodes[i].meta.name.to_owned(),
                            grace: cfg.grace,
                        });
                        for h in &cfg.hooks {
                            h.failed(&info, &shared.ids[i], &*e);
                        }
                        let s = state.end(i, NodeStatus::Errored);
                        s.error = Some(e);
                        // What it did until it was abandoned: the attempts it started
                        // and the time since its start.
                        s.attempts = shared.nodes[i].attempts_run.load(Ordering::Acquire);
                        s.elapsed = shared.running_for(i);
                        // Its row says so too: the stored report agrees with this one.
                        if let Some(j) = &shared.journal {
                            record_end(j, i, NodeStatus::Errored, s);
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
        && state.status.iter().enumerate().any(|(i, &s)| {
            s == NodeStatus::Pending && !shared.nodes[i].done_ok.load(Ordering::Acquire)
        });
    if suspended {
        tracing::info!(run = %info.run_id, "run suspended");
        return (
            None,
            Remains {
                _graph: graph,
                _shared: shared,
                driver_ended: !state.ended.is_empty(),
            },
        );
    }
    let cancelled = cancel_seen || cfg.cancel.is_cancelled();
    // What never ended ends cancelled; a success is read where its worker left it by
    // the report, in its one pass over the nodes (see `build_report`). A run that was
    // neither cancelled nor halted and where the driver ended no node itself (nothing
    // failed, was skipped or abandoned) ended every node: each one whose dependencies
    // all ended was started or settled, and each started one ended (the loop above ends
    // with nothing in flight). Its pass over every cell would find nothing, so it is
    // left to the report, which reads each cell anyway (see `build_report`: a node that
    // never ended there is the same safety net, and a bug).
    let all_ended = !cancelled && !halt_seen && !cfg.halt.is_halted() && state.ended.is_empty();
    if !all_ended {
        for (i, s) in state.status.iter_mut().enumerate() {
            if *s == NodeStatus::Pending && !shared.nodes[i].done_ok.load(Ordering::Acquire) {
                // No attempts, no time, no error: nothing to keep but its status.
                *s = NodeStatus::Cancelled;
                if let Some(j) = &shared.journal {
                    record_end(j, i, NodeStatus::Cancelled, &NOT_ENDED);
                }
            }
        }
    }
    // A large run's journal copy is freed once its last rows are written, by the writer
    // while the report is built (not waited for): the report does not sit next to it (a
    // 100k-task run peaks lower). The caller writes the run's end after every row.
    if let Some(j) = &shared.journal {
        if n >= RELEASE_ROWS_FROM {
            j.release_when_written();
        }
    }
    let report = build_report(
        &mut graph,
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
    (
        Some(report),
        Remains {
            _graph: graph,
            _shared: shared,
            driver_ended: !state.ended.is_empty(),
        },
    )
}

/// The state a run's driver and its workers share, built from `graph` (whose tasks it
/// takes), the driver's end of the workers' channel and the nodes without dependencies
/// (in order). The tasks' progress and log entries go to `reporter`, or else to the
/// run's journal (or only to `tracing`).
fn new_shared(
    graph: &mut Graph,
    cfg: &RunConfig,
    prior_attempts: Vec<u32>,
    reporter: Option<Arc<dyn Reporter>>,
) -> (Arc<Shared>, mpsc::UnboundedReceiver<Msg>, Vec<u32>) {
    let n = graph.nodes.len();
    // The graph's one copy of the ids, shared by the executor, the tasks' contexts and
    // the run's journal.
    let ids: IdList = graph.ids.clone();
    let ids_for_ctx = ids.clone();
    let scope = Arc::new(RunScope {
        process_id: cfg.run_id.clone(),
        node_ids: Arc::new(move |i| ids_for_ctx[i as usize].clone()),
        cancel: cfg.cancel.clone(),
        cancelled: CancelFlag::watch(&cfg.cancel),
        reporter: match (reporter, &cfg.journal) {
            (Some(r), _) => r,
            (None, Some(j)) => j.clone(),
            (None, None) => Arc::new(TraceReporter),
        },
        runtime: cfg.runtime.clone(),
        resources: cfg.resources.clone(),
        child_seq: std::sync::Mutex::default(),
    });
    let (tx, rx) = mpsc::unbounded_channel::<Msg>();
    // The journal's rows' task names and optional flags, when it awaits them (see
    // `RunJournal::awaiting_rows`): read in the walk of the cells, not in one of their own.
    let row_meta = cfg.journal.as_ref().is_some_and(|j| j.awaits_rows());
    // The dependencies' CSR with the nodes without dependencies, and the cells with the
    // slots. A large graph's are made in two walks of its nodes side by side, the CSR
    // on a thread of this scope (layered 100x1k: 4.1 -> 2.8 ms of the run's serial
    // start); a small graph's in one walk here, each node's dependencies read once (a
    // thread costs more than the walk; chain 10k: about 60-80 µs less than two walks).
    let (nodes, far, tasks) = (&graph.nodes, &graph.far[..], &mut graph.tasks);
    let ((slots, nodes, row_meta), (csr, roots)) = if n >= SIDE_BY_SIDE_FROM {
        side_by_side(
            || cells_of(nodes, far, tasks, row_meta, |_| {}),
            "procession-prepare",
            || csr_of(nodes, far),
        )
    } else {
        // One walk: each node's dependencies go to the CSR where its cell is made.
        let mut csr = CsrBuilder::new(n);
        let cells = cells_of(nodes, far, tasks, row_meta, |ds| csr.push(ds));
        (cells, csr.finish())
    };
    if let (Some(j), Some(m)) = (&cfg.journal, row_meta) {
        j.set_rows(m);
    }
    let shared::Csr {
        offsets,
        targets,
        dep_offsets,
        dep_targets,
    } = csr;
    let shared = Arc::new(Shared {
        slots,
        ids,
        tag: graph.tag,
        remap: graph.remap.take(),
        scope,
        hooks: cfg.hooks.clone(),
        process: graph.name.clone(),
        run_id: cfg.run_id.clone(),
        permits: cfg.permits.clone(),
        journal: cfg.journal.clone(),
        nodes,
        some_failed: AtomicBool::new(false),
        epoch: crate::util::mono_ns(),
        abandon: CancellationToken::new(),
        halt: cfg.halt.clone(),
        offsets,
        targets,
        dep_offsets,
        dep_targets,
        prior_attempts: prior_attempts.into(),
        workers_start_dependents: cfg.max_concurrency.is_none(),
        in_flight: CachePadded::new(AtomicUsize::new(0)),
        tx,
        queue: crossbeam_queue::SegQueue::new(),
        active: CachePadded::new(AtomicUsize::new(0)),
        runners: tokio::runtime::Handle::current()
            .metrics()
            .num_workers()
            .max(1),
        pooled: cfg.max_concurrency.is_none() && cfg.permits.is_none(),
        span: cfg.span.clone(),
        worker: cfg.worker.clone(),
        dispatch: cfg.dispatch.clone(),
        // The tasks were taken above (into `nodes`): the graph keeps none.
        _arena: std::mem::take(&mut graph.arena),
    });
    if let Some(j) = &cfg.journal {
        // The successes' rows are written from the cells (see `RunJournal::succeeded`).
        let cells: std::sync::Weak<Shared> = Arc::downgrade(&shared);
        j.read_successes_from(cells);
    }
    (shared, rx, roots)
}

/// From this many nodes on, [`new_shared`]'s two walks of the nodes are made side by side,
/// and the report's two halves (see [`build_report`]).
pub(super) const SIDE_BY_SIDE_FROM: usize = 16_384;

/// Runs `here` on this thread and `there` on a scoped thread named `name`, side by side,
/// and returns both results; with no thread to be had, `there` runs here after `here`.
/// A panic in either goes on to the caller once both ended.
pub(super) fn side_by_side<A, B: Send>(
    here: impl FnOnce() -> A,
    name: &str,
    mut there: impl FnMut() -> B + Send,
) -> (A, B) {
    let (a, b) = std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn_scoped(s, &mut there);
        let a = here();
        let b = spawned
            .ok()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        (a, b)
    });
    (a, b.unwrap_or_else(there))
}

/// The dependencies' CSR of `nodes` (whose far links are in `far`), and the nodes
/// without dependencies, in order.
fn csr_of(nodes: &[Node], far: &[u32]) -> (shared::Csr, Vec<u32>) {
    let mut csr = CsrBuilder::new(nodes.len());
    for node in nodes {
        csr.push(node.deps(far));
    }
    csr.finish()
}

/// The slots and the cells of `nodes`, the cells holding the tasks taken from `tasks`
/// (the vector is left empty), and the journal's row metadata when `row_meta`; `also`
/// is given each node's dependencies, in order, as the walk reads them.
fn cells_of(
    nodes: &[Node],
    far: &[u32],
    tasks: &mut Vec<TaskBox>,
    row_meta: bool,
    mut also: impl FnMut(&[u32]),
) -> (Vec<Slot>, Vec<shared::NodeCell>, Option<RowMeta>) {
    let n = nodes.len();
    let mut slots = shared::SLOTS.take(n);
    let mut cells = shared::CELLS.take(n);
    let mut meta = row_meta.then(|| RowMeta::with_capacity(n));
    let mut tasks = tasks.drain(..);
    for node in nodes {
        let ds = node.deps(far);
        also(ds);
        let remaining = u32::try_from(ds.len()).unwrap_or(u32::MAX);
        slots.push(Slot::new(node.readers));
        cells.push(shared::NodeCell::new(remaining, tasks.next(), node.meta));
        if let Some(m) = &mut meta {
            m.push(node.meta.name, node.optional);
        }
    }
    (slots, cells, meta)
}

/// Handles the workers' messages: ends without success (and, under a concurrency limit,
/// successes) and nodes whose dependencies all ended.
fn handle_batch(
    batch: &mut Vec<Msg>,
    shared: &Shared,
    state: &mut NodeStates,
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
        if state.status(i) != NodeStatus::Pending {
            continue; // abandoned after the grace period; its late end is ignored
        }
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        if c.result.is_err() && cfg.halt.is_halted() && !cfg.cancel.is_cancelled() {
            // Failed while the runtime suspends (a child it waited for was suspended, a
            // launch refused by the shutdown): not the task's failure. Nothing is
            // recorded; the node stays pending and the run resumes at the next start.
            continue;
        }
        let (status, e) = match c.result {
            // Its worker left its attempts and time in its cell, recorded it and
            // counted it off.
            Ok(()) => {
                state.status[i] = NodeStatus::Success;
                continue;
            }
            // An attempt that stopped once the run was asked to stop was cancelled,
            // whether or not the driver has seen the request yet.
            Err(e) if cfg.cancel.is_cancelled() => (NodeStatus::Cancelled, Arc::from(e)),
            Err(e) => {
                let e: Arc<dyn StdError + Send + Sync> = Arc::from(e);
                tracing::warn!(task = %shared.ids[i], error = %e, "task failed");
                for h in &cfg.hooks {
                    h.failed(info, &shared.ids[i], &*e);
                }
                (NodeStatus::Errored, e)
            }
        };
        let s = state.end(i, status);
        s.attempts = c.attempts;
        s.elapsed = c.elapsed;
        s.error = Some(e);
        // Anything but a success is recorded and counted off here, and its dependents
        // are settled by the driver.
        if let Some(j) = &shared.journal {
            record_end(j, i, status, s);
        }
        count_off_failed(shared, c.node, settle);
    }
}

/// Node `i` ended without success: flag it for the workers (see [`Shared::some_failed`]),
/// then [`count_off`] it.
fn count_off_failed(shared: &Shared, i: u32, settle: &mut Vec<u32>) {
    // Before the count-offs: a worker that ends one of `i`'s dependents' waits after
    // them sees the flag (release here, acquire in its count-off) and checks each
    // dependency.
    shared.some_failed.store(true, Ordering::Release);
    count_off(shared, i, settle);
}

/// Node `i` ended (found done at resume, or through [`count_off_failed`]): count it off
/// its dependents; those with no dependency left are settled by [`decide`].
fn count_off(shared: &Shared, i: u32, settle: &mut Vec<u32>) {
    for &d in shared.dependents(i) {
        if shared.nodes[d as usize]
            .remaining
            .fetch_sub(1, Ordering::AcqRel)
            == 1
        {
            settle.push(d);
        }
    }
}

/// Node `d` has no dependency left: queue it to start, or settle it by its policy
/// (`cancelled`: the run was cancelled when this pass over the settled nodes began).
#[allow(clippy::too_many_arguments)]
fn decide(
    d: u32,
    cancelled: bool,
    graph: &Graph,
    shared: &Shared,
    state: &mut NodeStates,
    ready: &mut VecDeque<u32>,
    settle: &mut Vec<u32>,
    hooks: &[Arc<dyn Hooks>],
    info: &RunInfo,
) {
    let di = d as usize;
    if shared.nodes[di].claimed.load(Ordering::Acquire) || state.status(di) != NodeStatus::Pending {
        return;
    }
    if cancelled {
        return; // ends cancelled with the run
    }
    // The common case first: every dependency succeeded (or there is none).
    if shared.all_deps_ok(d) {
        ready.push_back(d);
        return;
    }
    let ok = |x: u32| shared.nodes[x as usize].done_ok.load(Ordering::Acquire);
    let node = &graph.nodes[di];
    let far = &graph.far;
    let failed: Vec<u32> = node.deps(far).iter().copied().filter(|&x| !ok(x)).collect();
    if failed.is_empty() {
        ready.push_back(d);
        return;
    }
    if failed
        .iter()
        .any(|&x| state.status(x as usize) == NodeStatus::Cancelled)
    {
        // A cancelled dependency did not fail this task: it stays pending and ends
        // cancelled with the run (its own dependents with it).
        return;
    }
    // Under `run_anyway`, an input read as an `Option` may be missing; a plain one not.
    let tolerant = node.tolerant_deps(far);
    let failed_data: Vec<u32> = node
        .data_deps(far)
        .iter()
        .copied()
        .filter(|&x| !ok(x) && tolerant.binary_search(&x).is_err())
        .collect();
    let policy = node.meta.policy.on_dep_failure;
    let names = |xs: &[u32]| {
        xs.iter()
            .map(|&x| shared.ids[x as usize].to_string())
            .collect::<Vec<_>>()
    };
    let status = match policy {
        OnDepFailure::RunAnyway if failed_data.is_empty() => {
            ready.push_back(d);
            return;
        }
        OnDepFailure::Skip => {
            // Skipped because of optional failures only: that does not fail the run.
            let tolerated = failed.iter().all(|&x| match state.status(x as usize) {
                NodeStatus::Errored => graph.nodes[x as usize].optional,
                NodeStatus::Skipped => state.get(x as usize).tolerated,
                _ => false,
            });
            state.end(di, NodeStatus::Skipped).tolerated = tolerated;
            NodeStatus::Skipped
        }
        OnDepFailure::Fail | OnDepFailure::RunAnyway => {
            let list = if policy == OnDepFailure::Fail {
                &failed
            } else {
                &failed_data
            };
            let e = Arc::new(DependencyFailed {
                task: graph.ids[di].to_string(),
                failed: names(list),
            });
            for h in hooks {
                h.failed(info, &graph.ids[di], &*e);
            }
            state.end(di, NodeStatus::Errored).error = Some(e);
            NodeStatus::Errored
        }
    };
    shared.nodes[di].claimed.store(true, Ordering::Release);
    if let Some(j) = &shared.journal {
        record_end(j, di, status, state.get(di));
    }
    count_off_failed(shared, d, settle);
}

/// Writes how node `i` ended, as the driver settled it (a failure, a skip, a cancel),
/// to the run's journal, stamped now. A worker's success is recorded by the worker
/// itself ([`RunJournal::succeeded`]).
fn record_end(j: &RunJournal, i: usize, status: NodeStatus, s: &NodeState) {
    let (state, skipped) = match status {
        NodeStatus::Success => (State::Done, false),
        NodeStatus::Errored => (State::Failed, false),
        NodeStatus::Skipped => (State::Cancelled, true),
        NodeStatus::Cancelled | NodeStatus::Pending => (State::Cancelled, false),
    };
    j.ended(
        i as u32,
        Ended {
            state,
            skipped,
            attempts: s.attempts,
            elapsed: s.elapsed,
            failure: s.error.as_ref().map(|e| {
                Box::new(Failure {
                    error: e.to_string(),
                    chain: chain(&**e),
                })
            }),
            at: None,
        },
        None,
    );
}
