// every `#[task]` argument set at once, each in its accepted form
use procession::prelude::*;
use procession::Backoff;

#[derive(Debug, thiserror::Error)]
#[error("service busy")]
struct Busy;

#[task(
    name = "fetch_orders",
    description = "loads the orders of one source",
    retries = 3,
    retry_on = [std::io::Error, Busy],
    retry_timeouts = false,
    backoff = "exponential(100ms, 5s, jitter)",
    timeout = "1.5m",
    on_dep_failure = "run_anyway",
    optional,
    crate = "::procession",
)]
async fn fetch(ctx: &Ctx, source: String) -> Result<Vec<String>, std::io::Error> {
    ctx.log(Level::Info, "fetching");
    Ok(vec![source])
}

#[task(max_attempts = 4, backoff = "fixed(250ms)", on_dep_failure = "fail")]
fn linear_one() {}

#[task(backoff = "linear(1s, 10s)", on_dep_failure = "skip")]
fn linear_two() {}

#[task(backoff = "none", timeout = "2h", optional = false)]
fn no_backoff() {}

#[task(backoff = "linear(1s 500ms, 1m30s)", timeout = "1h 5m")]
fn compound_durations() {}

fn main() {
    let meta = &<Fetch as Task>::META;
    assert_eq!(meta.name, "fetch_orders");
    assert_eq!(meta.description, "loads the orders of one source");
    assert_eq!(meta.policy.max_attempts, 4);
    assert_eq!(
        meta.policy.timeout,
        Some(std::time::Duration::from_secs(90))
    );
    assert!(!meta.policy.retry_timeouts);
    assert_eq!(meta.policy.on_dep_failure, OnDepFailure::RunAnyway);
    assert!(meta.policy.optional);
    assert!(!<NoBackoff as Task>::META.policy.optional);
    assert_eq!(<LinearOne as Task>::META.policy.max_attempts, 4);
    assert_eq!(
        <LinearTwo as Task>::META.policy.on_dep_failure,
        OnDepFailure::Skip
    );
    assert_eq!(<NoBackoff as Task>::META.policy.max_attempts, 1);
    let compound = <CompoundDurations as Task>::META.policy;
    assert_eq!(
        compound.timeout,
        Some(std::time::Duration::from_secs(3900))
    );
    assert_eq!(
        compound.backoff,
        Backoff::Linear {
            base: std::time::Duration::from_millis(1500),
            cap: Some(std::time::Duration::from_secs(90)),
            jitter: false
        }
    );
}
