//! The live event feed: one pump numbers the runtime's events in their one order and
//! keeps the latest in a bounded ring; each SSE client reads from its own bounded
//! buffer and replays from the ring after a reconnect or an overflow.
//!
//! Ids are `<epoch>-<seq>`: the epoch is a number the feed takes from the store's
//! persisted counter ([`Store::next_id`](crate::store::Store::next_id), which only grows)
//! when it starts, the sequence counts the feed's events from 1. Ordered by epoch, then
//! sequence, they grow within a feed and from one feed to the next on the same store
//! (after a restart of the runtime or of the admin), so that an id from an earlier feed
//! is never read as one of this feed: it gets one `resync`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::response::sse::Event as SseEvent;
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventKind};
use crate::runtime::Runtime;

use super::AdminConfig;

/// An event with its position in the feed.
#[derive(Debug)]
pub(crate) struct Numbered {
    pub(crate) seq: u64,
    pub(crate) event: Event,
}

/// What the pump hands to clients.
#[derive(Debug, Clone)]
enum Item {
    Event(Arc<Numbered>),
    /// The pump itself fell behind the runtime and lost events: everyone resyncs. The
    /// number is the gap's own id.
    Gap(u64),
}

struct Ring {
    /// This feed's epoch (0 until the store gave it one).
    epoch: u64,
    buf: VecDeque<Arc<Numbered>>,
    cap: usize,
    /// The id the next event gets.
    next: u64,
    /// A client whose last id is at least `floor - 1` can be replayed without a gap.
    floor: u64,
}

pub(crate) struct Feed {
    ring: Mutex<Ring>,
    /// Set once the epoch is known: streams start then.
    ready: watch::Receiver<bool>,
    tx: broadcast::Sender<Item>,
    /// Ends every stream (server shutdown).
    closed: CancellationToken,
}

/// Which events a client wants.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filter {
    pub(crate) runs: Vec<String>,
    pub(crate) roots: Vec<String>,
    /// Kind names (`state`, `progress`, `log`); all when empty.
    pub(crate) kinds: Vec<&'static str>,
}

pub(crate) const KINDS: [&str; 3] = ["state", "progress", "log"];

fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::State { .. } => "state",
        EventKind::Progress(_) => "progress",
        EventKind::Log(_) => "log",
        _ => "other",
    }
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        (self.runs.is_empty() || self.runs.contains(&e.run))
            && (self.roots.is_empty() || self.roots.contains(&e.root))
            && (self.kinds.is_empty() || self.kinds.contains(&kind_name(&e.kind)))
    }
}

