//! The scheduler (issue 5), on tokio's paused clock: no real waiting.
#![allow(clippy::duration_suboptimal_units)] // schedules read best in seconds here

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use procession::prelude::*;
use procession::store::{MemoryStore, Store, Update};
use procession::{CatchUp, Definition, Error, Overlap, ProcessRecord, Schedule, State};

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

static QUEUED_RUNS: AtomicUsize = AtomicUsize::new(0);
static QUEUED_NOW: AtomicUsize = AtomicUsize::new(0);
static QUEUED_MOST: AtomicUsize = AtomicUsize::new(0);
static QUEUED_RELEASE: AtomicBool = AtomicBool::new(false);

#[task]
async fn queued_slow() {
    QUEUED_RUNS.fetch_add(1, Ordering::SeqCst);
    let now = QUEUED_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    QUEUED_MOST.fetch_max(now, Ordering::SeqCst);
    while !QUEUED_RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    QUEUED_NOW.fetch_sub(1, Ordering::SeqCst);
}

#[process]
fn queued_proc(p: &mut Builder) {
    p.task(QueuedSlow::new());
}

/// The runs of `id` once run `seq` has ended (the paused clock may add later fires,
/// so only the runs up to `seq` are certain).
async fn history_through(rt: &Runtime, id: &str, seq: u64) -> Vec<procession::RunSummary> {
    for _ in 0..2500 {
        let runs = rt.history(id).await.unwrap();
        if runs.iter().any(|r| r.seq == seq && r.state.is_end()) {
            return runs;
        }
        real_pause().await;
    }
    panic!("run {seq} of `{id}` never ended");
}

// Issue 12, overlap = queue_one: fires that come while the run is active leave one
// waiting fire (not one per fire), launched as soon as the run ends; runs never overlap.
#[tokio::test(start_paused = true)]
async fn overlap_queue_one_runs_once_after_the_active_run() {
    let every_minute = Schedule::every(Duration::from_secs(60))
        .unwrap()
        .overlap(Overlap::QueueOne);
    let rt = Runtime::in_memory()
        .register::<QueuedProc>()
        .define(
            Definition::new("queued", QueuedProc {})
                .unwrap()
                .schedule(every_minute),
        )
        .start()
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    wait_until(|| QUEUED_RUNS.load(Ordering::SeqCst) == 1).await;
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
    }
    let rec = rt.get("queued").await.unwrap().unwrap();
    assert_eq!(rec.state(), State::Running);
    let queued_at = rec.queued_fire.expect("one fire waits");
    assert_eq!(QUEUED_RUNS.load(Ordering::SeqCst), 1, "none ran alongside");
    QUEUED_RELEASE.store(true, Ordering::SeqCst);
    // The first run ends and the waiting fire starts the second at once.
    rt.wait("queued").await.unwrap();
    let runs = history_through(&rt, "queued", 2).await;
    let second = runs.iter().find(|r| r.seq == 2).unwrap();
    assert_eq!(second.state, State::Done);
    assert_eq!(
        second.fired_at,
        Some(queued_at),
        "run 2 is the queued fire, one for the three that came"
    );
    assert!(runs.iter().all(|r| r.fired_at.is_some()), "all were fires");
    assert_eq!(
        QUEUED_MOST.load(Ordering::SeqCst),
        1,
        "runs never overlapped"
    );
}

static ALLOWED_RUNS: AtomicUsize = AtomicUsize::new(0);
static ALLOWED_RELEASE: AtomicBool = AtomicBool::new(false);

#[task]
async fn allowed_slow() -> usize {
    let n = ALLOWED_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    while !ALLOWED_RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n
}

#[process]
fn allowed_proc(p: &mut Builder) {
    p.task(AllowedSlow::new());
}

