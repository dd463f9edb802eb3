//! The workers: run one node's attempts (inputs, retries, backoff, timeout, panics) and,
//! on success, start the dependents now ready.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use smol_str::SmolStr;
use tracing::Instrument as _;

use crate::error::{BoxError, RetryExhausted, TaskPanicked, Timeout};
use crate::graph::arena::TaskBox;
use crate::hooks::{Attempt, AttemptOutcome, TaskInfo};
use crate::journal::RunJournal;
use crate::task::arg::Inputs;
use crate::task::ctx::{Ctx, CtxSeed, Reporter};
use crate::task::erased::ErasedTask;
use crate::task::TaskMeta;
use crate::util::{mono_ns, mono_since};

use super::{Completion, Msg, Shared};

/// Runs node `i`, then, while one of the dependents it made ready can be run here, that
/// one (see [`Shared::release_success`]).
pub(super) async fn run_node(shared: Arc<Shared>, mut i: u32, mut task: TaskBox) {
    let mut ran: u32 = 0;
    // The first node's start is read afresh; each next one starts where the previous
    // one ended (see `run_one`).
    let mut at = None;
    loop {
        let (next, ended) = run_one(&shared, i, task, at).await;
        let Some(next) = next else { break };
        at = Some(ended);
        ran = ran.wrapping_add(1);
        if ran.is_multiple_of(NODES_PER_BUDGET_UNIT) {
            // Give the worker's other tasks a turn now and then on a long chain (it may
            // park here: the next node's start is read afresh).
            tokio::task::consume_budget().await;
            at = None;
        }
        (i, task) = next;
    }
}

/// How many nodes a chain runs in one tokio task for each unit of the task's cooperative
/// budget it consumes ([`tokio::task::consume_budget`]). One unit per node made a long chain
/// of tasks that do not wait yield every 128 nodes, and each yield put the chain's task in
/// the worker's queue and woke an idle worker (a futex wake-up and two context switches,
/// often the chain moving to the other core): one unit per 16 nodes keeps the yield (every
/// 2,048 nodes, about a millisecond of such tasks) at a sixteenth of those wake-ups. A
/// node that uses the budget itself (a tokio channel, a timer) still counts as before.
const NODES_PER_BUDGET_UNIT: u32 = 16;

/// A runner of the pool (see [`Shared::start`]): runs queued nodes, and the dependents
/// each one makes ready, until the queue is empty.
pub(super) async fn run_pooled(shared: Arc<Shared>) {
    // Nodes run, for the budget (counted across chains: a wide graph's are one node long).
    let mut ran: u32 = 0;
    // The end of the node the runner ran last, a `mono_ns` reading: the start of the
    // next one it runs (a node popped from the queue right after it ended is started
    // without a wait; see `run_one`). `None` for the runner's first node.
    let mut at = None;
    while let Some(first) = shared.next_queued() {
        // Pinned where it is made: passed by value, the chain's state (the largest
        // future of a node) would be copied into `watched`'s.
        let chain = std::pin::pin!(run_chain(&shared, first, &mut ran, &mut at));
        watched(&shared, chain).await;
    }
}

/// Runs a queued node, then the dependent it made ready, and so on; `ran` counts the
/// nodes the runner ran (see [`NODES_PER_BUDGET_UNIT`]); `at` is where the first node
/// starts (`None`: read afresh), then where the last one ended.
async fn run_chain(
    shared: &Arc<Shared>,
    first: (u32, TaskBox),
    ran: &mut u32,
    at: &mut Option<u64>,
) {
    let mut next = Some(first);
    while let Some((i, task)) = next.take() {
        let ended;
        (next, ended) = run_one(shared, i, task, *at).await;
        *at = Some(ended);
        *ran = ran.wrapping_add(1);
        if ran.is_multiple_of(NODES_PER_BUDGET_UNIT) {
            // Give the worker's other tasks a turn now and then on a long chain (it may
            // park here: the next node's start is read afresh).
            tokio::task::consume_budget().await;
            *at = None;
        }
    }
}

