//! The context a task receives: identity, attempt, progress, logs and cancellation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use smol_str::SmolStr;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::{Cancelled, MissingResource};
use crate::record::Level;
use crate::task::resource::{Res, Resource, Resources};

/// Where a task's progress and log entries go. The runtime installs one per run.
pub(crate) trait Reporter: Send + Sync {
    fn progress(&self, node: u32, percent: Option<f64>, message: &str);
    fn log(&self, node: u32, level: Level, message: &str);
    /// Attempt `attempt` of `node` started and waits (as a journal records a start:
    /// an attempt that ends in its first poll is not reported). Called for runs without
    /// a journal only: a journal records its starts itself.
    fn attempt(&self, node: u32, attempt: u32) {
        let _ = (node, attempt);
    }
}

/// A token's cancellation as one atomic flag, set by the token itself when it is
/// cancelled (directly or through a parent token), before its `cancel()` returns: reading
/// it is a load, where [`CancellationToken::is_cancelled`] locks the token's mutex (every
/// task's start and end of a run reads it; two workers finishing tasks at once contend
/// on that lock).
///
/// How: a wait for the cancellation is registered with the token once, with a waker
/// that sets the flag; the token wakes its waiters (synchronously, in `cancel()`) right
/// after it marks itself cancelled. So a cancel that happened before a read (a task that
/// called `ctx.cancel()` before it returned, a cancel seen by another thread that then
/// told this one) is seen by it, exactly as with the token; one concurrent with it is as
/// if it came after it, as it is with the token.
pub(crate) struct CancelFlag {
    set: Arc<FlagWaker>,
    /// The registered wait (its waker is `set`), kept as long as the flag.
    _wait: Mutex<Pin<Box<WaitForCancellationFutureOwned>>>,
}

/// The waker of [`CancelFlag`]'s registered wait: woken only by the token's cancel.
struct FlagWaker(AtomicBool);

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

impl CancelFlag {
    /// The flag of `token`: set now if it is cancelled already, else when it is.
    pub(crate) fn watch(token: &CancellationToken) -> Self {
        let set = Arc::new(FlagWaker(AtomicBool::new(false)));
        let mut wait = Box::pin(token.clone().cancelled_owned());
        let waker = Waker::from(set.clone());
        // Registers the waker with the token (or finds it cancelled).
        if wait
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
        {
            set.0.store(true, Ordering::Release);
        }
        CancelFlag {
            set,
            _wait: Mutex::new(wait),
        }
    }

    /// Whether the token was cancelled.
    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        self.set.0.load(Ordering::Acquire)
    }
}

/// What the context of one attempt is made of, lent by the executor to the task, which
/// makes its [`Ctx`] as the attempt starts ([`make`](CtxSeed::make)): with the run's
/// shared state when the task takes a context, without it (no reference count touched)
/// when it does not (see [`Task::TAKES_CTX`](crate::Task::TAKES_CTX)).
#[derive(Clone, Copy)]
pub(crate) struct CtxSeed<'a> {
    scope: &'a Arc<RunScope>,
    node: u32,
    task: &'static str,
    attempt: u32,
}

impl<'a> CtxSeed<'a> {
    pub(crate) fn new(
        scope: &'a Arc<RunScope>,
        node: u32,
        task: &'static str,
        attempt: u32,
    ) -> Self {
        CtxSeed {
            scope,
            node,
            task,
            attempt,
        }
    }

    /// The attempt's context: with the run's shared state when `takes` (the task uses
    /// its context), else an inert one made without touching it.
    #[inline]
    pub(crate) fn make(self, takes: bool) -> Ctx {
        Ctx {
            scope: takes.then(|| Arc::clone(self.scope)),
            node: self.node,
            task: self.task,
            attempt: self.attempt,
        }
    }
}

/// A scope that belongs to no run: named `process_id`, node ids from `node_ids`, a cancel
/// token of its own, progress and log entries to `tracing` only, no runtime, no resources.
fn standalone_scope(
    process_id: &str,
    node_ids: Arc<dyn Fn(u32) -> SmolStr + Send + Sync>,
) -> RunScope {
    let cancel = CancellationToken::new();
    RunScope {
        process_id: Arc::from(process_id),
        node_ids,
        cancelled: CancelFlag::watch(&cancel),
        cancel,
        reporter: Arc::new(TracingReporter),
        runtime: None,
        resources: Arc::default(),
        child_seq: std::sync::Mutex::default(),
    }
}

