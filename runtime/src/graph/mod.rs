//! Building and validating graphs (the graph layer, above `task` and `hooks`): [`Graph`]
//! and its nodes, the process [`Builder`], [`TaskGraph`] (assembled by name at run
//! time), the graph fingerprint, and the [`Process`](process::Process) trait that
//! `#[process]` implements.

pub(crate) mod process;

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::graph::process::{Mode, Process};
use crate::task::arg::{NodeRef, Out};
use crate::task::erased::{Erased, ErasedTask};
use crate::task::{Task, TaskMeta};

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

/// The running hash behind [`Graph::fingerprint`], fed node by node in index order.
///
/// FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`). The [`Builder`]
/// feeds each node as it is added, while its bytes are still in cache, instead of walking
/// the whole graph again at the end.
struct Fingerprint(u64);

impl Fingerprint {
    const PRIME: u64 = 0x0100_0000_01b3;

    fn new() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }

    /// One field: its bytes, then a separator.
    fn eat(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(Self::PRIME);
        }
        h ^= 0xff;
        self.0 = h.wrapping_mul(Self::PRIME);
    }

    fn node(&mut self, n: &Node) {
        self.eat(n.id.as_bytes());
        self.eat(n.meta.name.as_bytes());
        for d in n.deps() {
            self.eat(&d.to_le_bytes());
        }
        for d in n.data_deps() {
            self.eat(&d.to_le_bytes());
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Error returned when a graph cannot be built or edited.
///
/// A refused edit leaves the graph unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Two tasks have the same name (names are compared in lower case).
    #[error("duplicate task name `{name}`")]
    DuplicateName {
        /// The name, lower-cased.
        name: String,
    },
    /// No task has this name.
    #[error("no task named `{name}`")]
    TaskNotFound {
        /// The name looked up.
        name: String,
    },
    /// A task depends on a task that does not exist.
    #[error("task `{task}` depends on `{missing}`, which is not in the graph")]
    DependencyNotFound {
        /// The dependent task.
        task: String,
        /// The missing dependency.
        missing: String,
    },
    /// A dependency was declared twice.
    #[error("task `{task}` already depends on `{dependency}`")]
    DuplicateDependency {
        /// The dependent task.
        task: String,
        /// The repeated dependency.
        dependency: String,
    },
    /// A task lists itself as a dependency.
    #[error("task `{task}` lists itself as a dependency")]
    SelfDependency {
        /// The task.
        task: String,
    },
    /// The dependencies form a cycle.
    #[error("circular dependency: {}", path.join(" -> "))]
    Cycle {
        /// The tasks on the cycle, the first repeated at the end.
        path: Vec<String>,
    },
    /// A task cannot be removed while others depend on it.
    #[error("task `{task}` cannot be removed: {} depend on it", dependents.join(", "))]
    HasDependents {
        /// The task.
        task: String,
        /// The tasks that depend on it.
        dependents: Vec<String>,
    },
    /// An input expects another type than the task it reads from returns.
    #[error(
        "task `{task}` reads `{dependency}` as `{expected}`, but `{dependency}` returns `{found}`"
    )]
    TypeMismatch {
        /// The reading task.
        task: String,
        /// The task read from.
        dependency: String,
        /// The type the input expects.
        expected: &'static str,
        /// The type the dependency returns.
        found: &'static str,
    },
    /// A handle from another graph was passed to a task of this one.
    #[error("task `{task}` was given the output of a task from another graph (handles belong to the builder that made them)")]
    ForeignHandle {
        /// The task that received the handle.
        task: String,
    },
}

struct Scope {
    mode: Mode,
    entry: Vec<u32>,
    exits: Vec<u32>,
}

impl Scope {
    /// Records a finished step (its exit nodes): the next step of a sequential block waits
    /// for it, a concurrent block ends when all its steps have ended.
    fn step_done(&mut self, step: &[u32]) {
        if step.is_empty() {
            return;
        }
        match self.mode {
            Mode::Sequential => {
                self.entry.clear();
                self.entry.extend_from_slice(step);
                self.exits.clear();
                self.exits.extend_from_slice(step);
            }
            Mode::Concurrent => self.exits.extend_from_slice(step),
        }
    }
}

