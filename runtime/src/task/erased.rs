//! A task with its type erased, as a graph node holds it, and what a successful attempt
//! leaves behind.

use std::task::{Context, Poll};

use smol_str::SmolStr;

use crate::error::{BoxError, InputError, OutputNotSerializable};
use crate::task::arg::{Inputs, Typed};
use crate::task::ctx::Ctx;
use crate::task::{Task, TaskFuture};

/// What a successful attempt leaves behind: the serialized result and, when a successor
/// reads it, the typed value.
///
/// An integer or boolean result is not serialized here (`json` is `None`, `typed` holds
/// it): its slot keeps it as a word and writes its text (the same `serde_json` would)
/// only when something asks for it (the run's journal, the report, a remote caller).
pub(crate) struct Finished {
    pub(crate) json: Option<SmolStr>,
    pub(crate) typed: Option<Typed>,
}

/// A task with its type erased, as a graph node holds it: first the task as built, then,
/// once its inputs are resolved, the task ready to run attempts (in the same allocation).
///
/// An attempt's future lives inside it and is polled through it, so an attempt costs no
/// allocation beyond the task's own future.
pub(crate) trait ErasedTask: Send {
    /// Resolves the inputs. `keep`: later attempts need them again; `typed`: a successor
    /// reads the output (hand it over typed, not only as JSON); `text`: the caller needs
    /// the output's text when it ends (a run's journal records it), an integer's or a
    /// boolean's too (see [`Finished`]). A second call does nothing.
    fn prepare(
        &mut self,
        inputs: &Inputs<'_>,
        keep: bool,
        typed: bool,
        text: bool,
    ) -> Result<(), InputError>;
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
    /// An integer's or a boolean's text is wanted when the attempt ends.
    text: bool,
    running: Option<TaskFuture<T::Output>>,
}

impl<T: Task> Erased<T> {
    pub(crate) fn new(task: T) -> Self {
        Erased {
            task: Some(task),
            first: None,
            encoded: None,
            typed: false,
            text: false,
            running: None,
        }
    }
}

impl<T: Task> ErasedTask for Erased<T> {
    fn prepare(
        &mut self,
        inputs: &Inputs<'_>,
        keep: bool,
        typed: bool,
        text: bool,
    ) -> Result<(), InputError> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let args = task.into_args(inputs)?;
        if keep {
            self.encoded = serde_json::to_vec(&args).ok();
        }
        self.first = Some(args);
        self.typed = typed;
        self.text = text;
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
        if Typed::is_int_or_bool::<T::Output>() {
            // No float that could be lost. Its text now if the caller records it, else
            // kept as a word, its text made when asked (see `Finished`).
            return Poll::Ready(Ok(match scalar_json(&value).filter(|_| self.text) {
                Some(json) => Finished {
                    json: Some(json),
                    typed: self.typed.then(|| Typed::new(value, None)),
                },
                None => Finished {
                    json: None,
                    typed: Some(Typed::new(value, None)),
                },
            }));
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
        Poll::Ready(Ok(Finished {
            json: Some(json),
            typed: if self.typed {
                Some(Typed::new(value, T::output_cloner()))
            } else {
                None
            },
        }))
    }
}

/// The JSON text of an integer or boolean `value` (`None` for any other type), the same
/// text `serde_json` writes (it formats integers with `itoa` too), without its serializer:
/// written inline (no allocation) and with no UTF-8 check. Monomorphized per output type,
/// the type tests fold away.
#[inline]
fn scalar_json<T: 'static>(value: &T) -> Option<SmolStr> {
    fn int(v: impl itoa::Integer) -> SmolStr {
        // At most 20 bytes (`u64::MAX`, `i64::MIN`): inline.
        SmolStr::new_inline(itoa::Buffer::new().format(v))
    }
    let any: &dyn std::any::Any = value;
    if let Some(&v) = any.downcast_ref::<u64>() {
        Some(int(v))
    } else if let Some(&v) = any.downcast_ref::<i64>() {
        Some(int(v))
    } else if let Some(&v) = any.downcast_ref::<u32>() {
        Some(int(v))
    } else if let Some(&v) = any.downcast_ref::<i32>() {
        Some(int(v))
    } else if let Some(&v) = any.downcast_ref::<bool>() {
        Some(SmolStr::new_static(if v { "true" } else { "false" }))
    } else {
        None
    }
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

    // Integers and booleans take the short way: the same text as `serde_json`'s, inline.
    #[test]
    fn scalars_as_serde_json_writes_them() {
        fn same<T: serde::Serialize + 'static>(v: T) {
            let fast = super::scalar_json(&v).expect("a scalar");
            assert_eq!(fast, serde_json::to_string(&v).unwrap());
            assert!(!fast.is_heap_allocated());
        }
        for v in [0, 1, 9, 10, 12_345, u64::MAX] {
            same(v);
        }
        for v in [0, -1, 42, i64::MIN, i64::MAX] {
            same(v);
        }
        same(u32::MAX);
        same(i32::MIN);
        same(true);
        same(false);
        // Anything else is serialized by `serde_json`.
        assert!(super::scalar_json(&1.5_f64).is_none());
        assert!(super::scalar_json(&usize::MAX).is_none());
        assert!(super::scalar_json(&"text").is_none());
        assert!(super::scalar_json(&vec![1_u64]).is_none());
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