/// The state of a detached context (see [`Ctx::detached`]): its own, named `detached`,
/// node ids all `task`.
pub(crate) fn detached_scope(task: &'static str) -> Arc<RunScope> {
    let name = SmolStr::new_static(task);
    Arc::new(standalone_scope(
        "detached",
        Arc::new(move |_| name.clone()),
    ))
}

/// The state an inert context reads (see [`CtxSeed::make`]): no run id, node ids
/// empty, progress and log entries to nowhere, never cancelled (a cancel through it
/// cancels only it and other inert contexts, which no task reads).
fn inert() -> &'static RunScope {
    static INERT: std::sync::LazyLock<RunScope> =
        std::sync::LazyLock::new(|| standalone_scope("", Arc::new(|_| SmolStr::default())));
    &INERT
}

/// Reporter of detached contexts: writes to `tracing` only.
struct TracingReporter;

impl Reporter for TracingReporter {
    fn progress(&self, _node: u32, _percent: Option<f64>, _message: &str) {}
    fn log(&self, _node: u32, _level: Level, _message: &str) {}
}

/// The runtime running a context's run, opaque to the layers below it.
///
/// A task's context must be able to start child processes, but a child launch names
/// graphs, hooks and the runtime, all above the task layer. So the context carries the
/// runtime as `Any`, and the one place that starts children (`runtime/children.rs`)
/// downcasts it back; an absent or foreign handle means "no runtime" there.
#[derive(Clone)]
pub(crate) struct RuntimeHandle(pub(crate) Arc<dyn std::any::Any + Send + Sync>);

/// Per-run data shared by the contexts of all tasks of the run.
pub(crate) struct RunScope {
    pub(crate) process_id: Arc<str>,
    pub(crate) node_ids: Arc<dyn Fn(u32) -> SmolStr + Send + Sync>,
    pub(crate) cancel: CancellationToken,
    /// Set when `cancel` is cancelled: read where tasks start and end (an atomic load,
    /// not the mutex [`CancellationToken::is_cancelled`] takes).
    pub(crate) cancelled: CancelFlag,
    pub(crate) reporter: Arc<dyn Reporter>,
    /// The runtime running this run (recorded runs only), for child processes.
    pub(crate) runtime: Option<RuntimeHandle>,
    /// The runtime's shared resources.
    pub(crate) resources: Arc<Resources>,
    /// Children started per (node, attempt, process), for default child ids.
    pub(crate) child_seq:
        std::sync::Mutex<std::collections::HashMap<(u32, u32, &'static str), u32>>,
}

/// The context of one attempt of a task.
///
/// Declare it as the first parameter of a `#[task]` function (`ctx: &Ctx`) to read the
/// run's identity, report progress, write to the task's log and cooperate with
/// cancellation.
///
/// A clone may outlive its attempt (moved into a spawned task, say). Its progress and log
/// calls after the attempt ended are recorded only while the run keeps the task's row in
/// memory: once the row's end is written (and the other rows kept with it ended too) or
/// the run is over, they reach `tracing` only. Report before returning what must be kept.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
///
/// #[task]
/// async fn count_to(ctx: &Ctx, n: u32) -> u32 {
///     let mut done = 0;
///     for i in 0..n {
///         if !ctx.should_continue() {
///             break;
///         }
///         ctx.progress(f64::from(i) * 100.0 / f64::from(n), format!("step {i}"));
///         done += 1;
///     }
///     done
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Called directly, outside any runtime, with a detached context:
/// let ctx = Ctx::detached("count_to");
/// assert_eq!(count_to(&ctx, 3).await, 3);
/// ctx.cancel();
/// assert_eq!(count_to(&ctx, 3).await, 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Ctx {
    /// The run's shared state; `None` for a task that takes no context (see
    /// [`Task::TAKES_CTX`](crate::Task::TAKES_CTX)), which then reads [`inert`].
    scope: Option<Arc<RunScope>>,
    node: u32,
    task: &'static str,
    attempt: u32,
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("process_id", &&*self.scope().process_id)
            .field("task", &self.task)
            .field("node", &self.node_id())
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// The run's shared state ([`inert`] for a context made without it).
    #[inline]
    fn scope(&self) -> &RunScope {
        match &self.scope {
            Some(scope) => scope,
            None => inert(),
        }
    }

