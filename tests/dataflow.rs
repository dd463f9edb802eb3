//! Processes written the obvious way (issue 12, points 1, 3 and 6): the top level follows
//! the data, tasks have ids their authors chose and typed results, optional tasks do not
//! fail their run, and a `run_anyway` fan-in takes the inputs that succeeded.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value.
#![allow(clippy::needless_pass_by_value)]

mod common;

use std::sync::{LazyLock, Mutex};

use common::{rendezvous, rt};
use procession::prelude::*;
use procession::{DependencyFailed, ResultError, State};
use tokio::sync::Barrier;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Down(String);

// ------------------------------------------------------- the user's process (point 1)

static FETCH_BARRIER: LazyLock<Barrier> = LazyLock::new(|| Barrier::new(3));

/// Fetches one source; the three fetches meet at a barrier, so they only finish when all
/// three run at the same time.
#[task]
async fn fetch_source(source: String) -> Result<Vec<u32>, String> {
    if rendezvous(&FETCH_BARRIER).await {
        Ok(vec![source.len() as u32, 1])
    } else {
        Err(format!(
            "{source}: the three fetches did not run side by side"
        ))
    }
}

#[task]
fn transform(rows: Vec<Vec<u32>>) -> Vec<u32> {
    rows.concat()
}

#[task]
fn aggregate(rows: Vec<u32>) -> u32 {
    rows.iter().sum()
}

#[task]
fn notify(total: u32) -> Result<(), Down> {
    Err(Down(format!("chat is down (total {total})")))
}

#[task]
fn archive(total: u32) -> String {
    format!("archived {total}")
}

/// Written the obvious way: no `mode`, no blocks.
#[process]
fn etl(p: &mut Builder, sources: Vec<String>) {
    let fetched: Vec<Out<Vec<u32>>> = sources
        .iter()
        .map(|s| p.task(FetchSource::new(s.clone())))
        .collect();
    let rows = p.task(Transform::new(fetched));
    let total = p.task(Aggregate::new(rows));
    p.task(Notify::new(total));
    p.task(Archive::new(total));
}

fn sources() -> Vec<String> {
    vec!["eu".into(), "us".into(), "apac".into()]
}

// Issue 12, point 1 (and PROC-26/PROC-27 for the top level): the three fetches run at the
// same time (they meet at a 3-party barrier, which a sequential top level never passes),
// and the archiver, which reads only the aggregate, runs although the notifier failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_obvious_process_runs_fetches_side_by_side_and_archives() {
    let g = Graph::of(Etl { sources: sources() }).unwrap();
    assert!(g.dependencies("fetch_source#1").unwrap().is_empty());
    assert_eq!(g.dependencies("archive").unwrap(), vec!["aggregate"]);

    let report = rt().await.run(Etl { sources: sources() }).await.unwrap();
    assert_eq!(
        report.ids(report.successes()),
        vec![
            "fetch_source",
            "fetch_source#1",
            "fetch_source#2",
            "transform",
            "aggregate",
            "archive"
        ],
        "{}",
        report.summary()
    );
    assert_eq!(report.ids(report.errored()), vec!["notify"]);
    assert!(report.skipped().is_empty());
    assert_eq!(report.result::<String>("archive").unwrap(), "archived 11");
    assert_eq!(report.task("archive").unwrap().attempts, 1);
    // The notifier is not optional here: its failure fails the run.
    assert_eq!(report.status, RunStatus::Failed);
}

static ORDER: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

#[task]
async fn step(name: String) {
    // Yield a few times: a step started too early would overtake its predecessor.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let name: &'static str = match name.as_str() {
        "migrate" => "migrate",
        "seed" => "seed",
        "serve" => "serve",
        "warm" => "warm",
        _ => "other",
    };
    ORDER.lock().unwrap().push(name);
}

#[process]
fn ordered_without_data(p: &mut Builder) {
    p.sequential(|p| {
        p.task(Step::new("migrate"));
        p.task(Step::new("seed"));
    });
    let warm = p.task(Step::new("warm"));
    p.after(&[warm.node()], |p| p.task(Step::new("serve")));
}

