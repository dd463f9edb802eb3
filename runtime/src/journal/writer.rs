//! The writer: one thread per runtime through which every write to the store goes, in
//! one order, with one flush per group of writes (group commit).
//!
//! A caller hands the writer a [`Batch`], an operation (a closure run on the writer thread
//! against the store: record compare-and-swap, id counter, idempotency claim, lease), or
//! just wakes it because a run's journal has dirty rows. A cycle takes everything queued,
//! applies it in order (explicit batches and operations in the order they were sent, then
//! the journals' rows), flushes once, and only then answers the callers and publishes the
//! events, in the same order. Nothing is reported before it is durable.
//!
//! A store whose writes are durable as soon as they are applied (the memory store) lets
//! an operation run on the caller's thread instead, when the writer is between two
//! cycles: the caller takes the cycle's lock, so the operation is still applied in one
//! order with every other write and its events are published after the previous
//! cycle's; it saves two thread hand-offs (to the writer and back) per operation, such
//! as a run's launch and its end (see [`WriterHandle::op`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};

use super::RunJournal;
use crate::events::{Event, EventKind};
use crate::record::Progress;
use crate::store::{Batch, Store, StoreError, Update};

/// What runs after the group's flush: answers the caller, publishes events.
type Completion = Box<dyn FnOnce(Result<(), &StoreError>, &broadcast::Sender<Event>) + Send>;

/// An operation run on the writer thread, in order with every other write.
type Op = Box<dyn FnOnce(&dyn Store) -> Completion + Send>;

enum Msg {
    Wake(Arc<str>),
    Batch(Batch, oneshot::Sender<Result<(), StoreError>>),
    Op(Op),
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// Write what is pending, flush, close the store, then answer.
    Stop(oneshot::Sender<Result<(), StoreError>>),
}

/// A handle on the writer thread.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: std_mpsc::Sender<Msg>,
    pub(super) events: broadcast::Sender<Event>,
    journals: Arc<Mutex<HashMap<Arc<str>, Weak<RunJournal>>>>,
    /// Someone waits for the next cycle (a batch, an operation, a flush, a stop): the
    /// writer ends its pause between two cycles at once (see [`Pace`]).
    waiting: Arc<AtomicBool>,
    /// The writer thread, unparked when `waiting` is raised.
    thread: thread::Thread,
    /// Held by the writer thread for each whole cycle (from reading its queue to
    /// publishing its events), and by an operation run on its caller's thread; false
    /// once the writer has stopped.
    cycle: Arc<Mutex<bool>>,
    /// The store, when an operation may run on its caller's thread: its writes are
    /// durable once applied (the memory store), so nothing is gained by grouping them.
    /// Weak: a runtime's shutdown waits for every other holder of its store to let go
    /// (so that its return means the store is closed), and this handle outlives it.
    inline: Option<std::sync::Weak<dyn Store>>,
}

impl WriterHandle {
    /// Sends a message someone waits for, ending the writer's pause between cycles.
    fn send_waited(&self, msg: Msg) -> Result<(), StoreError> {
        if self.tx.send(msg).is_err() {
            return Err(StoreError::Closed);
        }
        if !self.waiting.swap(true, Ordering::AcqRel) {
            self.thread.unpark();
        }
        Ok(())
    }

    pub(super) fn register(&self, j: &Arc<RunJournal>) {
        self.journals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(j.run_id.clone(), Arc::downgrade(j));
    }

    pub(super) fn forget(&self, run_id: &Arc<str>) {
        let mut g = self
            .journals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.get(run_id).is_some_and(|w| w.strong_count() == 0) {
            g.remove(run_id);
        }
    }

