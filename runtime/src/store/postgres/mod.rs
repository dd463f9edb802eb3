//! The PostgreSQL store (feature `postgres`): the records, task rows, leases, history and
//! outbox of a runtime in a PostgreSQL database, through the blocking `postgres` client.
//!
//! Several workers (processes, hosts) share one database (issue 14, run level): runs are
//! claimed with leases fenced by tokens on the database clock, renewed by one batched
//! heartbeat statement per worker, and taken over with `FOR UPDATE SKIP LOCKED` when
//! their lease expires (see [`PgStore`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use postgres::types::ToSql;
use postgres::Row;

/// The part of a worker's heartbeat that both heartbeat statements share (the run
/// leases' [`Store::heartbeat`] and the task claims' [`super::TaskQueue::heartbeat_tasks`]):
/// the CTEs `beat` (this worker's leases still held with their token, renewed: `$1`
/// worker, `$2` runs, `$3` tokens, `$4` lease in ms; returns the renewed runs) and `seen`
/// (the worker's row stamped; returns its id when the row was there).
macro_rules! heartbeat_ctes {
    () => {
        "beat AS (
             UPDATE procession_leases AS l
             SET expires_at = procession_now_ms() + $4
             FROM unnest($2::text[], $3::bigint[]) AS h(run, token)
             WHERE l.run = h.run AND l.token = h.token AND l.owner = $1
               AND l.expires_at > 0
             RETURNING l.run),
         seen AS (
             UPDATE procession_workers SET last_heartbeat = procession_now_ms()
             WHERE id = $1
             RETURNING id)"
    };
}

mod pool;
mod schema;
mod tasks;

use self::pool::{CallError, Conn, Failure, Pool};
use super::codec::{decode_record, decode_row, encode, encode_row};
use super::outbox::{
    states_to_scan, ChannelState, Delivery, DeliveryPage, DeliveryQuery, DeliveryState,
    DeliveryUpdate, Pager,
};
use super::{
    sweepable_end, Applied, Batch, Beat, Cursor, Enqueue, Keyed, Lease, Page, PastRun, Query,
    Store, StoreError, Swept, TaskRow, Update, WorkerInfo,
};
use crate::record::{ProcessRecord, State};

/// Workers whose last heartbeat is older than this are removed from the workers table
/// when another worker starts (a worker killed without a clean shutdown leaves its row).
const FORGET_WORKERS_MS: i64 = 24 * 3600 * 1000;

/// Records fetched per round trip when a listing filters by metadata (which no column
/// answers).
const SCAN_CHUNK: i64 = 256;

/// Errors inside the store, turned into [`StoreError`] at the trait's boundary.
#[derive(Debug)]
enum PgError {
    Pg(postgres::Error),
    Newer { found: u32, supported: u32 },
    BadVersion(i64),
    Store(StoreError),
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> Self {
        PgError::Pg(e)
    }
}

impl From<StoreError> for PgError {
    fn from(e: StoreError) -> Self {
        PgError::Store(e)
    }
}

impl CallError for PgError {
    fn client_error(&self) -> Option<&postgres::Error> {
        match self {
            PgError::Pg(e) => Some(e),
            _ => None,
        }
    }
}

impl PgError {
    fn into_store(self, path: &str) -> StoreError {
        match self {
            PgError::Pg(e) => StoreError::io(path, e),
            PgError::Newer { found, supported } => StoreError::Incompatible {
                path: path.to_owned(),
                found,
                supported,
            },
            PgError::BadVersion(v) => StoreError::Corrupt {
                path: path.to_owned(),
                key: "procession_schema.version".into(),
                message: format!("{v} is not a schema version"),
            },
            PgError::Store(e) => e,
        }
    }
}

/// The store in a PostgreSQL database (feature `postgres`), opened by
/// [`Runtime::connect`](crate::Runtime::connect).
///
/// - **Schema**: versioned migrations embedded in the binary are applied at open, in one
///   transaction under an advisory lock (two workers starting at once do not race); a
///   database migrated by a newer procession is refused with
///   [`StoreError::Incompatible`] naming both versions.
/// - **Durability**: every write is one committed transaction, so [`Store::flush`] has
///   nothing left to do (the server's `synchronous_commit` decides what a crash of the
///   server can lose; a crash of the worker loses nothing committed).
/// - **Leases** are fenced by tokens that only grow; their expiry is on the database
///   clock. [`Store::claim`] refuses a run whose unexpired lease another owner holds.
/// - **Several workers per database** ([`Store::is_shared`]): any number of runtimes, in
///   any number of processes and hosts, open the same database. A run belongs to the
///   worker holding its lease (`procession_leases`: owner, token, expiry on the database
///   clock). Every worker renews all its leases in one statement
///   ([`Store::heartbeat`], which also stamps its row of `procession_workers`), and
///   takes over active runs of its process types whose lease expired with one
///   `INSERT … SELECT … FOR UPDATE SKIP LOCKED … ON CONFLICT DO UPDATE … WHERE expired`
///   ([`Store::claim_expired`]): no leader, and two workers never take the same run. A
///   worker that lost its lease (paused past it, or cut off) is fenced: its task rows
///   carry the old token and are dropped ([`Applied::fenced`]), its heartbeat is
///   refused and the runtime stops the run.
/// - **Idempotency keys** are taken in the transaction that writes the launch's record
///   ([`Store::update_keyed`]): the key's row is inserted first, so two workers
///   launching one key at once wait on its unique index, and one gets the other's run.
/// - **Hygiene**: the takeover poll reads a partial index of active runs, so finished
///   rows do not slow it down ([`PgStore::explain_hot_path`] shows the plans); the
///   retention sweep ([`Store::sweep_finished`]) reads a partial index of finished
///   launched roots and locks them with `SKIP LOCKED`, so every worker may sweep; the
///   rows of workers silent for ten lease times go ([`Store::forget_workers`]).
/// - **Task-level claims** ([`Store::task_queue`], used with
///   [`RuntimeBuilder::spread_tasks`](crate::RuntimeBuilder::spread_tasks)):
///   `procession_task_claims` holds a row per offered or waiting task of a live run
///   (deleted when the run ends); workers claim ready, expired or past-deadline rows in
///   batches with `WITH c AS MATERIALIZED (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)
///   UPDATE … SET token = token + 1, …` (only ready and running rows are in its partial
///   index), finish them with one `UPDATE … FROM unnest(…)` fenced per row by its token
///   that also counts down the waiting rows of each success's dependents (those at 0
///   become ready: no round trip through the run's coordinator; schema v5), renew them
///   in the heartbeat's statement, and `NOTIFY procession_tasks` when a task is offered
///   or ends (a hint: the runtime polls too). A finish that runs again after a lost
///   answer stores and counts down nothing again.
/// - **Reconnects**: a call whose connection broke (a restarted server, a killed
///   backend) runs again on a new connection, pausing 50 ms doubling to 1 s, for up to
///   the retry window: 30 s, or `retry_window=<duration>` in the URL
///   (`postgres://…/db?retry_window=10s`; `0` fails at once). Then it fails with
///   [`StoreError::Unavailable`] holding the last error. A call is never run again after
///   its transaction committed (the server is asked when the answer to `COMMIT` was
///   lost); why running it again is otherwise safe is said call by call in the source
///   (`postgres/pool.rs`).
/// - **Stopped workers**: each connection sets `idle_in_transaction_session_timeout` to
///   10 s unless the server, database, role or URL (`options=-c…`) set one. A worker
///   stopped between two statements of a transaction (`SIGSTOP`, a frozen VM) would
///   otherwise keep its locks, and with them its runs from every other worker, until it
///   woke up; the server now ends its session and rolls it back, and the call runs
///   again on a new connection when the worker wakes up, fenced like any late write.
///   A call of ours never waits between statements that long; a `Store::update`
///   closure must not either.
/// - Values read back are untrusted: a row that does not decode is
///   [`StoreError::Corrupt`] naming its key, never a panic.
///
/// # Examples
///
/// ```no_run
/// use procession::store::{PgStore, Store};
/// let store = PgStore::connect("postgres://postgres@127.0.0.1:5432/procession")?;
/// println!("{} records", store.count(&Default::default())?);
/// # Ok::<(), procession::store::StoreError>(())
/// ```
pub struct PgStore {
    pool: Pool,
    location: String,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The blocking client runs its own tokio runtime, which must not be dropped (or
        // blocked on) inside an async context: close the connections on a thread of
        // their own, and wait, so that they are closed when this returns.
        let conns = self.pool.drain();
        let closer = std::thread::spawn(move || drop(conns));
        let _ = closer.join();
    }
}

