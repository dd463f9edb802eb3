//! What a new user writes the obvious way works (issue 12, point 8): a percentage given
//! as an integer, a parameter named like its task, and a registered process that
//! declares a schedule, which the runtime then runs on that schedule with no further
//! setup.

// Task inputs are owned values (they are stored between tasks); `twice` is `async` only to
// run as an async task.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use procession::prelude::*;
use procession::{Definition, EventKind, Schedule};

static RELEASE_PROGRESS: AtomicBool = AtomicBool::new(false);

#[task]
async fn report_a_third(ctx: &Ctx) {
    ctx.progress(37, "a third, as an integer");
    while !RELEASE_PROGRESS.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[process]
fn one_progress(p: &mut Builder) {
    p.task(ReportAThird::new());
}

// Issue 12 (8): `ctx.progress(37, …)` compiles and records 37 %.
#[tokio::test]
async fn integer_progress_is_recorded() {
    let rt = Runtime::in_memory()
        .progress_flush(Duration::from_millis(1))
        .start()
        .await
        .unwrap();
    let mut events = rt.subscribe();
    let run = rt.launch(OneProgress {}).await.unwrap();
    let seen = tokio::time::timeout(common::PATIENCE, async {
        while let Some(e) = events.next().await {
            if let EventKind::Progress(p) = e.kind {
                if p.message.as_deref() == Some("a third, as an integer") {
                    return p.percent;
                }
            }
        }
        None
    })
    .await
    .expect("the progress event arrives");
    RELEASE_PROGRESS.store(true, Ordering::SeqCst);
    assert_eq!(seen, Some(37.0));
    assert!(run.wait().await.unwrap().is_success());
}

#[task]
fn shout(shout: String) -> String {
    shout.to_uppercase()
}

#[task]
async fn twice(ctx: &Ctx, twice: u32) -> u32 {
    ctx.progress(50, "half way");
    twice * 2
}

#[process]
fn shouting(p: &mut Builder, shouting: String) {
    p.task(Shout::new(shouting));
    p.task(Twice::new(21));
}

// Issue 12 (8): a parameter named like its task's function (`fn shout(shout: String)`)
// compiles and the task runs (it was E0618 inside the generated code).
#[tokio::test]
async fn parameter_named_like_its_function_runs() {
    let rt = common::rt().await;
    let report = rt
        .run(Shouting {
            shouting: "hello".into(),
        })
        .await
        .unwrap();
    assert_eq!(report.result::<String>("shout").unwrap(), "HELLO");
    assert_eq!(report.result::<u32>("twice").unwrap(), 42);
}

static MINUTE_TICKS: AtomicUsize = AtomicUsize::new(0);

#[task]
fn minute_tick() {
    MINUTE_TICKS.fetch_add(1, Ordering::SeqCst);
}

/// Ticks every minute.
#[process(schedule = "* * * * *")]
fn every_minute(p: &mut Builder) {
    p.task(MinuteTick::new());
}

/// Waits a little real time: the store works on other threads, which the paused clock
/// does not wait for.
async fn real_pause() {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(2)))
        .await
        .unwrap();
}

// Issue 12 (8): registering a process that declares `schedule = "…"` and takes no
// parameters is enough for it to run on that schedule; its record's id is its name.
#[tokio::test(start_paused = true)]
async fn registered_scheduled_process_fires() {
    let rt = Runtime::in_memory()
        .register::<EveryMinute>()
        .start()
        .await
        .unwrap();
    let rec = rt
        .get("every_minute")
        .await
        .unwrap()
        .expect("kept by start");
    assert_eq!(rec.schedule, Some(Schedule::cron("* * * * *").unwrap()));
    assert_eq!(rec.process_type, "every_minute");
    assert_eq!(MINUTE_TICKS.load(Ordering::SeqCst), 0, "not before a fire");
    for _ in 0..2500 {
        if MINUTE_TICKS.load(Ordering::SeqCst) >= 1 {
            break;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        real_pause().await;
    }
    assert!(
        MINUTE_TICKS.load(Ordering::SeqCst) >= 1,
        "the schedule fired"
    );
    let report = rt.wait("every_minute").await.unwrap();
    assert!(report.is_success());
}

#[task]
fn copy_table(table: String) -> String {
    table
}

/// Copies one table every night.
#[process(schedule = "0 4 * * *")]
fn nightly_copy(p: &mut Builder, table: String) {
    p.task(CopyTable::new(table));
}

/// Ticks every night.
#[process(schedule = "0 2 * * *")]
fn nightly_tick(p: &mut Builder) {
    p.task(MinuteTick::new());
}

// Issue 12 (8): a scheduled process with parameters is not run on its schedule without
// a `Definition` giving them; a `Definition` of a process type takes the place of the
// automatic record, also for processes without parameters.
#[tokio::test]
async fn definitions_replace_the_automatic_schedule() {
    let rt = Runtime::in_memory()
        .register::<NightlyCopy>()
        .start()
        .await
        .unwrap();
    assert!(rt.get("nightly_copy").await.unwrap().is_none());

    let rt = Runtime::in_memory()
        .register::<NightlyCopy>()
        .register::<NightlyTick>()
        .define(
            Definition::new(
                "copy-orders",
                NightlyCopy {
                    table: "orders".into(),
                },
            )
            .unwrap(),
        )
        .define(Definition::new("tick-eu", NightlyTick {}).unwrap())
        .start()
        .await
        .unwrap();
    let copy = rt.get("copy-orders").await.unwrap().unwrap();
    assert_eq!(copy.schedule, Some(Schedule::cron("0 4 * * *").unwrap()));
    assert!(rt.get("tick-eu").await.unwrap().unwrap().schedule.is_some());
    assert!(rt.get("nightly_tick").await.unwrap().is_none());
    assert!(rt.get("nightly_copy").await.unwrap().is_none());
}

// Issue 12 (8): the automatic record follows the registration: a program that no longer
// registers the process (or no longer schedules it) drops the record at its next start.
#[tokio::test]
async fn automatic_record_follows_the_registration() {
    let store = std::sync::Arc::new(procession::store::MemoryStore::new());
    let rt = Runtime::with_store(store.clone())
        .register::<NightlyTick>()
        .start()
        .await
        .unwrap();
    assert!(rt.get("nightly_tick").await.unwrap().is_some());
    rt.shutdown().await.unwrap();
    let rt = Runtime::with_store(store).start().await.unwrap();
    assert!(rt.get("nightly_tick").await.unwrap().is_none());
}
