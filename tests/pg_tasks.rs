//! One run's tasks spread over several workers on one PostgreSQL database (issue 14,
//! points 2-4, `RuntimeBuilder::spread_tasks`): the worker holding a run's lease
//! coordinates it, every worker claims and runs its ready tasks, fenced per task.
//!
//! The tests re-execute this test binary as worker processes (`pg_task_worker_entry`,
//! which returns at once unless `PGT_URL` is set), killed with SIGKILL, stopped with
//! SIGSTOP and continued with SIGCONT. Tasks write one row per attempt into a table
//! `effects(run, task, attempt, worker)` with a unique key, so the tests see what ran
//! where, and how often.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procession::prelude::*;
use procession::State;

mod pg;
use pg::{effects_of as effects, rows, wait_until, Warnings};

// ------------------------------------------------------------------ the work

/// The worker's name (`PGT_NAME` in a worker process).
fn me() -> String {
    std::env::var("PGT_NAME").unwrap_or_else(|_| "test".into())
}

/// Runs a statement with the blocking client, off the async threads.
async fn exec(url: String, q: &'static str, run: String, task: u32, attempt: u32) {
    let worker = me();
    tokio::task::spawn_blocking(move || {
        // Again while the server restarts (one test restarts it): a connection that
        // breaks, or a server that is shutting down or starting up, is tried again; a
        // second row for one task and attempt fails the test, unless an earlier try may
        // have committed before its answer was lost.
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut retried = false;
        loop {
            let done = postgres::Client::connect(&url, postgres::NoTls).and_then(|mut c| {
                c.execute(
                    q,
                    &[
                        &run,
                        &i32::try_from(task).unwrap(),
                        &i32::try_from(attempt).unwrap(),
                        &worker,
                    ],
                )
            });
            let unique = postgres::error::SqlState::UNIQUE_VIOLATION;
            match done {
                Ok(_) => return,
                Err(e) if e.code() == Some(&unique) && retried => return,
                Err(e) if e.code() == Some(&unique) || Instant::now() > deadline => {
                    panic!("one effect per task and attempt: {e}")
                }
                Err(_) => {
                    retried = true;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
    .await
    .unwrap();
}

/// Mode of the `part` tasks: run `ms` and return.
const PLAIN: u32 = 0;
/// Part 1's first attempt hangs for ever, ignoring cancellation and its timeout.
const HANG: u32 = 1;
/// Parts wait `ms` or until cancelled (and then record that they saw the cancel).
const CANCELLABLE: u32 = 2;

#[task]
fn seed(n: u64) -> u64 {
    n
}

/// One part of a wide run: records its attempt, works, returns a value and who
/// computed it.
#[task(timeout = "20s")]
#[allow(clippy::too_many_arguments)]
async fn part(
    ctx: &Ctx,
    url: String,
    run: String,
    i: u32,
    ms: u64,
    mode: u32,
    seed: u64,
) -> Result<(u64, String), procession::Cancelled> {
    exec(
        url.clone(),
        "INSERT INTO effects (run, task, attempt, worker) VALUES ($1, $2, $3, $4)",
        run.clone(),
        i,
        ctx.attempt(),
    )
    .await;
    if mode == HANG && i == 1 && ctx.attempt() == 1 {
        // Hung: blocks its thread, so neither the timeout nor a cancel can end it.
        tokio::task::block_in_place(|| loop {
            std::thread::sleep(Duration::from_hours(1));
        });
    }
    if mode == CANCELLABLE {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            () = ctx.cancelled() => {
                exec(
                    url,
                    "INSERT INTO cancels (run, task, attempt, worker) VALUES ($1, $2, $3, $4)",
                    run,
                    i,
                    ctx.attempt(),
                )
                .await;
                ctx.check_cancelled()?;
            }
        }
    } else {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Ok((seed * 7 + u64::from(i), me()))
}

#[task]
#[allow(clippy::needless_pass_by_value)] // task inputs are owned
fn total(parts: Vec<(u64, String)>) -> u64 {
    parts.iter().map(|p| p.0).sum()
}

/// A seed, `width` parts reading it, and a total of the parts.
#[process]
fn wide(p: &mut Builder, url: String, run: String, n: u64, width: u32, ms: u64, mode: u32) {
    let s = p.task(Seed::new(n));
    let parts: Vec<_> = (1..=width)
        .map(|i| p.task(Part::new(url.clone(), run.clone(), i, ms, mode, s)))
        .collect();
    p.task(Total::new(parts));
}

fn wide_of(url: &str, run: &str, n: u64, width: u32, ms: u64, mode: u32) -> Wide {
    Wide {
        url: url.into(),
        run: run.into(),
        n,
        width,
        ms,
        mode,
    }
}

fn expected(n: u64, width: u32) -> u64 {
    (1..=width).map(|i| n * 7 + u64::from(i)).sum()
}

fn database(test: &str) -> Option<String> {
    pg::database_with(test, &["effects", "cancels"])
}

fn run_state(url: &str, id: &str) -> Option<State> {
    let code: Option<i16> = rows(
        url,
        &format!("SELECT state FROM procession_records WHERE id = '{id}'"),
    )
    .first()
    .map(|r| r.get(0));
    code.map(|c| State::ALL[usize::try_from(c).unwrap()])
}

/// The report of run `id`, read by a runtime that registers nothing.
fn report(url: &str, id: &str) -> RunReport {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let rt = Runtime::connect(url.to_owned())
            .lease(Duration::from_secs(2))
            .start()
            .await
            .unwrap();
        let r = rt.report(id).await.unwrap();
        rt.shutdown().await.unwrap();
        r
    })
}

// ------------------------------------------------------------ worker processes

/// The worker role: runs only when the test binary is re-executed with `PGT_URL` set.
/// Connects with lease `PGT_LEASE_MS` and task spreading on (capacity `PGT_SLOTS`),
/// launches the run `PGT_LAUNCH` (`id:n:width:ms:mode`), prints `ready <worker id>`,
/// then its task stats every 100 ms (`stats claimed=… fenced=… refused=…`), until it is
/// killed.
#[test]
fn pg_task_worker_entry() {
    use tracing_subscriber::layer::SubscriberExt;
    let Ok(url) = std::env::var("PGT_URL") else {
        return;
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Warnings));
    let lease: u64 = std::env::var("PGT_LEASE_MS").unwrap().parse().unwrap();
    let slots: usize = std::env::var("PGT_SLOTS").unwrap().parse().unwrap();
    let launch = std::env::var("PGT_LAUNCH").unwrap_or_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let rt = Runtime::connect(url.clone())
                .lease(Duration::from_millis(lease))
                .cancel_grace(Duration::from_secs(1))
                .spread_tasks(true)
                .spread_capacity(slots)
                .register::<Wide>()
                .start()
                .await
                .expect("the database opens");
            if !launch.is_empty() {
                let f: Vec<&str> = launch.split(':').collect();
                let (id, n, width) = (f[0], f[1].parse().unwrap(), f[2].parse().unwrap());
                let (ms, mode) = (f[3].parse().unwrap(), f[4].parse().unwrap());
                drop(
                    rt.launch(Launch::new(wide_of(&url, id, n, width, ms, mode)).id(id))
                        .await
                        .expect("launch"),
                );
            }
            println!("ready {}", rt.worker_id());
            loop {
                let s = rt.task_stats();
                println!(
                    "stats claimed={} finished={} fenced={} refused={}",
                    s.claimed, s.finished, s.fenced, s.refused
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
}

/// A worker process: killed (SIGKILL) when dropped; its stdout lines are collected.
struct Worker {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    fn start(url: &str, name: &str, lease_ms: u64, slots: usize, launch: &str) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "pg_task_worker_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PGT_URL", url)
            .env("PGT_NAME", name)
            .env("PGT_LEASE_MS", lease_ms.to_string())
            .env("PGT_SLOTS", slots.to_string())
            .env("PGT_LAUNCH", launch)
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
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let who = name.to_owned();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                if l.starts_with("WARN") {
                    println!("{who}: {l}");
                }
                s2.lock().unwrap().push(l);
            }
        });
        Worker { child, lines: seen }
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

    /// The last value of counter `name` in its printed stats.
    fn stat(&self, name: &str) -> u64 {
        let key = format!("{name}=");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.starts_with("stats "))
            .and_then(|l| {
                l.split(' ')
                    .find_map(|w| w.strip_prefix(key.as_str()))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

/// Prints what the database holds of run `id` (for a failing test).
fn dump(url: &str, id: &str) {
    println!("state: {:?}", run_state(url, id));
    println!("effects: {:?}", effects(url, id));
    for r in rows(
        url,
        "SELECT run, node, state, token, owner, expires_at - procession_now_ms(), attempts, result, error FROM procession_task_claims ORDER BY node",
    ) {
        let (run, node, state, token): (String, i32, i16, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let (owner, left, attempts): (Option<String>, i64, i32) = (r.get(4), r.get(5), r.get(6));
        let (result, error): (Option<String>, Option<Vec<String>>) = (r.get(7), r.get(8));
        println!("claim {run}/{node} state={state} token={token} owner={owner:?} left={left} attempts={attempts} result={result:?} error={error:?}");
    }
}

/// Workers by name, from the effects of a run.
fn workers_of(fx: &[(i32, i32, String)]) -> std::collections::BTreeSet<String> {
    fx.iter().map(|e| e.2.clone()).collect()
}

// ------------------------------------------------------------------ the tests

// (a) A wide run's tasks are executed by all three workers; no task ran twice; the
// result is the one the same process gives on sled.
#[test]
fn a_wide_runs_tasks_run_on_every_worker() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_wide") else {
        return;
    };
    let _b = Worker::start(&url, "w1", 2000, 3, "");
    let _c = Worker::start(&url, "w2", 2000, 3, "");
    let _a = Worker::start(&url, "w0", 2000, 3, "wide:5:24:300:0");
    let t0 = Instant::now();
    while run_state(&url, "wide") != Some(State::Done) {
        if t0.elapsed() > Duration::from_secs(30) {
            dump(&url, "wide");
            panic!("the run did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let fx = effects(&url, "wide");
    println!("{fx:?}");
    let ran = workers_of(&fx);
    assert_eq!(ran.len(), 3, "every worker ran parts: {fx:?}");
    for i in 1..=24 {
        assert_eq!(
            fx.iter().filter(|e| e.0 == i).count(),
            1,
            "part {i} ran once: {fx:?}"
        );
    }
    let r = report(&url, "wide");
    let total = r.tasks.last().unwrap().result_as::<u64>().unwrap();
    // The same process, on sled in this process.
    let on_sled: u64 = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let rt = Runtime::temporary()
            .register::<Wide>()
            .start()
            .await
            .unwrap();
        let h = rt
            .launch(Launch::new(wide_of(&url, "wide-sled", 5, 24, 0, PLAIN)))
            .await
            .unwrap();
        let r = h.wait().await.unwrap();
        let v = r.tasks.last().unwrap().result_as::<u64>().unwrap();
        rt.shutdown().await.unwrap();
        v
    });
    assert_eq!(total, on_sled);
    assert_eq!(total, expected(5, 24));
    // The task rows of the ended run are gone.
    assert!(rows(&url, "SELECT 1 FROM procession_task_claims").is_empty());
}

// (b) A worker holding task claims is killed mid-task: its tasks run again on the other
// workers within about two lease times, and the run finishes.
#[test]
fn a_killed_workers_tasks_run_again_elsewhere() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_kill") else {
        return;
    };
    let lease = Duration::from_secs(2);
    let mut doomed = Worker::start(&url, "doomed", 2000, 2, "");
    let _b = Worker::start(&url, "w1", 2000, 2, "");
    let _a = Worker::start(&url, "w0", 2000, 2, "kill:3:6:4000:0");
    wait_until(
        "the doomed worker to start parts",
        Duration::from_mins(1),
        || effects(&url, "kill").iter().any(|e| e.2 == "doomed"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    doomed.kill9();
    let lost: Vec<i32> = effects(&url, "kill")
        .iter()
        .filter(|e| e.2 == "doomed")
        .map(|e| e.0)
        .collect();
    wait_until(
        "its parts to run again elsewhere",
        Duration::from_mins(1),
        || {
            let fx = effects(&url, "kill");
            lost.iter()
                .all(|&t| fx.iter().any(|e| e.0 == t && e.2 != "doomed"))
        },
    );
    let took = killed.elapsed();
    println!("the killed worker's parts {lost:?} started again {took:?} after the kill (lease {lease:?})");
    wait_until("the run to end", Duration::from_mins(1), || {
        run_state(&url, "kill") == Some(State::Done)
    });
    let fx = effects(&url, "kill");
    // Only the killed worker's parts ran twice.
    for i in 1..=6 {
        let n = fx.iter().filter(|e| e.0 == i).count();
        assert_eq!(n, if lost.contains(&i) { 2 } else { 1 }, "{fx:?}");
    }
    assert!(took < lease * 10, "took {took:?}");
    let r = report(&url, "kill");
    assert_eq!(
        r.tasks.last().unwrap().result_as::<u64>().unwrap(),
        expected(3, 6)
    );
}

// (c) A worker stopped past its lease: another claims its task; continued, its late
// renewal and finish are refused and its result is never written.
#[test]
fn a_paused_worker_cannot_finish_a_task_claimed_again() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_zombie") else {
        return;
    };
    let zombie = Worker::start(&url, "zombie", 2000, 1, "");
    let _b = Worker::start(&url, "w1", 2000, 1, "");
    let _a = Worker::start(&url, "w0", 2000, 1, "z:4:3:5000:0");
    wait_until("the zombie to start a part", Duration::from_mins(1), || {
        effects(&url, "z").iter().any(|e| e.2 == "zombie")
    });
    let part = effects(&url, "z")
        .iter()
        .find(|e| e.2 == "zombie")
        .unwrap()
        .0;
    zombie.signal("-STOP");
    wait_until(
        "another worker to claim its part",
        Duration::from_mins(1),
        || {
            effects(&url, "z")
                .iter()
                .any(|e| e.0 == part && e.2 != "zombie")
        },
    );
    zombie.signal("-CONT");
    wait_until("the zombie to be refused", Duration::from_secs(30), || {
        zombie.stat("refused") + zombie.stat("fenced") > 0
    });
    wait_until("the run to end", Duration::from_mins(1), || {
        run_state(&url, "z") == Some(State::Done)
    });
    println!(
        "zombie: refused={} fenced={}",
        zombie.stat("refused"),
        zombie.stat("fenced")
    );
    let r = report(&url, "z");
    let results: Vec<String> = r
        .tasks
        .iter()
        .filter_map(|t| t.result_as::<(u64, String)>().ok().map(|v| v.1))
        .collect();
    assert!(
        !results.iter().any(|w| w == "zombie"),
        "a result of the zombie was written: {results:?}"
    );
    assert_eq!(
        r.tasks.last().unwrap().result_as::<u64>().unwrap(),
        expected(4, 3)
    );
}

// (d) A cancel asked on another runtime reaches the parts running on every worker within
// a bounded time.
#[test]
fn a_cancel_reaches_tasks_on_other_workers() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_cancel") else {
        return;
    };
    let _b = Worker::start(&url, "w1", 2000, 2, "");
    let _a = Worker::start(&url, "w0", 2000, 2, "c:1:4:600000:2");
    wait_until("parts to run on w1", Duration::from_mins(1), || {
        effects(&url, "c").iter().any(|e| e.2 == "w1")
    });
    let asked = Instant::now();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let rt = Runtime::connect(url.clone())
            .lease(Duration::from_secs(2))
            .start()
            .await
            .unwrap();
        rt.cancel("c").await.unwrap();
        rt.shutdown().await.unwrap();
    });
    wait_until(
        "the parts on w1 to see the cancel",
        Duration::from_secs(30),
        || {
            !rows(
                &url,
                "SELECT 1 FROM cancels WHERE run = 'c' AND worker = 'w1'",
            )
            .is_empty()
        },
    );
    println!(
        "the cancel reached w1's parts {:?} after it was asked",
        asked.elapsed()
    );
    wait_until("the run to end cancelled", Duration::from_secs(30), || {
        run_state(&url, "c") == Some(State::Cancelled)
    });
}

