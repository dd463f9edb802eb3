//! Dependents made ready by the finishing statement (issue 14, point 2, task spreading):
//! a successful, fenced finish counts down its waiting dependents and makes those at 0
//! claimable without a round trip through the run's coordinator; failures, skips,
//! optional and tolerant dependencies stay the coordinator's decisions.
//!
//! The store-level test drives the statements themselves (no coordinator at all); the
//! runtime-level tests spread layered runs over three runtimes on one database and
//! compare their reports with the same runs on sled.

use std::sync::Arc;
use std::time::Duration;

use procession::prelude::*;
use procession::store::{ClaimedTask, PgStore, Store, TaskEnd, TaskOffer, TaskQueue};
use procession::{RunHandle, RunStatus, TaskStatus};

mod pg;
use pg::rows;

// ------------------------------------------------------------------ the work

#[task]
fn leaf(i: u64) -> u64 {
    i + 1
}

/// Mixes its inputs; fails when told to.
#[task]
#[allow(clippy::needless_pass_by_value)] // task inputs are owned
fn mix(ins: Vec<u64>, code: u64, fail: bool) -> Result<u64, String> {
    if fail {
        return Err(format!("mix {code} fails"));
    }
    Ok(ins
        .iter()
        .fold(code, |a, v| a.wrapping_mul(31).wrapping_add(*v)))
}

/// Takes what succeeded of the last layer, and counts what did not.
#[task(on_dep_failure = "run_anyway")]
#[allow(clippy::needless_pass_by_value)]
fn gather(parts: Vec<Option<u64>>) -> u64 {
    let missing = parts.iter().filter(|p| p.is_none()).count() as u64;
    parts.iter().flatten().fold(missing, |a, v| a ^ v)
}

/// `layers` x `width`, each node of a layer reading two of the previous one; every
/// seventh node optional; the nodes numbered in `failing` fail; a tolerant gather.
#[process]
fn cascade(p: &mut Builder, layers: u32, width: u32, failing: Vec<u64>) {
    let mut prev: Vec<Out<u64>> = (0..width)
        .map(|j| p.task(Leaf::new(u64::from(j))))
        .collect();
    for l in 1..layers {
        prev = (0..width)
            .map(|j| {
                let code = u64::from(l * width + j);
                let ins = vec![prev[j as usize], prev[((j + 1) % width) as usize]];
                let t = Mix::new(ins, code, failing.contains(&code));
                if code % 7 == 0 {
                    p.task(t.optional())
                } else {
                    p.task(t)
                }
            })
            .collect();
    }
    p.task(Gather::new(prev));
}

type Summary = (RunStatus, Vec<(String, TaskStatus, u32, String)>);

/// What the comparison with sled looks at: the run's status, and per task its status,
/// attempts and result.
fn summary(r: &RunReport) -> Summary {
    (
        r.status,
        r.tasks
            .iter()
            .map(|t| {
                (
                    t.id.to_string(),
                    t.status,
                    t.attempts,
                    serde_json::to_string(&t.result).unwrap(),
                )
            })
            .collect(),
    )
}

async fn on_sled(p: Cascade) -> Summary {
    let rt = Runtime::temporary()
        .register::<Cascade>()
        .start()
        .await
        .unwrap();
    let r = rt.launch(p).await.unwrap().wait().await.unwrap();
    rt.shutdown().await.unwrap();
    summary(&r)
}

/// Runs `p` launched by one runtime with two helpers, all spreading tasks on `url`;
/// returns its report and the tasks claimed by all three.
/// The run's report, the tasks claimed by all workers and those its coordinator offered.
async fn spread_over_three(url: &str, id: &str, p: Cascade) -> (RunReport, u64, u64) {
    let start = || async {
        Runtime::connect(url.to_owned())
            .lease(Duration::from_secs(30))
            .spread_tasks(true)
            .spread_cascade(true)
            .register::<Cascade>()
            .start()
            .await
            .unwrap()
    };
    let helpers = [start().await, start().await];
    let rt = start().await;
    let run = rt.launch(Launch::new(p).id(id)).await.unwrap();
    let r = tokio::time::timeout(Duration::from_mins(2), run.wait())
        .await
        .expect("the run ends")
        .unwrap();
    println!(
        "{:?} {:?}",
        rt.task_stats(),
        helpers.iter().map(Runtime::task_stats).collect::<Vec<_>>()
    );
    let claimed =
        rt.task_stats().claimed + helpers.iter().map(|h| h.task_stats().claimed).sum::<u64>();
    let offered = rt.task_stats().offered;
    rt.shutdown().await.unwrap();
    for h in helpers {
        h.shutdown().await.unwrap();
    }
    (r, claimed, offered)
}

// ------------------------------------------------------------------ the tests

// A layered run spread over three workers cascades through its layers and ends as on
// sled; every task was claimed once (a node made ready by a cascade and then offered by
// its coordinator does not run twice); the task rows are gone after the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layered_run_over_three_workers_matches_sled() {
    let Some(url) = pg::database("cascade_layered") else {
        return;
    };
    let p = || Cascade {
        layers: 8,
        width: 12,
        failing: Vec::new(),
    };
    let (r, claimed, offered) = spread_over_three(&url, "layered", p()).await;
    let got = summary(&r);
    assert_eq!(got.0, RunStatus::Succeeded, "{got:?}");
    assert_eq!(got, on_sled(p()).await);
    assert_eq!(claimed, r.tasks.len() as u64, "every task claimed once");
    // Only the first layer: the launching worker is the run's first coordinator, and
    // every later node was made ready by its dependencies' finishes.
    assert_eq!(offered, 12, "only the first layer offered");
    assert!(rows(&url, "SELECT 1 FROM procession_task_claims").is_empty());
}

