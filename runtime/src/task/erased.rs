//! A task with its type erased, as a graph node holds it, and what a successful attempt
//! leaves behind.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use smol_str::SmolStr;

use crate::error::{BoxError, InputError, OutputNotSerializable};
use crate::task::arg::{Inputs, Slot, Typed};
use crate::task::ctx::{Ctx, CtxSeed};
use crate::task::Task;

/// What a successful attempt leaves its caller, its result being in the node's [`Slot`]
/// already (see [`ErasedTask::poll_attempt`]): the result's text, `None` for an integer
/// or a boolean, whose slot keeps it as a word and writes its text (the same `serde_json`
/// would) only when something asks for it (the run's journal, the report, a remote
/// caller).
pub(crate) struct Finished {
    pub(crate) json: Option<SmolStr>,
}

/// A task with its type erased, as a graph node holds it: first the task as built, then,
/// once its inputs are resolved, the task ready to run attempts (in the same allocation).
///
/// An attempt's future lives inside it and is polled in place, so an attempt allocates
/// nothing of its own (unless its future would make it larger than [`INLINE_TASK`]: then
/// it is boxed, see [`erase_into`]).
///
/// Whoever holds one must not move it while an attempt runs, from [`attempt`] until
/// [`poll_attempt`] returns `Ready` or [`end_attempt`] is called: the attempt's future is
/// pinned inside it. A holder that reaches it only through `dyn ErasedTask` (a
/// `Box<dyn ErasedTask>`, an arena's `&mut dyn ErasedTask`) cannot move it.
///
/// [`attempt`]: ErasedTask::attempt
/// [`poll_attempt`]: ErasedTask::poll_attempt
/// [`end_attempt`]: ErasedTask::end_attempt
pub(crate) trait ErasedTask: Send {
    /// Resolves the inputs (`keep`: later attempts need them again). A second call does
    /// nothing.
    fn prepare(&mut self, inputs: &Inputs<'_>, keep: bool) -> Result<(), InputError>;
    /// Starts an attempt (an attempt still running is dropped first).
    fn attempt(&mut self, ctx: Ctx) -> Result<(), BoxError>;
    /// Polls the attempt started last. When it succeeds, its result is put in `slot`
    /// (the node's: for its readers, typed if any reads it) before this returns, and its
    /// text handed back too unless the slot keeps the result as a word (see
    /// [`Finished`]).
    fn poll_attempt(
        &mut self,
        cx: &mut Context<'_>,
        slot: &Slot,
    ) -> Poll<Result<Finished, BoxError>>;
    /// Whether the task uses the context its attempts are given (see
    /// [`Task::TAKES_CTX`](crate::Task::TAKES_CTX)).
    fn takes_ctx(&self) -> bool {
        true
    }
    /// [`attempt`](Self::attempt) then [`poll_attempt`](Self::poll_attempt), in one call:
    /// how an attempt starts when nothing wraps it (most end in that first poll). The
    /// attempt's context is made from `ctx` (see [`CtxSeed::make`]).
    fn start(
        &mut self,
        ctx: CtxSeed<'_>,
        cx: &mut Context<'_>,
        slot: &Slot,
    ) -> Poll<Result<Finished, BoxError>> {
        if let Err(e) = self.attempt(ctx.make(self.takes_ctx())) {
            return Poll::Ready(Err(e));
        }
        self.poll_attempt(cx, slot)
    }
    /// [`prepare`](Self::prepare) then [`start`](Self::start), in one call: how a node's
    /// first attempt starts when nothing wraps it. Once the inputs are resolved, `begin`
    /// is called (it makes the attempt's span, which `span` then holds) and the attempt
    /// starts inside that span. `Err` when the inputs cannot be resolved (no attempt
    /// started, `begin` not called); a caller that catches a panic knows from `span`
    /// whether it was the attempt's.
    #[allow(clippy::too_many_arguments)]
    fn prepare_start(
        &mut self,
        inputs: &Inputs<'_>,
        keep: bool,
        ctx: CtxSeed<'_>,
        cx: &mut Context<'_>,
        slot: &Slot,
        span: &mut Option<tracing::Span>,
        begin: &mut dyn FnMut() -> tracing::Span,
    ) -> Result<Poll<Result<Finished, BoxError>>, InputError> {
        self.prepare(inputs, keep)?;
        let _in = span.insert(begin()).enter();
        Ok(self.start(ctx, cx, slot))
    }
    /// Drops the attempt's future, if it is still there (timed out, abandoned, panicked).
    fn end_attempt(&mut self);
}

/// The largest task, in bytes, that keeps its attempts' futures inside it (unless boxing
/// them would not make it smaller).
///
/// A task's box is allocated by the thread that builds the graph and freed by the worker
/// that ran it: glibc frees a block of more than 120 bytes (a chunk past 128 with its
/// header) from another thread under its arena's lock (see `Refs` in `task/arg.rs`), and
/// a graph of large futures would hold their room from the start. Measured (release,
/// `#[task]`): the benchmark's `async fn` tasks without `ctx` have futures of 24-40 bytes
/// and one that takes `ctx` and reports progress 72: they fit (tasks of 72-112 bytes).
/// A plain `fn` (88: the blocking pool's handle and the closure), one that sleeps (192),
/// reads a file (128) or a socket (216) has its future boxed when an attempt starts, as
/// every attempt's was before: next to a trip to the blocking pool or to I/O, that
/// allocation is small. (Tasks kept in an arena, not freed one by one across threads,
/// could raise the bound.)
pub(crate) const INLINE_TASK: usize = 120;

/// Where an erased task is put: [`Boxed`], or a holder of many (an arena).
///
/// # Safety
///
/// A task's attempt future is pinned inside the task (see [`ErasedTask`]). `put` must
/// leave `task` where it puts it until it is dropped, and what it returns must reach it
/// only in ways that cannot move it (as `dyn ErasedTask`: a `Box<dyn ErasedTask>`, an
/// arena's `&mut dyn ErasedTask`). Before `put` returns, no attempt has started.
#[allow(unsafe_code)]
pub(crate) unsafe trait Place {
    /// What putting a task there gives back.
    type Held;
    /// Puts the task `make` makes there (made once its room is found, so that it can be
    /// written straight into it).
    fn put<E: ErasedTask + 'static>(self, make: impl FnOnce() -> E) -> Self::Held;
}

/// Each task in a box of its own.
pub(crate) struct Boxed;

// SAFETY: a `Box<dyn ErasedTask>` never moves what it holds (a value of unsized type
// cannot be moved out of its box, nor swapped).
#[allow(unsafe_code)]
unsafe impl Place for Boxed {
    type Held = Box<dyn ErasedTask>;

