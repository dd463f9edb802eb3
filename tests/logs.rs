//! Per-task and per-run log files (`procession::logs`, cargo feature `logs`): the
//! processes seed keeps one log file per task or one shared run log ("One log file per
//! task — share a single log across the whole run, or keep them separate", processes
//! README); no numbered PROC scenario covers the files themselves (their tests use
//! Python's `logging`), so these tests state the contract of the layer.
//!
//! The subscriber is installed per test with `set_default` on a current-thread runtime:
//! the driver and the workers of a run are tasks of that thread.

#![allow(clippy::unused_async)]

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use common::rt;
use procession::logs::{file_name, task_path, TaskLogLayer};
use procession::prelude::*;
use procession::{Launch, Level};
use tracing_subscriber::layer::SubscriberExt as _;

/// A fresh, empty directory for one test.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("procession-logs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `2026-12-02T05:00:00.123Z`: the line starts with a UTC time in milliseconds.
fn starts_with_time(line: &str) -> bool {
    let t = line.split(' ').next().unwrap_or("");
    t.len() == 24 && t.ends_with('Z') && chrono_like(t)
}

fn chrono_like(t: &str) -> bool {
    let b = t.as_bytes();
    b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'.'
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2, backoff = "fixed(1ms)")]
async fn flaky(ctx: &Ctx) -> Result<u32, io::Error> {
    let n = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    ctx.log(Level::Info, format!("call {n} begins"));
    if n < 3 {
        return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
    }
    Ok(n)
}

#[task]
async fn steady(ctx: &Ctx) -> u32 {
    ctx.log(Level::Warning, "multi\nline");
    7
}

#[process]
fn logged(p: &mut Builder) {
    p.task(Flaky::new());
    p.task(Steady::new());
}

// A run with retries writes every attempt's lines into its task's own file: the
// `ctx.log` entries and the retry events, each with time, attempt, task and level.
#[tokio::test(flavor = "current_thread")]
async fn per_task_files_hold_each_attempt() {
    let dir = fresh_dir("per-task");
    let logs = TaskLogLayer::per_task(&dir);
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(logs.clone()));
    let report = rt().await.run(Logged {}).await.unwrap();
    assert!(report.is_success(), "{report:?}");

    let files = logs.files(&report);
    assert_eq!(files.len(), 2);
    let flaky_file = logs.file_of(&report.run_id, "flaky");
    assert_eq!(
        flaky_file,
        dir.join(file_name(&report.run_id)).join("flaky.log")
    );
    assert!(files.contains(&("flaky".to_owned(), flaky_file.clone())));

    let text = read(&flaky_file);
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines {
        assert!(starts_with_time(l), "{l}");
        assert!(l.contains(" task=flaky node=flaky "), "{l}");
    }
    let begins: Vec<&&str> = lines.iter().filter(|l| l.contains("begins")).collect();
    assert_eq!(begins.len(), 3, "{text}");
    for (k, l) in begins.iter().enumerate() {
        let n = k + 1;
        assert!(l.contains(&format!(" attempt={n} ")), "{l}");
        assert!(l.ends_with(&format!("INFO call {n} begins")), "{l}");
    }
    let retries: Vec<&&str> = lines.iter().filter(|l| l.contains(" retrying")).collect();
    assert_eq!(retries.len(), 2, "{text}");
    assert!(retries[0].contains(" attempt=1 ") && retries[0].contains("error=refused"));
    assert!(retries[1].contains(" attempt=2 "));

    // The other task's file has its own line only; a message's newline stays on its line.
    let steady = read(&logs.file_of(&report.run_id, "steady"));
    assert_eq!(steady.lines().count(), 1, "{steady}");
    assert!(
        steady.contains(" attempt=1 task=steady node=steady WARN multi\\nline"),
        "{steady}"
    );
    assert_eq!(files_under(&dir).len(), 2);
    assert_eq!(logs.write_errors(), 0);
}

#[task]
async fn first(ctx: &Ctx) -> u32 {
    ctx.log(Level::Info, "from first");
    1
}

#[task]
async fn second(ctx: &Ctx, x: u32) -> u32 {
    ctx.log(Level::Info, "from second");
    x + 1
}

#[process]
fn shared_log(p: &mut Builder) {
    let a = p.task(First::new());
    p.task(Second::new(a));
}

// One file for the run: the tasks' lines interleave, each naming its task and attempt,
// with the run's own events (start, end) among them.
#[tokio::test(flavor = "current_thread")]
async fn per_run_file_interleaves_tasks() {
    let dir = fresh_dir("per-run");
    let logs = TaskLogLayer::per_run(&dir);
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(logs.clone()));
    let report = rt().await.run(SharedLog {}).await.unwrap();
    assert!(report.is_success());
    let file = logs.file_of(&report.run_id, "first");
    assert_eq!(file, logs.file_of(&report.run_id, "second"));
    assert_eq!(file, dir.join(format!("{}.log", file_name(&report.run_id))));
    let text = read(&file);
    let lines: Vec<&str> = text.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in\n{text}"))
    };
    let (start, a, b, end) = (
        pos("run started"),
        pos("from first"),
        pos("from second"),
        pos("run ended"),
    );
    assert!(start < a && a < b && b < end, "{text}");
    assert!(lines[a].contains(" attempt=1 task=first node=first INFO from first"));
    assert!(lines[b].contains(" attempt=1 task=second node=second INFO from second"));
    assert!(lines[start].contains(" attempt=- task=- node=- INFO run started"));
    assert!(lines.iter().all(|l| starts_with_time(l)), "{text}");
    assert_eq!(files_under(&dir), vec![file]);
}

