//! Running one node of a run coordinated elsewhere (task spreading on a shared store):
//! the run's graph rebuilt on this worker, the node's inputs filled from its
//! dependencies' stored results, and its attempts run by the same code as a local node's
//! (retries, backoff, timeout, panics).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::BoxError;
use crate::graph::Graph;
use crate::hooks::Hooks;
use crate::task::ctx::{Reporter, RuntimeHandle};
use crate::task::resource::Resources;

use super::shared::Shared;
use super::worker::attempts;
use super::{new_shared, run_span, Halt, RunConfig};

/// A run's graph rebuilt on a worker that runs some of its nodes for the run's
/// coordinator. Each node's task can be run once per `RemoteRun` (build another one to
/// run a node again).
pub(crate) struct RemoteRun {
    shared: Arc<Shared>,
    /// Every node's dependencies, by index.
    deps: Box<[Box<[u32]>]>,
    /// Per node: how many nodes depend on it.
    dependents: Box<[u32]>,
    /// Cancelled when the run asks its tasks to stop, or when one of its tasks cancels
    /// its own run (`ctx.cancel()`): the tasks' `ctx` sees it.
    cancel: CancellationToken,
    /// The run asked (through [`cancel`](RemoteRun::cancel)): a cancel not asked for was
    /// a task's own, which its worker passes on to the run.
    asked: AtomicBool,
    /// Per node: its slot holds its stored result (read from the store, or its own
    /// result once stored).
    stored: Box<[AtomicBool]>,
    /// Per node: it ran here (its slot holds what it computed here, which is not the
    /// stored result until [`mark_stored`](RemoteRun::mark_stored): its end may have
    /// been fenced out).
    ran: Box<[AtomicBool]>,
}

