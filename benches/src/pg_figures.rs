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
    drop(cluster);
    Ok(())
}
