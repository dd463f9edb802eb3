//! Building and validating graphs (the graph layer, above `task` and `hooks`): [`Graph`]
//! and its nodes, the process [`Builder`], [`TaskGraph`] (assembled by name at run
//! time), the graph fingerprint, and the [`Process`](process::Process) trait that
//! `#[process]` implements.

mod builder;
mod error;
mod fingerprint;
pub(crate) mod process;
mod task_graph;

pub use builder::Builder;
pub use error::GraphError;
pub use task_graph::TaskGraph;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::graph::process::Process;
use crate::task::erased::ErasedTask;
use crate::task::TaskMeta;

use fingerprint::Fingerprint;

static NEXT_GRAPH: AtomicU32 = AtomicU32::new(1);

fn next_tag() -> u32 {
    NEXT_GRAPH.fetch_add(1, Ordering::Relaxed)
}

/// One node of a built graph.
pub(crate) struct Node {
    pub(crate) id: Arc<str>,
    pub(crate) meta: &'static TaskMeta,
    pub(crate) description: Option<String>,
    pub(crate) task: Option<Box<dyn ErasedTask>>,
    /// [`deps`](Node::deps) then [`data_deps`](Node::data_deps), in one allocation.
    links: Box<[u32]>,
    /// How many of `links` are `deps`.
    n_deps: u32,
    /// How many input reads other nodes make of this node's result.
    pub(crate) readers: u32,
}

impl Node {
    /// A node waiting for `deps` (data and order, sorted, without repeats), of which it
    /// reads a value from `data_deps` (sorted, without repeats).
    fn new(
        id: Arc<str>,
        meta: &'static TaskMeta,
        description: Option<String>,
        task: Box<dyn ErasedTask>,
        deps: &[u32],
        data_deps: &[u32],
    ) -> Node {
        let mut links = Vec::with_capacity(deps.len() + data_deps.len());
        links.extend_from_slice(deps);
        links.extend_from_slice(data_deps);
        Node {
            id,
            meta,
            description,
            task: Some(task),
            links: links.into_boxed_slice(),
            n_deps: deps.len() as u32,
            readers: 0,
        }
    }

    /// Every node this one waits for (data and order), without repeats.
    pub(crate) fn deps(&self) -> &[u32] {
        &self.links[..self.n_deps as usize]
    }

    /// The subset of [`deps`](Node::deps) this node reads a value from.
    pub(crate) fn data_deps(&self) -> &[u32] {
        &self.links[self.n_deps as usize..]
    }
}

/// A validated graph of tasks, ready to run.
///
/// Obtained from a process ([`Graph::of`]) or from a [`TaskGraph`] ([`TaskGraph::build`]).
/// Node ids are derived from where each task was added (never from run order), so
/// building the same process with the same parameters gives the same ids and the same
/// [`fingerprint`](Graph::fingerprint).
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task]
/// fn hello() -> String { "hi".into() }
///
/// #[process]
/// fn greet(p: &mut Builder, times: usize) {
///     for _ in 0..times {
///         p.task(Hello::new());
///     }
/// }
///
/// let g = Graph::of(Greet { times: 2 }).unwrap();
/// assert_eq!(g.len(), 2);
/// assert_eq!(g.node_ids(), vec!["hello", "hello#1"]);
/// assert_eq!(g.fingerprint(), Graph::of(Greet { times: 2 }).unwrap().fingerprint());
/// ```
pub struct Graph {
    pub(crate) name: String,
    pub(crate) nodes: Vec<Node>,
    pub(crate) tag: u32,
    pub(crate) remap: Option<Vec<u32>>,
    pub(crate) fingerprint: u64,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("name", &self.name)
            .field("nodes", &self.nodes.len())
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// Builds the graph of `process` with no launch options.
    pub fn of<P: Process>(process: P) -> Result<Graph, GraphError> {
        Self::with_options(process, BTreeMap::new())
    }

    /// Builds the graph of `process` with launch options (see [`Builder::option`]).
    pub fn with_options<P: Process>(
        process: P,
        options: BTreeMap<String, Value>,
    ) -> Result<Graph, GraphError> {
        let mut b = Builder::new(P::META.name, P::META.mode, Arc::new(options));
        process.build(&mut b);
        b.finish()
    }

    /// The process (or task graph) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the graph has no task.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node ids in the order the tasks were added.
    pub fn node_ids(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| &*n.id).collect()
    }

    /// Ids of the nodes that `id` waits for, or `None` for an unknown id.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn a() {}
    /// #[task] fn b() {}
    /// #[process]
    /// fn two_steps(p: &mut Builder) { p.task(A::new()); p.task(B::new()); }
    /// let g = Graph::of(TwoSteps {}).unwrap();
    /// assert_eq!(g.dependencies("b").unwrap(), vec!["a"]);
    /// ```
    pub fn dependencies(&self, id: &str) -> Option<Vec<&str>> {
        let node = self.nodes.iter().find(|n| &*n.id == id)?;
        Some(
            node.deps()
                .iter()
                .map(|&d| &*self.nodes[d as usize].id)
                .collect(),
        )
    }

    /// A hash of the graph's structure (ids, task names, edges), stable across builds and
    /// binaries: a run is only resumed under a graph with the same fingerprint.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn compute_fingerprint(nodes: &[Node]) -> u64 {
        let mut h = Fingerprint::new();
        for n in nodes {
            h.node(n);
        }
        h.finish()
    }
}
