//! Schedules: cron (5 fields, or 6 with seconds first), fixed intervals and one-shot
//! instants, as values (the loop that launches scheduled records is the runtime's, in
//! `runtime/scheduler.rs`).
//!
//! - Cron expressions are checked by the same code as `#[process(schedule = "...")]` at
//!   compile time. Five fields (`minute hour day-of-month month day-of-week`) fire at
//!   second 0; six fields put seconds first (`second minute hour day-of-month month
//!   day-of-week`, as tokio-cron-scheduler writes them). Day of week `0` and `7` are both
//!   Sunday (the `cron` crate numbers them 1-7 from Sunday; expressions are translated).
//!   Aliases `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly` are accepted.
//! - Times are UTC unless a fixed offset is chosen with [`Schedule::utc_offset`] or, with
//!   the `tz` feature, a named time zone with `Schedule::tz` (daylight saving included).
//! - Daylight saving: a local time that does not exist (clocks jump forward, `02:30` on a
//!   spring night in Paris) fires once, at the first instant after the jump (`03:00`); a
//!   local time that happens twice (clocks go back) fires once, at its first occurrence.
//!   Every fire is a distinct instant: an every-15-minutes schedule fires once at the jump
//!   for the whole skipped hour, and not again during the repeated hour.
//! - Fires missed while the binary was down are skipped by default; with
//!   [`CatchUp::Once`] one run is launched for all of them together.
//! - A fire that comes while the record's previous run is still active follows the
//!   schedule's [`Overlap`] policy: skipped (the default), queued (at most one), or run
//!   alongside as a run of its own.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeDelta, TimeZone, Utc};
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
    /// A time zone name that is not in the IANA database; the message names a close one
    /// when there is one.
    #[error("{0}")]
    TimeZone(String),
    /// A named time zone in a build without the `tz` feature (for example a
    /// `#[process(tz = "...")]` compiled with the feature, read by a build without it).
    #[error("time zone `{0}` needs the `tz` feature of procession")]
    TimeZoneUnsupported(String),
}

/// What the scheduler does when a fire comes while the record's previous run is still
/// active.
///
/// The default is [`Overlap::Skip`]: a schedule that fires faster than its runs end
/// then never piles runs up (and never competes with itself for the same data), and the
/// next fire after the run ends starts the next run. Choose [`Overlap::QueueOne`] when no
/// fire may be lost but runs must not overlap, and [`Overlap::Allow`] for independent
/// runs (each fire is work of its own, such as polling).
///
/// # Examples
///
/// ```
/// use procession::{Overlap, Schedule};
/// let s = Schedule::cron("*/5 * * * *").unwrap().overlap(Overlap::QueueOne);
/// assert_eq!(s.overlap_policy(), Overlap::QueueOne);
/// assert_eq!("queue_one".parse::<Overlap>().unwrap(), Overlap::QueueOne);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The fire is skipped (and logged); the schedule goes on (the default).
    #[default]
    Skip,
    /// At most one fire waits: it launches the record as soon as the running run ends.
    /// Further fires while one waits are skipped.
    QueueOne,
    /// The fire starts another run at once, alongside the running one, as a record of
    /// its own with id `<record id>@<run number>` (same process type and parameters).
    /// Such a run joins the record's history when it ends (see `Runtime::history`), and
    /// its own record is then deleted.
    Allow,
}

impl Overlap {
    /// The names accepted by [`FromStr`] and `#[process(overlap = "...")]`.
    pub const NAMES: [&'static str; 3] = ["skip", "queue_one", "allow"];
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overlap::Skip => "skip",
            Overlap::QueueOne => "queue_one",
            Overlap::Allow => "allow",
        })
    }
}

impl FromStr for Overlap {
    type Err = String;

