//! Scheduled records: `schedule`/`unschedule` and the scheduler loop that launches them
//! when they fire.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::record::{ProcessRecord, RecordKind};
use crate::schedule::{plan, Schedule};
use crate::store::{Query, Update};

use super::{Error, Inner, Result, Runtime};

impl Runtime {
    /// Launches record `id` on `schedule` from now on (replacing its schedule). The
    /// schedule is stored with the record, so it survives restarts.
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

/// Fires what is due; returns when to look again.
pub(super) async fn scheduler_pass(rt: &Runtime) -> Result<Option<std::time::SystemTime>> {
    let mut query = Query::new();
    query.scheduled = true;
    let recs = rt.inner.read(move |s| s.list_all(&query)).await?;
    let now = rt.inner.clock.now();
    let mut earliest: Option<std::time::SystemTime> = None;
    for r in recs {
        let Some(s) = r.schedule.clone() else {
            continue;
        };
        if r.kind != RecordKind::Process {
            continue;
        }
        let last = r.last_fire.map_or_else(
            || std::time::UNIX_EPOCH + Duration::from_millis(r.created_at),
            |ms| std::time::UNIX_EPOCH + Duration::from_millis(ms),
        );
        let p = plan(&s, last, now, rt.inner.clock.wall0);
        if p.fire && r.state().is_active() {
            tracing::info!(id = %r.id, "schedule fired while the process is still active: not launched again");
        }
        let mut failure = None;
        if p.fire && !r.state().is_active() {
            let launched = rt.launch_id(&r.id).await;
            match &launched {
                Ok(h) => tracing::info!(id = %h.id(), "launched by its schedule"),
                Err(e) => tracing::warn!(id = %r.id, error = %e, "scheduled launch failed"),
            }
            if let Err(e) = launched {
                if !matches!(e, Error::ShuttingDown) {
                    failure = Some(format!("scheduled launch failed: {e}"));
                }
            }
        }
        if p.mark.is_some() || failure.is_some() {
            // The fire is marked, and a failed fire is written on the record's log: a
            // schedule never fails silently.
            let mark = p.mark.map(crate::util::unix_ms);
            rt.inner
                .update(&r.id, move |cur| match cur {
                    Some(c) => {
                        let mut c = c.clone();
                        if let Some(m) = mark {
                            c.last_fire = Some(m);
                        }
                        if let Some(msg) = &failure {
                            c.push_log(crate::record::Level::Error, msg.clone());
                        }
                        (Update::Put(Box::new(c)), ())
                    }
                    None => (Update::Keep, ()),
                })
                .await?;
        }
        if let Some(n) = p.next {
            earliest = Some(earliest.map_or(n, |e| e.min(n)));
        }
    }
    Ok(earliest)
}
