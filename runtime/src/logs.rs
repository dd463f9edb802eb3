//! Log files of task attempts (cargo feature `logs`): a [`tracing_subscriber::Layer`]
//! that writes each task attempt's events (its `ctx.log` entries, retries, timeouts…) to
//! one file per task, `<dir>/<run id>/<node id>.log`, or to one file per run,
//! `<dir>/<run id>.log`.
//!
//! Every line carries the time (UTC, milliseconds), the attempt, the task and the node:
//!
//! ```text
//! 2026-12-02T05:00:00.123Z attempt=2 task=fetch node=fetch INFO retrying delay=10ms error="timed out"
//! ```
//!
//! In a per-run file, the run's own events (`run started`, `task failed`…) appear too,
//! with `attempt=- task=- node=-`. Run and node ids are untrusted for paths: each becomes
//! one file name with every byte other than an ASCII letter, digit, `-` or `_`
//! percent-encoded (so no `..`, no separator; see [`file_name`]); [`task_path`] and
//! [`run_path`] say where a task's or a run's lines are, for a report or an API.
//!
//! Files are opened in append mode for each line: several runtimes (or a restarted one)
//! can write to the same directory, and nothing stays open between lines. A line that
//! cannot be written is counted ([`TaskLogLayer::write_errors`]), never reported through
//! `tracing` (that would feed the layer its own failures).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::report::RunReport;

/// The target of the runtime's spans and events (the crate's module paths start with it).
const TARGET: &str = "procession_runtime";

/// The longest file name written (bytes, `.log` excluded): longer encoded ids are cut and
/// end in a hash of the whole id, which keeps them apart.
const MAX_NAME: usize = 200;

/// Where the lines of a run go: one file per task attempt's node, or one per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    PerTask,
    PerRun,
}

/// A `tracing` layer writing task attempts' events to log files; see the
/// [module documentation](self).
///
/// It is cheap to clone (the clones share one error count): keep one to ask
/// [`file_of`](TaskLogLayer::file_of) where a task's lines are.
///
/// # Examples
///
/// ```
/// use procession::logs::TaskLogLayer;
/// use tracing_subscriber::layer::SubscriberExt as _;
///
/// let dir = std::env::temp_dir().join("procession-doc-logs");
/// let logs = TaskLogLayer::per_task(&dir);
/// let subscriber = tracing_subscriber::registry().with(logs.clone());
/// let _guard = tracing::subscriber::set_default(subscriber);
/// // … run processes: each task's lines go to `logs.file_of(run_id, node_id)`.
/// assert_eq!(logs.file_of("etl-1", "fetch"), dir.join("etl-1").join("fetch.log"));
/// ```
#[derive(Debug, Clone)]
pub struct TaskLogLayer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    mode: Mode,
    errors: AtomicU64,
}

impl TaskLogLayer {
    /// One file per task of a run: `<dir>/<run id>/<node id>.log` (see [`task_path`]);
    /// the attempts of a task follow each other in its file.
    ///
    /// # Examples
    ///
    /// ```
    /// let logs = procession::logs::TaskLogLayer::per_task("logs");
    /// assert_eq!(logs.file_of("run-1", "load"), std::path::Path::new("logs/run-1/load.log"));
    /// ```
    pub fn per_task(dir: impl Into<PathBuf>) -> Self {
        Self::new(dir.into(), Mode::PerTask)
    }

    /// One file per run, `<dir>/<run id>.log` (see [`run_path`]): the lines of all its
    /// tasks interleave in the order they were written, each naming its task, node and
    /// attempt, with the run's own events among them.
    ///
    /// # Examples
    ///
    /// ```
    /// let logs = procession::logs::TaskLogLayer::per_run("logs");
    /// assert_eq!(logs.file_of("run-1", "load"), std::path::Path::new("logs/run-1.log"));
    /// ```
    pub fn per_run(dir: impl Into<PathBuf>) -> Self {
        Self::new(dir.into(), Mode::PerRun)
    }