/// Runs `fut` (a node and the chain of dependents it made ready) on a runner of the pool.
/// The first time it waits, the runner is counted off the active ones and the queue
/// handed over to a new runner if it holds nodes: a node that waits never holds up the
/// nodes queued behind it.
async fn watched<F: Future>(shared: &Arc<Shared>, mut fut: Pin<&mut F>) -> F::Output {
    let mut waiting = false;
    let out = std::future::poll_fn(|cx| {
        let polled = fut.as_mut().poll(cx);
        if polled.is_pending() && !waiting {
            waiting = true;
            shared.active.fetch_sub(1, Ordering::AcqRel);
            if !shared.queue.is_empty() {
                shared.ensure_runner();
            }
        }
        polled
    })
    .await;
    if waiting {
        shared.active.fetch_add(1, Ordering::AcqRel);
    }
    out
}

/// Runs node `i`; returns the dependent to run next in the same tokio task, if any, and
/// the node's end (a [`mono_ns`] reading), where the next node the caller runs without a
/// wait in between starts.
///
/// `at` is the node's start when the caller comes straight from the end of the node it
/// ran before (one clock read per node, not two: a read costs about as much as a small
/// node's work); `None` when it did not (a runner's first node, one after a yield), and
/// then the clock is read here. So a node's time spans its worker's step from the end
/// of the node it ran before (recording that end, starting the dependents it made
/// ready: a few hundred nanoseconds) or from when the worker took the node up, through
/// its inputs and attempts, to the end of its last attempt.
pub(super) async fn run_one(
    shared: &Arc<Shared>,
    i: u32,
    task: TaskBox,
    at: Option<u64>,
) -> (Option<(u32, TaskBox)>, u64) {
    let (_permit, at) = match &shared.permits {
        // The wait for a permit may park: the start is read after it.
        Some(sem) => (sem.clone().acquire_owned().await.ok(), None),
        None => (None, at),
    };
    shared.prefetch_run(i, &task);
    let first = shared.prior_attempts(i);
    let meta = shared.nodes[i as usize].meta;
    // The node's time is measured on the integer clock: its end is one read, which
    // serves its elapsed time, its row's end and the next node's start without
    // `Instant` arithmetic.
    let started = match at {
        Some(at) => at,
        None => mono_ns(),
    };
    let ran = match &shared.dispatch {
        // Spread: the node's attempts run on whichever worker claims it (out of line:
        // the state of the common path stays small).
        Some(d) => {
            drop(task);
            Box::pin(run_remote(shared, i, first, &**d, started)).await
        }
        None => 'ran: {
            let mut task = task;
            let resume = if shared.hooks.is_empty() {
                // The common path: the inputs and the first attempt's first poll in one
                // call, with no attempt state of its own; most nodes end there.
                let tried = std::future::poll_fn(|cx| {
                    Poll::Ready(first_try(shared, i, first, meta, &mut *task, started, cx))
                })
                .await;
                match tried {
                    Ok(ended) => break 'ran Some(ended),
                    Err(resume) => resume,
                }
            } else {
                Resume::Unprepared
            };
            // The rest (a wait, a retry, hooks) out of line: its state stays off the
            // common path's.
            let mut rest = Box::pin(attempts_from(
                shared,
                i,
                first,
                meta,
                task,
                started,
                u32::from(!matches!(resume, Resume::Unprepared)),
                resume,
            ));
            unless_abandoned(shared, i, started, rest.as_mut()).await
        }
    };
    // One clock read for the node's time, its row's end and the next node's start.
    let ended_at = mono_ns();
    let elapsed_ns = ended_at.saturating_sub(started);
    let elapsed = Duration::from_nanos(elapsed_ns);
    // Abandoned after the cancellation grace period: the driver ended it.
    let Some((attempts, result)) = ran else {
        return (None, ended_at);
    };
    if shared.nodes[i as usize].ended.swap(true, Ordering::AcqRel) {
        return (None, ended_at);
    }
    let ok = result.is_ok();
    let mut next = None;
    let result = match result {
        Ok(json) => {
            // `json` is `None` for an integer or a boolean, kept as a word in the slot:
            // its text is made off the tasks' path, by the writer of the node's journal
            // row, which leaves it in the cell for the report (see `NodeCell`'s docs).
            let node = &shared.nodes[i as usize];
            node.attempts_run.store(attempts, Ordering::Relaxed);
            node.elapsed_ns.store(elapsed_ns, Ordering::Relaxed);
            // Its start, which with its time gives its end (the journal's row reads it,
            // see `Shared::success`); the same as `mark_started` wrote if it waited.
            shared.mark_started(i, started);
            // SAFETY: this worker ran node `i` (its task came from the node's claim) and
            // won its `ended` above; it marks it succeeded once, here.
            #[allow(unsafe_code)]
            unsafe {
                node.succeed(json);
            }
            // Record the end (its facts are in the node's cell, written above) and start
            // the dependents now ready from here: the driver is off the critical path.
            if let Some(j) = &shared.journal {
                j.succeeded(i);
            }
            next = shared.release_success(i);
            Ok(())
        }
        Err(e) => Err(e),
    };
    // A success is reported only when the driver starts nodes itself (a concurrency
    // limit): otherwise its worker has done everything the driver would. A reported node
    // is counted off by the driver when it reads the report, so that a freed slot is
    // seen together with its report; an unreported one is counted off here, after the
    // dependents it made ready were started (which counted them in), unless the one it
    // runs next here takes its place in the count: the count only reaches zero when
    // nothing runs, and then everything the workers sent is in the channel.
    if !ok || !shared.workers_start_dependents {
        let _ = shared.tx.send(Msg::Done(Completion {
            node: i,
            attempts,
            elapsed,
            result,
        }));
    } else if next.is_none() && shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
        // (A node run next here took this one's place in the count.)
        let _ = shared.tx.send(Msg::Idle);
    }
    (next, ended_at)
}

