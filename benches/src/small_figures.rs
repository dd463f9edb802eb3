//! Small runs (issue 17, target 5): the fixed cost a run carries, whatever its size.
//!
//! * launch-to-report latency of a 10-task run (wide and chain), in memory and on sled
//!   (the run's end durable before `wait()` returns), one runtime per store started once,
//!   many runs interleaved with the hand-written executor on the same graph;
//! * 10,000 concurrent launches of a 10-task process on one in-memory runtime, tasks/s;
//! * a 1,000-task wide graph, against the processes library's ~99 ms on the same graph
//!   (a fixed figure: processes 7.0.4 measured on this machine for issue 17, not re-run
//!   here since it is a Python program).
//!
//! Printed by a child process of its own (`--small-child <quick|full>`), so that the heap
//! of the large graphs measured elsewhere does not weigh on these microsecond figures.
//! `--small-only <wide|chain> <tasks> <a|b|c>... [runs] [history]` runs one variant (or
//! several interleaved, e.g. `abc`) in a loop on one runtime, for profilers (callgrind counts
//! then show the per-run cost, not the start); `history` concurrent wide-10 runs are launched
//! (and kept by the in-memory runtime) first.
//!
//! Order of the sections: the wide 1k row is measured before the 10,000 concurrent
//! launches, and again after them on the same runtime (printed as a line of its own).
//! After 3 x 10,000 launches (~32,000 finished runs kept by the memory store) the same
//! wide 1k run takes ~15-20% longer natively, but not one instruction more per run
//! (callgrind, timed runs only: 4.64 M Ir per wide 1k run with 0 and with 10,000 runs of
//! history), and just as much longer when those runs were made on *another* runtime of the
//! process: the cost is the process heap those runs leave (cache and TLB misses of
//! allocations spread over a larger, fragmented heap), not work that grows with the
//! records a runtime keeps. Measured first, the row says what a run costs; the line after
//! says what the same run costs in a process that has made and kept ~32,000 more runs.

use super::{
    baseline, checksum, fresh_dir, group_digits, median, ms, register, AnyResult, RunStatus,
    Runtime, Shape, Wide,
};
use std::time::{Duration, Instant};

/// The processes library (Python, 7.0.4) on a wide 1,000-task graph on this machine, in
/// ms: issue 17's figure (same machine kind, same day as its table).
const PROCESSES_WIDE_1K_MS: f64 = 99.0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Small {
    /// The hand-written executor.
    Base,
    /// procession, memory store.
    Memory,
    /// procession, sled store.
    Sled,
}

impl Small {
    fn label(self) -> &'static str {
        match self {
            Small::Base => "(a) tokio, direct spawn",
            Small::Memory => "(b) procession in memory",
            Small::Sled => "(c) procession on sled",
        }
    }
}

/// The runtimes of one measurement: started once, every run launched on them.
struct Rts {
    memory: Runtime,
    sled: Runtime,
    dir: std::path::PathBuf,
}

impl Rts {
    async fn start() -> AnyResult<Self> {
        let dir = fresh_dir("small");
        Ok(Rts {
            memory: register(Runtime::in_memory()).start().await?,
            sled: register(Runtime::open(&dir)).start().await?,
            dir,
        })
    }

