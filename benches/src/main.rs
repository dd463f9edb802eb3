//! Benchmarks of procession (DESIGN §8, issue 6): scheduling overhead against a
//! hand-written tokio DAG executor, persisted throughput against raw sled, peak memory of a
//! 100k-task run, and the time to resume a half-done 100k-task run after `kill -9`.
//!
//! `cargo run --release -p procession-benches` runs everything (median of 5 interleaved
//! runs after one warm-up, about 4 minutes on 2 cores); `-- --quick` runs small sizes once
//! (CI smoke run: about 10 s in release, 30 s in debug).
//!
//! The binary re-executes itself with hidden flags for the measurements that need a fresh
//! process: `--rss-child` (peak resident memory) and `--resume-child` (the run that is
//! killed half way). For profilers, `--only <shape> <tasks> <a|a2|b|b2|c> [repeats]` runs
//! one variant of one shape, `--build-only <shape> <tasks> [repeats]` its graph build alone,
//! `--resume-only <tasks>` the resume measurement alone and
//! `--scale-only [small] [big]` the scale section alone (wide 10k against wide 1M);
//! `--small-only <wide|chain> <tasks> <a|b|c>... [runs]` many small runs on one runtime and
//! `--concurrent-only <launches> [width]` many concurrent launches (`small_figures.rs`:
//! the fixed cost of a run, printed as its own section of the full table).
//! `--admin [--quick]` prints the admin HTTP API's figures (SSE events/s to 10 clients,
//! `GET /api/runs` latency over 100,000 sled records).
//! `--postgres [--quick] [--url <url>]` prints tasks/s on PostgreSQL (one worker) against
//! a pgbench claim-and-finish ceiling measured in the same run, then with 1, 2 and 4
//! worker processes (hidden `--pg-worker`) and the takeover after `kill -9`
//! (`pg_figures.rs`); `--spread-only` prints the task spreading rows alone and
//! `--spread-cost` what task spreading costs the server per task.

mod admin_figures;
mod pg_figures;
mod small_figures;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use procession::prelude::*;
use procession::store::{
    Applied, Batch, Lease, Page, PastRun, Query, SledStore, Store, StoreError, TaskRow, Update,
};
use procession::{EventKind, ProcessRecord, State};
use tokio::sync::mpsc;

/// Counts live heap bytes when `TRACK` is on (only in the `--rss-child` process): the
/// peak live heap next to `VmHWM` separates what the runtime holds from allocator overhead.
struct Tracking;

static TRACK: AtomicBool = AtomicBool::new(false);
/// Signed: a block allocated before `TRACK` went on and freed after takes it below zero.
static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Allocation calls while `TRACK` is on.
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// plain atomics and never allocate.
unsafe impl std::alloc::GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            note_live(size_delta(layout.size()));
        }
        // SAFETY: same layout contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if TRACK.load(Ordering::Relaxed) {
            LIVE.fetch_sub(size_delta(layout.size()), Ordering::Relaxed);
        }
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        if TRACK.load(Ordering::Relaxed) {
            note_live(size_delta(new) - size_delta(layout.size()));
        }
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

/// A block size as a signed delta (no block is over `isize::MAX` bytes).
fn size_delta(size: usize) -> isize {
    isize::try_from(size).unwrap_or(isize::MAX)
}

/// Adds `delta` to the live bytes and raises the peak to the new total.
fn note_live(delta: isize) {
    let now = LIVE
        .fetch_add(delta, Ordering::Relaxed)
        .saturating_add(delta);
    PEAK.fetch_max(usize::try_from(now).unwrap_or(0), Ordering::Relaxed);
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SEED: u64 = 0x5EED_0006_D1A6_2024;

// ----------------------------------------------------------------------------------------
// Graph shapes, shared by the baseline and the procession processes.
// ----------------------------------------------------------------------------------------

/// The shapes measured. Every node's value is `index` when it has no parent and
/// `wrapping_sum(parents) + 1` otherwise, in both executors (checked once per shape).
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `n` independent tasks.
    Wide(u32),
    /// `n` independent tasks, each carrying 256 bytes (a task with a few fields): its
    /// box is past glibc's per-thread cache, the case where freeing it on a worker
    /// thread contended for the builder's malloc arena.
    WideBig(u32),
    /// `n` tasks, each passing a `u64` to the next.
    Chain(u32),
    /// 1 -> `n` -> 1.
    Fan(u32),
    /// `layers` x `width`, 3 distinct random parents in the previous layer.
    Layered { layers: u32, width: u32 },
}

impl Shape {
    fn name(self) -> String {
        match self {
            Shape::Wide(n) => format!("wide {}", human(n)),
            Shape::WideBig(n) => format!("wide-big {}", human(n)),
            Shape::Chain(n) => format!("chain {}", human(n)),
            Shape::Fan(n) => format!("fan 1>{}>1", human(n)),
            Shape::Layered { layers, width } => format!("layered {layers}x{}", human(width)),
        }
    }

    fn tasks(self) -> usize {
        match self {
            Shape::Wide(n) | Shape::WideBig(n) | Shape::Chain(n) => n as usize,
            Shape::Fan(n) => n as usize + 2,
            Shape::Layered { layers, width } => (layers * width) as usize,
        }
    }

    /// Parents of every node, in CSR form (the baseline's input).
    fn dag(self) -> Dag {
        let n = self.tasks();
        let mut off = Vec::with_capacity(n + 1);
        let mut parents = Vec::new();
        off.push(0u32);
        match self {
            Shape::Wide(_) | Shape::WideBig(_) => off.resize(n + 1, 0),
            Shape::Chain(_) => {
                for i in 0..n as u32 {
                    if i > 0 {
                        parents.push(i - 1);
                    }
                    off.push(parents.len() as u32);
                }
            }
            Shape::Fan(m) => {
                off.push(0);
                for _ in 0..m {
                    parents.push(0);
                    off.push(parents.len() as u32);
                }
                parents.extend(1..=m);
                off.push(parents.len() as u32);
            }
            Shape::Layered { layers, width } => {
                let picks = layered_parents(layers, width, SEED);
                off.resize(width as usize + 1, 0);
                for l in 1..layers {
                    for j in 0..width {
                        let p = picks[((l - 1) * width + j) as usize];
                        parents.extend(p.iter().map(|&x| (l - 1) * width + x));
                        off.push(parents.len() as u32);
                    }
                }
            }
        }
        Dag { off, parents }
    }
}

fn human(n: u32) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

