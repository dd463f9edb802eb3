//! The runtime's side of notifications: which deliveries a run's end writes, and the
//! worker that claims, sends and settles them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::{Channel, DeliveryOptions};
use super::error::{ConfigError, DeliveryError};
use super::payload::Notification;
use crate::events::{Event, EventKind};
use crate::journal::WriterHandle;
use crate::record::{Level, ProcessRecord};
use crate::report::{RunReport, RunStatus};
use crate::store::{
    ChannelState, Delivery, DeliveryAttempt, DeliveryState, DeliveryUpdate, Store, StoreError,
    Update,
};

/// The channels of a runtime and how it delivers.
#[derive(Debug)]
pub(crate) struct Notifier {
    channels: Vec<Channel>,
    pub(crate) options: DeliveryOptions,
}

/// The bodies a run's end would write, rendered before its end is decided (a cancel
/// that wins the race changes the status: then they are rendered again).
pub(crate) struct Prepared {
    notification: Notification,
    bodies: Vec<(usize, String)>,
}

impl Notifier {
    pub(crate) fn new(
        channels: Vec<Channel>,
        options: DeliveryOptions,
    ) -> Result<Notifier, ConfigError> {
        let mut seen = HashSet::new();
        for c in &channels {
            if !seen.insert(c.name.as_str()) {
                return Err(ConfigError::DuplicateChannel {
                    name: c.name.clone(),
                });
            }
        }
        Ok(Notifier { channels, options })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Every configured channel, in the order they were added.
    pub(crate) fn channels(&self) -> &[Channel] {
        &self.channels
    }

    pub(crate) fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    fn bodies(
        &self,
        rec: &ProcessRecord,
        report: &RunReport,
        n: &Notification,
    ) -> Vec<(usize, String)> {
        self.channels
            .iter()
            .enumerate()
            .filter(|(_, c)| c.wants(rec, report))
            .map(|(i, c)| (i, c.body(n)))
            .collect()
    }

    /// Renders the bodies of `report`'s end for every channel that wants it; `None`
    /// when none does (another end status would not add one: a cancel that wins only
    /// takes away the runs `only_failed_runs` wanted).
    pub(crate) fn prepare(&self, rec: &ProcessRecord, report: &RunReport) -> Option<Prepared> {
        if !self.channels.iter().any(|c| c.wants(rec, report)) {
            return None;
        }
        let notification = Notification::from_report(report, Some(rec));
        let bodies = self.bodies(rec, report, &notification);
        Some(Prepared {
            notification,
            bodies,
        })
    }

    /// The deliveries of a run of `rec` that ended `status`, written with its end.
    pub(crate) fn deliveries(
        &self,
        prepared: &Prepared,
        rec: &ProcessRecord,
        status: RunStatus,
        now_ms: u64,
    ) -> Vec<Delivery> {
        let rendered;
        let (n, bodies) = if status == prepared.notification.status() {
            (&prepared.notification, &prepared.bodies)
        } else {
            let n = prepared.notification.clone().with_status(status);
            let b = self.bodies(rec, n.report(), &n);
            rendered = (n, b);
            (&rendered.0, &rendered.1)
        };
        bodies
            .iter()
            .map(|(i, body)| {
                let c = &self.channels[*i];
                let mut d = Delivery::new(
                    format!("msg_{}_{}", n.event_key(), c.name),
                    c.name.clone(),
                    rec.id.clone(),
                    rec.process_type.clone(),
                    body.clone(),
                    now_ms,
                );
                d.run_token = rec.run.as_ref().map_or(0, |m| m.token);
                // The schedule's first delay comes before the first attempt.
                let first = self.options.schedule.delay(0).unwrap_or_default();
                d.next_at =
                    now_ms.saturating_add(u64::try_from(first.as_millis()).unwrap_or(u64::MAX));
                d
            })
            .collect()
    }
}

/// What the worker needs.
struct Ctx {
    notifier: Arc<Notifier>,
    store: Arc<dyn Store>,
    writer: WriterHandle,
    owner: String,
    now: Arc<dyn Fn() -> u64 + Send + Sync>,
}

/// A running delivery worker: wake it when deliveries may be due, stop it at shutdown.
pub(crate) struct Worker {
    wake: Arc<Notify>,
    stop: CancellationToken,
    done: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// A runtime dropped without a shutdown stops its worker too.
    _on_drop: tokio_util::sync::DropGuard,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the worker of `notifier` over `store`, writing through `writer` as
    /// `owner`; `now` is the runtime's clock (ms since the Unix epoch).
    pub(crate) fn spawn(
        notifier: Arc<Notifier>,
        store: Arc<dyn Store>,
        writer: WriterHandle,
        owner: String,
        now: Arc<dyn Fn() -> u64 + Send + Sync>,
        grace: Duration,
    ) -> Worker {
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let ctx = Arc::new(Ctx {
            notifier,
            store,
            writer,
            owner,
            now,
        });
        let done = tokio::spawn(run(ctx, wake.clone(), stop.clone(), grace));
        Worker {
            wake,
            _on_drop: stop.clone().drop_guard(),
            stop,
            done: Mutex::new(Some(done)),
        }
    }

