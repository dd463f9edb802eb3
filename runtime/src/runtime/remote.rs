//! Remote control, as optio offers it and the admin API exposes it: launches described
//! as data (a process type's name and its parameters as JSON), blocking and unblocking
//! the launches of a record (kept in the store), a run's graph rebuilt from its record,
//! and cancels of every run a filter matches.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::graph::Graph;
use crate::record::{LaunchBlock, ProcessRecord, RecordKind, RunMeta};
use crate::store::{Query, Update};

use super::{check_id, Error, Result, RunHandle, Runtime};

/// A launch described as data: the registered process type's name, its parameters as
/// JSON and the launch's options. What the admin API's `POST /api/runs` takes.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// use procession::LaunchSpec;
/// #[task] fn greet(name: String) -> String { format!("hello {name}") }
/// #[process] fn hello(p: &mut Builder, name: String) { p.task(Greet::new(name)); }
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::in_memory().register::<Hello>().start().await?;
/// let spec = LaunchSpec::new("hello", serde_json::json!({ "name": "ada" })).id("hello-ada");
/// let report = rt.launch_spec(spec).await?.wait().await?;
/// assert_eq!(report.result::<String>("greet").unwrap(), "hello ada");
/// // Parameters that do not fit the process type are refused before anything is written.
/// let bad = LaunchSpec::new("hello", serde_json::json!({ "name": 7 }));
/// assert!(matches!(rt.launch_spec(bad).await, Err(procession::Error::InvalidParams { .. })));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LaunchSpec {
    /// The process type (its `#[process]` name), registered with
    /// [`RuntimeBuilder::register`](super::RuntimeBuilder::register).
    pub process: String,
    /// The process's parameters (its struct as JSON); `null` for a process without any.
    #[serde(default)]
    pub params: Value,
    /// The run's id (default: `<process name>-<n>`).
    #[serde(default)]
    pub id: Option<String>,
    /// Launch options, read by the builder with [`Builder::option`](crate::Builder::option).
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
    /// Metadata stored on the record.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    /// At most this many tasks of the run at once.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// A second launch with the same key returns the run of the first.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Delete the record as soon as the run ends.
    #[serde(default)]
    pub ephemeral: bool,
}

impl LaunchSpec {
    /// A launch of process type `process` with `params`.
    pub fn new(process: impl Into<String>, params: Value) -> LaunchSpec {
        LaunchSpec {
            process: process.into(),
            params,
            id: None,
            options: BTreeMap::new(),
            metadata: BTreeMap::new(),
            max_concurrency: None,
            idempotency_key: None,
            ephemeral: false,
        }
    }

    /// The run's id.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> LaunchSpec {
        self.id = Some(id.into());
        self
    }

    /// A metadata pair stored on the record.
    #[must_use]
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> LaunchSpec {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// What a cancel by filter did ([`Runtime::cancel_matching`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroupCancel {
    /// Runs asked to stop.
    pub cancelled: Vec<String>,
    /// Runs matched but not cancelled, with the reason (not cancellable, already ending).
    pub refused: Vec<(String, String)>,
    /// With a wait: runs still not ended when the wait's ceiling passed.
    pub unfinished: Vec<String>,
}

impl Runtime {
    /// Blocks launches of record `id` (a definition, an ad-hoc record or any process
    /// record): every later launch of it, by [`launch_id`](Runtime::launch_id), by
    /// [`launch`](Runtime::launch) with its id or by its schedule, is refused with
    /// [`Error::LaunchBlocked`] until [`unblock_launches`](Runtime::unblock_launches).
    /// The block is stored on the record, so it survives a restart. A run already under
    /// way is not touched. Blocking a blocked record replaces its reason.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::{Definition, Error};
    /// #[task] fn ping() {}
    /// #[process] fn health(p: &mut Builder) { p.task(Ping::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory()
    ///     .register::<Health>()
    ///     .define(Definition::new("health", Health {})?)
    ///     .start()
    ///     .await?;
    /// rt.block_launches("health", Some("maintenance".into())).await?;
    /// let refused = rt.launch_id("health").await.unwrap_err();
    /// assert!(matches!(refused, Error::LaunchBlocked { .. }));
    /// assert_eq!(refused.to_string(), "launches of process `health` are blocked: maintenance");
    /// rt.unblock_launches("health").await?;
    /// assert!(rt.launch_id("health").await?.wait().await?.is_success());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no process record has this id.
    pub async fn block_launches(&self, id: &str, reason: Option<String>) -> Result<ProcessRecord> {
        let since = crate::record::now_ms();
        self.set_block(id, Some(LaunchBlock { reason, since }))
            .await
    }

    /// Lifts the block set by [`block_launches`](Runtime::block_launches); a record that
    /// is not blocked is returned unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no process record has this id.
    pub async fn unblock_launches(&self, id: &str) -> Result<ProcessRecord> {
        self.set_block(id, None).await
    }

    async fn set_block(&self, id: &str, block: Option<LaunchBlock>) -> Result<ProcessRecord> {
        let id_owned = id.to_owned();
        self.inner
            .try_update(id, move |cur| match cur {
                Some(r) if r.kind == RecordKind::Process => {
                    if r.launch_block == block {
                        return (Update::Keep, None);
                    }
                    let mut r = r.clone();
                    r.launch_block.clone_from(&block);
                    (Update::Put(Box::new(r)), None)
                }
                _ => (
                    Update::Keep,
                    Some(Error::NotFound {
                        id: id_owned.clone(),
                    }),
                ),
            })
            .await
    }