// Failures (one optional, one not), the tasks skipped after them and a tolerant gather
// over the last layer: the failures do not cascade, the coordinator decides, and the
// report is the one sled gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_skips_and_tolerant_tasks_report_as_on_sled() {
    let Some(url) = pg::database("cascade_failures") else {
        return;
    };
    // 14 is optional (a multiple of 7), 17 is not; both in layer 1 of width 8.
    let p = || Cascade {
        layers: 5,
        width: 8,
        failing: vec![14, 17],
    };
    let (r, claimed, offered) = spread_over_three(&url, "failures", p()).await;
    let got = summary(&r);
    assert_eq!(got.0, RunStatus::Failed, "{got:?}");
    assert!(got.1.iter().any(|t| t.1 == TaskStatus::Skipped), "{got:?}");
    assert_eq!(got.1.last().unwrap().1, TaskStatus::Success, "{got:?}");
    assert_eq!(got, on_sled(p()).await);
    let ran = got.1.iter().filter(|t| t.2 > 0).count() as u64;
    assert_eq!(claimed, ran, "every task that ran was claimed once");
    // The first layer, and the nodes run after a failed or skipped dependency (their
    // waiting rows are left to the offer): the tolerant gather at least.
    assert!(offered > 8, "nodes after failures are offered: {offered}");
    assert!(rows(&url, "SELECT 1 FROM procession_task_claims").is_empty());
}

// A layered run cancelled while its layers cascade ends (cancelled, or done if it was
// faster) and leaves no row: a node the cascade would have made ready is not offered by
// its first coordinator, and a waiting row a finish left at the cancel is ended by the
// cancel's mark, not waited for forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cascading_run_cancelled_midway_ends() {
    let Some(url) = pg::database("cascade_cancel") else {
        return;
    };
    let start = || async {
        Runtime::connect(url.clone())
            .lease(Duration::from_secs(30))
            .spread_tasks(true)
            .spread_cascade(true)
            .register::<Cascade>()
            .start()
            .await
            .unwrap()
    };
    let helper = start().await;
    let rt = start().await;
    for (i, wait_ms) in [0u64, 5, 20, 60].into_iter().enumerate() {
        let run = rt
            .launch(
                Launch::new(Cascade {
                    layers: 40,
                    width: 6,
                    failing: Vec::new(),
                })
                .id(format!("cancelled-{i}")),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        // Refused only when the run ended already (checked below).
        let _ = run.cancel().await;
        let r = tokio::time::timeout(Duration::from_mins(2), run.wait())
            .await
            .expect("the cancelled run ends")
            .unwrap();
        assert!(
            matches!(r.status, RunStatus::Cancelled | RunStatus::Succeeded),
            "run {i} (cancelled after {wait_ms} ms) ended {:?}: {}",
            r.status,
            not_succeeded(&r)
        );
    }
    rt.shutdown().await.unwrap();
    helper.shutdown().await.unwrap();
    assert!(rows(&url, "SELECT 1 FROM procession_task_claims").is_empty());
}

// Under a concurrency limit the executor decides when each node starts: the run writes
// no waiting row (nothing cascades) and ends as on sled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_under_a_concurrency_limit_does_not_cascade() {
    let Some(url) = pg::database("cascade_limited") else {
        return;
    };
    let p = || Cascade {
        layers: 6,
        width: 6,
        failing: Vec::new(),
    };
    let rt = Runtime::connect(url.clone())
        .lease(Duration::from_secs(30))
        .spread_tasks(true)
        .spread_cascade(true)
        .process_concurrency(2)
        .register::<Cascade>()
        .start()
        .await
        .unwrap();
    let run = rt.launch(Launch::new(p()).id("limited")).await.unwrap();
    let (r, seen, waiting) = wait_watching_rows(&url, run).await;
    rt.shutdown().await.unwrap();
    assert!(seen > 0, "the watcher saw the run's task rows");
    assert_eq!(waiting, 0, "no waiting row under a concurrency limit");
    assert_eq!(summary(&r), on_sled(p()).await);
}

// With the cascade off the coordinator offers each task once it is ready: a layered run
// spread over two workers writes no waiting row, every task is claimed once, and the
// run ends as on sled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_cascade_a_layered_run_writes_no_waiting_row() {
    let Some(url) = pg::database("cascade_off") else {
        return;
    };
    let p = || Cascade {
        layers: 6,
        width: 10,
        failing: Vec::new(),
    };
    let start = || async {
        Runtime::connect(url.clone())
            .lease(Duration::from_secs(30))
            .spread_tasks(true)
            .spread_cascade(false)
            .register::<Cascade>()
            .start()
            .await
            .unwrap()
    };
    let helper = start().await;
    let rt = start().await;
    let run = rt.launch(Launch::new(p()).id("off")).await.unwrap();
    let (r, seen, waiting) = wait_watching_rows(&url, run).await;
    let claimed = rt.task_stats().claimed + helper.task_stats().claimed;
    rt.shutdown().await.unwrap();
    helper.shutdown().await.unwrap();
    assert!(seen > 0, "the watcher saw the run's task rows");
    assert_eq!(waiting, 0, "no waiting row without the cascade");
    assert_eq!(claimed, r.tasks.len() as u64, "every task claimed once");
    assert_eq!(summary(&r), on_sled(p()).await);
}

/// What a failing assertion on a cancelled run's status prints: how many of its tasks
/// succeeded and were cancelled, and every other task (id, status, attempts, error
/// chain).
fn not_succeeded(r: &RunReport) -> String {
    let count = |s: TaskStatus| r.tasks.iter().filter(|t| t.status == s).count();
    let others: Vec<String> = r
        .tasks
        .iter()
        .filter(|t| !matches!(t.status, TaskStatus::Success | TaskStatus::Cancelled))
        .map(|t| {
            let error = t.error.as_ref().map(|e| e.chain.join(": "));
            format!(
                "{} {:?} attempts {} error {error:?}",
                t.id, t.status, t.attempts
            )
        })
        .collect();
    format!(
        "{} succeeded, {} cancelled, others:\n{}",
        count(TaskStatus::Success),
        count(TaskStatus::Cancelled),
        others.join("\n")
    )
}

