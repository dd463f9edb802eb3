//! `--postgres [--quick] [--url <url>]`: procession on PostgreSQL (issue 14), one worker,
//! against a pgbench ceiling measured in the same run on the same server.
//!
//! - The server: a throw-away cluster started the way the tests start theirs (the tests'
//!   harness, `tests/pg/mod.rs`), but with `fsync` and `synchronous_commit` on, as a
//!   production server; or the server at `--url` (or `PROCESSION_BENCH_PG_URL`): a URL
//!   of a role allowed to create databases.
//! - procession: the wide 1k, wide 10k and layered 10x1k graphs, each run by a fresh
//!   runtime (`Runtime::connect`) on a fresh database; the time from the launch to the
//!   run's end; every run's checksum is checked against the hand-written executor's.
//! - The ceiling: `pgbench -n -M prepared -c 4 -j 2 -T 10` on a table of 400,000 jobs
//!   with a partial index of the claimable ones; one transaction claims 10 jobs
//!   (`FOR UPDATE SKIP LOCKED` in a materialized CTE, raising each job's lease) and
//!   finishes them with a fenced `UPDATE` (`… AND lease = <claimed lease>`); jobs/s =
//!   10 x transactions/s, checked against the finished rows counted afterwards.
//!
//! Rounds interleave the ceiling and the graphs (5 rounds, 1 with `--quick` and a 3 s
//! pgbench); medians are printed with the ratio to the ceiling.
//!
//! `--spread-only` prints the ceiling and the rows of task spreading alone
//! (`PROCESSION_BENCH_CASCADE=0`: without the cascade, `RuntimeBuilder::spread_cascade`).
//!
//! `--spread-cost [--url <url>]` prints what one worker's task spreading costs the
//! server, per task, for each of the spread rows' graphs (medians of 3 runs on fresh
//! databases): WAL records and bytes (`pg_stat_wal`, the whole cluster), the tables'
//! row updates and the share of them that were HOT, and with `pg_stat_statements`
//! (preloaded on the server at `--url`) each statement's calls, execution time, buffers
//! hit and dirtied and WAL records. These figures do not swing with the machine's load.
//!
//! Then several worker processes (this program re-executed with the hidden
//! `--pg-worker`), each a runtime of its own on one database:
//! - tasks/s with 1, 2 and 4 workers: 200 runs of a wide-50 graph (100 with `--quick`),
//!   each worker launching its share on a common `go`; the time from `go` to the last
//!   worker's end; medians of 3 rounds (1 with `--quick`), against the ceiling above;
//! - the takeover after `kill -9` with a 1 s lease: a worker holding 4 slow chains is
//!   killed in each chain's second step; the time from the kill to a standby worker's
//!   first step of each run (the steps write their attempts into a table `effects`,
//!   stamped by the database's clock); steps run twice; every run's final value.
//!
//! Then the hot path against finished rows (`--hot-path` prints only this): the median
//! time of each hot store method (takeover poll, heartbeat, claim, outbox claim, an
//! idle retention sweep) with no finished run and with 100,000, and the retention
//! sweep's rate deleting them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use procession::prelude::*;

use super::{
    baseline, checksum, group_digits, launch_shape, median, ms, register, AnyResult, Shape,
};

#[path = "../../tests/pg/mod.rs"]
#[allow(dead_code, unreachable_pub, clippy::all, clippy::pedantic)]
mod pg;

/// Jobs in the ceiling's table: more than 4 clients finish in 10 s on this machine kind.
const JOBS: i64 = 400_000;

/// Jobs claimed and finished per pgbench transaction.
const PER_TXN: f64 = 10.0;

const SCRIPT: &str = r"BEGIN;
WITH c AS MATERIALIZED (
    SELECT id FROM jobs WHERE state = 0 ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED),
u AS (
    UPDATE jobs j SET state = 1, lease = j.lease + 1, owner = :client_id
    FROM c WHERE j.id = c.id RETURNING j.id, j.lease)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(lease), '{}') AS leases FROM u \gset
UPDATE jobs j SET state = 2, result = j.id * 2
FROM unnest(:ids::bigint[], :leases::bigint[]) AS f(id, lease)
WHERE j.id = f.id AND j.state = 1 AND j.lease = f.lease;
COMMIT;
";

const SETUP: &str = "
CREATE TABLE jobs (
    id     bigint PRIMARY KEY,
    state  smallint NOT NULL DEFAULT 0,
    lease  bigint   NOT NULL DEFAULT 0,
    owner  integer,
    result bigint
);
CREATE INDEX jobs_claimable ON jobs (id) WHERE state = 0;
";

/// Runs `sql` (no parameters) on `url`, off the async threads; returns the first column
/// of the last row returned, if any.
async fn sql(url: &str, sql: &str) -> AnyResult<Option<String>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || -> AnyResult<Option<String>> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        let mut last = None;
        for m in c.simple_query(&sql)? {
            if let postgres::SimpleQueryMessage::Row(r) = m {
                last = r.get(0).map(str::to_owned);
            }
        }
        Ok(last)
    })
    .await?
}

async fn new_database(admin: &str, name: &str) -> AnyResult<String> {
    let (admin, name) = (admin.to_owned(), name.to_owned());
    Ok(tokio::task::spawn_blocking(move || pg::create_database(&admin, &name)).await??)
}

/// Drops the database of `url` (an external server is left as it was found).
async fn drop_database(admin: &str, url: &str) -> AnyResult<()> {
    let name = url.rsplit('/').next().unwrap_or_default();
    sql(admin, &format!("DROP DATABASE IF EXISTS {name}")).await?;
    Ok(())
}