struct Dag {
    off: Vec<u32>,
    parents: Vec<u32>,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// For every node of layers `1..layers`, 3 distinct parents (indices in the previous
/// layer), from a fixed seed.
fn layered_parents(layers: u32, width: u32, seed: u64) -> Vec<[u32; 3]> {
    let mut s = seed;
    let mut out = Vec::with_capacity(((layers.saturating_sub(1)) * width) as usize);
    for _ in 1..layers {
        for _ in 0..width {
            let mut p = [u32::MAX; 3];
            let mut k = 0;
            while k < 3 {
                let c = (splitmix64(&mut s) % u64::from(width)) as u32;
                if !p[..k].contains(&c) || width < 3 {
                    p[k] = c;
                    k += 1;
                }
            }
            out.push(p);
        }
    }
    out
}

// ----------------------------------------------------------------------------------------
// (a) The baseline: a minimal hand-written tokio DAG executor, in two flavours.
// ----------------------------------------------------------------------------------------

const DONE: u32 = u32::MAX;

struct BaseShared {
    indegree: Vec<AtomicU32>,
    values: Vec<AtomicU64>,
    parent_off: Vec<u32>,
    parents: Vec<u32>,
    child_off: Vec<u32>,
    children: Vec<u32>,
    left: AtomicUsize,
    /// Newly ready nodes go to the driver (flavour a'), or only `DONE` does (flavour a).
    ready: mpsc::UnboundedSender<u32>,
    /// Flavour a: the task that makes a node ready spawns it itself.
    direct: bool,
}

fn base_node(s: &Arc<BaseShared>, i: u32) {
    let iu = i as usize;
    let ps = &s.parents[s.parent_off[iu] as usize..s.parent_off[iu + 1] as usize];
    let v = if ps.is_empty() {
        u64::from(i)
    } else {
        ps.iter()
            .fold(0u64, |a, &p| {
                a.wrapping_add(s.values[p as usize].load(Ordering::Acquire))
            })
            .wrapping_add(1)
    };
    s.values[iu].store(v, Ordering::Release);
    for &c in &s.children[s.child_off[iu] as usize..s.child_off[iu + 1] as usize] {
        if s.indegree[c as usize].fetch_sub(1, Ordering::AcqRel) == 1 {
            if s.direct {
                let s = s.clone();
                tokio::spawn(async move { base_node(&s, c) });
            } else {
                let _ = s.ready.send(c);
            }
        }
    }
    if s.left.fetch_sub(1, Ordering::AcqRel) == 1 {
        let _ = s.ready.send(DONE);
    }
}

/// Builds the DAG from the shape (included in the time, as procession's graph build is)
/// and runs it: `AtomicU32` in-degree counters, one `tokio::spawn` per ready node, `u64`
/// results in a slot per node. `direct`: the task that makes a node ready spawns it (the
/// worker's run queue is the ready queue); otherwise ready nodes go over a channel to a
/// driver task that spawns them (procession's own architecture).
/// Returns the wrapping sum of all node values.
async fn baseline(shape: Shape, direct: bool) -> u64 {
    let Dag { off, parents } = shape.dag();
    let n = off.len() - 1;
    let mut child_off = vec![0u32; n + 1];
    for &p in &parents {
        child_off[p as usize + 1] += 1;
    }
    for i in 0..n {
        child_off[i + 1] += child_off[i];
    }
    let mut fill = child_off.clone();
    let mut children = vec![0u32; parents.len()];
    for i in 0..n {
        for &p in &parents[off[i] as usize..off[i + 1] as usize] {
            children[fill[p as usize] as usize] = i as u32;
            fill[p as usize] += 1;
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let s = Arc::new(BaseShared {
        indegree: (0..n)
            .map(|i| AtomicU32::new(off[i + 1] - off[i]))
            .collect(),
        values: (0..n).map(|_| AtomicU64::new(0)).collect(),
        parent_off: off,
        parents,
        child_off,
        children,
        left: AtomicUsize::new(n),
        ready: tx,
        direct,
    });
    for i in 0..n as u32 {
        if s.parent_off[i as usize] == s.parent_off[i as usize + 1] {
            let s = s.clone();
            tokio::spawn(async move { base_node(&s, i) });
        }
    }
    let mut batch = Vec::with_capacity(256);
    'outer: while rx.recv_many(&mut batch, 256).await > 0 {
        for i in batch.drain(..) {
            if i == DONE {
                break 'outer;
            }
            let s = s.clone();
            tokio::spawn(async move { base_node(&s, i) });
        }
    }
    s.values
        .iter()
        .fold(0u64, |a, v| a.wrapping_add(v.load(Ordering::Acquire)))
}

// ----------------------------------------------------------------------------------------
// (b), (c): the same shapes as procession processes.
// ----------------------------------------------------------------------------------------

/// A node without parent.
#[task]
#[allow(clippy::unused_async)] // async on purpose: runs as a tokio task, not on the blocking pool
async fn leaf(i: u64) -> u64 {
    i
}

/// A node with one parent.
#[task]
#[allow(clippy::unused_async)] // async on purpose: runs as a tokio task, not on the blocking pool
async fn step(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// A node with several parents (fan-in).
#[task]
#[allow(clippy::unused_async)] // async on purpose: runs as a tokio task, not on the blocking pool
async fn gather(xs: Vec<u64>) -> u64 {
    xs.iter()
        .fold(0u64, |a, &x| a.wrapping_add(x))
        .wrapping_add(1)
}

/// `n` independent tasks.
#[process(mode = "concurrent")]
fn wide(p: &mut Builder, n: u32) {
    p.each(0..n, |p, i| p.task(Leaf::new(u64::from(i))));
}

/// A node without parent whose task carries 256 bytes: its value is the last of them.
#[task]
#[allow(clippy::unused_async)] // async on purpose: runs as a tokio task, not on the blocking pool
async fn leaf_big(pad: [u64; 32]) -> u64 {
    pad[31]
}

/// `n` independent tasks of 256 bytes each (node `i`'s value is `i`, as in `wide`).
#[process(mode = "concurrent")]
fn wide_big(p: &mut Builder, n: u32) {
    p.each(0..n, |p, i| p.task(LeafBig::new([u64::from(i); 32])));
}

/// `n` tasks in a line.
#[process(mode = "concurrent")]
fn chain(p: &mut Builder, n: u32) {
    let mut x = p.task(Leaf::new(0));
    p.each(1..n, |p, _| x = p.task(Step::new(x)));
}

/// 1 -> `n` -> 1.
#[process(mode = "concurrent")]
fn fan(p: &mut Builder, n: u32) {
    let src = p.task(Leaf::new(0));
    let mids = p.each(0..n, |p, _| p.task(Step::new(src)));
    p.task(Gather::new(mids));
}

/// `layers` x `width`, 3 random parents in the previous layer.
#[process(mode = "concurrent")]
fn layered(p: &mut Builder, layers: u32, width: u32, seed: u64) {
    let picks = layered_parents(layers, width, seed);
    let mut prev: Vec<Out<u64>> = p.each(0..width, |p, j| p.task(Leaf::new(u64::from(j))));
    for l in 1..layers {
        let base = ((l - 1) * width) as usize;
        prev = p.each(0..width, |p, j| {
            // The three handles as an array, as (a) keeps its parents in one list: a `Vec`
            // per node was an allocation and a free that (a) does not make.
            let ins: [Out<u64>; 3] = picks[base + j as usize].map(|x| prev[x as usize]);
            p.task(Gather::new(ins))
        });
    }
}

/// Same as `chain`, built with a plain loop (ids `step`, `step#1`, ... instead of
/// `each[i]/step`): measured for its graph build time only.
#[process(mode = "concurrent")]
fn chain_loop(p: &mut Builder, n: u32) {
    let mut x = p.task(Leaf::new(0));
    for _ in 1..n {
        x = p.task(Step::new(x));
    }
}

/// Opened in the parent only: in the killed child, the upper half of `gated` never ends.
static GATE_OPEN: AtomicBool = AtomicBool::new(false);
/// Bodies of `gated` that ended in this process.
static GATED_ENDED: AtomicU64 = AtomicU64::new(0);

/// Ends at once for `i < half`; for `i >= half`, waits for a gate that the killed child
/// never opens.
#[task]
async fn gated(i: u64, half: u64) -> u64 {
    if i >= half && !GATE_OPEN.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
    GATED_ENDED.fetch_add(1, Ordering::Relaxed);
    i
}

/// `n` independent gated tasks.
#[process(mode = "concurrent")]
fn gated_wide(p: &mut Builder, n: u32) {
    let half = u64::from(n / 2);
    p.each(0..n, |p, i| p.task(Gated::new(u64::from(i), half)));
}

/// One child process: one no-op task.
#[task]
fn nothing() {}

#[process]
fn tiny_child(p: &mut Builder) {
    p.task(Nothing::new());
}

/// A task that starts `n` children in one parallel group and waits for them all.
#[task]
async fn spawn_group(ctx: &Ctx, n: u32) -> Result<u32, procession::GroupError> {
    let mut g = ctx.parallel_group(procession::GroupOptions::new().max_concurrency(64));
    for _ in 0..n {
        g.spawn(procession::Child::new(TinyChild {})).await?;
    }
    Ok(g.finish().await?.len() as u32)
}

#[process]
fn group_parent(p: &mut Builder, n: u32) {
    p.task(SpawnGroup::new(n));
}

/// Wall time of a run whose one task starts `n` children in a parallel group (memory
/// store): each child is a process record of its own, so this is the cost of a child
/// launch, which must not grow with the number of siblings.
async fn children_run(n: u32) -> AnyResult<Duration> {
    let rt = Runtime::in_memory()
        .register::<GroupParent>()
        .register::<TinyChild>()
        .start()
        .await?;
    let t = Instant::now();
    let report = rt.run(GroupParent { n }).await?;
    let took = t.elapsed();
    if report.result::<u32>("spawn_group")? != n {
        return Err(format!(
            "the group of {n} children did not finish: {}",
            report.summary()
        )
        .into());
    }
    rt.shutdown().await?;
    Ok(took)
}

fn checksum(report: &RunReport) -> u64 {
    report.tasks.iter().fold(0u64, |a, t| {
        let v = t
            .result
            .as_ref()
            .and_then(|r| serde_json::from_str::<u64>(r.get()).ok())
            .unwrap_or(0);
        a.wrapping_add(v)
    })
}

async fn launch_shape(rt: &Runtime, shape: Shape) -> AnyResult<RunReport> {
    let report = match shape {
        Shape::Wide(n) => rt.launch(Wide { n }).await?.wait().await?,
        Shape::WideBig(n) => rt.launch(WideBig { n }).await?.wait().await?,
        Shape::Chain(n) => rt.launch(Chain { n }).await?.wait().await?,
        Shape::Fan(n) => rt.launch(Fan { n }).await?.wait().await?,
        Shape::Layered { layers, width } => {
            rt.launch(Layered {
                layers,
                width,
                seed: SEED,
            })
            .await?
            .wait()
            .await?
        }
    };
    if report.status != RunStatus::Succeeded {
        return Err(format!("{} ended {:?}", shape.name(), report.status).into());
    }
    Ok(report)
}

fn graph_of(shape: Shape) -> AnyResult<Graph> {
    Ok(match shape {
        Shape::Wide(n) => Graph::of(Wide { n })?,
        Shape::WideBig(n) => Graph::of(WideBig { n })?,
        Shape::Chain(n) => Graph::of(Chain { n })?,
        Shape::Fan(n) => Graph::of(Fan { n })?,
        Shape::Layered { layers, width } => Graph::of(Layered {
            layers,
            width,
            seed: SEED,
        })?,
    })
}

fn register(b: procession::RuntimeBuilder) -> procession::RuntimeBuilder {
    b.register::<Wide>()
        .register::<WideBig>()
        .register::<Chain>()
        .register::<Fan>()
        .register::<Layered>()
}

// ----------------------------------------------------------------------------------------
// Variants and the measurement loop.
// ----------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    Baseline,
    BaselineChannel,
    Memory,
    MemoryGraph,
    Sled,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "(a) tokio, direct spawn",
            Variant::BaselineChannel => "(a') tokio, driver+channel",
            Variant::Memory => "(b) procession in memory",
            Variant::MemoryGraph => "(b') in memory, run_graph",
            Variant::Sled => "(c) procession on sled",
        }
    }
}