/// `postgres://user@host:port/db` of `config`, without its password.
fn describe(config: &postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map_or_else(String::new, |h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(p) => p.display().to_string(),
        });
    let port = config
        .get_ports()
        .first()
        .map_or_else(String::new, |p| format!(":{p}"));
    let user = config
        .get_user()
        .map_or_else(String::new, |u| format!("{u}@"));
    let db = config.get_dbname().unwrap_or("");
    format!("postgres://{user}{host}{port}/{db}")
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn state_code(s: State) -> i16 {
    State::ALL
        .iter()
        .position(|&x| x == s)
        .and_then(|i| i16::try_from(i).ok())
        .unwrap_or(0)
}

fn delivery_code(s: DeliveryState) -> i16 {
    i16::from(s.tag())
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, or
    /// the `key=value` form) and applies the schema's migrations. Other workers may have
    /// the same database open. Besides the client's options, the URL may say how long a
    /// call rides out a broken connection: `retry_window=30s` (the default; `500ms`, `2m`).
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the URL is invalid or the server cannot be reached;
    /// [`StoreError::Incompatible`] when the
    /// database's schema is newer than this build's. Never panics.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use procession::store::{PgStore, StoreError};
    /// match PgStore::connect("postgres://postgres@127.0.0.1/procession") {
    ///     Ok(store) => drop(store),
    ///     Err(StoreError::Incompatible { found, supported, .. }) => {
    ///         eprintln!("schema {found} is newer than {supported}: upgrade procession")
    ///     }
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// ```
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        let (url, retry_window) = pool::take_retry_window(url)
            .map_err(|e| StoreError::open("(invalid PostgreSQL URL)", e))?;
        let mut config = postgres::Config::from_str(&url)
            .map_err(|e| StoreError::open("(invalid PostgreSQL URL)", e))?;
        pool::with_connect_timeout(&mut config);
        let location = describe(&config);
        let open = |e: PgError| match e.into_store(&location) {
            StoreError::Io { source, .. } => StoreError::Open {
                path: location.clone(),
                source,
            },
            other => other,
        };
        let mut conn = Conn::open(&config, false).map_err(|e| open(e.into()))?;
        schema::migrate(&mut conn).map_err(open)?;
        tracing::info!(database = %location, schema = schema::supported(), "PostgreSQL store open");
        let pool = Pool::new(config, retry_window, location.clone());
        pool.put(conn);
        Ok(PgStore { pool, location })
    }

    /// The newest schema version this build applies and reads.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(procession::store::PgStore::schema_version() >= 1);
    /// ```
    pub fn schema_version() -> u32 {
        schema::supported()
    }

    /// The plans PostgreSQL uses for the statements of the hot path, by name: `claim`
    /// (a run's lease), `heartbeat` (a worker's renewals), `claim_expired` (the takeover
    /// poll, for `process_types`), `fence` (the lease check of every fenced write),
    /// `claim_tasks` (the claim of spread tasks, for `process_types`),
    /// `claim_deliveries` (the outbox's claim), `sweep` and `sweep_deliveries` (the
    /// retention sweep's candidates). Each is the text of `EXPLAIN EXECUTE` of the statement prepared as
    /// the store prepares it, planned as a generic plan (the plan a prepared statement
    /// settles on after a few executions), for sample parameters; nothing is executed.
    /// On a database with many finished runs none of them should read a table that
    /// grows with them (`Seq Scan on procession_records`, `…_tasks`, `…_leases`,
    /// `…_deliveries`): finished rows stay out of their index ranges, so their cost does
    /// not grow with the history kept.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use procession::store::PgStore;
    /// let store = PgStore::connect("postgres://postgres@127.0.0.1/procession")?;
    /// for (statement, plan) in store.explain_hot_path(&["report"])? {
    ///     assert!(!plan.contains("Seq Scan on procession_records"), "{statement}:\n{plan}");
    /// }
    /// # Ok::<(), procession::store::StoreError>(())
    /// ```
    pub fn explain_hot_path(
        &self,
        process_types: &[&str],
    ) -> Result<Vec<(&'static str, String)>, StoreError> {
        let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
        let types = format!(
            "ARRAY[{}]::text[]",
            process_types
                .iter()
                .map(|t| quote(t))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let now = crate::record::now_ms();
        let statements: [(&'static str, &str, String); 8] = [
            (
                "claim",
                CLAIM_SQL,
                "'explain-run', 'explain-worker', 30000".into(),
            ),
            (
                "heartbeat",
                HEARTBEAT_SQL,
                "'explain-worker', ARRAY['explain-run'], ARRAY[1::bigint], 30000".into(),
            ),
            (
                "claim_expired",
                CLAIM_EXPIRED_SQL,
                format!("'explain-worker', {types}, 30000, 64, ARRAY['explain-run']"),
            ),
            ("fence", TOKENS_SQL, "ARRAY['explain-run']".into()),
            (
                "claim_tasks",
                tasks::TASK_CLAIM_SQL,
                format!("'explain-worker', {types}, 30000, 64"),
            ),
            ("claim_deliveries", DUE_DELIVERIES_SQL, format!("{now}, 64")),
            ("sweep", SWEEP_ROOTS_SQL, format!("{now}, 64")),
            (
                "sweep_deliveries",
                SWEEP_DELIVERIES_SQL,
                format!("{now}, 64, 1"),
            ),
        ];
        self.tx(|c| {
            c.batch("SET LOCAL plan_cache_mode = force_generic_plan")?;
            let mut plans = Vec::with_capacity(statements.len());
            for (name, sql, args) in &statements {
                c.batch(&format!("PREPARE procession_explain AS {sql}"))?;
                let plan = c.simple_texts(&format!("EXPLAIN EXECUTE procession_explain({args})"));
                c.batch("DEALLOCATE procession_explain")?;
                plans.push((*name, plan?.join("\n")));
            }
            Ok(plans)
        })
    }

    /// Runs `f` on a pooled connection (again on a new one while the connection breaks:
    /// only for statements that are safe to repeat, see `pool.rs`).
    fn with<T>(&self, f: impl FnMut(&mut Conn) -> Result<T, PgError>) -> Result<T, StoreError> {
        self.pool.call(f).map_err(|e| self.failed(e))
    }

    /// [`Store::claim_expired_except`] with `live` the runs live on `owner`; `None`:
    /// none of `owner`'s leases is taken ([`Store::claim_expired`]).
    fn claim_expired_with(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
        live: Option<&[&str]>,
    ) -> Result<Vec<Lease>, StoreError> {
        if process_types.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.with(|c| {
            // Active runs of these types that no live worker holds, children first; the
            // record rows a concurrent claim locked are skipped, and the conflict
            // clause re-checks the expiry on the row as it is now, so two workers never
            // both take a run. An expired lease of this very worker is taken only for a
            // run it does not drive (`live` lists those it does; its heartbeat renews
            // them): a claim whose answer was lost, or a run it stopped itself.
            let rows = c.query(
                CLAIM_EXPIRED_SQL,
                &[
                    &owner,
                    &process_types,
                    &to_i64(ttl_ms),
                    &to_i64(limit as u64),
                    &live,
                ],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(Lease {
                        run: r.try_get(0)?,
                        owner: owner.to_owned(),
                        token: to_u64(r.try_get(1)?),
                        expires_at: to_u64(r.try_get(2)?),
                    })
                })
                .collect()
        })
    }

    /// [`with`](PgStore::with) on a connection that plans generic plans from a
    /// statement's first execution (see `Pool::call_generic`): for the reads of the
    /// task queue that find their rows by primary key or a `LATERAL` index range,
    /// whose plan does not depend on the table's size. Not for a join an `UPDATE`
    /// makes with the table (the finish, the offer): its generic plan made while the
    /// table looked empty probed it by a scan per row.
    fn with_generic<T>(
        &self,
        f: impl FnMut(&mut Conn) -> Result<T, PgError>,
    ) -> Result<T, StoreError> {
        self.pool.call_generic(f).map_err(|e| self.failed(e))
    }

    /// Runs `f` in one transaction (rolled back when it fails; again while the
    /// connection breaks, never after it committed).
    fn tx<T>(&self, f: impl FnMut(&mut Conn) -> Result<T, PgError>) -> Result<T, StoreError> {
        self.pool.transaction(f).map_err(|e| self.failed(e))
    }

    /// The [`StoreError`] of a failed call.
    fn failed(&self, f: Failure<PgError>) -> StoreError {
        match f {
            Failure::Call(e) => e.into_store(&self.location),
            Failure::GaveUp {
                waited,
                attempts,
                last,
                unsure,
            } => {
                let cause: super::Source = match last {
                    Some(PgError::Pg(e)) => std::sync::Arc::new(e),
                    Some(other) => std::sync::Arc::new(other.into_store(&self.location)),
                    None => std::sync::Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
                        "the connection broke",
                    )),
                };
                StoreError::Unavailable {
                    path: self.location.clone(),
                    waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    attempts,
                    unsure_commit: unsure.map(to_u64),
                    source: cause,
                }
            }
        }
    }

    fn corrupt(&self, key: impl Into<String>, message: impl fmt::Display) -> PgError {
        PgError::Store(StoreError::Corrupt {
            path: self.location.clone(),
            key: key.into(),
            message: message.to_string(),
        })
    }

    fn record_of(&self, row: &Row) -> Result<ProcessRecord, PgError> {
        let id: String = row.try_get("id")?;
        let data: Vec<u8> = row.try_get("data")?;
        Ok(decode_record(&self.location, id.as_bytes(), &data)?)
    }

    fn task_of(&self, row: &Row, key: impl Fn(i32) -> String) -> Result<(u32, TaskRow), PgError> {
        let node: i32 = row.try_get("node")?;
        let order =
            u32::try_from(node).map_err(|_| self.corrupt(key(node), "negative node index"))?;
        let data: Vec<u8> = row.try_get("data")?;
        let task = decode_row(&data).map_err(|m| self.corrupt(key(node), m))?;
        Ok((order, task))
    }

    fn delivery_of(&self, row: &Row) -> Result<Delivery, PgError> {
        let id: String = row.try_get("id")?;
        let data: Vec<u8> = row.try_get("data")?;
        serde_json::from_slice(&data).map_err(|e| self.corrupt(format!("delivery {id}"), e))
    }

    /// One page of `q` from the columns that answer it; metadata (no column) narrows
    /// while scanning.
    fn list_in(&self, c: &mut Conn, q: &Query, count_only: bool) -> Result<(Page, u64), PgError> {
        let mut conds: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let arg = |params: &mut Vec<Box<dyn ToSql + Sync>>, v: Box<dyn ToSql + Sync>| {
            params.push(v);
            format!("${}", params.len())
        };
        if !q.states.is_empty() {
            let codes: Vec<i16> = q.states.iter().map(|s| state_code(*s)).collect();
            let a = arg(&mut params, Box::new(codes));
            conds.push(format!("state = ANY({a})"));
        }
        if let Some(t) = &q.process_type {
            let a = arg(&mut params, Box::new(t.clone()));
            conds.push(format!("process_type = {a}"));
        }
        if let Some(r) = &q.root {
            let a = arg(&mut params, Box::new(r.clone()));
            conds.push(format!("root = {a}"));
        }
        if let Some(p) = &q.parent {
            let a = arg(&mut params, Box::new(p.clone()));
            conds.push(format!("parent = {a}"));
        }
        if q.definitions {
            conds.push("definition".into());
        }
        if q.scheduled {
            conds.push("scheduled".into());
        }
        if let Some(t) = q.created_from {
            let a = arg(&mut params, Box::new(to_i64(t)));
            conds.push(format!("created_at >= {a}"));
        }
        if let Some(t) = q.created_until {
            let a = arg(&mut params, Box::new(to_i64(t)));
            conds.push(format!("created_at < {a}"));
        }
        let exact = q.metadata.is_empty();
        if count_only && exact {
            let sql = format!(
                "SELECT count(*) FROM procession_records{}",
                where_of(&conds)
            );
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p).collect();
            let n: i64 = c.query_one(&sql, &refs)?.try_get(0)?;
            return Ok((Page::default(), to_u64(n)));
        }
        let limit = if count_only { None } else { q.limit };
        if limit == Some(0) {
            return Ok((Page::default(), 0));
        }
        // One more than the page, to know whether a next page exists.
        let want = limit.map(|l| l.saturating_add(1));
        let chunk = match want {
            Some(w) if exact => i64::try_from(w).unwrap_or(i64::MAX),
            _ => SCAN_CHUNK,
        };
        let base = params.len();
        // Two shapes (first chunk, then after a cursor), so that the keyset condition is
        // an index range in the prepared plan, not a filter.
        let shape = |keyset: bool| {
            let mut all = conds.clone();
            // Newest first, a backward scan of the same (created_at, id) indexes.
            let (cmp, order) = if q.newest_first {
                ("<", "created_at DESC, id DESC")
            } else {
                (">", "created_at, id")
            };
            let limit = if keyset {
                all.push(format!(
                    "(created_at, id) {cmp} (${}, ${})",
                    base + 1,
                    base + 2
                ));
                base + 3
            } else {
                base + 1
            };
            format!(
                "SELECT id, data FROM procession_records{} ORDER BY {order} LIMIT ${limit}",
                where_of(&all)
            )
        };
        let (first, next) = (shape(false), shape(true));
        let mut after = q.after.clone();
        let mut matched: Vec<ProcessRecord> = Vec::new();
        let mut n = 0u64;
        loop {
            let (at, id) = after
                .as_ref()
                .map_or((0, String::new()), |c| (to_i64(c.created_at), c.id.clone()));
            let mut refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p).collect();
            let sql = if after.is_some() {
                refs.extend([&at as &(dyn ToSql + Sync), &id]);
                &next
            } else {
                &first
            };
            refs.push(&chunk);
            let rows = c.query(sql, &refs)?;
            let got = rows.len();
            for row in &rows {
                let r = self.record_of(row)?;
                after = Some(Cursor::after(&r));
                if !q.matches(&r) {
                    continue;
                }
                if count_only {
                    n += 1;
                } else {
                    matched.push(r);
                    if want.is_some_and(|w| matched.len() >= w) {
                        break;
                    }
                }
            }
            if i64::try_from(got).unwrap_or(i64::MAX) < chunk
                || want.is_some_and(|w| matched.len() >= w)
            {
                break;
            }
        }
        let mut page = Page::default();
        if let Some(l) = limit {
            if matched.len() > l {
                matched.truncate(l);
                page.next = matched.last().map(Cursor::after);
            }
        }
        page.records = matched;
        Ok((page, n))
    }

    fn get_in(&self, c: &mut Conn, id: &str, lock: bool) -> Result<Option<ProcessRecord>, PgError> {
        let sql = if lock {
            "SELECT id, data FROM procession_records WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT id, data FROM procession_records WHERE id = $1"
        };
        c.query_opt(sql, &[&id])?
            .map(|r| self.record_of(&r))
            .transpose()
    }

    /// Writes `r` (insert or replace); with `fresh`, only if no record `r.id` exists
    /// (false: one appeared since it was read).
    fn put_record(c: &mut Conn, r: &ProcessRecord, fresh: bool) -> Result<bool, PgError> {
        let data = encode(r);
        let ended_at = sweepable_end(r).map(to_i64);
        let params: [&(dyn ToSql + Sync); 10] = [
            &r.id,
            &to_i64(r.created_at),
            &state_code(r.status.state),
            &r.process_type,
            &r.root,
            &r.parent,
            &(!r.adhoc && r.depth == 0),
            &r.schedule.is_some(),
            &data,
            &ended_at,
        ];
        let sql = if fresh {
            "INSERT INTO procession_records (id, created_at, state, process_type, root, parent,
                 definition, scheduled, data, ended_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO NOTHING"
        } else {
            "INSERT INTO procession_records (id, created_at, state, process_type, root, parent,
                 definition, scheduled, data, ended_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at,
                 state = EXCLUDED.state, process_type = EXCLUDED.process_type,
                 root = EXCLUDED.root, parent = EXCLUDED.parent,
                 definition = EXCLUDED.definition, scheduled = EXCLUDED.scheduled,
                 data = EXCLUDED.data, ended_at = EXCLUDED.ended_at"
        };
        Ok(c.execute(sql, &params)? == 1)
    }

    fn insert_delivery(c: &mut Conn, d: &Delivery, replace: bool) -> Result<(), PgError> {
        let data = encode(d);
        let params: [&(dyn ToSql + Sync); 7] = [
            &d.id,
            &delivery_code(d.state),
            &to_i64(d.created_at),
            &to_i64(d.next_at),
            &d.run,
            &d.channel,
            &data,
        ];
        let sql = if replace {
            "INSERT INTO procession_deliveries (id, state, created_at, next_at, run, channel, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state,
                 created_at = EXCLUDED.created_at, next_at = EXCLUDED.next_at,
                 run = EXCLUDED.run, channel = EXCLUDED.channel, data = EXCLUDED.data"
        } else {
            "INSERT INTO procession_deliveries (id, state, created_at, next_at, run, channel, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO NOTHING"
        };
        c.execute(sql, &params)?;
        Ok(())
    }

    /// The current lease tokens of `runs` (locked against a concurrent claim until the
    /// transaction ends).
    fn tokens(c: &mut Conn, runs: &[&str]) -> Result<HashMap<String, u64>, PgError> {
        let rows = c.query(TOKENS_SQL, &[&runs])?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let run: String = r.try_get(0)?;
            let token: i64 = r.try_get(1)?;
            out.insert(run, to_u64(token));
        }
        Ok(out)
    }

    /// [`Store::update_enqueue`], fenced by `lease` when given: the lease row is read
    /// (and locked against a concurrent claim) in the transaction of the write.
    fn update_in(
        &self,
        id: &str,
        lease: Option<&Lease>,
        f: &mut Enqueue<'_>,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        loop {
            // `None` from the transaction: a record appeared between the read and the
            // insert (another writer): decide again from the new value.
            let out = self.tx(|c| {
                if let Some(l) = lease {
                    let current = Self::tokens(c, &[l.run.as_str()])?;
                    if current.get(&l.run).copied() != Some(l.token) {
                        return Err(PgError::Store(StoreError::Fenced {
                            run: l.run.clone(),
                            token: l.token,
                        }));
                    }
                }
                let current = self.get_in(c, id, true)?;
                let (decided, deliveries) = f(current.as_ref());
                let written = match decided {
                    Update::Keep => return Ok(Some(current)),
                    Update::Delete => {
                        c.execute("DELETE FROM procession_records WHERE id = $1", &[&id])?;
                        None
                    }
                    Update::Put(r) => {
                        if !Self::put_record(c, &r, current.is_none())? {
                            return Ok(None);
                        }
                        Some(*r)
                    }
                };
                for d in &deliveries {
                    Self::insert_delivery(c, d, false)?;
                }
                Ok(Some(written))
            });
            if let Some(v) = out? {
                return Ok(v);
            }
        }
    }

    fn apply_in(&self, c: &mut Conn, batch: &Batch) -> Result<Applied, PgError> {
        let mut applied = Applied::default();
        for a in &batch.archive {
            if a.keep == 0 {
                continue;
            }
            let seq = to_i64(a.run.seq);
            let data = encode(&a.run.record);
            c.execute(
                "DELETE FROM procession_past_tasks WHERE owner = $1 AND seq = $2",
                &[&a.owner, &seq],
            )?;
            c.execute(
                "INSERT INTO procession_history (owner, seq, data) VALUES ($1, $2, $3)
                 ON CONFLICT (owner, seq) DO UPDATE SET data = EXCLUDED.data",
                &[&a.owner, &seq, &data],
            )?;
            c.execute(
                "INSERT INTO procession_past_tasks (owner, seq, node, data)
                 SELECT $1, $2, node, data FROM procession_tasks WHERE run = $3",
                &[&a.owner, &seq, &a.rows_of],
            )?;
            let keep = to_i64(a.keep as u64);
            c.execute(
                "DELETE FROM procession_past_tasks WHERE owner = $1 AND seq < ALL (
                     SELECT seq FROM procession_history WHERE owner = $1
                     ORDER BY seq DESC LIMIT $2)",
                &[&a.owner, &keep],
            )?;
            c.execute(
                "DELETE FROM procession_history WHERE owner = $1 AND seq < ALL (
                     SELECT seq FROM procession_history WHERE owner = $1
                     ORDER BY seq DESC LIMIT $2)",
                &[&a.owner, &keep],
            )?;
        }
        let cleared: Vec<&str> = batch
            .clear_runs
            .iter()
            .chain(&batch.delete_processes)
            .map(String::as_str)
            .collect();
        if !cleared.is_empty() {
            c.execute(
                "DELETE FROM procession_tasks WHERE run = ANY($1)",
                &[&cleared],
            )?;
        }
        if !batch.delete_processes.is_empty() {
            let ids: Vec<&str> = batch.delete_processes.iter().map(String::as_str).collect();
            c.execute("DELETE FROM procession_records WHERE id = ANY($1)", &[&ids])?;
            c.execute(
                "DELETE FROM procession_history WHERE owner = ANY($1)",
                &[&ids],
            )?;
            c.execute(
                "DELETE FROM procession_past_tasks WHERE owner = ANY($1)",
                &[&ids],
            )?;
        }
        if !batch.tasks.is_empty() {
            let mut runs: Vec<&str> = batch
                .tasks
                .iter()
                .filter(|(_, _, r)| r.lease != 0)
                .map(|(id, _, _)| &**id)
                .collect();
            runs.sort_unstable();
            runs.dedup();
            let tokens = if runs.is_empty() {
                HashMap::new()
            } else {
                Self::tokens(c, &runs)?
            };
            // The last row of each (run, node) wins: one statement cannot write a row twice.
            let mut last: HashMap<(&str, u32), usize> = HashMap::new();
            for (i, (id, order, row)) in batch.tasks.iter().enumerate() {
                if row.lease != 0 && row.lease < tokens.get(&**id).copied().unwrap_or(0) {
                    applied.fenced += 1;
                    continue;
                }
                last.insert((&**id, *order), i);
            }
            let mut keep: Vec<usize> = last.into_values().collect();
            keep.sort_unstable();
            let mut run_ids: Vec<&str> = Vec::with_capacity(keep.len());
            let mut nodes: Vec<i32> = Vec::with_capacity(keep.len());
            let mut leases: Vec<i64> = Vec::with_capacity(keep.len());
            let mut data: Vec<Vec<u8>> = Vec::with_capacity(keep.len());
            for i in keep {
                let (id, order, row) = &batch.tasks[i];
                let node = i32::try_from(*order).map_err(|_| {
                    StoreError::io(&self.location, format!("node index {order} is too large"))
                })?;
                run_ids.push(id);
                nodes.push(node);
                leases.push(to_i64(row.lease));
                data.push(encode_row(row));
            }
            if !run_ids.is_empty() {
                // In (run, node) order, sorted by the database: two writers of one run's
                // rows (a coordinator, and the one it took the run over from before that
                // one's write was fenced out) lock them in one order, not each in its
                // batch's (a deadlock aborted one of the two groups of writes).
                c.execute(
                    "INSERT INTO procession_tasks (run, node, lease, data)
                     SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::bytea[])
                         AS u(run, node, lease, data)
                     ORDER BY u.run, u.node
                     ON CONFLICT (run, node) DO UPDATE
                         SET lease = EXCLUDED.lease, data = EXCLUDED.data",
                    &[&run_ids, &nodes, &leases, &data],
                )?;
            }
        }
        for r in &batch.processes {
            Self::put_record(c, r, false)?;
        }
        Ok(applied)
    }
}

