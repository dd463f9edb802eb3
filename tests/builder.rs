//! The process builder (acceptance area 2 and TT-35 of area 3): sequential and
//! concurrent blocks, `each`, `transform`, `sub_process`, `after`, options, descriptions,
//! and the node ids they produce.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::collections::BTreeMap;

use common::rt;
use procession::prelude::*;
use serde_json::json;

#[task]
fn foo(v: String) -> String {
    format!("foo:{v}")
}

#[task]
fn bar(v: String) -> String {
    format!("bar:{v}")
}

#[task]
fn baz(v: String) -> String {
    format!("baz:{v}")
}

#[task]
fn qux(v: String) -> String {
    format!("qux:{v}")
}

fn deps<'a>(g: &'a Graph, id: &str) -> Vec<&'a str> {
    g.dependencies(id)
        .unwrap_or_else(|| panic!("no node `{id}` in {:?}", g.node_ids()))
}

#[process(mode = "sequential")]
fn tt41(p: &mut Builder, value: String) {
    p.task(Foo::new(value.clone()));
    p.concurrent(|p| {
        p.task(Bar::new(value.clone()));
        p.task(Baz::new(value.clone()));
    });
    p.task(Qux::new(value));
}

// TT-41 / TT-15: a concurrent block is ONE step of a sequential top level (tasktronaut's
// default, opted into here with `mode = "sequential"`): both of its
// tasks wait for `foo` (not for each other), and `qux` waits for the whole block.
// TT-14: the block sees the process's parameters (`value = "bar"` reaches every task).
#[tokio::test]
async fn tt_41_tt_15_tt_14_concurrent_block_is_one_step() {
    let g = Graph::of(Tt41 {
        value: "bar".into(),
    })
    .unwrap();
    assert_eq!(
        g.node_ids(),
        vec!["foo", "concurrent/bar", "concurrent/baz", "qux"]
    );
    assert!(deps(&g, "foo").is_empty());
    assert_eq!(deps(&g, "concurrent/bar"), vec!["foo"]);
    assert_eq!(deps(&g, "concurrent/baz"), vec!["foo"]);
    assert_eq!(deps(&g, "qux"), vec!["concurrent/bar", "concurrent/baz"]);

    let report = rt()
        .await
        .run(Tt41 {
            value: "bar".into(),
        })
        .await
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(
        report.result::<String>("concurrent/bar").unwrap(),
        "bar:bar"
    );
    assert_eq!(
        report.result::<String>("concurrent/baz").unwrap(),
        "baz:bar"
    );
    assert_eq!(report.result::<String>("qux").unwrap(), "qux:bar");
}

#[process]
fn tt17(p: &mut Builder) {
    p.task(Foo::new("x"));
    p.sequential(|p| {
        p.task(Bar::new("x"));
        p.task(Baz::new("x"));
    });
    p.task(Qux::new("x"));
}

// TT-16 / TT-17: a sequential block inside a data-flow process (the default) runs its
// steps one after another, while the block as a whole is one step that waits for nothing.
#[test]
fn tt_16_tt_17_sequential_block_is_one_step() {
    let g = Graph::of(Tt17 {}).unwrap();
    assert_eq!(
        g.node_ids(),
        vec!["foo", "sequential/bar", "sequential/baz", "qux"]
    );
    assert!(deps(&g, "foo").is_empty());
    assert!(deps(&g, "sequential/bar").is_empty());
    assert_eq!(deps(&g, "sequential/baz"), vec!["sequential/bar"]);
    assert!(deps(&g, "qux").is_empty());
}

#[process(mode = "sequential")]
fn nested(p: &mut Builder) {
    p.concurrent(|p| {
        p.sequential(|p| {
            p.task(Foo::new("a"));
            p.task(Bar::new("b"));
        });
        p.task(Baz::new("c"));
    });
    p.task(Qux::new("d"));
}

