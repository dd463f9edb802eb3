//! Graph construction and validation (acceptance area 1): graphs assembled by name at
//! run time (`TaskGraph`) are checked for missing dependencies, duplicates, self
//! dependencies and cycles before anything runs; a refused edit changes nothing.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{rt, sorted};
use procession::prelude::*;

#[task]
fn num(x: u32) -> u32 {
    x
}

#[task]
fn inc(x: u32) -> u32 {
    x + 1
}

#[task]
fn add2(a: u32, b: u32) -> u32 {
    a + b
}

#[task]
fn text() -> String {
    "t".into()
}

fn missing(task: &str, missing: &str) -> GraphError {
    GraphError::DependencyNotFound {
        task: task.into(),
        missing: missing.into(),
    }
}

static PROC7_CALLS: AtomicUsize = AtomicUsize::new(0);

#[task]
fn proc7_counted(a: u32, b: u32) -> u32 {
    PROC7_CALLS.fetch_add(1, Ordering::SeqCst);
    a + b
}

// PROC-7: task_3 reads task_1 and task_4; task_4 does not exist. Validation and build
// fail with DependencyNotFound(task_3, task_4), and running the graph is refused before
// anything runs. With the dependency renamed to task_2 the graph builds and runs.
#[tokio::test]
async fn proc_7_missing_dependency_is_refused_before_running() {
    let graph = |dep: &str| {
        let mut g = TaskGraph::new();
        g.add("task_1", Num::new(1)).unwrap();
        g.add("task_2", Num::new(2)).unwrap();
        let t1 = g.output::<u32>("task_1");
        let other = g.output::<u32>(dep);
        g.add("task_3", Proc7Counted::new(t1, other)).unwrap();
        g
    };
    let bad = graph("task_4");
    assert_eq!(bad.validate(), Err(missing("task_3", "task_4")));
    assert_eq!(
        graph("task_4").build().unwrap_err(),
        missing("task_3", "task_4")
    );
    let err = rt().await.run_graph(bad).await.unwrap_err();
    assert!(
        matches!(&err, procession::Error::Graph(e) if *e == missing("task_3", "task_4")),
        "{err}"
    );
    assert_eq!(PROC7_CALLS.load(Ordering::SeqCst), 0);

    let good = graph("task_2");
    assert_eq!(good.validate(), Ok(()));
    let report = rt().await.run_graph(good).await.unwrap();
    assert_eq!(report.result::<u32>("task_3").unwrap(), 3);
    assert_eq!(PROC7_CALLS.load(Ordering::SeqCst), 1);
}

// PROC-7: an ordering dependency on a task that does not exist is refused at once.
#[test]
fn proc_7_ordering_dependency_on_a_missing_task_is_refused() {
    let mut g = TaskGraph::new();
    g.add("task_3", Num::new(3)).unwrap();
    assert_eq!(
        g.add_dependency("task_3", "task_4"),
        Err(missing("task_3", "task_4"))
    );
    assert!(g
        .build()
        .unwrap()
        .dependencies("task_3")
        .unwrap()
        .is_empty());
}

// PROC-8: the same dependency declared twice is refused, with a message naming both.
#[test]
fn proc_8_duplicate_dependency_is_refused() {
    let mut g = TaskGraph::new();
    g.add("task_1", Num::new(1)).unwrap();
    g.add("task_3", Num::new(3)).unwrap();
    g.add_dependency("task_3", "task_1").unwrap();
    let err = g.add_dependency("task_3", "task_1").unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateDependency {
            task: "task_3".into(),
            dependency: "task_1".into()
        }
    );
    assert_eq!(err.to_string(), "task `task_3` already depends on `task_1`");
    assert_eq!(
        g.build().unwrap().dependencies("task_3").unwrap(),
        vec!["task_1"]
    );
}

