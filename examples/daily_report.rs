//! The flagship example: a daily revenue report, written the obvious way.
//!
//! Three sources are fetched, each is cleaned, the cleaned orders are aggregated into a
//! report, and the report is sent to the team chat and archived. No blocks and no mode:
//! each task starts when the tasks whose outputs it takes have ended, so the three fetches
//! run side by side (their start times are printed) and the archiver, which reads only the
//! report, runs although the chat notifier fails.
//!
//! Today "us" only answers on its third attempt (retries with exponential backoff), "apac"
//! stays down (its fetch is optional, and the report is built from the sources that
//! answered), and the chat webhook is down (the notifier is optional too): the run
//! succeeds with two warnings.
//!
//! Run it with `cargo run --example daily_report`. With the `webhook` feature and
//! `PROCESSION_WEBHOOK_URL` set, the run's report is also sent, signed, to that URL (see
//! `examples/webhook_receiver.rs`). With the `admin` feature and
//! `PROCESSION_ADMIN=127.0.0.1:7878` set, it also serves the admin API there, and keeps
//! serving after its run until Ctrl-C, for the `procession` command line (`cli/`):
//! `procession runs list --api http://127.0.0.1:7878`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use procession::prelude::*;
use procession::Definition;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    amount: f64,
    currency: String,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{source_name} answered 503 (attempt {attempt})")]
    Unavailable { source_name: String, attempt: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Report {
    orders: usize,
    revenue_eur: f64,
    by_source: Vec<(String, f64)>,
    missing: Vec<String>,
}

/// The report, by a name of our choosing: `main` reads it back from the run's report.
const REPORT: TaskKey<Report> = TaskKey::new("report");
/// Where the archiver wrote the report.
const ARCHIVE: TaskKey<String> = TaskKey::new("archive");

/// When the run started, to print when each fetch ran.
static T0: OnceLock<Instant> = OnceLock::new();

fn since_start() -> u128 {
    T0.get().map_or(0, |t| t.elapsed().as_millis())
}

/// Fetches the orders of one source. "us" answers 503 twice; "apac" is down all day.
#[task(retries = 2, backoff = "exponential(20ms, 200ms)", timeout = "2s")]
async fn fetch_orders(ctx: &Ctx, source: String) -> Result<Vec<Order>, FetchError> {
    let start = since_start();
    ctx.progress(10, format!("querying {source}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let down = (source == "us" && ctx.attempt() < 3) || source == "apac";
    println!(
        "  fetch {source:<4} attempt {}: +{start:>3} ms .. +{:>3} ms {}",
        ctx.attempt(),
        since_start(),
        if down { "503" } else { "ok" }
    );
    if down {
        return Err(FetchError::Unavailable {
            source_name: source,
            attempt: ctx.attempt(),
        });
    }
    let base = if source == "eu" { 100 } else { 200 };
    Ok((0..5)
        .map(|i| Order {
            id: base + i,
            amount: 10.0 * (i as f64 + 1.0),
            currency: if source == "eu" {
                "EUR".into()
            } else {
                "USD".into()
            },
        })
        .collect())
}

/// Converts a source's orders to euros and drops empty ones.
#[task]
fn clean_orders(orders: Vec<Order>) -> Vec<Order> {
    orders
        .into_iter()
        .filter(|o| o.amount > 0.0)
        .map(|o| {
            let rate = if o.currency == "USD" { 0.9 } else { 1.0 };
            Order {
                amount: o.amount * rate,
                currency: "EUR".into(),
                ..o
            }
        })
        .collect()
}

/// Aggregates the cleaned sources into the day's report. It runs even when some sources
/// could not be fetched (`run_anyway`): those arrive as `None` and are named as missing.
#[task(on_dep_failure = "run_anyway")]
fn build_report(sources: Vec<String>, cleaned: Vec<Option<Vec<Order>>>) -> Report {
    let mut report = Report {
        orders: 0,
        revenue_eur: 0.0,
        by_source: Vec::new(),
        missing: Vec::new(),
    };
    for (source, orders) in sources.into_iter().zip(cleaned) {
        match orders {
            Some(orders) => {
                let total: f64 = orders.iter().map(|o| o.amount).sum();
                report.orders += orders.len();
                report.revenue_eur += total;
                report.by_source.push((source, total));
            }
            None => report.missing.push(source),
        }
    }
    report
}

/// Posts the report to the team chat. The webhook is down today.
#[task(retries = 1, backoff = "fixed(10ms)")]
async fn notify_chat(report: Report) -> Result<(), std::io::Error> {
    // Stands for the HTTP call to the chat's webhook.
    tokio::time::sleep(Duration::from_millis(5)).await;
    Err(std::io::Error::other(format!(
        "chat webhook returned 503 for a report of {} orders",
        report.orders
    )))
}

/// Archives the report as JSON under the system's temporary directory.
#[task]
fn archive_report(report: Report) -> Result<String, std::io::Error> {
    let path = std::env::temp_dir().join("procession-daily-report.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).map_err(std::io::Error::other)?,
    )?;
    Ok(path.display().to_string())
}

/// Nightly revenue report.
#[process(schedule = "0 2 * * *")]
fn daily_report(p: &mut Builder, sources: Vec<String>) {
    // Each source: fetch, then clean. A source that stays down does not fail the day.
    let cleaned: Vec<Out<Vec<Order>>> = sources
        .iter()
        .map(|s| {
            let raw = p.task(
                FetchOrders::new(s.clone())
                    .id(format!("fetch_{s}"))
                    .optional(),
            );
            p.task(CleanOrders::new(raw).id(format!("clean_{s}")))
        })
        .collect();
    let report = p.task(BuildReport::new(sources.clone(), cleaned).id(REPORT));
    // Both read only the report: the archiver does not wait for the notifier.
    p.task(NotifyChat::new(report).id("notify").optional());
    p.task(ArchiveReport::new(report).id(ARCHIVE));
}

#[tokio::main]
async fn main() -> procession::Result<()> {
    // Runs are kept in ./procession-data: a run interrupted by a crash is resumed by the
    // next start, its finished tasks not run again.
    let sources = vec!["eu".to_owned(), "us".to_owned(), "apac".to_owned()];
    // The record `daily-report` runs every night at 02:00 UTC (the process's `schedule`),
    // with these parameters.
    let nightly = Definition::new(
        "daily-report",
        DailyReport {
            sources: sources.clone(),
        },
    )?;
    let rt = notify(Runtime::open("./procession-data"))
        .register::<DailyReport>()
        .define(nightly)
        .start()
        .await?;
    let admin = serve_admin(&rt).await;
    T0.get_or_init(Instant::now);
    let run = rt.launch(DailyReport { sources }).await?;
    let run_id = run.id().to_owned();
    println!("launched run {run_id}");
    // Ctrl-C (or a SIGTERM handler on a deploy) calls the default shutdown: it suspends
    // the run without recording a cancel, and the next start resumes it.
    let report = tokio::select! {
        report = run.wait() => report?,
        _ = tokio::signal::ctrl_c() => {
            println!("interrupted: suspending run {run_id}; the next start resumes it");
            rt.shutdown().await?;
            return Ok(());
        }
    };

    println!("\n{}", report.summary());
    if let Some(r) = report.get(&REPORT) {
        println!(
            "revenue: {:.2} EUR from {} orders ({}); missing: {}",
            r.revenue_eur,
            r.orders,
            r.by_source
                .iter()
                .map(|(s, v)| format!("{s}: {v:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.missing.join(", ")
        );
    }
    if let Some(path) = report.get(&ARCHIVE) {
        println!("archived to {path}");
    }
    for w in report.warnings() {
        let msg = w.error.as_ref().map_or("", |e| e.message.as_str());
        println!("warning: optional task `{}` failed: {msg}", w.id);
    }
    println!("\nJSON report:\n{}", report.to_json_pretty());

    // The run and its tasks are records in the store.
    let record = rt.get(run_id.as_str()).await?.expect("the run's record");
    println!(
        "\nrecord `{}`: {} ({:?})",
        record.id,
        record.state(),
        record.status.error
    );
    wait_for_notifications(&rt, &run_id).await?;
    keep_serving(admin).await;
    rt.shutdown().await?;
    Ok(())
}

/// With `PROCESSION_ADMIN` set (an address such as `127.0.0.1:7878`), serves the admin
/// API there for the `procession` command line.
#[cfg(feature = "admin")]
async fn serve_admin(rt: &Runtime) -> Option<procession::admin::Server> {
    use procession::admin::{self, AdminConfig};
    let addr = std::env::var("PROCESSION_ADMIN").ok()?;
    let addr: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("PROCESSION_ADMIN=`{addr}` is not an address like 127.0.0.1:7878: {e}");
            return None;
        }
    };
    match admin::serve(rt.clone(), AdminConfig::default(), addr).await {
        Ok(server) => {
            println!(
                "admin API on http://{0}: try `procession runs list --api http://{0}`",
                server.local_addr()
            );
            Some(server)
        }
        Err(e) => {
            eprintln!("not serving the admin API: {e}");
            None
        }
    }
}

#[cfg(feature = "admin")]
async fn keep_serving(admin: Option<procession::admin::Server>) {
    let Some(server) = admin else { return };
    println!(
        "\nstill serving the admin API on http://{}: Ctrl-C to stop",
        server.local_addr()
    );
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
}

#[cfg(not(feature = "admin"))]
async fn serve_admin(_rt: &Runtime) -> Option<std::convert::Infallible> {
    if std::env::var_os("PROCESSION_ADMIN").is_some() {
        eprintln!("PROCESSION_ADMIN is ignored: build with `--features admin`");
    }
    None
}

#[cfg(not(feature = "admin"))]
async fn keep_serving(_admin: Option<std::convert::Infallible>) {}

/// With `PROCESSION_WEBHOOK_URL` set, every run's report is sent there, signed with
/// `PROCESSION_WEBHOOK_SECRET` (the receiver example's demo secret by default). The
/// delivery is written with the run's end and retried, also by the next start, until
/// the receiver accepts it.
#[cfg(feature = "webhook")]
fn notify(builder: procession::RuntimeBuilder) -> procession::RuntimeBuilder {
    use procession::notify::{Channel, WebhookConfig};
    let Ok(url) = std::env::var("PROCESSION_WEBHOOK_URL") else {
        return builder;
    };
    let secret = std::env::var("PROCESSION_WEBHOOK_SECRET")
        .unwrap_or_else(|_| "whsec_cHJvY2Vzc2lvbi1kZW1vLXNlY3JldC0wMTIzNDU2Nzg5".into());
    let config = WebhookConfig::new(&url).and_then(|c| c.secret(&secret));
    match config.and_then(|c| Channel::webhook("report", c)) {
        Ok(channel) => builder.notify(channel),
        Err(e) => {
            eprintln!("not sending the report: {e}");
            builder
        }
    }
}

#[cfg(not(feature = "webhook"))]
fn notify(builder: procession::RuntimeBuilder) -> procession::RuntimeBuilder {
    if std::env::var_os("PROCESSION_WEBHOOK_URL").is_some() {
        eprintln!("PROCESSION_WEBHOOK_URL is ignored: build with `--features webhook`");
    }
    builder
}

/// Gives the report's delivery a few seconds before the shutdown (it is kept and
/// retried by the next start otherwise).
async fn wait_for_notifications(rt: &Runtime, run_id: &str) -> procession::Result<()> {
    use procession::store::{DeliveryQuery, DeliveryState};
    for _ in 0..50 {
        let page = rt.deliveries(DeliveryQuery::new().run(run_id)).await?;
        if page
            .deliveries
            .iter()
            .all(|d| d.state != DeliveryState::Pending)
        {
            for d in &page.deliveries {
                println!("notification {} to `{}`: {}", d.id, d.channel, d.state);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the notification is still pending: the next start retries it");
    Ok(())
}