/// Waits for `run`'s end while sampling the task rows on `url` every few ms: its
/// report, the samples that saw rows, and the waiting rows seen in all samples.
async fn wait_watching_rows(url: &str, run: RunHandle) -> (RunReport, usize, usize) {
    let u = url.to_owned();
    let watch = tokio::task::spawn_blocking(move || {
        let mut seen = 0usize;
        let mut waiting = 0usize;
        // Until the run's rows are gone (it ended), sampled every few ms.
        for _ in 0..20_000 {
            let r = rows(
                &u,
                "SELECT count(*) FILTER (WHERE state = 5), count(*) FROM procession_task_claims",
            );
            let (w, all): (i64, i64) = (r[0].get(0), r[0].get(1));
            waiting += usize::try_from(w).unwrap();
            if all > 0 {
                seen += 1;
            } else if seen > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (seen, waiting)
    });
    let r = tokio::time::timeout(Duration::from_mins(2), run.wait())
        .await
        .expect("the run ends")
        .unwrap();
    let (seen, waiting) = watch.await.unwrap();
    (r, seen, waiting)
}

/// A task offer of process type `cascade` (one attempt, no deadline) for the finish
/// statement's tests: `pending` dependencies to wait for, `dependents` to count down.
fn offer(run: &str, token: u64, node: u32, pending: u32, dependents: &[u32]) -> TaskOffer {
    TaskOffer {
        run: run.into(),
        run_token: token,
        node,
        process_type: "cascade".into(),
        attempts: 0,
        max_attempts: 1,
        deadline_ms: None,
        pending_deps: pending,
        dependents: dependents.to_vec(),
    }
}

/// A successful end of one attempt with result `v`.
fn succeeded(v: &str) -> TaskEnd {
    TaskEnd {
        attempts: 1,
        elapsed_ns: 1,
        outcome: Ok(Arc::from(v)),
    }
}

/// `who` finishes `task` with a success (result `1`), with room to take `room` of the
/// tasks it made ready: what was stored, and what was handed over.
fn finish_one(
    q: &dyn TaskQueue,
    task: &ClaimedTask,
    who: &str,
    room: usize,
) -> (Vec<bool>, Vec<ClaimedTask>) {
    q.finish_and_claim(
        &[(task.claim.clone(), succeeded("1"))],
        who,
        &["cascade"],
        60_000,
        room,
    )
    .unwrap()
}

// The statements alone, with no coordinator: a successful finish makes a dependent
// whose dependencies all succeeded claimable; a failure, a fenced finish and a repeated
// finish do not count it down (again); an end stored before the waiting row existed
// leaves it to the coordinator's offer; an offer leaves a cascaded running task alone;
// a cancel stops the cascade.
#[test]
fn the_finish_statement_makes_dependents_ready() {
    let Some(url) = pg::database("cascade_sql") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let token = u64::MAX - 9;
        let row = |run: &str, node: u32, pending: u32, dependents: &[u32]| {
            offer(run, token, node, pending, dependents)
        };
        let ok = succeeded;
        let failed = TaskEnd {
            attempts: 1,
            elapsed_ns: 1,
            outcome: Err(vec!["no".into()]),
        };
        let claim = |who: &str, ttl: u64| -> Vec<ClaimedTask> {
            let mut c = q.claim(who, &["cascade"], ttl, 10).unwrap();
            c.sort_by_key(|c| (c.claim.run.clone(), c.claim.node));
            c
        };
        let nodes = |c: &[ClaimedTask]| c.iter().map(|c| c.claim.node).collect::<Vec<_>>();

        // r: 0 and 1 -> 2 -> 3; 2 and 3 wait (written with the offers of 0 and 1).
        q.offer(&[
            row("r", 2, 2, &[3]),
            row("r", 3, 1, &[]),
            row("r", 0, 0, &[2]),
            row("r", 1, 0, &[2]),
        ])
        .unwrap();
        let first = claim("w1", 1);
        assert_eq!(nodes(&first), vec![0, 1], "waiting rows are not claimable");
        std::thread::sleep(Duration::from_millis(50));
        // The claims expired: w2 claims both again; w1's late successes are fenced out
        // and count nothing down.
        let again = claim("w2", 60_000);
        assert_eq!(nodes(&again), vec![0, 1]);
        assert_eq!(
            q.finish(&[
                (first[0].claim.clone(), ok("10")),
                (first[1].claim.clone(), ok("10"))
            ])
            .unwrap(),
            vec![false, false]
        );
        assert!(claim("w3", 60_000).is_empty(), "2 waits for 0 and 1");
        // 0 succeeds (and its finish is repeated, as after a lost answer): 2 still
        // waits for 1.
        assert_eq!(
            q.finish(&[(again[0].claim.clone(), ok("1"))]).unwrap(),
            vec![true]
        );
        assert_eq!(
            q.finish(&[(again[0].claim.clone(), ok("1"))]).unwrap(),
            vec![true]
        );
        assert!(claim("w3", 60_000).is_empty(), "2 waits for 1");
        // 1 succeeds under its current claim: 2 is claimable, no coordinator involved.
        assert_eq!(
            q.finish(&[(again[1].claim.clone(), ok("2"))]).unwrap(),
            vec![true]
        );
        let two = claim("w3", 60_000);
        assert_eq!(nodes(&two), vec![2]);
        assert_eq!(two[0].attempts, 0);
        // The coordinator offers 2 later: the running task is left as it is.
        q.offer(&[row("r", 2, 0, &[3])]).unwrap();
        let (_, beat) = q
            .heartbeat_tasks("w3", &[], std::slice::from_ref(&two[0].claim), 60_000)
            .unwrap();
        assert!(beat.refused.is_empty(), "the claim of 2 stands");
        assert!(claim("w4", 60_000).is_empty());
        // 2 fails: 3 is not made ready; the coordinator's offer makes it ready.
        assert_eq!(
            q.finish(&[(two[0].claim.clone(), failed.clone())]).unwrap(),
            vec![true]
        );
        assert!(claim("w4", 60_000).is_empty(), "a failure does not cascade");
        q.offer(&[row("r", 3, 0, &[])]).unwrap();
        assert_eq!(nodes(&claim("w4", 60_000)), vec![3]);

        // s: 0 ends before 1's waiting row is written: 1 waits until its offer.
        q.offer(&[row("s", 0, 0, &[1])]).unwrap();
        let s0 = claim("w1", 60_000);
        assert_eq!(nodes(&s0), vec![0]);
        assert_eq!(
            q.finish(&[(s0[0].claim.clone(), ok("5"))]).unwrap(),
            vec![true]
        );
        q.offer(&[row("s", 1, 1, &[])]).unwrap();
        assert!(claim("w1", 60_000).is_empty());
        q.offer(&[row("s", 1, 0, &[])]).unwrap();
        assert_eq!(nodes(&claim("w1", 60_000)), vec![1]);

        // c: a cancel marks the waiting row; 0's success then counts nothing down, and
        // the coordinator reads 1 as cancelled before any worker claimed it.
        q.offer(&[row("c", 0, 0, &[1]), row("c", 1, 1, &[])])
            .unwrap();
        let c0 = claim("w1", 60_000);
        assert_eq!(nodes(&c0), vec![0]);
        q.cancel("c", token).unwrap();
        assert_eq!(
            q.finish(&[(c0[0].claim.clone(), ok("7"))]).unwrap(),
            vec![true]
        );
        assert!(claim("w1", 60_000).is_empty());
        let ended = q.ended(&[("c".into(), token, 1)]).unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].owner, None);

        // A waiting row of an older run of the record is replaced by a new run's.
        q.offer(&[TaskOffer {
            run_token: 3,
            ..row("c", 1, 0, &[])
        }])
        .unwrap();
        assert_eq!(nodes(&claim("w1", 60_000)), vec![1]);
        for (run, t) in [("r", token), ("s", token), ("c", token), ("c", 3)] {
            q.clear(run, t).unwrap();
        }
        assert!(rows(&url, "SELECT 1 FROM procession_task_claims").is_empty());
    })
    .join()
    .unwrap();
}