/// Runs node `i` on another worker (see [`super::Dispatch`]); its result comes back as
/// JSON, read by its dependents as a restored result is. `None` when abandoned.
async fn run_remote(
    shared: &Shared,
    i: u32,
    first: u32,
    d: &dyn super::Dispatch,
    started: u64,
) -> Option<(u32, Result<Option<SmolStr>, BoxError>)> {
    let mut sent = d.run(i, first);
    let r = unless_abandoned(shared, i, started, sent.as_mut()).await?;
    Some(match r.outcome {
        Ok(json) => {
            let json = SmolStr::from(json);
            shared.slots[i as usize].fill(Some(json.clone()), None);
            (r.attempts, Ok(Some(json)))
        }
        Err(e) => (r.attempts, Err(e)),
    })
}

/// `fut`'s output (node `i`'s, started at `started`), or `None` once the run abandons
/// its nodes (after the cancellation grace period). `fut` is polled first; the wait for
/// the abandon is set up only when `fut` waits (a task that ends in its first poll never
/// registers it), and so is the node's start recorded for the driver then: only a node
/// that waits can be running when the driver abandons it.
async fn unless_abandoned<F: Future + ?Sized>(
    shared: &Shared,
    i: u32,
    started: u64,
    mut fut: Pin<&mut F>,
) -> Option<F::Output> {
    let mut abandon = std::pin::pin!(None);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if abandon.is_none() {
            shared.mark_started(i, started);
            abandon.set(Some(shared.abandon.cancelled()));
        }
        match abandon.as_mut().as_pin_mut().map(|a| a.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Runs node `i`'s attempts (its task prepared first); its last attempt's number and its
/// result's text (`None` for an integer or a boolean, whose slot makes it when asked) or
/// its error. On success the result is in the node's slot.
pub(super) async fn attempts(
    shared: &Shared,
    i: u32,
    first: u32,
    meta: &'static TaskMeta,
    task: TaskBox,
    node_started: u64,
) -> (u32, Result<Option<SmolStr>, BoxError>) {
    attempts_from(
        shared,
        i,
        first,
        meta,
        task,
        node_started,
        0,
        Resume::Unprepared,
    )
    .await
}

/// Where node `i`'s attempts stand when [`attempts_from`] takes them over.
enum Resume {
    /// Nothing done yet: the inputs are resolved, then the first attempt starts.
    Unprepared,
    /// The attempt last started waits after its first poll (its start recorded), within
    /// its timeout (`deadline`: when, and the timeout it came from).
    Waits {
        span: tracing::Span,
        deadline: Option<(tokio::time::Instant, Duration)>,
    },
    /// The attempt last started failed with `err` and is retried after `delay` (or ends
    /// the node with `err` if the run is cancelled meanwhile).
    Retry { delay: Duration, err: BoxError },
    /// The next attempt starts now.
    Next,
}

/// The outcome of node `i`'s first attempt when it ends in its first poll, or where its
/// attempts stand otherwise: the inputs resolved and the first attempt started and
/// polled in one call into the task (no hooks: nothing wraps the attempt).
#[allow(clippy::too_many_arguments)]
fn first_try(
    shared: &Shared,
    i: u32,
    first: u32,
    meta: &'static TaskMeta,
    task: &mut dyn ErasedTask,
    node_started: u64,
    cx: &mut std::task::Context<'_>,
) -> Result<(u32, Result<Option<SmolStr>, BoxError>), Resume> {
    let policy = &meta.policy;
    let attempt = first.saturating_add(1);
    let names = |idx: u32| shared.ids[idx as usize].to_string();
    let inputs = Inputs {
        slots: &shared.slots,
        names: &names,
        graph: shared.tag,
        remap: shared.remap.as_deref(),
    };
    let ctx = CtxSeed::new(&shared.scope, i, meta.name, attempt);
    let slot = &shared.slots[i as usize];
    // Made once the inputs are resolved, as the attempt starts (its timeout with it).
    let mut span = None;
    let mut deadline = None;
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
        task.prepare_start(
            &inputs,
            policy.max_attempts > 1,
            ctx,
            cx,
            slot,
            &mut span,
            &mut || {
                deadline = policy.timeout.map(|t| (tokio::time::Instant::now() + t, t));
                attempt_span(shared, i, meta, attempt)
            },
        )
    }));
    let ended = match polled {
        Ok(Ok(Poll::Ready(r))) => r.map(|done| done.json),
        Ok(Ok(Poll::Pending)) => {
            // Read only if the node is abandoned after the cancellation grace period
            // (which only a node that waits can be).
            shared.nodes[i as usize]
                .attempts_run
                .store(attempt, Ordering::Relaxed);
            // Its start, as `Running` records or reports it when it waits.
            match shared.journal.as_deref() {
                Some(j) => j.started(i, attempt, mono_since(node_started)),
                None => shared.scope.reporter.attempt(i, attempt),
            }
            return Err(Resume::Waits {
                span: span.unwrap_or_else(tracing::Span::none),
                deadline,
            });
        }
        Ok(Err(e)) => return Ok((first, Err(Box::new(e)))),
        Err(panic) if span.is_none() => return Ok((first, Err(panicked(meta, &*panic)))),
        Err(panic) => {
            // (Nothing to drop if it panicked before its future was made.)
            task.end_attempt();
            Err(panicked(meta, &*panic))
        }
    };
    match ended {
        Ok(json) => Ok((attempt, Ok(json))),
        Err(err) => match after_error(
            shared,
            meta,
            &span.unwrap_or_else(tracing::Span::none),
            attempt,
            1,
            err,
        ) {
            Ok(err) => Ok((attempt, Err(err))),
            Err((delay, err)) => Err(Resume::Retry { delay, err }),
        },
    }
}

