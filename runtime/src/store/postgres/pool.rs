//! A small pool of blocking connections, each with its prepared statements, and the loop
//! that carries a store call over a broken connection.
//!
//! The runtime calls a store from one writer thread and a few blocking readers, so a
//! `Mutex<Vec<Conn>>` is all the pooling needed: a call takes an idle connection (or
//! opens one), and gives it back unless it broke.
//!
//! # Surviving the server
//!
//! A connection breaks when the server restarts (`pg_ctl restart`, a crash, a failover)
//! or when its backend is killed (`pg_terminate_backend`, an idle timeout). A call that
//! fails because its connection broke (the client says it is closed, an I/O error, or a
//! server error of class 08 or 57P01-57P03), and only then, is run again on a new
//! connection after a pause of 50 ms doubling up to 1 s, for as long as the retry window
//! (30 s unless the URL says `retry_window=…`); then it fails with
//! [`StoreError::Unavailable`](crate::store::StoreError::Unavailable) holding the last
//! error. A constraint, a decode error or a refused lease fails at once, as before. The
//! idle connections go with the broken one (they broke too, but a blocking client only
//! notices when it is used).
//!
//! Running a call again is safe because every call is one transaction or one statement:
//!
//! - A transaction that failed before its `COMMIT` was sent was rolled back by the server
//!   (a broken session aborts its open transaction): nothing of it was written.
//! - A `COMMIT` whose answer was lost may or may not have happened. [`Pool::transaction`]
//!   asks the server for the transaction's id before it commits
//!   (`txid_current_if_assigned()`, `NULL` for a transaction that wrote nothing), and
//!   after such a loss asks `txid_status(id)` on the new connection: `committed` returns
//!   the value the call had computed (the call is not run again: an `update` closure is
//!   not asked twice, an archive is not copied twice, a delivery is not enqueued twice,
//!   a claim of deliveries returns the deliveries it claimed), `aborted` runs it again,
//!   `in progress` (a killed backend still finishing) is asked again after a pause. This
//!   is the use the PostgreSQL manual gives `txid_status`. A server restarted after a
//!   crash may hand out again the id of a transaction none of whose WAL reached the disk;
//!   the question is asked first thing on the new connection to keep that window small.
//! - Calls made of single statements outside a transaction are safe to repeat as they
//!   are: `claim` raises the run's token once more (the same owner gets the newer token,
//!   which is the one it uses), `renew` and `release` set an expiry, `claim_idempotent`
//!   finds its own key (`ON CONFLICT DO NOTHING` then a read), `next_id` skips an id
//!   (ids only need to be unique), `set_channel_state` writes the same value again, and
//!   reads read again.
//!
//! What a restart can still lose is what the server itself drops: with
//! `synchronous_commit = off` a commit is acknowledged before it is on disk, and a crash
//! of the server loses the last ones (keep it `on`, the default, for a store).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row, Statement};

/// Idle connections kept beyond this number are closed.
const MAX_IDLE: usize = 8;

/// How long a call keeps trying when the URL does not say (`retry_window=…`).
pub(super) const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// The first pause after a broken connection; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The connect timeout when the URL sets none: a server that does not answer (a
/// partition rather than a refused port) must not hold a call past its window.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server lets a session of ours wait for its client inside a transaction
/// before it ends the session, which rolls the transaction back and releases its locks
/// (`idle_in_transaction_session_timeout`, unless the server, database, role or URL set
/// one). A transaction of ours never waits for its client that long: only a worker
/// stopped (`SIGSTOP`, a frozen VM) between two statements of one does, and its locks
/// (a run's record, its lease under a write's fence) would keep its runs from every
/// other worker, whose takeover skips a locked record or waits for the lease, until it
/// woke up. Its call then runs again on a new connection (see [`broken`]), fenced as
/// any late write of a worker that lost its lease.
const IDLE_IN_TRANSACTION: &str = "10s";

/// The option of ours in a connection string; the client would refuse it.
const RETRY_OPTION: &str = "retry_window";

/// One connection and the statements prepared on it (by their SQL text).
pub(super) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// Its session plans every prepared statement as a generic plan
    /// ([`Pool::call_generic`]).
    generic: bool,
}

