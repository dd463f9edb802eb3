//! Helpers shared by the integration tests.
//!
//! Concurrency is proven with rendezvous points that time out (so a wrong executor makes
//! a test fail, never hang), not with wall-clock measurements.

#![allow(dead_code)] // each test file uses a different subset

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use procession::Runtime;

/// How long a rendezvous waits before it gives up and the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A runtime with default settings.
pub(crate) async fn rt() -> Runtime {
    Runtime::in_memory()
        .start()
        .await
        .expect("the in-memory runtime starts")
}

/// Async rendezvous: true when all parties of `barrier` arrived within [`PATIENCE`].
pub(crate) async fn rendezvous(barrier: &tokio::sync::Barrier) -> bool {
    tokio::time::timeout(PATIENCE, barrier.wait()).await.is_ok()
}

/// Blocking rendezvous for sync tasks (they run on tokio's blocking pool): counts this
/// caller in and waits until `parties` callers arrived. False after [`PATIENCE`].
pub(crate) fn sync_rendezvous(arrived: &AtomicUsize, parties: usize) -> bool {
    arrived.fetch_add(1, Ordering::SeqCst);
    wait_until(|| arrived.load(Ordering::SeqCst) >= parties)
}

/// Blocks until `cond` holds; false after [`PATIENCE`].
pub(crate) fn wait_until(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Awaits until `cond` holds; false after [`PATIENCE`].
pub(crate) async fn wait_until_async(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// Sorted copy of a list of ids, for set-like comparisons.
pub(crate) fn sorted<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut v: Vec<String> = ids.into_iter().map(|s| s.as_ref().to_owned()).collect();
    v.sort();
    v
}

/// Awaits until the async condition `cond` holds; false after [`PATIENCE`].
pub(crate) async fn wait_until_async_fut<F, Fut>(cond: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !cond().await {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}
