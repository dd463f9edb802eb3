//! The runtime side of child processes: the [`ChildSpawner`] a run's tasks reach through
//! their context, and the launch, numbering and deletion of children.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast;

use crate::events::Event;
use crate::record::{ProcessRecord, RunMeta, State};
use crate::runtime::{check_id, Error, Inner, Result, Runtime};
use crate::store::Query;

/// Starts the children of one run's tasks.
pub(crate) struct ChildSpawner {
    pub(in crate::runtime) inner: std::sync::Weak<Inner>,
    pub(in crate::runtime) parent: String,
}

impl ChildSpawner {
    pub(crate) fn launch_child(
        &self,
        req: crate::runtime::children::ChildRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<crate::runtime::children::ChildRun>> + Send>,
    > {
        let inner = self.inner.upgrade();
        let parent = self.parent.clone();
        Box::pin(async move {
            let inner = inner.ok_or(Error::ShuttingDown)?;
            Runtime { inner }.launch_child(&parent, req).await
        })
    }

    pub(crate) fn events(&self) -> Option<broadcast::Receiver<Event>> {
        self.inner.upgrade().map(|i| i.events.subscribe())
    }
}

impl Runtime {
    /// Starts (or finds) the child `req.id` of run `parent`.
    pub(in crate::runtime) async fn launch_child(
        &self,
        parent: &str,
        req: crate::runtime::children::ChildRequest,
    ) -> Result<crate::runtime::children::ChildRun> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        check_id(&req.id)?;
        let parent_rec = self
            .inner
            .get(parent)
            .await?
            .ok_or_else(|| Error::NotFound {
                id: parent.to_owned(),
            })?;
        if let Some(existing) = self.inner.get(&req.id).await? {
            // The task runs again (retry or restart): reuse what its children did. An
            // active child is re-attached whether or not its run was resumed yet; a
            // finished one gives its report.
            if existing.state().is_active() || existing.state() == State::Done {
                let handle = self.attach(&req.id).await?;
                return Ok(crate::runtime::children::ChildRun {
                    id: handle.id,
                    cancel: handle.cancel,
                    done: handle.done,
                });
            }
        }
        let siblings = self.next_sibling(parent).await?;
        let mut fresh = ProcessRecord::new_root(
            &req.id,
            req.process_type,
            &req.name,
            &req.description,
            req.params.clone(),
        );
        fresh.parent = Some(parent.to_owned());
        fresh.root.clone_from(&parent_rec.root);
        fresh.depth = parent_rec.depth.saturating_add(1);
        fresh.order = siblings;
        fresh.metadata.clone_from(&parent_rec.metadata);
        fresh.adhoc = true;
        let meta = RunMeta {
            token: 0,
            fingerprint: req.graph.fingerprint(),
            options: BTreeMap::new(),
            tasks: req.graph.len() as u32,
            idempotency_key: None,
            max_concurrency: None,
            resumes: 0,
            seq: 0,
            overlap_of: None,
            fired_at: None,
            traceparent: crate::runtime::drive::caller_trace(),
        };
        let mut hooks = req.hooks;
        hooks.extend(self.inner.hooks.iter().cloned());
        let child = req.id.clone();
        let handle = match self
            .enqueue(
                &req.id,
                req.process_type,
                Some(req.params),
                fresh,
                meta,
                req.graph,
                hooks,
            )
            .await
        {
            // Launched meanwhile by another worker sharing the store (a task claimed
            // again while its first worker still ran it): that run is the child.
            Err(Error::NotLaunchable { state, .. }) if state.is_active() => {
                self.attach(&child).await?
            }
            other => other?,
        };
        Ok(crate::runtime::children::ChildRun {
            id: handle.id,
            cancel: handle.cancel,
            done: handle.done,
        })
    }

    /// The order of the next child of `parent`: counted in memory, from the store's
    /// count of its children the first time (one query per parent, not per child).
    pub(in crate::runtime) async fn next_sibling(&self, parent: &str) -> Result<u32> {
        let known = self
            .inner
            .siblings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(parent)
            .copied();
        let n = match known {
            Some(n) => n,
            None => {
                let p = parent.to_owned();
                let n = self
                    .inner
                    .read(move |s| s.count(&Query::new().parent(p)))
                    .await?;
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        };
        let mut g = self
            .inner
            .siblings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = g.entry(parent.to_owned()).or_insert(n);
        let order = *slot;
        *slot = slot.saturating_add(1);
        Ok(order)
    }
}
