//! The arena a graph's tasks live in: one bump allocation per task instead of a `Box`
//! each, freed all at once with the graph (or, once it runs, with the run's shared state).
//!
//! A task box allocated by the builder's thread and freed by a worker on another thread
//! cost a `malloc` and a cross-thread `free` per task, and a box larger than glibc's
//! per-thread cache (about 128 bytes) was freed under the arena lock of the thread that
//! allocated it: workers ending tasks contended for it (futex waits; see commit 042ea82).
//! Here a worker ends a task by dropping it in place, on its own thread, and the memory
//! goes back once, chunk by chunk, when the [`Arena`] is dropped.
//!
//! Chunks of the largest size go to a [`Spare`] pool when their arena is dropped, for the
//! next graph built: freed to glibc, the heap's top was trimmed and each graph faulted
//! its tasks' pages in again (layered 100x1k: about 1,500 page faults a build, some 2 µs
//! each, a sixth of the build's time; chain 10k: about 50).
//!
//! # The one rule
//!
//! A [`TaskBox`] points into an [`Arena`] without borrowing it (it moves between threads
//! and outlives any borrow a worker could hold), so every `TaskBox` must be dropped before
//! the arena it came from. The owners keep it by construction: each keeps its arena in a
//! field declared after every field that can hold one of its tasks (fields drop in
//! declaration order): the process builder (its nodes), [`Graph`](super::Graph) (its
//! nodes), and the executor's shared run state (its node cells and queue); a worker
//! holding a task holds an `Arc` of that shared state. Debug builds count the live
//! boxes of each arena and check the count is zero when the arena is dropped.
//!
//! All `unsafe` code of the arena and its boxes is in this module, the only one of the
//! crate that allows it.
#![allow(unsafe_code)]

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use crate::task::erased::{ErasedTask, Place};

use super::spare::{Spare, MAX_BYTES};

/// How chunks are aligned: any task aligned to this or less is placed in a chunk.
const ALIGN: usize = 64;
/// The size of an arena's first chunk; each next one is twice the last, up to [`LARGEST`].
const FIRST: usize = 4 << 10;
/// The largest chunk size (a task larger than a quarter of it gets a block of its own,
/// as does one aligned to more than [`ALIGN`]). Small enough for glibc to keep freed
/// chunks for the next graph: from 64 KiB on, a `free` trims the heap (and a block past
/// the mmap threshold is unmapped), and every run faulted its chunks in again (wide-big
/// 100k with 1 MiB chunks: twice the page faults of a box per task, `perf stat`).
const LARGEST: usize = 32 << 10;

/// Chunks of dropped arenas, for the next ones (see the module docs); at most
/// [`MAX_BYTES`] of them, given back to the system once idle as any [`Spare`].
static CHUNKS: Spare<Chunk> = Spare::new();

/// A chunk of [`LARGEST`] bytes (aligned to [`ALIGN`]), owned: freed when dropped.
pub(crate) struct Chunk(NonNull<u8>);

// SAFETY: a chunk is plain memory that nothing else points to while it is not in use
// (an arena hands out its places only while it owns the chunk).
unsafe impl Send for Chunk {}

impl Chunk {
    const LAYOUT: Layout = match Layout::from_size_align(LARGEST, ALIGN) {
        Ok(l) => l,
        Err(_) => panic!("a chunk's layout"),
    };

    fn new() -> Chunk {
        // SAFETY: the layout is not zero-sized.
        let Some(at) = NonNull::new(unsafe { alloc(Self::LAYOUT) }) else {
            handle_alloc_error(Self::LAYOUT)
        };
        Chunk(at)
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated by `Chunk::new` with this layout, freed once (here).
        unsafe { dealloc(self.0.as_ptr(), Self::LAYOUT) };
    }
}