// PROC-8, typed port: passing the same output twice is not a duplicate dependency but
// one value read twice; it is one edge of the graph.
#[tokio::test]
async fn proc_8_the_same_handle_twice_is_one_edge() {
    let mut g = TaskGraph::new();
    let a = g.add("a", Num::new(4)).unwrap();
    g.add("b", Add2::new(a, a)).unwrap();
    let graph = g.build().unwrap();
    assert_eq!(graph.dependencies("b").unwrap(), vec!["a"]);
    let report = rt().await.run_graph(graph).await.unwrap();
    assert_eq!(report.result::<u32>("b").unwrap(), 8);
}

// PROC-9: a task listing itself as a dependency is refused, by order or by data.
#[test]
fn proc_9_self_dependency_is_refused() {
    let mut g = TaskGraph::new();
    g.add("task_1", Num::new(1)).unwrap();
    g.add("task_3", Num::new(3)).unwrap();
    let err = g.add_dependency("task_3", "task_3").unwrap_err();
    assert_eq!(
        err,
        GraphError::SelfDependency {
            task: "task_3".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "task `task_3` lists itself as a dependency"
    );

    let mut g = TaskGraph::new();
    let me = g.output::<u32>("task_3");
    let err = g.add("task_3", Inc::new(me)).unwrap_err();
    assert_eq!(
        err,
        GraphError::SelfDependency {
            task: "task_3".into()
        }
    );
    // Refused: the task was not added.
    assert!(g.task_names().is_empty());
}

fn cycle_path(err: &GraphError) -> Vec<String> {
    match err {
        GraphError::Cycle { path } => {
            assert!(
                path.len() >= 3,
                "a cycle path repeats its first task: {path:?}"
            );
            assert_eq!(path.first(), path.last(), "{path:?}");
            path.clone()
        }
        other => panic!("expected a cycle, got {other:?}"),
    }
}

fn members(path: &[String]) -> Vec<String> {
    let mut m = sorted(path);
    m.dedup();
    m
}

// PROC-10 / WF-32: task_1 reads task_2 and task_2 reads task_1: build and validate fail
// with a cycle naming both.
#[test]
fn proc_10_wf_32_two_task_cycle_is_refused() {
    let mut g = TaskGraph::new();
    let t2 = g.output::<u32>("task_2");
    let t1 = g.add("task_1", Inc::new(t2)).unwrap();
    g.add("task_2", Inc::new(t1)).unwrap();
    let err = g.validate().unwrap_err();
    assert_eq!(members(&cycle_path(&err)), vec!["task_1", "task_2"]);
    assert!(
        err.to_string().starts_with("circular dependency: "),
        "{err}"
    );
    let err = g.build().unwrap_err();
    assert_eq!(members(&cycle_path(&err)), vec!["task_1", "task_2"]);
}

// PROC-11: a three-task cycle task_1 -> task_2 -> task_3 -> task_1 is refused.
#[test]
fn proc_11_three_task_cycle_is_refused() {
    let mut g = TaskGraph::new();
    let t2 = g.output::<u32>("task_2");
    let t3 = g.output::<u32>("task_3");
    let t1 = g.add("task_1", Inc::new(t2)).unwrap();
    g.add("task_2", Inc::new(t3)).unwrap();
    g.add("task_3", Inc::new(t1)).unwrap();
    let err = g.build().unwrap_err();
    assert_eq!(
        members(&cycle_path(&err)),
        vec!["task_1", "task_2", "task_3"]
    );
}

// PROC-12: the cycle task_1 -> task_3 -> task_4 -> task_1 is found even though task_2
// hangs off it; the error names the cycle's members only.
#[test]
fn proc_12_cycle_not_involving_every_task_is_found() {
    let mut g = TaskGraph::new();
    let t1 = g.output::<u32>("task_1");
    let t3 = g.output::<u32>("task_3");
    let t4 = g.output::<u32>("task_4");
    g.add("task_2", Inc::new(t1)).unwrap();
    g.add("task_1", Inc::new(t3)).unwrap();
    g.add("task_3", Inc::new(t4)).unwrap();
    g.add("task_4", Inc::new(t1)).unwrap();
    let err = g.build().unwrap_err();
    assert_eq!(
        members(&cycle_path(&err)),
        vec!["task_1", "task_3", "task_4"]
    );
}

// PROC-30: a second task named `a` is refused; the graph is unchanged and runs: only the
// first `a` ran.
#[tokio::test]
async fn proc_30_duplicate_name_is_refused_and_graph_is_unchanged() {
    let mut g = TaskGraph::new();
    g.add("a", Num::new(1)).unwrap();
    let err = g.add("a", Num::new(2)).unwrap_err();
    assert_eq!(err, GraphError::DuplicateName { name: "a".into() });
    assert_eq!(g.task_names(), vec!["a"]);
    let report = rt().await.run_graph(g).await.unwrap();
    assert_eq!(report.ids(report.successes()), vec!["a"]);
    assert_eq!(report.result::<u32>("a").unwrap(), 1);
}

// PROC-32: a removed leaf is absent from the report; the rest runs.
#[tokio::test]
async fn proc_32_removed_leaf_is_not_run() {
    let mut g = TaskGraph::new();
    g.add("a", Num::new(1)).unwrap();
    g.add("b", Num::new(2)).unwrap();
    g.remove("b").unwrap();
    assert_eq!(g.task_names(), vec!["a"]);
    let report = rt().await.run_graph(g).await.unwrap();
    assert!(report.task("b").is_none());
    assert_eq!(report.tasks.len(), 1);
    assert_eq!(report.task("a").unwrap().status, TaskStatus::Success);
}

// PROC-33: removing a task others read from is refused; the graph is unchanged and the
// dependent runs and succeeds.
#[tokio::test]
async fn proc_33_removing_a_task_with_dependents_is_refused() {
    let mut g = TaskGraph::new();
    let a = g.add("a", Num::new(20)).unwrap();
    g.add("b", Inc::new(a)).unwrap();
    let err = g.remove("a").unwrap_err();
    assert_eq!(
        err,
        GraphError::HasDependents {
            task: "a".into(),
            dependents: vec!["b".into()]
        }
    );
    let report = rt().await.run_graph(g).await.unwrap();
    assert_eq!(report.task("b").unwrap().status, TaskStatus::Success);
    assert_eq!(report.result::<u32>("b").unwrap(), 21);
}

// PROC-33: an ordering dependency also protects a task from removal.
#[test]
fn proc_33_ordering_dependents_also_block_removal() {
    let mut g = TaskGraph::new();
    g.add("a", Num::new(1)).unwrap();
    g.add("b", Num::new(2)).unwrap();
    g.add_dependency("b", "a").unwrap();
    assert!(matches!(
        g.remove("a"),
        Err(GraphError::HasDependents { .. })
    ));
    assert_eq!(g.task_names(), vec!["a", "b"]);
}

// PROC-34: removing a task that does not exist is TaskNotFound.
#[test]
fn proc_34_removing_a_missing_task_is_task_not_found() {
    let mut g = TaskGraph::new();
    g.add("a", Num::new(1)).unwrap();
    assert_eq!(
        g.remove("ghost"),
        Err(GraphError::TaskNotFound {
            name: "ghost".into()
        })
    );
    assert_eq!(g.task_names(), vec!["a"]);
}

// PROC-37: a consumer that already reads the producer cannot depend on it again; it still
// has exactly one dependency.
#[test]
fn proc_37_duplicate_dependency_on_a_data_input_is_refused() {
    let mut g = TaskGraph::new();
    let p = g.add("producer", Num::new(7)).unwrap();
    g.add("consumer", Inc::new(p)).unwrap();
    let err = g.add_dependency("consumer", "producer").unwrap_err();
    assert_eq!(
        err.to_string(),
        "task `consumer` already depends on `producer`"
    );
    assert_eq!(
        g.build().unwrap().dependencies("consumer").unwrap(),
        vec!["producer"]
    );
}

// PROC-38 / WF-31: an edge that would close a cycle is refused with the cycle named, and
// rolled back: `a` keeps no dependency, and the graph runs.
#[tokio::test]
async fn proc_38_wf_31_cycle_closing_edge_is_refused_atomically() {
    let mut g = TaskGraph::new();
    let a = g.add("a", Num::new(1)).unwrap();
    g.add("b", Inc::new(a)).unwrap();
    let err = g.add_dependency("a", "b").unwrap_err();
    let path = cycle_path(&err);
    assert_eq!(path, vec!["b", "a", "b"]);
    assert_eq!(err.to_string(), "circular dependency: b -> a -> b");
    let graph = g.build().unwrap();
    assert!(graph.dependencies("a").unwrap().is_empty());
    let report = rt().await.run_graph(graph).await.unwrap();
    assert_eq!(report.task("b").unwrap().status, TaskStatus::Success);
}

// A longer cycle through ordering edges is refused at the edit that would close it.
#[test]
fn ordering_edges_closing_a_long_cycle_are_refused() {
    let mut g = TaskGraph::new();
    for name in ["a", "b", "c", "d"] {
        g.add(name, Num::new(0)).unwrap();
    }
    g.add_dependency("b", "a").unwrap();
    g.add_dependency("c", "b").unwrap();
    g.add_dependency("d", "c").unwrap();
    let err = g.add_dependency("a", "d").unwrap_err();
    assert_eq!(cycle_path(&err), vec!["d", "c", "b", "a", "d"]);
    g.validate().unwrap();
}

// PROC-41: names are lower-cased when added; handles and edits find them in any case.
#[tokio::test]
async fn proc_41_names_are_lower_cased() {
    let mut g = TaskGraph::new();
    g.add("Fetch_Data", Num::new(5)).unwrap();
    assert_eq!(g.task_names(), vec!["fetch_data"]);
    let fetched = g.output::<u32>("FETCH_DATA");
    g.add("Use_It", Inc::new(fetched)).unwrap();
    g.add("Last", Num::new(0)).unwrap();
    g.add_dependency("LAST", "use_IT").unwrap();
    let graph = g.build().unwrap();
    assert_eq!(graph.node_ids(), vec!["fetch_data", "use_it", "last"]);
    assert_eq!(graph.dependencies("use_it").unwrap(), vec!["fetch_data"]);
    assert_eq!(graph.dependencies("last").unwrap(), vec!["use_it"]);
    let report = rt().await.run_graph(graph).await.unwrap();
    assert_eq!(report.result::<u32>("use_it").unwrap(), 6);
}

// PROC-42: "Fetch" and "fetch" are the same name.
#[test]
fn proc_42_duplicate_names_are_detected_case_insensitively() {
    let mut g = TaskGraph::new();
    g.add("Fetch", Num::new(1)).unwrap();
    let err = g.add("fetch", Num::new(2)).unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateName {
            name: "fetch".into()
        }
    );
    assert_eq!(err.to_string(), "duplicate task name `fetch`");
}

