//! Task-level claims on a shared store (issue 14, points 2-4): the queue through which a
//! run's coordinator offers its ready tasks and every worker claims, runs and finishes
//! them, fenced per task.
//!
//! A run still belongs to the worker holding its lease (its *coordinator*): its executor
//! decides which task is ready, settles failures and skips and writes the run's end. With
//! task spreading on, a ready task is not run by the coordinator but offered here
//! ([`TaskQueue::offer`]); any worker that registered the process type claims it
//! ([`TaskQueue::claim`]: a per-task fencing token, an expiry on the database clock, a
//! hard deadline), runs its attempts and finishes it with one fenced statement
//! ([`TaskQueue::finish`]); the coordinator collects the end ([`TaskQueue::ended`]) and
//! feeds it into its executor. While it runs, its worker writes what it reports
//! (attempt, progress, log: [`TaskQueue::report`]) and its coordinator reads the changes
//! with the ends ([`TaskQueue::watch`]); a worker that shuts down cleanly gives up its
//! unfinished claims ([`TaskQueue::release`]).

use std::sync::Arc;

use super::{Beat, Lease, StoreError};
use crate::record::{LogEntry, Progress};

/// A ready task offered by a run's coordinator (see [`TaskQueue::offer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOffer {
    /// The run (process record id).
    pub run: String,
    /// The run's token (one run of the record: a later run's offers replace an earlier
    /// run's rows).
    pub run_token: u64,
    /// The node's index in the run's graph.
    pub node: u32,
    /// The run's process type: only workers that registered it claim the task.
    pub process_type: String,
    /// Attempts the node made before (its next attempt is numbered `attempts + 1`).
    pub attempts: u32,
    /// Attempts per claim (the task's retry policy).
    pub max_attempts: u32,
    /// The task's hard deadline after each claim, in ms (`None`: only its lease).
    pub deadline_ms: Option<u64>,
    /// 0: the task is ready (an offer). More: a *waiting* row, made ready when that many
    /// successful finishes of its dependencies have counted it down (see
    /// [`TaskQueue::offer`]).
    pub pending_deps: u32,
    /// The tasks (nodes of the same run, each listed once) whose waiting rows a
    /// successful finish of this task counts down; empty: none.
    pub dependents: Vec<u32>,
}

/// A task held by one worker: its fencing token (see [`TaskQueue::claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskClaim {
    /// The run.
    pub run: String,
    /// The run's token.
    pub run_token: u64,
    /// The node.
    pub node: u32,
    /// The fencing token of this claim: greater than any earlier claim's of the task.
    pub token: u64,
}

/// A task claimed by [`TaskQueue::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedTask {
    /// The claim (carry it into [`TaskQueue::finish`] and heartbeats).
    pub claim: TaskClaim,
    /// The run's process type.
    pub process_type: String,
    /// Attempts made before this claim: the first attempt of this claim is this plus one.
    /// Every claim raises it by the task's attempts, so attempt numbers never repeat.
    pub attempts: u32,
}

/// How a claimed task ended, as its worker reports it ([`TaskQueue::finish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnd {
    /// The attempt number of its last attempt.
    pub attempts: u32,
    /// How long its attempts ran, in ns.
    pub elapsed_ns: u64,
    /// Its result (JSON) on success, or its error's messages (outermost first).
    pub outcome: Result<Arc<str>, Vec<String>>,
}

/// The end of an offered task, read by its coordinator ([`TaskQueue::ended`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedTask {
    /// The run.
    pub run: String,
    /// The node.
    pub node: u32,
    /// Who ran it (`None`: cancelled before any worker claimed it).
    pub owner: Option<String>,
    /// Its end; `Err` with no message when it was cancelled before it was claimed.
    pub end: TaskEnd,
}

/// What a heartbeat found about this worker's task claims
/// ([`TaskQueue::heartbeat_tasks`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskBeat {
    /// Claims not renewed (another worker claimed the task, or it ended): their futures
    /// must stop, their results would be fenced out.
    pub refused: Vec<(String, u32)>,
    /// Renewed claims whose run asked for a cancel: their tasks are cancelled.
    pub cancel: Vec<(String, u32)>,
}

