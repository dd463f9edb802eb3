//! The `procession` command line: list, show, watch, launch, cancel and dismiss the runs
//! of a procession runtime.
//!
//! ```text
//! procession runs list --api http://127.0.0.1:7878 --state running
//! procession runs watch daily-report-3 --api http://127.0.0.1:7878
//! procession runs show daily-report-3 --store ./procession-data --output json
//! ```
//!
//! # Targets
//!
//! - `--api URL` (env `PROCESSION_API`, token in `--token` / `PROCESSION_TOKEN`): the
//!   admin HTTP API ([`procession::admin`]) of a running program. Every command works.
//! - `--store PATH` (env `PROCESSION_STORE`, default `./procession-data`): the sled store
//!   of a program that is **not** running (sled locks it: while the program runs, use its
//!   API). `list`, `show`, and `watch` of an ended run work; launching, cancelling,
//!   dismissing and resyncing need the program that registers the processes, and are
//!   refused (exit code 4) with a message that says so.
//! - Your own program: call [`run`] from its `main` to get the whole command line
//!   against its runtime (it serves the admin API on a loopback port for the command's
//!   duration).
//!
//! # Output and exit codes
//!
//! `--output json` prints exactly one JSON document per command on stdout (an error is
//! `{"error": {"code", "message", "exit"}}`). The exit codes are [`Exit`]'s.

mod api;
mod args;
mod error;
mod output;
mod target;
mod watch;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser;
use procession::admin::{self, AdminConfig};
use procession::Runtime;
use serde_json::{json, Value};

use args::{Cli, Command, Output, Runs};
use error::CliError;
use target::Target;
use watch::{Live, WatchView};

/// The exit codes of `procession`.
///
/// # Examples
///
/// ```
/// use procession_cli::Exit;
/// assert_eq!(Exit::NotFound.code(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the command did what it was asked (for `watch`: the run ended done).
    Success,
    /// 1: the watched run failed or was cancelled, or another error.
    RunFailed,
    /// 2: the command line is wrong.
    Usage,
    /// 3: no such run.
    NotFound,
    /// 4: refused: not cancellable, not dismissable, launch blocked, invalid parameters,
    /// or a store path asked to do what only the running program can.
    Refused,
    /// 5: the API cannot be reached or the store cannot be opened.
    Unavailable,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::RunFailed => 1,
            Exit::Usage => 2,
            Exit::NotFound => 3,
            Exit::Refused => 4,
            Exit::Unavailable => 5,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// The `procession` binary: parses the process's arguments, runs the command against
/// `--api` or `--store`, and returns its exit code.
///
/// # Examples
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     procession_cli::main()
/// }
/// ```
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::RunFailed.into();
        }
    };
    rt.block_on(async move {
        let output = cli.global.output;
        let target = match &cli.global.api {
            Some(url) => api::ApiClient::new(url, cli.global.token.clone()).map(Target::Api),
            None => target::open_store(&cli.global.store),
        };
        let exit = match target {
            Ok(t) => execute(&cli.command, &t, output).await,
            Err(e) => report(&e, output),
        };
        exit.into()
    })
}

/// Runs the command line given to your program (`std::env::args`) against `rt`: the
/// `procession` commands, for a program that registers its own processes. It serves
/// `rt`'s admin API on a loopback port with a fresh token for the command's duration.
/// `--api` is refused and `--store` ignored (the target is always `rt`).
///
/// `runs launch` without `--watch` returns once the run is launched; your program
/// decides whether to wait for it (a shutdown suspends it, the next start resumes it).
///
/// # Examples
///
/// ```no_run
/// use procession::prelude::*;
/// #[task] fn ping() {}
/// #[process] fn health(p: &mut Builder) { p.task(Ping::new()); }
///
/// #[tokio::main]
/// async fn main() -> std::process::ExitCode {
///     let rt = Runtime::open("./procession-data").register::<Health>().start().await.unwrap();
///     // `my-program runs launch health --watch`, `my-program runs list`, …
///     let code = procession_cli::run(rt.clone()).await;
///     rt.shutdown().await.unwrap();
///     code
/// }
/// ```
pub async fn run(rt: Runtime) -> ExitCode {
    run_with_args(rt, std::env::args_os()).await
}

/// [`run`] with the given arguments (the first is the program's name).
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// #[task] fn ping() {}
/// #[process] fn health(p: &mut Builder) { p.task(Ping::new()); }
/// # #[tokio::main] async fn main() {
/// let rt = Runtime::in_memory().register::<Health>().start().await.unwrap();
/// let code = procession_cli::run_with_args(
///     rt,
///     ["prog", "runs", "launch", "health", "--watch", "--output", "json"],
/// )
/// .await;
/// assert_eq!(code, std::process::ExitCode::SUCCESS);
/// # }
/// ```
pub async fn run_with_args<I, T>(rt: Runtime, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage.code()
            } else {
                0
            });
        }
    };
    let output = cli.global.output;
    if cli.global.api.is_some() {
        return report(
            &CliError::Usage(
                "--api is not taken here: the commands act on this program's runtime".into(),
            ),
            output,
        )
        .into();
    }
    let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let server = match admin::serve(
        rt,
        AdminConfig::default().token(token.clone()),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot serve the admin API on a loopback port: {e}");
            return Exit::Unavailable.into();
        }
    };
    let url = format!("http://{}", server.local_addr());
    let exit = match api::ApiClient::new(&url, Some(token)) {
        Ok(c) => execute(&cli.command, &Target::Api(c), output).await,
        Err(e) => report(&e, output),
    };
    server.shutdown().await;
    exit.into()
}