// (e) A hung task (it blocks its thread: neither its timeout nor a cancel ends it) on a
// live worker is claimed again after its hard deadline, and the run finishes.
#[test]
fn a_hung_task_is_claimed_again_after_its_deadline() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_hung") else {
        return;
    };
    let _b = Worker::start(&url, "w1", 1000, 2, "");
    let _a = Worker::start(&url, "w0", 1000, 2, "h:2:2:100:1");
    wait_until("the run to end", Duration::from_mins(2), || {
        run_state(&url, "h") == Some(State::Done)
    });
    let fx = effects(&url, "h");
    let first = fx.iter().filter(|e| e.0 == 1).collect::<Vec<_>>();
    assert_eq!(first.len(), 2, "part 1 hung once, then ran again: {fx:?}");
    assert_eq!(first[0].1, 1, "{fx:?}");
    let r = report(&url, "h");
    assert_eq!(
        r.tasks.last().unwrap().result_as::<u64>().unwrap(),
        expected(2, 2)
    );
}

// The coordinator is killed while its run's tasks run on other workers: another worker
// takes the run over, adopts the tasks still running on live workers (they are not run
// again) and finds the ends of those that finished; the run finishes with the right sum.
#[test]
fn a_new_coordinator_adopts_running_tasks() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_adopt") else {
        return;
    };
    let _b = Worker::start(&url, "w1", 2000, 2, "");
    let _c = Worker::start(&url, "w2", 2000, 2, "");
    let mut coordinator = Worker::start(&url, "w0", 2000, 1, "adopt:6:6:5000:0");
    wait_until(
        "parts to run on the helpers",
        Duration::from_mins(1),
        || {
            let fx = effects(&url, "adopt");
            fx.iter().any(|e| e.2 == "w1") && fx.iter().any(|e| e.2 == "w2")
        },
    );
    coordinator.kill9();
    let before = effects(&url, "adopt");
    wait_until("the run to end", Duration::from_mins(2), || {
        run_state(&url, "adopt") == Some(State::Done)
    });
    let fx = effects(&url, "adopt");
    println!("{fx:?}");
    for e in before.iter().filter(|e| e.2 != "w0") {
        assert_eq!(
            fx.iter().filter(|f| f.0 == e.0).count(),
            1,
            "part {} ran on a live worker and was adopted, not run again: {fx:?}",
            e.0
        );
    }
    let r = report(&url, "adopt");
    assert_eq!(
        r.tasks.last().unwrap().result_as::<u64>().unwrap(),
        expected(6, 6)
    );
}

