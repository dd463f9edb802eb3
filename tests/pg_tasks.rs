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
use pg::{effects_of as effects, rows, run_state, wait_until, Warnings};

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
/// killed, or until it reads `shutdown` on its stdin: then it shuts down cleanly and
/// prints `stopped`.
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
            let (quit_tx, mut quit) = tokio::sync::mpsc::unbounded_channel::<()>();
            std::thread::spawn(move || {
                for line in std::io::stdin().lines().map_while(Result::ok) {
                    if line.trim() == "shutdown" {
                        let _ = quit_tx.send(());
                    }
                }
            });
            loop {
                let s = rt.task_stats();
                println!(
                    "stats claimed={} finished={} fenced={} refused={}",
                    s.claimed, s.finished, s.fenced, s.refused
                );
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    Some(()) = quit.recv() => {
                        rt.shutdown().await.expect("a clean shutdown");
                        println!("stopped");
                        return;
                    }
                }
            }
        });
}

/// A worker process: killed (SIGKILL) when dropped; its stdout lines are collected.
struct Worker {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    stdin: Option<std::process::ChildStdin>,
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
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("worker starts");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        for line in lines.by_ref() {
            let line = line.unwrap_or_default();
            if line.contains("ready worker-") {
                break;
            }
        }
        let seen = pg::collect_lines(lines, Some(name.to_owned()));
        Worker {
            child,
            lines: seen,
            stdin,
        }
    }

    /// Asks the worker to shut down cleanly and waits until it exited.
    fn shutdown(&mut self) {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("the worker's stdin");
        stdin.write_all(b"shutdown\n").unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the worker exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "the worker did not shut down");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            self.lines.lock().unwrap().iter().any(|l| l == "stopped"),
            "the worker shut down cleanly"
        );
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
        pg::last_stat(&self.lines, name)
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

// A worker that shuts down cleanly while it runs a long spread task gives up its claim
// after its drain: another worker starts the task at once, not once the claim's lease
// (a minute here) expired.
#[test]
fn a_clean_shutdown_gives_up_its_claims() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_release") else {
        return;
    };
    let lease = Duration::from_mins(1);
    let lease_ms = u64::try_from(lease.as_millis()).unwrap();
    // Two 15 s parts: the coordinator runs one, the leaving worker the other.
    let _a = Worker::start(&url, "w0", lease_ms, 1, "rel:2:2:15000:0");
    let mut leaving = Worker::start(&url, "leaving", lease_ms, 1, "");
    wait_until(
        "the leaving worker to start a part",
        Duration::from_mins(1),
        || effects(&url, "rel").iter().any(|e| e.2 == "leaving"),
    );
    let part = effects(&url, "rel")
        .iter()
        .find(|e| e.2 == "leaving")
        .unwrap()
        .0;
    // Idle until the part is given up (every other task is claimed).
    let _b = Worker::start(&url, "w1", lease_ms, 1, "");
    let asked = Instant::now();
    leaving.shutdown();
    wait_until(
        "the part given up to start on another worker well before its lease expired",
        lease * 2 / 3,
        || {
            effects(&url, "rel")
                .iter()
                .any(|e| e.0 == part && e.2 == "w1")
        },
    );
    println!(
        "part {part} started again on w1 {:?} after the shutdown was asked (lease {lease:?})",
        asked.elapsed()
    );
    let fx = effects(&url, "rel");
    let again: Vec<_> = fx.iter().filter(|e| e.0 == part).collect();
    assert_eq!(again.len(), 2, "{fx:?}");
    assert!(again[1].1 > again[0].1, "attempt numbers grow: {fx:?}");
}

// ------------------------------------------- spread tasks as local ones (in one process)

/// Gates the `gated` tasks of the in-process tests: one per test.
static GATES: [std::sync::atomic::AtomicBool; 4] =
    [const { std::sync::atomic::AtomicBool::new(false) }; 4];

