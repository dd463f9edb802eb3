//! Child processes started by spread tasks (issue 14: "the same `#[process]` code runs
//! unchanged on sled, memory and PostgreSQL"; `RuntimeBuilder::spread_tasks`).
//!
//! A spread task runs on whichever worker claimed it; its children are launched by that
//! worker's runtime into the shared store, as a local task's are by its own runtime: same
//! ids (derived from the parent run, the node and the child's process), same records
//! (parent, root, depth), found again when the task runs again, cancelled with the parent,
//! and a cancelled child asks the parent's run to stop.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use procession::prelude::*;
use procession::{Child, ChildError, GroupError, GroupOptions, State};

mod pg;
use pg::wait_until;

// ------------------------------------------------------------------ the processes

/// How often `double` ran, per test (index = `slot`).
static DOUBLED: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];

#[task]
fn double(n: u32, slot: u32) -> u32 {
    DOUBLED[slot as usize].fetch_add(1, Ordering::SeqCst);
    n * 2
}

#[process]
fn kid(p: &mut Builder, n: u32, slot: u32) {
    p.task(Double::new(n, slot));
}

/// Two children one after the other, then three side by side: the sum of their results.
#[task]
async fn spawn_kids(ctx: &Ctx, slot: u32) -> Result<u32, GroupError> {
    let mut sum = 0;
    for n in [1, 2] {
        let out = ctx
            .run_child(Child::new(Kid { n, slot }).id(format!("{}-seq-{n}", ctx.process_id())))
            .await
            .map_err(GroupError::from)?;
        sum += out.result::<u32>("double").expect("the child's result");
    }
    let mut group = ctx.parallel_group(GroupOptions::new().max_concurrency(2));
    for n in [10, 20, 30] {
        group
            .spawn(Child::new(Kid { n, slot }).id(format!("{}-par-{n}", ctx.process_id())))
            .await?;
    }
    for r in group.finish().await? {
        sum += r.result::<u32>("double").expect("the child's result");
    }
    Ok(sum)
}

#[process]
fn parent(p: &mut Builder, slot: u32) {
    p.task(SpawnKids::new(slot));
}

/// Attempt 1 starts its child and then fails (retryably); attempt 2 finds the child
/// done and takes its result without running it again.
#[task(retries = 1, backoff = "none")]
async fn child_then_fail(ctx: &Ctx, slot: u32) -> Result<u32, ChildError> {
    let out = ctx.run_child(Child::new(Kid { n: 21, slot })).await?;
    if ctx.attempt() == 1 {
        return Err(ChildError::NoRuntime);
    }
    Ok(out.result::<u32>("double").expect("the child's result"))
}

#[process]
fn retrying(p: &mut Builder, slot: u32) {
    p.task(ChildThenFail::new(slot));
}

