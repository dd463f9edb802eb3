//! The admin HTTP API (cargo feature `admin`): records, runs and their graphs as JSON,
//! optio's remote-control verbs with typed refusals, and a live event stream over SSE
//! that resumes from `Last-Event-ID`.
//!
//! Mount [`router`] into your own axum app, or let [`serve`] listen on an address.
//!
//! # Routes
//!
//! | Method and path | What |
//! |---|---|
//! | `GET /api/health` | `{"ok": true, "subscribers": n}` |
//! | `GET /api/processes` | the registered process types |
//! | `GET /api/runs?state=&process=&root=&parent=&meta.KEY=&from=&until=&after=&limit=&count=&order=` | one page of process records (keyset: pass `next` back as `after`; `limit` ≤ 500; times in ms since the Unix epoch; `count=true` adds `total`; `order=oldest` (the default) or `order=newest` (newest first; `next` then continues below)) |
//! | `GET /api/runs/{id}` | a record with its tasks (state, attempts, timing, progress, log, result or error with its chain) |
//! | `GET /api/runs/{id}/graph` | the run's graph: nodes with state, edges, and which failure skipped which task |
//! | `POST /api/runs` | launch a [`LaunchSpec`](crate::LaunchSpec) (`{"process": "...", "params": {...}, "id": ...}`) |
//! | `POST /api/runs/{id}/launch` · `/cancel` · `/dismiss` | launch an existing record, cancel, dismiss |
//! | `POST /api/runs/{id}/block` (`{"reason": "..."}`) · `/unblock` | block or unblock its launches (kept in the store) |
//! | `POST /api/resync` | resync the definitions: `{"ok": true, "created": [ids], "updated": [ids], "deleted": [ids], "cancelled": [ids], "abandoned": [ids], "kept_active": [ids]}` (see [`ResyncReport`](crate::ResyncReport); waits up to the runtime's resync grace for the runs of records no longer defined) |
//! | `POST /api/cancel` (`{"filter": {...}, "preview": true, "wait_ms": 5000}`) | cancel by filter: a preview count, a cancel, or a cancel that waits until every match has ended |
//! | `GET /api/events?run=&root=&kind=state,progress,log` | live events (SSE) |
//! | `GET /api/deliveries?state=&run=&channel=&after=&limit=` | one page of notification deliveries (keyset, as `/api/runs`; grouped by state: pending, delivered, failed) |
//! | `GET /api/deliveries/{id}` | a delivery with its attempts and payload |
//! | `POST /api/deliveries/{id}/replay` | send a delivered or failed delivery again (`delivery-pending` for a pending one, `channel-disabled` while its channel is disabled) |
//! | `GET /api/channels` · `GET /api/channels/{name}` | the notification channels: kind, enabled, and why a receiver disabled one |
//! | `POST /api/channels/{name}/enable` | enable a channel a receiver disabled (HTTP 410) |
//! | `GET /api/workers` | the workers sharing the store (id, host, pid, version, start, last heartbeat) and which one answers |
//! | `GET /` · `/ui/runs/{id}` · `/ui/launch` | the dashboard: pages, script and styles embedded in the binary, fed by the routes above (mount the router at the root of its origin) |
//!
//! Ids are path segments: percent-encode a `/` in an id (`a%2Fb`).
//!
//! Every error is `{"error": {"code": "...", "message": "...", "status": 409}}` with a
//! 4xx status for anything the caller can fix; the codes are optio's refusal reasons
//! where they exist (`not-found`, `not-cancellable`, `launch-blocked`, …).
//!
//! # Live events
//!
//! Every event carries an `id:` ([`EventId`], `<epoch>-<seq>`): its position in the
//! runtime's event order, counted from 1 by this admin instance, after an epoch the admin
//! takes from the store when it starts (the store's persisted counter, which only grows):
//! ids grow within an instance and from one instance to the next on the same store,
//! across restarts of the runtime or of the admin. A client that reconnects with
//! `Last-Event-ID` gets exactly the events it missed, replayed from a bounded buffer
//! ([`AdminConfig::replay_buffer`]); when they are no longer there, or its id is from
//! another instance (before a restart), it gets one `resync` event instead: reload the
//! snapshots. A slow client
//! never slows the runtime: its own buffer ([`AdminConfig::client_buffer`]) overflows,
//! it catches up from the replay buffer, or gets a `resync`. The feed itself reads the
//! runtime's event bus; a burst larger than the bus
//! ([`RuntimeBuilder::event_buffer`](crate::RuntimeBuilder::event_buffer), 16,384 events by
//! default) while the feed is starved of CPU makes every client resync. Comments keep the stream
//! alive ([`AdminConfig::keep_alive`]); the response says `X-Accel-Buffering: no` (behind
//! nginx, also set `proxy_buffering off`).
//!
//! # Security
//!
//! - [`serve`] refuses a non-loopback address unless a token is configured
//!   ([`AdminError::PublicWithoutToken`]).
//! - With a token ([`AdminConfig::token`]) every request needs `Authorization: Bearer
//!   <token>`. Without one, only requests whose `Host` is a loopback name are served (a
//!   defence against DNS rebinding).
//! - Mutations (`POST`) from a browser must carry `X-Procession-Csrf: 1` (a header a
//!   cross-site page cannot send without a CORS preflight, which is never granted); a
//!   request marked `Sec-Fetch-Site: cross-site` is refused outright.
//! - [`AdminConfig::read_only`] refuses every mutation.
//! - Bodies over [`AdminConfig::body_limit`] get 413; every response has `Cache-Control:
//!   no-store`, `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
//!   `Referrer-Policy: no-referrer` and a `Content-Security-Policy` that allows nothing
//!   (on the dashboard's pages: scripts, styles and connections of the same origin only).
//!
//! # Examples
//!
//! ```
//! use procession::admin::{self, AdminConfig};
//! use procession::prelude::*;
//! #[task] fn ping() {}
//! #[process] fn health(p: &mut Builder) { p.task(Ping::new()); }
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = Runtime::in_memory().register::<Health>().start().await?;
//! // Mount it under your own app...
//! let app: axum::Router = admin::router(rt.clone(), AdminConfig::default());
//! # drop(app);
//! // ...or serve it (loopback only without a token).
//! let server = admin::serve(rt, AdminConfig::default(), ([127, 0, 0, 1], 0).into()).await?;
//! println!("admin API on http://{}", server.local_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod api;
mod error;
mod feed;

