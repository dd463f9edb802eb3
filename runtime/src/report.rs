//! What a finished run leaves: one entry per task, with status, attempts, timing, result
//! and error.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use smol_str::SmolStr;

use crate::record::State;

/// How a task ended.
///
/// # Examples
///
/// ```
/// use procession::TaskStatus;
/// assert_eq!(serde_json::to_string(&TaskStatus::Errored).unwrap(), "\"errored\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Returned a value.
    Success,
    /// Failed: its last attempt's error, a timeout, a panic, or a failed dependency with
    /// `on_dep_failure = "fail"`.
    Errored,
    /// Never ran because a task it depends on did not succeed.
    Skipped,
    /// Never ran, or was stopped, because the run was cancelled.
    Cancelled,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every task succeeded, except optional tasks that errored and the tasks skipped
    /// because of them: those are [`RunReport::warnings`].
    Succeeded,
    /// At least one task that is not optional errored, or was skipped because of one.
    Failed,
    /// The run was cancelled before every task succeeded.
    Cancelled,
}

impl RunStatus {
    /// The state the run's record ends in.
    pub(crate) fn end_state(self) -> State {
        match self {
            RunStatus::Succeeded => State::Done,
            RunStatus::Failed => State::Failed,
            RunStatus::Cancelled => State::Cancelled,
        }
    }

    /// The status of a run whose record ended in `state` (any state but done or
    /// cancelled counts as failed).
    pub(crate) fn of_end(state: State) -> RunStatus {
        match state {
            State::Done => RunStatus::Succeeded,
            State::Cancelled => RunStatus::Cancelled,
            _ => RunStatus::Failed,
        }
    }
}

/// The error of an errored task.
#[derive(Clone, Serialize, Deserialize)]
pub struct ErrorReport {
    /// The error's message (`Display`).
    pub message: String,
    /// The messages of the error and of each `source()`, outermost first.
    pub chain: Vec<String>,
    /// Ids of the tasks that did not run because of this failure (transitively).
    pub downstream_impact: Vec<String>,
    #[serde(skip)]
    pub(crate) source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl ErrorReport {
    /// The original error value, for downcasting. `None` for a report read back from JSON.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("division by zero")]
    /// struct DivByZero;
    ///
    /// #[task]
    /// fn div10(a: i64) -> Result<i64, DivByZero> { if a == 0 { Err(DivByZero) } else { Ok(10 / a) } }
    ///
    /// #[process]
    /// fn divide(p: &mut Builder) { p.task(Div10::new(0)); }
    ///
    /// # #[tokio::main] async fn main() {
    /// let rt = Runtime::in_memory().start().await.unwrap();
    /// let report = rt.run(Divide {}).await.unwrap();
    /// let err = report.task("div10").unwrap().error.as_ref().unwrap();
    /// assert!(err.error().unwrap().is::<DivByZero>());
    /// # }
    /// ```
    pub fn error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl fmt::Debug for ErrorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorReport")
            .field("message", &self.message)
            .field("chain", &self.chain)
            .field("downstream_impact", &self.downstream_impact)
            .finish_non_exhaustive()
    }
}

/// A JSON text, shared: a task's result is serialized once and the same text serves its
/// successors, the store and the report. A short text (up to 23 bytes: most numbers,
/// booleans, short strings) is kept inline, without an allocation; a longer one is shared.
///
/// Serializes as the JSON value it holds (not as a string).
///
/// # Examples
///
/// ```
/// use procession::Json;
///
/// let j = Json::parse(r#"{"total": 42}"#).unwrap();
/// assert_eq!(j.get(), r#"{"total": 42}"#);
/// let v: serde_json::Value = j.decode().unwrap();
/// assert_eq!(v["total"], 42);
/// assert!(Json::parse("{oops").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Json(SmolStr);

impl Json {
    /// Checks that `text` is one JSON value and keeps it.
    ///
    /// # Errors
    ///
    /// The parser's error when `text` is not valid JSON.
    pub fn parse(text: &str) -> Result<Json, serde_json::Error> {
        let _: &RawValue = serde_json::from_str(text)?;
        Ok(Json(SmolStr::new(text)))
    }

