//! Events of a runtime: state changes, progress and log entries, as a stream.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::broadcast;

use crate::record::{LogEntry, Progress, State};

/// Something that happened to a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The record's id (`<run>/<node>` for a task).
    pub id: String,
    /// The record's root.
    pub root: String,
    /// What happened.
    pub kind: EventKind,
}

/// What an [`Event`] reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// The record reached `state` (published once the change is durable).
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

/// A stream of [`Event`]s, from [`Runtime::subscribe`](crate::Runtime::subscribe).
pub type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

pub(crate) fn stream(rx: broadcast::Receiver<Event>) -> EventStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(e) => Some((e, rx)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let e = Event {
                    id: String::new(),
                    root: String::new(),
                    kind: EventKind::Lagged { missed },
                };
                Some((e, rx))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }))
}
