//! The live event feed: one pump numbers the runtime's events in their one order and
//! keeps the latest in a bounded ring; each SSE client reads from its own bounded
//! buffer and replays from the ring after a reconnect or an overflow.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::response::sse::Event as SseEvent;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
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
    buf: VecDeque<Arc<Numbered>>,
    cap: usize,
    /// The id the next event gets.
    next: u64,
    /// A client whose last id is at least `floor - 1` can be replayed without a gap.
    floor: u64,
}

pub(crate) struct Feed {
    ring: Mutex<Ring>,
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
        let feed = Arc::new(Feed {
            ring: Mutex::new(Ring {
                buf: VecDeque::with_capacity(cfg.replay_buffer.min(4096)),
                cap: cfg.replay_buffer,
                next: 1,
                floor: 1,
            }),
            tx,
            closed: CancellationToken::new(),
        });
        let mut events = rt.subscribe();
        let pump = feed.clone();
        tokio::spawn(async move {
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

    pub(crate) fn last_seq(&self) -> u64 {
        self.ring().next - 1
    }

    pub(crate) fn close(&self) {
        self.closed.cancel();
    }

    /// The events after `last` still in the ring, or `None` when some are gone (or
    /// `last` was never given out here).
    fn replay(ring: &Ring, last: u64) -> Option<VecDeque<Arc<Numbered>>> {
        if last >= ring.next || last + 1 < ring.floor {
            return None;
        }
        Some(ring.buf.iter().filter(|n| n.seq > last).cloned().collect())
    }

    /// The SSE events of one client: what it missed since `last` (or a `resync`), then
    /// live events, filtered.
    pub(crate) fn stream(
        self: &Arc<Feed>,
        last: Option<u64>,
        filter: Filter,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
        let (rx, replay, resync, last_sent) = {
            let ring = self.ring();
            let rx = self.tx.subscribe();
            let head = ring.next - 1;
            match last {
                None => (rx, VecDeque::new(), false, head),
                Some(l) => match Feed::replay(&ring, l) {
                    Some(r) => (rx, r, false, l),
                    None => (rx, VecDeque::new(), true, head),
                },
            }
        };
        let state = Client {
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
                return Some(resync_event(id));
            }
            if let Some(n) = self.replay.pop_front() {
                self.last_sent = n.seq;
                if self.filter.matches(&n.event) {
                    return Some(sse_event(&n));
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
                        return Some(sse_event(&n));
                    }
                }
                Ok(Item::Gap(id)) => {
                    self.last_sent = id;
                    return Some(resync_event(id));
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

fn resync_event(id: u64) -> SseEvent {
    SseEvent::default()
        .event("resync")
        .id(id.to_string())
        .data(r#"{"reason":"events were missed; reload the snapshots"}"#)
}

fn sse_event(n: &Numbered) -> SseEvent {
    let e = &n.event;
    let mut body = serde_json::json!({
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
        .id(n.seq.to_string())
        .data(body.to_string())
}
