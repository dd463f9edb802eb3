//! Large per-node arrays kept from one run for the next of the same size (and, the same
//! way, the chunks of task arenas: see [`give_items`](Spare::give_items)).
//!
//! A run of a large graph allocates a few arrays of one entry per task (the graph's
//! nodes, the executor's node cells and result slots): megabytes each for 100k tasks.
//! glibc gives blocks that large back to the system when they are freed
//! (unmapped past its mmap threshold, or trimmed off the top of its heap), so the next run
//! faulted every page of its arrays in again: layered 100x1k, about 5,000 page faults a
//! run for these arrays alone (`perf record -e page-faults`), a tenth of its time.
//!
//! A [`Spare`] keeps the last such array given back (emptied, its memory still mapped)
//! and hands it to the next run that needs one of about that size. It is bounded: one
//! array per kind, only between [`MIN_BYTES`] and [`MAX_BYTES`], and given back to the
//! system once no run took it for [`IDLE`] (or when the tokio runtime that would have
//! released it shuts down).

use std::mem::size_of;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Arrays smaller than this are not kept: the allocator keeps them mapped itself.
pub(crate) const MIN_BYTES: usize = 512 << 10;
/// Arrays larger than this are not kept: too much memory to hold while idle.
pub(crate) const MAX_BYTES: usize = 64 << 20;
/// How long a kept array waits for a run before it is given back to the system.
pub(crate) const IDLE: Duration = Duration::from_secs(2);

/// One kept array of `T` (see the module docs), or kept items of `T` (blocks of memory
/// of their own, such as a task arena's chunks: [`give_items`](Spare::give_items)).
pub(crate) struct Spare<T> {
    kept: Mutex<Kept<T>>,
    /// How long the kept array waits for a run ([`IDLE`] but in tests).
    idle: Duration,
}

struct Kept<T> {
    /// Empty; its capacity is what is kept.
    vec: Vec<T>,
    /// When it was given back (`None`: nothing kept).
    at: Option<Instant>,
    /// A task that gives the array back once idle is running.
    reaper: bool,
}

