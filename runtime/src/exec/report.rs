//! The run's report, built from the driver's per-node state at the end.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{chain, DependencyFailed};
use crate::graph::Graph;
use crate::report::{
    Described, ErrorReport, Handles, Json, Names, OwnedNames, RunReport, RunStatus, TaskReport,
    TaskStatus,
};
use crate::task::TaskMeta;
use crate::util::nanos;
use smol_str::SmolStr;

use super::{NodeStates, NodeStatus, Shared};

/// A live report's entries read their names from the task's static metadata.
impl Described for TaskMeta {
    fn name(&self) -> &str {
        self.name
    }
    fn function(&self) -> &str {
        self.function
    }
    fn description(&self) -> &str {
        self.description
    }
}

/// The run's report; the nodes' ids are cloned from the graph's shared list (a short id
/// is copied, a long one shares its text), their own descriptions moved out of `graph`
/// into it (the graph is only dropped afterwards). Not a pass over the graph's nodes:
/// what it needs of them is in the cells (their tasks' metadata) and in the graph's
/// short lists (own descriptions, nodes made optional).
///
/// A node still pending in `state` ended with success (its worker did not report it: its
/// cell in `shared` says so, with its attempts and time), or else never ended: the driver
/// marks such nodes cancelled before the report in a run that was stopped or where it
/// ended nodes itself, and in any other run there is none (see `drive_run`), but a node
/// found so is reported cancelled all the same (see [`never_ended`]).
pub(super) fn build_report(
    graph: &mut Graph,
    shared: &Shared,
    state: &NodeStates,
    offsets: &[u32],
    targets: &[u32],
    cancelled: bool,
    elapsed: Duration,
) -> RunReport {
    let n = graph.ids.len();
    let mut handles = Handles {
        graph: graph.tag,
        remap: None,
    };
    // The nodes' own descriptions and the nodes made optional, in node order (most
    // graphs have neither).
    let mut own = std::mem::take(&mut graph.descriptions);
    let made_optional: &[u32] = &graph.made_optional;
    let entries = Entries {
        ids: &graph.ids,
        shared,
        state,
        offsets,
        targets,
    };
    // Each entry is written in place in the vector's room (no per-entry copy of its 88
    // bytes, no capacity check per push); a large run's two halves side by side, the
    // upper one on a thread of this scope (layered 100x1k: 2.7 -> 1.85 ms of the run's
    // serial end).
    let mut tasks: Vec<TaskReport> = Vec::with_capacity(n);
    let room = &mut tasks.spare_capacity_mut()[..n];
    let (any_errored, all_success) = if n >= super::SIDE_BY_SIDE_FROM {
        let mid = n / 2;
        let (lower, upper) = room.split_at_mut(mid);
        let own_mid = own.partition_point(|d| (d.0 as usize) < mid);
        let (own_lower, own_upper) = own.split_at_mut(own_mid);
        let (opt_lower, opt_upper) =
            made_optional.split_at(made_optional.partition_point(|&i| (i as usize) < mid));
        let (low, high) = super::side_by_side(
            || entries.fill(lower, 0, own_lower, opt_lower),
            "procession-report",
            || entries.fill(&mut *upper, mid, &mut *own_upper, opt_upper),
        );
        (low.0 || high.0, low.1 && high.1)
    } else {
        entries.fill(room, 0, &mut own, made_optional)
    };
    // SAFETY: `fill` wrote each of the `n` entries of the room it was given (one per
    // node of its range, see its docs), and the two halves, or the whole, cover
    // `0..n`; a `fill` that panicked did not return, and the panic went on before this
    // line (its entries leak, no uninitialized one is ever read).
    #[allow(unsafe_code)]
    unsafe {
        tasks.set_len(n);
    }
    if let Some(remap) = &shared.remap {
        handles.remap = Some(remap.as_slice().into());
    }
    // A run that was asked to stop ends cancelled even when its tasks returned normally
    // (a cooperative task that sees the cancel and returns has not done the full job).
    let status = if any_errored {
        RunStatus::Failed
    } else if cancelled {
        RunStatus::Cancelled
    } else if all_success {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    RunReport {
        process: graph.name.clone(),
        run_id: shared.run_id.to_string(),
        status,
        elapsed,
        tasks,
        handles: Some(handles),
    }
}

/// What the report's entries are made from.
struct Entries<'a> {
    ids: &'a [SmolStr],
    shared: &'a Shared,
    state: &'a NodeStates,
    offsets: &'a [u32],
    targets: &'a [u32],
}