// The finishing worker takes the dependents its successes made ready, in the same
// statement (`finish_and_claim`): up to its room, of its process types only, each under
// a claim of its own (token raised, renewed by its heartbeat, fenced as any claim); the
// others become ready for any worker's claim.
#[test]
fn the_finish_statement_hands_ready_dependents_to_its_worker() {
    let Some(url) = pg::database("cascade_handover") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let token = 77;
        let row = |node: u32, kind: &str, pending: u32, dependents: &[u32]| TaskOffer {
            process_type: kind.into(),
            attempts: 2,
            max_attempts: 3,
            deadline_ms: Some(60_000),
            ..offer("h", token, node, pending, dependents)
        };
        let ok = succeeded("1");
        let nodes = |c: &[ClaimedTask]| {
            let mut n: Vec<u32> = c.iter().map(|c| c.claim.node).collect();
            n.sort_unstable();
            n
        };
        // 0 -> 1, 2 (of this worker's type) and 3 (of another type); 1 -> 4.
        q.offer(&[
            row(0, "cascade", 0, &[1, 2, 3]),
            row(1, "cascade", 1, &[4]),
            row(2, "cascade", 1, &[]),
            row(3, "other", 1, &[]),
            row(4, "cascade", 1, &[]),
        ])
        .unwrap();
        let zero = q.claim("w1", &["cascade"], 60_000, 10).unwrap();
        assert_eq!(nodes(&zero), vec![0]);
        // Room for one: 1 is handed over (the lowest node), 2 and 3 become ready.
        let (stored, handed) = finish_one(q, &zero[0], "w1", 1);
        assert_eq!(stored, vec![true]);
        assert_eq!(nodes(&handed), vec![1]);
        let one = &handed[0];
        assert_eq!(one.process_type, "cascade");
        assert_eq!(one.claim.run_token, token);
        assert_eq!(one.claim.token, 1, "a claim raises the token");
        assert_eq!(one.attempts, 2, "the attempts before the claim");
        let r = rows(
            &url,
            "SELECT owner, state, attempt, deadline_at IS NOT NULL, expires_at > 0
             FROM procession_task_claims WHERE run = 'h' AND node = 1",
        );
        assert_eq!(r[0].get::<_, Option<String>>(0).as_deref(), Some("w1"));
        assert_eq!(r[0].get::<_, i16>(1), 1, "running");
        assert_eq!(r[0].get::<_, i32>(2), 3, "its attempt numbers go on");
        assert!(r[0].get::<_, bool>(3) && r[0].get::<_, bool>(4));
        assert_eq!(
            nodes(&q.claim("w2", &["cascade"], 60_000, 10).unwrap()),
            vec![2],
            "1 is taken: only 2 is left to claim"
        );
        assert_eq!(
            nodes(&q.claim("w2", &["other"], 60_000, 10).unwrap()),
            vec![3],
            "another type is never handed over, it becomes ready"
        );
        // The handed claim is renewed by its worker's heartbeat and fenced as any.
        let (_, beat) = q
            .heartbeat_tasks("w1", &[], std::slice::from_ref(&one.claim), 60_000)
            .unwrap();
        assert!(beat.refused.is_empty(), "the handed claim stands");
        let mut stale = one.claim.clone();
        stale.token -= 1;
        assert_eq!(q.finish(&[(stale, ok.clone())]).unwrap(), vec![false]);
        // Its own success hands 4 over; a plain finish hands nothing (4 was taken).
        let (stored, next) = q
            .finish_and_claim(
                &[(one.claim.clone(), ok.clone())],
                "w1",
                &["cascade"],
                60_000,
                8,
            )
            .unwrap();
        assert_eq!(stored, vec![true]);
        assert_eq!(nodes(&next), vec![4]);
        assert!(q.claim("w2", &["cascade"], 60_000, 10).unwrap().is_empty());
        q.clear("h", token).unwrap();
        assert!(rows(&url, "SELECT 1 FROM procession_task_claims").is_empty());
    })
    .join()
    .unwrap();
}