impl RemoteRun {
    /// Rebuilds the shared state of run `run_id` from `graph` (built by the process's
    /// registered definition from the run's stored parameters). Tasks run with this
    /// worker's `hooks` around each attempt (in the order a local run has them),
    /// without a journal (the coordinator records their ends; `reporter` receives
    /// their progress and log entries), and with this worker's `runtime`, which
    /// launches the child processes they start.
    pub(crate) fn new(
        mut graph: Graph,
        run_id: Arc<str>,
        worker: Arc<str>,
        resources: Arc<Resources>,
        hooks: Vec<Arc<dyn Hooks>>,
        reporter: Option<Arc<dyn Reporter>>,
        runtime: Option<RuntimeHandle>,
    ) -> RemoteRun {
        let cancel = CancellationToken::new();
        let deps: Box<[Box<[u32]>]> = graph
            .nodes
            .iter()
            .map(|n| n.deps(&graph.far).to_vec().into_boxed_slice())
            .collect();
        let mut dependents = vec![0u32; deps.len()].into_boxed_slice();
        for &d in deps.iter().flat_map(|d| d.iter()) {
            if let Some(c) = dependents.get_mut(d as usize) {
                *c += 1;
            }
        }
        let cfg = RunConfig {
            span: run_span(graph.name(), &run_id, &worker, 0),
            run_id,
            max_concurrency: None,
            permits: None,
            hooks,
            cancel: cancel.clone(),
            halt: Arc::new(Halt::default()),
            grace: Duration::ZERO,
            journal: None,
            resume: None,
            runtime,
            resources,
            worker,
            dispatch: None,
        };
        let n = graph.nodes.len();
        let (shared, _rx, _) = new_shared(&mut graph, &cfg, vec![0; n], reporter);
        RemoteRun {
            shared,
            deps,
            dependents,
            cancel,
            asked: AtomicBool::new(false),
            stored: (0..n).map(|_| AtomicBool::new(false)).collect(),
            ran: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// The number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.deps.len()
    }

    /// The dependencies of `node` (whose results it may read).
    pub(crate) fn deps(&self, node: u32) -> &[u32] {
        self.deps.get(node as usize).map_or(&[], |d| &d[..])
    }

    /// How many nodes depend on `node` (the most its success can make ready).
    pub(crate) fn dependents(&self, node: u32) -> usize {
        self.dependents
            .get(node as usize)
            .map_or(0, |&c| c as usize)
    }

    /// Of `nodes`, those whose stored result is not here yet.
    pub(crate) fn missing(&self, nodes: &[u32]) -> Vec<u32> {
        nodes
            .iter()
            .copied()
            .filter(|&d| {
                self.stored
                    .get(d as usize)
                    .is_some_and(|s| !s.load(Ordering::Acquire))
            })
            .collect()
    }

    /// Keeps `json`, the stored result of `node`, for the tasks that read it (unless
    /// the node ran here: see [`can_run`](RemoteRun::can_run)).
    pub(crate) fn fill(&self, node: u32, json: Arc<str>) {
        let i = node as usize;
        let (Some(slot), Some(stored)) = (self.shared.slots.get(i), self.stored.get(i)) else {
            return;
        };
        if !slot.is_filled() {
            slot.fill(Some(json.into()), None);
            stored.store(true, Ordering::Release);
        }
    }

    /// `node` ran here and its end was stored: its slot holds its stored result.
    pub(crate) fn mark_stored(&self, node: u32) {
        if let Some(s) = self.stored.get(node as usize) {
            s.store(true, Ordering::Release);
        }
    }

    /// Whether `node` can run on this rebuilt graph: its task is still here, and none of
    /// its dependencies ran here without its end being stored (that slot would hold a
    /// result that may have been fenced out, not the stored one).
    pub(crate) fn can_run(&self, node: u32) -> bool {
        let i = node as usize;
        self.shared
            .nodes
            .get(i)
            // Not claimed: its task is still here (every node of a built graph has one).
            .is_some_and(|c| !c.claimed.load(Ordering::Acquire))
            && self.deps(node).iter().all(|&d| {
                !self.ran[d as usize].load(Ordering::Acquire)
                    || self.stored[d as usize].load(Ordering::Acquire)
            })
    }

    /// Asks every task of the run running here to stop (cooperative, through `ctx`).
    pub(crate) fn cancel(&self) {
        self.asked.store(true, Ordering::Release);
        self.cancel.cancel();
    }

    /// Whether one of the run's tasks running here cancelled its own run
    /// (`ctx.cancel()`, e.g. after a cancelled child) without the run asking.
    pub(crate) fn cancelled_by_a_task(&self) -> bool {
        self.cancel.is_cancelled() && !self.asked.load(Ordering::Acquire)
    }

    /// Runs `node`'s attempts, numbered from `first + 1`, with the stored results of its
    /// dependencies `inputs` (a dependency missing there did not succeed). `None` when
    /// the node is not in the graph or its task already ran on this `RemoteRun`.
    pub(crate) async fn run(
        &self,
        node: u32,
        first: u32,
        inputs: Vec<(u32, Arc<str>)>,
    ) -> Option<(u32, Duration, Result<Arc<str>, BoxError>)> {
        let i = node as usize;
        if i >= self.len() {
            return None;
        }
        let task = self.shared.nodes[i].claim()?;
        self.ran[i].store(true, Ordering::Release);
        for (d, json) in inputs {
            self.fill(d, json);
        }
        let meta = self.shared.nodes[i].meta;
        let started = crate::util::mono_ns();
        let (attempt, res) = attempts(&self.shared, node, first, meta, task, started).await;
        let elapsed = crate::util::mono_since(started);
        let out = match res {
            // An integer or a boolean comes without its text: its slot makes it.
            Ok(json) => match json.or_else(|| self.shared.slots[i].json()) {
                Some(json) => Ok(Arc::from(json)),
                None => Err(BoxError::from(format!(
                    "task `{}` succeeded without a serialized result",
                    meta.name
                ))),
            },
            Err(e) => Err(e),
        };
        Some((attempt, elapsed, out))
    }
}
