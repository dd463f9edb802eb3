//! Building and validating graphs (the graph layer, above `task` and `hooks`): [`Graph`]
//! and its nodes, the process [`Builder`], [`TaskGraph`] (assembled by name at run
//! time), the graph fingerprint, and the [`Process`](process::Process) trait that
//! `#[process]` implements.

pub(crate) mod arena;
mod builder;
mod error;
mod fingerprint;
pub(crate) mod process;
pub(crate) mod spare;
mod task_graph;

pub use builder::Builder;
pub use error::GraphError;
pub use task_graph::TaskGraph;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde_json::Value;
use smol_str::SmolStr;

use crate::graph::process::Process;
use crate::task::TaskMeta;
use crate::util::IdList;

use arena::{Arena, TaskBox};
use fingerprint::{Fingerprint, Fnv};
use spare::Spare;

/// The node vector of the last large graph dropped, for the next graph built (see
/// [`spare`]).
static NODES: Spare<Node> = Spare::new();
/// The task vector of the last large graph dropped, for the next graph built.
static TASKS: Spare<TaskBox> = Spare::new();

static NEXT_GRAPH: AtomicU32 = AtomicU32::new(1);

fn next_tag() -> u32 {
    NEXT_GRAPH.fetch_add(1, Ordering::Relaxed)
}

/// One node of a built graph: what a run reads of it per task, 48 bytes.
///
/// Its id is in [`Graph::ids`], its own description (rare) in [`Graph::descriptions`]
/// and its task in [`Graph::tasks`]: kept apart, they cost nothing to the passes over
/// the nodes that do not read them, the ids are shared by the run's journal and executor
/// without a copy per node, and a node owns nothing (no drop, no pass over the nodes
/// to drop them).
pub(crate) struct Node {
    pub(crate) meta: &'static TaskMeta,
    /// [`deps`](Node::deps), [`data_deps`](Node::data_deps) (unless they are the same
    /// list), then [`tolerant_deps`](Node::tolerant_deps).
    links: LinkList,
    /// How many of `links` are `deps`.
    n_deps: u32,
    /// How many of `links` are `data_deps` (0 when `data_is_deps`).
    n_data: u32,
    /// How many input reads other nodes make of this node's result.
    pub(crate) readers: u32,
    /// Its failure does not fail the run (`#[task(optional)]` or `.optional()`).
    pub(crate) optional: bool,
    /// The node waits for exactly the nodes it reads (no order-only dependency, the
    /// usual case): `data_deps` is `deps`, kept once.
    data_is_deps: bool,
}

/// How many links a node keeps in itself: as many as fit in the 24 bytes of the list
/// (most nodes read a handful of others).
const INLINE_LINKS: usize = 5;

/// A node's links: a few inside the node, more in its graph's [`far`](Graph::far) list
/// (one vector for every node with more, not an allocation each: a node owns nothing,
/// so dropping the nodes is not a pass over them).
///
/// Six words, not an enum: a node is written with its list in one go, from registers,
/// whichever kind the list is (an enum's one-byte tag and length were written apart and
/// then copied into the node in wider pieces, each copy waiting for the writes before it
/// to land).
#[derive(Clone, Copy)]
struct LinkList {
    /// How many links; with [`LinkList::FAR`] set they are in the graph's far list, from
    /// `ids[0]` on, else the first ones of `ids`.
    len: u32,
    ids: [u32; INLINE_LINKS],
}

impl LinkList {
    /// Set in [`len`](Self::len) for a list in the graph's far list.
    const FAR: u32 = 1 << 31;

    /// The concatenation of `parts`, in `far` when it is longer than [`INLINE_LINKS`]
    /// (the tests' way to make a list; a node's is written in place, see
    /// [`Node::push`]).
    #[cfg(test)]
    fn of(parts: [&[u32]; 3], far: &mut Vec<u32>) -> LinkList {
        let mut list = Self::room(parts, far);
        list.fill(parts);
        list
    }