/// Where the tasks of one graph live (see the module docs).
pub(crate) struct Arena {
    /// Every block this arena frees when dropped: its first (smaller) chunks and the
    /// boxes it adopted.
    blocks: Vec<(NonNull<u8>, Layout)>,
    /// Its chunks of [`LARGEST`] bytes, given to `pool` when the arena is dropped.
    chunks: Vec<Chunk>,
    /// Where its chunks of [`LARGEST`] bytes come from and go back to.
    pool: &'static Spare<Chunk>,
    /// The chunk tasks are placed in now (`None` before the first).
    chunk: Option<NonNull<u8>>,
    /// Bytes of `chunk` in use.
    used: usize,
    /// Bytes of `chunk`.
    cap: usize,
    /// The size of the next chunk.
    next: usize,
    /// Boxes of this arena not yet dropped (debug builds).
    #[cfg(debug_assertions)]
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

// SAFETY: the arena owns its blocks (plain memory, no values: the tasks in them are
// owned by their `TaskBox`es, which are `Send` on their own). Moving the arena to another
// thread moves only the right to free them.
unsafe impl Send for Arena {}
// SAFETY: no method taking `&self` reads or writes the blocks (only `&mut self` places
// tasks, and `Drop` frees them): a shared arena gives access to nothing.
unsafe impl Sync for Arena {}

impl Default for Arena {
    fn default() -> Self {
        Self::with_pool(&CHUNKS)
    }
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

impl Arena {
    /// An arena whose largest chunks come from and go back to `pool`.
    pub(crate) fn with_pool(pool: &'static Spare<Chunk>) -> Self {
        Arena {
            blocks: Vec::new(),
            chunks: Vec::new(),
            pool,
            chunk: None,
            used: 0,
            cap: 0,
            next: FIRST,
            #[cfg(debug_assertions)]
            live: std::sync::Arc::default(),
        }
    }

    /// Moves `task` into the arena.
    #[cfg(test)]
    pub(crate) fn alloc<T: ErasedTask + 'static>(&mut self, task: T) -> TaskBox {
        self.alloc_with(|| task)
    }

    /// Makes a task with `make` in the arena: made once its room is found, it is written
    /// straight into it. Made before, it was made on the stack and then copied in, and
    /// the copy's wide reads waited for the narrower writes that made it (a failed store
    /// forwarding).
    #[inline]
    pub(crate) fn alloc_with<T: ErasedTask + 'static>(
        &mut self,
        make: impl FnOnce() -> T,
    ) -> TaskBox {
        let at = self.place(Layout::new::<T>()).cast::<T>();
        // SAFETY: `place` returned memory of `T`'s size and alignment that nothing else
        // uses (a fresh bump range or block), valid until the arena is dropped.
        unsafe { at.as_ptr().write(make()) };
        self.boxed(at)
    }

    /// Takes over `task`'s allocation: the task is dropped by its [`TaskBox`] as any
    /// other, its memory freed with the arena's (a task built before the graph, such as a
    /// [`TaskGraph`](super::TaskGraph)'s).
    pub(crate) fn adopt(&mut self, task: Box<dyn ErasedTask>) -> TaskBox {
        let layout = Layout::for_value(&*task);
        let at = NonNull::from(Box::leak(task));
        if layout.size() != 0 {
            // A `Box` of a zero-sized value allocated nothing.
            self.blocks.push((at.cast::<u8>(), layout));
        }
        self.boxed(at)
    }

    #[inline]
    fn boxed(&mut self, at: NonNull<dyn ErasedTask>) -> TaskBox {
        #[cfg(debug_assertions)]
        self.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TaskBox {
            ptr: at,
            #[cfg(debug_assertions)]
            live: self.live.clone(),
        }
    }

    /// Room for a value of `layout`, for the arena's lifetime: the next bytes of the
    /// current chunk, or of a new one, or a block of its own for a large or over-aligned
    /// value.
    #[inline]
    fn place(&mut self, layout: Layout) -> NonNull<u8> {
        // A zero-sized value takes one byte: every task gets an address of its own.
        let size = layout.size().max(1);
        let align = layout.align();
        if let Some(chunk) = self.chunk {
            // `align` is a power of two; `ALIGN`-aligned chunks keep aligned offsets aligned.
            let at = (self.used + align - 1) & !(align - 1);
            if align <= ALIGN && size <= self.cap.saturating_sub(at) {
                self.used = at + size;
                // SAFETY: `at + size <= cap`: inside the chunk.
                return unsafe { chunk.add(at) };
            }
        }
        self.place_slow(Layout::from_size_align(size, align).unwrap_or(layout))
    }