impl Entries<'_> {
    /// Writes the entries of nodes `from..from + out.len()`, each into its place of
    /// `out` (all of them, unless it panics), moving their own descriptions out of
    /// `own` and reading which were made optional from `made_optional` (both of these
    /// nodes only, in node order). Returns whether a failure that fails the run was
    /// found, and whether every node succeeded (or failed tolerated).
    fn fill(
        &self,
        out: &mut [MaybeUninit<TaskReport>],
        from: usize,
        own: &mut [(u32, String)],
        mut made_optional: &[u32],
    ) -> (bool, bool) {
        let (shared, state) = (self.shared, self.state);
        let mut any_errored = false;
        let mut all_success = true;
        // Each list's front is tested when its node comes (a test a node, no
        // iterator's state).
        let mut own_at = 0;
        let ids = &self.ids[from..from + out.len()];
        let statuses = &state.status[from..from + out.len()];
        for (k, ((slot, id), &st)) in out.iter_mut().zip(ids).zip(statuses).enumerate() {
            let i = from + k;
            let s = state.get(i);
            let cell = &shared.nodes[i];
            let meta = cell.meta;
            // As the node's `optional` (see `Graph::made_optional`).
            let listed = made_optional.first() == Some(&(i as u32));
            if listed {
                made_optional = &made_optional[1..];
            }
            let optional = listed || meta.policy.optional;
            let description = match own.get_mut(own_at) {
                Some((n, d)) if *n as usize == i => {
                    own_at += 1;
                    Some(std::mem::take(d))
                }
                _ => None,
            };
            let (status, attempts, elapsed_ns) = match st {
                // A success (its worker did not report it), or else a node that never
                // ended (see `build_report`'s docs).
                NodeStatus::Pending => {
                    if cell.done_ok.load(Ordering::Acquire) {
                        (
                            TaskStatus::Success,
                            cell.attempts_run.load(Ordering::Relaxed),
                            cell.elapsed_ns.load(Ordering::Relaxed),
                        )
                    } else {
                        never_ended(shared, i);
                        (TaskStatus::Cancelled, 0, 0)
                    }
                }
                NodeStatus::Success => (
                    TaskStatus::Success,
                    cell.attempts_run.load(Ordering::Acquire),
                    cell.elapsed_ns.load(Ordering::Acquire),
                ),
                NodeStatus::Errored => (TaskStatus::Errored, s.attempts, nanos(s.elapsed)),
                NodeStatus::Skipped => (TaskStatus::Skipped, s.attempts, 0),
                NodeStatus::Cancelled => (TaskStatus::Cancelled, s.attempts, nanos(s.elapsed)),
            };
            // Failures of optional tasks, and what was skipped only because of them,
            // leave the run successful (they are its warnings).
            let tolerated = match status {
                TaskStatus::Errored => optional,
                TaskStatus::Skipped => s.tolerated,
                _ => false,
            };
            any_errored |= status == TaskStatus::Errored && !tolerated;
            all_success &= status == TaskStatus::Success || tolerated;
            let error = match (&s.error, status) {
                (Some(e), TaskStatus::Errored) => Some(Box::new(ErrorReport {
                    message: e.to_string(),
                    chain: chain(&**e),
                    downstream_impact: downstream(
                        i as u32,
                        shared,
                        state,
                        self.offsets,
                        self.targets,
                    ),
                    source: Some(e.clone()),
                })),
                _ => None,
            };
            let result = if status == TaskStatus::Success {
                // The text made for the journal (by the node's worker, or by the writer
                // of its row), else the slot's, made now.
                match cell.text() {
                    Some(text) => Some(Json::trusted(text.clone())),
                    None => shared.slots[i].json().map(Json::trusted),
                }
            } else {
                None
            };
            slot.write(TaskReport {
                id: id.clone(),
                // A node's own description is the rare case that needs text of its own.
                names: match description {
                    None => Names::Static(meta),
                    Some(d) => Names::Owned(Box::new(OwnedNames {
                        name: Cow::Borrowed(meta.name),
                        function: Cow::Borrowed(meta.function),
                        description: Cow::Owned(d),
                    })),
                },
                status,
                attempts,
                elapsed_ns,
                result,
                error,
                optional,
            });
        }
        (any_errored, all_success)
    }
}

