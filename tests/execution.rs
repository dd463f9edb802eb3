//! Execution: dependency order and result passing (acceptance area 3) and parallelism
//! (area 5: PROC-22/24/26/27, WF-140/145/146, and concurrency limits).
//!
//! Concurrency is proven with rendezvous points that time out, never by timing.

// Task inputs are owned values (they are stored between tasks), so a task that only
// reads an input still takes it by value; some tasks are `async` only to run as async
// tasks.
#![allow(clippy::needless_pass_by_value, clippy::unused_async)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use common::{rendezvous, rt, sync_rendezvous, wait_until_async};
use procession::prelude::*;
use tokio::sync::{Barrier, Notify};

// ---------------------------------------------------------------- WF-30: order

static WF30_ORDER: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[task]
fn wf30_step(name: String) {
    WF30_ORDER.lock().unwrap().push(name);
}

// WF-30: a; b after a; c after b (ordering only, no data): they run exactly in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wf_30_dependencies_run_in_order() {
    let mut g = TaskGraph::new();
    // Added in reverse, so only the edges can produce the order.
    g.add("c", Wf30Step::new("c")).unwrap();
    g.add("b", Wf30Step::new("b")).unwrap();
    g.add("a", Wf30Step::new("a")).unwrap();
    g.add_dependency("b", "a").unwrap();
    g.add_dependency("c", "b").unwrap();
    let report = rt().await.run_graph(g).await.unwrap();
    assert!(report.is_success());
    assert_eq!(*WF30_ORDER.lock().unwrap(), vec!["a", "b", "c"]);
}

static SEQ_ORDER: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[task]
async fn seq_step(i: u32) {
    // Yield a few times so that a step started too early would overtake its predecessor.
    for _ in 0..(10 - i) {
        tokio::task::yield_now().await;
    }
    SEQ_ORDER.lock().unwrap().push(i);
}

#[process(mode = "sequential")]
fn sequential_steps(p: &mut Builder) {
    for i in 0..10 {
        p.task(SeqStep::new(i));
    }
}

// WF-30: the steps of a sequential process run one after another, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wf_30_sequential_steps_run_in_order() {
    let report = rt().await.run(SequentialSteps {}).await.unwrap();
    assert!(report.is_success());
    assert_eq!(*SEQ_ORDER.lock().unwrap(), (0..10).collect::<Vec<_>>());
}

// ------------------------------------------------------- result passing by name

#[task]
fn producer() -> i64 {
    7
}

#[task]
fn double(x: i64) -> i64 {
    x * 2
}

// PROC-36: a consumer reads a producer named by a handle taken before the producer was
// added; the result flows (7 * 2 = 14).
#[tokio::test]
async fn proc_36_result_flows_through_a_late_dependency() {
    let mut g = TaskGraph::new();
    let x = g.output::<i64>("producer");
    g.add("consumer", Double::new(x)).unwrap();
    g.add("producer", Producer::new()).unwrap();
    let report = rt().await.run_graph(g).await.unwrap();
    assert_eq!(report.result::<i64>("consumer").unwrap(), 14);
}

#[task]
fn twenty_one() -> i64 {
    21
}

// PROC-43: "Producer" read as "PRODUCER" resolves; the report is keyed by the
// lower-cased name.
#[tokio::test]
async fn proc_43_dependency_resolves_across_case() {
    let mut g = TaskGraph::new();
    g.add("Producer", TwentyOne::new()).unwrap();
    let x = g.output::<i64>("PRODUCER");
    g.add("Consumer", Double::new(x)).unwrap();
    let report = rt().await.run_graph(g).await.unwrap();
    assert_eq!(report.result::<i64>("consumer").unwrap(), 42);
    assert!(report.task("Consumer").is_none());
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    amount: f64,
    tags: Vec<String>,
}

#[task]
fn make_orders(n: u64) -> Vec<Order> {
    (0..n)
        .map(|id| Order {
            id,
            amount: id as f64 * 1.5,
            tags: vec![format!("t{id}")],
        })
        .collect()
}

#[task]
fn total(orders: Vec<Order>) -> f64 {
    orders.iter().map(|o| o.amount).sum()
}

#[task]
fn ids(orders: Vec<Order>) -> Vec<u64> {
    orders.into_iter().map(|o| o.id).collect()
}

