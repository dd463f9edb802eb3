//! Several workers on one PostgreSQL database (issue 14, run level): leases renewed by
//! heartbeats, takeover of a dead or paused worker's runs, fencing of a zombie, cancels
//! and schedules across workers.
//!
//! The in-process tests run two runtimes on one database in this process. The
//! multi-process tests re-execute this test binary as worker processes
//! (`pg_worker_entry`, which returns at once unless `PGW_URL` is set): they are killed
//! with SIGKILL, stopped with SIGSTOP and continued with SIGCONT. Tasks write one row per
//! attempt into a table `effects(run, task, attempt, worker)` with a unique key, so the
//! tests see what ran where.
//!
//! The server is a throw-away cluster started by `pg/mod.rs` (or `PROCESSION_PG_URL`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procession::prelude::*;
use procession::{Definition, Schedule, State};

mod pg;
use pg::{effects_of as effects, rows, run_state, sql, wait_until, Warnings};

// ------------------------------------------------------------------ the work

/// The worker's name (`PGW_NAME` in a worker process).
fn me() -> String {
    std::env::var("PGW_NAME").unwrap_or_else(|_| "test".into())
}

/// Records one attempt of a task in `effects` (blocking client, off the async threads).
async fn effect(url: String, run: String, task: u32, attempt: u32) {
    let worker = me();
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("effects connection");
        c.execute(
            "INSERT INTO effects (run, task, attempt, worker) VALUES ($1, $2, $3, $4)",
            &[
                &run,
                &i32::try_from(task).unwrap(),
                &i32::try_from(attempt).unwrap(),
                &worker,
            ],
        )
        .expect("one effect per task and attempt");
    })
    .await
    .unwrap();
}

/// One step of a chain: records its attempt, works `ms`, returns the next value and who
/// computed it.
#[task]
async fn step(
    ctx: &Ctx,
    url: String,
    run: String,
    i: u32,
    ms: u64,
    prev: (u64, String),
) -> (u64, String) {
    effect(url, run, i, ctx.attempt()).await;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    (prev.0 * 3 + u64::from(i), me())
}

#[task]
#[allow(clippy::needless_pass_by_value)] // task inputs are owned: they are stored between tasks
fn seed(n: u64) -> (u64, String) {
    (n, me())
}

/// `steps` steps after a seed; step `slow` works `slow_ms`, the others `ms`.
#[process]
#[allow(clippy::too_many_arguments)]
fn chain(
    p: &mut Builder,
    url: String,
    run: String,
    n: u64,
    steps: u32,
    ms: u64,
    slow: u32,
    slow_ms: u64,
) {
    let mut prev = p.task(Seed::new(n));
    for i in 1..=steps {
        let d = if i == slow { slow_ms } else { ms };
        prev = p.task(Step::new(url.clone(), run.clone(), i, d, prev));
    }
}

fn chain_of(url: &str, run: &str, n: u64, steps: u32, ms: u64, slow: u32, slow_ms: u64) -> Chain {
    Chain {
        url: url.into(),
        run: run.into(),
        n,
        steps,
        ms,
        slow,
        slow_ms,
    }
}

fn expected(n: u64, steps: u32) -> u64 {
    (1..=steps).fold(n, |v, i| v * 3 + u64::from(i))
}

fn database(test: &str) -> Option<String> {
    pg::database_with(test, &["effects"])
}

// ------------------------------------------------------------ worker processes

/// The worker role: runs only when the test binary is re-executed with `PGW_URL` set.
/// Connects with lease `PGW_LEASE_MS`, launches the runs named in `PGW_LAUNCH`
/// (`id:n:steps:ms:slow:slow_ms`, comma separated), prints `ready <worker id>` and works
/// until it is killed (or, with `PGW_EXIT_WHEN_IDLE`, until no run is active).
#[test]
fn pg_worker_entry() {
    use tracing_subscriber::layer::SubscriberExt;
    let Ok(url) = std::env::var("PGW_URL") else {
        return;
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Warnings));
    let lease: u64 = std::env::var("PGW_LEASE_MS").unwrap().parse().unwrap();
    let launch = std::env::var("PGW_LAUNCH").unwrap_or_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let rt = Runtime::connect(url.clone())
                .lease(Duration::from_millis(lease))
                .register::<Chain>()
                .start()
                .await
                .expect("the database opens");
            for spec in launch.split(',').filter(|s| !s.is_empty()) {
                let f: Vec<&str> = spec.split(':').collect();
                let (id, n, steps) = (f[0], f[1].parse().unwrap(), f[2].parse().unwrap());
                let (ms, slow, slow_ms) = (
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                    f[5].parse().unwrap(),
                );
                drop(
                    rt.launch(Launch::new(chain_of(&url, id, n, steps, ms, slow, slow_ms)).id(id))
                        .await
                        .expect("launch"),
                );
            }
            println!("ready {}", rt.worker_id());
            loop {
                tokio::time::sleep(Duration::from_hours(1)).await;
            }
        });
}

/// A worker process: killed (SIGKILL) when dropped; its stdout lines are collected.
struct Worker {
    child: std::process::Child,
    name: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    fn start(url: &str, name: &str, lease_ms: u64, launch: &str) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "pg_worker_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PGW_URL", url)
            .env("PGW_NAME", name)
            .env("PGW_LEASE_MS", lease_ms.to_string())
            .env("PGW_LAUNCH", launch)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("worker starts");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        for line in lines.by_ref() {
            let line = line.unwrap_or_default();
            if line.contains("ready worker-") {
                break;
            }
        }
        Worker {
            child,
            name: name.to_owned(),
            lines: pg::collect_lines(lines, None),
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.child.id());
    }

    fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    fn printed(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}

