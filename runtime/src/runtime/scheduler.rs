//! Scheduled records: `schedule`/`unschedule` and the scheduler loop that launches them
//! when they fire, following each schedule's [`Overlap`] policy when the record's
//! previous run is still active: skipped, queued on the record (`queued_fire`, launched
//! by the pass that follows the run's end: the run's end wakes the scheduler), or run
//! beside it as a record of its own (`Runtime::launch_overlap`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::record::{ProcessRecord, RecordKind};
use crate::schedule::{plan, Overlap, Schedule};
use crate::store::{Query, Update};

use super::{Error, Inner, Result, Runtime};

impl Runtime {
    /// Launches record `id` on `schedule` from now on (replacing its schedule). The
    /// schedule is stored with the record, so it survives restarts. A fire that comes
    /// while the previous run is still active follows the schedule's
    /// [`Overlap`](crate::Overlap) policy (skipped by default).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::UnknownProcessType`] when its type is not registered
    /// (the scheduler could not launch it).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::{Definition, Schedule};
    /// use std::time::Duration;
    /// #[task] fn tick() {}
    /// #[process] fn ticker(p: &mut Builder) { p.task(Tick::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory()
    ///     .register::<Ticker>()
    ///     .define(Definition::new("ticker", Ticker {})?)
    ///     .start()
    ///     .await?;
    /// rt.schedule("ticker", Schedule::every(Duration::from_secs(3600))?).await?;
    /// assert!(rt.get("ticker").await?.unwrap().schedule.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn schedule(&self, id: &str, schedule: Schedule) -> Result<ProcessRecord> {
        self.set_schedule(id, Some(schedule)).await
    }

    /// Removes record `id`'s schedule.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`].
    pub async fn unschedule(&self, id: &str) -> Result<ProcessRecord> {
        self.set_schedule(id, None).await
    }

    pub(super) async fn set_schedule(
        &self,
        id: &str,
        schedule: Option<Schedule>,
    ) -> Result<ProcessRecord> {
        let rec = self
            .inner
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if schedule.is_some() && !self.inner.registry.contains_key(rec.process_type.as_str()) {
            return Err(Error::UnknownProcessType {
                name: rec.process_type,
            });
        }
        let now = crate::util::unix_ms(self.inner.clock.now());
        let id_owned = id.to_owned();
        let rec = self
            .inner
            .try_update(id, move |cur| match cur {
                Some(r) if r.kind == RecordKind::Process => {
                    let mut r = r.clone();
                    r.schedule.clone_from(&schedule);
                    r.last_fire = Some(now);
                    (Update::Put(Box::new(r)), None)
                }
                _ => (
                    Update::Keep,
                    Some(Error::NotFound {
                        id: id_owned.clone(),
                    }),
                ),
            })
            .await?;
        self.inner.scheduler_wake.notify_one();
        Ok(rec)
    }
}

