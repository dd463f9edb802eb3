//! A task with its type erased, as a graph node holds it, and what a successful attempt
//! leaves behind.

use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::{BoxError, InputError, OutputNotSerializable};
use crate::task::arg::{Inputs, Typed};
use crate::task::ctx::Ctx;
use crate::task::{Task, TaskFuture};

/// What a successful attempt leaves behind: the serialized result and, when a successor
/// reads it, the typed value.
pub(crate) struct Finished {
    pub(crate) json: Arc<str>,
    pub(crate) typed: Option<Typed>,
}

/// A task with its type erased, as a graph node holds it: first the task as built, then,
/// once its inputs are resolved, the task ready to run attempts (in the same allocation).
///
/// An attempt's future lives inside it and is polled through it, so an attempt costs no
/// allocation beyond the task's own future.
pub(crate) trait ErasedTask: Send {
    /// Resolves the inputs. `keep`: later attempts need them again; `typed`: a successor
    /// reads the output (hand it over typed, not only as JSON). A second call does nothing.
    fn prepare(&mut self, inputs: &Inputs<'_>, keep: bool, typed: bool) -> Result<(), InputError>;
    /// Starts an attempt.
    fn attempt(&mut self, ctx: Ctx) -> Result<(), BoxError>;
    /// Polls the attempt started last.
    fn poll_attempt(&mut self, cx: &mut Context<'_>) -> Poll<Result<Finished, BoxError>>;
    /// Drops the attempt's future, if it is still there (timed out, abandoned, panicked).
    fn end_attempt(&mut self);
}

pub(crate) struct Erased<T: Task> {
    /// The task as built, until it is prepared.
    task: Option<T>,
    /// The resolved inputs, until the first attempt takes them.
    first: Option<T::Args>,
    /// The inputs serialized for later attempts (no `Clone` bound on them).
    encoded: Option<Vec<u8>>,
    typed: bool,
    running: Option<TaskFuture<T::Output>>,
}

impl<T: Task> Erased<T> {
    pub(crate) fn new(task: T) -> Self {
        Erased {
            task: Some(task),
            first: None,
            encoded: None,
            typed: false,
            running: None,
        }
    }
}

impl<T: Task> ErasedTask for Erased<T> {
    fn prepare(&mut self, inputs: &Inputs<'_>, keep: bool, typed: bool) -> Result<(), InputError> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let args = task.into_args(inputs)?;
        if keep {
            self.encoded = serde_json::to_vec(&args).ok();
        }
        self.first = Some(args);
        self.typed = typed;
        Ok(())
    }

    fn attempt(&mut self, ctx: Ctx) -> Result<(), BoxError> {
        let args = match self.first.take() {
            Some(a) => a,
            None => {
                let bytes = self.encoded.as_deref().ok_or_else(|| {
                    BoxError::from("the task's inputs could not be kept for another attempt")
                })?;
                serde_json::from_slice(bytes)?
            }
        };
        self.running = Some(T::call(args, ctx));
        Ok(())
    }

    fn end_attempt(&mut self) {
        self.running = None;
    }

    fn poll_attempt(&mut self, cx: &mut Context<'_>) -> Poll<Result<Finished, BoxError>> {
        let Some(fut) = self.running.as_mut() else {
            return Poll::Ready(Err("no attempt is running".into()));
        };
        let value = match fut.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => {
                self.running = None;
                r?
            }
        };
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
        Poll::Ready(Ok(Finished {
            json,
            typed: if self.typed {
                Some(Typed {
                    value: Box::new(value),
                    clone: T::output_cloner(),
                })
            } else {
                None
            },
        }))
    }
}

thread_local! {
    /// Where results are serialized before they are copied into their shared text.
    static JSON_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `value` as shared JSON text: serialized into a per-thread buffer, then copied once
/// into its `Arc<str>` (one allocation per result instead of two).
fn to_json<T: serde::Serialize>(value: &T) -> Result<Arc<str>, serde_json::Error> {
    JSON_BUF.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else {
            // Re-entered (a Serialize impl that serializes a result): no shared buffer.
            return serde_json::to_string(value).map(Arc::from);
        };
        buf.clear();
        serde_json::to_writer(&mut *buf, value)?;
        // serde_json writes UTF-8; the lossy path is never taken.
        let json: Arc<str> = match std::str::from_utf8(&buf) {
            Ok(text) => Arc::from(text),
            Err(_) => Arc::from(String::from_utf8_lossy(&buf).as_ref()),
        };
        if buf.capacity() > 64 * 1024 {
            // A large result does not keep its buffer alive for the thread's lifetime.
            *buf = Vec::new();
        }
        Ok(json)
    })
}