/// One pgbench measurement: jobs/s.
async fn ceiling(admin: &str, pgbench: &Path, secs: u32) -> AnyResult<f64> {
    let url = new_database(admin, "ceiling").await?;
    sql(&url, SETUP).await?;
    sql(
        &url,
        &format!("INSERT INTO jobs (id) SELECT g FROM generate_series(1, {JOBS}) g"),
    )
    .await?;
    sql(&url, "VACUUM ANALYZE jobs").await?;
    let script =
        std::env::temp_dir().join(format!("procession-pgbench-{}.sql", std::process::id()));
    std::fs::write(&script, SCRIPT)?;
    let (bin, u, s) = (pgbench.to_path_buf(), url.clone(), script.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["-n", "-M", "prepared", "-c", "4", "-j", "2", "-T"])
            .arg(secs.to_string())
            .arg("-f")
            .arg(&s)
            .arg(&u)
            .output()
    })
    .await??;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "pgbench failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let field = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let tps = field("tps = ").ok_or_else(|| format!("no tps in pgbench's output: {text}"))?;
    let txns = field("number of transactions actually processed: ")
        .ok_or_else(|| format!("no transaction count in pgbench's output: {text}"))?;
    let finished: f64 = sql(&url, "SELECT count(*) FROM jobs WHERE state = 2")
        .await?
        .and_then(|v| v.parse().ok())
        .ok_or("no count of finished jobs")?;
    // Every transaction claimed and finished its 10 jobs (the table never ran dry).
    if (finished - txns * PER_TXN).abs() > 0.5 {
        return Err(format!(
            "pgbench processed {txns} transactions but {finished} jobs were finished \
             (expected {PER_TXN} per transaction)"
        )
        .into());
    }
    drop_database(admin, &url).await?;
    Ok(tps * PER_TXN)
}