#[task]
fn first_tag(orders: Vec<Order>) -> String {
    orders[0].tags[0].clone()
}

#[process(mode = "concurrent")]
fn shared_output(p: &mut Builder) {
    let orders = p.task(MakeOrders::new(4_u64));
    p.task(Total::new(orders));
    p.task(Ids::new(orders));
    p.task(FirstTag::new(orders));
}

// One output read by several tasks: each gets the full value (structured data survives
// the hand-over, whichever reader gets the original and whichever a decoded copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_output_feeds_many_readers() {
    for _ in 0..5 {
        let report = rt().await.run(SharedOutput {}).await.unwrap();
        assert!(report.is_success(), "{}", report.summary());
        assert!((report.result::<f64>("total").unwrap() - 9.0).abs() < f64::EPSILON);
        assert_eq!(report.result::<Vec<u64>>("ids").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(report.result::<String>("first_tag").unwrap(), "t0");
        assert_eq!(report.result::<Vec<Order>>("make_orders").unwrap().len(), 4);
    }
}

// ---------------------------------------------------- PROC-22 / PROC-24

#[task]
async fn unit_of_work(i: u32) -> u32 {
    i
}

#[process(mode = "concurrent")]
fn one_parallel(p: &mut Builder) {
    p.task(UnitOfWork::new(1_u32));
}

#[process(mode = "concurrent")]
fn two_parallel(p: &mut Builder) {
    p.task(UnitOfWork::new(1_u32));
    p.task(UnitOfWork::new(2_u32));
}

// PROC-22: one task, concurrent mode: runs to completion.
// PROC-24: two independent tasks, concurrent mode: both succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proc_22_24_parallel_runs_complete() {
    let rt = rt().await;
    let one = rt.run(OneParallel {}).await.unwrap();
    assert!(one.is_success());
    let two = rt.run(TwoParallel {}).await.unwrap();
    assert!(two.is_success());
    assert_eq!(two.result::<u32>("unit_of_work#1").unwrap(), 2);
}

// ---------------------------------------------------------------- PROC-26

static T5_STARTED: Notify = Notify::const_new();
static PROC26_T2_SAW_T5: AtomicUsize = AtomicUsize::new(0);

#[task]
async fn p26_fast(x: u32) -> u32 {
    x
}

#[task]
async fn p26_slow() -> Result<u32, String> {
    // The long task of the first level: it ends only once t5 has started. An executor
    // that waits for the whole first level before starting t5 never gets there.
    match tokio::time::timeout(common::PATIENCE, T5_STARTED.notified()).await {
        Ok(()) => {
            PROC26_T2_SAW_T5.fetch_add(1, Ordering::SeqCst);
            Ok(2)
        }
        Err(_) => Err("t5 did not start while t2 was still running".into()),
    }
}

#[task]
async fn p26_t5(x: u32) -> u32 {
    T5_STARTED.notify_one();
    x + 4
}

#[task]
async fn p26_t6(a: u32, b: u32) -> u32 {
    a + b
}

// PROC-26: six tasks; t5 depends on t1 only, t6 on t5 and t2. t5 must start as soon as
// its own dependency t1 ended, while t2 (same level as t1) is still running: t2 only
// ends after seeing t5 start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proc_26_a_dependent_starts_as_soon_as_its_own_deps_end() {
    let mut g = TaskGraph::new();
    let t1 = g.add("t1", P26Fast::new(1_u32)).unwrap();
    let t2 = g.add("t2", P26Slow::new()).unwrap();
    g.add("t3", P26Fast::new(3_u32)).unwrap();
    g.add("t4", P26Fast::new(4_u32)).unwrap();
    let t5 = g.add("t5", P26T5::new(t1)).unwrap();
    g.add("t6", P26T6::new(t5, t2)).unwrap();
    let report = rt().await.run_graph(g).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.successes().len(), 6);
    assert_eq!(report.result::<u32>("t6").unwrap(), 7);
    assert_eq!(PROC26_T2_SAW_T5.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------- PROC-27

static BARRIER_16: LazyLock<Barrier> = LazyLock::new(|| Barrier::new(16));

#[task]
async fn sibling(i: u32) -> Result<u32, String> {
    if rendezvous(&BARRIER_16).await {
        Ok(i)
    } else {
        Err(format!(
            "sibling {i}: not all 16 siblings were running at once"
        ))
    }
}

#[task]
fn fan_in(xs: Vec<u32>) -> Vec<u32> {
    xs
}

#[process(mode = "concurrent")]
fn sixteen(p: &mut Builder) {
    let outs: Vec<Out<u32>> = (0..16).map(|i| p.task(Sibling::new(i))).collect();
    p.task(FanIn::new(outs));
}

// PROC-27: sixteen async siblings really run at the same time (a 16-party barrier), and
// the fan-in gets all sixteen results, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proc_27_sixteen_siblings_run_at_once_and_fan_in() {
    let report = rt().await.run(Sixteen {}).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(
        report.result::<Vec<u32>>("fan_in").unwrap(),
        (0..16).collect::<Vec<_>>()
    );
}