/// Node `i` never ended, in a run where the driver did not look for such nodes because
/// every node ended (see `drive_run`): a bug, caught here as the driver's pass would have
/// caught it: the node ends cancelled (no attempts, no time, no error), in its row too
/// (unless a large run's rows were released already); a debug build panics.
#[cold]
#[inline(never)]
fn never_ended(shared: &Shared, i: usize) {
    debug_assert!(
        shared.nodes[i].done_ok.load(Ordering::Acquire),
        "node {i} never ended in a run that ended every node"
    );
    tracing::error!(run = %shared.run_id, task = %shared.ids[i], "a task never ended: reported cancelled");
    if let Some(j) = &shared.journal {
        super::record_end(j, i, NodeStatus::Cancelled, &super::NOT_ENDED);
    }
}

/// Ids of the nodes that did not run because `failed` did not succeed, transitively.
pub(super) fn downstream(
    failed: u32,
    shared: &Shared,
    state: &NodeStates,
    offsets: &[u32],
    targets: &[u32],
) -> Vec<String> {
    let mut seen = vec![false; state.status.len()];
    let mut out = Vec::new();
    let mut stack = vec![failed];
    while let Some(x) = stack.pop() {
        for &d in &targets[offsets[x as usize] as usize..offsets[x as usize + 1] as usize] {
            let di = d as usize;
            if seen[di] {
                continue;
            }
            let did_not_run = state.status(di) == NodeStatus::Skipped
                || (state.status(di) == NodeStatus::Errored
                    && state.get(di).attempts == 0
                    && state
                        .get(di)
                        .error
                        .as_ref()
                        .is_some_and(|e| e.is::<DependencyFailed>()));
            if did_not_run {
                seen[di] = true;
                out.push(d);
                stack.push(d);
            }
        }
    }
    out.sort_unstable();
    out.into_iter()
        .map(|d| shared.ids[d as usize].to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::exec::run_bare;
    use crate::graph::process::{Process, ProcessMeta};
    use crate::graph::{Builder, Graph};
    use crate::report::TaskStatus;
    use crate::task::spec::TaskExt;

    /// A task that does nothing.
    struct Plain;

    crate::no_op_task!(Plain, "plain");

    /// Inline and allocated ids, own descriptions, optional tasks, and their mixes.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Mixed;

    /// An id too long to be kept inline (more than 23 bytes).
    const LONG: &str = "an-id-far-too-long-to-be-kept-inline";

    impl Process for Mixed {
        const META: ProcessMeta = ProcessMeta::dataflow("exec::report::tests::mixed");
        fn build(self, p: &mut Builder) {
            p.task(Plain.id("short"));
            p.task(Plain.id(LONG).description("its own"));
            p.task(Plain.id("opt").optional());
            p.task(Plain.id("both").optional().description("own too"));
            p.task(Plain.id(format!("{LONG}-too")));
        }
    }

    // Each entry has its node's own id (inline or allocated), description and optional
    // flag, in the graph's order (the report takes them from the graph).
    #[test]
    fn each_entry_has_its_nodes_id_description_and_optional_flag() {
        let report = run_bare(Graph::of(Mixed).unwrap(), "mixed", None);
        let seen: Vec<(&str, &str, &str, bool, TaskStatus)> = report
            .tasks
            .iter()
            .map(|t| (&*t.id, t.name(), t.description(), t.optional, t.status))
            .collect();
        let long_too = format!("{LONG}-too");
        let ok = TaskStatus::Success;
        assert_eq!(
            seen,
            [
                ("short", "plain", "", false, ok),
                (LONG, "plain", "its own", false, ok),
                ("opt", "plain", "", true, ok),
                ("both", "plain", "own too", true, ok),
                (long_too.as_str(), "plain", "", false, ok),
            ]
        );
    }
}
