//! Shared resources: values registered on the runtime builder and read by tasks, as
//! `Res<T>` parameters (checked before a graph runs) or with `ctx.resource::<T>()`.

// Task inputs are owned values (they are stored between tasks); some tasks are `async`
// only to run as async tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procession::prelude::*;
use procession::{Child, ChildError, Definition, Error, MissingResource, State};
use tokio::sync::Notify;

/// A stand-in for a database pool: counts the queries made through it.
#[derive(Debug, Default)]
struct Pool {
    queries: AtomicU32,
}

impl Pool {
    fn query(&self, n: u32) -> u32 {
        self.queries.fetch_add(1, Ordering::SeqCst);
        n * 10
    }
}

/// A second resource, to mix.
#[derive(Debug)]
struct Prefix(String);

#[task]
async fn load(ctx: &Ctx, n: u32, pool: Res<Pool>) -> u32 {
    let _ = ctx.attempt();
    pool.query(n)
}

/// A blocking task, with the resources before and between its inputs.
#[task]
fn label(prefix: Res<Prefix>, x: u32, pool: Res<Pool>, suffix: String) -> String {
    format!("{}{}{suffix}", prefix.0, pool.query(x))
}

#[process]
fn labelled(p: &mut Builder, n: u32) {
    let x = p.task(Load::new(n));
    p.task(Label::new(x, "!"));
}

fn runtime(pool: &Arc<Pool>) -> procession::RuntimeBuilder {
    Runtime::in_memory()
        .resource_shared(pool.clone())
        .resource(Prefix("#".into()))
        .register::<Labelled>()
}

// Async and blocking tasks read the registered resources through `Res<T>` parameters,
// in any position; every task shares the one value registered (the same `Arc`).
#[tokio::test]
async fn tasks_read_the_registered_resources() {
    // A task that takes resources but no `ctx` reads them through its context: `#[task]`
    // says it takes one, so it gets the run's (not an inert one, which has none).
    const { assert!(<Label as procession::Task>::TAKES_CTX) };
    let pool = Arc::new(Pool::default());
    let rt = runtime(&pool).start().await.unwrap();
    let report = rt.run(Labelled { n: 4 }).await.unwrap();
    // `load` queried 4 -> 40; `label` queried 40 -> 400.
    assert_eq!(report.result::<String>("label").unwrap(), "#400!");
    assert_eq!(pool.queries.load(Ordering::SeqCst), 2);
    // The functions stay callable directly, with resources made by hand.
    let own = Res::new(Pool::default());
    assert_eq!(
        label(Res::new(Prefix(">".into())), 1, own.clone(), "?".into()),
        ">10?"
    );
    assert_eq!(own.queries.load(Ordering::SeqCst), 1);
}

#[task]
async fn via_child(ctx: &Ctx) -> Result<String, ChildError> {
    let outcome = ctx.run_child(Child::new(Labelled { n: 1 })).await?;
    Ok(outcome.report.unwrap().result::<String>("label").unwrap())
}

#[process]
fn parent(p: &mut Builder) {
    p.task(ViaChild::new());
}

// Child runs read the same resources as their parents.
#[tokio::test]
async fn children_share_the_resources() {
    let pool = Arc::new(Pool::default());
    let rt = runtime(&pool).start().await.unwrap();
    let report = rt.run(Parent {}).await.unwrap();
    assert_eq!(report.result::<String>("via_child").unwrap(), "#100!");
    assert_eq!(pool.queries.load(Ordering::SeqCst), 2);
}

static UNRESOURCED_RAN: AtomicBool = AtomicBool::new(false);

#[task]
fn first() -> u32 {
    UNRESOURCED_RAN.store(true, Ordering::SeqCst);
    1
}

#[process]
fn needs_pool(p: &mut Builder) {
    let x = p.task(First::new());
    p.task(Load::new(x));
}

// A launch whose graph has a task needing a resource the runtime lacks is refused with
// an error naming the process, the task and the type; nothing is written, nothing runs.
#[tokio::test]
async fn a_launch_needing_a_missing_resource_is_refused_before_anything_runs() {
    let rt = Runtime::in_memory().start().await.unwrap();
    let err = rt
        .launch(Launch::new(NeedsPool {}).id("needs-1"))
        .await
        .unwrap_err();
    match &err {
        Error::MissingResource {
            process,
            task,
            resource,
        } => {
            assert_eq!(process, "needs_pool");
            assert_eq!(task, "load");
            assert!(resource.ends_with("::Pool"), "{resource}");
        }
        other => panic!("expected MissingResource, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("`load`") && msg.contains("needs_pool"),
        "{msg}"
    );
    assert!(msg.contains("RuntimeBuilder::resource"), "{msg}");
    assert!(rt.get("needs-1").await.unwrap().is_none());
    assert!(!UNRESOURCED_RAN.load(Ordering::SeqCst));
}

#[process(schedule = "0 3 * * *")]
fn nightly(p: &mut Builder) {
    p.task(Load::new(1));
}

// A defined (scheduled) process whose tasks need a resource that was not registered is
// an error at `start()`, not at its first fire.
#[tokio::test]
async fn start_refuses_a_definition_needing_a_missing_resource() {
    let err = Runtime::in_memory()
        .register::<Nightly>()
        .define(Definition::new("nightly", Nightly {}).unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingResource { process, task, .. } if process == "nightly" && task == "load"),
        "{err:?}"
    );
    // With the resource, the same definition starts.
    let rt = Runtime::in_memory()
        .resource(Pool::default())
        .register::<Nightly>()
        .define(Definition::new("nightly", Nightly {}).unwrap())
        .start()
        .await
        .unwrap();
    assert_eq!(
        rt.get("nightly").await.unwrap().unwrap().state(),
        State::Idle
    );
}