    /// The list for `parts`: in `far` when it is longer than [`INLINE_LINKS`], whole;
    /// inline otherwise, with its length and room for its ids, written by
    /// [`fill`](Self::fill).
    #[allow(clippy::inline_always)] // once per node, in `Node::push`
    #[inline(always)]
    fn room(parts: [&[u32]; 3], far: &mut Vec<u32>) -> LinkList {
        let len = parts[0].len() + parts[1].len() + parts[2].len();
        // A graph has fewer than 2^31 links: every node has fewer than 2^31 nodes to wait
        // for (and an inline list at most `INLINE_LINKS`).
        let (len, first) = if len > INLINE_LINKS {
            (len as u32 | Self::FAR, Self::far(parts, far))
        } else {
            (len as u32, 0)
        };
        let mut ids = [0; INLINE_LINKS];
        ids[0] = first;
        LinkList { len, ids }
    }

    /// Writes `parts` into the inline list [`room`](Self::room) made for them (a list in
    /// `far` has them already).
    ///
    /// Always inlined: called once per node, by [`Node::push`]; `#[inline]` left it out
    /// of line once its copies were unrolled (see [`put`]).
    #[allow(clippy::inline_always)] // measured: see above
    #[inline(always)]
    fn fill(&mut self, parts: [&[u32]; 3]) {
        if self.is_far() {
            return;
        }
        // Most lists are empty or one part: no chained iterators per id.
        let mut at = 0;
        for part in parts {
            if !part.is_empty() {
                put(&mut self.ids, at, part);
                at += part.len();
            }
        }
    }

    /// Appends `parts` to `far` (for a list longer than [`INLINE_LINKS`], out of line:
    /// rare); returns where they start.
    #[inline(never)]
    fn far(parts: [&[u32]; 3], far: &mut Vec<u32>) -> u32 {
        // Fewer than 2^32 links in a graph (see `room`).
        let at = far.len() as u32;
        for part in parts {
            far.extend_from_slice(part);
        }
        at
    }

    #[inline]
    fn is_far(&self) -> bool {
        self.len & Self::FAR != 0
    }

    /// The links, `far` being the list of the graph the node is in.
    #[inline]
    fn as_slice<'a>(&'a self, far: &'a [u32]) -> &'a [u32] {
        let len = (self.len & !Self::FAR) as usize;
        if self.is_far() {
            let at = self.ids[0] as usize;
            &far[at..at + len]
        } else {
            &self.ids[..len]
        }
    }
}

/// Copies `part` into `ids` from `at` on (`at + part.len() <= INLINE_LINKS`): a loop of
/// [`INLINE_LINKS`] steps that the compiler unrolls, where `copy_from_slice` (of a length
/// not known at compile time) was a call to `memcpy`, about 25 instructions a node for
/// one or three ids.
#[inline(always)]
#[allow(clippy::inline_always)] // once per node, in `LinkList::fill`
fn put(ids: &mut [u32; INLINE_LINKS], at: usize, part: &[u32]) {
    for (i, &id) in part.iter().enumerate().take(INLINE_LINKS) {
        if let Some(slot) = ids.get_mut(at + i) {
            *slot = id;
        }
    }
}

/// Whether two short id lists are equal: the same slice (the usual case, a node that waits
/// only for what it reads), or the same ids compared one by one. Not `==`: that calls
/// `memcmp`, which cost about 70 ns per node on the benchmark's machine (40% of a wide
/// graph's build, under `perf`), for lists most often empty.
#[inline]
fn same(a: &[u32], b: &[u32]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    std::ptr::eq(a, b) || a.iter().zip(b).all(|(x, y)| x == y)
}

/// What a node waits for and reads, as [`Node::push`] takes it.
pub(crate) struct Links<'a> {
    /// Every node it waits for (data and order), sorted, without repeats.
    pub(crate) deps: &'a [u32],
    /// The subset of `deps` it reads a value from, sorted, without repeats.
    pub(crate) data: &'a [u32],
    /// The subset of `data` it reads only as an `Option` (never required), sorted.
    pub(crate) tolerant: &'a [u32],
}