    /// A context that belongs to no run: for calling task functions directly (unit tests,
    /// scripts). Progress and log entries go to `tracing`; [`Ctx::cancel`] cancels it.
    pub fn detached(task: &'static str) -> Self {
        Ctx {
            scope: Some(detached_scope(task)),
            node: 0,
            task,
            attempt: 1,
        }
    }

    /// The id of the process run this task belongs to.
    pub fn process_id(&self) -> &str {
        &self.scope().process_id
    }

    /// The task's name (`#[task(name = …)]`, or the function's name).
    pub fn task_name(&self) -> &'static str {
        self.task
    }

    /// The task's node id in its graph: derived from where the builder added it, so it is
    /// the same every time the same process is built with the same parameters.
    ///
    /// A [`SmolStr`]: a short id (up to 23 bytes) is a copy, a longer one shared.
    pub fn node_id(&self) -> SmolStr {
        (self.scope().node_ids)(self.node)
    }

    /// The attempt number, from 1. A task re-run after a crash continues the count.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A key that is the same for every attempt of this task in this run (also across a
    /// crash and resume), and different for every other task or run: use it to make side
    /// effects idempotent.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctx = procession::Ctx::detached("send_mail");
    /// assert_eq!(ctx.idempotency_key(), "detached/send_mail");
    /// ```
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.scope().process_id, self.node_id())
    }

    /// Reports progress: a percentage and a message.
    ///
    /// The percentage is any number ([`IntoPercent`]: `50`, `12.5`, a `u64` counter…),
    /// clamped to 0..=100 (NaN counts as 0), or `None` while the amount done is unknown.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    ///
    /// #[task]
    /// async fn import(ctx: &Ctx, rows: Vec<String>) -> usize {
    ///     ctx.progress(None, "counting rows");
    ///     ctx.progress(0, "starting");
    ///     for (i, _row) in rows.iter().enumerate() {
    ///         ctx.progress(i * 100 / rows.len(), format!("row {i}"));
    ///     }
    ///     ctx.progress(100.0, "done");
    ///     rows.len()
    /// }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # assert_eq!(import(&Ctx::detached("import"), vec!["a".into()]).await, 1);
    /// # }
    /// ```
    pub fn progress(&self, percent: impl IntoPercent, message: impl AsRef<str>) {
        let percent = clamp_percent(percent);
        let message = message.as_ref();
        tracing::debug!(task = self.task, node = %self.node_id(), ?percent, message, "progress");
        self.scope().reporter.progress(self.node, percent, message);
    }

    /// Writes an entry to the task's log (and to `tracing`).
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        let message = message.as_ref();
        match level {
            Level::Debug => tracing::debug!(task = self.task, message),
            Level::Info => tracing::info!(task = self.task, message),
            Level::Warning => tracing::warn!(task = self.task, message),
            Level::Error => tracing::error!(task = self.task, message),
        }
        self.scope().reporter.log(self.node, level, message);
    }

    /// False once the run was asked to stop: check it in loops and return early.
    pub fn should_continue(&self) -> bool {
        !self.scope().cancelled.is_set()
    }

    /// True once the run was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.scope().cancelled.is_set()
    }

    /// `Err(Cancelled)` once the run was asked to stop: `ctx.check_cancelled()?` leaves
    /// the task, which is then recorded **cancelled** (not done, not failed), and its
    /// dependents end cancelled with the run.
    ///
    /// [`Cancelled`] converts with `?` into `Box<dyn Error + Send + Sync>`, into
    /// `anyhow::Error`, into `String`, and into your own error type once it has a variant
    /// for it (with `thiserror`: `#[error(transparent)] Cancelled(#[from] Cancelled)`).
    /// Returning `Ok` after a cancel instead records the task done with its result: use
    /// this when the task stops before its work is complete.
    ///
    /// # Errors
    ///
    /// [`Cancelled`], naming this task, once the run was asked to stop.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    /// use procession::Cancelled;
    ///
    /// #[task]
    /// async fn crawl(ctx: &Ctx, pages: u32) -> Result<u32, Cancelled> {
    ///     let mut done = 0;
    ///     for page in 0..pages {
    ///         ctx.check_cancelled()?;
    ///         ctx.progress(f64::from(page) * 100.0 / f64::from(pages), format!("page {page}"));
    ///         done += 1;
    ///     }
    ///     Ok(done)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let ctx = Ctx::detached("crawl");
    /// assert_eq!(crawl(&ctx, 3).await.unwrap(), 3);
    /// ctx.cancel();
    /// let err = crawl(&ctx, 3).await.unwrap_err();
    /// assert_eq!(err.to_string(), "task `crawl` was cancelled");
    /// # }
    /// ```
    pub fn check_cancelled(&self) -> Result<(), Cancelled> {
        if self.scope().cancelled.is_set() {
            Err(Cancelled {
                task: self.task.to_owned(),
            })
        } else {
            Ok(())
        }
    }

    /// The runtime's resource of type `T` (registered with
    /// [`RuntimeBuilder::resource`](crate::RuntimeBuilder::resource)), for a task that
    /// decides at run time which resources it reads. A resource the task always needs
    /// is better declared as a `Res<T>` parameter: then a runtime without it refuses
    /// the run before it starts, instead of this task failing when it gets here.
    ///
    /// # Errors
    ///
    /// [`MissingResource`] when the runtime holds no `T` (a detached context holds
    /// none).
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::prelude::*;
    ///
    /// struct Config { verbose: bool }
    ///
    /// #[task]
    /// fn report(ctx: &Ctx) -> Result<bool, procession::MissingResource> {
    ///     Ok(ctx.resource::<Config>()?.verbose)
    /// }
    /// #[process] fn job(p: &mut Builder) { p.task(Report::new()); }
    ///
    /// # #[tokio::main] async fn main() -> procession::Result<()> {
    /// let rt = Runtime::in_memory().resource(Config { verbose: true }).start().await?;
    /// assert!(rt.run(Job {}).await?.result::<bool>("report").unwrap());
    /// # Ok(()) }
    /// ```
    pub fn resource<T: Resource>(&self) -> Result<Res<T>, MissingResource> {
        self.scope()
            .resources
            .get::<T>()
            .ok_or_else(|| MissingResource {
                task: self.task.to_owned(),
                resource: std::any::type_name::<T>(),
            })
    }

    /// Completes when the run is asked to stop; use it in `tokio::select!`.
    pub async fn cancelled(&self) {
        self.scope().cancel.cancelled().await;
    }

    /// Requests cancellation of this context's run (for detached contexts: of this context).
    pub fn cancel(&self) {
        self.scope().cancel.cancel();
    }

    pub(crate) fn cancel_token(&self) -> CancellationToken {
        self.scope().cancel.clone()
    }

    pub(crate) fn runtime_handle(&self) -> Option<&RuntimeHandle> {
        self.scope().runtime.as_ref()
    }

    /// `<run>/<node>/<process>`, then `#1`, `#2`… for further children of that process
    /// started by this attempt: the same on every attempt, so a rerun finds its children.
    pub(crate) fn default_child_id(&self, process: &'static str) -> String {
        let mut g = self
            .scope()
            .child_seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = g.entry((self.node, self.attempt, process)).or_insert(0);
        let id = if *k == 0 {
            format!("{}/{}/{process}", self.scope().process_id, self.node_id())
        } else {
            format!(
                "{}/{}/{process}#{k}",
                self.scope().process_id,
                self.node_id()
            )
        };
        *k += 1;
        compact_child_id(id)
    }
}