    /// Deliveries may be due: look now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops claiming, lets attempts under way end within the grace period (the others
    /// are dropped: their claims expire and another start sends them), and returns once
    /// the worker has let go of the store.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        let done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(done) = done {
            let _ = done.await;
        }
    }
}

async fn read<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| StoreError::io("(store thread)", e))?
}

async fn run(ctx: Arc<Ctx>, wake: Arc<Notify>, stop: CancellationToken, grace: Duration) {
    let opts = ctx.notifier.options.clone();
    let mut inflight: JoinSet<()> = JoinSet::new();
    while !stop.is_cancelled() {
        while inflight.try_join_next().is_some() {}
        let free = opts.concurrency.saturating_sub(inflight.len());
        let now = (ctx.now)();
        let next = match read(&ctx.store, Store::next_delivery_at).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                None
            }
        };
        if free > 0 && next.is_some_and(|t| t <= now) {
            let owner = ctx.owner.clone();
            let lease = u64::try_from(opts.lease.as_millis()).unwrap_or(u64::MAX);
            match ctx
                .writer
                .op(move |s| Ok((s.claim_deliveries(&owner, now, lease, free)?, Vec::new())))
                .await
            {
                Ok(claimed) => {
                    let full = claimed.len() == free;
                    for d in claimed {
                        inflight.spawn(attempt(ctx.clone(), d));
                    }
                    if full {
                        continue; // more may be due
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot claim deliveries"),
            }
        }
        let now = (ctx.now)();
        let until = next
            .filter(|t| *t > now)
            .map_or(opts.poll, |t| Duration::from_millis(t - now))
            .min(opts.poll);
        tokio::select! {
            () = tokio::time::sleep(until) => {}
            () = wake.notified() => {}
            () = stop.cancelled() => {}
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
        }
    }
    // Attempts under way get the grace period; what is left is dropped, and its claims
    // expire.
    let deadline = tokio::time::Instant::now() + grace;
    while !inflight.is_empty() {
        if tokio::time::timeout_at(deadline, inflight.join_next())
            .await
            .is_err()
        {
            tracing::warn!(
                attempts = inflight.len(),
                "delivery attempts still under way at shutdown were dropped; they are retried when their claims expire"
            );
            inflight.abort_all();
            break;
        }
    }
}

/// One attempt of `d` (claimed by this worker), then its outcome written.
async fn attempt(ctx: Arc<Ctx>, d: Delivery) {
    let started = (ctx.now)();
    let t0 = Instant::now();
    let outcome = match ctx.notifier.channel(&d.channel) {
        None => Err(DeliveryError::UnknownChannel {
            name: d.channel.clone(),
        }),
        Some(c) => {
            let name = c.name.clone();
            match read(&ctx.store, move |s| s.channel_state(&name)).await {
                Ok(Some(state)) => Err(DeliveryError::ChannelDisabled {
                    name: c.name.clone(),
                    reason: state.reason,
                }),
                // A store that cannot say is no reason not to try.
                Ok(None) | Err(_) => c.deliver(&d.id, &d.payload).await,
            }
        }
    };
    let took = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    settle(&ctx, d, started, took, outcome).await;
}

