//! The admin API's routes and handlers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::record::{RecordKind, State as RecState};
use crate::runtime::LaunchSpec;
use crate::store::{
    ChannelState, Cursor, Delivery, DeliveryCursor, DeliveryQuery, DeliveryState, Query, TaskRow,
};

use super::feed::{EventId, Filter, KINDS};
use super::{guard, ApiError, Shared};

type S = State<Arc<Shared>>;
type ApiResult = Result<Response, ApiError>;

/// The most records one page returns.
const MAX_LIMIT: usize = 500;
const DEFAULT_LIMIT: usize = 50;

pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    let limit = shared.cfg.body_limit;
    Router::new()
        .route("/api/health", get(health))
        .route("/api/processes", get(processes))
        .route("/api/runs", get(list).post(launch))
        .route("/api/runs/{id}", get(show))
        .route("/api/runs/{id}/graph", get(graph))
        .route("/api/runs/{id}/launch", post(launch_id))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/runs/{id}/dismiss", post(dismiss))
        .route("/api/runs/{id}/block", post(block))
        .route("/api/runs/{id}/unblock", post(unblock))
        .route("/api/resync", post(resync))
        .route("/api/cancel", post(cancel_by_filter))
        .route("/api/events", get(events))
        .route("/api/deliveries", get(deliveries))
        .route("/api/deliveries/{id}", get(delivery))
        .route("/api/deliveries/{id}/replay", post(replay_delivery))
        .route("/api/channels", get(channels))
        .route("/api/workers", get(workers))
        .route("/api/channels/{name}", get(channel))
        .route("/api/channels/{name}/enable", post(enable_channel))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            guard::gate,
        ))
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no-route", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this route does not take that method",
    )
}

fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(id)| id)
        .map_err(|e| ApiError::bad_request("invalid-id", format!("invalid id in the path: {e}")))
}

/// A JSON body; an empty body reads as `{}` for bodies whose fields are all optional.
fn body<T: DeserializeOwned>(b: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let b = b.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload-too-large"
        } else {
            "invalid-body"
        };
        ApiError::new(status, code, e.body_text())
    })?;
    let bytes: &[u8] = if b.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &b
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid-json", format!("the body is not valid: {e}")))
}

async fn health(State(s): S) -> Json<Value> {
    Json(json!({ "ok": true, "subscribers": s.feed.subscribers(), "read_only": s.cfg.read_only }))
}

async fn processes(State(s): S) -> Json<Value> {
    Json(json!({ "processes": s.rt.registered() }))
}

/// Query parameters as pairs (a key may repeat).
fn pairs(q: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q.unwrap_or(""))
        .map_err(|e| ApiError::bad_request("invalid-filter", format!("malformed query: {e}")))
}

fn parse_state(s: &str) -> Result<RecState, ApiError> {
    serde_json::from_value(Value::String(s.to_owned())).map_err(|_| {
        ApiError::bad_request(
            "invalid-filter",
            format!("unknown state `{s}` (idle, scheduled, running, done, failed, cancel_requested, cancelling, cancelled)"),
        )
    })
}

fn parse_ms(key: &str, v: &str) -> Result<u64, ApiError> {
    v.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid-filter",
            format!("`{key}` must be a time in ms since the Unix epoch, not `{v}`"),
        )
    })
}

fn parse_cursor(v: &str) -> Result<Cursor, ApiError> {
    v.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid-filter",
            format!("`after` must be the `next` of a previous page, not `{v}`"),
        )
    })
}

/// A metadata value: JSON when it parses (`7`, `true`, `"x"`), else the text itself.
fn meta_value(v: &str) -> Value {
    serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()))
}

async fn list(State(s): S, RawQuery(q): RawQuery) -> ApiResult {
    let mut query = Query::new().limit(DEFAULT_LIMIT);
    let mut want_count = false;
    for (k, v) in pairs(q.as_deref())? {
        match k.as_str() {
            "state" => {
                for st in v.split(',').filter(|x| !x.is_empty()) {
                    query = query.state(parse_state(st)?);
                }
            }
            "process" => query = query.process_type(v),
            "root" => query = query.root(v),
            "parent" => query = query.parent(v),
            "from" => query.created_from = Some(parse_ms(&k, &v)?),
            "until" => query.created_until = Some(parse_ms(&k, &v)?),
            "after" => query = query.after(Some(parse_cursor(&v)?)),
            "limit" => {
                let n: usize = v.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-filter",
                        format!("`limit` must be a number from 1 to {MAX_LIMIT}, not `{v}`"),
                    )
                })?;
                query = query.limit(n);
            }
            "count" => want_count = v == "true" || v == "1",
            "order" => {
                query.newest_first = match v.as_str() {
                    "newest" => true,
                    "oldest" => false,
                    _ => {
                        return Err(ApiError::bad_request(
                            "invalid-filter",
                            format!("`order` must be `newest` or `oldest`, not `{v}`"),
                        ))
                    }
                }
            }
            _ => match k.strip_prefix("meta.") {
                Some(key) if !key.is_empty() => query = query.metadata(key, meta_value(&v)),
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid-filter",
                        format!("unknown filter `{k}` (state, process, root, parent, meta.KEY, from, until, after, limit, count, order)"),
                    ))
                }
            },
        }
    }
    let total = if want_count {
        Some(s.rt.count(query.clone()).await?)
    } else {
        None
    };
    let page = s.rt.list_page(query).await?;
    let mut out = json!({
        "records": page.records,
        "next": page.next.as_ref().map(ToString::to_string),
    });
    if let Some(t) = total {
        out["total"] = json!(t);
    }
    Ok(Json(out).into_response())
}

