//! How a task is added to a graph: the task with its options ([`TaskSpec`]: an id chosen by
//! the user, optional, a description), and the typed names ([`TaskKey`]) that name a task
//! in the builder and look its result up in a report.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use crate::report::{sealed, ResultError, ResultKey, RunReport, TaskReport};
use crate::task::data::Data;
use crate::task::Task;

/// A typed name for a task: it gives a task its id in the builder
/// ([`TaskExt::id`]) and looks its result up in the run's report
/// ([`RunReport::get`]), typed as the task's output.
///
/// A key is a constant (`TaskKey::new` is `const`), so the process that names a task and
/// the code that reads its result share it without passing handles around. Naming a task
/// with a key of another output type does not compile.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task] fn fetch(source: String) -> Vec<u32> { vec![source.len() as u32] }
/// #[task] fn total(xs: Vec<Vec<u32>>) -> u32 { xs.concat().iter().sum() }
///
/// /// The day's total: named, so callers can read it back.
/// const TOTAL: TaskKey<u32> = TaskKey::new("total");
///
/// #[process]
/// fn report(p: &mut Builder) {
///     let eu = p.task(Fetch::new("eu"));
///     let us = p.task(Fetch::new("us"));
///     p.task(Total::new(vec![eu, us]).id(TOTAL));
/// }
///
/// # #[tokio::main] async fn main() {
/// let rt = Runtime::in_memory().start().await.unwrap();
/// let report = rt.run(Report {}).await.unwrap();
/// assert_eq!(report.get(&TOTAL), Some(4));
/// assert_eq!(report.result::<u32>("total").unwrap(), 4); // by id, untyped
/// # }
/// ```
///
/// A key of another type names no task of that type:
///
/// ```compile_fail
/// use procession::prelude::*;
/// #[task] fn count() -> u32 { 1 }
/// const LABEL: TaskKey<String> = TaskKey::new("label");
/// #[process]
/// fn p(b: &mut Builder) { b.task(Count::new().id(LABEL)); }
/// ```
pub struct TaskKey<T> {
    id: Cow<'static, str>,
    _t: PhantomData<fn() -> T>,
}

impl<T> TaskKey<T> {
    /// A key for the task with id `id`, whose output is a `T`.
    pub const fn new(id: &'static str) -> Self {
        TaskKey {
            id: Cow::Borrowed(id),
            _t: PhantomData,
        }
    }

    /// A key whose id is computed at run time (one per item of an `each`, say).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::TaskKey;
    /// let key = TaskKey::<u32>::dynamic(format!("fetch_{}", "eu"));
    /// assert_eq!(key.id(), "fetch_eu");
    /// ```
    pub fn dynamic(id: impl Into<String>) -> Self {
        TaskKey {
            id: Cow::Owned(id.into()),
            _t: PhantomData,
        }
    }

    /// The id this key names.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<T> Clone for TaskKey<T> {
    fn clone(&self) -> Self {
        TaskKey {
            id: self.id.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> PartialEq for TaskKey<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<T> Eq for TaskKey<T> {}

impl<T> Hash for TaskKey<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl<T> fmt::Debug for TaskKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskKey<{}>({:?})", std::any::type_name::<T>(), self.id)
    }
}

impl<T> sealed::Sealed for TaskKey<T> {}

impl<T: Data> ResultKey for TaskKey<T> {
    type Output = T;

    fn locate<'r>(&self, report: &'r RunReport) -> Result<&'r TaskReport, ResultError> {
        report
            .task(&self.id)
            .ok_or_else(|| ResultError::UnknownTask {
                task: self.id.to_string(),
            })
    }
}

/// What gives a task whose output is `T` its id: a string, or a [`TaskKey<T>`] (whose type
/// must be the task's output type).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot name a task whose output is `{T}`",
    label = "this key names a task of another output type",
    note = "a `TaskKey<T>` names a task returning `T`: declare the key with the task's output type, or give a plain string id"
)]
pub trait IntoTaskId<T> {
    /// The id.
    fn into_task_id(self) -> Cow<'static, str>;
}

#[diagnostic::do_not_recommend]
impl<T> IntoTaskId<T> for &str {
    fn into_task_id(self) -> Cow<'static, str> {
        Cow::Owned(self.to_owned())
    }
}

#[diagnostic::do_not_recommend]
impl<T> IntoTaskId<T> for String {
    fn into_task_id(self) -> Cow<'static, str> {
        Cow::Owned(self)
    }
}

#[diagnostic::do_not_recommend]
impl<T> IntoTaskId<T> for TaskKey<T> {
    fn into_task_id(self) -> Cow<'static, str> {
        self.id
    }
}

#[diagnostic::do_not_recommend]
impl<T> IntoTaskId<T> for &TaskKey<T> {
    fn into_task_id(self) -> Cow<'static, str> {
        self.id.clone()
    }
}

