//! `--admin [--quick]`: figures of the admin HTTP API (issue 15), over real HTTP on
//! 127.0.0.1.
//!
//! - Events per second streamed over SSE: 10 clients follow `GET /api/events` while one
//!   run of 10,000 no-op tasks (each reporting progress once) goes; each client reads
//!   until the run's own `done` state event. Events received by all clients together,
//!   divided by the wall time from the launch to the last client's `done`.
//! - `GET /api/runs?limit=50` latency, median of 20, over a sled store holding 100,000
//!   process records: the first page and a deep keyset page (after record 50,000); the
//!   resident memory of the process after opening the store and after the requests.

use std::time::{Duration, Instant};

use futures::StreamExt;
use procession::admin::{self, AdminConfig};
use procession::prelude::*;
use procession::store::{Batch, SledStore, Store};
use procession::ProcessRecord;

use super::{ms, status_kb, AnyResult};

/// A no-op that reports its progress once.
#[task]
#[allow(clippy::unused_async)] // async on purpose: runs as a tokio task, not on the blocking pool
async fn ping(ctx: &Ctx) {
    ctx.progress(100, "done");
}

/// `n` independent pings.
#[process(mode = "concurrent")]
fn pings(p: &mut Builder, n: u32) {
    p.each(0..n, |p, _| p.task(Ping::new()));
}

pub(crate) async fn run(args: &[String]) -> AnyResult<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let (tasks, records) = if quick {
        (1_000, 10_000)
    } else {
        (10_000, 100_000)
    };
    println!(
        "admin API figures (real HTTP on 127.0.0.1; {} build)",
        build()
    );
    // The runtime's default event bus (16,384 events), then one that holds the whole
    // burst: a 10,000-task run publishes its ~20,000 events faster than the feed's pump
    // reads them on a busy 2-core machine, and what overflows the bus is lost (one
    // `resync`); the larger bus measures the streaming itself.
    sse_figure(tasks, 10, None).await?;
    sse_figure(tasks, 10, Some(65_536)).await?;
    list_figure(records, 20).await?;
    Ok(())
}

fn build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// What one SSE client saw.
struct Seen {
    events: u64,
    resyncs: u64,
    done_at: Instant,
    /// The run's end was learnt from the snapshot reloaded after a `resync`.
    from_snapshot: bool,
}

/// Reads `url` until the `done` state event of `run`; counts events (`id:` lines) and
/// `resync` events. After a `resync` it reloads the snapshot (`run_url`, the list of the
/// run's records: small, unlike the run with its 10,000 tasks), as a real client does:
/// the `done` event may have been among the events it missed.
async fn follow(
    client: reqwest::Client,
    url: String,
    run: String,
    run_url: String,
    ready: tokio::sync::mpsc::Sender<()>,
) -> AnyResult<Seen> {
    let res = client.get(&url).send().await?.error_for_status()?;
    ready.send(()).await.ok();
    let mut body = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let (mut events, mut resyncs) = (0u64, 0u64);
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        // Whole lines only; the rest waits for the next chunk.
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..=end]).into_owned();
        buf.drain(..=end);
        let mut resynced = false;
        for line in text.lines() {
            if line.starts_with("id:") {
                events += 1;
            } else if line == "event: resync" || line == "event:resync" {
                resyncs += 1;
                resynced = true;
            } else if let Some(data) = line.strip_prefix("data:") {
                let is_end = data.contains(r#""state":"done""#)
                    && serde_json::from_str::<serde_json::Value>(data.trim())
                        .is_ok_and(|v| v["id"] == run.as_str() && v["kind"] == "state");
                if is_end {
                    return Ok(Seen {
                        events,
                        resyncs,
                        done_at: Instant::now(),
                        from_snapshot: false,
                    });
                }
            }
        }
        if resynced {
            let snapshot: serde_json::Value = serde_json::from_slice(
                &client
                    .get(&run_url)
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?,
            )?;
            let done = snapshot["records"].as_array().is_some_and(|recs| {
                recs.iter()
                    .any(|r| r["id"] == run.as_str() && r["status"]["state"] == "done")
            });
            if done {
                return Ok(Seen {
                    events,
                    resyncs,
                    done_at: Instant::now(),
                    from_snapshot: true,
                });
            }
        }
    }
    Err("the event stream ended before the run's end".into())
}