// In a sequential block, a step after a block waits for all of the block; nested blocks
// nest their ids.
#[test]
fn nested_blocks() {
    let g = Graph::of(Nested {}).unwrap();
    assert_eq!(
        g.node_ids(),
        vec![
            "concurrent/sequential/foo",
            "concurrent/sequential/bar",
            "concurrent/baz",
            "qux"
        ]
    );
    assert_eq!(
        deps(&g, "concurrent/sequential/bar"),
        vec!["concurrent/sequential/foo"]
    );
    assert!(deps(&g, "concurrent/baz").is_empty());
    assert_eq!(
        deps(&g, "qux"),
        vec!["concurrent/sequential/bar", "concurrent/baz"]
    );
}

#[process(mode = "sequential")]
fn two_blocks(p: &mut Builder) {
    p.concurrent(|p| p.task(Foo::new("1")));
    p.concurrent(|p| p.task(Foo::new("2")));
}

// Two blocks of the same kind get distinct, readable ids: the repeat is numbered like a
// repeated task (`concurrent#1/foo`).
#[tokio::test]
async fn repeated_blocks_get_numbered_segments() {
    let g = Graph::of(TwoBlocks {}).unwrap();
    assert_eq!(g.node_ids(), vec!["concurrent/foo", "concurrent#1/foo"]);
    assert_eq!(deps(&g, "concurrent#1/foo"), vec!["concurrent/foo"]);
    let report = rt().await.run(TwoBlocks {}).await.unwrap();
    assert_eq!(
        report.result::<String>("concurrent#1/foo").unwrap(),
        "foo:2"
    );
}

#[process(mode = "sequential")]
fn repeated(p: &mut Builder) {
    p.task(Foo::new("a"));
    p.task(Foo::new("b"));
    p.task(Foo::new("c"));
}

// A task added twice gets `#1`, `#2`… ids; `mode = "sequential"` runs them in sequence.
#[test]
fn repeated_tasks_get_numbered_ids_and_run_in_sequence() {
    let g = Graph::of(Repeated {}).unwrap();
    assert_eq!(g.node_ids(), vec!["foo", "foo#1", "foo#2"]);
    assert_eq!(deps(&g, "foo#1"), vec!["foo"]);
    assert_eq!(deps(&g, "foo#2"), vec!["foo#1"]);
    assert_eq!(<Repeated as Process>::META.mode, Mode::Sequential);
}

#[process]
fn flat_dataflow(p: &mut Builder) {
    p.task(Foo::new("a"));
    p.task(Bar::new("b"));
    p.task(Baz::new("c"));
}

#[process(mode = "concurrent")]
fn flat_concurrent(p: &mut Builder) {
    p.task(Foo::new("a"));
    p.task(Bar::new("b"));
    p.task(Baz::new("c"));
}

#[process(mode = "dataflow")]
fn flat_explicit_dataflow(p: &mut Builder) {
    p.task(Foo::new("a"));
}

// The default top level follows the data: tasks without data edges do not wait for each
// other. `mode = "dataflow"` says so explicitly, and `"concurrent"` is its synonym.
#[test]
fn top_level_follows_data_by_default() {
    assert_eq!(<FlatDataflow as Process>::META.mode, Mode::Dataflow);
    assert_eq!(<FlatConcurrent as Process>::META.mode, Mode::Dataflow);
    assert_eq!(<FlatExplicitDataflow as Process>::META.mode, Mode::Dataflow);
    for g in [
        Graph::of(FlatDataflow {}).unwrap(),
        Graph::of(FlatConcurrent {}).unwrap(),
    ] {
        assert_eq!(g.len(), 3);
        for id in g.node_ids() {
            assert!(deps(&g, id).is_empty(), "{id}");
        }
    }
}

/// Documented task.
#[task]
fn documented() {}

#[task]
fn undocumented() {}

#[task(description = "foo-bar-baz")]
fn described() {}

#[process]
fn descriptions(p: &mut Builder) {
    p.task(Undocumented::new());
    p.task(Documented::new());
    p.task(Described::new());
    p.task_with_description(Described::new(), "foo");
}

