//! Events of a runtime: state changes, progress and log entries, as a stream.

use std::future::Future;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::broadcast;

use crate::record::{LogEntry, Progress, State};

/// Something that happened to a record.
///
/// # What is sent, and when
///
/// - [`EventKind::State`]: once per change of a record's state, after the change is
///   durable. A task moving `scheduled → running → done` sends two (`running`, `done`);
///   progress and log entries of a running task send none (a task that ends in its
///   first poll sends only its end).
/// - [`EventKind::Progress`]: a task's progress, at every `ctx.progress(…)` call (not
///   throttled, not durable yet); and a run's rolled-up progress (see
///   [`ProcessRecord::progress`](crate::ProcessRecord)) when it changed, once per
///   progress flush.
/// - [`EventKind::Log`]: every entry written to a task's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The record's id (`<run>/<node>` for a task).
    pub id: String,
    /// The run the record belongs to: its own id for a process record, the id of its run
    /// for a task. [`RunHandle::events`](crate::RunHandle::events) keeps the events of
    /// one run by this field.
    pub run: String,
    /// The root of the record's tree: the top-level run, for a child process and for the
    /// tasks of a child process too. Filter on it to follow a whole tree.
    pub root: String,
    /// What happened.
    pub kind: EventKind,
}

/// What an [`Event`] reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// The record reached `state` (published once the change is durable, and only when
    /// the state changed).
    State {
        /// The new state.
        state: State,
    },
    /// New progress.
    Progress(Progress),
    /// A log entry.
    Log(LogEntry),
    /// An attempt to deliver a notification of the run ended (the event's id and root
    /// are the run's). Published once the outcome is durable.
    Delivery {
        /// The delivery's id (its `webhook-id`).
        delivery: String,
        /// The channel's name.
        channel: String,
        /// Attempts made so far.
        attempts: u32,
        /// Why this attempt failed; `None` when it was delivered.
        error: Option<String>,
        /// No further attempt will be made: delivered, or given up (failed).
        settled: bool,
    },
    /// This subscriber fell behind and missed `missed` events; the runtime never waits
    /// for a slow subscriber.
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

/// A stream of [`Event`]s, from [`Runtime::subscribe`](crate::Runtime::subscribe) or
/// [`RunHandle::events`](crate::RunHandle::events).
pub type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

fn lagged(run: String, missed: u64) -> Event {
    Event {
        id: String::new(),
        run,
        root: String::new(),
        kind: EventKind::Lagged { missed },
    }
}

pub(crate) fn stream(rx: broadcast::Receiver<Event>) -> EventStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(e) => Some((e, rx)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some((lagged(String::new(), missed), rx))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }))
}

/// How the run ended, once it did.
#[derive(Clone, Copy)]
enum End {
    /// In this state.
    In(State),
    /// Suspended by a shutdown: no end state.
    Suspended,
}

struct RunEvents {
    rx: broadcast::Receiver<Event>,
    run: String,
    /// Completes once the run has ended (its last event is then in the channel), with
    /// the state it ended in (`None`: suspended, it did not end).
    ended: Pin<Box<dyn Future<Output = Option<State>> + Send>>,
    /// Set once `ended` completed: what is left in the channel is read, then the end.
    end: Option<End>,
    /// The run's end was delivered.
    end_seen: bool,
    /// The root of the run's tree, as its events say.
    root: Option<String>,
}

/// The events of run `run` (its record and its tasks) from `rx`, until `ended` completes
/// and the events already sent are read. The last event is the run's end: when the
/// stream was opened too late to see it, it is made from the state `ended` gives.
pub(crate) fn run_stream(
    rx: broadcast::Receiver<Event>,
    run: String,
    ended: impl Future<Output = Option<State>> + Send + 'static,
) -> EventStream {
    let state = RunEvents {
        rx,
        run,
        ended: Box::pin(ended),
        end: None,
        end_seen: false,
        root: None,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        loop {
            let got = if let Some(end) = s.end {
                match s.rx.try_recv() {
                    Ok(e) => Ok(e),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(_) => {
                        let End::In(state) = end else { return None };
                        if s.end_seen {
                            return None;
                        }
                        s.end_seen = true;
                        let e = Event {
                            id: s.run.clone(),
                            run: s.run.clone(),
                            root: s.root.clone().unwrap_or_else(|| s.run.clone()),
                            kind: EventKind::State { state },
                        };
                        return Some((e, s));
                    }
                }
            } else {
                tokio::select! {
                    biased;
                    r = s.rx.recv() => r,
                    end = &mut s.ended => {
                        s.end = Some(end.map_or(End::Suspended, End::In));
                        continue;
                    }
                }
            };
            match got {
                Ok(e) if e.run == s.run => {
                    if e.id == s.run {
                        if let EventKind::State { state } = e.kind {
                            s.end_seen |= state.is_end();
                        }
                    }
                    if s.root.is_none() {
                        s.root = Some(e.root.clone());
                    }
                    return Some((e, s));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let e = lagged(s.run.clone(), missed);
                    return Some((e, s));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }))
}