    #[cold]
    fn place_slow(&mut self, layout: Layout) -> NonNull<u8> {
        if layout.align() > ALIGN || layout.size() > LARGEST / 4 {
            // The current chunk stays the current one.
            return self.block(layout);
        }
        // A chunk given back by an arena dropped before: its pages are mapped already.
        let kept = self.pool.take_item();
        let cap = if kept.is_some() { LARGEST } else { self.next };
        self.next = (cap * 2).min(LARGEST);
        let chunk = if cap == LARGEST {
            let c = kept.unwrap_or_else(Chunk::new);
            let at = c.0;
            self.chunks.push(c);
            at
        } else {
            let Ok(chunk_layout) = Layout::from_size_align(cap, ALIGN) else {
                handle_alloc_error(layout)
            };
            self.block(chunk_layout)
        };
        self.chunk = Some(chunk);
        self.cap = cap;
        // `cap >= LARGEST / 4 >= size`, and offset 0 is aligned to anything up to `ALIGN`.
        self.used = layout.size();
        chunk
    }

    /// A block of `layout` (not zero-sized) that the arena frees when dropped.
    fn block(&mut self, layout: Layout) -> NonNull<u8> {
        // SAFETY: `layout` is not zero-sized (callers ask for at least one byte).
        let Some(at) = NonNull::new(unsafe { alloc(layout) }) else {
            handle_alloc_error(layout)
        };
        self.blocks.push((at, layout));
        at
    }

    /// Boxes of this arena not yet dropped (debug builds only).
    #[cfg(all(test, debug_assertions))]
    pub(crate) fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        {
            let live = self.live.load(std::sync::atomic::Ordering::Acquire);
            if live != 0 {
                // A box would point into freed memory: keep the memory (leak it) and
                // say so, unless a panic is already unwinding.
                tracing::error!(live, "a task arena dropped before its tasks");
                debug_assert!(std::thread::panicking(), "{live} tasks outlive their arena");
                std::mem::forget(std::mem::take(&mut self.chunks));
                return;
            }
        }
        for (at, layout) in self.blocks.drain(..) {
            // SAFETY: each block was allocated by the global allocator with this layout
            // (by `block`, or by the `Box` that `adopt` took over), and is freed once
            // (drained). The tasks in it were dropped by their boxes (the rule in the
            // module docs), so no value in it is used again.
            unsafe { dealloc(at.as_ptr(), layout) };
        }
        // Emptied as the blocks above (no task in them is used again); those the pool does
        // not keep are freed with `chunks`.
        self.pool.give_items(&mut self.chunks, MAX_BYTES / LARGEST);
    }
}

// SAFETY: `alloc` writes the task into memory of the arena that is never moved nor reused
// while the arena lives, and the `TaskBox` it returns reaches the task only as
// `dyn ErasedTask` (`Deref`/`DerefMut`), which cannot be moved out or swapped; the task
// is dropped in place (`TaskBox::drop`). No attempt starts before `put` returns.
unsafe impl Place for &mut Arena {
    type Held = TaskBox;

    #[inline]
    fn put<E: ErasedTask + 'static>(self, make: impl FnOnce() -> E) -> TaskBox {
        self.alloc_with(make)
    }
}

/// A task in an [`Arena`], owned: it is dropped in place when the box is dropped, on the
/// thread that drops it; its memory is freed with the arena. Must be dropped before
/// its arena (see the module docs).
pub(crate) struct TaskBox {
    ptr: NonNull<dyn ErasedTask>,
    #[cfg(debug_assertions)]
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

// SAFETY: a `TaskBox` is the only owner of its task (like a `Box`), and `ErasedTask`
// requires `Send`: handing it to another thread hands over the task alone. It is not
// `Sync` (`NonNull` is not, and `ErasedTask` does not require it).
unsafe impl Send for TaskBox {}

impl Deref for TaskBox {
    type Target = dyn ErasedTask;