    pub(super) fn wake(&self, j: &RunJournal) {
        // One message per write cycle, however many tasks changed in it. A plain load
        // first: once the writer has been woken, the other changes of the cycle do not
        // write the flag's cache line (a locked swap per task). Seeing `true` is enough:
        // the writer clears the flag before it locks the rows to take them, and this
        // change was made under that lock, so either the writer's take comes after it
        // or the clear is visible here.
        if !j.woken.load(std::sync::atomic::Ordering::Relaxed)
            && !j.woken.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let _ = self.tx.send(Msg::Wake(j.run_id.clone()));
        }
    }

    /// Wakes the writer for `j` whether or not a wake-up is on its way already: the
    /// take it brings begins after this call (see [`RunJournal::release_when_written`]).
    pub(super) fn wake_now(&self, j: &RunJournal) {
        let _ = self.tx.send(Msg::Wake(j.run_id.clone()));
    }

    /// Applies `batch` (in order with everything else) and waits until it is durable.
    pub(crate) async fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send_waited(Msg::Batch(batch, tx))?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Runs `f` against the store on the writer thread, in order with every other write,
    /// and returns its result once the group it belongs to is durable; the events it
    /// returns are published then, in order.
    pub(crate) async fn op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<(T, Vec<Event>), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // The writer is between two cycles: the operation runs here, in order with every
        // write (none is being applied), with the same answer and events as there.
        let f = match self.run_inline(f) {
            Ok(done) => return done,
            Err(f) => f,
        };
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let op: Op = Box::new(move |store| {
            let out = f(store);
            Box::new(move |flushed, events| match (out, flushed) {
                (Ok((value, evs)), Ok(())) => {
                    for e in evs {
                        let _ = events.send(e);
                    }
                    let _ = tx.send(Ok(value));
                }
                (Ok(_), Err(e)) => {
                    let _ = tx.send(Err(e.clone()));
                }
                (Err(e), _) => {
                    let _ = tx.send(Err(e));
                }
            })
        });
        self.send_waited(Msg::Op(op))?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Runs `f` on this thread when the store allows it and the writer is between two
    /// cycles; gives `f` back otherwise (the writer runs it).
    #[allow(clippy::type_complexity)]
    fn run_inline<T, F>(&self, f: F) -> Result<Result<T, StoreError>, F>
    where
        F: FnOnce(&dyn Store) -> Result<(T, Vec<Event>), StoreError>,
    {
        let Some(store) = self.inline.as_ref().and_then(std::sync::Weak::upgrade) else {
            return Err(f);
        };
        let open = match self.cycle.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(f),
        };
        if !*open {
            return Ok(Err(StoreError::Closed));
        }
        let out = f(&*store).and_then(|(value, evs)| {
            store.flush()?;
            Ok((value, evs))
        });
        Ok(out.map(|(value, evs)| {
            // Under the cycle's lock: after the events of every earlier write.
            for e in evs {
                let _ = self.events.send(e);
            }
            value
        }))
    }

    /// Waits until every write sent so far is durable.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send_waited(Msg::Flush(tx))?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Writes everything pending, flushes, closes the store (the writer's handle on it is
    /// dropped) and stops the thread; returns once all of that is done.
    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.send_waited(Msg::Stop(tx)).is_err() {
            return Ok(()); // already closed
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// Starts the writer thread over `store`; `tick` is the progress flush interval.
/// `inline`: the store's writes are durable once applied (nothing to flush, as in the
/// memory store), so operations may run on their callers' threads (see
/// [`WriterHandle::op`]).
pub(crate) fn start_writer(
    store: Arc<dyn Store>,
    tick: Duration,
    events: broadcast::Sender<Event>,
    inline: bool,
) -> Result<WriterHandle, StoreError> {
    let (tx, rx) = std_mpsc::channel::<Msg>();
    let journals: Arc<Mutex<HashMap<Arc<str>, Weak<RunJournal>>>> = Arc::default();
    let waiting = Arc::new(AtomicBool::new(false));
    let location = store.location();
    let cycle = Arc::new(Mutex::new(true));
    let inline = inline.then(|| Arc::downgrade(&store));
    let (journals2, waiting2, events2) = (journals.clone(), waiting.clone(), events.clone());
    let cycle2 = cycle.clone();
    let pace = Pace {
        tick,
        min_cycle: if inline.is_some() {
            MIN_CYCLE_INLINE
        } else {
            MIN_CYCLE
        },
    };
    let thread = thread::Builder::new()
        .name("procession-writer".into())
        .spawn(move || {
            let stop = writer_loop(&*store, &rx, &journals2, pace, &events2, &waiting2, &cycle2);
            // The store closes before the stop is answered: a `shutdown()` that returned
            // lets the same directory be opened again at once.
            drop(store);
            if let Some((reply, result)) = stop {
                let _ = reply.send(result);
            }
        })
        .map_err(|e| StoreError::io(location, e))?
        .thread()
        .clone();
    Ok(WriterHandle {
        tx,
        events,
        journals,
        waiting,
        thread,
        cycle,
        inline,
    })
}

/// What one cycle gathered, in the order it is applied.
#[derive(Default)]
struct Cycle {
    pending: Batch,
    completions: Vec<Completion>,
    error: Option<StoreError>,
}

impl Cycle {
    fn apply_pending(&mut self, store: &dyn Store) {
        if self.pending.is_empty() {
            return;
        }
        if let Err(e) = apply_in_chunks(store, &mut self.pending) {
            self.error.get_or_insert(e);
        }
    }
}

type StopReply = (
    oneshot::Sender<Result<(), StoreError>>,
    Result<(), StoreError>,
);

fn writer_loop(
    store: &dyn Store,
    rx: &std_mpsc::Receiver<Msg>,
    journals: &Mutex<HashMap<Arc<str>, Weak<RunJournal>>>,
    Pace { tick, min_cycle }: Pace,
    events: &broadcast::Sender<Event>,
    waiting: &AtomicBool,
    cycle_lock: &Mutex<bool>,
) -> Option<StopReply> {
    let mut next_tick = Instant::now() + tick;
    let mut last_cycle: Option<Instant> = None;
    // The batch of every cycle, emptied by the store: its room is kept from one cycle to
    // the next (the task rows of a busy run fill about the same room each cycle).
    let mut pending = Batch::default();
    loop {
        // Group commit: task rows gather for at least `min_cycle` between two writes (see
        // `Pace`). The pause costs a change at most that much delay, and saves the tasks
        // one wake-up (a futex call) of this thread each when writes are cheap. A caller
        // that waits (a launch, a run's end, a flush) ends the pause at once: only task
        // rows, which nobody waits for, gather in it. So a short run's rows go in the
        // same write (and flush) as its end, not in one of their own in between.
        if let Some(at) = last_cycle {
            while !waiting.load(Ordering::Acquire) {
                match min_cycle.checked_sub(at.elapsed()) {
                    Some(rest) if !rest.is_zero() => thread::park_timeout(rest),
                    _ => break,
                }
            }
        }
        // Lowered before the queue is read: a message sent from now on raises it again.
        waiting.store(false, Ordering::Release);
        let timeout = next_tick.saturating_duration_since(Instant::now());
        let (first, disconnected) = match rx.recv_timeout(timeout) {
            Ok(m) => (Some(m), false),
            Err(std_mpsc::RecvTimeoutError::Timeout) => (None, false),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => (None, true),
        };
        // The whole cycle under its lock: no operation runs on a caller's thread
        // meanwhile (see `WriterHandle::op`).
        let mut open = cycle_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last_cycle = Some(Instant::now());
        let ticked = Instant::now() >= next_tick;
        if ticked {
            next_tick = Instant::now() + tick;
        }
        let mut woken: Vec<Arc<str>> = Vec::new();
        let mut cycle = Cycle {
            pending: std::mem::take(&mut pending),
            ..Cycle::default()
        };
        let mut waiters = Vec::new();
        let mut stop: Option<oneshot::Sender<Result<(), StoreError>>> = None;
        for m in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match m {
                Msg::Wake(id) => woken.push(id),
                Msg::Batch(b, w) => {
                    cycle.pending.extend(b);
                    waiters.push(w);
                }
                Msg::Op(op) => {
                    // Earlier batches first: one order for every write.
                    cycle.apply_pending(store);
                    cycle.completions.push(op(store));
                }
                Msg::Flush(w) => waiters.push(w),
                Msg::Stop(w) => stop = Some(w),
            }
        }
        let everything = ticked || stop.is_some() || disconnected || !waiters.is_empty();
        let live: Vec<Arc<RunJournal>> = {
            let g = journals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if everything {
                g.values().filter_map(Weak::upgrade).collect()
            } else {
                woken.sort_unstable();
                woken.dedup();
                woken
                    .iter()
                    .filter_map(|id| g.get(id).and_then(Weak::upgrade))
                    .collect()
            }
        };
        let mut changed = Vec::new();
        #[cfg(test)]
        pause::reached(ticked);
        let mut wrote = !cycle.completions.is_empty();
        let mut rollups = Vec::new();
        // The memory store takes the journals' rows straight (no `TaskRow` per row),
        // after the batches and operations sent before: one order for every write.
        let memory = store.as_memory_store();
        if memory.is_some() {
            wrote |= !cycle.pending.is_empty();
            cycle.apply_pending(store);
        }
        let mut fenced = 0;
        for j in &live {
            let mut ev = Vec::new();
            match memory {
                Some(m) => {
                    let (n, f) = j.take_into(m, &mut ev);
                    wrote |= n > 0;
                    fenced += f;
                }
                None => j.take(&mut cycle.pending, &mut ev),
            }
            changed.extend(ev.into_iter().map(|(node, state)| {
                (
                    j.run_id.clone(),
                    j.root.clone(),
                    node,
                    EventKind::State { state },
                )
            }));
            // The runs' progress reaches their records at the progress flush cadence.
            if ticked {
                if let Some(p) = j.take_rollup() {
                    rollups.push((j.run_id.clone(), j.root.clone(), j.token, p));
                }
            }
        }
        warn_fenced(fenced);
        wrote |= !cycle.pending.is_empty();
        cycle.apply_pending(store);
        for (run, root, token, progress) in rollups {
            match write_run_progress(store, &run, token, &progress) {
                Ok(true) => {
                    wrote = true;
                    // The run is its own node here (the event's id is the run's).
                    let node = smol_str::SmolStr::new(&*run);
                    changed.push((run.clone(), root, node, EventKind::Progress(progress)));
                }
                Ok(false) => {}
                Err(e) => {
                    cycle.error.get_or_insert(e);
                }
            }
        }
        let result = match cycle.error.take() {
            Some(e) => Err(e),
            None if wrote || !waiters.is_empty() || stop.is_some() => store.flush(),
            None => Ok(()),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "store write failed");
        }
        // Only the task rows' room is kept; whatever a failed apply left behind is not
        // written again later.
        let mut tasks = std::mem::take(&mut cycle.pending.tasks);
        tasks.clear();
        pending.tasks = tasks;
        for c in cycle.completions {
            c(result.as_ref().copied(), events);
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
        // Whether anyone listens is read again now: a subscriber that came during the
        // cycle receives what it wrote after the subscriber came (the journals read it
        // as they take their rows; the runs' progress is always gathered).
        if result.is_ok() && !changed.is_empty() && events.receiver_count() > 0 {
            for (run, root, node, kind) in changed {
                // The run's own progress has the run as its record; a task, `<run>/<node>`.
                let id = if matches!(kind, EventKind::Progress(_)) {
                    run.to_string()
                } else {
                    format!("{run}/{node}")
                };
                let _ = events.send(Event {
                    id,
                    run: run.to_string(),
                    root: root.to_string(),
                    kind,
                });
            }
        }
        if stop.is_some() || disconnected {
            // Nothing runs on a caller's thread any more: the store closes.
            *open = false;
        }
        drop(open);
        if let Some(reply) = stop {
            return Some((reply, result));
        }
        if disconnected {
            return None;
        }
    }
}