/// Longest default child id kept as written; a longer one (a deep tree: each level adds
/// a node id and a process name) keeps its start and ends with a hash of the whole, so
/// ids stay unique, stable across attempts and far below the 512-byte limit at any depth.
const CHILD_ID_KEPT: usize = 200;

fn compact_child_id(id: String) -> String {
    if id.len() <= CHILD_ID_KEPT {
        return id;
    }
    // FNV-1a, 64 bits: stable across builds and platforms (the id is stored).
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = CHILD_ID_KEPT;
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &id[..cut])
}

/// A percentage for [`Ctx::progress`]: any integer or float, or `None` (or `Option<f64>`)
/// when the amount done is unknown.
///
/// Integer literals work as they read (`ctx.progress(50, "…")`); the value is clamped to
/// 0..=100 by `progress`, and a NaN counts as 0.
///
/// # Examples
///
/// ```
/// use procession::IntoPercent;
///
/// assert_eq!(50.into_percent(), Some(50.0));
/// assert_eq!(12.5_f32.into_percent(), Some(12.5));
/// assert_eq!(7_u64.into_percent(), Some(7.0));
/// assert_eq!(None.into_percent(), None);
/// assert_eq!(Some(99.5).into_percent(), Some(99.5));
/// ```
pub trait IntoPercent {
    /// The percentage as an `f64`, before clamping; `None` for "unknown".
    fn into_percent(self) -> Option<f64>;
}