impl Feed {
    /// Starts the pump over `rt`'s events; it stops when `stop` is cancelled.
    pub(crate) fn start(rt: &Runtime, cfg: &AdminConfig, stop: CancellationToken) -> Arc<Feed> {
        let (tx, _) = broadcast::channel(cfg.client_buffer);
        let (ready_tx, ready) = watch::channel(false);
        let feed = Arc::new(Feed {
            ready,
            ring: Mutex::new(Ring {
                epoch: 0,
                buf: VecDeque::with_capacity(cfg.replay_buffer.min(4096)),
                cap: cfg.replay_buffer,
                next: 1,
                floor: 1,
            }),
            tx,
            closed: CancellationToken::new(),
        });
        // Subscribed now: the events published while the epoch is fetched wait in the
        // runtime's bus and are numbered once it is known.
        let mut events = rt.subscribe();
        let pump = feed.clone();
        let rt = rt.clone();
        tokio::spawn(async move {
            let epoch = tokio::select! {
                () = stop.cancelled() => None,
                e = rt.feed_epoch() => match e {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "admin event feed: no epoch from the store; the event stream is closed");
                        None
                    }
                },
            };
            // The pump does not keep the runtime alive.
            drop(rt);
            let Some(epoch) = epoch else {
                pump.closed.cancel();
                return;
            };
            pump.ring().epoch = epoch;
            let _ = ready_tx.send(true);
            loop {
                let e = tokio::select! {
                    () = stop.cancelled() => break,
                    e = events.next() => e,
                };
                let Some(e) = e else { break };
                pump.push(e);
            }
            pump.closed.cancel();
        });
        feed
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Numbers `e`, keeps it and hands it to the clients; never waits for them.
    fn push(&self, e: Event) {
        let mut ring = self.ring();
        let seq = ring.next;
        ring.next += 1;
        if let EventKind::Lagged { missed } = e.kind {
            tracing::warn!(
                missed,
                "admin event feed fell behind the runtime: clients resync"
            );
            ring.buf.clear();
            ring.floor = seq + 1;
            let _ = self.tx.send(Item::Gap(seq));
            return;
        }
        let n = Arc::new(Numbered { seq, event: e });
        if ring.buf.len() >= ring.cap {
            if let Some(old) = ring.buf.pop_front() {
                ring.floor = old.seq + 1;
            }
        }
        ring.buf.push_back(n.clone());
        // Sent under the ring's lock: a client that subscribes and copies the ring under
        // the same lock sees every event exactly once.
        let _ = self.tx.send(Item::Event(n));
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The id of the newest event (sequence 0 before the first).
    pub(crate) fn last_id(&self) -> EventId {
        let ring = self.ring();
        EventId {
            epoch: ring.epoch,
            seq: ring.next - 1,
        }
    }

    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// The events after `last` (a sequence of this feed) still in the ring, or `None`
    /// when some are gone (or `last` was never given out here).
    fn replay(ring: &Ring, last: u64) -> Option<VecDeque<Arc<Numbered>>> {
        if last >= ring.next || last + 1 < ring.floor {
            return None;
        }
        Some(ring.buf.iter().filter(|n| n.seq > last).cloned().collect())
    }

    /// The SSE events of one client: what it missed since `last` (or a `resync`, for an
    /// id no longer in the ring or from another epoch), then live events, filtered.
    /// Starts once the feed has its epoch.
    pub(crate) async fn stream(
        self: &Arc<Feed>,
        last: Option<EventId>,
        filter: Filter,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
        let mut ready = self.ready.clone();
        // Ends with an error when the pump stopped before it had an epoch: the stream is
        // then closed at once (`closed` is cancelled).
        let _ = ready.wait_for(|r| *r).await;
        let (rx, replay, resync, last_sent, epoch) = {
            let ring = self.ring();
            let rx = self.tx.subscribe();
            let head = ring.next - 1;
            match last {
                None => (rx, VecDeque::new(), false, head, ring.epoch),
                Some(l) => match Some(l)
                    .filter(|l| l.epoch == ring.epoch)
                    .and_then(|l| Feed::replay(&ring, l.seq))
                {
                    Some(r) => (rx, r, false, l.seq, ring.epoch),
                    None => (rx, VecDeque::new(), true, head, ring.epoch),
                },
            }
        };
        let state = Client {
            epoch,
            feed: self.clone(),
            rx,
            replay,
            resync: resync.then_some(last_sent),
            last_sent,
            filter,
        };
        futures::stream::unfold(state, |mut c| async move {
            let e = c.next().await?;
            Some((Ok(e), c))
        })
    }
}

struct Client {
    epoch: u64,
    feed: Arc<Feed>,
    rx: broadcast::Receiver<Item>,
    replay: VecDeque<Arc<Numbered>>,
    /// A `resync` to send first, with this id.
    resync: Option<u64>,
    last_sent: u64,
    filter: Filter,
}

