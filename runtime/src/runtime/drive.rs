//! The lifecycle of one run: `drive` marks it running, executes its graph and records
//! how it ended.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::exec::{execute, run_span, Remains, Resume, RunConfig};
use crate::graph::Graph;
use crate::hooks::Hooks;
use crate::journal::RunJournal;
use crate::record::{ProcessRecord, State};
use crate::report::{RunReport, RunStatus, TaskReport};
use crate::store::{Batch, StoreError, Update};
use crate::task::ctx::RuntimeHandle;

use super::{archiving, clearing, state_event, ChildSpawner, Inner};

/// One run handed to [`drive`].
pub(super) struct Run {
    /// The launch's write marked the run running already (a fresh launch); otherwise
    /// (a resumed run) the driver does.
    pub(super) started: bool,
    pub(super) rec: ProcessRecord,
    pub(super) graph: Graph,
    pub(super) hooks: Vec<Arc<dyn Hooks>>,
    pub(super) resume: Option<Resume>,
    /// Distinguishes this run of the record from earlier and later ones.
    pub(super) token: u64,
    /// The lease token every task row of this run carries (fencing).
    pub(super) lease: u64,
    pub(super) cancel: CancellationToken,
    /// This run's suspension signal (the runtime's, or its own when its lease is lost).
    pub(super) halt: Arc<crate::exec::Halt>,
}

