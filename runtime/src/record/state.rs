//! The state of a process record and its transition table.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a process (or of a task, for the child records of a run).
///
/// Transitions (everything else is refused and changes nothing):
///
/// | from | to |
/// |---|---|
/// | `idle` | `scheduled` |
/// | `scheduled` | `running`, `cancel_requested` |
/// | `running` | `done`, `failed`, `cancel_requested` |
/// | `cancel_requested` | `cancelling` |
/// | `cancelling` | `cancelled` |
/// | `done`, `failed`, `cancelled` | `scheduled` (relaunch), `idle` (dismiss) |
///
/// Cancelling a *scheduled* process ends it `cancelled` at once (the runtime records it
/// as one step; the table itself lists only `scheduled` → `cancel_requested`).
///
/// # Examples
///
/// ```
/// use procession::State;
/// assert!(State::Idle.can_transition(State::Scheduled));
/// assert!(!State::Idle.can_transition(State::Running));
/// let err = State::Idle.validate_transition(State::Running).unwrap_err();
/// assert_eq!(err.to_string(), "invalid state transition: idle → running");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Defined, never launched or dismissed.
    Idle,
    /// Launched, waiting to run.
    Scheduled,
    /// Running.
    Running,
    /// Ended successfully.
    Done,
    /// Ended with an error.
    Failed,
    /// Cancel asked, not yet acknowledged by the executor.
    CancelRequested,
    /// The executor is stopping the work.
    Cancelling,
    /// Ended by a cancel.
    Cancelled,
}

impl State {
    /// All states.
    pub const ALL: [State; 8] = [
        State::Idle,
        State::Scheduled,
        State::Running,
        State::Done,
        State::Failed,
        State::CancelRequested,
        State::Cancelling,
        State::Cancelled,
    ];

    /// The state in `snake_case`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Scheduled => "scheduled",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::CancelRequested => "cancel_requested",
            State::Cancelling => "cancelling",
            State::Cancelled => "cancelled",
        }
    }

    /// Whether the table allows `self → to`.
    pub fn can_transition(self, to: State) -> bool {
        use State::{
            CancelRequested, Cancelled, Cancelling, Done, Failed, Idle, Running, Scheduled,
        };
        matches!(
            (self, to),
            (Idle, Scheduled)
                | (Scheduled, Running | CancelRequested)
                | (Running, Done | Failed | CancelRequested)
                | (CancelRequested, Cancelling)
                | (Cancelling, Cancelled)
                | (Done | Failed | Cancelled, Scheduled | Idle)
        )
    }

    /// `Ok` when the table allows `self → to`.
    pub fn validate_transition(self, to: State) -> Result<(), InvalidTransition> {
        if self.can_transition(to) {
            Ok(())
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }

    /// `scheduled`, `running`, `cancel_requested` or `cancelling`.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            State::Scheduled | State::Running | State::CancelRequested | State::Cancelling
        )
    }

    /// done, failed or cancelled.
    pub fn is_end(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Cancelled)
    }

    /// idle, done, failed or cancelled.
    pub fn is_launchable(self) -> bool {
        self == State::Idle || self.is_end()
    }

    /// scheduled or running.
    pub fn is_cancellable(self) -> bool {
        matches!(self, State::Scheduled | State::Running)
    }

    /// done, failed or cancelled.
    pub fn is_dismissable(self) -> bool {
        self.is_end()
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid state transition: {from} → {to}")]
pub struct InvalidTransition {
    /// The current state.
    pub from: State,
    /// The refused target.
    pub to: State,
}
