//! Webhook signatures: Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`) and the seed's
//! `X-Signature-SHA256: <hex HMAC-SHA256 of the body>`; [`verify`] for receivers.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::error::ConfigError;

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted, in bytes (Standard Webhooks: 24 to 64).
const MIN_SECRET: usize = 24;
/// Longest secret accepted, in bytes.
const MAX_SECRET: usize = 64;

/// How far a `webhook-timestamp` may be from the receiver's clock (either way) by
/// default: 5 minutes, as the Standard Webhooks libraries do.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_mins(5);

/// A Standard Webhooks signing secret: `whsec_` followed by the base64 of 24 to 64
/// random bytes.
///
/// Its `Debug` never shows the key. Make one from 24 to 64 bytes of a cryptographic
/// random source, e.g. `openssl rand -base64 32`.
///
/// # Examples
///
/// ```
/// use procession::notify::Secret;
/// let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// assert_eq!(format!("{s:?}"), "Secret(whsec_…)");
/// assert!(Secret::parse("whsec_c2hvcnQ=").is_err(), "5 bytes is too short");
/// assert!(Secret::parse("s3cr3t").is_err(), "not a Standard Webhooks secret");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl Secret {
    /// Parses a `whsec_…` secret.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Secret`] when it does not start with `whsec_` or is not base64,
    /// [`ConfigError::SecretTooShort`] when it decodes to fewer than 24 bytes (more than
    /// 64 is [`ConfigError::Secret`] too).
    pub fn parse(text: &str) -> Result<Secret, ConfigError> {
        let Some(b64) = text.strip_prefix("whsec_") else {
            return Err(ConfigError::Secret {
                reason: "a Standard Webhooks secret starts with `whsec_` (the raw HMAC key of the `X-Signature-SHA256` header alone is `WebhookConfig::hmac_secret`)".into(),
            });
        };
        let key = B64.decode(b64.trim()).map_err(|e| ConfigError::Secret {
            reason: format!("what follows `whsec_` is not base64: {e}"),
        })?;
        if key.len() < MIN_SECRET {
            return Err(ConfigError::SecretTooShort {
                bytes: key.len(),
                min: MIN_SECRET,
            });
        }
        if key.len() > MAX_SECRET {
            return Err(ConfigError::Secret {
                reason: format!(
                    "it decodes to {} bytes, at most {MAX_SECRET} are allowed",
                    key.len()
                ),
            });
        }
        Ok(Secret {
            text: text.to_owned(),
            key,
        })
    }

    /// The secret as written (`whsec_…`): give it to the receiver.
    pub fn expose(&self) -> &str {
        &self.text
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Secret::parse(s)
    }
}

fn signed_content(mac: &mut HmacSha256, id: &str, timestamp: u64, body: &[u8]) {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
}

