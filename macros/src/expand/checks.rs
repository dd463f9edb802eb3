//! Compile-time checks on the user's types, spanned at them: one readable error per type
//! that cannot be stored (see `StoredInput` in the runtime's `macro_support`), and the
//! matching `where` bounds that keep the generated impls free of errors of their own.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{format_ident, quote, ToTokens};
use syn::{Ident, Type};

/// One type to check: `<ty as check<name, _>>::check()`.
pub(crate) struct Stored<'a> {
    /// `StoredInput`, `StoredOutput` or `StoredParam`.
    pub(crate) check: &'static str,
    /// What the message calls the value: the parameter's (or the task function's) name.
    pub(crate) name: &'a Ident,
    pub(crate) ty: &'a Type,
}

/// The checks, in a `const _` block: for each type, a generic fn whose type parameter is
/// named after the value (so rustc's message can name it) asserting the check trait on the
/// type as the user wrote it (so the error points there).
pub(crate) fn stored_checks(p: &TokenStream, items: &[Stored<'_>]) -> TokenStream {
    let fns = items.iter().enumerate().map(|(i, item)| {
        let name = item.name.to_string();
        let name = name.trim_start_matches("r#");
        let marker = Ident::new(name, Span::mixed_site());
        let check = Ident::new(item.check, Span::call_site());
        let func = format_ident!("__procession_check_{}", i, span = Span::mixed_site());
        let ty = item.ty;
        if mentions(ty.to_token_stream(), name) {
            // `url: url::Url`: a type parameter `url` would shadow the crate in the type,
            // so the type is named by an alias declared outside the fn (the error then
            // points at the type's first token only).
            let alias = format_ident!("__procession_T{}", i, span = first_span(ty));
            quote! {
                #[allow(non_camel_case_types)]
                type #alias = #ty;
                #[allow(non_camel_case_types)]
                fn #func<#marker>() {
                    <#alias as #p::#check<#marker, _>>::check();
                }
            }
        } else {
            quote! {
                #[allow(non_camel_case_types)]
                fn #func<#marker>() {
                    <#ty as #p::#check<#marker, _>>::check();
                }
            }
        }
    });
    quote! {
        #[doc(hidden)]
        const _: () = {
            #( #fns )*
        };
    }
}

/// `for<'__procession> ty: Data`: the bound the generated impls need, written so that a
/// type that is not `Data` makes the impl inapplicable instead of reporting an error of
/// its own (`stored_checks` reports it, once, in words).
pub(crate) fn assumed_data(p: &TokenStream, ty: &impl ToTokens) -> TokenStream {
    quote!(for<'__procession> #ty: #p::Data)
}

/// True when an identifier `name` appears anywhere in `tokens`.
fn mentions(tokens: TokenStream, name: &str) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i.to_string().trim_start_matches("r#") == name,
        TokenTree::Group(g) => mentions(g.stream(), name),
        _ => false,
    })
}

fn first_span(ty: &Type) -> Span {
    ty.to_token_stream()
        .into_iter()
        .next()
        .map_or_else(Span::call_site, |t| t.span())
}
