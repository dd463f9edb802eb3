//! The runtime: launches runs of processes and task graphs and waits for them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::exec::{execute, RunConfig};
use crate::graph::{Graph, GraphError, TaskGraph};
use crate::hooks::Hooks;
use crate::process::Process;
use crate::report::RunReport;

/// Error returned by the runtime's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process's graph is invalid.
    #[error("invalid graph: {0}")]
    Graph(#[from] GraphError),
    /// A launch option could not be serialized.
    #[error("launch option `{name}` could not be serialized: {source}")]
    Option {
        /// The option's name.
        name: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The run's driver task ended abnormally (it panicked or the runtime shut down).
    #[error("run `{run_id}` ended abnormally: {message}")]
    RunAborted {
        /// The run.
        run_id: String,
        /// What happened.
        message: String,
    },
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Configures and starts a [`Runtime`].
///
/// # Examples
///
/// ```
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// use std::time::Duration;
/// let rt = procession::Runtime::in_memory()
///     .max_concurrency(8)
///     .cancel_grace(Duration::from_secs(2))
///     .start()
///     .await?;
/// # drop(rt); Ok(()) }
/// ```
#[must_use]
pub struct RuntimeBuilder {
    max_concurrency: Option<usize>,
    process_concurrency: Option<usize>,
    grace: Duration,
    hooks: Vec<Arc<dyn Hooks>>,
    registered: Vec<&'static str>,
}

impl fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("max_concurrency", &self.max_concurrency)
            .field("process_concurrency", &self.process_concurrency)
            .field("grace", &self.grace)
            .field("hooks", &self.hooks.len())
            .field("registered", &self.registered)
            .finish()
    }
}

impl RuntimeBuilder {
    /// At most `n` tasks run at once across all runs of this runtime (default: no limit).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// At most `n` tasks of one run run at once, unless the launch says otherwise
    /// (default: no limit).
    pub fn process_concurrency(mut self, n: usize) -> Self {
        self.process_concurrency = Some(n);
        self
    }

    /// How long a cancelled task may keep running before it is abandoned and ends errored
    /// (default 5 s).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Hooks called for every run of this runtime (after the process's own).
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks.push(Arc::new(hooks));
        self
    }

    /// Declares a process type this runtime runs (the durable runtime needs the list to
    /// rebuild runs after a restart; the in-memory runtime records it for introspection).
    pub fn register<P: Process>(mut self) -> Self {
        self.registered.push(P::META.name);
        self
    }

    /// Starts the runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a concurrency limit is zero.
    #[allow(clippy::unused_async)] // the durable runtime opens its store here
    pub async fn start(self) -> Result<Runtime> {
        if self.max_concurrency == Some(0) || self.process_concurrency == Some(0) {
            return Err(Error::Config("max_concurrency must be >= 1, got 0".into()));
        }
        Ok(Runtime {
            inner: Arc::new(Inner {
                permits: self.max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
                process_concurrency: self.process_concurrency,
                grace: self.grace,
                hooks: self.hooks,
                registered: self.registered,
                next_run: AtomicU64::new(1),
            }),
        })
    }
}

struct Inner {
    permits: Option<Arc<Semaphore>>,
    process_concurrency: Option<usize>,
    grace: Duration,
    hooks: Vec<Arc<dyn Hooks>>,
    registered: Vec<&'static str>,
    next_run: AtomicU64,
}

/// Runs processes and task graphs.
///
/// Cheap to clone: clones share the same limits and hooks.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task] fn add(a: u32, b: u32) -> u32 { a + b }
///
/// #[process]
/// fn sum(p: &mut Builder) {
///     let x = p.task(Add::new(1, 2));
///     p.task(Add::new(x, 10));
/// }
///
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::in_memory().register::<Sum>().start().await?;
/// let run = rt.launch(Sum {}).await?;
/// let report = run.wait().await?;
/// assert_eq!(report.result::<u32>("add#1").unwrap(), 13);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("registered", &self.inner.registered)
            .finish_non_exhaustive()
    }
}

/// A launch of a process with options: run id, launch options, concurrency.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// #[task] fn dump() {}
/// #[process]
/// fn job(p: &mut Builder) { if p.option("debug").unwrap_or(false) { p.task(Dump::new()); } }
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::in_memory().start().await?;
/// let run = rt.launch(Launch::new(Job {}).id("job-1").option("debug", true)?.max_concurrency(2)).await?;
/// assert_eq!(run.id(), "job-1");
/// assert_eq!(run.wait().await?.tasks.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Launch<P> {
    process: P,
    id: Option<String>,
    options: BTreeMap<String, Value>,
    max_concurrency: Option<usize>,
}

impl<P: Process> Launch<P> {
    /// A launch of `process` with default settings.
    pub fn new(process: P) -> Self {
        Launch {
            process,
            id: None,
            options: BTreeMap::new(),
            max_concurrency: None,
        }
    }

    /// The run's id (default: `<process name>-<n>`).
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// A launch option, read by the builder with [`Builder::option`](crate::Builder::option).
    ///
    /// # Errors
    ///
    /// [`Error::Option`] when `value` does not serialize.
    pub fn option(mut self, name: impl Into<String>, value: impl Serialize) -> Result<Self> {
        let name = name.into();
        let value = serde_json::to_value(value).map_err(|source| Error::Option {
            name: name.clone(),
            source,
        })?;
        self.options.insert(name, value);
        Ok(self)
    }