static DIR_SEQ: AtomicUsize = AtomicUsize::new(0);

fn fresh_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "procession-bench-{}-{tag}-{}",
        std::process::id(),
        DIR_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// One timed run; returns the elapsed time and the run's checksum.
async fn run_once(shape: Shape, v: Variant) -> AnyResult<(Duration, u64)> {
    match v {
        Variant::Baseline | Variant::BaselineChannel => {
            let t = Instant::now();
            let sum = baseline(shape, v == Variant::Baseline).await;
            Ok((t.elapsed(), sum))
        }
        Variant::Memory => {
            let rt = register(Runtime::in_memory()).start().await?;
            let t = Instant::now();
            let report = launch_shape(&rt, shape).await?;
            let el = t.elapsed();
            rt.shutdown().await?;
            Ok((el, checksum(&report)))
        }
        Variant::MemoryGraph => {
            let rt = Runtime::in_memory().start().await?;
            let t = Instant::now();
            let report = rt.run_graph(graph_of(shape)?).await?;
            let el = t.elapsed();
            rt.shutdown().await?;
            if report.status != RunStatus::Succeeded {
                return Err(format!("{} ended {:?}", shape.name(), report.status).into());
            }
            Ok((el, checksum(&report)))
        }
        Variant::Sled => {
            let dir = fresh_dir("c");
            let rt = register(Runtime::open(&dir)).start().await?;
            settle_sled_garbage();
            let t = Instant::now();
            let report = launch_shape(&rt, shape).await?;
            let el = t.elapsed();
            rt.shutdown().await?;
            drop(rt);
            let _ = std::fs::remove_dir_all(&dir);
            Ok((el, checksum(&report)))
        }
    }
}

fn median(xs: &[Duration]) -> Duration {
    let mut v = xs.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn group_digits(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ----------------------------------------------------------------------------------------
// Store wrapper counting what a persisted run writes.
// ----------------------------------------------------------------------------------------

#[derive(Default, Debug, Clone, Copy)]
struct WriteStats {
    applies: u64,
    flushes: u64,
    task_rows: u64,
    processes: u64,
    bytes: u64,
}

struct Counting {
    inner: SledStore,
    stats: Arc<Mutex<WriteStats>>,
}

impl Store for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        self.inner.get(id)
    }
    fn list(&self, query: &Query) -> Result<Page, StoreError> {
        self.inner.list(query)
    }
    fn count(&self, query: &Query) -> Result<u64, StoreError> {
        self.inner.count(query)
    }
    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.inner.update(id, f)
    }
    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        self.inner.tasks(id)
    }
    fn apply(&self, batch: Batch) -> Result<Applied, StoreError> {
        {
            let mut s = self
                .stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.applies += 1;
            s.task_rows += batch.tasks.len() as u64;
            s.processes += batch.processes.len() as u64;
            // Same encoding and key layout as the sled store: MessagePack value,
            // `run\0<be u32>` key.
            for (id, _, row) in &batch.tasks {
                s.bytes += (rmp_serde::to_vec(row).map_or(0, |v| v.len()) + id.len() + 5) as u64;
            }
        }
        self.inner.apply(batch)
    }
    fn history(&self, id: &str) -> Result<Vec<PastRun>, StoreError> {
        self.inner.history(id)
    }
    fn past_tasks(&self, id: &str, seq: u64) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        self.inner.past_tasks(id, seq)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .flushes += 1;
        self.inner.flush()
    }
    fn next_id(&self) -> Result<u64, StoreError> {
        self.inner.next_id()
    }
    fn idempotent(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.idempotent(key)
    }
    fn claim_idempotent(&self, key: &str, id: &str) -> Result<String, StoreError> {
        self.inner.claim_idempotent(key, id)
    }
    fn claim(&self, run: &str, owner: &str, ttl_ms: u64) -> Result<Lease, StoreError> {
        self.inner.claim(run, owner, ttl_ms)
    }
    fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, StoreError> {
        self.inner.renew(lease, ttl_ms)
    }
    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(lease)
    }
    fn forget_run(&self, run: &str, key: Option<&str>) -> Result<(), StoreError> {
        self.inner.forget_run(run, key)
    }
    fn update_enqueue(
        &self,
        id: &str,
        f: &mut procession::store::Enqueue<'_>,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.inner.update_enqueue(id, f)
    }
    fn delivery(&self, id: &str) -> Result<Option<procession::store::Delivery>, StoreError> {
        self.inner.delivery(id)
    }
    fn deliveries(
        &self,
        query: &procession::store::DeliveryQuery,
    ) -> Result<procession::store::DeliveryPage, StoreError> {
        self.inner.deliveries(query)
    }
    fn next_delivery_at(&self) -> Result<Option<u64>, StoreError> {
        self.inner.next_delivery_at()
    }
    fn claim_deliveries(
        &self,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<procession::store::Delivery>, StoreError> {
        self.inner.claim_deliveries(owner, now_ms, lease_ms, limit)
    }
    fn update_delivery(
        &self,
        id: &str,
        f: &mut dyn FnMut(
            Option<&procession::store::Delivery>,
        ) -> procession::store::DeliveryUpdate,
    ) -> Result<Option<procession::store::Delivery>, StoreError> {
        self.inner.update_delivery(id, f)
    }
    fn channel_state(
        &self,
        name: &str,
    ) -> Result<Option<procession::store::ChannelState>, StoreError> {
        self.inner.channel_state(name)
    }
    fn set_channel_state(
        &self,
        name: &str,
        state: Option<&procession::store::ChannelState>,
    ) -> Result<(), StoreError> {
        self.inner.set_channel_state(name, state)
    }
}