/// What the worker running a claimed task reported of it since its claim
/// ([`TaskQueue::report`]): written to the task's claim row, read by its coordinator
/// ([`TaskQueue::watch`]), which records it in the run's task row as for a local task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimReport {
    /// The attempt running (or last run).
    pub attempt: u32,
    /// Its last progress.
    pub progress: Progress,
    /// Its log entries, the last [`MAX_LOG`](crate::record::MAX_LOG) at most; `None`:
    /// unchanged since the last report (the stored ones are kept).
    pub log: Option<Vec<LogEntry>>,
    /// Log entries written since the claim, including those dropped from `log`: a
    /// reader that has seen `n` of them takes the last `logged - n` of `log`.
    pub logged: u64,
}

/// A task offered by a run coordinated here, as its coordinator last saw it
/// ([`TaskQueue::watch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedTask {
    /// The run.
    pub run: String,
    /// The run's token.
    pub run_token: u64,
    /// The node.
    pub node: u32,
    /// The claim token last seen (0: none).
    pub token: u64,
    /// The report number of that claim last seen.
    pub seq: u64,
}

/// What changed of a watched task ([`TaskQueue::watch`]): a new claim, a new report
/// of its worker, or its end.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskNews {
    /// The run.
    pub run: String,
    /// The node.
    pub node: u32,
    /// Its claim token now (0: never claimed).
    pub token: u64,
    /// The report number of that claim now.
    pub seq: u64,
    /// Who holds (or ran) it.
    pub owner: Option<String>,
    /// What its worker reported.
    pub report: ClaimReport,
    /// Its end, once it ended (as [`TaskQueue::ended`] gives it).
    pub end: Option<TaskEnd>,
}

/// What changed of the tasks of some runs since a poll ([`TaskQueue::changes`]).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct TaskChanges {
    /// The tasks that ended or were reported since, and maybe some seen before (news
    /// is to be applied idempotently).
    pub news: Vec<TaskNews>,
    /// What to pass as `since` to the next poll: nothing written after this poll is
    /// missed by it.
    pub since: u64,
}

/// What a wake of [`TaskQueue::listen`] tells: tasks may be ready to claim, tasks of a
/// run may have ended (or were reported).
///
/// # Examples
///
/// ```
/// use procession::store::TaskWake;
/// fn loops_to_wake(w: TaskWake) -> (bool, bool) {
///     // (the claim loop, the collector)
///     (w.ready, w.ended)
/// }
/// # let _ = loops_to_wake;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskWake {
    /// Tasks may be ready: claimers look.
    pub ready: bool,
    /// Tasks may have ended: coordinators look.
    pub ended: bool,
}

/// The task queue of a shared store (PostgreSQL, [`Store::task_queue`](super::Store::task_queue)):
/// a run's coordinator offers its ready tasks ([`offer`](TaskQueue::offer)); any worker
/// that registered the process type claims them ([`claim`](TaskQueue::claim): a fencing
/// token per task, an expiry on the database clock, a hard deadline), runs them and
/// finishes them fenced per task ([`finish`](TaskQueue::finish)); the coordinator
/// collects the ends ([`ended`](TaskQueue::ended)) and feeds them into its executor.
///
/// # Examples
///
/// ```no_run
/// use procession::store::{PgStore, Store, TaskEnd, TaskOffer};
/// let store = PgStore::connect("postgres://postgres@127.0.0.1/procession")?;
/// let q = store.task_queue().expect("PostgreSQL has a task queue");
/// q.offer(&[TaskOffer {
///     run: "report-1".into(),
///     run_token: 42,
///     node: 0,
///     process_type: "report".into(),
///     attempts: 0,
///     max_attempts: 1,
///     deadline_ms: None,
///     pending_deps: 0,
///     dependents: Vec::new(),
/// }])?;
/// for task in q.claim("worker-a", &["report"], 30_000, 16)? {
///     let end = TaskEnd { attempts: task.attempts + 1, elapsed_ns: 0, outcome: Ok("1".into()) };
///     // `false`: another worker claimed the task since; nothing was written.
///     let stored = q.finish(&[(task.claim, end)])?;
///     assert_eq!(stored.len(), 1);
/// }
/// # Ok::<(), procession::store::StoreError>(())
/// ```
pub trait TaskQueue: Send + Sync {
    /// Offers ready tasks: a row per task, claimable by any worker of its process type.
    /// A task that already has a row of the same run token is left as it is (a new
    /// coordinator re-offering after a takeover adopts tasks running on live workers and
    /// finds those that ended), except a waiting row, which becomes ready; a row of an
    /// older run of the record is replaced.
    ///
    /// An offer with [`pending_deps`](TaskOffer::pending_deps) > 0 writes a *waiting*
    /// row instead (not claimable), unless the task has a row of the same run token
    /// already: [`finish`](TaskQueue::finish) counts it down and makes it ready.
    fn offer(&self, offers: &[TaskOffer]) -> Result<(), StoreError>;