// Issue 12, overlap = allow: a fire while the run is active starts another run at once,
// as a record of its own (`<id>@<seq>`), which joins the record's history when it ends.
#[tokio::test(start_paused = true)]
async fn overlap_allow_runs_alongside_as_its_own_record() {
    let every_minute = Schedule::every(Duration::from_secs(60))
        .unwrap()
        .overlap(Overlap::Allow);
    let rt = Runtime::in_memory()
        .register::<AllowedProc>()
        .define(
            Definition::new("poll", AllowedProc {})
                .unwrap()
                .schedule(every_minute),
        )
        .start()
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    wait_until(|| ALLOWED_RUNS.load(Ordering::SeqCst) >= 1).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    wait_until(|| ALLOWED_RUNS.load(Ordering::SeqCst) >= 2).await;
    // Run 1 is still running: the second fire ran as `poll@2`, beside it.
    let beside = rt.get("poll@2").await.unwrap().unwrap();
    assert_eq!(beside.state(), State::Running);
    assert_eq!(beside.process_type, "allowed_proc");
    assert_eq!(
        beside.run.as_ref().unwrap().overlap_of.as_deref(),
        Some("poll")
    );
    assert_eq!(
        rt.get("poll").await.unwrap().unwrap().state(),
        State::Running
    );
    ALLOWED_RELEASE.store(true, Ordering::SeqCst);
    rt.wait("poll").await.unwrap();
    // Its record goes once it ended (a handle waits for it even so).
    let _ = rt.wait("poll@2").await;
    let runs = history_through(&rt, "poll", 2).await;
    let second = runs.iter().find(|r| r.seq == 2).unwrap();
    assert_eq!(
        (second.run_id.as_str(), second.current, second.state),
        ("poll@2", false, State::Done)
    );
    assert!(runs.iter().any(|r| r.seq == 1 && r.run_id == "poll"));
    assert!(rt.get("poll@2").await.unwrap().is_none());
    let report = rt.past_report("poll", 2).await.unwrap();
    assert_eq!(report.run_id, "poll@2");
    assert_eq!(report.result::<usize>("allowed_slow").unwrap(), 2);
}

static SECOND_TICKS: AtomicUsize = AtomicUsize::new(0);

#[task]
fn second_tick() {
    SECOND_TICKS.fetch_add(1, Ordering::SeqCst);
}

/// Every ten seconds (six fields, seconds first).
#[process(schedule = "*/10 * * * * *")]
fn fast_ticker(p: &mut Builder) {
    p.task(SecondTick::new());
}

// OPT-46 with seconds: a 6-field schedule from `#[process(schedule = ...)]` really fires
// within seconds, not minutes.
#[tokio::test(start_paused = true)]
async fn six_field_schedule_fires_by_the_second() {
    let rt = Runtime::in_memory()
        .register::<FastTicker>()
        .define(Definition::new("fast", FastTicker {}).unwrap())
        .start()
        .await
        .unwrap();
    assert_eq!(
        rt.get("fast").await.unwrap().unwrap().schedule,
        Some(Schedule::cron("*/10 * * * * *").unwrap())
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    wait_until(|| SECOND_TICKS.load(Ordering::SeqCst) >= 1).await;
}

/// Nightly at 02:00 Paris time, at most one waiting fire.
#[cfg(feature = "tz")]
#[process(schedule = "0 2 * * *", tz = "Europe/Paris", overlap = "queue_one")]
fn paris_nightly(p: &mut Builder) {
    p.task(Tick::new());
}

// `tz` and `overlap` on the process are the definition's default schedule.
#[cfg(feature = "tz")]
#[tokio::test]
async fn process_time_zone_and_overlap_are_the_default() {
    let rt = Runtime::in_memory()
        .register::<ParisNightly>()
        .define(Definition::new("paris", ParisNightly {}).unwrap())
        .start()
        .await
        .unwrap();
    let s = rt.get("paris").await.unwrap().unwrap().schedule.unwrap();
    assert_eq!(s.time_zone(), Some("Europe/Paris"));
    assert_eq!(s.overlap_policy(), Overlap::QueueOne);
    assert_eq!(
        s,
        Schedule::cron("0 2 * * *")
            .unwrap()
            .tz("Europe/Paris")
            .unwrap()
            .overlap(Overlap::QueueOne)
    );
}