// TT-18: a task without a description has an empty one.
// TT-19: the `#[task]` description (or doc comment) is the step's description.
// TT-20: an explicit description given to the builder wins.
#[tokio::test]
async fn tt_18_19_20_descriptions() {
    let report = rt().await.run(Descriptions {}).await.unwrap();
    let d = |id: &str| report.task(id).unwrap().description().to_owned();
    assert_eq!(d("undocumented"), "");
    assert_eq!(d("documented"), "Documented task.");
    assert_eq!(d("described"), "foo-bar-baz");
    assert_eq!(d("described#1"), "foo");
}

#[task]
fn item(bar: u32) -> u32 {
    bar
}

#[process(mode = "sequential")]
fn each_items(p: &mut Builder, count: u32) {
    let outs = p.each(0..count, |p, c| p.task(Item::new(c)));
    assert_eq!(outs.len() as u32, count);
}

// TT-21: `each` calls its closure once per item. TT-42: the steps are flat steps of the
// enclosing (here sequential, as in tasktronaut) block, each gets exactly its item as argument (the
// process's own `count` is not merged in: arguments are explicit).
#[tokio::test]
async fn tt_21_tt_42_each_adds_one_flat_step_per_item() {
    let g = Graph::of(EachItems { count: 3 }).unwrap();
    assert_eq!(
        g.node_ids(),
        vec!["each[0]/item", "each[1]/item", "each[2]/item"]
    );
    assert!(deps(&g, "each[0]/item").is_empty());
    assert_eq!(deps(&g, "each[1]/item"), vec!["each[0]/item"]);
    assert_eq!(deps(&g, "each[2]/item"), vec!["each[1]/item"]);

    let report = rt().await.run(EachItems { count: 3 }).await.unwrap();
    for i in 0..3_u32 {
        assert_eq!(report.result::<u32>(&format!("each[{i}]/item")).unwrap(), i);
        assert_eq!(
            report
                .task(&format!("each[{i}]/item"))
                .unwrap()
                .description(),
            ""
        );
    }
    assert!(Graph::of(EachItems { count: 0 }).unwrap().is_empty());
}

#[process(mode = "sequential")]
fn each_in_concurrent(p: &mut Builder) {
    p.task(Foo::new("first"));
    p.concurrent(|p| {
        p.each(["a", "b"], |p, s| {
            let x = p.task(Bar::new(s));
            p.task(Baz::new(x));
        });
    });
    p.task(Qux::new("last"));
}

// `each` inside a concurrent block of a sequential process: the items run side by side,
// data edges still order the steps within one item, and the next step waits for all of
// them.
#[test]
fn each_inside_a_concurrent_block() {
    let g = Graph::of(EachInConcurrent {}).unwrap();
    assert_eq!(
        g.node_ids(),
        vec![
            "foo",
            "concurrent/each[0]/bar",
            "concurrent/each[0]/baz",
            "concurrent/each[1]/bar",
            "concurrent/each[1]/baz",
            "qux"
        ]
    );
    assert_eq!(deps(&g, "concurrent/each[1]/bar"), vec!["foo"]);
    assert_eq!(
        deps(&g, "concurrent/each[1]/baz"),
        vec!["foo", "concurrent/each[1]/bar"]
    );
    assert_eq!(
        deps(&g, "qux"),
        vec![
            "concurrent/each[0]/bar",
            "concurrent/each[0]/baz",
            "concurrent/each[1]/bar",
            "concurrent/each[1]/baz"
        ]
    );
}

#[process]
fn tt44(p: &mut Builder, base: u32) {
    p.transform(
        base,
        |base| base * 2,
        |p, doubled| {
            p.task(Item::new(doubled));
        },
    );
}

// TT-23 / TT-44: `transform` gives its block new arguments: the task gets exactly
// `base * 2` = 8; one step, under a `transform/` id.
#[tokio::test]
async fn tt_23_tt_44_transform_replaces_the_arguments() {
    let g = Graph::of(Tt44 { base: 4 }).unwrap();
    assert_eq!(g.node_ids(), vec!["transform/item"]);
    let report = rt().await.run(Tt44 { base: 4 }).await.unwrap();
    assert_eq!(report.result::<u32>("transform/item").unwrap(), 8);
    assert_eq!(report.task("transform/item").unwrap().description(), "");
}