/// A runtime in this process that registers nothing: it takes no run over, and reads
/// reports and records.
async fn observer(url: &str) -> Runtime {
    Runtime::connect(url.to_owned())
        .lease(Duration::from_secs(2))
        .start()
        .await
        .unwrap()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// Issue 14 phase 2 (a): a worker killed with SIGKILL mid-task, five times: each time a
// standby worker takes its run over within about two lease times (printed, bounded
// generously), finished tasks are not run again, and every run ends with the right
// value.
#[test]
fn a_killed_workers_runs_are_taken_over_again_and_again() {
    if std::env::var("PGW_URL").is_ok() {
        return;
    }
    let Some(url) = database("takeover") else {
        return;
    };
    let lease = Duration::from_secs(2);
    let lease_ms = 2000;
    let standby = Worker::start(&url, "standby", lease_ms, "");
    let mut times = Vec::new();
    for round in 0..5 {
        let id = format!("kill-{round}");
        // step 2 works 4 s: it is killed in the middle of it.
        let mut doomed = Worker::start(
            &url,
            &format!("doomed-{round}"),
            lease_ms,
            &format!("{id}:{round}:4:100:2:4000"),
        );
        wait_until("step 2 to start", Duration::from_mins(1), || {
            effects(&url, &id).iter().any(|e| e.0 == 2)
        });
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        doomed.kill9();
        wait_until("the standby to take over", Duration::from_mins(1), || {
            effects(&url, &id).iter().any(|e| e.2 == standby.name)
        });
        let took = killed.elapsed();
        times.push(took);
        wait_until("the run to end", Duration::from_mins(1), || {
            run_state(&url, &id) == Some(State::Done)
        });
        let fx = effects(&url, &id);
        // Step 1 had finished before the kill: it ran once. Step 2 ran twice (killed,
        // then taken over), the steps after it once, on the standby.
        let count = |t: i32| fx.iter().filter(|e| e.0 == t).count();
        assert_eq!(count(1), 1, "{fx:?}");
        assert_eq!(count(2), 2, "{fx:?}");
        assert_eq!((count(3), count(4)), (1, 1), "{fx:?}");
        assert!(
            fx.iter().filter(|e| e.0 >= 3).all(|e| e.2 == standby.name),
            "{fx:?}"
        );
        println!("round {round}: taken over {took:?} after the kill");
    }
    let (med, max) = (median(&mut times.clone()), *times.iter().max().unwrap());
    println!(
        "takeover after kill -9 (lease {lease:?}, heartbeat every {:?}, poll every {:?}): median {med:?}, max {max:?}",
        lease / 3,
        lease / 2
    );
    // Two lease times is the goal (printed above); the bound allows for a loaded machine.
    assert!(max < lease * 10, "takeover took {max:?}");
    let values: Vec<u64> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let rt = observer(&url).await;
        let mut out = Vec::new();
        for round in 0..5u64 {
            let r = rt.report(&format!("kill-{round}")).await.unwrap();
            out.push(
                r.tasks
                    .last()
                    .unwrap()
                    .result_as::<(u64, String)>()
                    .unwrap()
                    .0,
            );
        }
        rt.shutdown().await.unwrap();
        out
    });
    let want: Vec<u64> = (0..5).map(|n| expected(n, 4)).collect();
    assert_eq!(values, want);
}

// Issue 14 phase 2 (b): a worker stopped with SIGSTOP past its lease; the standby takes
// its run over; continued with SIGCONT, its heartbeat is refused and it stops the run at
// once (a warning says so; or it stops the run by itself first, as its clock says that
// no heartbeat succeeded for nearly its lease time), it writes no later step, and the run's stored results are
// the standby's.
#[test]
fn a_paused_worker_is_fenced_out_when_it_wakes_up() {
    if std::env::var("PGW_URL").is_ok() {
        return;
    }
    let Some(url) = database("zombie") else {
        return;
    };
    let lease_ms = 2000;
    let _standby = Worker::start(&url, "standby", lease_ms, "");
    // Step 2 works 8 s: the zombie wakes up in the middle of it.
    let zombie = Worker::start(&url, "zombie", lease_ms, "z:5:3:100:2:8000");
    wait_until("step 2 to start", Duration::from_mins(1), || {
        effects(&url, "z").iter().any(|e| e.0 == 2)
    });
    zombie.signal("-STOP");
    wait_until("the standby to take over", Duration::from_mins(1), || {
        effects(&url, "z").iter().any(|e| e.2 == "standby")
    });
    zombie.signal("-CONT");
    wait_until(
        "the zombie to see its lease taken",
        Duration::from_secs(30),
        // Refused by its first heartbeat, or stopped by itself first (no heartbeat
        // succeeded for nearly its lease time, by its own clock).
        || {
            zombie.printed("lease was taken by another worker")
                || zombie.printed("lease may have expired")
        },
    );
    wait_until("the run to end", Duration::from_mins(1), || {
        run_state(&url, "z") == Some(State::Done)
    });
    for l in zombie
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("WARN"))
    {
        println!("zombie: {l}");
    }
    let fx = effects(&url, "z");
    assert!(
        fx.iter().filter(|e| e.0 > 2).all(|e| e.2 == "standby"),
        "the zombie ran a step after its lease was taken: {fx:?}"
    );
    let report = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let rt = observer(&url).await;
        let r = rt.report("z").await.unwrap();
        rt.shutdown().await.unwrap();
        r
    });
    let results: Vec<(u64, String)> = report
        .tasks
        .iter()
        .map(|t| t.result_as::<(u64, String)>().unwrap())
        .collect();
    // The seed and step 1 ended before the pause (the zombie's, kept); every later
    // result is the standby's.
    assert_eq!(results.last().unwrap().0, expected(5, 3));
    assert!(
        results[2..].iter().all(|(_, by)| by == "standby"),
        "{results:?}"
    );
    assert!(
        results[..2].iter().all(|(_, by)| by == "zombie"),
        "{results:?}"
    );
}