fn where_of(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

impl Store for PgStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn get(&self, id: &str) -> Result<Option<ProcessRecord>, StoreError> {
        self.with(|c| self.get_in(c, id, false))
    }

    fn list(&self, query: &Query) -> Result<Page, StoreError> {
        self.with(|c| Ok(self.list_in(c, query, false)?.0))
    }

    fn count(&self, query: &Query) -> Result<u64, StoreError> {
        self.with(|c| Ok(self.list_in(c, query, true)?.1))
    }

    fn update(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.update_enqueue(id, &mut |cur| (f(cur), Vec::new()))
    }

    fn update_leased(
        &self,
        id: &str,
        lease: &Lease,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.update_in(id, Some(lease), &mut |cur| (f(cur), Vec::new()))
    }

    fn update_enqueue(
        &self,
        id: &str,
        f: &mut Enqueue<'_>,
    ) -> Result<Option<ProcessRecord>, StoreError> {
        self.update_in(id, None, f)
    }

    fn tasks(&self, id: &str) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT node, data FROM procession_tasks WHERE run = $1 ORDER BY node",
                &[&id],
            )?
            .iter()
            .map(|r| self.task_of(r, |n| format!("{id}/#{n}")))
            .collect()
        })
    }

    fn apply(&self, batch: Batch) -> Result<Applied, StoreError> {
        if batch.is_empty() {
            return Ok(Applied::default());
        }
        self.tx(|c| self.apply_in(c, &batch))
    }

    fn history(&self, id: &str) -> Result<Vec<PastRun>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT seq, data FROM procession_history WHERE owner = $1 ORDER BY seq DESC",
                &[&id],
            )?
            .iter()
            .map(|r| {
                let seq = to_u64(r.try_get(0)?);
                let data: Vec<u8> = r.try_get(1)?;
                let shown = format!("{id} (past run {seq})");
                let record = decode_record(&self.location, shown.as_bytes(), &data)?;
                Ok(PastRun { seq, record })
            })
            .collect()
        })
    }

    fn past_tasks(&self, id: &str, seq: u64) -> Result<Vec<(u32, TaskRow)>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT node, data FROM procession_past_tasks
                 WHERE owner = $1 AND seq = $2 ORDER BY node",
                &[&id, &to_i64(seq)],
            )?
            .iter()
            .map(|r| self.task_of(r, |n| format!("{id} (past run {seq})/#{n}")))
            .collect()
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every write was its own committed transaction.
        Ok(())
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.with(|c| {
            let v: i64 = c
                .query_one("SELECT nextval('procession_ids')", &[])?
                .try_get(0)?;
            Ok(to_u64(v))
        })
    }

    fn idempotent(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT run FROM procession_idempotency WHERE key = $1",
                &[&key],
            )?
            .map(|r| r.try_get(0))
            .transpose()?)
        })
    }

    fn claim_idempotent(&self, key: &str, id: &str) -> Result<String, StoreError> {
        self.with(|c| {
            let inserted = c.execute(
                "INSERT INTO procession_idempotency (key, run) VALUES ($1, $2)
                 ON CONFLICT (key) DO NOTHING",
                &[&key, &id],
            )?;
            if inserted == 1 {
                return Ok(id.to_owned());
            }
            Ok(c.query_one(
                "SELECT run FROM procession_idempotency WHERE key = $1",
                &[&key],
            )?
            .try_get(0)?)
        })
    }

    fn claim(&self, run: &str, owner: &str, ttl_ms: u64) -> Result<Lease, StoreError> {
        self.with(|c| {
            let ttl = to_i64(ttl_ms);
            let won = c.query_opt(CLAIM_SQL, &[&run, &owner, &ttl])?;
            if let Some(r) = won {
                return Ok(Lease {
                    run: run.to_owned(),
                    owner: owner.to_owned(),
                    token: to_u64(r.try_get(0)?),
                    expires_at: to_u64(r.try_get(1)?),
                });
            }
            let held = c.query_one(
                "SELECT owner, expires_at FROM procession_leases WHERE run = $1",
                &[&run],
            )?;
            Err(PgError::Store(StoreError::Leased {
                run: run.to_owned(),
                owner: held.try_get(0)?,
                expires_at: to_u64(held.try_get(1)?),
            }))
        })
    }

    fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "UPDATE procession_leases SET expires_at = procession_now_ms() + $3
                 WHERE run = $1 AND token = $2",
                &[&lease.run, &to_i64(lease.token), &to_i64(ttl_ms)],
            )? == 1)
        })
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.with(|c| {
            // The token stays (tokens only grow); the lease just expires now.
            c.execute(
                "UPDATE procession_leases SET expires_at = 0 WHERE run = $1 AND token = $2",
                &[&lease.run, &to_i64(lease.token)],
            )?;
            Ok(())
        })
    }

    fn update_keyed(
        &self,
        key: &str,
        id: &str,
        f: &mut dyn FnMut(Option<&ProcessRecord>) -> Update,
    ) -> Result<Keyed, StoreError> {
        loop {
            // One transaction: the key's row is inserted first, so a concurrent launch
            // with the same key waits on its unique index until this one commits (then
            // finds it taken) or rolls back (then takes it). `None`: a record appeared
            // between the read and the insert: decide again.
            let out = self.tx(|c| {
                let inserted = c.execute(
                    "INSERT INTO procession_idempotency (key, run) VALUES ($1, $2)
                     ON CONFLICT (key) DO NOTHING",
                    &[&key, &id],
                )?;
                if inserted == 0 {
                    let owner: String = c
                        .query_one(
                            "SELECT run FROM procession_idempotency WHERE key = $1",
                            &[&key],
                        )?
                        .try_get(0)?;
                    return Ok(Some(Keyed::Taken(owner)));
                }
                let free = |c: &mut Conn| {
                    c.execute(
                        "DELETE FROM procession_idempotency WHERE key = $1 AND run = $2",
                        &[&key, &id],
                    )
                };
                let current = self.get_in(c, id, true)?;
                match f(current.as_ref()) {
                    Update::Keep => {
                        free(c)?;
                        Ok(Some(Keyed::Written(current.map(Box::new))))
                    }
                    Update::Delete => {
                        c.execute("DELETE FROM procession_records WHERE id = $1", &[&id])?;
                        Ok(Some(Keyed::Written(None)))
                    }
                    Update::Put(r) => {
                        if !Self::put_record(c, &r, current.is_none())? {
                            free(c)?;
                            return Ok(None);
                        }
                        Ok(Some(Keyed::Written(Some(r))))
                    }
                }
            });
            if let Some(v) = out? {
                return Ok(v);
            }
        }
    }

    fn forget_run(&self, run: &str, key: Option<&str>) -> Result<(), StoreError> {
        self.tx(|c| {
            c.execute("DELETE FROM procession_leases WHERE run = $1", &[&run])?;
            c.execute("DELETE FROM procession_task_claims WHERE run = $1", &[&run])?;
            if let Some(k) = key {
                c.execute(
                    "DELETE FROM procession_idempotency WHERE key = $1 AND run = $2",
                    &[&k, &run],
                )?;
            }
            Ok(())
        })
    }

    fn sweep_finished(&self, ended_before: u64, limit: usize) -> Result<Swept, StoreError> {
        if limit == 0 {
            return Ok(Swept::default());
        }
        let (before, limit) = (to_i64(ended_before), to_i64(limit as u64));
        self.tx(|c| {
            // The candidates come from the partial index of sweepable roots; a root
            // another transaction holds (a relaunch, another worker's sweep) is skipped,
            // and the expiry condition is checked again on the row as locked.
            let roots: Vec<String> = c
                .query(SWEEP_ROOTS_SQL, &[&before, &limit])?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let mut swept = Swept::default();
            if !roots.is_empty() {
                let mut tree: Vec<String> = c
                    .query(
                        "SELECT id FROM procession_records WHERE root = ANY($1)",
                        &[&roots],
                    )?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                tree.extend(roots.iter().cloned());
                tree.sort_unstable();
                tree.dedup();
                for sql in [
                    "DELETE FROM procession_tasks WHERE run = ANY($1)",
                    "DELETE FROM procession_past_tasks WHERE owner = ANY($1)",
                    "DELETE FROM procession_history WHERE owner = ANY($1)",
                    "DELETE FROM procession_leases WHERE run = ANY($1)",
                    "DELETE FROM procession_idempotency WHERE run = ANY($1)",
                    // Task claims a run ended without its coordinator left behind.
                    "DELETE FROM procession_task_claims WHERE run = ANY($1)",
                ] {
                    c.execute(sql, &[&tree])?;
                }
                swept.records = c.execute(
                    "DELETE FROM procession_records WHERE id = ANY($1)",
                    &[&tree],
                )?;
                swept.runs = roots.len() as u64;
            }
            let mut left = limit;
            for state in [DeliveryState::Delivered, DeliveryState::Failed] {
                if left <= 0 {
                    break;
                }
                let ids: Vec<String> = c
                    .query(
                        SWEEP_DELIVERIES_SQL,
                        &[&before, &left, &delivery_code(state)],
                    )?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                if !ids.is_empty() {
                    let n = c.execute(
                        "DELETE FROM procession_deliveries WHERE id = ANY($1)",
                        &[&ids],
                    )?;
                    swept.deliveries += n;
                    left -= to_i64(n);
                }
            }
            Ok(swept)
        })
    }

    fn forget_workers(&self, silent_ms: u64) -> Result<u64, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM procession_workers
                 WHERE last_heartbeat < procession_now_ms() - $1",
                &[&to_i64(silent_ms)],
            )?)
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn task_queue(&self) -> Option<&dyn super::TaskQueue> {
        Some(self)
    }

    fn heartbeat(&self, worker: &str, leases: &[Lease], ttl_ms: u64) -> Result<Beat, StoreError> {
        let runs: Vec<&str> = leases.iter().map(|l| l.run.as_str()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| to_i64(l.token)).collect();
        self.with(|c| {
            // One statement: every lease still ours (same token, not given up) gets a
            // new expiry on the database clock, the worker's row its heartbeat; the
            // renewed runs come back with their record's state (a cancel another worker
            // wrote). A lease given up by a run that just ended is not renewed again.
            let rows = c.query(HEARTBEAT_SQL, &[&worker, &runs, &tokens, &to_i64(ttl_ms)])?;
            let cancel = state_code(State::CancelRequested);
            let mut renewed = std::collections::HashSet::with_capacity(rows.len());
            let mut beat = Beat::default();
            for r in &rows {
                let known: bool = r.try_get(2)?;
                beat.forgotten = !known;
                let Some(run) = r.try_get::<_, Option<String>>(0)? else {
                    continue;
                };
                let state: Option<i16> = r.try_get(1)?;
                if state == Some(cancel) {
                    beat.cancel_requested.push(run.clone());
                }
                renewed.insert(run);
            }
            beat.refused = runs
                .iter()
                .filter(|r| !renewed.contains(**r))
                .map(|r| (*r).to_owned())
                .collect();
            Ok(beat)
        })
    }

    fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM procession_workers
                 WHERE last_heartbeat < procession_now_ms() - $1",
                &[&FORGET_WORKERS_MS],
            )?;
            c.execute(
                "INSERT INTO procession_workers
                     (id, host, pid, version, started_at, last_heartbeat)
                 VALUES ($1, $2, $3, $4, procession_now_ms(), procession_now_ms())
                 ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
                     version = EXCLUDED.version, last_heartbeat = EXCLUDED.last_heartbeat",
                &[
                    &info.id,
                    &info.host,
                    &i32::try_from(info.pid).unwrap_or(i32::MAX),
                    &info.version,
                ],
            )?;
            Ok(())
        })
    }

    fn unregister_worker(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM procession_workers WHERE id = $1", &[&id])?;
            Ok(())
        })
    }

    fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT id, host, pid, version, started_at, last_heartbeat
                 FROM procession_workers ORDER BY started_at, id",
                &[],
            )?
            .iter()
            .map(|r| {
                let pid: i32 = r.try_get(2)?;
                Ok(WorkerInfo {
                    id: r.try_get(0)?,
                    host: r.try_get(1)?,
                    pid: u32::try_from(pid).unwrap_or(0),
                    version: r.try_get(3)?,
                    started_at: to_u64(r.try_get(4)?),
                    last_heartbeat: to_u64(r.try_get(5)?),
                })
            })
            .collect()
        })
    }

    fn claim_expired(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        // No list of live runs: every lease of `owner` counts as live.
        self.claim_expired_with(owner, process_types, ttl_ms, limit, None)
    }

    fn claim_expired_except(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
        live: &[&str],
    ) -> Result<Vec<Lease>, StoreError> {
        self.claim_expired_with(owner, process_types, ttl_ms, limit, Some(live))
    }

    fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT id, data FROM procession_deliveries WHERE id = $1",
                &[&id],
            )?
            .map(|r| self.delivery_of(&r))
            .transpose()
        })
    }

    fn deliveries(&self, query: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        self.with(|c| {
            let mut pager = Pager::new(query);
            let limit = query
                .limit
                .map_or(i64::MAX, |l| to_i64(l as u64).saturating_add(1));
            'states: for state in states_to_scan(query) {
                // Two shapes, so that a cursor is an index range in the prepared plan.
                let code = delivery_code(state);
                let rows = match &query.after {
                    Some(cur) if cur.state == state => c.query(
                        "SELECT id, data FROM procession_deliveries
                         WHERE state = $1 AND (created_at, id) > ($2, $3)
                           AND ($4::text IS NULL OR run = $4)
                           AND ($5::text IS NULL OR channel = $5)
                         ORDER BY created_at, id LIMIT $6",
                        &[
                            &code,
                            &to_i64(cur.created_at),
                            &cur.id,
                            &query.run,
                            &query.channel,
                            &limit,
                        ],
                    )?,
                    _ => c.query(
                        "SELECT id, data FROM procession_deliveries
                         WHERE state = $1
                           AND ($2::text IS NULL OR run = $2)
                           AND ($3::text IS NULL OR channel = $3)
                         ORDER BY created_at, id LIMIT $4",
                        &[&code, &query.run, &query.channel, &limit],
                    )?,
                };
                for r in &rows {
                    if !pager.offer(self.delivery_of(r)?) {
                        break 'states;
                    }
                }
            }
            Ok(pager.finish())
        })
    }

    fn next_delivery_at(&self) -> Result<Option<u64>, StoreError> {
        self.with(|c| {
            let at: Option<i64> = c
                .query_one(
                    "SELECT min(next_at) FROM procession_deliveries WHERE state = 0",
                    &[],
                )?
                .try_get(0)?;
            Ok(at.map(to_u64))
        })
    }

    fn claim_deliveries(
        &self,
        owner: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.tx(|c| {
            // Skips rows another worker's claim holds locked: two claims never take the
            // same delivery; a materialized CTE so the LIMIT bounds the rows locked.
            let rows = c.query(
                DUE_DELIVERIES_SQL,
                &[&to_i64(now_ms), &to_i64(limit as u64)],
            )?;
            let mut claimed = Vec::with_capacity(rows.len());
            for r in &rows {
                let mut d = self.delivery_of(r)?;
                if !d.is_due(now_ms) {
                    continue;
                }
                d.owner = Some(owner.to_owned());
                d.lease = d.lease.saturating_add(1);
                d.next_at = now_ms.saturating_add(lease_ms);
                Self::insert_delivery(c, &d, true)?;
                claimed.push(d);
            }
            Ok(claimed)
        })
    }

    fn update_delivery(
        &self,
        id: &str,
        f: &mut dyn FnMut(Option<&Delivery>) -> DeliveryUpdate,
    ) -> Result<Option<Delivery>, StoreError> {
        self.tx(|c| {
            let current = c
                .query_opt(
                    "SELECT id, data FROM procession_deliveries WHERE id = $1 FOR UPDATE",
                    &[&id],
                )?
                .map(|r| self.delivery_of(&r))
                .transpose()?;
            match f(current.as_ref()) {
                DeliveryUpdate::Keep => Ok(current),
                DeliveryUpdate::Delete => {
                    c.execute("DELETE FROM procession_deliveries WHERE id = $1", &[&id])?;
                    Ok(None)
                }
                DeliveryUpdate::Put(d) => {
                    let mut d = *d;
                    id.clone_into(&mut d.id);
                    Self::insert_delivery(c, &d, true)?;
                    Ok(Some(d))
                }
            }
        })
    }

    fn channel_state(&self, name: &str) -> Result<Option<ChannelState>, StoreError> {
        self.with(|c| {
            let Some(r) = c.query_opt(
                "SELECT data FROM procession_channels WHERE name = $1",
                &[&name],
            )?
            else {
                return Ok(None);
            };
            let data: Vec<u8> = r.try_get(0)?;
            serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| self.corrupt(format!("channel {name}"), e))
        })
    }

    fn set_channel_state(
        &self,
        name: &str,
        state: Option<&ChannelState>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            match state {
                Some(s) => c.execute(
                    "INSERT INTO procession_channels (name, data) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data",
                    &[&name, &encode(s)],
                )?,
                None => c.execute("DELETE FROM procession_channels WHERE name = $1", &[&name])?,
            };
            Ok(())
        })
    }
}