    /// Launches a run described as data ([`LaunchSpec`]): the parameters are checked
    /// against the registered process type's before anything is written.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownProcessType`], [`Error::InvalidParams`], and those of
    /// [`launch`](Runtime::launch) ([`Error::LaunchBlocked`] when the id names a blocked
    /// record).
    pub async fn launch_spec(&self, spec: LaunchSpec) -> Result<RunHandle> {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(Error::ShuttingDown);
        }
        super::limits::at_least_one("LaunchSpec::max_concurrency", spec.max_concurrency)?;
        let reg = self.inner.registered(&spec.process)?.clone();
        let name = reg.meta.name;
        if let Some(key) = spec.idempotency_key.clone() {
            if let Some(owner) = self.inner.read(move |s| s.idempotent(&key)).await? {
                return self.attach(&owner).await;
            }
        }
        // A process without parameters is a unit struct or `{}`: accept both.
        let params = match spec.params {
            Value::Null => Value::Object(serde_json::Map::new()),
            p => p,
        };
        let graph = match (reg.build)(params.clone(), spec.options.clone()) {
            Ok(g) => g,
            Err(Error::Serialize { source, .. }) => {
                return Err(Error::InvalidParams {
                    process: name.to_owned(),
                    source,
                })
            }
            Err(e) => return Err(e),
        };
        let id = match spec.id {
            Some(id) => id,
            None => format!("{name}-{}", self.next_id().await?),
        };
        check_id(&id)?;
        let hooks = self.inner.run_hooks(reg.hooks.clone());
        let meta = RunMeta {
            token: 0,
            fingerprint: graph.fingerprint(),
            options: spec.options,
            tasks: graph.len() as u32,
            idempotency_key: spec.idempotency_key,
            max_concurrency: spec.max_concurrency,
            resumes: 0,
            seq: 0,
            overlap_of: None,
            fired_at: None,
            traceparent: super::drive::caller_trace(),
        };
        let fresh = ProcessRecord {
            adhoc: true,
            ephemeral: spec.ephemeral,
            metadata: spec.metadata,
            ..ProcessRecord::new_root(&id, name, name, reg.meta.description, params.clone())
        };
        self.enqueue(&id, name, Some(params), fresh, meta, graph, hooks)
            .await
    }

    /// The graph of record `id`'s current or last run, rebuilt from its stored
    /// parameters and launch options (its type must be registered here).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::UnknownProcessType`], [`Error::InvalidParams`] when
    /// the stored parameters no longer fit the type.
    pub async fn graph_of(&self, id: &str) -> Result<Graph> {
        let rec = self
            .inner
            .get(id)
            .await?
            .filter(|r| r.kind == RecordKind::Process)
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let reg = self.inner.registered(&rec.process_type)?;
        let options = rec.run.map(|m| m.options).unwrap_or_default();
        match (reg.build)(rec.params, options) {
            Err(Error::Serialize { source, .. }) => Err(Error::InvalidParams {
                process: rec.process_type,
                source,
            }),
            other => other,
        }
    }

    /// Cancels every scheduled or running process record `query` matches (a snapshot
    /// taken now; its page bounds are ignored), as optio's `group_cancel`: returns once
    /// each was asked to stop, not when they have ended.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyFilter`] for a query with no condition (it would cancel everything).
    pub async fn cancel_matching(&self, query: &Query) -> Result<GroupCancel> {
        let ids = self.matching_active(query).await?;
        let mut out = GroupCancel::default();
        for id in ids {
            match self.cancel(&id).await {
                Ok(_) => out.cancelled.push(id),
                Err(e) => out.refused.push((id, e.to_string())),
            }
        }
        Ok(out)
    }

    /// [`cancel_matching`](Runtime::cancel_matching), then waits until every cancelled
    /// run has ended or `ceiling` has passed (those still running are listed in
    /// [`GroupCancel::unfinished`]), as optio's `group_cancel_and_wait`.
    ///
    /// # Errors
    ///
    /// As [`cancel_matching`](Runtime::cancel_matching).
    pub async fn cancel_matching_and_wait(
        &self,
        query: &Query,
        ceiling: Duration,
    ) -> Result<GroupCancel> {
        let mut out = self.cancel_matching(query).await?;
        let deadline = tokio::time::Instant::now() + ceiling;
        for id in &out.cancelled {
            let ended = match self.live_handle(id) {
                Some(h) => tokio::time::timeout_at(deadline, h.wait()).await.is_ok(),
                None => true,
            };
            if !ended {
                out.unfinished.push(id.clone());
            }
        }
        Ok(out)
    }

    /// How many scheduled or running process records `query` matches (what
    /// [`cancel_matching`](Runtime::cancel_matching) would ask to stop now), and their
    /// ids.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyFilter`] for a query with no condition.
    pub async fn cancel_preview(&self, query: &Query) -> Result<Vec<String>> {
        self.matching_active(query).await
    }

    async fn matching_active(&self, query: &Query) -> Result<Vec<String>> {
        let mut q = query.clone();
        q.after = None;
        q.limit = None;
        if q == Query::new() {
            return Err(Error::EmptyFilter);
        }
        let recs = self.inner.read(move |s| s.list_all(&q)).await?;
        Ok(recs
            .into_iter()
            .filter(|r| r.kind == RecordKind::Process && r.state().is_cancellable())
            .map(|r| r.id)
            .collect())
    }
}
