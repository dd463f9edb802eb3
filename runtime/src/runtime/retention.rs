//! Retention of finished runs (see [`RuntimeBuilder::retention`]): a background sweep
//! that deletes, in small batches, the finished run trees older than the retention.
//!
//! [`RuntimeBuilder::retention`]: super::RuntimeBuilder::retention

use std::sync::Weak;
use std::time::Duration;

use super::Inner;

/// Run trees (and ended deliveries) deleted per store write: small, so that the sweep
/// never holds the writer (or, on PostgreSQL, the rows it locks) for long.
pub(super) const SWEEP_BATCH: usize = 100;

/// How often the sweep runs for `retention`: a quarter of it, between 100 ms and 1 min.
pub(super) fn sweep_every(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_millis(100), Duration::from_mins(1))
}

/// Every [`sweep_every`]: deletes the run trees that ended more than `retention` ago,
/// [`SWEEP_BATCH`] per write, until none is left; stops at shutdown. On a shared store
/// every worker sweeps; their sweeps skip each other's rows (see
/// [`Store::sweep_finished`](crate::store::Store::sweep_finished)).
pub(super) async fn sweep(inner: Weak<Inner>, retention: Duration) {
    let every = sweep_every(retention);
    let keep_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    loop {
        let stop = match inner.upgrade() {
            Some(i) => i.stop_loops.clone(),
            None => return,
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        loop {
            let Some(i) = inner.upgrade() else { return };
            if i.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            let before = i.clock.now_ms().saturating_sub(keep_ms);
            let out = i
                .write(move |s| Ok((s.sweep_finished(before, SWEEP_BATCH)?, Vec::new())))
                .await;
            match out {
                Ok(swept) => {
                    if swept.runs > 0 || swept.deliveries > 0 {
                        tracing::info!(
                            worker = %i.worker,
                            runs = swept.runs,
                            records = swept.records,
                            deliveries = swept.deliveries,
                            "retention: deleted finished runs"
                        );
                    }
                    let full =
                        swept.runs >= SWEEP_BATCH as u64 || swept.deliveries >= SWEEP_BATCH as u64;
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %i.worker, error = %e, "retention sweep failed");
                    break;
                }
            }
            drop(i);
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sweep_every;
    use std::time::Duration;

    #[test]
    fn sweeps_come_every_quarter_retention_within_bounds() {
        assert_eq!(sweep_every(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(
            sweep_every(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
        assert_eq!(
            sweep_every(Duration::from_hours(7 * 24)),
            Duration::from_mins(1)
        );
    }
}