fn open_gate(g: u32) {
    GATES[g as usize].store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Reports progress and a log entry, waits for its gate, logs again and returns what
/// it computed here.
#[task]
async fn gated(ctx: &Ctx, gate: u32) -> String {
    ctx.progress(50, "half way");
    ctx.log(procession::Level::Info, "hello from a spread task");
    while !GATES[gate as usize].load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.log(procession::Level::Warning, "about to end");
    "computed here".to_owned()
}

#[task]
#[allow(clippy::needless_pass_by_value)] // task inputs are owned
fn echo(first: String) -> String {
    first
}

/// A gated task, and a task that returns what the gated one returned.
#[process]
fn chain(p: &mut Builder, gate: u32) {
    let g = p.task(Gated::new(gate));
    p.task(Echo::new(g));
}

/// What `around_task` hooks saw: (hook, process, run, task, node, attempt).
type Seen = Arc<Mutex<Vec<(&'static str, String, String, &'static str, String, u32)>>>;

struct Recorder(&'static str, Seen);

impl procession::Hooks for Recorder {
    fn around_task<'a>(
        &'a self,
        t: &'a procession::TaskInfo,
        attempt: procession::Attempt<'a>,
    ) -> procession::Attempt<'a> {
        self.1.lock().unwrap().push((
            self.0,
            t.process.clone(),
            t.run_id.clone(),
            t.task,
            t.node_id.clone(),
            t.attempt,
        ));
        attempt
    }
}

/// A runtime on `url` with task spreading on (its tasks run through the task queue,
/// claimed by itself) and lease `lease`.
async fn spread_runtime(url: &str, lease: Duration, seen: &Seen) -> Runtime {
    Runtime::connect(url.to_owned())
        .lease(lease)
        .spread_tasks(true)
        .hooks(Recorder("first", seen.clone()))
        .hooks(Recorder("second", seen.clone()))
        .register::<Chain>()
        .start()
        .await
        .unwrap()
}

/// The task row of node `node` of run `id` (`None` until the run's rows are written).
fn task_row(
    rt: &Runtime,
    tokio: &tokio::runtime::Runtime,
    id: &str,
    node: u32,
) -> Option<procession::store::TaskRow> {
    tokio
        .block_on(rt.task_rows(id))
        .unwrap()
        .into_iter()
        .find(|(n, _)| *n == node)
        .map(|r| r.1)
}

// A spread task runs inside the worker's hooks, as a local one (same order, same
// arguments); while it runs, its coordinator's task row shows it running with its
// attempt, progress and log, and its log is complete once it ended.
#[test]
fn a_spread_task_has_hooks_and_reports_to_its_row() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_hooks") else {
        return;
    };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let seen = Seen::default();
    let rt = tokio.block_on(spread_runtime(&url, Duration::from_secs(3), &seen));
    let h = tokio
        .block_on(rt.launch(Launch::new(Chain { gate: 0 }).id("hooked")))
        .unwrap();
    wait_until(
        "the task row to show the task running",
        Duration::from_mins(1),
        || {
            let Some(row) = task_row(&rt, &tokio, "hooked", 0) else {
                return false;
            };
            row.state == State::Running
                && row.attempts == 1
                && row.progress.percent == Some(50.0)
                && row.progress.message.as_deref() == Some("half way")
                && row
                    .log
                    .iter()
                    .any(|e| e.message == "hello from a spread task")
        },
    );
    open_gate(0);
    let report = tokio.block_on(h.wait()).unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(
        report.tasks.last().unwrap().result_as::<String>().unwrap(),
        "computed here"
    );
    assert!(rt.task_stats().finished >= 2, "{:?}", rt.task_stats());
    let row = task_row(&rt, &tokio, "hooked", 0).unwrap();
    assert_eq!(row.state, State::Done);
    let log: Vec<&str> = row.log.iter().map(|e| e.message.as_str()).collect();
    // As a local task's: its progress message is logged too.
    assert_eq!(
        log,
        ["half way", "hello from a spread task", "about to end"],
        "{row:?}"
    );
    tokio.block_on(rt.shutdown()).unwrap();
    // The hooks saw what they see of the same run on a local runtime, in the same order.
    let spread = seen.lock().unwrap().clone();
    let local = Seen::default();
    tokio.block_on(async {
        let rt = Runtime::in_memory()
            .hooks(Recorder("first", local.clone()))
            .hooks(Recorder("second", local.clone()))
            .register::<Chain>()
            .start()
            .await
            .unwrap();
        let h = rt
            .launch(Launch::new(Chain { gate: 0 }).id("hooked"))
            .await
            .unwrap();
        assert!(h.wait().await.unwrap().is_success());
        rt.shutdown().await.unwrap();
    });
    let local = local.lock().unwrap().clone();
    assert_eq!(local.len(), 4, "{local:?}");
    assert_eq!(spread, local);
}

