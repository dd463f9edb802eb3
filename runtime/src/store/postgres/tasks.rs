//! The task queue of the PostgreSQL store (`procession_task_claims`, migrations 4 to 7):
//! see [`TaskQueue`].
//!
//! Statements per task (wide or layered graphs, every task ending at once): the offers
//! of a batch are one statement, the claims of a batch one (a task a cascade made ready
//! is claimed by the finish that made it ready: no claim of its own), the ends of a
//! batch one (with
//! the reports not written yet, one more), and the coordinator's poll reads only the rows
//! written since its previous poll (`news`, migration 7), not every task it waits for.
//!
//! States: 0 ready (offered), 1 running (claimed), 2 done, 3 failed, 4 cancel (the run
//! asked its tasks to stop; a running one ends as its worker reports it), 5 waiting (not
//! claimable: `pending_deps` successful finishes of its dependencies make it ready).
//!
//! Lock order: every statement that locks several rows of the table and waits for them
//! locks the rows that are not waiting first, then the waiting ones, each in (run, node)
//! order (sorted by the database, one collation for all): a finish locks its own
//! running rows, then the waiting dependents it counts down; so do a cancel, an offer
//! (which may meet rows of every state, of an older run of the record), a heartbeat's
//! claim renewals, a report, a release and a clear. Two of them that locked in
//! different orders deadlocked, and the database aborted one. A claim skips locked rows
//! (`SKIP LOCKED`): it never waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;

use super::{state_code, to_i64, to_u64, PgStore};
use crate::record::State;
use crate::record::{LogEntry, Progress};
use crate::store::{
    Beat, ClaimReport, ClaimedTask, EndedTask, Lease, StoreError, TaskBeat, TaskChanges, TaskClaim,
    TaskEnd, TaskNews, TaskOffer, TaskQueue, TaskWake, WatchedTask,
};

/// The channel workers `LISTEN` on: a task was offered, or ended. The payload says
/// which ([`TaskWake::of`]): `r` tasks are ready (an offer), `e` tasks ended (a finish
/// that left nothing ready), anything else both (or a cancel, a release). A finish
/// notifies only when another worker has something to do: ready rows it did not take
/// itself, or ends of a run whose lease another worker holds (its coordinator) that
/// the coordinator has to act on: a failure, a cancel, a task without dependents (the
/// run's last ones), or any end of a run that does not cascade. A success that counted
/// its dependents down needs nothing of the coordinator but its record, which its next
/// poll (or the next notification) reads. One by the coordinator that takes every
/// dependent it made ready notifies nobody (a
/// notification serializes the commits of every notifying transaction of the database:
/// each finish notifying made the finishes of several workers queue one behind the
/// other, and woke every worker's claim loop).
const CHANNEL: &str = "procession_tasks";

impl TaskWake {
    /// Both: tasks may be ready and may have ended.
    const ALL: TaskWake = TaskWake {
        ready: true,
        ended: true,
    };

    /// What a notification with `payload` tells.
    fn of(payload: &str) -> TaskWake {
        match payload {
            "r" => TaskWake {
                ready: true,
                ended: false,
            },
            "e" => TaskWake {
                ready: false,
                ended: true,
            },
            _ => TaskWake::ALL,
        }
    }

    fn or(self, other: TaskWake) -> TaskWake {
        TaskWake {
            ready: self.ready || other.ready,
            ended: self.ended || other.ended,
        }
    }
}

const DONE: i16 = 2;
const FAILED: i16 = 3;
const CANCEL: i16 = 4;

