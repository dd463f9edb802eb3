//! Errors of the notification channels: bad configuration (refused when it is built) and
//! failed deliveries (one attempt's outcome, kept on the delivery).

use std::time::Duration;

/// Error returned when a channel's configuration is invalid: nothing is sent with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A channel name is empty, too long, or has characters other than ASCII letters,
    /// digits, `_`, `-` and `.` (it becomes part of the `webhook-id`).
    #[error("invalid channel name `{name}`: {reason}")]
    ChannelName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// Two channels of one runtime have the same name.
    #[error("two channels are named `{name}`; channel names must be unique")]
    DuplicateChannel {
        /// The name.
        name: String,
    },
    /// The webhook URL does not parse, or is not `http`/`https`.
    #[error("invalid webhook URL `{url}`: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// A signing secret is malformed.
    #[error("invalid webhook secret: {reason}")]
    Secret {
        /// Why (never the secret itself).
        reason: String,
    },
    /// A signing secret is too short to be safe.
    #[error("webhook secret too short: {bytes} bytes, at least {min} are needed")]
    SecretTooShort {
        /// Its length in bytes (decoded).
        bytes: usize,
        /// The minimum.
        min: usize,
    },
    /// An extra HTTP header's name or value is invalid.
    #[error("invalid header `{name}`: {reason}")]
    Header {
        /// The header's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An e-mail address does not parse.
    #[error("invalid e-mail address `{address}`: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// Why.
        reason: String,
    },
    /// An e-mail channel has no recipient.
    #[error("an e-mail channel needs at least one recipient")]
    NoRecipients,
    /// A certificate given to trust does not parse.
    #[error("invalid certificate: {reason}")]
    Certificate {
        /// Why.
        reason: String,
    },
    /// A retry schedule has no attempt, or a setting is out of range.
    #[error("invalid delivery setting: {0}")]
    Setting(String),
}

/// Why one delivery attempt failed.
///
/// Every variant but [`Gone`](DeliveryError::Gone) and the configuration ones is retried
/// on the schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The receiver could not be reached: refused connection, unknown host, network down.
    #[error("cannot connect: {message}")]
    Connect {
        /// The transport's message, with its causes.
        message: String,
    },
    /// The TLS handshake failed (no TLS on the other side, a certificate not trusted or
    /// for another name).
    #[error("TLS failed: {message}")]
    Tls {
        /// The transport's message, with its causes.
        message: String,
    },
    /// The receiver did not answer in time.
    #[error("no answer within {after:?}")]
    Timeout {
        /// The time limit.
        after: Duration,
    },
    /// The receiver answered with a status other than 2xx (redirects are not followed).
    #[error("the receiver answered {status}{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Status {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The receiver answered `410 Gone`: the channel is disabled.
    #[error("the receiver answered 410 Gone: the channel is disabled")]
    Gone,
    /// The SMTP server refused the message or the session.
    #[error("the SMTP server refused: {message}")]
    Smtp {
        /// The reply code, when the server answered.
        code: Option<u16>,
        /// The server's or the client's message.
        message: String,
    },
    /// The request failed in another way.
    #[error("request failed: {message}")]
    Request {
        /// The transport's message, with its causes.
        message: String,
    },
    /// The stored payload could not be rendered (a damaged store).
    #[error("cannot render the notification: {message}")]
    Render {
        /// The decoder's message.
        message: String,
    },
    /// The delivery names a channel this runtime does not have.
    #[error("channel `{name}` is not configured on this runtime")]
    UnknownChannel {
        /// The channel's name.
        name: String,
    },
    /// The channel was disabled by a receiver.
    #[error("channel `{name}` is disabled ({reason}); see `Runtime::enable_channel`")]
    ChannelDisabled {
        /// The channel's name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl DeliveryError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            DeliveryError::Gone
                | DeliveryError::Render { .. }
                | DeliveryError::UnknownChannel { .. }
                | DeliveryError::ChannelDisabled { .. }
        )
    }

    /// The delay the receiver asked for (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The status (HTTP) or reply code (SMTP) the receiver answered, if it did.
    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Status { status, .. } => Some(*status),
            DeliveryError::Gone => Some(410),
            DeliveryError::Smtp { code, .. } => *code,
            _ => None,
        }
    }
}

/// Whether a TLS error is among the causes of `e`: as a source, or wrapped in I/O
/// errors (whose `source()` skips what they wrap).
#[cfg(any(feature = "webhook", feature = "email"))]
pub(crate) fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        let mut inner: &(dyn std::error::Error + 'static) = s;
        loop {
            if inner.is::<rustls::Error>() {
                return true;
            }
            match inner
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        cur = s.source();
    }
    false
}
