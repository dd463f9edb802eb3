//! The admin API's errors: the one JSON shape of every refusal, and the server's start
//! errors.

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::runtime::Error;

/// Why [`serve`](super::serve) did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A non-loopback address was asked for without a token: anyone who reaches the
    /// address could control the runtime.
    #[error("refusing to serve the admin API on {addr} without a token: it is not a loopback address; set `AdminConfig::token` or listen on 127.0.0.1")]
    PublicWithoutToken {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// A refusal of the admin API, sent as
/// `{"error": {"code": "...", "message": "...", "status": 404}}`.
///
/// `code` is stable (scripts match on it); `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, kebab-case reason (`not-found`, `launch-blocked`, `invalid-filter`, …).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            Error::NotFound { .. } | Error::DeliveryNotFound { .. } => (S::NOT_FOUND, "not-found"),
            Error::NotLaunchable { .. } => (S::CONFLICT, "not-launchable"),
            Error::NotCancellable { .. } => (S::CONFLICT, "not-cancellable"),
            Error::NotCancellableState { .. } => (S::CONFLICT, "not-cancellable-state"),
            Error::NotDismissable { .. } => (S::CONFLICT, "not-dismissable"),
            Error::LaunchBlocked { .. } => (S::CONFLICT, "launch-blocked"),
            Error::AlreadyExists { .. } => (S::CONFLICT, "already-exists"),
            Error::Active { .. } => (S::CONFLICT, "active"),
            Error::WrongType { .. } => (S::CONFLICT, "wrong-type"),
            Error::Transition(_) => (S::CONFLICT, "invalid-transition"),
            Error::UnknownProcessType { .. } => (S::UNPROCESSABLE_ENTITY, "unknown-process-type"),
            Error::InvalidParams { .. } | Error::Serialize { .. } => {
                (S::UNPROCESSABLE_ENTITY, "invalid-params")
            }
            Error::Graph(_) => (S::UNPROCESSABLE_ENTITY, "invalid-graph"),
            Error::MissingResource { .. } => (S::UNPROCESSABLE_ENTITY, "missing-resource"),
            Error::InvalidId { .. } => (S::BAD_REQUEST, "invalid-id"),
            Error::EmptyFilter => (S::BAD_REQUEST, "empty-filter"),
            Error::Config(_) => (S::BAD_REQUEST, "invalid-setting"),
            Error::Schedule(_) => (S::BAD_REQUEST, "invalid-schedule"),
            Error::DeliveryPending { .. } => (S::CONFLICT, "delivery-pending"),
            Error::ChannelDisabled { .. } => (S::CONFLICT, "channel-disabled"),
            Error::ShuttingDown => (S::SERVICE_UNAVAILABLE, "shutting-down"),
            _ => {
                tracing::error!(error = %e, "admin API: internal error");
                (S::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        // The message with its causes: `invalid parameters …: missing field `name``.
        ApiError::new(status, code, crate::error::one_line(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "status": self.status.as_u16(),
            }
        });
        (self.status, axum::Json(body)).into_response()
    }
}
