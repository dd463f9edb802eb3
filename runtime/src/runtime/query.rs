//! Reading runs: get, list, count, reports (also rebuilt from stored task rows), wait and
//! subscribe.

use std::borrow::Cow;
use std::time::Duration;

use crate::events::{self, EventStream};
use crate::record::{ListFilter, ProcessRecord, State};
use crate::report::{
    ErrorReport, Json, Names, OwnedNames, RunReport, RunStatus, TaskReport, TaskStatus,
};
use crate::store::{Page, Query, StoreError, TaskRow};

use super::{Error, Result, Runtime};

impl Runtime {
    /// The report of run `id` rebuilt from the store (the last run of that record).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such process record exists.
    pub async fn report(&self, id: &str) -> Result<RunReport> {
        let rec = self
            .inner
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let rows = self.inner.rows(id).await?;
        Ok(RunReport::from_rows(&rec, &rows))
    }

    /// The record `id`: a process, or a task of a run (`<run id>/<node id>`).
    pub async fn get(&self, id: &str) -> Result<Option<ProcessRecord>> {
        if let Some(r) = self.inner.get(id).await? {
            return Ok(Some(r));
        }
        // A task record: the longest prefix that is a run.
        for (pos, _) in id.match_indices('/').collect::<Vec<_>>().into_iter().rev() {
            let (run, node) = (&id[..pos], &id[pos + 1..]);
            if let Some(root) = self.inner.get(run).await? {
                let rows = self.rows(run).await?;
                return Ok(rows
                    .iter()
                    .find(|(_, r)| &*r.node == node)
                    .map(|(i, r)| r.to_record(&root, *i)));
            }
        }
        Ok(None)
    }

    pub(super) async fn rows(&self, id: &str) -> Result<Vec<(u32, TaskRow)>> {
        self.inner.rows(id).await
    }

    /// The stored task rows of run `id`'s current or last run, by node index (empty for
    /// an unknown id or a run without task records): state, attempts, timing, progress,
    /// log, and the result or error of each task.
    pub async fn task_rows(&self, id: &str) -> Result<Vec<(u32, TaskRow)>> {
        self.inner.rows(id).await
    }

    /// Records matching `filter`, ordered by depth, then order among siblings, then
    /// creation time.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::{ListFilter, State};
    /// #[task] fn a() {}
    /// #[process] fn p(b: &mut Builder) { b.task(A::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().start().await?;
    /// rt.run(Launch::new(P {}).id("p-1").metadata("team", "alpha")).await?;
    /// let done = rt.list(ListFilter::new().state(State::Done).metadata("team", "alpha")).await?;
    /// assert_eq!(done.len(), 1);
    /// let tree = rt.list(ListFilter::new().root("p-1").with_tasks()).await?;
    /// assert_eq!(tree.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["p-1", "p-1/a"]);
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<ProcessRecord>> {
        let mut out = self
            .inner
            .read(move |store| {
                let mut query = Query::new();
                query.root.clone_from(&filter.root);
                if !filter.include_tasks {
                    // Task records are not in the store's index: only process records can be
                    // narrowed by state and metadata there.
                    query.states.clone_from(&filter.states);
                    query.metadata.clone_from(&filter.metadata);
                }
                let mut out = Vec::new();
                for r in store.list_all(&query)? {
                    if filter.include_tasks
                        && filter.root.as_ref().is_none_or(|root| &r.root == root)
                    {
                        for (i, row) in store.tasks(&r.id)? {
                            let t = row.to_record(&r, i);
                            if filter.matches(&t) {
                                out.push(t);
                            }
                        }
                    }
                    if filter.matches(&r) {
                        out.push(r);
                    }
                }
                Ok::<_, StoreError>(out)
            })
            .await?;
        out.sort_by(|a, b| {
            (a.depth, a.order, a.created_at, &a.id).cmp(&(b.depth, b.order, b.created_at, &b.id))
        });
        Ok(out)
    }