#[task]
fn echo(v: serde_json::Value) -> serde_json::Value {
    v
}

#[process]
fn options(p: &mut Builder) {
    let seen = json!({
        "a": p.option::<bool>("a"),
        "b": p.option::<bool>("b"),
        "c": p.option::<String>("c"),
        "baz_with_default": p.option::<String>("baz").unwrap_or_else(|| "bar".into()),
        "baz": p.option::<String>("baz"),
        "c_as_bool": p.option::<bool>("c"),
    });
    p.concurrent(|p| {
        // Blocks see the same options (TT-14 / TT-16).
        let inner = json!({ "a": p.option::<bool>("a") });
        p.task(Echo::new(inner));
    });
    p.task(Echo::new(seen));
}

// TT-25: options given at launch are read by the builder: true, false, "quux"; a missing
// option is `None` (or the caller's default), and an option of another type is `None`.
#[tokio::test]
async fn tt_25_launch_options() {
    let launch = Launch::new(Options {})
        .option("a", true)
        .unwrap()
        .option("b", false)
        .unwrap()
        .option("c", "quux")
        .unwrap();
    let report = rt().await.run(launch).await.unwrap();
    assert_eq!(
        report.result::<serde_json::Value>("echo").unwrap(),
        json!({
            "a": true,
            "b": false,
            "c": "quux",
            "baz_with_default": "bar",
            "baz": null,
            "c_as_bool": null,
        })
    );
    assert_eq!(
        report
            .result::<serde_json::Value>("concurrent/echo")
            .unwrap(),
        json!({ "a": true })
    );
}

#[task]
fn debug_dump() {}

#[process]
fn conditional(p: &mut Builder) {
    p.task(Foo::new("always"));
    if p.option("debug").unwrap_or(false) {
        p.task(DebugDump::new());
    }
}

// Options make conditional graphs.
#[test]
fn options_make_conditional_graphs() {
    assert_eq!(Graph::of(Conditional {}).unwrap().len(), 1);
    let opts: BTreeMap<String, serde_json::Value> =
        [("debug".to_owned(), json!(true))].into_iter().collect();
    assert_eq!(
        Graph::with_options(Conditional {}, opts)
            .unwrap()
            .node_ids(),
        vec!["foo", "debug_dump"]
    );
}

#[task]
fn plain() -> String {
    "plain".into()
}

#[task]
fn with_context(ctx: &Ctx) -> String {
    ctx.task_name().to_owned()
}

#[task]
async fn asynchronous(v: String) -> String {
    v
}

#[process]
fn three_kinds(p: &mut Builder, value: String) {
    p.task(Plain::new());
    p.task(WithContext::new());
    p.task(Asynchronous::new(value));
}

// TT-33: a definition with three kinds of task (plain, with context, async) builds three
// steps, and all of them run.
#[tokio::test]
async fn tt_33_three_kinds_of_task_make_three_steps() {
    assert_eq!(
        Graph::of(ThreeKinds {
            value: "bar".into()
        })
        .unwrap()
        .len(),
        3
    );
    let report = rt()
        .await
        .run(ThreeKinds {
            value: "bar".into(),
        })
        .await
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(
        report.result::<String>("with_context").unwrap(),
        "with_context"
    );
}

#[process]
fn tt35(p: &mut Builder, value: String) {
    p.task(Foo::new(value.clone()));
    p.task(Bar::new(value.clone()));
    p.task(Baz::new(value));
}

// TT-35: the process's parameters flow to every task that is given them.
#[tokio::test]
async fn tt_35_process_parameters_reach_every_task() {
    let report = rt()
        .await
        .run(Tt35 {
            value: "bar".into(),
        })
        .await
        .unwrap();
    assert_eq!(report.result::<String>("foo").unwrap(), "foo:bar");
    assert_eq!(report.result::<String>("bar").unwrap(), "bar:bar");
    assert_eq!(report.result::<String>("baz").unwrap(), "baz:bar");
}

#[task]
fn check(x: u32) -> bool {
    x > 0
}