/// Runs one graph for record `rec` and writes the outcome; `None` when the runtime
/// suspended the run (nothing is recorded then: the next start resumes it). The
/// [`Remains`] are the caller's to drop once it handed the report over.
pub(super) async fn drive(inner: Arc<Inner>, run: Run) -> (Option<RunReport>, Remains) {
    let Run {
        started: pre_started,
        rec,
        graph,
        hooks,
        resume,
        token,
        lease,
        cancel,
        halt,
    } = run;
    let id = rec.id.clone();
    let run_meta = rec.run.clone();
    let span = run_span(
        graph.name(),
        &id,
        &inner.worker,
        run_meta.as_ref().map_or(0, |m| m.resumes),
    );
    // The run joins the trace stored on its record (its launcher's, or its own first
    // span's before a crash); a run with none stores its own span's.
    let store_trace = join_trace(
        &span,
        run_meta.as_ref().and_then(|m| m.traceparent.as_deref()),
    );
    // scheduled -> running, unless a cancel got there first; fenced by the lease (a
    // worker that another took the run from writes nothing and stops the run here).
    let started = if pre_started && store_trace.is_none() {
        Ok((None, true))
    } else {
        inner
            .update_leased(&id, lease, move |cur| match cur {
                Some(r) if r.run.as_ref().map(|m| m.token) == Some(token) => {
                    let mut r = r.clone();
                    if pre_started {
                        // Running already: only the trace context is stored.
                        if let (Some(m), Some(tp)) = (r.run.as_mut(), &store_trace) {
                            m.traceparent = Some(tp.clone());
                        }
                        return (Update::Put(Box::new(r)), true);
                    }
                    match r.transition(State::Running) {
                        Ok(()) => {
                            if let (Some(m), Some(tp)) = (r.run.as_mut(), &store_trace) {
                                m.traceparent = Some(tp.clone());
                            }
                            (Update::Put(Box::new(r)), true)
                        }
                        Err(_) => (Update::Keep, false),
                    }
                }
                _ => (Update::Keep, false),
            })
            .await
    };
    let running = match started {
        Ok((_, true)) => true,
        Ok(_) => false,
        Err(crate::Error::Store(e @ StoreError::Fenced { .. })) => {
            tracing::warn!(run = %id, worker = %inner.worker, error = %e, "the run's lease was taken by another worker before its start was written: stopping it here");
            halt.halt_now();
            false
        }
        Err(e) => {
            tracing::error!(run = %id, error = %e, "cannot start run");
            false
        }
    };
    if !running {
        cancel.cancel();
    }
    let journal = if running && inner.task_records {
        // Its rows' task names and optional flags come from the executor's walk of the
        // graph's nodes (see `RunJournal::awaiting_rows`), not from a walk of its own.
        Some(RunJournal::awaiting_rows(
            Arc::from(id.as_str()),
            Arc::from(rec.root.as_str()),
            token,
            lease,
            // The graph's one copy of the node ids, shared with the executor.
            graph.ids.clone(),
            inner.writer.clone(),
            inner.progress_flush,
        ))
    } else {
        None
    };
    // The executor acknowledges a cancel: cancel_requested -> cancelling. A cancel that
    // came through the run's token alone (a parent cancelling its child, a user's token)
    // is recorded as requested first, so the record follows the state table. Polled
    // with the executor in this task (not spawned: no task to start and abort per run).
    let ack = {
        let (inner, cancel, id, halt) = (&inner, &cancel, &id, halt.clone());
        async move {
            cancel.cancelled().await;
            // Fenced by the lease: a worker fenced out stops the run instead.
            let acked = inner
                .update_leased(id, lease, move |cur| match cur {
                    Some(r)
                        if matches!(r.state(), State::CancelRequested | State::Running)
                            && r.run.as_ref().map(|m| m.token) == Some(token) =>
                    {
                        let mut r = r.clone();
                        if r.state() == State::Running {
                            r.set_state(State::CancelRequested);
                        }
                        r.set_state(State::Cancelling);
                        (Update::Put(Box::new(r)), ())
                    }
                    _ => (Update::Keep, ()),
                })
                .await;
            if let Err(crate::Error::Store(e @ StoreError::Fenced { .. })) = acked {
                tracing::warn!(run = %id, worker = %inner.worker, error = %e, "the run's lease was taken by another worker before its cancel was acknowledged: stopping it here");
                halt.halt_now();
            }
        }
    };
    let mut ack = std::pin::pin!(ack);
    let mut acked = false;
    // Task spreading: the ready nodes are offered to every worker of the shared store;
    // this worker stays the run's coordinator.
    let spread_done = CancellationToken::new();
    let dispatch = match (&inner.spread, running) {
        (Some(sp), true) => {
            let d = super::spread::RunDispatch::register(
                sp,
                &id,
                token,
                &graph,
                inner.grace,
                std::time::Duration::from_millis(inner.lease_ms),
                cancel.clone(),
                journal.clone(),
                // A fresh launch: this worker wrote every row of the run (a resumed
                // or taken-over run offers every node it runs).
                resume.is_none(),
            );
            tokio::spawn(super::spread::cancel_on(
                Arc::downgrade(&inner),
                id.clone(),
                token,
                cancel.clone(),
                spread_done.clone(),
            ));
            Some(d)
        }
        _ => None,
    };
    let cfg = RunConfig {
        run_id: Arc::from(id.as_str()),
        max_concurrency: run_meta
            .as_ref()
            .and_then(|m| m.max_concurrency)
            .or(inner.process_concurrency),
        permits: inner.permits.clone(),
        hooks,
        cancel: cancel.clone(),
        halt,
        grace: inner.grace,
        journal: journal.clone(),
        resume,
        runtime: Some(RuntimeHandle(Arc::new(ChildSpawner {
            inner: Arc::downgrade(&inner),
            parent: id.clone(),
        }))),
        resources: inner.resources.clone(),
        span,
        worker: Arc::from(inner.worker.as_str()),
        dispatch: dispatch
            .clone()
            .map(|d| d as Arc<dyn crate::exec::Dispatch>),
    };
    let (report, remains) = {
        let mut exec = std::pin::pin!(execute(graph, cfg));
        loop {
            tokio::select! {
                biased;
                () = &mut ack, if !acked => acked = true,
                report = &mut exec => break report,
            }
        }
    };
    spread_done.cancel();
    if let Some(d) = &dispatch {
        d.unregister();
        // An ended run's task rows go; a suspended one keeps them for the worker that
        // resumes it (it adopts what still runs and finds what ended).
        if report.is_some() {
            super::spread::clear(&inner, &id, token).await;
        }
    }
    // A run that ended writes its last task rows in the same write as its end (below):
    // one flush, not two. A suspended or stopped run makes them durable here.
    if report.is_none() || !running {
        if let Some(j) = &journal {
            if let Err(e) = j.sync().await {
                tracing::error!(run = %id, error = %e, "cannot record the run's tasks");
            }
        }
    }
    // Wait for the acknowledgement of a cancel, so that it is written before the end.
    if cancel.is_cancelled() && !acked {
        ack.await;
    }
    let Some(mut report) = report else {
        // Suspended: the record stays active and is resumed at the next start. A
        // suspending shutdown gives the claim up, so that another worker sharing the
        // store takes the run over at once (a run whose lease was taken holds none).
        if inner.halt.is_halted() && lease != 0 {
            let held = crate::store::Lease {
                run: id.clone(),
                owner: inner.worker.clone(),
                token: lease,
                expires_at: 0,
            };
            if let Err(e) = inner
                .write(move |s| Ok((s.release(&held)?, Vec::new())))
                .await
            {
                tracing::warn!(run = %id, error = %e, "cannot give up the lease of a suspended run");
            }
        }
        return (None, remains);
    };
    if !running {
        return (Some(report), remains);
    }
    let end = report.status.end_state();
    let error = (end == State::Failed).then(|| run_error(&report));
    // Where the run stopped, for a run that did not end done (a done run is at 100).
    let progress = journal.as_ref().map(|j| j.rollup());
    // Optional tasks that failed: the run succeeded, its log says what did not. A run
    // where no task failed has none, and its report's entries are not walked again.
    let warnings: Vec<String> = if remains.may_have_failures() {
        report
            .warnings()
            .iter()
            .map(|t| {
                let msg = t.error.as_ref().map_or("", |e| e.message.as_str());
                format!("optional task `{}` failed: {msg}", t.id)
            })
            .collect()
    } else {
        Vec::new()
    };
    let id2 = id.clone();
    // The end is one write: the record's state (a cancel that came first wins: the run
    // ends cancelled, whatever its tasks did), the notifications of the end (the outbox,
    // atomic with the state) and, for an ephemeral record, its deletion with its children
    // and task rows; for an overlapping run of a schedule, its move into the scheduled
    // record's history (its own record is deleted).
    let owner = inner.worker.clone();
    let lease_ms = inner.lease_ms;
    let keep = inner.keep_runs;
    let notify = inner
        .notifier
        .prepare(&rec, &report)
        .map(|p| (inner.notifier.clone(), p, rec, inner.clock.now_ms()));
    let notifying = notify.is_some();
    let last_rows = journal.clone();
    let ended = inner
        .write(move |store| {
            // The task rows not written yet come first: in this write, before the end,
            // and with their events before the run's (built when anyone listens as
            // they are taken, see `RunJournal::take`).
            let mut events = Vec::new();
            if let Some(j) = &last_rows {
                let mut changed = Vec::new();
                // Into the memory store as the writer writes them (no `TaskRow` per row).
                let fenced = match store.as_memory_store() {
                    Some(m) => j.take_into(m, &mut changed).1,
                    None => {
                        let mut rows = Batch::default();
                        j.take(&mut rows, &mut changed);
                        if rows.is_empty() {
                            0
                        } else {
                            store.apply(rows)?.fenced
                        }
                    }
                };
                if fenced > 0 {
                    tracing::warn!(run = %id2, fenced, "task rows with a stale lease token were dropped");
                }
                events.extend(changed.into_iter().map(|(node, state)| crate::events::Event {
                    id: format!("{}/{node}", j.run_id),
                    run: j.run_id.to_string(),
                    root: j.root.to_string(),
                    kind: crate::events::EventKind::State { state },
                }));
            }
            // Fenced: the end is written only while this worker still holds the run. A
            // renewal that succeeds keeps it for `lease_ms`, so no other worker can
            // take the run before the end below is written.
            let held = crate::store::Lease {
                run: id2.clone(),
                owner: owner.clone(),
                token: lease,
                expires_at: 0,
            };
            if lease != 0 && !store.renew(&held, lease_ms)? {
                tracing::warn!(run = %id2, "the run's lease was taken by another worker: its end is not written");
                return Ok((Err(()), events));
            }
            let final_state = std::cell::Cell::new(None);
            let delete = std::cell::Cell::new(false);
            let joined: std::cell::Cell<Option<(String, ProcessRecord)>> =
                std::cell::Cell::new(None);
            let decide = |cur: Option<&ProcessRecord>| match cur {
                Some(r)
                    if r.state().is_active() && r.run.as_ref().map(|m| m.token) == Some(token) =>
                {
                    let mut r = r.clone();
                    // A cancel that came before the end wins over a success (the table
                    // has no cancel_requested -> done); a task that ignored it past the
                    // grace period still fails the run.
                    let cancel_won = end == State::Done
                        && matches!(r.state(), State::CancelRequested | State::Cancelling);
                    let end = if cancel_won { State::Cancelled } else { end };
                    final_state.set(Some(end));
                    if r.ephemeral {
                        delete.set(true);
                        return Update::Delete;
                    }
                    if r.state() == State::CancelRequested {
                        r.set_state(State::Cancelling);
                    }
                    r.status.error = if end == State::Failed {
                        error.clone()
                    } else {
                        None
                    };
                    if end == State::Done {
                        for w in &warnings {
                            r.push_log(crate::record::Level::Warning, w.clone());
                        }
                    }
                    r.set_state(end);
                    if end == State::Done {
                        r.progress.percent = Some(100.0);
                    } else if let Some(p) = &progress {
                        r.progress.clone_from(p);
                    }
                    if let Some(of) = r.run.as_ref().and_then(|m| m.overlap_of.clone()) {
                        joined.set(Some((of, r)));
                        return Update::Delete;
                    }
                    Update::Put(Box::new(r))
                }
                _ => Update::Keep,
            };
            let rec = match &notify {
                Some((notifier, prepared, rec, now)) => store.update_enqueue(&id2, &mut |cur| {
                    let decided = decide(cur);
                    let deliveries = match (&decided, final_state.get()) {
                        (Update::Keep, _) | (_, None) => Vec::new(),
                        (_, Some(end)) => {
                            notifier.deliveries(prepared, rec, RunStatus::of_end(end), *now)
                        }
                    };
                    (decided, deliveries)
                })?,
                None => store.update(&id2, &mut |cur| decide(cur))?,
            };
            let (final_state, delete) = (final_state.get(), delete.get());
            if delete {
                // The record goes with everything it kept: rows, children, history.
                let mut batch = clearing(store, &id2)?;
                batch.delete_processes.push(id2.clone());
                store.apply(batch)?;
            } else if let Some((of, r)) = joined.take() {
                // The scheduled record may have been deleted meanwhile: then the run has
                // no history to join.
                let mut batch = if store.get(&of)?.is_some() {
                    archiving(keep, &of, &r, &id2)
                } else {
                    Batch::default()
                };
                batch.extend(clearing(store, &id2)?);
                batch.delete_processes.push(id2.clone());
                store.apply(batch)?;
                events.push(state_event(&r));
            } else if let Some(r) = &rec {
                if final_state.is_some() {
                    events.push(state_event(r));
                }
            } else {
                // The record was deleted under the run (a resync dropped its definition
                // and gave up waiting): what the run wrote since goes too.
                store.apply(clearing(store, &id2)?)?;
            }
            // The run is over: its claim is given up (a stale token changes nothing).
            store.release(&crate::store::Lease {
                run: id2.clone(),
                owner,
                token: lease,
                expires_at: 0,
            })?;
            Ok((Ok(final_state), events))
        })
        .await;
    match ended {
        Ok(Ok(Some(State::Cancelled))) if report.status != RunStatus::Cancelled => {
            // The cancel won the race with the end: the live report says what the store says.
            report.status = RunStatus::Cancelled;
        }
        // Another worker owns the run now: its end will be that worker's.
        Ok(Err(())) => return (None, remains),
        Ok(Ok(_)) => {}
        Err(e) => tracing::error!(run = %id, error = %e, "cannot record the run's end"),
    }
    if notifying {
        if let Some(d) = &inner.deliverer {
            d.wake();
        }
    }
    drop(journal);
    (Some(report), remains)
}

