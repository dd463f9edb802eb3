//! Re-spanning generated tokens so that rustc reports a failing bound at the user's code.

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