/// Writes the rolled-up `progress` of run `run` to its record, when that record is still
/// active in the same run (`token`) and its progress differs; true when written.
fn write_run_progress(
    store: &dyn Store,
    run: &str,
    token: u64,
    progress: &Progress,
) -> Result<bool, StoreError> {
    let mut written = false;
    store.update(run, &mut |cur| {
        written = false;
        match cur {
            Some(r)
                if r.state().is_active()
                    && r.run.as_ref().map(|m| m.token) == Some(token)
                    && r.progress != *progress =>
            {
                let mut r = r.clone();
                r.progress = progress.clone();
                written = true;
                Update::Put(Box::new(r))
            }
            _ => Update::Keep,
        }
    })?;
    Ok(written)
}

/// How often the writer writes.
#[derive(Clone, Copy)]
struct Pace {
    /// The progress flush interval: every dirty row is written at least this often.
    tick: Duration,
    /// The shortest time between two writes ([`MIN_CYCLE`] or [`MIN_CYCLE_INLINE`]).
    min_cycle: Duration,
}

/// Shortest time between two writes of the writer, for a store that flushes each write
/// (sled): one flush per millisecond at most, however many tasks end in it.
const MIN_CYCLE: Duration = Duration::from_millis(1);

/// Shortest time between two writes of the writer, for a store whose writes are durable
/// once applied (the memory store): there is no flush to save, only the writer's wake-up.
/// The rows of a run that gathered since the last write are written in its end's write,
/// after its last task and before its report reaches the caller: a shorter pause keeps
/// that tail short, and the writer applies the rest on its own core while the tasks
/// run (chain 10k: from its last task to its end written, about 250 µs with a pause of
/// 1 ms, about 50 µs with 200 µs).
const MIN_CYCLE_INLINE: Duration = Duration::from_micros(200);

