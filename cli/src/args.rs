//! The command line's grammar (clap derive).

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Targets:
  --api URL     the admin HTTP API of a running program (procession::admin); every command
  --store PATH  the sled store of a program that is not running (list, show, and watch of an
                ended run; launching, cancelling and dismissing need the running program)

Exit codes:
  0  success (for watch and launch --watch: the run ended done)
  1  the run failed or was cancelled, or another error
  2  usage error
  3  not found (no such run)
  4  refused (not cancellable, not dismissable, launch blocked, invalid parameters, a token
     the API does not accept, a store path asked to do what only a running program can, ...)
  5  cannot reach the API or open the store";

/// `procession`: list, show, watch, launch, cancel and dismiss the runs of a procession
/// runtime, over its admin HTTP API or directly in its store.
#[derive(Debug, Parser)]
#[command(name = "procession", version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The admin API's base URL (e.g. `http://127.0.0.1:7878`); used instead of --store
    #[arg(long, env = "PROCESSION_API", global = true, value_name = "URL")]
    pub(crate) api: Option<String>,
    /// The API's token (sent as `Authorization: Bearer`)
    #[arg(long, env = "PROCESSION_TOKEN", global = true, hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The store directory, when no --api is given
    #[arg(
        long,
        env = "PROCESSION_STORE",
        global = true,
        value_name = "PATH",
        default_value = "./procession-data"
    )]
    pub(crate) store: String,
    /// Output format: text for people, json for scripts (exactly one JSON document)
    #[arg(long, short, value_enum, global = true, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Tables, bars and summaries.
    Text,
    /// One JSON document on stdout (errors too: `{"error": {...}}`).
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Runs: list, show, watch, launch, cancel, dismiss, resync
    #[command(subcommand)]
    Runs(Runs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum Runs {
    /// List process records, newest last or (--newest) first (one page; pass `next` back
    /// with --after)
    List(ListArgs),
    /// A record with its tasks
    Show {
        /// The run's id
        id: String,
    },
    /// Follow a run until it ends: one bar per running task, then its summary
    Watch {
        /// The run's id
        id: String,
    },
    /// Launch a registered process (or, with --existing, an existing record by id)
    Launch(LaunchArgs),
    /// Cancel a scheduled or running run (and its children)
    Cancel {
        /// The run's id
        id: String,
        /// Wait until the run has ended
        #[arg(long)]
        wait: bool,
    },
    /// Reset an ended run to idle (its run joins the record's history)
    Dismiss {
        /// The run's id
        id: String,
    },
    /// Resync the definitions of the running program into its store
    Resync,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only records in these states (comma-separated: `idle`, `scheduled`, `running`,
    /// `done`, `failed`, `cancel_requested`, `cancelling`, `cancelled`)
    #[arg(long, value_delimiter = ',')]
    pub(crate) state: Vec<String>,
    /// Only records of this process type
    #[arg(long)]
    pub(crate) process: Option<String>,
    /// At most this many records (1 to 500)
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub(crate) limit: u16,
    /// Start after this cursor (the `next` of the previous page)
    #[arg(long)]
    pub(crate) after: Option<String>,
    /// Newest first (pages then continue toward older records)
    #[arg(long)]
    pub(crate) newest: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LaunchArgs {
    /// The process type (its #[process] name), or the record's id with --existing
    pub(crate) process: String,
    /// The process's parameters as JSON (its struct's fields)
    #[arg(long, value_name = "JSON")]
    pub(crate) params: Option<String>,
    /// The new run's id (default: `<process>-<n>`)
    #[arg(long, conflicts_with = "existing")]
    pub(crate) id: Option<String>,
    /// Launch the existing record PROCESS (a definition) instead of a new run
    #[arg(long, conflicts_with = "params")]
    pub(crate) existing: bool,
    /// Watch the run until it ends (exit code from its outcome)
    #[arg(long)]
    pub(crate) watch: bool,
}
