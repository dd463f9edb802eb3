//! The `procession` binary, run as a user runs it (issue 15, point 4): against an admin
//! API served by this test on 127.0.0.1, and against a store left by a runtime that was
//! shut down. JSON output, exit codes (found, not found, failed run, refusals,
//! unreachable), `watch` to the end of a run, and the watch-overhead figure.

use std::time::{Duration, Instant};

use procession::admin::{self, AdminConfig, Server};
use procession::prelude::*;
use procession::RuntimeBuilder;
use serde_json::Value;

#[task]
async fn step(ctx: &Ctx, i: u32, ms: u64) -> u32 {
    for k in 1..=4u32 {
        ctx.progress(f64::from(k * 25), format!("part {k} of 4"));
        tokio::time::sleep(Duration::from_millis(ms / 4)).await;
    }
    i
}

/// `n` tasks of `ms` each, all at once.
#[process]
fn slow(p: &mut Builder, n: u32, ms: u64) {
    for i in 0..n {
        p.task(Step::new(i, ms).id(format!("step_{i}")));
    }
}

#[task]
fn boom() -> Result<u32, std::io::Error> {
    Err(std::io::Error::other("the disk is full"))
}

#[task]
fn after(x: u32) -> u32 {
    x
}

#[process]
fn breaks(p: &mut Builder) {
    let a = p.task(Boom::new());
    p.task(After::new(a));
}