// Point 1: ordering without data stays explicit: a `sequential` block orders its steps,
// `after` orders a task after another; nothing else waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordering_without_data_is_explicit() {
    let g = Graph::of(OrderedWithoutData {}).unwrap();
    assert_eq!(
        g.dependencies("sequential/step#1").unwrap(),
        vec!["sequential/step"]
    );
    assert!(g.dependencies("step").unwrap().is_empty());
    assert_eq!(g.dependencies("step#1").unwrap(), vec!["step"]);
    let report = rt().await.run(OrderedWithoutData {}).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    let order = ORDER.lock().unwrap().clone();
    let pos = |n| order.iter().position(|x| *x == n).unwrap();
    assert!(pos("migrate") < pos("seed"), "{order:?}");
    assert!(pos("warm") < pos("serve"), "{order:?}");
}

#[task]
fn numbered(i: u32) -> u32 {
    i
}

#[process(mode = "sequential")]
fn in_sequence(p: &mut Builder) {
    for i in 0..3 {
        p.task(Numbered::new(i));
    }
}

// Point 1: `mode = "sequential"` is the opt-in for a top level that runs its steps one
// after another.
#[test]
fn sequential_is_an_opt_in() {
    assert_eq!(<InSequence as Process>::META.mode, Mode::Sequential);
    assert_eq!(<Etl as Process>::META.mode, Mode::Dataflow);
    let g = Graph::of(InSequence {}).unwrap();
    assert_eq!(g.dependencies("numbered#2").unwrap(), vec!["numbered#1"]);
}

// ------------------------------------------------------- named tasks (point 3)

const TOTAL: TaskKey<u32> = TaskKey::new("total");
const ARCHIVE: TaskKey<String> = TaskKey::new("archive_path");

#[process]
fn named(p: &mut Builder) {
    let a = p.task(Numbered::new(2));
    let b = p.task(Numbered::new(3));
    let total = p.concurrent(|p| p.task(Aggregate::new(vec![a, b]).id(TOTAL)));
    p.each(["x", "y"], |p, s| {
        p.task(Numbered::new(7).id(format!("seven_{s}")));
    });
    p.task(Archive::new(total).id(&ARCHIVE));
}

// Point 3: an id given in the builder replaces the positional one, wherever the task is
// (a block or an `each` adds no segment), and a typed key reads the result back.
#[tokio::test]
async fn ids_given_in_the_builder_name_the_tasks() {
    let g = Graph::of(Named {}).unwrap();
    assert_eq!(
        g.node_ids(),
        vec![
            "numbered",
            "numbered#1",
            "total",
            "seven_x",
            "seven_y",
            "archive_path"
        ]
    );
    let report = rt().await.run(Named {}).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.get(&TOTAL), Some(5));
    assert_eq!(report.get(&ARCHIVE).as_deref(), Some("archived 5"));
    assert_eq!(report.get(&TaskKey::<u32>::dynamic("seven_y")), Some(7));
    assert_eq!(report.result::<u32>("total").unwrap(), 5); // by id, untyped
    assert_eq!(report.task_of(&TOTAL).unwrap().attempts, 1);
    // A key naming no task, or a task of another type, gives `None`, never a panic.
    assert_eq!(report.get(&TaskKey::<u32>::new("missing")), None);
    assert!(matches!(
        report.try_get(&TaskKey::<u32>::new("missing")),
        Err(ResultError::UnknownTask { .. })
    ));
    assert!(matches!(
        report.try_get(&TaskKey::<Vec<String>>::new("total")),
        Err(ResultError::Decode { .. })
    ));
}

// Point 3: the same ids after the run was stored: the report read back from the store
// answers the same typed lookups.
#[tokio::test]
async fn typed_lookups_work_on_stored_reports() {
    let rt = rt().await;
    let run = rt.launch(Named {}).await.unwrap();
    let id = run.id().to_owned();
    run.wait().await.unwrap();
    let stored = rt.report(&id).await.unwrap();
    assert_eq!(stored.get(&TOTAL), Some(5));
    assert_eq!(stored.get(&ARCHIVE).as_deref(), Some("archived 5"));
}

