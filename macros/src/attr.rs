//! Values shared by both attributes: durations, backoff, keys and near-miss suggestions.

use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit, LitStr};

use crate::ctxt::Ctxt;

/// A value set by an attribute key.
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
}

/// Stores `value` in `slot`, or reports the key as a duplicate.
pub(crate) fn set_once<T>(cx: &Ctxt, slot: &mut Option<Spanned<T>>, key: &syn::Path, value: T) {
    if slot.is_some() {
        cx.error_spanned_by(key, format_args!("duplicate `{}` argument", path_str(key)));
    } else {
        *slot = Some(Spanned { value });
    }
}

pub(crate) fn path_str(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// Consumes the value of a key we do not know, so parsing can go on to the next key.
pub(crate) fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|m| skip_value(&m))?;
    }
    Ok(())
}

/// The error for an unknown key: lists the valid keys and suggests the nearest.
pub(crate) fn unknown_key(cx: &Ctxt, attr: &str, key: &syn::Path, valid: &[&str]) {
    let name = path_str(key);
    let list = valid
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let msg = match suggest(&name, valid) {
        Some(near) => format!("unknown `#[{attr}]` argument `{name}`; did you mean `{near}`? valid arguments are {list}"),
        None => format!("unknown `#[{attr}]` argument `{name}`; valid arguments are {list}"),
    };
    cx.error_spanned_by(key, msg);
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_l = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (levenshtein(&word_l, c), *c))
        .filter(|(d, c)| {
            *d <= (c.len().max(word_l.len()) / 3).max(1)
                || c.starts_with(&word_l) && word_l.len() >= 3
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses the value of `key = "..."` as a string literal.
pub(crate) fn lit_str(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    what: &str,
) -> syn::Result<Option<LitStr>> {
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(Some(s)),
        other => {
            cx.error_spanned_by(
                &other,
                format_args!(
                    "`{}` expects a string literal: {what}",
                    path_str(&meta.path)
                ),
            );
            Ok(None)
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

/// How an item that is not a function is called in "can only be applied to" errors.
pub(crate) fn item_kind(item: &syn::Item) -> &'static str {
    match item {
        syn::Item::Struct(_) => "a struct",
        syn::Item::Enum(_) => "an enum",
        syn::Item::Union(_) => "a union",
        syn::Item::Impl(_) => "an impl block",
        syn::Item::Mod(_) => "a module",
        syn::Item::Trait(_) => "a trait",
        syn::Item::Const(_) => "a const",
        syn::Item::Static(_) => "a static",
        syn::Item::Type(_) => "a type alias",
        syn::Item::Use(_) => "a use declaration",
        syn::Item::ForeignMod(_) => "an extern block",
        syn::Item::Macro(_) => "a macro invocation",
        _ => "this item",
    }
}

/// The keyword and name of an item (`struct Fetch`, `const LIMIT`): where an error about
/// the item as a whole points, instead of at its whole body.
pub(crate) fn item_head(item: &syn::Item) -> proc_macro2::TokenStream {
    use quote::quote;
    match item {
        syn::Item::Struct(s) => {
            let (k, i) = (&s.struct_token, &s.ident);
            quote!(#k #i)
        }
        syn::Item::Enum(e) => {
            let (k, i) = (&e.enum_token, &e.ident);
            quote!(#k #i)
        }
        syn::Item::Union(u) => {
            let (k, i) = (&u.union_token, &u.ident);
            quote!(#k #i)
        }
        syn::Item::Mod(m) => {
            let (k, i) = (&m.mod_token, &m.ident);
            quote!(#k #i)
        }
        syn::Item::Trait(t) => {
            let (k, i) = (&t.trait_token, &t.ident);
            quote!(#k #i)
        }
        syn::Item::Const(c) => {
            let (k, i) = (&c.const_token, &c.ident);
            quote!(#k #i)
        }
        syn::Item::Static(s) => {
            let (k, i) = (&s.static_token, &s.ident);
            quote!(#k #i)
        }
        syn::Item::Type(t) => {
            let (k, i) = (&t.type_token, &t.ident);
            quote!(#k #i)
        }
        syn::Item::Impl(i) => {
            let k = &i.impl_token;
            quote!(#k)
        }
        syn::Item::Use(u) => {
            let k = &u.use_token;
            quote!(#k)
        }
        other => quote!(#other),
    }
}

/// `tokens` with every span set to `span`, so an error about them points at the user's code.
pub(crate) fn respan(
    tokens: proc_macro2::TokenStream,
    span: proc_macro2::Span,
) -> proc_macro2::TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut ng = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                ng.set_span(span);
                tt = proc_macro2::TokenTree::Group(ng);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

/// `before ty after`, with `before` spanned at the first token of `ty` and `after` at its
/// last: rustc then points a bound that fails at the whole type (`Vec<Order>`), not at our
/// macro and not at its first token only (stable Rust cannot join spans).
pub(crate) fn around(
    ty: &impl quote::ToTokens,
    before: proc_macro2::TokenStream,
    after: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    around_at(ty, before, ty, after)
}

/// `before middle after`, spanned so that rustc reports the whole at `at`.
pub(crate) fn around_at(
    at: &impl quote::ToTokens,
    before: proc_macro2::TokenStream,
    middle: &impl quote::ToTokens,
    after: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let mut iter = at.to_token_stream().into_iter();
    let first = iter
        .next()
        .map_or_else(proc_macro2::Span::call_site, |t| t.span());
    let last = iter.last().map_or(first, |t| t.span());
    let before = respan(before, first);
    let after = respan(after, last);
    quote::quote!(#before #middle #after)
}

/// `CamelCase` of a `snake_case` identifier.
pub(crate) fn camel(name: &str) -> String {
    let mut out = String::new();
    for part in name
        .trim_start_matches("r#")
        .split('_')
        .filter(|p| !p.is_empty())
    {
        let mut cs = part.chars();
        if let Some(c) = cs.next() {
            out.extend(c.to_uppercase());
            out.push_str(cs.as_str());
        }
    }
    if out.is_empty() {
        out.push_str("Task");
    }
    out
}

/// The first paragraph of the doc comments among `attrs`.
pub(crate) fn doc_summary(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for a in attrs {
        if !a.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &a.meta {
            if let Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) = &nv.value
            {
                lines.push(s.value());
            }
        }
    }
    let mut para = Vec::new();
    for l in lines.iter().flat_map(|l| l.split('\n')) {
        let l = l.trim();
        if l.is_empty() {
            if para.is_empty() {
                continue;
            }
            break;
        }
        para.push(l);
    }
    para.join(" ")
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

    #[test]
    fn names() {
        assert_eq!(camel("fetch_orders"), "FetchOrders");
        assert_eq!(camel("a"), "A");
        assert_eq!(suggest("retrys", &["retries", "timeout"]), Some("retries"));
        assert_eq!(suggest("zzz", &["retries", "timeout"]), None);
    }
}