impl Node {
    /// Appends the node of a task described by `meta`, with `links`, to `nodes`; links
    /// beyond [`INLINE_LINKS`] go to `far`.
    ///
    /// The node goes in with its inline links zeroed, and they are written in place
    /// after: a list made aside had its ids written one by one, then read back in wider
    /// pieces to be copied into the node, and each such read waited for the writes
    /// before it to land (a failed store forwarding; about a fifth of a layered graph's
    /// build under `perf`).
    ///
    /// Always inlined: called once per task, with arguments that would otherwise go
    /// through the stack.
    #[allow(clippy::inline_always)] // measured: `#[inline]` left it out of line
    #[inline(always)]
    fn push(
        nodes: &mut Vec<Node>,
        meta: &'static TaskMeta,
        links: &Links<'_>,
        optional: bool,
        far: &mut Vec<u32>,
    ) {
        let data_is_deps = same(links.deps, links.data);
        let data: &[u32] = if data_is_deps { &[] } else { links.data };
        let parts = [links.deps, data, links.tolerant];
        nodes.push(Node {
            meta,
            links: LinkList::room(parts, far),
            n_deps: links.deps.len() as u32,
            n_data: data.len() as u32,
            readers: 0,
            optional: optional || meta.policy.optional,
            data_is_deps,
        });
        if let Some(node) = nodes.last_mut() {
            node.links.fill(parts);
        }
    }

    /// Every node this one waits for (data and order), without repeats; `far` is its
    /// graph's [`far`](Graph::far) list.
    #[inline]
    pub(crate) fn deps<'a>(&'a self, far: &'a [u32]) -> &'a [u32] {
        &self.links.as_slice(far)[..self.n_deps as usize]
    }

    /// The subset of [`deps`](Node::deps) this node reads a value from.
    #[inline]
    pub(crate) fn data_deps<'a>(&'a self, far: &'a [u32]) -> &'a [u32] {
        if self.data_is_deps {
            return self.deps(far);
        }
        &self.links.as_slice(far)[self.n_deps as usize..(self.n_deps + self.n_data) as usize]
    }

    /// The subset of [`data_deps`](Node::data_deps) read only as an `Option`: under
    /// `run_anyway`, this node runs without their values.
    #[inline]
    pub(crate) fn tolerant_deps<'a>(&'a self, far: &'a [u32]) -> &'a [u32] {
        &self.links.as_slice(far)[(self.n_deps + self.n_data) as usize..]
    }
}

/// A validated graph of tasks, ready to run.
///
/// Obtained from a process ([`Graph::of`]) or from a [`TaskGraph`] ([`TaskGraph::build`]).
/// Node ids are the ids given with [`TaskExt::id`](crate::TaskExt::id), or else derived
/// from where each task was added (never from run order), so building the same process
/// with the same parameters gives the same ids and the same
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
    /// The nodes' ids, by node: one copy, shared with a run's journal and executor.
    pub(crate) ids: IdList,
    /// The nodes' own descriptions (given with `.description(..)`, rare), by node index,
    /// in increasing order.
    pub(crate) descriptions: Vec<(u32, String)>,
    /// The links of the nodes that have more than a node keeps in itself (see `LinkList`).
    pub(crate) far: Vec<u32>,
    /// The nodes made optional by the graph (`.optional()`, rare), in increasing order:
    /// a node is optional when it is listed here or its task is (see [`Node::optional`]).
    pub(crate) made_optional: Vec<u32>,
    /// Some task of the graph declares resources (see `check_resources`).
    pub(crate) needs_resources: bool,
    /// The nodes' tasks, by node (in [`arena`](Graph::arena)), until a run takes them
    /// all (then empty).
    pub(crate) tasks: Vec<TaskBox>,
    pub(crate) tag: u32,
    pub(crate) remap: Option<Vec<u32>>,
    pub(crate) fingerprint: u64,
    /// Where the nodes' tasks live: declared after `nodes`, dropped after them.
    pub(crate) arena: Arena,
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

impl Drop for Graph {
    fn drop(&mut self) {
        // The tasks go before the arena (here, or as the fields' order has it). The nodes
        // own nothing: no pass over them.
        NODES.give(std::mem::take(&mut self.nodes));
        TASKS.give(std::mem::take(&mut self.tasks));
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
        // As many nodes as the last graph of this process had, at once (see `size_hint`),
        // in the memory of the last large graph dropped when it fits (see `spare`).
        let hint = process::size_hint(P::META.name);
        b.nodes = NODES.take(hint);
        b.tasks = TASKS.take(hint);
        b.node_ids.reserve(hint);
        process.build(&mut b);
        process::remember_size(P::META.name, b.nodes.len());
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
        self.ids.iter().map(|id| &**id).collect()
    }

