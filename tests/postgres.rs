//! The PostgreSQL store under a real runtime (issue 14, phase 1): the same `#[process]`
//! code on PostgreSQL and on sled gives the same report, and a worker killed with
//! SIGKILL mid-run is resumed by the next one without running finished tasks again.
//!
//! The server is a throw-away cluster started by `pg/mod.rs` (or `PROCESSION_PG_URL`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use procession::prelude::*;
use procession::{Child, ChildError, EventKind, RunReport, State};

mod pg;

// ----------------------------------------------------- one process, sled vs PostgreSQL

static CALLS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn call(key: &str) -> u32 {
    let mut g = CALLS.lock().unwrap();
    let n = g
        .get_or_insert_with(HashMap::new)
        .entry(key.into())
        .or_insert(0);
    *n += 1;
    *n
}

/// Fails twice, then succeeds (per backend: `tag`).
#[task(retries = 2)]
fn flaky(tag: String) -> Result<u32, std::io::Error> {
    if call(&format!("flaky-{tag}")) < 3 {
        return Err(std::io::Error::other("not yet"));
    }
    Ok(7)
}

#[task(retries = 1)]
fn broken() -> Result<u32, std::io::Error> {
    Err(std::io::Error::other("always broken"))
}

#[task]
fn plus(x: u32, y: u32) -> u32 {
    x + y
}

#[task]
fn double(n: u32) -> u32 {
    n * 2
}

#[process]
fn leaf(p: &mut Builder, n: u32) {
    p.task(Double::new(n));
}

#[task]
async fn with_child(ctx: &Ctx, n: u32) -> Result<u32, ChildError> {
    let out = ctx.run_child(Child::new(Leaf { n })).await?;
    Ok(out
        .report
        .and_then(|r| r.result::<u32>("double").ok())
        .unwrap_or(0))
}

#[process]
fn mixed(p: &mut Builder, tag: String) {
    let a = p.task(Flaky::new(tag));
    let b = p.task(Broken::new());
    p.task(Plus::new(a, b));
    let c = p.task(WithChild::new(5));
    p.task(Plus::new(a, c));
}

type Shape = (
    String,
    Vec<(String, String, u32, Option<String>, Option<String>)>,
);

/// What must not depend on the store: statuses, attempts, results, errors.
fn shape(r: &RunReport) -> Shape {
    (
        format!("{:?}", r.status),
        r.tasks
            .iter()
            .map(|t| {
                (
                    t.id.to_string(),
                    format!("{:?}", t.status),
                    t.attempts,
                    t.result.as_ref().map(|j| j.get().to_owned()),
                    t.error.as_ref().map(|e| e.message.clone()),
                )
            })
            .collect(),
    )
}

async fn run_mixed(rt: Runtime, tag: &str) -> (Shape, Vec<String>) {
    let report = rt
        .run(Launch::new(Mixed { tag: tag.into() }).id("mixed-run"))
        .await
        .unwrap();
    let children: Vec<String> = rt
        .list(procession::ListFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.parent.as_deref() == Some("mixed-run") && r.kind == procession::RecordKind::Process
        })
        .map(|r| format!("{} {:?}", r.process_type, r.state()))
        .collect();
    rt.shutdown().await.unwrap();
    (shape(&report), children)
}

// Issue 14 item 1: retries, a failing task, a skipped dependent and a child run give the
// same report on PostgreSQL as on sled, and the records are where they are on sled.
#[tokio::test]
async fn same_process_same_report_as_on_sled() {
    let Some(url) = pg::database("same_report") else {
        return;
    };
    let on_sled = Runtime::temporary()
        .register::<Mixed>()
        .register::<Leaf>()
        .start()
        .await
        .unwrap();
    let sled = run_mixed(on_sled, "sled").await;
    let on_pg = Runtime::connect(url.clone())
        .register::<Mixed>()
        .register::<Leaf>()
        .start()
        .await
        .unwrap();
    let pg = run_mixed(on_pg, "pg").await;
    assert_eq!(pg, sled);
    let (status, tasks) = &pg.0;
    assert_eq!(status, "Failed");
    assert!(
        tasks
            .iter()
            .any(|t| t.2 == 3 && t.3.as_deref() == Some("7")),
        "{tasks:?}"
    );
    assert!(
        tasks.iter().any(|t| t.3.as_deref() == Some("17")),
        "{tasks:?}"
    );
    assert!(tasks.iter().any(|t| t.1 == "Skipped"), "{tasks:?}");
    // The run and its child are in the database for the next worker.
    let again = Runtime::connect(url)
        .register::<Mixed>()
        .register::<Leaf>()
        .start()
        .await
        .unwrap();
    let rec = again.get("mixed-run").await.unwrap().unwrap();
    assert_eq!(rec.state(), State::Failed);
    let report = again.report("mixed-run").await.unwrap();
    assert_eq!(shape(&report), pg.0);
    again.shutdown().await.unwrap();
}

// --------------------------------------------------------- kill -9 and resume

const RUN_ID: &str = "restart-run";
const STEPS: u32 = 6;
/// The step that waits for the test's go-ahead: the worker is killed while it waits.
const GATE: u32 = 3;

