//! The value of each argument key, parsed at expansion time into its final form: integers,
//! durations in milliseconds, backoffs and enums. The runtime gets plain literals and never
//! re-parses what the macro understood. A malformed value is reported (spanned at the
//! value) and gives `None`, so parsing goes on to the next key.

use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit};

use crate::attr::{lit_str, path_str, suggest};
use crate::ctxt::Ctxt;

/// `retries = 3` or `max_attempts = 4`: an integer literal from `min` to `max`.
pub(crate) fn int_in_range(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    min: u64,
    max: u64,
) -> syn::Result<Option<u32>> {
    let expr: Expr = meta.value()?.parse()?;
    let key = path_str(&meta.path);
    let bad = || format!("`{key}` must be an integer from {min} to {max}");
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => match i.base10_parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => return Ok(Some(n as u32)),
            Ok(n) => cx.error_spanned_by(i, format_args!("{}, got {n}", bad())),
            Err(_) => cx.error_spanned_by(i, bad()),
        },
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => {
            cx.error_spanned_by(&expr, format_args!("{}; it cannot be negative", bad()));
        }
        other => cx.error_spanned_by(other, format_args!("{}; write a number literal", bad())),
    }
    Ok(None)
}

/// `retry_on = [std::io::Error, MyError]`: a non-empty list of error type paths.
pub(crate) fn error_types(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
) -> syn::Result<Option<Vec<syn::Path>>> {
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Array(arr) => {
            let mut paths = Vec::new();
            for e in &arr.elems {
                match e {
                    Expr::Path(p) if p.qself.is_none() => paths.push(p.path.clone()),
                    Expr::Lit(ExprLit {
                        lit: Lit::Str(s), ..
                    }) => cx.error_spanned_by(
                        s,
                        format_args!(
                            "`retry_on` lists error types, not their names: write `{}` without quotes",
                            s.value()
                        ),
                    ),
                    other => cx.error_spanned_by(
                        other,
                        "`retry_on` lists error types, like `[std::io::Error, MyError]`",
                    ),
                }
            }
            if arr.elems.is_empty() {
                cx.error_spanned_by(
                    &arr,
                    "`retry_on` is empty: list at least one error type, or remove it to retry every error",
                );
            }
            Ok((paths.len() == arr.elems.len()).then_some(paths))
        }
        Expr::Path(p) => {
            cx.error_spanned_by(
                &p,
                format_args!(
                    "`retry_on` expects a list: write `retry_on = [{}]`",
                    path_str(&p.path)
                ),
            );
            Ok(None)
        }
        other => {
            cx.error_spanned_by(
                &other,
                "`retry_on` expects a list of error types, like `[std::io::Error, MyError]`",
            );
            Ok(None)
        }
    }
}

/// `retry_timeouts = false`: a boolean literal.
pub(crate) fn bool_lit(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<bool>> {
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(Some(b.value)),
        other => {
            cx.error_spanned_by(
                &other,
                format_args!("`{}` expects `true` or `false`", path_str(&meta.path)),
            );
            Ok(None)
        }
    }
}

/// `timeout = "30s"`: a duration greater than zero, in milliseconds.
pub(crate) fn timeout(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<u64>> {
    let expr: Expr = meta.value()?.parse()?;
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => match parse_duration(&s.value()) {
            Ok(0) => cx.error_spanned_by(
                s,
                "`timeout` must be greater than zero; remove it for no limit",
            ),
            Ok(ms) => return Ok(Some(ms)),
            Err(msg) => cx.error_spanned_by(s, format_args!("malformed `timeout`: {msg}")),
        },
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => cx.error_spanned_by(
            i,
            format_args!(
                "`timeout` needs a unit: write `timeout = \"{}s\"` or `\"{}ms\"`",
                i.base10_digits(),
                i.base10_digits()
            ),
        ),
        other => cx.error_spanned_by(
            other,
            "`timeout` expects a duration string such as `\"30s\"` or `\"250ms\"`",
        ),
    }
    Ok(None)
}