#[process]
fn validate(p: &mut Builder, x: u32) {
    p.task(Check::new(x));
    p.task(Item::new(x));
}

#[process(mode = "sequential")]
fn outer(p: &mut Builder) {
    p.task(Foo::new("before"));
    p.sub_process(Validate { x: 3 });
    p.sub_process(Validate { x: 0 });
    p.task(Qux::new("after"));
}

// A sub-process is embedded as one step (of a sequential process here), with its own mode
// inside (data flow); its ids get the process's name as a segment (numbered when
// repeated).
#[tokio::test]
async fn sub_process_is_one_step() {
    let g = Graph::of(Outer {}).unwrap();
    assert_eq!(
        g.node_ids(),
        vec![
            "foo",
            "validate/check",
            "validate/item",
            "validate#1/check",
            "validate#1/item",
            "qux"
        ]
    );
    assert_eq!(deps(&g, "validate/check"), vec!["foo"]);
    assert_eq!(deps(&g, "validate/item"), vec!["foo"]);
    assert_eq!(
        deps(&g, "validate#1/check"),
        vec!["validate/check", "validate/item"]
    );
    assert_eq!(deps(&g, "qux"), vec!["validate#1/check", "validate#1/item"]);
    let report = rt().await.run(Outer {}).await.unwrap();
    assert!(report.result::<bool>("validate/check").unwrap());
    assert!(!report.result::<bool>("validate#1/check").unwrap());
}

#[task]
fn migrate() {}

#[task]
fn warm_cache() {}

#[task]
fn serve() {}

#[process]
fn deploy(p: &mut Builder) {
    let m = p.task(Migrate::new());
    p.task(WarmCache::new());
    p.after(&[m.node()], |p| {
        p.task(Serve::new());
        p.task(Foo::new("also after"));
    });
    p.task(Bar::new("not after"));
}

// `after` orders the tasks added inside it after the given ones, without data.
#[test]
fn after_adds_ordering_edges_to_the_tasks_inside_only() {
    let g = Graph::of(Deploy {}).unwrap();
    assert_eq!(deps(&g, "serve"), vec!["migrate"]);
    assert_eq!(deps(&g, "foo"), vec!["migrate"]);
    assert!(deps(&g, "warm_cache").is_empty());
    assert!(deps(&g, "bar").is_empty());
}

#[task]
fn length(s: String) -> u32 {
    s.len() as u32
}

#[task]
fn sum(xs: Vec<u32>) -> u32 {
    xs.iter().sum()
}

#[process]
fn fan(p: &mut Builder, words: Vec<String>) {
    let lens = p.each(words, |p, w| p.task(Length::new(w)));
    p.task(Sum::new(lens));
}

// Handles returned from blocks fan in; the fan-in waits for exactly its inputs.
#[tokio::test]
async fn handles_from_blocks_fan_in() {
    let words = vec!["a".to_owned(), "bb".to_owned(), "ccc".to_owned()];
    let g = Graph::of(Fan {
        words: words.clone(),
    })
    .unwrap();
    assert_eq!(
        deps(&g, "sum"),
        vec!["each[0]/length", "each[1]/length", "each[2]/length"]
    );
    let report = rt().await.run(Fan { words }).await.unwrap();
    assert_eq!(report.result::<u32>("sum").unwrap(), 6);
}

/// Builds nothing.
#[process(name = "renamed", description = "A described process")]
fn meta_process(_p: &mut Builder) {}

// The process's name, description and mode come from the attribute (the mode defaults to
// data flow).
#[test]
fn process_meta() {
    let meta = <MetaProcess as Process>::META;
    assert_eq!(meta.name, "renamed");
    assert_eq!(meta.description, "A described process");
    assert_eq!(meta.mode, Mode::Dataflow);
    let g = Graph::of(MetaProcess {}).unwrap();
    assert!(g.is_empty());
    assert_eq!(g.name(), "renamed");
}

// An empty process runs and succeeds.
#[tokio::test]
async fn empty_process_succeeds() {
    let report = rt().await.run(MetaProcess {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Succeeded);
    assert!(report.tasks.is_empty());
    assert_eq!(report.process, "renamed");
}