// Commit 3ac2b2f: a result computed here whose end was fenced out (another worker
// finished the task first) never feeds a dependent claimed here: the dependent reads
// the stored result.
#[test]
fn a_fenced_out_result_never_feeds_a_dependent() {
    use procession::store::{PgStore, Store, TaskClaim, TaskEnd};
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_fenced_input") else {
        return;
    };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let seen = Seen::default();
    // A long lease: no heartbeat stops the gated task before it computed its result.
    let rt = tokio.block_on(spread_runtime(&url, Duration::from_mins(1), &seen));
    let h = tokio
        .block_on(rt.launch(Launch::new(Chain { gate: 1 }).id("fenced")))
        .unwrap();
    let me = rt.worker_id().to_owned();
    wait_until(
        "the gated task to be claimed here",
        Duration::from_mins(1),
        || {
            rows(
                &url,
                &format!(
                    "SELECT 1 FROM procession_task_claims
                 WHERE run = 'fenced' AND node = 0 AND state = 1 AND owner = '{me}'"
                ),
            )
            .len()
                == 1
        },
    );
    // Another "worker" takes the claim over and stores its result first.
    let stolen = rows(
        &url,
        "UPDATE procession_task_claims SET token = token + 1, owner = 'thief'
         WHERE run = 'fenced' AND node = 0 RETURNING token, run_token",
    );
    let (token, run_token): (i64, i64) = (stolen[0].get(0), stolen[0].get(1));
    let url2 = url.clone();
    let stored = std::thread::spawn(move || {
        let store = PgStore::connect(&url2).unwrap();
        let q = store.task_queue().unwrap();
        q.finish(&[(
            TaskClaim {
                run: "fenced".into(),
                run_token: u64::from_ne_bytes(run_token.to_ne_bytes()),
                node: 0,
                token: u64::try_from(token).unwrap(),
            },
            TaskEnd {
                attempts: 1,
                elapsed_ns: 1,
                outcome: Ok(Arc::from("\"stored elsewhere\"")),
            },
        )])
        .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(stored, vec![true]);
    // The task here ends now: its end is fenced out; its dependent is claimed here.
    open_gate(1);
    let report = tokio.block_on(h.wait()).unwrap();
    assert!(report.is_success(), "{report:?}");
    for t in &report.tasks {
        assert_eq!(
            t.result_as::<String>().unwrap(),
            "stored elsewhere",
            "{report:?}"
        );
    }
    tokio.block_on(rt.shutdown()).unwrap();
}

// A worker whose row was removed (as dead, by another worker) while it holds task
// claims registers again at its next heartbeat, the one that renews its claims.
#[test]
fn a_forgotten_worker_registers_again_through_its_task_heartbeat() {
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_forgotten") else {
        return;
    };
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let seen = Seen::default();
    let rt = tokio.block_on(spread_runtime(&url, Duration::from_millis(900), &seen));
    let h = tokio
        .block_on(rt.launch(Launch::new(Chain { gate: 2 }).id("forgotten")))
        .unwrap();
    let me = rt.worker_id().to_owned();
    let claimed = format!(
        "SELECT 1 FROM procession_task_claims
         WHERE run = 'forgotten' AND node = 0 AND state = 1 AND owner = '{me}'"
    );
    wait_until(
        "the gated task to be claimed here",
        Duration::from_mins(1),
        || rows(&url, &claimed).len() == 1,
    );
    let registered = format!("SELECT 1 FROM procession_workers WHERE id = '{me}'");
    assert_eq!(rows(&url, &registered).len(), 1);
    rows(
        &url,
        &format!("DELETE FROM procession_workers WHERE id = '{me}' RETURNING 1"),
    );
    wait_until(
        "the worker to register again",
        Duration::from_mins(1),
        || rows(&url, &registered).len() == 1,
    );
    // Its claim was renewed all along: still its own.
    assert_eq!(rows(&url, &claimed).len(), 1);
    open_gate(2);
    let report = tokio.block_on(h.wait()).unwrap();
    assert!(report.is_success(), "{report:?}");
    tokio.block_on(rt.shutdown()).unwrap();
}