/// A run token (any `u64`) as the `bigint` that stores it, bit for bit.
fn run_token(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// [`run_token`] read back.
fn run_token_of(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// `nodes` as the text of an `int4[]` (`{1,2,3}`); `None` for none.
fn int_array(nodes: &[u32]) -> Option<String> {
    use std::fmt::Write as _;
    if nodes.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(nodes.len() * 4 + 2);
    s.push('{');
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{}", to_i32(*n));
    }
    s.push('}');
    Some(s)
}

fn node_of(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The claim of ready tasks, and of running ones whose claim expired or whose hard
/// deadline passed (`$1` owner, `$2` process types, `$3` ttl in ms, `$4` limit): all in
/// the partial index of states 0 and 1 (waiting and ended rows are not).
pub(super) const TASK_CLAIM_SQL: &str = "
WITH c AS MATERIALIZED (
    SELECT run, node FROM procession_task_claims
    WHERE state IN (0, 1) AND process_type = ANY($2)
      AND (state = 0 OR expires_at <= procession_now_ms()
           OR deadline_at <= procession_now_ms())
    LIMIT $4
    FOR UPDATE SKIP LOCKED)
UPDATE procession_task_claims AS t
SET state = 1, token = t.token + 1, owner = $1,
    expires_at = procession_now_ms() + $3,
    deadline_at = procession_now_ms() + t.deadline_ms,
    attempts = t.attempts + t.max_attempts,
    attempt = t.attempts + 1, seq = 0, percent = NULL, message = NULL,
    log = NULL, logged = 0
FROM c WHERE t.run = c.run AND t.node = c.node
RETURNING t.run, t.run_token, t.node, t.token, t.process_type,
          t.attempts - t.max_attempts";

/// [`TASK_CLAIM_SQL`] of ready rows only: an index range of the ready rows, without
/// reading past the running ones (`$1` owner, `$2` process types, `$3` ttl, `$4` limit).
const TASK_CLAIM_READY_SQL: &str = "
WITH c AS MATERIALIZED (
    SELECT run, node FROM procession_task_claims
    WHERE state = 0 AND process_type = ANY($2)
    LIMIT $4
    FOR UPDATE SKIP LOCKED)
UPDATE procession_task_claims AS t
SET state = 1, token = t.token + 1, owner = $1,
    expires_at = procession_now_ms() + $3,
    deadline_at = procession_now_ms() + t.deadline_ms,
    attempts = t.attempts + t.max_attempts,
    attempt = t.attempts + 1, seq = 0, percent = NULL, message = NULL,
    log = NULL, logged = 0
FROM c WHERE t.run = c.run AND t.node = c.node AND t.state = 0
RETURNING t.run, t.run_token, t.node, t.token, t.process_type,
          t.attempts - t.max_attempts";

/// The finishing statement (see [`TaskQueue::finish_and_claim`]), `$1`-`$9` the ends'
/// runs, nodes, claim tokens, states, results, errors, attempts, elapsed times and
/// indexes, `$10` the channel, `$11` the run states of a cancel, `$12` the finishing
/// worker, `$13` its process types, `$14` its claims' ttl in ms, `$15` how many tasks it
/// takes at most: the ends it stored, by index; a row `-1` when it notified; and a row
/// `-2` per task it claimed (run, run token, node, token, process type, attempts before
/// the claim, as a claim returns them). Fenced per task: only under its current token,
/// only a running task (or one asked to cancel).
///
/// Its own rows are locked first, in (run, node) order whatever the order of the ends
/// (`o`), as a run's cancel locks the run's running rows: a finish of several tasks of
/// a run that its cancel marked at the same moment deadlocked (the update locked them
/// in the order of the ends), and a finish aborted so left rows that the cancel had
/// marked claimed by a worker that gave them up, ended by no one.
///
/// Each success counts down its waiting dependents of the same run token (once per
/// finishing row: one successful finish per claim), each found by its primary key (not
/// by a scan of the table, which the generic plan of a join chose) and locked in
/// (run, node) order, waiting for a lock another statement holds (a concurrent finish
/// counting the same row down, an offer, a cancel: all lock waiting rows in that order
/// and hold no waiting row while they wait for a running one, so no deadlock); those
/// reaching 0 become ready, or, up to `$15` of them whose process type
/// the finishing worker runs, claimed by it in the same write (as [`TASK_CLAIM_SQL`]
/// claims: token raised, lease and deadline on the database clock): a cascaded task
/// costs no write and no statement of its own to be claimed. Not once the run asked
/// for a cancel (read once per run, `live`): its coordinator decides then. A dependent
/// locked by a concurrent finish is counted down after it, from the count that finish
/// left (the row is read again once the lock is granted): two workers ending a layer
/// together make its dependents ready as one would (skipping a locked row, as before,
/// left its count above 0 and the dependent to a round trip through its coordinator,
/// for most of a layer's dependents once several workers finished at once).
///
/// A row this very claim finished already (the statement runs again after a lost
/// answer) is reported stored without a write (`again`): no other worker can have
/// claimed it since, its token would have grown; and its dependents are not counted
/// down twice (those the lost answer claimed are taken again by any worker once that
/// claim expires). Only the ends the update did not store are looked up for that, by
/// primary key (`OFFSET 0` keeps the generic plan from reading every ended row of the
/// `news` index first): a first run reads no row a second time.
const FINISH_SQL: &str = "WITH u AS (
    SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int2[],
                         $5::text[], $6::text[], $7::int4[], $8::int8[],
                         $9::int4[])
         AS u(run, node, token, state, result, error, attempts,
              elapsed_ns, idx)),
o AS MATERIALIZED (
    SELECT u.* FROM (SELECT * FROM u ORDER BY u.run, u.node) u
    CROSS JOIN LATERAL (
        SELECT 1 FROM procession_task_claims t
        WHERE t.run = u.run AND t.node = u.node AND t.token = u.token
          AND t.state IN (1, 4)
        FOR UPDATE) x),
f AS (
    UPDATE procession_task_claims AS t
    SET state = u.state, result = u.result, error = u.error,
        attempts = u.attempts, elapsed_ns = u.elapsed_ns, expires_at = 0,
        deadline_at = NULL, news = pg_current_xact_id()::text::int8
    FROM o AS u
    WHERE t.run = u.run AND t.node = u.node AND t.token = u.token
      AND t.state IN (1, 4)
    RETURNING u.idx, t.run, t.run_token, t.state, t.dependents),
again AS (
    SELECT m.idx FROM (
        SELECT * FROM u WHERE NOT EXISTS (SELECT 1 FROM f WHERE f.idx = u.idx)
        OFFSET 0) m
    CROSS JOIN LATERAL (
        SELECT t.token, t.state FROM procession_task_claims t
        WHERE t.run = m.run AND t.node = m.node LIMIT 1) t
    WHERE t.token = m.token AND t.state IN (2, 3)),
live AS MATERIALIZED (
    SELECT DISTINCT f.run FROM f
    WHERE f.state = 2 AND f.dependents IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM procession_records r
                      WHERE r.id = f.run AND r.state = ANY($11))),
d AS (
    SELECT f.run, f.run_token, x.node, count(*)::int4 AS n
    FROM f JOIN live ON live.run = f.run
    CROSS JOIN LATERAL unnest(f.dependents) AS x(node)
    WHERE f.state = 2
    GROUP BY f.run, f.run_token, x.node),
l AS MATERIALIZED (
    SELECT x.run, x.node, d.n,
           x.pending_deps - d.n <= 0 AND x.process_type = ANY($13) AS mine
    FROM (SELECT * FROM d ORDER BY d.run, d.node) d CROSS JOIN LATERAL (
        SELECT t.run, t.node, t.pending_deps, t.process_type
        FROM procession_task_claims t
        WHERE t.run = d.run AND t.node = d.node AND t.run_token = d.run_token
          AND t.state = 5
        FOR UPDATE) x),
