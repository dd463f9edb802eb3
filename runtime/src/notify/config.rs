//! What a channel is and which runs it hears about; how deliveries are retried.

use std::fmt;
#[cfg(any(feature = "webhook", feature = "email"))]
use std::sync::Arc;
use std::time::Duration;

use super::error::{ConfigError, DeliveryError};
use super::payload::{Content, Notification};
use crate::record::ProcessRecord;
use crate::report::{RunReport, RunStatus};

/// Where a channel sends.
#[derive(Clone)]
pub(crate) enum Transport {
    #[cfg(feature = "webhook")]
    Webhook(Arc<super::webhook::WebhookConfig>),
    #[cfg(feature = "email")]
    Email(Arc<super::email::EmailConfig>),
}

/// A notification channel: a name, a transport (webhook or e-mail), which runs it hears
/// about and how much of each report it gets.
///
/// The name identifies the channel in the store (deliveries name it, a disabled state is
/// kept under it): keep it stable across deploys. A delivery whose channel is no longer
/// configured fails with [`DeliveryError::UnknownChannel`] and can be replayed once it
/// is back.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "webhook")] fn main() -> Result<(), procession::notify::ConfigError> {
/// use procession::notify::{Channel, WebhookConfig};
/// let c = Channel::webhook("chat", WebhookConfig::new("http://127.0.0.1:9/hook")?)?
///     .only_failed_runs()
///     .touching(["load_orders"])
///     .only_errors();
/// assert_eq!(c.name(), "chat");
/// # Ok(()) }
/// # #[cfg(not(feature = "webhook"))] fn main() {}
/// ```
#[derive(Clone)]
pub struct Channel {
    pub(crate) name: String,
    pub(crate) transport: Transport,
    pub(crate) only_failed: bool,
    pub(crate) processes: Option<Vec<String>>,
    pub(crate) touching: Option<Vec<String>>,
    pub(crate) children: bool,
    pub(crate) content: Content,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No secrets, no passwords.
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .field("only_failed", &self.only_failed)
            .field("processes", &self.processes)
            .field("touching", &self.touching)
            .finish_non_exhaustive()
    }
}

/// Longest channel name.
const MAX_NAME: usize = 64;

fn check_name(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME {
        "it is longer than 64 bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        "only ASCII letters, digits, `_`, `-` and `.` are allowed"
    } else {
        return Ok(());
    };
    Err(ConfigError::ChannelName {
        name: name.to_owned(),
        reason,
    })
}

impl Channel {
    #[cfg_attr(not(any(feature = "webhook", feature = "email")), allow(dead_code))]
    fn new(name: &str, transport: Transport) -> Result<Channel, ConfigError> {
        check_name(name)?;
        Ok(Channel {
            name: name.to_owned(),
            transport,
            only_failed: false,
            processes: None,
            touching: None,
            children: false,
            content: Content::default(),
        })
    }

    /// A webhook channel named `name`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ChannelName`] for an empty or too long name, or one with characters
    /// other than ASCII letters, digits, `_`, `-` and `.`.
    #[cfg(feature = "webhook")]
    pub fn webhook(
        name: impl AsRef<str>,
        config: super::webhook::WebhookConfig,
    ) -> Result<Channel, ConfigError> {
        Channel::new(name.as_ref(), Transport::Webhook(Arc::new(config)))
    }