// ------------------------------------------------------------ the claim path's statements

// The codes of the active states (scheduled, running, cancel requested, cancelling) are
// written as literals, `IN (1, 2, 5, 6)`, in `CLAIM_EXPIRED_SQL`, `SWEEP_ROOTS_SQL` and
// the partial index `procession_records_active` (migration 3); a unit test checks them.

/// Claims one run: a new lease, or the next token of an expired (or own) one.
const CLAIM_SQL: &str = "
INSERT INTO procession_leases AS l (run, owner, token, expires_at)
VALUES ($1, $2, 1, procession_now_ms() + $3)
ON CONFLICT (run) DO UPDATE
    SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
    WHERE l.owner = EXCLUDED.owner OR l.expires_at <= procession_now_ms()
RETURNING token, expires_at";

/// One worker's heartbeat: renews its leases, stamps its row, reads the renewed runs'
/// states and whether the row was there (one row at least: `run` is NULL when no lease
/// was renewed).
const HEARTBEAT_SQL: &str = concat!(
    "WITH ",
    heartbeat_ctes!(),
    "
SELECT b.run, r.state, EXISTS (SELECT 1 FROM seen) AS known
FROM (SELECT 1) AS one
LEFT JOIN beat b ON true
LEFT JOIN procession_records r ON r.id = b.run"
);