static BARRIER_300: LazyLock<Barrier> = LazyLock::new(|| Barrier::new(300));

#[task]
fn fan_root() -> u32 {
    0
}

#[task]
async fn fan_waiter(root: u32, i: u32) -> Result<u32, String> {
    if rendezvous(&BARRIER_300).await {
        Ok(root + i)
    } else {
        Err(format!(
            "waiter {i}: not all 300 waiters were running at once"
        ))
    }
}

#[process(mode = "concurrent")]
fn fan_of_waiters(p: &mut Builder) {
    let root = p.task(FanRoot::new());
    let outs: Vec<Out<u32>> = (0..300).map(|i| p.task(FanWaiter::new(root, i))).collect();
    p.task(FanIn::new(outs));
}

// Started nodes run on a pool of one runner per tokio worker (here one): a runner whose
// node waits hands the rest over, so 300 waiting tasks, made ready at once by the task
// they depend on, still all run at the same time (a 300-party barrier).
#[tokio::test(flavor = "current_thread")]
async fn waiting_tasks_run_at_once_on_one_thread() {
    // Without the hand-over the waiters would run one after the other, each failing
    // after its own wait: bounded as a whole, generously, so that the test fails fast.
    let report = tokio::time::timeout(
        std::time::Duration::from_mins(1),
        rt().await.run(FanOfWaiters {}),
    )
    .await
    .expect("the 300 waiters did not all run at once")
    .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(
        report.result::<Vec<u32>>("fan_in").unwrap(),
        (0..300).collect::<Vec<_>>()
    );
}

// ---------------------------------------------- a long chain shares its thread

static CHAIN_TICKS: AtomicUsize = AtomicUsize::new(0);
static CHAIN_FIRST_SEEN: AtomicUsize = AtomicUsize::new(usize::MAX);
static CHAIN_LAST_SEEN: AtomicUsize = AtomicUsize::new(0);

/// A link of a chain that never waits: notes how often the ticker had run.
#[task]
async fn fair_link(x: u32) -> u32 {
    let ticks = CHAIN_TICKS.load(Ordering::SeqCst);
    CHAIN_FIRST_SEEN.fetch_min(ticks, Ordering::SeqCst);
    CHAIN_LAST_SEEN.store(ticks, Ordering::SeqCst);
    x + 1
}

#[process(mode = "concurrent")]
fn long_chain(p: &mut Builder, n: u32) {
    let mut x = p.task(FairLink::new(0));
    for _ in 1..n {
        x = p.task(FairLink::new(x));
    }
}

// A chain runs in one tokio task, each link started by the one before it; links that
// never wait still give the thread's other tasks a turn now and then (tokio's cooperative
// budget): on one thread, a ticker task runs while the chain is half done.
#[tokio::test(flavor = "current_thread")]
async fn a_long_chain_lets_other_tasks_run() {
    let rt = rt().await;
    let ticker = tokio::spawn(async {
        loop {
            CHAIN_TICKS.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
    });
    let report = rt.run(LongChain { n: 10_000 }).await.unwrap();
    ticker.abort();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(report.tasks.len(), 10_000);
    let (first, last) = (
        CHAIN_FIRST_SEEN.load(Ordering::SeqCst),
        CHAIN_LAST_SEEN.load(Ordering::SeqCst),
    );
    assert!(
        last > first,
        "the ticker never ran between the chain's first link and its last ({first} ticks at both)"
    );
}

// ------------------------------ many runners share one queue of ready nodes

/// Every call of the two tasks below, to prove each node ran once.
static LAYER_CALLS: AtomicUsize = AtomicUsize::new(0);

#[task]
async fn layer_leaf(j: u64) -> u64 {
    LAYER_CALLS.fetch_add(1, Ordering::SeqCst);
    j
}

/// Mixes its inputs in order, so that a wrong or missing input changes the result.
#[task]
async fn layer_mix(ins: Vec<u64>) -> u64 {
    LAYER_CALLS.fetch_add(1, Ordering::SeqCst);
    layer_mix_of(&ins)
}

fn layer_mix_of(ins: &[u64]) -> u64 {
    ins.iter()
        .fold(17u64, |a, x| a.wrapping_mul(1_000_003).wrapping_add(*x))
}

/// Three parents in the previous layer for each node past the first layer, from a fixed
/// seed (the same for the process and the test's own reckoning).
fn layer_parents(layers: u32, width: u32) -> Vec<[usize; 3]> {
    let mut s = 0x2545_f491_4f6c_dd1d_u64;
    let width = width as usize;
    (width..layers as usize * width)
        .map(|_| {
            [0; 3].map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % width as u64) as usize
            })
        })
        .collect()
}