// Two finishes that count the same waiting dependent down at once (two workers ending
// two of its dependencies together): the second waits for the first's lock instead of
// skipping the row, so the count reaches 0 and the dependent becomes claimable without
// its coordinator's offer. The first finish is stood in for by a transaction holding
// the waiting row locked.
#[test]
fn a_finish_waits_for_a_waiting_row_another_statement_holds() {
    let Some(url) = pg::database("cascade_locked") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let token = 5;
        let row = |node: u32, pending: u32, dependents: &[u32]| {
            offer("l", token, node, pending, dependents)
        };
        let ok = succeeded("1");
        // 0 -> 1: 1 waits for 0 alone.
        q.offer(&[row(0, 0, &[1]), row(1, 1, &[])]).unwrap();
        let zero = q.claim("w1", &["cascade"], 60_000, 10).unwrap();
        assert_eq!(zero.len(), 1);
        let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = holder.transaction().unwrap();
        tx.query(
            "SELECT 1 FROM procession_task_claims WHERE run = 'l' AND node = 1 FOR UPDATE",
            &[],
        )
        .unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let url2 = url.clone();
        let claim = zero[0].claim.clone();
        let end = ok.clone();
        let finisher = std::thread::spawn(move || {
            let store = PgStore::connect(&url2).unwrap();
            let q = store.task_queue().unwrap();
            let out = q.finish(&[(claim, end)]).unwrap();
            done_tx.send(()).unwrap();
            out
        });
        // The finish waits for the lock (it would have skipped the row and stored its
        // end at once before).
        assert!(
            done_rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "the finish waits for the waiting row's lock"
        );
        tx.commit().unwrap();
        assert_eq!(finisher.join().unwrap(), vec![true]);
        let one = q.claim("w2", &["cascade"], 60_000, 10).unwrap();
        assert_eq!(
            one.iter().map(|c| c.claim.node).collect::<Vec<_>>(),
            vec![1],
            "the dependent was counted down to 0 once the lock was released"
        );
        q.clear("l", token).unwrap();
    })
    .join()
    .unwrap();
}

// A finish wakes the other workers only when they have something to do: ready rows it
// did not take itself (`''`), or ends of runs another worker coordinates that the
// coordinator acts on (`'e'`: here the end of a task without dependents). The
// coordinator finishing its own run's tasks, all of whose dependents it takes, sends no
// notification (every finish woke every worker before).
#[test]
fn a_finish_notifies_only_when_another_worker_has_work() {
    let Some(url) = pg::database("cascade_notify") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let token = 9;
        let row = |node: u32, pending: u32, dependents: &[u32]| {
            offer("n", token, node, pending, dependents)
        };
        // w1 coordinates run `n` (holds its lease).
        pg::sql(
            &url,
            "INSERT INTO procession_leases (run, owner, token, expires_at)
             VALUES ('n', 'w1', 1, 9223372036854775807)",
        );
        // 0 -> 1 -> 2, 3 -> 4.
        q.offer(&[
            row(0, 0, &[1]),
            row(1, 1, &[2]),
            row(2, 1, &[]),
            row(3, 0, &[4]),
            row(4, 1, &[]),
        ])
        .unwrap();
        let mut listener = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        listener.batch_execute("LISTEN procession_tasks").unwrap();
        let heard = |listener: &mut postgres::Client| -> Vec<String> {
            use postgres::fallible_iterator::FallibleIterator as _;
            let mut got = Vec::new();
            let mut notes = listener.notifications();
            let mut it = notes.timeout_iter(Duration::from_millis(300));
            while let Ok(Some(n)) = it.next() {
                got.push(n.payload().to_owned());
            }
            got
        };
        let _ = heard(&mut listener);
        let mut claimed = q.claim("w1", &["cascade"], 60_000, 10).unwrap();
        claimed.sort_by_key(|c| c.claim.node);
        assert_eq!(claimed.len(), 2, "0 and 3");
        // The coordinator finishes 0 and takes 1: nobody else has anything to do.
        let (stored, handed) = finish_one(q, &claimed[0], "w1", 1);
        assert_eq!((stored, handed.len()), (vec![true], 1));
        assert!(heard(&mut listener).is_empty(), "no notification");
        // Without room, 1's dependent 2 is left ready: the others are told.
        let (stored, handed) = finish_one(q, &handed[0], "w1", 0);
        assert_eq!((stored, handed.len()), (vec![true], 0));
        assert_eq!(heard(&mut listener), vec![String::new()]);
        // Another worker's success that counted its dependent down (and took it) leaves
        // the coordinator nothing to do: it reads the end at its next poll.
        let (stored, handed) = finish_one(q, &claimed[1], "w2", 1);
        assert_eq!((stored, handed.len()), (vec![true], 1));
        assert!(heard(&mut listener).is_empty(), "no notification");
        // Its end of a task without dependents (the run's last) tells the coordinator.
        let (stored, handed) = finish_one(q, &handed[0], "w2", 1);
        assert_eq!((stored, handed.len()), (vec![true], 0));
        assert_eq!(heard(&mut listener), vec!["e".to_owned()]);
        q.clear("n", token).unwrap();
    })
    .join()
    .unwrap();
}