    /// Text written by this crate's own serializer (valid by construction).
    pub(crate) fn trusted(text: SmolStr) -> Json {
        Json(text)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// The value decoded as `T`.
    ///
    /// # Errors
    ///
    /// The decoder's error when the text is not a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(Json(SmolStr::new(raw.get())))
    }
}

/// Where a [`TaskReport`]'s name, function and description come from: the task's
/// static metadata (every live report: no copy per entry), or owned text.
pub(crate) trait Described: Sync {
    /// The task's name.
    fn name(&self) -> &str;
    /// The function's path.
    fn function(&self) -> &str;
    /// The task's description.
    fn description(&self) -> &str;
}

/// The names of a task that are not its metadata's: a node's own description, or a
/// report read back from JSON or rebuilt from stored rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedNames {
    pub(crate) name: Cow<'static, str>,
    pub(crate) function: Cow<'static, str>,
    pub(crate) description: Cow<'static, str>,
}

impl Described for OwnedNames {
    fn name(&self) -> &str {
        &self.name
    }
    fn function(&self) -> &str {
        &self.function
    }
    fn description(&self) -> &str {
        &self.description
    }
}

/// A [`TaskReport`]'s names: 16 bytes, where three strings took 72.
#[derive(Clone)]
pub(crate) enum Names {
    /// The task's metadata (static).
    Static(&'static dyn Described),
    /// Text of its own.
    Owned(Box<OwnedNames>),
}

impl Names {
    fn get(&self) -> &dyn Described {
        match self {
            Names::Static(d) => *d,
            Names::Owned(o) => &**o,
        }
    }
}

/// One task's entry in a [`RunReport`].
///
/// The task's name, function and description are methods
/// ([`name`](TaskReport::name), [`function`](TaskReport::function),
/// [`description`](TaskReport::description)) that read them from the task's static
/// metadata, and its wall time is [`elapsed`](TaskReport::elapsed) (kept in nanoseconds):
/// an entry of a live report is 88 bytes, not 152 (a 100k-task report: 6 MiB less).
/// Before, these four were fields (`t.name`, `t.elapsed`); the JSON form is unchanged.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// /// Adds one.
/// #[task]
/// fn inc(x: u32) -> u32 { x + 1 }
///
/// # #[tokio::main] async fn main() {
/// let mut g = TaskGraph::new();
/// g.add("inc", Inc::new(1)).unwrap();
/// let rt = Runtime::in_memory().start().await.unwrap();
/// let report = rt.run_graph(g).await.unwrap();
/// let t = report.task("inc").unwrap();
/// assert_eq!((t.name(), t.description()), ("inc", "Adds one."));
/// assert!(t.function().ends_with("inc"));
/// assert!(t.elapsed() <= report.elapsed);
/// let json = serde_json::to_value(t).unwrap();
/// assert_eq!(json["name"], "inc");
/// assert!(json["elapsed_ns"].is_u64());
/// # }
/// ```
#[derive(Clone)]
pub struct TaskReport {
    /// The node id (unique in the run): kept inline when short (up to 23 bytes), else
    /// shared with the graph; it derefs to `str` and compares with `&str`.
    pub id: SmolStr,
    /// Name, function and description.
    pub(crate) names: Names,
    /// How it ended.
    pub status: TaskStatus,
    /// Attempts that ran (0 when it never ran).
    pub attempts: u32,
    /// See [`elapsed`](TaskReport::elapsed).
    pub(crate) elapsed_ns: u64,
    /// The result as JSON (`None` unless it succeeded).
    pub result: Option<Json>,
    /// The error (`None` unless it errored). Boxed: most tasks succeed, and an entry
    /// without an error is then 80 bytes smaller (a 100k-task report: 8 MiB). Its fields
    /// read as before (`t.error.as_ref().map(|e| &e.message)`); `as_deref()` gives an
    /// `Option<&ErrorReport>`.
    ///
    /// ```
    /// # use procession::prelude::*;
    /// #[task]
    /// fn fails() -> Result<u8, String> { Err("no".into()) }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut g = TaskGraph::new();
    /// g.add("f", Fails::new()).unwrap();
    /// let rt = procession::Runtime::in_memory().start().await.unwrap();
    /// let report = rt.run_graph(g).await.unwrap();
    /// let e: Option<&procession::ErrorReport> = report.tasks[0].error.as_deref();
    /// assert_eq!(e.unwrap().message, "no");
    /// # }
    /// ```
    pub error: Option<Box<ErrorReport>>,
    /// Whether the task is optional: its failure does not fail the run
    /// (see [`TaskExt::optional`](crate::TaskExt::optional)).
    pub optional: bool,
}

impl TaskReport {
    /// True when the task succeeded.
    pub fn is_success(&self) -> bool {
        self.status == TaskStatus::Success
    }