async fn settle(
    ctx: &Ctx,
    d: Delivery,
    started: u64,
    took_ms: u64,
    outcome: Result<(), DeliveryError>,
) {
    let opts = &ctx.notifier.options;
    let now = (ctx.now)();
    let made = d.attempts.saturating_add(1);
    let (state, next_at) = match &outcome {
        Ok(()) => (DeliveryState::Delivered, now),
        Err(e) if !e.is_retryable() => (DeliveryState::Failed, now),
        Err(e) => match opts.next_delay(made) {
            None => (DeliveryState::Failed, now),
            Some(delay) => {
                let asked = e.retry_after().map(|r| r.min(opts.max_retry_after));
                let wait = asked.map_or(delay, |a| a.max(delay));
                let wait = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                (DeliveryState::Pending, now.saturating_add(wait))
            }
        },
    };
    let error = outcome.as_ref().err().map(ToString::to_string);
    let status = outcome.as_ref().err().and_then(DeliveryError::status);
    match (&outcome, state) {
        (Ok(()), _) => {
            tracing::info!(delivery = %d.id, channel = %d.channel, run = %d.run, attempt = made, "notification delivered");
        }
        (Err(e), DeliveryState::Pending) => {
            tracing::warn!(delivery = %d.id, channel = %d.channel, run = %d.run, attempt = made, error = %e, "notification attempt failed; retrying");
        }
        (Err(e), _) => {
            tracing::error!(delivery = %d.id, channel = %d.channel, run = %d.run, attempt = made, error = %e, "notification failed; giving up (replay it with `Runtime::replay_delivery`)");
        }
    }
    let disable = matches!(outcome, Err(DeliveryError::Gone));
    let record = DeliveryAttempt::new(started, took_ms, status, error.clone());
    let (id, lease, channel, run) = (d.id.clone(), d.lease, d.channel.clone(), d.run.clone());
    let run_token = d.run_token;
    let written = ctx
        .writer
        .op(move |store| {
            if disable {
                store.set_channel_state(
                    &channel,
                    Some(&ChannelState::disabled(
                        now,
                        "the receiver answered 410 Gone",
                    )),
                )?;
            }
            let mut applied = false;
            store.update_delivery(&id, &mut |cur| match cur {
                // Fenced: only the holder of the current claim writes the outcome.
                Some(c) if c.lease == lease && c.state == DeliveryState::Pending => {
                    let mut n = c.clone();
                    n.attempts = made;
                    n.owner = None;
                    n.state = state;
                    n.next_at = next_at;
                    if error.is_some() {
                        n.last_error.clone_from(&error);
                    }
                    if state == DeliveryState::Delivered {
                        n.delivered_at = Some(now);
                    }
                    n.record_attempt(record.clone());
                    applied = true;
                    DeliveryUpdate::Put(Box::new(n))
                }
                _ => {
                    applied = false;
                    DeliveryUpdate::Keep
                }
            })?;
            if applied && state == DeliveryState::Failed && run_token != 0 {
                // The run's own log says so too (unless the record has moved on to
                // another run).
                let note = format!(
                    "notification to `{channel}` failed after {made} attempt{}: {}",
                    if made == 1 { "" } else { "s" },
                    error.as_deref().unwrap_or("unknown error")
                );
                store.update(&run, &mut |cur| match cur {
                    Some(r) if r.run.as_ref().is_some_and(|m| m.token == run_token) => {
                        let mut r = r.clone();
                        r.push_log(Level::Warning, note.clone());
                        Update::Put(Box::new(r))
                    }
                    _ => Update::Keep,
                })?;
            }
            let events = if applied {
                vec![Event {
                    id: run.clone(),
                    run: run.clone(),
                    root: run.clone(),
                    kind: EventKind::Delivery {
                        delivery: id.clone(),
                        channel: channel.clone(),
                        attempts: made,
                        error: error.clone(),
                        settled: state != DeliveryState::Pending,
                    },
                }]
            } else {
                Vec::new()
            };
            Ok((applied, events))
        })
        .await;
    match written {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(delivery = %d.id, "the delivery's claim was taken over before its outcome was written; the outcome is dropped");
        }
        Err(e) => {
            tracing::error!(delivery = %d.id, error = %e, "cannot write a delivery's outcome; it is retried when its claim expires");
        }
    }
}

#[cfg(all(test, feature = "webhook"))]
mod tests {
    use super::*;
    use crate::notify::WebhookConfig;

    fn report(status: RunStatus) -> RunReport {
        RunReport {
            process: "job".into(),
            run_id: "job-1".into(),
            status,
            elapsed: Duration::from_millis(5),
            tasks: Vec::new(),
            handles: None,
        }
    }

    // A cancel that wins the race with a failed end: the deliveries say "cancelled",
    // and a channel of failed runs only gets none.
    #[test]
    fn a_cancel_that_wins_renders_again() {
        let hook = || WebhookConfig::new("http://127.0.0.1:9/").unwrap();
        let n = Notifier::new(
            vec![
                Channel::webhook("all", hook()).unwrap(),
                Channel::webhook("failures", hook())
                    .unwrap()
                    .only_failed_runs(),
            ],
            DeliveryOptions::default(),
        )
        .unwrap();
        let mut rec = ProcessRecord::new_root("job-1", "job", "job", "", serde_json::Value::Null);
        // Built from JSON so that fields added to `RunMeta` later do not break the test.
        rec.run = Some(
            serde_json::from_value(serde_json::json!({
                "token": 0xabc, "fingerprint": 0, "options": {}, "tasks": 0,
                "idempotency_key": null, "max_concurrency": null
            }))
            .unwrap(),
        );
        let prepared = n.prepare(&rec, &report(RunStatus::Failed)).unwrap();
        let as_failed = n.deliveries(&prepared, &rec, RunStatus::Failed, 7);
        assert_eq!(as_failed.len(), 2);
        assert_eq!(as_failed[0].id, "msg_0000000000000abc_all");
        assert_eq!(
            (as_failed[0].run_token, as_failed[0].created_at),
            (0xabc, 7)
        );
        let cancelled = n.deliveries(&prepared, &rec, RunStatus::Cancelled, 7);
        assert_eq!(cancelled.len(), 1);
        let body: serde_json::Value = serde_json::from_str(&cancelled[0].payload).unwrap();
        assert_eq!(
            (body["type"].as_str(), body["status"].as_str()),
            (Some("run.cancelled"), Some("cancelled"))
        );
        // No channel wants a succeeded run of another process type.
        let picky = Notifier::new(
            vec![Channel::webhook("p", hook()).unwrap().processes(["other"])],
            DeliveryOptions::default(),
        )
        .unwrap();
        assert!(picky.prepare(&rec, &report(RunStatus::Succeeded)).is_none());
        assert!(matches!(
            Notifier::new(
                vec![
                    Channel::webhook("x", hook()).unwrap(),
                    Channel::webhook("x", hook()).unwrap()
                ],
                DeliveryOptions::default()
            ),
            Err(ConfigError::DuplicateChannel { .. })
        ));
    }
}