// A worker paused between two statements of a transaction (here inside a record update
// whose closure waits, as a worker stopped by SIGSTOP at that moment would) holds its
// locks only until the server ends its session, idle in a transaction for 10 s: another
// worker then takes its run over, and the paused worker's update, once it wakes up, runs
// again on a new connection. Before, the run's record stayed locked while the worker was
// paused and every takeover skipped it: a worker stopped in the middle of a write kept
// its runs from the standby until it woke up (`a_paused_worker_is_fenced_out_when_it_
// wakes_up` once gave up waiting for the takeover after a minute).
#[test]
fn a_worker_paused_inside_a_transaction_does_not_keep_its_run_from_a_takeover() {
    use procession::store::{PgStore, Store, Update};
    if std::env::var("PGW_URL").is_ok() {
        return;
    }
    let Some(url) = database("paused_tx") else {
        return;
    };
    let store = PgStore::connect(&url).unwrap();
    let mut rec =
        procession::ProcessRecord::new_root("p", "chain", "chain", "", serde_json::json!({}));
    rec.status.state = State::Running;
    store
        .update("p", &mut |_| Update::Put(Box::new(rec.clone())))
        .unwrap();
    let (inside_tx, inside) = std::sync::mpsc::channel::<()>();
    let (wake, woken) = std::sync::mpsc::channel::<()>();
    let u = url.clone();
    let paused = std::thread::spawn(move || {
        let store = PgStore::connect(&u).unwrap();
        let mut calls = 0;
        let out = store.update("p", &mut |_| {
            calls += 1;
            if calls == 1 {
                let _ = inside_tx.send(());
                let _ = woken.recv_timeout(Duration::from_mins(1));
            }
            Update::Keep
        });
        (out, calls)
    });
    inside.recv().unwrap();
    let paused_at = Instant::now();
    let taken = loop {
        let taken = store
            .claim_expired("standby", &["chain"], 60_000, 10)
            .unwrap();
        if !taken.is_empty() {
            break taken;
        }
        assert!(
            paused_at.elapsed() < Duration::from_secs(45),
            "the paused worker's run was never taken over"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = paused_at.elapsed();
    wake.send(()).unwrap();
    let (out, calls) = paused.join().unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].run.as_str(), taken[0].owner.as_str()),
        ("p", "standby")
    );
    assert!(
        took >= Duration::from_secs(9),
        "taken over while the record was locked: {took:?}"
    );
    assert!(out.is_ok(), "the paused update, run again: {out:?}");
    assert_eq!(calls, 2, "run again on a new connection");
}