#[task]
async fn wait_for_cancel(ctx: &Ctx) {
    while ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[process]
fn waiter(p: &mut Builder) {
    p.task(WaitForCancel::new());
}

/// Runs one `waiter` child (id `<run>-waiter`) and returns its end state.
#[task]
async fn await_waiter(ctx: &Ctx) -> Result<String, ChildError> {
    let out = ctx
        .run_child(Child::new(Waiter {}).id(format!("{}-waiter", ctx.process_id())))
        .await?;
    Ok(format!("{:?}", out.state))
}

#[process]
fn waiting_parent(p: &mut Builder) {
    p.task(AwaitWaiter::new());
}

// ------------------------------------------------------------------ helpers

/// A runtime on `url` that spreads its tasks (claims them itself through the task queue).
async fn spread(url: &str) -> Runtime {
    Runtime::connect(url.to_owned())
        .lease(Duration::from_secs(3))
        .spread_tasks(true)
        .register::<Kid>()
        .register::<Parent>()
        .register::<Retrying>()
        .register::<Waiter>()
        .register::<WaitingParent>()
        .start()
        .await
        .unwrap()
}

fn state_of(rt: &Runtime, tokio: &tokio::runtime::Runtime, id: &str) -> Option<State> {
    tokio.block_on(rt.get(id)).unwrap().map(|r| r.state())
}

// ------------------------------------------------------------------ tests

// Before: `ctx.run_child` in a spread task failed with "no runtime" (the worker gave its
// spread tasks none). Now its children run, with the records a local task's children get.
#[test]
fn a_spread_task_runs_children_as_a_local_one() {
    let Some(url) = pg::database("spread_children") else {
        return;
    };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = tokio.block_on(spread(&url));
    let report = tokio
        .block_on(rt.run(Launch::new(Parent { slot: 0 }).id("fam")))
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(
        report.result::<u32>("spawn_kids").unwrap(),
        2 * (1 + 2 + 10 + 20 + 30)
    );
    assert_eq!(DOUBLED[0].load(Ordering::SeqCst), 5);
    assert!(rt.task_stats().finished >= 1, "{:?}", rt.task_stats());
    for id in [
        "fam-seq-1",
        "fam-seq-2",
        "fam-par-10",
        "fam-par-20",
        "fam-par-30",
    ] {
        let rec = tokio.block_on(rt.get(id)).unwrap().expect(id);
        assert_eq!(rec.state(), State::Done, "{id}");
        assert_eq!(rec.parent.as_deref(), Some("fam"), "{id}");
        assert_eq!(rec.root, "fam", "{id}");
        assert_eq!(rec.depth, 1, "{id}");
    }
    tokio.block_on(rt.shutdown()).unwrap();
}

// A spread task that runs again (here a retry) finds its child by its default id: the
// child that ended done is not run again.
#[test]
fn a_spread_task_that_runs_again_finds_its_children() {
    let Some(url) = pg::database("spread_children_again") else {
        return;
    };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = tokio.block_on(spread(&url));
    let report = tokio
        .block_on(rt.run(Launch::new(Retrying { slot: 1 }).id("again")))
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.result::<u32>("child_then_fail").unwrap(), 42);
    assert_eq!(report.tasks[0].attempts, 2);
    assert_eq!(DOUBLED[1].load(Ordering::SeqCst), 1, "the child ran once");
    tokio.block_on(rt.shutdown()).unwrap();
}

// Cancelling the parent run reaches the spread task, which cancels its child.
#[test]
fn cancelling_the_parent_cancels_the_child_of_a_spread_task() {
    let Some(url) = pg::database("spread_children_cancel_down") else {
        return;
    };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = tokio.block_on(spread(&url));
    let h = tokio
        .block_on(rt.launch(Launch::new(WaitingParent {}).id("down")))
        .unwrap();
    wait_until("the child to run", Duration::from_mins(1), || {
        state_of(&rt, &tokio, "down-waiter") == Some(State::Running)
    });
    tokio.block_on(rt.cancel("down")).unwrap();
    let report = tokio.block_on(h.wait()).unwrap();
    assert_eq!(
        report.status,
        procession::RunStatus::Cancelled,
        "{report:?}"
    );
    wait_until("the child to end cancelled", Duration::from_mins(1), || {
        state_of(&rt, &tokio, "down-waiter") == Some(State::Cancelled)
    });
    tokio.block_on(rt.shutdown()).unwrap();
}

// A cancelled child asks its parent's run to stop (without `survive_cancel`), as on a
// local runtime: the spread task's own cancel reaches the run, not only its worker.
#[test]
fn a_cancelled_child_stops_the_run_of_its_spread_parent() {
    let Some(url) = pg::database("spread_children_cancel_up") else {
        return;
    };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = tokio.block_on(spread(&url));
    let h = tokio
        .block_on(rt.launch(Launch::new(WaitingParent {}).id("up")))
        .unwrap();
    wait_until("the child to run", Duration::from_mins(1), || {
        state_of(&rt, &tokio, "up-waiter") == Some(State::Running)
    });
    tokio.block_on(rt.cancel("up-waiter")).unwrap();
    let report = tokio.block_on(h.wait()).unwrap();
    assert_eq!(
        report.status,
        procession::RunStatus::Cancelled,
        "{report:?}"
    );
    tokio.block_on(rt.shutdown()).unwrap();
}