/// The ids handed out so far, each with the next `#k` suffix to try when it comes again
/// as the base of another id (1 until then).
///
/// An entry holds the node's own `Arc<str>` (a block's id has no node and is only kept
/// here), so an id is allocated once, and lookups go by `&str` without building a
/// `String`. Each entry keeps the hash of its text: growing the table rehashes `u64`s
/// instead of reading every id again, and a lookup hashes its text once.
#[derive(Default)]
struct Ids {
    used: HashTable<IdEntry>,
}

struct IdEntry {
    hash: u64,
    id: Arc<str>,
    next_suffix: u32,
}

impl Ids {
    fn hash_of(text: &str) -> u64 {
        let mut h = FxHasher::default();
        text.hash(&mut h);
        h.finish()
    }

    fn find(&self, hash: u64, text: &str) -> Option<&IdEntry> {
        self.used.find(hash, |e| e.hash == hash && &*e.id == text)
    }

    /// Makes the id in `buf` unique: when it was handed out already, appends the first free
    /// `#k` (counting from the last suffix given to that base, so `n` repeats cost `O(n)`,
    /// not `O(n²)`). `buf` keeps the suffix; returns the id, now reserved.
    fn unique(&mut self, buf: &mut String) -> Arc<str> {
        let hash = Self::hash_of(buf);
        let Some(first) = self.find(hash, buf).map(|e| e.next_suffix) else {
            return self.reserve(hash, buf);
        };
        let base = buf.len();
        let mut k = first;
        loop {
            buf.truncate(base);
            buf.push('#');
            buf.push_str(itoa::Buffer::new().format(k));
            let h = Self::hash_of(buf);
            if self.find(h, buf).is_none() {
                let id = self.reserve(h, buf);
                let base_text = &buf[..base];
                if let Some(e) = self
                    .used
                    .find_mut(hash, |e| e.hash == hash && &*e.id == base_text)
                {
                    e.next_suffix = k + 1;
                }
                return id;
            }
            k += 1;
        }
    }

    /// Adds `text` (whose hash is `hash`), known to be absent.
    fn reserve(&mut self, hash: u64, text: &str) -> Arc<str> {
        let id: Arc<str> = Arc::from(text);
        self.used.insert_unique(
            hash,
            IdEntry {
                hash,
                id: Arc::clone(&id),
                next_suffix: 1,
            },
            |e| e.hash,
        );
        id
    }
}

/// Builds the graph of a process: the first parameter of a `#[process]` function.
///
/// Blocks nest: [`sequential`](Builder::sequential) runs its steps one after another,
/// [`concurrent`](Builder::concurrent) starts each step as soon as its inputs are ready. The
/// top level of a process is sequential unless `#[process(mode = "concurrent")]`.
/// A step is a task or a whole block; a step that waits for a block waits for all of it.
/// Data handles add edges of their own, wherever they come from.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task] fn fetch(source: String) -> Vec<u32> { vec![source.len() as u32] }
/// #[task] fn merge(parts: Vec<Vec<u32>>) -> Vec<u32> { parts.concat() }
/// #[task] fn total(xs: Vec<u32>) -> u32 { xs.iter().sum() }
///
/// #[process]
/// fn report(p: &mut Builder, sources: Vec<String>) {
///     let parts = p.concurrent(|p| {
///         sources.iter().map(|s| p.task(Fetch::new(s.clone()))).collect::<Vec<_>>()
///     });
///     let all = p.task(Merge::new(parts));
///     p.task(Total::new(all));
/// }
///
/// let g = Graph::of(Report { sources: vec!["eu".into(), "us".into()] }).unwrap();
/// assert_eq!(g.node_ids(), vec!["concurrent/fetch", "concurrent/fetch#1", "merge", "total"]);
/// assert_eq!(g.dependencies("merge").unwrap(), vec!["concurrent/fetch", "concurrent/fetch#1"]);
/// ```
pub struct Builder {
    name: String,
    tag: u32,
    nodes: Vec<Node>,
    scopes: Vec<Scope>,
    /// The id prefix of the current block (`a/each[3]/`); ids of tasks and blocks are
    /// written after it, then cut off again, so the buffer is reused for every id.
    prefix: String,
    ids: Ids,
    after: Vec<Vec<u32>>,
    /// The inputs of the task being added (reused: one buffer for all tasks).
    inputs: Vec<u32>,
    /// The fingerprint of `nodes`, fed as each node is added.
    fingerprint: Fingerprint,
    options: Arc<BTreeMap<String, Value>>,
    errors: Vec<GraphError>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("nodes", &self.nodes.len())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Builder {
    pub(crate) fn new(name: &str, mode: Mode, options: Arc<BTreeMap<String, Value>>) -> Self {
        Builder {
            name: name.to_owned(),
            tag: next_tag(),
            nodes: Vec::new(),
            scopes: vec![Scope {
                mode,
                entry: Vec::new(),
                exits: Vec::new(),
            }],
            prefix: String::new(),
            ids: Ids::default(),
            after: Vec::new(),
            inputs: Vec::new(),
            fingerprint: Fingerprint::new(),
            options,
            errors: Vec::new(),
        }
    }

    pub(crate) fn finish(self) -> Result<Graph, GraphError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        Ok(Graph {
            name: self.name,
            nodes: self.nodes,
            tag: self.tag,
            remap: None,
            fingerprint: self.fingerprint.finish(),
        })
    }

