//! Several workers on one shared store (PostgreSQL): the heartbeat that renews this
//! worker's leases (and stops the runs whose lease another worker took), the takeover of
//! runs whose lease expired, and the list of workers.
//!
//! Nothing here runs on a single-process store (sled, memory): nobody else can take a
//! run there, and every active run is resumed at start.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::store::{Lease, WorkerInfo};

use super::{Inner, Result, Runtime};

/// Runs taken over per statement (a worker with more to take polls again at once).
const TAKEOVER_BATCH: usize = 64;

/// A worker whose heartbeat has been silent for this many lease times is dead (killed
/// without a clean shutdown, or cut off for that long): the takeover poll of any other
/// worker removes its row from the workers table. Its runs were taken over long before
/// (a lease expires after one lease time).
pub(super) const DEAD_WORKER_LEASES: u64 = 10;

impl Runtime {
    /// The workers sharing this runtime's store, oldest first: id (unique per process
    /// start), host, pid, version, start and last heartbeat (on the database's clock).
    /// A single-process store (sled, memory) lists this runtime alone.
    ///
    /// A worker killed without a clean shutdown keeps its row (with its last heartbeat)
    /// until its heartbeat has been silent for ten lease times (see
    /// [`RuntimeBuilder::lease`](super::RuntimeBuilder::lease)): then the takeover poll
    /// of another worker removes it. A worker whose row was removed while it lived (it
    /// paused that long) registers again at its next heartbeat.
    ///
    /// # Errors
    ///
    /// [`Error::Store`](super::Error::Store) when the store cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().start().await?;
    /// let workers = rt.workers().await?;
    /// assert_eq!(workers.len(), 1);
    /// assert_eq!(workers[0].id, rt.worker_id());
    /// # Ok(()) }
    /// ```
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        if !self.inner.shared {
            let mut me = self.inner.me.clone();
            me.last_heartbeat = crate::util::unix_ms(std::time::SystemTime::now());
            return Ok(vec![me]);
        }
        self.inner.read(crate::store::Store::workers).await
    }

    /// What task spreading did on this worker ([`RuntimeBuilder::spread_tasks`](super::RuntimeBuilder::spread_tasks)):
    /// tasks claimed and finished here, task results fenced out (another worker had
    /// claimed the task since) and claims whose renewal was refused. All zero when
    /// spreading is off.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().start().await?;
    /// assert_eq!(rt.task_stats().claimed, 0);
    /// # Ok(()) }
    /// ```
    pub fn task_stats(&self) -> super::TaskStats {
        self.inner
            .spread
            .as_ref()
            .map(|s| s.stats())
            .unwrap_or_default()
    }

    /// This runtime's worker id: the owner of the runs it claims, unique per start.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let a = Runtime::in_memory().start().await?;
    /// let b = Runtime::in_memory().start().await?;
    /// assert_ne!(a.worker_id(), b.worker_id());
    /// # Ok(()) }
    /// ```
    pub fn worker_id(&self) -> &str {
        &self.inner.worker
    }

    /// Claims the active runs of the process types registered here that no live worker
    /// holds (lease expired, or none), and resumes them: finished tasks keep their
    /// results, the others run again. Returns how many were claimed.
    ///
    /// An expired lease of this worker is claimed too when its run is not live here:
    /// a claim whose answer was lost (the store ran it again and found the lease
    /// already this worker's), or a run stopped by [`self_fence`]. The runs live here
    /// (launched, reserved, or resumed) are never claimed again. Calls never overlap
    /// (the start's, then the poll's), and each resumes what it claimed before it
    /// returns, so a run it claims is live here before the next call lists them.
    pub(super) async fn take_over(&self) -> Result<usize> {
        let mut types: Vec<&'static str> = self.inner.registry.keys().copied().collect();
        types.sort_unstable();
        let mut total = 0;
        loop {
            let (worker, ttl, types2) = (
                self.inner.worker.clone(),
                self.inner.lease_ms,
                types.clone(),
            );
            // Listed before the claim: a run that starts here after it holds a fresh
            // lease, which the claim leaves alone.
            let live: Vec<String> = self.inner.active().keys().cloned().collect();
            let leases = self
                .inner
                .write(move |s| {
                    let live: Vec<&str> = live.iter().map(String::as_str).collect();
                    Ok((
                        s.claim_expired_except(&worker, &types2, ttl, TAKEOVER_BATCH, &live)?,
                        Vec::new(),
                    ))
                })
                .await?;
            let got = leases.len();
            total += got;
            let mut claimed = Vec::with_capacity(got);
            for lease in leases {
                match self.inner.get(&lease.run).await? {
                    Some(rec) if rec.state().is_active() => claimed.push((rec, lease)),
                    _ => self.release_run(lease).await,
                }
            }
            // Children first, so that a parent's task that runs again finds them live.
            claimed.sort_by(|(a, _), (b, _)| {
                b.depth.cmp(&a.depth).then(a.created_at.cmp(&b.created_at))
            });
            for (rec, lease) in claimed {
                tracing::info!(run = %rec.id, worker = %self.inner.worker, token = lease.token, "taking over a run whose lease expired");
                self.resume_one(rec, Some(lease)).await?;
            }
            if got < TAKEOVER_BATCH {
                return Ok(total);
            }
        }
    }
}