async fn sse_figure(tasks: u32, clients: usize, bus: Option<usize>) -> AnyResult<()> {
    let mut builder = Runtime::in_memory().register::<Pings>();
    if let Some(n) = bus {
        builder = builder.event_buffer(n);
    }
    let rt = builder.start().await?;
    let server = admin::serve(
        rt.clone(),
        AdminConfig::default(),
        ([127, 0, 0, 1], 0).into(),
    )
    .await?;
    let url = format!("http://{}/api/events", server.local_addr());
    let client = reqwest::Client::new();
    let run = "sse-run".to_owned();
    let run_url = format!("http://{}/api/runs?root={run}&limit=5", server.local_addr());
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(clients);
    let followers: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(follow(
                client.clone(),
                url.clone(),
                run.clone(),
                run_url.clone(),
                ready_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..clients {
        ready_rx.recv().await.ok_or("a client never connected")?;
    }
    // The response headers are out; the server has subscribed each client.
    while server.admin().subscribers() < clients {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first_id = server.admin().last_event_id();
    let start = Instant::now();
    let handle = rt
        .launch(Launch::new(Pings { n: tasks }).id(run.as_str()))
        .await?;
    let report = handle.wait().await?;
    if !report.is_success() {
        return Err("the run failed".into());
    }
    let run_end = start.elapsed();
    let mut seen = Vec::new();
    for f in followers {
        seen.push(f.await??);
    }
    let published = server.admin().last_event_id().seq() - first_id.seq();
    let last_done = seen.iter().map(|s| s.done_at).max().ok_or("no clients")?;
    let wall = last_done.duration_since(start);
    let received: u64 = seen.iter().map(|s| s.events).sum();
    let fewest_resyncs = seen.iter().map(|s| s.resyncs).min().unwrap_or(0);
    let most_resyncs = seen.iter().map(|s| s.resyncs).max().unwrap_or(0);
    let from_snapshot = seen.iter().filter(|s| s.from_snapshot).count();
    println!(
        "  SSE ({}): 1 run of {tasks} no-op tasks, each reporting progress once (about {} events: a state and a progress per task), {clients} clients on GET /api/events; the run took {:.0} ms, the feed numbered {published} events:",
        bus.map_or_else(|| "default event bus".to_owned(), |n| format!("event bus of {n}")),
        2 * u64::from(tasks) + 3,
        ms(run_end)
    );
    println!(
        "    {received} events received in all in {:.0} ms (launch to the last client's `done`): {:.0} events/s in all, {:.0} per client",
        ms(wall),
        received as f64 / wall.as_secs_f64(),
        received as f64 / wall.as_secs_f64() / clients as f64
    );
    println!(
        "    resync events per client: {fewest_resyncs} to {most_resyncs} (the same count for every client means the feed's pump itself fell behind the runtime's event bus and lost events; more for some clients means their own buffer overflowed past the replay buffer); {from_snapshot} of {clients} clients learnt the run's end from the snapshot reloaded after a resync"
    );
    server.shutdown().await;
    rt.shutdown().await?;
    Ok(())
}

async fn list_figure(records: usize, samples: usize) -> AnyResult<()> {
    let dir = std::env::temp_dir().join(format!(
        "procession-bench-admin-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let fill = Instant::now();
    {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || -> AnyResult<()> {
            let store = SledStore::open(&dir)?;
            let mut left = records;
            let mut i = 0usize;
            while left > 0 {
                let n = left.min(5_000);
                let processes = (i..i + n)
                    .map(|k| {
                        let mut r = ProcessRecord::new_root(
                            &format!("rec-{k:07}"),
                            "pings",
                            "pings",
                            "",
                            serde_json::json!({ "n": 1 }),
                        );
                        r.adhoc = true;
                        r
                    })
                    .collect();
                store.apply(Batch {
                    processes,
                    ..Batch::default()
                })?;
                i += n;
                left -= n;
            }
            store.flush()?;
            Ok(())
        })
        .await??;
    }
    let fill = fill.elapsed();
    println!(
        "  GET /api/runs?limit=50 over a sled store of {records} process records (written in {:.1} s by this process), median of {samples}, in a fresh process:",
        fill.as_secs_f64()
    );
    // A fresh process: its memory is the reader's alone, not the writer's leftovers.
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--admin-list-child")
        .arg(&dir)
        .arg(records.to_string())
        .arg(samples.to_string())
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        return Err(format!(
            "the list child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// `--admin-list-child <dir> <records> <samples>`: opens the store `list_figure` wrote,
/// serves the admin API and prints the latencies and the resident memory.
pub(crate) async fn list_child(args: &[String]) -> AnyResult<()> {
    let dir = std::path::PathBuf::from(args.first().ok_or("dir")?);
    let records: usize = args.get(1).ok_or("records")?.parse()?;
    let samples: usize = args.get(2).ok_or("samples")?.parse()?;
    let rss_start = status_kb("VmRSS:").unwrap_or(0);
    let rt = Runtime::open(&dir).register::<Pings>().start().await?;
    let rss_open = status_kb("VmRSS:").unwrap_or(0);
    let server = admin::serve(
        rt.clone(),
        AdminConfig::default(),
        ([127, 0, 0, 1], 0).into(),
    )
    .await?;
    let base = format!("http://{}/api/runs", server.local_addr());
    let client = reqwest::Client::new();
    let first = median_latency(&client, &format!("{base}?limit=50"), samples).await?;
    let rss_first = status_kb("VmRSS:").unwrap_or(0);
    // The cursor after record `records / 2`, got as a client gets it: page by page.
    let mut after = String::new();
    let mut passed = 0;
    while passed < records / 2 {
        let url = if after.is_empty() {
            format!("{base}?limit=500")
        } else {
            format!("{base}?limit=500&after={}", after.replace(':', "%3A"))
        };
        let page: serde_json::Value = serde_json::from_slice(
            &client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?,
        )?;
        passed += page["records"].as_array().map_or(0, Vec::len);
        page["next"]
            .as_str()
            .ok_or("the listing ended early")?
            .clone_into(&mut after);
    }
    let deep = median_latency(
        &client,
        &format!("{base}?limit=50&after={}", after.replace(':', "%3A")),
        samples,
    )
    .await?;
    let rss_end = status_kb("VmRSS:").unwrap_or(0);
    println!(
        "    first page {:.2} ms; deep keyset page (after record {}) {:.2} ms",
        ms(first),
        records / 2,
        ms(deep)
    );
    println!(
        "    resident memory (VmRSS): {} MiB before the open, {} MiB with the store open and the runtime started, {} MiB after the first-page requests, {} MiB after paging to the middle (500 a page) and the deep requests",
        rss_start / 1024,
        rss_open / 1024,
        rss_first / 1024,
        rss_end / 1024
    );
    server.shutdown().await;
    rt.shutdown().await?;
    Ok(())
}

/// The median time of `samples` GETs of `url`, each answered 200 with 50 records.
async fn median_latency(
    client: &reqwest::Client,
    url: &str,
    samples: usize,
) -> AnyResult<Duration> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let res = client.get(url).send().await?.error_for_status()?;
        let body: serde_json::Value = serde_json::from_slice(&res.bytes().await?)?;
        times.push(t.elapsed());
        let n = body["records"].as_array().map_or(0, Vec::len);
        if n != 50 {
            return Err(format!("{url} answered {n} records, not 50").into());
        }
    }
    times.sort();
    Ok(times[samples / 2])
}
