//! `runs watch`: follows a run over the API's event stream until it ends.
//!
//! On a terminal (stderr), one indicatif bar per running task, with its progress and
//! message, above a bar of the run's tasks done; elsewhere one plain line per task
//! state change on stdout; with `--output json`, nothing until the end. Then the run's
//! summary (or one JSON document).

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::api::{ApiClient, SseEvent};
use crate::error::CliError;
use crate::output::{is_end, record_state, task_state, text};

/// How the live part is shown.
#[derive(Debug)]
pub(crate) enum Live {
    /// indicatif bars on this draw target.
    Bars(MultiProgress),
    /// One line per task state change, on stdout.
    Lines,
    /// Nothing (JSON output).
    Quiet,
}

impl Live {
    /// Bars on stderr when it is a terminal, else lines.
    pub(crate) fn for_terminal() -> Live {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Live::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
        } else {
            Live::Lines
        }
    }
}

struct TaskLine {
    state: String,
    bar: Option<ProgressBar>,
}

/// What `watch` shows of one run.
#[derive(Debug)]
pub(crate) struct WatchView {
    run: String,
    live: Live,
    tasks: BTreeMap<String, TaskLine>,
    overall: Option<ProgressBar>,
}

impl std::fmt::Debug for TaskLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLine")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn task_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn overall_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {pos}/{len} tasks ended {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl WatchView {
    pub(crate) fn new(run: &str, live: Live) -> WatchView {
        WatchView {
            run: run.to_owned(),
            live,
            tasks: BTreeMap::new(),
            overall: None,
        }
    }

    /// Shows the snapshot `doc` (`{"record", "tasks"}`): the bars of the tasks that run.
    pub(crate) fn snapshot(&mut self, doc: &Value) {
        let empty = Vec::new();
        let tasks = doc.get("tasks").and_then(Value::as_array).unwrap_or(&empty);
        if let Live::Bars(mp) = &self.live {
            let overall = self.overall.get_or_insert_with(|| {
                let b = mp.add(ProgressBar::new(0).with_style(overall_style()));
                b.set_prefix(format!("run {}", self.run));
                b
            });
            // Task rows appear as tasks start: the graph's size is in the record.
            let total = doc["record"]["run"]["tasks"]
                .as_u64()
                .unwrap_or(0)
                .max(tasks.len() as u64);
            overall.set_length(total);
        }
        for t in tasks {
            let node = text(t, "node").to_owned();
            let state = task_state(t).to_owned();
            self.set_state(&node, &state, t.get("error").and_then(Value::as_str));
            if state == "running" {
                if let Some(p) = t.get("progress") {
                    self.progress(&node, p);
                }
            }
        }
        self.update_overall();
    }

    fn update_overall(&self) {
        if let Some(o) = &self.overall {
            let ended = self
                .tasks
                .values()
                .filter(|t| is_end(&t.state) || t.state == "skipped")
                .count();
            o.set_position(ended as u64);
        }
    }

    /// A task reached `state`.
    pub(crate) fn set_state(&mut self, node: &str, state: &str, error: Option<&str>) {
        let line = self.tasks.entry(node.to_owned()).or_insert(TaskLine {
            state: String::new(),
            bar: None,
        });
        // Events older than a snapshot may follow it: a task that has ended stays ended
        // (its first end is the one shown; a snapshot only refines `cancelled` into
        // `skipped`).
        let ended = |s: &str| is_end(s) || s == "skipped";
        if line.state == state
            || (ended(&line.state) && !(line.state == "cancelled" && state == "skipped"))
        {
            return;
        }
        state.clone_into(&mut line.state);
        match &self.live {
            Live::Bars(mp) => {
                if state == "running" {
                    if line.bar.is_none() {
                        let b = mp.add(ProgressBar::new(100).with_style(task_style()));
                        b.set_prefix(node.to_owned());
                        b.enable_steady_tick(Duration::from_millis(250));
                        line.bar = Some(b);
                    }
                } else if let Some(b) = line.bar.take() {
                    b.finish_and_clear();
                    mp.remove(&b);
                }
                if is_end(state) || state == "skipped" {
                    let suffix = error.map(|e| format!(": {e}")).unwrap_or_default();
                    let _ = mp.println(format!("{node} {state}{suffix}"));
                }
            }
            Live::Lines => {
                let suffix = error.map(|e| format!(": {e}")).unwrap_or_default();
                crate::stdout(&format!("{node} {state}{suffix}\n"));
            }
            Live::Quiet => {}
        }
        self.update_overall();
    }

    /// A task reported progress (`{"percent": …, "message": …}`).
    pub(crate) fn progress(&mut self, node: &str, p: &Value) {
        let Some(bar) = self.tasks.get(node).and_then(|l| l.bar.as_ref()) else {
            return;
        };
        if let Some(pct) = p.get("percent").and_then(Value::as_f64) {
            bar.set_position(pct.clamp(0.0, 100.0).round() as u64);
        }
        if let Some(m) = p.get("message").and_then(Value::as_str) {
            bar.set_message(m.to_owned());
        }
    }

    /// Applies one event of the stream; `Some(state)` when it ends the run.
    pub(crate) fn event(&mut self, e: &SseEvent) -> Option<String> {
        let body: Value = serde_json::from_str(&e.data).ok()?;
        let id = text(&body, "id");
        if id == self.run {
            if e.event == "state" {
                let state = text(&body, "state");
                if is_end(state) {
                    return Some(state.to_owned());
                }
            }
            return None;
        }
        let node = id
            .strip_prefix(self.run.as_str())?
            .strip_prefix('/')?
            .to_owned();
        match e.event.as_str() {
            "state" => {
                let state = text(&body, "state").to_owned();
                self.set_state(&node, &state, None);
            }
            "progress" => {
                if let Some(p) = body.get("progress") {
                    self.progress(&node, p);
                }
            }
            _ => {}
        }
        None
    }

    /// Removes the bars.
    pub(crate) fn finish(&mut self) {
        for l in self.tasks.values_mut() {
            if let Some(b) = l.bar.take() {
                b.finish_and_clear();
            }
        }
        if let Some(o) = self.overall.take() {
            o.finish_and_clear();
        }
        if let Live::Bars(mp) = &self.live {
            let _ = mp.clear();
        }
    }
}