/// The `webhook-signature` value for `body` sent with id `id` at `timestamp` (Unix
/// seconds): `v1,<base64>` per secret, separated by spaces (several secrets during a
/// key rotation).
///
/// # Examples
///
/// The Standard Webhooks test vector:
///
/// ```
/// use procession::notify::{sign, Secret};
/// let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// let sig = sign(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
/// assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// ```
pub fn sign(secrets: &[Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut out = String::new();
    for s in secrets {
        let mut mac = s.mac();
        signed_content(&mut mac, id, timestamp, body);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        out.push_str(&B64.encode(mac.finalize().into_bytes()));
    }
    out
}

/// The seed's `X-Signature-SHA256` value: the lowercase hex HMAC-SHA256 of `body`, keyed
/// with the bytes of `secret` as written (no prefix). GitHub's `X-Hub-Signature-256` is
/// this with `sha256=` in front.
///
/// # Examples
///
/// GitHub's documented pair:
///
/// ```
/// use procession::notify::legacy_signature;
/// assert_eq!(
///     legacy_signature("It's a Secret to Everybody", b"Hello, World!"),
///     "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
/// );
/// ```
pub fn legacy_signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Read access to request headers by (case-insensitive) name, for [`verify`].
///
/// Implemented for `http::HeaderMap` (what axum, hyper and reqwest use) and for slices
/// of `(name, value)` pairs.
pub trait HeaderLookup {
    /// The first value of header `name`, if it is valid text.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for reqwest::header::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for [(K, V)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for Vec<(K, V)> {
    fn header(&self, name: &str) -> Option<&str> {
        self.as_slice().header(name)
    }
}

/// Why [`verify`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A required header is missing.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    #[error("`webhook-timestamp` is not a Unix timestamp")]
    BadTimestamp,
    /// The timestamp is further than the tolerance from now (a replay, or a clock off).
    #[error("`webhook-timestamp` is {skew_secs}s away from now (tolerance {tolerance_secs}s)")]
    Expired {
        /// How far, in seconds.
        skew_secs: u64,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// No signature in `webhook-signature` matches any of the secrets.
    #[error("no signature matches")]
    NoMatch,
    /// No secret was given.
    #[error("no secret to verify with")]
    NoSecret,
}

/// Checks a Standard Webhooks request: `raw_body` must be the bytes as received (not
/// JSON parsed and written again), `secrets` every secret the sender may sign with, and
/// the timestamp within [`DEFAULT_TOLERANCE`] of `now`. Returns the `webhook-id`, the key
/// to deduplicate on.
///
/// # Errors
///
/// A [`VerifyError`] saying what is wrong.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use procession::notify::{sign, verify, Secret, VerifyError};
/// let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// let body = br#"{"type":"run.failed"}"#;
/// let headers = vec![
///     ("webhook-id", "msg_1".to_string()),
///     ("webhook-timestamp", "1700000000".to_string()),
///     ("webhook-signature", sign(&[secret.clone()], "msg_1", 1_700_000_000, body)),
/// ];
/// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_060);
/// assert_eq!(verify(&headers, body, &[secret.clone()], now).unwrap(), "msg_1");
/// assert_eq!(verify(&headers, b"{}", &[secret.clone()], now), Err(VerifyError::NoMatch));
/// let later = UNIX_EPOCH + Duration::from_secs(1_700_001_000);
/// assert!(matches!(verify(&headers, body, &[secret], later), Err(VerifyError::Expired { .. })));
/// ```
pub fn verify<'h, H: HeaderLookup + ?Sized>(
    headers: &'h H,
    raw_body: &[u8],
    secrets: &[Secret],
    now: SystemTime,
) -> Result<&'h str, VerifyError> {
    verify_with(headers, raw_body, secrets, now, DEFAULT_TOLERANCE)
}