    /// An e-mail channel named `name`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ChannelName`] for an empty or too long name, or one with characters
    /// other than ASCII letters, digits, `_`, `-` and `.`.
    #[cfg(feature = "email")]
    pub fn email(
        name: impl AsRef<str>,
        config: super::email::EmailConfig,
    ) -> Result<Channel, ConfigError> {
        Channel::new(name.as_ref(), Transport::Email(Arc::new(config)))
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"webhook"` or `"email"`.
    pub fn kind(&self) -> &'static str {
        match &self.transport {
            #[cfg(feature = "webhook")]
            Transport::Webhook(_) => "webhook",
            #[cfg(feature = "email")]
            Transport::Email(_) => "email",
            #[cfg(not(any(feature = "webhook", feature = "email")))]
            _ => unreachable!("no transport without a feature"),
        }
    }

    /// Only runs that failed (at least one task errored; a cancelled run is not a
    /// failure).
    #[must_use]
    pub fn only_failed_runs(mut self) -> Self {
        self.only_failed = true;
        self
    }

    /// Only runs of these process types (their `#[process]` names).
    #[must_use]
    pub fn processes<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.processes = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Only runs with at least one of these tasks (task names or node ids, compared
    /// without regard to case).
    #[must_use]
    pub fn touching<S: Into<String>>(mut self, tasks: impl IntoIterator<Item = S>) -> Self {
        self.touching = Some(tasks.into_iter().map(Into::into).collect());
        self
    }

    /// Also runs of child processes (default: root runs only).
    #[must_use]
    pub fn include_children(mut self) -> Self {
        self.children = true;
        self
    }

    /// Report only the tasks that errored (skipped and successful ones are left out).
    #[must_use]
    pub fn only_errors(mut self) -> Self {
        self.content.only_errors = true;
        self
    }

    /// Report only these tasks (task names or node ids, compared without regard to case;
    /// the entries keep their own spelling). An empty list sends a report with no task.
    #[must_use]
    pub fn tasks<S: Into<String>>(mut self, tasks: impl IntoIterator<Item = S>) -> Self {
        self.content.tasks = Some(tasks.into_iter().map(Into::into).collect());
        self
    }

    /// Whether errors carry their source chain (default true).
    #[must_use]
    pub fn show_chain(mut self, yes: bool) -> Self {
        self.content.show_chain = yes;
        self
    }

    /// Whether a run of `rec` that ended with `report` is one this channel hears about.
    pub(crate) fn wants(&self, rec: &ProcessRecord, report: &RunReport) -> bool {
        (self.children || rec.depth == 0)
            && (!self.only_failed || report.status == RunStatus::Failed)
            && self
                .processes
                .as_ref()
                .is_none_or(|p| p.iter().any(|n| n == &rec.process_type))
            && self.touching.as_ref().is_none_or(|names| {
                report.tasks.iter().any(|t| {
                    names
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(&t.id) || n.eq_ignore_ascii_case(t.name()))
                })
            })
    }

    /// The body this channel stores for `notification`.
    pub(crate) fn body(&self, notification: &Notification) -> String {
        match &self.transport {
            #[cfg(feature = "webhook")]
            Transport::Webhook(w) => notification.to_body(&self.content, w.shape()),
            #[cfg(feature = "email")]
            Transport::Email(_) => {
                notification.to_body(&self.content, &super::payload::Shape::default())
            }
            #[cfg(not(any(feature = "webhook", feature = "email")))]
            _ => {
                let _ = notification;
                unreachable!("no transport without a feature")
            }
        }
    }

    /// One attempt of delivering `body` (as stored) with id `id`.
    #[cfg_attr(
        not(any(feature = "webhook", feature = "email")),
        allow(clippy::unused_async) // no transport compiled in: nothing to await
    )]
    pub(crate) async fn deliver(&self, id: &str, body: &str) -> Result<(), DeliveryError> {
        match &self.transport {
            #[cfg(feature = "webhook")]
            Transport::Webhook(w) => w.post(id, body).await,
            #[cfg(feature = "email")]
            Transport::Email(e) => {
                let _ = id; // e-mail has no delivery id header
                e.send(body).await
            }
            #[cfg(not(any(feature = "webhook", feature = "email")))]
            _ => {
                let _ = (id, body);
                unreachable!("no transport without a feature")
            }
        }
    }

    /// Sends `report` once, now, without the outbox (see [`send_all`](super::send_all)).
    ///
    /// # Errors
    ///
    /// The attempt's [`DeliveryError`].
    pub async fn send(&self, report: &RunReport) -> Result<(), DeliveryError> {
        let n = Notification::from_report(report, None);
        let id = format!("msg_{}_{}", n.event_key(), self.name);
        self.deliver(&id, &self.body(&n)).await
    }
}