fn append(path: &str, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("effects file");
    f.write_all(line.as_bytes()).expect("append");
}

#[task]
async fn step(ctx: &Ctx, dir: String, i: u32, prev: u64) -> u64 {
    append(
        &format!("{dir}/effects.log"),
        &format!("effect {} {}\n", ctx.node_id(), ctx.attempt()),
    );
    if i == GATE {
        while !Path::new(&dir).join("go").exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    prev * 3 + u64::from(i)
}

#[task]
#[allow(clippy::needless_pass_by_value)] // task inputs are owned: they are stored between tasks
fn first(ctx: &Ctx, dir: String) -> u64 {
    append(
        &format!("{dir}/effects.log"),
        &format!("effect {} {}\n", ctx.node_id(), ctx.attempt()),
    );
    1
}

#[process]
fn chain(p: &mut Builder, dir: String) {
    let mut prev = p.task(First::new(dir.clone()));
    for i in 0..STEPS {
        prev = p.task(Step::new(dir.clone(), i, prev));
    }
}

fn expected() -> u64 {
    (0..STEPS).fold(1u64, |v, i| v * 3 + u64::from(i))
}

/// The worker role of [`a_killed_worker_is_resumed_without_rerunning_finished_tasks`]:
/// runs only when the test binary is re-executed with `PROCESSION_PG_WORKER` set.
#[test]
fn pg_restart_worker_entry() {
    let (Ok(url), Ok(dir)) = (
        std::env::var("PROCESSION_PG_WORKER"),
        std::env::var("PROCESSION_PG_WORKER_DIR"),
    ) else {
        return;
    };
    let effects = format!("{dir}/effects.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // The killed worker's lease expires within 2 s; then this one takes its run over.
        let rt = Runtime::connect(url)
            .lease(Duration::from_secs(2))
            .register::<Chain>()
            .start()
            .await
            .expect("the database opens");
        let mut events = rt.subscribe();
        let log = effects.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if let (EventKind::State { state: State::Done }, Some(node)) =
                    (&e.kind, e.id.strip_prefix("restart-run/"))
                {
                    append(&log, &format!("reported {node}\n"));
                }
            }
        });
        if rt.get(RUN_ID).await.unwrap().is_none() {
            drop(
                rt.launch(Launch::new(Chain { dir: dir.clone() }).id(RUN_ID))
                    .await
                    .expect("launch"),
            );
        }
        println!("ready");
        let report = rt.wait(RUN_ID).await.expect("the run ends");
        let value: u64 = report.tasks.last().unwrap().result_as().unwrap();
        std::fs::write(format!("{dir}/done"), value.to_string()).unwrap();
        rt.shutdown().await.unwrap();
    });
}

/// A worker process, killed if the test ends (or fails) before it exits.
struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(url: &str, dir: &Path) -> Worker {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "pg_restart_worker_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROCESSION_PG_WORKER", url)
        .env("PROCESSION_PG_WORKER_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("worker starts");
    // Wait for its "ready" (the run is launched or resumed).
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        if line.unwrap_or_default().contains("ready") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Worker(child)
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_mins(2);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Issue 14 items 1 and 5 (one worker): a worker killed with SIGKILL mid-run leaves the
// run in the database; the next worker resumes it and finishes it with the same result,
// and no task whose end had been reported runs again.
#[test]
fn a_killed_worker_is_resumed_without_rerunning_finished_tasks() {
    if std::env::var("PROCESSION_PG_WORKER").is_ok() {
        return;
    }
    let Some(url) = pg::database("restart") else {
        return;
    };
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "procession-pg-restart-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut first = spawn_worker(&url, &dir);
    // Killed while the gate step runs, after the steps before it were reported done.
    wait_for("the steps before the gate to be reported", || {
        read(&dir, "effects.log").matches("reported").count() >= (GATE + 1) as usize
            && read(&dir, "effects.log")
                .lines()
                .filter(|l| l.starts_with("effect"))
                .count()
                > (GATE + 1) as usize
    });
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    let before = read(&dir, "effects.log");
    std::fs::write(dir.join("go"), "").unwrap();
    let mut second = spawn_worker(&url, &dir);
    wait_for("the resumed run to end", || dir.join("done").exists());
    second.0.wait().unwrap();
    assert_eq!(read(&dir, "done"), expected().to_string());
    let log = read(&dir, "effects.log");
    let reported: Vec<&str> = before
        .lines()
        .filter_map(|l| l.strip_prefix("reported "))
        .collect();
    assert!(reported.len() > GATE as usize, "{before}");
    for node in &reported {
        let runs = log
            .lines()
            .filter(|l| l.strip_prefix("effect ").and_then(|r| r.split(' ').next()) == Some(node))
            .count();
        assert_eq!(
            runs, 1,
            "task {node} reported done before the kill ran {runs} times:\n{log}"
        );
    }
    // Every task ran, the one interrupted by the kill twice.
    let effects = log.lines().filter(|l| l.starts_with("effect")).count();
    assert_eq!(effects, STEPS as usize + 2, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