#[task]
fn label(x: u32) -> String {
    format!("<{x}>")
}

// Point 3: a handle returned by the builder looks its result up in the report of a run
// of that graph, typed; a handle of another graph, or a report read back from JSON (which
// keeps no handles), is an error value, never a panic.
#[tokio::test]
async fn handles_look_results_up_in_their_own_run_only() {
    let rt = rt().await;
    let mut g = TaskGraph::new();
    // `output` before `add`: handles are slots, remapped to tasks when the graph is built.
    let later = g.output::<u32>("later");
    let shown = g.add("shown", Label::new(later)).unwrap();
    let later_out = g.add("later", Numbered::new(4)).unwrap();
    let report = rt.run_graph(g).await.unwrap();
    assert_eq!(report.get(&shown).as_deref(), Some("<4>"));
    assert_eq!(report.get(&later_out), Some(4));
    assert_eq!(report.get(&later), Some(4));

    let mut other = TaskGraph::new();
    let foreign = other.add("shown", Label::new(1)).unwrap();
    assert_eq!(report.get(&foreign), None);
    assert!(matches!(
        report.try_get(&foreign),
        Err(ResultError::ForeignHandle)
    ));
    let back = RunReport::from_json(&report.to_json()).unwrap();
    assert_eq!(back.get(&shown), None);
    assert_eq!(
        back.get(&TaskKey::<String>::new("shown")).as_deref(),
        Some("<4>")
    );
}

#[process]
fn duplicate_ids(p: &mut Builder) {
    p.task(Numbered::new(1).id("dup"));
    p.concurrent(|p| p.task(Label::new(2).id("dup")));
}

#[process]
fn id_taken_by_position(p: &mut Builder) {
    p.task(Numbered::new(1));
    p.task(Label::new(2).id("numbered"));
}

#[process]
fn id_taken_by_a_block(p: &mut Builder) {
    p.concurrent(|p| p.task(Numbered::new(1)));
    p.task(Label::new(2).id("concurrent"));
}

// Point 3: ids are unique; a repeat is a build error naming both tasks and where they
// were added, whether the first one chose the id or got it by position.
#[test]
fn a_duplicate_id_is_a_build_error_naming_both() {
    let err = Graph::of(DuplicateIds {}).unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateId {
            id: "dup".into(),
            first: "`numbered` (task 1)".into(),
            second: "`label` (task 2)".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "id `dup` is given twice: to `numbered` (task 1) and to `label` (task 2); ids given with `.id(..)` must be unique in their process"
    );
    assert!(matches!(
        Graph::of(IdTakenByPosition {}).unwrap_err(),
        GraphError::DuplicateId { id, first, .. } if id == "numbered" && first == "`numbered` (task 1)"
    ));
    assert!(matches!(
        Graph::of(IdTakenByABlock {}).unwrap_err(),
        GraphError::DuplicateId { id, first, .. } if id == "concurrent" && first == "a `concurrent` block"
    ));
}

#[process]
fn bad_id(p: &mut Builder, id: String) {
    p.task(Numbered::new(1).id(id));
}

// Point 3: an id is not empty and has no `/` (the separator of block segments).
#[test]
fn malformed_ids_are_refused() {
    for id in ["", "a/b", "tab\there"] {
        let err = Graph::of(BadId { id: id.into() }).unwrap_err();
        assert!(
            matches!(&err, GraphError::InvalidId { id: got, .. } if got == id),
            "{id:?}: {err}"
        );
    }
    assert!(Graph::of(BadId {
        id: "fetch eu #2".into()
    })
    .is_ok());
}

#[process]
fn checker(p: &mut Builder, x: u32) {
    p.task(Numbered::new(x).id("check"));
}