pub use feed::{EventId, EventIdError};
mod guard;
mod ui;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::runtime::Runtime;

pub use error::{AdminError, ApiError};

/// Settings of the admin API.
///
/// # Examples
///
/// ```
/// use procession::admin::AdminConfig;
/// let cfg = AdminConfig::default().token("s3cret").read_only(true);
/// assert!(cfg.is_read_only());
/// ```
#[derive(Clone)]
pub struct AdminConfig {
    pub(crate) token: Option<String>,
    pub(crate) read_only: bool,
    pub(crate) body_limit: usize,
    pub(crate) keep_alive: Duration,
    pub(crate) replay_buffer: usize,
    pub(crate) client_buffer: usize,
    /// Where task log files are written (cargo feature `logs`): each task of `GET
    /// /api/runs/{id}` then says its `log_file`.
    #[cfg(feature = "logs")]
    pub(crate) log_files: Option<crate::logs::TaskLogLayer>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("read_only", &self.read_only)
            .field("body_limit", &self.body_limit)
            .field("keep_alive", &self.keep_alive)
            .field("replay_buffer", &self.replay_buffer)
            .field("client_buffer", &self.client_buffer)
            .finish_non_exhaustive()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: None,
            read_only: false,
            body_limit: 64 * 1024,
            keep_alive: Duration::from_secs(15),
            replay_buffer: 10_000,
            client_buffer: 1024,
            #[cfg(feature = "logs")]
            log_files: None,
        }
    }
}

impl AdminConfig {
    /// Requires `Authorization: Bearer <token>` on every request (and allows
    /// [`serve`] on a non-loopback address).
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Refuses every mutation (`403`, code `read-only`).
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Whether mutations are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The largest request body accepted, in bytes (default 64 KiB; `413` beyond).
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How often an idle event stream sends a keep-alive comment (default 15 s).
    #[must_use]
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every.max(Duration::from_millis(10));
        self
    }

    /// How many recent events are kept for clients that reconnect with
    /// `Last-Event-ID` (default 10,000; at least 1).
    #[must_use]
    pub fn replay_buffer(mut self, events: usize) -> Self {
        self.replay_buffer = events.max(1);
        self
    }

    /// How many events may wait for one slow client before it falls back to the replay
    /// buffer or a `resync` (default 1024; at least 1).
    #[must_use]
    pub fn client_buffer(mut self, events: usize) -> Self {
        self.client_buffer = events.max(1);
        self
    }

    /// The log-file layer installed in the application's subscriber (cargo feature
    /// `logs`): each task shown by `GET /api/runs/{id}` then carries its `log_file`, the
    /// path its lines are written to ([`TaskLogLayer::file_of`](crate::logs::TaskLogLayer::file_of)).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::admin::AdminConfig;
    /// use procession::logs::TaskLogLayer;
    /// let logs = TaskLogLayer::per_task("/var/log/procession");
    /// // install `logs.clone()` in the subscriber, then:
    /// let cfg = AdminConfig::default().log_files(logs);
    /// # drop(cfg);
    /// ```
    #[cfg(feature = "logs")]
    #[must_use]
    pub fn log_files(mut self, layer: crate::logs::TaskLogLayer) -> Self {
        self.log_files = Some(layer);
        self
    }
}

pub(crate) struct Shared {
    pub(crate) rt: Runtime,
    pub(crate) cfg: AdminConfig,
    pub(crate) feed: Arc<feed::Feed>,
    /// Stops the feed's pump when the last router or server goes.
    _pump: DropGuard,
}