/// Bytes this process passed to `write(2)` so far (`wchar` of `/proc/self/io`).
fn wchar() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/io").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

struct Persisted {
    stats: WriteStats,
    dir_bytes: u64,
    size_on_disk: Option<u64>,
    wchar: Option<u64>,
}

/// One persisted run through the counting store: what (c) writes for this shape.
async fn persisted_profile(shape: Shape) -> AnyResult<Persisted> {
    let dir = fresh_dir("count");
    let stats = Arc::new(Mutex::new(WriteStats::default()));
    let inner = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || SledStore::open(dir)).await??
    };
    let rt = register(Runtime::with_store(Counting {
        inner,
        stats: stats.clone(),
    }))
    .start()
    .await?;
    let before = *stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let w0 = wchar();
    launch_shape(&rt, shape).await?;
    rt.shutdown().await?;
    let w1 = wchar();
    let after = *stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    drop(rt);
    let stats = WriteStats {
        applies: after.applies - before.applies,
        flushes: after.flushes - before.flushes,
        task_rows: after.task_rows - before.task_rows,
        processes: after.processes - before.processes,
        bytes: after.bytes - before.bytes,
    };
    // The writer thread lets go of the store shortly after shutdown; sled's own figure
    // needs the database reopened.
    let mut size_on_disk = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        if let Ok(db) = sled::open(&dir) {
            size_on_disk = db.size_on_disk().ok();
            break;
        }
    }
    let dir_bytes = dir_size(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Persisted {
        stats,
        dir_bytes,
        size_on_disk,
        wchar: w0.zip(w1).map(|(a, b)| b - a),
    })
}

/// Frees, untimed, the node versions earlier sled writes of this process left to
/// crossbeam's global epoch collector (sled 0.34 frees through it, and whoever pins next
/// pays): so that neither (c) nor raw sled pays for the other's garbage. The store frees
/// its own during a run (it bounds its memory so); raw sled's single batch leaves its own
/// to whoever comes next, here this call.
fn settle_sled_garbage() {
    for _ in 0..8192 {
        crossbeam_epoch::pin().flush();
    }
}

/// Raw sled: `n` records of `value_len` bytes (keys shaped like the store's) inserted with
/// one `sled::Batch`, then one flush. Database open excluded.
fn raw_sled(n: u64, value_len: usize) -> Result<Duration, sled::Error> {
    let dir = fresh_dir("raw");
    let db = sled::open(&dir)?;
    let tree = db.open_tree("tasks")?;
    settle_sled_garbage();
    let value = vec![b'x'; value_len];
    let t = Instant::now();
    let key = |i: u64| {
        let mut k = Vec::with_capacity(24);
        k.extend_from_slice(b"wide-00000001\0");
        k.extend_from_slice(&(i as u32).to_be_bytes());
        k
    };
    let mut batch = sled::Batch::default();
    for i in 0..n {
        batch.insert(key(i), value.clone());
    }
    tree.apply_batch(batch)?;
    db.flush()?;
    let el = t.elapsed();
    drop(tree);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(el)
}

// ----------------------------------------------------------------------------------------
// Child processes.
// ----------------------------------------------------------------------------------------

fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Prints what the runtime's spans cost with no subscriber installed: one `run` span per
/// run and one `task` span per attempt (the executor's exact field lists, with `%` display
/// wrappers of values the run holds), each entered around a poll, timed alone; then that
/// per-attempt figure times the tasks of each wide graph against its (b) median.
fn print_span_cost(cfg: &Config, times: &BTreeMap<(usize, Variant), Vec<Duration>>) {
    use std::hint::black_box;
    let n: u32 = if cfg.quick { 200_000 } else { 2_000_000 };
    let process = String::from("wide");
    let run_id: Arc<str> = Arc::from("wide-1");
    let worker: Arc<str> = Arc::from("worker-0123456789abcdef");
    let node: Arc<str> = Arc::from("leaf#1234");
    let run = tracing::info_span!("run", process = %process, run = %run_id, worker = %worker, resumes = 0u32);
    let mut per_attempt = Vec::new();
    for _ in 0..cfg.runs.max(3) {
        let t = Instant::now();
        for attempt in 0..n {
            let span = tracing::info_span!(
                parent: &run,
                "task",
                process = %process,
                run = %run_id,
                task = "leaf",
                node = %node,
                attempt,
                worker = %worker,
            );
            // An attempt's future is polled at least once inside its span.
            span.in_scope(|| black_box(attempt));
            black_box(&span);
        }
        per_attempt.push(t.elapsed() / n);
    }
    let each = median(&per_attempt);
    println!(
        "tracing spans with no subscriber installed (subscriber set: {}; static max level: {}), median of {}:",
        tracing::dispatcher::has_been_set(),
        tracing::level_filters::STATIC_MAX_LEVEL,
        per_attempt.len()
    );
    println!(
        "  one attempt span (create with 6 fields, enter, exit, drop): {:.1} ns",
        each.as_secs_f64() * 1e9
    );
    for (si, &shape) in cfg.shapes.iter().enumerate() {
        if let Shape::Wide(tasks) = shape {
            let spans = each * tasks;
            let b = median(&times[&(si, Variant::Memory)]);
            println!(
                "  {:<14} {} attempt spans: {:.3} ms = {:.2}% of its (b) median {:.2} ms",
                shape.name(),
                tasks,
                ms(spans),
                100.0 * spans.as_secs_f64() / b.as_secs_f64(),
                ms(b)
            );
        }
    }
    println!("  (build with `--features tracing/max_level_off` to compile every span and event out and compare the tables)");
    println!();
}