/// Waits until `n` statements of the database at `url` wait for a row lock.
fn until_lock_waits(url: &str, n: i64) {
    for _ in 0..500 {
        let r = rows(
            url,
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND datname = current_database()",
        );
        if r[0].get::<_, i64>(0) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{n} statements never waited for a lock");
}

// A run's cancel and a finish of several of its running tasks at once (a worker ending
// a batch while the run is cancelled midway) do not deadlock: the finish locks its
// rows in (run, node) order, as the cancel does, whatever the order of its ends. A
// deadlock aborted the finish (1 s later): the rows the cancel had marked stayed
// claimed by a worker that had given them up, no worker could claim them again, and
// the run's coordinator waited for their ends until its cancellation grace ran out,
// which failed the cancelled run. The cancel is made to lock node 1 first and wait
// for node 2 while the finish, given its ends as [2, 1], holds node 2 (a transaction
// holding node 1 lines both up).
#[test]
fn a_finish_and_a_cancel_of_the_same_tasks_do_not_deadlock() {
    let Some(url) = pg::database("cascade_deadlock") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let token = 11;
        q.offer(&[offer("d", token, 1, 0, &[]), offer("d", token, 2, 0, &[])])
            .unwrap();
        let mut claimed = q.claim("w1", &["cascade"], 60_000, 10).unwrap();
        claimed.sort_by_key(|c| std::cmp::Reverse(c.claim.node));
        assert_eq!(
            claimed.iter().map(|c| c.claim.node).collect::<Vec<_>>(),
            vec![2, 1]
        );
        let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = holder.transaction().unwrap();
        tx.query(
            "SELECT 1 FROM procession_task_claims WHERE run = 'd' AND node = 1 FOR UPDATE",
            &[],
        )
        .unwrap();
        let url2 = url.clone();
        let cancel = std::thread::spawn(move || {
            let store = PgStore::connect(&url2).unwrap();
            store.task_queue().unwrap().cancel("d", token)
        });
        until_lock_waits(&url, 1);
        let url3 = url.clone();
        let ends: Vec<_> = claimed
            .iter()
            .map(|c| (c.claim.clone(), succeeded("3")))
            .collect();
        let finish = std::thread::spawn(move || {
            let store = PgStore::connect(&url3).unwrap();
            store.task_queue().unwrap().finish(&ends)
        });
        // The finish waits too (for node 1 or 2, depending on its order).
        until_lock_waits(&url, 2);
        tx.commit().unwrap();
        let cancelled = cancel.join().unwrap();
        let finished = finish.join().unwrap();
        assert!(cancelled.is_ok(), "the cancel: {cancelled:?}");
        assert_eq!(finished.unwrap(), vec![true, true], "both ends stored");
        let r = rows(
            &url,
            "SELECT node, state FROM procession_task_claims WHERE run = 'd' ORDER BY node",
        );
        let states: Vec<(i32, i16)> = r.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(states, vec![(1, 2), (2, 2)], "both done");
        q.clear("d", token).unwrap();
    })
    .join()
    .unwrap();
}

/// Waits until `n` statements of the database at `url` wait for a row lock, or `done`.
fn until_lock_waits_or(url: &str, n: i64, done: &dyn Fn() -> bool) {
    for _ in 0..500 {
        let r = rows(
            url,
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND datname = current_database()",
        );
        if r[0].get::<_, i64>(0) >= n || done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{n} statements never waited for a lock");
}

// The offer of a record's new run over the rows its previous run left (a waiting row,
// an ended one, a running one) and a cancel of that previous run (by its coordinator,
// still cancelling it) do not deadlock: both lock the rows that are not waiting first,
// then the waiting ones, each in (run, node) order, as the finish does. The offer
// locked its rows in (run, node) order alone: here it held the waiting node 1 and
// waited for node 2 (held by a transaction of the test) while the cancel held the
// running node 3 and waited for node 1; once node 2 was free the offer waited for node
// 3, and one of the two was aborted as a deadlock.
#[test]
fn an_offer_over_an_old_runs_rows_and_its_cancel_do_not_deadlock() {
    let Some(url) = pg::database("cascade_offer_cancel") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let (old, new) = (11, 12);
        q.offer(&[
            offer("o", old, 1, 1, &[]),
            offer("o", old, 2, 0, &[]),
            offer("o", old, 3, 0, &[]),
        ])
        .unwrap();
        let mut claimed = q.claim("w1", &["cascade"], 60_000, 10).unwrap();
        claimed.sort_by_key(|c| c.claim.node);
        assert_eq!(
            claimed.iter().map(|c| c.claim.node).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(finish_one(q, &claimed[0], "w1", 0).0, vec![true]);
        let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = holder.transaction().unwrap();
        tx.query(
            "SELECT 1 FROM procession_task_claims WHERE run = 'o' AND node = 2 FOR UPDATE",
            &[],
        )
        .unwrap();
        let url2 = url.clone();
        let offering = std::thread::spawn(move || {
            let store = PgStore::connect(&url2).unwrap();
            store.task_queue().unwrap().offer(&[
                offer("o", new, 1, 0, &[]),
                offer("o", new, 2, 0, &[]),
                offer("o", new, 3, 0, &[]),
            ])
        });
        until_lock_waits(&url, 1);
        let url3 = url.clone();
        let cancel = std::thread::spawn(move || {
            let store = PgStore::connect(&url3).unwrap();
            store.task_queue().unwrap().cancel("o", old)
        });
        // Before, the cancel waited for the offer here; now it has nothing to wait for.
        until_lock_waits_or(&url, 2, &|| cancel.is_finished());
        tx.commit().unwrap();
        let cancelled = cancel.join().unwrap();
        let offered = offering.join().unwrap();
        assert!(cancelled.is_ok(), "the cancel: {cancelled:?}");
        assert!(offered.is_ok(), "the offer: {offered:?}");
        let r = rows(
            &url,
            "SELECT node, run_token, state FROM procession_task_claims WHERE run = 'o'
             ORDER BY node",
        );
        let states: Vec<(i32, i64, i16)> =
            r.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        assert_eq!(
            states,
            vec![(1, 12, 0), (2, 12, 0), (3, 12, 0)],
            "the new run's rows, ready"
        );
        q.clear("o", new).unwrap();
    })
    .join()
    .unwrap();
}

