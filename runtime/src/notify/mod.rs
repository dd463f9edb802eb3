//! Notifications of run ends: signed webhooks (feature `webhook`) and HTML e-mail
//! (feature `email`), delivered durably through the store's outbox.
//!
//! # Configuration
//!
//! Channels are configured on the runtime builder ([`RuntimeBuilder::notify`](crate::RuntimeBuilder::notify)),
//! each with a unique name and its own filters: which runs (all, [only failed
//! ones](Channel::only_failed_runs), only those of [some process types](Channel::processes),
//! only those [touching named tasks](Channel::touching); root runs only unless
//! [`include_children`](Channel::include_children)) and how much of the report
//! ([`only_errors`](Channel::only_errors), [`tasks`](Channel::tasks),
//! [`show_chain`](Channel::show_chain)). Per-process configuration is a channel filtered
//! by process type: the attribute macros need no option for it.
//!
//! ```
//! # #[cfg(feature = "webhook")] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use procession::notify::{Channel, WebhookConfig};
//! use procession::Runtime;
//! let ops = Channel::webhook(
//!     "ops",
//!     WebhookConfig::new("https://hooks.example.com/procession")?
//!         .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?,
//! )?
//! .only_failed_runs()
//! .processes(["daily_report"]);
//! let builder = Runtime::temporary().notify(ops);
//! # drop(builder); Ok(()) }
//! # #[cfg(not(feature = "webhook"))] fn main() {}
//! ```
//!
//! # Delivery guarantees
//!
//! When a run ends, one [`Delivery`](crate::store::Delivery) per matching channel is
//! written to the store's outbox *in the same atomic write as the run's end*: a crash
//! either loses both or keeps both, so a run reported ended always has its
//! notifications. A worker of the runtime then claims due deliveries with a lease
//! (exactly one worker holds a delivery at a time, also when several processes share a
//! store), sends them, and records the outcome with a compare-and-swap fenced by the
//! lease's token. A failed attempt is retried on the [`RetrySchedule`] (svix's by
//! default: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, with jitter), across
//! restarts; a receiver's `Retry-After` pushes the next attempt back; HTTP `410 Gone`
//! disables the channel (persisted, see [`Runtime::enable_channel`](crate::Runtime::enable_channel)).
//! Delivery is *at least once*: a process killed after the receiver accepted a POST and
//! before the outcome was written sends it again once the claim expires, with the same
//! `webhook-id`, which receivers use to deduplicate. A delivery that runs out of
//! attempts is *failed*: it stays in the store, listed by
//! [`Runtime::deliveries`](crate::Runtime::deliveries), and
//! [`Runtime::replay_delivery`](crate::Runtime::replay_delivery) sends it again. A
//! failing channel never stops the others nor the run; every attempt's outcome is an
//! [`EventKind::Delivery`](crate::EventKind::Delivery) event and a `tracing` event, and
//! a delivery that gives up leaves a warning in its run's log.
//!
//! Runs without a record ([`Runtime::launch_graph`](crate::Runtime::launch_graph)) are
//! not notified: send their reports with [`send_all`] (one attempt, no outbox). Stored
//! deliveries keep the run's report: [`Runtime::prune_deliveries`](crate::Runtime::prune_deliveries)
//! deletes old delivered ones.

mod config;
#[cfg(feature = "email")]
mod email;
mod error;
mod payload;
#[cfg(feature = "webhook")]
mod sign;
#[cfg(feature = "webhook")]
mod webhook;
pub(crate) mod worker;

pub use config::{Channel, DeliveryOptions, RetrySchedule};
#[cfg(feature = "email")]
pub use email::{EmailConfig, Security, SmtpConfig};
pub use error::{ConfigError, DeliveryError};
pub use payload::Notification;
#[cfg(feature = "webhook")]
pub use sign::{
    legacy_signature, sign, verify, verify_with, HeaderLookup, Secret, VerifyError,
    DEFAULT_TOLERANCE,
};
#[cfg(feature = "webhook")]
pub use webhook::WebhookConfig;

use crate::report::RunReport;

/// Sends `report` through each channel in order, once, without the outbox (no retries,
/// nothing stored): the direct equivalent of the seed's `report.notify(...)`, for reports
/// of unrecorded runs. A failing channel never stops the next one; the result has one
/// entry per channel, in order.
///
/// Runs of a [`Runtime`](crate::Runtime) need none of this: channels configured on its
/// builder are notified durably when a run ends.
///
/// # Examples
///
/// ```
/// # #[tokio::main] async fn main() {
/// use procession::notify::send_all;
/// use procession::prelude::*;
/// #[task] fn a() {}
/// #[process] fn p(b: &mut Builder) { b.task(A::new()); }
/// let rt = Runtime::in_memory().start().await.unwrap();
/// let report = rt.run(P {}).await.unwrap();
/// // No channel: nothing to do.
/// assert!(send_all(&report, &[]).await.is_empty());
/// # }
/// ```
pub async fn send_all(
    report: &RunReport,
    channels: &[Channel],
) -> Vec<(String, Result<(), DeliveryError>)> {
    let mut out = Vec::with_capacity(channels.len());
    for c in channels {
        let result = c.send(report).await;
        if let Err(e) = &result {
            tracing::warn!(channel = %c.name(), error = %e, "notification failed");
        }
        out.push((c.name().to_owned(), result));
    }
    out
}
