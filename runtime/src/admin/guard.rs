//! The admin API's gate: token, host, CSRF and read-only checks before any handler, and
//! the security headers on every response.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, Shared};

/// The header a browser must send with a mutation (a cross-site page cannot send it
/// without a CORS preflight, which this API never grants).
pub(crate) const CSRF_HEADER: &str = "x-procession-csrf";

pub(crate) async fn gate(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    guarded(&s, req, next, false).await
}

/// The gate of the dashboard's pages and assets: static, the same for everyone and
/// holding no data, they are served without the token (a browser's navigation cannot
/// send one; the page asks for it and sends it to the API itself). Without a token the
/// loopback-host check applies as to the API.
pub(crate) async fn page_gate(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    guarded(&s, req, next, true).await
}

async fn guarded(s: &Shared, req: Request, next: Next, page: bool) -> Response {
    let mut res = match check(s, req.method(), req.headers(), page) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    let h = res.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

fn check(s: &Shared, method: &Method, headers: &HeaderMap, page: bool) -> Result<(), ApiError> {
    match &s.cfg.token {
        Some(_) if page => {}
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this admin API needs `Authorization: Bearer <token>`",
                ));
            }
        }
        None => {
            if let Some(host) = headers.get(header::HOST) {
                if !loopback_host(host) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden-host",
                        "without a token, this admin API answers only requests to a loopback host (localhost, 127.0.0.1, [::1])",
                    ));
                }
            }
        }
    }
    let mutation = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !mutation {
        return Ok(());
    }
    if s.cfg.read_only {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read-only",
            "this admin API is read-only",
        ));
    }
    let site = headers
        .get(HeaderName::from_static("sec-fetch-site"))
        .and_then(|v| v.to_str().ok());
    if site == Some("cross-site") || site == Some("same-site") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "a mutation from another site is refused",
        ));
    }
    // A browser says where it comes from; such a request must also carry the CSRF header.
    let browser = site.is_some() || headers.contains_key(header::ORIGIN);
    if browser && !headers.contains_key(HeaderName::from_static(CSRF_HEADER)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "a mutation from a browser must carry the `X-Procession-Csrf: 1` header",
        ));
    }
    Ok(())
}

/// Compares without stopping at the first difference (the time does not tell how much
/// of a guessed token was right).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn loopback_host(host: &HeaderValue) -> bool {
    let Ok(host) = host.to_str() else {
        return false;
    };
    // Without the port: `[::1]:8080`, `localhost:8080`, `127.0.0.1`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_ports() {
        for ok in [
            "localhost",
            "LOCALHOST:80",
            "127.0.0.1:9",
            "127.1.2.3",
            "[::1]:80",
        ] {
            assert!(loopback_host(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "example.com",
            "evil.localhost.example",
            "10.0.0.1:80",
            "[::2]",
        ] {
            assert!(!loopback_host(&HeaderValue::from_static(bad)), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
