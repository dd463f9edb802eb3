//! The outbox: notifications of run ends waiting to be delivered, delivered, or given up
//! on, and the state of the channels they go to (plain data; the delivery itself is the
//! `notify` layer's).
//!
//! A delivery is written in the same atomic write as the end of its run
//! ([`Store::update_enqueue`](super::Store::update_enqueue)), so a crash between the end
//! and the delivery never loses it. A worker [claims](super::Store::claim_deliveries) due
//! deliveries with a lease (a fencing token that only grows, and an expiry after which
//! another worker may claim them again), sends them, and settles each with a
//! compare-and-swap that checks the token: a worker that lost its lease changes nothing.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

/// Where a [`Delivery`] stands.
///
/// # Examples
///
/// ```
/// use procession::store::DeliveryState;
/// assert_eq!(DeliveryState::Failed.to_string(), "failed");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt (or being attempted, when it has an owner).
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up: every attempt of the retry schedule failed, the channel was disabled
    /// (HTTP 410) or is not configured. Listable and replayable.
    Failed,
}

impl DeliveryState {
    /// Every state, in the order listings use.
    pub const ALL: [DeliveryState; 3] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
    ];

    /// The one-byte tag of the state in index keys.
    pub(crate) fn tag(self) -> u8 {
        match self {
            DeliveryState::Pending => 0,
            DeliveryState::Delivered => 1,
            DeliveryState::Failed => 2,
        }
    }
}

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        })
    }
}

/// One attempt of a [`Delivery`], as kept in its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeliveryAttempt {
    /// When it started (ms since the Unix epoch).
    pub at: u64,
    /// How long it took, in ms.
    pub took_ms: u64,
    /// The HTTP status (webhook) or SMTP reply code (e-mail), when the receiver answered.
    pub status: Option<u16>,
    /// Why it failed (`None` when it succeeded).
    pub error: Option<String>,
}

impl DeliveryAttempt {
    /// An attempt started `at`, that took `took_ms`, answered `status`, failed with `error`.
    pub fn new(at: u64, took_ms: u64, status: Option<u16>, error: Option<String>) -> Self {
        DeliveryAttempt {
            at,
            took_ms,
            status,
            error,
        }
    }
}

/// At most this many attempts are kept in a delivery's history (the oldest go first).
pub const MAX_ATTEMPT_HISTORY: usize = 20;

/// A notification of one run's end to one channel.
///
/// # Examples
///
/// ```
/// use procession::store::{Delivery, DeliveryState, MemoryStore, Store};
/// let store = MemoryStore::new();
/// let d = Delivery::new("msg_1", "ops", "job-1", "job", r#"{"status":"failed"}"#, 1_000);
/// assert_eq!(d.state, DeliveryState::Pending);
/// assert!(store.delivery("msg_1").unwrap().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Delivery {
    /// Unique id, stable across attempts: sent as the `webhook-id` header, the key a
    /// receiver deduplicates on.
    pub id: String,
    /// The channel's name (as configured on the runtime).
    pub channel: String,
    /// The run's process record id.
    pub run: String,
    /// The run's process type.
    pub process: String,
    /// The run's token (tells this run of the record from later ones; 0 when unknown).
    #[serde(default)]
    pub run_token: u64,
    /// The body: the notification's JSON, rendered once when the run ended.
    pub payload: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// When it was written (ms since the Unix epoch).
    pub created_at: u64,
    /// When it is due next (ms since the Unix epoch); while claimed, when the claim
    /// expires.
    pub next_at: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// The worker holding the claim, while an attempt is under way.
    pub owner: Option<String>,
    /// The fencing token of the last claim: every claim raises it, and a settle that
    /// carries an older one changes nothing.
    pub lease: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered (ms since the Unix epoch).
    pub delivered_at: Option<u64>,
    /// The last attempts, oldest first (at most [`MAX_ATTEMPT_HISTORY`]).
    pub history: Vec<DeliveryAttempt>,
}

impl Delivery {
    /// A pending delivery of `payload` for run `run` (of process type `process`) to
    /// `channel`, due at once.
    pub fn new(
        id: impl Into<String>,
        channel: impl Into<String>,
        run: impl Into<String>,
        process: impl Into<String>,
        payload: impl Into<String>,
        now_ms: u64,
    ) -> Delivery {
        Delivery {
            id: id.into(),
            channel: channel.into(),
            run: run.into(),
            process: process.into(),
            run_token: 0,
            payload: payload.into(),
            state: DeliveryState::Pending,
            created_at: now_ms,
            next_at: now_ms,
            attempts: 0,
            owner: None,
            lease: 0,
            last_error: None,
            delivered_at: None,
            history: Vec::new(),
        }
    }

    /// Adds `attempt` to the history, dropping the oldest beyond the bound.
    pub fn record_attempt(&mut self, attempt: DeliveryAttempt) {
        self.history.push(attempt);
        if self.history.len() > MAX_ATTEMPT_HISTORY {
            let extra = self.history.len() - MAX_ATTEMPT_HISTORY;
            self.history.drain(..extra);
        }
    }

    /// Whether a claim at `now_ms` may take it: pending and due (an expired claim is due).
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.state == DeliveryState::Pending && self.next_at <= now_ms
    }
}

/// What a delivery update function decides.
#[derive(Debug)]
pub enum DeliveryUpdate {
    /// Write this delivery.
    Put(Box<Delivery>),
    /// Delete it.
    Delete,
    /// Change nothing.
    Keep,
}

/// The persisted state of a channel: whether a receiver switched it off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChannelState {
    /// When it was disabled (ms since the Unix epoch).
    pub disabled_at: u64,
    /// Why (e.g. "the receiver answered 410 Gone").
    pub reason: String,
}