// Issue 14 phase 2 (c): 30 runs launched on 3 worker processes, one of them killed
// mid-way: all end with the values the same process gives on sled, no task whose end
// was written before the kill ran again, and only tasks of the killed worker ran twice.
#[test]
fn thirty_runs_on_three_workers_give_the_sled_results() {
    if std::env::var("PGW_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread") else {
        return;
    };
    let lease_ms = 2000;
    let specs = |w: u64| -> String {
        (0..10)
            .map(|k| format!("s-{w}-{k}:{}:3:150:0:0", w * 10 + k))
            .collect::<Vec<_>>()
            .join(",")
    };
    let _a = Worker::start(&url, "w0", lease_ms, &specs(0));
    let _b = Worker::start(&url, "w1", lease_ms, &specs(1));
    let mut c = Worker::start(&url, "w2", lease_ms, &specs(2));
    // w2 dies once some of its runs have started tasks.
    wait_until("w2 to work", Duration::from_mins(1), || {
        !rows(
            &url,
            "SELECT 1 FROM effects WHERE worker = 'w2' AND task = 2",
        )
        .is_empty()
    });
    c.kill9();
    let ids: Vec<String> = (0..3)
        .flat_map(|w| (0..10).map(move |k| format!("s-{w}-{k}")))
        .collect();
    // What had finished when w2 died (its end written: a task ended but not yet
    // written may run again, at least once).
    let finished: Vec<(String, usize)> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let rt = observer(&url).await;
        let mut out = Vec::new();
        for id in ids.iter().filter(|id| id.starts_with("s-2-")) {
            let r = rt.report(id).await.unwrap();
            for (i, t) in r.tasks.iter().enumerate() {
                if t.status == procession::TaskStatus::Success {
                    out.push((id.clone(), i));
                }
            }
        }
        rt.shutdown().await.unwrap();
        out
    });
    wait_until("the 30 runs to end", Duration::from_mins(3), || {
        ids.iter()
            .all(|id| run_state(&url, id) == Some(State::Done))
    });
    let (on_pg, on_sled) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let rt = observer(&url).await;
        let mut on_pg = Vec::new();
        for id in &ids {
            let r = rt.report(id).await.unwrap();
            on_pg.push(
                r.tasks
                    .iter()
                    .map(|t| (t.id.to_string(), t.result_as::<(u64, String)>().unwrap().0))
                    .collect::<Vec<_>>(),
            );
        }
        rt.shutdown().await.unwrap();
        let sled = Runtime::temporary()
            .register::<Chain>()
            .start()
            .await
            .unwrap();
        let mut on_sled = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let w = i as u64 / 10;
            let k = i as u64 % 10;
            let r = sled
                .run(Launch::new(chain_of(
                    &url,
                    &format!("sled-{id}"),
                    w * 10 + k,
                    3,
                    1,
                    0,
                    0,
                )))
                .await
                .unwrap();
            on_sled.push(
                r.tasks
                    .iter()
                    .map(|t| (t.id.to_string(), t.result_as::<(u64, String)>().unwrap().0))
                    .collect::<Vec<_>>(),
            );
        }
        sled.shutdown().await.unwrap();
        (on_pg, on_sled)
    });
    assert_eq!(on_pg, on_sled);
    let mut reruns = 0;
    for id in &ids {
        let fx = effects(&url, id);
        for t in 1..=3 {
            let n = fx.iter().filter(|e| e.0 == t).count();
            assert!((1..=2).contains(&n), "{id}: {fx:?}");
            if n == 2 {
                reruns += 1;
                // Only a task the killed worker was running runs again.
                assert_eq!(
                    fx.iter().find(|e| e.0 == t).unwrap().2,
                    "w2",
                    "{id}: {fx:?}"
                );
            }
        }
        for (_, t) in finished.iter().filter(|(r, t)| r == id && *t > 0) {
            let t = i32::try_from(*t).unwrap();
            assert_eq!(
                fx.iter().filter(|e| e.0 == t).count(),
                1,
                "{id}: task {t} had finished before the kill and ran again: {fx:?}"
            );
        }
    }
    let by: Vec<postgres::Row> = rows(
        &url,
        "SELECT worker, count(*) FROM effects GROUP BY worker ORDER BY worker",
    );
    let spread: Vec<(String, i64)> = by.iter().map(|r| (r.get(0), r.get(1))).collect();
    println!("effects per worker: {spread:?}; tasks run again after the kill: {reruns}");
}

// ------------------------------------------------------- two runtimes, one process

static GATE: AtomicBool = AtomicBool::new(false);
static TICKS: AtomicU32 = AtomicU32::new(0);

#[task]
async fn gated(ctx: &Ctx) -> u32 {
    while !GATE.load(Ordering::Acquire) && ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    7
}

#[process]
fn held(p: &mut Builder) {
    p.task(Gated::new());
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

#[task]
fn tick() -> u32 {
    TICKS.fetch_add(1, Ordering::AcqRel)
}

#[process]
fn ticker(p: &mut Builder) {
    p.task(Tick::new());
}

// Issue 14 phase 2 items 1-3: two runtimes open one database; the second leaves alone
// the run the first holds (its lease is renewed by heartbeats past several lease
// times), both are listed as workers, and the run ends on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_leaves_a_live_workers_run_alone() {
    let Some(url) = database("live") else {
        return;
    };
    let lease = Duration::from_secs(1);
    let a = Runtime::connect(url.clone())
        .lease(lease)
        .register::<Held>()
        .start()
        .await
        .unwrap();
    let run = a.launch(Launch::new(Held {}).id("held")).await.unwrap();
    let b = Runtime::connect(url.clone())
        .lease(lease)
        .register::<Held>()
        .start()
        .await
        .unwrap();
    // Several lease times: a's heartbeats keep the run its own.
    tokio::time::sleep(lease * 4).await;
    let workers = b.workers().await.unwrap();
    let ids: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, [a.worker_id(), b.worker_id()]);
    assert!(workers
        .iter()
        .all(|w| w.pid == std::process::id() && !w.host.is_empty()));
    assert!(
        workers[0].last_heartbeat > workers[0].started_at,
        "{workers:?}"
    );
    assert!(effects_none_on_b(&url), "b claimed a's run");
    // b waits for the run a runs (it follows the record until it ends).
    let b2 = b.clone();
    let on_b = tokio::spawn(async move { b2.wait("held").await });
    GATE.store(true, Ordering::Release);
    let report = run.wait().await.unwrap();
    assert_eq!(report.result::<u32>("gated").unwrap(), 7);
    let seen_by_b = tokio::time::timeout(Duration::from_mins(1), on_b)
        .await
        .expect("b's wait ends with the run")
        .unwrap()
        .unwrap();
    assert_eq!(seen_by_b.result::<u32>("gated").unwrap(), 7);
    a.shutdown().await.unwrap();
    // A clean shutdown leaves the workers table.
    let left: Vec<String> = b
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(left, [b.worker_id()]);
    b.shutdown().await.unwrap();
}

/// The lease of run `held` is still a's (b never claimed it).
fn effects_none_on_b(url: &str) -> bool {
    let r = rows(
        url,
        "SELECT token FROM procession_leases WHERE run = 'held'",
    );
    r.len() == 1 && r[0].get::<_, i64>(0) == 1
}

