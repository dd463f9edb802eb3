//! The error of the runtime's API, and its `Result`.

use crate::graph::GraphError;
use crate::record::{InvalidTransition, State};
use crate::store::StoreError;

/// Error returned by the runtime's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process's graph is invalid.
    #[error("invalid graph: {0}")]
    Graph(#[from] GraphError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A launch option or a process's parameters could not be serialized.
    #[error("`{name}` could not be serialized: {source}")]
    Serialize {
        /// What was being serialized.
        name: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// No record has this id.
    #[error("no process `{id}`")]
    NotFound {
        /// The id.
        id: String,
    },
    /// The record exists but its run `seq` is neither its current run nor one of the past
    /// runs it keeps (see [`RuntimeBuilder::keep_runs`](super::RuntimeBuilder::keep_runs)).
    #[error("process `{id}` keeps no run {seq}")]
    RunNotKept {
        /// The record.
        id: String,
        /// The run number asked for.
        seq: u64,
    },
    /// A record with this id exists already.
    #[error("process `{id}` already exists")]
    AlreadyExists {
        /// The id.
        id: String,
    },
    /// The record is not in a launchable state (idle, done, failed, cancelled).
    #[error("process `{id}` cannot be launched: it is {state}")]
    NotLaunchable {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// The record does not allow a cancel ([`Definition::cancellable`](super::Definition::cancellable)`(false)`).
    #[error("process `{id}` is not cancellable")]
    NotCancellable {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// The record is not in a cancellable state: it has ended, or a cancel is under way.
    #[error("process `{id}` cannot be cancelled: it is {state}")]
    NotCancellableState {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// The record is not in a dismissable state (done, failed, cancelled).
    #[error("process `{id}` cannot be dismissed: it is {state}")]
    NotDismissable {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// The record is active; the operation needs it ended.
    #[error("process `{id}` is {state}; end it first")]
    Active {
        /// The id.
        id: String,
        /// Its state.
        state: State,
    },
    /// A record names a process type this runtime does not know.
    #[error("process type `{name}` is not registered with this runtime (use `RuntimeBuilder::register`)")]
    UnknownProcessType {
        /// The type's name.
        name: String,
    },
    /// A record of another process type exists under this id.
    #[error("process `{id}` is a `{found}`, not a `{expected}`")]
    WrongType {
        /// The id.
        id: String,
        /// The type of the stored record.
        found: String,
        /// The type launched.
        expected: String,
    },
    /// A refused state transition.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// A malformed schedule.
    #[error(transparent)]
    Schedule(#[from] crate::schedule::ScheduleError),
    /// An id is empty, too long or contains a NUL character.
    #[error("invalid process id `{id}`: {reason}")]
    InvalidId {
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// A task of the process needs a resource this runtime does not hold (a `Res<T>`
    /// parameter of its `#[task]` function). Reported by
    /// [`RuntimeBuilder::start`](super::RuntimeBuilder::start) for the processes of
    /// definitions, and by every launch before anything is written or run.
    #[error("task `{task}` of process `{process}` needs the resource `{resource}`, which this runtime does not hold: register it with `RuntimeBuilder::resource`")]
    MissingResource {
        /// The process.
        process: String,
        /// The task (its node id in the process's graph).
        task: String,
        /// The resource's type.
        resource: &'static str,
    },
    /// Launches of this record are blocked ([`Runtime::block_launches`](super::Runtime::block_launches));
    /// nothing was written.
    #[error("launches of process `{id}` are blocked{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    LaunchBlocked {
        /// The record.
        id: String,
        /// The reason given when it was blocked.
        reason: Option<String>,
    },
    /// Parameters given as JSON do not fit the process type's parameters.
    #[error("invalid parameters for process `{process}`: {source}")]
    InvalidParams {
        /// The process type.
        process: String,
        /// What did not fit (field, type, line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A filter that would match every record was given where that is refused (a cancel
    /// by filter needs at least one condition).
    #[error("an empty filter matches every record; give at least one condition")]
    EmptyFilter,
    /// The runtime is shutting down and accepts no new work.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// No notification delivery has this id.
    #[error("no delivery `{id}`")]
    DeliveryNotFound {
        /// The id.
        id: String,
    },
    /// The delivery is still pending: it is attempted on its schedule.
    #[error("delivery `{id}` is still pending; only a delivered or failed one is replayed")]
    DeliveryPending {
        /// The id.
        id: String,
    },
    /// The channel was disabled by a receiver (HTTP 410).
    #[error(
        "channel `{name}` is disabled ({reason}); enable it first with `Runtime::enable_channel`"
    )]
    ChannelDisabled {
        /// The channel.
        name: String,
        /// Why it was disabled.
        reason: String,
    },
    /// The run ended without a report (its driver was stopped).
    #[error("run `{run_id}` ended abnormally: {message}")]
    RunAborted {
        /// The run.
        run_id: String,
        /// What happened.
        message: String,
    },
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