    /// One page of the process records matching `query`, ordered by creation time, then
    /// id; pass the page's `next` to [`Query::after`] for the next one.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::store::Query;
    /// #[task] fn a() {}
    /// #[process] fn p(b: &mut Builder) { b.task(A::new()); }
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().start().await?;
    /// for i in 0..5 {
    ///     rt.run(Launch::new(P {}).id(format!("p-{i}"))).await?;
    /// }
    /// let first = rt.list_page(Query::new().process_type("p").limit(2)).await?;
    /// assert_eq!(first.records.len(), 2);
    /// let second = rt.list_page(Query::new().process_type("p").limit(2).after(first.next)).await?;
    /// assert_eq!(second.records.len(), 2);
    /// assert_ne!(first.records[0].id, second.records[0].id);
    /// # Ok(()) }
    /// ```
    pub async fn list_page(&self, query: Query) -> Result<Page> {
        self.inner.read(move |s| s.list(&query)).await
    }

    /// How many process records match `query`.
    pub async fn count(&self, query: Query) -> Result<u64> {
        self.inner.read(move |s| s.count(&query)).await
    }

    /// Events of every record: state changes (once durable), progress, log entries.
    /// A subscriber that falls behind receives [`EventKind::Lagged`](crate::EventKind::Lagged) with the number of
    /// events it missed; the runtime never waits for it.
    pub fn subscribe(&self) -> EventStream {
        events::stream(self.inner.events.subscribe())
    }

    /// Waits for run `id` to end (if it is active here, or, on a store shared by
    /// several workers, on another worker) and returns its report.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such record exists.
    pub async fn wait(&self, id: &str) -> Result<RunReport> {
        self.attach(id).await?.wait().await
    }
}

/// One run of a record, as listed by [`Runtime::history`].
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// use procession::State;
/// #[task] fn work() {}
/// #[process] fn job(p: &mut Builder) { p.task(Work::new()); }
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let rt = Runtime::in_memory().start().await?;
/// rt.run(Launch::new(Job {}).id("job")).await?;
/// rt.run(Launch::new(Job {}).id("job")).await?;
/// let runs = rt.history("job").await?;
/// assert_eq!((runs[0].seq, runs[0].current), (2, true));
/// assert_eq!((runs[1].seq, runs[1].current, runs[1].state), (1, false, State::Done));
/// assert_eq!(runs[1].tasks, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RunSummary {
    /// The run's number among the runs of its record (1 for the first).
    pub seq: u64,
    /// The record the run ran as: the record itself, or `<id>@<seq>` for a run a schedule
    /// started alongside a running one ([`Overlap::Allow`](crate::Overlap::Allow)).
    pub run_id: String,
    /// How it ended (or where it is, for the current run).
    pub state: State,
    /// The error of a failed run.
    pub error: Option<String>,
    /// When it started running (ms since the Unix epoch).
    pub started_at: Option<u64>,
    /// When it ended (ms since the Unix epoch).
    pub ended_at: Option<u64>,
    /// How long it ran.
    pub duration: Option<Duration>,
    /// When the schedule fire that started it was due (ms since the Unix epoch); `None`
    /// for a run launched by a call.
    pub fired_at: Option<u64>,
    /// Tasks in its graph.
    pub tasks: u32,
    /// The record's current (or last) run, whose task records are the record's own;
    /// `false` for a run kept in the history.
    pub current: bool,
}

impl RunSummary {
    fn of(rec: &ProcessRecord, current: bool) -> RunSummary {
        let run = rec.run.as_ref();
        let st = &rec.status;
        RunSummary {
            seq: run.map_or(0, |m| m.seq),
            run_id: rec.id.clone(),
            state: rec.state(),
            error: st.error.clone(),
            started_at: st.running_since,
            ended_at: match rec.state() {
                State::Done => st.done_at,
                State::Failed => st.failed_at,
                State::Cancelled => st.stopped_at,
                _ => None,
            },
            duration: st.duration.map(|d| stored_seconds(Some(d))),
            fired_at: run.and_then(|m| m.fired_at),
            tasks: run.map_or(0, |m| m.tasks),
            current,
        }
    }
}

impl Runtime {
    /// The runs of record `id`, newest first: its current (or last) run, then the ended
    /// runs it keeps (see [`RuntimeBuilder::keep_runs`](crate::RuntimeBuilder::keep_runs)).
    /// A run a schedule started alongside a running one
    /// ([`Overlap::Allow`](crate::Overlap::Allow)) is listed once it has ended; while it
    /// runs it is a record of its own, `<id>@<seq>`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such process record exists.
    pub async fn history(&self, id: &str) -> Result<Vec<RunSummary>> {
        let rec = self
            .inner
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let owned = id.to_owned();
        let past = self.inner.read(move |s| s.history(&owned)).await?;
        let mut out: Vec<RunSummary> = rec
            .run
            .is_some()
            .then(|| RunSummary::of(&rec, true))
            .into_iter()
            .chain(past.iter().map(|p| RunSummary {
                seq: p.seq,
                ..RunSummary::of(&p.record, false)
            }))
            .collect();
        out.sort_by(|a, b| b.seq.cmp(&a.seq).then(b.current.cmp(&a.current)));
        Ok(out)
    }