    /// The task's name (`#[task(name = "…")]`, else the function's name).
    pub fn name(&self) -> &str {
        self.names.get().name()
    }

    /// The function's path. Empty in a report rebuilt from stored task rows (they keep
    /// the name only).
    pub fn function(&self) -> &str {
        self.names.get().function()
    }

    /// The task's description: the node's own when it was given one, else the task's.
    /// Empty in a report rebuilt from stored task rows.
    pub fn description(&self) -> &str {
        self.names.get().description()
    }

    /// Wall time from when its worker took the task up (before it resolved the inputs
    /// and started the first attempt) to the end of its last attempt (exactly zero when
    /// it never ran), to the nanosecond, on the monotonic clock.
    ///
    /// A worker that goes on to a task straight from the end of the one it ran before
    /// (the next of a chain, a task waiting in its queue) without a wait in between takes
    /// that end as the task's start (one clock read per task, not two): the task's time
    /// then includes the worker's step between the two (recording the previous task's
    /// end, starting the tasks it made ready: well under a microsecond). The times of the
    /// tasks one worker runs one after another never overlap.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns)
    }

    /// The result decoded as `T`.
    ///
    /// # Errors
    ///
    /// [`ResultError::NoResult`] when the task did not succeed, [`ResultError::Decode`]
    /// when the result is not a `T`.
    pub fn result_as<T: DeserializeOwned>(&self) -> Result<T, ResultError> {
        let raw = self.result.as_ref().ok_or_else(|| ResultError::NoResult {
            task: self.id.to_string(),
            status: self.status,
        })?;
        raw.decode().map_err(|e| ResultError::Decode {
            task: self.id.to_string(),
            message: e.to_string(),
        })
    }
}

// `names` and `elapsed_ns` are shown as what they stand for: name, function, description
// and elapsed, as the fields were shown before.
#[allow(clippy::missing_fields_in_debug)]
impl fmt::Debug for TaskReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskReport")
            .field("id", &self.id)
            .field("name", &self.name())
            .field("function", &self.function())
            .field("description", &self.description())
            .field("status", &self.status)
            .field("attempts", &self.attempts)
            .field("elapsed", &self.elapsed())
            .field("result", &self.result)
            .field("error", &self.error)
            .field("optional", &self.optional)
            .finish()
    }
}

/// A [`TaskReport`] as it is written: the field order and names of the JSON form.
#[derive(Serialize)]
struct TaskReportOut<'a> {
    id: &'a str,
    name: &'a str,
    function: &'a str,
    description: &'a str,
    status: TaskStatus,
    attempts: u32,
    elapsed_ns: u64,
    result: &'a Option<Json>,
    error: &'a Option<Box<ErrorReport>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    optional: bool,
}

/// A [`TaskReport`] as it is read back.
#[derive(Deserialize)]
#[serde(rename = "TaskReport")]
struct TaskReportIn {
    id: SmolStr,
    name: String,
    function: String,
    description: String,
    status: TaskStatus,
    attempts: u32,
    elapsed_ns: u64,
    result: Option<Json>,
    error: Option<Box<ErrorReport>>,
    #[serde(default)]
    optional: bool,
}

