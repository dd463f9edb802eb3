//! The dashboard in a real headless Chromium (issue 16), driven over `WebDriver` by
//! fantoccini with a chromedriver the test starts on 127.0.0.1: a run launched from the
//! page, its tasks' progress and states moving live without a reload, a cancel seen as
//! `cancelling` then `cancelled`, a failed task followed to its error and to what it
//! skipped, 1,000 records paged through, and the runs page over 10,000 records timed by
//! the browser's navigation timing.
//!
//! Screenshots of the main pages are written to `target/dashboard-screenshots/`. Without
//! Chromium and chromedriver the browser tests say what to install and pass, unless
//! `PROCESSION_REQUIRE_BROWSER=1` (set by `cargo xtask test` and CI): then they fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use procession::admin::{self, AdminConfig, Server};
use procession::prelude::*;
use procession::AdhocOptions;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

// ---------- a flagship-like process ----------

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

/// Fetches a source page by page; "apac" fails on its third page.
#[task(timeout = "5m")]
async fn fetch_orders(
    ctx: &Ctx,
    source: String,
    pages: u32,
    step_ms: u64,
) -> Result<u32, FetchError> {
    for page in 0..pages {
        ctx.check_cancelled()?;
        let percent = f64::from(page) * 100.0 / f64::from(pages.max(1));
        ctx.progress(percent, format!("{source}: page {} of {pages}", page + 1));
        tokio::time::sleep(Duration::from_millis(step_ms)).await;
        if source == "apac" && page == 2 {
            ctx.log(Level::Error, "apac: the gateway answered 503");
            return Err(FetchError::Unavailable {
                source_name: source,
            });
        }
    }
    Ok(pages * 25)
}

#[task]
fn clean_orders(orders: u32) -> u32 {
    orders - orders / 10
}

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

/// Slow; when cancelled it takes a moment to flush before it stops (the run shows
/// `cancelling` meanwhile).
#[task(timeout = "10m")]
async fn archive_history(ctx: &Ctx, days: u32, step_ms: u64) -> Result<u32, FetchError> {
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
        tokio::time::sleep(Duration::from_millis(step_ms)).await;
    }
    Ok(days)
}

#[process]
fn nightly_report(
    p: &mut Builder,
    sources: Vec<String>,
    pages: u32,
    step_ms: u64,
    archive_days: u32,
) {
    let cleaned: Vec<Out<u32>> = sources
        .iter()
        .map(|s| {
            let raw = p.task(
                FetchOrders::new(s.clone(), pages, step_ms)
                    .id(format!("fetch_{s}"))
                    .optional(),
            );
            p.task(CleanOrders::new(raw).id(format!("clean_{s}")))
        })
        .collect();
    p.task(BuildReport::new(sources.clone(), cleaned).id("report"));
    if archive_days > 0 {
        p.task(ArchiveHistory::new(archive_days, step_ms).id("archive"));
    }
}

#[task]
fn noop() {}

#[process]
fn batch_job(p: &mut Builder, n: u32) {
    let _ = n;
    p.task(Noop::new());
}

#[process]
fn tick(p: &mut Builder) {
    p.task(Noop::new());
}

// ---------- the browser ----------

const INSTALL: &str = "install chromium chromium-driver (apt-get install -y chromium chromium-driver) to run the dashboard tests";

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A chromedriver started by the test in a process group of its own; dropping it kills
/// that group, so a failed test leaves no browser behind.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        #[cfg(unix)]
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Browser {
    client: Client,
    _driver: Driver,
}