/// The takeover: claims active runs of some types whose lease expired (or that have
/// none). The active states are literals (checked by a unit test), so that even a generic plan
/// of the prepared statement reads the partial index of active runs.
///
/// An expired lease of the claiming worker (`$1`) is taken too unless its run is one
/// of `$5`, the runs live on that worker (`NULL`: all of them, so no own lease is
/// taken): a claim of this worker whose answer was lost, or a run it stopped itself
/// (self-fencing), is resumed by its own poll, and a run it drives is never taken
/// twice.
const CLAIM_EXPIRED_SQL: &str = "
WITH cand AS MATERIALIZED (
    SELECT r.id FROM procession_records r
    WHERE r.state IN (1, 2, 5, 6) AND r.process_type = ANY($2)
      AND NOT EXISTS (
          SELECT 1 FROM procession_leases l WHERE l.run = r.id
            AND (l.expires_at > procession_now_ms()
                 OR (l.owner = $1 AND ($5::text[] IS NULL OR l.run = ANY($5)))))
    ORDER BY (r.parent IS NULL), r.created_at, r.id
    LIMIT $4
    FOR UPDATE OF r SKIP LOCKED)
INSERT INTO procession_leases AS l (run, owner, token, expires_at)
SELECT id, $1, 1, procession_now_ms() + $3 FROM cand
ON CONFLICT (run) DO UPDATE
    SET owner = EXCLUDED.owner, token = l.token + 1, expires_at = EXCLUDED.expires_at
    WHERE l.expires_at <= procession_now_ms()
      AND (l.owner <> EXCLUDED.owner
           OR NOT ($5::text[] IS NULL OR l.run = ANY($5)))
