//! Crash test: a process of 611 tasks is killed with SIGKILL at random moments and
//! restarted each time; at the end every task's effect is present, no task whose end had
//! been reported ran again, and the final result equals an uninterrupted run's.
//!
//! The test re-executes its own binary as the worker (`crash_worker_entry` with
//! `PROCESSION_CRASH_DIR` set), so no extra binary target is needed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use procession::prelude::*;
use procession::{EventKind, State};

const LANES: u32 = 10;
const STEPS: u32 = 60;
const RUN_ID: &str = "crash-run";
const KILLS: usize = 24;

fn mix(prev: u64, lane: u32, i: u32) -> u64 {
    prev.wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(u64::from(lane) << 32 | u64::from(i))
        .rotate_left(17)
}

fn append(path: &str, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("effects file");
    f.write_all(line.as_bytes()).expect("append");
}

#[task]
fn seed(lane: u32) -> u64 {
    u64::from(lane) * 7919
}

#[task]
async fn step(ctx: &Ctx, effects: String, lane: u32, i: u32, prev: u64) -> u64 {
    append(
        &effects,
        &format!("effect {} {}\n", ctx.node_id(), ctx.attempt()),
    );
    tokio::time::sleep(Duration::from_millis(15)).await;
    mix(prev, lane, i)
}

#[task]
#[allow(clippy::needless_pass_by_value)] // task inputs are owned: they are stored between tasks
fn total(ends: Vec<u64>) -> u64 {
    ends.iter().fold(0u64, |a, b| a.wrapping_add(*b))
}

#[process(mode = "concurrent")]
#[allow(clippy::needless_pass_by_value)] // process parameters are owned: they are stored with the run
fn crash_work(p: &mut Builder, effects: String, lanes: u32, steps: u32) {
    let ends = p.each(0..lanes, |p, lane| {
        let mut prev = p.task(Seed::new(lane));
        for i in 0..steps {
            prev = p.task(Step::new(effects.clone(), lane, i, prev));
        }
        prev
    });
    p.task(Total::new(ends));
}

fn expected() -> u64 {
    (0..LANES)
        .map(|lane| (0..STEPS).fold(u64::from(lane) * 7919, |prev, i| mix(prev, lane, i)))
        .fold(0u64, u64::wrapping_add)
}

/// The worker: resumes (or launches) the run, logs durable task ends, writes the result.
#[test]
fn crash_worker_entry() {
    let Ok(dir) = std::env::var("PROCESSION_CRASH_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let effects = dir.join("effects.log").display().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let rt = Runtime::open(dir.join("store"))
            .register::<CrashWork>()
            .start()
            .await
            .expect("store opens");
        let mut events = rt.subscribe();
        let log = effects.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if let (EventKind::State { state: State::Done }, Some(node)) =
                    (&e.kind, e.id.strip_prefix("crash-run/"))
                {
                    append(&log, &format!("reported {node}\n"));
                }
            }
        });
        if rt.get(RUN_ID).await.unwrap().is_none() {
            let run = Launch::new(CrashWork {
                effects: effects.clone(),
                lanes: LANES,
                steps: STEPS,
            })
            .id(RUN_ID);
            drop(rt.launch(run).await.expect("launch"));
        }
        println!("ready");
        let report = rt.wait(RUN_ID).await.expect("the run ends");
        let value: u64 = report.result("total").expect("the total");
        std::fs::write(dir.join("done"), value.to_string()).unwrap();
        rt.shutdown().await.unwrap();
    });
}

fn spawn_worker(dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_worker_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROCESSION_CRASH_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker starts")
}

