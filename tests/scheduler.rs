//! The scheduler (issue 5), on tokio's paused clock: no real waiting.
#![allow(clippy::duration_suboptimal_units)] // schedules read best in seconds here

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use procession::prelude::*;
use procession::store::{MemoryStore, Store, Update};
use procession::{CatchUp, Definition, Error, ProcessRecord, Schedule, State};

static TICKS: AtomicUsize = AtomicUsize::new(0);

#[task]
fn tick() {
    TICKS.fetch_add(1, Ordering::SeqCst);
}

/// Ticks every night.
#[process(schedule = "0 2 * * *")]
fn ticker(p: &mut Builder) {
    p.task(Tick::new());
}

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);
static RELEASE: AtomicBool = AtomicBool::new(false);

#[task]
async fn slow() {
    SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    while !RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[process]
fn slow_proc(p: &mut Builder) {
    p.task(Slow::new());
}

static MISSED: AtomicUsize = AtomicUsize::new(0);

#[task]
fn count_missed() {
    MISSED.fetch_add(1, Ordering::SeqCst);
}

#[process]
fn missed_proc(p: &mut Builder) {
    p.task(CountMissed::new());
}

/// Waits a little real time: the store works on other threads, which the paused clock
/// does not wait for.
async fn real_pause() {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)))
        .await
        .unwrap();
}

/// Lets spawned work run.
async fn settle() {
    for _ in 0..25 {
        real_pause().await;
    }
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    for _ in 0..2500 {
        if f() {
            return;
        }
        real_pause().await;
    }
    panic!("condition never held");
}

// A literal schedule on the process is the definition's default schedule.
#[tokio::test]
async fn process_schedule_is_the_default() {
    let d = Definition::new("nightly", Ticker {}).unwrap();
    let rt = Runtime::in_memory()
        .register::<Ticker>()
        .define(d)
        .start()
        .await
        .unwrap();
    let rec = rt.get("nightly").await.unwrap().unwrap();
    assert_eq!(rec.schedule, Some(Schedule::cron("0 2 * * *").unwrap()));
    assert!(matches!(
        rt.schedule("nope", Schedule::cron("@daily").unwrap()).await,
        Err(Error::NotFound { .. })
    ));
}

// OPT-46, WF-116: an interval schedule really launches, once per interval.
#[tokio::test(start_paused = true)]
async fn interval_schedule_fires_each_interval() {
    let rt = Runtime::in_memory()
        .register::<Ticker>()
        .define(
            Definition::new("every-hour", Ticker {})
                .unwrap()
                .unscheduled(),
        )
        .start()
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    rt.schedule(
        "every-hour",
        Schedule::every(Duration::from_secs(3600)).unwrap(),
    )
    .await
    .unwrap();
    // The paused clock may also jump on its own while everything waits on the store, so
    // the bound is "never more fires than whole intervals elapsed", checked throughout.
    let at_most = || t0.elapsed().as_secs() / 3600;
    settle().await;
    assert!(
        TICKS.load(Ordering::SeqCst) as u64 <= at_most(),
        "nothing before the first interval"
    );
    tokio::time::advance(Duration::from_secs(3601)).await;
    wait_until(|| TICKS.load(Ordering::SeqCst) >= 1).await;
    assert!(TICKS.load(Ordering::SeqCst) as u64 <= at_most());
    // A fire that comes while the first run is still finishing is skipped (the record is
    // active); the clock can jump while the store works, so advance until the next fire.
    for _ in 0..5 {
        if TICKS.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::advance(Duration::from_secs(3600)).await;
        settle().await;
    }
    assert!(
        TICKS.load(Ordering::SeqCst) >= 2,
        "the schedule fires again"
    );
    assert!(TICKS.load(Ordering::SeqCst) as u64 <= at_most());
    assert_eq!(
        rt.get("every-hour").await.unwrap().unwrap().state(),
        State::Done
    );
}

// Issue 5: a scheduled process that is still active is not launched again.
#[tokio::test(start_paused = true)]
async fn active_process_is_not_launched_twice() {
    let rt = Runtime::in_memory()
        .register::<SlowProc>()
        .define(
            Definition::new("slow", SlowProc {})
                .unwrap()
                .schedule(Schedule::every(Duration::from_secs(60)).unwrap()),
        )
        .start()
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    wait_until(|| SLOW_RUNS.load(Ordering::SeqCst) == 1).await;
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
    }
    assert_eq!(
        SLOW_RUNS.load(Ordering::SeqCst),
        1,
        "fires while running are skipped"
    );
    RELEASE.store(true, Ordering::SeqCst);
    rt.wait("slow").await.unwrap();
}

fn scheduled_record(id: &str, schedule: Schedule, last_fire: SystemTime) -> ProcessRecord {
    let mut r =
        ProcessRecord::new_root(id, "missed_proc", "missed_proc", "", serde_json::json!({}));
    r.schedule = Some(schedule);
    r.adhoc = true; // not a definition: resync keeps it
    r.last_fire = Some(
        last_fire
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    r
}

// WF-98 and issue 5: fires missed while the binary was down are skipped by default and
// run once with CatchUp::Once, never once per missed interval.
#[tokio::test]
async fn missed_fires_skip_or_run_once() {
    let store = Arc::new(MemoryStore::new());
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let every_minute = Schedule::every_from(Duration::from_secs(60), hour_ago).unwrap();
    for r in [
        scheduled_record("skip", every_minute.clone(), hour_ago),
        scheduled_record("once", every_minute.catch_up(CatchUp::Once), hour_ago),
    ] {
        store
            .update(&r.id.clone(), &mut |_| Update::Put(Box::new(r.clone())))
            .unwrap();
    }
    let rt = Runtime::with_store(store.clone())
        .register::<MissedProc>()
        .start()
        .await
        .unwrap();
    wait_until(|| MISSED.load(Ordering::SeqCst) >= 1).await;
    rt.wait("once").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        MISSED.load(Ordering::SeqCst),
        1,
        "one catch-up run, none for `skip`"
    );
    assert_eq!(rt.get("skip").await.unwrap().unwrap().state(), State::Idle);
    let skipped = rt.get("skip").await.unwrap().unwrap();
    assert!(
        skipped.last_fire.unwrap()
            > hour_ago
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
    );
}