/// `--rss-child <n> <mem|sled|sled1g|sled<N>m>`: runs one wide graph and prints `VmHWM` before and after,
/// and the peak live heap during the run (counted from the runtime's start; freed memory
/// subtracted, so a live heap far below `VmHWM` is allocator overhead, not the runtime).
async fn rss_child(n: u32, store: &str) -> AnyResult<()> {
    let before = status_kb("VmHWM:").unwrap_or(0);
    let dir = fresh_dir("rss");
    TRACK.store(true, Ordering::Relaxed);
    let rt = if store == "sled" {
        register(Runtime::open(&dir)).start().await?
    } else if store == "sled1g" {
        // sled's own default cache (1 GiB), for comparison with the runtime's default.
        register(Runtime::open(&dir).sled_cache(1 << 30))
            .start()
            .await?
    } else if let Some(mib) = store
        .strip_prefix("sled")
        .and_then(|s| s.strip_suffix('m'))
        .and_then(|s| s.parse::<u64>().ok())
    {
        // `sled<N>m`: a cache of N MiB, to see what the cache size buys.
        register(Runtime::open(&dir).sled_cache(mib << 20))
            .start()
            .await?
    } else {
        register(Runtime::in_memory()).start().await?
    };
    let report = launch_shape(&rt, Shape::Wide(n)).await?;
    let after = status_kb("VmHWM:").unwrap_or(0);
    let peak = PEAK.load(Ordering::Relaxed) as u64 / 1024;
    println!("RSS {before} {after} {peak} {}", report.tasks.len());
    rt.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `--scale-child <n> <mem|sled>`: one run of wide `n` in this fresh process, timed from
/// launch to report (no allocation counting); prints `SCALE <ns> <VmHWM kB> <tasks>`.
async fn scale_child(n: u32, store: &str) -> AnyResult<()> {
    let dir = fresh_dir("scale");
    let rt = if store == "sled" {
        register(Runtime::open(&dir)).start().await?
    } else {
        register(Runtime::in_memory()).start().await?
    };
    let t = Instant::now();
    let report = launch_shape(&rt, Shape::Wide(n)).await?;
    let took = t.elapsed();
    let peak = status_kb("VmHWM:").unwrap_or(0);
    let sum = checksum(&report);
    let want = u64::from(n) * u64::from(n.saturating_sub(1)) / 2;
    if sum != want {
        return Err(format!("wide {n}: checksum {sum}, expected {want}").into());
    }
    println!("SCALE {} {peak} {}", took.as_nanos(), report.tasks.len());
    drop(report);
    rt.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs [`scale_child`] in a child process: (elapsed, peak RSS in kB).
fn run_scale_child(n: u32, store: &str) -> AnyResult<(Duration, u64)> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--scale-child")
        .arg(n.to_string())
        .arg(store)
        .stderr(Stdio::inherit())
        .output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .find(|l| l.starts_with("SCALE "))
        .ok_or_else(|| format!("scale child failed: {s}"))?;
    let f: Vec<u64> = line[6..]
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match f.as_slice() {
        [ns, peak, _] => Ok((Duration::from_nanos(*ns), *peak)),
        _ => Err(format!("bad scale line: {line}").into()),
    }
}

/// Target 6: wide `big` (1M in the full run) in memory and on sled, each in a fresh child
/// process, against wide `small` (10k) measured the same way; medians of 3 children each,
/// small and big interleaved (one child of each was the whole measurement before: the
/// ratio moved from 1.03x to 1.35x between two runs on a busy machine).
fn print_scale(small: u32, big: u32) -> AnyResult<()> {
    const CHILDREN: usize = 3;
    println!(
        "scale: wide {} in a fresh child process (launch to report; peak RSS = VmHWM of the child), against wide {} measured the same way, median of {CHILDREN} children each, interleaved:",
        human(big),
        human(small)
    );
    let mut worst: f64 = 0.0;
    for (store, label) in [("mem", "in memory"), ("sled", "on sled  ")] {
        let mut smalls: Vec<Duration> = Vec::with_capacity(CHILDREN);
        let mut bigs: Vec<(Duration, u64)> = Vec::with_capacity(CHILDREN);
        for _ in 0..CHILDREN {
            smalls.push(run_scale_child(small, store)?.0);
            bigs.push(run_scale_child(big, store)?);
        }
        smalls.sort_unstable();
        bigs.sort_unstable();
        let per_small = smalls[CHILDREN / 2].as_secs_f64() * 1e6 / f64::from(small);
        let (took, _) = bigs[CHILDREN / 2];
        // The highest peak of the big children: the figure a user sizes memory for.
        let peak = bigs.iter().map(|b| b.1).max().unwrap_or(0);
        let per_big = took.as_secs_f64() * 1e6 / f64::from(big);
        let ratio = per_big / per_small;
        worst = worst.max(ratio);
        println!(
            "  {label}: {} tasks {:.0} ms ({per_big:.2} µs/task; runs {:.0} to {:.0} ms), peak RSS {:.1} MiB; wide {}: {per_small:.2} µs/task; per-task ratio {ratio:.2}x",
            human(big),
            ms(took),
            ms(bigs[0].0),
            ms(bigs[CHILDREN - 1].0),
            peak as f64 / 1024.0,
            human(small),
        );
    }
    println!(
        "target: per-task cost at {} within 1.3x of {}: {} (worst {worst:.2}x)",
        human(big),
        human(small),
        if worst <= 1.3 { "MET" } else { "NOT MET" }
    );
    println!();
    Ok(())
}

const RESUME_ID: &str = "resume-run";

/// `--resume-child <dir> <n>`: launches the gated graph and prints `HALF` once half its
/// tasks are reported done (durable); the parent then kills it with SIGKILL.
async fn resume_child(dir: &Path, n: u32) -> AnyResult<()> {
    let rt = Runtime::open(dir).register::<GatedWide>().start().await?;
    let mut events = rt.subscribe();
    let run = rt
        .launch(Launch::new(GatedWide { n }).id(RESUME_ID))
        .await?;
    let half = u64::from(n - n / 2);
    let prefix = format!("{RESUME_ID}/");
    let mut done = 0u64;
    let mut lagged = 0u64;
    let mut from_store = 0usize;
    loop {
        let check_store =
            match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
                Ok(Some(e)) => match e.kind {
                    EventKind::State { state: State::Done } if e.id.starts_with(&prefix) => {
                        done += 1;
                        if done >= half {
                            break;
                        }
                        false
                    }
                    EventKind::Lagged { missed } => {
                        lagged += missed;
                        false
                    }
                    _ => false,
                },
                Ok(None) => return Err("event stream ended".into()),
                Err(_) => true,
            };
        // This subscriber missed events (it lags behind bursts of group commits): once the
        // lower half has ended and nothing is published for 200 ms, count the done rows in
        // the store instead, then leave the writer time to finish its flush.
        if check_store && lagged > 0 && GATED_ENDED.load(Ordering::Relaxed) >= half {
            let report = rt.report(RESUME_ID).await?;
            from_store = report.tasks.iter().filter(|t| t.is_success()).count();
            if from_store as u64 >= half {
                tokio::time::sleep(Duration::from_millis(300)).await;
                break;
            }
        }
    }
    println!(
        "HALF {done} {lagged} {from_store} {}",
        GATED_ENDED.load(Ordering::Relaxed)
    );
    drop(run);
    std::future::pending::<()>().await;
    Ok(())
}

struct ResumeFigures {
    tasks: u32,
    reported: String,
    start: Duration,
    total: Duration,
    rerun: u64,
    succeeded: bool,
}

async fn measure_resume(n: u32) -> AnyResult<ResumeFigures> {
    let dir = fresh_dir("resume");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--resume-child")
        .arg(&dir)
        .arg(n.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child.stdout.take().ok_or("no child stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if line.starts_with("HALF") {
                return Some(line);
            }
            line.clear();
        }
        None
    });
    let line = tokio::time::timeout(Duration::from_mins(5), line).await;
    child.kill()?; // SIGKILL
    child.wait()?;
    let line = line
        .map_err(|_| "the child did not reach half")??
        .ok_or("the child exited early")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let reported = format!(
        "{} done events seen, {} events missed by the lagging subscriber, {} done rows counted in the store, {} bodies ended",
        f.get(1).unwrap_or(&"?"),
        f.get(2).unwrap_or(&"?"),
        f.get(3).unwrap_or(&"?"),
        f.get(4).unwrap_or(&"?")
    );
    // The restart is a fresh process, as after a real crash (this one's heap is
    // fragmented by everything measured before, which slows sled's reads several times).
    let out = Command::new(std::env::current_exe()?)
        .arg("--restart-child")
        .arg(&dir)
        .stderr(Stdio::inherit())
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .find(|l| l.starts_with("RESTART "))
        .ok_or_else(|| format!("restart child failed: {s}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |k: usize| {
        f.get(k)
            .and_then(|x| x.parse::<u64>().ok())
            .ok_or("bad restart line")
    };
    Ok(ResumeFigures {
        tasks: n,
        reported,
        start: Duration::from_nanos(num(1)?),
        total: Duration::from_nanos(num(2)?),
        rerun: num(3)?,
        succeeded: f.get(4) == Some(&"Succeeded"),
    })
}

/// `--restart-child <dir>`: opens the store a killed `--resume-child` left, waits for the
/// resumed run, prints `RESTART <start ns> <start+wait ns> <bodies run> <status>`.
async fn restart_child(dir: &Path) -> AnyResult<()> {
    GATE_OPEN.store(true, Ordering::Release);
    let t = Instant::now();
    let rt = Runtime::open(dir).register::<GatedWide>().start().await?;
    let start = t.elapsed();
    let report = rt.wait(RESUME_ID).await?;
    let total = t.elapsed();
    println!(
        "RESTART {} {} {} {:?}",
        start.as_nanos(),
        total.as_nanos(),
        GATED_ENDED.load(Ordering::Relaxed),
        report.status
    );
    rt.shutdown().await?;
    Ok(())
}

fn run_rss_child(n: u32, store: &str) -> AnyResult<(u64, u64, u64)> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--rss-child")
        .arg(n.to_string())
        .arg(store)
        .stderr(Stdio::inherit())
        .output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .find(|l| l.starts_with("RSS "))
        .ok_or_else(|| format!("rss child failed: {s}"))?;
    let f: Vec<u64> = line[4..]
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match f.as_slice() {
        [before, after, peak, _] => Ok((*before, *after, *peak)),
        _ => Err(format!("bad rss line: {line}").into()),
    }
}

// ----------------------------------------------------------------------------------------
// Main.
// ----------------------------------------------------------------------------------------