async fn show(State(s): S, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_id(id)?;
    let rec =
        s.rt.get(&id)
            .await?
            .ok_or_else(|| crate::runtime::Error::NotFound { id: id.clone() })?;
    #[allow(unused_mut)] // `log_file`s are added with cargo feature `logs`
    let mut tasks: Vec<Value> = if rec.kind == RecordKind::Process {
        s.rt.task_rows(&id)
            .await?
            .iter()
            .map(|(i, r)| super::task_json(*i, r))
            .collect()
    } else {
        Vec::new()
    };
    #[cfg(feature = "logs")]
    if let Some(logs) = &s.cfg.log_files {
        for t in &mut tasks {
            let node = t["node"].as_str().unwrap_or_default().to_owned();
            t["log_file"] = json!(logs.file_of(&id, &node).to_string_lossy());
        }
    }
    Ok(Json(json!({ "record": rec, "tasks": tasks })).into_response())
}

async fn graph(State(s): S, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_id(id)?;
    let g = s.rt.graph_of(&id).await?;
    let rows: HashMap<String, TaskRow> =
        s.rt.task_rows(&id)
            .await?
            .into_iter()
            .map(|(_, r)| (r.node.to_string(), r))
            .collect();
    let ids = g.node_ids();
    let deps: HashMap<&str, Vec<&str>> = ids
        .iter()
        .map(|n| (*n, g.dependencies(n).unwrap_or_default()))
        .collect();
    let failed = |n: &str| rows.get(n).is_some_and(|r| r.state == RecState::Failed);
    let mut nodes = Vec::with_capacity(ids.len());
    let mut edges = Vec::new();
    for n in &ids {
        for d in &deps[n] {
            edges.push(json!([d, n]));
        }
        let row = rows.get(*n);
        let skipped = row.is_some_and(|r| r.skipped);
        // The failures upstream that skipped it: the nearest failed ancestors, through
        // skipped ones.
        let mut skipped_by = Vec::new();
        if skipped {
            let mut seen = HashSet::new();
            let mut stack: Vec<&str> = deps[n].clone();
            while let Some(d) = stack.pop() {
                if !seen.insert(d) {
                    continue;
                }
                if failed(d) {
                    skipped_by.push(d);
                } else if let Some(up) = deps.get(d) {
                    stack.extend(up.iter().copied());
                }
            }
            skipped_by.sort_unstable();
        }
        nodes.push(json!({
            "id": n,
            "task": row.map(|r| r.task.to_string()),
            "state": row.map(|r| r.state),
            "skipped": skipped,
            "skipped_by": skipped_by,
            "error": row.and_then(|r| r.error.clone()),
        }));
    }
    Ok(
        Json(json!({ "run": id, "process": g.name(), "nodes": nodes, "edges": edges }))
            .into_response(),
    )
}

fn accepted(id: &str) -> Response {
    (StatusCode::ACCEPTED, Json(json!({ "ok": true, "id": id }))).into_response()
}

async fn launch(State(s): S, b: Result<Bytes, BytesRejection>) -> ApiResult {
    let spec: LaunchSpec = body(b)?;
    let h = s.rt.launch_spec(spec).await?;
    Ok(accepted(h.id()))
}

async fn launch_id(State(s): S, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_id(id)?;
    let h = s.rt.launch_id(&id).await?;
    Ok(accepted(h.id()))
}

fn record(rec: &crate::record::ProcessRecord) -> Response {
    Json(json!({ "ok": true, "record": rec })).into_response()
}

async fn cancel(State(s): S, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_id(id)?;
    Ok(record(&s.rt.cancel(&id).await?))
}

