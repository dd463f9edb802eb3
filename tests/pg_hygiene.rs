//! Several workers on one PostgreSQL database, the leftovers of issue 14: retention of
//! finished runs swept by every worker, a hot path that finished rows do not slow down,
//! idempotency keys atomic across workers, dead workers' rows removed, and a parent and
//! its child taken over together after a kill -9.
//!
//! The multi-process test re-executes this test binary as a worker process
//! (`hygiene_worker_entry`, which returns at once unless `HYG_URL` is set). Tasks write
//! one row per attempt into a table `effects(run, task, attempt, worker)` with a unique
//! key, so the tests see what ran where.
//!
//! The server is a throw-away cluster started by `pg/mod.rs` (or `PROCESSION_PG_URL`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procession::prelude::*;
use procession::store::{PgStore, Store};
use procession::{Child, ChildError, RunStatus, State};

mod pg;
use pg::{rows, sql, wait_until};

fn count(url: &str, q: &str) -> i64 {
    rows(url, q)[0].get(0)
}

fn database(test: &str) -> Option<String> {
    pg::database_with(test, &["effects"])
}

/// The worker's name (`HYG_NAME` in a worker process).
fn me() -> String {
    std::env::var("HYG_NAME").unwrap_or_else(|_| "test".into())
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

/// `(run, task, attempt, worker)` of every effect, in order.
fn effects(url: &str) -> Vec<(String, i32, i32, String)> {
    rows(
        url,
        "SELECT run, task, attempt, worker FROM effects ORDER BY run, task, attempt",
    )
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

// ----------------------------------------------------------------------- the work

#[task]
fn quick(n: u32) -> u32 {
    n + 1
}

#[process]
fn job(p: &mut Builder, n: u32) {
    p.task(Quick::new(n));
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

/// A child step: records its attempt, works 10 ms (the slow one, on worker A: until A
/// is killed), returns `prev * 10 + i`.
#[task]
#[allow(clippy::needless_pass_by_value)] // task inputs are owned: they are stored between tasks
async fn child_step(ctx: &Ctx, url: String, i: u32, slow: bool, prev: u64) -> u64 {
    effect(url, "child".into(), i, ctx.attempt()).await;
    let ms = if slow && me() == "a" { 600_000 } else { 10 };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    prev * 10 + u64::from(i)
}

#[task]
fn child_seed() -> u64 {
    1
}

/// Two steps: a quick one, then a slow one (worker A is killed in it).
#[process]
fn kid(p: &mut Builder, url: String) {
    let s = p.task(ChildSeed::new());
    let a = p.task(ChildStep::new(url.clone(), 1, false, s));
    p.task(ChildStep::new(url, 2, true, a));
}

/// The parent's task: records its attempt, runs the child (its id derived from the
/// parent run, so a parent task that runs again finds it) and returns its output.
#[task]
#[allow(clippy::needless_pass_by_value)]
async fn spawn_kid(ctx: &Ctx, url: String) -> Result<u64, ChildError> {
    effect(url.clone(), "parent".into(), 1, ctx.attempt()).await;
    let outcome = ctx.run_child(Child::new(Kid { url })).await?;
    Ok(outcome.output::<u64>().unwrap_or(0))
}

#[task]
fn after(v: u64) -> u64 {
    v + 1
}

#[process]
fn parent(p: &mut Builder, url: String) {
    let v = p.task(SpawnKid::new(url));
    p.task(After::new(v));
}

// ------------------------------------------------------------ worker processes

/// The worker role: runs only when the test binary is re-executed with `HYG_URL` set.
/// With `HYG_GO` (a file) and `HYG_KEYS` (a number): once the file exists, launches
/// `PER_PROCESS` times each key `key-0` … (all at once), prints `id <key> <run id>` for
/// each, waits for every run and exits. Otherwise launches run `parent` and works until
/// killed.
#[test]
fn hygiene_worker_entry() {
    let Ok(url) = std::env::var("HYG_URL") else {
        return;
    };
    let lease: u64 = std::env::var("HYG_LEASE_MS").unwrap().parse().unwrap();
    let go = std::env::var("HYG_GO").ok();
    let keys: u32 = std::env::var("HYG_KEYS").map_or(0, |k| k.parse().unwrap());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let rt = Runtime::connect(url.clone())
                .lease(Duration::from_millis(lease))
                .register::<Parent>()
                .register::<Kid>()
                .register::<Job>()
                .start()
                .await
                .expect("the database opens");
            let Some(go) = go else {
                drop(
                    rt.launch(Launch::new(Parent { url }).id("parent"))
                        .await
                        .expect("launch"),
                );
                println!("ready {}", rt.worker_id());
                loop {
                    tokio::time::sleep(Duration::from_hours(1)).await;
                }
            };
            println!("ready {}", rt.worker_id());
            while !std::path::Path::new(&go).exists() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut launches = Vec::new();
            for k in 0..keys {
                for _ in 0..PER_PROCESS {
                    let rt = rt.clone();
                    launches.push(tokio::spawn(async move {
                        let key = format!("key-{k}");
                        let h = rt
                            .launch(Launch::new(Job { n: k }).idempotency_key(key.clone()))
                            .await
                            .expect("launch");
                        println!("id {key} {}", h.id());
                        h.wait().await.expect("the run's report");
                    }));
                }
            }
            for l in launches {
                l.await.unwrap();
            }
            println!("done");
            rt.shutdown().await.unwrap();
        });
}

/// Launches of each key per worker process (`hygiene_worker_entry`).
const PER_PROCESS: u32 = 4;

/// A worker process: killed (SIGKILL) when dropped.
struct Worker {
    child: std::process::Child,
    /// Its stdout after the `ready` line.
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    fn start(url: &str, name: &str, lease_ms: u64) -> Worker {
        Worker::start_with(url, name, lease_ms, &[])
    }

    fn start_with(url: &str, name: &str, lease_ms: u64, env: &[(&str, String)]) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "hygiene_worker_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HYG_URL", url)
            .env("HYG_NAME", name)
            .env("HYG_LEASE_MS", lease_ms.to_string())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("worker starts");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        for line in lines.by_ref() {
            if line.unwrap_or_default().contains("ready worker-") {
                break;
            }
        }
        Worker { child, lines }
    }
}