    async fn stop(self) -> AnyResult<()> {
        self.memory.shutdown().await?;
        self.sled.shutdown().await?;
        drop(self.sled);
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// One timed run of `shape` with `v`: launch to report in hand.
async fn once(rts: &Rts, shape: Shape, v: Small) -> AnyResult<(Duration, u64)> {
    let rt = match v {
        Small::Base => {
            let t = Instant::now();
            let sum = baseline(shape, true).await;
            return Ok((t.elapsed(), sum));
        }
        Small::Memory => &rts.memory,
        Small::Sled => &rts.sled,
    };
    let t = Instant::now();
    let report = super::launch_shape(rt, shape).await?;
    Ok((t.elapsed(), checksum(&report)))
}

/// `warmup + runs` interleaved rounds of every variant; the timings of the measured ones.
async fn latency(
    rts: &Rts,
    shape: Shape,
    variants: &[Small],
    warmup: usize,
    runs: usize,
) -> AnyResult<Vec<Vec<Duration>>> {
    let mut times = vec![Vec::with_capacity(runs); variants.len()];
    let mut sums = vec![0u64; variants.len()];
    for r in 0..warmup + runs {
        for (k, &v) in variants.iter().enumerate() {
            let (d, sum) = once(rts, shape, v).await?;
            sums[k] = sum;
            if r >= warmup {
                times[k].push(d);
            }
        }
    }
    if let Some(k) = sums.iter().position(|&s| s != sums[0]) {
        return Err(format!(
            "{}: {} computed {} but {} {}",
            shape.name(),
            variants[k].label(),
            sums[k],
            variants[0].label(),
            sums[0]
        )
        .into());
    }
    Ok(times)
}

fn pct(xs: &[Duration], p: f64) -> Duration {
    let mut v = xs.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// `launches` concurrent launches of a wide-`width` process on `rt`, each awaited by a
/// tokio task of its own; the time from the first launch to the last report.
async fn concurrent(rt: &Runtime, launches: usize, width: u32) -> AnyResult<Duration> {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..launches {
        let rt = rt.clone();
        set.spawn(async move { rt.run(Wide { n: width }).await });
    }
    let mut ok = 0usize;
    while let Some(r) = set.join_next().await {
        let report = r??;
        if report.status == RunStatus::Succeeded && report.tasks.len() == width as usize {
            ok += 1;
        }
    }
    let el = t.elapsed();
    if ok != launches {
        return Err(format!("{ok} of {launches} concurrent runs succeeded").into());
    }
    Ok(el)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "NOT MET"
    }
}

/// `--small-child <quick|full>`: prints the small-runs section.
pub(crate) async fn child(args: &[String]) -> AnyResult<()> {
    let quick = args.first().map(String::as_str) == Some("quick");
    let (warmup, runs) = if quick { (20, 100) } else { (100, 1_000) };
    let (launches, rounds) = if quick { (1_000, 1) } else { (10_000, 3) };
    let (warm_1k, runs_1k) = if quick { (3, 20) } else { (10, 100) };
    let indicative = if quick {
        " [quick sizes: indicative only]"
    } else {
        ""
    };
    let all = [Small::Base, Small::Memory, Small::Sled];

    println!(
        "small runs (issue 17 target 5): launch-to-report latency, one runtime per store started once, {runs} interleaved runs after {warmup} warm-ups;"
    );
    println!("  (c)'s run end is flushed to sled before wait() returns, as in every run on sled");
    println!(
        "{:<16} {:<28} {:>6} {:>10} {:>10} {:>10} {:>8}",
        "graph", "variant", "tasks", "median ms", "p90 ms", "µs/task", "vs (a)"
    );
    println!("{}", "-".repeat(94));
    let rts = Rts::start().await?;
    let mut verdicts = Vec::new();
    for shape in [Shape::Wide(10), Shape::Chain(10)] {
        let times = latency(&rts, shape, &all, warmup, runs).await?;
        let base = median(&times[0]);
        for (k, v) in all.iter().enumerate() {
            let m = median(&times[k]);
            println!(
                "{:<16} {:<28} {:>6} {:>10.3} {:>10.3} {:>10.2} {:>7.1}x",
                shape.name(),
                v.label(),
                shape.tasks(),
                ms(m),
                ms(pct(&times[k], 0.9)),
                m.as_secs_f64() * 1e6 / shape.tasks() as f64,
                m.as_secs_f64() / base.as_secs_f64()
            );
            match v {
                Small::Memory => verdicts.push((shape.name(), "in memory", m, 0.2)),
                Small::Sled => verdicts.push((shape.name(), "on sled", m, 1.5)),
                Small::Base => {}
            }
        }
    }
    for (name, store, m, target) in verdicts {
        println!(
            "target {name} {store} <= {target} ms: {} ({:.3} ms){indicative}",
            verdict(ms(m) <= target),
            ms(m)
        );
    }
    println!();

    // A 1,000-task graph, before the concurrent launches (see the module's comment).
    let shape = Shape::Wide(1_000);
    let times = latency(&rts, shape, &all, warm_1k, runs_1k).await?;
    println!(
        "wide 1k (one runtime per store started once, median of {runs_1k} interleaved runs after {warm_1k} warm-ups) against the processes library"
    );
    println!(
        "(Python, processes 7.0.4: ~{PROCESSES_WIDE_1K_MS:.0} ms on wide 1k on this machine, issue 17's figure, not re-measured here):"
    );
    println!(
        "{:<16} {:<28} {:>6} {:>10} {:>10} {:>8} {:>14}",
        "graph", "variant", "tasks", "median ms", "µs/task", "vs (a)", "vs processes"
    );
    let base = median(&times[0]);
    let mut mem_ratio = 0.0;
    let mut mem_1k = Duration::ZERO;
    for (k, v) in all.iter().enumerate() {
        let m = median(&times[k]);
        let faster = PROCESSES_WIDE_1K_MS / ms(m);
        if *v == Small::Memory {
            mem_ratio = faster;
            mem_1k = m;
        }
        println!(
            "{:<16} {:<28} {:>6} {:>10.3} {:>10.2} {:>7.1}x {:>10.0}x faster",
            shape.name(),
            v.label(),
            shape.tasks(),
            ms(m),
            m.as_secs_f64() * 1e6 / shape.tasks() as f64,
            m.as_secs_f64() / base.as_secs_f64(),
            faster
        );
    }
    println!(
        "target wide 1k in memory >= 100x faster than processes: {} ({mem_ratio:.0}x){indicative}",
        verdict(mem_ratio >= 100.0)
    );
    println!();

    // Many runs at once.
    let mut ds = Vec::new();
    for _ in 0..rounds {
        ds.push(concurrent(&rts.memory, launches, 10).await?);
    }
    let d = median(&ds);
    let rate = (launches * 10) as f64 / d.as_secs_f64();
    println!(
        "{launches} concurrent launches of a 10-task process (wide 10) on one in-memory runtime, launch of the first to report of the last, median of {rounds}: {:.1} ms, {} runs/s, {} tasks/s   target >= 100,000 tasks/s: {}{indicative}",
        ms(d),
        group_digits(launches as f64 / d.as_secs_f64()),
        group_digits(rate),
        verdict(rate >= 100_000.0)
    );
    println!();

    // The wide 1k run again, now that the runtime keeps ~32,000 more runs (see the
    // module's comment: the process heap, not the records, makes the difference).
    let again = latency(&rts, Shape::Wide(1_000), &[Small::Memory], warm_1k, runs_1k).await?;
    println!(
        "wide 1k (b) procession in memory after the concurrent launches ({} more runs kept by the runtime): median {:.3} ms (measured before them above: {:.3} ms)",
        group_digits((launches * rounds) as f64),
        ms(median(&again[0])),
        ms(mem_1k)
    );
    println!();
    rts.stop().await?;
    Ok(())
}

/// `--small-only <wide|chain> <tasks> <a|b|c>... [runs] [history]`: one variant (or
/// several, `abc`, interleaved as in the table: a run of one store leaves the threads and
/// caches as the next one finds them), `runs` times (default 1,000) on one runtime, after
/// `history` (default 0) concurrent wide-10 runs on its in-memory runtime; prints the
/// medians.
pub(crate) async fn only(args: &[String]) -> AnyResult<()> {
    let n: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let shape = super::parse_shape(args.first().map(String::as_str), n);
    let vs: Vec<Small> = args
        .get(2)
        .map_or("b", String::as_str)
        .chars()
        .map(|c| match c {
            'a' => Small::Base,
            'c' => Small::Sled,
            _ => Small::Memory,
        })
        .collect();
    let runs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let history: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
    let rts = Rts::start().await?;
    if history > 0 {
        // Runs kept by the in-memory runtime before the measured ones (as the
        // concurrent launches of the full table leave them).
        concurrent(&rts.memory, history, 10).await?;
    }
    let times = latency(&rts, shape, &vs, 0, runs).await?;
    for (k, v) in vs.iter().enumerate() {
        println!(
            "{} {}: median {:.3} ms, p90 {:.3} ms over {runs} runs",
            shape.name(),
            v.label(),
            ms(median(&times[k])),
            ms(pct(&times[k], 0.9))
        );
    }
    rts.stop().await?;
    Ok(())
}

/// `--concurrent-only <launches> [width]`: the concurrent launches alone, for profilers.
pub(crate) async fn concurrent_only(args: &[String]) -> AnyResult<()> {
    let launches: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let width: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let rt = register(Runtime::in_memory()).start().await?;
    let d = concurrent(&rt, launches, width).await?;
    println!(
        "{launches} concurrent launches of wide {width}: {:.1} ms, {} tasks/s",
        ms(d),
        group_digits((launches * width as usize) as f64 / d.as_secs_f64())
    );
    rt.shutdown().await?;
    Ok(())
}

/// Runs the `--small-child` process with its output going straight to ours.
pub(crate) fn run_child(quick: bool) -> AnyResult<()> {
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--small-child")
        .arg(if quick { "quick" } else { "full" })
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()?;
    if !status.success() {
        return Err("measuring the small runs failed".into());
    }
    Ok(())
}