    #[inline]
    fn put<E: ErasedTask + 'static>(self, make: impl FnOnce() -> E) -> Box<dyn ErasedTask> {
        Box::new(make())
    }
}

/// `task` with its type erased, in a box.
#[inline]
pub(crate) fn erase<T: Task>(task: T) -> Box<dyn ErasedTask> {
    erase_into(task, Boxed)
}

/// `task` with its type erased, put in `place`: its attempts' futures inside it when it
/// is then at most [`INLINE_TASK`] bytes (or no larger than with them boxed), boxed
/// otherwise.
#[inline]
pub(crate) fn erase_into<T: Task, P: Place>(task: T, place: P) -> P::Held {
    with_call(task, T::call, place)
}

/// [`erase_into`] with `T::call` as a value, whose type names the future's.
#[inline]
fn with_call<T, C, F, P>(task: T, call: C, place: P) -> P::Held
where
    T: Task,
    C: Fn(T::Args, Ctx) -> F + Send + 'static,
    F: Future<Output = Result<T::Output, BoxError>> + Send + 'static,
    P: Place,
{
    if inline::<T, C, F>() {
        place.put(|| Erased::new(task, call))
    } else {
        place.put(|| Erased::new(task, move |args, ctx| Box::pin(call(args, ctx))))
    }
}

/// Whether a task keeps its attempts' futures inside it (see [`erase_into`]).
const fn inline<T: Task, C, F>() -> bool {
    let inline = size_of::<Erased<T, C, F>>();
    inline <= INLINE_TASK || inline <= size_of::<Erased<T, C, Pin<Box<F>>>>()
}