/// Transactions committed in the database of `url` so far (the server's statistics,
/// which a session reports when it ends).
async fn commits(url: &str) -> AnyResult<u64> {
    Ok(sql(
        url,
        "SELECT pg_stat_clear_snapshot();
         SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .await?
    .and_then(|v| v.parse().ok())
    .unwrap_or(0))
}

/// One run of `shape` by a fresh runtime on a fresh database: the time from the launch
/// to the run's end, and the transactions committed from the runtime's start to its end.
async fn procession_run(admin: &str, shape: Shape, expect: u64) -> AnyResult<(Duration, u64)> {
    let url = new_database(admin, "graph").await?;
    let before = commits(&url).await?;
    let rt = register(Runtime::connect(url.clone())).start().await?;
    let t = Instant::now();
    let report = launch_shape(&rt, shape).await?;
    let took = t.elapsed();
    rt.shutdown().await?;
    drop(rt);
    if checksum(&report) != expect {
        return Err(format!("{} on PostgreSQL computed a wrong sum", shape.name()).into());
    }
    // The sessions report their statistics as they end, a moment after they close.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = commits(&url).await?;
    drop_database(admin, &url).await?;
    // Less the reading session's own commit.
    Ok((took, after.saturating_sub(before + 1)))
}

pub(crate) async fn run(args: &[String]) -> AnyResult<()> {
    let quick = args.iter().any(|a| a == "--quick");
    // Only the ceiling and the rows of task spreading.
    let spread_only = args.iter().any(|a| a == "--spread-only");
    let external = args
        .iter()
        .position(|a| a == "--url")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("PROCESSION_BENCH_PG_URL").ok());
    let (cluster, admin) = match external {
        Some(url) => (None, url),
        None => {
            let c = tokio::task::spawn_blocking(|| pg::Cluster::start(pg::Durability::Full))
                .await?
                .map_err(|e| format!("cannot start a PostgreSQL cluster: {e}"))?;
            let url = c.url.clone();
            (Some(c), url)
        }
    };
    if args.iter().any(|a| a == "--spread-cost") {
        spread_cost(&admin).await?;
        drop(cluster);
        return Ok(());
    }
    if args.iter().any(|a| a == "--hot-path") {
        hot_path(&admin, quick).await?;
        drop(cluster);
        return Ok(());
    }
    let pgbench = cluster
        .as_ref()
        .map_or_else(|| PathBuf::from("pgbench"), |c| c.program("pgbench"));
    let (rounds, secs) = if quick { (1, 3) } else { (5, 10) };
    let shapes = [
        Shape::Wide(1_000),
        Shape::Wide(10_000),
        Shape::Layered {
            layers: 10,
            width: 1_000,
        },
    ];
    let version = sql(&admin, "SHOW server_version")
        .await?
        .unwrap_or_default();
    let fsync = sql(&admin, "SHOW fsync").await?.unwrap_or_default();
    let sync = sql(&admin, "SHOW synchronous_commit")
        .await?
        .unwrap_or_default();
    println!(
        "PostgreSQL figures ({} server {version}, fsync={fsync}, synchronous_commit={sync}; \
         one procession worker; {} build; {rounds} round{}, medians)",
        if cluster.is_some() {
            "throw-away"
        } else {
            "external"
        },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        if rounds == 1 { "" } else { "s" }
    );
    let mut expect = BTreeMap::new();
    for (k, &shape) in shapes.iter().enumerate() {
        expect.insert(k, baseline(shape, true).await);
    }
    let mut ceilings = Vec::new();
    let mut times: BTreeMap<usize, Vec<Duration>> = BTreeMap::new();
    let mut txns: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for _ in 0..rounds {
        ceilings.push(ceiling(&admin, &pgbench, secs).await?);
        if spread_only {
            continue;
        }
        for (k, &shape) in shapes.iter().enumerate() {
            let (d, c) = procession_run(&admin, shape, expect[&k]).await?;
            times.entry(k).or_default().push(d);
            txns.entry(k).or_default().push(c);
        }
    }
    let mut sorted = ceilings.clone();
    sorted.sort_by(f64::total_cmp);
    let top = sorted[sorted.len() / 2];
    println!(
        "ceiling: pgbench -n -M prepared -c 4 -j 2 -T {secs}, one transaction = 10 jobs claimed \
         (FOR UPDATE SKIP LOCKED, lease+1) and finished (fenced UPDATE): {} jobs/s \
         (rounds: {})",
        group_digits(top),
        ceilings
            .iter()
            .map(|c| group_digits(*c))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if spread_only {
        spread_rows(&admin, quick, if quick { 1 } else { 3 }, top).await?;
        drop(cluster);
        return Ok(());
    }
    println!(
        "{:<16} {:>6} {:>10} {:>10} {:>11} {:>8} {:>10}",
        "graph", "tasks", "median ms", "tasks/s", "vs ceiling", "commits", "tasks/txn"
    );
    let mut worst: Option<(f64, String)> = None;
    for (k, &shape) in shapes.iter().enumerate() {
        let m = median(&times[&k]);
        let rate = shape.tasks() as f64 / m.as_secs_f64();
        let share = rate / top;
        let mut c = txns[&k].clone();
        c.sort_unstable();
        let c = c[c.len() / 2];
        println!(
            "{:<16} {:>6} {:>10.1} {:>10} {:>10.0}% {:>8} {:>10.1}",
            shape.name(),
            shape.tasks(),
            ms(m),
            group_digits(rate),
            share * 100.0,
            c,
            shape.tasks() as f64 / c.max(1) as f64
        );
        if worst.as_ref().is_none_or(|(w, _)| share < *w) {
            worst = Some((share, shape.name()));
        }
    }
    println!(
        "  commits = transactions committed by the runtime from its start to its shutdown \
         (pg_stat_database): procession writes the rows of many tasks per transaction \
         (group commit), the ceiling 10 jobs per transaction"
    );
    if let Some((w, name)) = worst {
        println!(
            "target (c-pg) >= 50% of the ceiling: {} (worst {:.0}% on {name})",
            if w >= 0.5 { "MET" } else { "NOT MET" },
            w * 100.0
        );
    }
    several_workers(&admin, quick, if quick { 1 } else { 3 }, top).await?;
    hot_path(&admin, quick).await?;
    spread_rows(&admin, quick, if quick { 1 } else { 3 }, top).await?;
    drop(cluster);
    Ok(())
}

// ----------------------------------------------------------------------------------------
// The hot path against finished rows (issue 14, point 6): per-statement times with none
// and with 100,000 finished runs, and the retention sweep's rate.
// ----------------------------------------------------------------------------------------

/// Finished runs in the database for the second measurement.
const FINISHED: u32 = 100_000;

/// Median time of `calls` calls of `f` (each a store method: one round trip or more).
fn per_call(what: &str, calls: u32, mut f: impl FnMut() -> AnyResult<()>) -> AnyResult<Duration> {
    let mut times = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let t = Instant::now();
        f().map_err(|e| {
            let mut text = format!("{what}: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        })?;
        times.push(t.elapsed());
    }
    Ok(median(&times))
}

/// The store methods of the hot path, each `calls` times: their medians, by name.
fn hot_statements(
    store: &procession::store::PgStore,
    leases: &[procession::store::Lease],
    calls: u32,
) -> AnyResult<Vec<(&'static str, Duration)>> {
    use procession::store::Store;
    let now = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX)
    };
    Ok(vec![
        (
            "takeover poll (claim_expired)",
            per_call("takeover poll (claim_expired)", calls, || {
                let got = store.claim_expired("w-other", &["job"], 30_000, 64)?;
                if got.is_empty() {
                    Ok(())
                } else {
                    Err("the takeover poll took a live run".into())
                }
            })?,
        ),
        (
            "heartbeat (10 leases)",
            per_call("heartbeat (10 leases)", calls, || {
                let beat = store.heartbeat("w-live", leases, 30_000)?;
                if beat.refused.is_empty() {
                    Ok(())
                } else {
                    Err("a renewal was refused".into())
                }
            })?,
        ),
        (
            "claim (one run)",
            per_call("claim (one run)", calls, || {
                store.claim("hot-claim", "w-live", 30_000)?;
                Ok(())
            })?,
        ),
        (
            "outbox claim (claim_deliveries)",
            per_call("outbox claim (claim_deliveries)", calls, || {
                store.claim_deliveries("w-live", now(), 30_000, 64)?;
                Ok(())
            })?,
        ),
        (
            "retention sweep, nothing due",
            per_call("retention sweep, nothing due", calls, || {
                store.sweep_finished(1, 100)?;
                Ok(())
            })?,
        ),
    ])
}

/// Per-statement medians with no finished run and with [`FINISHED`] (records, task
/// rows, released leases, delivered notifications), 20 active runs held by a live
/// worker throughout; then the retention sweep deletes the finished runs, 100 per
/// transaction, timed.
async fn hot_path(admin: &str, quick: bool) -> AnyResult<()> {
    use procession::store::{PgStore, Store};
    let url = new_database(admin, "hot").await?;
    let calls = if quick { 100 } else { 500 };
    let u = url.clone();
    let (empty, full, swept, took) = tokio::task::spawn_blocking(move || -> AnyResult<_> {
        let db = u.rsplit('/').next().unwrap_or_default().to_owned();
        let mut setup = postgres::Client::connect(&u, postgres::NoTls)?;
        // The statements' own cost, not the disk's flush: sessions of this database
        // commit without waiting for it (set before the store connects).
        setup.batch_execute(&format!("ALTER DATABASE {db} SET synchronous_commit = off"))?;
        let store = PgStore::connect(&u)?;
        setup.batch_execute(
            r"
INSERT INTO procession_records
    (id, created_at, state, process_type, root, parent, definition, scheduled, data, ended_at)
SELECT 'live-' || i, i, 2, 'job', 'live-' || i, NULL, false, false, '\x00'::bytea, NULL
FROM generate_series(1, 20) i;
ANALYZE;",
        )?;
        let leases = (1..=10)
            .map(|i| store.claim(&format!("live-{i}"), "w-live", 600_000))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 11..=20 {
            store.claim(&format!("live-{i}"), "w-live", 600_000)?;
        }
        let empty = hot_statements(&store, &leases, calls)?;
        setup.batch_execute(&format!(
            r"
INSERT INTO procession_records
    (id, created_at, state, process_type, root, parent, definition, scheduled, data, ended_at)
SELECT 'done-' || i, 100 + i, 3, 'job', 'done-' || i, NULL, false, false, '\x00'::bytea, 100 + i
FROM generate_series(1, {FINISHED}) i;
INSERT INTO procession_leases (run, owner, token, expires_at)
SELECT 'done-' || i, 'w-gone', 1, 0 FROM generate_series(1, {FINISHED}) i;
INSERT INTO procession_tasks (run, node, lease, data)
SELECT 'done-' || i, n, 1, '\x00'::bytea
FROM generate_series(1, {FINISHED}) i, generate_series(0, 3) n;
INSERT INTO procession_deliveries (id, state, created_at, next_at, run, channel, data)
SELECT 'd-' || i, 1, 100 + i, 100 + i, 'done-' || i, 'ops', '\x00'::bytea
FROM generate_series(1, {FINISHED}) i;
ANALYZE;"
        ))?;
        let full = hot_statements(&store, &leases, calls)?;
        drop(store);
        // The sweep commits as a production server does (new sessions).
        setup.batch_execute(&format!("ALTER DATABASE {db} RESET synchronous_commit"))?;
        let store = PgStore::connect(&u)?;
        let t = Instant::now();
        let mut swept = 0u64;
        loop {
            let s = store.sweep_finished(1_000_000_000, 100)?;
            swept += s.runs;
            if s.runs == 0 && s.deliveries == 0 {
                break;
            }
        }
        Ok((empty, full, swept, t.elapsed()))
    })
    .await??;
    drop_database(admin, &url).await?;
    println!(
        "hot path with none and with {} finished runs (each with 4 task rows, a released \
         lease, a delivered notification; 20 active runs held by a live worker): median \
         of {calls} calls of the store method, round trips included, synchronous_commit \
         off (the statements, not the disk's flush)",
        group_digits(f64::from(FINISHED))
    );
    println!(
        "{:<34} {:>12} {:>14} {:>7}",
        "statement",
        "0 finished",
        format!("{}k finished", FINISHED / 1_000),
        "ratio"
    );
    for ((name, a), (_, b)) in empty.iter().zip(&full) {
        println!(
            "{:<34} {:>9.0} µs {:>11.0} µs {:>6.2}x",
            name,
            a.as_secs_f64() * 1e6,
            b.as_secs_f64() * 1e6,
            b.as_secs_f64() / a.as_secs_f64().max(1e-9)
        );
    }
    println!(
        "retention sweep: {} finished runs deleted (records, task rows, leases, \
         notifications) in {:.2} s, 100 per transaction, synchronous_commit on: {} runs/s",
        group_digits(swept as f64),
        took.as_secs_f64(),
        group_digits(swept as f64 / took.as_secs_f64().max(1e-9))
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Several worker processes (issue 14, run level): the bench re-executes itself as workers
// (`--pg-worker`), each a runtime of its own on the same database.
// ----------------------------------------------------------------------------------------

/// Width of the graphs of the multi-worker throughput rows.
const WORKER_WIDTH: u32 = 50;

/// This process's worker name (`--pg-worker … <name>`), written into `effects`.
static WORKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// One step of the takeover graph: records its attempt (`effects`, with the database's
/// clock), works `ms`, returns the next value.
#[task]
async fn slow_step(
    ctx: &Ctx,
    url: String,
    run: String,
    i: u32,
    ms: u64,
    prev: u64,
) -> Result<u64, std::io::Error> {
    let worker = WORKER.get().cloned().unwrap_or_default();
    let attempt = ctx.attempt();
    tokio::task::spawn_blocking(move || -> Result<(), postgres::Error> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        c.execute(
            "INSERT INTO effects (run, task, attempt, worker) VALUES ($1, $2, $3, $4)",
            &[&run, &i64::from(i), &i64::from(attempt), &worker],
        )?;
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(prev * 3 + u64::from(i))
}

/// `steps` slow steps in a line: a run that is in the middle of a step when its worker
/// is killed.
#[process]
fn slow_chain(p: &mut Builder, url: String, run: String, steps: u32, ms: u64) {
    let mut prev = p.task(SlowStep::new(url.clone(), run.clone(), 1, ms, 0u64));
    for i in 2..=steps {
        prev = p.task(SlowStep::new(url.clone(), run.clone(), i, ms, prev));
    }
}

/// The value a `slow_chain` of `steps` steps ends with.
fn slow_expected(steps: u32) -> u64 {
    (1..=steps).fold(0, |v, i| v * 3 + u64::from(i))
}

/// `--pg-worker <url> <lease ms> <name> <wide|chain|standby> <runs> <size>`: one worker
/// process. `wide`: prints `ready`, waits for `go` on stdin, launches its `runs` wide
/// graphs of `size` tasks at once, waits for them and prints `done <runs> <wrong sums>`,
/// then exits. `chain`: launches `runs` slow chains of `size` steps (ids `<name>-<i>`),
/// prints `ready` and works until it is killed. `standby`: launches nothing, prints
/// `ready` and works (takes runs over) until it is killed.
pub(crate) async fn worker(args: &[String]) -> AnyResult<()> {
    let arg = |i: usize| -> AnyResult<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("--pg-worker: argument {i} missing").into())
    };
    let (url, lease_ms, name, kind) = (arg(0)?, arg(1)?.parse::<u64>()?, arg(2)?, arg(3)?);
    let runs: u32 = arg(4)?.parse()?;
    let size: u32 = arg(5)?.parse()?;
    let _ = WORKER.set(name.to_owned());
    {
        use tracing_subscriber::layer::SubscriberExt;
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Warnings));
    }
    let rt = register(Runtime::connect(url.to_owned()))
        .register::<SlowChain>()
        .lease(Duration::from_millis(lease_ms))
        .start()
        .await?;
    match kind {
        "wide" => {
            let expect = baseline(Shape::Wide(size), true).await;
            println!("ready {}", rt.worker_id());
            let mut line = String::new();
            tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await??;
            let mut handles = Vec::new();
            for _ in 0..runs {
                handles.push(rt.launch(super::Wide { n: size }).await?);
            }
            let reports =
                futures::future::join_all(handles.into_iter().map(procession::RunHandle::wait))
                    .await;
            let mut wrong = 0;
            for r in reports {
                if checksum(&r?) != expect {
                    wrong += 1;
                }
            }
            println!("done {runs} {wrong}");
            rt.shutdown().await?;
            Ok(())
        }
        "spread-wide" | "spread-layered" | "spread-helper" => {
            spread_worker(url, lease_ms, kind, runs, size).await
        }
        "chain" | "standby" => {
            if kind == "chain" {
                for i in 0..runs {
                    let id = format!("{name}-{i}");
                    drop(
                        rt.launch(
                            Launch::new(SlowChain {
                                url: url.to_owned(),
                                run: id.clone(),
                                steps: size,
                                ms: 250,
                            })
                            .id(id),
                        )
                        .await?,
                    );
                }
            }
            println!("ready {}", rt.worker_id());
            loop {
                tokio::time::sleep(Duration::from_hours(1)).await;
            }
        }
        other => Err(format!("--pg-worker: unknown kind {other}").into()),
    }
}