k AS (
    SELECT l.run, l.node, l.n,
           l.mine AND row_number() OVER (PARTITION BY l.mine ORDER BY l.run, l.node)
                      <= $15 AS take
    FROM l),
c AS (
    UPDATE procession_task_claims AS t
    SET pending_deps = t.pending_deps - k.n,
        state = CASE WHEN k.take THEN 1
                     WHEN t.pending_deps - k.n <= 0 THEN 0 ELSE 5 END,
        token = CASE WHEN k.take THEN t.token + 1 ELSE t.token END,
        owner = CASE WHEN k.take THEN $12 ELSE t.owner END,
        expires_at = CASE WHEN k.take THEN procession_now_ms() + $14
                          ELSE t.expires_at END,
        deadline_at = CASE WHEN k.take THEN procession_now_ms() + t.deadline_ms
                           ELSE t.deadline_at END,
        attempts = CASE WHEN k.take THEN t.attempts + t.max_attempts
                        ELSE t.attempts END,
        attempt = CASE WHEN k.take THEN t.attempts + 1 ELSE t.attempt END
    FROM k
    WHERE t.run = k.run AND t.node = k.node AND t.state = 5
    RETURNING t.state, k.take, t.run, t.run_token, t.node, t.token,
              t.process_type::text AS process_type,
              t.attempts - t.max_attempts AS attempts)
SELECT idx, NULL::text AS run, NULL::int8 AS run_token, NULL::int4 AS node,
       NULL::int8 AS token, NULL::text AS process_type, NULL::int4 AS attempts
FROM f
UNION ALL SELECT idx, NULL, NULL, NULL, NULL, NULL, NULL FROM again
UNION ALL SELECT -1, NULL, NULL, NULL, NULL, NULL, NULL FROM (
    SELECT pg_notify($10, CASE WHEN r.ready THEN '' ELSE 'e' END)
    FROM (SELECT EXISTS (SELECT 1 FROM c WHERE state = 0) AS ready) r
    WHERE r.ready
       OR EXISTS (
              SELECT 1 FROM f
              WHERE (f.state <> 2 OR f.dependents IS NULL
                     OR NOT EXISTS (SELECT 1 FROM live WHERE live.run = f.run))
                AND NOT EXISTS (SELECT 1 FROM procession_leases o
                                WHERE o.run = f.run AND o.owner = $12))) n
UNION ALL SELECT -2, c.run, c.run_token, c.node, c.token, c.process_type, c.attempts
FROM c WHERE c.take";

impl PgStore {
    /// Claims with `sql` ([`TASK_CLAIM_SQL`] or [`TASK_CLAIM_READY_SQL`]).
    fn claim_with(
        &self,
        sql: &str,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        if process_types.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.with(|c| {
            // Rows another claim holds locked are skipped: two workers never claim the
            // same task. Each claim raises the token (fencing) and the attempt base.
            let rows = c.query(
                sql,
                &[
                    &owner,
                    &process_types,
                    &to_i64(ttl_ms),
                    &to_i64(limit as u64),
                ],
            )?;
            rows.iter()
                .map(|r| {
                    let attempts: i32 = r.try_get(5)?;
                    Ok(ClaimedTask {
                        claim: TaskClaim {
                            run: r.try_get(0)?,
                            run_token: run_token_of(r.try_get(1)?),
                            node: node_of(r.try_get(2)?),
                            token: to_u64(r.try_get(3)?),
                        },
                        process_type: r.try_get(4)?,
                        attempts: u32::try_from(attempts).unwrap_or(0),
                    })
                })
                .collect()
        })
    }

    /// The end of an ended claim row whose columns 2, 4-7 are its state, attempts,
    /// elapsed time, result and error (`key` names it in errors).
    fn end_of(&self, r: &postgres::Row, key: &str) -> Result<TaskEnd, super::PgError> {
        let state: i16 = r.try_get(2)?;
        let attempts: i32 = r.try_get(4)?;
        let outcome = match state {
            DONE => {
                let json: Option<String> = r.try_get(6)?;
                let json = json
                    .filter(|j| serde_json::from_str::<&serde_json::value::RawValue>(j).is_ok())
                    .ok_or_else(|| {
                        self.corrupt(key, "a finished task's result is missing or not JSON")
                    })?;
                Ok(Arc::from(json))
            }
            FAILED => {
                let text: Option<String> = r.try_get(7)?;
                Err(match text {
                    Some(t) => {
                        serde_json::from_str::<Vec<String>>(&t).map_err(|e| self.corrupt(key, e))?
                    }
                    None => Vec::new(),
                })
            }
            _ => Err(Vec::new()),
        };
        Ok(TaskEnd {
            attempts: u32::try_from(attempts).unwrap_or(0),
            elapsed_ns: to_u64(r.try_get(5)?),
            outcome,
        })
    }

    /// The news of a claim row read as [`TaskQueue::watch`] reads it (run, node, state,
    /// owner, attempts, elapsed, result, error, token, seq, attempt, percent, message,
    /// log, logged).
    fn news_of(&self, r: &postgres::Row) -> Result<TaskNews, super::PgError> {
        let run: String = r.try_get(0)?;
        let node = node_of(r.try_get(1)?);
        let state: i16 = r.try_get(2)?;
        let at = || format!("procession_task_claims/{run}/{node}");
        let end = match state {
            DONE | FAILED => Some(self.end_of(r, &at())?),
            CANCEL if r.try_get::<_, Option<String>>(3)?.is_none() => Some(self.end_of(r, &at())?),
            _ => None,
        };
        let log: Option<String> = r.try_get(13)?;
        let log = match log {
            Some(text) => Some(
                serde_json::from_str::<Vec<LogEntry>>(&text).map_err(|e| self.corrupt(at(), e))?,
            ),
            None => None,
        };
        let attempt: i32 = r.try_get(10)?;
        Ok(TaskNews {
            owner: r.try_get(3)?,
            token: to_u64(r.try_get(8)?),
            seq: to_u64(r.try_get(9)?),
            report: ClaimReport {
                attempt: u32::try_from(attempt).unwrap_or(0),
                progress: Progress {
                    percent: r.try_get(11)?,
                    message: r.try_get(12)?,
                },
                log,
                logged: to_u64(r.try_get(14)?),
            },
            end,
            run,
            node,
        })
    }
}