/// What the server says of a transaction whose `COMMIT` answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Committed,
    Aborted,
    InProgress,
    /// Too old for the server to know (never, seconds after the commit).
    Unknown,
}

impl Conn {
    pub(super) fn open(config: &Config, generic: bool) -> Result<Conn, postgres::Error> {
        let mut client = config.connect(NoTls)?;
        let idle = format!(
            "SELECT set_config('idle_in_transaction_session_timeout', '{IDLE_IN_TRANSACTION}', \
             false) WHERE current_setting('idle_in_transaction_session_timeout') = '0'"
        );
        if generic {
            client.batch_execute(&format!("SET plan_cache_mode = force_generic_plan; {idle}"))?;
        } else {
            client.batch_execute(&idle)?;
        }
        Ok(Conn {
            client,
            statements: HashMap::new(),
            generic,
        })
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(super) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query(&s, params)
    }

    pub(super) fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_one(&s, params)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query_opt(&s, params)
    }

    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.execute(&s, params)
    }

    /// Runs statements without parameters (BEGIN, COMMIT, migrations).
    pub(super) fn batch(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }

    /// Runs `sql` (no parameters; several statements allowed) with the simple protocol,
    /// and returns the first column of every row it returned, as text.
    pub(super) fn simple_texts(&mut self, sql: &str) -> Result<Vec<String>, postgres::Error> {
        Ok(self
            .client
            .simple_query(sql)?
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect())
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The id of the open transaction, `None` while it has written nothing.
    fn assigned_xid(&mut self) -> Result<Option<i64>, postgres::Error> {
        self.query_one("SELECT txid_current_if_assigned()", &[])?
            .try_get(0)
    }

    /// Whether transaction `xid` committed.
    fn outcome(&mut self, xid: i64) -> Result<Outcome, postgres::Error> {
        let status: Option<String> = match self.query_one("SELECT txid_status($1)", &[&xid]) {
            Ok(row) => row.try_get(0)?,
            // "transaction ID … is in the future": the server restarted before anything
            // of that transaction reached its log, so it cannot have committed.
            Err(e) if e.code() == Some(&SqlState::INVALID_PARAMETER_VALUE) => {
                return Ok(Outcome::Aborted)
            }
            Err(e) => return Err(e),
        };
        Ok(match status.as_deref() {
            Some("committed") => Outcome::Committed,
            Some("aborted") => Outcome::Aborted,
            Some(_) => Outcome::InProgress,
            None => Outcome::Unknown,
        })
    }
}

/// An error of a store call, which may hold the client's error.
pub(super) trait CallError: From<postgres::Error> {
    /// The client's error behind this one, if any.
    fn client_error(&self) -> Option<&postgres::Error>;
}

/// Why a call failed.
#[derive(Debug)]
pub(super) enum Failure<E> {
    /// For a reason another attempt would not change (or that is not the connection's).
    Call(E),
    /// The connection kept breaking for the whole retry window.
    GaveUp {
        /// From the first break to giving up.
        waited: Duration,
        /// Attempts that failed on a broken connection (or to connect).
        attempts: u32,
        /// The last error (`None` only if none was kept).
        last: Option<E>,
        /// The transaction whose `COMMIT` answer was lost and whose outcome could not be
        /// learnt: it may have been written.
        unsure: Option<i64>,
    },
}

/// Whether `e` (on `conn`, when one was had) means the connection is gone rather than
/// that the call was wrong.
fn broken(conn: Option<&Conn>, e: &postgres::Error) -> bool {
    if conn.is_some_and(Conn::is_closed) || e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // 08: connection exception; 57P01-03: admin shutdown, crash shutdown, cannot
        // connect now (starting up, shutting down, in recovery); 53300: too many
        // connections (a restart's burst of reconnections); 25P03: the session waited
        // for us inside a transaction too long (see `IDLE_IN_TRANSACTION`).
        let c = code.code();
        return c.starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            ]
            .contains(code);
    }
    // A reset or refused socket, a connect timeout.
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One attempt of a call.
enum Step<T, E> {
    Done(T),
    Failed(E),
    /// `COMMIT` of transaction `xid` was sent and the connection broke before its answer.
    Unsure {
        xid: i64,
        value: T,
        error: E,
    },
}