// The server restarts (`pg_ctl restart -m immediate`) while a run's tasks are spread
// over two workers: the workers reconnect (calls ride it out, the listener reconnects
// and wakes the pollers) and the run finishes with the right sum.
#[test]
fn a_spread_run_survives_a_server_restart() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(cluster) = pg::own_cluster(pg::Durability::Commits) else {
        return;
    };
    let url = cluster.database("spread_restart").unwrap();
    pg::effect_tables(&url, &["effects", "cancels"]);
    let _b = Worker::start(&url, "w1", 2000, 3, "");
    let _a = Worker::start(&url, "w0", 2000, 3, "rs:8:12:700:0");
    wait_until("parts to run", Duration::from_mins(1), || {
        effects(&url, "rs").len() >= 3
    });
    cluster.restart_immediate().unwrap();
    wait_until("the run to end", Duration::from_mins(2), || {
        run_state(&url, "rs") == Some(State::Done)
    });
    let fx = effects(&url, "rs");
    println!("{fx:?}");
    for i in 1..=12 {
        assert!(
            (1..=2).contains(&fx.iter().filter(|e| e.0 == i).count()),
            "{fx:?}"
        );
    }
    let r = report(&url, "rs");
    assert_eq!(
        r.tasks.last().unwrap().result_as::<u64>().unwrap(),
        expected(8, 12)
    );
}