impl ChannelState {
    /// A channel disabled at `at` for `reason`.
    pub fn disabled(at: u64, reason: impl Into<String>) -> Self {
        ChannelState {
            disabled_at: at,
            reason: reason.into(),
        }
    }
}

/// A position in a listing of deliveries: the ones strictly after it come next.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeliveryCursor {
    /// The state of the last delivery seen.
    pub state: DeliveryState,
    /// Its creation time.
    pub created_at: u64,
    /// Its id.
    pub id: String,
}

/// Which deliveries to list, and which page.
///
/// Results come grouped by state (pending, delivered, failed), each group ordered by
/// creation time, then id.
///
/// # Examples
///
/// ```
/// use procession::store::{DeliveryQuery, DeliveryState, MemoryStore, Store};
/// let store = MemoryStore::new();
/// let page = store.deliveries(&DeliveryQuery::new().state(DeliveryState::Failed).limit(20)).unwrap();
/// assert!(page.deliveries.is_empty() && page.next.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryQuery {
    /// Only deliveries in one of these states (any when empty).
    pub states: Vec<DeliveryState>,
    /// Only the deliveries of this run.
    pub run: Option<String>,
    /// Only the deliveries to this channel.
    pub channel: Option<String>,
    /// Start after this position.
    pub after: Option<DeliveryCursor>,
    /// At most this many (all when `None`).
    pub limit: Option<usize>,
}

impl DeliveryQuery {
    /// Every delivery.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a state to match.
    #[must_use]
    pub fn state(mut self, state: DeliveryState) -> Self {
        self.states.push(state);
        self
    }

    /// Only the deliveries of run `run`.
    #[must_use]
    pub fn run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }

    /// Only the deliveries to channel `channel`.
    #[must_use]
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// Start after `cursor` (the `next` of the previous page).
    #[must_use]
    pub fn after(mut self, cursor: Option<DeliveryCursor>) -> Self {
        self.after = cursor;
        self
    }

    /// At most `n`.
    #[must_use]
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Whether `d` meets the conditions that are not answered by the state index.
    pub fn matches(&self, d: &Delivery) -> bool {
        self.run.as_ref().is_none_or(|r| &d.run == r)
            && self.channel.as_ref().is_none_or(|c| &d.channel == c)
    }
}

/// One page of deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryPage {
    /// The deliveries.
    pub deliveries: Vec<Delivery>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<DeliveryCursor>,
}

// ------------------------------------------------------------------ index keys (shared)

/// Listing index key: state tag, creation time, id.
pub(crate) fn state_key(d: &Delivery) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + d.id.len());
    k.push(d.state.tag());
    k.extend_from_slice(&d.created_at.to_be_bytes());
    k.extend_from_slice(d.id.as_bytes());
    k
}

/// Due index key (pending deliveries only): due time, id.
pub(crate) fn due_key(d: &Delivery) -> Option<Vec<u8>> {
    (d.state == DeliveryState::Pending).then(|| {
        let mut k = Vec::with_capacity(8 + d.id.len());
        k.extend_from_slice(&d.next_at.to_be_bytes());
        k.extend_from_slice(d.id.as_bytes());
        k
    })
}

/// The id in a due key.
pub(crate) fn id_of_due(key: &[u8]) -> Option<&str> {
    key.get(8..).and_then(|b| std::str::from_utf8(b).ok())
}

/// The due time in a due key.
pub(crate) fn time_of_due(key: &[u8]) -> Option<u64> {
    key.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// The id in a state key.
pub(crate) fn id_of_state(key: &[u8]) -> Option<&str> {
    key.get(9..).and_then(|b| std::str::from_utf8(b).ok())
}

/// The range of the state index to scan for `state`, after `cursor`.
pub(crate) fn state_range(
    state: DeliveryState,
    after: Option<&DeliveryCursor>,
) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let tag = state.tag();
    let start = match after {
        Some(c) if c.state == state => {
            let mut k = vec![tag];
            k.extend_from_slice(&c.created_at.to_be_bytes());
            k.extend_from_slice(c.id.as_bytes());
            Bound::Excluded(k)
        }
        _ => Bound::Included(vec![tag]),
    };
    (start, Bound::Excluded(vec![tag + 1]))
}

/// The states a listing visits, in order, from its cursor on.
pub(crate) fn states_to_scan(query: &DeliveryQuery) -> Vec<DeliveryState> {
    DeliveryState::ALL
        .into_iter()
        .filter(|s| query.states.is_empty() || query.states.contains(s))
        .filter(|s| query.after.as_ref().is_none_or(|c| *s >= c.state))
        .collect()
}

/// Gathers one page of a listing: the store offers deliveries in listing order (the
/// states of [`states_to_scan`], each scanned over [`state_range`]) until it says stop.
pub(crate) struct Pager<'q> {
    query: &'q DeliveryQuery,
    out: Vec<Delivery>,
    next: Option<DeliveryCursor>,
}

impl<'q> Pager<'q> {
    pub(crate) fn new(query: &'q DeliveryQuery) -> Self {
        Pager {
            query,
            out: Vec::new(),
            next: None,
        }
    }

    /// Takes `d` if it matches; false once the page is full (stop scanning).
    pub(crate) fn offer(&mut self, d: Delivery) -> bool {
        if !self.query.matches(&d) {
            return true;
        }
        if self.out.len() == self.query.limit.unwrap_or(usize::MAX) {
            self.next = self.out.last().map(|l| DeliveryCursor {
                state: l.state,
                created_at: l.created_at,
                id: l.id.clone(),
            });
            return false;
        }
        self.out.push(d);
        true
    }

    pub(crate) fn finish(self) -> DeliveryPage {
        DeliveryPage {
            deliveries: self.out,
            next: self.next,
        }
    }
}
