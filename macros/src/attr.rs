//! Attribute syntax shared by `#[task]` and `#[process]`: the key tables, the shared keys
//! (`name`, `description`, `crate`), duplicate detection and unknown-key suggestions.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit, LitStr};

use crate::ctxt::Ctxt;

/// Every key `#[task]` accepts, with its form (shown when the value is missing). Each has
/// a row in the key table of `doc/task.md` (a test checks it).
pub(crate) const TASK_KEYS: &[(&str, &str)] = &[
    ("name", r#"name = "stable_name""#),
    ("description", r#"description = "text""#),
    ("retries", "retries = 3"),           // 0..=1000
    ("max_attempts", "max_attempts = 4"), // 1..=1001, not with `retries`
    ("retry_on", "retry_on = [std::io::Error]"),
    ("retry_timeouts", "retry_timeouts = false"),
    ("backoff", r#"backoff = "exponential(100ms, 5s)""#), // see `values::parse_backoff`
    ("timeout", r#"timeout = "30s""#),                    // see `values::parse_duration`
    ("on_dep_failure", r#"on_dep_failure = "skip""#),     // "fail" | "skip" | "run_anyway"
    ("optional", "optional"), // or `optional = true`: its failure does not fail the run
    ("crate", r#"crate = "path::to::procession""#),
];

/// Every key `#[process]` accepts, with its form (shown when the value is missing). Each
/// has a row in the key table of `doc/process.md` (a test checks it).
pub(crate) const PROCESS_KEYS: &[(&str, &str)] = &[
    ("name", r#"name = "stable_name""#),
    ("description", r#"description = "text""#),
    ("schedule", r#"schedule = "0 2 * * *""#), // 5 fields, or 6 with seconds first
    ("tz", r#"tz = "Europe/Paris""#),          // IANA zone of `schedule`; `tz` feature
    ("overlap", r#"overlap = "queue_one""#),   // "skip" | "queue_one" | "allow"
    ("mode", r#"mode = "sequential""#),        // "dataflow" (default) | "sequential"
    ("hooks", "hooks = MyHooks"),              // a type implementing `Hooks + Default`
    ("crate", r#"crate = "path::to::procession""#),
];

/// A value set by an attribute key, with the span of that key.
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    /// The key (`timeout` in `timeout = "30s"`): where an error about the setting points.
    pub(crate) span: Span,
}

/// Stores `value` in `slot`, or reports the key as a duplicate. A `None` value (already
/// reported as malformed) leaves the slot as it is.
pub(crate) fn set_once<T>(
    cx: &Ctxt,
    slot: &mut Option<Spanned<T>>,
    key: &syn::Path,
    value: Option<T>,
) {
    let Some(value) = value else { return };
    if slot.is_some() {
        cx.error_spanned_by(key, format_args!("duplicate `{}` argument", path_str(key)));
    } else {
        *slot = Some(Spanned {
            value,
            span: syn::spanned::Spanned::span(key),
        });
    }
}

/// The keys both attributes accept: `name`, `description` and `crate`.
#[derive(Default)]
pub(crate) struct CommonAttrs {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) description: Option<Spanned<String>>,
    pub(crate) krate: Option<Spanned<syn::Path>>,
}

impl CommonAttrs {
    /// Parses `meta` when `key` (its path) is a shared one and returns `true`; returns
    /// `false` for any other key. `what` is `task` or `process`, for the messages.
    pub(crate) fn parse_key(
        &mut self,
        cx: &Ctxt,
        meta: &ParseNestedMeta<'_>,
        key: &str,
        what: &str,
    ) -> syn::Result<bool> {
        if key == "name" {
            if let Some(s) = lit_str(cx, meta, &format!("the {what}'s stable name"))? {
                let v = s.value();
                if v.trim().is_empty() {
                    cx.error_spanned_by(&s, "`name` cannot be empty");
                }
                set_once(cx, &mut self.name, &meta.path, Some(v));
            }
        } else if key == "description" {
            if let Some(s) = lit_str(cx, meta, &format!("the {what}'s description"))? {
                set_once(cx, &mut self.description, &meta.path, Some(s.value()));
            }
        } else if key == "crate" {
            if let Some(s) = lit_str(cx, meta, "the path procession is reachable at")? {
                match s.parse::<syn::Path>() {
                    Ok(p) => set_once(cx, &mut self.krate, &meta.path, Some(p)),
                    Err(_) => {
                        cx.error_spanned_by(
                            &s,
                            "`crate` expects a path such as `\"::procession\"`",
                        );
                    }
                }
            }
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// The path generated code reaches procession at: `crate = "..."` or `::procession`.
    pub(crate) fn krate(&self) -> syn::Path {
        self.krate
            .as_ref()
            .map_or_else(|| syn::parse_quote!(::procession), |k| k.value.clone())
    }

    /// The stable name: `name = "..."`, or the function's name without `r#`.
    pub(crate) fn name_or(&self, ident: &syn::Ident) -> String {
        self.name.as_ref().map_or_else(
            || ident.to_string().trim_start_matches("r#").to_owned(),
            |n| n.value.clone(),
        )
    }

    /// The description: `description = "..."`, or the first paragraph of the doc comment.
    pub(crate) fn description_or_doc(&self, attrs: &[syn::Attribute]) -> String {
        self.description
            .as_ref()
            .map_or_else(|| doc_summary(attrs), |d| d.value.clone())
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

/// Reports a known key written without `= value` (`#[task(retries)]`) at the key, with
/// the key's form, and consumes whatever follows it. Returns `true` when it did.
pub(crate) fn missing_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    key: &str,
    keys: &[(&str, &str)],
) -> syn::Result<bool> {
    let Some((_, form)) = keys.iter().find(|(k, _)| *k == key) else {
        return Ok(false);
    };
    let input = meta.input;
    if !(input.is_empty() || input.peek(syn::Token![,]) || input.peek(syn::token::Paren)) {
        // `=` (the normal case), or a token syn reports better itself (`retries: 3`).
        return Ok(false);
    }
    cx.error_spanned_by(&meta.path, format_args!("`{key}` needs a value: `{form}`"));
    if input.peek(syn::token::Paren) {
        input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(true)
}

/// The error for an unknown key: lists the valid keys and suggests the nearest.
pub(crate) fn unknown_key(cx: &Ctxt, attr: &str, key: &syn::Path, keys: &[(&str, &str)]) {
    let name = path_str(key);
    let valid: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
    let list = valid
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let msg = match suggest(&name, &valid) {
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

/// The first paragraph of the doc comments among `attrs`.
fn doc_summary(attrs: &[syn::Attribute]) -> String {
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

    // Issue 12 (8): the macros' docs list every key (users should not have to find them
    // in an error message).
    #[test]
    fn every_key_is_documented() {
        for (doc, keys) in [
            (include_str!("../doc/task.md"), TASK_KEYS),
            (include_str!("../doc/process.md"), PROCESS_KEYS),
        ] {
            for (key, _) in keys {
                assert!(
                    doc.contains(&format!("\n| `{key}` |")),
                    "`{key}` has no row in the key table of the macro's docs"
                );
            }
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("retrys", &["retries", "timeout"]), Some("retries"));
        assert_eq!(suggest("zzz", &["retries", "timeout"]), None);
    }
}