/// A headless Chromium, or `None` (with the install hint) when it is missing and not
/// required.
async fn browser() -> Option<Browser> {
    let driver = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| which(&["chromedriver"]));
    let chrome = std::env::var_os("CHROME_BIN")
        .map(PathBuf::from)
        .or_else(|| which(&["chromium", "chromium-browser", "google-chrome", "chrome"]));
    let (Some(driver), Some(chrome)) = (driver, chrome) else {
        assert!(
            std::env::var("PROCESSION_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "PROCESSION_REQUIRE_BROWSER=1 but chromium or chromedriver is missing: {INSTALL}"
        );
        eprintln!("{INSTALL}");
        return None;
    };
    // Starting a browser can fail for reasons of its own (a port taken between the probe
    // and chromedriver's bind, Chromium exiting at start while others start beside it):
    // a few fresh tries, each with a driver of its own, before the test fails.
    let mut last_error = String::new();
    for attempt in 1..=3 {
        match start_browser(&driver, &chrome).await {
            Ok(b) => return Some(b),
            Err(e) => {
                eprintln!("starting the browser, attempt {attempt}: {e}");
                last_error = e;
            }
        }
    }
    panic!("no WebDriver session with headless Chromium after 3 attempts: {last_error}");
}

/// One chromedriver on a free port and a session of headless Chromium through it.
async fn start_browser(driver: &Path, chrome: &Path) -> Result<Browser, String> {
    let port = {
        let l =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("a free port: {e}"))?;
        l.local_addr()
            .map_err(|e| format!("its address: {e}"))?
            .port()
    };
    let mut cmd = Command::new(driver);
    cmd.arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", driver.display()))?;
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() >= deadline {
            return Err("chromedriver did not listen within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chrome.display().to_string(),
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--disable-crash-reporter", "--disable-breakpad",
                     "--window-size=1440,1000", "--lang=en-US"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .map_err(|e| format!("a WebDriver session with headless Chromium: {e}"))?;
    Ok(Browser {
        client,
        _driver: driver,
    })
}

fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir
}