    /// At most `n` tasks of this run at once.
    #[must_use]
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n);
        self
    }
}

impl<P: Process> From<P> for Launch<P> {
    fn from(process: P) -> Self {
        Launch::new(process)
    }
}

/// A run in progress: wait for its report, or cancel it.
pub struct RunHandle {
    id: String,
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<RunReport>,
}

impl fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunHandle")
            .field("id", &self.id)
            .field("finished", &self.join.is_finished())
            .finish_non_exhaustive()
    }
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True once the run has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Asks the run to stop: tasks not started end cancelled, running tasks see
    /// [`Ctx::should_continue`](crate::Ctx::should_continue) turn false and are abandoned
    /// (ending errored) if they do not return within the runtime's grace period.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels this run; send it to another task or thread.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits for the run to end and returns its report.
    ///
    /// # Errors
    ///
    /// [`Error::RunAborted`] when the run's driver did not finish (the tokio runtime shut
    /// down under it).
    pub async fn wait(self) -> Result<RunReport> {
        self.join.await.map_err(|e| Error::RunAborted {
            run_id: self.id.clone(),
            message: e.to_string(),
        })
    }
}

impl Runtime {
    /// A runtime that keeps everything in memory: nothing survives the process.
    pub fn in_memory() -> RuntimeBuilder {
        RuntimeBuilder {
            max_concurrency: None,
            process_concurrency: None,
            grace: Duration::from_secs(5),
            hooks: Vec::new(),
            registered: Vec::new(),
        }
    }

    /// Names of the registered process types.
    pub fn registered(&self) -> &[&'static str] {
        &self.inner.registered
    }

    /// Builds the process's graph and starts running it.
    ///
    /// # Errors
    ///
    /// [`Error::Graph`] when the graph is invalid; nothing runs then.
    #[allow(clippy::unused_async)] // the durable runtime writes the run's record here
    pub async fn launch<P: Process>(&self, launch: impl Into<Launch<P>>) -> Result<RunHandle> {
        let launch = launch.into();
        let mut hooks: Vec<Arc<dyn Hooks>> = P::hooks().into_iter().collect();
        hooks.extend(self.inner.hooks.iter().cloned());
        let graph = Graph::with_options(launch.process, launch.options)?;
        Ok(self.spawn(graph, launch.id, launch.max_concurrency, hooks))
    }

    /// Launches and waits: the report of a full run.
    pub async fn run<P: Process>(&self, launch: impl Into<Launch<P>>) -> Result<RunReport> {
        self.launch(launch).await?.wait().await
    }

    /// Starts running a graph assembled by name (or an already built [`Graph`]).
    #[allow(clippy::unused_async)] // same signature as `launch`
    pub async fn launch_graph(&self, graph: impl IntoGraph) -> Result<RunHandle> {
        let graph = graph.into_graph()?;
        Ok(self.spawn(graph, None, None, self.inner.hooks.clone()))
    }

    /// Runs a graph assembled by name (or an already built [`Graph`]) to the end.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn producer() -> i64 { 21 }
    /// #[task] fn consumer(x: i64) -> i64 { x * 2 }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let mut g = TaskGraph::new();
    /// let x = g.add("Producer", Producer::new())?;
    /// g.add("Consumer", Consumer::new(x))?;
    /// let rt = Runtime::in_memory().start().await?;
    /// let report = rt.run_graph(g).await?;
    /// assert_eq!(report.result::<i64>("consumer").unwrap(), 42);
    /// # Ok(()) }
    /// ```
    pub async fn run_graph(&self, graph: impl IntoGraph) -> Result<RunReport> {
        self.launch_graph(graph).await?.wait().await
    }

    fn spawn(
        &self,
        graph: Graph,
        id: Option<String>,
        max_concurrency: Option<usize>,
        hooks: Vec<Arc<dyn Hooks>>,
    ) -> RunHandle {
        let id = id.unwrap_or_else(|| {
            format!(
                "{}-{}",
                graph.name(),
                self.inner.next_run.fetch_add(1, Ordering::Relaxed)
            )
        });
        let cancel = CancellationToken::new();
        let cfg = RunConfig {
            run_id: Arc::from(id.as_str()),
            max_concurrency: max_concurrency.or(self.inner.process_concurrency),
            permits: self.inner.permits.clone(),
            hooks,
            cancel: cancel.clone(),
            grace: self.inner.grace,
        };
        let join = tokio::spawn(execute(graph, cfg));
        RunHandle { id, cancel, join }
    }
}

/// Something the runtime can turn into a [`Graph`]: a [`TaskGraph`] or a built graph.
pub trait IntoGraph {
    /// Validates and converts.
    fn into_graph(self) -> Result<Graph, GraphError>;
}

impl IntoGraph for TaskGraph {
    fn into_graph(self) -> Result<Graph, GraphError> {
        self.build()
    }
}

impl IntoGraph for Graph {
    fn into_graph(self) -> Result<Graph, GraphError> {
        Ok(self)
    }
}
