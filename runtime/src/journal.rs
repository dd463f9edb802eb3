//! What a run writes to the store, and the group-commit writer that writes it.
//!
//! The executor records every task state change in the run's [`RunJournal`] (in memory)
//! and wakes the [`Writer`]. The writer is one thread per runtime: it takes everything
//! dirty from every journal, applies it as one atomic batch, flushes once, and only then
//! publishes the corresponding events. Under load many transitions share one flush (group
//! commit); no transition waits for a flush of its own. Progress and log entries only mark
//! rows dirty without waking the writer, so they reach the store at the next tick (the
//! progress flush interval) or with the next state change.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};

use crate::ctx::{Level, Reporter};
use crate::events::{Event, EventKind};
use crate::record::{now_ms, LogEntry, Progress, State, MAX_LOG};
use crate::store::{Batch, Store, StoreError, TaskRow};

/// More than this many progress messages from one task within one flush window is an
/// avalanche: the extra messages are counted, not logged.
pub(crate) const AVALANCHE: u32 = 10;

struct Throttle {
    window_start: Instant,
    in_window: u32,
    dropped: u32,
    last_dropped: Option<String>,
}

struct Rows {
    items: Vec<TaskRow>,
    dirty: Vec<bool>,
    dirty_list: Vec<u32>,
    throttle: HashMap<u32, Throttle>,
    window: Duration,
}

impl Rows {
    fn mark(&mut self, node: u32) {
        let i = node as usize;
        if !self.dirty[i] {
            self.dirty[i] = true;
            self.dirty_list.push(node);
        }
    }

    fn push_log(&mut self, node: u32, level: Level, message: String) {
        let log = &mut self.items[node as usize].log;
        log.push(LogEntry {
            timestamp: now_ms(),
            level,
            message,
            data: None,
        });
        if log.len() > MAX_LOG {
            let extra = log.len() - MAX_LOG;
            log.drain(..extra);
        }
    }

    /// Writes the "(N messages dropped)" note and the last dropped message, if any.
    fn settle_burst(&mut self, node: u32) {
        if self.throttle.is_empty() {
            return; // no task reported progress: nothing to look up (called on every end)
        }
        let Some(t) = self.throttle.get_mut(&node) else {
            return;
        };
        if t.dropped == 0 {
            return;
        }
        // The last dropped message is written after the note, so it is not counted in it.
        let n = t.dropped - 1;
        let last = t.last_dropped.take();
        t.dropped = 0;
        if n > 0 {
            self.push_log(node, Level::Info, format!("({n} messages dropped)"));
        }
        if let Some(m) = last {
            self.push_log(node, Level::Info, m);
        }
    }
}

/// The in-memory image of a run's task rows, and what changed since the last write.
pub(crate) struct RunJournal {
    pub(crate) run_id: Arc<str>,
    /// A wake-up is on its way to the writer: further changes need not send another.
    woken: std::sync::atomic::AtomicBool,
    rows: Mutex<Rows>,
    writer: WriterHandle,
}

impl RunJournal {
    pub(crate) fn new(
        run_id: Arc<str>,
        rows: Vec<TaskRow>,
        writer: WriterHandle,
        window: Duration,
    ) -> Arc<Self> {
        let n = rows.len();
        let j = Arc::new(RunJournal {
            run_id,
            woken: std::sync::atomic::AtomicBool::new(false),
            rows: Mutex::new(Rows {
                items: rows,
                dirty: vec![false; n],
                dirty_list: Vec::new(),
                throttle: HashMap::new(),
                window,
            }),
            writer,
        });
        j.writer.register(&j);
        j
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Attempt `attempt` of `node` is running; the node started `since` ago.
    pub(crate) fn started(&self, node: u32, attempt: u32, since: Duration) {
        {
            let mut g = self.lock();
            let row = &mut g.items[node as usize];
            if row.started_at.is_none() {
                row.started_at = Some(ms_before(now_ms(), since));
            }
            row.state = State::Running;
            row.attempts = attempt;
            g.mark(node);
        }
        self.writer.wake(self);
    }

    /// `node` ended; `result` is its output as JSON when it succeeded.
    pub(crate) fn ended(&self, node: u32, outcome: Ended, result: Option<Arc<str>>) {
        {
            let mut g = self.lock();
            g.settle_burst(node);
            let row = &mut g.items[node as usize];
            row.state = outcome.state;
            row.skipped = outcome.skipped;
            row.attempts = outcome.attempts;
            row.elapsed_ns = u64::try_from(outcome.elapsed.as_nanos()).unwrap_or(u64::MAX);
            let now = now_ms();
            row.ended_at = Some(now);
            if row.started_at.is_none() && outcome.attempts > 0 {
                // Ended in its first poll: its start was not recorded on its own.
                row.started_at = Some(ms_before(now, outcome.elapsed));
            }
            row.error = outcome.error;
            row.chain = outcome.chain;
            if outcome.state == State::Done {
                row.progress.percent = Some(100.0);
            }
            row.result = result;
            g.mark(node);
        }
        self.writer.wake(self);
    }

    /// Everything dirty, as a batch; clears the dirty marks.
    pub(crate) fn take(&self, batch: &mut Batch, events: Option<&mut Vec<(Arc<str>, State)>>) {
        // Changes made from now on need a new wake-up.
        self.woken
            .store(false, std::sync::atomic::Ordering::Release);
        let mut events = events;
        let mut g = self.lock();
        // A burst whose window has passed is summarised at the flush ("(N messages
        // dropped)" and the last dropped message); one still inside its window is
        // summarised by its next message, a warning, or the task's end.
        let window = g.window;
        let bursting: Vec<u32> = g
            .throttle
            .iter()
            .filter(|(_, t)| t.dropped > 0 && t.window_start.elapsed() >= window)
            .map(|(n, _)| *n)
            .collect();
        for node in bursting {
            g.settle_burst(node);
            g.mark(node);
        }
        let list = std::mem::take(&mut g.dirty_list);
        for node in list {
            g.dirty[node as usize] = false;
            let row = g.items[node as usize].clone();
            if let Some(ev) = events.as_deref_mut() {
                ev.push((row.node.clone(), row.state));
            }
            batch.tasks.push((self.run_id.clone(), node, row));
        }
    }

    /// Waits until everything recorded so far is durable.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        self.writer.wake(self);
        self.writer.flush().await
    }
}