#[task]
async fn hold(ctx: &Ctx) {
    while ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[process]
fn holder(p: &mut Builder) {
    p.task(Hold::new());
}

/// Opened by the test once the watcher is connected.
static GATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[task]
async fn gate() -> u32 {
    while !GATE.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    1
}

#[task]
fn boom_after(x: u32) -> Result<u32, std::io::Error> {
    Err(std::io::Error::other(format!("the disk is full after {x}")))
}

/// Fails once the gate opens; its last task is skipped.
#[process]
fn gated(p: &mut Builder) {
    let g = p.task(Gate::new());
    let b = p.task(BoomAfter::new(g));
    p.task(After::new(b));
}

fn builder(b: RuntimeBuilder) -> RuntimeBuilder {
    b.register::<Slow>()
        .register::<Breaks>()
        .register::<Holder>()
        .register::<Gated>()
}

async fn served() -> (Runtime, Server, String) {
    let rt = builder(Runtime::in_memory()).start().await.unwrap();
    let server = admin::serve(
        rt.clone(),
        AdminConfig::default(),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    (rt, server, url)
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "not one JSON document ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the binary with `args` (and no PROCESSION_* variables from the environment).
async fn cli(args: &[&str]) -> Out {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_procession"))
        .args(args)
        .env_remove("PROCESSION_API")
        .env_remove("PROCESSION_STORE")
        .env_remove("PROCESSION_TOKEN")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_mins(2), child)
        .await
        .expect("the command ends")
        .unwrap();
    Out {
        code: out.status.code().expect("an exit code"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The ids of a `runs list -o json` page.
fn record_ids(doc: &Value) -> Vec<String> {
    doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_show_over_the_api_in_json_and_text() {
    let (rt, server, url) = served().await;
    let run = rt.launch(Slow { n: 2, ms: 8 }).await.unwrap();
    let id = run.id().to_owned();
    run.wait().await.unwrap();

    let out = cli(&["runs", "list", "--api", &url, "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    let records = doc["records"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["id"] == id.as_str() && r["status"]["state"] == "done"),
        "{doc}"
    );
    assert!(doc.get("next").is_some());

    // --newest: the same records, newest first.
    let out = cli(&["runs", "list", "--api", &url, "-o", "json", "--newest"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut newest = record_ids(&out.json());
    newest.reverse();
    assert_eq!(newest, record_ids(&doc));

    let out = cli(&[
        "runs", "list", "--api", &url, "--output", "json", "--state", "failed",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["records"], serde_json::json!([]));

    let out = cli(&["runs", "show", &id, "--api", &url, "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    assert_eq!(doc["record"]["id"], id.as_str());
    let tasks = doc["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert!(
        tasks
            .iter()
            .all(|t| t["state"] == "done" && t["result"].is_u64()),
        "{doc}"
    );

    // Text: a table with the run and its tasks.
    let out = cli(&["runs", "show", &id, "--api", &url]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("id:       {id}")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("state:    done"), "{}", out.stdout);
    assert!(
        out.stdout.contains("step_1  step  done   1"),
        "{}",
        out.stdout
    );
    let out = cli(&["runs", "list", "--api", &url]).await;
    assert!(out.stdout.starts_with("ID "), "{}", out.stdout);
    assert!(out.stdout.contains(&id), "{}", out.stdout);

    // Not found: exit code 3, the API's code in the JSON error.
    let out = cli(&["runs", "show", "nope", "--api", &url, "--output", "json"]).await;
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert_eq!(out.json()["error"]["code"], "not-found");
    let out = cli(&["runs", "show", "nope", "--api", &url]).await;
    assert_eq!(out.code, 3);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_and_watch_to_the_end_with_exit_codes_from_the_outcome() {
    let (_rt, server, url) = served().await;
    // stdout and stderr are pipes here: plain lines, then the summary.
    let out = cli(&[
        "runs",
        "launch",
        "slow",
        "--params",
        r#"{"n": 3, "ms": 400}"#,
        "--id",
        "nightly",
        "--watch",
        "--api",
        &url,
    ])
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for i in 0..3 {
        assert!(
            out.stdout.contains(&format!("step_{i} done\n")),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains("run nightly (slow) succeeded in "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("3 tasks: 3 done, 0 failed, 0 cancelled, 0 skipped"),
        "{}",
        out.stdout
    );
    // The lines come before the summary.
    let last_line = out.stdout.find("step_2 done").unwrap();
    assert!(
        last_line < out.stdout.find("run nightly").unwrap(),
        "{}",
        out.stdout
    );

    // A failing run: exit code 1, the failure and the skip in the summary.
    let out = cli(&[
        "runs", "launch", "breaks", "--id", "b1", "--watch", "--api", &url,
    ])
    .await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("run b1 (breaks) failed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("error: the disk is full"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("2 tasks: 0 done, 1 failed, 0 cancelled, 1 skipped"),
        "{}",
        out.stdout
    );

    // Live lines tell each task's end, with the error of a failure and the skip.
    let watcher = tokio::spawn({
        let url = url.clone();
        async move {
            cli(&[
                "runs", "launch", "gated", "--id", "g1", "--watch", "--api", &url,
            ])
            .await
        }
    });
    for _ in 0..6000 {
        if server.admin().subscribers() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Slack for the watcher's snapshot request, which follows its subscription.
    tokio::time::sleep(Duration::from_millis(500)).await;
    GATE.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = watcher.await.unwrap();
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .take_while(|l| !l.starts_with("run g1"))
        .collect();
    assert_eq!(lines.first(), Some(&"gate running"), "{}", out.stdout);
    // A task that ends in its first poll may send only its end: ends only.
    let ends: Vec<&str> = lines
        .into_iter()
        .filter(|l| !l.ends_with(" running"))
        .collect();
    assert_eq!(
        ends,
        [
            "gate done",
            "boom_after failed: the disk is full after 1",
            "after skipped"
        ],
        "{}",
        out.stdout
    );

    // Watching an ended run prints its summary at once; JSON: one document.
    let out = cli(&["runs", "watch", "b1", "--api", &url, "--output", "json"]).await;
    assert_eq!(out.code, 1);
    let doc = out.json();
    assert_eq!(doc["record"]["status"]["state"], "failed");
    assert_eq!(doc["tasks"].as_array().unwrap().len(), 2);

    // Launch without --watch: the id, then watch it in JSON until it ends.
    let out = cli(&[
        "runs",
        "launch",
        "slow",
        "--params",
        r#"{"n": 2, "ms": 300}"#,
        "--api",
        &url,
        "-o",
        "json",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.json()["id"].as_str().unwrap().to_owned();
    let out = cli(&["runs", "watch", &id, "--api", &url, "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    assert_eq!(doc["record"]["status"]["state"], "done");
    assert!(
        doc["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["progress"]["percent"] == 100.0),
        "{doc}"
    );
    server.shutdown().await;
}

async fn until_running(rt: &Runtime, id: &str) {
    for _ in 0..4000 {
        if rt.get(id).await.unwrap().map(|r| r.state()) == Some(procession::State::Running) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{id} never ran");
}

// `runs resync` says which runs of records no longer defined it cancelled and deleted
// (OPT-306 seen from the command line), in JSON and in text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_names_the_stale_runs_it_cancelled() {
    let rt = builder(Runtime::in_memory())
        .define(procession::Definition::new("h1", Holder {}).unwrap())
        .define(procession::Definition::new("h2", Holder {}).unwrap())
        .start()
        .await
        .unwrap();
    let server = admin::serve(
        rt.clone(),
        AdminConfig::default(),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    let h1 = rt.launch_id("h1").await.unwrap();
    until_running(&rt, "h1").await;
    rt.redefine([procession::Definition::new("h2", Holder {}).unwrap()])
        .unwrap();
    let out = cli(&["runs", "resync", "--api", &url, "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    assert_eq!(doc["cancelled"], serde_json::json!(["h1"]), "{doc}");
    assert_eq!(doc["deleted"], serde_json::json!(["h1"]), "{doc}");
    assert_eq!(doc["updated"], serde_json::json!(["h2"]), "{doc}");
    assert!(h1.is_finished());

    let h2 = rt.launch_id("h2").await.unwrap();
    until_running(&rt, "h2").await;
    rt.redefine(Vec::new()).unwrap();
    let out = cli(&["runs", "resync", "--api", &url]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "resynced: 0 created, 0 updated, 1 deleted, 0 kept active\n  h2: cancelled (no longer defined)\n"
    );
    assert!(h2.is_finished());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_usage_errors_and_an_unreachable_api_have_their_exit_codes() {
    let (rt, server, url) = served().await;
    let run = rt.launch(Breaks {}).await.unwrap();
    let id = run.id().to_owned();
    let _ = run.wait().await;

    // Refused cancel of an ended run: 4, with the API's code.
    let out = cli(&["runs", "cancel", &id, "--api", &url, "--output", "json"]).await;
    assert_eq!(out.code, 4, "{}", out.stdout);
    assert_eq!(out.json()["error"]["code"], "not-cancellable-state");
    // Unknown process, invalid parameters: 4.
    let out = cli(&["runs", "launch", "nope", "--api", &url, "-o", "json"]).await;
    assert_eq!(
        (out.code, out.json()["error"]["code"].as_str()),
        (4, Some("unknown-process-type"))
    );
    let out = cli(&[
        "runs",
        "launch",
        "slow",
        "--params",
        r#"{"n": "x"}"#,
        "--api",
        &url,
        "-o",
        "json",
    ])
    .await;
    assert_eq!(
        (out.code, out.json()["error"]["code"].as_str()),
        (4, Some("invalid-params"))
    );
    // Dismiss the failed run, then it is idle: watching it is refused.
    let out = cli(&["runs", "dismiss", &id, "--api", &url, "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(out.json()["record"]["status"]["state"], "idle");
    let out = cli(&["runs", "watch", &id, "--api", &url, "-o", "json"]).await;
    assert_eq!(
        (out.code, out.json()["error"]["code"].as_str()),
        (4, Some("not-running"))
    );

    // Usage: bad JSON parameters and unknown flags are 2.
    let out = cli(&["runs", "launch", "slow", "--params", "{oops", "--api", &url]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--params is not JSON"),
        "{}",
        out.stderr
    );
    let out = cli(&["runs", "frobnicate"]).await;
    assert_eq!(out.code, 2);
    let out = cli(&["runs", "list", "--api", &url, "--state", "sleepy"]).await;
    assert_eq!(
        out.code, 2,
        "an unknown state is a usage error: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unknown state `sleepy`"),
        "{}",
        out.stderr
    );

    // Cancel a running run and wait for its end.
    let run = rt.launch(Holder {}).await.unwrap();
    let hid = run.id().to_owned();
    let out = cli(&[
        "runs", "cancel", &hid, "--wait", "--api", &url, "-o", "json",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["record"]["status"]["state"], "cancelled");

    // An API that is not there: 5.
    server.shutdown().await;
    let out = cli(&["runs", "list", "--api", &url, "-o", "json"]).await;
    assert_eq!(out.code, 5, "{}", out.stdout);
    assert_eq!(out.json()["error"]["code"], "unreachable");
    // A token the API does not accept is refused.
    let rt2 = builder(Runtime::in_memory()).start().await.unwrap();
    let s2 = admin::serve(
        rt2,
        AdminConfig::default().token("right"),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    let url2 = format!("http://{}", s2.local_addr());
    let out = cli(&["runs", "list", "--api", &url2, "--token", "wrong"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let out = cli(&[
        "runs", "list", "--api", &url2, "--token", "right", "-o", "json",
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    s2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_left_by_a_runtime_is_read_and_a_held_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("procession-cli-{:x}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.to_str().unwrap().to_owned();
    let rt = builder(Runtime::open(&dir)).start().await.unwrap();
    let ok = rt.launch(Slow { n: 2, ms: 8 }).await.unwrap();
    let ok_id = ok.id().to_owned();
    ok.wait().await.unwrap();
    let bad = rt.launch(Breaks {}).await.unwrap();
    let bad_id = bad.id().to_owned();
    let _ = bad.wait().await;

    // While the runtime holds the store: refused, naming the path, suggesting --api.
    let out = cli(&["runs", "list", "--store", &path]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains(&path) && out.stderr.contains("--api"),
        "{}",
        out.stderr
    );
    rt.shutdown().await.unwrap();
    drop(rt);

    let out = cli(&["runs", "list", "--store", &path, "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    let states: Vec<(&str, &str)> = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap(),
                r["status"]["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(states.contains(&(ok_id.as_str(), "done")), "{doc}");
    assert!(states.contains(&(bad_id.as_str(), "failed")), "{doc}");
    // Paging: one record, then the next page from its cursor.
    let out = cli(&[
        "runs", "list", "--store", &path, "-o", "json", "--limit", "1",
    ])
    .await;
    let first = out.json();
    let next = first["next"].as_str().expect("a cursor").to_owned();
    let out = cli(&[
        "runs", "list", "--store", &path, "-o", "json", "--after", &next,
    ])
    .await;
    let rest = out.json();
    assert_eq!(
        rest["records"].as_array().unwrap().len() + 1,
        states.len(),
        "{rest}"
    );

    // --newest, paged: the exact reverse.
    let out = cli(&[
        "runs", "list", "--store", &path, "-o", "json", "--limit", "1", "--newest",
    ])
    .await;
    let first = out.json();
    let next = first["next"].as_str().expect("a cursor").to_owned();
    let out = cli(&[
        "runs", "list", "--store", &path, "-o", "json", "--after", &next, "--newest",
    ])
    .await;
    let mut newest = record_ids(&first);
    newest.extend(record_ids(&out.json()));
    newest.reverse();
    assert_eq!(newest, record_ids(&doc));

    let out = cli(&["runs", "show", &ok_id, "--store", &path, "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["tasks"].as_array().unwrap().len(), 2);
    let out = cli(&["runs", "show", "nope", "--store", &path, "-o", "json"]).await;
    assert_eq!(
        (out.code, out.json()["error"]["code"].as_str()),
        (3, Some("not-found"))
    );
    // An ended run's summary, with the exit code of its outcome.
    let out = cli(&["runs", "watch", &bad_id, "--store", &path]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stdout.contains("failed"), "{}", out.stdout);
    // What needs the program is refused with a reason.
    let out = cli(&["runs", "cancel", &ok_id, "--store", &path, "-o", "json"]).await;
    assert_eq!(
        (out.code, out.json()["error"]["code"].as_str()),
        (4, Some("store-cannot"))
    );
    let out = cli(&["runs", "launch", "slow", "--store", &path]).await;
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("--api"), "{}", out.stderr);
    // No store there: 5, and nothing is created.
    let missing = dir.join("missing");
    let out = cli(&["runs", "list", "--store", missing.to_str().unwrap()]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(!missing.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn run_duration(rec: &procession::ProcessRecord) -> Duration {
    Duration::from_secs_f64(rec.status.duration.expect("an ended run has a duration"))
}

/// The figure "CLI watch overhead": a 200-task run (each task reports progress 4 times
/// over 20 ms, all at once) without and with a `procession runs launch --watch` attached
/// over the API, 15 of each, alternated: the run's own duration (what the runtime pays
/// for the watcher's events) and the command's end-to-end time (process start, launch
/// over HTTP, the event stream, the summary). Medians printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figure_watch_overhead() {
    let (rt, server, url) = served().await;
    let (mut bare, mut watched, mut command) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..15 {
        let h = rt.launch(Slow { n: 200, ms: 20 }).await.unwrap();
        let id = h.id().to_owned();
        h.wait().await.unwrap();
        bare.push(run_duration(&rt.get(&id).await.unwrap().unwrap()));

        let id = format!("watched-{i}");
        let t = Instant::now();
        let out = cli(&[
            "runs",
            "launch",
            "slow",
            "--params",
            r#"{"n": 200, "ms": 20}"#,
            "--id",
            &id,
            "--watch",
            "--api",
            &url,
        ])
        .await;
        command.push(t.elapsed());
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(out.stdout.contains("200 tasks: 200 done"), "{}", out.stdout);
        watched.push(run_duration(&rt.get(&id).await.unwrap().unwrap()));
    }
    let (b, w, c) = (
        median(&mut bare),
        median(&mut watched),
        median(&mut command),
    );
    println!(
        "figure: CLI watch overhead (200 tasks x 4 progress events, median of 15): run duration {b:?} unwatched, {w:?} watched ({:+.1} %); `procession runs launch --watch` end to end {c:?}",
        (w.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0
    );
    server.shutdown().await;
}