/// `backoff = "exponential(100ms, 5s)"`: see [`parse_backoff`].
pub(crate) fn backoff(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Backoff>> {
    let Some(s) = lit_str(cx, meta, "for example `\"exponential(100ms, 5s)\"`")? else {
        return Ok(None);
    };
    match parse_backoff(&s.value()) {
        Ok(b) => Ok(Some(b)),
        Err(msg) => {
            cx.error_spanned_by(&s, msg);
            Ok(None)
        }
    }
}

/// `schedule = "0 2 * * *"`: a cron expression (5 fields, or 6 with seconds first),
/// checked now so a typo fails the build instead of the first run.
pub(crate) fn schedule(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<String>> {
    let Some(s) = lit_str(
        cx,
        meta,
        "a cron expression such as `\"0 2 * * *\"` (or `\"30 0 2 * * *\"` with seconds first)",
    )?
    else {
        return Ok(None);
    };
    match procession_cron::check(&s.value()) {
        Ok(_) => Ok(Some(s.value())),
        Err(msg) => {
            cx.error_spanned_by(&s, format_args!("invalid `schedule`: {msg}"));
            Ok(None)
        }
    }
}

/// `tz = "Europe/Paris"`: the IANA time zone the schedule's fields are read in, checked
/// now with the same database the scheduler uses (the `tz` feature).
#[cfg(feature = "tz")]
pub(crate) fn tz(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<String>> {
    let Some(s) = lit_str(cx, meta, "an IANA time zone such as `\"Europe/Paris\"`")? else {
        return Ok(None);
    };
    let name = s.value();
    match procession_cron::check_tz(&name) {
        Ok(tz) => Ok(Some(tz.name().to_owned())),
        Err(msg) => {
            // A misspelling: the closest name, when one is close.
            let names: Vec<&str> = procession_cron::tz_names().collect();
            let msg = match suggest(&name, &names) {
                Some(near) if !msg.contains("did you mean") => {
                    format!("unknown time zone `{name}` (did you mean `{near}`?)")
                }
                _ => msg,
            };
            cx.error_spanned_by(&s, format_args!("invalid `tz`: {msg}"));
            Ok(None)
        }
    }
}

/// `tz = "..."` in a build without the `tz` feature: the zone database is not compiled
/// in, so the key is refused with the way to turn it on.
#[cfg(not(feature = "tz"))]
pub(crate) fn tz(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<String>> {
    if let Some(s) = lit_str(cx, meta, "an IANA time zone such as `\"Europe/Paris\"`")? {
        cx.error_spanned_by(
            &s,
            "named time zones need the `tz` feature of procession: `procession = { version = \"0.1\", features = [\"tz\"] }`; or give the schedule in UTC",
        );
    }
    Ok(None)
}

/// What a fire does while the previous run is active (`overlap = "..."`); the runtime's
/// `Overlap`.
#[derive(Clone, Copy)]
pub(crate) enum Overlap {
    /// `"skip"`, the default.
    Skip,
    /// `"queue_one"` (or `"queue-one"`).
    QueueOne,
    /// `"allow"`.
    Allow,
}

impl Overlap {
    pub(crate) fn parse(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Self>> {
        let Some(s) = lit_str(cx, meta, "`\"skip\"`, `\"queue_one\"` or `\"allow\"`")? else {
            return Ok(None);
        };
        let v = s.value();
        let value = match v.replace('-', "_").as_str() {
            "skip" => Self::Skip,
            "queue_one" => Self::QueueOne,
            "allow" => Self::Allow,
            other => {
                // Near misses, and the words other schedulers use for the same policies.
                let near = match other.to_ascii_lowercase().as_str() {
                    "forbid" | "skip_if_running" | "no_overlap" => Some("skip"),
                    "queue" | "queued" | "enqueue" | "buffer_one" => Some("queue_one"),
                    "concurrent" | "parallel" | "allow_concurrent" => Some("allow"),
                    _ => suggest(other, &["skip", "queue_one", "allow"]),
                };
                let hint = near
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                cx.error_spanned_by(
                    &s,
                    format_args!(
                        "unknown `overlap` value `{v}`{hint}; expected `\"skip\"`, `\"queue_one\"` or `\"allow\"`"
                    ),
                );
                return Ok(None);
            }
        };
        Ok(Some(value))
    }
}

/// What a task does when one of its dependencies failed (`on_dep_failure = "..."`); the
/// runtime's `OnDepFailure`.
#[derive(Clone, Copy, Default)]
pub(crate) enum OnDepFailure {
    /// `"fail"`.
    Fail,
    /// `"skip"`, the default.
    #[default]
    Skip,
    /// `"run_anyway"` (or `"run-anyway"`).
    RunAnyway,
}

impl OnDepFailure {
    pub(crate) fn parse(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Self>> {
        let Some(s) = lit_str(cx, meta, "`\"fail\"`, `\"skip\"` or `\"run_anyway\"`")? else {
            return Ok(None);
        };
        let v = s.value();
        let value = match v.replace('-', "_").as_str() {
            "fail" => Self::Fail,
            "skip" => Self::Skip,
            "run_anyway" => Self::RunAnyway,
            _ => {
                let hint = suggest(&v, &["fail", "skip", "run_anyway"])
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                cx.error_spanned_by(
                    &s,
                    format_args!(
                        "unknown `on_dep_failure` value `{v}`{hint}; expected `\"fail\"`, `\"skip\"` or `\"run_anyway\"`"
                    ),
                );
                return Ok(None);
            }
        };
        Ok(Some(value))
    }
}

/// How a process runs its top-level tasks (`mode = "..."`); the runtime's `Mode`.
#[derive(Clone, Copy, Default)]
pub(crate) enum Mode {
    /// `"dataflow"`, the default, or its synonym `"concurrent"`: a task starts when the
    /// tasks whose outputs it takes have ended.
    #[default]
    Dataflow,
    /// `"sequential"`: each top-level step waits for the previous one.
    Sequential,
}

impl Mode {
    pub(crate) fn parse(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Self>> {
        let Some(s) = lit_str(cx, meta, "`\"dataflow\"` (the default) or `\"sequential\"`")? else {
            return Ok(None);
        };
        let v = s.value();
        match v.as_str() {
            "dataflow" | "concurrent" => Ok(Some(Self::Dataflow)),
            "sequential" => Ok(Some(Self::Sequential)),
            other => {
                // Near misses, and the words other schedulers use for the same modes.
                let near = match other
                    .to_ascii_lowercase()
                    .replace(['-', '_', ' '], "")
                    .as_str()
                {
                    "parallel" | "concurrently" | "async" | "dag" | "data" | "dataflow" => {
                        Some("dataflow")
                    }
                    "serial" | "sequence" | "sequentially" | "sync" | "ordered" => {
                        Some("sequential")
                    }
                    _ => suggest(other, &["dataflow", "sequential", "concurrent"]),
                };
                let hint = near
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                cx.error_spanned_by(
                    &s,
                    format_args!(
                        "unknown `mode` value `{other}`{hint}; expected `\"dataflow\"` (the default: a task starts when the tasks whose outputs it takes have ended) or `\"sequential\"` (each step waits for the previous one)"
                    ),
                );
                Ok(None)
            }
        }
    }
}

/// Duration units, largest first, with their length in milliseconds.
const UNITS: [(&str, u128); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// The longest duration accepted, in milliseconds (about 31,700 years).
const MAX_MS: u128 = 1_000_000_000_000_000;

/// Parses a duration into milliseconds: one or more `<number><unit>` parts, largest unit
/// first, each unit once, optionally separated by spaces: `"250ms"`, `"30s"`, `"1.5m"`,
/// `"1m30s"`, `"1h 5m"`, `"2d"`. Units: `ms`, `s`, `m`, `h`, `d`. The total must be a
/// whole number of milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!(
            "`{t}` is negative; a duration is a positive number with a unit, for example `\"30s\"`"
        ));
    }
    if t.is_empty() {
        return Err("the duration is empty; write for example `\"30s\"` or `\"1m30s\"`".into());
    }
    let mut rest = t;
    let mut total: u128 = 0;
    let mut previous: Option<usize> = None;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        if num.is_empty() {
            return Err(if rest.len() == t.len() {
                format!("`{t}` does not start with a number; write for example `\"30s\"` or `\"250ms\"`")
            } else {
                format!("expected a number at `{rest}` in `{t}`; write the parts as `<number><unit>`, for example `\"1m30s\"`")
            });
        }
        let after = after.trim_start();
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        if unit.is_empty() {
            return Err(if num.len() == t.len() {
                format!("`{t}` has no unit; write it with one of `ms`, `s`, `m`, `h`, `d` (for example `\"{t}s\"`)")
            } else {
                format!("`{num}` in `{t}` has no unit; give every part one of `ms`, `s`, `m`, `h`, `d` (for example `\"1m30s\"`)")
            });
        }
        let Some(rank) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!(
                "unknown unit `{unit}` in `{t}`; use `ms`, `s`, `m`, `h` or `d`"
            ));
        };
        if let Some(p) = previous.filter(|p| rank <= *p) {
            let what = if rank == p {
                format!("repeats the unit `{unit}`")
            } else {
                format!("puts `{unit}` after the smaller unit `{}`", UNITS[p].0)
            };
            return Err(format!(
                "`{t}` {what}; write the parts from the largest unit to the smallest, each once, for example `\"1h30m\"`"
            ));
        }
        previous = Some(rank);
        total = part_ms(num, UNITS[rank].1, t)?
            .checked_add(total)
            .filter(|ms| *ms <= MAX_MS)
            .ok_or_else(|| format!("`{t}` is too long"))?;
        rest = after.trim_start();
    }
    Ok(total as u64)
}

/// `num` (digits with at most one `.`) times `factor` milliseconds, exactly.
fn part_ms(num: &str, factor: u128, whole: &str) -> Result<u128, String> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') || int.is_empty() && frac.is_empty() {
        return Err(format!("`{num}` is not a number"));
    }
    let too_long = || format!("`{whole}` is too long");
    let digits = |d: &str| -> Result<u128, String> {
        if d.is_empty() {
            Ok(0)
        } else if d.len() > 20 {
            Err(too_long())
        } else {
            d.parse::<u128>()
                .map_err(|_| format!("`{num}` is not a number"))
        }
    };
    let int_ms = digits(int)?.checked_mul(factor).ok_or_else(too_long)?;
    let scale = 10u128.pow(frac.len().min(20) as u32);
    let frac_ms = digits(frac)?.checked_mul(factor).ok_or_else(too_long)?;
    if frac_ms % scale != 0 {
        return Err(format!("`{whole}` is not a whole number of milliseconds"));
    }
    int_ms.checked_add(frac_ms / scale).ok_or_else(too_long)
}