#[process(mode = "concurrent")]
fn layered_mix(p: &mut Builder, layers: u32, width: u32) {
    let picks = layer_parents(layers, width);
    let mut prev: Vec<Out<u64>> = p.each(0..width, |p, j| p.task(LayerLeaf::new(u64::from(j))));
    for l in 1..layers {
        let base = (l as usize - 1) * width as usize;
        prev = p.each(0..width, |p, j| {
            let ins: Vec<Out<u64>> = picks[base + j as usize].iter().map(|&x| prev[x]).collect();
            p.task(LayerMix::new(ins))
        });
    }
    p.task(LayerMix::new(prev));
}

// Four runners take ready nodes from one queue and queue the dependents each end makes
// ready, all at once: every node runs once, after its three parents, with their results.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layered_graph_on_four_runners_runs_each_node_once_with_its_inputs() {
    let (layers, width) = (40u32, 500u32);
    let report = rt().await.run(LayeredMix { layers, width }).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    let nodes = (layers * width) as usize + 1;
    assert_eq!(report.tasks.len(), nodes);
    assert_eq!(
        LAYER_CALLS.load(Ordering::SeqCst),
        nodes,
        "a node ran twice or never"
    );
    // The same graph reckoned here, layer by layer.
    let picks = layer_parents(layers, width);
    let mut prev: Vec<u64> = (0..u64::from(width)).collect();
    for l in 1..layers as usize {
        let base = (l - 1) * width as usize;
        prev = (0..width as usize)
            .map(|j| layer_mix_of(&picks[base + j].map(|x| prev[x])))
            .collect();
    }
    assert_eq!(
        report.result::<u64>("layer_mix").unwrap(),
        layer_mix_of(&prev)
    );
}

static ARRIVED_16_SYNC: AtomicUsize = AtomicUsize::new(0);

#[task]
fn blocking_sibling(i: u32) -> Result<u32, String> {
    if sync_rendezvous(&ARRIVED_16_SYNC, 16) {
        Ok(i)
    } else {
        Err(format!(
            "blocking sibling {i}: not all 16 were running at once"
        ))
    }
}

#[process(mode = "concurrent")]
fn sixteen_blocking(p: &mut Builder) {
    let outs: Vec<Out<u32>> = (0..16).map(|i| p.task(BlockingSibling::new(i))).collect();
    p.task(FanIn::new(outs));
}