/// One attempt of a transaction: `BEGIN`, `f`, `COMMIT` (`ROLLBACK` when `f` fails).
fn transaction_once<T, E: CallError>(
    conn: &mut Conn,
    f: &mut impl FnMut(&mut Conn) -> Result<T, E>,
) -> Step<T, E> {
    if let Err(e) = conn.batch("BEGIN") {
        return Step::Failed(e.into());
    }
    let rollback = |conn: &mut Conn| {
        if !conn.is_closed() {
            let _ = conn.batch("ROLLBACK");
        }
    };
    let value = match f(conn) {
        Ok(v) => v,
        Err(e) => {
            rollback(conn);
            return Step::Failed(e);
        }
    };
    let xid = match conn.assigned_xid() {
        Ok(x) => x,
        Err(e) => {
            rollback(conn);
            return Step::Failed(e.into());
        }
    };
    match conn.batch("COMMIT") {
        Ok(()) => Step::Done(value),
        Err(e) => match xid {
            Some(xid) if broken(Some(conn), &e) => Step::Unsure {
                xid,
                value,
                error: e.into(),
            },
            // Nothing written (a read-only transaction): running it again is safe.
            _ => Step::Failed(e.into()),
        },
    }
}

/// The idle connections, and how long a call rides out a broken connection.
pub(super) struct Pool {
    config: Config,
    /// Idle connections of the server's plan choice (0) and of generic plans (1).
    idle: Mutex<[Vec<Conn>; 2]>,
    window: Duration,
    /// The database, for the logs.
    location: String,
}

impl Pool {
    pub(super) fn new(config: Config, window: Duration, location: String) -> Pool {
        Pool {
            config,
            idle: Mutex::new([Vec::new(), Vec::new()]),
            window,
            location,
        }
    }