// Issue 14 phase 2 item 5: a cancel on a worker that does not run the run reaches the
// worker that does (through the record and its heartbeat), which cancels it as a local
// cancel would: the run ends cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_another_worker_reaches_the_owner() {
    let Some(url) = database("cancel") else {
        return;
    };
    let lease = Duration::from_secs(1);
    let owner = Runtime::connect(url.clone())
        .lease(lease)
        .register::<Endless>()
        .start()
        .await
        .unwrap();
    let other = Runtime::connect(url.clone())
        .lease(lease)
        .register::<Endless>()
        .start()
        .await
        .unwrap();
    let run = owner
        .launch(Launch::new(Endless {}).id("endless"))
        .await
        .unwrap();
    let mut wait_running = 0;
    while other.get("endless").await.unwrap().unwrap().state() != State::Running {
        wait_running += 1;
        assert!(wait_running < 500, "the run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    let rec = other.cancel("endless").await.unwrap();
    assert_eq!(rec.state(), State::CancelRequested);
    let report = tokio::time::timeout(Duration::from_mins(1), run.wait())
        .await
        .expect("the owner cancels the run")
        .unwrap();
    println!(
        "cancel reached the owner after {:?} (lease {lease:?})",
        asked.elapsed()
    );
    assert_eq!(report.status, procession::RunStatus::Cancelled);
    let rec = other.get("endless").await.unwrap().unwrap();
    assert_eq!(rec.state(), State::Cancelled);
    owner.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
}

// Issue 14 phase 2 item 6: two workers with the same interval schedule on one
// database: every fire makes exactly one run (the fire is taken by a compare-and-swap
// of the record's last fire), so the runs are as many as the fires and none was
// refused as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_across_workers() {
    let Some(url) = database("schedule") else {
        return;
    };
    let start = |url: String| async move {
        Runtime::connect(url)
            .lease(Duration::from_secs(2))
            .register::<Ticker>()
            .define(
                Definition::new("tick", Ticker {})
                    .unwrap()
                    .schedule(Schedule::every(Duration::from_millis(500)).unwrap()),
            )
            .start()
            .await
            .unwrap()
    };
    let a = start(url.clone()).await;
    let b = start(url.clone()).await;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let elapsed = began.elapsed();
    let rows = rows(
        &url,
        "SELECT data FROM procession_records WHERE id = 'tick'",
    );
    assert_eq!(rows.len(), 1);
    let observer = observer(&url).await;
    let rec = observer.get("tick").await.unwrap().unwrap();
    let history = observer.history("tick").await.unwrap();
    observer.shutdown().await.unwrap();
    let ticks = TICKS.load(Ordering::Acquire);
    let fires = elapsed.as_millis() / 500 + 1;
    println!(
        "{} runs, {ticks} task runs, at most {fires} fires in {elapsed:?}",
        rec.runs
    );
    assert!(ticks >= 3, "the schedule barely fired: {ticks}");
    // No fire made two runs (a second launch of the same fire would double the runs,
    // or be refused and logged); every run ran its task (the last one may have been
    // suspended by the shutdown before its task started).
    assert!(
        u128::from(rec.runs) <= fires,
        "{} runs for {fires} fires",
        rec.runs
    );
    assert!(
        rec.runs.saturating_sub(u64::from(ticks)) <= 1,
        "{} runs, {ticks} task runs: {history:?}",
        rec.runs
    );
    let refused = rec
        .log
        .iter()
        .filter(|l| l.message.contains("scheduled launch failed"))
        .count();
    assert_eq!(refused, 0, "{:?}", rec.log);
}

static GATE2: AtomicBool = AtomicBool::new(false);

/// Waits for the gate; returns the attempt that ran to the end.
#[task]
async fn gated_attempt(ctx: &Ctx) -> u32 {
    while !GATE2.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.attempt()
}

#[process]
fn moved(p: &mut Builder) {
    p.task(GatedAttempt::new());
}