#[process]
fn two_checkers(p: &mut Builder) {
    p.sub_process(Checker { x: 1 });
    p.sub_process(Checker { x: 2 });
}

// Point 3: an id is relative to its process: inside a sub-process it gets the
// sub-process's segment, so one process embedded twice does not clash with itself.
#[tokio::test]
async fn ids_inside_a_sub_process_get_its_segment() {
    let g = Graph::of(TwoCheckers {}).unwrap();
    assert_eq!(g.node_ids(), vec!["checker/check", "checker#1/check"]);
    let report = rt().await.run(TwoCheckers {}).await.unwrap();
    assert_eq!(report.get(&TaskKey::<u32>::new("checker#1/check")), Some(2));
}

// Point 3: the graph's fingerprint includes the ids (a run is resumed under the same
// ids only), and stays the same from one build to the next.
#[test]
fn ids_are_part_of_the_fingerprint() {
    assert_eq!(
        Graph::of(Named {}).unwrap().fingerprint(),
        Graph::of(Named {}).unwrap().fingerprint()
    );
    assert_ne!(
        Graph::of(BadId { id: "one".into() }).unwrap().fingerprint(),
        Graph::of(BadId { id: "two".into() }).unwrap().fingerprint()
    );
}

// Point 3: a task graph names its tasks by `add`; an `.id(..)` that says otherwise is
// refused, one that agrees is fine.
#[test]
fn task_graphs_name_tasks_with_add() {
    let mut g = TaskGraph::new();
    assert!(g.add("one", Numbered::new(1).id("One")).is_ok());
    assert!(matches!(
        g.add("two", Numbered::new(2).id("deux")),
        Err(GraphError::InvalidId { .. })
    ));
    assert_eq!(g.task_names(), vec!["one"]);
}

// ------------------------------------------------ optional work (point 6)

#[task]
fn build_total() -> u32 {
    42
}

#[task]
fn mark_notified(done: ()) -> bool {
    let () = done;
    true
}

#[process]
fn with_optional_notifier(p: &mut Builder) {
    let total = p.task(BuildTotal::new().id(TOTAL));
    let sent = p.task(Notify::new(total).optional());
    p.task(MarkNotified::new(sent)); // needs the notifier's output: skipped
    p.task(Archive::new(total));
}

// Point 6 (and PROC-5/PROC-6/WF-34 for what depends on the failure): an optional task
// that fails leaves the run successful. It is reported errored and listed as a warning;
// its dependents are skipped as for any failure (and do not fail the run either); the
// record ends `done` with a warning in its log.
#[tokio::test]
async fn an_optional_task_that_fails_does_not_fail_the_run() {
    let rt = rt().await;
    let run = rt.launch(WithOptionalNotifier {}).await.unwrap();
    let id = run.id().to_owned();
    let report = run.wait().await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded, "{}", report.summary());
    assert!(report.is_success());
    assert_eq!(report.ids(report.warnings()), vec!["notify"]);
    assert_eq!(report.ids(report.errored()), vec!["notify"]);
    assert_eq!(report.ids(report.skipped()), vec!["mark_notified"]);
    let notify = report.task("notify").unwrap();
    assert!(notify.optional);
    assert_eq!(
        notify.error.as_ref().unwrap().downstream_impact,
        vec!["mark_notified"]
    );
    assert_eq!(report.task("archive").unwrap().status, TaskStatus::Success);
    assert!(
        report.summary().contains("warning notify"),
        "{}",
        report.summary()
    );
    assert_eq!(report.get(&TOTAL), Some(42));

    let rec = rt.get(&id).await.unwrap().unwrap();
    assert_eq!(rec.state(), State::Done);
    assert!(rec.status.error.is_none());
    assert!(
        rec.log.iter().any(|l| l.level == Level::Warning
            && l.message == "optional task `notify` failed: chat is down (total 42)"),
        "{:?}",
        rec.log
    );
    // The report read back from the store says the same.
    let stored = rt.report(&id).await.unwrap();
    assert_eq!(stored.status, RunStatus::Succeeded);
    assert_eq!(stored.ids(stored.warnings()), vec!["notify"]);
    let back = RunReport::from_json(&report.to_json()).unwrap();
    assert_eq!(back.ids(back.warnings()), vec!["notify"]);
}