/// The graph of the spread rows: wide `size`, or 10 layers of `size`.
fn spread_shape(kind: &str, size: u32) -> Shape {
    if kind == "spread-layered" {
        Shape::Layered {
            layers: 10,
            width: size,
        }
    } else {
        Shape::Wide(size)
    }
}

/// A worker with task spreading on. `spread-wide` / `spread-layered`: prints `ready`,
/// waits for `go`, launches its `runs` graphs at once, waits for them and prints
/// `done <runs> <wrong sums>`. `spread-helper`: launches nothing, claims and runs the
/// others' tasks until it is killed.
async fn spread_worker(
    url: &str,
    lease_ms: u64,
    kind: &str,
    runs: u32,
    size: u32,
) -> AnyResult<()> {
    let rt = register(Runtime::connect(url.to_owned()))
        .lease(Duration::from_millis(lease_ms))
        .spread_tasks(true)
        // `PROCESSION_BENCH_CASCADE=0`: the rows without the cascade, to compare.
        .spread_cascade(std::env::var("PROCESSION_BENCH_CASCADE").as_deref() != Ok("0"))
        .start()
        .await?;
    if kind == "spread-helper" {
        println!("ready {}", rt.worker_id());
        loop {
            tokio::time::sleep(Duration::from_hours(1)).await;
        }
    }
    let shape = spread_shape(kind, size);
    let expect = baseline(shape, true).await;
    println!("ready {}", rt.worker_id());
    let mut line = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await??;
    let reports = futures::future::join_all((0..runs).map(|_| launch_shape(&rt, shape))).await;
    let mut wrong = 0;
    for r in reports {
        if checksum(&r?) != expect {
            wrong += 1;
        }
    }
    let s = rt.task_stats();
    println!("done {runs} {wrong} claimed={}", s.claimed);
    rt.shutdown().await?;
    Ok(())
}

