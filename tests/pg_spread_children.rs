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

// ------------------------------------------------- a worker killed while its child runs

/// Appends `(run, task, attempt, worker)` to the `effects` table (one row per task and
/// attempt: a second one fails the task, and the test).
async fn effect(url: String, run: String, task: i32, attempt: u32) {
    let worker = std::env::var("PGSC_NAME").unwrap_or_else(|_| "test".into());
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.execute(
            "INSERT INTO effects (run, task, attempt, worker) VALUES ($1, $2, $3, $4)",
            &[&run, &task, &i32::try_from(attempt).unwrap(), &worker],
        )
        .unwrap();
    })
    .await
    .unwrap();
}

/// Records its attempt, then waits for the file `gate` to exist; returns 42.
#[task]
async fn gated_kid(ctx: &Ctx, url: String, gate: String) -> u32 {
    effect(url, "killkid".into(), 1, ctx.attempt()).await;
    while !std::path::Path::new(&gate).exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    42
}

#[process]
fn gated(p: &mut Builder, url: String, gate: String) {
    p.task(GatedKid::new(url, gate));
}

/// Records its attempt, then runs its `gated` child (id `killkid-kid`) and returns its
/// result.
#[task]
async fn gated_parent(ctx: &Ctx, url: String, gate: String) -> Result<u32, ChildError> {
    effect(url.clone(), "killkid".into(), 0, ctx.attempt()).await;
    let out = ctx
        .run_child(Child::new(Gated { url, gate }).id("killkid-kid"))
        .await?;
    Ok(out.result::<u32>("gated_kid").expect("the child's result"))
}

#[process]
fn kill_parent(p: &mut Builder, url: String, gate: String) {
    p.task(GatedParent::new(url, gate));
}

/// Lease of the kill test's runtimes.
const KILL_LEASE: Duration = Duration::from_secs(2);

fn kill_runtime(url: &str) -> procession::RuntimeBuilder {
    Runtime::connect(url.to_owned())
        .lease(KILL_LEASE)
        .spread_tasks(true)
        .register::<Gated>()
        .register::<KillParent>()
}

/// The worker role of the kill test: runs only when the test binary is re-executed with
/// `PGSC_URL` set. Launches `kill_parent` as run `killkid` (gate file `PGSC_GATE`),
/// prints `ready`, and runs until it is killed.
#[test]
fn pg_spread_children_worker_entry() {
    let Ok(url) = std::env::var("PGSC_URL") else {
        return;
    };
    let gate = std::env::var("PGSC_GATE").unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let rt = kill_runtime(&url)
                .start()
                .await
                .expect("the database opens");
            drop(
                rt.launch(
                    Launch::new(KillParent {
                        url: url.clone(),
                        gate,
                    })
                    .id("killkid"),
                )
                .await
                .expect("launch"),
            );
            println!("ready");
            std::future::pending::<()>().await;
        });
}

// A worker is killed (SIGKILL) while its spread task waits for the child it launched
// (coordinated by the same worker). Another worker takes the parent run and the child
// run over, runs the parent task again, which finds its child by id instead of
// launching a second one, and the run ends with the child's result.
#[test]
fn a_killed_workers_spread_task_finds_its_child_again_elsewhere() {
    if std::env::var("PGSC_URL").is_ok() {
        return;
    }
    let Some(url) = pg::database_with("spread_children_kill", &["effects"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let mut doomed = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "pg_spread_children_worker_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PGSC_URL", &url)
        .env("PGSC_NAME", "doomed")
        .env("PGSC_GATE", &gate)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the worker starts");
    wait_until(
        "the doomed worker to start the child's task",
        Duration::from_mins(1),
        || pg::effects_of(&url, "killkid").iter().any(|e| e.0 == 1),
    );
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = tokio.block_on(kill_runtime(&url).start()).unwrap();
    doomed.kill().unwrap();
    let _ = doomed.wait();
    std::fs::write(&gate, b"open").unwrap();
    wait_until(
        "the parent run to end",
        Duration::from_mins(2),
        || matches!(state_of(&rt, &tokio, "killkid"), Some(s) if !s.is_active()),
    );
    let report = tokio.block_on(rt.report("killkid")).unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.result::<u32>("gated_parent").unwrap(), 42);
    // Each task ran once on the killed worker and once here; one child record.
    let fx = pg::effects_of(&url, "killkid");
    let workers = |task: i32| -> Vec<&str> {
        fx.iter()
            .filter(|e| e.0 == task)
            .map(|e| e.2.as_str())
            .collect()
    };
    assert_eq!(workers(0), ["doomed", "test"], "{fx:?}");
    assert_eq!(workers(1), ["doomed", "test"], "{fx:?}");
    let kids = pg::rows(
        &url,
        "SELECT id FROM procession_records WHERE id LIKE 'killkid-%'",
    );
    assert_eq!(kids.len(), 1, "one child record");
    let kid = tokio.block_on(rt.get("killkid-kid")).unwrap().unwrap();
    assert_eq!(kid.state(), State::Done);
    assert_eq!(kid.parent.as_deref(), Some("killkid"));
    assert_eq!(kid.runs, 1, "the child was not launched again: {kid:?}");
    tokio.block_on(rt.shutdown()).unwrap();
}

// A run cancelled as it starts: its task's offer may be written after the cancel marked
// the run's rows. Before, such a row was claimed and ran with no cancel to come, and the
// run failed when the cancellation grace ran out; now its offer is marked cancelled too.
#[test]
fn a_run_cancelled_as_its_tasks_are_offered_ends_cancelled() {
    if std::env::var("PGSC_URL").is_ok() {
        return;
    }
    let Some(url) = pg::database("spread_cancel_at_start") else {
        return;
    };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = tokio
        .block_on(
            Runtime::connect(url.clone())
                .lease(Duration::from_secs(3))
                .cancel_grace(Duration::from_secs(2))
                .spread_tasks(true)
                .register::<Waiter>()
                .start(),
        )
        .unwrap();
    let statuses: Vec<procession::RunStatus> = tokio.block_on(async {
        let mut handles = Vec::new();
        for i in 0..20 {
            let id = format!("early-{i}");
            let h = rt.launch(Launch::new(Waiter {}).id(&id)).await.unwrap();
            // Now, or once its task may have been offered.
            if i % 2 == 1 {
                tokio::task::yield_now().await;
            }
            rt.cancel(&id).await.unwrap();
            handles.push(h);
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.wait().await.unwrap().status);
        }
        out
    });
    assert!(
        statuses
            .iter()
            .all(|s| *s == procession::RunStatus::Cancelled),
        "{statuses:?}"
    );
    tokio.block_on(rt.shutdown()).unwrap();
}