/// Task rows per `Store::apply`: sled's memory grows with the size of one transaction, so
/// a large group is applied as several applies (in order) before its one flush.
const CHUNK: usize = 2048;

fn apply_in_chunks(store: &dyn Store, pending: &mut Batch) -> Result<(), StoreError> {
    let mut fenced = 0;
    if pending.tasks.len() <= CHUNK {
        fenced += store.apply_in_place(pending)?.fenced;
    } else {
        let mut batch = std::mem::take(pending);
        let mut tasks = std::mem::take(&mut batch.tasks).into_iter().peekable();
        let mut first = Some(batch);
        while tasks.peek().is_some() || first.is_some() {
            let mut b = first.take().unwrap_or_default();
            b.tasks.extend(tasks.by_ref().take(CHUNK));
            fenced += store.apply(b)?.fenced;
        }
    }
    warn_fenced(fenced);
    Ok(())
}

/// Says that `fenced` task rows (if any) were refused for a stale lease token, whichever
/// way they were written (a store's apply, or the memory store's direct take).
fn warn_fenced(fenced: u64) {
    if fenced > 0 {
        tracing::warn!(fenced, "task rows with a stale lease token were dropped");
    }
}

/// A pause inside a write cycle, for tests: a hook set for one writer thread runs once
/// the cycle has read its messages and before it takes the journals' rows (given whether
/// the cycle writes the runs' progress), so a test can act in the middle of a cycle.
#[cfg(test)]
pub(crate) mod pause {
    use std::sync::Mutex;
    use std::thread::ThreadId;

