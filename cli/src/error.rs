//! The command line's errors and what exit code each one gives.

use crate::Exit;

/// Why a command did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// No such record.
    #[error("{message}")]
    NotFound {
        /// The id asked for.
        id: String,
        /// What the target said.
        message: String,
    },
    /// The target refused (a 4xx of the API, or a typed refusal of the store).
    #[error("{message}")]
    Refused {
        /// A stable reason (`not-cancellable`, `launch-blocked`, `store-cannot`, …).
        code: String,
        /// What went wrong, for people.
        message: String,
    },
    /// The API could not be reached.
    #[error("cannot reach the admin API at {url}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What the client said.
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with a server error or something that is not its JSON.
    #[error("the admin API at {url} answered {status}: {message}")]
    Api {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// Another process holds the store.
    #[error("the store `{path}` is in use by another process (the running program holds it); use its admin API instead: --api URL")]
    StoreLocked {
        /// The store's directory.
        path: String,
    },
    /// There is no store at the path.
    #[error("no store at `{path}` (pass --store PATH, or --api URL for a running program)")]
    NoStore {
        /// The path given.
        path: String,
    },
    /// The store could not be opened or read.
    #[error("cannot read the store")]
    Store(#[source] procession::store::StoreError),
    /// A bad argument that clap could not check (JSON parameters, a state name, a cursor).
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The exit code of this error.
    pub(crate) fn exit(&self) -> Exit {
        match self {
            CliError::NotFound { .. } => Exit::NotFound,
            CliError::Refused { .. } => Exit::Refused,
            CliError::Unreachable { .. }
            | CliError::Api { .. }
            | CliError::StoreLocked { .. }
            | CliError::NoStore { .. }
            | CliError::Store(_) => Exit::Unavailable,
            CliError::Usage(_) => Exit::Usage,
        }
    }

    /// A stable kebab-case code, for `--output json`.
    pub(crate) fn code(&self) -> &str {
        match self {
            CliError::NotFound { .. } => "not-found",
            CliError::Refused { code, .. } => code,
            CliError::Unreachable { .. } => "unreachable",
            CliError::Api { .. } => "api-error",
            CliError::StoreLocked { .. } => "store-locked",
            CliError::NoStore { .. } => "no-store",
            CliError::Store(_) => "store-error",
            CliError::Usage(_) => "usage",
        }
    }

    /// The message with its causes.
    pub(crate) fn full_message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        message
    }

    /// A refusal of a store path for what only a running program can do.
    pub(crate) fn store_cannot(what: &str, path: &str) -> CliError {
        CliError::Refused {
            code: "store-cannot".into(),
            message: format!(
                "cannot {what} with the store `{path}` alone: that needs the program that registers the processes; run it and use its admin API (--api URL), or call procession_cli::run from its main"
            ),
        }
    }
}