async fn dismiss(State(s): S, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_id(id)?;
    Ok(record(&s.rt.dismiss(&id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn block(
    State(s): S,
    id: Result<Path<String>, PathRejection>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = path_id(id)?;
    let BlockBody { reason } = body(b)?;
    Ok(record(&s.rt.block_launches(&id, reason).await?))
}

async fn unblock(State(s): S, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_id(id)?;
    Ok(record(&s.rt.unblock_launches(&id).await?))
}

async fn resync(State(s): S) -> ApiResult {
    let r = s.rt.resync().await?;
    Ok(Json(json!({
        "ok": true,
        "created": r.created,
        "updated": r.updated,
        "deleted": r.deleted,
        "cancelled": r.cancelled,
        "abandoned": r.abandoned,
        "kept_active": r.kept_active,
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    #[serde(default)]
    state: Vec<RecState>,
    #[serde(default)]
    process: Option<String>,
    #[serde(default)]
    root: Option<String>,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    until: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    filter: FilterBody,
    /// Only count what would be cancelled.
    #[serde(default)]
    preview: bool,
    /// Wait until every match has ended, at most this long.
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// The longest a cancel by filter waits.
const MAX_WAIT: Duration = Duration::from_mins(5);

async fn cancel_by_filter(State(s): S, b: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: CancelBody = body(b)?;
    let filter = req.filter;
    let mut q = Query::new();
    q.states = filter.state;
    q.process_type = filter.process;
    q.root = filter.root;
    q.parent = filter.parent;
    q.metadata = filter.metadata;
    q.created_from = filter.from;
    q.created_until = filter.until;
    if req.preview {
        let ids = s.rt.cancel_preview(&q).await?;
        return Ok(Json(json!({ "ok": true, "count": ids.len(), "ids": ids })).into_response());
    }
    let out = match req.wait_ms {
        Some(ms) => {
            let ceiling = Duration::from_millis(ms).min(MAX_WAIT);
            s.rt.cancel_matching_and_wait(&q, ceiling).await?
        }
        None => s.rt.cancel_matching(&q).await?,
    };
    let refused: Vec<Value> = out
        .refused
        .iter()
        .map(|(id, why)| json!({ "id": id, "reason": why }))
        .collect();
    Ok(Json(json!({
        "ok": out.unfinished.is_empty(),
        "cancelled": out.cancelled,
        "refused": refused,
        "unfinished": out.unfinished,
    }))
    .into_response())
}

async fn events(State(s): S, headers: HeaderMap, RawQuery(q): RawQuery) -> ApiResult {
    let mut filter = Filter::default();
    let mut last = None;
    for (k, v) in pairs(q.as_deref())? {
        match k.as_str() {
            "run" => filter.runs.push(v),
            "root" => filter.roots.push(v),
            "kind" => {
                for kind in v.split(',').filter(|x| !x.is_empty()) {
                    let known = KINDS.iter().find(|n| **n == kind).ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid-filter",
                            format!("unknown event kind `{kind}` (state, progress, log)"),
                        )
                    })?;
                    filter.kinds.push(known);
                }
            }
            // For clients that cannot set the header (a first connection that resumes).
            "last_event_id" => last = Some(parse_last(&v)?),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid-filter",
                    format!("unknown filter `{k}` (run, root, kind, last_event_id)"),
                ))
            }
        }
    }
    if let Some(v) = headers.get("last-event-id") {
        let v = v.to_str().map_err(|_| {
            ApiError::bad_request("invalid-last-event-id", "`Last-Event-ID` is not text")
        })?;
        last = Some(parse_last(v)?);
    }
    let stream = s.feed.stream(last, filter).await;
    let mut res = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(s.cfg.keep_alive))
        .into_response();
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

fn parse_last(v: &str) -> Result<EventId, ApiError> {
    v.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid-last-event-id",
            format!("`Last-Event-ID` must be an event id given by this API (`<epoch>-<seq>`), not `{v}`"),
        )
    })
}

// ------------------------------------------------------------------ notifications

/// A delivery cursor as text: `<state>:<created_at>:<id>`.
fn delivery_cursor_text(c: &DeliveryCursor) -> String {
    format!("{}:{}:{}", c.state, c.created_at, c.id)
}

fn parse_delivery_cursor(v: &str) -> Result<DeliveryCursor, ApiError> {
    let mut parts = v.splitn(3, ':');
    let parsed = (|| {
        let state = parse_delivery_state(parts.next()?).ok()?;
        let created_at = parts.next()?.parse().ok()?;
        let id = parts.next()?.to_owned();
        Some(DeliveryCursor {
            state,
            created_at,
            id,
        })
    })();
    parsed.ok_or_else(|| {
        ApiError::bad_request(
            "invalid-filter",
            format!("`after` must be the `next` of a previous page, not `{v}`"),
        )
    })
}