    /// Reserves the id `prefix` + `name` (with a `#k` suffix when taken) and returns it;
    /// the prefix is left as it was.
    fn unique_id(&mut self, name: &str) -> Arc<str> {
        let len = self.prefix.len();
        self.prefix.push_str(name);
        let id = self.ids.unique(&mut self.prefix);
        self.prefix.truncate(len);
        id
    }

    fn scope(&mut self) -> &mut Scope {
        self.scopes
            .last_mut()
            .expect("the root scope is never popped")
    }

    /// Adds a task; returns the handle of its output.
    ///
    /// The task waits for the previous step when the enclosing block is sequential, for
    /// every task whose output it reads, and for the dependencies of enclosing
    /// [`after`](Builder::after) blocks.
    pub fn task<T: Task>(&mut self, task: T) -> Out<T::Output> {
        self.add(task, None)
    }

    /// Adds a task with a description that replaces the one of its `#[task]`.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// /// Says hello.
    /// #[task] fn hello() {}
    /// #[process]
    /// fn p(b: &mut Builder) { b.task_with_description(Hello::new(), "greets the team"); }
    /// # Graph::of(P {}).unwrap();
    /// ```
    pub fn task_with_description<T: Task>(
        &mut self,
        task: T,
        description: impl Into<String>,
    ) -> Out<T::Output> {
        self.add(task, Some(description.into()))
    }

    fn add<T: Task>(&mut self, task: T, description: Option<String>) -> Out<T::Output> {
        let index = self.nodes.len() as u32;
        let id = self.unique_id(T::META.name);
        let mut data = std::mem::take(&mut self.inputs);
        data.clear();
        let mut foreign = false;
        let tag = self.tag;
        task.visit_inputs(&mut |r| {
            if r.graph == tag && r.index < index {
                data.push(r.index);
            } else {
                foreign = true;
            }
        });
        if foreign {
            self.errors.push(GraphError::ForeignHandle {
                task: id.to_string(),
            });
        }
        // Every read counts, a handle passed twice included.
        for &d in &data {
            self.nodes[d as usize].readers += 1;
        }
        data.sort_unstable();
        data.dedup();
        let scope = self.scopes.last().expect("the root scope is never popped");
        let order = scope.entry.len() + self.after.iter().map(Vec::len).sum::<usize>();
        let task: Box<dyn ErasedTask> = Box::new(Erased::new(task));
        let node = if order == 0 {
            Node::new(id, &T::META, description, task, &data, &data)
        } else {
            let mut deps = Vec::with_capacity(order + data.len());
            deps.extend_from_slice(&scope.entry);
            for a in &self.after {
                deps.extend_from_slice(a);
            }
            deps.extend_from_slice(&data);
            deps.sort_unstable();
            deps.dedup();
            Node::new(id, &T::META, description, task, &deps, &data)
        };
        self.inputs = data;
        self.fingerprint.node(&node);
        self.nodes.push(node);
        self.scope().step_done(&[index]);
        Out::new(NodeRef { graph: tag, index })
    }

