//! Retention of finished runs (issue 14, point 6) on the single-process stores: with
//! `RuntimeBuilder::retention`, a background sweep deletes launched runs that ended
//! longer ago than the retention, with their child runs and idempotency keys; active
//! runs and records defined in code stay; without a retention nothing is deleted.

use std::time::{Duration, Instant};

use procession::prelude::*;
use procession::{Child, ChildError, Definition, RuntimeBuilder, State};

#[task]
fn quick(n: u32) -> u32 {
    n + 1
}

#[process]
fn job(p: &mut Builder, n: u32) {
    p.task(Quick::new(n));
}

#[task]
async fn spawn_job(ctx: &Ctx) -> Result<u32, ChildError> {
    let outcome = ctx.run_child(Child::new(Job { n: 1 })).await?;
    Ok(outcome.output::<u32>().unwrap_or(0))
}

#[process]
fn parent(p: &mut Builder) {
    p.task(SpawnJob::new());
}

#[task]
async fn forever(ctx: &Ctx) -> u32 {
    ctx.cancelled().await;
    0
}

#[process]
fn endless(p: &mut Builder) {
    p.task(Forever::new());
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_mins(1);
    while !f().await {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sweeps(builder: RuntimeBuilder) {
    let rt = builder
        .retention(Duration::from_millis(150))
        .register::<Job>()
        .register::<Parent>()
        .register::<Endless>()
        .define(Definition::new("nightly", Job { n: 7 }).unwrap())
        .start()
        .await
        .unwrap();
    rt.launch_id("nightly").await.unwrap().wait().await.unwrap();
    let endless = rt
        .launch(Launch::new(Endless {}).id("endless"))
        .await
        .unwrap();
    let parent = rt.run(Launch::new(Parent {}).id("parent")).await.unwrap();
    assert_eq!(parent.result::<u32>("spawn_job").unwrap(), 2);
    let keyed = rt
        .run(Launch::new(Job { n: 1 }).idempotency_key("once"))
        .await
        .unwrap();
    let children = rt
        .list(procession::ListFilter::new().root("parent"))
        .await
        .unwrap();
    assert!(
        children.len() >= 2,
        "the parent and its child: {children:?}"
    );
    until("the finished runs swept", async || {
        rt.get("parent").await.unwrap().is_none() && rt.get(&keyed.run_id).await.unwrap().is_none()
    })
    .await;
    assert!(
        rt.list(procession::ListFilter::new().root("parent"))
            .await
            .unwrap()
            .is_empty(),
        "the child went with its root"
    );
    assert_eq!(
        rt.get("endless").await.unwrap().map(|r| r.state()),
        Some(State::Running),
        "an active run stays"
    );
    assert_eq!(
        rt.get("nightly").await.unwrap().map(|r| r.state()),
        Some(State::Done),
        "a record defined in code stays"
    );
    // The key of a swept run starts a new run.
    let again = rt
        .run(Launch::new(Job { n: 1 }).idempotency_key("once"))
        .await
        .unwrap();
    assert_ne!(again.run_id, keyed.run_id);
    endless.cancel().await.unwrap();
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_are_swept_in_memory() {
    sweeps(Runtime::in_memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_are_swept_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    sweeps(Runtime::open(dir.path().join("store"))).await;
}

/// Without a retention (the default) finished runs are kept: a run that ended stays
/// after many sweep periods of a short retention would have passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_retention_runs_are_kept() {
    let rt = Runtime::in_memory()
        .register::<Job>()
        .start()
        .await
        .unwrap();
    rt.run(Launch::new(Job { n: 1 }).id("kept")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rt.get("kept").await.unwrap().is_some());
    rt.shutdown().await.unwrap();
}
