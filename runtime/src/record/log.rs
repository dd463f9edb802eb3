//! What a record keeps besides its state: log entries with their [`Level`], and progress.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Severity of a task log entry.
///
/// # Examples
///
/// ```
/// use procession::Level;
/// assert!(Level::Warning > Level::Info);
/// assert_eq!(Level::Error.as_str(), "error");
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Detail for debugging.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that did not stop the task.
    Warning,
    /// Something failed.
    Error,
}

impl Level {
    /// The level in lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress of a record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// 0-100, or `None` for indeterminate.
    pub percent: Option<f64>,
    /// What is being done.
    pub message: Option<String>,
}

/// One entry of a record's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// ms since the Unix epoch.
    pub timestamp: u64,
    /// Severity.
    pub level: Level,
    /// Text.
    pub message: String,
    /// Optional structured data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// Log entries kept per record; older ones are dropped first.
pub const MAX_LOG: usize = 500;
