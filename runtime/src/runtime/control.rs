//! Cancelling and dismissing runs, and settling a run that cannot be resumed.

use crate::record::{ProcessRecord, RecordKind, State};
use crate::store::{Batch, Update};

use super::{Error, Result, Runtime};

impl Runtime {
    /// Cancels a scheduled or running process, and its child processes.
    ///
    /// A scheduled process ends `cancelled` at once. A running one moves to
    /// `cancel_requested` and its tasks are signalled; it ends `cancelled` once they
    /// return (or `failed` if one ignores the cancel past the grace period). A record that
    /// is active in the store with no run behind it in this runtime (its run was lost) is
    /// settled `cancelled` at once. Of several concurrent cancels exactly one succeeds;
    /// a cancel that races the run's end either wins (the run ends `cancelled`) or is
    /// refused because the run has ended. On a store shared by several workers, a run
    /// live on another worker is cancelled there: this call returns the record as
    /// `cancel_requested`, and that worker notices at its next heartbeat (within a third
    /// of the [lease](crate::RuntimeBuilder::lease) time) and cancels it as a local
    /// cancel would.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::NotCancellable`] (the record does not allow a
    /// cancel), [`Error::NotCancellableState`] (not scheduled or running: ended, or
    /// already being cancelled).
    pub async fn cancel(&self, id: &str) -> Result<ProcessRecord> {
        let id_owned = id.to_owned();
        let rec = self
            .inner
            .try_update(id, move |cur| {
                match cur.filter(|r| r.kind == RecordKind::Process) {
                    None => (
                        Update::Keep,
                        Some(Error::NotFound {
                            id: id_owned.clone(),
                        }),
                    ),
                    Some(r) if !r.cancellable => (
                        Update::Keep,
                        Some(Error::NotCancellable {
                            id: id_owned.clone(),
                            state: r.state(),
                        }),
                    ),
                    Some(r) if !r.state().is_cancellable() => (
                        Update::Keep,
                        Some(Error::NotCancellableState {
                            id: id_owned.clone(),
                            state: r.state(),
                        }),
                    ),
                    Some(r) => {
                        let mut r = r.clone();
                        if r.state() == State::Scheduled {
                            r.set_state(State::Cancelled);
                        } else {
                            r.set_state(State::CancelRequested);
                        }
                        (Update::Put(Box::new(r)), None)
                    }
                }
            })
            .await?;
        let live = self.inner.active().get(id).map(|a| a.cancel.clone());
        let mut rec = rec;
        match live {
            Some(token) => token.cancel(),
            None if rec.state() == State::CancelRequested && self.inner.shared => {
                // On a shared store the run may be live on another worker: the request
                // is in its record, and that worker's next heartbeat sees it (within a
                // third of the lease time) and cancels the run there. A run no live
                // worker holds is claimed here and settled at once.
                if let Some(lease) = self.claim_run(id).await? {
                    self.settle(id, None, State::Cancelled, None).await?;
                    self.release_run(lease).await;
                    rec = self.inner.get(id).await?.unwrap_or(rec);
                }
            }
            None if rec.state() == State::CancelRequested => {
                // No run behind the record here: nothing will acknowledge the cancel.
                self.settle(id, None, State::Cancelled, None).await?;
                rec = self.inner.get(id).await?.unwrap_or(rec);
            }
            None => {}
        }
        self.cancel_children(id).await;
        Ok(rec)
    }

    /// Cancels the active children of `id` (through the store's links, so children with no
    /// run in memory are reached too).
    pub(super) async fn cancel_children(&self, id: &str) {
        let parent = id.to_owned();
        let Ok(children) = self.inner.read(move |s| s.children(&parent)).await else {
            return;
        };
        for c in children {
            if c.state().is_active() && c.kind == RecordKind::Process {
                // Boxed: a tree of children is cancelled recursively.
                let _ = Box::pin(self.cancel(&c.id)).await;
            }
        }
    }

    /// Resets an ended process to idle: clears the last run's fields and deletes its task
    /// records and child processes. The ended run joins the record's history (see
    /// [`RuntimeBuilder::keep_runs`](crate::RuntimeBuilder::keep_runs)). One write: a crash
    /// leaves the record either dismissed or as it was.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::NotDismissable`] (not done, failed or cancelled).
    pub async fn dismiss(&self, id: &str) -> Result<ProcessRecord> {
        let id_owned = id.to_owned();
        let keep = self.inner.keep_runs;
        let decide = move |cur: Option<&ProcessRecord>| match cur {
            None => Err(Error::NotFound {
                id: id_owned.clone(),
            }),
            Some(r) if !r.state().is_dismissable() || r.kind != RecordKind::Process => {
                Err(Error::NotDismissable {
                    id: id_owned.clone(),
                    state: r.state(),
                })
            }
            Some(r) => {
                let mut idle = r.clone();
                idle.transition(State::Idle)?;
                idle.clear_run();
                idle.run = None;
                Ok(idle)
            }
        };
        let id = id.to_owned();
        self.inner
            .write(move |s| {
                let mut outcome = None;
                let mut prev = None;
                let rec = s.update(&id, &mut |cur| match decide(cur) {
                    Ok(idle) => {
                        prev = cur.cloned();
                        outcome = Some(Ok(()));
                        Update::Put(Box::new(idle))
                    }
                    Err(e) => {
                        outcome = Some(Err(e));
                        Update::Keep
                    }
                })?;
                match (outcome, rec) {
                    (Some(Ok(())), Some(rec)) => {
                        let mut batch = prev
                            .map_or_else(Batch::default, |p| super::archiving(keep, &id, &p, &id));
                        batch.extend(super::clearing(s, &id)?);
                        s.apply(batch)?;
                        let events = vec![super::state_event(&rec)];
                        Ok((Ok(rec), events))
                    }
                    (Some(Err(e)), _) => Ok((Err(e), Vec::new())),
                    _ => Ok((Err(Error::NotFound { id: id.clone() }), Vec::new())),
                }
            })
            .await?
    }

    pub(super) async fn settle(
        &self,
        id: &str,
        token: Option<u64>,
        to: State,
        error: Option<String>,
    ) -> Result<()> {
        let (rec, ()) = self
            .inner
            .update(id, move |cur| match cur {
                Some(r)
                    if r.state().is_active()
                        && (token.is_none() || r.run.as_ref().map(|m| m.token) == token) =>
                {
                    let mut r = r.clone();
                    r.status.error.clone_from(&error);
                    if to == State::Cancelled && r.state() == State::CancelRequested {
                        r.set_state(State::Cancelling);
                    }
                    r.set_state(to);
                    (Update::Put(Box::new(r)), ())
                }
                _ => (Update::Keep, ()),
            })
            .await?;
        drop(rec);
        Ok(())
    }
}
