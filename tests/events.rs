//! Events and records a person can read: state events on change only, per-run event
//! streams, a run's progress rolled up from its tasks, a task that stops because of a
//! cancel recorded cancelled, and real attempts and elapsed time for a task abandoned
//! after the cancellation grace period.

// Task inputs are owned values (they are stored between tasks); some tasks are `async`
// only to run as async tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::time::Duration;

use futures::StreamExt;
use procession::prelude::*;
use procession::{CancelGraceExceeded, Cancelled, Event, EventKind, RunHandle, State};
use tokio::sync::Notify;

const DEADLINE: Duration = Duration::from_secs(20);

async fn wait(handle: RunHandle) -> RunReport {
    tokio::time::timeout(DEADLINE, handle.wait())
        .await
        .expect("the run did not end")
        .unwrap()
}

async fn started(n: &Notify) {
    tokio::time::timeout(DEADLINE, n.notified())
        .await
        .expect("the task never started");
}

/// The events `stream` yields until it ends, within [`DEADLINE`].
async fn collect(stream: procession::EventStream) -> Vec<Event> {
    tokio::time::timeout(DEADLINE, stream.collect::<Vec<_>>())
        .await
        .expect("the event stream did not end with its run")
}

// ------------------------------------------------------ state on change only

#[task]
async fn chatty(ctx: &Ctx) -> u32 {
    // Progress over several flush intervals: each flush writes the row again.
    for i in 0..8 {
        ctx.progress(f64::from(i) * 10.0, format!("step {i}"));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    8
}

#[process]
fn chatty_job(p: &mut Builder) {
    p.task(Chatty::new());
}

// A running task that reports progress across many progress flushes sends one
// `State { Running }` event and one `State { Done }`, not one per flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_event_is_sent_once_per_change() {
    let rt = Runtime::in_memory()
        .progress_flush(Duration::from_millis(2))
        .start()
        .await
        .unwrap();
    let events = rt.subscribe();
    let run = rt
        .launch(Launch::new(ChattyJob {}).id("chatty-1"))
        .await
        .unwrap();
    let report = wait(run).await;
    assert!(report.is_success());
    let events: Vec<Event> = events
        .take_while(|e| {
            let end = e.id == "chatty-1" && e.kind == EventKind::State { state: State::Done };
            std::future::ready(!end)
        })
        .collect()
        .await;
    let task_states: Vec<&EventKind> = events
        .iter()
        .filter(|e| e.id == "chatty-1/chatty" && matches!(e.kind, EventKind::State { .. }))
        .map(|e| &e.kind)
        .collect();
    assert_eq!(
        task_states,
        vec![
            &EventKind::State {
                state: State::Running
            },
            &EventKind::State { state: State::Done },
        ]
    );
    let progress = events
        .iter()
        .filter(|e| e.id == "chatty-1/chatty" && matches!(e.kind, EventKind::Progress(_)))
        .count();
    assert_eq!(progress, 8, "every progress call is still an event");
}

// ------------------------------------------------------------ per-run streams

#[task]
async fn tick(ctx: &Ctx, tag: String) -> String {
    ctx.progress(50.0, format!("{tag} halfway"));
    tokio::time::sleep(Duration::from_millis(5)).await;
    tag
}

#[process]
fn ticking(p: &mut Builder, tag: String) {
    p.task(Tick::new(tag));
}

// `RunHandle::events()` yields the events of its run only (its record and its tasks),
// however many runs are going at once, and ends with the run's end state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_events_are_those_of_one_run_and_end_with_it() {
    let rt = common::rt().await;
    let a = rt
        .launch(Launch::new(Ticking { tag: "a".into() }).id("tick-a"))
        .await
        .unwrap();
    let b = rt
        .launch(Launch::new(Ticking { tag: "b".into() }).id("tick-b"))
        .await
        .unwrap();
    let (ea, eb) = (a.events(), b.events());
    let (ea, eb) = tokio::join!(collect(ea), collect(eb));
    for (events, run) in [(&ea, "tick-a"), (&eb, "tick-b")] {
        assert!(events.iter().all(|e| e.run == run), "{run}: {events:?}");
        assert!(events
            .iter()
            .all(|e| e.id == run || e.id.starts_with(&format!("{run}/"))));
        let last = events.last().expect("at least the end");
        assert_eq!(last.id, run);
        assert_eq!(last.kind, EventKind::State { state: State::Done });
    }
    // A stream opened after the end still ends, with the end state.
    let late = collect(a.events()).await;
    assert_eq!(
        late.last().map(|e| &e.kind),
        Some(&EventKind::State { state: State::Done })
    );
    assert!(wait(a).await.is_success());
    assert!(wait(b).await.is_success());
}

