//! Implementation detail of `procession`: cron expressions, checked with the `cron`
//! crate at compile time (by `#[process(schedule = ...)]`) and at run time (by the
//! scheduler), so both accept exactly the same expressions.
//!
//! Two forms are accepted: standard 5-field cron (`minute hour day-of-month month
//! day-of-week`, fires at second 0) and 6-field cron with seconds first (`second minute
//! hour day-of-month month day-of-week`, as tokio-cron-scheduler and the `cron` crate
//! write it). In both, the weekday field follows standard cron: 0-7 with both 0 and 7
//! meaning Sunday, or `SUN`-`SAT`.
//!
//! The `cron` crate numbers weekdays 1-7 from Sunday: the weekday field is expanded to an
//! explicit list and renumbered, the rest is passed through.
//!
//! With the `tz` feature, [`check_tz`] checks an IANA time zone name (`Europe/Paris`)
//! with `chrono-tz`.

#![forbid(unsafe_code)]

use std::str::FromStr;

const NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn day(token: &str) -> Result<u32, String> {
    let t = token.to_ascii_lowercase();
    if let Some(i) = NAMES.iter().position(|n| *n == t) {
        return Ok(i as u32);
    }
    match t.parse::<u32>() {
        Ok(n) if n <= 7 => Ok(n % 7),
        Ok(n) => Err(format!("day-of-week `{n}` is out of range 0-7")),
        Err(_) => Err(format!("`{token}` is not a day-of-week (0-7 or SUN-SAT)")),
    }
}

/// The standard weekday field as the `cron` crate's weekday field.
fn weekdays(field: &str) -> Result<String, String> {
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s
                    .parse()
                    .map_err(|_| format!("day-of-week step `{s}` is not a number"))?;
                if s == 0 {
                    return Err(format!(
                        "day-of-week `{item}` has a step of 0, which never advances"
                    ));
                }
                (r, s)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (
                day(a)?,
                b.parse::<u32>()
                    .map_or_else(|_| day(b), |n| if n == 7 { Ok(7) } else { day(b) })?,
            );
            if a > b {
                return Err(format!(
                    "day-of-week range `{range}` is reversed; write the earlier day first"
                ));
            }
            (a, b)
        } else {
            let a = day(range)?;
            (a, if item.contains('/') { 6 } else { a })
        };
        let mut d = lo;
        while d <= hi {
            days[(d % 7) as usize] = true;
            d += step;
        }
    }
    if days.iter().all(|d| *d) {
        return Ok("*".into());
    }
    Ok(days
        .iter()
        .enumerate()
        .filter(|(_, on)| **on)
        .map(|(i, _)| (i + 1).to_string())
        .collect::<Vec<_>>()
        .join(","))
}

/// One of the first four fields: its name, its range and the names it accepts.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};

const FIELDS: [Field; 4] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
];

impl Field {
    fn value(&self, token: &str) -> Result<u32, String> {
        let lower = token.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(self.min + i as u32);
        }
        let (name, min, max) = (self.name, self.min, self.max);
        match token.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(n) => Err(format!("{name} `{n}` is out of range {min}-{max}")),
            Err(_) if self.names.is_empty() => {
                Err(format!("`{token}` is not a {name} ({min}-{max})"))
            }
            Err(_) => Err(format!(
                "`{token}` is not a {name} ({min}-{max} or JAN-DEC)"
            )),
        }
    }

    /// Checks one field: a list of `*`, `a` or `a-b`, each with an optional `/step`.
    fn check(&self, text: &str) -> Result<(), String> {
        let name = self.name;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(format!("{name} `{text}` has an empty list item"));
            }
            let range = match item.split_once('/') {
                Some((range, step)) => {
                    let step: u32 = step
                        .parse()
                        .map_err(|_| format!("{name} step `{step}` is not a number"))?;
                    if step == 0 {
                        return Err(format!(
                            "{name} `{item}` has a step of 0, which never advances"
                        ));
                    }
                    range
                }
                None => item,
            };
            if range == "*" || (range == "?" && name == "day-of-month") {
                continue;
            }
            if let Some((a, b)) = range.split_once('-') {
                if self.value(a)? > self.value(b)? {
                    return Err(format!(
                        "{name} range `{range}` is reversed; write the smaller value first"
                    ));
                }
            } else {
                self.value(range)?;
            }
        }
        Ok(())
    }
}

/// Checks a 5-field expression, a 6-field one (seconds first) or an `@daily`-style
/// alias; returns the `cron` crate form (always with a seconds field).
pub fn check(expr: &str) -> Result<String, String> {
    let expr = expr.trim();
    if expr.starts_with('@') {
        let known = [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@hourly",
        ];
        if !known.contains(&expr) {
            return Err(format!(
                "unknown schedule alias `{expr}`; known aliases are {}",
                known.join(", ")
            ));
        }
        return cron::Schedule::from_str(expr)
            .map(|_| expr.to_owned())
            .map_err(|e| e.to_string());
    }
    let all: Vec<&str> = expr.split_whitespace().collect();
    let (second, fields) = match all.len() {
        5 => ("0", all.as_slice()),
        6 => {
            SECOND.check(all[0])?;
            (all[0], &all[1..])
        }
        n => {
            let hint = if n == 7 {
                "; a year field is not supported"
            } else {
                ""
            };
            return Err(format!(
                "a cron schedule has 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first (second minute hour day-of-month month day-of-week), found {n}{hint}"
            ));
        }
    };
    for (field, text) in FIELDS.iter().zip(fields) {
        field.check(text)?;
    }
    let dow = weekdays(fields[4])?;
    let full = format!(
        "{second} {} {} {} {} {dow}",
        fields[0], fields[1], fields[2], fields[3]
    );
    let form = if all.len() == 6 {
        "second minute hour day-of-month month day-of-week"
    } else {
        "minute hour day-of-month month day-of-week"
    };
    cron::Schedule::from_str(&full)
        .map(|_| full.clone())
        // The crate's error only repeats its own 6-field form of the expression.
        .map_err(|_| format!("`{expr}` is not a valid schedule ({form})"))
}