impl Drop for RunJournal {
    fn drop(&mut self) {
        self.writer.forget(&self.run_id);
    }
}

/// The wall-clock time (ms since the Unix epoch) `ago` before `now`.
fn ms_before(now: u64, ago: Duration) -> u64 {
    now.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))
}

/// How a node ended, for its row.
pub(crate) struct Ended {
    pub(crate) state: State,
    pub(crate) skipped: bool,
    pub(crate) attempts: u32,
    pub(crate) elapsed: Duration,
    pub(crate) error: Option<String>,
    pub(crate) chain: Vec<String>,
}

impl RunJournal {
    fn publish(&self, node_id: &str, kind: EventKind) {
        if self.writer.events.receiver_count() > 0 {
            let _ = self.writer.events.send(Event {
                id: format!("{}/{node_id}", self.run_id),
                root: self.run_id.to_string(),
                kind,
            });
        }
    }
}

impl Reporter for RunJournal {
    fn progress(&self, node: u32, percent: Option<f64>, message: &str) {
        let mut g = self.lock();
        let window = g.window;
        let i = node as usize;
        if i >= g.items.len() {
            return;
        }
        g.items[i].progress = Progress {
            percent,
            message: if message.is_empty() {
                g.items[i].progress.message.clone()
            } else {
                Some(message.to_owned())
            },
        };
        if !message.is_empty() {
            let now = Instant::now();
            let t = g.throttle.entry(node).or_insert(Throttle {
                window_start: now,
                in_window: 0,
                dropped: 0,
                last_dropped: None,
            });
            if now.duration_since(t.window_start) >= window {
                t.window_start = now;
                t.in_window = 0;
            }
            t.in_window += 1;
            if t.in_window > AVALANCHE {
                t.dropped += 1;
                t.last_dropped = Some(message.to_owned());
            } else {
                g.settle_burst(node);
                g.push_log(node, Level::Info, message.to_owned());
            }
        }
        g.mark(node);
        let (node_id, progress) = (g.items[i].node.clone(), g.items[i].progress.clone());
        drop(g);
        self.publish(&node_id, EventKind::Progress(progress));
        // No wake: progress reaches the store at the next tick.
    }

    fn log(&self, node: u32, level: Level, message: &str) {
        let mut g = self.lock();
        if node as usize >= g.items.len() {
            return;
        }
        // A warning or error is never dropped, and writes any pending burst before itself.
        g.settle_burst(node);
        g.push_log(node, level, message.to_owned());
        g.mark(node);
        let node_id = g.items[node as usize].node.clone();
        let entry = g.items[node as usize].log.last().cloned();
        drop(g);
        if let Some(entry) = entry {
            self.publish(&node_id, EventKind::Log(entry));
        }
        if level >= Level::Warning {
            self.writer.wake(self);
        }
    }
}

enum Msg {
    Wake(Arc<str>),
    Batch(Batch, oneshot::Sender<Result<(), StoreError>>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
    Stop,
}

/// A handle on the writer thread.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: std_mpsc::Sender<Msg>,
    events: broadcast::Sender<Event>,
    journals: Arc<Mutex<HashMap<Arc<str>, Weak<RunJournal>>>>,
}

impl WriterHandle {
    fn register(&self, j: &Arc<RunJournal>) {
        self.journals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(j.run_id.clone(), Arc::downgrade(j));
    }

