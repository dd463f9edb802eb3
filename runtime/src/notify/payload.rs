//! The JSON of a notification: the run's report as `RunReport::to_json` writes it, plus
//! the record's id, the run's token, the event type and its timing; filtered per channel
//! and shaped per webhook (extra keys, nesting).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::record::ProcessRecord;
use crate::report::{RunReport, RunStatus, TaskReport, TaskStatus};

/// How much of the report a channel gets.
#[derive(Debug, Clone)]
pub(crate) struct Content {
    pub(crate) only_errors: bool,
    pub(crate) tasks: Option<Vec<String>>,
    pub(crate) show_chain: bool,
}

impl Default for Content {
    fn default() -> Self {
        Content {
            only_errors: false,
            tasks: None,
            show_chain: true,
        }
    }
}

impl Content {
    fn keeps(&self, t: &TaskReport) -> bool {
        (!self.only_errors || t.status == TaskStatus::Errored)
            && self.tasks.as_ref().is_none_or(|names| {
                names
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(&t.id) || n.eq_ignore_ascii_case(t.name()))
            })
    }
}

/// How a webhook shapes its body: extra top-level keys (they win over the report's on a
/// clash) and an optional key to nest the report's fields under.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shape {
    pub(crate) extra: Map<String, Value>,
    pub(crate) nest_under: Option<String>,
}

/// A run's end, as notified: what every channel's body is made from.
///
/// The JSON body has the fields of [`RunReport::to_json`] (`process`, `run_id`, `status`,
/// `elapsed_ns`, `tasks`) plus:
///
/// | key | value |
/// |---|---|
/// | `type` | `"run.succeeded"`, `"run.failed"` or `"run.cancelled"` |
/// | `process_id` | the run's process record id |
/// | `run_token` | the run's token (hex): tells two runs of one record apart |
/// | `started_at`, `ended_at` | ms since the Unix epoch (`started_at` may be null) |
///
/// # Examples
///
/// ```
/// # #[tokio::main] async fn main() {
/// use procession::notify::Notification;
/// use procession::prelude::*;
/// #[task] fn a() -> u32 { 7 }
/// #[process] fn p(b: &mut Builder) { b.task(A::new()); }
/// let rt = Runtime::in_memory().start().await.unwrap();
/// let report = rt.run(P {}).await.unwrap();
/// let v: serde_json::Value = serde_json::from_str(&Notification::from_report(&report, None).to_json()).unwrap();
/// assert_eq!(v["type"], "run.succeeded");
/// assert_eq!(v["tasks"][0]["result"], 7);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Notification {
    report: RunReport,
    status: RunStatus,
    process_id: String,
    run_token: u64,
    started_at: Option<u64>,
    ended_at: u64,
}

#[derive(Serialize)]
struct Header<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    process_id: &'a str,
    run_token: String,
    started_at: Option<u64>,
    ended_at: u64,
}

impl Notification {
    /// The notification of `report`, for the run of record `rec` (`None` for a run that
    /// has no record: its id is the report's `run_id`).
    pub fn from_report(report: &RunReport, rec: Option<&ProcessRecord>) -> Notification {
        let ended_at = crate::record::now_ms();
        let elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX);
        Notification {
            report: report.clone(),
            status: report.status,
            process_id: rec.map_or_else(|| report.run_id.clone(), |r| r.id.clone()),
            run_token: rec.and_then(|r| r.run.as_ref()).map_or(0, |m| m.token),
            started_at: rec
                .and_then(|r| r.status.running_since)
                .or_else(|| ended_at.checked_sub(elapsed_ms)),
            ended_at,
        }
    }

    /// The same notification with another end status (a cancel that won the race with
    /// the run's end).
    #[must_use]
    pub(crate) fn with_status(mut self, status: RunStatus) -> Notification {
        self.status = status;
        self.report.status = status;
        self
    }

    /// The report as notified (every task).
    pub(crate) fn report(&self) -> &RunReport {
        &self.report
    }

    /// The run's status as notified.
    pub fn status(&self) -> RunStatus {
        self.status
    }

    /// The event type: `run.succeeded`, `run.failed` or `run.cancelled`.
    pub fn event_type(&self) -> &'static str {
        match self.status {
            RunStatus::Succeeded => "run.succeeded",
            RunStatus::Failed => "run.failed",
            RunStatus::Cancelled => "run.cancelled",
        }
    }

    /// A key unique to this run: the run's token (hex), or for a run without a record,
    /// a hash of its id and end time.
    pub(crate) fn event_key(&self) -> String {
        if self.run_token != 0 {
            return format!("{:016x}", self.run_token);
        }
        let mut h = rustc_hash::FxHasher::default();
        std::hash::Hash::hash(&(&self.process_id, self.ended_at), &mut h);
        format!("{:016x}", std::hash::Hasher::finish(&h))
    }

    /// The full JSON (every task, no extra keys).
    pub fn to_json(&self) -> String {
        self.to_body(&Content::default(), &Shape::default())
    }

    /// The body for a channel with `content` and `shape`.
    pub(crate) fn to_body(&self, content: &Content, shape: &Shape) -> String {
        let mut generic = Map::new();
        if let Ok(Value::Object(h)) = serde_json::to_value(Header {
            kind: self.event_type(),
            process_id: &self.process_id,
            run_token: format!("{:016x}", self.run_token),
            started_at: self.started_at,
            ended_at: self.ended_at,
        }) {
            generic.extend(h);
        }
        let report = RunReport {
            tasks: self
                .report
                .tasks
                .iter()
                .filter(|t| content.keeps(t))
                .cloned()
                .collect(),
            ..without_tasks(&self.report)
        };
        if let Ok(Value::Object(r)) = serde_json::to_value(&report) {
            generic.extend(r);
        }
        if !content.show_chain {
            if let Some(Value::Array(tasks)) = generic.get_mut("tasks") {
                for e in tasks.iter_mut().filter_map(|t| t.get_mut("error")) {
                    if let Some(e) = e.as_object_mut() {
                        e.remove("chain");
                    }
                }
            }
        }
        let mut body = match &shape.nest_under {
            Some(key) => {
                let mut m = Map::new();
                m.insert(key.clone(), Value::Object(generic));
                m
            }
            None => generic,
        };
        for (k, v) in &shape.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body).to_string()
    }
}

/// A copy of `r` with no task entries (the entries are filtered per channel).
fn without_tasks(r: &RunReport) -> RunReport {
    RunReport {
        process: r.process.clone(),
        run_id: r.run_id.clone(),
        status: r.status,
        elapsed: r.elapsed,
        tasks: Vec::new(),
        handles: None,
    }
}

/// The parts of a stored body an e-mail needs (the generic fields, not nested).
#[cfg(feature = "email")]
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) kind: String,
    pub(crate) process_id: String,
    pub(crate) started_at: Option<u64>,
    pub(crate) ended_at: u64,
    pub(crate) report: RunReport,
}

#[cfg(feature = "email")]
impl Parsed {
    /// Reads a body written by [`Notification::to_body`] (twice: the report's results
    /// are raw JSON, which a flattened or buffered read cannot keep).
    pub(crate) fn parse(body: &str) -> Result<Parsed, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: String,
            process_id: String,
            started_at: Option<u64>,
            ended_at: u64,
        }
        let head: Head = serde_json::from_str(body)?;
        Ok(Parsed {
            kind: head.kind,
            process_id: head.process_id,
            started_at: head.started_at,
            ended_at: head.ended_at,
            report: serde_json::from_str(body)?,
        })
    }
}