/// The leases of the runs live here (a run whose launch is still being written has
/// none yet).
fn held(inner: &Inner) -> Vec<Lease> {
    inner
        .active()
        .iter()
        .filter(|(_, a)| a.lease != 0)
        .map(|(id, a)| Lease {
            run: id.clone(),
            owner: inner.worker.clone(),
            token: a.lease,
            expires_at: 0,
        })
        .collect()
}

/// Every third of the lease time: renews every lease of this worker in one call; stops
/// at once the runs whose renewal was refused (another worker took them: whatever they
/// would write is fenced anyway) and cancels the runs another worker asked to cancel.
///
/// Self-fencing: when no renewal succeeded for [`fence_after`] the lease time since the
/// last one that did (the database is unreachable from here, or every call hangs), the
/// leases of this worker may have expired on the database and another worker may be
/// taking its runs over: every run live here is stopped at once, as a refused renewal
/// stops it (nothing is written). A run stopped so is resumed by whichever worker claims
/// its expired lease, this one included once the database answers again.
pub(super) async fn heartbeat(inner: Weak<Inner>, every: Duration) {
    // Leases are renewed for `lease_ms` from the moment a renewal reaches the database,
    // which is after it was sent: counting from the sending is on the safe side.
    let mut last_ok = tokio::time::Instant::now();
    let mut fenced = false;
    loop {
        let (stop, deadline) = match inner.upgrade() {
            Some(i) => (
                i.stop_loops.clone(),
                last_ok + fence_after(Duration::from_millis(i.lease_ms)),
            ),
            None => return,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
            () = tokio::time::sleep_until(deadline), if !fenced => {
                if let Some(i) = inner.upgrade() {
                    fenced = self_fence(&i, last_ok.elapsed());
                }
                continue;
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let leases = held(&inner);
        let (worker, ttl) = (inner.worker.clone(), inner.lease_ms);
        let sent: Vec<(String, u64)> = leases.iter().map(|l| (l.run.clone(), l.token)).collect();
        let sent_at = tokio::time::Instant::now();
        let claims = inner
            .spread
            .as_ref()
            .map(|sp| sp.held_claims())
            .unwrap_or_default();
        let beat = inner.read(move |s| match s.task_queue() {
            // The task claims of this worker are renewed in the same statement.
            Some(q) if !claims.is_empty() => q.heartbeat_tasks(&worker, &leases, &claims, ttl),
            _ => s
                .heartbeat(&worker, &leases, ttl)
                .map(|b| (b, crate::store::TaskBeat::default())),
        });
        tokio::pin!(beat);
        // A call may hang (a partition) or keep retrying for the store's retry window:
        // the runs are stopped when their leases may expire, whatever the call does.
        let beat = loop {
            tokio::select! {
                b = &mut beat => break b,
                () = tokio::time::sleep_until(deadline), if !fenced => {
                    fenced = self_fence(&inner, last_ok.elapsed());
                }
            }
        };
        let (beat, tasks) = match beat {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(worker = %inner.worker, error = %e, "heartbeat failed: leases not renewed");
                continue;
            }
        };
        last_ok = sent_at;
        fenced = false;
        if beat.forgotten {
            tracing::warn!(worker = %inner.worker, "this worker's row was removed from the workers table as dead (its heartbeat was silent for ten lease times of the worker that removed it): registering it again");
            let me = inner.me.clone();
            if let Err(e) = inner.read(move |s| s.register_worker(&me)).await {
                tracing::warn!(worker = %inner.worker, error = %e, "registering this worker again failed");
            }
        }
        stop_refused(&inner, &sent, &beat.refused);
        if let Some(sp) = &inner.spread {
            sp.refused(&inner.worker, &tasks.refused);
            sp.cancel(&inner.worker, &tasks.cancel);
        }
        for run in &beat.cancel_requested {
            if let Some(a) = inner.active().get(run) {
                if !a.cancel.is_cancelled() {
                    tracing::info!(run = %run, worker = %inner.worker, "cancel requested by another worker");
                    a.cancel.cancel();
                }
            }
        }
    }
}

/// How long after the last successful renewal this worker stops its runs: the lease
/// time less a margin that covers stopping the runs and the rates of two clocks (a
/// fifth of the lease, at least 100 ms, at most a third of the lease: the renewals come
/// every third, so a short lease is not given up after a single late one).
pub(super) fn fence_after(lease: Duration) -> Duration {
    let margin = (lease / 5).max(Duration::from_millis(100).min(lease / 3));
    lease.saturating_sub(margin)
}

/// Stops at once every run live here that holds a lease (their leases may have expired
/// by now: no renewal succeeded for `since`). Returns `true` (the worker is fenced
/// until a renewal succeeds again).
fn self_fence(inner: &Arc<Inner>, since: Duration) -> bool {
    let active = inner.active();
    for (run, a) in active.iter().filter(|(_, a)| a.lease != 0) {
        tracing::warn!(
            run = %run,
            worker = %inner.worker,
            lease = a.lease,
            since_last_renewal_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            lease_ms = inner.lease_ms,
            "no heartbeat reached the database for nearly the lease time: the run's lease may \
             have expired and another worker may take it over, so this worker stops it here \
             (nothing of it is written)"
        );
        a.halt.halt_now();
    }
    drop(active);
    if let Some(sp) = &inner.spread {
        sp.abort_all();
    }
    true
}

/// Stops the runs of `refused` still live here under the token that was sent.
fn stop_refused(inner: &Arc<Inner>, sent: &[(String, u64)], refused: &[String]) {
    let active = inner.active();
    for run in refused {
        let Some(token) = sent.iter().find(|(r, _)| r == run).map(|(_, t)| *t) else {
            continue;
        };
        if let Some(a) = active.get(run).filter(|a| a.lease == token) {
            tracing::warn!(
                run = %run,
                worker = %inner.worker,
                lease = token,
                "the run's lease was taken by another worker (this worker paused or lost the \
                 database past its lease): stopping it here, its writes are fenced"
            );
            a.halt.halt_now();
        }
    }
}

/// Every half lease time: takes over the runs whose lease expired.
pub(super) async fn takeover(inner: Weak<Inner>, every: Duration) {
    loop {
        let stop = match inner.upgrade() {
            Some(i) => i.stop_loops.clone(),
            None => return,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        let rt = Runtime { inner };
        if let Err(e) = rt.take_over().await {
            tracing::warn!(worker = %rt.inner.worker, error = %e, "takeover poll failed");
        }
        let silent = rt.inner.lease_ms.saturating_mul(DEAD_WORKER_LEASES);
        match rt
            .inner
            .write(move |s| Ok((s.forget_workers(silent)?, Vec::new())))
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(worker = %rt.inner.worker, forgotten = n, silent_ms = silent, "removed the rows of dead workers");
            }
            Err(e) => {
                tracing::warn!(worker = %rt.inner.worker, error = %e, "removing dead workers' rows failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fence_after;
    use std::time::Duration;

    #[test]
    fn runs_stop_before_their_lease_expires_and_after_two_renewals() {
        let ms = Duration::from_millis;
        assert_eq!(
            fence_after(Duration::from_secs(30)),
            Duration::from_secs(24)
        );
        assert_eq!(fence_after(ms(1000)), ms(800));
        assert_eq!(fence_after(ms(300)), ms(200));
        assert_eq!(fence_after(ms(30)), ms(20));
    }
}