    fn block<R>(&mut self, segment: &str, mode: Mode, f: impl FnOnce(&mut Builder) -> R) -> R {
        let entry = self.scope().entry.clone();
        let saved = self.enter(segment);
        self.scopes.push(Scope {
            mode,
            entry,
            exits: Vec::new(),
        });
        let r = f(self);
        let scope = self.scopes.pop().expect("pushed above");
        self.prefix.truncate(saved);
        self.scope().step_done(&scope.exits);
        r
    }

    /// Appends the segment `segment` (made unique) and `/` to the prefix; returns the
    /// prefix's length before, to cut it back to when the block ends.
    fn enter(&mut self, segment: &str) -> usize {
        let saved = self.prefix.len();
        self.prefix.push_str(segment);
        self.ids.unique(&mut self.prefix);
        self.prefix.push('/');
        saved
    }

    /// A block whose steps run one after another; it is one step of the enclosing block.
    pub fn sequential<R>(&mut self, f: impl FnOnce(&mut Builder) -> R) -> R {
        self.block("sequential", Mode::Sequential, f)
    }

    /// A block whose steps start as soon as their inputs are ready; it is one step of the
    /// enclosing block, which moves on when all of it has ended.
    pub fn concurrent<R>(&mut self, f: impl FnOnce(&mut Builder) -> R) -> R {
        self.block("concurrent", Mode::Concurrent, f)
    }

    /// Calls `f` once per item. The steps it adds are steps of the enclosing block (in a
    /// sequential block the items run one after another, in a concurrent block side by
    /// side); ids get an `each[i]/` segment.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn send(to: String) { println!("{to}"); }
    /// #[process(mode = "concurrent")]
    /// fn mail(p: &mut Builder, to: Vec<String>) {
    ///     p.each(to, |p, addr| p.task(Send::new(addr)));
    /// }
    /// let g = Graph::of(Mail { to: vec!["a".into(), "b".into()] }).unwrap();
    /// assert_eq!(g.node_ids(), vec!["each[0]/send", "each[1]/send"]);
    /// ```
    pub fn each<I: IntoIterator, R>(
        &mut self,
        items: I,
        mut f: impl FnMut(&mut Builder, I::Item) -> R,
    ) -> Vec<R> {
        let saved = self.prefix.len();
        self.prefix.push_str("each");
        self.ids.unique(&mut self.prefix);
        self.prefix.push('[');
        let base = self.prefix.len();
        let out = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                // Every step of `f` leaves the prefix as it found it: only the index changes.
                self.prefix.truncate(base);
                self.prefix.push_str(itoa::Buffer::new().format(i));
                self.prefix.push_str("]/");
                f(self, item)
            })
            .collect();
        self.prefix.truncate(saved);
        out
    }

    /// Gives a sub-block new arguments computed from `input`: `f` receives `map(input)`.
    /// Like [`each`](Builder::each) with one item, its steps are steps of the enclosing
    /// block; ids get a `transform/` segment.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn show(x: u32) -> u32 { x }
    /// #[process]
    /// fn doubled(p: &mut Builder, foo: u32) {
    ///     p.transform(foo, |foo| foo * 2, |p, bar| { p.task(Show::new(bar)); });
    /// }
    /// let g = Graph::of(Doubled { foo: 4 }).unwrap();
    /// assert_eq!(g.node_ids(), vec!["transform/show"]);
    /// ```
    pub fn transform<A, B, R>(
        &mut self,
        input: A,
        map: impl FnOnce(A) -> B,
        f: impl FnOnce(&mut Builder, B) -> R,
    ) -> R {
        let saved = self.enter("transform");
        let r = f(self, map(input));
        self.prefix.truncate(saved);
        r
    }

    /// Embeds another process's graph as one step (a block with that process's mode).
    /// Ids get a segment named after the process.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn check(x: u32) -> bool { x > 0 }
    /// #[process] fn validate(p: &mut Builder, x: u32) { p.task(Check::new(x)); }
    /// #[process] fn outer(p: &mut Builder) { p.sub_process(Validate { x: 3 }); }
    /// let g = Graph::of(Outer {}).unwrap();
    /// assert_eq!(g.node_ids(), vec!["validate/check"]);
    /// ```
    pub fn sub_process<P: Process>(&mut self, process: P) {
        self.block(P::META.name, P::META.mode, |p| process.build(p));
    }

    /// Every task added inside `f` also waits for `deps` (ordering without data).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn migrate() {}
    /// #[task] fn warm_cache() {}
    /// #[task] fn serve() {}
    /// #[process(mode = "concurrent")]
    /// fn deploy(p: &mut Builder) {
    ///     let m = p.task(Migrate::new());
    ///     p.task(WarmCache::new());
    ///     p.after(&[m.node()], |p| p.task(Serve::new()));
    /// }
    /// let g = Graph::of(Deploy {}).unwrap();
    /// assert_eq!(g.dependencies("serve").unwrap(), vec!["migrate"]);
    /// ```
    pub fn after<R>(&mut self, deps: &[NodeRef], f: impl FnOnce(&mut Builder) -> R) -> R {
        let tag = self.tag;
        let limit = self.nodes.len() as u32;
        let mut own = Vec::with_capacity(deps.len());
        for d in deps {
            if d.graph == tag && d.index < limit {
                own.push(d.index);
            } else {
                self.errors.push(GraphError::ForeignHandle {
                    task: format!("{}after", self.prefix),
                });
            }
        }
        self.after.push(own);
        let r = f(self);
        self.after.pop();
        r
    }

    /// A launch option (see `Launch::option`), decoded as `T`; `None` when it was not
    /// given or does not decode as `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn debug_dump() {}
    /// #[process]
    /// fn job(p: &mut Builder) {
    ///     if p.option::<bool>("debug").unwrap_or(false) {
    ///         p.task(DebugDump::new());
    ///     }
    /// }
    /// let opts = [("debug".to_string(), serde_json::json!(true))].into_iter().collect();
    /// assert_eq!(Graph::with_options(Job {}, opts).unwrap().len(), 1);
    /// assert_eq!(Graph::of(Job {}).unwrap().len(), 0);
    /// ```
    pub fn option<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        self.options
            .get(name)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

