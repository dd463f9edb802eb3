//! Schedules: standard 5-field cron, fixed intervals and one-shot instants, as values
//! (the loop that launches scheduled records is the runtime's, in `runtime/scheduler.rs`).
//!
//! - Cron expressions are checked by the same code as `#[process(schedule = "...")]` at
//!   compile time. Day of week `0` and `7` are both Sunday (the `cron` crate numbers them
//!   1-7 from Sunday; expressions are translated). Aliases `@hourly`, `@daily`,
//!   `@weekly`, `@monthly`, `@yearly` are accepted.
//! - Times are UTC unless a fixed offset is chosen with [`Schedule::utc_offset`].
//! - Fires missed while the binary was down are skipped by default; with
//!   [`CatchUp::Once`] one run is launched for all of them together.
//! - A record that is still active when its schedule fires is not launched again; the
//!   fire is logged and skipped.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::util::unix_ms;

/// Error returned when a schedule is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse; the message says where.
    #[error("invalid cron schedule: {0}")]
    Cron(String),
    /// An interval of zero never advances.
    #[error("an interval schedule needs a duration greater than zero")]
    ZeroInterval,
    /// A one-shot time in the past would never fire.
    #[error("`at` is in the past ({secs_ago} s ago)")]
    InThePast {
        /// How far in the past.
        secs_ago: u64,
    },
    /// A UTC offset beyond ±24 h.
    #[error("utc offset of {0} s is out of range (±86399 s)")]
    Offset(i32),
}

/// What to do with fires missed while the binary was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Skip them; the next fire is the next one after now (the default).
    #[default]
    Skip,
    /// Launch once at start for all of them together.
    Once,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Kind {
    Cron { expr: String },
    Every { ms: u64, anchor_ms: u64 },
    At { ms: u64 },
}

/// When a record is launched by the scheduler.
///
/// # Examples
///
/// ```
/// use procession::Schedule;
/// use std::time::{Duration, UNIX_EPOCH};
///
/// let nightly = Schedule::cron("0 2 * * *").unwrap();
/// // 2026-01-01 10:00 UTC -> the next fire is 2026-01-02 02:00 UTC.
/// let t = UNIX_EPOCH + Duration::from_secs(1_767_261_600);
/// assert_eq!(nightly.next_after(t), Some(UNIX_EPOCH + Duration::from_secs(1_767_319_200)));
///
/// assert!(Schedule::cron("* * *").unwrap_err().to_string().contains("5 fields"));
/// assert!(Schedule::every(Duration::ZERO).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    #[serde(flatten)]
    kind: Kind,
    /// Seconds east of UTC the cron fields are read in.
    #[serde(default)]
    utc_offset: i32,
    #[serde(default)]
    catch_up: CatchUp,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({self})")
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cron { expr } => write!(f, "cron `{expr}`")?,
            Kind::Every { ms, .. } => write!(f, "every {:?}", Duration::from_millis(*ms))?,
            Kind::At { ms } => write!(f, "at {ms} ms since the epoch")?,
        }
        if self.utc_offset != 0 {
            write!(f, " (UTC{:+}s)", self.utc_offset)?;
        }
        Ok(())
    }
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Schedule {
    /// A 5-field cron schedule (minute hour day-of-month month day-of-week).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Cron`] naming the field at fault.
    pub fn cron(expr: &str) -> Result<Self, ScheduleError> {
        procession_cron::check(expr).map_err(ScheduleError::Cron)?;
        Ok(Schedule {
            kind: Kind::Cron {
                expr: expr.trim().to_owned(),
            },
            utc_offset: 0,
            catch_up: CatchUp::Skip,
        })
    }

    /// Every `interval`, starting one interval from now.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::ZeroInterval`].
    pub fn every(interval: Duration) -> Result<Self, ScheduleError> {
        Self::every_from(interval, SystemTime::now())
    }

    /// Every `interval`, counted from `anchor`.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::ZeroInterval`] (also for intervals under a millisecond).
    pub fn every_from(interval: Duration, anchor: SystemTime) -> Result<Self, ScheduleError> {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Err(ScheduleError::ZeroInterval);
        }
        Ok(Schedule {
            kind: Kind::Every {
                ms,
                anchor_ms: unix_ms(anchor),
            },
            utc_offset: 0,
            catch_up: CatchUp::Skip,
        })
    }

    /// Once, at `when`.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InThePast`] when `when` is before now.
    pub fn at(when: SystemTime) -> Result<Self, ScheduleError> {
        if let Ok(ago) = SystemTime::now().duration_since(when) {
            if ago > Duration::from_secs(1) {
                return Err(ScheduleError::InThePast {
                    secs_ago: ago.as_secs(),
                });
            }
        }
        Ok(Schedule {
            kind: Kind::At { ms: unix_ms(when) },
            utc_offset: 0,
            catch_up: CatchUp::Skip,
        })
    }

    /// Read the cron fields at a fixed offset from UTC (seconds east), instead of UTC.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Offset`] beyond ±24 h.
    pub fn utc_offset(mut self, seconds_east: i32) -> Result<Self, ScheduleError> {
        FixedOffset::east_opt(seconds_east).ok_or(ScheduleError::Offset(seconds_east))?;
        self.utc_offset = seconds_east;
        Ok(self)
    }

    /// What to do with fires missed while the binary was down (default: skip them).
    #[must_use]
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// The missed-fires policy.
    pub fn catch_up_policy(&self) -> CatchUp {
        self.catch_up
    }

    /// The first fire strictly after `t`, or `None` when there is none (a one-shot
    /// schedule that has passed).
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        match &self.kind {
            Kind::At { ms } => (from_ms(*ms) > t).then(|| from_ms(*ms)),
            Kind::Every {
                ms: every,
                anchor_ms,
            } => {
                // Fires at anchor + k * interval, k >= 1.
                let now = unix_ms(t);
                let k = if now < *anchor_ms {
                    1
                } else {
                    // `every` may come from a store: zero is read as 1 ms.
                    ((now - anchor_ms) / (*every).max(1)).saturating_add(1)
                };
                Some(from_ms(anchor_ms.saturating_add(k.saturating_mul(*every))))
            }
            Kind::Cron { expr } => {
                let full = procession_cron::check(expr).ok()?;
                let schedule = cron::Schedule::from_str(&full).ok()?;
                let tz = FixedOffset::east_opt(self.utc_offset)?;
                let at: DateTime<Utc> = DateTime::<Utc>::from(t);
                let local = tz.from_utc_datetime(&at.naive_utc());
                schedule.after(&local).next().map(SystemTime::from)
            }
        }
    }

    /// Whether the schedule can never fire again after `t`.
    pub fn is_over(&self, t: SystemTime) -> bool {
        self.next_after(t).is_none()
    }
}

