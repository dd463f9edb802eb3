//! The process trait that `#[process]` implements.

use crate::graph::Builder;
use crate::schedule::Overlap;
use crate::task::data::Data;

/// How the steps of a block are ordered.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// #[process(mode = "concurrent")]
/// fn fan(_p: &mut Builder) {}
/// assert_eq!(<Fan as Process>::META.mode, Mode::Concurrent);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each step starts after the previous one has ended (the default).
    #[default]
    Sequential,
    /// Each step starts as soon as its inputs are ready.
    Concurrent,
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
    /// Mode of the top-level block.
    pub mode: Mode,
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
/// #[process(mode = "concurrent", schedule = "*/5 * * * *")]
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
}