enum Entry {
    Task {
        name: String,
        meta: &'static TaskMeta,
        task: Box<dyn ErasedTask>,
        output: (TypeId, &'static str),
        data: Vec<u32>,
        order: Vec<u32>,
    },
    /// A name referenced by [`TaskGraph::output`] before a task of that name was added.
    Placeholder {
        name: String,
        wanted: Vec<(TypeId, &'static str, String)>,
    },
}

impl Entry {
    fn name(&self) -> &str {
        match self {
            Entry::Task { name, .. } | Entry::Placeholder { name, .. } => name,
        }
    }
}

/// A graph assembled by name at run time: add, remove and connect tasks, then
/// [`build`](TaskGraph::build) it. Every edit is checked; a refused edit changes nothing.
/// Names are compared in lower case.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task] fn producer() -> i64 { 7 }
/// #[task] fn consumer(x: i64) -> i64 { x * 2 }
///
/// let mut g = TaskGraph::new();
/// // Tasks may be added in any order: `output` refers to a task by name.
/// let x = g.output::<i64>("producer");
/// g.add("consumer", Consumer::new(x)).unwrap();
/// g.add("producer", Producer::new()).unwrap();
/// let graph = g.build().unwrap();
/// assert_eq!(graph.dependencies("consumer").unwrap(), vec!["producer"]);
///
/// let err = TaskGraph::new().add_dependency("a", "b").unwrap_err();
/// assert_eq!(err, GraphError::TaskNotFound { name: "a".into() });
/// ```
pub struct TaskGraph {
    name: String,
    tag: u32,
    entries: Vec<Option<Entry>>,
    by_name: HashMap<String, u32>,
    errors: Vec<GraphError>,
}

impl fmt::Debug for TaskGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskGraph")
            .field("name", &self.name)
            .field("tasks", &self.task_names())
            .finish_non_exhaustive()
    }
}