RETURNING run, token, expires_at";

/// The current tokens of some runs, locked against a concurrent claim (the fence of a
/// write).
const TOKENS_SQL: &str = "SELECT run, token FROM procession_leases WHERE run = ANY($1) FOR SHARE";

/// The due deliveries, locked (the claim of the outbox); a materialized CTE so that the
/// LIMIT bounds the rows locked.
const DUE_DELIVERIES_SQL: &str = "
WITH due AS MATERIALIZED (
    SELECT id FROM procession_deliveries
    WHERE state = 0 AND next_at <= $1
    ORDER BY next_at, id LIMIT $2
    FOR UPDATE SKIP LOCKED)
SELECT d.id, d.data FROM procession_deliveries d JOIN due USING (id)
ORDER BY d.next_at, d.id";

/// The retention sweep's roots: ended before `$1`, no active record in their tree
/// (active states as in [`CLAIM_EXPIRED_SQL`]), locked (skipping those another
/// transaction holds).
const SWEEP_ROOTS_SQL: &str = "
SELECT r.id FROM procession_records r
WHERE r.ended_at < $1
  AND NOT EXISTS (SELECT 1 FROM procession_records a
                  WHERE a.root = r.id AND a.state IN (1, 2, 5, 6))
ORDER BY r.ended_at, r.id LIMIT $2
FOR UPDATE OF r SKIP LOCKED";