    /// `skip`, `queue_one` or `allow` (`-` for `_` is accepted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().replace('-', "_").as_str() {
            "skip" => Ok(Overlap::Skip),
            "queue_one" => Ok(Overlap::QueueOne),
            "allow" => Ok(Overlap::Allow),
            other => Err(format!(
                "unknown overlap policy `{other}`; expected `skip`, `queue_one` or `allow`"
            )),
        }
    }
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
/// // Six fields: seconds first. 2026-01-01 10:00 UTC -> 10:00:30.
/// let half_minute = Schedule::cron("30 * * * * *").unwrap();
/// assert_eq!(half_minute.next_after(t), Some(t + Duration::from_secs(30)));
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
    /// IANA time zone the cron fields are read in (instead of `utc_offset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tz: Option<String>,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(default)]
    overlap: Overlap,
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
        if let Some(tz) = &self.tz {
            write!(f, " ({tz})")?;
        } else if self.utc_offset != 0 {
            write!(f, " (UTC{:+}s)", self.utc_offset)?;
        }
        if self.overlap != Overlap::Skip {
            write!(f, ", overlap {}", self.overlap)?;
        }
        Ok(())
    }
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl Schedule {
    /// A cron schedule: 5 fields (minute hour day-of-month month day-of-week, firing at
    /// second 0) or 6 with seconds first (second minute hour day-of-month month
    /// day-of-week).
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
            tz: None,
            catch_up: CatchUp::Skip,
            overlap: Overlap::Skip,
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
            tz: None,
            catch_up: CatchUp::Skip,
            overlap: Overlap::Skip,
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
            tz: None,
            catch_up: CatchUp::Skip,
            overlap: Overlap::Skip,
        })
    }

    /// Read the cron fields at a fixed offset from UTC (seconds east), instead of UTC
    /// (replaces a time zone chosen before).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Offset`] beyond ±24 h.
    pub fn utc_offset(mut self, seconds_east: i32) -> Result<Self, ScheduleError> {
        FixedOffset::east_opt(seconds_east).ok_or(ScheduleError::Offset(seconds_east))?;
        self.utc_offset = seconds_east;
        self.tz = None;
        Ok(self)
    }

    /// Read the cron fields in the IANA time zone `name` (`Europe/Paris`), daylight
    /// saving included (see the module notes for the nights when clocks change); replaces
    /// a fixed offset chosen before. Intervals and one-shots are instants: a zone does not
    /// change them.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::TimeZone`] for a name not in the IANA database.
    ///
    /// # Examples
    ///
    /// ```
    /// use procession::Schedule;
    /// use std::time::{Duration, UNIX_EPOCH};
    /// let paris = Schedule::cron("0 2 * * *").unwrap().tz("Europe/Paris").unwrap();
    /// // 2026-07-01 00:30 UTC (02:30 in Paris, summer time) -> 2026-07-02 02:00 Paris,
    /// // which is 00:00 UTC.
    /// let t = UNIX_EPOCH + Duration::from_secs(1_782_865_800);
    /// assert_eq!(paris.next_after(t), Some(UNIX_EPOCH + Duration::from_secs(1_782_950_400)));
    /// assert!(Schedule::cron("0 2 * * *").unwrap().tz("Europe/Pariss").is_err());
    /// ```
    #[cfg(feature = "tz")]
    pub fn tz(mut self, name: &str) -> Result<Self, ScheduleError> {
        let tz = procession_cron::check_tz(name).map_err(ScheduleError::TimeZone)?;
        self.tz = Some(tz.name().to_owned());
        self.utc_offset = 0;
        Ok(self)
    }

    /// The IANA time zone the cron fields are read in, if one was chosen.
    pub fn time_zone(&self) -> Option<&str> {
        self.tz.as_deref()
    }

    /// What a fire does while the record's previous run is still active (default:
    /// [`Overlap::Skip`]).
    #[must_use]
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// The overlap policy.
    pub fn overlap_policy(&self) -> Overlap {
        self.overlap
    }

    /// The schedule of `#[process(schedule = ..., tz = ..., overlap = ...)]`: what
    /// [`Definition::new`](crate::Definition::new) uses by default.
    ///
    /// # Errors
    ///
    /// As [`Schedule::cron`], and [`ScheduleError::TimeZoneUnsupported`] for a time zone
    /// in a build without the `tz` feature.
    pub fn from_meta(
        cron: &str,
        tz: Option<&str>,
        overlap: Overlap,
    ) -> Result<Self, ScheduleError> {
        let s = Schedule::cron(cron)?.overlap(overlap);
        match tz {
            None => Ok(s),
            #[cfg(feature = "tz")]
            Some(name) => s.tz(name),
            #[cfg(not(feature = "tz"))]
            Some(name) => Err(ScheduleError::TimeZoneUnsupported(name.to_owned())),
        }
    }

    /// Why this schedule can never be evaluated by this build, if it cannot (a time zone
    /// read back from a store by a build without the `tz` feature, or one this build does
    /// not know).
    pub fn unsupported(&self) -> Option<ScheduleError> {
        let name = self.tz.as_ref()?;
        #[cfg(feature = "tz")]
        {
            procession_cron::check_tz(name)
                .err()
                .map(ScheduleError::TimeZone)
        }
        #[cfg(not(feature = "tz"))]
        {
            Some(ScheduleError::TimeZoneUnsupported(name.clone()))
        }
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
    /// schedule that has passed, or a schedule this build cannot evaluate: see
    /// [`unsupported`](Schedule::unsupported)). A pure function of `t`: daylight saving
    /// follows the rules in the module notes.
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
                let at = DateTime::from_timestamp_millis(i64::try_from(unix_ms(t)).ok()?)?;
                let next = match &self.tz {
                    None => next_local(&schedule, &FixedOffset::east_opt(self.utc_offset)?, at),
                    #[cfg(feature = "tz")]
                    Some(name) => next_local(&schedule, &procession_cron::check_tz(name).ok()?, at),
                    #[cfg(not(feature = "tz"))]
                    Some(_) => None,
                };
                next.map(SystemTime::from)
            }
        }
    }

    /// Whether the schedule can never fire again after `t`.
    pub fn is_over(&self, t: SystemTime) -> bool {
        self.next_after(t).is_none()
    }
}