fn parse_delivery_state(s: &str) -> Result<DeliveryState, ApiError> {
    DeliveryState::ALL
        .into_iter()
        .find(|st| st.to_string() == s)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-filter",
                format!("unknown delivery state `{s}` (pending, delivered, failed)"),
            )
        })
}

/// A delivery as JSON; its payload (the notification's body, JSON when it is a
/// webhook's) only when `with_payload`.
fn delivery_view(d: &Delivery, with_payload: bool) -> Value {
    let mut v = json!({
        "id": d.id,
        "channel": d.channel,
        "run": d.run,
        "process": d.process,
        "state": d.state,
        "created_at": d.created_at,
        "next_at": d.next_at,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "delivered_at": d.delivered_at,
        "history": d.history,
    });
    if with_payload {
        v["payload"] = serde_json::from_str::<Value>(&d.payload)
            .unwrap_or_else(|_| Value::String(d.payload.clone()));
    }
    v
}

async fn deliveries(State(s): S, RawQuery(q): RawQuery) -> ApiResult {
    let mut query = DeliveryQuery::new().limit(DEFAULT_LIMIT);
    for (k, v) in pairs(q.as_deref())? {
        match k.as_str() {
            "state" => {
                for st in v.split(',').filter(|x| !x.is_empty()) {
                    query = query.state(parse_delivery_state(st)?);
                }
            }
            "run" => query = query.run(v),
            "channel" => query = query.channel(v),
            "after" => query = query.after(Some(parse_delivery_cursor(&v)?)),
            "limit" => query = query.limit(parse_limit(&v)?),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid-filter",
                    format!("unknown filter `{k}` (state, run, channel, after, limit)"),
                ))
            }
        }
    }
    let page = s.rt.deliveries(query).await?;
    let list: Vec<Value> = page
        .deliveries
        .iter()
        .map(|d| delivery_view(d, false))
        .collect();
    Ok(Json(json!({
        "deliveries": list,
        "next": page.next.as_ref().map(delivery_cursor_text),
    }))
    .into_response())
}

fn parse_limit(v: &str) -> Result<usize, ApiError> {
    v.parse()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-filter",
                format!("`limit` must be a number from 1 to {MAX_LIMIT}, not `{v}`"),
            )
        })
}

async fn delivery(State(s): S, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_id(id)?;
    let d =
        s.rt.delivery(&id)
            .await?
            .ok_or(crate::runtime::Error::DeliveryNotFound { id })?;
    Ok(Json(json!({ "delivery": delivery_view(&d, true) })).into_response())
}

async fn replay_delivery(State(s): S, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_id(id)?;
    let d = s.rt.replay_delivery(&id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "ok": true, "delivery": delivery_view(&d, false) })),
    )
        .into_response())
}

/// A channel as JSON: configured here (with its kind) or only known from the store
/// (a receiver disabled it, and it was removed from the configuration since).
fn channel_view(name: &str, kind: Option<&str>, state: Option<&ChannelState>) -> Value {
    json!({
        "name": name,
        "configured": kind.is_some(),
        "kind": kind,
        "enabled": state.is_none(),
        "disabled_at": state.map(|st| st.disabled_at),
        "reason": state.map(|st| st.reason.as_str()),
    })
}

async fn workers(State(s): S) -> ApiResult {
    let workers = s.rt.workers().await?;
    Ok(Json(json!({ "worker": s.rt.worker_id(), "workers": workers })).into_response())
}

async fn channels(State(s): S) -> ApiResult {
    let mut out = Vec::new();
    for (name, kind) in s.rt.notify_channels() {
        let state = s.rt.channel_state(&name).await?;
        out.push(channel_view(&name, Some(kind), state.as_ref()));
    }
    Ok(Json(json!({ "channels": out })).into_response())
}

/// The channel `name` as JSON; `not-found` when it is neither configured nor in the store.
async fn channel_json(s: &Shared, name: String) -> Result<Value, ApiError> {
    let kind =
        s.rt.notify_channels()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| k);
    let state = s.rt.channel_state(&name).await?;
    if kind.is_none() && state.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no channel `{name}`"),
        ));
    }
    Ok(channel_view(&name, kind, state.as_ref()))
}

async fn channel(State(s): S, name: Result<Path<String>, PathRejection>) -> ApiResult {
    let name = path_id(name)?;
    Ok(Json(json!({ "channel": channel_json(&s, name).await? })).into_response())
}

async fn enable_channel(State(s): S, name: Result<Path<String>, PathRejection>) -> ApiResult {
    let name = path_id(name)?;
    // Refuses an unknown name before writing anything.
    channel_json(&s, name.clone()).await?;
    s.rt.enable_channel(&name).await?;
    Ok(Json(json!({ "ok": true, "channel": channel_json(&s, name).await? })).into_response())
}