// A worker's heartbeat, renewing its claims, and its finish of the same tasks (two
// connections of its pool) do not deadlock: the heartbeat locks the rows it renews in
// (run, node) order, as the finish does, whatever the order of its claims. It locked
// them in the order of its claims: here it held node 2 and waited for node 1, which
// the finish (first in line for it, behind a transaction of the test) took before it
// asked for node 2 (node 2's row is first in the table and among the claims).
#[test]
fn a_heartbeat_and_a_finish_of_the_same_tasks_do_not_deadlock() {
    let Some(url) = pg::database("cascade_beat_finish") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        let q = store.task_queue().expect("PostgreSQL has a task queue");
        let token = 5;
        // Node 2's row first: a scan of the table meets it before node 1's.
        q.offer(&[offer("h", token, 2, 0, &[])]).unwrap();
        q.offer(&[offer("h", token, 1, 0, &[])]).unwrap();
        let mut claimed = q.claim("w1", &["cascade"], 60_000, 10).unwrap();
        claimed.sort_by_key(|c| c.claim.node);
        assert_eq!(claimed.len(), 2);
        let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = holder.transaction().unwrap();
        tx.query(
            "SELECT 1 FROM procession_task_claims WHERE run = 'h' AND node = 1 FOR UPDATE",
            &[],
        )
        .unwrap();
        let url2 = url.clone();
        let ends: Vec<_> = claimed
            .iter()
            .map(|c| (c.claim.clone(), succeeded("3")))
            .collect();
        let finish = std::thread::spawn(move || {
            let store = PgStore::connect(&url2).unwrap();
            store.task_queue().unwrap().finish(&ends)
        });
        until_lock_waits(&url, 1);
        let url3 = url.clone();
        let claims: Vec<_> = claimed.iter().rev().map(|c| c.claim.clone()).collect();
        let beat = std::thread::spawn(move || {
            let store = PgStore::connect(&url3).unwrap();
            store
                .task_queue()
                .unwrap()
                .heartbeat_tasks("w1", &[], &claims, 60_000)
        });
        until_lock_waits(&url, 2);
        tx.commit().unwrap();
        let finished = finish.join().unwrap();
        let beat = beat.join().unwrap();
        assert_eq!(finished.unwrap(), vec![true, true], "both ends stored");
        let (_, tasks) = beat.expect("the heartbeat");
        let mut refused = tasks.refused;
        refused.sort();
        assert_eq!(
            refused,
            vec![("h".to_owned(), 1), ("h".to_owned(), 2)],
            "both ended before the heartbeat renewed them"
        );
        q.clear("h", token).unwrap();
    })
    .join()
    .unwrap();
}

/// A batch writing the task rows `nodes` of run `j`, in that order.
fn rows_of(nodes: &[u32]) -> procession::store::Batch {
    let mut b = procession::store::Batch::default();
    for &n in nodes {
        let row = procession::store::TaskRow {
            task: "t".into(),
            node: format!("n{n}").into(),
            state: procession::State::Done,
            attempts: 1,
            started_at: None,
            ended_at: None,
            elapsed_ns: 0,
            skipped: false,
            error: None,
            chain: Vec::new(),
            progress: procession::Progress::default(),
            log: Vec::new(),
            result: Some("1".into()),
            lease: 0,
            optional: false,
        };
        b.tasks.push((Arc::from("j"), n, row));
    }
    b
}

// Two writes of the same run's task rows, each listing them in an order of its own (a
// coordinator and the one it took the run over from, before that one is fenced out),
// do not deadlock: each writes them in (run, node) order. Each wrote them in its
// batch's order: here the write of [1, 2] waited for node 1 (held by a transaction of
// the test) while the write of [2, 1] held node 2 and waited for node 1 too; the
// first, granted node 1, then waited for node 2, and one of the two was aborted.
#[test]
fn two_writes_of_the_same_task_rows_do_not_deadlock() {
    let Some(url) = pg::database("cascade_rows_order") else {
        return;
    };
    std::thread::spawn(move || {
        let store = PgStore::connect(&url).unwrap();
        store.apply(rows_of(&[1, 2])).unwrap();
        let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = holder.transaction().unwrap();
        tx.query(
            "SELECT 1 FROM procession_tasks WHERE run = 'j' AND node = 1 FOR UPDATE",
            &[],
        )
        .unwrap();
        let write = |nodes: &'static [u32]| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::connect(&url).unwrap().apply(rows_of(nodes)))
        };
        let first = write(&[1, 2]);
        until_lock_waits(&url, 1);
        let second = write(&[2, 1]);
        until_lock_waits(&url, 2);
        tx.commit().unwrap();
        let first = first.join().unwrap();
        let second = second.join().unwrap();
        assert!(first.is_ok(), "the first write: {first:?}");
        assert!(second.is_ok(), "the second write: {second:?}");
        assert_eq!(store.tasks("j").unwrap().len(), 2);
    })
    .join()
    .unwrap();
}

/// The process of one step, coordinated by a runtime whose claims a trigger drops.
#[task]
fn unclaimed_step() -> u64 {
    7
}

#[process]
fn unclaimed(p: &mut Builder) {
    p.task(UnclaimedStep::new());
}

