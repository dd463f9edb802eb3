//! The admin API client: JSON requests, its error shape, and its event stream (SSE).

use std::fmt::Write as _;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::error::CliError;

/// A client of one admin API.
#[derive(Debug, Clone)]
pub(crate) struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Percent-encodes `s` for a path segment or a query value (RFC 3986 unreserved kept).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl ApiClient {
    pub(crate) fn new(base: &str, token: Option<String>) -> Result<ApiClient, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| CliError::Unreachable {
                url: base.to_owned(),
                source,
            })?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, url)
            // Needed from browsers only; harmless here.
            .header("x-procession-csrf", "1");
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// GET `path`, as JSON.
    pub(crate) async fn get(&self, path: &str, id: Option<&str>) -> Result<Value, CliError> {
        let url = self.url(path);
        let res = self.request(reqwest::Method::GET, &url).send().await;
        Self::json(&url, id, res).await
    }

    /// POST `body` to `path`, as JSON.
    pub(crate) async fn post(
        &self,
        path: &str,
        id: Option<&str>,
        body: &Value,
    ) -> Result<Value, CliError> {
        let url = self.url(path);
        let res = self
            .request(reqwest::Method::POST, &url)
            .json(body)
            .send()
            .await;
        Self::json(&url, id, res).await
    }

    async fn json(
        url: &str,
        id: Option<&str>,
        res: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<Value, CliError> {
        let res = res.map_err(|source| CliError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
        let status = res.status();
        let body = res.bytes().await.map_err(|source| CliError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
        let value: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return value.ok_or_else(|| CliError::Api {
                url: url.to_owned(),
                status: status.as_u16(),
                message: "the answer is not JSON: is this the admin API?".into(),
            });
        }
        Err(api_error(url, id, status.as_u16(), value.as_ref()))
    }

    /// The live events of run `run` (from after `last` when given), of the `kinds` given
    /// (`state,progress`; all when empty).
    pub(crate) async fn events(
        &self,
        run: &str,
        kinds: &str,
        last: Option<&str>,
    ) -> Result<Sse, CliError> {
        let mut url = self.url(&format!("/api/events?run={}", encode(run)));
        if !kinds.is_empty() {
            url.push_str("&kind=");
            url.push_str(kinds);
        }
        let mut r = self
            .request(reqwest::Method::GET, &url)
            .header("accept", "text/event-stream");
        if let Some(l) = last {
            r = r.header("last-event-id", l);
        }
        let res = r.send().await.map_err(|source| CliError::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = res.status();
        if !status.is_success() {
            let body = res.bytes().await.unwrap_or_default();
            let value: Option<Value> = serde_json::from_slice(&body).ok();
            return Err(api_error(&url, None, status.as_u16(), value.as_ref()));
        }
        Ok(Sse::new(res.bytes_stream()))
    }
}

/// The error of a non-2xx answer: `{"error": {"code", "message", "status"}}`.
fn api_error(url: &str, id: Option<&str>, status: u16, body: Option<&Value>) -> CliError {
    let err = body.and_then(|b| b.get("error"));
    let code = err
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("HTTP {status}"), str::to_owned);
    match (status, code) {
        (404, Some(c)) if c == "not-found" => CliError::NotFound {
            id: id.unwrap_or_default().to_owned(),
            message,
        },
        (400..=499, Some(code)) if code != "no-route" => CliError::Refused { code, message },
        _ => CliError::Api {
            url: url.to_owned(),
            status,
            message,
        },
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `event:` (`message` when absent).
    pub(crate) event: String,
    /// `data:` lines joined with `\n`.
    pub(crate) data: String,
    /// `id:`, when given.
    pub(crate) id: Option<String>,
}

type Bytes = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;

/// An event stream read from a response body.
pub(crate) struct Sse {
    body: Bytes,
    parser: SseParser,
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sse").finish_non_exhaustive()
    }
}

impl Sse {
    fn new(body: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static) -> Sse {
        Sse {
            body: Box::pin(body),
            parser: SseParser::default(),
        }
    }

    /// The next event; `None` when the stream ended or broke.
    pub(crate) async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.parser.next_event() {
                return Some(e);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.parser.feed(&chunk),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "event stream broke");
                    return None;
                }
                None => return None,
            }
        }
    }
}

/// The `text/event-stream` format: lines ending in LF, CRLF or CR; fields `event`,
/// `data`, `id`; a blank line dispatches; lines starting with `:` are comments.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    current: SseEvent,
    has_data: bool,
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseParser {
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n' || *b == b'\r') {
            // A CR at the end of the buffer may be the first half of a CRLF: wait.
            if self.buf[pos] == b'\r' && pos + 1 == self.buf.len() {
                break;
            }
            let skip = if self.buf[pos] == b'\r' && self.buf[pos + 1] == b'\n' {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.buf.drain(..pos + skip).take(pos).collect();
            self.line(&String::from_utf8_lossy(&line));
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            if self.has_data {
                let mut e = std::mem::take(&mut self.current);
                if e.event.is_empty() {
                    "message".clone_into(&mut e.event);
                }
                self.ready.push_back(e);
            } else {
                self.current = SseEvent::default();
            }
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.current.event),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "id" => self.current.id = Some(value.to_owned()),
            _ => {}
        }
    }

    pub(crate) fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere() {
        let text =
            b": keep-alive\r\nevent: state\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n";
        // Fed one byte at a time: the result must not depend on chunk boundaries.
        let mut p = SseParser::default();
        for b in text {
            p.feed(std::slice::from_ref(b));
        }
        let first = p.next_event().expect("first event");
        assert_eq!(first.event, "state");
        assert_eq!(first.id.as_deref(), Some("7"));
        assert_eq!(first.data, "{\"a\":1}");
        let second = p.next_event().expect("second event");
        assert_eq!(second.event, "message");
        assert_eq!(second.data, "x\ny");
        assert!(p.next_event().is_none());
    }

    #[test]
    fn encodes_ids_for_paths() {
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("run-1_x.y~"), "run-1_x.y~");
    }
}
