//! The webhook transport: a JSON POST signed per Standard Webhooks (and with the seed's
//! hex HMAC header), over reqwest with rustls; no redirects, a timeout, 2xx only.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use serde_json::{Map, Value};

use super::error::{is_tls, ConfigError, DeliveryError};
use super::payload::Shape;
use super::sign::{legacy_signature, sign, Secret};
use crate::error::one_line as chain;

/// Where and how a webhook channel POSTs.
///
/// The body is the notification's JSON (see [`Notification`](super::Notification)),
/// with the [extra keys](WebhookConfig::extra) merged at the top level and the report's
/// fields [nested](WebhookConfig::nest_under) if asked. Headers: `Content-Type:
/// application/json`, `webhook-id` (the delivery's id, the same on every attempt),
/// `webhook-timestamp` (this attempt's, Unix seconds), `webhook-signature` (one `v1,…`
/// per [secret](WebhookConfig::secret)), `X-Signature-SHA256` (hex HMAC of the body, keyed
/// by the [`hmac_secret`](WebhookConfig::hmac_secret) or else the first secret's text),
/// and the [extra headers](WebhookConfig::header).
///
/// Redirects are not followed (a 3xx is a failed attempt); only a 2xx is a success;
/// `410 Gone` disables the channel; `Retry-After` (seconds or an HTTP date) on any answer
/// pushes the next attempt back.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use procession::notify::WebhookConfig;
/// let cfg = WebhookConfig::new("https://hooks.example.com/x")?
///     .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?
///     .header("X-Team", "data")?
///     .extra("chat_id", "-1001")
///     .nest_under("data")
///     .timeout(Duration::from_secs(10));
/// assert_eq!(cfg.url(), "https://hooks.example.com/x");
/// assert!(WebhookConfig::new("ftp://example.com").is_err());
/// # Ok::<(), procession::notify::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct WebhookConfig {
    url: reqwest::Url,
    secrets: Vec<Secret>,
    hmac_secret: Option<String>,
    legacy_header: bool,
    headers: HeaderMap,
    timeout: Duration,
    connect_timeout: Duration,
    shape: Shape,
    client: OnceLock<reqwest::Client>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url.as_str())
            .field("secrets", &self.secrets.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// POSTs to `url` (`http` or `https`), unsigned until a secret is set.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Url`] when `url` does not parse or is not `http`/`https`.
    pub fn new(url: &str) -> Result<WebhookConfig, ConfigError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| ConfigError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError::Url {
                url: url.to_owned(),
                reason: format!(
                    "the scheme is `{}`; only http and https are sent to",
                    parsed.scheme()
                ),
            });
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::Url {
                url: url.to_owned(),
                reason: "it has no host".into(),
            });
        }
        Ok(WebhookConfig {
            url: parsed,
            secrets: Vec::new(),
            hmac_secret: None,
            legacy_header: true,
            headers: HeaderMap::new(),
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            shape: Shape::default(),
            client: OnceLock::new(),
        })
    }

    /// Signs with the Standard Webhooks secret `whsec_…`. Call it again to add secrets:
    /// during a rotation every request carries one signature per secret, newest first
    /// if you add the newest first.
    ///
    /// # Errors
    ///
    /// As [`Secret::parse`]: not `whsec_` + base64, or shorter than 24 bytes.
    pub fn secret(mut self, secret: &str) -> Result<Self, ConfigError> {
        self.secrets.push(Secret::parse(secret)?);
        Ok(self)
    }

    /// The key of the `X-Signature-SHA256` header (the seed's format: hex HMAC-SHA256 of
    /// the body, keyed by these bytes), when it is not the first Standard Webhooks secret.
    ///
    /// # Errors
    ///
    /// [`ConfigError::SecretTooShort`] for an empty secret.
    pub fn hmac_secret(mut self, secret: &str) -> Result<Self, ConfigError> {
        if secret.is_empty() {
            return Err(ConfigError::SecretTooShort { bytes: 0, min: 1 });
        }
        self.hmac_secret = Some(secret.to_owned());
        Ok(self)
    }

    /// Whether to send `X-Signature-SHA256` when a key is set (default true).
    #[must_use]
    pub fn legacy_header(mut self, yes: bool) -> Self {
        self.legacy_header = yes;
        self
    }

    /// An extra header on every request.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Header`] for an invalid name or value.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::Header {
            name: name.to_owned(),
            reason,
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let v = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
        self.headers.insert(n, v);
        Ok(self)
    }

    /// An extra top-level key of the body; it wins over a report field of the same name.
    #[must_use]
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.shape.extra.insert(key.into(), value.into());
        self
    }

    /// Several extra keys at once (see [`extra`](WebhookConfig::extra)).
    #[must_use]
    pub fn extra_payload(mut self, extra: Map<String, Value>) -> Self {
        self.shape.extra.extend(extra);
        self
    }

    /// Nests the report's fields under `key` (extra keys stay at the top level).
    #[must_use]
    pub fn nest_under(mut self, key: impl Into<String>) -> Self {
        self.shape.nest_under = Some(key.into());
        self
    }

    /// The time limit of one request, connect to last byte of the answer (default 15 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The time limit of the connection alone (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The URL posted to.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    pub(crate) fn shape(&self) -> &Shape {
        &self.shape
    }

    fn client(&self) -> Result<&reqwest::Client, DeliveryError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(|e| DeliveryError::Request { message: chain(&e) })?;
        Ok(self.client.get_or_init(|| c))
    }

    /// The headers of one attempt of delivery `id` with `body`.
    fn headers(&self, id: &str, body: &str) -> Result<HeaderMap, DeliveryError> {
        let mut h = self.headers.clone();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if !h.contains_key(USER_AGENT) {
            h.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("procession/", env!("CARGO_PKG_VERSION"))),
            );
        }
        let value = |s: &str| {
            HeaderValue::from_str(s).map_err(|e| DeliveryError::Render {
                message: format!("header value: {e}"),
            })
        };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        h.insert("webhook-id", value(id)?);
        h.insert("webhook-timestamp", value(&ts.to_string())?);
        if !self.secrets.is_empty() {
            h.insert(
                "webhook-signature",
                value(&sign(&self.secrets, id, ts, body.as_bytes()))?,
            );
        }
        let legacy_key = self
            .hmac_secret
            .as_deref()
            .or_else(|| self.secrets.first().map(Secret::expose));
        if let (true, Some(key)) = (self.legacy_header, legacy_key) {
            h.insert(
                "x-signature-sha256",
                value(&legacy_signature(key, body.as_bytes()))?,
            );
        }
        Ok(h)
    }

    /// One attempt: POST `body` as delivery `id`.
    pub(crate) async fn post(&self, id: &str, body: &str) -> Result<(), DeliveryError> {
        let client = self.client()?;
        let request = client
            .post(self.url.clone())
            .headers(self.headers(id, body)?)
            .body(body.to_owned());
        // reqwest's timeout covers the whole exchange; the outer one is a second fence.
        let answer = tokio::time::timeout(self.timeout + Duration::from_secs(1), request.send())
            .await
            .map_err(|_| DeliveryError::Timeout {
                after: self.timeout,
            })?;
        let response = answer.map_err(|e| self.classify(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.as_u16() == 410 {
            return Err(DeliveryError::Gone);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Err(DeliveryError::Status {
            status: status.as_u16(),
            retry_after,
        })
    }

    fn classify(&self, e: &reqwest::Error) -> DeliveryError {
        let message = chain(e);
        if e.is_timeout() {
            return DeliveryError::Timeout {
                after: self.timeout,
            };
        }
        if is_tls(e) {
            return DeliveryError::Tls { message };
        }
        if e.is_connect() {
            return DeliveryError::Connect { message };
        }
        DeliveryError::Request { message }
    }
}

/// `Retry-After`: a number of seconds, or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let at = SystemTime::from(at);
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_mins(2)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let later = chrono::Utc::now() + chrono::Duration::seconds(90);
        let d = parse_retry_after(&later.to_rfc2822()).unwrap();
        assert!(
            d > Duration::from_secs(80) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "",
            "not a url",
            "ftp://example.com/x",
            "file:///etc/passwd",
            "http://",
        ] {
            assert!(
                matches!(WebhookConfig::new(url), Err(ConfigError::Url { .. })),
                "{url:?} was accepted"
            );
        }
        assert!(WebhookConfig::new("http://127.0.0.1:9/hook").is_ok());
    }

    #[test]
    fn headers_carry_both_signatures() {
        let cfg = WebhookConfig::new("http://127.0.0.1:9/")
            .unwrap()
            .secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let h = cfg.headers("msg_1", "{}").unwrap();
        assert!(h["webhook-signature"].to_str().unwrap().starts_with("v1,"));
        assert_eq!(
            h["x-signature-sha256"].to_str().unwrap(),
            legacy_signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", b"{}")
        );
        let unsigned = WebhookConfig::new("http://127.0.0.1:9/").unwrap();
        let h = unsigned.headers("msg_1", "{}").unwrap();
        assert!(!h.contains_key("webhook-signature") && !h.contains_key("x-signature-sha256"));
        assert_eq!(h["webhook-id"], "msg_1");
    }
}