/// Runs node `i`'s attempts from where `resume` says they stand (`this_run`: the attempts
/// this run made so, counting the one `resume` is about); see [`attempts`].
#[allow(clippy::too_many_arguments)]
async fn attempts_from(
    shared: &Shared,
    i: u32,
    first: u32,
    meta: &'static TaskMeta,
    mut task: TaskBox,
    node_started: u64,
    mut this_run: u32,
    mut resume: Resume,
) -> (u32, Result<Option<SmolStr>, BoxError>) {
    let policy = &meta.policy;
    if let Resume::Unprepared = resume {
        let prepared = {
            let names = |idx: u32| shared.ids[idx as usize].to_string();
            let inputs = Inputs {
                slots: &shared.slots,
                names: &names,
                graph: shared.tag,
                remap: shared.remap.as_deref(),
            };
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                task.prepare(&inputs, policy.max_attempts > 1)
            }))
        };
        match prepared {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (first, Err(Box::new(e))),
            Err(panic) => return (first, Err(panicked(meta, &*panic))),
        }
        resume = Resume::Next;
    }
    // `first` comes from the store (attempts before a restart) and is untrusted: the
    // attempts of this run are counted apart, and the attempt number saturates.
    loop {
        if let Resume::Retry { delay, err } = resume {
            if !back_off(shared, delay).await {
                return (first.saturating_add(this_run), Err(err));
            }
            resume = Resume::Next;
        }
        let (attempt, span, ended) = match resume {
            Resume::Waits { span, deadline } => {
                let attempt = first.saturating_add(this_run);
                let running = Running {
                    prepared: &mut *task,
                    journal: None,
                    reporter: None,
                    slot: &shared.slots[i as usize],
                    node: i,
                    attempt,
                    node_started,
                };
                let ended = finish_attempt(running, meta, attempt, deadline)
                    .instrument(span.clone())
                    .await;
                (attempt, span, ended)
            }
            _ => {
                this_run = this_run.saturating_add(1);
                let attempt = first.saturating_add(this_run);
                // Read only if the node is abandoned after the cancellation grace period.
                shared.nodes[i as usize]
                    .attempts_run
                    .store(attempt, Ordering::Relaxed);
                let span = attempt_span(shared, i, meta, attempt);
                let ended = if shared.hooks.is_empty() {
                    let deadline = policy.timeout.map(|t| (tokio::time::Instant::now() + t, t));
                    let polled = std::future::poll_fn(|cx| {
                        Poll::Ready(first_poll(
                            shared,
                            i,
                            meta,
                            attempt,
                            &mut *task,
                            &span,
                            node_started,
                            cx,
                        ))
                    })
                    .await;
                    match polled {
                        Poll::Ready(ended) => ended,
                        // It waits: the rest of the attempt as the first attempt's is.
                        Poll::Pending => {
                            resume = Resume::Waits { span, deadline };
                            continue;
                        }
                    }
                } else {
                    let ctx =
                        CtxSeed::new(&shared.scope, i, meta.name, attempt).make(task.takes_ctx());
                    run_attempt(shared, i, meta, attempt, &mut *task, ctx, node_started)
                        .instrument(span.clone())
                        .await
                };
                (attempt, span, ended)
            }
        };
        let err = match ended {
            // The result is in the slot; its text (if any) goes back to the caller, who
            // records it.
            Ok(json) => return (attempt, Ok(json)),
            Err(err) => err,
        };
        match after_error(shared, meta, &span, attempt, this_run, err) {
            Ok(err) => return (attempt, Err(err)),
            Err((delay, err)) => resume = Resume::Retry { delay, err },
        }
    }
}

