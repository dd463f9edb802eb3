//! The error of building or editing a graph.

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
    /// Two tasks were given the same id (with [`TaskExt::id`](crate::TaskExt::id)), or a
    /// task was given an id already handed out by position (to a task or a block).
    #[error("id `{id}` is given twice: to {first} and to {second}; ids given with `.id(..)` must be unique in their process")]
    DuplicateId {
        /// The id.
        id: String,
        /// What has it first: the task's name and position (`` `sum` (task 3) ``), or a block.
        first: String,
        /// The task given it again: its name and position.
        second: String,
    },
    /// An id given with [`TaskExt::id`](crate::TaskExt::id) cannot be used.
    #[error("invalid task id `{id}`: {reason}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// A handle from another graph was passed to a task of this one.
    #[error("task `{task}` was given the output of a task from another graph (handles belong to the builder that made them)")]
    ForeignHandle {
        /// The task that received the handle.
        task: String,
    },
}