// PROC-27 with blocking tasks: sixteen sync tasks run at the same time on the blocking
// pool (they block their threads while they wait for each other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_27_sixteen_blocking_siblings_run_at_once() {
    let report = rt().await.run(SixteenBlocking {}).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(
        report.result::<Vec<u32>>("fan_in").unwrap(),
        (0..16).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------ WF-140 / WF-145 / WF-146

#[task]
fn f_sync(x: u32) -> u32 {
    x * 2
}

#[task]
async fn f_async(x: u32) -> u32 {
    x + 100
}

#[process(mode = "concurrent")]
fn backends(p: &mut Builder) {
    p.task(FSync::new(21_u32));
    p.task(FAsync::new(1_u32));
}

// WF-140: a blocking task f(21) = 42. WF-146: an async task f(1) = 101.
#[tokio::test]
async fn wf_140_wf_146_sync_and_async_tasks_run() {
    const { assert!(!<FSync as Task>::META.is_async && <FAsync as Task>::META.is_async) };
    let report = rt().await.run(Backends {}).await.unwrap();
    assert_eq!(report.result::<u32>("f_sync").unwrap(), 42);
    assert_eq!(report.result::<u32>("f_async").unwrap(), 101);
}

static ARRIVED_4: AtomicUsize = AtomicUsize::new(0);

#[task]
fn slow_square(x: u64) -> Result<u64, String> {
    if sync_rendezvous(&ARRIVED_4, 4) {
        Ok(x * x)
    } else {
        Err("the four blocking tasks did not run at once".into())
    }
}

#[process(mode = "concurrent")]
fn squares(p: &mut Builder) {
    for x in 0..4_u64 {
        p.task(SlowSquare::new(x));
    }
}

// WF-145: four blocking tasks run concurrently (they meet at a 4-party rendezvous); the
// results by task, in submission order, are [0, 1, 4, 9].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wf_145_blocking_tasks_run_concurrently() {
    let report = rt().await.run(Squares {}).await.unwrap();
    assert!(report.is_success(), "{}", report.summary());
    let results: Vec<u64> = report
        .tasks
        .iter()
        .map(|t| t.result_as::<u64>().unwrap())
        .collect();
    assert_eq!(results, vec![0, 1, 4, 9]);
    assert_eq!(
        report.ids(report.successes()),
        vec![
            "slow_square",
            "slow_square#1",
            "slow_square#2",
            "slow_square#3"
        ]
    );
}

// ------------------------------------------------------ concurrency limits

static LIMIT_RUNNING: AtomicUsize = AtomicUsize::new(0);
static LIMIT_MAX: AtomicUsize = AtomicUsize::new(0);

#[task]
async fn limited(i: u32) -> Result<u32, String> {
    let now = LIMIT_RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    LIMIT_MAX.fetch_max(now, Ordering::SeqCst);
    // The first tasks hold their slot until two ran at once; this proves the limit is
    // reached, and a limit that let more through would show in LIMIT_MAX.
    let reached = wait_until_async(|| LIMIT_MAX.load(Ordering::SeqCst) >= 2).await;
    tokio::task::yield_now().await;
    LIMIT_RUNNING.fetch_sub(1, Ordering::SeqCst);
    if reached {
        Ok(i)
    } else {
        Err("two tasks never ran at once".into())
    }
}

#[process(mode = "concurrent")]
fn many_limited(p: &mut Builder) {
    for i in 0..8 {
        p.task(Limited::new(i));
    }
}

// A run's concurrency limit (`Launch::max_concurrency`) holds: at most 2 tasks at once,
// and 2 are reached (the OPT-37 behaviour, at the level of one run).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn launch_max_concurrency_is_respected() {
    let report = rt()
        .await
        .run(Launch::new(ManyLimited {}).max_concurrency(2))
        .await
        .unwrap();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(LIMIT_MAX.load(Ordering::SeqCst), 2);
}

static GLOBAL_RUNNING: AtomicUsize = AtomicUsize::new(0);
static GLOBAL_MAX: AtomicUsize = AtomicUsize::new(0);

#[task]
async fn globally_limited(i: u32) -> Result<u32, String> {
    let now = GLOBAL_RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    GLOBAL_MAX.fetch_max(now, Ordering::SeqCst);
    let reached = wait_until_async(|| GLOBAL_MAX.load(Ordering::SeqCst) >= 3).await;
    tokio::task::yield_now().await;
    GLOBAL_RUNNING.fetch_sub(1, Ordering::SeqCst);
    if reached {
        Ok(i)
    } else {
        Err("three tasks never ran at once".into())
    }
}

#[process(mode = "concurrent")]
fn many_globally_limited(p: &mut Builder, base: u32) {
    for i in 0..5 {
        p.task(GloballyLimited::new(base + i));
    }
}

// The runtime-wide limit (`max_concurrency`) holds across runs: two runs of five tasks
// never have more than three tasks running in total, and three are reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runtime_max_concurrency_holds_across_runs() {
    let rt = Runtime::in_memory()
        .max_concurrency(3)
        .start()
        .await
        .unwrap();
    let a = rt.launch(ManyGloballyLimited { base: 0 }).await.unwrap();
    let b = rt.launch(ManyGloballyLimited { base: 10 }).await.unwrap();
    let (ra, rb) = (a.wait().await.unwrap(), b.wait().await.unwrap());
    assert!(ra.is_success(), "{}", ra.summary());
    assert!(rb.is_success(), "{}", rb.summary());
    assert_eq!(GLOBAL_MAX.load(Ordering::SeqCst), 3);
}