/// What follows attempt `attempt` (the `this_run`th of this run) that failed with `err`:
/// the node's error (`Ok`), or the delay before the next attempt (`Err`, with `err`).
fn after_error(
    shared: &Shared,
    meta: &TaskMeta,
    span: &tracing::Span,
    attempt: u32,
    this_run: u32,
    err: BoxError,
) -> Result<BoxError, (Duration, BoxError)> {
    let policy = &meta.policy;
    let cancelled = shared.scope.cancelled.is_set();
    if cancelled {
        tracing::info!(parent: span, task = meta.name, attempt, error = %err, "attempt ended after a cancel");
    }
    if !cancelled && this_run < policy.max_attempts && policy.is_retryable(&*err) {
        let delay = policy.backoff.jittered_delay(attempt);
        tracing::info!(parent: span, task = meta.name, attempt, ?delay, error = %err, "retrying");
        return Err((delay, err));
    }
    if this_run > 1 && !cancelled {
        return Ok(Box::new(RetryExhausted {
            task: meta.name.to_owned(),
            attempts: attempt,
            last: err,
        }));
    }
    Ok(err)
}

/// Waits `delay` before the next attempt; false when the run is cancelled meanwhile.
async fn back_off(shared: &Shared, delay: std::time::Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shared.scope.cancel.cancelled() => false,
    }
}