/// Whether the child's quick step (node 1 of `kid`) is stored as done.
fn quick_step_stored(store: &PgStore, url: &str) -> bool {
    let Some(child) = rows(
        url,
        "SELECT id FROM procession_records WHERE parent = 'parent'",
    )
    .first()
    .map(|r| r.get::<_, String>(0)) else {
        return false;
    };
    store
        .tasks(&child)
        .unwrap_or_default()
        .iter()
        .any(|(node, row)| *node == 1 && row.state == State::Done)
}

// ------------------------------------------------------------------------ tests

/// Issue 14 point 5: worker A runs a parent whose task runs a child; A is killed (kill
/// -9) in the child's slow step. Worker B takes over the child and the parent (children
/// first): the child's finished step is not run again, its interrupted step runs again,
/// the parent's task finds the child by its id and gets its result, and the parent ends
/// done on B with the child's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_and_its_child_are_taken_over_together() {
    let Some(url) = database("child_takeover") else {
        return;
    };
    let lease = Duration::from_millis(800);
    let u = url.clone();
    let mut a = tokio::task::spawn_blocking(move || Worker::start(&u, "a", 800))
        .await
        .unwrap();
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        // A step starts once the step before it ended in memory; that end reaches the
        // store with the next group commit, and a crash before it runs the step again
        // (at-least-once, DESIGN §5). What is checked is that a stored end is not run
        // again: the kill waits for the quick step's end in the store, not only for the
        // slow step's start (under load the commit came after it, 1 run in 8).
        let store = PgStore::connect(&u).expect("the database opens");
        wait_until(
            "A in the child's slow step, its quick step stored as done",
            Duration::from_mins(1),
            || {
                effects(&u)
                    .iter()
                    .any(|(run, task, _, _)| run == "child" && *task == 2)
                    && quick_step_stored(&store, &u)
            },
        );
    })
    .await
    .unwrap();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);
    let b = Runtime::connect(url.clone())
        .lease(lease)
        .register::<Parent>()
        .register::<Kid>()
        .start()
        .await
        .unwrap();
    let report = match tokio::time::timeout(Duration::from_secs(40), b.wait("parent")).await {
        Ok(r) => r.unwrap(),
        Err(_) => {
            let u = url.clone();
            let dump = tokio::task::spawn_blocking(move || {
                let recs: Vec<String> = rows(&u, "SELECT id, state, parent FROM procession_records")
                    .iter()
                    .map(|r| format!("{}:{}:{:?}", r.get::<_, String>(0), r.get::<_, i16>(1), r.get::<_, Option<String>>(2)))
                    .collect();
                let leases: Vec<String> = rows(&u, "SELECT run, owner, token, expires_at - procession_now_ms() FROM procession_leases")
                    .iter()
                    .map(|r| format!("{}:{}:{}:{}", r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, i64>(2), r.get::<_, i64>(3)))
                    .collect();
                format!("records {recs:?}\nleases {leases:?}\neffects {:?}", effects(&u))
            })
            .await
            .unwrap();
            panic!("the parent did not end on B:\n{dump}");
        }
    };
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    // The child computed ((1 * 10 + 1) * 10 + 2) = 112; the parent adds one.
    assert_eq!(report.result::<u64>("spawn_kid").unwrap(), 112);
    assert_eq!(report.result::<u64>("after").unwrap(), 113);
    let seen = effects(&url);
    let of = |run: &str, task: i32| -> Vec<(i32, String)> {
        seen.iter()
            .filter(|(r, t, _, _)| r == run && *t == task)
            .map(|(_, _, a, w)| (*a, w.clone()))
            .collect()
    };
    assert_eq!(
        of("child", 1),
        [(1, "a".to_owned())],
        "the child's finished step ran once: {seen:?}"
    );
    let slow = of("child", 2);
    assert_eq!(slow.len(), 2, "the interrupted step ran again: {seen:?}");
    assert_eq!(slow[0].1, "a");
    assert_eq!(slow[1].1, "test");
    let parent = of("parent", 1);
    assert_eq!(parent.first().map(|p| p.1.as_str()), Some("a"), "{seen:?}");
    assert!(parent.iter().skip(1).all(|p| p.1 == "test"), "{seen:?}");
    let u = url.clone();
    let kids = tokio::task::spawn_blocking(move || {
        count(
            &u,
            "SELECT count(*) FROM procession_records WHERE parent = 'parent'",
        )
    })
    .await
    .unwrap();
    assert_eq!(kids, 1, "one child, not a second one");
    b.shutdown().await.unwrap();
}