impl Serialize for TaskReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let names = self.names.get();
        TaskReportOut {
            id: &self.id,
            name: names.name(),
            function: names.function(),
            description: names.description(),
            status: self.status,
            attempts: self.attempts,
            elapsed_ns: self.elapsed_ns,
            result: &self.result,
            error: &self.error,
            optional: self.optional,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskReport {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TaskReport, D::Error> {
        let t = TaskReportIn::deserialize(d)?;
        Ok(TaskReport {
            id: t.id,
            names: Names::Owned(Box::new(OwnedNames {
                name: Cow::Owned(t.name),
                function: Cow::Owned(t.function),
                description: Cow::Owned(t.description),
            })),
            status: t.status,
            attempts: t.attempts,
            elapsed_ns: t.elapsed_ns,
            result: t.result,
            error: t.error,
            optional: t.optional,
        })
    }
}

mod duration_ns {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(crate::util::nanos(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_nanos)
    }
}

/// Error returned by [`RunReport::result`] and [`TaskReport::result_as`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// No task has this id.
    #[error("no task `{task}` in this report")]
    UnknownTask {
        /// The id asked for.
        task: String,
    },
    /// The task has no result because it did not succeed.
    #[error("task `{task}` has no result: it ended {status:?}")]
    NoResult {
        /// The task.
        task: String,
        /// How it ended.
        status: TaskStatus,
    },
    /// The stored result does not decode as the requested type.
    #[error("result of task `{task}` does not decode: {message}")]
    Decode {
        /// The task.
        task: String,
        /// The decoder's message.
        message: String,
    },
    /// A handle ([`Out`](crate::Out)) was looked up in the report of another graph's run
    /// (or of a report read back from JSON, which keeps no handles).
    #[error("the handle belongs to another graph than the one this report is of")]
    ForeignHandle,
}

pub(crate) mod sealed {
    /// Keeps [`ResultKey`](super::ResultKey) to the key types of this crate.
    pub trait Sealed {}
}

/// What a report's typed lookups ([`RunReport::get`], [`RunReport::try_get`]) take: the
/// handle the builder returned ([`Out<T>`](crate::Out)) or a [`TaskKey<T>`](crate::TaskKey).
///
/// Sealed: implemented by those two types only.
pub trait ResultKey: sealed::Sealed {
    /// The output type of the task the key names.
    type Output: DeserializeOwned;

    /// The task's entry in `report`.
    ///
    /// # Errors
    ///
    /// [`ResultError::UnknownTask`] or [`ResultError::ForeignHandle`] when `report` has no
    /// such task.
    fn locate<'r>(&self, report: &'r RunReport) -> Result<&'r TaskReport, ResultError>;
}

/// Where the handles of the graph a report was built from point, so that
/// [`RunReport::get`] can take an [`Out`](crate::Out).
#[derive(Debug, Clone)]
pub(crate) struct Handles {
    /// The graph's tag (each built graph has its own).
    pub(crate) graph: u32,
    /// Handle index -> task index, for graphs whose handles are not task indices.
    pub(crate) remap: Option<Arc<[u32]>>,
}

/// The outcome of a run: one [`TaskReport`] per task, in the order the tasks were added.
///
/// `to_json` keeps everything but the original error values (their messages and source
/// chains are kept): `RunReport::from_json(&r.to_json())` gives the same JSON back.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task] fn load() -> Vec<u32> { vec![1, 2, 3] }
/// #[task] fn apply(_xs: Vec<u32>) -> Result<u32, std::io::Error> { Err(std::io::Error::other("disk full")) }
/// #[task] fn notify(_total: u32) {}
///
/// #[process]
/// fn job(p: &mut Builder) {
///     let xs = p.task(Load::new());
///     let total = p.task(Apply::new(xs));
///     p.task(Notify::new(total));
/// }
///
/// # #[tokio::main] async fn main() {
/// let rt = Runtime::in_memory().start().await.unwrap();
/// let report = rt.run(Job {}).await.unwrap();
/// assert_eq!(report.status, RunStatus::Failed);
/// assert_eq!(report.ids(report.successes()), vec!["load"]);
/// assert_eq!(report.ids(report.errored()), vec!["apply"]);
/// assert_eq!(report.ids(report.skipped()), vec!["notify"]);
/// assert_eq!(report.result::<Vec<u32>>("load").unwrap(), vec![1, 2, 3]);
/// let apply = report.task("apply").unwrap();
/// assert_eq!(apply.error.as_ref().unwrap().downstream_impact, vec!["notify"]);
/// let back = RunReport::from_json(&report.to_json()).unwrap();
/// assert_eq!(back.to_json(), report.to_json());
/// # }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The process (or task graph) name.
    pub process: String,
    /// The run's id.
    pub run_id: String,
    /// How the run ended.
    pub status: RunStatus,
    /// Wall time of the run.
    #[serde(with = "duration_ns", rename = "elapsed_ns")]
    pub elapsed: Duration,
    /// One entry per task, in the order they were added.
    pub tasks: Vec<TaskReport>,
    /// Resolves [`Out`](crate::Out) handles (live reports only).
    #[serde(skip)]
    pub(crate) handles: Option<Handles>,
}