/// One round of task spreading: `workers` processes (one launching `runs` graphs of
/// `kind`, the others helping) on a fresh database; the time from `go` to the end of
/// the runs, and the share of the tasks the launcher ran itself.
async fn spread_round(
    admin: &str,
    workers: u32,
    kind: &'static str,
    runs: u32,
    size: u32,
) -> AnyResult<(Duration, f64)> {
    let url = new_database(admin, "spread").await?;
    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || -> AnyResult<(Duration, f64)> {
        let mut helpers = Vec::new();
        for w in 1..workers {
            helpers.push(Proc::start(
                &u,
                10_000,
                &format!("h{w}"),
                "spread-helper",
                0,
                0,
            )?);
        }
        let mut launcher = Proc::start(&u, 10_000, "w0", kind, runs, size)?;
        let t = Instant::now();
        launcher.go()?;
        let done = launcher.expect("done", Duration::from_mins(10))?;
        let took = t.elapsed();
        let f: Vec<&str> = done.split(' ').collect();
        if f.get(2) != Some(&"0") {
            return Err(format!("spread runs computed wrong sums: {done}").into());
        }
        let claimed: f64 = f
            .get(3)
            .and_then(|c| c.strip_prefix("claimed="))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0.0);
        let total = spread_shape(kind, size).tasks() as f64 * f64::from(runs);
        drop(helpers);
        Ok((took, claimed / total))
    })
    .await??;
    drop_database(admin, &url).await?;
    Ok(out)
}

/// The rows of task spreading (`RuntimeBuilder::spread_tasks`): tasks/s of one run's
/// tasks spread over 1, 2 and 4 worker processes, wide and layered, against `top`.
async fn spread_rows(admin: &str, quick: bool, rounds: usize, top: f64) -> AnyResult<()> {
    let (runs, size) = if quick { (1, 500) } else { (2, 1_000) };
    let layered = size / 10;
    println!(
        "task spreading (spread_tasks: the launching worker coordinates, every worker claims \
         tasks in batches and finishes each with a fenced statement, which also makes the \
         dependents whose dependencies all succeeded claimable): {runs} run{} of wide \
         {size} and of layered 10x{layered} launched by one worker, 0, 1 or 3 helper workers; \
         time from `go` to the runs' end; {rounds} round{}, medians",
        if runs == 1 { "" } else { "s" },
        if rounds == 1 { "" } else { "s" }
    );
    println!(
        "{:<16} {:<8} {:>6} {:>10} {:>10} {:>11} {:>14}",
        "graph", "workers", "tasks", "median ms", "tasks/s", "vs ceiling", "run by launcher"
    );
    for (kind, sz) in [("spread-wide", size), ("spread-layered", layered)] {
        let tasks = spread_shape(kind, sz).tasks() as f64 * f64::from(runs);
        for w in [1u32, 2, 4] {
            let mut times = Vec::new();
            let mut shares = Vec::new();
            for _ in 0..rounds {
                let (d, share) = spread_round(admin, w, kind, runs, sz).await?;
                times.push(d);
                shares.push(share);
            }
            let m = median(&times);
            shares.sort_by(f64::total_cmp);
            let rate = tasks / m.as_secs_f64();
            println!(
                "{:<16} {:<8} {:>6} {:>10.1} {:>10} {:>10.0}% {:>13.0}%",
                spread_shape(kind, sz).name(),
                w,
                tasks,
                ms(m),
                group_digits(rate),
                rate / top * 100.0,
                shares[shares.len() / 2] * 100.0
            );
        }
    }
    Ok(())
}

/// What one run of the spread rows cost the server ([`spread_cost`]).
#[derive(Default)]
struct Cost {
    wal_records: f64,
    wal_bytes: f64,
    wal_fpi: f64,
    /// Row updates of `procession_task_claims`, and how many were HOT.
    updates: f64,
    hot: f64,
    /// Per statement (its first 90 characters): calls, execution ms, buffers hit (and
    /// read), buffers dirtied, WAL records.
    statements: BTreeMap<String, [f64; 5]>,
}

/// The server-side cost per task of the spread rows with one worker (`--spread-cost`):
/// medians of 3 runs of each graph, each on a fresh database.
async fn spread_cost(admin: &str) -> AnyResult<()> {
    let (runs, size) = (2u32, 1_000u32);
    println!(
        "server cost of task spreading, one worker, {runs} runs per round, per task, \
         medians of 3 rounds (WAL: pg_stat_wal, whole cluster; updates: \
         procession_task_claims; statements: pg_stat_statements when preloaded)"
    );
    for (kind, sz) in [("spread-wide", size), ("spread-layered", size / 10)] {
        let tasks = spread_shape(kind, sz).tasks() as f64 * f64::from(runs);
        let mut costs = Vec::new();
        for _ in 0..3 {
            costs.push(cost_round(admin, kind, runs, sz, 1).await?);
        }
        let med = |f: &dyn Fn(&Cost) -> f64| {
            let mut v: Vec<f64> = costs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] / tasks
        };
        println!(
            "{}: WAL {:.2} records, {:.0} bytes, {:.3} full pages; {:.2} row updates, \
             {:.2} HOT",
            spread_shape(kind, sz).name(),
            med(&|c| c.wal_records),
            med(&|c| c.wal_bytes),
            med(&|c| c.wal_fpi),
            med(&|c| c.updates),
            med(&|c| c.hot),
        );
        let names: std::collections::BTreeSet<&String> =
            costs.iter().flat_map(|c| c.statements.keys()).collect();
        if names.is_empty() {
            continue;
        }
        println!(
            "  {:<90} {:>7} {:>8} {:>8} {:>8} {:>8}",
            "statement", "calls", "exec µs", "hit", "dirtied", "WAL rec"
        );
        for name in names {
            let col = |i: usize| med(&|c: &Cost| c.statements.get(name).map_or(0.0, |s| s[i]));
            println!(
                "  {:<90} {:>7.3} {:>8.1} {:>8.2} {:>8.2} {:>8.2}",
                name,
                col(0),
                col(1) * 1000.0,
                col(2),
                col(3),
                col(4)
            );
        }
    }
    several_cost(admin, runs, size / 10).await
}