/// Every IANA time zone name this build knows.
#[cfg(feature = "tz")]
pub fn tz_names() -> impl Iterator<Item = &'static str> {
    chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())
}

/// Checks an IANA time zone name (`Europe/Paris`, `America/New_York`, `UTC`).
///
/// The message of a refusal names a zone that differs only in case, or whose last part
/// is the name given (`Paris` → `Europe/Paris`), when there is one.
#[cfg(feature = "tz")]
pub fn check_tz(name: &str) -> Result<chrono_tz::Tz, String> {
    if let Ok(tz) = name.parse::<chrono_tz::Tz>() {
        return Ok(tz);
    }
    let near = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| tz.name())
        .find(|known| {
            known.eq_ignore_ascii_case(name)
                || known
                    .rsplit('/')
                    .next()
                    .is_some_and(|city| city.eq_ignore_ascii_case(&name.replace(' ', "_")))
        });
    Err(match near {
        Some(known) => format!("unknown time zone `{name}` (did you mean `{known}`?)"),
        None => format!(
            "unknown time zone `{name}`; use an IANA name such as `Europe/Paris`, `America/New_York` or `UTC`"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_are_renumbered() {
        assert_eq!(weekdays("0").unwrap(), "1");
        assert_eq!(weekdays("7").unwrap(), "1");
        assert_eq!(weekdays("1-5").unwrap(), "2,3,4,5,6");
        assert_eq!(weekdays("5-7").unwrap(), "1,6,7");
        assert_eq!(weekdays("*").unwrap(), "*");
        assert_eq!(weekdays("*/2").unwrap(), "1,3,5,7");
        assert_eq!(weekdays("MON,fri").unwrap(), "2,6");
        assert!(weekdays("5-1").is_err());
        assert!(weekdays("8").is_err());
        assert!(weekdays("*/0").is_err());
    }

    #[test]
    fn checks() {
        assert!(check("0 2 * * *").is_ok());
        assert!(check("*/15 9-17 * * 1-5").is_ok());
        assert!(check("@daily").is_ok());
        assert!(check("* * *").unwrap_err().contains("5 fields"));
        assert!(check("*/05 * * * *").is_ok());
        assert!(check("0 0 1,15 JAN-mar ?").is_err());
        assert!(check("0 0 ? jan-MAR *").is_ok());
        assert_eq!(
            check("60 * * * *").unwrap_err(),
            "minute `60` is out of range 0-59"
        );
        assert!(check("0 24 * * *").unwrap_err().contains("hour `24`"));
        assert!(check("0 0 0 * *").unwrap_err().contains("day-of-month `0`"));
        assert!(check("0 0 * 13 *").unwrap_err().contains("month `13`"));
        assert!(check("0 0 * FOO *").unwrap_err().contains("JAN-DEC"));
        assert!(check("30-10 * * * *").unwrap_err().contains("reversed"));
        assert!(check("0 9 * * 5-1").unwrap_err().contains("reversed"));
        assert!(check("*/0 * * * *").unwrap_err().contains("step of 0"));
        assert!(check("@hourlyy").is_err());
    }

    // Six fields: seconds first, as tokio-cron-scheduler and the `cron` crate write them.
    #[test]
    fn six_fields_put_seconds_first() {
        assert_eq!(check("30 15 3 * * *").unwrap(), "30 15 3 * * *");
        assert_eq!(check("*/10 * * * * 1-5").unwrap(), "*/10 * * * * 2,3,4,5,6");
        assert_eq!(check("0 2 * * *").unwrap(), "0 0 2 * * *");
        assert_eq!(
            check("60 * * * * *").unwrap_err(),
            "second `60` is out of range 0-59"
        );
        assert!(check("*/0 * * * * *").unwrap_err().contains("step of 0"));
        assert!(check("0 60 * * * *").unwrap_err().contains("minute `60`"));
        let seven = check("0 0 0 * * * 2026").unwrap_err();
        assert!(
            seven.contains("5 fields") && seven.contains("year"),
            "{seven}"
        );
        assert!(check("* * * *")
            .unwrap_err()
            .contains("6 with seconds first"));
    }

    #[cfg(feature = "tz")]
    #[test]
    fn time_zones() {
        assert_eq!(check_tz("Europe/Paris").unwrap().name(), "Europe/Paris");
        assert!(check_tz("UTC").is_ok());
        assert_eq!(
            check_tz("europe/paris").unwrap_err(),
            "unknown time zone `europe/paris` (did you mean `Europe/Paris`?)"
        );
        assert!(check_tz("New York")
            .unwrap_err()
            .contains("America/New_York"));
        assert!(check_tz("Mars/Olympus").unwrap_err().contains("IANA"));
    }
}