/// Pings a status page; never worth failing a run for.
#[task(optional)]
fn ping_status_page() -> Result<(), Down> {
    Err(Down("status page unreachable".into()))
}

#[task(on_dep_failure = "fail")]
fn strict_after(x: ()) {
    let () = x;
}

#[process]
fn optional_by_attribute(p: &mut Builder) {
    p.task(PingStatusPage::new());
    p.task(BuildTotal::new());
}

#[process]
fn strict_dependent_of_optional(p: &mut Builder) {
    let ping = p.task(PingStatusPage::new());
    p.task(StrictAfter::new(ping));
}

#[task]
fn always_fails() -> Result<u32, Down> {
    Err(Down("not optional".into()))
}

#[process]
fn optional_and_required_failures(p: &mut Builder) {
    p.task(PingStatusPage::new());
    p.task(AlwaysFails::new());
}

// Point 6: `#[task(optional)]` makes every use optional. A dependent that fails because of
// it (`on_dep_failure = "fail"`) is a real failure; so is any failure of a task that is
// not optional, and the record's error names that one, not the optional one.
#[tokio::test]
async fn optional_by_attribute_and_what_still_fails() {
    const { assert!(<PingStatusPage as Task>::META.policy.optional) };
    let rt = rt().await;
    let report = rt.run(OptionalByAttribute {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded);
    assert_eq!(report.ids(report.warnings()), vec!["ping_status_page"]);

    let report = rt.run(StrictDependentOfOptional {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let strict = report.task("strict_after").unwrap();
    assert!(strict
        .error
        .as_ref()
        .unwrap()
        .error()
        .unwrap()
        .is::<DependencyFailed>());

    let run = rt.launch(OptionalAndRequiredFailures {}).await.unwrap();
    let id = run.id().to_owned();
    let report = run.wait().await.unwrap();
    assert_eq!(report.status, RunStatus::Failed);
    let rec = rt.get(&id).await.unwrap().unwrap();
    assert_eq!(
        rec.status.error.as_deref(),
        Some("task `always_fails` failed: not optional (and 1 more)")
    );
}

// ------------------------------------------------ partial fan-in (point 6)

#[task]
fn fetch_or_fail(source: String) -> Result<u32, Down> {
    if source == "us" {
        Err(Down("us answered 503".into()))
    } else {
        Ok(source.len() as u32)
    }
}

/// Totals the sources that could be fetched, and names the others.
#[task(on_dep_failure = "run_anyway")]
fn partial_total(sources: Vec<String>, parts: Vec<Option<u32>>) -> (u32, Vec<String>) {
    let missing = sources
        .iter()
        .zip(&parts)
        .filter(|(_, p)| p.is_none())
        .map(|(s, _)| s.clone())
        .collect();
    (parts.into_iter().flatten().sum(), missing)
}

#[task(on_dep_failure = "run_anyway")]
fn first_or_default(first: Option<u32>) -> u32 {
    first.unwrap_or(0)
}

#[process]
fn partial(p: &mut Builder, sources: Vec<String>) {
    let parts: Vec<Out<u32>> = sources
        .iter()
        .map(|s| p.task(FetchOrFail::new(s.clone()).optional()))
        .collect();
    p.task(PartialTotal::new(sources.clone(), parts.clone()).id("total"));
    p.task(FirstOrDefault::new(parts[1]));
}

// Point 6: under `run_anyway`, a fan-in that takes `Vec<Option<T>>` receives the inputs
// that succeeded (`None` in place of the failed one, order kept), and an `Option<T>`
// input is `None` for a failed task. With the failing fetch optional, the run succeeds.
#[tokio::test]
async fn a_run_anyway_fan_in_takes_the_inputs_that_succeeded() {
    let sources = vec!["eu".to_owned(), "us".to_owned(), "apac".to_owned()];
    let report = rt()
        .await
        .run(Partial {
            sources: sources.clone(),
        })
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Succeeded, "{}", report.summary());
    assert_eq!(
        report.get(&TaskKey::<(u32, Vec<String>)>::new("total")),
        Some((6, vec!["us".to_owned()]))
    );
    assert_eq!(report.result::<u32>("first_or_default").unwrap(), 0);
    assert_eq!(report.ids(report.warnings()), vec!["fetch_or_fail#1"]);
    // The failure's downstream impact lists no one: the fan-in ran.
    let failed = report.task("fetch_or_fail#1").unwrap();
    assert!(failed.error.as_ref().unwrap().downstream_impact.is_empty());
}

#[task(on_dep_failure = "skip")]
fn skip_total(parts: Vec<Option<u32>>) -> u32 {
    parts.into_iter().flatten().sum()
}

#[process]
fn option_inputs_without_run_anyway(p: &mut Builder) {
    let a = p.task(FetchOrFail::new("eu"));
    let b = p.task(FetchOrFail::new("us"));
    p.task(SkipTotal::new(vec![a, b]));
}

// Point 6: `Option` inputs do not change a task's policy: without `run_anyway` it is
// skipped when an input failed (WF-34), like any other task.
#[tokio::test]
async fn option_inputs_follow_the_tasks_policy() {
    let report = rt()
        .await
        .run(OptionInputsWithoutRunAnyway {})
        .await
        .unwrap();
    assert_eq!(report.ids(report.skipped()), vec!["skip_total"]);
    assert_eq!(report.status, RunStatus::Failed);
}

// ------------------------------------------------------- several readers of one output

/// A value whose JSON form loses a field: `made_here` is not stored, so a copy decoded
/// from JSON has it `false`, a copy of the value itself `true`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Marked {
    n: u32,
    #[serde(skip)]
    made_here: bool,
}

/// The same, without `Clone`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct MarkedOnce {
    n: u32,
    #[serde(skip)]
    made_here: bool,
}