/// The server-side cost per task of the layered spread row with 1, 2 and 4 worker
/// processes (one launching, the others helping), medians of 3 rounds: what more
/// workers add (statements of the task queue, their execution time, the claims among
/// them, WAL records, row updates).
async fn several_cost(admin: &str, runs: u32, width: u32) -> AnyResult<()> {
    let kind = "spread-layered";
    let tasks = spread_shape(kind, width).tasks() as f64 * f64::from(runs);
    println!(
        "{} with 1, 2 and 4 worker processes, per task, medians of 3 rounds (task queue \
         statements: those reading procession_task_claims)",
        spread_shape(kind, width).name()
    );
    println!(
        "{:<8} {:>11} {:>8} {:>8} {:>10} {:>8} {:>8}",
        "workers", "statements", "exec µs", "claims", "finishes", "WAL rec", "updates"
    );
    for workers in [1u32, 2, 4] {
        let mut costs = Vec::new();
        for _ in 0..3 {
            costs.push(cost_round(admin, kind, runs, width, workers).await?);
        }
        let med = |f: &dyn Fn(&Cost) -> f64| {
            let mut v: Vec<f64> = costs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] / tasks
        };
        let sum = |c: &Cost, i: usize, prefix: &str| -> f64 {
            c.statements
                .iter()
                .filter(|(k, _)| k.trim_start().starts_with(prefix))
                .map(|(_, v)| v[i])
                .sum()
        };
        println!(
            "{:<8} {:>11.3} {:>8.1} {:>8.3} {:>10.3} {:>8.2} {:>8.2}",
            workers,
            med(&|c| sum(c, 0, "")),
            med(&|c| sum(c, 1, "")) * 1000.0,
            med(&|c| sum(c, 0, "WITH c AS MATERIALIZED")),
            med(&|c| sum(
                c,
                0,
                "WITH u AS ( SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int2[]"
            )),
            med(&|c| c.wal_records),
            med(&|c| c.updates),
        );
    }
    Ok(())
}

/// One round of [`spread_cost`]: the launcher and `workers - 1` helpers on a fresh
/// database, the server's counters read before their start and after their exit.
async fn cost_round(
    admin: &str,
    kind: &'static str,
    runs: u32,
    size: u32,
    workers: u32,
) -> AnyResult<Cost> {
    let url = new_database(admin, "spread_cost").await?;
    // Created, and loaded (`shared_preload_libraries`): its functions work.
    let statements = sql(
        &url,
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT 1",
    )
    .await
    .is_ok()
        && sql(&url, "SELECT pg_stat_statements_reset()").await.is_ok();
    let wal = "SELECT wal_records || ' ' || wal_fpi || ' ' || \
               (pg_current_wal_lsn() - '0/0'::pg_lsn) FROM pg_stat_wal";
    let read_wal = |v: Option<String>| -> [f64; 3] {
        let v = v.unwrap_or_default();
        let mut it = v.split(' ').map(|x| x.parse::<f64>().unwrap_or(0.0));
        [
            it.next().unwrap_or(0.0),
            it.next().unwrap_or(0.0),
            it.next().unwrap_or(0.0),
        ]
    };
    // Runtimes start with the migrations: run once before the counters are read.
    if statements {
        sql(&url, "SELECT pg_stat_statements_reset()").await?;
    }
    let before = read_wal(sql(admin, wal).await?);
    let u = url.clone();
    tokio::task::spawn_blocking(move || -> AnyResult<()> {
        let mut helpers = Vec::new();
        for w in 1..workers {
            let name = format!("h{w}");
            helpers.push(Proc::start(&u, 10_000, &name, "spread-helper", 0, 0)?);
        }
        let mut launcher = Proc::start(&u, 10_000, "w0", kind, runs, size)?;
        launcher.go()?;
        let done = launcher.expect("done", Duration::from_mins(10))?;
        if done.split(' ').nth(2) != Some("0") {
            return Err(format!("spread runs computed wrong sums: {done}").into());
        }
        // Their sessions end (and report) with them.
        drop(helpers);
        // Its sessions report their statistics as they end.
        let deadline = Instant::now() + Duration::from_mins(1);
        while launcher.child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
    .await??;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = read_wal(sql(admin, wal).await?);
    let mut cost = Cost {
        wal_records: after[0] - before[0],
        wal_fpi: after[1] - before[1],
        wal_bytes: after[2] - before[2],
        ..Cost::default()
    };
    let tables = sql(
        &url,
        "SELECT pg_stat_clear_snapshot(); SELECT n_tup_upd || ' ' || n_tup_hot_upd \
         FROM pg_stat_user_tables WHERE relname = 'procession_task_claims'",
    )
    .await?
    .unwrap_or_default();
    let mut it = tables.split(' ').map(|x| x.parse::<f64>().unwrap_or(0.0));
    cost.updates = it.next().unwrap_or(0.0);
    cost.hot = it.next().unwrap_or(0.0);
    if statements {
        let u = url.clone();
        cost.statements =
            tokio::task::spawn_blocking(move || -> AnyResult<BTreeMap<String, [f64; 5]>> {
                let mut c = postgres::Client::connect(&u, postgres::NoTls)?;
                let mut out = BTreeMap::new();
                for r in c.query(
                    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90),
                            sum(calls)::float8, sum(total_exec_time),
                            sum(shared_blks_hit + shared_blks_read)::float8,
                            sum(shared_blks_dirtied)::float8, sum(wal_records)::float8
                     FROM pg_stat_statements
                     WHERE dbid = (SELECT oid FROM pg_database
                                   WHERE datname = current_database())
                       AND query ILIKE '%procession_task_claims%'
                       AND query !~* '^\\s*(CREATE|ALTER)'
                     GROUP BY 1",
                    &[],
                )? {
                    out.insert(
                        r.try_get(0)?,
                        [
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                            r.try_get(4)?,
                            r.try_get(5)?,
                        ],
                    );
                }
                Ok(out)
            })
            .await??;
    }
    drop_database(admin, &url).await?;
    Ok(cost)
}

/// Prints this process's warnings on stdout (`WARN <message> key=value…`), where the
/// parent reads the fenced writes of a worker it paused.
struct Warnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                let _ = write!(self.0, " {}={v:?}", f.name());
            }
            fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
                use std::fmt::Write as _;
                let _ = write!(self.0, " {}={v}", f.name());
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                use std::fmt::Write as _;
                let _ = write!(self.0, " {}={v}", f.name());
            }
        }
        if *event.metadata().level() <= tracing::Level::WARN {
            let mut t = Text(String::new());
            event.record(&mut t);
            println!("WARN{}", t.0);
        }
    }
}