// ------------------------------------------------------------ progress roll-up

static HALFWAY_BEGIN: Notify = Notify::const_new();
static HALFWAY_AT: Notify = Notify::const_new();
static HALFWAY_GO: Notify = Notify::const_new();

#[task]
async fn halfway(ctx: &Ctx) {
    HALFWAY_BEGIN.notified().await;
    ctx.progress(50.0, "halfway there");
    HALFWAY_AT.notify_one();
    HALFWAY_GO.notified().await;
}

#[task]
fn quick() -> u32 {
    1
}

#[process]
fn rollup_job(p: &mut Builder) {
    p.concurrent(|p| {
        p.task(Halfway::new());
        p.task(Quick::new());
    });
}

// OPT-81, WF-168: a run's record shows its tasks' progress rolled up (counted: each
// task weighs the same, a done one counts 100), written at the progress flush
// cadence, with the last task message; 100 at the end. `halfway` reports its progress
// only once the run's event stream is open: a stream starts at its call, and a test
// thread held up between the launch and `run.events()` (more than the 5 ms flush, under
// load) opened it after the 75 % event and saw none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_record_shows_its_tasks_progress() {
    let rt = Runtime::in_memory()
        .progress_flush(Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    let run = rt
        .launch(Launch::new(RollupJob {}).id("rollup-1"))
        .await
        .unwrap();
    let mut events = run.events();
    HALFWAY_BEGIN.notify_one();
    started(&HALFWAY_AT).await;
    // `quick` done (100) and `halfway` at 50: 75 %.
    let seen = common::wait_until_async_fut(|| async {
        let rec = rt.get("rollup-1").await.unwrap().unwrap();
        rec.progress.percent == Some(75.0)
    })
    .await;
    let rec = rt.get("rollup-1").await.unwrap().unwrap();
    assert!(seen, "the run's progress is {:?}", rec.progress);
    assert_eq!(rec.progress.message.as_deref(), Some("halfway there"));
    HALFWAY_GO.notify_one();
    let report = wait(run).await;
    assert!(report.is_success());
    assert_eq!(
        rt.get("rollup-1").await.unwrap().unwrap().progress.percent,
        Some(100.0)
    );
    // The run's progress was an event of the run too.
    let mut run_progress = Vec::new();
    while let Some(e) = tokio::time::timeout(DEADLINE, events.next()).await.unwrap() {
        if let (true, EventKind::Progress(p)) = (e.id == "rollup-1", &e.kind) {
            run_progress.push(p.percent);
        }
    }
    assert!(run_progress.contains(&Some(75.0)), "{run_progress:?}");
}

// --------------------------------------------------------- cancelled on purpose

static CRAWL_STARTED: Notify = Notify::const_new();