// A coordinator's poll of changes reads what was written since its previous poll: an
// end, a report and a cancel show up, a task that did not change does not, another run
// token's rows do not; a claim of ready tasks only leaves an expired claim to the full
// claim.
#[test]
fn the_task_queue_polls_changes_and_claims_ready_tasks() {
    use procession::store::{ClaimReport, PgStore, Store, TaskEnd, TaskOffer};
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_changes_sql") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let offer = |node: u32| TaskOffer {
            run: "r".into(),
            run_token: 3,
            node,
            process_type: "wide".into(),
            attempts: 0,
            max_attempts: 1,
            deadline_ms: None,
            pending_deps: 0,
            dependents: Vec::new(),
        };
        q.offer(&[offer(0), offer(1), offer(2), offer(3)]).unwrap();
        let runs = [("r".to_owned(), 3u64)];
        let first = q.changes(&runs, 0).unwrap();
        assert!(first.news.is_empty(), "{first:?}");
        assert!(first.since > 0);
        // Claimed until 1 ms from now: expired at once. A ready-only claim leaves it.
        let expired = q.claim_ready("w1", &["wide"], 1, 1).unwrap().remove(0);
        std::thread::sleep(Duration::from_millis(50));
        let ready = q.claim_ready("w2", &["wide"], 60_000, 2).unwrap();
        assert_eq!(ready.len(), 2);
        assert!(ready.iter().all(|c| c.claim.node != expired.claim.node));
        assert_eq!(q.claim_ready("w2", &["wide"], 60_000, 10).unwrap().len(), 1);
        let taken = q.claim("w2", &["wide"], 60_000, 10).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].claim.node, expired.claim.node);
        assert!(taken[0].claim.token > expired.claim.token);
        // Claims are no news.
        let claimed = q.changes(&runs, first.since).unwrap();
        assert!(claimed.news.is_empty(), "{claimed:?}");
        assert!(claimed.since >= first.since);
        // An end and a report: seen by the next poll from the previous one.
        let (done, busy) = (&ready[0].claim, &ready[1].claim);
        let end = TaskEnd {
            attempts: 1,
            elapsed_ns: 1,
            outcome: Ok(Arc::from("7")),
        };
        assert_eq!(
            q.finish(&[(done.clone(), end.clone())]).unwrap(),
            vec![true]
        );
        let report = ClaimReport {
            attempt: 1,
            progress: procession::Progress {
                percent: Some(10.0),
                message: None,
            },
            log: None,
            logged: 0,
        };
        q.report("w2", &[(busy.clone(), report.clone())]).unwrap();
        let news = q.changes(&runs, claimed.since).unwrap();
        let of = |node: u32| news.news.iter().find(|n| n.node == node);
        assert_eq!(of(done.node).and_then(|n| n.end.clone()), Some(end));
        let b = of(busy.node).expect("the report is news");
        assert!(b.end.is_none());
        assert_eq!((b.token, b.seq, &b.report), (busy.token, 1, &report));
        assert!(of(taken[0].claim.node).is_none(), "{news:?}");
        // Another run token of the record: nothing.
        assert!(q
            .changes(&[("r".to_owned(), 4)], 0)
            .unwrap()
            .news
            .is_empty());
        // A cancel ends the task no worker holds (none here) and marks the others;
        // the next poll sees what it wrote.
        q.offer(&[offer(4)]).unwrap();
        let before = q.changes(&runs, news.since).unwrap();
        q.cancel("r", 3).unwrap();
        let after = q.changes(&runs, before.since).unwrap();
        let four = after.news.iter().find(|n| n.node == 4).expect("news");
        assert!(four.end.as_ref().is_some_and(|e| e.outcome.is_err()));
        assert!(after.since >= before.since);
    })
    .join()
    .unwrap();
}