// A concurrency limit of zero is refused when the runtime starts.
#[tokio::test]
async fn zero_concurrency_is_refused() {
    let err = Runtime::in_memory()
        .max_concurrency(0)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, procession::Error::Config(_)), "{err}");
    let err = Runtime::in_memory()
        .process_concurrency(0)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, procession::Error::Config(_)), "{err}");
}

/// The message of an [`Error::Config`](procession::Error::Config), or a failure.
fn config_message(err: &procession::Error) -> String {
    match err {
        procession::Error::Config(msg) => msg.clone(),
        other => panic!("expected a config error, got {other:?}"),
    }
}

// `RuntimeBuilder::process_concurrency(0)` was refused with a message naming
// `max_concurrency`: each zero limit names the exact method that set it.
#[tokio::test]
async fn zero_builder_limits_name_their_method() {
    let err = Runtime::in_memory()
        .max_concurrency(0)
        .start()
        .await
        .unwrap_err();
    let msg = config_message(&err);
    assert!(msg.contains("RuntimeBuilder::max_concurrency"), "{msg}");
    let err = Runtime::in_memory()
        .process_concurrency(0)
        .start()
        .await
        .unwrap_err();
    let msg = config_message(&err);
    assert!(msg.contains("RuntimeBuilder::process_concurrency"), "{msg}");
    assert!(!msg.contains("max_concurrency"), "{msg}");
}

// `Launch::max_concurrency(0)` was silently run as 1 while the builder's zero was an
// error: the launch is refused with a config error naming the method, nothing written.
#[tokio::test]
async fn zero_launch_max_concurrency_is_a_config_error() {
    let rt = rt().await;
    let err = rt
        .launch(Launch::new(Quick {}).id("zero").max_concurrency(0))
        .await
        .unwrap_err();
    let msg = config_message(&err);
    assert!(msg.contains("Launch::max_concurrency"), "{msg}");
    assert!(rt.get("zero").await.unwrap().is_none());
    let report = rt
        .run(Launch::new(Quick {}).id("one").max_concurrency(1))
        .await
        .unwrap();
    assert!(report.is_success());
}

#[process]
fn one_quick(p: &mut Builder) {
    p.task(Producer::new());
}

/// Spawns a child in a group of zero concurrency; returns what `spawn` said.
#[task]
async fn zero_group(ctx: &Ctx) -> String {
    let mut group = ctx.parallel_group(procession::GroupOptions::new().max_concurrency(0));
    match group.spawn(procession::Child::new(OneQuick {})).await {
        Err(procession::ChildError::Launch {
            source: procession::Error::Config(msg),
            ..
        }) => msg,
        other => format!("unexpected: {other:?}"),
    }
}

#[process]
fn zero_group_job(p: &mut Builder) {
    p.task(ZeroGroup::new());
}

// `GroupOptions::max_concurrency(0)` was silently 1: spawning into such a group is a
// launch error carrying a config error that names the method.
#[tokio::test]
async fn zero_group_max_concurrency_is_a_config_error() {
    let rt = Runtime::in_memory()
        .register::<OneQuick>()
        .start()
        .await
        .unwrap();
    let report = rt.run(ZeroGroupJob {}).await.unwrap();
    let msg: String = report.result("zero_group").unwrap();
    assert!(msg.contains("GroupOptions::max_concurrency"), "{msg}");
}

// ----------------------------------------------------------- run handles

#[process]
fn quick(p: &mut Builder) {
    p.task(Producer::new());
}

// Runs launched on one runtime get distinct ids; a launch can name its run; the
// registered process types are listed.
#[tokio::test]
async fn launches_get_ids_and_handles_wait() {
    let rt = Runtime::in_memory()
        .register::<Quick>()
        .start()
        .await
        .unwrap();
    assert_eq!(rt.registered(), &["quick"]);
    let a = rt.launch(Quick {}).await.unwrap();
    let b = rt.launch(Quick {}).await.unwrap();
    assert_ne!(a.id(), b.id());
    assert!(a.id().starts_with("quick-"), "{}", a.id());
    let named = rt
        .launch(Launch::new(Quick {}).id("nightly-1"))
        .await
        .unwrap();
    assert_eq!(named.id(), "nightly-1");
    let (ra, rb, rn) = (
        a.wait().await.unwrap(),
        b.wait().await.unwrap(),
        named.wait().await.unwrap(),
    );
    assert_ne!(ra.run_id, rb.run_id);
    assert_eq!(rn.run_id, "nightly-1");
    assert_eq!(rn.process, "quick");
}