impl TaskQueue for PgStore {
    fn offer(&self, offers: &[TaskOffer]) -> Result<(), StoreError> {
        if offers.is_empty() {
            return Ok(());
        }
        // One row per task: a ready offer wins over a waiting one of the same batch (a
        // node's waiting row and its offer may be written together), a later offer over
        // an earlier one. (Sorted here for that; the statement sorts the rows it locks
        // itself, see the module's lock order.)
        let mut by_task: std::collections::BTreeMap<(&str, u32), &TaskOffer> =
            std::collections::BTreeMap::new();
        for o in offers {
            let slot = by_task.entry((o.run.as_str(), o.node)).or_insert(o);
            if o.pending_deps == 0 || slot.pending_deps > 0 {
                *slot = o;
            }
        }
        let offers: Vec<&TaskOffer> = by_task.into_values().collect();
        let runs: Vec<&str> = offers.iter().map(|o| o.run.as_str()).collect();
        let nodes: Vec<i32> = offers.iter().map(|o| to_i32(o.node)).collect();
        let run_tokens: Vec<i64> = offers.iter().map(|o| run_token(o.run_token)).collect();
        let types: Vec<&str> = offers.iter().map(|o| o.process_type.as_str()).collect();
        let attempts: Vec<i32> = offers.iter().map(|o| to_i32(o.attempts)).collect();
        let max: Vec<i32> = offers.iter().map(|o| to_i32(o.max_attempts)).collect();
        let deadlines: Vec<Option<i64>> =
            offers.iter().map(|o| o.deadline_ms.map(to_i64)).collect();
        let pending: Vec<i32> = offers.iter().map(|o| to_i32(o.pending_deps)).collect();
        let dependents: Vec<Option<String>> =
            offers.iter().map(|o| int_array(&o.dependents)).collect();
        let args: [&(dyn postgres::types::ToSql + Sync); 10] = [
            &runs,
            &nodes,
            &run_tokens,
            &types,
            &attempts,
            &max,
            &deadlines,
            &pending,
            &dependents,
            &CHANNEL,
        ];
        // One statement. New rows: ready, or waiting; a row that exists is not touched
        // (nor locked, nor waited for: the snapshot tells it exists, and rows are only
        // deleted with their run) here: a task running or ended under this run token
        // stays as it is (a coordinator that took the run over adopts what runs on live
        // workers and finds what ended). Rows that exist and change: a waiting row
        // offered ready becomes ready; a row of an older run of the record starts again
        // (its token keeps growing). Those are locked in the module's lock order: rows
        // that are not waiting first (an older run's may be running, which its
        // coordinator's cancel or a late finish locks before waiting ones), then waiting
        // ones, each in (run, node) order; found by one primary-key probe per offer (not
        // a scan of the table joined by hash, its generic plan), and locked by a second
        // probe per row that changes (the condition read again once the lock is granted).
        self.with(|c| {
            c.execute(
                "WITH u AS (
                     SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::text[],
                                          $5::int4[], $6::int4[], $7::int8[], $8::int4[],
                                          $9::text[])
                          AS u(run, node, run_token, process_type, attempts, max_attempts,
                               deadline_ms, pending, deps)),
                 l AS MATERIALIZED (
                     SELECT c.run, c.node FROM (
                         SELECT u.run, u.node, u.run_token, u.pending
                         FROM u CROSS JOIN LATERAL (
                             SELECT t.state FROM procession_task_claims t
                             WHERE t.run = u.run AND t.node = u.node
                               AND (t.run_token <> u.run_token
                                    OR (t.state = 5 AND u.pending = 0))) x
                         ORDER BY x.state = 5, u.run, u.node) c
                     CROSS JOIN LATERAL (
                         SELECT 1 FROM procession_task_claims t
                         WHERE t.run = c.run AND t.node = c.node
                           AND (t.run_token <> c.run_token
                                OR (t.state = 5 AND c.pending = 0))
                         FOR UPDATE) x),
                 changed AS (
                     UPDATE procession_task_claims AS t
                     SET run_token = u.run_token, process_type = u.process_type,
                         state = CASE WHEN u.pending > 0 THEN 5 ELSE 0 END,
                         token = t.token + 1, owner = NULL, expires_at = 0,
                         deadline_ms = u.deadline_ms, deadline_at = NULL,
                         attempts = u.attempts, max_attempts = u.max_attempts,
                         elapsed_ns = 0, result = NULL, error = NULL,
                         pending_deps = u.pending, dependents = u.deps::int4[], attempt = 0,
                         seq = 0, percent = NULL, message = NULL, log = NULL, logged = 0
                     FROM l JOIN u ON u.run = l.run AND u.node = l.node
                     WHERE t.run = l.run AND t.node = l.node
                       AND (t.run_token <> u.run_token OR (t.state = 5 AND u.pending = 0))
                     RETURNING t.state),
                 fresh AS (
                     INSERT INTO procession_task_claims AS t
                         (run, node, run_token, process_type, state, attempts, max_attempts,
                          deadline_ms, pending_deps, dependents)
                     SELECT u.run, u.node, u.run_token, u.process_type,
                            CASE WHEN u.pending > 0 THEN 5 ELSE 0 END, u.attempts,
                            u.max_attempts, u.deadline_ms, u.pending, u.deps::int4[]
                     FROM u
                     WHERE NOT EXISTS (SELECT 1 FROM procession_task_claims e
                                       WHERE e.run = u.run AND e.node = u.node)
                     ON CONFLICT (run, node) DO NOTHING
                     RETURNING t.state)
                 SELECT pg_notify($10, 'r')
                 WHERE EXISTS (SELECT 1 FROM fresh WHERE state = 0)
                    OR EXISTS (SELECT 1 FROM changed WHERE state = 0)",
                &args,
            )?;
            Ok(())
        })
    }

    fn claim(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        // Ready rows, and running rows whose claim expired (a dead or paused worker) or
        // whose hard deadline passed (a hung task): all in the partial index.
        self.claim_with(TASK_CLAIM_SQL, owner, process_types, ttl_ms, limit)
    }

    fn claim_ready(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        self.claim_with(TASK_CLAIM_READY_SQL, owner, process_types, ttl_ms, limit)
    }

    fn finish(&self, ends: &[(TaskClaim, TaskEnd)]) -> Result<Vec<bool>, StoreError> {
        Ok(self.finish_and_claim(ends, "", &[], 0, 0)?.0)
    }

    fn finish_and_claim(
        &self,
        ends: &[(TaskClaim, TaskEnd)],
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<(Vec<bool>, Vec<ClaimedTask>), StoreError> {
        if ends.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let runs: Vec<&str> = ends.iter().map(|(c, _)| c.run.as_str()).collect();
        let nodes: Vec<i32> = ends.iter().map(|(c, _)| to_i32(c.node)).collect();
        let tokens: Vec<i64> = ends.iter().map(|(c, _)| to_i64(c.token)).collect();
        let states: Vec<i16> = ends
            .iter()
            .map(|(_, e)| if e.outcome.is_ok() { DONE } else { FAILED })
            .collect();
        let results: Vec<Option<&str>> = ends
            .iter()
            .map(|(_, e)| e.outcome.as_ref().ok().map(AsRef::as_ref))
            .collect();
        let errors: Vec<Option<String>> = ends
            .iter()
            .map(|(_, e)| {
                e.outcome
                    .as_ref()
                    .err()
                    .map(|chain| serde_json::Value::from(chain.clone()).to_string())
            })
            .collect();
        let attempts: Vec<i32> = ends.iter().map(|(_, e)| to_i32(e.attempts)).collect();
        let elapsed: Vec<i64> = ends.iter().map(|(_, e)| to_i64(e.elapsed_ns)).collect();
        let idx: Vec<i32> = (0..ends.len()).map(|i| to_i32(i as u32)).collect();
        let cancelling: Vec<i16> = vec![
            state_code(State::CancelRequested),
            state_code(State::Cancelling),
        ];
        self.with(|c| {
            // Fenced per task; successes count their waiting dependents down and hand
            // those made ready to this worker (up to `limit`); a repeat after a lost
            // answer finds its own ends (see `FINISH_SQL`).
            let rows = c.query(
                FINISH_SQL,
                &[
                    &runs,
                    &nodes,
                    &tokens,
                    &states,
                    &results,
                    &errors,
                    &attempts,
                    &elapsed,
                    &idx,
                    &CHANNEL,
                    &cancelling,
                    &owner,
                    &process_types,
                    &to_i64(ttl_ms),
                    &to_i64(limit as u64),
                ],
            )?;
            let mut stored = vec![false; ends.len()];
            let mut claimed = Vec::new();
            for r in &rows {
                let i: i32 = r.try_get(0)?;
                if i == -2 {
                    let attempts: i32 = r.try_get(6)?;
                    claimed.push(ClaimedTask {
                        claim: TaskClaim {
                            run: r.try_get(1)?,
                            run_token: run_token_of(r.try_get(2)?),
                            node: node_of(r.try_get(3)?),
                            token: to_u64(r.try_get(4)?),
                        },
                        process_type: r.try_get(5)?,
                        attempts: u32::try_from(attempts).unwrap_or(0),
                    });
                } else if let Some(s) = usize::try_from(i).ok().and_then(|i| stored.get_mut(i)) {
                    *s = true;
                }
            }
            Ok((stored, claimed))
        })
    }

    fn results(
        &self,
        run: &str,
        token: u64,
        nodes: &[u32],
    ) -> Result<Vec<(u32, Arc<str>)>, StoreError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let nodes: Vec<i32> = nodes.iter().map(|&n| to_i32(n)).collect();
        self.with(|c| {
            c.query(
                "SELECT node, result FROM procession_task_claims
                 WHERE run = $1 AND run_token = $2 AND node = ANY($3) AND state = 2
                   AND result IS NOT NULL",
                &[&run, &run_token(token), &nodes],
            )?
            .iter()
            .map(|r| {
                let json: String = r.try_get(1)?;
                Ok((node_of(r.try_get(0)?), Arc::from(json)))
            })
            .collect()
        })
    }

    fn ended(&self, pending: &[(String, u64, u32)]) -> Result<Vec<EndedTask>, StoreError> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<&str> = pending.iter().map(|p| p.0.as_str()).collect();
        let tokens: Vec<i64> = pending.iter().map(|p| run_token(p.1)).collect();
        let nodes: Vec<i32> = pending.iter().map(|p| to_i32(p.2)).collect();
        self.with(|c| {
            let rows = c.query(
                "SELECT t.run, t.node, t.state, t.owner, t.attempts, t.elapsed_ns, t.result,
                        t.error
                 FROM unnest($1::text[], $2::int8[], $3::int4[]) AS p(run, run_token, node)
                 CROSS JOIN LATERAL (
                     SELECT * FROM procession_task_claims t
                     WHERE t.run = p.run AND t.node = p.node LIMIT 1) t
                 WHERE t.run_token = p.run_token
                   AND (t.state IN (2, 3) OR (t.state = 4 AND t.owner IS NULL))",
                &[&runs, &tokens, &nodes],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let run: String = r.try_get(0)?;
                let node = node_of(r.try_get(1)?);
                let end = self.end_of(r, &format!("procession_task_claims/{run}/{node}"))?;
                out.push(EndedTask {
                    run,
                    node,
                    owner: r.try_get(3)?,
                    end,
                });
            }
            Ok(out)
        })
    }

    fn report(&self, owner: &str, reports: &[(TaskClaim, ClaimReport)]) -> Result<(), StoreError> {
        if reports.is_empty() {
            return Ok(());
        }
        let runs: Vec<&str> = reports.iter().map(|(c, _)| c.run.as_str()).collect();
        let nodes: Vec<i32> = reports.iter().map(|(c, _)| to_i32(c.node)).collect();
        let tokens: Vec<i64> = reports.iter().map(|(c, _)| to_i64(c.token)).collect();
        let attempts: Vec<i32> = reports.iter().map(|(_, r)| to_i32(r.attempt)).collect();
        let percents: Vec<Option<f64>> = reports.iter().map(|(_, r)| r.progress.percent).collect();
        let messages: Vec<Option<&str>> = reports
            .iter()
            .map(|(_, r)| r.progress.message.as_deref())
            .collect();
        let logs: Vec<Option<String>> = reports
            .iter()
            .map(|(_, r)| {
                r.log
                    .as_ref()
                    .map(|l| serde_json::to_string(l).unwrap_or_else(|_| "[]".to_owned()))
            })
            .collect();
        let logged: Vec<i64> = reports.iter().map(|(_, r)| to_i64(r.logged)).collect();
        self.with(|c| {
            // Fenced as a heartbeat is: only under the claim's token, by its owner, while
            // it runs. A log left out (`NULL`) keeps the stored one.
            // Its rows locked first, in (run, node) order (see the module's lock order).
            c.execute(
                "WITH l AS MATERIALIZED (
                     SELECT u.* FROM (
                         SELECT * FROM unnest($2::text[], $3::int4[], $4::int8[], $5::int4[],
                                              $6::float8[], $7::text[], $8::text[],
                                              $9::int8[])
                              AS u(run, node, token, attempt, percent, message, log, logged)
                         ORDER BY u.run, u.node) u
                     CROSS JOIN LATERAL (
                         SELECT 1 FROM procession_task_claims t
                         WHERE t.run = u.run AND t.node = u.node AND t.token = u.token
                           AND t.owner = $1 AND t.state IN (1, 4)
                         FOR UPDATE) x)
                 UPDATE procession_task_claims AS t
                 SET attempt = u.attempt, percent = u.percent, message = u.message,
                     log = COALESCE(u.log, t.log), logged = u.logged, seq = t.seq + 1,
                     news = pg_current_xact_id()::text::int8
                 FROM l AS u
                 WHERE t.run = u.run AND t.node = u.node AND t.token = u.token
                   AND t.owner = $1 AND t.state IN (1, 4)",
                &[
                    &owner, &runs, &nodes, &tokens, &attempts, &percents, &messages, &logs, &logged,
                ],
            )?;
            Ok(())
        })
    }

    fn watch(&self, watched: &[WatchedTask]) -> Result<Vec<TaskNews>, StoreError> {
        if watched.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<&str> = watched.iter().map(|w| w.run.as_str()).collect();
        let run_tokens: Vec<i64> = watched.iter().map(|w| run_token(w.run_token)).collect();
        let nodes: Vec<i32> = watched.iter().map(|w| to_i32(w.node)).collect();
        let tokens: Vec<i64> = watched.iter().map(|w| to_i64(w.token)).collect();
        let seqs: Vec<i64> = watched.iter().map(|w| to_i64(w.seq)).collect();
        self.with_generic(|c| {
            // Ended rows (as `ended`), and claimed ones with a report (its worker wrote
            // one: an attempt waits) whose claim or report changed. A claim without a
            // report is no news: a task that ends at once (most, under load) costs its
            // coordinator nothing until its end. One primary-key probe per task
            // (`LIMIT 1` keeps the generic plan from hashing a scan of the table).
            let rows = c.query(
                "SELECT t.run, t.node, t.state, t.owner, t.attempts, t.elapsed_ns, t.result,
                        t.error, t.token, t.seq, t.attempt, t.percent, t.message,
                        CASE WHEN t.logged > 0 THEN t.log END, t.logged
                 FROM unnest($1::text[], $2::int8[], $3::int4[], $4::int8[], $5::int8[])
                      AS p(run, run_token, node, token, seq)
                 CROSS JOIN LATERAL (
                     SELECT * FROM procession_task_claims t
                     WHERE t.run = p.run AND t.node = p.node LIMIT 1) t
                 WHERE t.run_token = p.run_token
                   AND (t.state IN (2, 3) OR (t.state = 4 AND t.owner IS NULL)
                        OR (t.state IN (1, 4) AND t.owner IS NOT NULL AND t.seq > 0
                            AND (t.token <> p.token OR t.seq <> p.seq)))",
                &[&runs, &run_tokens, &nodes, &tokens, &seqs],
            )?;
            rows.iter()
                .map(|r| self.news_of(r))
                .collect::<Result<Vec<_>, _>>()
        })
    }

    fn changes(&self, runs: &[(String, u64)], since: u64) -> Result<TaskChanges, StoreError> {
        if runs.is_empty() {
            return Ok(TaskChanges {
                news: Vec::new(),
                since,
            });
        }
        let names: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
        let tokens: Vec<i64> = runs.iter().map(|r| run_token(r.1)).collect();
        self.with_generic(|c| {
            // The rows whose `news` (the id of the transaction that wrote it) is not
            // older than the oldest transaction running at the previous poll: every
            // write that poll did not see. The next poll starts from this statement's
            // oldest running transaction (its snapshot's xmin), in the last column of
            // a row that is there even when nothing changed. Per run, a range of the
            // partial `news` index (its predicate repeated: the planner sees it holds;
            // `OFFSET 0` keeps the generic plan from a sequential scan).
            let rows = c.query(
                "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS x)
                 SELECT t.run, t.node, t.state, t.owner, t.attempts, t.elapsed_ns, t.result,
                        t.error, t.token, t.seq, t.attempt, t.percent, t.message,
                        CASE WHEN t.logged > 0 THEN t.log END, t.logged, s.x
                 FROM s LEFT JOIN (
                     SELECT t.* FROM unnest($1::text[], $2::int8[]) AS p(run, run_token)
                     CROSS JOIN LATERAL (
                         SELECT * FROM procession_task_claims t
                         WHERE t.run = p.run AND t.news >= $3 AND t.run_token = p.run_token
                           AND (t.state IN (2, 3, 4) OR t.seq > 0)
                           AND (t.state IN (2, 3) OR (t.state = 4 AND t.owner IS NULL)
                                OR (t.state IN (1, 4) AND t.owner IS NOT NULL
                                    AND t.seq > 0))
                         OFFSET 0) t) t
                   ON true",
                &[&names, &tokens, &to_i64(since)],
            )?;
            let mut out = TaskChanges {
                news: Vec::with_capacity(rows.len()),
                since,
            };
            for r in &rows {
                out.since = to_u64(r.try_get(15)?);
                if r.try_get::<_, Option<String>>(0)?.is_some() {
                    out.news.push(self.news_of(r)?);
                }
            }
            Ok(out)
        })
    }

    fn release(&self, owner: &str, claims: &[TaskClaim]) -> Result<u64, StoreError> {
        if claims.is_empty() {
            return Ok(0);
        }
        let runs: Vec<&str> = claims.iter().map(|c| c.run.as_str()).collect();
        let nodes: Vec<i32> = claims.iter().map(|c| to_i32(c.node)).collect();
        let tokens: Vec<i64> = claims.iter().map(|c| to_i64(c.token)).collect();
        self.with(|c| {
            // Only claims still `owner`'s under their token and unended. A running one
            // is ready again (its attempts stay raised by the claim: attempt numbers
            // never repeat); one asked to cancel loses its owner, which ends it
            // cancelled for its coordinator (as a task cancelled before any claim). The
            // token is raised: a late finish of this claim is fenced out. Its rows are
            // locked first, in (run, node) order (see the module's lock order).
            let rows = c.query(
                "WITH l AS MATERIALIZED (
                     SELECT u.run, u.node, u.token FROM (
                         SELECT * FROM unnest($2::text[], $3::int4[], $4::int8[])
                              AS u(run, node, token)
                         ORDER BY u.run, u.node) u
                     CROSS JOIN LATERAL (
                         SELECT 1 FROM procession_task_claims t
                         WHERE t.run = u.run AND t.node = u.node AND t.token = u.token
                           AND t.owner = $1 AND t.state IN (1, 4)
                         FOR UPDATE) x),
                 r AS (
                     UPDATE procession_task_claims AS t
                     SET state = CASE WHEN t.state = 1 THEN 0 ELSE t.state END,
                         token = t.token + 1, owner = NULL, expires_at = 0,
                         deadline_at = NULL, news = pg_current_xact_id()::text::int8
                     FROM l AS u
                     WHERE t.run = u.run AND t.node = u.node AND t.token = u.token
                       AND t.owner = $1 AND t.state IN (1, 4)
                     RETURNING t.run)
                 , n AS (SELECT pg_notify($5, '') WHERE EXISTS (SELECT 1 FROM r))
                 SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM n)",
                &[&owner, &runs, &nodes, &tokens, &CHANNEL],
            )?;
            let n: i64 = rows.first().map_or(Ok(0), |r| r.try_get(0))?;
            Ok(to_u64(n))
        })
    }

    fn cancel(&self, run: &str, token: u64) -> Result<(), StoreError> {
        self.with(|c| {
            // Waiting rows too. Running and ready rows are locked before waiting ones,
            // each in node order (see the module's lock order): a finish holds its
            // running rows while it counts their waiting dependents down.
            c.execute(
                "WITH l AS MATERIALIZED (
                     SELECT node FROM procession_task_claims
                     WHERE run = $1 AND run_token = $2 AND state IN (0, 1, 5)
                     ORDER BY state = 5, node
                     FOR UPDATE),
                 x AS (
                     UPDATE procession_task_claims AS t
                     SET state = 4, news = pg_current_xact_id()::text::int8
                     FROM l
                     WHERE t.run = $1 AND t.node = l.node AND t.run_token = $2
                       AND t.state IN (0, 1, 5)
                     RETURNING 1)
                 SELECT pg_notify($3, $1) WHERE EXISTS (SELECT 1 FROM x)",
                &[&run, &run_token(token), &CHANNEL],
            )?;
            Ok(())
        })
    }

    fn clear(&self, run: &str, token: u64) -> Result<(), StoreError> {
        self.with(|c| {
            // Locked first in the module's lock order (a late finish or release of one
            // of its tasks may lock the same rows).
            c.execute(
                "WITH l AS MATERIALIZED (
                     SELECT node FROM procession_task_claims
                     WHERE run = $1 AND run_token = $2
                     ORDER BY state = 5, node
                     FOR UPDATE)
                 DELETE FROM procession_task_claims AS t USING l
                 WHERE t.run = $1 AND t.node = l.node AND t.run_token = $2",
                &[&run, &run_token(token)],
            )?;
            Ok(())
        })
    }

    fn heartbeat_tasks(
        &self,
        worker: &str,
        leases: &[Lease],
        claims: &[TaskClaim],
        ttl_ms: u64,
    ) -> Result<(Beat, TaskBeat), StoreError> {
        let runs: Vec<&str> = leases.iter().map(|l| l.run.as_str()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| to_i64(l.token)).collect();
        let c_runs: Vec<&str> = claims.iter().map(|c| c.run.as_str()).collect();
        let c_nodes: Vec<i32> = claims.iter().map(|c| to_i32(c.node)).collect();
        let c_tokens: Vec<i64> = claims.iter().map(|c| to_i64(c.token)).collect();
        self.with(|c| {
            // One statement: the run leases (as `Store::heartbeat`), the task claims
            // still this worker's (same token, running or asked to cancel), and the
            // worker's row. A claim past its hard deadline is renewed too, but stays
            // claimable by others (the claim query reads the deadline). The claims'
            // rows are locked first, in (run, node) order (see the module's lock order:
            // the worker's own finish of the same tasks, on another connection, locks
            // them so).
            let rows = c.query(
                concat!(
                    "WITH ",
                    heartbeat_ctes!(),
                    ",
                 held AS MATERIALIZED (
                     SELECT h.run, h.node, h.token FROM (
                         SELECT * FROM unnest($5::text[], $6::int4[], $7::bigint[])
                              AS h(run, node, token)
                         ORDER BY h.run, h.node) h
                     CROSS JOIN LATERAL (
                         SELECT 1 FROM procession_task_claims t
                         WHERE t.run = h.run AND t.node = h.node AND t.token = h.token
                           AND t.owner = $1 AND t.state IN (1, 4)
                         FOR UPDATE) x),
                 claims AS (
                     UPDATE procession_task_claims AS t
                     SET expires_at = procession_now_ms() + $4
                     FROM held AS h
                     WHERE t.run = h.run AND t.node = h.node AND t.token = h.token
                       AND t.owner = $1 AND t.state IN (1, 4)
                     RETURNING t.run, t.node, t.state)
                 SELECT b.run, NULL::int4, r.state FROM beat b
                 LEFT JOIN procession_records r ON r.id = b.run
                 UNION ALL
                 SELECT c.run, c.node, c.state FROM claims c
                 UNION ALL
                 SELECT NULL, NULL, CASE WHEN EXISTS (SELECT 1 FROM seen) THEN 1 ELSE 0 END::int2"
                ),
                &[
                    &worker,
                    &runs,
                    &tokens,
                    &to_i64(ttl_ms),
                    &c_runs,
                    &c_nodes,
                    &c_tokens,
                ],
            )?;
            let cancel_run = state_code(State::CancelRequested);
            let mut renewed = std::collections::HashSet::with_capacity(rows.len());
            let mut kept = std::collections::HashSet::with_capacity(claims.len());
            let mut beat = Beat::default();
            let mut tasks = TaskBeat::default();
            for r in &rows {
                let node: Option<i32> = r.try_get(1)?;
                let state: Option<i16> = r.try_get(2)?;
                // The one row without a run says whether the worker's row was there
                // (a worker removed as dead registers again).
                let Some(run) = r.try_get::<_, Option<String>>(0)? else {
                    beat.forgotten = state != Some(1);
                    continue;
                };
                match node {
                    None => {
                        if state == Some(cancel_run) {
                            beat.cancel_requested.push(run.clone());
                        }
                        renewed.insert(run);
                    }
                    Some(n) => {
                        let n = node_of(n);
                        if state == Some(CANCEL) {
                            tasks.cancel.push((run.clone(), n));
                        }
                        kept.insert((run, n));
                    }
                }
            }
            beat.refused = runs
                .iter()
                .filter(|r| !renewed.contains(**r))
                .map(|r| (*r).to_owned())
                .collect();
            tasks.refused = claims
                .iter()
                .filter(|c| !kept.contains(&(c.run.clone(), c.node)))
                .map(|c| (c.run.clone(), c.node))
                .collect();
            Ok((beat, tasks))
        })
    }

    fn listen(
        &self,
        wake: Arc<dyn Fn(TaskWake) + Send + Sync>,
        stop: Arc<AtomicBool>,
    ) -> Result<(), StoreError> {
        let config = self.pool.config().clone();
        let location = self.location.clone();
        std::thread::Builder::new()
            .name("procession-pg-listen".into())
            .spawn(move || {
                let mut pause = Duration::from_millis(50);
                while !stop.load(Ordering::Acquire) {
                    let mut client = match config.connect(postgres::NoTls) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(database = %location, error = %e, "task listener cannot connect; polling only until it can");
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_secs(1));
                            continue;
                        }
                    };
                    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
                        tracing::debug!(database = %location, error = %e, "task listener cannot LISTEN");
                        std::thread::sleep(pause);
                        continue;
                    }
                    pause = Duration::from_millis(50);
                    // Anything may have been missed while disconnected: wake the pollers.
                    wake(TaskWake::ALL);
                    loop {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let got = client
                            .notifications()
                            .timeout_iter(Duration::from_millis(250))
                            .next();
                        match got {
                            Ok(Some(first)) => {
                                // Drain what else arrived: one wake for a burst.
                                let mut what = TaskWake::of(first.payload());
                                while let Ok(Some(n)) = client.notifications().iter().next() {
                                    what = what.or(TaskWake::of(n.payload()));
                                }
                                wake(what);
                            }
                            Ok(None) => {
                                if client.is_closed() {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(database = %location, error = %e, "task listener lost its connection; reconnecting");
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError::io(self.location.clone(), e))?;
        Ok(())
    }
}