/// The retention sweep's ended deliveries in state `$3` (delivered: 1, failed: 2)
/// created before `$1`, oldest first, locked (skipping those another transaction
/// holds): an ordered range of the listing index `(state, created_at, id)`, also in a
/// generic plan.
const SWEEP_DELIVERIES_SQL: &str = "
SELECT id FROM procession_deliveries
WHERE state = $3 AND created_at < $1
ORDER BY created_at, id LIMIT $2
FOR UPDATE SKIP LOCKED";

#[cfg(test)]
mod tests {
    use super::{state_code, CLAIM_EXPIRED_SQL, SWEEP_ROOTS_SQL};
    use crate::record::State;

    const ACTIVE_CODES: [i16; 4] = [1, 2, 5, 6];

    #[test]
    fn the_literal_active_codes_are_the_active_states() {
        let active: Vec<i16> = State::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .map(state_code)
            .collect();
        assert_eq!(active, ACTIVE_CODES);
        for sql in [CLAIM_EXPIRED_SQL, SWEEP_ROOTS_SQL] {
            assert!(sql.contains("state IN (1, 2, 5, 6)"), "{sql}");
        }
        assert_eq!(
            [State::Done, State::Failed, State::Cancelled].map(state_code),
            [3, 4, 7],
            "migration 3 names the end states by code"
        );
    }
}