// The SQL paths of the task queue, on the store itself: a finish with a stale token
// changes nothing; heartbeats renew only current claims and report cancels; re-offers
// keep what a run's tasks did; an ended run's rows go.
#[test]
fn the_task_queue_fences_stale_claims() {
    use procession::store::{PgStore, Store, TaskEnd, TaskOffer};
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_sql") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let token = u64::MAX - 5; // run tokens use every bit
        let offer = |node: u32| TaskOffer {
            run: "r".into(),
            run_token: token,
            node,
            process_type: "wide".into(),
            attempts: 0,
            max_attempts: 2,
            deadline_ms: None,
            pending_deps: 0,
            dependents: Vec::new(),
        };
        q.offer(&[offer(0), offer(1)]).unwrap();
        assert!(q.claim("w1", &["other"], 1_000, 10).unwrap().is_empty());
        let first = q.claim("w1", &["wide"], 1, 1).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].claim.run_token, token);
        assert_eq!(first[0].attempts, 0);
        let stale = first[0].claim.clone();
        std::thread::sleep(Duration::from_millis(50));
        // Expired: claimed again by w2 (with the other, ready task), under a new token
        // and an attempt base above the first claim's attempts.
        let second = q.claim("w2", &["wide"], 60_000, 10).unwrap();
        assert_eq!(second.len(), 2);
        let again = second
            .iter()
            .find(|c| c.claim.node == stale.node)
            .unwrap()
            .clone();
        assert!(again.claim.token > stale.token);
        assert_eq!(again.attempts, 2);
        // w1's heartbeat is refused for its stale claim; w2's renews its own.
        let (_, beat) = q
            .heartbeat_tasks("w1", &[], std::slice::from_ref(&stale), 60_000)
            .unwrap();
        assert_eq!(beat.refused, vec![("r".to_owned(), stale.node)]);
        let (_, beat) = q
            .heartbeat_tasks("w2", &[], std::slice::from_ref(&again.claim), 60_000)
            .unwrap();
        assert!(beat.refused.is_empty());
        // The stale finish changes nothing.
        let end = |v: &str| TaskEnd {
            attempts: 1,
            elapsed_ns: 5,
            outcome: Ok(Arc::from(v)),
        };
        assert_eq!(
            q.finish(&[(stale.clone(), end("\"stale\""))]).unwrap(),
            vec![false]
        );
        assert!(q.results("r", token, &[stale.node]).unwrap().is_empty());
        assert!(q
            .ended(&[("r".into(), token, stale.node)])
            .unwrap()
            .is_empty());
        // The current one is stored (and stored again, unchanged, if repeated).
        // In one statement with the stale one: fenced per task.
        assert_eq!(
            q.finish(&[
                (stale.clone(), end("\"stale\"")),
                (again.claim.clone(), end("\"fresh\""))
            ])
            .unwrap(),
            vec![false, true]
        );
        assert_eq!(
            q.finish(&[(again.claim.clone(), end("\"fresh\""))])
                .unwrap(),
            vec![true]
        );
        let got = q.results("r", token, &[stale.node]).unwrap();
        assert_eq!(got, vec![(stale.node, Arc::from("\"fresh\""))]);
        let ended = q.ended(&[("r".into(), token, stale.node)]).unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].owner.as_deref(), Some("w2"));
        // A re-offer of the same run keeps the finished row and the running one.
        q.offer(&[offer(0), offer(1)]).unwrap();
        assert_eq!(q.results("r", token, &[stale.node]).unwrap().len(), 1);
        assert!(q.claim("w3", &["wide"], 60_000, 10).unwrap().is_empty());
        // A cancel reaches the running claim at its next heartbeat.
        let other = second
            .iter()
            .find(|c| c.claim.node != stale.node)
            .unwrap()
            .claim
            .clone();
        q.cancel("r", token).unwrap();
        let (_, beat) = q
            .heartbeat_tasks("w2", &[], std::slice::from_ref(&other), 60_000)
            .unwrap();
        assert_eq!(beat.cancel, vec![("r".to_owned(), other.node)]);
        // A failure is stored with its messages.
        let failed = TaskEnd {
            attempts: 3,
            elapsed_ns: 1,
            outcome: Err(vec!["outer".into(), "inner".into()]),
        };
        assert_eq!(
            q.finish(&[(other.clone(), failed.clone())]).unwrap(),
            vec![true]
        );
        let ended = q.ended(&[("r".into(), token, other.node)]).unwrap();
        assert_eq!(ended[0].end, failed);
        // A later run of the record replaces the rows; an ended run's rows go.
        q.offer(&[TaskOffer {
            run_token: 7,
            ..offer(0)
        }])
        .unwrap();
        assert!(q.results("r", token, &[0, 1]).unwrap().len() <= 1);
        assert_eq!(q.claim("w3", &["wide"], 60_000, 10).unwrap().len(), 1);
        q.clear("r", 7).unwrap();
        q.clear("r", token).unwrap();
        assert!(q.ended(&[("r".into(), 7, 0)]).unwrap().is_empty());
    })
    .join()
    .unwrap();
}
