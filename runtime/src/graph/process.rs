//! The process trait that `#[process]` implements.

use std::sync::{Mutex, PoisonError};

use crate::graph::Builder;
use crate::schedule::Overlap;
use crate::task::data::Data;

/// How the steps of a block are ordered: by their data (the default) or one after another.
///
/// The top level of a process follows its data unless `#[process(mode = "sequential")]`:
/// a task starts when the tasks whose outputs it takes have ended, and tasks that take
/// nothing from each other run side by side. Ordering without data is written out with
/// [`Builder::after`](crate::Builder::after) or a
/// [`sequential`](crate::Builder::sequential) block.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// #[process]
/// fn fan(_p: &mut Builder) {}
/// #[process(mode = "sequential")]
/// fn steps(_p: &mut Builder) {}
/// assert_eq!(<Fan as Process>::META.mode, Mode::Dataflow);
/// assert_eq!(<Steps as Process>::META.mode, Mode::Sequential);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each step starts as soon as the tasks whose outputs it takes have ended (the
    /// default; `mode = "dataflow"`, or its synonym `"concurrent"`, the rule of a
    /// [`concurrent`](crate::Builder::concurrent) block).
    #[default]
    #[serde(alias = "concurrent")]
    Dataflow,
    /// Each step starts after the previous one has ended (`mode = "sequential"`).
    Sequential,
}

/// The static description of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessMeta {
    /// Stable name: the function's name unless `#[process(name = "…")]` says otherwise.
    pub name: &'static str,
    /// The first paragraph of the doc comment, or `#[process(description = "…")]`.
    pub description: &'static str,
    /// A cron schedule (5 fields, or 6 with seconds first), checked at compile time.
    pub schedule: Option<&'static str>,
    /// The IANA time zone of the schedule (`#[process(tz = "Europe/Paris")]`, the `tz`
    /// feature), checked at compile time; UTC when `None`.
    pub tz: Option<&'static str>,
    /// What a fire of the schedule does while the previous run is still active.
    pub overlap: Overlap,
    /// Mode of the top-level block: [`Mode::Dataflow`] unless `mode = "sequential"`.
    pub mode: Mode,
}

#[cfg(test)]
impl ProcessMeta {
    /// A dataflow process named `name`, without description or schedule (the runtime's
    /// own test processes).
    pub(crate) const fn dataflow(name: &'static str) -> Self {
        ProcessMeta {
            name,
            description: "",
            schedule: None,
            tz: None,
            overlap: Overlap::Skip,
            mode: Mode::Dataflow,
        }
    }
}

/// A process: named, parameterised, and able to build its graph of tasks.
///
/// `#[process]` implements it on a struct holding the function's parameters (so a run's
/// parameters can be stored and the graph rebuilt by a restarted binary).
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task] fn ping(host: String) -> bool { !host.is_empty() }
///
/// /// Pings every host.
/// #[process(schedule = "*/5 * * * *")]
/// fn monitor(p: &mut Builder, hosts: Vec<String>) {
///     p.each(hosts, |p, h| p.task(Ping::new(h)));
/// }
///
/// assert_eq!(<Monitor as Process>::META.name, "monitor");
/// assert_eq!(<Monitor as Process>::META.description, "Pings every host.");
/// assert_eq!(<Monitor as Process>::META.schedule, Some("*/5 * * * *"));
/// let m = Monitor { hosts: vec!["a".into()] };
/// assert_eq!(Graph::of(m).unwrap().len(), 1);
/// ```
pub trait Process: Data {
    /// Name, description, schedule and mode, fixed at compile time.
    const META: ProcessMeta;

    /// Adds the process's tasks to `p`.
    fn build(self, p: &mut Builder);

    /// Lifecycle hooks for runs of this process (`#[process(hooks = Type)]`).
    fn hooks() -> Option<std::sync::Arc<dyn crate::hooks::Hooks>> {
        None
    }

    /// The process itself when it takes no parameters, `None` otherwise. `#[process]`
    /// returns `Some(Self {})` for a function whose only parameter is the builder.
    ///
    /// [`RuntimeBuilder::register`](crate::RuntimeBuilder::register) uses it to run a
    /// process that declares a [`schedule`](ProcessMeta::schedule) on that schedule with no
    /// further setup; a process with parameters is scheduled by a
    /// [`Definition`](crate::Definition) that gives them.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[process]
    /// fn cleanup(_p: &mut Builder) {}
    /// #[process]
    /// fn import(_p: &mut Builder, file: String) { let _ = file; }
    ///
    /// assert!(Cleanup::without_parameters().is_some());
    /// assert!(Import::without_parameters().is_none());
    /// ```
    fn without_parameters() -> Option<Self> {
        None
    }
}

/// How many tasks the last graph built for each process name had: the builder of the
/// next one reserves that many nodes at once, instead of growing its node vector by
/// doubling (a 100k-task graph: about 29 MB written and copied, much of it in fresh pages,
/// then cut back to 11 MB).
///
/// A hint only: a graph may have more or fewer tasks than the last one (its vector then
/// grows, or the builder's `finish` gives the slack back). A short list, looked up once
/// per build: processes are few, and past [`KEPT`] names the oldest is forgotten.
static SIZES: Mutex<Vec<(&'static str, usize)>> = Mutex::new(Vec::new());

/// How many process names [`SIZES`] keeps.
const KEPT: usize = 64;

/// The largest reservation a hint makes (in tasks): beyond it, a graph grows as it is
/// built. Keeps one huge graph from making every later, smaller one reserve as much.
const MAX_HINT: usize = 1 << 20;

/// The number of tasks the last graph of the process `name` had (0 when none was built).
pub(crate) fn size_hint(name: &'static str) -> usize {
    let sizes = SIZES.lock().unwrap_or_else(PoisonError::into_inner);
    sizes
        .iter()
        .find(|(n, _)| std::ptr::eq(*n, name) || *n == name)
        .map_or(0, |&(_, tasks)| tasks.min(MAX_HINT))
}

/// Remembers that the graph of the process `name` has `tasks` tasks.
pub(crate) fn remember_size(name: &'static str, tasks: usize) {
    let mut sizes = SIZES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(entry) = sizes
        .iter_mut()
        .find(|(n, _)| std::ptr::eq(*n, name) || *n == name)
    {
        entry.1 = tasks;
        return;
    }
    if sizes.len() == KEPT {
        sizes.remove(0);
    }
    sizes.push((name, tasks));
}