/// Issue 14 point 3: launches with one idempotency key from two workers at the same
/// moment (no explicit id: each would name its own run) all get the same run id, and
/// the database holds one run per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_launched_on_two_workers_at_once_makes_one_run() {
    const KEYS: u32 = 12;
    const PER_WORKER: u32 = 4;
    let Some(url) = database("idem") else {
        return;
    };
    let start = || {
        Runtime::connect(url.clone())
            .lease(Duration::from_secs(2))
            .register::<Job>()
            .start()
    };
    let (a, b) = (start().await.unwrap(), start().await.unwrap());
    let mut launches = Vec::new();
    for k in 0..KEYS {
        for i in 0..PER_WORKER * 2 {
            let rt = if i % 2 == 0 { a.clone() } else { b.clone() };
            launches.push(tokio::spawn(async move {
                let h = rt
                    .launch(Launch::new(Job { n: k }).idempotency_key(format!("key-{k}")))
                    .await
                    .expect("launch");
                (k, h.id().to_owned(), h)
            }));
        }
    }
    let mut ids: Vec<std::collections::BTreeSet<String>> =
        vec![std::collections::BTreeSet::new(); KEYS as usize];
    let mut handles = Vec::new();
    for l in launches {
        let (k, id, h) = l.await.unwrap();
        ids[k as usize].insert(id);
        handles.push(h);
    }
    for (k, set) in ids.iter().enumerate() {
        assert_eq!(set.len(), 1, "key-{k} named several runs: {set:?}");
    }
    let u = url.clone();
    let runs = tokio::task::spawn_blocking(move || {
        count(
            &u,
            "SELECT count(*) FROM procession_records WHERE process_type = 'job'",
        )
    })
    .await
    .unwrap();
    assert_eq!(runs, i64::from(KEYS), "one run per key");
    for h in handles {
        let r = tokio::time::timeout(Duration::from_mins(1), h.wait())
            .await
            .expect("every handle gets the run's report")
            .unwrap();
        assert_eq!(r.status, RunStatus::Succeeded);
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Issue 14 point 3, across processes: two worker processes, released at once, launch
/// each key four times each (no explicit id): every launch of a key, in both processes,
/// gets the same run, and the database holds one run per key.
#[test]
fn one_key_launched_by_two_processes_at_once_makes_one_run() {
    const KEYS: u32 = 40;
    let Some(url) = database("idem_procs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let env = [
        ("HYG_GO", go.display().to_string()),
        ("HYG_KEYS", KEYS.to_string()),
    ];
    let workers: Vec<Worker> = ["p1", "p2"]
        .iter()
        .map(|name| Worker::start_with(&url, name, 2_000, &env))
        .collect();
    std::fs::write(&go, b"go").unwrap();
    let mut ids: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    let mut launched = 0;
    for mut w in workers {
        for line in w.lines.by_ref() {
            let line = line.unwrap();
            if line == "done" {
                break;
            }
            if let Some(rest) = line.strip_prefix("id ") {
                let (key, id) = rest.split_once(' ').unwrap();
                ids.entry(key.to_owned()).or_default().insert(id.to_owned());
                launched += 1;
            }
        }
        assert!(w.child.wait().unwrap().success(), "a worker process failed");
    }
    assert_eq!(launched, KEYS * PER_PROCESS * 2, "every launch answered");
    assert_eq!(ids.len(), KEYS as usize);
    for (key, set) in &ids {
        assert_eq!(set.len(), 1, "{key} named several runs: {set:?}");
    }
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM procession_records WHERE process_type = 'job'"
        ),
        i64::from(KEYS),
        "one run per key"
    );
}