impl Default for TaskGraph {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskGraph {
    /// An empty graph named `task_graph`.
    pub fn new() -> Self {
        Self::named("task_graph")
    }

    /// An empty graph with a name (shown in reports).
    pub fn named(name: impl Into<String>) -> Self {
        TaskGraph {
            name: name.into(),
            tag: next_tag(),
            entries: Vec::new(),
            by_name: HashMap::new(),
            errors: Vec::new(),
        }
    }

    /// Names of the tasks, in the order they were added.
    pub fn task_names(&self) -> Vec<&str> {
        self.entries
            .iter()
            .flatten()
            .filter(|e| matches!(e, Entry::Task { .. }))
            .map(Entry::name)
            .collect()
    }

    fn slot_of(&self, name: &str) -> Option<u32> {
        self.by_name.get(&name.to_lowercase()).copied()
    }

    fn task_slot(&self, name: &str) -> Result<u32, GraphError> {
        match self.slot_of(name) {
            Some(s) if matches!(self.entries[s as usize], Some(Entry::Task { .. })) => Ok(s),
            _ => Err(GraphError::TaskNotFound {
                name: name.to_lowercase(),
            }),
        }
    }

    /// The output of the task named `name`, which may be added later. Whether it exists
    /// and returns a `T` is checked by [`build`](TaskGraph::build).
    pub fn output<T: 'static>(&mut self, name: &str) -> Out<T> {
        let key = name.to_lowercase();
        let wanted = (TypeId::of::<T>(), std::any::type_name::<T>());
        let index = if let Some(&s) = self.by_name.get(&key) {
            match &mut self.entries[s as usize] {
                Some(Entry::Placeholder { wanted: w, .. }) => {
                    w.push((wanted.0, wanted.1, String::new()));
                }
                Some(Entry::Task { output, .. }) if output.0 != wanted.0 => {
                    self.errors.push(GraphError::TypeMismatch {
                        task: "(an `output` handle)".into(),
                        dependency: key.clone(),
                        expected: wanted.1,
                        found: output.1,
                    });
                }
                _ => {}
            }
            s
        } else {
            let s = self.entries.len() as u32;
            self.entries.push(Some(Entry::Placeholder {
                name: key.clone(),
                wanted: vec![(wanted.0, wanted.1, String::new())],
            }));
            self.by_name.insert(key, s);
            s
        };
        Out::new(NodeRef {
            graph: self.tag,
            index,
        })
    }

    /// Adds a task under `name`; returns the handle of its output.
    pub fn add<T: Task>(&mut self, name: &str, task: T) -> Result<Out<T::Output>, GraphError> {
        let key = name.to_lowercase();
        let output = (
            TypeId::of::<T::Output>(),
            std::any::type_name::<T::Output>(),
        );
        let existing = self.by_name.get(&key).copied();
        if let Some(s) = existing {
            match &self.entries[s as usize] {
                Some(Entry::Placeholder { wanted, .. }) => {
                    if let Some((_, expected, _)) = wanted.iter().find(|w| w.0 != output.0) {
                        return Err(GraphError::TypeMismatch {
                            task: "(an earlier `output` call)".into(),
                            dependency: key,
                            expected,
                            found: output.1,
                        });
                    }
                }
                _ => return Err(GraphError::DuplicateName { name: key }),
            }
        }
        let mut data = Vec::new();
        let mut foreign = false;
        let tag = self.tag;
        task.visit_inputs(&mut |r| {
            if r.graph == tag {
                data.push(r.index);
            } else {
                foreign = true;
            }
        });
        if foreign {
            return Err(GraphError::ForeignHandle { task: key });
        }
        let slot = existing.unwrap_or(self.entries.len() as u32);
        if data.contains(&slot) {
            return Err(GraphError::SelfDependency { task: key });
        }
        let entry = Entry::Task {
            name: key.clone(),
            meta: &T::META,
            task: Box::new(Erased::new(task)),
            output,
            data,
            order: Vec::new(),
        };
        if existing.is_some() {
            self.entries[slot as usize] = Some(entry);
        } else {
            self.entries.push(Some(entry));
            self.by_name.insert(key, slot);
        }
        Ok(Out::new(NodeRef {
            graph: self.tag,
            index: slot,
        }))
    }