/// Starts an attempt (no hooks) and polls it once, in one call into the task, inside the
/// attempt's span: its end when it ended in that poll (its result in the node's slot),
/// otherwise `Pending`, the attempt still running in the task (its start recorded, as
/// [`Running`] records it when it waits).
#[allow(clippy::too_many_arguments)]
fn first_poll(
    shared: &Shared,
    i: u32,
    meta: &'static TaskMeta,
    attempt: u32,
    prepared: &mut dyn ErasedTask,
    span: &tracing::Span,
    node_started: u64,
    cx: &mut std::task::Context<'_>,
) -> Poll<Result<Option<SmolStr>, BoxError>> {
    let ctx = CtxSeed::new(&shared.scope, i, meta.name, attempt);
    let slot = &shared.slots[i as usize];
    let polled = {
        let _in = span.enter();
        std::panic::catch_unwind(AssertUnwindSafe(|| prepared.start(ctx, cx, slot)))
    };
    match polled {
        Ok(Poll::Ready(r)) => Poll::Ready(r.map(|done| done.json)),
        Ok(Poll::Pending) => {
            // Its start, as `Running` records or reports it when it waits.
            match shared.journal.as_deref() {
                Some(j) => j.started(i, attempt, mono_since(node_started)),
                None => shared.scope.reporter.attempt(i, attempt),
            }
            Poll::Pending
        }
        Err(panic) => {
            // (Nothing to drop if it panicked before its future was made.)
            prepared.end_attempt();
            Poll::Ready(Err(panicked(meta, &*panic)))
        }
    }
}

/// Polls an attempt that waited in its first poll to its end, within its timeout
/// (`deadline`: when, and the timeout it came from).
async fn finish_attempt(
    running: Running<'_>,
    meta: &'static TaskMeta,
    attempt: u32,
    deadline: Option<(tokio::time::Instant, std::time::Duration)>,
) -> Result<Option<SmolStr>, BoxError> {
    let guarded = AssertUnwindSafe(running).catch_unwind();
    let res = match deadline {
        Some((at, t)) => match tokio::time::timeout_at(at, guarded).await {
            Ok(r) => r,
            Err(_) => return Err(timed_out(meta, attempt, t)),
        },
        None => guarded.await,
    };
    match res {
        Ok(r) => r.map(|done| done.json),
        Err(panic) => Err(panicked(meta, &*panic)),
    }
}

/// The outcome of an attempt that failed before its future ran.
fn failed(e: BoxError) -> AttemptOutcome {
    AttemptOutcome {
        error: Some(e),
        payload: None,
    }
}

/// The outcome of an attempt's future: its value, its error, or its panic.
fn outcome(
    res: std::thread::Result<Result<crate::task::erased::Finished, BoxError>>,
    meta: &TaskMeta,
) -> AttemptOutcome {
    match res {
        Ok(Ok(done)) => AttemptOutcome {
            error: None,
            payload: Some(done),
        },
        Ok(Err(e)) => failed(e),
        Err(panic) => failed(panicked(meta, &*panic)),
    }
}

#[cold]
fn timed_out(meta: &TaskMeta, attempt: u32, t: std::time::Duration) -> BoxError {
    tracing::warn!(task = meta.name, attempt, after = ?t, "attempt timed out");
    Box::new(Timeout {
        task: meta.name.to_owned(),
        after: t,
    })
}