/// When the attempts of a delivery happen: the delay before each, the first counted from
/// the run's end.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use procession::notify::RetrySchedule;
/// let s = RetrySchedule::default();
/// assert_eq!(s.attempts(), 8);
/// assert_eq!(s.delay(1), Some(Duration::from_secs(5)));
/// let quick = RetrySchedule::new([Duration::ZERO, Duration::from_millis(50)]).unwrap();
/// assert_eq!(quick.delay(2), None, "no third attempt");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl Default for RetrySchedule {
    /// svix's: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about 27.6 hours).
    fn default() -> Self {
        let m = 60;
        let h = 3600;
        RetrySchedule {
            delays: [0, 5, 5 * m, 30 * m, 2 * h, 5 * h, 10 * h, 10 * h]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        }
    }
}

impl RetrySchedule {
    /// A schedule of `delays`: the first before the first attempt, each next one after
    /// the previous attempt failed.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Setting`] for an empty schedule.
    pub fn new(delays: impl IntoIterator<Item = Duration>) -> Result<Self, ConfigError> {
        let delays: Vec<Duration> = delays.into_iter().collect();
        if delays.is_empty() {
            return Err(ConfigError::Setting(
                "a retry schedule needs at least one attempt".into(),
            ));
        }
        Ok(RetrySchedule { delays })
    }

    /// How many attempts a delivery gets.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX)
    }

    /// The delay before attempt `n + 1` (counting from 0); `None` past the last.
    pub fn delay(&self, n: u32) -> Option<Duration> {
        self.delays.get(n as usize).copied()
    }
}

/// How this runtime delivers: retry schedule, jitter, lease, polling, concurrency.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use procession::notify::{DeliveryOptions, RetrySchedule};
/// let quick = DeliveryOptions::default()
///     .schedule(RetrySchedule::new([Duration::ZERO, Duration::from_millis(100)]).unwrap())
///     .jitter(0.0)
///     .lease(Duration::from_secs(5));
/// assert_eq!(quick.schedule_ref().attempts(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    pub(crate) schedule: RetrySchedule,
    pub(crate) jitter: f64,
    pub(crate) lease: Duration,
    pub(crate) poll: Duration,
    pub(crate) concurrency: usize,
    pub(crate) deliver: bool,
    pub(crate) max_retry_after: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            schedule: RetrySchedule::default(),
            jitter: 0.1,
            lease: Duration::from_mins(1),
            poll: Duration::from_secs(1),
            concurrency: 16,
            deliver: true,
            max_retry_after: Duration::from_hours(24),
        }
    }
}

impl DeliveryOptions {
    /// The retry schedule (default [`RetrySchedule::default`], svix's).
    #[must_use]
    pub fn schedule(mut self, schedule: RetrySchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The schedule in force.
    pub fn schedule_ref(&self) -> &RetrySchedule {
        &self.schedule
    }

    /// Each delay is moved by up to this fraction, at random, either way (default 0.1),
    /// so that deliveries failing together do not retry together. Clamped to `0..=1`.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// How long a claimed delivery stays with its worker before another may take it
    /// (default 60 s): longer than an attempt's timeout. A worker killed mid-attempt
    /// delays that delivery by at most this much.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// How often the worker looks for due deliveries when nothing woke it (default 1 s;
    /// a run's end and a replay wake it at once).
    #[must_use]
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every.max(Duration::from_millis(1));
        self
    }

    /// At most this many attempts at once (default 16; at least 1).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Whether this runtime sends deliveries (default true). A runtime that does not
    /// still writes them with its runs' ends; another process sharing the store sends
    /// them.
    #[must_use]
    pub fn deliver(mut self, yes: bool) -> Self {
        self.deliver = yes;
        self
    }

    /// The longest `Retry-After` obeyed (default 24 h); a longer one is cut to this.
    #[must_use]
    pub fn max_retry_after(mut self, limit: Duration) -> Self {
        self.max_retry_after = limit;
        self
    }

    /// The delay before attempt `n + 1` with jitter, or `None` past the schedule.
    pub(crate) fn next_delay(&self, n: u32) -> Option<Duration> {
        let d = self.schedule.delay(n)?;
        if d.is_zero() || self.jitter == 0.0 {
            return Some(d);
        }
        let f = 1.0 + self.jitter * (fastrand::f64() * 2.0 - 1.0);
        Some(d.mul_f64(f))
    }
}