// The offer loop writes the offer of a run's task after the run's cancel marked its rows
// (the offer was on its way): it marks the run's rows again, and that mark fails once
// (here a trigger raising on the first row marked cancelled): it is written again, as
// a task's end is, and the task ends cancelled. Given up after one failure, the row
// stayed ready, to be claimed and run with no cancel to come; here no worker claims
// (a trigger drops every claim), so the run waited for that task until its
// cancellation grace ran out, and ended failed. The offer is held by an advisory lock
// the test holds, taken by a trigger on the row's insert, until the run's own cancel
// statement (which finds no row yet) was seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_mark_after_an_offer_that_fails_once_is_written_again() {
    let Some(url) = pg::database("cascade_remark") else {
        return;
    };
    let rt = Runtime::connect(url.clone())
        .lease(Duration::from_secs(3))
        .cancel_grace(Duration::from_secs(2))
        .spread_tasks(true)
        .register::<Unclaimed>()
        .start()
        .await
        .unwrap();
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        pg::sql(
            &u,
            "CREATE TABLE cancels_seen (at timestamptz DEFAULT now());
             CREATE SEQUENCE marks_written;
             CREATE FUNCTION hold_offer() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_advisory_xact_lock_shared(42);
                 RETURN NEW;
             END $$;
             CREATE TRIGGER hold_offer BEFORE INSERT ON procession_task_claims
             FOR EACH ROW EXECUTE FUNCTION hold_offer();
             CREATE FUNCTION no_claim() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RETURN NULL; END $$;
             CREATE TRIGGER no_claim BEFORE UPDATE ON procession_task_claims
             FOR EACH ROW WHEN (NEW.state = 1) EXECUTE FUNCTION no_claim();
             CREATE FUNCTION fail_first_mark() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('marks_written') = 1 THEN
                     RAISE EXCEPTION 'the first cancel mark fails';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER fail_first_mark BEFORE UPDATE ON procession_task_claims
             FOR EACH ROW WHEN (NEW.state = 4 AND OLD.state <> 4)
             EXECUTE FUNCTION fail_first_mark();
             CREATE FUNCTION see_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF current_query() LIKE '%SET state = 4%' THEN
                     INSERT INTO cancels_seen DEFAULT VALUES;
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER see_cancel AFTER UPDATE ON procession_task_claims
             FOR EACH STATEMENT EXECUTE FUNCTION see_cancel();",
        );
    })
    .await
    .unwrap();
    let mut gate = {
        let u = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&u, postgres::NoTls).unwrap();
            c.execute("SELECT pg_advisory_lock(42)", &[]).unwrap();
            c
        })
        .await
        .unwrap()
    };
    let run = rt
        .launch(Launch::new(Unclaimed {}).id("remark"))
        .await
        .unwrap();
    let waits = |q: &'static str| {
        let u = url.clone();
        async move {
            for _ in 0..1000 {
                let u = u.clone();
                let n = tokio::task::spawn_blocking(move || rows(&u, q)[0].get::<_, i64>(0))
                    .await
                    .unwrap();
                if n > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("never seen: {q}");
        }
    };
    // The offer waits for the gate; the run's cancel finds no row.
    waits(
        "SELECT count(*) FROM pg_stat_activity
         WHERE wait_event = 'advisory' AND datname = current_database()",
    )
    .await;
    run.cancel().await.unwrap();
    waits("SELECT count(*) FROM cancels_seen").await;
    let gate = tokio::task::spawn_blocking(move || {
        gate.execute("SELECT pg_advisory_unlock(42)", &[]).unwrap();
    });
    let r = tokio::time::timeout(Duration::from_mins(1), run.wait())
        .await
        .expect("the cancelled run ends")
        .unwrap();
    gate.await.unwrap();
    let stats = rt.task_stats();
    rt.shutdown().await.unwrap();
    assert_eq!(r.status, RunStatus::Cancelled, "{}", not_succeeded(&r));
    assert_eq!(r.tasks[0].status, TaskStatus::Cancelled, "{:?}", r.tasks[0]);
    assert_eq!(stats.claimed, 0, "{stats:?}");
}

static SLOW_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Runs a while without looking at its cancel.
#[task]
async fn slow_step() -> u64 {
    SLOW_STARTED.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    7
}

#[process]
fn slow(p: &mut Builder) {
    p.task(SlowStep::new());
}

// The statement writing a task's end fails once (a deadlock victim, a broken
// connection; here a trigger raising on the first end written): its worker writes it
// again instead of giving the task up. Given up, a task its run had asked to cancel was
// claimed by nobody again and never ended, and its coordinator abandoned it when its
// cancellation grace ran out: the run the user cancelled ended failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_runs_task_whose_end_could_not_be_written_once_ends() {
    let Some(url) = pg::database("cascade_retry") else {
        return;
    };
    let rt = Runtime::connect(url.clone())
        .lease(Duration::from_secs(3))
        .cancel_grace(Duration::from_secs(2))
        .spread_tasks(true)
        .register::<Slow>()
        .start()
        .await
        .unwrap();
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        pg::sql(
            &u,
            "CREATE SEQUENCE ends_written;
             CREATE FUNCTION fail_first_end() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('ends_written') = 1 THEN
                     RAISE EXCEPTION 'the first end written fails';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER fail_first_end BEFORE UPDATE ON procession_task_claims
             FOR EACH ROW WHEN (NEW.state IN (2, 3) AND OLD.state IN (1, 4))
             EXECUTE FUNCTION fail_first_end();",
        );
    })
    .await
    .unwrap();
    let run = rt.launch(Launch::new(Slow {}).id("slow")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), SLOW_STARTED.notified())
        .await
        .expect("the task started");
    run.cancel().await.unwrap();
    let r = tokio::time::timeout(Duration::from_mins(1), run.wait())
        .await
        .expect("the cancelled run ends")
        .unwrap();
    let stats = rt.task_stats();
    rt.shutdown().await.unwrap();
    assert!(
        matches!(r.status, RunStatus::Cancelled | RunStatus::Succeeded),
        "ended {:?}: {}",
        r.status,
        not_succeeded(&r)
    );
    assert_eq!(
        r.tasks[0].status,
        TaskStatus::Success,
        "its end was written"
    );
    assert_eq!((stats.claimed, stats.finished), (1, 1), "{stats:?}");
}