/// The trace context to store on a run launched now: the caller's current span's (cargo
/// feature `otel`, with an OpenTelemetry layer installed).
pub(super) fn caller_trace() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        crate::otel::traceparent(&tracing::Span::current())
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Makes the run's `span` a child of the run's `stored` trace context, if valid; returns
/// the context to store on the record when none was (the span's own).
fn join_trace(span: &tracing::Span, stored: Option<&str>) -> Option<String> {
    #[cfg(feature = "otel")]
    {
        match stored {
            Some(tp) if crate::otel::join(span, tp) => None,
            _ => crate::otel::traceparent(span),
        }
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (span, stored);
        None
    }
}

/// The message stored on a failed run's record (optional tasks that failed are named
/// only when nothing else failed).
pub(super) fn run_error(report: &RunReport) -> String {
    let mut errored: Vec<&TaskReport> = report.errored();
    errored.sort_by_key(|t| t.optional);
    match errored.first() {
        None => "the run failed".into(),
        Some(t) => {
            let msg = t.error.as_ref().map_or("", |e| e.message.as_str());
            if errored.len() == 1 {
                format!("task `{}` failed: {msg}", t.id)
            } else {
                format!(
                    "task `{}` failed: {msg} (and {} more)",
                    t.id,
                    errored.len() - 1
                )
            }
        }
    }
}