    /// Ids of the nodes that `id` waits for, or `None` for an unknown id.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn a() -> u32 { 1 }
    /// #[task] fn b(x: u32) -> u32 { x }
    /// #[task] fn c() {}
    /// #[process]
    /// fn steps(p: &mut Builder) {
    ///     let x = p.task(A::new());
    ///     p.task(B::new(x)); // waits for `a`: it takes its output
    ///     p.task(C::new());  // waits for nothing
    /// }
    /// let g = Graph::of(Steps {}).unwrap();
    /// assert_eq!(g.dependencies("b").unwrap(), vec!["a"]);
    /// assert!(g.dependencies("c").unwrap().is_empty());
    /// ```
    pub fn dependencies(&self, id: &str) -> Option<Vec<&str>> {
        let node = self.ids.iter().position(|n| n == id)?;
        Some(
            self.nodes[node]
                .deps(&self.far)
                .iter()
                .map(|&d| &*self.ids[d as usize])
                .collect(),
        )
    }

    /// A hash of the graph's structure (ids, task names, edges), stable across builds,
    /// binaries and platforms: a run is only resumed under a graph with the same
    /// fingerprint. Its definition changed in this version (a sum of XXH3-based node
    /// hashes instead of FNV-1a over the whole graph, see the graph module's source): a
    /// run stored with the earlier value is still resumed under the same graph.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Whether `stored`, the fingerprint recorded with a run, is this graph's: its
    /// [`fingerprint`](Graph::fingerprint), or the value earlier versions computed (only
    /// computed when the first differs: a pass over the nodes).
    pub(crate) fn matches_fingerprint(&self, stored: u64) -> bool {
        stored == self.fingerprint || stored == self.legacy_fingerprint()
    }

    /// The fingerprint earlier versions recorded (FNV-1a, see [`Fnv`]).
    fn legacy_fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        for (n, id) in self.nodes.iter().zip(self.ids.iter()) {
            h.node(id, n, &self.far);
        }
        h.finish()
    }

    fn compute_fingerprint(nodes: &[Node], ids: &[SmolStr], far: &[u32]) -> u64 {
        let mut h = Fingerprint::new();
        for (i, (n, id)) in (0_u32..).zip(nodes.iter().zip(ids)) {
            h.node(i, id, n, far);
        }
        h.finish()
    }

    /// Node `i`'s own description, if it was given one (see
    /// [`descriptions`](Graph::descriptions)).
    #[cfg(test)]
    pub(crate) fn description(&self, i: u32) -> Option<&str> {
        let at = self
            .descriptions
            .binary_search_by_key(&i, |(n, _)| *n)
            .ok()?;
        Some(&self.descriptions[at].1)
    }
}

#[cfg(test)]
mod tests {
    use super::builder::{sort_dedup, Counter};
    use super::process::{self, Mode, Process, ProcessMeta};
    use super::{same, Builder, Graph, LinkList, Node, TaskGraph};
    use crate::error::InputError;
    use crate::task::arg::{Inputs, Read};
    use crate::task::ctx::Ctx;
    use crate::task::{Task, TaskMeta};

    /// A task that reads nothing and does nothing, for graphs built here.
    struct Noop;

    crate::no_op_task!(Noop, "noop");