    type Hook = Box<dyn FnMut(bool) + Send>;

    static HOOKS: Mutex<Vec<(ThreadId, Hook)>> = Mutex::new(Vec::new());

    /// Runs `hook` in every cycle of `writer` from now on.
    pub(crate) fn set(writer: &super::WriterHandle, hook: Hook) {
        let mut g = HOOKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.push((writer.thread.id(), hook));
    }

    pub(super) fn reached(ticked: bool) {
        let me = std::thread::current().id();
        let take = || {
            let mut g = HOOKS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let i = g.iter().position(|(t, _)| *t == me)?;
            Some(g.swap_remove(i))
        };
        // Run outside the lock: the hook may block, other tests' writers go on.
        if let Some((t, mut hook)) = take() {
            hook(ticked);
            HOOKS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((t, hook));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Ended, NewRow, RunJournal};
    use crate::record::{ProcessRecord, RunMeta, State};
    use crate::store::MemoryStore;

    fn event(id: &str) -> Event {
        Event {
            id: id.to_owned(),
            run: id.to_owned(),
            root: id.to_owned(),
            kind: EventKind::State { state: State::Done },
        }
    }

    // A store with nothing to flush: an operation runs on its caller's thread while the
    // writer is idle (no hand-off to the writer thread and back), its events are
    // published when it returns, and once the writer stopped it is refused.
    #[tokio::test]
    async fn an_operation_runs_on_its_callers_thread_when_the_store_has_nothing_to_flush() {
        let (events, mut rx) = broadcast::channel(16);
        let store = Arc::new(MemoryStore::new());
        let writer =
            start_writer(store.clone(), Duration::from_hours(1), events, true).expect("writer");
        let here = thread::current().id();
        let (ran_on, n) = writer
            .op(|s| Ok(((thread::current().id(), s.next_id()?), vec![event("a")])))
            .await
            .expect("op");
        assert_eq!(ran_on, here);
        assert_eq!(n, 1);
        assert_eq!(rx.try_recv().expect("the op's event").id, "a");
        // Writes sent to the writer thread and inline ones share one order. The writer
        // answers a write before it ends its cycle: an op right after may still go to
        // the writer thread, then runs here again once the cycle ended.
        writer.write(Batch::default()).await.expect("batch");
        let mut last = 1;
        for tries in 0.. {
            let (ran_on, n) = writer
                .op(|s| Ok(((thread::current().id(), s.next_id()?), Vec::new())))
                .await
                .expect("op");
            assert_eq!(n, last + 1, "one order for every op");
            last = n;
            if ran_on == here {
                break;
            }
            assert!(tries < 1000, "an op never ran on its caller's thread again");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        writer.close().await.expect("close");
        let refused = writer.op(|_| Ok(((), Vec::new()))).await;
        assert!(matches!(refused, Err(StoreError::Closed)), "{refused:?}");
        // Closed, the writer holds the store no more (a runtime's shutdown waits for
        // that: before, every in-memory runtime's shutdown took its 5 s timeout).
        assert_eq!(Arc::strong_count(&store), 1);
    }

    // A store that flushes (sled, PostgreSQL): operations keep going through the writer
    // thread, grouped with everything else under one flush.
    #[tokio::test]
    async fn an_operation_runs_on_the_writer_thread_when_the_store_flushes() {
        let (events, _rx) = broadcast::channel(16);
        let writer = start_writer(
            Arc::new(MemoryStore::new()),
            Duration::from_hours(1),
            events,
            false,
        )
        .expect("writer");
        let name = writer
            .op(|_| Ok((thread::current().name().map(str::to_owned), Vec::new())))
            .await
            .expect("op");
        assert_eq!(name.as_deref(), Some("procession-writer"));
        writer.close().await.expect("close");
    }

    // A subscriber that arrives in the middle of a write cycle, before the cycle takes a
    // change made after it subscribed and writes the run's progress, receives both: the
    // task's state and the run's rolled-up progress. (The cycle once read whether anyone
    // listened at its start, and built and sent neither.) The writer is held inside its
    // cycle by a test pause while the subscriber subscribes and the task ends.
    #[tokio::test]
    async fn a_subscriber_arriving_mid_cycle_receives_the_cycles_later_changes() {
        let store = Arc::new(MemoryStore::new());
        let mut rec = ProcessRecord::new_root("run", "job", "job", "", serde_json::Value::Null);
        rec.status.state = State::Running;
        rec.run = Some(RunMeta {
            token: 1,
            fingerprint: 0,
            options: std::collections::BTreeMap::new(),
            tasks: 1,
            idempotency_key: None,
            max_concurrency: None,
            resumes: 0,
            seq: 1,
            overlap_of: None,
            fired_at: None,
            traceparent: None,
        });
        store
            .update("run", &mut |_| Update::Put(Box::new(rec.clone())))
            .expect("record");
        // Nobody listens when the cycle starts.
        let (events, _) = broadcast::channel(16);
        let writer = start_writer(
            store.clone(),
            Duration::from_millis(20),
            events.clone(),
            false,
        )
        .expect("writer");
        let j = RunJournal::new(
            Arc::from("run"),
            Arc::from("run"),
            1,
            0,
            Arc::from(vec![smol_str::SmolStr::new("n0")]),
            std::iter::once(NewRow {
                task: "step",
                optional: false,
            }),
            writer.clone(),
            Duration::from_millis(50),
        );
        let (paused_tx, paused) = std_mpsc::channel::<()>();
        let (go, go_rx) = std_mpsc::channel::<()>();
        let mut armed = true;
        pause::set(
            &writer,
            Box::new(move |ticked| {
                if ticked && std::mem::take(&mut armed) {
                    let _ = paused_tx.send(());
                    let _ = go_rx.recv();
                }
            }),
        );
        paused
            .recv()
            .expect("the writer pauses in a cycle that writes progress");
        let mut rx = events.subscribe();
        j.ended(
            0,
            Ended {
                state: State::Done,
                skipped: false,
                attempts: 1,
                elapsed: Duration::from_millis(1),
                failure: None,
                at: None,
            },
            None,
        );
        go.send(()).expect("go");
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("events missed; got {seen:?}"))
                .expect("event");
            seen.push((e.id, e.kind));
        }
        assert!(
            seen.contains(&("run/n0".to_owned(), EventKind::State { state: State::Done })),
            "{seen:?}"
        );
        assert!(
            seen.iter()
                .any(|(id, k)| id == "run" && matches!(k, EventKind::Progress(_))),
            "{seen:?}"
        );
        drop(j);
        writer.close().await.expect("close");
    }
}