// The SQL paths of reports, watches and releases: a report or a release of a stale
// claim changes nothing; a coordinator's watch sees a claim, each report once, and the
// end; a released task is claimable at once, its attempt numbers kept growing.
#[test]
fn the_task_queue_reports_watches_and_releases_current_claims() {
    use procession::store::{ClaimReport, PgStore, Store, TaskEnd, TaskOffer, WatchedTask};
    if std::env::var("PGT_URL").is_ok() {
        return;
    }
    let Some(url) = database("spread_report_sql") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let offer = |node: u32| TaskOffer {
            run: "r".into(),
            run_token: 3,
            node,
            process_type: "wide".into(),
            attempts: 0,
            max_attempts: 2,
            deadline_ms: None,
            pending_deps: 0,
            dependents: Vec::new(),
        };
        q.offer(&[offer(0)]).unwrap();
        let watched = |token: u64, seq: u64| WatchedTask {
            run: "r".into(),
            run_token: 3,
            node: 0,
            token,
            seq,
        };
        // Offered only: nothing to see.
        assert!(q.watch(&[watched(0, 0)]).unwrap().is_empty());
        let first = q.claim("w1", &["wide"], 60_000, 1).unwrap().remove(0);
        // Claimed, nothing reported: no news.
        assert!(q.watch(&[watched(0, 0)]).unwrap().is_empty());
        // A report: seen once, with its log.
        let entry = |m: &str| procession::LogEntry {
            timestamp: 1,
            level: procession::Level::Info,
            message: m.into(),
            data: None,
        };
        let report = ClaimReport {
            attempt: 2,
            progress: procession::Progress {
                percent: Some(40.0),
                message: Some("busy".into()),
            },
            log: Some(vec![entry("one"), entry("two")]),
            logged: 3,
        };
        q.report("w1", &[(first.claim.clone(), report.clone())])
            .unwrap();
        // Another owner's report, or a stale token's, writes nothing.
        q.report(
            "w2",
            &[(
                first.claim.clone(),
                ClaimReport {
                    attempt: 9,
                    ..report.clone()
                },
            )],
        )
        .unwrap();
        let news = q.watch(&[watched(0, 0)]).unwrap();
        assert_eq!(news.len(), 1);
        assert_eq!((news[0].token, news[0].seq), (first.claim.token, 1));
        assert_eq!(news[0].owner.as_deref(), Some("w1"));
        assert!(news[0].end.is_none());
        assert_eq!(news[0].report, report);
        assert!(q
            .watch(&[watched(first.claim.token, 1)])
            .unwrap()
            .is_empty());
        // A report that leaves the log out keeps it.
        q.report(
            "w1",
            &[(
                first.claim.clone(),
                ClaimReport {
                    log: None,
                    ..report.clone()
                },
            )],
        )
        .unwrap();
        let news = q.watch(&[watched(first.claim.token, 1)]).unwrap();
        assert_eq!(news[0].report.log, report.log);
        // Released by another owner: nothing; by its owner: claimable at once, and a
        // late finish of the released claim is fenced out.
        assert_eq!(
            q.release("w2", std::slice::from_ref(&first.claim)).unwrap(),
            0
        );
        assert_eq!(
            q.release("w1", std::slice::from_ref(&first.claim)).unwrap(),
            1
        );
        assert_eq!(
            q.release("w1", std::slice::from_ref(&first.claim)).unwrap(),
            0
        );
        let end = TaskEnd {
            attempts: 2,
            elapsed_ns: 1,
            outcome: Ok(Arc::from("1")),
        };
        assert_eq!(
            q.finish(&[(first.claim.clone(), end.clone())]).unwrap(),
            vec![false]
        );
        let second = q.claim("w2", &["wide"], 60_000, 1).unwrap().remove(0);
        assert!(second.claim.token > first.claim.token);
        assert_eq!(second.attempts, 2, "attempt numbers never repeat");
        // The new claim is news once reported: its report starts anew.
        assert!(q
            .watch(&[watched(first.claim.token, 2)])
            .unwrap()
            .is_empty());
        q.report(
            "w2",
            &[(
                second.claim.clone(),
                ClaimReport {
                    attempt: 3,
                    ..ClaimReport::default()
                },
            )],
        )
        .unwrap();
        let news = q.watch(&[watched(first.claim.token, 2)]).unwrap();
        assert_eq!((news[0].token, news[0].seq), (second.claim.token, 1));
        assert_eq!(news[0].owner.as_deref(), Some("w2"));
        assert_eq!(news[0].report.attempt, 3);
        assert_eq!(news[0].report.log, None);
        assert_eq!(news[0].report.logged, 0);
        // The end is news whatever was seen.
        assert_eq!(
            q.finish(&[(second.claim.clone(), end.clone())]).unwrap(),
            vec![true]
        );
        let news = q.watch(&[watched(second.claim.token, 0)]).unwrap();
        assert_eq!(news[0].end, Some(end));
        // A released claim asked to cancel ends cancelled (no owner, no result).
        q.offer(&[offer(1)]).unwrap();
        let third = q.claim("w3", &["wide"], 60_000, 1).unwrap().remove(0);
        q.cancel("r", 3).unwrap();
        assert_eq!(
            q.release("w3", std::slice::from_ref(&third.claim)).unwrap(),
            1
        );
        let news = q
            .watch(&[WatchedTask {
                node: 1,
                ..watched(third.claim.token, 0)
            }])
            .unwrap();
        assert_eq!(news[0].owner, None);
        assert_eq!(
            news[0].end.as_ref().map(|e| e.outcome.clone()),
            Some(Err(vec![]))
        );
    })
    .join()
    .unwrap();
}