#[task]
async fn crawl(ctx: &Ctx) -> Result<u32, Cancelled> {
    let mut pages = 0;
    loop {
        ctx.check_cancelled()?;
        pages += 1;
        ctx.progress(f64::from(pages % 100), format!("page {pages}"));
        if pages == 3 {
            CRAWL_STARTED.notify_one();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[process]
fn crawl_job(p: &mut Builder) {
    p.task(Crawl::new());
}

// OPT-53: a task that leaves with `ctx.check_cancelled()?` after a cancel is recorded
// cancelled (not done at 100 %), in the live report, in the stored report and in its
// task record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_cancelled_records_the_task_cancelled() {
    let rt = common::rt().await;
    let run = rt
        .launch(Launch::new(CrawlJob {}).id("crawl-1"))
        .await
        .unwrap();
    started(&CRAWL_STARTED).await;
    run.cancel().await.unwrap();
    let report = wait(run).await;
    assert_eq!(report.status, RunStatus::Cancelled);
    let t = report.task("crawl").unwrap();
    assert_eq!(t.status, TaskStatus::Cancelled);
    assert!(t.result.is_none());
    let stored = rt.report("crawl-1").await.unwrap();
    assert_eq!(stored.task("crawl").unwrap().status, TaskStatus::Cancelled);
    let rec = rt.get("crawl-1/crawl").await.unwrap().unwrap();
    assert_eq!(rec.state(), State::Cancelled);
    assert_ne!(rec.progress.percent, Some(100.0));
    let run_rec = rt.get("crawl-1").await.unwrap().unwrap();
    assert_eq!(run_rec.state(), State::Cancelled);
    // The run stopped where its task stopped, not at 100.
    assert!(
        run_rec.progress.percent.unwrap_or(0.0) < 100.0,
        "{:?}",
        run_rec.progress
    );
}

/// The same with a task whose error type is `String`.
#[task]
async fn crawl_str(ctx: &Ctx) -> Result<u32, String> {
    ctx.cancel();
    ctx.check_cancelled()?;
    Ok(1)
}

#[process]
fn crawl_str_job(p: &mut Builder) {
    p.task(CrawlStr::new());
}

// `check_cancelled()?` also works in a task returning `Result<_, String>`.
#[tokio::test]
async fn check_cancelled_converts_into_a_string_error() {
    let report = common::rt().await.run(CrawlStrJob {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    assert_eq!(
        report.task("crawl_str").unwrap().status,
        TaskStatus::Cancelled
    );
}

// ------------------------------------------------------------ abandoned tasks

static STUCK_STARTED: Notify = Notify::const_new();

#[task]
async fn stuck() -> u32 {
    STUCK_STARTED.notify_one();
    tokio::time::sleep(Duration::from_mins(10)).await;
    1
}

#[process]
fn stuck_job(p: &mut Builder) {
    p.task(Stuck::new());
}

// OPT-165, OPT-188: a task abandoned after the cancellation grace period ends failed
// with the grace error, and its report and record show the attempt it made and how long
// it ran (not `attempts = 0, elapsed = 0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_task_keeps_its_attempts_and_elapsed_time() {
    let grace = Duration::from_millis(60);
    let rt = Runtime::in_memory()
        .cancel_grace(grace)
        .start()
        .await
        .unwrap();
    let run = rt
        .launch(Launch::new(StuckJob {}).id("stuck-1"))
        .await
        .unwrap();
    started(&STUCK_STARTED).await;
    run.cancel().await.unwrap();
    let report = wait(run).await;
    let t = report.task("stuck").unwrap();
    assert_eq!(t.status, TaskStatus::Errored);
    assert!(t
        .error
        .as_ref()
        .unwrap()
        .error()
        .unwrap()
        .is::<CancelGraceExceeded>());
    assert_eq!(t.attempts, 1);
    assert!(t.elapsed() >= grace, "elapsed {:?}", t.elapsed());
    let stored = rt.report("stuck-1").await.unwrap();
    let s = stored.task("stuck").unwrap();
    assert_eq!(s.attempts, 1);
    assert!(s.elapsed() >= grace, "stored elapsed {:?}", s.elapsed());
    let rec = rt.get("stuck-1/stuck").await.unwrap().unwrap();
    assert_eq!(rec.state(), State::Failed);
    assert_eq!(rec.attempts, 1);
}

#[task]
fn noop(i: u32) -> u32 {
    i
}

#[process]
fn burst(p: &mut Builder, n: u32) {
    for i in 0..n {
        p.task(Noop::new(i));
    }
}

/// The events `stream` holds now, without waiting for more.
async fn drain(stream: &mut procession::EventStream) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
        out.push(e);
    }
    out
}

// A subscriber that does not read during a burst keeps every event while the bus holds
// them (`RuntimeBuilder::event_buffer`), and is told how many it lost when it does not:
// never a silent gap. The default bus holds a 2,000-task burst (the admin feed's clients
// then need no resync).
#[tokio::test]
async fn the_event_buffer_bounds_what_a_slow_subscriber_keeps() {
    let rt = Runtime::in_memory().start().await.unwrap();
    let mut slow = rt.subscribe();
    rt.run(Burst { n: 2_000 }).await.unwrap();
    let events = drain(&mut slow).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Lagged { .. })),
        "the default buffer holds a 2,000-task burst"
    );
    let done = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::State { state: State::Done }) && e.id.contains('/'))
        .count();
    assert_eq!(done, 2_000, "every task's end was kept");

    let small = Runtime::in_memory().event_buffer(64).start().await.unwrap();
    let mut slow = small.subscribe();
    small.run(Burst { n: 200 }).await.unwrap();
    let events = drain(&mut slow).await;
    assert!(
        matches!(events[0].kind, EventKind::Lagged { missed } if missed > 0),
        "{:?}",
        events[0]
    );
    assert!(events.len() <= 64 + 1);

    let err = Runtime::in_memory()
        .event_buffer(0)
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("event_buffer(0)"), "{err}");
}