    /// Removes the task `name`. Refused when another task depends on it.
    pub fn remove(&mut self, name: &str) -> Result<(), GraphError> {
        let slot = self.task_slot(name)?;
        let dependents: Vec<String> = self
            .entries
            .iter()
            .flatten()
            .filter_map(|e| match e {
                Entry::Task {
                    name, data, order, ..
                } if data.contains(&slot) || order.contains(&slot) => Some(name.clone()),
                _ => None,
            })
            .collect();
        if !dependents.is_empty() {
            return Err(GraphError::HasDependents {
                task: name.to_lowercase(),
                dependents,
            });
        }
        let key = name.to_lowercase();
        self.entries[slot as usize] = None;
        self.by_name.remove(&key);
        Ok(())
    }

    /// Makes `task` wait for `dependency` (ordering only, no data). Refused when either
    /// is missing, the edge exists, or it would close a cycle (the error names the cycle).
    pub fn add_dependency(&mut self, task: &str, dependency: &str) -> Result<(), GraphError> {
        let t = self.task_slot(task)?;
        let d = self
            .task_slot(dependency)
            .map_err(|_| GraphError::DependencyNotFound {
                task: task.to_lowercase(),
                missing: dependency.to_lowercase(),
            })?;
        if t == d {
            return Err(GraphError::SelfDependency {
                task: task.to_lowercase(),
            });
        }
        if let Some(Entry::Task { data, order, .. }) = &self.entries[t as usize] {
            if order.contains(&d) || data.contains(&d) {
                return Err(GraphError::DuplicateDependency {
                    task: task.to_lowercase(),
                    dependency: dependency.to_lowercase(),
                });
            }
        }
        // Would `dependency` (transitively) wait for `task`? Then the edge closes a cycle.
        if let Some(mut path) = self.path(d, t) {
            path.push(self.name_of(d));
            return Err(GraphError::Cycle { path });
        }
        if let Some(Entry::Task { order, .. }) = &mut self.entries[t as usize] {
            order.push(d);
        }
        Ok(())
    }

    fn name_of(&self, slot: u32) -> String {
        self.entries[slot as usize]
            .as_ref()
            .map_or_else(|| format!("#{slot}"), |e| e.name().to_owned())
    }

    /// The slots `slot` waits for: its inputs, then its ordering dependencies.
    fn edges(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        let (data, order): (&[u32], &[u32]) = match &self.entries[slot as usize] {
            Some(Entry::Task { data, order, .. }) => (data, order),
            _ => (&[], &[]),
        };
        data.iter().chain(order).copied()
    }

    /// A dependency path from `from` to `to`, as names, if one exists.
    fn path(&self, from: u32, to: u32) -> Option<Vec<String>> {
        let mut parent: HashMap<u32, u32> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        parent.insert(from, from);
        while let Some(node) = queue.pop_front() {
            if node == to {
                let mut path = vec![self.name_of(node)];
                let mut cur = node;
                while cur != from {
                    cur = parent[&cur];
                    path.push(self.name_of(cur));
                }
                path.reverse();
                return Some(path);
            }
            for next in self.edges(node) {
                if let std::collections::hash_map::Entry::Vacant(v) = parent.entry(next) {
                    v.insert(node);
                    queue.push_back(next);
                }
            }
        }
        None
    }