/// Prints `e` (stderr, or a JSON document on stdout) and returns its exit code.
fn report(e: &CliError, output: Output) -> Exit {
    let exit = e.exit();
    match output {
        Output::Text => eprintln!("error: {}", e.full_message()),
        Output::Json => stdout(&format!(
            "{}\n",
            json!({ "error": { "code": e.code(), "message": e.full_message(), "exit": exit.code() } })
        )),
    }
    exit
}

/// Writes to stdout; a closed pipe (`procession runs list | head`) is not an error.
pub(crate) fn stdout(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn print(doc: &Value, output: Output, text: impl FnOnce(&Value) -> String) {
    match output {
        Output::Json => stdout(&format!("{doc}\n")),
        Output::Text => stdout(&text(doc)),
    }
}

async fn execute(cmd: &Command, target: &Target, output: Output) -> Exit {
    match run_command(cmd, target, output).await {
        Ok(exit) => exit,
        Err(e) => report(&e, output),
    }
}

async fn run_command(cmd: &Command, target: &Target, output: Output) -> Result<Exit, CliError> {
    let Command::Runs(runs) = cmd;
    match runs {
        Runs::List(a) => {
            let doc = target.list(a).await?;
            print(&doc, output, output::list);
        }
        Runs::Show { id } => {
            let doc = target.show(id).await?;
            print(&doc, output, output::show);
        }
        Runs::Watch { id } => return watch(target, id, output).await,
        Runs::Launch(a) => {
            let params = match &a.params {
                Some(p) => serde_json::from_str(p)
                    .map_err(|e| CliError::Usage(format!("--params is not JSON: {e}")))?,
                None => Value::Null,
            };
            let doc = target
                .launch(&a.process, params, a.id.as_deref(), a.existing)
                .await?;
            let id = doc
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if a.watch {
                return watch(target, &id, output).await;
            }
            print(&json!({ "id": id }), output, |_| format!("launched {id}\n"));
        }
        Runs::Cancel { id, wait } => {
            let mut doc = target.cancel(id).await?;
            if *wait {
                let api = target.api("cancel runs")?;
                let mut view = WatchView::new(id, Live::Quiet);
                let end = watch::follow(api, id, &mut view).await?;
                doc = json!({ "ok": true, "record": end["record"] });
            }
            print(&doc, output, |d| {
                format!(
                    "{}: {}\n",
                    output::text(&d["record"], "id"),
                    output::record_state(&d["record"])
                )
            });
        }
        Runs::Dismiss { id } => {
            let doc = target.dismiss(id).await?;
            print(&doc, output, |d| {
                format!(
                    "{}: {}\n",
                    output::text(&d["record"], "id"),
                    output::record_state(&d["record"])
                )
            });
        }
        Runs::Resync => {
            let doc = target.resync().await?;
            print(&doc, output, |d| {
                let ids = |key: &str| {
                    d[key]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
                        .unwrap_or_default()
                };
                let mut out = format!(
                    "resynced: {} created, {} updated, {} deleted, {} kept active\n",
                    ids("created").len(),
                    ids("updated").len(),
                    ids("deleted").len(),
                    ids("kept_active").len()
                );
                for (key, what) in [
                    ("cancelled", "cancelled (no longer defined)"),
                    (
                        "abandoned",
                        "deleted while still running (the grace ran out)",
                    ),
                    ("kept_active", "kept: still active"),
                ] {
                    for id in ids(key) {
                        let _ = writeln!(out, "  {id}: {what}");
                    }
                }
                out
            });
        }
    }
    Ok(Exit::Success)
}

/// The exit code of a run that ended in `state`.
fn outcome(state: &str) -> Exit {
    if state == "done" {
        Exit::Success
    } else {
        Exit::RunFailed
    }
}

async fn watch(target: &Target, id: &str, output: Output) -> Result<Exit, CliError> {
    let end = match target {
        Target::Api(api) => {
            let live = match output {
                Output::Json => Live::Quiet,
                Output::Text => Live::for_terminal(),
            };
            let mut view = WatchView::new(id, live);
            let end = watch::follow(api, id, &mut view).await;
            view.finish();
            end?
        }
        Target::Store { path, .. } => {
            // Nothing runs in a store no process holds: only an ended run can be shown.
            let doc = target.show(id).await?;
            if !output::is_end(output::record_state(&doc["record"])) {
                return Err(CliError::store_cannot(
                    "watch a run that has not ended",
                    path,
                ));
            }
            doc
        }
    };
    print(&end, output, output::summary);
    Ok(outcome(output::record_state(&end["record"])))
}