// Issue 4 item 9 (OPT-294-style restart): kill -9 at random moments, resume, compare.
#[test]
fn survives_kill_9_at_random_moments() {
    let dir = std::env::temp_dir().join(format!("procession-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut kills = 0;
    let mut rng = fastrand_seed();
    while kills < KILLS && !dir.join("done").exists() {
        let mut child = spawn_worker(&dir);
        // Wait until the worker has resumed, then let it work a random while.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("ready") {
            line.clear();
        }
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis(5 + (rng >> 33) % 60));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    // The last start runs to the end.
    if !dir.join("done").exists() {
        let mut child = spawn_worker(&dir);
        let status = child.wait().unwrap();
        assert!(status.success(), "the final worker failed");
    }
    let result: u64 = std::fs::read_to_string(dir.join("done"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        result,
        expected(),
        "final result differs from an uninterrupted run"
    );

    let log = std::fs::read_to_string(dir.join("effects.log")).unwrap();
    let mut runs: HashMap<String, usize> = HashMap::new();
    let mut reported: HashMap<String, usize> = HashMap::new();
    let mut ran_after_report = Vec::new();
    for line in log.lines() {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("effect"), Some(node)) => {
                *runs.entry(node.to_owned()).or_default() += 1;
                if reported.contains_key(node) {
                    ran_after_report.push(node.to_owned());
                }
            }
            (Some("reported"), Some(node)) => *reported.entry(node.to_owned()).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(
        runs.len(),
        (LANES * STEPS) as usize,
        "every step's effect is present"
    );
    assert!(
        ran_after_report.is_empty(),
        "tasks ran again after their end was reported: {ran_after_report:?}"
    );
    let repeats: usize = runs.values().map(|n| n - 1).sum();
    let worst = runs.values().max().copied().unwrap_or(0);
    assert!(
        worst <= 1 + kills,
        "a task ran {worst} times with {kills} kills"
    );
    // At most the tasks in flight (one per lane) plus the few whose end was not yet
    // flushed repeat per kill; losing flushed ends would repeat far more.
    assert!(
        repeats <= kills * 2 * LANES as usize,
        "{repeats} repeated executions for {kills} kills"
    );
    eprintln!("crash test: {kills} kills, {repeats} repeated task executions, at most {worst} runs of one task");
    let _ = std::fs::remove_dir_all(&dir);
}

fn fastrand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1)
}

// ------------------------------------------------------------------ children and groups

const CHILDREN_RUN_ID: &str = "family-run";
const CYCLES: usize = 16;

#[task]
async fn leaf_step(ctx: &Ctx, effects: String, k: u32, j: u32, prev: u64) -> u64 {
    append(
        &effects,
        &format!(
            "effect {}/{} {}\n",
            ctx.process_id(),
            ctx.node_id(),
            ctx.attempt()
        ),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    mix(prev, k, j)
}

#[process]
#[allow(clippy::needless_pass_by_value)] // process parameters are owned: they are stored with the run
fn leaf(p: &mut Builder, effects: String, k: u32) {
    let mut prev = p.task(Seed::new(k));
    for j in 0..3 {
        prev = p.task(LeafStep::new(effects.clone(), k, j, prev));
    }
}

/// Four children one after another.
#[task]
async fn one_by_one(ctx: &Ctx, effects: String) -> Result<u32, procession::ChildError> {
    let mut done = 0;
    for k in 0..4 {
        let o = ctx
            .run_child(procession::Child::new(Leaf {
                effects: effects.clone(),
                k,
            }))
            .await?;
        if o.state == State::Done {
            done += 1;
        }
    }
    Ok(done)
}

/// Six children in a group, three at a time.
#[task]
async fn in_a_group(ctx: &Ctx, effects: String) -> Result<u32, procession::GroupError> {
    let mut g = ctx.parallel_group(procession::GroupOptions::new().max_concurrency(3));
    for k in 10..16 {
        g.spawn(procession::Child::new(Leaf {
            effects: effects.clone(),
            k,
        }))
        .await?;
    }
    Ok(g.finish().await?.len() as u32)
}

#[task]
fn family_total(a: u32, b: u32) -> u32 {
    a * 100 + b
}

#[process(mode = "concurrent")]
#[allow(clippy::needless_pass_by_value)] // process parameters are owned: they are stored with the run
fn family(p: &mut Builder, effects: String) {
    let a = p.task(OneByOne::new(effects.clone()));
    let b = p.task(InAGroup::new(effects));
    p.task(FamilyTotal::new(a, b));
}

/// The worker of the children test: resumes (or launches) the family run; with
/// `PROCESSION_CRASH_STOP_MS` it stops cleanly (`shutdown()`, as a SIGTERM handler does)
/// after that many milliseconds.
#[test]
fn crash_children_worker_entry() {
    let Ok(dir) = std::env::var("PROCESSION_CRASH_CHILDREN_DIR") else {
        return;
    };
    let stop_after = std::env::var("PROCESSION_CRASH_STOP_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let dir = PathBuf::from(dir);
    let effects = dir.join("effects.log").display().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let rt = Runtime::open(dir.join("store"))
            .register::<Family>()
            .register::<Leaf>()
            .cancel_grace(Duration::from_millis(200))
            .start()
            .await
            .expect("store opens");
        let mut events = rt.subscribe();
        let log = effects.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                // Task ends (`<run>/<node>`) of the family run and of its children.
                if let EventKind::State { state: State::Done } = &e.kind {
                    if e.id.starts_with(CHILDREN_RUN_ID) && e.id != e.root {
                        append(&log, &format!("reported {}\n", e.id));
                    }
                }
            }
        });
        if rt.get(CHILDREN_RUN_ID).await.unwrap().is_none() {
            let run = Launch::new(Family {
                effects: effects.clone(),
            })
            .id(CHILDREN_RUN_ID);
            drop(rt.launch(run).await.expect("launch"));
        }
        println!("ready");
        let wait = rt.wait(CHILDREN_RUN_ID);
        let report = match stop_after {
            Some(ms) => {
                tokio::select! {
                    r = wait => Some(r),
                    () = tokio::time::sleep(Duration::from_millis(ms)) => None,
                }
            }
            None => Some(wait.await),
        };
        if let Some(report) = report {
            let report = report.expect("the run ends");
            assert!(report.is_success(), "{}", report.summary());
            let value: u32 = report.result("family_total").expect("the total");
            std::fs::write(dir.join("done"), value.to_string()).unwrap();
        }
        rt.shutdown().await.unwrap();
    });
}