struct Config {
    quick: bool,
    warmup: usize,
    runs: usize,
    shapes: Vec<Shape>,
    big_wide: u32,
    with_run_graph: bool,
}

/// The timings of one shape.
struct ShapeTimes {
    times: BTreeMap<Variant, Vec<Duration>>,
    /// Raw sled (one 100 B record per task, one batch, one flush), measured in the same
    /// rounds as (c): the process's state (heap, page cache) is the same for both.
    raw: Vec<Duration>,
    /// Median `Graph::of` time.
    build: Duration,
}

fn variants(with_run_graph: bool) -> Vec<Variant> {
    let mut v = vec![Variant::Baseline, Variant::BaselineChannel, Variant::Memory];
    if with_run_graph {
        v.push(Variant::MemoryGraph);
    }
    v.push(Variant::Sled);
    v
}

/// Measures `shape`: `warmup + runs` rounds of every variant and raw sled, interleaved;
/// checks that every variant computes the baseline's sum; then the graph build alone.
async fn measure_shape(
    shape: Shape,
    warmup: usize,
    runs: usize,
    with_run_graph: bool,
) -> AnyResult<ShapeTimes> {
    let variants = variants(with_run_graph);
    let mut times: BTreeMap<Variant, Vec<Duration>> = BTreeMap::new();
    let mut sums: BTreeMap<Variant, u64> = BTreeMap::new();
    let mut raw = Vec::new();
    for r in 0..warmup + runs {
        for &v in &variants {
            let (d, sum) = run_once(shape, v).await?;
            sums.insert(v, sum);
            if r >= warmup {
                times.entry(v).or_default().push(d);
            }
        }
        let n = shape.tasks() as u64;
        let d = tokio::task::spawn_blocking(move || raw_sled(n, 100)).await??;
        if r >= warmup {
            raw.push(d);
        }
    }
    let base = sums[&Variant::Baseline];
    for &v in &variants {
        if sums[&v] != base {
            return Err(format!(
                "{}: {} computed {} but the baseline {base}",
                shape.name(),
                v.label(),
                sums[&v]
            )
            .into());
        }
    }
    let mut b = Vec::new();
    for _ in 0..runs.max(3) {
        let t = Instant::now();
        let g = graph_of(shape)?;
        b.push(t.elapsed());
        drop(g);
    }
    Ok(ShapeTimes {
        times,
        raw,
        build: median(&b),
    })
}

fn shape_args(shape: Shape) -> [String; 2] {
    match shape {
        Shape::Wide(n) => ["wide".into(), n.to_string()],
        Shape::WideBig(n) => ["wide-big".into(), n.to_string()],
        Shape::Chain(n) => ["chain".into(), n.to_string()],
        Shape::Fan(n) => ["fan".into(), n.to_string()],
        Shape::Layered { layers, width } => ["layered".into(), (layers * width).to_string()],
    }
}

fn parse_shape(kind: Option<&str>, n: u32) -> Shape {
    match kind {
        Some("chain") => Shape::Chain(n),
        Some("fan") => Shape::Fan(n),
        Some("wide-big") => Shape::WideBig(n),
        Some("layered") => Shape::Layered {
            layers: n / 1000,
            width: 1000,
        },
        _ => Shape::Wide(n),
    }
}

/// `--shape-child <kind> <n> <warmup> <runs> <0|1>`: measures one shape, prints
/// `T <variant index> <ns>`, `R <ns>` and `B <ns>` lines.
async fn shape_child(args: &[String]) -> AnyResult<()> {
    let arg =
        |k: usize| -> AnyResult<usize> { Ok(args.get(k).ok_or("missing argument")?.parse()?) };
    let shape = parse_shape(args.first().map(String::as_str), u32::try_from(arg(1)?)?);
    let with_run_graph = arg(4)? == 1;
    let m = measure_shape(shape, arg(2)?, arg(3)?, with_run_graph).await?;
    let all = variants(with_run_graph);
    for (v, ds) in &m.times {
        let k = all.iter().position(|x| x == v).ok_or("variant")?;
        for d in ds {
            println!("T {k} {}", d.as_nanos());
        }
    }
    for d in &m.raw {
        println!("R {}", d.as_nanos());
    }
    println!("B {}", m.build.as_nanos());
    Ok(())
}

fn run_shape_child(shape: Shape, cfg: &Config) -> AnyResult<ShapeTimes> {
    let [kind, n] = shape_args(shape);
    let out = Command::new(std::env::current_exe()?)
        .args(["--shape-child", &kind, &n])
        .arg(cfg.warmup.to_string())
        .arg(cfg.runs.to_string())
        .arg(if cfg.with_run_graph { "1" } else { "0" })
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("measuring {} failed", shape.name()).into());
    }
    let all = variants(cfg.with_run_graph);
    let mut m = ShapeTimes {
        times: BTreeMap::new(),
        raw: Vec::new(),
        build: Duration::ZERO,
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let ns = |k: usize| -> AnyResult<Duration> {
            Ok(Duration::from_nanos(f.get(k).ok_or("bad line")?.parse()?))
        };
        match f.first() {
            Some(&"T") => {
                let v = all[f.get(1).ok_or("bad line")?.parse::<usize>()?];
                m.times.entry(v).or_default().push(ns(2)?);
            }
            Some(&"R") => m.raw.push(ns(1)?),
            Some(&"B") => m.build = ns(1)?,
            _ => {}
        }
    }
    if m.times.len() != all.len() || m.raw.is_empty() {
        return Err(format!("measuring {} printed no timings", shape.name()).into());
    }
    Ok(m)
}

fn machine_line(cfg: &Config) -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    format!(
        "machine: {cores} cores (available_parallelism), {cpu}; {}; profile {}; tokio multi-thread, {cores} workers; mode {}",
        env!("BENCH_RUSTC_VERSION"),
        env!("BENCH_PROFILE"),
        if cfg.quick {
            "--quick (1 run, small sizes)"
        } else {
            "full"
        }
    )
}

