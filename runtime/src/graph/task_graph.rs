//! [`TaskGraph`]: a graph assembled task by task at run time, validated when built.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;

use crate::task::arg::{NodeRef, Out};
use crate::task::erased::{erase, ErasedTask};
use crate::task::spec::{IntoTaskSpec, TaskSpec};
use crate::task::{Task, TaskMeta};

use super::{next_tag, Arena, Graph, GraphError, Links, Node};

pub(super) enum Entry {
    Task {
        name: String,
        meta: &'static TaskMeta,
        task: Box<dyn ErasedTask>,
        output: (TypeId, &'static str),
        data: Vec<u32>,
        /// The slots of `data` read only as an `Option`.
        tolerant: Vec<u32>,
        order: Vec<u32>,
        optional: bool,
        description: Option<String>,
    },
    /// A name referenced by [`TaskGraph::output`] before a task of that name was added.
    Placeholder {
        name: String,
        wanted: Vec<(TypeId, &'static str, String)>,
    },
}

impl Entry {
    pub(super) fn name(&self) -> &str {
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
    pub(super) name: String,
    pub(super) tag: u32,
    pub(super) entries: Vec<Option<Entry>>,
    pub(super) by_name: HashMap<String, u32>,
    pub(super) errors: Vec<GraphError>,
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

    pub(super) fn slot_of(&self, name: &str) -> Option<u32> {
        self.by_name.get(&name.to_lowercase()).copied()
    }

    pub(super) fn task_slot(&self, name: &str) -> Result<u32, GraphError> {
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
    ///
    /// The task may carry options ([`TaskExt`](crate::TaskExt)): `.optional()` and
    /// `.description(..)` apply; its id is `name` (an `.id(..)` that says otherwise is
    /// refused with [`GraphError::InvalidId`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn ping() {}
    /// let mut g = TaskGraph::new();
    /// g.add("ping", Ping::new().optional()).unwrap();
    /// assert!(g.add("pong", Ping::new().id("other")).is_err());
    /// ```
    pub fn add<S: IntoTaskSpec>(
        &mut self,
        name: &str,
        task: S,
    ) -> Result<Out<<S::Task as Task>::Output>, GraphError> {
        let TaskSpec {
            task,
            id,
            optional,
            description,
        } = task.into_spec();
        self.add_task(name, task, id.as_deref(), optional, description)
    }

    fn add_task<T: Task>(
        &mut self,
        name: &str,
        task: T,
        id: Option<&str>,
        optional: bool,
        description: Option<String>,
    ) -> Result<Out<T::Output>, GraphError> {
        let key = name.to_lowercase();
        if let Some(id) = id.filter(|id| id.to_lowercase() != key) {
            return Err(GraphError::InvalidId {
                id: id.to_owned(),
                reason: "a task graph names its tasks with `add`'s first argument",
            });
        }
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
        let mut required = Vec::new();
        let mut foreign = false;
        let tag = self.tag;
        task.visit_inputs(&mut |r| {
            if r.node.graph == tag {
                data.push(r.node.index);
                if r.required {
                    required.push(r.node.index);
                }
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
        let mut tolerant: Vec<u32> = data
            .iter()
            .copied()
            .filter(|d| !required.contains(d))
            .collect();
        tolerant.sort_unstable();
        tolerant.dedup();
        let entry = Entry::Task {
            name: key.clone(),
            meta: &T::META,
            task: erase(task),
            output,
            data,
            tolerant,
            order: Vec::new(),
            optional,
            description,
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

    pub(super) fn name_of(&self, slot: u32) -> String {
        self.entries[slot as usize]
            .as_ref()
            .map_or_else(|| format!("#{slot}"), |e| e.name().to_owned())
    }

    /// The slots `slot` waits for: its inputs, then its ordering dependencies.
    pub(super) fn edges(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        let (data, order): (&[u32], &[u32]) = match &self.entries[slot as usize] {
            Some(Entry::Task { data, order, .. }) => (data, order),
            _ => (&[], &[]),
        };
        data.iter().chain(order).copied()
    }

    /// A dependency path from `from` to `to`, as names, if one exists.
    pub(super) fn path(&self, from: u32, to: u32) -> Option<Vec<String>> {
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
        // Declared before `nodes`: dropped after them (see `Arena`).
        let mut arena = Arena::default();
        let mut nodes = Vec::with_capacity(live.len());
        let mut tasks = Vec::with_capacity(live.len());
        let mut ids = Vec::with_capacity(live.len());
        let mut descriptions = Vec::new();
        let mut far = Vec::new();
        let mut needs_resources = false;
        let mut made_optional = Vec::new();
        let tag = self.tag;
        let name = self.name;
        for e in self.entries.into_iter().flatten() {
            if let Entry::Task {
                name,
                meta,
                task,
                output: _,
                data,
                tolerant,
                order,
                optional,
                description,
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
                let mut tolerant: Vec<u32> = tolerant.iter().map(|&d| remap[d as usize]).collect();
                tolerant.sort_unstable();
                let links = Links {
                    deps: &deps,
                    data: &data_deps,
                    tolerant: &tolerant,
                };
                if let Some(d) = description {
                    descriptions.push((nodes.len() as u32, d));
                }
                needs_resources |= !meta.resources.is_empty();
                if optional {
                    made_optional.push(nodes.len() as u32);
                }
                ids.push(smol_str::SmolStr::new(name));
                Node::push(&mut nodes, meta, &links, optional, &mut far);
                tasks.push(arena.adopt(task));
            }
        }
        for (n, r) in nodes.iter_mut().zip(readers) {
            n.readers = r;
        }
        let fingerprint = Graph::compute_fingerprint(&nodes, &ids, &far);
        Ok(Graph {
            name,
            nodes,
            ids: ids.into(),
            descriptions,
            far,
            made_optional,
            needs_resources,
            tasks,
            tag,
            remap: Some(remap),
            fingerprint,
            arena,
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
    pub(super) fn topo(&self, live: &[u32]) -> Result<Vec<u32>, GraphError> {
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