impl IntoPercent for f64 {
    fn into_percent(self) -> Option<f64> {
        Some(self)
    }
}

impl IntoPercent for f32 {
    fn into_percent(self) -> Option<f64> {
        Some(f64::from(self))
    }
}

/// `None` for an unknown amount; the only `Option` accepted, so that a bare `None`
/// needs no type annotation.
impl IntoPercent for Option<f64> {
    fn into_percent(self) -> Option<f64> {
        self
    }
}

macro_rules! int_percent {
    ($($t:ty),*) => {$(
        impl IntoPercent for $t {
            // Percentages are small; a huge counter only loses precision it never needed.
            #[allow(clippy::cast_lossless)]
            fn into_percent(self) -> Option<f64> {
                Some(self as f64)
            }
        }
    )*};
}

int_percent!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

/// The percentage `progress` records: clamped to 0..=100, NaN as 0, `None` kept.
fn clamp_percent(percent: impl IntoPercent) -> Option<f64> {
    percent
        .into_percent()
        .map(|p| if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) })
}

#[cfg(test)]
mod tests {
    use super::{clamp_percent, compact_child_id, CancelFlag, Ctx, IntoPercent};
    use tokio_util::sync::CancellationToken;

    // The flag is set by the token's cancel itself, before it returns: directly, through
    // a parent token (on another thread too), or already at the watch; never otherwise.
    #[test]
    fn cancel_flag_follows_its_token() {
        let token = CancellationToken::new();
        let flag = CancelFlag::watch(&token);
        assert!(!flag.is_set());
        token.cancel();
        assert!(flag.is_set());

        let parent = CancellationToken::new();
        let child = parent.child_token();
        let grandchild = child.child_token();
        let (f1, f2) = (CancelFlag::watch(&child), CancelFlag::watch(&grandchild));
        let other = CancelFlag::watch(&CancellationToken::new());
        std::thread::spawn(move || parent.cancel()).join().unwrap();
        assert!(f1.is_set() && f2.is_set());
        assert!(!other.is_set());

        let done = CancellationToken::new();
        done.cancel();
        assert!(CancelFlag::watch(&done).is_set());

        // A context reads it: `ctx.cancel()` is seen by the next check.
        let ctx = Ctx::detached("t");
        assert!(ctx.should_continue() && ctx.check_cancelled().is_ok());
        ctx.cancel();
        assert!(ctx.is_cancelled() && !ctx.should_continue());
        assert!(ctx.check_cancelled().is_err());
    }

    #[test]
    fn deep_default_child_ids_stay_short_and_distinct() {
        let mut id = "root".to_owned();
        let mut seen = std::collections::HashSet::new();
        for depth in 0..100 {
            id = compact_child_id(format!("{id}/spawn#{depth}/child_process"));
            assert!(id.len() <= 220, "depth {depth}: {} bytes", id.len());
            assert!(seen.insert(id.clone()), "depth {depth}: {id} repeats");
        }
    }

    // Ctx::progress takes integers as well as floats (issue 12, point 8).
    #[test]
    fn percents_from_numbers() {
        assert_eq!(50.into_percent(), Some(50.0));
        assert_eq!((-3_i64).into_percent(), Some(-3.0));
        assert_eq!(200_u8.into_percent(), Some(200.0));
        assert_eq!(0.25_f32.into_percent(), Some(0.25));
        assert!(f64::NAN.into_percent().unwrap().is_nan());
        assert_eq!(None.into_percent(), None);
    }

    // What `progress` records: out-of-range values clamped, NaN as 0, `None` kept.
    #[test]
    fn percents_are_clamped() {
        assert_eq!(clamp_percent(50), Some(50.0));
        assert_eq!(clamp_percent(150_u32), Some(100.0));
        assert_eq!(clamp_percent(-3), Some(0.0));
        assert_eq!(clamp_percent(f64::NAN), Some(0.0));
        assert_eq!(clamp_percent(f64::INFINITY), Some(100.0));
        assert_eq!(clamp_percent(None), None);
    }
}