    /// The report of run `seq` of record `id`: its current run, or one it keeps in its
    /// history (see [`history`](Runtime::history)).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no such process record exists, [`Error::RunNotKept`] when
    /// the run is not kept.
    pub async fn past_report(&self, id: &str, seq: u64) -> Result<RunReport> {
        let rec = self
            .inner
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        if rec.run.as_ref().is_some_and(|m| m.seq == seq) {
            let rows = self.inner.rows(id).await?;
            return Ok(RunReport::from_rows(&rec, &rows));
        }
        let owned = id.to_owned();
        let found = self
            .inner
            .read(move |s| {
                let Some(past) = s.history(&owned)?.into_iter().find(|p| p.seq == seq) else {
                    return Ok(None);
                };
                let rows = s.past_tasks(&owned, seq)?;
                Ok(Some((past, rows)))
            })
            .await?;
        match found {
            Some((past, rows)) => Ok(RunReport::from_rows(&past.record, &rows)),
            None => Err(Error::RunNotKept {
                id: id.to_owned(),
                seq,
            }),
        }
    }
}

impl RunReport {
    /// The report of record `rec`'s last run, rebuilt from its stored task rows.
    ///
    /// Everything read from a store is untrusted: a stored duration that is no
    /// [`Duration`] (NaN, negative, infinite, too large) is clamped, never a panic; a
    /// stored result that is not JSON is not passed on as one (the task is reported
    /// errored, saying its stored result is damaged).
    pub(crate) fn from_rows(rec: &ProcessRecord, rows: &[(u32, TaskRow)]) -> RunReport {
        let tasks = rows.iter().map(|(_, r)| task_from_row(r)).collect();
        RunReport {
            process: rec.process_type.clone(),
            run_id: rec.id.clone(),
            status: RunStatus::of_end(rec.state()),
            elapsed: stored_seconds(rec.status.duration),
            tasks,
            handles: None,
        }
    }
}

/// A stored duration in seconds as a [`Duration`]: missing, NaN or negative is zero,
/// infinite or beyond [`Duration::MAX`] is [`Duration::MAX`].
pub(crate) fn stored_seconds(secs: Option<f64>) -> Duration {
    match secs {
        Some(s) if s > 0.0 => Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX),
        _ => Duration::ZERO,
    }
}

/// One task's entry rebuilt from its stored row.
pub(super) fn task_from_row(r: &TaskRow) -> TaskReport {
    let mut status = match (r.state, r.skipped) {
        (State::Done, _) => TaskStatus::Success,
        (State::Failed, _) => TaskStatus::Errored,
        (_, true) => TaskStatus::Skipped,
        _ => TaskStatus::Cancelled,
    };
    let mut error = r.error.as_ref().map(|m| {
        Box::new(ErrorReport {
            message: m.clone(),
            chain: r.chain.clone(),
            downstream_impact: Vec::new(),
            source: None,
        })
    });
    let result = match r.result.as_deref().map(Json::parse) {
        None => None,
        Some(Ok(json)) => Some(json),
        Some(Err(e)) => {
            let message = format!("the stored result of task `{}` is damaged: {e}", r.node);
            tracing::warn!(task = %r.node, "{message}");
            if status == TaskStatus::Success {
                status = TaskStatus::Errored;
                error = Some(Box::new(ErrorReport {
                    chain: vec![message.clone()],
                    message,
                    downstream_impact: Vec::new(),
                    source: None,
                }));
            }
            None
        }
    };
    TaskReport {
        id: r.node.clone(),
        // Rows keep the task's name only.
        names: Names::Owned(Box::new(OwnedNames {
            name: Cow::Owned(r.task.to_string()),
            function: Cow::Borrowed(""),
            description: Cow::Borrowed(""),
        })),
        status,
        attempts: r.attempts,
        elapsed_ns: r.elapsed_ns,
        result,
        error,
        optional: r.optional,
    }
}