impl Client {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(id) = self.resync.take() {
                return Some(resync_event(self.epoch, id));
            }
            if let Some(n) = self.replay.pop_front() {
                self.last_sent = n.seq;
                if self.filter.matches(&n.event) {
                    return Some(sse_event(self.epoch, &n));
                }
                continue;
            }
            let got = tokio::select! {
                biased;
                () = self.feed.closed.cancelled() => return None,
                got = self.rx.recv() => got,
            };
            match got {
                Ok(Item::Event(n)) => {
                    if n.seq <= self.last_sent {
                        continue;
                    }
                    self.last_sent = n.seq;
                    if self.filter.matches(&n.event) {
                        return Some(sse_event(self.epoch, &n));
                    }
                }
                Ok(Item::Gap(id)) => {
                    self.last_sent = id;
                    return Some(resync_event(self.epoch, id));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // This client's buffer overflowed: catch up from the ring if it still
                    // holds what was missed, otherwise resync.
                    let ring = self.feed.ring();
                    match Feed::replay(&ring, self.last_sent) {
                        Some(r) => self.replay = r,
                        None => {
                            self.last_sent = ring.next - 1;
                            self.resync = Some(self.last_sent);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn resync_event(epoch: u64, seq: u64) -> SseEvent {
    SseEvent::default()
        .event("resync")
        .id(EventId { epoch, seq }.to_string())
        .data(r#"{"reason":"events were missed; reload the snapshots"}"#)
}

fn sse_event(epoch: u64, n: &Numbered) -> SseEvent {
    let e = &n.event;
    let mut body = serde_json::json!({
        "epoch": epoch,
        "seq": n.seq,
        "id": e.id,
        "run": e.run,
        "root": e.root,
        "kind": kind_name(&e.kind),
    });
    match &e.kind {
        EventKind::State { state } => body["state"] = serde_json::json!(state),
        EventKind::Progress(p) => body["progress"] = serde_json::json!(p),
        EventKind::Log(l) => body["log"] = serde_json::json!(l),
        _ => {}
    }
    SseEvent::default()
        .event(kind_name(&e.kind))
        .id(EventId { epoch, seq: n.seq }.to_string())
        .data(body.to_string())
}

/// The id of an event of the admin's live stream: `<epoch>-<seq>` as text (the SSE `id:`
/// and what a client sends back as `Last-Event-ID`). Ordered by epoch, then sequence:
/// ids grow within a feed and from one feed to the next on the same store, restarts
/// included. A plain number (the ids of earlier versions) reads as epoch 0, which no
/// feed has: it gets a `resync`.
///
/// # Examples
///
/// ```
/// use procession::admin::EventId;
/// let a: EventId = "7-120".parse().unwrap();
/// let b: EventId = "8-1".parse().unwrap();
/// assert!(a < b, "a later epoch is later");
/// assert_eq!((a.epoch(), a.seq()), (7, 120));
/// assert_eq!(a.to_string(), "7-120");
/// assert!("x".parse::<EventId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    epoch: u64,
    seq: u64,
}

impl EventId {
    /// The feed's epoch: taken from the store when the admin starts, greater than every
    /// earlier feed's on the same store.
    ///
    /// ```
    /// # use procession::admin::EventId;
    /// assert_eq!("3-9".parse::<EventId>().unwrap().epoch(), 3);
    /// ```
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The event's position in its feed, from 1 (0: no event yet).
    ///
    /// ```
    /// # use procession::admin::EventId;
    /// assert_eq!("3-9".parse::<EventId>().unwrap().seq(), 9);
    /// ```
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// Text that is not an event id.
///
/// ```
/// # use procession::admin::EventId;
/// let err = "abc".parse::<EventId>().unwrap_err();
/// assert!(err.to_string().contains("abc"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an event id (`<epoch>-<seq>`)")]
pub struct EventIdError(String);

impl std::str::FromStr for EventId {
    type Err = EventIdError;

    fn from_str(s: &str) -> Result<EventId, EventIdError> {
        let t = s.trim();
        let bad = || EventIdError(s.to_owned());
        let number = |x: &str| {
            (!x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
                .then(|| x.parse::<u64>().ok())
                .flatten()
        };
        match t.split_once('-') {
            Some((e, q)) => Ok(EventId {
                epoch: number(e).ok_or_else(bad)?,
                seq: number(q).ok_or_else(bad)?,
            }),
            None => Ok(EventId {
                epoch: 0,
                seq: number(t).ok_or_else(bad)?,
            }),
        }
    }
}
