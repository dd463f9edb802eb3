//! The schema of the PostgreSQL store: embedded, versioned migrations applied at open
//! under an advisory lock, and the version check that refuses a newer database.

use super::pool::Conn;
use super::PgError;

/// Advisory lock key (transaction level) held while migrations run: two workers that
/// start at once apply them one after the other, the second finding nothing to do.
const MIGRATION_LOCK: i64 = 0x7072_6f63_6d69_6772; // "procmigr"

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`. Never edit one that
/// was released; add a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: records, task rows, leases, idempotency keys, ids, history, outbox, channels.
    r#"
CREATE FUNCTION procession_now_ms() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE procession_records (
    id           text COLLATE "C" PRIMARY KEY,
    created_at   bigint   NOT NULL,
    state        smallint NOT NULL,
    process_type text COLLATE "C" NOT NULL,
    root         text COLLATE "C" NOT NULL,
    parent       text COLLATE "C",
    definition   boolean  NOT NULL,
    scheduled    boolean  NOT NULL,
    data         bytea    NOT NULL
);
CREATE INDEX procession_records_all    ON procession_records (created_at, id);
CREATE INDEX procession_records_parent ON procession_records (parent, created_at, id)
    WHERE parent IS NOT NULL;
CREATE INDEX procession_records_root   ON procession_records (root, created_at, id);
CREATE INDEX procession_records_state  ON procession_records (state, created_at, id);
CREATE INDEX procession_records_type   ON procession_records (process_type, created_at, id);
CREATE INDEX procession_records_definitions ON procession_records (created_at, id)
    WHERE definition;
CREATE INDEX procession_records_scheduled ON procession_records (created_at, id)
    WHERE scheduled;

CREATE TABLE procession_tasks (
    run   text COLLATE "C" NOT NULL,
    node  integer NOT NULL,
    lease bigint  NOT NULL,
    data  bytea   NOT NULL,
    PRIMARY KEY (run, node)
);

CREATE TABLE procession_leases (
    run        text COLLATE "C" PRIMARY KEY,
    owner      text   NOT NULL,
    token      bigint NOT NULL,
    expires_at bigint NOT NULL
);

CREATE TABLE procession_idempotency (
    key text COLLATE "C" PRIMARY KEY,
    run text NOT NULL
);

CREATE SEQUENCE procession_ids;

CREATE TABLE procession_history (
    owner text COLLATE "C" NOT NULL,
    seq   bigint NOT NULL,
    data  bytea  NOT NULL,
    PRIMARY KEY (owner, seq)
);
CREATE TABLE procession_past_tasks (
    owner text COLLATE "C" NOT NULL,
    seq   bigint  NOT NULL,
    node  integer NOT NULL,
    data  bytea   NOT NULL,
    PRIMARY KEY (owner, seq, node)
);

CREATE TABLE procession_deliveries (
    id         text COLLATE "C" PRIMARY KEY,
    state      smallint NOT NULL,
    created_at bigint   NOT NULL,
    next_at    bigint   NOT NULL,
    run        text     NOT NULL,
    channel    text     NOT NULL,
    data       bytea    NOT NULL
);
CREATE INDEX procession_deliveries_listing ON procession_deliveries (state, created_at, id);
-- The claim path reads only this partial index: delivered and failed rows never enter it,
-- so it does not slow down as they pile up.
CREATE INDEX procession_deliveries_due ON procession_deliveries (next_at, id)
    WHERE state = 0;

CREATE TABLE procession_channels (
    name text COLLATE "C" PRIMARY KEY,
    data bytea NOT NULL
);
"#,
    // 2: several workers per database: one row per worker process start, its heartbeat
    // on the database clock.
    r#"
CREATE TABLE procession_workers (
    id             text COLLATE "C" PRIMARY KEY,
    host           text    NOT NULL,
    pid            integer NOT NULL,
    version        text    NOT NULL,
    started_at     bigint  NOT NULL,
    last_heartbeat bigint  NOT NULL
);
"#,
    // 3: retention of finished runs, and a claim path that finished rows do not slow
    // down. `ended_at` is set on the roots the retention sweep may delete (ad-hoc,
    // unscheduled, ended), NULL on every other record, so that the sweep reads a
    // partial index of exactly its candidates. Roots that ended before
    // this version have no end time in a column: they count as ended now (kept for at
    // least the retention). Idempotency keys are found by run when their run goes.
    r"
ALTER TABLE procession_records ADD COLUMN ended_at bigint;
UPDATE procession_records SET ended_at = procession_now_ms()
    WHERE state IN (3, 4, 7) AND parent IS NULL AND NOT definition AND NOT scheduled;
CREATE INDEX procession_records_sweep ON procession_records (ended_at, id)
    WHERE ended_at IS NOT NULL;
CREATE INDEX procession_idempotency_run ON procession_idempotency (run);
-- The takeover poll reads only the active runs: finished ones never enter this index,
-- so the poll does not slow down as they pile up (the state codes are those of
-- scheduled, running, cancel_requested and cancelling).
CREATE INDEX procession_records_active ON procession_records (process_type, created_at, id)
    WHERE state IN (1, 2, 5, 6);
",
    // 4: task-level claims (one run's tasks spread over several workers): a row per
    // offered task of a live run, deleted when the run ends. Only ready and running rows
    // are in the claim path's partial index, so finished rows never slow it down.
    r#"
CREATE TABLE procession_task_claims (
    run          text COLLATE "C" NOT NULL,
    node         integer  NOT NULL,
    run_token    bigint   NOT NULL,
    process_type text COLLATE "C" NOT NULL,
    state        smallint NOT NULL,
    token        bigint   NOT NULL DEFAULT 0,
    owner        text,
    expires_at   bigint   NOT NULL DEFAULT 0,
    deadline_ms  bigint,
    deadline_at  bigint,
    attempts     integer  NOT NULL,
    max_attempts integer  NOT NULL,
    elapsed_ns   bigint   NOT NULL DEFAULT 0,
    result       text,
    error        text,
    PRIMARY KEY (run, node)
);
CREATE INDEX procession_task_claims_claimable
    ON procession_task_claims (process_type, state, expires_at)
    WHERE state IN (0, 1);
"#,
    // 5: dependents made ready by the finishing statement. A *waiting* row (state 5) is
    // a task whose dependencies have not all succeeded yet: `pending_deps` counts the
    // successful finishes it still waits for; a row's `dependents` are the waiting rows
    // its successful finish counts down (see `TaskQueue::finish`). Waiting rows are not
    // in the claim path's partial index (states 0 and 1 only): they never slow claims.
    r"
ALTER TABLE procession_task_claims
    ADD COLUMN pending_deps integer NOT NULL DEFAULT 0,
    ADD COLUMN dependents   integer[];
",
    // 6: what the worker running a spread task reports of it (its attempt,
    // progress and log, `TaskQueue::report`) and a report number its coordinator
    // watches (`TaskQueue::watch`), reset by every claim.
    "
ALTER TABLE procession_task_claims
    ADD COLUMN attempt  integer NOT NULL DEFAULT 0,
    ADD COLUMN seq      bigint  NOT NULL DEFAULT 0,
    ADD COLUMN percent  double precision,
    ADD COLUMN message  text,
    ADD COLUMN log      text,
    ADD COLUMN logged   bigint  NOT NULL DEFAULT 0;
",
    // 7: the coordinator reads only what changed (`TaskQueue::changes`): `news` is the
    // transaction id (`pg_current_xact_id`) of the last write its coordinator must see
    // (an end, a report, a cancel, a release), indexed per run, so that a poll reads
    // the rows changed since the oldest transaction still running at its previous poll
    // instead of every task it waits for. Only rows that are news are in the index
    // (ended, asked to cancel, or reported): an offer and a claim, which write new row
    // versions, add no entry to it. Pages keep room for HOT updates: counting a
    // waiting row down (but not to 0) changes no indexed column.
    "
ALTER TABLE procession_task_claims
    ADD COLUMN news bigint NOT NULL DEFAULT 0;
CREATE INDEX procession_task_claims_news ON procession_task_claims (run, news)
    WHERE state IN (2, 3, 4) OR seq > 0;
ALTER TABLE procession_task_claims SET (fillfactor = 70);
",
];

/// The newest schema version this build knows.
pub(super) fn supported() -> u32 {
    MIGRATIONS.len() as u32
}

/// Brings the database's schema up to [`supported`] in one transaction under
/// [`MIGRATION_LOCK`]; refuses a database whose schema is newer.
pub(super) fn migrate(conn: &mut Conn) -> Result<(), PgError> {
    conn.batch("BEGIN")?;
    let out = migrate_in(conn);
    match &out {
        Ok(()) => conn.batch("COMMIT")?,
        Err(_) => {
            let _ = conn.batch("ROLLBACK");
        }
    }
    out
}

fn migrate_in(conn: &mut Conn) -> Result<(), PgError> {
    conn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    conn.batch(
        "CREATE TABLE IF NOT EXISTS procession_schema (
             one     boolean PRIMARY KEY DEFAULT true CHECK (one),
             version integer NOT NULL
         );
         INSERT INTO procession_schema (version) VALUES (0) ON CONFLICT DO NOTHING;",
    )?;
    let row = conn.query_one("SELECT version FROM procession_schema", &[])?;
    let found: i32 = row.try_get(0)?;
    let found = u32::try_from(found).map_err(|_| PgError::BadVersion(i64::from(found)))?;
    let supported = supported();
    if found > supported {
        return Err(PgError::Newer { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tracing::info!(version = i + 1, "applying a PostgreSQL store migration");
        conn.batch(sql)?;
    }
    if found < supported {
        conn.execute(
            "UPDATE procession_schema SET version = $1",
            &[&i32::try_from(supported).unwrap_or(i32::MAX)],
        )?;
    }
    Ok(())
}
