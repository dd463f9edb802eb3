//! Small helpers shared by several layers (the lowest layer, with `error`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smol_str::SmolStr;

/// A graph's node ids, by node: one list shared by the graph, a run's journal, executor
/// and memory-store rows. A `Vec` behind the `Arc`, not a slice: the graph builder's
/// vector is adopted as it is, where `Arc<[SmolStr]>` copied every id once more at the
/// build's end.
pub(crate) type IdList = Arc<Vec<SmolStr>>;

/// Milliseconds since the Unix epoch: 0 before it, `u64::MAX` beyond what a `u64` holds.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The monotonic clock, in nanoseconds from an origin fixed for the process: a task's
/// times are taken from it as plain integers (one read per end serves both the task's
/// elapsed time and its row's end; differences and conversions are integer arithmetic,
/// not the checked [`Instant`](std::time::Instant) arithmetic of the standard library).
///
/// On Linux it is `CLOCK_MONOTONIC`, the clock `Instant` reads; elsewhere, the time
/// since the first read through an `Instant`.
#[inline]
pub(crate) fn mono_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec, and `CLOCK_MONOTONIC` exists on
        // every Linux: the call only writes `ts`.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        debug_assert_eq!(rc, 0, "CLOCK_MONOTONIC is always readable");
        // Never negative: the clock counts from the boot.
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        nanos(ORIGIN.get_or_init(std::time::Instant::now).elapsed())
    }
}

/// Asks the CPU to bring the cache line holding the start of `value` in, without
/// waiting for it: a hint, which changes nothing the program sees (a no-op on other
/// targets than x86-64).
#[inline(always)]
#[allow(clippy::inline_always)] // one instruction: a call would cost more than it
pub(crate) fn prefetch<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only loads a line into the cache: it cannot fault (even for
    // an address that is not mapped, and this one is a live reference's), and writes
    // nothing. `sse`, which the intrinsic requires, is part of the x86-64 baseline.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(value).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The time since `t0`, a [`mono_ns`] reading (zero if the clock reads earlier).
#[inline]
pub(crate) fn mono_since(t0: u64) -> Duration {
    Duration::from_nanos(mono_ns().saturating_sub(t0))
}

/// Nanoseconds of `d`, saturating at `u64::MAX` (584 years): `as_nanos` without its
/// 128-bit arithmetic.
pub(crate) fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::nanos;
    use std::time::Duration;

    // Exact below the limit, saturated beyond it.
    #[test]
    fn durations_convert_and_saturate() {
        assert_eq!(nanos(Duration::from_micros(3)), 3_000);
        assert_eq!(nanos(Duration::new(2, 5)), 2_000_000_005);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