/// A task, with `C` (its `call`, zero-sized) starting attempts whose futures are `F`.
/// Private: made only by [`with_call`], which hands it to a [`Place`] at once.
struct Erased<T: Task, C, F> {
    call: C,
    state: State<T, T::Args, F>,
    /// The inputs serialized for later attempts (no `Clone` bound on them).
    encoded: Option<Vec<u8>>,
}

/// Where a task is: one value at a time, so a task takes the room of the largest of them.
enum State<T, A, F> {
    /// As built.
    Built(T),
    /// Prepared: the inputs of its first attempt.
    Ready(A),
    /// An attempt's future, pinned here.
    Running(F),
    /// Between attempts (their inputs in `encoded`), or done.
    Idle,
}

impl<T: Task, C, F> Erased<T, C, F> {
    fn new(task: T, call: C) -> Self {
        Erased {
            call,
            state: State::Built(task),
            encoded: None,
        }
    }
}

impl<T, C, F> ErasedTask for Erased<T, C, F>
where
    T: Task,
    C: Fn(T::Args, Ctx) -> F + Send + 'static,
    F: Future<Output = Result<T::Output, BoxError>> + Send + 'static,
{
    fn prepare(&mut self, inputs: &Inputs<'_>, keep: bool) -> Result<(), InputError> {
        if !matches!(self.state, State::Built(_)) {
            return Ok(());
        }
        // Not running: nothing pinned is moved.
        let State::Built(task) = std::mem::replace(&mut self.state, State::Idle) else {
            return Ok(());
        };
        let args = task.into_args(inputs)?;
        if keep {
            self.encoded = serde_json::to_vec(&args).ok();
        }
        self.state = State::Ready(args);
        Ok(())
    }

    /// The task as built goes straight to its first attempt's future: its inputs are not
    /// kept in `state` between the two (one move of the state fewer).
    #[inline]
    fn prepare_start(
        &mut self,
        inputs: &Inputs<'_>,
        keep: bool,
        ctx: CtxSeed<'_>,
        cx: &mut Context<'_>,
        slot: &Slot,
        span: &mut Option<tracing::Span>,
        begin: &mut dyn FnMut() -> tracing::Span,
    ) -> Result<Poll<Result<Finished, BoxError>>, InputError> {
        if !matches!(self.state, State::Built(_)) {
            self.prepare(inputs, keep)?;
            let _in = span.insert(begin()).enter();
            return Ok(self.start(ctx, cx, slot));
        }
        // Not running: nothing pinned is moved.
        let State::Built(task) = std::mem::replace(&mut self.state, State::Idle) else {
            return Ok(Poll::Ready(Err("the task was not built".into())));
        };
        let args = task.into_args(inputs)?;
        if keep {
            self.encoded = serde_json::to_vec(&args).ok();
        }
        let _in = span.insert(begin()).enter();
        self.state = State::Running((self.call)(args, ctx.make(T::TAKES_CTX)));
        Ok(self.poll_attempt(cx, slot))
    }

    #[inline]
    fn takes_ctx(&self) -> bool {
        T::TAKES_CTX
    }

    #[inline]
    fn attempt(&mut self, ctx: Ctx) -> Result<(), BoxError> {
        // Dropped in place, never moved (and `state` is not `Running` below).
        self.end_attempt();
        let args = match std::mem::replace(&mut self.state, State::Idle) {
            State::Ready(args) => args,
            other => {
                self.state = other;
                let bytes = self.encoded.as_deref().ok_or_else(|| {
                    BoxError::from("the task's inputs could not be kept for another attempt")
                })?;
                serde_json::from_slice(bytes)?
            }
        };
        self.state = State::Running((self.call)(args, ctx));
        Ok(())
    }

    fn end_attempt(&mut self) {
        if matches!(self.state, State::Running(_)) {
            // An assignment drops the old value where it is.
            self.state = State::Idle;
        }
    }

    #[inline]
    fn poll_attempt(
        &mut self,
        cx: &mut Context<'_>,
        slot: &Slot,
    ) -> Poll<Result<Finished, BoxError>> {
        let State::Running(fut) = &mut self.state else {
            return Poll::Ready(Err("no attempt is running".into()));
        };
        // SAFETY: the future is never moved until it is dropped. It was made in place
        // (`attempt`); `state` leaves `Running` only by assignments (`end_attempt`, below,
        // `attempt`), which drop it where it is; `attempt` and `prepare` move `state` out
        // only when it is not `Running`; and the `Erased` itself is not moved once it is
        // made: `with_call` hands it to a `Place` at once, whose contract is to keep it
        // where it put it, reached only as `dyn ErasedTask` (which cannot be moved).
        #[allow(unsafe_code)]
        let fut = unsafe { Pin::new_unchecked(fut) };
        let value = match fut.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => {
                self.state = State::Idle;
                r?
            }
        };
        Poll::Ready(finish::<T>(value, slot))
    }
}

