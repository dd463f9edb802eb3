//! Every task of a run whose tasks are spread over the workers of a PostgreSQL store is
//! dropped exactly once: the coordinator's copy (never run there) and the copies of the
//! graphs each worker rebuilds to run some of its nodes (issue 17: tasks live in their
//! graph's arena, dropped in place).

#[path = "common/drops.rs"]
mod drops;
mod pg;

use std::time::Duration;

use procession::prelude::*;
use procession::Launch;

use drops::{all_dropped_once, Big, Counted};
use pg::database;

#[task]
fn small(c: Counted, x: u64) -> u64 {
    drop(c);
    x
}

#[task]
fn heavy(c: Big, x: u64) -> u64 {
    x + c.seven() - 7
}

#[task]
fn sum(c: Counted, xs: Vec<u64>) -> u64 {
    drop(c);
    xs.iter().sum()
}

#[task]
fn fails(c: Big) -> Result<u64, String> {
    Err(format!("refused ({})", c.seven()))
}

/// Ten leaves summed, and a failing task with a dependent that never runs.
#[process(mode = "concurrent")]
fn spread_out(p: &mut Builder, tag: u32) {
    let xs = p.each(0..10, |p, i| {
        if i % 2 == 0 {
            p.task(Heavy::new(Big::new(tag), i))
        } else {
            p.task(Small::new(Counted::new(tag), i))
        }
    });
    p.task(Sum::new(Counted::new(tag), xs).id("total"));
    let f = p.task(Fails::new(Big::new(tag)));
    p.task(Small::new(Counted::new(tag), f).id("skipped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_tasks_are_dropped_once() {
    let Some(url) = database("task_drops") else {
        return;
    };
    let start = || async {
        Runtime::connect(url.clone())
            .lease(Duration::from_secs(30))
            .spread_tasks(true)
            .register::<SpreadOut>()
            .start()
            .await
            .unwrap()
    };
    let helper = start().await;
    let rt = start().await;
    let run = rt
        .launch(Launch::new(SpreadOut { tag: 1 }).id("spread-drops"))
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_mins(2), run.wait())
        .await
        .expect("the run ends")
        .unwrap();
    assert_eq!(
        report.result::<u64>("total").unwrap(),
        45,
        "{}",
        report.summary()
    );
    assert_eq!(report.task("fails").unwrap().status, TaskStatus::Errored);
    assert!(
        rt.task_stats().claimed + helper.task_stats().claimed >= 11,
        "{:?} {:?}",
        rt.task_stats(),
        helper.task_stats()
    );
    rt.shutdown().await.unwrap();
    helper.shutdown().await.unwrap();
    // Each worker keeps the graphs it rebuilt (cached per run) while it lives.
    drop((rt, helper));
    // The coordinator's graph (13 tasks) and at least one rebuilt graph per worker
    // that ran a node.
    all_dropped_once(1, 26).await;
}