/// Launches scheduled records when their schedule fires; see [`Schedule`].
pub(super) async fn scheduler(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let rt = Runtime { inner: strong };
        let next = match scheduler_pass(&rt).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "scheduler pass failed");
                Some(rt.inner.clock.now() + Duration::from_secs(1))
            }
        };
        let wake = rt.inner.scheduler_wake.clone();
        let deadline = next.map(|t| rt.inner.clock.instant_for(t));
        drop(rt);
        match deadline {
            Some(d) => {
                tokio::select! {
                    () = tokio::time::sleep_until(d) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// What a pass did with one scheduled record, written on it in one update.
#[derive(Default)]
struct Outcome {
    /// The fire to record as the last one.
    mark: Option<u64>,
    /// A failed launch, for the record's log.
    failure: Option<String>,
    /// Queue this fire (ms) for when the active run ends.
    queue: Option<u64>,
    /// Drop the queued fire (its launch failed: it is logged, not retried forever).
    unqueue: bool,
}

/// Fires what is due; returns when to look again.
pub(super) async fn scheduler_pass(rt: &Runtime) -> Result<Option<std::time::SystemTime>> {
    let mut query = Query::new();
    query.scheduled = true;
    let recs = rt.inner.read(move |s| s.list_all(&query)).await?;
    let now = rt.inner.clock.now();
    let now_ms = crate::util::unix_ms(now);
    let mut earliest: Option<std::time::SystemTime> = None;
    for r in recs {
        let Some(s) = r.schedule.clone() else {
            continue;
        };
        if r.kind != RecordKind::Process {
            continue;
        }
        if let Some(why) = s.unsupported() {
            tracing::warn!(id = %r.id, error = %why, "schedule cannot be evaluated by this build: it never fires");
            continue;
        }
        let mut out = Outcome::default();
        let mut active = r.state().is_active();
        let mut queued = r.queued_fire;
        // A fire queued while the last run was active: that run has ended.
        if let Some(q) = queued.filter(|_| !active) {
            queued = None;
            // Several workers share the store and each runs this pass: the queued fire
            // is taken by a compare-and-swap (still queued, the run still ended), so
            // that exactly one worker launches it.
            let taken = !rt.inner.shared || take_queued(rt, &r.id, q, true).await?;
            if taken {
                match fire(rt, &r.id, Some(q)).await {
                    Ok(()) => active = true,
                    // Kept for the next start (queued again where it was taken).
                    Err(Error::ShuttingDown) => {
                        if rt.inner.shared {
                            take_queued(rt, &r.id, q, false).await?;
                        }
                    }
                    Err(e) => {
                        out.failure = Some(format!("queued scheduled launch failed: {e}"));
                        out.unqueue = true;
                    }
                }
            } else {
                tracing::debug!(id = %r.id, "queued schedule fire taken by another worker");
                active = true;
            }
        }
        let last = r.last_fire.map_or_else(
            || std::time::UNIX_EPOCH + Duration::from_millis(r.created_at),
            |ms| std::time::UNIX_EPOCH + Duration::from_millis(ms),
        );
        let p = plan(&s, last, now, rt.inner.clock.wall0);
        out.mark = p.mark.map(crate::util::unix_ms);
        if let (Some(mark), true) = (out.mark, rt.inner.shared) {
            // Several workers share the store and each runs this pass: the fire is
            // taken by a compare-and-swap of the record's last fire, so that exactly one
            // worker launches it (the others find the mark moved and skip it).
            let expect = r.last_fire;
            let (_, won) = rt
                .inner
                .update(&r.id, move |cur| match cur {
                    Some(c) if c.last_fire == expect => {
                        let mut c = c.clone();
                        c.last_fire = Some(mark);
                        (Update::Put(Box::new(c)), true)
                    }
                    _ => (Update::Keep, false),
                })
                .await?;
            if !won {
                tracing::debug!(id = %r.id, "schedule fire taken by another worker");
                if let Some(n) = p.next {
                    earliest = Some(earliest.map_or(n, |e| e.min(n)));
                }
                continue;
            }
        }
        if p.fire {
            let fired = now_ms;
            let launched = if active {
                // The previous run is still active (or a queued fire has just started
                // one): the overlap policy decides.
                overlapping(rt, &r.id, s.overlap_policy(), queued, fired, &mut out).await
            } else {
                match fire(rt, &r.id, Some(fired)).await {
                    // Another worker sharing the store launched a run meanwhile (a
                    // queued fire): the overlap policy decides, as if it had been seen.
                    Err(Error::NotLaunchable { state, .. })
                        if rt.inner.shared && state.is_active() =>
                    {
                        overlapping(rt, &r.id, s.overlap_policy(), queued, fired, &mut out).await
                    }
                    other => Some(other.map(drop)),
                }
            };
            if let Some(Err(e)) = launched {
                tracing::warn!(id = %r.id, error = %e, "scheduled launch failed");
                if !matches!(e, Error::ShuttingDown) {
                    out.failure = Some(format!("scheduled launch failed: {e}"));
                }
            }
        }
        if out.mark.is_some() || out.failure.is_some() || out.queue.is_some() || out.unqueue {
            // The fire is marked, and a failed fire is written on the record's log: a
            // schedule never fails silently.
            let (_, ended) = rt
                .inner
                .update(&r.id, move |cur| match cur {
                    Some(c) => {
                        let mut c = c.clone();
                        if let Some(m) = out.mark {
                            c.last_fire = Some(m);
                        }
                        if let Some(msg) = &out.failure {
                            c.push_log(crate::record::Level::Error, msg.clone());
                        }
                        if out.unqueue {
                            c.queued_fire = None;
                        }
                        if out.queue.is_some() && c.queued_fire.is_none() {
                            c.queued_fire = out.queue;
                        }
                        // Queued on a run that ended meanwhile: look again at once.
                        let ended = out.queue.is_some() && !c.state().is_active();
                        (Update::Put(Box::new(c)), ended)
                    }
                    None => (Update::Keep, false),
                })
                .await?;
            if ended {
                earliest = Some(now);
            }
        }
        if let Some(n) = p.next {
            earliest = Some(earliest.map_or(n, |e| e.min(n)));
        }
    }
    Ok(earliest)
}

/// A fire at `fired` of record `id` while its previous run is active, by `policy`:
/// skipped, queued on `out` (unless a fire is already `queued`), or launched beside it.
/// Returns the launch's outcome when there was one.
async fn overlapping(
    rt: &Runtime,
    id: &str,
    policy: Overlap,
    queued: Option<u64>,
    fired: u64,
    out: &mut Outcome,
) -> Option<Result<()>> {
    match policy {
        Overlap::Skip => {
            tracing::info!(id = %id, "schedule fired while the process is still active: skipped (overlap = skip)");
            None
        }
        Overlap::QueueOne if queued.is_none() => {
            tracing::info!(id = %id, "schedule fired while the process is still active: queued (overlap = queue_one)");
            out.queue = Some(fired);
            None
        }
        Overlap::QueueOne => {
            tracing::info!(id = %id, "schedule fired while a fire is already queued: skipped (overlap = queue_one)");
            None
        }
        Overlap::Allow => Some(rt.launch_overlap(id, fired).await.map(
            |h| tracing::info!(id = %h.id(), "launched alongside the active run (overlap = allow)"),
        )),
    }
}

/// Takes queued fire `q` off record `id` (`take`) when it is still queued there and the
/// record's run has ended, or puts it back (`!take`) when none is queued; returns
/// whether the record changed.
async fn take_queued(rt: &Runtime, id: &str, q: u64, take: bool) -> Result<bool> {
    let (_, changed) = rt
        .inner
        .update(id, move |cur| match cur {
            Some(c) if take && c.queued_fire == Some(q) && !c.state().is_active() => {
                let mut c = c.clone();
                c.queued_fire = None;
                (Update::Put(Box::new(c)), true)
            }
            Some(c) if !take && c.queued_fire.is_none() => {
                let mut c = c.clone();
                c.queued_fire = Some(q);
                (Update::Put(Box::new(c)), true)
            }
            _ => (Update::Keep, false),
        })
        .await?;
    Ok(changed)
}

/// Launches scheduled record `id` for a fire due at `fired_at`.
async fn fire(rt: &Runtime, id: &str, fired_at: Option<u64>) -> Result<()> {
    let h = rt.launch_fired(id, fired_at).await?;
    tracing::info!(id = %h.id(), "launched by its schedule");
    Ok(())
}