impl RunReport {
    /// True when the run succeeded (optional tasks may have failed: see
    /// [`warnings`](RunReport::warnings)).
    pub fn is_success(&self) -> bool {
        self.status == RunStatus::Succeeded
    }

    /// The entry of the task with node id `id`.
    pub fn task(&self, id: &str) -> Option<&TaskReport> {
        self.tasks.iter().find(|t| &*t.id == id)
    }

    /// The entry of the task at `index` of graph `graph`, when this report is of that
    /// graph's run.
    pub(crate) fn task_at(&self, graph: u32, index: u32) -> Option<&TaskReport> {
        let h = self.handles.as_ref().filter(|h| h.graph == graph)?;
        let i = match &h.remap {
            Some(map) => *map.get(index as usize).filter(|&&i| i != u32::MAX)?,
            None => index,
        };
        self.tasks.get(i as usize)
    }

    /// The result of the task `key` names, typed: `None` when there is no such task, it
    /// did not succeed, or its result does not decode (see
    /// [`try_get`](RunReport::try_get) for which).
    ///
    /// `key` is a [`TaskKey<T>`](crate::TaskKey) (a name you gave the task with
    /// [`TaskExt::id`](crate::TaskExt::id)) or the [`Out<T>`](crate::Out) handle the
    /// builder returned for it (for graphs you built yourself, such as a
    /// [`TaskGraph`](crate::TaskGraph)); either way the result is a `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    ///
    /// #[task] fn two() -> u32 { 2 }
    /// #[task] fn square(x: u32) -> u32 { x * x }
    ///
    /// # #[tokio::main] async fn main() {
    /// let mut g = TaskGraph::new();
    /// let x = g.add("two", Two::new()).unwrap();
    /// let sq = g.add("square", Square::new(x)).unwrap();
    /// let rt = Runtime::in_memory().start().await.unwrap();
    /// let report = rt.run_graph(g).await.unwrap();
    /// assert_eq!(report.get(&sq), Some(4));
    /// assert_eq!(report.get(&TaskKey::<u32>::new("two")), Some(2));
    /// assert_eq!(report.get(&TaskKey::<u32>::new("nope")), None);
    /// # }
    /// ```
    pub fn get<K: ResultKey>(&self, key: &K) -> Option<K::Output> {
        self.try_get(key).ok()
    }

    /// The result of the task `key` names, typed, or why there is none.
    ///
    /// # Errors
    ///
    /// [`ResultError::UnknownTask`] (no task has the key's id),
    /// [`ResultError::ForeignHandle`] (a handle of another graph, or a report read back
    /// from JSON), [`ResultError::NoResult`] (the task did not succeed),
    /// [`ResultError::Decode`] (the result is not of the key's type).
    pub fn try_get<K: ResultKey>(&self, key: &K) -> Result<K::Output, ResultError> {
        key.locate(self)?.result_as()
    }

    /// The entry of the task `key` names (its status, attempts, error…).
    pub fn task_of<K: ResultKey>(&self, key: &K) -> Option<&TaskReport> {
        key.locate(self).ok()
    }

    /// The optional tasks that errored: their failure did not fail the run. Each one's
    /// error lists, in `downstream_impact`, the tasks skipped because of it.
    pub fn warnings(&self) -> Vec<&TaskReport> {
        self.tasks
            .iter()
            .filter(|t| t.optional && t.status == TaskStatus::Errored)
            .collect()
    }

    /// The result of task `id` decoded as `T`.
    pub fn result<T: DeserializeOwned>(&self, id: &str) -> Result<T, ResultError> {
        self.task(id)
            .ok_or_else(|| ResultError::UnknownTask {
                task: id.to_owned(),
            })?
            .result_as()
    }

    fn with_status(&self, status: TaskStatus) -> Vec<&TaskReport> {
        self.tasks.iter().filter(|t| t.status == status).collect()
    }

    /// Tasks that succeeded.
    pub fn successes(&self) -> Vec<&TaskReport> {
        self.with_status(TaskStatus::Success)
    }

    /// Tasks that errored.
    pub fn errored(&self) -> Vec<&TaskReport> {
        self.with_status(TaskStatus::Errored)
    }

