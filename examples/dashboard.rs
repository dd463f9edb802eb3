//! The dashboard, live: a flagship-like nightly report runs again and again while the
//! admin API serves the dashboard on <http://127.0.0.1:7878/>.
//!
//! Each run fetches three sources page by page (their progress moves), cleans them, builds
//! the report and notifies the team chat. The "apac" source is down (its fetch is
//! optional: its cleaning is skipped and the report says the source is missing) and the
//! chat webhook fails (optional too): runs end done with two warnings. Every third run
//! fetches a slow archive, long enough to cancel it from the page.
//!
//! Run it with `cargo run --example dashboard --features admin` and open the printed URL.
//! Set `PROCESSION_DASHBOARD_ADDR` to listen elsewhere on the loopback interface.

use std::time::Duration;

use procession::admin::{self, AdminConfig};
use procession::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{source_name} answered 503 Service Unavailable")]
    Unavailable { source_name: String },
    #[error(transparent)]
    Cancelled(#[from] procession::Cancelled),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Report {
    orders: u32,
    missing: Vec<String>,
}

/// Fetches the orders of one source, page by page. "apac" is down.
#[task(timeout = "5m")]
async fn fetch_orders(ctx: &Ctx, source: String, pages: u32) -> Result<u32, FetchError> {
    for page in 0..pages {
        ctx.check_cancelled()?;
        let percent = f64::from(page) * 100.0 / f64::from(pages.max(1));
        ctx.progress(percent, format!("{source}: page {} of {pages}", page + 1));
        tokio::time::sleep(Duration::from_millis(400)).await;
        if source == "apac" && page == 2 {
            ctx.log(Level::Error, "apac: the gateway answered 503 three times");
            return Err(FetchError::Unavailable {
                source_name: source,
            });
        }
    }
    ctx.log(Level::Info, format!("{source}: {pages} pages fetched"));
    Ok(pages * 25)
}

/// Drops empty orders.
#[task]
async fn clean_orders(ctx: &Ctx, orders: u32) -> u32 {
    ctx.progress(50, "dropping empty orders");
    tokio::time::sleep(Duration::from_millis(600)).await;
    orders - orders / 10
}

/// Aggregates what the sources gave; runs although some could not be fetched.
#[task(on_dep_failure = "run_anyway")]
fn build_report(sources: Vec<String>, cleaned: Vec<Option<u32>>) -> Report {
    let mut r = Report {
        orders: 0,
        missing: Vec::new(),
    };
    for (s, c) in sources.into_iter().zip(cleaned) {
        match c {
            Some(n) => r.orders += n,
            None => r.missing.push(s),
        }
    }
    r
}

/// Posts the report to the chat; the webhook is down.
#[task]
async fn notify_chat(report: Report) -> Result<(), std::io::Error> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    Err(std::io::Error::other(format!(
        "chat webhook returned 503 for a report of {} orders",
        report.orders
    )))
}

/// Copies a month of history to cold storage: slow, and stops cleanly when cancelled.
#[task(timeout = "10m")]
async fn archive_history(ctx: &Ctx, days: u32) -> Result<u32, FetchError> {
    for day in 0..days {
        if ctx.is_cancelled() {
            ctx.log(Level::Warning, "cancelled: flushing the partial archive");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            ctx.check_cancelled()?;
        }
        ctx.progress(
            f64::from(day) * 100.0 / f64::from(days.max(1)),
            format!("day {} of {days}", day + 1),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(days)
}

/// The nightly report.
#[process]
fn nightly_report(p: &mut Builder, sources: Vec<String>, pages: u32, archive_days: u32) {
    let cleaned: Vec<Out<u32>> = sources
        .iter()
        .map(|s| {
            let raw = p.task(
                FetchOrders::new(s.clone(), pages)
                    .id(format!("fetch_{s}"))
                    .optional(),
            );
            p.task(CleanOrders::new(raw).id(format!("clean_{s}")))
        })
        .collect();
    let report = p.task(BuildReport::new(sources.clone(), cleaned).id("report"));
    p.task(NotifyChat::new(report).id("notify").optional());
    if archive_days > 0 {
        p.task(ArchiveHistory::new(archive_days).id("archive"));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("PROCESSION_DASHBOARD_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:7878".to_owned())
        .parse()?;
    let rt = Runtime::in_memory()
        .register::<NightlyReport>()
        .start()
        .await?;
    let server = admin::serve(rt.clone(), AdminConfig::default(), addr).await?;
    println!("dashboard: http://{}/", server.local_addr());
    let sources: Vec<String> = ["eu", "us", "apac"].map(String::from).to_vec();
    let mut n: u32 = 0;
    loop {
        n += 1;
        let run = rt
            .launch(NightlyReport {
                sources: sources.clone(),
                pages: 8 + n % 5,
                archive_days: if n % 3 == 1 { 60 } else { 0 },
            })
            .await?;
        println!("launched {}", run.id());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(15)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    server.shutdown().await;
    rt.shutdown().await?;
    Ok(())
}