static PAIR_ARRIVED: AtomicUsize = AtomicUsize::new(0);

/// Waits until both `paired` tasks run at the same time.
#[task]
async fn paired(i: u32) -> Result<u32, String> {
    PAIR_ARRIVED.fetch_add(1, Ordering::SeqCst);
    if wait_until_async(|| PAIR_ARRIVED.load(Ordering::SeqCst) >= 2).await {
        Ok(i)
    } else {
        Err("the other task of the pair never ran".into())
    }
}

#[task]
fn quick_one(i: u32) -> u32 {
    i
}

#[process(mode = "concurrent")]
fn quick_then_pair(p: &mut Builder) {
    p.task(QuickOne::new(0));
    p.task(Paired::new(1));
    p.task(Paired::new(2));
}

// Under a run's limit, a slot freed by a finishing task is used at once: with a limit of
// 2, the quick task's slot goes to the second task of the pair, which the first one waits
// for (a freed slot left unused until some other task ends would leave the pair waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_freed_slot_is_used_at_once() {
    for _ in 0..20 {
        PAIR_ARRIVED.store(0, Ordering::SeqCst);
        let report = rt()
            .await
            .run(Launch::new(QuickThenPair {}).max_concurrency(2))
            .await
            .unwrap();
        assert!(report.is_success(), "{}", report.summary());
    }
}

// ------------------------------------- fan-in after a failure, ended by a worker

/// Set once the driver has seen `fan_fails` fail: `fan_waits` ends only after it.
static FAN_FAILED: Notify = Notify::const_new();

/// Tells `fan_waits` that the driver took `fan_fails`'s failure in (its `failed` hook runs
/// just before the driver counts the failure off its dependents).
struct FanFailSeen;

impl procession::Hooks for FanFailSeen {
    fn failed(
        &self,
        _run: &procession::RunInfo,
        _task: &str,
        _error: &(dyn std::error::Error + 'static),
    ) {
        FAN_FAILED.notify_one();
    }
}

#[task]
fn fan_fails() -> Result<u64, String> {
    Err("down".into())
}

#[task]
async fn fan_waits() -> u64 {
    // Ends after the driver took the failure in, so that this task's worker, not the
    // driver, ends `fan_sum`'s wait. Bounded: the outcome below holds in either order.
    let _ = tokio::time::timeout(common::PATIENCE, FAN_FAILED.notified()).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    7
}

#[task]
fn fan_sum(xs: Vec<u64>) -> u64 {
    xs.iter().sum()
}

#[task]
fn fan_scalar(x: u64) -> u64 {
    x + 1
}

#[process(mode = "concurrent")]
fn fan_after_failure(p: &mut Builder) {
    let bad = p.task(FanFails::new());
    let good = p.task(FanWaits::new());
    p.task(FanSum::new(vec![bad, good]));
    p.task(FanScalar::new(good));
}

// A dependent whose last dependency ends in a worker (which starts it there when every
// dependency succeeded) after another one failed is skipped, not started without its
// input; a scalar result still reaches the dependents of the task that succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_in_after_a_failure_is_skipped_when_a_worker_ends_its_wait() {
    let rt = Runtime::in_memory()
        .hooks(FanFailSeen)
        .start()
        .await
        .unwrap();
    let report = rt.run(FanAfterFailure {}).await.unwrap();
    assert_eq!(report.status, RunStatus::Failed, "{}", report.summary());
    assert_eq!(
        report.ids(report.skipped()),
        ["fan_sum"],
        "{}",
        report.summary()
    );
    let scalar = report
        .tasks
        .iter()
        .find(|t| t.id == "fan_scalar")
        .expect("fan_scalar is in the report");
    assert_eq!(scalar.status, TaskStatus::Success);
    assert_eq!(
        scalar.result.as_ref().map(ToString::to_string).as_deref(),
        Some("8")
    );
}