fn spawn_children_worker(dir: &Path, stop_ms: Option<u64>) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "crash_children_worker_entry",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("PROCESSION_CRASH_CHILDREN_DIR", dir)
    .stdout(Stdio::piped())
    .stderr(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("workers.err"))
            .map_or_else(|_| Stdio::null(), Stdio::from),
    );
    if let Some(ms) = stop_ms {
        cmd.env("PROCESSION_CRASH_STOP_MS", ms.to_string());
    }
    cmd.spawn().expect("worker starts")
}

// Kill -9 and clean shutdown/restart cycles at random moments while tasks are inside
// `run_child` and a parallel group: no run is failed by the crash, no task whose end was
// reported runs again, and the result equals an uninterrupted run's.
#[test]
fn survives_kills_and_clean_restarts_with_children_in_flight() {
    let dir =
        std::env::temp_dir().join(format!("procession-crash-children-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = fastrand_seed();
    let (mut kills, mut stops) = (0, 0);
    for _ in 0..CYCLES {
        if dir.join("done").exists() {
            break;
        }
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let delay = 5 + (rng >> 33) % 60;
        let clean = (rng >> 20).is_multiple_of(2);
        let mut child = spawn_children_worker(&dir, clean.then_some(delay));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("ready") {
            line.clear();
        }
        if clean {
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "a worker failed after a clean stop: {}",
                std::fs::read_to_string(dir.join("workers.err")).unwrap_or_default()
            );
            stops += 1;
        } else {
            std::thread::sleep(Duration::from_millis(delay));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
            child.wait().unwrap();
        }
    }
    if !dir.join("done").exists() {
        let status = spawn_children_worker(&dir, None).wait().unwrap();
        assert!(status.success(), "the final worker failed");
    }
    let result: u32 = std::fs::read_to_string(dir.join("done"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        result,
        4 * 100 + 6,
        "final result differs from an uninterrupted run"
    );
    let log = std::fs::read_to_string(dir.join("effects.log")).unwrap();
    let mut runs: HashMap<String, usize> = HashMap::new();
    let mut reported: HashMap<String, usize> = HashMap::new();
    let mut ran_after_report = Vec::new();
    for l in log.lines() {
        let mut parts = l.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("effect"), Some(id)) => {
                *runs.entry(id.to_owned()).or_default() += 1;
                if reported.contains_key(id) {
                    ran_after_report.push(id.to_owned());
                }
            }
            (Some("reported"), Some(id)) => *reported.entry(id.to_owned()).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(
        runs.len(),
        10 * 3,
        "every child step's effect is present: {runs:?}"
    );
    assert!(
        ran_after_report.is_empty(),
        "tasks ran again after their end was reported: {ran_after_report:?}"
    );
    eprintln!("children crash test: {kills} kills, {stops} clean stops");
    let _ = std::fs::remove_dir_all(&dir);
}