#[task]
async fn quiet(ctx: &Ctx) -> u32 {
    ctx.log(Level::Info, "inside");
    0
}

#[process]
fn escape(p: &mut Builder) {
    p.task(Quiet::new().id(".."));
}

// Run and node ids come from users (and the store): they never name a path outside the
// directory, and distinct ids get distinct files.
#[tokio::test(flavor = "current_thread")]
async fn bad_ids_stay_inside_the_directory() {
    let dir = fresh_dir("escape");
    let logs = TaskLogLayer::per_task(&dir);
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(logs.clone()));
    let run_id = "../../escape/../run";
    let report = rt()
        .await
        .run(Launch::new(Escape {}).id(run_id))
        .await
        .unwrap();
    assert!(report.is_success());
    let written = files_under(&dir);
    assert_eq!(written.len(), 1, "{written:?}");
    let file = &written[0];
    assert_eq!(*file, logs.file_of(run_id, ".."));
    assert_eq!(file.parent().unwrap().parent().unwrap(), dir);
    assert!(read(file).contains("INFO inside"));
    assert!(!dir.parent().unwrap().join("escape").exists());

    for id in [
        "..",
        ".",
        "/",
        "a/b",
        "a\\b",
        "C:x",
        "",
        "\u{e9}t\u{e9}",
        "%2E",
    ] {
        let name = file_name(id);
        assert!(!name.contains(['/', '\\', '.', ':']), "{id:?} -> {name}");
        assert!(!name.is_empty());
        let p = task_path(&dir, id, id);
        assert!(p.starts_with(&dir));
        assert_eq!(
            p.components().count(),
            dir.components().count() + 2,
            "{p:?}"
        );
    }
    assert_ne!(file_name("%2E"), file_name("."));
    let long = "x".repeat(600);
    let long2 = format!("{}y", "x".repeat(599));
    assert!(file_name(&long).len() <= 220);
    assert_ne!(file_name(&long), file_name(&long2));
}

#[task(timeout = "20ms")]
async fn sleepy() -> u32 {
    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    0
}

#[process]
fn slow(p: &mut Builder) {
    p.task(Sleepy::new());
}

// A timed-out attempt says so in its task's file, and the run's failure is in the run's.
#[tokio::test(flavor = "current_thread")]
async fn timeouts_and_failures_are_logged() {
    let dir = fresh_dir("timeout");
    let per_task = TaskLogLayer::per_task(dir.join("tasks"));
    let per_run = TaskLogLayer::per_run(dir.join("runs"));
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(per_task.clone())
            .with(per_run.clone()),
    );
    let report = rt().await.run(Slow {}).await.unwrap();
    assert!(!report.is_success());
    let task = read(&per_task.file_of(&report.run_id, "sleepy"));
    assert!(
        task.contains(" attempt=1 task=sleepy node=sleepy WARN attempt timed out after=20ms"),
        "{task}"
    );
    let run = read(&per_run.file_of(&report.run_id, "sleepy"));
    assert!(
        run.contains(" attempt=- task=- node=- WARN task failed task=sleepy"),
        "{run}"
    );
}

// The admin API says where each task's lines are (cargo features `logs` and `admin`).
#[cfg(feature = "admin")]
#[tokio::test(flavor = "current_thread")]
async fn admin_api_shows_each_tasks_log_file() {
    use axum::body::{to_bytes, Body};
    use axum::http::Request;
    use procession::admin::{self, AdminConfig};
    use tower::ServiceExt as _;

    let dir = fresh_dir("admin");
    let logs = TaskLogLayer::per_task(&dir);
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(logs.clone()));
    let rt = rt().await;
    let report = rt.run(SharedLog {}).await.unwrap();
    let app = admin::router(rt.clone(), AdminConfig::default().log_files(logs.clone()));
    let req = Request::get(format!("/api/runs/{}", report.run_id))
        .body(Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert!(res.status().is_success());
    let v: serde_json::Value =
        serde_json::from_slice(&to_bytes(res.into_body(), 1 << 20).await.unwrap()).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for t in tasks {
        let node = t["node"].as_str().unwrap();
        let path = PathBuf::from(t["log_file"].as_str().unwrap());
        assert_eq!(path, logs.file_of(&report.run_id, node));
        assert!(
            read(&path).contains(&format!("from {node}")),
            "{}",
            path.display()
        );
    }
}