#[task]
async fn spawn_needy(ctx: &Ctx) -> Result<(), ChildError> {
    ctx.run_child(Child::new(NeedsPool {})).await.map(drop)
}

#[process]
fn needy_parent(p: &mut Builder) {
    p.task(SpawnNeedy::new());
}

// A child needing a missing resource is a launch error of `run_child`, carrying
// `Error::MissingResource`.
#[tokio::test]
async fn a_child_needing_a_missing_resource_is_a_launch_error() {
    let rt = Runtime::in_memory()
        .register::<NeedsPool>()
        .start()
        .await
        .unwrap();
    let report = rt.run(NeedyParent {}).await.unwrap();
    let err = report.task("spawn_needy").unwrap().error.as_ref().unwrap();
    assert!(
        err.message.contains("needs the resource"),
        "{}",
        err.message
    );
    let child_err = err.error().unwrap().downcast_ref::<ChildError>().unwrap();
    assert!(matches!(
        child_err,
        ChildError::Launch {
            source: Error::MissingResource { .. },
            ..
        }
    ));
}

/// Reads a resource only when asked to.
#[task]
fn maybe_prefix(ctx: &Ctx, want: bool) -> Result<String, MissingResource> {
    if want {
        Ok(ctx.resource::<Prefix>()?.0.clone())
    } else {
        Ok(String::new())
    }
}

#[process]
fn dynamic(p: &mut Builder, want: bool) {
    p.task(MaybePrefix::new(want));
}

// `ctx.resource::<T>()` reads a resource decided at run time; a missing one is a typed
// error of that task only.
#[tokio::test]
async fn ctx_resource_reads_by_type_at_run_time() {
    let with = Runtime::in_memory()
        .resource(Prefix("p".into()))
        .start()
        .await
        .unwrap();
    let report = with.run(Dynamic { want: true }).await.unwrap();
    assert_eq!(report.result::<String>("maybe_prefix").unwrap(), "p");

    let without = Runtime::in_memory().start().await.unwrap();
    assert!(without
        .run(Dynamic { want: false })
        .await
        .unwrap()
        .is_success());
    let report = without.run(Dynamic { want: true }).await.unwrap();
    let err = report.task("maybe_prefix").unwrap().error.as_ref().unwrap();
    let missing = err
        .error()
        .unwrap()
        .downcast_ref::<MissingResource>()
        .unwrap();
    assert!(missing.resource.ends_with("::Prefix"));
}

// ------------------------------------------------------------- resumed runs

static HOLD: AtomicBool = AtomicBool::new(true);
static HELD: Notify = Notify::const_new();
static SEEN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[task]
async fn held(pool: Res<Pool>) -> u32 {
    if HOLD.load(Ordering::SeqCst) {
        HELD.notify_one();
        std::future::pending::<()>().await;
    }
    let v = pool.query(7);
    SEEN.lock().unwrap().push(v);
    v
}

#[process]
fn holding(p: &mut Builder) {
    p.task(Held::new());
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let d = std::env::temp_dir().join(format!("procession-{name}-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn end_of(rt: &Runtime, id: &str) -> procession::ProcessRecord {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let rec = rt.get(id).await.unwrap().unwrap();
            if rec.state().is_end() {
                break rec;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the resumed run ends")
}

// A resumed run reads the resources of the runtime that resumes it; a runtime without
// them does not resume it and says why on the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_runs_read_the_resources_of_the_new_runtime() {
    let dir = temp_dir("resources-resume");
    let open = || {
        Runtime::open(&dir)
            .register::<Holding>()
            .cancel_grace(Duration::from_millis(30))
    };
    let suspend_one = |id: &'static str| {
        let rt_builder = open().resource(Pool::default());
        async move {
            let rt = rt_builder.start().await.unwrap();
            rt.launch(Launch::new(Holding {}).id(id)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(20), HELD.notified())
                .await
                .expect("the task started");
            rt.shutdown().await.unwrap();
        }
    };
    suspend_one("held-1").await;
    HOLD.store(false, Ordering::SeqCst);
    // Resumed by a runtime with a pool of its own: the task reads that one.
    let pool = Arc::new(Pool::default());
    let rt = open().resource_shared(pool.clone()).start().await.unwrap();
    assert_eq!(end_of(&rt, "held-1").await.state(), State::Done);
    assert_eq!(pool.queries.load(Ordering::SeqCst), 1);
    assert_eq!(*SEEN.lock().unwrap(), vec![70]);
    rt.shutdown().await.unwrap();
    drop(rt);

    HOLD.store(true, Ordering::SeqCst);
    suspend_one("held-2").await;
    // A runtime without the pool: the run is not resumed, and the record says why.
    let rt = open().start().await.unwrap();
    let rec = end_of(&rt, "held-2").await;
    assert_eq!(rec.state(), State::Failed);
    let error = rec.status.error.unwrap();
    assert!(error.contains("needs the resource"), "{error}");
    assert!(error.contains("not resumed"), "{error}");
    rt.shutdown().await.unwrap();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