    fn forget(&self, run_id: &Arc<str>) {
        let mut g = self
            .journals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.get(run_id).is_some_and(|w| w.strong_count() == 0) {
            g.remove(run_id);
        }
    }

    fn wake(&self, j: &RunJournal) {
        // One message per write cycle, however many tasks changed in it.
        if !j.woken.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let _ = self.tx.send(Msg::Wake(j.run_id.clone()));
        }
    }

    /// Applies `batch` (in order with everything else) and waits until it is durable.
    pub(crate) async fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Batch(batch, tx)).is_err() {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Waits until every write sent so far is durable.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

fn stopped() -> StoreError {
    StoreError::Io {
        path: "(writer)".into(),
        message: "the runtime has shut down".into(),
    }
}

/// Starts the writer thread over `store`; `tick` is the progress flush interval.
pub(crate) fn start_writer(
    store: Arc<dyn Store>,
    tick: Duration,
    events: broadcast::Sender<Event>,
) -> WriterHandle {
    let (tx, rx) = std_mpsc::channel::<Msg>();
    let journals: Arc<Mutex<HashMap<Arc<str>, Weak<RunJournal>>>> = Arc::default();
    let handle = WriterHandle {
        tx,
        events: events.clone(),
        journals: journals.clone(),
    };
    thread::Builder::new()
        .name("procession-writer".into())
        .spawn(move || writer_loop(&*store, &rx, &journals, tick, &events))
        .expect("the writer thread starts");
    handle
}

fn writer_loop(
    store: &dyn Store,
    rx: &std_mpsc::Receiver<Msg>,
    journals: &Mutex<HashMap<Arc<str>, Weak<RunJournal>>>,
    tick: Duration,
    events: &broadcast::Sender<Event>,
) {
    let mut next_tick = Instant::now() + tick;
    let mut stop = false;
    let mut last_cycle: Option<Instant> = None;
    while !stop {
        // Group commit: changes gather for at least `MIN_CYCLE` between two writes. The
        // wait costs a change at most that much delay, and saves the tasks one wake-up
        // (a futex call) of this thread each when writes are cheap (in memory).
        if let Some(at) = last_cycle {
            if let Some(rest) = MIN_CYCLE.checked_sub(at.elapsed()) {
                thread::sleep(rest);
            }
        }
        let timeout = next_tick.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(timeout) {
            Ok(m) => Some(m),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Some(Msg::Stop),
        };
        last_cycle = Some(Instant::now());
        let ticked = Instant::now() >= next_tick;
        if ticked {
            next_tick = Instant::now() + tick;
        }
        let mut woken: Vec<Arc<str>> = Vec::new();
        let mut explicit = Batch::default();
        let mut waiters = Vec::new();
        for m in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            match m {
                Msg::Wake(id) => woken.push(id),
                Msg::Batch(b, w) => {
                    explicit.extend(b);
                    waiters.push(w);
                }
                Msg::Flush(w) => waiters.push(w),
                Msg::Stop => stop = true,
            }
        }
        let live: Vec<Arc<RunJournal>> = {
            let g = journals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if ticked || stop || !waiters.is_empty() {
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
        // Order: explicit batches first (launch, clear), then journal rows.
        let mut batch = explicit;
        let mut changed = Vec::new();
        let listening = events.receiver_count() > 0;
        for j in &live {
            let mut ev = Vec::new();
            j.take(&mut batch, listening.then_some(&mut ev));
            changed.extend(
                ev.into_iter()
                    .map(|(node, state)| (j.run_id.clone(), node, state)),
            );
        }
        let result = if batch.is_empty() {
            Ok(())
        } else {
            apply_in_chunks(store, batch).and_then(|()| store.flush())
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "store write failed");
        }
        for w in waiters {
            let _ = w.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Io {
                    path: store.location(),
                    message: e.to_string(),
                }),
            });
        }
        if result.is_ok() {
            for (run, node, state) in changed {
                let _ = events.send(Event {
                    id: format!("{run}/{node}"),
                    root: run.to_string(),
                    kind: EventKind::State { state },
                });
            }
        }
    }
}

/// Shortest time between two writes of the writer.
const MIN_CYCLE: Duration = Duration::from_millis(1);

/// Task rows per `Store::apply`: sled's memory grows with the size of one transaction, so
/// a large group is applied as several transactions (in order) before its one flush.
const CHUNK: usize = 2048;

fn apply_in_chunks(store: &dyn Store, mut batch: Batch) -> Result<(), StoreError> {
    if batch.tasks.len() <= CHUNK {
        return store.apply(batch);
    }
    let mut tasks = std::mem::take(&mut batch.tasks).into_iter().peekable();
    let mut first = Some(batch);
    while tasks.peek().is_some() || first.is_some() {
        let mut b = first.take().unwrap_or_default();
        b.tasks.extend(tasks.by_ref().take(CHUNK));
        store.apply(b)?;
    }
    Ok(())
}