/// [`verify`] with another timestamp tolerance.
///
/// # Errors
///
/// A [`VerifyError`] saying what is wrong.
pub fn verify_with<'h, H: HeaderLookup + ?Sized>(
    headers: &'h H,
    raw_body: &[u8],
    secrets: &[Secret],
    now: SystemTime,
    tolerance: Duration,
) -> Result<&'h str, VerifyError> {
    if secrets.is_empty() {
        return Err(VerifyError::NoSecret);
    }
    let id = headers
        .header("webhook-id")
        .ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let ts_text = headers
        .header("webhook-timestamp")
        .ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let signatures = headers
        .header("webhook-signature")
        .ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    let ts: u64 = ts_text
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let now_s = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let skew = now_s.abs_diff(ts);
    if skew > tolerance.as_secs() {
        return Err(VerifyError::Expired {
            skew_secs: skew,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    for entry in signatures.split_whitespace() {
        let Some(b64) = entry.strip_prefix("v1,") else {
            continue; // another scheme (v1a = ed25519) or junk
        };
        let Ok(sig) = B64.decode(b64) else { continue };
        for s in secrets {
            let mut mac = s.mac();
            signed_content(&mut mac, id, ts, raw_body);
            // Constant time.
            if mac.verify_slice(&sig).is_ok() {
                return Ok(id);
            }
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Standard Webhooks' published vector (also used by svix's libraries).
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: u64 = 1_614_265_330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn standard_webhooks_vector() {
        let s = Secret::parse(SW_SECRET).unwrap();
        assert_eq!(
            sign(std::slice::from_ref(&s), SW_ID, SW_TS, SW_BODY),
            SW_SIG
        );
        let headers = [
            ("webhook-id", SW_ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", SW_SIG),
        ];
        assert_eq!(
            verify(&headers[..], SW_BODY, &[s], at(SW_TS)).unwrap(),
            SW_ID
        );
    }

    #[test]
    fn github_vector_for_the_hex_header() {
        // docs.github.com "Validating webhook deliveries" (PROC-93's header format).
        assert_eq!(
            legacy_signature("It's a Secret to Everybody", b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn rotation_signs_with_every_secret_and_verifies_with_any() {
        let old = Secret::parse(SW_SECRET).unwrap();
        let new = Secret::parse("whsec_YSBzZWNvbmQgc2VjcmV0LCBmb3Igcm90YXRpb25zISE=").unwrap();
        let sig = sign(&[new.clone(), old.clone()], SW_ID, SW_TS, SW_BODY);
        assert_eq!(sig.split(' ').count(), 2);
        assert!(
            sig.ends_with(SW_SIG),
            "the old secret's signature is still there"
        );
        let headers = [
            ("Webhook-Id", SW_ID.to_string()),
            ("Webhook-Timestamp", SW_TS.to_string()),
            ("Webhook-Signature", sig),
        ];
        for secrets in [vec![old.clone()], vec![new.clone()], vec![old, new]] {
            assert!(verify(&headers[..], SW_BODY, &secrets, at(SW_TS)).is_ok());
        }
    }

    #[test]
    fn verify_refuses_tampering_replays_and_junk() {
        let s = Secret::parse(SW_SECRET).unwrap();
        let good = [
            ("webhook-id", SW_ID),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", SW_SIG),
        ];
        let ok = |h: &[(&str, &str)], body: &[u8], now| {
            verify(h, body, std::slice::from_ref(&s), now).map(str::to_owned)
        };
        assert_eq!(
            ok(&good, b"{\"test\": 2432232315}", at(SW_TS)),
            Err(VerifyError::NoMatch)
        );
        // Re-serialized JSON is not the raw body.
        assert_eq!(
            ok(&good, b"{\"test\":2432232314}", at(SW_TS)),
            Err(VerifyError::NoMatch)
        );
        assert!(ok(&good, SW_BODY, at(SW_TS + 300)).is_ok(), "at the edge");
        assert_eq!(
            ok(&good, SW_BODY, at(SW_TS + 301)),
            Err(VerifyError::Expired {
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
        assert!(matches!(
            ok(&good, SW_BODY, at(SW_TS - 301)),
            Err(VerifyError::Expired { .. })
        ));
        // Another id changes the signed content.
        let mut other = good;
        other[0].1 = "msg_other";
        assert_eq!(ok(&other, SW_BODY, at(SW_TS)), Err(VerifyError::NoMatch));
        let mut junk = good;
        junk[2].1 = "v1,!!notbase64 v2,abc v1a,xyz";
        assert_eq!(ok(&junk, SW_BODY, at(SW_TS)), Err(VerifyError::NoMatch));
        let mut bad_ts = good;
        bad_ts[1].1 = "yesterday";
        assert_eq!(
            ok(&bad_ts, SW_BODY, at(SW_TS)),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            ok(&good[..2], SW_BODY, at(SW_TS)),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            verify(&good[..], SW_BODY, &[], at(SW_TS)),
            Err(VerifyError::NoSecret)
        );
        assert!(verify_with(
            &good[..],
            SW_BODY,
            std::slice::from_ref(&s),
            at(SW_TS + 301),
            Duration::from_mins(10)
        )
        .is_ok());
    }

    #[test]
    fn secrets_are_checked() {
        assert!(matches!(
            Secret::parse("s3cr3t"),
            Err(ConfigError::Secret { .. })
        ));
        assert!(matches!(
            Secret::parse("whsec_***"),
            Err(ConfigError::Secret { .. })
        ));
        assert_eq!(
            Secret::parse("whsec_c2hvcnQ="),
            Err(ConfigError::SecretTooShort { bytes: 5, min: 24 })
        );
        let long = format!("whsec_{}", B64.encode([7u8; 65]));
        assert!(matches!(
            Secret::parse(&long),
            Err(ConfigError::Secret { .. })
        ));
        let g = Secret::parse("whsec_YSBzZWNvbmQgc2VjcmV0LCBmb3Igcm90YXRpb25zISE=").unwrap();
        assert_eq!(
            g.expose(),
            "whsec_YSBzZWNvbmQgc2VjcmV0LCBmb3Igcm90YXRpb25zISE="
        );
        // A secret's text never shows in messages.
        assert!(!format!("{g:?}").contains(&g.expose()[6..]));
    }
}
