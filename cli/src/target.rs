//! What a command talks to: the admin API of a running program, or a store directory
//! no process holds. Both answer in the API's JSON shapes.

use std::path::Path;

use procession::store::{Cursor, Query, SledStore, Store, StoreError};
use procession::{RecordKind, State};
use serde_json::{json, Value};

use crate::api::{encode, ApiClient};
use crate::args::ListArgs;
use crate::error::CliError;

/// The target of a command.
#[derive(Debug)]
pub(crate) enum Target {
    Api(ApiClient),
    Store { store: Box<SledStore>, path: String },
}

/// Opens the store at `path`, refusing a missing one (sled would create it) and naming
/// the path when another process holds it.
pub(crate) fn open_store(path: &str) -> Result<Target, CliError> {
    if !Path::new(path).join("db").is_file() {
        return Err(CliError::NoStore {
            path: path.to_owned(),
        });
    }
    match SledStore::open(path) {
        Ok(store) => Ok(Target::Store {
            store: Box::new(store),
            path: path.to_owned(),
        }),
        Err(e) if is_lock_error(&e) => Err(CliError::StoreLocked {
            path: path.to_owned(),
        }),
        Err(e) => Err(CliError::Store(e)),
    }
}

/// sled reports a held file lock as an I/O error at open ("could not acquire lock").
fn is_lock_error(e: &StoreError) -> bool {
    if !matches!(e, StoreError::Open { .. }) {
        return false;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&s.to_string());
        source = s.source();
    }
    let text = text.to_ascii_lowercase();
    text.contains("lock") || text.contains("wouldblock") || text.contains("would block")
}

fn parse_state(s: &str) -> Result<State, CliError> {
    serde_json::from_value(Value::String(s.to_owned())).map_err(|_| {
        CliError::Usage(format!(
            "unknown state `{s}` (idle, scheduled, running, done, failed, cancel_requested, cancelling, cancelled)"
        ))
    })
}

fn parse_cursor(v: &str) -> Result<Cursor, CliError> {
    v.parse().map_err(|_| {
        CliError::Usage(format!(
            "--after must be the `next` of a previous page, not `{v}`"
        ))
    })
}

impl Target {
    /// One page of records: `{"records": [...], "next": "<cursor>" | null}`.
    pub(crate) async fn list(&self, a: &ListArgs) -> Result<Value, CliError> {
        match self {
            Target::Api(api) => {
                // Checked here too: a wrong state is a usage error whatever the target.
                for s in &a.state {
                    parse_state(s)?;
                }
                let mut q = format!("/api/runs?limit={}", a.limit);
                if !a.state.is_empty() {
                    q.push_str("&state=");
                    q.push_str(&encode(&a.state.join(",")));
                }
                if let Some(p) = &a.process {
                    q.push_str("&process=");
                    q.push_str(&encode(p));
                }
                if let Some(c) = &a.after {
                    q.push_str("&after=");
                    q.push_str(&encode(c));
                }
                if a.newest {
                    q.push_str("&order=newest");
                }
                api.get(&q, None).await
            }
            Target::Store { store, .. } => {
                let mut q = Query::new().limit(usize::from(a.limit));
                for s in &a.state {
                    q = q.state(parse_state(s)?);
                }
                if let Some(p) = &a.process {
                    q = q.process_type(p.clone());
                }
                if let Some(c) = &a.after {
                    q = q.after(Some(parse_cursor(c)?));
                }
                if a.newest {
                    q = q.newest_first();
                }
                let page = store.list(&q).map_err(CliError::Store)?;
                Ok(json!({
                    "records": page.records,
                    "next": page.next.map(|c| c.to_string()),
                }))
            }
        }
    }

    /// A record with its tasks: `{"record": {...}, "tasks": [...]}`.
    pub(crate) async fn show(&self, id: &str) -> Result<Value, CliError> {
        match self {
            Target::Api(api) => {
                api.get(&format!("/api/runs/{}", encode(id)), Some(id))
                    .await
            }
            Target::Store { store, .. } => {
                let not_found = || CliError::NotFound {
                    id: id.to_owned(),
                    message: format!("no record `{id}`"),
                };
                let rec = store
                    .get(id)
                    .map_err(CliError::Store)?
                    .ok_or_else(not_found)?;
                let tasks: Vec<Value> = if rec.kind == RecordKind::Process {
                    store
                        .tasks(id)
                        .map_err(CliError::Store)?
                        .iter()
                        .map(|(i, r)| procession::admin::task_json(*i, r))
                        .collect()
                } else {
                    Vec::new()
                };
                Ok(json!({ "record": rec, "tasks": tasks }))
            }
        }
    }

    /// Launches: `{"ok": true, "id": "..."}`.
    pub(crate) async fn launch(
        &self,
        process: &str,
        params: Value,
        id: Option<&str>,
        existing: bool,
    ) -> Result<Value, CliError> {
        let api = self.api("launch runs")?;
        if existing {
            let path = format!("/api/runs/{}/launch", encode(process));
            return api.post(&path, Some(process), &json!({})).await;
        }
        let body = json!({ "process": process, "params": params, "id": id });
        api.post("/api/runs", id, &body).await
    }

    /// Cancels: `{"ok": true, "record": {...}}`.
    pub(crate) async fn cancel(&self, id: &str) -> Result<Value, CliError> {
        let api = self.api("cancel runs")?;
        let path = format!("/api/runs/{}/cancel", encode(id));
        api.post(&path, Some(id), &json!({})).await
    }

    /// Dismisses: `{"ok": true, "record": {...}}`.
    pub(crate) async fn dismiss(&self, id: &str) -> Result<Value, CliError> {
        let api = self.api("dismiss runs")?;
        let path = format!("/api/runs/{}/dismiss", encode(id));
        api.post(&path, Some(id), &json!({})).await
    }

    /// Resyncs: `{"ok": true, "created": [ids], "updated": [ids], "deleted": [ids],
    /// "cancelled": [ids], "abandoned": [ids], "kept_active": [ids]}`.
    pub(crate) async fn resync(&self) -> Result<Value, CliError> {
        let api = self.api("resync the definitions")?;
        api.post("/api/resync", None, &json!({})).await
    }

    /// The API client, or the refusal of a store path for `what`.
    pub(crate) fn api(&self, what: &str) -> Result<&ApiClient, CliError> {
        match self {
            Target::Api(api) => Ok(api),
            Target::Store { path, .. } => Err(CliError::store_cannot(what, path)),
        }
    }
}
