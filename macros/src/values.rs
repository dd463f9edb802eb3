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
    /// `"sequential"`, the default.
    #[default]
    Sequential,
    /// `"concurrent"`.
    Concurrent,
}

impl Mode {
    pub(crate) fn parse(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Self>> {
        let Some(s) = lit_str(cx, meta, "`\"sequential\"` or `\"concurrent\"`")? else {
            return Ok(None);
        };
        let v = s.value();
        match v.as_str() {
            "sequential" => Ok(Some(Self::Sequential)),
            "concurrent" => Ok(Some(Self::Concurrent)),
            other => {
                // Near misses, and the words other schedulers use for the same modes.
                let near = match other.to_ascii_lowercase().as_str() {
                    "parallel" | "concurrently" | "async" => Some("concurrent"),
                    "serial" | "sequence" | "sequentially" | "sync" => Some("sequential"),
                    _ => suggest(other, &["sequential", "concurrent"]),
                };
                let hint = near
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                cx.error_spanned_by(
                    &s,
                    format_args!(
                        "unknown `mode` value `{other}`{hint}; expected `\"sequential\"` or `\"concurrent\"`"
                    ),
                );
                Ok(None)
            }
        }
    }
}

/// Parses a duration such as `"250ms"`, `"30s"`, `"1.5m"` or `"2h"` into milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(format!(
            "`{t}` is negative; a duration is a positive number with a unit, for example `\"30s\"`"
        ));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{t}` has no unit; write it with one of `ms`, `s`, `m`, `h` (for example `\"{t}s\"`)"))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{t}` does not start with a number; write for example `\"30s\"` or `\"250ms\"`"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{num}` is not a number"))?;
    let factor = match unit.trim() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{t}`; use `ms`, `s`, `m` or `h`"
            ))
        }
    };
    let ms = value * factor;
    if ms.fract() != 0.0 {
        return Err(format!("`{t}` is not a whole number of milliseconds"));
    }
    if ms > 1e15 {
        return Err(format!("`{t}` is too long"));
    }
    Ok(ms as u64)
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