/// Issue 14 point 4: a worker that stopped without a clean shutdown (its runtime
/// dropped: no heartbeat, its row left) is removed from the workers table by another
/// worker's takeover poll once it has been silent for ten lease times; the live
/// worker's own row stays, and comes back at its next heartbeat when it was removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_row_is_removed_after_ten_leases() {
    let Some(url) = database("dead_rows") else {
        return;
    };
    let lease = Duration::from_millis(150);
    let dead = Runtime::connect(url.clone())
        .lease(lease)
        .start()
        .await
        .unwrap();
    let dead_id = dead.worker_id().to_owned();
    // Killed: no shutdown, the row stays (the runtime's loops end with it).
    drop(dead);
    let live = Runtime::connect(url.clone())
        .lease(lease)
        .start()
        .await
        .unwrap();
    let listed: Vec<String> = live
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert!(listed.contains(&dead_id), "{listed:?}");
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let ids: Vec<String> = live
            .workers()
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        if !ids.contains(&dead_id) {
            assert_eq!(ids, [live.worker_id()], "the live worker stays");
            break;
        }
        assert!(Instant::now() < deadline, "the dead row stays: {ids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A live worker whose row was removed (as another worker does when it took a long
    // pause for death) registers again at its next heartbeat.
    let (u, me) = (url.clone(), live.worker_id().to_owned());
    tokio::task::spawn_blocking(move || {
        sql(
            &u,
            &format!("DELETE FROM procession_workers WHERE id = '{me}'"),
        );
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let ids: Vec<String> = live
            .workers()
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        if ids == [live.worker_id()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live row is not back: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    live.shutdown().await.unwrap();
}

/// Issue 14 point 6 (retention): two workers with a retention, on one database: the
/// finished runs of both (with their task rows, leases and keys) are deleted by their
/// sweeps, without errors from sweeping at the same time; an active run stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_sweep_finished_runs_together() {
    let Some(url) = database("retention") else {
        return;
    };
    let start = || {
        Runtime::connect(url.clone())
            .lease(Duration::from_secs(2))
            .retention(Duration::from_millis(200))
            .register::<Job>()
            .register::<Endless>()
            .start()
    };
    let (a, b) = (start().await.unwrap(), start().await.unwrap());
    let endless = a
        .launch(Launch::new(Endless {}).id("endless"))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for k in 0..40u32 {
        let rt = if k % 2 == 0 { &a } else { &b };
        handles.push(
            rt.launch(Launch::new(Job { n: k }).idempotency_key(format!("r-{k}")))
                .await
                .unwrap(),
        );
    }
    for h in handles {
        h.wait().await.unwrap();
    }
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the finished runs swept", Duration::from_mins(1), || {
            count(
                &u,
                "SELECT count(*) FROM procession_records WHERE process_type = 'job'",
            ) == 0
        });
        for table in [
            "procession_tasks WHERE run <> 'endless'",
            "procession_leases WHERE run <> 'endless'",
            "procession_idempotency",
        ] {
            assert_eq!(
                count(&u, &format!("SELECT count(*) FROM {table}")),
                0,
                "{table}"
            );
        }
    })
    .await
    .unwrap();
    assert_eq!(
        a.get("endless").await.unwrap().map(|r| r.state()),
        Some(State::Running)
    );
    // A key of a swept run starts a new run.
    let again = b
        .launch(Launch::new(Job { n: 0 }).idempotency_key("r-0"))
        .await
        .unwrap();
    again.wait().await.unwrap();
    endless.cancel().await.unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Issue 14 point 6 (bloat): with 100,000 finished runs in the database (records, task
/// rows, released leases, delivered notifications), no statement of the hot path (claim,
/// heartbeat, takeover, fence, outbox claim, retention sweep) reads a whole table:
/// finished rows stay out of their index ranges.
#[test]
fn finished_runs_leave_the_hot_path_on_indexes() {
    let Some(url) = pg::database("bloat") else {
        return;
    };
    let store = PgStore::connect(&url).unwrap();
    sql(
        &url,
        r"
INSERT INTO procession_records
    (id, created_at, state, process_type, root, parent, definition, scheduled, data, ended_at)
SELECT 'done-' || i, i, 3, 'job', 'done-' || i, NULL, false, false, '\x00'::bytea, i
FROM generate_series(1, 100000) i;
INSERT INTO procession_records
    (id, created_at, state, process_type, root, parent, definition, scheduled, data, ended_at)
SELECT 'live-' || i, 200000 + i, 2, 'job', 'live-' || i, NULL, false, false, '\x00'::bytea, NULL
FROM generate_series(1, 20) i;
INSERT INTO procession_leases (run, owner, token, expires_at)
SELECT 'done-' || i, 'w-gone', 1, 0 FROM generate_series(1, 100000) i;
INSERT INTO procession_tasks (run, node, lease, data)
SELECT 'done-' || i, 0, 1, '\x00'::bytea FROM generate_series(1, 100000) i;
INSERT INTO procession_deliveries (id, state, created_at, next_at, run, channel, data)
SELECT 'd-' || i, 1, i, i, 'done-' || i, 'ops', '\x00'::bytea FROM generate_series(1, 100000) i;
-- Spread tasks of live runs that are waiting (state 5) or ended (2): not claimable.
INSERT INTO procession_task_claims
    (run, node, run_token, process_type, state, attempts, max_attempts, pending_deps)
SELECT 'live-' || (i % 20), i, 1, 'job', CASE WHEN i % 2 = 0 THEN 5 ELSE 2 END, 0, 1, 1
FROM generate_series(1, 100000) i;
ANALYZE;
",
    );
    let plans = store.explain_hot_path(&["job"]).unwrap();
    assert_eq!(plans.len(), 8);
    for (statement, plan) in &plans {
        println!("{statement}:\n{plan}\n");
        if statement == &"claim_expired" {
            assert!(plan.contains("procession_records_active"), "{plan}");
        }
        if statement == &"claim_tasks" {
            assert!(plan.contains("procession_task_claims_claimable"), "{plan}");
            assert!(
                !plan.contains("Seq Scan on procession_task_claims"),
                "{plan}"
            );
        }
        // Tables that grow with finished runs (the workers table is a few rows, which
        // the planner rightly reads whole).
        for table in [
            "procession_records",
            "procession_tasks",
            "procession_leases",
            "procession_deliveries",
            "procession_idempotency",
        ] {
            assert!(
                !plan.contains(&format!("Seq Scan on {table}")),
                "{statement} scans {table} with 100k finished runs:\n{plan}"
            );
        }
    }
    assert_eq!(
        store.count(&procession::store::Query::new()).unwrap(),
        100_020
    );
}