    /// Tasks that were skipped.
    pub fn skipped(&self) -> Vec<&TaskReport> {
        self.with_status(TaskStatus::Skipped)
    }

    /// Tasks that were cancelled.
    pub fn cancelled(&self) -> Vec<&TaskReport> {
        self.with_status(TaskStatus::Cancelled)
    }

    /// The ids of `tasks` (convenience for assertions and printing).
    pub fn ids<'a>(&self, tasks: Vec<&'a TaskReport>) -> Vec<&'a str> {
        tasks.into_iter().map(|t| &*t.id).collect()
    }

    /// The report as compact JSON.
    ///
    /// # Panics
    ///
    /// Never: every field of a report is plain data that serializes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }

    /// The report as indented JSON.
    ///
    /// # Panics
    ///
    /// Never: every field of a report is plain data that serializes.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// Reads a report written by [`to_json`](RunReport::to_json).
    pub fn from_json(json: &str) -> Result<RunReport, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// A short human-readable summary: one line per task.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "{} [{}] {:?} in {:.3}s\n",
            self.process,
            self.run_id,
            self.status,
            self.elapsed.as_secs_f64()
        );
        for t in &self.tasks {
            let mark = match t.status {
                TaskStatus::Success => "ok     ",
                TaskStatus::Errored if t.optional => "warning",
                TaskStatus::Errored => "ERROR  ",
                TaskStatus::Skipped => "skipped",
                TaskStatus::Cancelled => "cancel ",
            };
            let _ = write!(
                s,
                "  {mark} {:<32} attempts={} {:>8.3}s",
                t.id,
                t.attempts,
                t.elapsed().as_secs_f64()
            );
            if let Some(e) = &t.error {
                let _ = write!(s, "  {}", e.message);
                if !e.downstream_impact.is_empty() {
                    let _ = write!(
                        s,
                        " (skipped because of it: {})",
                        e.downstream_impact.join(", ")
                    );
                }
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Meta;

    impl Described for Meta {
        fn name(&self) -> &'static str {
            "load"
        }
        fn function(&self) -> &'static str {
            "jobs::load"
        }
        fn description(&self) -> &'static str {
            "Loads."
        }
    }

    static META: Meta = Meta;

    fn entry(names: Names, optional: bool) -> TaskReport {
        TaskReport {
            id: SmolStr::new("load#1"),
            names,
            status: TaskStatus::Success,
            attempts: 2,
            elapsed_ns: 1_500,
            result: Some(Json::parse("[1,2]").unwrap()),
            error: None,
            optional,
        }
    }

    /// The entry is small (names from the static metadata, time in nanoseconds).
    #[test]
    fn an_entry_is_88_bytes() {
        assert!(
            std::mem::size_of::<TaskReport>() <= 88,
            "{}",
            std::mem::size_of::<TaskReport>()
        );
    }

    /// The JSON form is the one the fields had (same keys, same order), whether the names
    /// are static or owned, and it reads back to the same entry.
    #[test]
    fn the_json_form_is_unchanged() {
        let want = r#"{"id":"load#1","name":"load","function":"jobs::load","description":"Loads.","status":"success","attempts":2,"elapsed_ns":1500,"result":[1,2],"error":null}"#;
        let live = entry(Names::Static(&META), false);
        assert_eq!(serde_json::to_string(&live).unwrap(), want);
        let back: TaskReport = serde_json::from_str(want).unwrap();
        assert!(matches!(back.names, Names::Owned(_)));
        assert_eq!(
            (back.name(), back.function(), back.description()),
            ("load", "jobs::load", "Loads.")
        );
        assert_eq!(back.elapsed(), Duration::from_nanos(1_500));
        assert_eq!(serde_json::to_string(&back).unwrap(), want);
        let optional = entry(
            Names::Owned(Box::new(OwnedNames {
                name: Cow::Borrowed("load"),
                function: Cow::Borrowed("jobs::load"),
                description: Cow::Owned("Loads.".into()),
            })),
            true,
        );
        assert_eq!(
            serde_json::to_string(&optional).unwrap(),
            want.replace(r#""error":null}"#, r#""error":null,"optional":true}"#)
        );
        assert!(format!("{live:?}").contains(r#"name: "load", function: "jobs::load""#));
    }
}
