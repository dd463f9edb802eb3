//! The dashboard: server-rendered pages and a small hand-written script, embedded in the
//! binary and served by the admin API under `/` and `/ui/...`.
//!
//! The pages read the JSON routes of the admin API and follow its event stream; there is
//! no build step and nothing is fetched from another origin. Their
//! `Content-Security-Policy` allows scripts, styles and connections to the same origin
//! only (no inline script, no `eval`); every other security header and check of the admin
//! API applies to them as well, except the token: the pages and assets hold no data and
//! a browser's navigation cannot send a header, so they are served without it.
//!
//! With a token configured ([`AdminConfig::token`](super::AdminConfig::token)), the page
//! asks for it once (a form shown when the API answers `401`), keeps it in the tab's
//! `sessionStorage` (gone when the tab closes; not shared with other tabs) and sends it as
//! `Authorization: Bearer` on every call, the event stream included: the stream is read
//! with `fetch` rather than `EventSource` (which cannot send headers), so the token never
//! appears in a URL (no `?token=` in access logs, proxies or history).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{guard, Shared};

/// The pages' shell: header, navigation and an empty main area the script fills.
const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/icon.svg");

/// Same-origin scripts, styles, images and connections (the API and its event stream);
/// nothing inline, nothing from elsewhere, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/runs", get(page))
        .route("/ui/runs/{*id}", get(page))
        .route("/ui/launch", get(page))
        .route("/ui/assets/app.js", get(app_js))
        .route("/ui/assets/app.css", get(app_css))
        .route("/ui/assets/icon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .layer(axum::middleware::from_fn_with_state(
            shared,
            guard::page_gate,
        ))
        // Outside the gate: replaces the gate's policy (which allows nothing) on these
        // routes only.
        .layer(axum::middleware::from_fn(page_policy))
}

async fn page_policy(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    res
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}