/// A worker process started by [`Proc::start`]: killed with SIGKILL when dropped; its
/// stdout lines arrive on a channel.
struct Proc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `--pg-worker url lease name kind runs size` and waits for its `ready`.
    fn start(
        url: &str,
        lease_ms: u64,
        name: &str,
        kind: &str,
        runs: u32,
        size: u32,
    ) -> AnyResult<Proc> {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--pg-worker")
            .args([url, &lease_ms.to_string(), name, kind])
            .args([runs.to_string(), size.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc { child, lines: rx };
        p.expect("ready", Duration::from_mins(1))?;
        Ok(p)
    }

    /// The next line starting with `prefix` (other lines are skipped), within `within`.
    fn expect(&mut self, prefix: &str, within: Duration) -> AnyResult<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!("a worker printed no `{prefix}` within {within:?}").into())
                }
            }
        }
    }

    fn go(&mut self) -> AnyResult<()> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }
}

/// One round with `workers` processes sharing `runs` wide graphs on a fresh database:
/// the time from `go` to the last worker's end.
async fn workers_round(admin: &str, workers: u32, runs: u32) -> AnyResult<Duration> {
    let url = new_database(admin, "workers").await?;
    let u = url.clone();
    let took = tokio::task::spawn_blocking(move || -> AnyResult<Duration> {
        let mut procs = Vec::new();
        for w in 0..workers {
            // Worker `w` launches its share (the first ones take the remainder).
            let share = runs / workers + u32::from(w < runs % workers);
            procs.push(Proc::start(
                &u,
                10_000,
                &format!("w{w}"),
                "wide",
                share,
                WORKER_WIDTH,
            )?);
        }
        let t = Instant::now();
        for p in &mut procs {
            p.go()?;
        }
        for p in &mut procs {
            let done = p.expect("done", Duration::from_mins(10))?;
            if !done.ends_with(" 0") {
                return Err(format!("a worker computed wrong sums: {done}").into());
            }
        }
        Ok(t.elapsed())
    })
    .await??;
    drop_database(admin, &url).await?;
    Ok(took)
}

/// What one takeover round measured.
struct Takeover {
    /// Per run: from the kill (or the pause) to the standby's first step on it.
    times: Vec<Duration>,
    /// Steps run twice (started by the first worker, run again by the standby).
    rerun: u64,
    /// Runs whose final value was right.
    right: u32,
    /// A paused worker woken up after the takeover: its task rows dropped by the fence
    /// (`Applied::fenced`, from its writer's warnings), its runs stopped because their
    /// heartbeat was refused, and the steps it started after the standby's first step of
    /// the same run.
    zombie: Option<(u64, u64, u64)>,
}

/// One takeover round: worker `first` launches `runs` slow chains; once every run has
/// started its second step, it is killed with SIGKILL (or, with `pause`, stopped with
/// SIGSTOP until the standby has taken every run over, then continued); the standby
/// takes the runs over.
async fn takeover_round(
    admin: &str,
    lease_ms: u64,
    runs: u32,
    steps: u32,
    pause: bool,
) -> AnyResult<Takeover> {
    let url = new_database(admin, "takeover").await?;
    sql(
        &url,
        "CREATE TABLE effects (run text, task bigint, attempt bigint, worker text,
                               at double precision NOT NULL
                                   DEFAULT extract(epoch FROM clock_timestamp()),
                               PRIMARY KEY (run, task, attempt))",
    )
    .await?;
    let u = url.clone();
    let (stopped_at, standby, first) =
        tokio::task::spawn_blocking(move || -> AnyResult<(f64, Proc, Proc)> {
            let standby = Proc::start(&u, lease_ms, "standby", "standby", 0, 0)?;
            let mut first = Proc::start(&u, lease_ms, "first", "chain", runs, steps)?;
            let mut c = postgres::Client::connect(&u, postgres::NoTls)?;
            let until = |c: &mut postgres::Client, q: &str, what: &str| -> AnyResult<()> {
                let deadline = Instant::now() + Duration::from_mins(1);
                loop {
                    let n: i64 = c.query_one(q, &[])?.get(0);
                    if n >= i64::from(runs) {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(format!("{what} within 60 s").into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            until(
                &mut c,
                "SELECT count(DISTINCT run) FROM effects WHERE task >= 2 AND worker = 'first'",
                "the runs did not reach their second step",
            )?;
            std::thread::sleep(Duration::from_millis(100));
            let now = || -> AnyResult<f64> {
                Ok(std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs_f64())
            };
            if pause {
                signal(&first.child, "-STOP")?;
                let at = now()?;
                until(
                    &mut c,
                    "SELECT count(DISTINCT run) FROM effects WHERE worker = 'standby'",
                    "the standby did not take the paused worker's runs over",
                )?;
                signal(&first.child, "-CONT")?;
                Ok((at, standby, first))
            } else {
                first.child.kill()?;
                let at = now()?;
                first.child.wait()?;
                Ok((at, standby, first))
            }
        })
        .await??;
    // The runs end on the standby; an observer (registers nothing) waits for them.
    let observer = Runtime::connect(url.clone()).start().await?;
    let mut right = 0;
    for i in 0..runs {
        let report =
            tokio::time::timeout(Duration::from_mins(2), observer.wait(&format!("first-{i}")))
                .await
                .map_err(|_| "a taken-over run did not end within 120 s")??;
        if report.tasks.last().and_then(|t| t.result_as::<u64>().ok()) == Some(slow_expected(steps))
        {
            right += 1;
        }
    }
    observer.shutdown().await?;
    drop(standby);
    let zombie = if pause {
        // The woken worker's warnings: its runs stopped, and its dropped task rows.
        let first = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(lease_ms));
            first
        })
        .await?;
        let (mut fenced, mut halted) = (0, 0);
        for l in first.lines.try_iter() {
            if l.contains("lease was taken by another worker") {
                halted += 1;
            }
            if let Some(n) = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("fenced="))
                .and_then(|n| n.parse::<u64>().ok())
            {
                fenced += n;
            }
        }
        drop(first);
        let after = sql(
            &url,
            "SELECT count(*) FROM effects z WHERE z.worker = 'first' AND z.at > (
                 SELECT min(s.at) FROM effects s WHERE s.worker = 'standby' AND s.run = z.run)",
        )
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
        Some((fenced, halted, after))
    } else {
        drop(first);
        None
    };
    let firsts = sql(
        &url,
        "SELECT string_agg(f::text, ',') FROM (
             SELECT min(at) AS f FROM effects WHERE worker = 'standby' GROUP BY run) s",
    )
    .await?
    .unwrap_or_default();
    let times = firsts
        .split(',')
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|f| Duration::from_secs_f64((f - stopped_at).max(0.0)))
        .collect();
    let rerun = sql(
        &url,
        "SELECT count(*) FROM (SELECT 1 FROM effects GROUP BY run, task HAVING count(*) > 1) s",
    )
    .await?
    .and_then(|v| v.parse().ok())
    .unwrap_or(0);
    drop_database(admin, &url).await?;
    Ok(Takeover {
        times,
        rerun,
        right,
        zombie,
    })
}