/// Puts a successful attempt's `value` in its node's `slot`; the text for the caller.
///
/// An integer or a boolean is kept as a word (no lock, no text: its slot writes it when
/// asked, see [`Finished`]). Any other value is serialized (its text is always kept) and,
/// when a successor reads it, kept typed too.
#[inline]
fn finish<T: Task>(value: T::Output, slot: &Slot) -> Result<Finished, BoxError> {
    if Typed::is_int_or_bool::<T::Output>() {
        slot.fill_word(&value);
        return Ok(Finished { json: None });
    }
    let json = to_json(&value)
        .and_then(|json| {
            // NaN and infinities would be stored as `null`: an error, not a lost value.
            crate::task::finite::check(&value, &json)
                .map(|()| json)
                .map_err(<serde_json::Error as serde::ser::Error>::custom)
        })
        .map_err(|source| {
            BoxError::from(crate::NonRetryable::new(OutputNotSerializable {
                task: T::META.name.to_owned(),
                source,
            }))
        })?;
    let typed = slot
        .has_readers()
        .then(|| Typed::new(value, T::output_cloner()));
    slot.fill(Some(json.clone()), typed);
    Ok(Finished { json: Some(json) })
}

thread_local! {
    /// Where results longer than [`INLINE`] bytes are serialized before they are copied
    /// into their shared text.
    static JSON_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The longest text a [`SmolStr`] keeps inline (without an allocation).
const INLINE: usize = 23;

/// Where a result is serialized: the first [`INLINE`] bytes on the stack; past them the
/// text moves to the per-thread buffer (taken out of it, so a `Serialize` impl that
/// serializes a result of its own gets a buffer of its own).
struct JsonWriter {
    small: [u8; INLINE],
    len: usize,
    spill: Option<Vec<u8>>,
}

impl JsonWriter {
    fn new() -> Self {
        JsonWriter {
            small: [0; INLINE],
            len: 0,
            spill: None,
        }
    }

    /// The text written. `serde_json` writes UTF-8; the lossy path is never taken.
    fn finish(self) -> SmolStr {
        match self.spill {
            // `new_inline`: the length is known to fit (no length check, no call).
            None => match std::str::from_utf8(&self.small[..self.len]) {
                Ok(text) => SmolStr::new_inline(text),
                Err(_) => SmolStr::new(String::from_utf8_lossy(&self.small[..self.len])),
            },
            Some(mut buf) => {
                let text = match std::str::from_utf8(&buf) {
                    Ok(text) => SmolStr::new(text),
                    Err(_) => SmolStr::new(String::from_utf8_lossy(&buf)),
                };
                // A large result does not keep its buffer alive for the thread's lifetime.
                if buf.capacity() <= 64 * 1024 {
                    buf.clear();
                    JSON_BUF.with(|b| {
                        if let Ok(mut b) = b.try_borrow_mut() {
                            *b = buf;
                        }
                    });
                }
                text
            }
        }
    }
}

impl std::io::Write for JsonWriter {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(buf) = &mut self.spill {
            buf.extend_from_slice(bytes);
            return Ok(());
        }
        let end = self.len + bytes.len();
        if let Some(slot) = self.small.get_mut(self.len..end) {
            slot.copy_from_slice(bytes);
            self.len = end;
            return Ok(());
        }
        self.overflow(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl JsonWriter {
    #[cold]
    fn overflow(&mut self, bytes: &[u8]) {
        let mut buf = JSON_BUF
            .with(|b| b.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
            .unwrap_or_default();
        buf.clear();
        buf.reserve(self.len + bytes.len());
        buf.extend_from_slice(&self.small[..self.len]);
        buf.extend_from_slice(bytes);
        self.spill = Some(buf);
    }
}

/// `value` as JSON text: up to [`INLINE`] bytes (most numbers, booleans, short strings)
/// serialized on the stack and kept inline, with no allocation at all; a longer text
/// serialized into a per-thread buffer, then copied once into its shared allocation.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<SmolStr, serde_json::Error> {
    let mut w = JsonWriter::new();
    serde_json::to_writer(&mut w, value)?;
    Ok(w.finish())
}

#[cfg(test)]
mod attempt_tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::{erase, inline, ErasedTask};
    use crate::error::{BoxError, InputError};
    use crate::task::arg::{Inputs, Read, Slot};
    use crate::task::ctx::{detached_scope, Ctx, CtxSeed, RunScope};
    use crate::task::{Policy, Task, TaskMeta};

    /// The description of a test task named `name`, async, with the default policy.
    const fn meta(name: &'static str, function: &'static str) -> TaskMeta {
        TaskMeta {
            name,
            function,
            description: "",
            is_async: true,
            policy: Policy::DEFAULT,
            resources: &[],
        }
    }

    /// Counts its drops.
    struct Guard(Arc<AtomicU32>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Pending `n` times (waking itself), then ready: an attempt that awaits.
    struct Yields(u32);

    impl Future for Yields {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 == 0 {
                return Poll::Ready(());
            }
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    thread_local! {
        // Per test (each runs on a thread of its own and polls there).
        static DROPS: Arc<AtomicU32> = Arc::new(AtomicU32::new(0));
        static CALLS: AtomicU32 = const { AtomicU32::new(0) };
    }

    fn drops() -> u32 {
        DROPS.with(|d| d.load(Ordering::SeqCst))
    }

    /// Awaits five times holding a guard and a self-reference across the awaits; its
    /// first attempt (on this thread) fails, a later one returns its input times two.
    struct Flaky(u64);

    impl Task for Flaky {
        type Output = u64;
        type Args = (u64,);
        const META: TaskMeta = meta("flaky", "tests::flaky");
        fn visit_inputs(&self, _: &mut dyn FnMut(Read)) {}
        fn into_args(self, _: &Inputs<'_>) -> Result<(u64,), InputError> {
            Ok((self.0,))
        }
        fn call(
            (x,): (u64,),
            _: Ctx,
        ) -> impl Future<Output = Result<u64, BoxError>> + Send + 'static {
            let guard = Guard(DROPS.with(Arc::clone));
            async move {
                let _guard = guard;
                let values = [x, 1, 2];
                // Borrowed across the awaits: the future refers to itself.
                let first = &values[0];
                for _ in 0..5 {
                    Yields(1).await;
                }
                if CALLS.with(|c| c.fetch_add(1, Ordering::SeqCst)) == 0 {
                    return Err("first attempt fails".into());
                }
                Ok(*first * 2)
            }
        }
    }

    /// Its future is large: it is boxed, the task stays small.
    struct Big;

    impl Task for Big {
        type Output = u64;
        type Args = ();
        const META: TaskMeta = meta("big", "tests::big");
        fn visit_inputs(&self, _: &mut dyn FnMut(Read)) {}
        fn into_args(self, _: &Inputs<'_>) -> Result<(), InputError> {
            Ok(())
        }
        // An `async fn` implements `call` too.
        async fn call((): (), _: Ctx) -> Result<u64, BoxError> {
            let buf = [7u8; 1024];
            Yields(2).await;
            Ok(buf.iter().map(|&b| u64::from(b)).sum())
        }
    }

    fn inputs_then<R>(f: impl FnOnce(&Inputs<'_>) -> R) -> R {
        let names = |i: u32| i.to_string();
        f(&Inputs {
            slots: &[],
            names: &names,
            graph: 0,
            remap: None,
        })
    }

    fn poll_to_end(
        task: &mut dyn ErasedTask,
        slot: &Slot,
    ) -> (u32, Result<super::Finished, BoxError>) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut polls = 0;
        loop {
            polls += 1;
            if let Poll::Ready(r) = task.poll_attempt(&mut cx, slot) {
                return (polls, r);
            }
        }
    }

    fn ctx() -> Ctx {
        Ctx::detached("flaky")
    }

    /// What an attempt's context is made of, from a detached run's state.
    fn seed() -> CtxSeed<'static> {
        static SCOPE: std::sync::LazyLock<Arc<RunScope>> =
            std::sync::LazyLock::new(|| detached_scope("flaky"));
        CtxSeed::new(&SCOPE, 0, "flaky", 1)
    }

    /// A task whose result is the length of its context's run id, as `UsesCtx` (the
    /// default: it takes its context) or `NoCtx` (says it takes none).
    macro_rules! run_id_len_task {
        ($name:ident, $takes:expr) => {
            struct $name;

            impl Task for $name {
                type Output = u64;
                type Args = ();
                const META: TaskMeta = meta("run_id_len", "tests::run_id_len");
                const TAKES_CTX: bool = $takes;
                fn visit_inputs(&self, _: &mut dyn FnMut(Read)) {}
                fn into_args(self, _: &Inputs<'_>) -> Result<(), InputError> {
                    Ok(())
                }
                async fn call((): (), ctx: Ctx) -> Result<u64, BoxError> {
                    Ok(ctx.process_id().len() as u64)
                }
            }
        };
    }
    run_id_len_task!(UsesCtx, true);
    run_id_len_task!(NoCtx, false);

    // A task that says it takes no context (as `#[task]` says of a function without
    // `ctx` or resources) is given an inert one, made without a clone of the run's state
    // (no count every worker shares is touched); any other task gets the run's, through
    // each way an attempt starts.
    #[test]
    fn a_task_that_takes_no_context_gets_one_without_the_runs_state() {
        let scope = detached_scope("probe");
        let seed = CtxSeed::new(&scope, 0, "probe", 1);
        let mut cx = Context::from_waker(Waker::noop());
        let mut run = |mut task: Box<dyn ErasedTask>, first: bool| {
            let slot = Slot::new(1);
            let mut span = None;
            let polled = if first {
                inputs_then(|inputs| {
                    task.prepare_start(inputs, false, seed, &mut cx, &slot, &mut span, &mut || {
                        tracing::Span::none()
                    })
                })
                .unwrap()
            } else {
                inputs_then(|inputs| task.prepare(inputs, false)).unwrap();
                task.start(seed, &mut cx, &slot)
            };
            assert!(matches!(polled, Poll::Ready(Ok(_))));
            slot.json().unwrap().to_string()
        };
        for first in [true, false] {
            assert_eq!(
                run(erase(UsesCtx), first),
                "8",
                "the run's state: `detached`"
            );
            assert_eq!(Arc::strong_count(&scope), 1, "the attempt's clone is gone");
            let before = Arc::strong_count(&scope);
            assert_eq!(run(erase(NoCtx), first), "0", "an inert state: no run id");
            assert_eq!(Arc::strong_count(&scope), before);
        }
        assert!(erase(UsesCtx).takes_ctx());
        assert!(!erase(NoCtx).takes_ctx());
    }

    /// What `inline` decides for `T`, from `T::call`'s future type.
    fn inline_for<T: Task, C, F>(_: C) -> bool
    where
        C: Fn(T::Args, Ctx) -> F,
    {
        inline::<T, C, F>()
    }

    // An attempt that awaits several times fails and is retried: its future is dropped
    // once when it ends, the next one made in the same place from the kept inputs, and
    // no future is dropped twice; with no attempt running, a poll is an error.
    #[test]
    fn retried_attempt_is_remade_in_place() {
        assert!(inline_for::<Flaky, _, _>(Flaky::call));
        let mut task = erase(Flaky(21));
        let slot = Slot::new(1);
        inputs_then(|inputs| task.prepare(inputs, true)).unwrap();
        task.attempt(ctx()).unwrap();
        let (polls, r) = poll_to_end(&mut *task, &slot);
        assert_eq!(polls, 6);
        assert_eq!(r.err().unwrap().to_string(), "first attempt fails");
        assert_eq!(drops(), 1);
        // Ended: nothing left to drop.
        task.end_attempt();
        assert_eq!(drops(), 1);
        assert!(!slot.is_filled());
        task.attempt(ctx()).unwrap();
        let (polls, r) = poll_to_end(&mut *task, &slot);
        assert_eq!(polls, 6);
        // An integer: kept in the slot as a word, its text made when asked.
        assert!(r.unwrap().json.is_none());
        assert_eq!(slot.json().as_deref(), Some("42"));
        assert_eq!(drops(), 2);
        assert_eq!(CALLS.with(|c| c.load(Ordering::SeqCst)), 2);
        assert!(matches!(
            task.poll_attempt(&mut Context::from_waker(Waker::noop()), &slot),
            Poll::Ready(Err(_))
        ));
        drop(task);
        assert_eq!(drops(), 2);
    }

    // An attempt ended mid-way (a timeout, a cancel) is dropped exactly once: by
    // `end_attempt`, not again by a second one, by the next attempt, or with the task;
    // one still running when the task is dropped is dropped with it, once.
    #[test]
    fn attempt_ended_mid_way_is_dropped_once() {
        let mut cx = Context::from_waker(Waker::noop());
        let slot = Slot::new(0);
        let mut task = erase(Flaky(3));
        inputs_then(|inputs| task.prepare(inputs, true)).unwrap();
        task.attempt(ctx()).unwrap();
        assert!(task.poll_attempt(&mut cx, &slot).is_pending());
        assert!(task.poll_attempt(&mut cx, &slot).is_pending());
        task.end_attempt();
        assert_eq!(drops(), 1);
        task.end_attempt();
        assert_eq!(drops(), 1);
        // A new attempt over one still running drops that one first.
        task.attempt(ctx()).unwrap();
        assert!(task.poll_attempt(&mut cx, &slot).is_pending());
        task.attempt(ctx()).unwrap();
        assert_eq!(drops(), 2);
        assert!(task.start(seed(), &mut cx, &slot).is_pending());
        assert_eq!(drops(), 3);
        assert!(task.poll_attempt(&mut cx, &slot).is_pending());
        drop(task);
        assert_eq!(drops(), 4);
        assert!(!slot.is_filled());
        // Never started: the guard made by `call` is the only thing dropped.
        let task = erase(Flaky(4));
        drop(task);
        assert_eq!(drops(), 4);
    }

    /// Its inputs cannot be resolved.
    struct Unresolved;

    impl Task for Unresolved {
        type Output = u64;
        type Args = (u64,);
        const META: TaskMeta = meta("unresolved", "tests::unresolved");
        fn visit_inputs(&self, _: &mut dyn FnMut(Read)) {}
        fn into_args(self, _: &Inputs<'_>) -> Result<(u64,), InputError> {
            Err(InputError::UnknownNode)
        }
        async fn call((x,): (u64,), _: Ctx) -> Result<u64, BoxError> {
            Ok(x)
        }
    }

    // The first attempt made from the task as built in one call: inputs resolved, then
    // `begin` (the attempt's span made), the attempt started and polled; a later call
    // starts the next attempt from the kept inputs as after `prepare`; inputs that cannot
    // be resolved start nothing and make no span.
    #[test]
    fn prepare_start_resolves_then_polls() {
        let mut cx = Context::from_waker(Waker::noop());
        let slot = Slot::new(1);
        let spans_made = std::cell::Cell::new(0);
        let mut begin = || {
            spans_made.set(spans_made.get() + 1);
            tracing::Span::none()
        };
        let mut task = erase(Flaky(5));
        let mut span = None;
        let polled = inputs_then(|inputs| {
            task.prepare_start(inputs, true, seed(), &mut cx, &slot, &mut span, &mut begin)
        });
        assert!(span.is_some());
        assert_eq!(spans_made.get(), 1);
        assert!(polled.unwrap().is_pending());
        let (polls, r) = poll_to_end(&mut *task, &slot);
        assert_eq!(polls, 5);
        assert_eq!(r.err().unwrap().to_string(), "first attempt fails");
        assert_eq!(drops(), 1);
        // Already prepared: the next attempt, from the kept inputs.
        let polled = inputs_then(|inputs| {
            task.prepare_start(inputs, true, seed(), &mut cx, &slot, &mut span, &mut begin)
        });
        assert_eq!(spans_made.get(), 2);
        assert!(polled.unwrap().is_pending());
        let (_, r) = poll_to_end(&mut *task, &slot);
        assert!(r.unwrap().json.is_none());
        assert_eq!(slot.json().as_deref(), Some("10"));
        assert_eq!(drops(), 2);

        let mut task = erase(Unresolved);
        let mut span = None;
        let polled = inputs_then(|inputs| {
            task.prepare_start(inputs, false, seed(), &mut cx, &slot, &mut span, &mut begin)
        });
        assert!(matches!(polled, Err(InputError::UnknownNode)));
        assert!(span.is_none());
        assert_eq!(spans_made.get(), 2);
        // Nothing started.
        assert!(matches!(
            task.poll_attempt(&mut cx, &slot),
            Poll::Ready(Err(_))
        ));
    }

    // A large future is boxed (the task keeps its size) and runs as a small one does.
    #[test]
    fn large_future_is_boxed() {
        assert!(!inline_for::<Big, _, _>(Big::call));
        let mut task = erase(Big);
        let slot = Slot::new(1);
        inputs_then(|inputs| task.prepare(inputs, false)).unwrap();
        task.attempt(Ctx::detached("big")).unwrap();
        let (polls, r) = poll_to_end(&mut *task, &slot);
        assert_eq!(polls, 3);
        assert!(r.unwrap().json.is_none());
        assert_eq!(slot.json().as_deref(), Some("7168"));
        // A second attempt without kept inputs is an error, not a panic.
        assert!(task.attempt(Ctx::detached("big")).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::to_json;

    // Short text stays inline; long text (and text crossing the inline size in the middle
    // of a write, and non-ASCII text) comes out whole and shared.
    #[test]
    fn results_short_and_long() {
        let short = to_json(&42).unwrap();
        assert_eq!(short, "42");
        assert!(!short.is_heap_allocated());
        let s23 = "a".repeat(21); // 21 + 2 quotes = 23 bytes
        let at_limit = to_json(&s23).unwrap();
        assert_eq!(at_limit.len(), 23);
        assert!(!at_limit.is_heap_allocated());
        let over = to_json(&"a".repeat(22)).unwrap();
        assert_eq!(over, format!("\"{}\"", "a".repeat(22)));
        assert!(over.is_heap_allocated());
        let v = vec![
            "grüße".to_owned(),
            "ein längeres Ergebnis, über 23 Bytes".to_owned(),
        ];
        let long = to_json(&v).unwrap();
        assert_eq!(long, serde_json::to_string(&v).unwrap());
        let back: Vec<String> = serde_json::from_str(&long).unwrap();
        assert_eq!(back, v);
        // A second long result reuses the per-thread buffer.
        let big: Vec<u32> = (0..10_000).collect();
        assert_eq!(to_json(&big).unwrap(), serde_json::to_string(&big).unwrap());
        assert_eq!(to_json("é").unwrap(), "\"é\"");
    }

    // A `Serialize` impl that serializes a result of its own while it is serialized
    // (the per-thread buffer is in use by the outer one).
    #[test]
    fn reentrant_serialization() {
        struct Nested(Vec<String>);
        impl serde::Serialize for Nested {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let inner = to_json(&self.0).map_err(serde::ser::Error::custom)?;
                s.serialize_str(&inner)
            }
        }
        let v = vec![Nested(vec!["x".repeat(40)]), Nested(vec!["y".repeat(40)])];
        let got = to_json(&v).unwrap();
        let want = serde_json::to_string(&v).unwrap();
        assert_eq!(got, want);
        assert!(got.len() > 80);
    }
}
