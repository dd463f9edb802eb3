//! One rule for every concurrency limit: zero is refused with [`Error::Config`] naming
//! the exact method that set it, when the runtime starts or the work is launched (never
//! a panic, never silently 1); a limit above what a tokio semaphore counts is clamped
//! (it means "no practical limit").

use tokio::sync::Semaphore;

use crate::runtime::Error;

/// `Ok` unless `limit` is `Some(0)`; the error names `method` (e.g.
/// `RuntimeBuilder::max_concurrency`).
pub(crate) fn at_least_one(method: &'static str, limit: Option<usize>) -> Result<(), Error> {
    match limit {
        Some(0) => Err(zero(method)),
        _ => Ok(()),
    }
}

/// The error for a zero limit set by `method`.
pub(crate) fn zero(method: &'static str) -> Error {
    Error::Config(format!(
        "`{method}(0)`: a concurrency limit must be at least 1 (leave it unset for no limit)"
    ))
}

/// Permits for a semaphore enforcing `limit` (already checked to be at least 1; a
/// stored or huge value is brought into the semaphore's range).
pub(crate) fn permits(limit: usize) -> usize {
    limit.clamp(1, Semaphore::MAX_PERMITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_names_the_method_and_huge_limits_are_clamped() {
        let msg = at_least_one("Launch::max_concurrency", Some(0))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`Launch::max_concurrency(0)`"), "{msg}");
        assert!(at_least_one("x", None).is_ok());
        assert!(at_least_one("x", Some(1)).is_ok());
        assert_eq!(permits(usize::MAX), Semaphore::MAX_PERMITS);
        assert_eq!(permits(0), 1);
    }
}