/// Sends `sig` (`-STOP`, `-CONT`) to `child`.
fn signal(child: &std::process::Child, sig: &str) -> AnyResult<()> {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("kill {sig} {} failed", child.id()).into())
    }
}

/// The multi-worker rows: tasks/s with 1, 2 and 4 worker processes, and the takeover
/// after kill -9; `top` is the ceiling measured in this run (jobs/s).
async fn several_workers(admin: &str, quick: bool, rounds: usize, top: f64) -> AnyResult<()> {
    let runs: u32 = if quick { 100 } else { 200 };
    let tasks = f64::from(runs * WORKER_WIDTH);
    println!(
        "several worker processes (this program re-executed with --pg-worker, one runtime \
         each): {runs} runs of wide {WORKER_WIDTH} on a fresh database, each worker \
         launching its share at once on `go` (a run is claimed by the worker that launches \
         it, so the load is spread evenly, nothing is taken over); time from `go` to the \
         last worker's end; {rounds} round{}, medians",
        if rounds == 1 { "" } else { "s" }
    );
    println!(
        "{:<8} {:>6} {:>10} {:>10} {:>11}",
        "workers", "tasks", "median ms", "tasks/s", "vs ceiling"
    );
    let counts = [1u32, 2, 4];
    let mut times: BTreeMap<u32, Vec<Duration>> = BTreeMap::new();
    for _ in 0..rounds {
        for &w in &counts {
            times
                .entry(w)
                .or_default()
                .push(workers_round(admin, w, runs).await?);
        }
    }
    let mut rates = Vec::new();
    for &w in &counts {
        let m = median(&times[&w]);
        let rate = tasks / m.as_secs_f64();
        rates.push(rate);
        println!(
            "{:<8} {:>6} {:>10.1} {:>10} {:>10.0}%",
            w,
            tasks,
            ms(m),
            group_digits(rate),
            rate / top * 100.0
        );
    }
    let grows = rates.windows(2).map(|p| p[1] / p[0]).collect::<Vec<_>>();
    println!(
        "  throughput {} with workers (x{:.2} from 1 to 2, x{:.2} from 2 to 4; 2 cores shared \
         by the workers and the server)",
        if grows.iter().all(|g| *g > 1.05) {
            "grows"
        } else if grows.first().is_some_and(|g| *g > 1.05) {
            "grows from 1 to 2 workers, not beyond,"
        } else {
            "does not grow"
        },
        grows.first().copied().unwrap_or(0.0),
        grows.get(1).copied().unwrap_or(0.0)
    );

    let (lease_ms, runs, steps) = (1_000, 4, 12);
    let takeover_rounds = rounds.min(3);
    let total = runs * u32::try_from(takeover_rounds)?;
    for pause in [false, true] {
        let mut all = Vec::new();
        let (mut rerun, mut right, mut zombie) = (0, 0, (0, 0, 0));
        for _ in 0..takeover_rounds {
            let t = takeover_round(admin, lease_ms, runs, steps, pause).await?;
            all.extend(t.times);
            rerun += t.rerun;
            right += t.right;
            if let Some((f, h, a)) = t.zombie {
                zombie = (zombie.0 + f, zombie.1 + h, zombie.2 + a);
            }
        }
        if all.len() != total as usize {
            return Err(format!("the standby took {} of {total} runs over", all.len()).into());
        }
        if right != total {
            return Err(format!(
                "only {right} of {total} taken-over runs ended with the right value"
            )
            .into());
        }
        all.sort();
        let (med, max) = (all[all.len() / 2], all[all.len() - 1]);
        let leases = |d: Duration| d.as_secs_f64() * 1000.0 / lease_ms as f64;
        if pause {
            println!(
                "takeover of a paused worker (SIGSTOP, SIGCONT once the standby has every run): \
                 pause to the standby's first step of each run: median {:.0} ms, max {:.0} ms; \
                 steps run twice: {rerun}; right values: {right} of {total}; once woken, the \
                 paused worker had {} runs stopped by a refused heartbeat and {} stale task rows \
                 refused by the fence (Applied::fenced), and started {} steps after the \
                 takeover",
                ms(med),
                ms(max),
                zombie.1,
                zombie.0,
                zombie.2
            );
        } else {
            println!(
                "takeover after kill -9 (lease {lease_ms} ms: heartbeat every third of it, \
                 takeover poll every half): a worker holding {runs} runs of {steps} steps of \
                 250 ms is killed in each run's second step, a standby worker takes them over \
                 ({takeover_rounds} round{} of {runs} runs); kill to the standby's first step \
                 of each run: median {:.0} ms, max {:.0} ms ({:.1} and {:.1} leases); steps \
                 run twice: {rerun} (the step of each run in flight at the kill); right \
                 values: {right} of {total}; stale completions: none can come from a killed \
                 process (see the paused worker below)",
                if takeover_rounds == 1 { "" } else { "s" },
                ms(med),
                ms(max),
                leases(med),
                leases(max),
            );
        }
    }
    Ok(())
}