    #[inline]
    fn deref(&self) -> &Self::Target {
        // SAFETY: the task was written when the box was made, is dropped only by the
        // box's `Drop`, and its memory lives until the arena is dropped, after the box.
        unsafe { self.ptr.as_ref() }
    }
}

impl DerefMut for TaskBox {
    #[inline]
    fn deref_mut(&mut self) -> &mut Self::Target {
        // SAFETY: as in `deref`; `&mut self` is the only access (the box owns the task).
        unsafe { self.ptr.as_mut() }
    }
}

impl Drop for TaskBox {
    #[inline]
    fn drop(&mut self) {
        // Counted off first: a task whose drop panics is dropped (as far as it goes) all
        // the same, as a `Box`'s would be.
        #[cfg(debug_assertions)]
        self.live.fetch_sub(1, std::sync::atomic::Ordering::Release);
        // SAFETY: the box owns a live task (see `deref`) and drops it once: here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
    }
}

impl fmt::Debug for TaskBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TaskBox")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use super::{Arena, Chunk, Spare, TaskBox, LARGEST};
    use crate::error::{BoxError, InputError};
    use crate::task::arg::{Inputs, Slot};
    use crate::task::ctx::Ctx;
    use crate::task::erased::{ErasedTask, Finished};

    /// A task that counts its drops and keeps a payload.
    struct Counting<P: Send + 'static> {
        drops: Arc<AtomicUsize>,
        payload: P,
    }

    impl<P: Send + 'static> Drop for Counting<P> {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl<P: Send + 'static> ErasedTask for Counting<P> {
        fn prepare(&mut self, _: &Inputs<'_>, _: bool) -> Result<(), InputError> {
            Ok(())
        }
        fn attempt(&mut self, _: Ctx) -> Result<(), BoxError> {
            Ok(())
        }
        fn poll_attempt(
            &mut self,
            _: &mut Context<'_>,
            _: &Slot,
        ) -> Poll<Result<Finished, BoxError>> {
            Poll::Pending
        }
        fn end_attempt(&mut self) {}
    }

    #[repr(align(256))]
    struct OverAligned;

    fn addr(t: &TaskBox) -> usize {
        std::ptr::from_ref::<dyn ErasedTask>(&**t).cast::<u8>() as usize
    }

    // Tasks of every size and alignment (small, past a chunk's quarter, over-aligned)
    // get aligned places of their own and are dropped once, by their boxes, on any
    // thread; the arena drops no task itself.
    #[test]
    fn tasks_are_placed_aligned_and_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut arena = Arena::default();
        let mut boxes: Vec<TaskBox> = Vec::new();
        for i in 0..2_000_usize {
            let d = drops.clone();
            let b = match i % 5 {
                0 => arena.alloc(Counting {
                    drops: d,
                    payload: i as u8,
                }),
                1 => arena.alloc(Counting {
                    drops: d,
                    payload: [i as u64; 40],
                }),
                2 => arena.alloc(Counting {
                    drops: d,
                    payload: OverAligned,
                }),
                3 => arena.alloc(Counting {
                    drops: d,
                    payload: vec![i; 3],
                }),
                _ => arena.alloc(Counting {
                    drops: d,
                    payload: [i as u8; LARGEST / 2],
                }),
            };
            let align = match i % 5 {
                2 => 256,
                1 | 3 => 8,
                _ => std::mem::align_of::<Arc<AtomicUsize>>(),
            };
            assert_eq!(addr(&b) % align, 0, "task {i}");
            boxes.push(b);
        }
        // Every task has a place of its own.
        let mut at: Vec<usize> = boxes.iter().map(addr).collect();
        at.sort_unstable();
        at.dedup();
        assert_eq!(at.len(), boxes.len());
        // The count of live boxes is kept by debug builds only.
        #[cfg(debug_assertions)]
        assert_eq!(arena.live(), 2_000);
        // Half dropped on other threads, half here; none twice.
        let theirs = boxes.split_off(1_000);
        std::thread::scope(|s| {
            let mut theirs = theirs;
            while !theirs.is_empty() {
                let part = theirs.split_off(theirs.len().saturating_sub(250));
                s.spawn(move || drop(part));
            }
        });
        assert_eq!(drops.load(Ordering::SeqCst), 1_000);
        drop(boxes);
        assert_eq!(drops.load(Ordering::SeqCst), 2_000);
        #[cfg(debug_assertions)]
        assert_eq!(arena.live(), 0);
        drop(arena);
        assert_eq!(drops.load(Ordering::SeqCst), 2_000);
    }

    // A box taken over is dropped by its `TaskBox`, its memory freed with the arena's.
    #[test]
    fn adopted_boxes_are_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut arena = Arena::default();
        let boxed: Box<dyn ErasedTask> = Box::new(Counting {
            drops: drops.clone(),
            payload: [1_u64; 64],
        });
        let mut b = arena.adopt(boxed);
        assert!(b
            .poll_attempt(
                &mut Context::from_waker(std::task::Waker::noop()),
                &Slot::new(0)
            )
            .is_pending());
        let t = arena.alloc(Counting {
            drops: drops.clone(),
            payload: (),
        });
        drop(b);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        drop(t);
        drop(arena);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    /// The chunks of `arena` of the largest size, by address.
    fn chunks(arena: &Arena) -> Vec<usize> {
        let mut at: Vec<usize> = arena.chunks.iter().map(|c| c.0.as_ptr() as usize).collect();
        at.sort_unstable();
        at
    }

    /// An arena of `n` small tasks in `pool`, with its boxes.
    fn filled(pool: &'static Spare<Chunk>, n: usize) -> (Arena, Vec<TaskBox>) {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut arena = Arena::with_pool(pool);
        let boxes = (0..n)
            .map(|i| {
                arena.alloc(Counting {
                    drops: drops.clone(),
                    payload: [i as u64; 7],
                })
            })
            .collect();
        (arena, boxes)
    }

    // The largest chunks of a dropped arena (inside a runtime) are the next arena's: its
    // tasks go to memory whose pages are mapped already, not to fresh pages.
    #[tokio::test]
    async fn the_next_arena_takes_the_chunks_of_the_last_one() {
        static POOL: Spare<Chunk> = Spare::new();
        // 64-byte tasks: 2,000 fill the first chunks (4 + 8 + 16 KiB) and some of 32 KiB.
        let (first, boxes) = filled(&POOL, 2_000);
        let kept = chunks(&first);
        assert!(kept.len() >= 2, "{} chunks of the largest size", kept.len());
        drop(boxes);
        drop(first);
        assert_eq!(POOL.items(), kept.len());
        let (second, boxes) = filled(&POOL, 2_000);
        // Every chunk it needed came from the pool (and more of them: the pool's chunks
        // are all of the largest size, so its smaller first chunks are not needed).
        assert_eq!(POOL.items(), 0);
        let again = chunks(&second);
        assert!(
            kept.iter().all(|c| again.contains(c)),
            "{kept:x?} {again:x?}"
        );
        drop(boxes);
        drop(second);
        assert_eq!(POOL.items(), again.len());
    }

    // Outside a runtime (no reaper to give them back once idle), chunks are freed.
    #[test]
    fn chunks_are_not_kept_outside_a_runtime() {
        static POOL: Spare<Chunk> = Spare::new();
        let (arena, boxes) = filled(&POOL, 2_000);
        assert!(!chunks(&arena).is_empty());
        drop(boxes);
        drop(arena);
        assert_eq!(POOL.items(), 0);
    }

    // Payloads are kept intact next to one another.
    #[test]
    fn payloads_stay_intact() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut arena = Arena::default();
        let mut kept = Vec::new();
        for i in 0..5_000_u64 {
            let b = arena.alloc(Counting {
                drops: drops.clone(),
                payload: [i; 7],
            });
            kept.push((i, addr(&b), b));
        }
        for (i, at, _b) in &kept {
            // SAFETY (test): the task at `at` is a live `Counting<[u64; 7]>`.
            #[allow(unsafe_code)]
            let payload = unsafe { &(*(*at as *const Counting<[u64; 7]>)).payload };
            assert_eq!(payload, &[*i; 7]);
        }
        drop(kept);
        assert_eq!(drops.load(Ordering::SeqCst), 5_000);
    }
}