#[task]
fn mark(n: u32) -> Marked {
    Marked { n, made_here: true }
}

#[task]
fn mark_once(n: u32) -> MarkedOnce {
    MarkedOnce { n, made_here: true }
}

#[task]
fn was_made_here(m: Marked) -> (u32, bool) {
    (m.n, m.made_here)
}

#[task]
fn was_made_here_once(m: MarkedOnce) -> (u32, bool) {
    (m.n, m.made_here)
}

#[process]
fn read_thrice(p: &mut Builder) {
    let m = p.task(Mark::new(5));
    let o = p.task(MarkOnce::new(6));
    for _ in 0..3 {
        p.task(WasMadeHere::new(m));
        p.task(WasMadeHereOnce::new(o));
    }
}

// An output that several tasks read: with a `Clone` type every reader gets a copy of the
// value itself (cheaper than decoding its JSON for each), without `Clone` the last reader
// gets the value and the others a copy decoded from its JSON. The stored result is the
// JSON either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_readers_of_a_clone_output_get_copies_of_the_value() {
    let report = rt().await.run(ReadThrice {}).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    let ids = ["was_made_here", "was_made_here#1", "was_made_here#2"];
    for id in ids {
        assert_eq!(report.result::<(u32, bool)>(id).unwrap(), (5, true), "{id}");
    }
    let once: Vec<(u32, bool)> = [
        "was_made_here_once",
        "was_made_here_once#1",
        "was_made_here_once#2",
    ]
    .iter()
    .map(|id| report.result::<(u32, bool)>(id).unwrap())
    .collect();
    assert!(once.iter().all(|(n, _)| *n == 6), "{once:?}");
    assert_eq!(once.iter().filter(|(_, here)| *here).count(), 1, "{once:?}");
    let stored = report.task("mark").and_then(|t| t.result.as_ref());
    assert_eq!(stored.map(procession::Json::get), Some(r#"{"n":5}"#));
}
