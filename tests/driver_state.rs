//! A success's attempts and time in the report, however the driver learnt of it: left in
//! the node's cell by its worker (no limit: the success is not reported to the driver),
//! or reported to the driver under a concurrency limit (the driver keeps no copy of its
//! own: the report reads the cell either way).

mod common;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::rt;
use procession::prelude::*;

static LIMITED_CALLS: AtomicU32 = AtomicU32::new(0);
static FREE_CALLS: AtomicU32 = AtomicU32::new(0);

/// Fails its first call, then takes 5 ms and returns 7.
fn flaky(calls: &AtomicU32) -> Result<u32, io::Error> {
    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(io::Error::other("first call"));
    }
    std::thread::sleep(Duration::from_millis(5));
    Ok(7)
}

#[task(retries = 1)]
fn flaky_limited() -> Result<u32, io::Error> {
    flaky(&LIMITED_CALLS)
}

#[task(retries = 1)]
fn flaky_free() -> Result<u32, io::Error> {
    flaky(&FREE_CALLS)
}

#[task]
fn plus_one(x: u32) -> u32 {
    x + 1
}

#[process]
fn limited(p: &mut Builder) {
    let x = p.task(FlakyLimited::new());
    p.task(PlusOne::new(x));
}

#[process]
fn free(p: &mut Builder) {
    let x = p.task(FlakyFree::new());
    p.task(PlusOne::new(x));
}

fn assert_second_attempt_succeeded(report: &RunReport, task: &str) {
    assert_eq!(report.status, RunStatus::Succeeded);
    let t = report.task(task).unwrap();
    assert!(t.is_success());
    assert_eq!(t.attempts, 2);
    assert!(t.elapsed() >= Duration::from_millis(5), "{:?}", t.elapsed());
    assert_eq!(t.result_as::<u32>().unwrap(), 7);
    let next = report.task("plus_one").unwrap();
    assert_eq!(next.attempts, 1);
    assert_eq!(next.result_as::<u32>().unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_reported_to_the_driver_keeps_its_attempts_and_time() {
    let report = rt()
        .await
        .run(Launch::new(Limited {}).max_concurrency(1))
        .await
        .unwrap();
    assert_second_attempt_succeeded(&report, "flaky_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_left_in_its_cell_keeps_its_attempts_and_time() {
    let report = rt().await.run(Free {}).await.unwrap();
    assert_second_attempt_succeeded(&report, "flaky_free");
}