#[allow(clippy::too_many_lines)]
async fn bench(cfg: Config) -> AnyResult<()> {
    let wall = Instant::now();
    println!("{}", machine_line(&cfg));
    println!(
        "timing: wall time from launch to report in hand, median of {} interleaved run(s) after {} warm-up(s).",
        cfg.runs, cfg.warmup
    );
    println!("  (a) and (a') build their DAG from the shape (in-degree counters, CSR) + run it; (a) spawns a node from the");
    println!("      task that made it ready, (a') sends it over a channel to a driver task that spawns it (procession's design);");
    println!("      ratios are to (a), the faster design;");
    println!("  (b)/(c) rt.launch(process) [graph build via #[process], run record written] + run + wait() [RunReport];");
    if cfg.with_run_graph {
        println!("  (b') Graph::of(process) + rt.run_graph(graph) on an in-memory runtime (no run record, no task rows);");
    }
    println!("  runtime start/shutdown, sled open and temp dir creation/removal are excluded.");
    println!();

    let variants = variants(cfg.with_run_graph);

    // Each shape is measured in a fresh child process: a process that has just run 100k-task
    // graphs has a fragmented heap that slows the next measurements (sled's most of all).
    let mut times: BTreeMap<(usize, Variant), Vec<Duration>> = BTreeMap::new();
    let mut raw_times: BTreeMap<usize, Vec<Duration>> = BTreeMap::new();
    let mut builds = Vec::new();
    for (si, &shape) in cfg.shapes.iter().enumerate() {
        let m = run_shape_child(shape, &cfg)?;
        for (v, ds) in m.times {
            times.insert((si, v), ds);
        }
        raw_times.insert(si, m.raw);
        builds.push(m.build);
        eprintln!(
            "  measured {} ({:.1} s so far)",
            shape.name(),
            wall.elapsed().as_secs_f64()
        );
    }

    println!(
        "{:<16} {:<28} {:>8} {:>10} {:>12} {:>8} {:>7} {:>10} {:>8} {:>7}",
        "graph",
        "variant",
        "tasks",
        "median ms",
        "tasks/s",
        "µs/task",
        "vs (a)",
        "excl build",
        "µs/task",
        "vs (a)"
    );
    println!("{}", "-".repeat(124));
    for (si, &shape) in cfg.shapes.iter().enumerate() {
        let n = shape.tasks();
        let base = median(&times[&(si, Variant::Baseline)]);
        for &v in &variants {
            let m = median(&times[&(si, v)]);
            let excl = if matches!(v, Variant::Baseline | Variant::BaselineChannel) {
                String::new()
            } else {
                let e = m.saturating_sub(builds[si]);
                format!(
                    "{:>10.2} {:>8.2} {:>6.2}x",
                    ms(e),
                    e.as_secs_f64() * 1e6 / n as f64,
                    e.as_secs_f64() / base.as_secs_f64()
                )
            };
            println!(
                "{:<16} {:<28} {:>8} {:>10.2} {:>12} {:>8.2} {:>6.2}x {}",
                shape.name(),
                v.label(),
                n,
                ms(m),
                group_digits(n as f64 / m.as_secs_f64()),
                m.as_secs_f64() * 1e6 / n as f64,
                m.as_secs_f64() / base.as_secs_f64(),
                excl
            );
        }
    }
    println!("(all runs checked: every variant computes the baseline's sum of node values; \"excl build\" subtracts the");
    println!(" median Graph::of time below, which (b)/(b')/(c) include and the baselines' trivial CSR build does not need)");
    let indicative = if cfg.quick {
        " [quick sizes: indicative only]"
    } else {
        ""
    };
    let worst_b = cfg
        .shapes
        .iter()
        .enumerate()
        .map(|(si, s)| {
            let r = median(&times[&(si, Variant::Memory)]).as_secs_f64()
                / median(&times[&(si, Variant::Baseline)]).as_secs_f64();
            (r, s.name())
        })
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a });
    println!(
        "target (b) <= 1.5x (a) on every graph: {} (worst {:.2}x on {}){indicative}",
        if worst_b.0 <= 1.5 { "MET" } else { "NOT MET" },
        worst_b.0,
        worst_b.1
    );
    println!();

    // Graph build alone.
    println!(
        "graph build alone (Graph::of(process), median of {} runs), included in (b)/(c) above:",
        cfg.runs.max(3)
    );
    println!("{:<16} {:>10} {:>16}", "graph", "build ms", "share of (b)");
    for (si, &shape) in cfg.shapes.iter().enumerate() {
        let b = builds[si];
        println!(
            "{:<16} {:>10.2} {:>15.0}%",
            shape.name(),
            ms(b),
            100.0 * b.as_secs_f64() / median(&times[&(si, Variant::Memory)]).as_secs_f64()
        );
    }
    {
        let n = if cfg.quick { 2_000 } else { 10_000 };
        let t = Instant::now();
        let g = Graph::of(ChainLoop { n })?;
        let el = t.elapsed();
        println!(
            "{:<16} {:>10.2}   (same chain built with a plain `for` loop: repeated task name, ids step#k)",
            format!("chain {} loop", human(n)),
            ms(el)
        );
        drop(g);
    }
    println!();

    // Small runs: the fixed cost of a run (its own child process).
    small_figures::run_child(cfg.quick)?;

    // Spans with no subscriber.
    print_span_cost(&cfg, &times);

    // Persisted writes vs raw sled.
    println!("persisted writes of one (c) run (counted by a Store wrapper around SledStore; separate, untimed run)");
    println!("vs raw sled: one 100 B record per task into a fresh sled db with one sled::Batch + one flush (the DESIGN §8");
    println!(
        "reference; open excluded), measured in the same rounds as (c) above, median of {}:",
        cfg.runs
    );
    println!(
        "{:<16} {:>7} {:>7} {:>6} {:>7} {:>7} {:>11} {:>12} {:>6}",
        "graph",
        "tasks",
        "rows",
        "B/row",
        "applies",
        "flushes",
        "(c) tasks/s",
        "raw rec/s",
        "ratio"
    );
    let mut big_persisted = None;
    let mut worst_c = f64::INFINITY;
    for (si, &shape) in cfg.shapes.iter().enumerate() {
        let p = persisted_profile(shape).await?;
        let rows = p.stats.task_rows;
        let mean = p.stats.bytes.checked_div(rows).unwrap_or(0);
        let tasks = shape.tasks() as f64;
        let c_rate = tasks / median(&times[&(si, Variant::Sled)]).as_secs_f64();
        let raw_rate = tasks / median(&raw_times[&si]).as_secs_f64();
        worst_c = worst_c.min(c_rate / raw_rate);
        println!(
            "{:<16} {:>7} {:>7} {:>6} {:>7} {:>7} {:>11} {:>12} {:>5.0}%",
            shape.name(),
            shape.tasks(),
            rows,
            mean,
            p.stats.applies,
            p.stats.flushes,
            group_digits(c_rate),
            group_digits(raw_rate),
            100.0 * c_rate / raw_rate,
        );
        if matches!(shape, Shape::Wide(n) if n == cfg.big_wide) {
            big_persisted = Some((shape, p));
        }
    }
    println!("  rows = task rows written during the run (a row holds the task's result; process records excluded);");
    println!("  the store keeps task rows 64 to a sled key (store schema 5: sled's cost is per key written, not per byte),");
    println!("  so (c) writes every row but about rows/64 task keys, raw sled one key per record;");
    println!("  ratio = (c) tasks/s / raw records/s. sled frees replaced node versions through crossbeam's global epoch");
    println!("  collector: the store frees its own during the run (bounded memory), raw sled's one batch leaves them, and");
    println!("  both start with none left from the other (freed untimed before each measurement).");
    println!(
        "target (c) >= 100% of raw sled batched-insert throughput (one record per task): {} (worst {:.0}%){indicative}",
        if worst_c >= 1.0 { "MET" } else { "NOT MET" },
        100.0 * worst_c
    );
    if let Some((shape, p)) = big_persisted {
        let n = shape.tasks() as f64;
        println!(
            "sled bytes per task ({}): store dir {:.0} B/task ({:.1} MiB total), sled size_on_disk() {}, bytes passed to write(2) during the run {}, logical record bytes {:.0} B/task",
            shape.name(),
            p.dir_bytes as f64 / n,
            p.dir_bytes as f64 / 1_048_576.0,
            p.size_on_disk
                .map_or_else(|| "n/a".into(), |b| format!("{:.0} B/task", b as f64 / n)),
            p.wchar
                .map_or_else(|| "n/a".into(), |b| format!("{:.0} B/task", b as f64 / n)),
            p.stats.bytes as f64 / n
        );
    }
    println!();

    // Memory.
    let (b0, b1, bh) = run_rss_child(cfg.big_wide, "mem")?;
    let (s0, s1, sh) = run_rss_child(cfg.big_wide, "sled")?;
    let (g0, g1, gh) = run_rss_child(cfg.big_wide, "sled1g")?;
    println!(
        "peak resident memory (VmHWM, fresh child process running only wide {}; peak live heap counted by a global allocator wrapper):",
        human(cfg.big_wide)
    );
    println!(
        "  in memory: {:.1} MiB (process before the run: {:.1} MiB; peak live heap {:.1} MiB)   target <= 100 MiB: {}{indicative}",
        b1 as f64 / 1024.0,
        b0 as f64 / 1024.0,
        bh as f64 / 1024.0,
        if b1 <= 100 * 1024 { "MET" } else { "NOT MET" }
    );
    println!(
        "  on sled:   {:.1} MiB (process before the run: {:.1} MiB; peak live heap {:.1} MiB; default sled cache {} MiB)   target <= 200 MiB: {}{indicative}",
        s1 as f64 / 1024.0,
        s0 as f64 / 1024.0,
        sh as f64 / 1024.0,
        SledStore::DEFAULT_CACHE >> 20,
        if s1 <= 200 * 1024 { "MET" } else { "NOT MET" }
    );
    println!(
        "  on sled with .sled_cache(1 GiB) (sled's own default): {:.1} MiB (before: {:.1} MiB; peak live heap {:.1} MiB)",
        g1 as f64 / 1024.0,
        g0 as f64 / 1024.0,
        gh as f64 / 1024.0
    );
    println!();

    // Scale (issue 17, target 6): 1M tasks in the full run; the quick run skips it.
    if cfg.quick {
        println!("scale (wide 1M in memory and on sled): skipped in quick mode");
        println!();
    } else {
        print_scale(10_000, 1_000_000)?;
    }

    // Resume: median of up to 3 measurements, each after `sync` so that the dirty pages
    // of the sled runs above do not stall the store's reads and writes.
    let resumes = cfg.runs.clamp(1, 3);
    let mut starts = Vec::new();
    let mut totals = Vec::new();
    let mut r = None;
    for _ in 0..resumes {
        let _ = Command::new("sync").status();
        let m = measure_resume(cfg.big_wide).await?;
        if !m.succeeded || m.rerun != u64::from(m.tasks - m.tasks / 2) {
            return Err(format!(
                "resume ended (succeeded: {}) with {} re-runs",
                m.succeeded, m.rerun
            )
            .into());
        }
        starts.push(m.start);
        totals.push(m.total);
        r = Some(m);
    }
    let mut r = r.ok_or("no resume measured")?;
    r.start = median(&starts);
    r.total = median(&totals);
    println!(
        "resume of an interrupted wide {} run on sled, median of {resumes} (child SIGKILLed once half its tasks were reported done; last one: {}):",
        human(r.tasks),
        r.reported
    );
    // Issue 17's targets: start <= 150 ms, start + the other half <= 500 ms.
    let verdict = |d: Duration, ms: u64| {
        if d <= Duration::from_millis(ms) {
            "MET"
        } else {
            "NOT MET"
        }
    };
    println!(
        "  in a fresh process (a restart): Runtime::open(dir).register().start() (store opened, graph rebuilt, rows read, run relaunched): {:.1} ms   target <= 150 ms: {}{indicative}",
        ms(r.start),
        verdict(r.start, 150)
    );
    println!(
        "  start + running the other {} tasks to the end on sled: {:.1} ms (target <= 500 ms: {}); tasks re-run: {} (expected {}), succeeded",
        r.tasks - r.tasks / 2,
        ms(r.total),
        verdict(r.total, 500),
        r.rerun,
        r.tasks - r.tasks / 2,
    );
    println!();
    let (small, large) = if cfg.quick {
        (200, 2_000)
    } else {
        (1_000, 10_000)
    };
    let t_small = children_run(small).await?;
    let t_large = children_run(large).await?;
    let per = |d: Duration, n: u32| d.as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "children: one task starting N children in a parallel group (memory store, 64 at a time): \
         {} children {:.1} ms ({:.0} µs each), {} children {:.1} ms ({:.0} µs each); \
         per-child cost ratio {:.2} (linear: about 1)",
        human(small),
        ms(t_small),
        per(t_small, small),
        human(large),
        ms(t_large),
        per(t_large, large),
        per(t_large, large) / per(t_small, small)
    );
    println!();
    println!(
        "total benchmark wall time: {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res: AnyResult<()> = rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("--rss-child") => {
                let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
                rss_child(n, args.get(2).map_or("mem", String::as_str)).await
            }
            Some("--scale-child") => {
                let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
                scale_child(n, args.get(2).map_or("mem", String::as_str)).await
            }
            Some("--shape-child") => shape_child(&args[1..]).await,
            Some("--restart-child") => {
                let dir = PathBuf::from(args.get(1).ok_or("dir")?);
                restart_child(&dir).await
            }
            Some("--resume-child") => {
                let dir = PathBuf::from(args.get(1).ok_or("dir")?);
                let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
                resume_child(&dir, n).await
            }
            Some("--only") => {
                // For profilers: `--only <wide|wide-big|chain|fan|layered> <n> <a|a2|b|b2|c> [repeats]`.
                let n: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100_000);
                let shape = parse_shape(args.get(1).map(String::as_str), n);
                let v = match args.get(3).map(String::as_str) {
                    Some("a") => Variant::Baseline,
                    Some("a2") => Variant::BaselineChannel,
                    Some("b2") => Variant::MemoryGraph,
                    Some("c") => Variant::Sled,
                    _ => Variant::Memory,
                };
                let repeats: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5);
                for _ in 0..repeats {
                    let (d, _) = run_once(shape, v).await?;
                    println!("{} {}: {:.2} ms", shape.name(), v.label(), ms(d));
                }
                // One more run, untimed: counting slows the allocator down.
                ALLOCS.store(0, Ordering::Relaxed);
                TRACK.store(true, Ordering::Relaxed);
                run_once(shape, v).await?;
                TRACK.store(false, Ordering::Relaxed);
                println!(
                    "{} {}: {:.1} allocations per task (runtime start and stop included)",
                    shape.name(),
                    v.label(),
                    ALLOCS.load(Ordering::Relaxed) as f64 / shape.tasks() as f64
                );
                Ok(())
            }
            Some("--scale-only") => {
                // The scale section alone (issue 17 target 6), as in the full table.
                let small = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
                let big = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
                print_scale(small, big)
            }
            Some("--build-only") => {
                // For profilers: `--build-only <wide|wide-big|chain|fan|layered> <n> [repeats]`, the
                // graph build (`Graph::of`) alone, `repeats` times; prints the median.
                let n: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
                let shape = parse_shape(args.get(1).map(String::as_str), n);
                let repeats: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
                let mut times = Vec::with_capacity(repeats);
                for _ in 0..repeats {
                    let t = Instant::now();
                    let g = graph_of(shape)?;
                    times.push(t.elapsed());
                    drop(g);
                }
                println!(
                    "{} graph build: median {:.3} ms over {repeats} builds",
                    shape.name(),
                    ms(median(&times))
                );
                Ok(())
            }
            Some("--resume-only") => {
                // For profilers: the resume measurement alone.
                let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
                let r = measure_resume(n).await?;
                println!(
                    "resume {}: {}; start {:.1} ms, start+wait {:.1} ms, re-run {}",
                    r.tasks,
                    r.reported,
                    ms(r.start),
                    ms(r.total),
                    r.rerun
                );
                Ok(())
            }
            Some("--small-child") => small_figures::child(&args[1..]).await,
            Some("--small-only") => small_figures::only(&args[1..]).await,
            Some("--concurrent-only") => small_figures::concurrent_only(&args[1..]).await,
            Some("--admin") => admin_figures::run(&args[1..]).await,
            Some("--admin-list-child") => admin_figures::list_child(&args[1..]).await,
            Some("--postgres") => pg_figures::run(&args[1..]).await,
            Some("--pg-worker") => pg_figures::worker(&args[1..]).await,
            Some("-h" | "--help") => {
                println!("usage: procession-benches [--quick] [--no-run-graph] | --only <wide|wide-big|chain|fan|layered> <tasks> <a|a2|b|b2|c> [repeats] | --resume-only <tasks> | --build-only <wide|wide-big|chain|fan|layered> <tasks> [repeats] | --scale-only [small] [big] | --small-only <wide|chain> <tasks> <a|b|c>... [runs [history]] | --concurrent-only <launches> [width] | --admin [--quick] | --postgres [--quick] [--hot-path | --spread-only | --spread-cost] [--url <url>]");
                Ok(())
            }
            _ => {
                let quick = args.iter().any(|a| a == "--quick");
                let with_run_graph = !args.iter().any(|a| a == "--no-run-graph");
                let cfg = if quick {
                    Config {
                        quick,
                        warmup: 0,
                        runs: 1,
                        shapes: vec![
                            Shape::Wide(1_000),
                            Shape::Wide(10_000),
                            Shape::Chain(1_000),
                            Shape::Fan(1_000),
                            Shape::Layered {
                                layers: 10,
                                width: 1_000,
                            },
                        ],
                        big_wide: 10_000,
                        with_run_graph,
                    }
                } else {
                    Config {
                        quick,
                        warmup: 1,
                        runs: 5,
                        shapes: vec![
                            Shape::Wide(10_000),
                            Shape::Wide(100_000),
                            Shape::Chain(10_000),
                            Shape::Fan(10_000),
                            Shape::Layered {
                                layers: 100,
                                width: 1_000,
                            },
                            Shape::WideBig(100_000),
                        ],
                        big_wide: 100_000,
                        with_run_graph,
                    }
                };
                bench(cfg).await
            }
        }
    });
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