    /// The connection settings (for a dedicated connection, such as a listener's).
    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    /// An idle connection (of generic plans or not), or a new one.
    fn get(&self, generic: bool) -> Result<Conn, postgres::Error> {
        let idle =
            self.idle.lock().unwrap_or_else(PoisonError::into_inner)[usize::from(generic)].pop();
        match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => Conn::open(&self.config, generic),
        }
    }

    /// Gives `conn` back (a broken one is dropped).
    pub(super) fn put(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = &mut idle[usize::from(conn.generic)];
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Every idle connection, to close them.
    pub(super) fn drain(&self) -> Vec<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all = std::mem::take(&mut idle[0]);
        all.append(&mut idle[1]);
        all
    }

    /// Runs `f` (one statement, or reads) on a pooled connection; again on a new
    /// connection while the connection breaks, for up to the retry window.
    pub(super) fn call<T, E: CallError>(
        &self,
        f: impl FnMut(&mut Conn) -> Result<T, E>,
    ) -> Result<T, Failure<E>> {
        self.call_on(false, f)
    }

    /// Runs `f` in one transaction (rolled back when it fails); again while the
    /// connection breaks, for up to the retry window, never after it committed.
    pub(super) fn transaction<T, E: CallError>(
        &self,
        mut f: impl FnMut(&mut Conn) -> Result<T, E>,
    ) -> Result<T, Failure<E>> {
        self.retrying(false, |conn| transaction_once(conn, &mut f))
    }

    /// [`call`](Pool::call) on a connection whose session plans every prepared
    /// statement as a generic plan from its first execution (`plan_cache_mode =
    /// force_generic_plan`), for statements whose generic plan is sound whatever the
    /// statistics at their first execution: the server otherwise plans each of the
    /// first five executions per connection anew, and keeps doing so for a statement
    /// whose generic plan it estimates dearer (planning the task queue's statements,
    /// CTEs over arrays, cost as much server time as running them). Not for a statement
    /// whose best plan depends on the table's size: its generic plan is made once, at
    /// its first execution, maybe on a table still empty.
    pub(super) fn call_generic<T, E: CallError>(
        &self,
        f: impl FnMut(&mut Conn) -> Result<T, E>,
    ) -> Result<T, Failure<E>> {
        self.call_on(true, f)
    }

    /// [`call`](Pool::call) on a generic-plan connection or an ordinary one.
    fn call_on<T, E: CallError>(
        &self,
        generic: bool,
        mut f: impl FnMut(&mut Conn) -> Result<T, E>,
    ) -> Result<T, Failure<E>> {
        self.retrying(generic, |conn| match f(conn) {
            Ok(v) => Step::Done(v),
            Err(e) => Step::Failed(e),
        })
    }

    fn retrying<T, E: CallError>(
        &self,
        generic: bool,
        mut once: impl FnMut(&mut Conn) -> Step<T, E>,
    ) -> Result<T, Failure<E>> {
        // When the connection first broke, attempts since, the next pause.
        let mut broke: Option<Instant> = None;
        let mut attempts = 0u32;
        // Whether the new connection since the last break was logged.
        let mut told = true;
        let mut backoff = FIRST_BACKOFF;
        // A transaction whose COMMIT answer was lost: its id, the value it computed and
        // the error that lost the answer.
        let mut unsure: Option<(i64, T, E)> = None;
        'calls: loop {
            // The error that broke the attempt (`None`: the one kept in `unsure`).
            let error: Option<E> = 'attempt: {
                let mut conn = match self.get(generic) {
                    Ok(c) => c,
                    Err(e) if broken(None, &e) => break 'attempt Some(e.into()),
                    Err(e) => return Err(Failure::Call(e.into())),
                };
                if let Some(first) = broke.filter(|_| !told) {
                    told = true;
                    tracing::info!(
                        database = %self.location,
                        after_ms = millis(first.elapsed()),
                        attempts,
                        "reconnected to PostgreSQL"
                    );
                }
                if let Some((xid, value, lost)) = unsure.take() {
                    match conn.outcome(xid) {
                        Ok(Outcome::Committed) => {
                            tracing::info!(database = %self.location, xid, "a commit whose answer was lost had committed");
                            self.put(conn);
                            return Ok(value);
                        }
                        // Nothing of it was written: run it again, below.
                        Ok(Outcome::Aborted) => {
                            tracing::info!(database = %self.location, xid, "a commit whose answer was lost had not committed: running the call again");
                        }
                        // The old backend is still ending it: ask again after a pause.
                        Ok(Outcome::InProgress) => {
                            self.put(conn);
                            let waited = broke.map_or(Duration::ZERO, |b| b.elapsed());
                            if waited + backoff > self.window {
                                return Err(Failure::GaveUp {
                                    waited,
                                    attempts,
                                    last: Some(lost),
                                    unsure: Some(xid),
                                });
                            }
                            unsure = Some((xid, value, lost));
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue 'calls;
                        }
                        Ok(Outcome::Unknown) => {
                            self.put(conn);
                            return Err(Failure::GaveUp {
                                waited: broke.map_or(Duration::ZERO, |b| b.elapsed()),
                                attempts,
                                last: Some(lost),
                                unsure: Some(xid),
                            });
                        }
                        Err(e) => {
                            let gone = broken(Some(&conn), &e);
                            unsure = Some((xid, value, lost));
                            if gone {
                                break 'attempt Some(e.into());
                            }
                            self.put(conn);
                            return Err(Failure::Call(e.into()));
                        }
                    }
                }
                match once(&mut conn) {
                    Step::Done(v) => {
                        self.put(conn);
                        return Ok(v);
                    }
                    Step::Failed(e) => {
                        if !e.client_error().is_some_and(|pe| broken(Some(&conn), pe)) {
                            self.put(conn);
                            return Err(Failure::Call(e));
                        }
                        break 'attempt Some(e);
                    }
                    Step::Unsure { xid, value, error } => {
                        unsure = Some((xid, value, error));
                        break 'attempt None;
                    }
                }
            };
            // The connection broke: it and the idle ones go.
            drop(self.drain());
            attempts += 1;
            told = false;
            let shown = error
                .as_ref()
                .or(unsure.as_ref().map(|u| &u.2))
                .and_then(CallError::client_error)
                .map(|e| crate::error::one_line(e))
                .unwrap_or_default();
            let first = *broke.get_or_insert_with(|| {
                tracing::warn!(database = %self.location, error = %shown, "the PostgreSQL connection broke: reconnecting");
                Instant::now()
            });
            let waited = first.elapsed();
            if waited + backoff > self.window {
                let (unsure, lost) = unsure.map(|(x, _, e)| (x, e)).unzip();
                return Err(Failure::GaveUp {
                    waited,
                    attempts,
                    last: error.or(lost),
                    unsure,
                });
            }
            tracing::debug!(database = %self.location, error = %shown, attempts, "PostgreSQL not reachable yet");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Sets a connect timeout on `config` when it has none.
