//! Stopping the runtime: [`Shutdown`] modes and `shutdown`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Result, Runtime};

/// How [`Runtime::shutdown_with`] stops the runtime. In every case launches and the
/// scheduler stop first, and the store is flushed and closed last.
///
/// | | records a cancel | the next start |
/// |---|---|---|
/// | `Suspend` (default) | no | resumes every unfinished run |
/// | `Drain(d)` | no | resumes what did not end within `d` |
/// | `Cancel` | yes | finds the runs `cancelled` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Shutdown {
    /// Stop starting tasks, give running tasks the cancel grace period to end, record no
    /// cancel: what a clean stop must do, since it must never lose more than a crash.
    #[default]
    Suspend,
    /// Let runs go on (starting tasks) until they end or this much time passed, then
    /// suspend what is left.
    Drain(Duration),
    /// Cancel every active run here and wait the cancel grace period for them to end.
    Cancel,
}

impl Runtime {
    /// Stops the runtime without losing work: [`Shutdown::Suspend`], what a SIGTERM
    /// handler should call on a deploy.
    ///
    /// The scheduler and launches stop, no task starts any more, running tasks have the
    /// cancel grace period to end (their ends are recorded), and no cancel is recorded:
    /// the next start on the same store resumes the runs as after a crash. Every pending
    /// write is then flushed and the store is closed, so the same directory can be opened
    /// again at once.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](super::Error::Store) when the final flush fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// #[task] fn a() {}
    /// #[process] fn p(b: &mut Builder) { b.task(A::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let dir = std::env::temp_dir().join(format!("procession-doc-sd-{}", std::process::id()));
    /// let rt = Runtime::open(&dir).register::<P>().start().await?;
    /// rt.run(P {}).await?;
    /// rt.shutdown().await?;
    /// // Closed: the directory opens again at once.
    /// let rt = Runtime::open(&dir).register::<P>().start().await?;
    /// # rt.shutdown().await?; let _ = std::fs::remove_dir_all(&dir);
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_with(Shutdown::Suspend).await
    }

    /// Stops the runtime the way `how` says; see [`Shutdown`].
    ///
    /// # Errors
    ///
    /// [`Error::Store`](super::Error::Store) when the final flush fails.
    pub async fn shutdown_with(&self, how: Shutdown) -> Result<()> {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.inner.scheduler_wake.notify_one();
        let grace = self.inner.grace;
        match how {
            Shutdown::Suspend => {}
            Shutdown::Drain(within) => {
                self.until_idle(tokio::time::Instant::now() + within).await;
            }
            Shutdown::Cancel => {
                let runs: Vec<String> = self.inner.active().keys().cloned().collect();
                for id in &runs {
                    let _ = self.cancel(id).await;
                }
                self.until_idle(tokio::time::Instant::now() + grace + Duration::from_secs(1))
                    .await;
            }
        }
        // What is left is suspended: it resumes at the next start.
        self.inner.halt.halt();
        self.until_idle(tokio::time::Instant::now() + grace + Duration::from_secs(1))
            .await;
        // Spread tasks running here for other coordinators (no new one is claimed once
        // shutting down) get the grace period to finish and store their ends; those
        // still running then are stopped, and their claims given up in one statement:
        // another worker claims them at once, not after their lease.
        if let Some(sp) = &self.inner.spread {
            let stopped = sp.drain(tokio::time::Instant::now() + grace).await;
            super::spread::release(&self.inner, stopped).await;
        }
        // The runs' ends (and their deliveries) are written: the delivery worker stops
        // last, its attempts under way given the grace period.
        if let Some(d) = &self.inner.deliverer {
            d.stop().await;
        }
        // The heartbeat and takeover loops stop; this worker leaves the workers table.
        // Runs suspended above keep their leases until they expire: then another worker
        // (or the next start) takes them over.
        self.inner.stop_loops.cancel();
        if self.inner.shared {
            let id = self.inner.worker.clone();
            if let Err(e) = self.inner.read(move |s| s.unregister_worker(&id)).await {
                tracing::warn!(error = %e, "cannot remove this worker from the workers table");
            }
        }
        let store = self
            .inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let closed = self.inner.writer.close().await;
        if let Some(store) = store {
            // Reads still under way hold the store a moment; then it is closed here, so
            // that the return of this call means the files are released.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        }
        Ok(closed?)
    }

    /// Waits until no run is active here, or `deadline`.
    pub(super) async fn until_idle(&self, deadline: tokio::time::Instant) {
        while !self.inner.active().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