/// How many times a broken event stream is reopened (with `Last-Event-ID`) before
/// `watch` gives up.
const RECONNECTS: u32 = 10;

/// Follows run `id` until it ends; returns its final `{"record", "tasks"}`.
pub(crate) async fn follow(
    api: &ApiClient,
    id: &str,
    view: &mut WatchView,
) -> Result<Value, CliError> {
    // The stream first, then the snapshot: nothing that happens between is missed
    // (an event also in the snapshot is applied twice, which changes nothing).
    // Without bars, progress is not shown: the server need not send it.
    let kinds = match view.live {
        Live::Bars(_) => "state,progress",
        Live::Lines | Live::Quiet => "state",
    };
    let mut sse = api.events(id, kinds, None).await?;
    let path = format!("/api/runs/{}", crate::api::encode(id));
    let snap = api.get(&path, Some(id)).await?;
    let state = record_state(&snap["record"]).to_owned();
    if is_end(&state) {
        return Ok(snap);
    }
    if state == "idle" {
        return Err(CliError::Refused {
            code: "not-running".into(),
            message: format!("run `{id}` is idle: nothing to watch (launch it with `procession runs launch {id} --existing --watch`)"),
        });
    }
    view.snapshot(&snap);
    let mut last_id: Option<String> = None;
    let mut reconnects = 0;
    loop {
        match sse.next().await {
            Some(e) => {
                if e.id.is_some() {
                    last_id.clone_from(&e.id);
                }
                if e.event == "resync" {
                    let snap = api.get(&path, Some(id)).await?;
                    if is_end(record_state(&snap["record"])) {
                        return Ok(snap);
                    }
                    view.snapshot(&snap);
                    continue;
                }
                // A task that failed or was cancelled: the snapshot tells its error, and
                // whether it was skipped (the event does not).
                if e.event == "state" && task_end_without_detail(id, &e) {
                    let snap = api.get(&path, Some(id)).await?;
                    view.snapshot(&snap);
                }
                if view.event(&e).is_some() {
                    return api.get(&path, Some(id)).await;
                }
            }
            None => {
                reconnects += 1;
                if reconnects > RECONNECTS {
                    return Err(CliError::Api {
                        url: api.url("/api/events"),
                        status: 0,
                        message: "the event stream keeps breaking".into(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(reconnects))).await;
                sse = api.events(id, kinds, last_id.as_deref()).await?;
                // The run may have ended while the stream was down (a shutdown ends it
                // too).
                let snap = api.get(&path, Some(id)).await?;
                if is_end(record_state(&snap["record"])) {
                    return Ok(snap);
                }
            }
        }
    }
}

/// Whether `e` ends a task of run `run` as failed or cancelled.
fn task_end_without_detail(run: &str, e: &SseEvent) -> bool {
    let Ok(body) = serde_json::from_str::<Value>(&e.data) else {
        return false;
    };
    let id = text(&body, "id");
    id.len() > run.len()
        && id.starts_with(run)
        && id.as_bytes()[run.len()] == b'/'
        && matches!(text(&body, "state"), "failed" | "cancelled")
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::InMemoryTerm;
    use serde_json::json;

    fn event(kind: &str, body: &Value) -> SseEvent {
        SseEvent {
            event: kind.into(),
            data: body.to_string(),
            id: Some("1".into()),
        }
    }

    /// The bars as a terminal shows them: one per running task with its percent and
    /// message, above nothing for the tasks that have not started.
    #[test]
    fn renders_one_bar_per_running_task() {
        let term = InMemoryTerm::new(12, 100);
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::term_like_with_hz(
            Box::new(term.clone()),
            200,
        ));
        let mut view = WatchView::new("r1", Live::Bars(mp));
        view.snapshot(&json!({
            "record": {"id": "r1", "status": {"state": "running"}, "run": {"tasks": 3}},
            "tasks": [
                {"node": "fetch", "state": "running", "progress": {"percent": 40.0, "message": "page 4 of 10"}},
                {"node": "clean", "state": "scheduled", "progress": {}},
            ]
        }));
        std::thread::sleep(Duration::from_millis(20));
        view.event(&event("progress", &json!({"id": "r1/fetch", "run": "r1", "kind": "progress", "progress": {"percent": 60.0, "message": "page 6 of 10"}})));
        view.tasks["fetch"].bar.as_ref().expect("a bar").tick();
        let screen = term.contents();
        assert!(screen.contains("run r1 0/3 tasks ended"), "{screen}");
        assert!(screen.contains("fetch ["), "{screen}");
        assert!(screen.contains(" 60% page 6 of 10"), "{screen}");
        assert!(
            !screen.contains("clean"),
            "a task that has not started has no bar: {screen}"
        );

        // It ends: its bar goes, a line says so, the other starts.
        view.event(&event(
            "state",
            &json!({"id": "r1/fetch", "run": "r1", "kind": "state", "state": "done"}),
        ));
        view.event(&event(
            "state",
            &json!({"id": "r1/clean", "run": "r1", "kind": "state", "state": "running"}),
        ));
        std::thread::sleep(Duration::from_millis(20));
        view.tasks["clean"].bar.as_ref().expect("a bar").tick();
        let screen = term.contents();
        assert!(screen.contains("fetch done"), "{screen}");
        assert!(screen.contains("clean ["), "{screen}");
        assert!(screen.contains("run r1 1/3 tasks ended"), "{screen}");
        assert!(!screen.contains("page 6 of 10"), "{screen}");

        // An event older than the snapshot that showed the end changes nothing.
        view.event(&event(
            "state",
            &json!({"id": "r1/fetch", "run": "r1", "kind": "state", "state": "running"}),
        ));
        assert!(view.tasks["fetch"].bar.is_none());
        assert_eq!(view.tasks["fetch"].state, "done");

        // The run's own end is what ends `watch`.
        let end = view.event(&event(
            "state",
            &json!({"id": "r1", "run": "r1", "kind": "state", "state": "failed"}),
        ));
        assert_eq!(end.as_deref(), Some("failed"));
        view.finish();
    }
}