    /// Claims for `owner`, until `ttl_ms` from now, up to `limit` tasks of the given
    /// process types that are ready, or running under a claim that expired or passed
    /// its hard deadline. Each claim raises the task's token. Two workers never claim
    /// the same task at once (`FOR UPDATE SKIP LOCKED`).
    fn claim(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<ClaimedTask>, StoreError>;

    /// Finishes claimed tasks with one statement, fenced per task: an end is stored
    /// only while its claim's token is the task's current one and the task is running
    /// (or asked to cancel). Per task, `false`: fenced out (another worker claimed it
    /// since): nothing of it was written.
    ///
    /// In the same statement, each success that ends a running task (once per claim:
    /// a repeated finish counts nothing again) counts down the waiting rows of its
    /// [`dependents`](TaskOffer::dependents) of the same run token, and those reaching
    /// 0 become ready, unless the run asked for a cancel. A waiting row another
    /// statement holds locked is waited for (rows are locked in (run, node) order, as
    /// the cancel and the offer lock them, so finishes do not deadlock each other): a
    /// skipped count-down would leave the row to its coordinator's offer.
    fn finish(&self, ends: &[(TaskClaim, TaskEnd)]) -> Result<Vec<bool>, StoreError>;

    /// [`finish`](TaskQueue::finish), which also claims for `owner` (as
    /// [`claim`](TaskQueue::claim) does, until `ttl_ms` from now) up to `limit` of the
    /// waiting tasks of `process_types` its successes made ready: a cascaded task is
    /// handed to the worker that finished its last dependency in the same write, without
    /// a claim of its own. The others become ready as with `finish`. A claim handed over
    /// by an answer that is lost (the statement runs again) is taken again, by any
    /// worker, once it expires. By default, `finish` and no claim.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use procession::store::{PgStore, Store};
    /// let store = PgStore::connect("postgres://postgres@127.0.0.1/procession")?;
    /// let q = store.task_queue().expect("PostgreSQL has a task queue");
    /// let claimed = q.claim("worker-a", &["report"], 30_000, 16)?;
    /// // … run them, then:
    /// let ends = Vec::new();
    /// let (stored, next) = q.finish_and_claim(&ends, "worker-a", &["report"], 30_000, 16)?;
    /// assert_eq!(stored.len(), ends.len());
    /// # let _ = (claimed, next);
    /// # Ok::<(), procession::store::StoreError>(())
    /// ```
    fn finish_and_claim(
        &self,
        ends: &[(TaskClaim, TaskEnd)],
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<(Vec<bool>, Vec<ClaimedTask>), StoreError> {
        let _ = (owner, process_types, ttl_ms, limit);
        Ok((self.finish(ends)?, Vec::new()))
    }

    /// [`claim`](TaskQueue::claim) of ready tasks only, not of running ones whose claim
    /// expired or passed its hard deadline: cheaper while many tasks run, for the
    /// claims between two full ones (by default, a full one).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use procession::store::{PgStore, Store};
    /// let store = PgStore::connect("postgres://postgres@127.0.0.1/procession")?;
    /// let q = store.task_queue().expect("PostgreSQL has a task queue");
    /// for task in q.claim_ready("worker-a", &["report"], 30_000, 16)? {
    ///     assert_eq!(task.process_type, "report");
    /// }
    /// # Ok::<(), procession::store::StoreError>(())
    /// ```
    fn claim_ready(
        &self,
        owner: &str,
        process_types: &[&str],
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        self.claim(owner, process_types, ttl_ms, limit)
    }

    /// The results of finished nodes `nodes` of run `run` (run token `run_token`), for
    /// the inputs of a dependent.
    fn results(
        &self,
        run: &str,
        run_token: u64,
        nodes: &[u32],
    ) -> Result<Vec<(u32, Arc<str>)>, StoreError>;

    /// Of the offered tasks `pending` (run, run token, node), those that ended: done,
    /// failed, or cancelled before any worker claimed them.
    fn ended(&self, pending: &[(String, u64, u32)]) -> Result<Vec<EndedTask>, StoreError>;

    /// Writes what `owner`'s workers reported of the tasks it holds (attempt,
    /// progress, log), fenced per claim as a heartbeat is: a claim no longer `owner`'s
    /// writes nothing. Each write raises the claim's report number.
    fn report(&self, owner: &str, reports: &[(TaskClaim, ClaimReport)]) -> Result<(), StoreError>;

    /// Of the offered tasks `watched`, those that changed since their coordinator last
    /// saw them: reported by their worker (under a claim whose token or report number
    /// differs from the one seen; a claim its worker reported nothing of is not
    /// news), or ended (as in [`ended`](TaskQueue::ended)). One statement, as `ended`.
    fn watch(&self, watched: &[WatchedTask]) -> Result<Vec<TaskNews>, StoreError>;

    /// The tasks of runs `runs` (run, run token) that ended or whose worker reported
    /// them (as [`watch`](TaskQueue::watch) finds them) since the poll that returned
    /// `since` (0: since ever), without naming the tasks: one statement that reads only
    /// the rows written since, however many tasks the runs wait for. A task may be
    /// returned again by the next poll (a write that was not committed yet at the
    /// previous one may be older than others that were); a task's end written before
    /// the first poll that watches it is found by [`watch`](TaskQueue::watch).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use procession::store::{PgStore, Store};
    /// let store = PgStore::connect("postgres://postgres@127.0.0.1/procession")?;
    /// let q = store.task_queue().expect("PostgreSQL has a task queue");
    /// let runs = [("report-1".to_owned(), 42)];
    /// let first = q.changes(&runs, 0)?;
    /// // Later: only what was written since the first poll (and maybe some of before).
    /// let next = q.changes(&runs, first.since)?;
    /// assert!(next.since >= first.since);
    /// # Ok::<(), procession::store::StoreError>(())
    /// ```
    fn changes(&self, runs: &[(String, u64)], since: u64) -> Result<TaskChanges, StoreError>;

    /// Gives up `owner`'s claims `claims` (a worker that shuts down cleanly, after its
    /// drain): each becomes claimable by another worker at once, its attempt count kept
    /// (attempt numbers never repeat); a claim asked to cancel ends cancelled. Returns
    /// the number of claims given up (a claim another worker took since, or that
    /// ended, is left alone).
    fn release(&self, owner: &str, claims: &[TaskClaim]) -> Result<u64, StoreError>;

    /// Asks every task of run `run` that is waiting, offered or running to cancel.
    fn cancel(&self, run: &str, run_token: u64) -> Result<(), StoreError>;

    /// Deletes the task rows of run `run` (its run ended).
    fn clear(&self, run: &str, run_token: u64) -> Result<(), StoreError>;

    /// [`Store::heartbeat`](super::Store::heartbeat) that also renews the task claims
    /// `claims` of `worker`, in one statement.
    fn heartbeat_tasks(
        &self,
        worker: &str,
        leases: &[Lease],
        claims: &[TaskClaim],
        ttl_ms: u64,
    ) -> Result<(Beat, TaskBeat), StoreError>;

    /// Starts a listener that calls `wake` whenever a task is offered or ends, saying
    /// which (a hint: callers poll too; after a reconnect, both), until `stop` is set.
    /// It reconnects by itself.
    fn listen(
        &self,
        wake: Arc<dyn Fn(TaskWake) + Send + Sync>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(), StoreError>;
}