    fn new(dir: PathBuf, mode: Mode) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir,
                mode,
                errors: AtomicU64::new(0),
            }),
        }
    }

    /// The directory the files are written under.
    ///
    /// # Examples
    ///
    /// ```
    /// let logs = procession::logs::TaskLogLayer::per_run("logs");
    /// assert_eq!(logs.dir(), std::path::Path::new("logs"));
    /// ```
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The file where the lines of node `node` of run `run` are written (the run's file
    /// for a [`per_run`](TaskLogLayer::per_run) layer). It exists once a line was written.
    ///
    /// # Examples
    ///
    /// ```
    /// let logs = procession::logs::TaskLogLayer::per_task("logs");
    /// // ids are encoded into single file names: they never leave the directory
    /// assert_eq!(logs.file_of("r/1", "../x"), std::path::Path::new("logs/r%2F1/%2E%2E%2Fx.log"));
    /// ```
    pub fn file_of(&self, run: &str, node: &str) -> PathBuf {
        match self.inner.mode {
            Mode::PerTask => task_path(&self.inner.dir, run, node),
            Mode::PerRun => run_path(&self.inner.dir, run),
        }
    }

    /// The log file of every task of a finished run, in the report's order: where to
    /// look when a task failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::logs::TaskLogLayer;
    ///
    /// #[task] fn hello() -> u32 { 1 }
    /// #[process] fn greet(p: &mut Builder) { p.task(Hello::new()); }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> procession::Result<()> {
    /// let logs = TaskLogLayer::per_task("logs");
    /// let rt = Runtime::in_memory().start().await?;
    /// let report = rt.run(Greet {}).await?;
    /// let files = logs.files(&report);
    /// assert_eq!(files[0].0, "hello");
    /// assert_eq!(files[0].1, logs.file_of(&report.run_id, "hello"));
    /// # Ok(()) }
    /// ```
    pub fn files(&self, report: &RunReport) -> Vec<(String, PathBuf)> {
        report
            .tasks
            .iter()
            .map(|t| (t.id.to_string(), self.file_of(&report.run_id, &t.id)))
            .collect()
    }

    /// How many lines could not be written (a directory not writable, a full disk…).
    ///
    /// # Examples
    ///
    /// ```
    /// let logs = procession::logs::TaskLogLayer::per_run("logs");
    /// assert_eq!(logs.write_errors(), 0);
    /// ```
    pub fn write_errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    fn write(&self, path: &Path, line: &str) {
        let written = (|| {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            // One write per line: appends from several threads do not interleave.
            f.write_all(line.as_bytes())
        })();
        if written.is_err() {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The file of node `node` of run `run` in a per-task directory:
/// `<dir>/<file_name(run)>/<file_name(node)>.log`.
///
/// # Examples
///
/// ```
/// let p = procession::logs::task_path("logs".as_ref(), "etl-7", "load.db");
/// assert_eq!(p, std::path::Path::new("logs/etl-7/load%2Edb.log"));
/// ```
pub fn task_path(dir: &Path, run: &str, node: &str) -> PathBuf {
    let mut p = dir.join(file_name(run));
    p.push(format!("{}.log", file_name(node)));
    p
}

/// The file of run `run` in a per-run directory: `<dir>/<file_name(run)>.log`.
///
/// # Examples
///
/// ```
/// let p = procession::logs::run_path("logs".as_ref(), "etl-7");
/// assert_eq!(p, std::path::Path::new("logs/etl-7.log"));
/// ```
pub fn run_path(dir: &Path, run: &str) -> PathBuf {
    dir.join(format!("{}.log", file_name(run)))
}

/// An id as one file name: ASCII letters, digits, `-` and `_` stay, every other byte
/// becomes `%XX` (so `.`, `/`, `\` and `:` never appear); the empty id is `%`. A name
/// longer than 200 bytes is cut and ends in `~` and a hash of the whole id.
///
/// # Examples
///
/// ```
/// use procession::logs::file_name;
/// assert_eq!(file_name("fetch-1"), "fetch-1");
/// assert_eq!(file_name(".."), "%2E%2E");
/// assert_eq!(file_name("a/b\\c"), "a%2Fb%5Cc");
/// assert_eq!(file_name(""), "%");
/// ```
pub fn file_name(id: &str) -> String {
    if id.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.len() > MAX_NAME {
        let hash = {
            use std::hash::BuildHasher as _;
            rustc_hash::FxBuildHasher.hash_one(id)
        };
        out.truncate(MAX_NAME);
        let _ = write!(out, "~{hash:016x}");
    }
    out
}

/// The fields of a task attempt's span, kept in the span's extensions.
#[derive(Debug, Default)]
struct AttemptFields {
    run: String,
    task: String,
    node: String,
    attempt: u64,
}

/// The run id of a run's span.
#[derive(Debug, Default)]
struct RunFields {
    run: String,
}

impl Visit for AttemptFields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "attempt" {
            self.attempt = value;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value as &dyn std::fmt::Debug);
        if field.name() == "task" {
            value.clone_into(&mut self.task);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%value` fields arrive here, formatted by their `Display`.
        match field.name() {
            "run" => self.run = format!("{value:?}"),
            "node" => self.node = format!("{value:?}"),
            _ => {}
        }
    }
}

impl Visit for RunFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "run" {
            self.run = format!("{value:?}");
        }
    }
}

/// An event's message and its other fields as ` key=value` pairs.
struct Line<'a> {
    message: String,
    rest: String,
    /// Fields the line states already (from the attempt's span).
    skip: &'a [&'a str],
}

impl Visit for Line<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if !self.skip.contains(&field.name()) {
            let _ = write!(self.rest, " {}=", field.name());
            push_value(&mut self.rest, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else if !self.skip.contains(&field.name()) {
            let _ = write!(self.rest, " {}=", field.name());
            push_value(&mut self.rest, &format!("{value:?}"));
        }
    }
}

/// A value as one token: quoted (Rust string escapes) when it has spaces, quotes, `=` or
/// control characters, as it is otherwise.
fn push_value(out: &mut String, v: &str) {
    if v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
    {
        let _ = write!(out, "{v:?}");
    } else {
        out.push_str(v);
    }
}

impl<S> Layer<S> for TaskLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let meta = attrs.metadata();
        if !meta.target().starts_with(TARGET) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        // Several of these layers may share one subscriber (a per-task and a per-run
        // one): the first stores the span's fields, the others read the same.
        let mut ext = span.extensions_mut();
        match meta.name() {
            "task" if ext.get_mut::<AttemptFields>().is_none() => {
                let mut f = AttemptFields::default();
                attrs.record(&mut f);
                ext.insert(f);
            }
            "run" if ext.get_mut::<RunFields>().is_none() => {
                let mut f = RunFields::default();
                attrs.record(&mut f);
                ext.insert(f);
            }
            _ => {}
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let mut attempt: Option<(String, String, String, u64)> = None;
        let mut run: Option<String> = None;
        for span in scope {
            let ext = span.extensions();
            if let Some(f) = ext.get::<AttemptFields>() {
                attempt = Some((f.run.clone(), f.task.clone(), f.node.clone(), f.attempt));
                break;
            }
            if let Some(f) = ext.get::<RunFields>() {
                run = Some(f.run.clone());
                break;
            }
        }
        let (path, head) = match (&attempt, self.inner.mode) {
            (Some((run, task, node, n)), mode) => {
                let mut head = format!(" attempt={n} task=");
                push_value(&mut head, task);
                head.push_str(" node=");
                push_value(&mut head, node);
                let path = match mode {
                    Mode::PerTask => task_path(&self.inner.dir, run, node),
                    Mode::PerRun => run_path(&self.inner.dir, run),
                };
                (path, head)
            }
            (None, Mode::PerRun) => match &run {
                Some(run) => (
                    run_path(&self.inner.dir, run),
                    " attempt=- task=- node=-".to_owned(),
                ),
                None => return,
            },
            (None, Mode::PerTask) => return,
        };
        let skip: &[&str] = if attempt.is_some() {
            &["task", "attempt", "node"]
        } else {
            &[]
        };
        let mut line = Line {
            message: String::new(),
            rest: String::new(),
            skip,
        };
        event.record(&mut line);
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let message = line.message.replace('\r', "\\r").replace('\n', "\\n");
        let text = format!(
            "{now}{head} {} {message}{}\n",
            event.metadata().level(),
            line.rest
        );
        self.write(&path, &text);
    }
}