pub(super) fn with_connect_timeout(config: &mut Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
}

/// Takes our option `retry_window=<duration>` out of connection string `url` (the URL
/// form's query, or a word of the `key=value` form), for the client refuses options it
/// does not know. Returns the rest and the window ([`DEFAULT_RETRY_WINDOW`] when absent).
pub(super) fn take_retry_window(url: &str) -> Result<(String, Duration), String> {
    let mut window = None;
    let mut take = |value: &str| -> Result<(), String> {
        window = Some(parse_window(value)?);
        Ok(())
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    match pair.split_once('=') {
                        Some((RETRY_OPTION, v)) => take(v)?,
                        _ => kept.push(pair),
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        // Words are separated by blanks outside single quotes (`\'` escapes one).
        let mut out = String::with_capacity(url.len());
        let mut word = String::new();
        let mut quoted = false;
        let mut escaped = false;
        let mut flush = |word: &mut String, out: &mut String| -> Result<(), String> {
            match word
                .strip_prefix(RETRY_OPTION)
                .and_then(|w| w.strip_prefix('='))
            {
                Some(v) => take(v)?,
                None if word.is_empty() => {}
                None => {
                    if !out.is_empty() {
                        out.push(' ');
                    }
                    out.push_str(word);
                }
            }
            word.clear();
            Ok(())
        };
        for c in url.chars() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '\'' {
                quoted = !quoted;
            } else if c.is_whitespace() && !quoted {
                flush(&mut word, &mut out)?;
                continue;
            }
            word.push(c);
        }
        flush(&mut word, &mut out)?;
        out
    };
    Ok((rest, window.unwrap_or(DEFAULT_RETRY_WINDOW)))
}

/// `30s`, `500ms`, `2m`, or a number of seconds.
fn parse_window(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{RETRY_OPTION}={text}` is not a duration (say 30s, 500ms or 2m; 0 fails at once)")
    };
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" | "min" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_window_is_taken_out_of_a_url() {
        let (rest, w) = take_retry_window("postgres://u@h:5/db?retry_window=3s").unwrap();
        assert_eq!(
            (rest.as_str(), w),
            ("postgres://u@h:5/db", Duration::from_secs(3))
        );
        let (rest, w) =
            take_retry_window("postgresql://h/db?connect_timeout=2&retry_window=250ms&user=u")
                .unwrap();
        assert_eq!(rest, "postgresql://h/db?connect_timeout=2&user=u");
        assert_eq!(w, Duration::from_millis(250));
        let (rest, w) = take_retry_window("postgres://h/db").unwrap();
        assert_eq!(
            (rest.as_str(), w),
            ("postgres://h/db", DEFAULT_RETRY_WINDOW)
        );
        assert!(rest.parse::<Config>().is_ok());
    }

    #[test]
    fn the_retry_window_is_taken_out_of_key_value_words() {
        let (rest, w) =
            take_retry_window("host=h retry_window=2m password='a b\\' retry_window=1s' dbname=d")
                .unwrap();
        assert_eq!(rest, "host=h password='a b\\' retry_window=1s' dbname=d");
        assert_eq!(w, Duration::from_mins(2));
        let (_, w) = take_retry_window("host=h retry_window=0").unwrap();
        assert_eq!(w, Duration::ZERO);
    }

    #[test]
    fn a_bad_retry_window_is_refused_with_the_accepted_forms() {
        for bad in ["x", "5h", "", "-1s", "99999999999999999999m"] {
            let err =
                take_retry_window(&format!("postgres://h/db?retry_window={bad}")).unwrap_err();
            assert!(err.contains("say 30s, 500ms or 2m"), "{bad}: {err}");
        }
    }
}