/// How many candidate local times [`next_local`] looks at before giving up: a repeated
/// hour skips at most 3600 of them (a seconds schedule), so this bound is never reached
/// by a real zone; it keeps a damaged input from looping.
const MAX_CANDIDATES: usize = 100_000;

/// The first fire of `schedule`, read in zone `tz`, strictly after `at`.
///
/// The cron crate walks local wall-clock times (carried in UTC, which has no daylight
/// saving); each is mapped to the instant it first happens in `tz` ([`first_instant`]).
/// That mapping never goes backwards, so the first local time whose instant is after `at`
/// gives the next fire, and local times whose instant was already passed (the second
/// pass of a repeated hour, the skipped local times after a jump) are passed over.
fn next_local<Z: TimeZone>(
    schedule: &cron::Schedule,
    tz: &Z,
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let local = at.with_timezone(tz).naive_local();
    let start = DateTime::<Utc>::from_naive_utc_and_offset(local, Utc);
    schedule
        .after(&start)
        .take(MAX_CANDIDATES)
        .filter_map(|candidate| first_instant(tz, candidate.naive_utc()))
        .find(|fire| *fire > at)
}

/// The instant local time `local` first happens in `tz`: its only instant, the first of
/// two when clocks go back, and the end of the jump when clocks jump over it.
fn first_instant<Z: TimeZone>(tz: &Z, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    if let Some(t) = tz.from_local_datetime(&local).earliest() {
        return Some(t.to_utc());
    }
    // Skipped by a jump: the first local time after it that exists, to the second (a
    // jump ends on a minute in every zone of the database but a few historical ones).
    let minute = TimeDelta::minutes(1);
    let second = TimeDelta::seconds(1);
    let mut after = local;
    for _ in 0..(48 * 60) {
        after = after.checked_add_signed(minute)?;
        let Some(mut first) = tz.from_local_datetime(&after).earliest() else {
            continue;
        };
        let mut back = after;
        for _ in 0..59 {
            back = back.checked_sub_signed(second)?;
            match tz.from_local_datetime(&back).earliest() {
                Some(t) => first = t,
                None => break,
            }
        }
        return Some(first.to_utc());
    }
    None
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
            "0 0 0 * * * 2026",
            "60 0 0 * * *",
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
            tz: None,
            catch_up: CatchUp::Skip,
            overlap: Overlap::Skip,
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

    fn at_s(y: i32, mo: u32, d: u32, h: u32, mi: u32, sec: u32) -> SystemTime {
        SystemTime::from(Utc.with_ymd_and_hms(y, mo, d, h, mi, sec).unwrap())
    }

    // OPT-47: a 5-field schedule fires at second 0. OPT-49: a 6-field schedule puts
    // seconds first ("15 3 * * *" offset by 30 s is "30 15 3 * * *": 03:15:30).
    #[test]
    fn six_fields_fire_at_their_second() {
        let every_minute = Schedule::cron("*/1 * * * *").unwrap();
        let n = dt(every_minute
            .next_after(at_s(2026, 1, 1, 10, 0, 17))
            .unwrap());
        assert_eq!(
            (n.minute(), n.second(), n.timestamp_subsec_micros()),
            (1, 0, 0)
        );
        let s = Schedule::cron("30 15 3 * * *").unwrap();
        assert_eq!(
            s.next_after(at(2026, 1, 1, 0, 0)),
            Some(at_s(2026, 1, 1, 3, 15, 30))
        );
        assert_eq!(
            s.next_after(at_s(2026, 1, 1, 3, 15, 30)),
            Some(at_s(2026, 1, 2, 3, 15, 30))
        );
        let every_ten_seconds = Schedule::cron("*/10 * * * * *").unwrap();
        assert_eq!(
            every_ten_seconds.next_after(at_s(2026, 1, 1, 0, 0, 1)),
            Some(at_s(2026, 1, 1, 0, 0, 10))
        );
        // A fixed offset applies to six fields too.
        let offset = s.utc_offset(3600).unwrap();
        assert_eq!(
            offset.next_after(at(2026, 1, 1, 0, 0)),
            Some(at_s(2026, 1, 1, 2, 15, 30))
        );
    }

    #[test]
    fn overlap_policy_round_trips() {
        let s = Schedule::every_from(Duration::from_secs(60), at(2026, 1, 1, 0, 0))
            .unwrap()
            .overlap(Overlap::Allow);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["overlap"], "allow");
        assert_eq!(serde_json::from_value::<Schedule>(json).unwrap(), s);
        // Records written before the policy existed read as `skip`.
        let old: Schedule =
            serde_json::from_value(serde_json::json!({"kind": "cron", "expr": "0 2 * * *"}))
                .unwrap();
        assert_eq!(old.overlap_policy(), Overlap::Skip);
        assert_eq!(old.time_zone(), None);
        for name in Overlap::NAMES {
            assert_eq!(name.parse::<Overlap>().unwrap().to_string(), name);
        }
        assert!("queue-one".parse::<Overlap>().is_ok());
        assert!("sometimes"
            .parse::<Overlap>()
            .unwrap_err()
            .contains("queue_one"));
    }

    // A time zone stored by a build with the `tz` feature, read by one without it: the
    // schedule never fires and says why, never a panic.
    #[cfg(not(feature = "tz"))]
    #[test]
    fn stored_time_zone_needs_the_feature() {
        let s: Schedule = serde_json::from_value(
            serde_json::json!({"kind": "cron", "expr": "0 2 * * *", "tz": "Europe/Paris"}),
        )
        .unwrap();
        assert_eq!(s.next_after(at(2026, 1, 1, 0, 0)), None);
        assert!(matches!(
            s.unsupported(),
            Some(ScheduleError::TimeZoneUnsupported(_))
        ));
        assert!(matches!(
            Schedule::from_meta("0 2 * * *", Some("Europe/Paris"), Overlap::Skip),
            Err(ScheduleError::TimeZoneUnsupported(_))
        ));
    }

    #[cfg(feature = "tz")]
    mod zones {
        use super::*;

        fn paris(expr: &str) -> Schedule {
            Schedule::cron(expr).unwrap().tz("Europe/Paris").unwrap()
        }

        // Outside the nights when clocks change, fields are Paris wall-clock time:
        // UTC+1 in winter, UTC+2 in summer.
        #[test]
        fn fields_are_local_time() {
            let s = paris("0 2 * * *");
            assert_eq!(
                s.next_after(at(2026, 1, 10, 12, 0)),
                Some(at(2026, 1, 11, 1, 0))
            );
            assert_eq!(
                s.next_after(at(2026, 7, 10, 12, 0)),
                Some(at(2026, 7, 11, 0, 0))
            );
            assert_eq!(s.time_zone(), Some("Europe/Paris"));
            assert_eq!(s.to_string(), "cron `0 2 * * *` (Europe/Paris)");
            // A fixed offset replaces the zone, and the other way round.
            let fixed = s.clone().utc_offset(0).unwrap();
            assert_eq!(fixed.time_zone(), None);
            assert_eq!(
                fixed.next_after(at(2026, 1, 10, 12, 0)),
                Some(at(2026, 1, 11, 2, 0))
            );
        }

        // Spring forward (2026-03-29, 02:00 CET -> 03:00 CEST at 01:00 UTC): 02:30 does
        // not exist that night; it fires once, at 03:00 CEST, then at 02:30 the next day.
        #[test]
        fn skipped_local_time_fires_once_at_the_jump() {
            let s = paris("30 2 * * *");
            let jump = at(2026, 3, 29, 1, 0);
            assert_eq!(s.next_after(at(2026, 3, 28, 12, 0)), Some(jump));
            assert_eq!(s.next_after(jump), Some(at(2026, 3, 30, 0, 30)));
            // Every 15 minutes: the whole skipped hour is one fire, at the jump.
            let quarter = paris("*/15 * * * *");
            assert_eq!(quarter.next_after(at(2026, 3, 29, 0, 50)), Some(jump));
            assert_eq!(quarter.next_after(jump), Some(at(2026, 3, 29, 1, 15)));
            // A local time next to the jump (03:00 CEST) is the same instant: one fire.
            let both = paris("30 2,3 * * *");
            assert_eq!(both.next_after(at(2026, 3, 28, 23, 0)), Some(jump));
            assert_eq!(both.next_after(jump), Some(at(2026, 3, 29, 1, 30)));
        }

        // Fall back (2026-10-25, 03:00 CEST -> 02:00 CET at 01:00 UTC): 02:30 happens
        // twice that night; it fires once, at the first (00:30 UTC), also when asked from
        // inside the repeated hour.
        #[test]
        fn repeated_local_time_fires_once() {
            let s = paris("30 2 * * *");
            let first = at(2026, 10, 25, 0, 30);
            let next_day = at(2026, 10, 26, 1, 30);
            assert_eq!(s.next_after(at(2026, 10, 24, 12, 0)), Some(first));
            assert_eq!(s.next_after(first), Some(next_day));
            // 02:10 CET, in the second pass: 02:30 has already fired.
            assert_eq!(s.next_after(at(2026, 10, 25, 1, 10)), Some(next_day));
            // Every 15 minutes: the repeated hour fires in its first pass only.
            let quarter = paris("*/15 * * * *");
            assert_eq!(
                quarter.next_after(at(2026, 10, 25, 0, 45)),
                Some(at(2026, 10, 25, 2, 0))
            );
            let mut t = at(2026, 10, 24, 22, 0);
            let mut fires = Vec::new();
            while t < at(2026, 10, 25, 3, 0) {
                t = quarter.next_after(t).unwrap();
                fires.push(t);
            }
            // 00:15 to 02:45 CEST (11 fires), then 03:00 to 04:00 CET (5): no local time
            // fires twice, every fire is a distinct instant.
            let mut unique = fires.clone();
            unique.dedup();
            assert_eq!(unique, fires);
            assert_eq!(fires.len(), 11 + 5);
        }

        // A 6-field schedule in a zone: seconds survive the jump's mapping.
        #[test]
        fn seconds_in_a_zone() {
            let s = paris("45 30 2 * * *");
            assert_eq!(
                s.next_after(at(2026, 1, 10, 12, 0)),
                Some(at_s(2026, 1, 11, 1, 30, 45))
            );
            assert_eq!(
                s.next_after(at(2026, 3, 28, 12, 0)),
                Some(at(2026, 3, 29, 1, 0))
            );
        }

        #[test]
        fn unknown_zones_are_typed_errors() {
            let e = Schedule::cron("0 2 * * *")
                .unwrap()
                .tz("Europe/Pariss")
                .unwrap_err();
            assert!(matches!(e, ScheduleError::TimeZone(_)));
            assert!(e.to_string().contains("unknown time zone `Europe/Pariss`"));
            // A stored name this build does not know: no fire, a reason, no panic.
            let s: Schedule = serde_json::from_value(
                serde_json::json!({"kind": "cron", "expr": "0 2 * * *", "tz": "Nowhere/At_All"}),
            )
            .unwrap();
            assert_eq!(s.next_after(at(2026, 1, 1, 0, 0)), None);
            assert!(s.unsupported().is_some());
            assert_eq!(
                Schedule::from_meta("0 2 * * *", Some("Europe/Paris"), Overlap::QueueOne).unwrap(),
                paris("0 2 * * *").overlap(Overlap::QueueOne)
            );
        }
    }
}