    /// `n` [`Noop`]s, the first with a description of its own.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Noops {
        n: usize,
    }

    impl Process for Noops {
        const META: ProcessMeta = ProcessMeta::dataflow("graph::tests::noops");
        fn build(self, p: &mut Builder) {
            for i in 0..self.n {
                if i == 0 {
                    p.task_with_description(Noop, "the first");
                } else {
                    p.task(Noop);
                }
            }
        }
    }

    /// A task that reports the reads it is given (its inputs), for graphs built here.
    struct Reads(Vec<Read>);

    impl Task for Reads {
        type Output = ();
        type Args = ();
        const META: TaskMeta = TaskMeta {
            name: "reads",
            ..Noop::META
        };
        fn visit_inputs(&self, f: &mut dyn FnMut(Read)) {
            for &r in &self.0 {
                f(r);
            }
        }
        fn into_args(self, _: &Inputs<'_>) -> Result<(), InputError> {
            Ok(())
        }
        async fn call((): (), _: Ctx) -> Result<(), crate::error::BoxError> {
            Ok(())
        }
    }

    /// Reads of every kind, in blocks of every kind.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Mixed {}

    impl Process for Mixed {
        const META: ProcessMeta = ProcessMeta::dataflow("graph::tests::mixed");
        fn build(self, p: &mut Builder) {
            let read = |out: crate::Out<()>, required| Read {
                node: out.node(),
                required,
            };
            let a = p.task(Noop);
            let b = p.task(Noop);
            // `a` read both ways (required), `b` only as an option, twice.
            let c = p.task(Reads(vec![
                read(b, false),
                read(a, true),
                read(a, false),
                read(b, false),
            ]));
            p.sequential(|p| {
                p.task(Reads(vec![read(c, true)]));
                p.task(Noop);
            });
            p.after(&[a.node()], |p| p.task(Reads(vec![read(c, false)])));
            p.each(0..3, |p, _| {
                p.task(Reads(vec![read(b, true), read(a, true)]))
            });
        }
    }

    /// A node's id, dependencies, data dependencies, tolerant reads and readers.
    type Links<'a> = (&'a str, &'a [u32], &'a [u32], &'a [u32], u32);

    /// Pins what a graph is made of (ids, dependencies, data dependencies, tolerant
    /// reads, readers) and its fingerprint, as 08a7351 built them: a cheaper build must
    /// keep them all (a stored run is only resumed under the same fingerprint).
    #[test]
    fn graphs_keep_their_links_and_fingerprints() {
        let g = Graph::of(Mixed {}).unwrap();
        let links: Vec<Links<'_>> = g
            .nodes
            .iter()
            .zip(g.ids.iter())
            .map(|(n, id)| {
                (
                    &**id,
                    n.deps(&g.far),
                    n.data_deps(&g.far),
                    n.tolerant_deps(&g.far),
                    n.readers,
                )
            })
            .collect();
        let want: Vec<Links<'_>> = vec![
            ("noop", &[], &[], &[], 5),
            ("noop#1", &[], &[], &[], 5),
            ("reads", &[0, 1], &[0, 1], &[1], 2),
            ("sequential/reads", &[2], &[2], &[], 0),
            ("sequential/noop", &[3], &[], &[], 0),
            ("reads#1", &[0, 2], &[2], &[2], 0),
            ("each[0]/reads", &[0, 1], &[0, 1], &[], 0),
            ("each[1]/reads", &[0, 1], &[0, 1], &[], 0),
            ("each[2]/reads", &[0, 1], &[0, 1], &[], 0),
        ];
        assert_eq!(links, want);
        let mut t = TaskGraph::new();
        for name in ["a", "b", "c", "d"] {
            t.add(name, Noop).unwrap();
        }
        t.add_dependency("c", "a").unwrap();
        t.add_dependency("c", "b").unwrap();
        t.add_dependency("d", "c").unwrap();
        t.add_dependency("b", "a").unwrap();
        let t = t.build().unwrap();
        assert_eq!(t.dependencies("c").unwrap(), vec!["a", "b"]);
        let fingerprints = [
            g.fingerprint(),
            t.fingerprint(),
            Graph::of(Noops { n: 3 }).unwrap().fingerprint(),
        ];
        assert_eq!(
            fingerprints,
            [
                0xbdf0_519b_39e1_fc04,
                0xe8a5_df24_596d_a67d,
                0x1f8e_1419_39a1_7c29
            ],
            "{fingerprints:x?}"
        );
        // The values 08a7351 built (FNV-1a): runs stored with them are still accepted.
        let noops = Graph::of(Noops { n: 3 }).unwrap();
        let legacy = [
            g.legacy_fingerprint(),
            t.legacy_fingerprint(),
            noops.legacy_fingerprint(),
        ];
        let want = [
            0x70ba_f183_ef4b_1d91,
            0xd93c_e961_0b32_de4a,
            0x8bf6_67b1_c173_532a,
        ];
        assert_eq!(legacy, want, "{legacy:x?}");
        for (graph, old) in [&g, &t, &noops].into_iter().zip(want) {
            assert!(graph.matches_fingerprint(graph.fingerprint()));
            assert!(graph.matches_fingerprint(old));
        }
        assert!(!g.matches_fingerprint(want[1]));
        assert!(!g.matches_fingerprint(t.fingerprint()));
    }

    /// A chain of two, then eight tasks read by one that also reads the chain's first
    /// (nine links, more than a node keeps inline: its lists go to the far list).
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Wide {}

    impl Process for Wide {
        const META: ProcessMeta = ProcessMeta::dataflow("graph::tests::wide");
        fn build(self, p: &mut Builder) {
            let first = p.sequential(|p| {
                let first = p.task(Noop);
                p.task(Noop);
                first
            });
            let mut reads: Vec<Read> = (0..8)
                .map(|_| Read {
                    node: p.task(Noop).node(),
                    required: true,
                })
                .collect();
            reads.push(Read {
                node: first.node(),
                required: false,
            });
            p.task(Reads(reads));
        }
    }

    /// The fingerprint is computed two ways: fed by the builder as it adds each node (from
    /// the lists it makes the node from, the task name's hash a constant), and from the
    /// finished nodes (a `TaskGraph`). Both must give the same value for the same graph,
    /// or a run started from one kind of graph would not resume under the other.
    #[test]
    fn the_builder_and_a_pass_over_the_nodes_give_the_same_fingerprint() {
        for g in [
            Graph::of(Noops { n: 3 }).unwrap(),
            Graph::of(Mixed {}).unwrap(),
            Graph::of(Wide {}).unwrap(),
        ] {
            let over_nodes = Graph::compute_fingerprint(&g.nodes, &g.ids, &g.far);
            assert_eq!(g.fingerprint(), over_nodes, "{}", g.name());
        }
        // The same graph made both ways: `Wide` as a `TaskGraph`.
        let p = Graph::of(Wide {}).unwrap();
        assert_eq!(p.nodes[10].deps(&p.far).len(), 9, "links in the far list");
        let mut t = TaskGraph::new();
        let first = t.add("sequential/noop", Noop).unwrap();
        t.add("sequential/noop#1", Noop).unwrap();
        t.add_dependency("sequential/noop#1", "sequential/noop")
            .unwrap();
        let mut reads = Vec::new();
        for i in 0..8 {
            let id = if i == 0 {
                "noop".to_owned()
            } else {
                format!("noop#{i}")
            };
            let out = t.add(&id, Noop).unwrap();
            reads.push(Read {
                node: out.node(),
                required: true,
            });
        }
        reads.push(Read {
            node: first.node(),
            required: false,
        });
        t.add("reads", Reads(reads)).unwrap();
        let t = t.build().unwrap();
        assert_eq!(t.node_ids(), p.node_ids());
        for id in p.node_ids() {
            assert_eq!(t.dependencies(id), p.dependencies(id), "{id}");
        }
        assert_eq!(t.fingerprint(), p.fingerprint());
    }

    /// A read of node 0 of another graph, in a graph whose node 0 exists: refused as
    /// foreign, and node 0 of this graph gains no reader (the index alone is in range).
    #[test]
    fn a_foreign_handle_in_range_is_refused_and_counts_no_reader() {
        let other = Graph::of(Noops { n: 1 }).unwrap();
        let mut b = Builder::new(
            "graph::tests::foreign",
            Mode::Dataflow,
            std::sync::Arc::default(),
        );
        let own = b.task(Noop);
        let foreign = Read {
            node: crate::task::arg::NodeRef {
                graph: other.tag,
                index: 0,
            },
            required: true,
        };
        b.task(Reads(vec![foreign]));
        b.task(Reads(vec![Read {
            node: own.node(),
            required: true,
        }]));
        assert_eq!(b.nodes[0].readers, 1);
        assert_eq!(b.nodes[1].deps(&b.far), &[] as &[u32]);
        assert_eq!(b.nodes[2].deps(&b.far), &[0]);
        assert_eq!(
            b.finish().unwrap_err(),
            crate::GraphError::ForeignHandle {
                task: "reads".into()
            }
        );
    }

    #[test]
    fn a_process_graph_is_built_in_a_vector_sized_by_its_last_one() {
        // 3,500 nodes: a vector grown by doubling ends at 4,096 (kept: less than 1,024
        // spare), one sized by the last build at 3,500.
        let first = Graph::of(Noops { n: 3_500 }).unwrap();
        assert_eq!(first.nodes.capacity(), 4_096);
        assert_eq!(process::size_hint(Noops::META.name), 3_500);
        let second = Graph::of(Noops { n: 3_500 }).unwrap();
        assert_eq!(second.nodes.capacity(), 3_500);
        assert_eq!(first.node_ids(), second.node_ids());
        assert_eq!(first.fingerprint(), second.fingerprint());
        // Fewer tasks than the hint: the slack is given back.
        let small = Graph::of(Noops { n: 10 }).unwrap();
        assert_eq!(small.nodes.capacity(), 10);
        assert_eq!(process::size_hint(Noops::META.name), 10);
        // More: the vector grows from the hint.
        assert_eq!(Graph::of(Noops { n: 20 }).unwrap().len(), 20);
    }

    #[test]
    fn size_hints_are_kept_by_name_and_capped() {
        assert_eq!(process::size_hint("graph::tests::never_built"), 0);
        process::remember_size("graph::tests::hinted", 12);
        process::remember_size("graph::tests::hinted", 7);
        assert_eq!(process::size_hint("graph::tests::hinted"), 7);
        process::remember_size("graph::tests::huge", usize::MAX);
        assert_eq!(process::size_hint("graph::tests::huge"), 1 << 20);
    }

    #[test]
    fn a_node_keeps_its_own_description_beside_the_nodes() {
        let g = Graph::of(Noops { n: 2 }).unwrap();
        assert_eq!(g.description(0), Some("the first"));
        assert_eq!(g.description(1), None);
        assert_eq!(g.descriptions.len(), 1);
        // No id, no description, no task, no owned links: nothing to drop.
        assert_eq!(std::mem::size_of::<Node>(), 48);
        assert!(!std::mem::needs_drop::<Node>());
    }

    #[test]
    fn item_indexes_count_up_in_place() {
        let mut c = Counter::new();
        let mut text = String::new();
        for i in 0..=100_001_u64 {
            let from = c.next();
            text.truncate(from);
            text.extend(c.digits(from).iter().map(|&d| char::from(d)));
            assert_eq!(text, i.to_string());
            let previous = i.checked_sub(1).map(|p| p.to_string()).unwrap_or_default();
            let same = previous
                .bytes()
                .zip(text.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            assert_eq!(from, same, "{i}");
        }
    }

    #[test]
    fn id_lists_are_sorted_without_repeats() {
        let cases: [&[u32]; 9] = [
            &[],
            &[7],
            &[1, 2, 9],
            &[9, 2, 1],
            &[3, 3],
            &[5, 1, 5, 3, 1, 5],
            &[4, 0, 4, 2, 8, 8, 1, 0, 7, 3, 6, 5, 9, 2, 11, 10, 12],
            &[2, 2, 2, 2, 1],
            &[10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5],
        ];
        let triples = (0..27).map(|i| vec![i % 3, i / 3 % 3, i / 9]);
        for case in cases.iter().map(|c| c.to_vec()).chain(triples) {
            let case = &case[..];
            let mut v = case.to_vec();
            sort_dedup(&mut v);
            let mut want = case.to_vec();
            want.sort_unstable();
            want.dedup();
            assert_eq!(v, want, "{case:?}");
        }
    }

    #[test]
    fn id_lists_compare_by_slice_and_by_content() {
        let a = vec![1, 4, 9];
        let b = vec![1, 4, 9];
        assert!(same(&a, &a));
        assert!(same(&a, &b));
        assert!(!same(&a, &b[..2]));
        assert!(!same(&a, &[1, 4, 8]));
        assert!(same(&[], &[]));
        assert!(same(&a[..0], &[]));
    }

    #[test]
    fn link_lists_keep_their_order_inline_and_in_the_far_list() {
        let mut far = vec![7];
        let small = LinkList::of([&[1, 4], &[], &[4]], &mut far);
        assert!(!small.is_far());
        assert_eq!(small.as_slice(&far), [1, 4, 4]);
        let full = LinkList::of([&[1, 2, 3], &[2], &[3]], &mut far);
        assert!(!full.is_far());
        assert_eq!(full.as_slice(&far), [1, 2, 3, 2, 3]);
        assert_eq!(far, [7]);
        let big = LinkList::of([&[1, 2, 3, 5], &[2, 5], &[5]], &mut far);
        assert!(big.is_far());
        assert_eq!((big.ids[0], big.len & !LinkList::FAR), (1, 7));
        let bigger = LinkList::of([&[0, 1, 2, 3, 4, 5], &[], &[]], &mut far);
        assert_eq!(big.as_slice(&far), [1, 2, 3, 5, 2, 5, 5]);
        assert_eq!(bigger.as_slice(&far), [0, 1, 2, 3, 4, 5]);
        assert!(LinkList::of([&[], &[], &[]], &mut far)
            .as_slice(&far)
            .is_empty());
        assert_eq!(std::mem::size_of::<LinkList>(), 24);
        assert!(!std::mem::needs_drop::<LinkList>());
    }
}