impl<T: Send + 'static> Spare<T> {
    pub(crate) const fn new() -> Self {
        Self::with_idle(IDLE)
    }

    /// A spare whose kept array waits `idle` for a run.
    pub(crate) const fn with_idle(idle: Duration) -> Self {
        Spare {
            kept: Mutex::new(Kept {
                vec: Vec::new(),
                at: None,
                reaper: false,
            }),
            idle,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Kept<T>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an array of `n` entries is worth keeping.
    fn keeps(n: usize) -> bool {
        let bytes = n.saturating_mul(size_of::<T>());
        (MIN_BYTES..=MAX_BYTES).contains(&bytes)
    }

    /// An empty vector with room for `n` entries: the kept one when its capacity fits
    /// (`n` to `n + n / 4`), else a new one (and the kept one, which does not fit, is
    /// given back to the system).
    pub(crate) fn take(&'static self, n: usize) -> Vec<T> {
        if !Self::keeps(n) {
            return Vec::with_capacity(n);
        }
        let kept = {
            let mut k = self.lock();
            k.at = None;
            std::mem::take(&mut k.vec)
        };
        if kept.capacity() >= n && kept.capacity() - n <= n / 4 {
            return kept;
        }
        drop(kept);
        Vec::with_capacity(n)
    }

    /// Empties `vec` and keeps it for the next [`take`](Self::take), if it is worth it
    /// and a tokio runtime is there to give it back once idle (else it is freed now).
    pub(crate) fn give(&'static self, mut vec: Vec<T>) {
        vec.clear();
        if !Self::keeps(vec.capacity()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (old, arm) = {
            let mut k = self.lock();
            let old = std::mem::replace(&mut k.vec, vec);
            k.at = Some(Instant::now());
            let arm = !std::mem::replace(&mut k.reaper, true);
            (old, arm)
        };
        drop(old);
        if arm {
            drop(handle.spawn(self.reap()));
        }
    }

    /// Waits until the kept array was idle for [`IDLE`], then gives it back (as it does
    /// when dropped unfinished, by a runtime shutting down).
    fn reap(&'static self) -> impl std::future::Future<Output = ()> + Send + 'static {
        // Made before the future: a task dropped before its first poll drops it too.
        let release = Release(self);
        async move {
            let _release = release;
            let mut wait = self.idle;
            loop {
                tokio::time::sleep(wait).await;
                // Given back since: wait for what is left of its idle time.
                let given = self.lock().at;
                match given.and_then(|at| self.idle.checked_sub(at.elapsed())) {
                    Some(left) if !left.is_zero() => wait = left,
                    _ => return,
                }
            }
        }
    }

    /// One of the items kept by [`give_items`](Self::give_items), if any.
    ///
    /// For a spare that keeps items (blocks of memory that each stand alone), not one array
    /// for its capacity: a kind of spare uses [`take`](Self::take) and
    /// [`give`](Self::give), or this and [`give_items`](Self::give_items), never both.
    pub(crate) fn take_item(&'static self) -> Option<T> {
        self.lock().vec.pop()
    }

    /// Keeps the items of `items` (up to `limit` kept in all) for the next
    /// [`take_item`](Self::take_item)s, if a tokio runtime is there to give them back once
    /// idle; what is not kept is left in `items`, for the caller to drop.
    pub(crate) fn give_items(&'static self, items: &mut Vec<T>, limit: usize) {
        if items.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let arm = {
            let mut k = self.lock();
            let room = limit.saturating_sub(k.vec.len()).min(items.len());
            k.vec.extend(items.drain(items.len() - room..));
            k.at = Some(Instant::now());
            !std::mem::replace(&mut k.reaper, true)
        };
        if arm {
            drop(handle.spawn(self.reap()));
        }
    }

    /// How many items are kept, for tests.
    #[cfg(test)]
    pub(crate) fn items(&self) -> usize {
        self.lock().vec.len()
    }

    /// The capacity of the kept array (0: none), for tests.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.lock().vec.capacity()
    }
}

/// Gives the kept array back to the system and lets the next [`Spare::give`] start a
/// reaper again.
struct Release<T: Send + 'static>(&'static Spare<T>);

impl<T: Send + 'static> Drop for Release<T> {
    fn drop(&mut self) {
        let vec = {
            let mut k = self.0.lock();
            k.reaper = false;
            k.at = None;
            std::mem::take(&mut k.vec)
        };
        drop(vec);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Spare, MAX_BYTES, MIN_BYTES};

    /// Entries of 1 KiB: a few hundred make an array worth keeping.
    type Entry = [u8; 1024];
    const N: usize = MIN_BYTES / 1024 * 2;

    #[test]
    fn small_arrays_and_arrays_outside_a_runtime_are_not_kept() {
        static SPARE: Spare<Entry> = Spare::new();
        SPARE.give(Vec::with_capacity(N));
        assert_eq!(SPARE.kept(), 0, "no runtime to give it back once idle");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            SPARE.give(Vec::with_capacity(MIN_BYTES / 1024 - 1));
            assert_eq!(SPARE.kept(), 0);
            let large = MAX_BYTES / 1024 + 1;
            SPARE.give(Vec::with_capacity(large));
            assert_eq!(SPARE.kept(), 0);
            assert!(SPARE.take(large).capacity() >= large);
        });
    }

    #[tokio::test]
    async fn an_array_given_back_is_taken_again_by_a_run_of_its_size() {
        static SPARE: Spare<Entry> = Spare::new();
        let mut v: Vec<Entry> = Vec::with_capacity(N);
        v.push([7; 1024]);
        let at = v.as_ptr();
        SPARE.give(v);
        assert_eq!(SPARE.kept(), N);
        // Too large a room for a smaller run: it gets its own, the kept one is freed.
        let small = SPARE.take(N / 2);
        assert_eq!(small.capacity(), N / 2);
        assert_eq!(SPARE.kept(), 0);
        let mut v: Vec<Entry> = Vec::with_capacity(N);
        let at2 = v.as_mut_ptr().cast_const();
        v.push([1; 1024]);
        SPARE.give(v);
        // A run of the same size (or a little smaller) gets the very same memory, empty.
        let again = SPARE.take(N - N / 8);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), N);
        assert_eq!(again.as_ptr(), at2);
        assert_ne!(at, std::ptr::null());
        SPARE.give(again);
        assert_eq!(SPARE.kept(), N);
    }

    #[tokio::test]
    async fn an_idle_array_is_given_back_to_the_system() {
        const IDLE: Duration = Duration::from_millis(300);
        static SPARE: Spare<Entry> = Spare::with_idle(IDLE);
        SPARE.give(Vec::with_capacity(N));
        assert_eq!(SPARE.kept(), N);
        tokio::time::sleep(IDLE / 2).await;
        // Taken and given back: idle again from now.
        let v = SPARE.take(N);
        SPARE.give(v);
        tokio::time::sleep(IDLE * 2 / 3).await;
        assert_eq!(
            SPARE.kept(),
            N,
            "given back only {IDLE:?} after its last use"
        );
        tokio::time::sleep(IDLE * 2).await;
        assert_eq!(SPARE.kept(), 0);
        // Kept again by the next give (a new reaper).
        SPARE.give(Vec::with_capacity(N));
        assert_eq!(SPARE.kept(), N);
        tokio::time::sleep(IDLE * 3).await;
        assert_eq!(SPARE.kept(), 0);
    }

    #[tokio::test]
    async fn items_are_kept_up_to_a_limit_and_given_back_once_idle() {
        const IDLE: Duration = Duration::from_millis(300);
        static SPARE: Spare<Box<u32>> = Spare::with_idle(IDLE);
        let mut items: Vec<Box<u32>> = (0..5).map(Box::new).collect();
        SPARE.give_items(&mut items, 3);
        // The last three are kept, the others left to the caller.
        assert_eq!(SPARE.items(), 3);
        assert_eq!(items.iter().map(|b| **b).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(SPARE.take_item().as_deref(), Some(&4));
        SPARE.give_items(&mut items, 3);
        assert_eq!(SPARE.items(), 3);
        assert_eq!(items.len(), 1);
        tokio::time::sleep(IDLE * 3).await;
        assert_eq!(SPARE.items(), 0);
        assert_eq!(SPARE.take_item(), None);
    }

    #[test]
    fn a_runtime_shutting_down_gives_the_kept_array_back() {
        static SPARE: Spare<Entry> = Spare::new();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async { SPARE.give(Vec::with_capacity(N)) });
        assert_eq!(SPARE.kept(), N);
        drop(rt);
        assert_eq!(SPARE.kept(), 0);
    }
}
