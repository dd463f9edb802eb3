//! Turn children's progress into the parent's: a child in a terminal state counts as
//! 100%, an unknown percent as 0.
//!
//! # Examples
//!
//! ```
//! use procession::progress::{average_percent, mapped_percent, sequential_percent};
//! use procession::{ChildProgress, State};
//! let c = |state, percent| ChildProgress { process_id: "c".into(), name: "c".into(), state, percent, message: None };
//! assert_eq!(sequential_percent(&[c(State::Done, Some(100.0)), c(State::Running, Some(50.0))], 4), 37.5);
//! assert_eq!(average_percent(&[c(State::Running, None), c(State::Running, Some(50.0))]), 25.0);
//! assert_eq!(mapped_percent(&[c(State::Running, Some(50.0))], 0.25, 0.5), 37.5);
//! ```

use crate::task::ctx::Ctx;

use super::ChildProgress;

fn percent(c: &ChildProgress) -> f64 {
    if c.state.is_end() {
        100.0
    } else {
        c.percent.unwrap_or(0.0).clamp(0.0, 100.0)
    }
}

/// `total` equal slots, one per child in order: each child fills its slot.
pub fn sequential_percent(children: &[ChildProgress], total: usize) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let sum: f64 = children.iter().take(total).map(percent).sum();
    sum / total as f64
}

/// The average of the children's percents (0 when there is none).
pub fn average_percent(children: &[ChildProgress]) -> f64 {
    if children.is_empty() {
        return 0.0;
    }
    children.iter().map(percent).sum::<f64>() / children.len() as f64
}

/// The first child's percent mapped into `[start, end]` (fractions of the parent).
pub fn mapped_percent(children: &[ChildProgress], start: f64, end: f64) -> f64 {
    let p = children.first().map_or(0.0, percent);
    (start + (end - start) * p / 100.0) * 100.0
}

/// A callback reporting [`sequential_percent`] as `ctx`'s progress.
pub fn sequential(ctx: &Ctx, total: usize) -> impl Fn(&[ChildProgress]) + Send + Sync + 'static {
    let ctx = ctx.clone();
    move |c: &[ChildProgress]| ctx.progress(sequential_percent(c, total), "")
}

/// A callback reporting [`average_percent`] as `ctx`'s progress.
pub fn average(ctx: &Ctx) -> impl Fn(&[ChildProgress]) + Send + Sync + 'static {
    let ctx = ctx.clone();
    move |c: &[ChildProgress]| ctx.progress(average_percent(c), "")
}

/// A callback reporting [`mapped_percent`] as `ctx`'s progress.
pub fn mapped(
    ctx: &Ctx,
    start: f64,
    end: f64,
) -> impl Fn(&[ChildProgress]) + Send + Sync + 'static {
    let ctx = ctx.clone();
    move |c: &[ChildProgress]| ctx.progress(mapped_percent(c, start, end), "")
}