async fn shot(c: &Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.expect("a screenshot");
    let path = shots_dir().join(name);
    std::fs::write(&path, png).expect("writing the screenshot");
    eprintln!("screenshot: {}", path.display());
    path
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Polls `expr` (a JS expression) until it is truthy; returns its value.
async fn until(c: &Client, what: &str, expr: &str) -> Value {
    let deadline = Instant::now() + Duration::from_mins(1);
    let script = format!("try {{ return ({expr}); }} catch (e) {{ return null; }}");
    loop {
        let v = js(c, &script).await;
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// Clicks the element `css` finds. Live updates re-render parts of the page, so an
/// element found a moment ago may have been replaced: it is then found again (a few
/// times), as a person would click the button now on the screen.
async fn click(c: &Client, css: &str) {
    for attempt in 1.. {
        let el = c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        match el.click().await {
            Ok(()) => return,
            Err(e) if attempt < 10 && e.to_string().contains("stale element") => {
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
}

/// Waits for the page script to have rendered after a navigation.
async fn ready(c: &Client) {
    until(
        c,
        "the page to render",
        "document.querySelector('#main').dataset.ready",
    )
    .await;
}

async fn serve(rt: &Runtime) -> (Server, String) {
    let server = admin::serve(
        rt.clone(),
        AdminConfig::default(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("the admin server");
    let base = format!("http://{}", server.local_addr());
    (server, base)
}

fn node_state(node: &str) -> String {
    format!("document.querySelector('g.node[data-node=\"{node}\"]')?.dataset.state")
}

// ---------- the tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_launched_from_the_page_moves_live_fails_visibly_and_cancels() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let rt = Runtime::in_memory()
        .register::<NightlyReport>()
        .start()
        .await
        .unwrap();
    let (server, base) = serve(&rt).await;

    // Launch from the form.
    c.goto(&format!("{base}/ui/launch")).await.unwrap();
    ready(c).await;
    c.find(Locator::Css("#process"))
        .await
        .unwrap()
        .select_by_value("nightly_report")
        .await
        .unwrap();
    let params = c.find(Locator::Css("#params")).await.unwrap();
    params.clear().await.unwrap();
    params
        .send_keys(r#"{"sources": ["eu", "us", "apac"], "pages": 24, "step_ms": 250, "archive_days": 400}"#)
        .await
        .unwrap();
    c.find(Locator::Css("#run-id"))
        .await
        .unwrap()
        .send_keys("live-1")
        .await
        .unwrap();
    shot(c, "launch.png").await;
    click(c, "#launch").await;
    until(
        c,
        "the confirmation",
        "document.querySelector('#confirm').open",
    )
    .await;
    click(c, "#confirm-yes").await;
    until(
        c,
        "the run page",
        "location.pathname === '/ui/runs/live-1' && document.querySelector('#main').dataset.ready",
    )
    .await;
    // A marker that a reload would erase.
    js(c, "window.__stay = 'here'; return null;").await;

    // Progress of fetch_eu moves live, then it ends done.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_mins(1);
    while seen.len() < 3 {
        // The row's bar and the graph node's state, read together.
        let v = js(
            c,
            "const b = document.querySelector('tr[data-node=\"fetch_eu\"] .bar'); \
             const g = document.querySelector('g.node[data-node=\"fetch_eu\"]'); \
             return b && g ? [Number(b.getAttribute('aria-valuenow')), g.dataset.state] : null;",
        )
        .await;
        if v[1] == "running" {
            if let Some(n) = v[0].as_f64().filter(|n| *n > 0.0 && *n < 100.0) {
                seen.insert(n as u64);
            }
        }
        assert!(
            Instant::now() < deadline,
            "fetch_eu's progress did not move on the page: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    until(
        c,
        "fetch_eu done",
        &format!("{} === 'done'", node_state("fetch_eu")),
    )
    .await;
    eprintln!("fetch_eu progress values seen live: {seen:?}");

    // The failed fetch and what it skipped.
    until(
        c,
        "fetch_apac failed",
        &format!("{} === 'failed'", node_state("fetch_apac")),
    )
    .await;
    until(
        c,
        "clean_apac skipped",
        &format!("{} === 'skipped'", node_state("clean_apac")),
    )
    .await;
    until(
        c,
        "the report built",
        &format!("{} === 'done'", node_state("report")),
    )
    .await;
    click(c, "g.node[data-node=\"clean_apac\"]").await;
    let why = until(
        c,
        "why clean_apac was skipped",
        "document.querySelector('#skipped-by')?.textContent",
    )
    .await;
    assert!(why.as_str().unwrap().contains("fetch_apac"), "{why}");
    click(c, "#skipped-by a[data-goto=\"fetch_apac\"]").await;
    let err = until(
        c,
        "fetch_apac's error",
        "document.querySelector('#task-error')?.textContent",
    )
    .await;
    assert!(err.as_str().unwrap().contains("503"), "{err}");
    let impact = until(
        c,
        "fetch_apac's downstream impact",
        "document.querySelector('#impact')?.textContent",
    )
    .await;
    assert!(impact.as_str().unwrap().contains("clean_apac"), "{impact}");
    assert!(c
        .current_url()
        .await
        .unwrap()
        .as_str()
        .ends_with("#fetch_apac"));
    until(
        c,
        "archive running",
        &format!("{} === 'running'", node_state("archive")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let run_png = shot(c, "run.png").await;

    // Cancel the long archive: `cancelling`, then `cancelled`.
    click(c, "#act-cancel").await;
    until(
        c,
        "the confirmation",
        "document.querySelector('#confirm').open",
    )
    .await;
    click(c, "#confirm-yes").await;
    until(
        c,
        "the run shown cancelling",
        "document.querySelector('#run-state')?.dataset.state === 'cancelling'",
    )
    .await;
    shot(c, "run-cancelling.png").await;
    until(
        c,
        "the run shown cancelled",
        "document.querySelector('#run-state')?.dataset.state === 'cancelled'",
    )
    .await;
    until(
        c,
        "archive cancelled",
        &format!("{} === 'cancelled'", node_state("archive")),
    )
    .await;
    let order = js(
        c,
        "return [...document.querySelectorAll('#activity li[data-who=\"run\"]')].map(l => l.dataset.state).reverse();",
    )
    .await;
    let order: Vec<String> = serde_json::from_value(order).unwrap();
    let pos = |s: &str| order.iter().position(|x| x == s);
    assert!(
        pos("cancelling").is_some() && pos("cancelling") < pos("cancelled"),
        "the activity shows cancelling before cancelled: {order:?}"
    );
    assert_eq!(
        js(c, "return window.__stay;").await,
        json!("here"),
        "the page was reloaded"
    );
    shot(c, "run-cancelled.png").await;

    // The runs page lists it with its state.
    c.goto(&format!("{base}/")).await.unwrap();
    ready(c).await;
    until(
        c,
        "live-1 listed as cancelled",
        "document.querySelector('tr[data-id=\"live-1\"] .badge')?.dataset.state === 'cancelled'",
    )
    .await;
    shot(c, "runs.png").await;
    // Narrow window: still readable (no horizontal overflow of the page).
    c.set_window_size(420, 900).await.unwrap();
    c.goto(&format!("{base}/ui/runs/live-1#fetch_apac"))
        .await
        .unwrap();
    ready(c).await;
    let overflow = js(
        c,
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
    )
    .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page overflows a narrow window by {overflow}px"
    );
    shot(c, "run-narrow.png").await;
    assert!(run_png.exists());

    b.client.clone().close().await.unwrap();
    server.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_page_pages_through_1000_records_and_renders_10000_quickly() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let rt = Runtime::in_memory()
        .register::<BatchJob>()
        .register::<Tick>()
        .start()
        .await
        .unwrap();
    let t = Instant::now();
    let mut batch = std::collections::BTreeSet::new();
    for i in 0..10_000u32 {
        if i % 10 == 0 {
            let id = format!("batch-{i:05}");
            rt.adhoc_define(&id, BatchJob { n: i }, AdhocOptions::default())
                .await
                .unwrap();
            batch.insert(id);
        } else {
            rt.adhoc_define(&format!("tick-{i:05}"), Tick {}, AdhocOptions::default())
                .await
                .unwrap();
        }
    }
    eprintln!("10,000 records written in {:?}", t.elapsed());
    let (server, base) = serve(&rt).await;

    // 10,000 records: the runs page, timed by the browser.
    c.goto(&format!("{base}/")).await.unwrap();
    ready(c).await;
    until(
        c,
        "50 rows",
        "document.querySelectorAll('#runs tr').length === 50",
    )
    .await;
    until(
        c,
        "the counts",
        "document.querySelector('[data-count=\"all\"] b')?.textContent === '10,000'",
    )
    .await;
    let timing = js(
        c,
        "const n = performance.getEntriesByType('navigation')[0]; \
         return { response_end: n.responseEnd, dom_content_loaded: n.domContentLoadedEventEnd, \
                  load: n.loadEventEnd, \
                  first_rows: Number(document.querySelector('#main').dataset.ready) - performance.timeOrigin, \
                  foreign: performance.getEntriesByType('resource').filter(r => !r.name.startsWith(location.origin)).length };",
    )
    .await;
    eprintln!(
        "runs page over 10,000 records: response {:.0} ms, DOMContentLoaded {:.0} ms, load {:.0} ms, first rows rendered {:.0} ms after navigation start",
        timing["response_end"].as_f64().unwrap(),
        timing["dom_content_loaded"].as_f64().unwrap(),
        timing["load"].as_f64().unwrap(),
        timing["first_rows"].as_f64().unwrap(),
    );
    assert!(
        timing["first_rows"].as_f64().unwrap() < 30_000.0,
        "generous bound: {timing}"
    );
    assert_eq!(
        timing["foreign"],
        json!(0),
        "nothing is fetched from another origin"
    );
    shot(c, "runs-10000.png").await;

    // A count per state is a filter: none is running, all 10,000 are idle.
    click(c, "[data-count=\"running\"]").await;
    until(
        c,
        "no running run",
        "document.querySelector('#page-info').textContent.startsWith('Runs 0–0 of 0')",
    )
    .await;
    click(c, "[data-count=\"idle\"]").await;
    until(
        c,
        "10,000 idle runs",
        "document.querySelector('#page-info').textContent.includes('of 10,000')",
    )
    .await;
    // Search by id: a miss says so, a hit opens the run.
    let search = c.find(Locator::Css("#search-id")).await.unwrap();
    search.send_keys("no-such-run\n").await.unwrap();
    until(
        c,
        "the miss",
        "document.querySelector('#toast').textContent.includes('No run with id no-such-run')",
    )
    .await;
    search.clear().await.unwrap();
    search.send_keys("batch-00500\n").await.unwrap();
    until(
        c,
        "the run page of batch-00500",
        "location.pathname === '/ui/runs/batch-00500' && document.querySelector('h1')?.textContent === 'batch-00500'",
    )
    .await;

    // 1,000 of them, filtered by process and paged through to the end.
    c.goto(&format!("{base}/?process=batch_job")).await.unwrap();
    ready(c).await;
    let mut got: Vec<String> = Vec::new();
    let mut first_of_page2 = String::new();
    for page in 1..=25 {
        let info = until(
            c,
            "the page info",
            &format!("(document.querySelector('#page-info').textContent.endsWith('page {page}')) && document.querySelector('#page-info').textContent"),
        )
        .await;
        assert!(info.as_str().unwrap().contains("of 1,000"), "{info}");
        let ids: Vec<String> = serde_json::from_value(
            js(c, "return [...document.querySelectorAll('#runs tr[data-id]')].map(r => r.dataset.id);").await,
        )
        .unwrap();
        if page == 2 {
            first_of_page2.clone_from(&ids[0]);
        }
        got.extend(ids);
        let more = js(c, "return !document.querySelector('#older').disabled;").await;
        if more != json!(true) {
            break;
        }
        click(c, "#older").await;
    }
    assert_eq!(got.len(), 1000, "every record once");
    let unique: std::collections::BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique, batch, "exactly the filtered records");
    let newest_first: Vec<String> = batch.iter().rev().cloned().collect();
    assert_eq!(
        got, newest_first,
        "the newest run first, each page below the last"
    );
    // And back one page.
    click(c, "#newer").await;
    until(
        c,
        "page 19",
        "document.querySelector('#page-info').textContent.endsWith('page 19')",
    )
    .await;
    let back = js(
        c,
        "return document.querySelector('#runs tr[data-id]').dataset.id;",
    )
    .await;
    assert_eq!(back.as_str().unwrap(), got[18 * 50]);
    assert!(!first_of_page2.is_empty());

    // A run launched while the first page is shown comes live at its top.
    c.goto(&format!("{base}/?process=batch_job")).await.unwrap();
    ready(c).await;
    until(
        c,
        "the newest run on top",
        "document.querySelector('#runs tr[data-id]')?.dataset.id === 'batch-09990'",
    )
    .await;
    rt.adhoc_define("batch-10000", BatchJob { n: 1 }, AdhocOptions::default())
        .await
        .unwrap();
    rt.launch_id("batch-10000").await.unwrap();
    until(
        c,
        "the new run on top, live",
        "document.querySelector('#runs tr[data-id]')?.dataset.id === 'batch-10000' && document.querySelector('#page-info').textContent.includes('of 1,001')",
    )
    .await;

    b.client.clone().close().await.unwrap();
    server.shutdown().await;
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_with_a_warning_asks_first_and_refusals_show_their_reason() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let def = procession::Definition::new(
        "nightly-eu",
        NightlyReport {
            sources: vec!["eu".into()],
            pages: 2,
            step_ms: 20,
            archive_days: 0,
        },
    )
    .unwrap()
    .warning("sends the report to the whole company");
    let rt = Runtime::in_memory()
        .register::<NightlyReport>()
        .define(def)
        .start()
        .await
        .unwrap();
    let (server, base) = serve(&rt).await;
    c.goto(&format!("{base}/ui/launch")).await.unwrap();
    ready(c).await;

    // The warning is shown before the launch; declining launches nothing.
    click(c, "button[data-launch=\"nightly-eu\"]").await;
    let warning = until(
        c,
        "the warning",
        "document.querySelector('#confirm').open && document.querySelector('#confirm-warning').textContent",
    )
    .await;
    assert!(
        warning.as_str().unwrap().contains("whole company"),
        "{warning}"
    );
    click(c, "#confirm-no").await;
    until(
        c,
        "the dialog closed",
        "!document.querySelector('#confirm').open",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rt.get("nightly-eu").await.unwrap().unwrap().state(),
        procession::State::Idle
    );
    click(c, "button[data-launch=\"nightly-eu\"]").await;
    until(
        c,
        "the confirmation",
        "document.querySelector('#confirm').open",
    )
    .await;
    click(c, "#confirm-yes").await;
    until(
        c,
        "the run done",
        "location.pathname === '/ui/runs/nightly-eu' && document.querySelector('#run-state')?.dataset.state === 'done'",
    )
    .await;

    // Block its launches with a reason; a relaunch is refused with it.
    until(
        c,
        "the block button",
        "document.querySelector('#act-block') && !document.querySelector('#act-block').disabled",
    )
    .await;
    click(c, "#act-block").await;
    until(
        c,
        "the reason field",
        "document.querySelector('#confirm-reason')",
    )
    .await;
    c.find(Locator::Css("#confirm-reason"))
        .await
        .unwrap()
        .send_keys("quarter close")
        .await
        .unwrap();
    click(c, "#confirm-yes").await;
    until(
        c,
        "the unblock button",
        "document.querySelector('#act-unblock')",
    )
    .await;
    let block = rt.get("nightly-eu").await.unwrap().unwrap().launch_block;
    assert_eq!(
        block.and_then(|b| b.reason).as_deref(),
        Some("quarter close")
    );
    until(
        c,
        "relaunch enabled",
        "!document.querySelector('#act-relaunch').disabled",
    )
    .await;
    click(c, "#act-relaunch").await;
    until(
        c,
        "the confirmation",
        "document.querySelector('#confirm').open",
    )
    .await;
    click(c, "#confirm-yes").await;
    let refusal = until(
        c,
        "the refusal",
        "document.querySelector('#refusal')?.textContent",
    )
    .await;
    assert!(
        refusal.as_str().unwrap().contains("launch-blocked"),
        "{refusal}"
    );
    shot(c, "refusal.png").await;
    click(c, "#act-unblock").await;
    until(
        c,
        "the confirmation",
        "document.querySelector('#confirm').open",
    )
    .await;
    click(c, "#confirm-yes").await;
    until(
        c,
        "the block button again",
        "document.querySelector('#act-block')",
    )
    .await;
    assert!(rt
        .get("nightly-eu")
        .await
        .unwrap()
        .unwrap()
        .launch_block
        .is_none());

    b.client.clone().close().await.unwrap();
    server.shutdown().await;
    rt.shutdown().await.unwrap();
}

/// Runs without a browser: the pages and assets are served from the binary with a
/// policy that allows same-origin scripts only, and the API keeps its own.
#[tokio::test]
async fn pages_are_embedded_and_served_with_a_same_origin_policy() {
    let rt = Runtime::in_memory().start().await.unwrap();
    let (server, base) = serve(&rt).await;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/runs/some%2Frun", "text/html"),
        ("/ui/launch", "text/html"),
        ("/ui/assets/app.js", "text/javascript"),
        ("/ui/assets/app.css", "text/css"),
        ("/ui/assets/icon.svg", "image/svg+xml"),
    ] {
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let h = res.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY");
    }
    let page = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("/ui/assets/app.js") && !page.contains("<script>"),
        "no inline script"
    );
    let api = http.get(format!("{base}/api/health")).send().await.unwrap();
    assert_eq!(
        api.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    // The loopback-host check covers the pages too (DNS rebinding).
    let res = http
        .get(format!("{base}/"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    server.shutdown().await;
    rt.shutdown().await.unwrap();
}

const TOKEN: &str = "tok-3f9a1c-secret";

/// The admin API with a token behind a server of the test's own, which records each
/// request's path and query and whether it carried an `Authorization` header.
async fn serve_with_token(
    rt: &Runtime,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = admin::Admin::new(rt.clone(), AdminConfig::default().token(TOKEN))
        .router()
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let log = log.clone();
                async move {
                    let auth = req.headers().contains_key("authorization");
                    log.lock().unwrap().push((req.uri().to_string(), auth));
                    next.run(req).await
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, seen, task)
}

/// Runs without a browser: with a token, the pages and assets load without it (a
/// navigation cannot send one) and hold no data; every API route still refuses a request
/// without it.
#[tokio::test]
async fn with_a_token_the_pages_load_without_it_and_the_api_does_not() {
    let rt = Runtime::in_memory().start().await.unwrap();
    let (base, _seen, server) = serve_with_token(&rt).await;
    let http = reqwest::Client::new();
    for path in ["/", "/ui/runs/x", "/ui/launch", "/ui/assets/app.js"] {
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["x-frame-options"], "DENY");
    }
    for path in ["/api/health", "/api/runs", "/api/events"] {
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
        let res = http
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    server.abort();
    rt.shutdown().await.unwrap();
}

// The dashboard of an admin API with a token: the page asks for it (a wrong one is
// refused and asked again), keeps it for the tab, sends it as a header on every call and
// on the event stream (live updates arrive), a mutation goes through; the token is never
// in a URL, and the API still refuses the page's origin without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_behind_a_token_asks_for_it_once_and_sends_it_as_a_header() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let rt = Runtime::in_memory()
        .register::<BatchJob>()
        .start()
        .await
        .unwrap();
    let (base, seen, server) = serve_with_token(&rt).await;
    c.goto(&format!("{base}/")).await.unwrap();
    until(c, "the token form", "document.querySelector('#token-form')").await;
    shot(c, "token.png").await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    click(c, "#token-use").await;
    until(
        c,
        "the wrong token refused",
        "document.querySelector('#token-refused')",
    )
    .await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(c, "#token-use").await;
    until(
        c,
        "the runs page, live",
        "!document.querySelector('#token-form') && document.querySelector('#runs') && document.querySelector('#live').dataset.state === 'live'",
    )
    .await;
    // A run launched now comes live (state events through the token-bearing stream).
    rt.adhoc_define("tok-1", BatchJob { n: 1 }, AdhocOptions::default())
        .await
        .unwrap();
    rt.launch_id("tok-1").await.unwrap().wait().await.unwrap();
    until(
        c,
        "tok-1 listed as done, live",
        "document.querySelector('tr[data-id=\"tok-1\"] .badge')?.dataset.state === 'done'",
    )
    .await;
    // Another page of the same tab does not ask again; a mutation goes through.
    c.goto(&format!("{base}/ui/runs/tok-1")).await.unwrap();
    until(
        c,
        "the run page",
        "!document.querySelector('#token-form') && document.querySelector('#act-dismiss') && !document.querySelector('#act-dismiss').disabled",
    )
    .await;
    click(c, "#act-dismiss").await;
    click(c, "#confirm-yes").await;
    let mut dismissed = false;
    for _ in 0..1000 {
        if rt.get("tok-1").await.unwrap().unwrap().state() == procession::State::Idle {
            dismissed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dismissed, "the dismiss from the page went through");
    // Kept for the tab only; without it the API refuses the page's own origin.
    let kept = js(c, "return sessionStorage.getItem('procession.token');").await;
    assert_eq!(kept, json!(TOKEN));
    assert_eq!(
        js(c, "return localStorage.length + document.cookie.length;").await,
        json!(0)
    );
    let without_token = js(c, "return fetch('/api/runs').then((r) => r.status);").await;
    assert_eq!(without_token, json!(401));

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(uri, _)| !uri.contains(TOKEN)),
        "the token is never in a URL: {seen:?}"
    );
    let streams: Vec<_> = seen
        .iter()
        .filter(|(uri, _)| uri.starts_with("/api/events"))
        .collect();
    assert!(!streams.is_empty(), "{seen:?}");
    assert!(
        streams.iter().all(|(_, auth)| *auth),
        "the event stream carries the header: {streams:?}"
    );
    b.client.clone().close().await.unwrap();
    server.abort();
    rt.shutdown().await.unwrap();
}