/// The admin API of one runtime: its routes and its live event feed. Cheap to clone.
///
/// [`router`] and [`serve`] are shorthands; keep an `Admin` to read
/// [`subscribers`](Admin::subscribers).
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("config", &self.shared.cfg)
            .field("subscribers", &self.subscribers())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// The admin API of `rt`. Starts following the runtime's events at once (ids count
    /// from here, in a new epoch the feed takes from the store), so call it inside a
    /// tokio runtime.
    pub fn new(rt: Runtime, cfg: AdminConfig) -> Admin {
        let stop = CancellationToken::new();
        let feed = feed::Feed::start(&rt, &cfg, stop.clone());
        Admin {
            shared: Arc::new(Shared {
                rt,
                cfg,
                feed,
                _pump: stop.drop_guard(),
            }),
        }
    }

    /// The routes, to mount in an axum app (`Router::nest("/admin", …)` works too), with
    /// the dashboard's pages under `/` and `/ui/...`.
    pub fn router(&self) -> axum::Router {
        api::routes(self.shared.clone()).merge(ui::routes(self.shared.clone()))
    }

    /// Live event-stream clients connected now (a client that disconnects is counted
    /// out as soon as the server notices).
    pub fn subscribers(&self) -> usize {
        self.shared.feed.subscribers()
    }

    /// The id of the newest event seen so far (sequence 0 before the first; epoch 0
    /// until the feed has its epoch from the store, a moment after [`Admin::new`]).
    pub fn last_event_id(&self) -> EventId {
        self.shared.feed.last_id()
    }

    /// Listens on `addr` and serves the API until [`Server::shutdown`].
    ///
    /// # Errors
    ///
    /// [`AdminError::PublicWithoutToken`] for a non-loopback address without a token;
    /// [`AdminError::Bind`] when the address cannot be bound.
    pub async fn serve(self, addr: SocketAddr) -> Result<Server, AdminError> {
        if !addr.ip().is_loopback() && self.shared.cfg.token.is_none() {
            return Err(AdminError::PublicWithoutToken { addr });
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let stop = CancellationToken::new();
        let app = self.router();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { signal.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the admin API server stopped");
            }
        });
        tracing::info!(addr = %local, "admin API listening");
        Ok(Server {
            addr: local,
            admin: self,
            stop,
            task,
        })
    }
}

/// A task row in the shape `GET /api/runs/{id}` gives it (the `tasks` entries, without
/// `log_file`): what a tool that reads a store directly prints to look like the API.
/// A stored result that is not JSON comes out as `{"damaged": "<text>"}`.
///
/// # Examples
///
/// ```
/// use procession::admin::task_json;
/// use procession::store::TaskRow;
/// let row: TaskRow = serde_json::from_value(serde_json::json!({
///     "task": "fetch_orders", "node": "fetch", "state": "done", "attempts": 1,
///     "started_at": 1, "ended_at": 2, "elapsed_ns": 1_000_000, "skipped": false,
///     "error": null, "result": "42",
/// })).unwrap();
/// let v = task_json(0, &row);
/// assert_eq!(v["node"], "fetch");
/// assert_eq!(v["state"], "done");
/// assert_eq!(v["result"], 42);
/// ```
pub fn task_json(index: u32, row: &crate::store::TaskRow) -> serde_json::Value {
    let result = row.result.as_deref().map(|t| {
        serde_json::from_str::<serde_json::Value>(t)
            .unwrap_or_else(|_| serde_json::json!({ "damaged": t }))
    });
    serde_json::json!({
        "index": index,
        "node": row.node,
        "task": row.task,
        "state": row.state,
        "skipped": row.skipped,
        "attempts": row.attempts,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
        "elapsed_ms": row.elapsed_ns / 1_000_000,
        "progress": row.progress,
        "error": row.error,
        "chain": row.chain,
        "log": row.log,
        "result": result,
    })
}

/// The routes of `rt`'s admin API, to mount in your own axum app.
///
/// See the [module documentation](self) for routes and security, and [`Admin`] to also
/// read the event stream's subscriber count.
pub fn router(rt: Runtime, cfg: AdminConfig) -> axum::Router {
    Admin::new(rt, cfg).router()
}

/// Serves `rt`'s admin API on `addr` (port 0 picks a free one; see
/// [`Server::local_addr`]).
///
/// # Errors
///
/// As [`Admin::serve`].
pub async fn serve(rt: Runtime, cfg: AdminConfig, addr: SocketAddr) -> Result<Server, AdminError> {
    Admin::new(rt, cfg).serve(addr).await
}

/// A running admin API server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    admin: Admin,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its [`Admin`] (subscriber count, last event id).
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// Stops accepting connections and waits for the open ones to end (event streams are
    /// ended by the shutdown).
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.admin.shared.feed.close();
        let _ = self.task.await;
    }
}