/// What the scheduler does for one schedule at `now`, given its last fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Launch now.
    pub(crate) fire: bool,
    /// The fire time to record as the last one (now, when fired or skipped).
    pub(crate) mark: Option<SystemTime>,
    /// When to look again.
    pub(crate) next: Option<SystemTime>,
}

/// Decides what to do at `now`. `last` is the last fire (or the time the schedule was set);
/// a fire due before `started` (when this runtime started) was missed while the binary was
/// down, and follows the catch-up policy.
pub(crate) fn plan(s: &Schedule, last: SystemTime, now: SystemTime, started: SystemTime) -> Plan {
    let Some(due) = s.next_after(last) else {
        return Plan {
            fire: false,
            mark: None,
            next: None,
        };
    };
    if due > now {
        return Plan {
            fire: false,
            mark: None,
            next: Some(due),
        };
    }
    // One or more fires are due. Fires missed while the binary was down follow the
    // catch-up policy; a fire that became due while running fires once (never backfilled).
    let missed = due < started;
    let fire = !missed || s.catch_up == CatchUp::Once;
    Plan {
        fire,
        mark: Some(now),
        next: s.next_after(now),
    }
}

#[cfg(test)]
#[allow(clippy::duration_suboptimal_units)] // schedules read best in seconds here
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Weekday};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> SystemTime {
        SystemTime::from(Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap())
    }

    fn dt(t: SystemTime) -> DateTime<Utc> {
        DateTime::<Utc>::from(t)
    }

    // WF-96/WF-97: the next fire is strictly after the input, seconds zeroed.
    #[test]
    fn next_after_is_strict() {
        let s = Schedule::cron("0 12 * * *").unwrap();
        assert_eq!(
            s.next_after(at(2026, 1, 1, 10, 0)),
            Some(at(2026, 1, 1, 12, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 1, 1, 12, 0)),
            Some(at(2026, 1, 2, 12, 0))
        );
        let every_quarter = Schedule::cron("*/15 * * * *").unwrap();
        assert_eq!(
            every_quarter.next_after(at(2026, 1, 1, 10, 1)),
            Some(at(2026, 1, 1, 10, 15))
        );
        let n = dt(every_quarter.next_after(at(2026, 1, 1, 10, 59)).unwrap());
        assert_eq!((n.hour(), n.minute(), n.second()), (11, 0, 0));
    }

    // A schedule read back from a store is untrusted: an interval of zero (which
    // `Schedule::every` refuses) and extreme times divided by zero or overflowed.
    #[test]
    fn stored_every_zero_or_extreme_does_not_panic() {
        for stored in [
            serde_json::json!({"kind": "every", "ms": 0, "anchor_ms": 0}),
            serde_json::json!({"kind": "every", "ms": 1, "anchor_ms": 0}),
            serde_json::json!({"kind": "every", "ms": u64::MAX, "anchor_ms": u64::MAX}),
            serde_json::json!({"kind": "at", "ms": u64::MAX}),
            serde_json::json!({"kind": "cron", "expr": "not cron", "utc_offset": i32::MAX}),
        ] {
            let s: Schedule = serde_json::from_value(stored).unwrap();
            for t in [UNIX_EPOCH, SystemTime::now(), from_ms(u64::MAX)] {
                let _ = s.next_after(t);
                let _ = plan(&s, t, SystemTime::now(), UNIX_EPOCH);
            }
        }
    }

    // Both 0 and 7 are Sunday; 1-5 are Monday to Friday.
    #[test]
    fn weekdays_follow_standard_cron() {
        let wed = at(2026, 1, 7, 12, 0); // a Wednesday
        assert_eq!(dt(wed).weekday(), Weekday::Wed);
        for expr in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN"] {
            let n = dt(Schedule::cron(expr).unwrap().next_after(wed).unwrap());
            assert_eq!(n.weekday(), Weekday::Sun, "{expr}");
        }
        let n = dt(Schedule::cron("0 0 * * 1-5")
            .unwrap()
            .next_after(at(2026, 1, 9, 12, 0))
            .unwrap());
        assert_eq!(n.weekday(), Weekday::Mon);
        let n = dt(Schedule::cron("0 0 * * 5-7")
            .unwrap()
            .next_after(wed)
            .unwrap());
        assert_eq!(n.weekday(), Weekday::Fri);
    }

    // The scenarios' bad-input section for cron, intervals and one-shots.
    #[test]
    fn bad_inputs_are_typed_errors() {
        for bad in [
            "* * *",
            "60 * * * *",
            "*/0 * * * *",
            "0 17-9 * * *",
            "0 0 * * 9",
            "x * * * *",
            "@hourlyy",
            "0 0 0 * * *",
            "",
        ] {
            assert!(
                matches!(Schedule::cron(bad), Err(ScheduleError::Cron(_))),
                "{bad:?}"
            );
        }
        assert!(Schedule::cron("* * *")
            .unwrap_err()
            .to_string()
            .contains("5 fields"));
        assert_eq!(
            Schedule::every(Duration::ZERO),
            Err(ScheduleError::ZeroInterval)
        );
        assert_eq!(
            Schedule::every(Duration::from_micros(10)),
            Err(ScheduleError::ZeroInterval)
        );
        let past = SystemTime::now() - Duration::from_secs(60);
        assert!(matches!(
            Schedule::at(past),
            Err(ScheduleError::InThePast { .. })
        ));
        assert!(Schedule::cron("0 2 * * *")
            .unwrap()
            .utc_offset(100_000)
            .is_err());
        assert!(Schedule::cron("@daily").is_ok());
    }

    // A fixed offset moves the cron fields off UTC.
    #[test]
    fn utc_offset_shifts_fires() {
        let s = Schedule::cron("0 2 * * *")
            .unwrap()
            .utc_offset(2 * 3600)
            .unwrap();
        assert_eq!(
            s.next_after(at(2026, 1, 1, 10, 0)),
            Some(at(2026, 1, 2, 0, 0))
        );
    }

    // WF-98: fires missed while running fire once, never backfilled; missed while down:
    // skipped by default, once with CatchUp::Once.
    #[test]
    fn missed_fires() {
        let s = Schedule::every_from(Duration::from_secs(60), at(2026, 1, 1, 0, 0)).unwrap();
        let last = at(2026, 1, 1, 0, 1);
        let now = at(2026, 1, 1, 0, 10);
        let running = plan(&s, last, now, last);
        assert!(running.fire);
        assert_eq!(running.mark, Some(now));
        assert_eq!(running.next, Some(at(2026, 1, 1, 0, 11)));
        assert!(
            !plan(&s, last, now, now).fire,
            "skipped by default after a restart"
        );
        assert!(plan(&s.clone().catch_up(CatchUp::Once), last, now, now).fire);
        let quiet = plan(&s, last, at(2026, 1, 1, 0, 1), last);
        assert_eq!(
            (quiet.fire, quiet.next),
            (false, Some(at(2026, 1, 1, 0, 2)))
        );
        // WF-99: a one-shot fires once and is over.
        let once = Schedule {
            kind: Kind::At {
                ms: unix_ms(at(2026, 1, 1, 0, 5)),
            },
            utc_offset: 0,
            catch_up: CatchUp::Skip,
        };
        assert!(
            plan(
                &once,
                at(2026, 1, 1, 0, 0),
                at(2026, 1, 1, 0, 5),
                at(2026, 1, 1, 0, 0)
            )
            .fire
        );
        assert!(once.is_over(at(2026, 1, 1, 0, 5)));
    }
}
