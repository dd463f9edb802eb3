//! Text output: tables of records and tasks, and a run's summary.

use std::fmt::Write as _;

use serde_json::Value;

/// The text of a JSON string field (empty when absent).
pub(crate) fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A record's state.
pub(crate) fn record_state(rec: &Value) -> &str {
    rec.get("status")
        .and_then(|s| s.get("state"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Whether a state is an end (done, failed, cancelled).
pub(crate) fn is_end(state: &str) -> bool {
    matches!(state, "done" | "failed" | "cancelled")
}

/// A task's shown state: `skipped` for a task skipped after a failed dependency.
pub(crate) fn task_state(t: &Value) -> &str {
    if t.get("skipped").and_then(Value::as_bool) == Some(true) {
        "skipped"
    } else {
        text(t, "state")
    }
}

fn percent(p: Option<&Value>) -> String {
    p.and_then(|p| p.get("percent"))
        .and_then(Value::as_f64)
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.0}%"))
}

fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.2}s")
    } else {
        let m = (s / 60.0).floor();
        format!("{m:.0}m{:.0}s", s - m * 60.0)
    }
}

/// Rows as a table with a header, columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{c:<w$}", w = widths[i]);
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `runs list` as text.
pub(crate) fn list(doc: &Value) -> String {
    let empty = Vec::new();
    let records = doc
        .get("records")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                text(r, "id").to_owned(),
                text(r, "process_type").to_owned(),
                record_state(r).to_owned(),
                percent(r.get("progress")),
                r.get("status")
                    .and_then(|s| s.get("duration"))
                    .and_then(Value::as_f64)
                    .map_or_else(|| "-".to_owned(), seconds),
            ]
        })
        .collect();
    let mut out = table(&["ID", "PROCESS", "STATE", "PROGRESS", "DURATION"], &rows);
    if let Some(next) = doc.get("next").and_then(Value::as_str) {
        let _ = writeln!(out, "more: --after {next}");
    }
    out
}

fn task_rows(tasks: &[Value]) -> Vec<Vec<String>> {
    tasks
        .iter()
        .map(|t| {
            let elapsed = t.get("elapsed_ms").and_then(Value::as_u64).unwrap_or(0);
            let mut note = t
                .get("error")
                .and_then(Value::as_str)
                .map(|e| format!("error: {e}"))
                .unwrap_or_default();
            if note.is_empty() {
                if let Some(m) = t
                    .get("progress")
                    .and_then(|p| p.get("message"))
                    .and_then(Value::as_str)
                {
                    m.clone_into(&mut note);
                }
            }
            vec![
                text(t, "node").to_owned(),
                text(t, "task").to_owned(),
                task_state(t).to_owned(),
                t.get("attempts")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    .to_string(),
                seconds(elapsed as f64 / 1000.0),
                percent(t.get("progress")),
                note,
            ]
        })
        .collect()
}

const TASK_HEADER: [&str; 7] = [
    "NODE", "TASK", "STATE", "ATTEMPTS", "ELAPSED", "PROGRESS", "NOTE",
];

/// `runs show` as text.
pub(crate) fn show(doc: &Value) -> String {
    let rec = &doc["record"];
    let mut out = String::new();
    let _ = writeln!(out, "id:       {}", text(rec, "id"));
    let _ = writeln!(out, "process:  {}", text(rec, "process_type"));
    let _ = writeln!(out, "state:    {}", record_state(rec));
    if let Some(d) = rec["status"].get("duration").and_then(Value::as_f64) {
        let _ = writeln!(out, "duration: {}", seconds(d));
    }
    if let Some(e) = rec["status"].get("error").and_then(Value::as_str) {
        let _ = writeln!(out, "error:    {e}");
    }
    let p = &rec["progress"];
    if p.get("percent").and_then(Value::as_f64).is_some()
        || p.get("message").is_some_and(|m| !m.is_null())
    {
        let line = format!("progress: {} {}", percent(Some(p)), text(p, "message"));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if let Some(tasks) = doc.get("tasks").and_then(Value::as_array) {
        if !tasks.is_empty() {
            out.push('\n');
            out.push_str(&table(&TASK_HEADER, &task_rows(tasks)));
        }
    }
    out
}

/// The summary `watch` ends with: the run's outcome, its tasks, and the counts.
pub(crate) fn summary(doc: &Value) -> String {
    let rec = &doc["record"];
    let state = record_state(rec);
    let mut out = String::new();
    let outcome = match state {
        "done" => "succeeded",
        "failed" => "failed",
        "cancelled" => "was cancelled",
        other => other,
    };
    let _ = write!(
        out,
        "run {} ({}) {outcome}",
        text(rec, "id"),
        text(rec, "process_type")
    );
    if let Some(d) = rec["status"].get("duration").and_then(Value::as_f64) {
        let _ = write!(out, " in {}", seconds(d));
    }
    out.push('\n');
    let empty = Vec::new();
    let tasks = doc.get("tasks").and_then(Value::as_array).unwrap_or(&empty);
    if !tasks.is_empty() {
        out.push_str(&table(&TASK_HEADER, &task_rows(tasks)));
    }
    let count = |s: &str| tasks.iter().filter(|t| task_state(t) == s).count();
    let _ = writeln!(
        out,
        "{} tasks: {} done, {} failed, {} cancelled, {} skipped",
        tasks.len(),
        count("done"),
        count("failed"),
        count("cancelled"),
        count("skipped")
    );
    if let Some(e) = rec["status"].get("error").and_then(Value::as_str) {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summary_counts_tasks_and_tells_the_outcome() {
        let doc = json!({
            "record": {"id": "r1", "process_type": "etl", "status": {"state": "failed", "duration": 1.5, "error": "task `load` failed"}},
            "tasks": [
                {"node": "extract", "task": "extract", "state": "done", "attempts": 1, "elapsed_ms": 200, "progress": {"percent": 100.0, "message": null}},
                {"node": "load", "task": "load", "state": "failed", "attempts": 2, "elapsed_ms": 10, "error": "disk full", "progress": {}},
                {"node": "report", "task": "report", "state": "cancelled", "skipped": true, "attempts": 0, "elapsed_ms": 0, "progress": {}},
            ]
        });
        let s = summary(&doc);
        assert!(s.starts_with("run r1 (etl) failed in 1.50s\n"), "{s}");
        assert!(s.contains("load     load     failed   2"), "{s}");
        assert!(s.contains("error: disk full"), "{s}");
        assert!(
            s.contains("3 tasks: 1 done, 1 failed, 0 cancelled, 1 skipped"),
            "{s}"
        );
        assert!(s.ends_with("error: task `load` failed\n"), "{s}");
    }
}