// Issue 14 phase 2 items 2 and 4: a worker whose lease was taken (here by hand, as if
// it had paused past it) has its heartbeat refused and stops the run at once (its
// attempt is never written); a takeover resumes the run once the lease is free, and a
// waiter on the first worker gets the report of the run as its new owner ended it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_workers_waiters_get_the_new_owners_report() {
    let Some(url) = database("moved") else {
        return;
    };
    let lease = Duration::from_secs(1);
    let a = Runtime::connect(url.clone())
        .lease(lease)
        .register::<Moved>()
        .start()
        .await
        .unwrap();
    let run = a.launch(Launch::new(Moved {}).id("moved")).await.unwrap();
    let b = Runtime::connect(url.clone())
        .lease(lease)
        .register::<Moved>()
        .start()
        .await
        .unwrap();
    let mut tries = 0;
    while a.get("moved").await.unwrap().unwrap().state() != State::Running {
        tries += 1;
        assert!(tries < 500, "the run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another owner takes the run as if a had paused past its lease (expired, then
    // claimed before a's next heartbeat), then lets it go: b's takeover poll claims it.
    let u = url.clone();
    let intruder = tokio::task::spawn_blocking(move || {
        use procession::store::{PgStore, Store};
        let store = PgStore::connect(&u).unwrap();
        loop {
            sql(
                &u,
                "UPDATE procession_leases SET expires_at = 1 WHERE run = 'moved'",
            );
            if let Ok(l) = store.claim("moved", "intruder", 60_000) {
                return (store, l);
            }
        }
    })
    .await
    .unwrap();
    // a's next heartbeats are refused: it stops the run (nothing is written).
    tokio::time::sleep(lease).await;
    assert!(intruder.1.token >= 2);
    let u = url.clone();
    let taker = tokio::task::spawn_blocking(move || {
        use procession::store::Store;
        intruder.0.release(&intruder.1).unwrap();
        drop(intruder);
        let mut owner = String::new();
        wait_until(
            "a worker to take the run over",
            Duration::from_mins(1),
            || {
                owner = rows(
                    &u,
                    "SELECT owner FROM procession_leases WHERE run = 'moved'",
                )
                .first()
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_default();
                owner != "intruder"
            },
        );
        owner
    })
    .await
    .unwrap();
    // Either worker may take it (no leader): a too, now that it is free.
    assert!(taker == a.worker_id() || taker == b.worker_id(), "{taker}");
    println!(
        "taken over by {}",
        if taker == a.worker_id() { "a" } else { "b" }
    );
    GATE2.store(true, Ordering::Release);
    let report = tokio::time::timeout(Duration::from_mins(1), run.wait())
        .await
        .expect("a's waiter gets a report")
        .unwrap();
    // Attempt 1 was a's (stopped, never written); the resumption ran attempt 2.
    assert_eq!(report.result::<u32>("gated_attempt").unwrap(), 2);
    let stored = b.report("moved").await.unwrap();
    assert_eq!(stored.result::<u32>("gated_attempt").unwrap(), 2);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

// ------------------------------------------- a worker that loses the database

/// Attempts of `fenced_task` started, and those live now (a guard counts down when the
/// attempt ends or its future is dropped by a halt).
static FENCE_STARTS: AtomicU32 = AtomicU32::new(0);
static FENCE_LIVE: AtomicU32 = AtomicU32::new(0);
/// Set when an attempt started while another was still live (two workers ran it).
static FENCE_OVERLAP: AtomicBool = AtomicBool::new(false);
static FENCE_GATE: AtomicBool = AtomicBool::new(false);

struct Live;

impl Drop for Live {
    fn drop(&mut self) {
        FENCE_LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Works (ignoring halts and cancels, as a careless handler does) until the gate opens;
/// returns its attempt.
#[task]
async fn fenced_task(ctx: &Ctx) -> u32 {
    if FENCE_LIVE.fetch_add(1, Ordering::AcqRel) > 0 {
        FENCE_OVERLAP.store(true, Ordering::Release);
    }
    let _live = Live;
    FENCE_STARTS.fetch_add(1, Ordering::AcqRel);
    while !FENCE_GATE.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.attempt()
}

#[process]
fn cut_off(p: &mut Builder) {
    p.task(FencedTask::new());
}

/// A TCP proxy on 127.0.0.1 in front of the server that can be cut: then its open
/// connections are closed and new ones are closed as soon as they are accepted, as if
/// the server had become unreachable for whoever connects through it.
struct Cuttable {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Cuttable {
    fn start(server: u16) -> Cuttable {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", server)) else {
                    continue;
                };
                let mut open = o.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cuttable { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

// Issue 14 gap 1 (self-fencing): worker a loses the database (its connections go
// through a proxy that the test cuts) while its task runs. Its heartbeats fail; before
// its lease can expire it stops the run by itself (nothing written), so that when b
// takes the run over no attempt of a is still running: the task never runs on two
// workers at once, and the run ends on b with b's attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_database_stops_its_runs_before_a_takeover() {
    let Some(url) = database("cutoff") else {
        return;
    };
    let port: u16 = url
        .split('/')
        .nth(2)
        .and_then(|h| h.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("the server's port in the URL");
    let proxy = Cuttable::start(port);
    let mut via = url.replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
    via.push(if via.contains('?') { '&' } else { '?' });
    via.push_str("retry_window=1s");
    let lease = Duration::from_secs(1);
    let a = Runtime::connect(via)
        .lease(lease)
        .register::<CutOff>()
        .start()
        .await
        .unwrap();
    let b = Runtime::connect(url.clone())
        .lease(lease)
        .register::<CutOff>()
        .start()
        .await
        .unwrap();
    drop(a.launch(Launch::new(CutOff {}).id("cut")).await.unwrap());
    let mut tries = 0;
    while FENCE_STARTS.load(Ordering::Acquire) == 0 {
        tries += 1;
        assert!(tries < 3000, "the task never started on a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cut = Instant::now();
    proxy.cut();
    let mut tries = 0;
    while FENCE_STARTS.load(Ordering::Acquire) < 2 {
        tries += 1;
        assert!(tries < 3000, "b never took the run over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "b took the run over {:?} after a lost the database (lease {lease:?})",
        cut.elapsed()
    );
    assert!(
        !FENCE_OVERLAP.load(Ordering::Acquire),
        "a still ran the task when b started it"
    );
    FENCE_GATE.store(true, Ordering::Release);
    let report = tokio::time::timeout(Duration::from_mins(1), b.wait("cut"))
        .await
        .expect("the run ends on b")
        .unwrap();
    assert_eq!(report.result::<u32>("fenced_task").unwrap(), 2);
    assert_eq!(FENCE_STARTS.load(Ordering::Acquire), 2);
    b.shutdown().await.unwrap();
    // a cannot reach the database: its shutdown fails or ends, it must not hang.
    let _ = tokio::time::timeout(Duration::from_mins(1), a.shutdown()).await;
}

#[task]
async fn until_cancelled(ctx: &Ctx) -> u32 {
    ctx.cancelled().await;
    0
}

#[process]
fn acked(p: &mut Builder) {
    p.task(UntilCancelled::new());
}

// Issue 14 gap 2: the record writes of a run's holder are fenced by its lease. Worker a
// runs a run whose lease another owner took (by hand, as if a had paused past it; a's
// lease is long, so no heartbeat of a notices before the end of the test). A cancel on
// a reaches its executor, whose acknowledgement (`cancelling`) must not be written: the
// record stays `cancel_requested` for the new owner to act on, and a stops the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombies_cancel_acknowledgement_is_not_written() {
    let Some(url) = database("ack") else {
        return;
    };
    let a = Runtime::connect(url.clone())
        .lease(Duration::from_mins(1))
        .register::<Acked>()
        .start()
        .await
        .unwrap();
    let run = a.launch(Launch::new(Acked {}).id("acked")).await.unwrap();
    let mut tries = 0;
    while a.get("acked").await.unwrap().unwrap().state() != State::Running {
        tries += 1;
        assert!(tries < 500, "the run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let u = url.clone();
    let taken = tokio::task::spawn_blocking(move || {
        use procession::store::{PgStore, Store};
        sql(
            &u,
            "UPDATE procession_leases SET expires_at = 1 WHERE run = 'acked'",
        );
        PgStore::connect(&u)
            .unwrap()
            .claim("acked", "intruder", 600_000)
            .unwrap()
    })
    .await
    .unwrap();
    let rec = a.cancel("acked").await.unwrap();
    assert_eq!(rec.state(), State::CancelRequested);
    // Without the fence, a's acknowledgement lands within milliseconds; three seconds
    // is a generous bound on a loaded machine.
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let state = run_state(&url, "acked");
        assert_eq!(
            state,
            Some(State::CancelRequested),
            "the zombie wrote the record of a run it no longer holds"
        );
    }
    let lease = rows(
        &url,
        "SELECT owner, token FROM procession_leases WHERE run = 'acked'",
    );
    assert_eq!(lease[0].get::<_, String>(0), "intruder");
    assert_eq!(
        u64::try_from(lease[0].get::<_, i64>(1)).unwrap(),
        taken.token
    );
    drop(run);
    let _ = tokio::time::timeout(Duration::from_mins(1), a.shutdown()).await;
}

static SLOW_TICKS: AtomicU32 = AtomicU32::new(0);
static SLOW_LIVE: AtomicU32 = AtomicU32::new(0);
static SLOW_OVERLAP: AtomicBool = AtomicBool::new(false);

/// Works longer than the schedule's interval, so that fires come while it runs.
#[task]
async fn slow_tick() -> u32 {
    if SLOW_LIVE.fetch_add(1, Ordering::AcqRel) > 0 {
        SLOW_OVERLAP.store(true, Ordering::Release);
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    SLOW_LIVE.fetch_sub(1, Ordering::AcqRel);
    SLOW_TICKS.fetch_add(1, Ordering::AcqRel)
}

#[process]
fn slow_ticker(p: &mut Builder) {
    p.task(SlowTick::new());
}

// Issue 14 gap 3: two workers with one `queue_one` schedule whose runs last longer than
// its interval: every fire that comes while a run is active is queued, and the queued
// fire is launched once across the workers (taken by a compare-and-swap of the
// record's queued fire): no two runs for one fire, no launch refused because another
// worker had launched the same fire, no two runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_schedule_fire_is_launched_once_across_workers() {
    let Some(url) = database("queued") else {
        return;
    };
    let start = |url: String| async move {
        Runtime::connect(url)
            .lease(Duration::from_secs(2))
            .keep_runs(1000)
            .register::<SlowTicker>()
            .define(
                Definition::new("slow", SlowTicker {}).unwrap().schedule(
                    Schedule::every(Duration::from_millis(20))
                        .unwrap()
                        .overlap(procession::Overlap::QueueOne),
                ),
            )
            .start()
            .await
            .unwrap()
    };
    let a = start(url.clone()).await;
    let b = start(url.clone()).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    // Read from the store itself: a runtime started to observe would run the schedule's
    // next fire (and log its refusal, the type not being registered there) before or
    // after the reads, depending on timing.
    let u = url.clone();
    let (rec, past) = tokio::task::spawn_blocking(move || {
        use procession::store::{PgStore, Store};
        let store = PgStore::connect(&u).unwrap();
        (
            store.get("slow").unwrap().unwrap(),
            store.history("slow").unwrap(),
        )
    })
    .await
    .unwrap();
    let history: Vec<&procession::ProcessRecord> = std::iter::once(&rec)
        .chain(past.iter().map(|p| &p.record))
        .collect();
    let ticks = SLOW_TICKS.load(Ordering::Acquire);
    let mut fired: Vec<u64> = history
        .iter()
        .filter_map(|r| r.run.as_ref().and_then(|m| m.fired_at))
        .collect();
    println!(
        "{} runs, {ticks} task runs, {} runs listed",
        rec.runs,
        history.len()
    );
    assert!(ticks >= 5, "the schedule barely fired: {ticks}");
    let refused: Vec<&str> = rec
        .log
        .iter()
        .filter(|l| l.message.contains("launch failed"))
        .map(|l| l.message.as_str())
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    let n = fired.len();
    fired.sort_unstable();
    fired.dedup();
    assert_eq!(fired.len(), n, "a fire was launched twice");
    assert!(!SLOW_OVERLAP.load(Ordering::Acquire), "two runs at once");
}

static OWN_STARTS: AtomicU32 = AtomicU32::new(0);
static OWN_GATE: AtomicBool = AtomicBool::new(false);

/// Counts its starts, then waits for the gate (a shutdown does not end it: its run
/// stays active).
#[task]
async fn own_task(ctx: &Ctx) -> u32 {
    OWN_STARTS.fetch_add(1, Ordering::AcqRel);
    while !OWN_GATE.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.attempt()
}

#[process]
fn own_lease(p: &mut Builder) {
    p.task(OwnTask::new());
}

/// Waits (up to a minute) until `OWN_STARTS` reaches `n`.
async fn own_starts(n: u32, what: &str) {
    let mut tries = 0;
    while OWN_STARTS.load(Ordering::Acquire) < n {
        tries += 1;
        assert!(tries < 3000, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The owner and token of run `id`'s lease.
fn lease_of(url: &str, id: &str) -> (String, i64) {
    let r = rows(
        url,
        &format!("SELECT owner, token FROM procession_leases WHERE run = '{id}'"),
    );
    (r[0].get(0), r[0].get(1))
}

// Issue 14, a takeover claim whose answer was lost: the claim committed, the connection
// broke, the pool ran the statement again and found the lease already this worker's, so
// the worker never learnt it holds the run. Its heartbeat does not renew that lease; once
// it expires, the single worker's own takeover poll must take the run (nobody else
// will), and the run ends there. Then a run this worker drives, whose lease looks
// expired (written so by hand, again and again), is never taken a second time by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_worker_takes_back_its_own_expired_lease_of_a_run_it_does_not_drive() {
    let Some(url) = database("ownlease") else {
        return;
    };
    // The run is made by a first runtime that suspends it (its task never ends by
    // itself) and is gone; its lease is then made unexpired, so that the worker under
    // test does not take it at start.
    let first = Runtime::connect(url.clone())
        .lease(Duration::from_secs(1))
        .cancel_grace(Duration::from_millis(100))
        .register::<OwnLease>()
        .start()
        .await
        .unwrap();
    drop(
        first
            .launch(Launch::new(OwnLease {}).id("lost"))
            .await
            .unwrap(),
    );
    own_starts(1, "the task never started on the first runtime").await;
    first.shutdown().await.unwrap();
    assert_eq!(run_state(&url, "lost"), Some(State::Running));
    sql(
        &url,
        "UPDATE procession_leases SET expires_at = procession_now_ms() + 600000
         WHERE run = 'lost'",
    );
    let lease = Duration::from_secs(1);
    let rt = Runtime::connect(url.clone())
        .lease(lease)
        .register::<OwnLease>()
        .start()
        .await
        .unwrap();
    let me = rt.worker_id().to_owned();
    assert_ne!(lease_of(&url, "lost").0, me, "taken at start");
    // What the lost answer left, once its lease time passed: the lease is this worker's
    // (a new token), expired, and the run is not live here.
    sql(
        &url,
        &format!(
            "UPDATE procession_leases SET owner = '{me}', token = token + 1, expires_at = 1
             WHERE run = 'lost'"
        ),
    );
    let (_, lost_token) = lease_of(&url, "lost");
    own_starts(2, "the worker never took back its own expired lease").await;
    let (owner, token) = lease_of(&url, "lost");
    assert_eq!(owner, me);
    assert!(token > lost_token, "taken under a new token");
    OWN_GATE.store(true, Ordering::Release);
    let report = tokio::time::timeout(Duration::from_mins(1), rt.wait("lost"))
        .await
        .expect("the run ends on the worker")
        .unwrap();
    assert!(report.is_success(), "{:?}", report.status);
    assert_eq!(OWN_STARTS.load(Ordering::Acquire), 2);

    // A run driven here: its lease made to look expired for three lease times (several
    // takeover polls) is left alone; the heartbeat keeps renewing it.
    OWN_GATE.store(false, Ordering::Release);
    let run = rt
        .launch(Launch::new(OwnLease {}).id("driven"))
        .await
        .unwrap();
    own_starts(3, "the driven run never started").await;
    let (_, driven_token) = lease_of(&url, "driven");
    let until = Instant::now() + lease * 3;
    while Instant::now() < until {
        sql(
            &url,
            "UPDATE procession_leases SET expires_at = 1 WHERE run = 'driven'",
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        lease_of(&url, "driven"),
        (me.clone(), driven_token),
        "a run live here was claimed again"
    );
    assert_eq!(OWN_STARTS.load(Ordering::Acquire), 3, "started twice");
    OWN_GATE.store(true, Ordering::Release);
    let report = tokio::time::timeout(Duration::from_mins(1), run.wait())
        .await
        .expect("the driven run ends")
        .unwrap();
    assert!(report.is_success(), "{:?}", report.status);
    assert_eq!(OWN_STARTS.load(Ordering::Acquire), 3);
    rt.shutdown().await.unwrap();
}