// PROC-44: three tasks, two named task_2: refused; named task_3, the graph builds.
#[test]
fn proc_44_unique_names() {
    let build = |third: &str| -> Result<Graph, GraphError> {
        let mut g = TaskGraph::new();
        g.add("task_1", Num::new(1))?;
        g.add("task_2", Num::new(2))?;
        g.add(third, Num::new(3))?;
        g.build()
    };
    assert_eq!(
        build("task_2").unwrap_err(),
        GraphError::DuplicateName {
            name: "task_2".into()
        }
    );
    assert_eq!(
        build("task_3").unwrap().node_ids(),
        vec!["task_1", "task_2", "task_3"]
    );
}

// A handle read with another type than its task returns is a type mismatch, whether the
// handle was taken before or after the task was added.
#[test]
fn reading_an_output_with_the_wrong_type_is_refused() {
    let mut g = TaskGraph::new();
    g.add("producer", Num::new(1)).unwrap();
    let wrong = g.output::<String>("producer");
    let _ = wrong;
    assert!(matches!(g.validate(), Err(GraphError::TypeMismatch { .. })));
    assert!(matches!(g.build(), Err(GraphError::TypeMismatch { .. })));

    let mut g = TaskGraph::new();
    let early = g.output::<u32>("producer");
    g.add("consumer", Inc::new(early)).unwrap();
    let err = g.add("producer", Text::new()).unwrap_err();
    assert!(
        matches!(&err, GraphError::TypeMismatch { dependency, .. } if dependency == "producer"),
        "{err}"
    );
    // The refused task was not added; the consumer still waits for a `producer`.
    assert_eq!(g.validate(), Err(missing("consumer", "producer")));
}