/// A task with the options it is added with: made by the methods of [`TaskExt`] and
/// taken by [`Builder::task`](crate::Builder::task) like a plain task.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// #[task] fn ping() {}
/// #[process]
/// fn check(p: &mut Builder) {
///     p.task(Ping::new().id("ping_primary").optional().description("pings the primary"));
/// }
/// let g = Graph::of(Check {}).unwrap();
/// assert_eq!(g.node_ids(), vec!["ping_primary"]);
/// ```
pub struct TaskSpec<T> {
    pub(crate) task: T,
    pub(crate) id: Option<Cow<'static, str>>,
    pub(crate) optional: bool,
    pub(crate) description: Option<String>,
}

impl<T: Task> TaskSpec<T> {
    /// The task with no option set.
    pub fn new(task: T) -> Self {
        TaskSpec {
            task,
            id: None,
            optional: false,
            description: None,
        }
    }

    /// See [`TaskExt::id`].
    #[must_use]
    pub fn id(mut self, id: impl IntoTaskId<T::Output>) -> Self {
        self.id = Some(id.into_task_id());
        self
    }

    /// See [`TaskExt::optional`].
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// See [`TaskExt::description`].
    #[must_use]
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }
}

impl<T: fmt::Debug> fmt::Debug for TaskSpec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSpec")
            .field("task", &self.task)
            .field("id", &self.id)
            .field("optional", &self.optional)
            .field("description", &self.description)
            .finish()
    }
}

/// Options for a task as it is added to a graph: an id of your choosing, optional, a
/// description. Implemented for every task; in the prelude.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task] fn build_report() -> u32 { 42 }
/// #[task] fn notify_chat(_total: u32) -> Result<(), std::io::Error> {
///     Err(std::io::Error::other("webhook down"))
/// }
///
/// #[process]
/// fn daily(p: &mut Builder) {
///     let report = p.task(BuildReport::new().id("report"));
///     p.task(NotifyChat::new(report).optional());
/// }
///
/// # #[tokio::main] async fn main() {
/// let rt = Runtime::in_memory().start().await.unwrap();
/// let report = rt.run(Daily {}).await.unwrap();
/// assert_eq!(report.status, RunStatus::Succeeded);     // the notifier was optional
/// assert_eq!(report.ids(report.warnings()), vec!["notify_chat"]);
/// assert_eq!(report.result::<u32>("report").unwrap(), 42);
/// # }
/// ```
pub trait TaskExt: Task {
    /// Gives the task the id `id` instead of the one its position would give it
    /// (`concurrent#1/archive`, `each[2]/fetch`): a string, or a [`TaskKey`] typed as the
    /// task's output.
    ///
    /// The id is used as written at the top level of a process, whatever blocks
    /// (`concurrent`, `sequential`, `each`, `transform`, `after`) the task is in. Inside a
    /// [`sub_process`](crate::Builder::sub_process) it gets the sub-process's segment
    /// (`validate/check`), so one process embedded twice does not clash with itself.
    /// Ids are unique: a second task with the same id (or a task whose id was handed out
    /// already, to a task by its position or to a block) fails the build with
    /// [`GraphError::DuplicateId`](crate::GraphError::DuplicateId), which names both. An id
    /// is not empty and contains no `/` and no control character
    /// ([`GraphError::InvalidId`](crate::GraphError::InvalidId)).
    fn id(self, id: impl IntoTaskId<Self::Output>) -> TaskSpec<Self> {
        TaskSpec::new(self).id(id)
    }

    /// Marks the task as optional: its failure does not fail the run.
    ///
    /// An optional task that errors (its own error, a timeout, a panic, or a failed
    /// dependency under `on_dep_failure = "fail"`) is reported `errored` and listed by
    /// [`RunReport::warnings`]; its dependents are settled by their own
    /// `on_dep_failure` as for any failure (skipped by default, and the tasks skipped
    /// because of it do not fail the run either). The run ends
    /// [`Succeeded`](crate::RunStatus::Succeeded) when every other task succeeded; its
    /// record ends `done`, with one warning entry per failed optional task in its log.
    /// `#[task(optional)]` makes every use of a task optional.
    fn optional(self) -> TaskSpec<Self> {
        TaskSpec::new(self).optional()
    }

    /// A description for this use of the task, replacing the one of its `#[task]`.
    fn description(self, text: impl Into<String>) -> TaskSpec<Self> {
        TaskSpec::new(self).description(text)
    }
}

impl<T: Task> TaskExt for T {}

/// A task, or a task with options ([`TaskSpec`]): what
/// [`Builder::task`](crate::Builder::task) and [`TaskGraph::add`](crate::TaskGraph::add)
/// take.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a task",
    label = "expected a task value such as `FetchOrders::new(..)`",
    note = "`#[task] fn fetch_orders(..)` generates the task type `FetchOrders`: add `FetchOrders::new(..)` with its arguments, not the function itself"
)]
pub trait IntoTaskSpec {
    /// The task.
    type Task: Task;
    /// The task with its options.
    fn into_spec(self) -> TaskSpec<Self::Task>;
}

#[diagnostic::do_not_recommend]
impl<T: Task> IntoTaskSpec for T {
    type Task = T;
    fn into_spec(self) -> TaskSpec<T> {
        TaskSpec::new(self)
    }
}

#[diagnostic::do_not_recommend]
impl<T: Task> IntoTaskSpec for TaskSpec<T> {
    type Task = T;
    fn into_spec(self) -> TaskSpec<T> {
        self
    }
}
