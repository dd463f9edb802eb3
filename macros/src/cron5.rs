//! Standard 5-field cron, checked with the `cron` crate.
//!
//! The `cron` crate wants a seconds field and numbers weekdays 1-7 from Sunday; standard
//! cron numbers them 0-7 with both 0 and 7 meaning Sunday. The weekday field is expanded
//! to an explicit list and renumbered, the rest is passed through.

use std::str::FromStr;

const NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn day(token: &str) -> Result<u32, String> {
    let t = token.to_ascii_lowercase();
    if let Some(i) = NAMES.iter().position(|n| *n == t) {
        return Ok(i as u32);
    }
    match t.parse::<u32>() {
        Ok(n) if n <= 7 => Ok(n % 7),
        Ok(n) => Err(format!("day of week `{n}` is out of range 0-7")),
        Err(_) => Err(format!("`{token}` is not a day of week (0-7 or SUN-SAT)")),
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
                    .map_err(|_| format!("step `{s}` is not a number"))?;
                if s == 0 {
                    return Err("a step of 0 never advances".into());
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
                return Err(format!("reversed range `{range}` in day of week"));
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

/// Checks a 5-field expression (or an `@daily`-style alias); returns the `cron` crate form.
pub(crate) fn check(expr: &str) -> Result<String, String> {
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
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "a cron schedule has 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        ));
    }
    for f in &fields[..4] {
        if f.contains("/0") {
            return Err(format!("step of 0 in `{f}` never advances"));
        }
    }
    let dow = weekdays(fields[4]).map_err(|e| format!("in day-of-week `{}`: {e}", fields[4]))?;
    let full = format!(
        "0 {} {} {} {} {}",
        fields[0], fields[1], fields[2], fields[3], dow
    );
    cron::Schedule::from_str(&full)
        .map(|_| full.clone())
        .map_err(|e| format!("invalid cron schedule `{expr}`: {e}"))
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
        assert!(check("60 * * * *").is_err());
        assert!(check("*/0 * * * *").is_err());
        assert!(check("0 0 * * * *").is_err());
        assert!(check("@hourlyy").is_err());
    }
}
