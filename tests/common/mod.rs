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

/// Opens a `SledStore` on `dir` just after a raw `sled::Db` on it was dropped.
///
/// sled's flusher thread holds the file lock a moment after its `Db` is dropped (a
/// `SledStore` waits for it in its own drop; a raw `Db` does not), longer under load. Waits
/// up to [`PATIENCE`] for the lock; any other error fails the test.
pub(crate) fn open_sled_when_released(dir: &std::path::Path) -> procession::store::SledStore {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match procession::store::SledStore::open(dir) {
            Ok(store) => return store,
            Err(e) if sled_lock_held(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot open the store at {}: {e:?}", dir.display()),
        }
    }
}

/// Whether `e` says, in itself or one of its causes, that sled's file lock is held (the
/// store's own message names only the path).
pub(crate) fn sled_lock_held(e: &procession::store::StoreError) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains("could not acquire lock") {
            return true;
        }
        cause = c.source();
    }
    false
}
