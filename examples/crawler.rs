//! A small crawler: tasks share an HTTP client and a page store registered on the
//! runtime (`Res<T>` parameters), the program follows one run through its own event
//! stream, and cancels a long crawl once it has made some progress.
//!
//! Run it with `cargo run --example crawler`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use procession::prelude::*;
use procession::{Cancelled, EventKind, State};

/// A stand-in for an HTTP client (a connection pool in a real program): not
/// serializable, shared by every task.
struct Http {
    latency: Duration,
}

impl Http {
    async fn get(&self, url: &str) -> String {
        tokio::time::sleep(self.latency).await;
        format!("<html>{url}</html>")
    }
}

/// Where pages go: a stand-in for a database pool.
#[derive(Default)]
struct PageStore {
    pages: Mutex<BTreeMap<String, usize>>,
}

/// Fetches `pages` pages of `site`, reporting progress; stops early when the run is
/// cancelled (and is then recorded cancelled, not done).
#[task]
async fn crawl_site(
    ctx: &Ctx,
    http: Res<Http>,
    store: Res<PageStore>,
    site: String,
    pages: u32,
) -> Result<u32, Cancelled> {
    for page in 0..pages {
        ctx.check_cancelled()?;
        let url = format!("{site}/page/{page}");
        let body = http.get(&url).await;
        store.pages.lock().unwrap().insert(url, body.len());
        ctx.progress(
            f64::from(page + 1) * 100.0 / f64::from(pages),
            format!("page {}/{pages}", page + 1),
        );
    }
    Ok(pages)
}

/// Counts what the store holds for `site` (`crawled`, the crawl's own count, makes it
/// wait for the crawl).
#[task]
fn count_pages(store: Res<PageStore>, site: String, crawled: u32) -> usize {
    let _ = crawled;
    let prefix = format!("{site}/");
    store
        .pages
        .lock()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .count()
}

#[process(description = "Crawl a site and count its pages")]
fn crawl(p: &mut Builder, site: String, pages: u32) {
    let crawled = p.task(CrawlSite::new(site.clone(), pages));
    p.task(CountPages::new(site, crawled));
}

#[tokio::main]
pub(crate) async fn main() -> procession::Result<()> {
    let rt = Runtime::in_memory()
        .resource(Http {
            latency: Duration::from_millis(2),
        })
        .resource(PageStore::default())
        .progress_flush(Duration::from_millis(20))
        .register::<Crawl>()
        .start()
        .await?;

    // A short crawl runs to the end; its events are those of this run only.
    let run = rt
        .launch(Launch::new(Crawl {
            site: "docs.example".into(),
            pages: 5,
        }))
        .await?;
    let mut events = run.events();
    while let Some(e) = events.next().await {
        match &e.kind {
            EventKind::State { state } => println!("{:<28} {state}", e.id),
            EventKind::Progress(p) => println!(
                "{:<28} {:>5.1}% {}",
                e.id,
                p.percent.unwrap_or(0.0),
                p.message.as_deref().unwrap_or("")
            ),
            _ => {}
        }
    }
    let report = run.wait().await?;
    println!(
        "counted {} pages",
        report.result::<usize>("count_pages").unwrap()
    );

    // A long crawl is cancelled once it is a third done: the crawling task stops at its
    // next check and is recorded cancelled; its dependent never runs.
    let run = rt
        .launch(Launch::new(Crawl {
            site: "big.example".into(),
            pages: 1000,
        }))
        .await?;
    let mut events = run.events();
    while let Some(e) = events.next().await {
        if let EventKind::Progress(p) = &e.kind {
            if p.percent.unwrap_or(0.0) >= 30.0 {
                run.cancel().await?;
                break;
            }
        }
    }
    let id = run.id().to_owned();
    let report = run.wait().await?;
    let record = rt.get(&id).await?.expect("the run's record");
    println!(
        "{id}: {:?}, crawl_site {:?}, run progress {:.0}% ({})",
        report.status,
        report.task("crawl_site").map(|t| t.status),
        record.progress.percent.unwrap_or(0.0),
        record.progress.message.as_deref().unwrap_or(""),
    );
    assert_eq!(record.state(), State::Cancelled);
    rt.shutdown().await
}