/// A backoff as written in `backoff = "..."`.
#[derive(Debug)]
pub(crate) enum Backoff {
    None,
    Fixed {
        ms: u64,
        jitter: bool,
    },
    Linear {
        base: u64,
        cap: Option<u64>,
        jitter: bool,
    },
    Exponential {
        base: u64,
        cap: Option<u64>,
        jitter: bool,
    },
}

const BACKOFF_FORMS: &str = "`\"none\"`, `\"fixed(1s)\"`, `\"linear(100ms)\"`, `\"linear(100ms, 5s)\"`, `\"exponential(100ms, 30s)\"`, optionally ending with `, jitter` inside the parentheses";

/// Parses `none`, `fixed(d)`, `linear(base[, cap])`, `exponential(base[, cap])`, each
/// with an optional trailing `jitter` argument.
pub(crate) fn parse_backoff(text: &str) -> Result<Backoff, String> {
    let t = text.trim();
    if t == "none" {
        return Ok(Backoff::None);
    }
    let (kind, rest) = t
        .split_once('(')
        .ok_or_else(|| format!("malformed backoff `{t}`; expected one of {BACKOFF_FORMS}"))?;
    let inner = rest.strip_suffix(')').ok_or_else(|| {
        format!("malformed backoff `{t}`: missing `)`; expected one of {BACKOFF_FORMS}")
    })?;
    let mut args: Vec<&str> = inner.split(',').map(str::trim).collect();
    let jitter = args.last() == Some(&"jitter");
    if jitter {
        args.pop();
    }
    let durations: Vec<u64> = args
        .iter()
        .map(|a| parse_duration(a))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("malformed backoff `{t}`: {e}"))?;
    let kind = kind.trim();
    let check_cap = |base: u64, cap: Option<u64>| -> Result<(), String> {
        match cap {
            Some(c) if c < base => Err(format!(
                "malformed backoff `{t}`: the cap is smaller than the base delay"
            )),
            _ => Ok(()),
        }
    };
    match (kind, durations.as_slice()) {
        ("fixed", [ms]) => Ok(Backoff::Fixed { ms: *ms, jitter }),
        ("linear", [base]) => Ok(Backoff::Linear {
            base: *base,
            cap: None,
            jitter,
        }),
        ("linear", [base, cap]) => {
            check_cap(*base, Some(*cap))?;
            Ok(Backoff::Linear {
                base: *base,
                cap: Some(*cap),
                jitter,
            })
        }
        ("exponential", [base]) => Ok(Backoff::Exponential {
            base: *base,
            cap: None,
            jitter,
        }),
        ("exponential", [base, cap]) => {
            check_cap(*base, Some(*cap))?;
            Ok(Backoff::Exponential {
                base: *base,
                cap: Some(*cap),
                jitter,
            })
        }
        ("fixed" | "linear" | "exponential", _) => Err(format!(
            "malformed backoff `{t}`: wrong number of arguments; expected one of {BACKOFF_FORMS}"
        )),
        (other, _) => {
            let hint = suggest(other, &["none", "fixed", "linear", "exponential"])
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            Err(format!(
                "unknown backoff `{other}`{hint}; expected one of {BACKOFF_FORMS}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("1.5m"), Ok(90_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("30 days")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("0.5ms").is_err());
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert_eq!(parse_duration("30 s"), Ok(30_000));
        assert_eq!(parse_duration("2d"), Ok(172_800_000));
        assert_eq!(parse_duration("0.001s"), Ok(1));
    }

    // Compound durations (issue 12, point 8): largest unit first, each once.
    #[test]
    fn compound_durations() {
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("1h 5m"), Ok(3_900_000));
        assert_eq!(parse_duration("1h5m30s250ms"), Ok(3_930_250));
        assert_eq!(parse_duration(" 1d 2h "), Ok(93_600_000));
        assert_eq!(parse_duration("1.5h 30m"), Ok(7_200_000));
        assert!(parse_duration("1m30")
            .unwrap_err()
            .contains("`30` in `1m30` has no unit"));
        assert!(parse_duration("30s1m")
            .unwrap_err()
            .contains("puts `m` after the smaller unit `s`"));
        assert!(parse_duration("1s 1s")
            .unwrap_err()
            .contains("repeats the unit `s`"));
        assert!(parse_duration("1m30x")
            .unwrap_err()
            .contains("unknown unit `x`"));
        assert!(parse_duration("1m, 30s")
            .unwrap_err()
            .contains("expected a number at `, 30s`"));
        assert!(parse_duration("1.2.3s")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("99999999999999999999999d")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_duration("400000000d")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn backoffs() {
        assert!(matches!(parse_backoff("none"), Ok(Backoff::None)));
        assert!(matches!(
            parse_backoff("exponential(100ms, 5s, jitter)"),
            Ok(Backoff::Exponential {
                base: 100,
                cap: Some(5000),
                jitter: true
            })
        ));
        assert!(matches!(
            parse_backoff("linear(1s)"),
            Ok(Backoff::Linear {
                base: 1000,
                cap: None,
                jitter: false
            })
        ));
        assert!(parse_backoff("exponentail(1s)")
            .unwrap_err()
            .contains("did you mean `exponential`"));
        assert!(parse_backoff("linear(5s, 1s)").unwrap_err().contains("cap"));
        assert!(parse_backoff("linear(1s")
            .unwrap_err()
            .contains("missing `)`"));
    }
}