// A handle of another graph is refused, and the graph is unchanged.
#[test]
fn a_handle_from_another_graph_is_refused() {
    let mut first = TaskGraph::new();
    let a = first.add("a", Num::new(1)).unwrap();
    let mut second = TaskGraph::new();
    let err = second.add("b", Inc::new(a)).unwrap_err();
    assert_eq!(err, GraphError::ForeignHandle { task: "b".into() });
    assert!(second.task_names().is_empty());
}

#[process]
fn leaky(p: &mut Builder) {
    let mut other = TaskGraph::new();
    let foreign = other.add("x", Num::new(1)).unwrap();
    p.task(Inc::new(foreign));
}

// A process whose builder receives a handle of another graph does not build, and the
// runtime refuses to launch it.
#[tokio::test]
async fn a_process_given_a_foreign_handle_is_refused() {
    assert_eq!(
        Graph::of(Leaky {}).unwrap_err(),
        GraphError::ForeignHandle { task: "inc".into() }
    );
    let err = rt().await.run(Leaky {}).await.unwrap_err();
    assert!(
        matches!(
            err,
            procession::Error::Graph(GraphError::ForeignHandle { .. })
        ),
        "{err}"
    );
}

// Tasks may be added in any order: `output` names a task added later, and a removed
// task's name can be reused.
#[tokio::test]
async fn tasks_can_be_added_in_any_order_and_names_reused() {
    let mut g = TaskGraph::named("any_order");
    let later = g.output::<u32>("later");
    g.add("first", Inc::new(later)).unwrap();
    g.add("later", Num::new(41)).unwrap();
    g.add("scratch", Num::new(0)).unwrap();
    g.remove("scratch").unwrap();
    g.add("scratch", Num::new(9)).unwrap();
    let report = rt().await.run_graph(g).await.unwrap();
    assert_eq!(report.process, "any_order");
    assert_eq!(report.result::<u32>("first").unwrap(), 42);
    assert_eq!(report.result::<u32>("scratch").unwrap(), 9);
}

#[process]
fn fingerprinted(p: &mut Builder, n: u32) {
    for i in 0..n {
        p.task(Num::new(i));
    }
}

// The same process with the same parameters builds the same graph (ids, fingerprint);
// another shape gets another fingerprint.
#[test]
fn builds_are_deterministic() {
    let a = Graph::of(Fingerprinted { n: 3 }).unwrap();
    let b = Graph::of(Fingerprinted { n: 3 }).unwrap();
    let c = Graph::of(Fingerprinted { n: 4 }).unwrap();
    assert_eq!(a.node_ids(), b.node_ids());
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
    assert_eq!(a.name(), "fingerprinted");
    assert_eq!(a.len(), 3);
    assert!(!a.is_empty());
    assert!(a.dependencies("nope").is_none());
}