/// Runs an attempt wrapped by the hooks' `around_task`: its result's text (the result in
/// the node's slot) or its error.
pub(super) async fn run_attempt(
    shared: &Shared,
    i: u32,
    meta: &'static TaskMeta,
    attempt: u32,
    prepared: &mut dyn ErasedTask,
    ctx: Ctx,
    node_started: u64,
) -> Result<Option<SmolStr>, BoxError> {
    // Polled inside the attempt's span (see `attempts`): a task's synchronous part and
    // its `ctx.log` entries are events of the attempt.
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| prepared.attempt(ctx)));
    match started {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(panic) => return Err(panicked(meta, &*panic)),
    }
    let fut = Running {
        prepared,
        slot: &shared.slots[i as usize],
        journal: shared.journal.as_deref(),
        reporter: match &shared.journal {
            Some(_) => None,
            None => Some(&*shared.scope.reporter),
        },
        node: i,
        attempt,
        node_started,
    };
    let timeout = meta.policy.timeout;
    let inner = async move {
        let guarded = AssertUnwindSafe(fut).catch_unwind();
        let res = match timeout {
            Some(t) => match tokio::time::timeout(t, guarded).await {
                Ok(r) => r,
                Err(_) => return failed(timed_out(meta, attempt, t)),
            },
            None => guarded.await,
        };
        outcome(res, meta)
    };
    let info = TaskInfo {
        process: shared.process.clone(),
        run_id: shared.run_id.to_string(),
        task: meta.name,
        node_id: shared.ids[i as usize].to_string(),
        attempt,
    };
    let mut fut: Attempt<'_> = Box::pin(inner);
    for h in shared.hooks.iter().rev() {
        fut = h.around_task(&info, fut);
    }
    let ended = fut.await;
    match ended.error {
        Some(e) => Err(e),
        None => Ok(ended.payload.and_then(|done| done.json)),
    }
}

/// Polls the attempt running inside a prepared task. Dropping it ends the attempt: the
/// task's future is dropped with it, as a timed-out or abandoned attempt's must be.
///
/// The attempt's start is recorded (state running, attempt number) when it first waits:
/// an attempt that ends in its first poll is recorded once, by its end.
pub(super) struct Running<'a> {
    pub(super) prepared: &'a mut dyn ErasedTask,
    /// The node's slot, where a success puts its result.
    pub(super) slot: &'a crate::task::arg::Slot,
    /// Where to record the start; `None` once recorded (or for runs without records).
    pub(super) journal: Option<&'a RunJournal>,
    /// Where to report the start of a run without records (a spread task's, for its
    /// claim row); `None` once reported.
    pub(super) reporter: Option<&'a dyn Reporter>,
    pub(super) node: u32,
    pub(super) attempt: u32,
    pub(super) node_started: u64,
}

impl std::future::Future for Running<'_> {
    type Output = Result<crate::task::erased::Finished, BoxError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let slot = self.slot;
        let polled = self.prepared.poll_attempt(cx, slot);
        if polled.is_pending() {
            if let Some(j) = self.journal.take() {
                j.started(self.node, self.attempt, mono_since(self.node_started));
            } else if let Some(r) = self.reporter.take() {
                r.attempt(self.node, self.attempt);
            }
        }
        polled
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.prepared.end_attempt();
    }
}

/// The span of one task attempt: `task{process, run, task, node, attempt, worker}`, a
/// child of the run's span. The fields are recorded from values the run holds already
/// (nothing is formatted unless a subscriber records them); with no subscriber, creating
/// it costs an atomic load.
fn attempt_span(shared: &Shared, i: u32, meta: &TaskMeta, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        parent: &shared.span,
        "task",
        process = %shared.process,
        run = %shared.run_id,
        task = meta.name,
        node = %shared.ids[i as usize],
        attempt,
        worker = %shared.worker,
    )
}

pub(super) fn panicked(meta: &TaskMeta, panic: &(dyn std::any::Any + Send)) -> BoxError {
    Box::new(TaskPanicked {
        task: meta.name.to_owned(),
        message: crate::error::panic_message(panic),
    })
}