    /// Validates the graph and turns it into a runnable [`Graph`].
    ///
    /// # Errors
    ///
    /// [`GraphError::DependencyNotFound`] for an input or dependency naming no task,
    /// [`GraphError::TypeMismatch`] for an input of the wrong type, [`GraphError::Cycle`]
    /// (naming the cycle) when the inputs form a cycle.
    pub fn build(self) -> Result<Graph, GraphError> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        // Missing names and types.
        for e in self.entries.iter().flatten() {
            if let Entry::Task { name, data, .. } = e {
                for &d in data {
                    match &self.entries[d as usize] {
                        Some(Entry::Task { .. }) => {}
                        Some(Entry::Placeholder { name: missing, .. }) => {
                            return Err(GraphError::DependencyNotFound {
                                task: name.clone(),
                                missing: missing.clone(),
                            })
                        }
                        None => {
                            return Err(GraphError::DependencyNotFound {
                                task: name.clone(),
                                missing: format!("#{d}"),
                            })
                        }
                    }
                }
            }
        }
        // Cycles (inputs by name can form them).
        let live: Vec<u32> = (0..self.entries.len() as u32)
            .filter(|&s| matches!(self.entries[s as usize], Some(Entry::Task { .. })))
            .collect();
        let order = self.topo(&live)?;
        // Compact: slot -> node index, in insertion order.
        let mut remap = vec![u32::MAX; self.entries.len()];
        for (i, &s) in live.iter().enumerate() {
            remap[s as usize] = i as u32;
        }
        drop(order);
        let mut readers = vec![0u32; live.len()];
        let mut nodes = Vec::with_capacity(live.len());
        let tag = self.tag;
        let name = self.name;
        for e in self.entries.into_iter().flatten() {
            if let Entry::Task {
                name,
                meta,
                task,
                output: _,
                data,
                order,
            } = e
            {
                let data_idx: Vec<u32> = data.iter().map(|&d| remap[d as usize]).collect();
                for &d in &data_idx {
                    readers[d as usize] += 1;
                }
                let mut deps: Vec<u32> = data_idx
                    .iter()
                    .copied()
                    .chain(order.iter().map(|&d| remap[d as usize]))
                    .collect();
                deps.sort_unstable();
                deps.dedup();
                let mut data_deps = data_idx;
                data_deps.sort_unstable();
                data_deps.dedup();
                nodes.push(Node::new(
                    Arc::from(name),
                    meta,
                    None,
                    task,
                    &deps,
                    &data_deps,
                ));
            }
        }
        for (n, r) in nodes.iter_mut().zip(readers) {
            n.readers = r;
        }
        let fingerprint = Graph::compute_fingerprint(&nodes);
        Ok(Graph {
            name,
            nodes,
            tag,
            remap: Some(remap),
            fingerprint,
        })
    }

    /// Checks the graph without consuming it.
    pub fn validate(&self) -> Result<(), GraphError> {
        if let Some(e) = self.errors.first() {
            return Err(e.clone());
        }
        for e in self.entries.iter().flatten() {
            if let Entry::Task { name, data, .. } = e {
                for &d in data {
                    if !matches!(self.entries[d as usize], Some(Entry::Task { .. })) {
                        return Err(GraphError::DependencyNotFound {
                            task: name.clone(),
                            missing: self.name_of(d),
                        });
                    }
                }
            }
        }
        let live: Vec<u32> = (0..self.entries.len() as u32)
            .filter(|&s| matches!(self.entries[s as usize], Some(Entry::Task { .. })))
            .collect();
        self.topo(&live).map(drop)
    }

    /// A topological order of `live`, or the first cycle found.
    fn topo(&self, live: &[u32]) -> Result<Vec<u32>, GraphError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let mut mark = vec![Mark::New; self.entries.len()];
        let mut out = Vec::with_capacity(live.len());
        for &start in live {
            if mark[start as usize] != Mark::New {
                continue;
            }
            let mut stack: Vec<(u32, usize)> = vec![(start, 0)];
            mark[start as usize] = Mark::Active;
            while let Some(&mut (node, ref mut i)) = stack.last_mut() {
                // `nth` on slices is O(1): no list of edges is built per step.
                if let Some(next) = self.edges(node).nth(*i) {
                    *i += 1;
                    match mark[next as usize] {
                        Mark::New => {
                            mark[next as usize] = Mark::Active;
                            stack.push((next, 0));
                        }
                        Mark::Active => {
                            let pos = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                            let mut path: Vec<String> =
                                stack[pos..].iter().map(|(n, _)| self.name_of(*n)).collect();
                            path.push(self.name_of(next));
                            return Err(GraphError::Cycle { path });
                        }
                        Mark::Done => {}
                    }
                } else {
                    mark[node as usize] = Mark::Done;
                    out.push(node);
                    stack.pop();
                }
            }
        }
        Ok(out)
    }
}
