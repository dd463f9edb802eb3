//! Implementation detail of the `procession` crate: the `#[task]` and `#[process]`
//! attribute macros. Depend on `procession` and use them from there (`procession::task`,
//! `procession::process`, both in `procession::prelude`).
//!
//! Both macros run the same stages: `attr`/`values` parse the arguments into the typed
//! models of `ast`, `check` reports every broken rule, and `expand` generates code from a
//! model that passed; on error `fallback` emits the user's item, the errors and a stub.

#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]

mod ast;
mod attr;
mod check;
mod ctxt;
mod expand;
mod fallback;
mod span;
mod types;
mod values;

use proc_macro2::TokenStream;
use syn::ItemFn;

use crate::ctxt::Ctxt;

#[doc = include_str!("../doc/task.md")]
#[proc_macro_attribute]
pub fn task(
    args: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand_attr::<ast::Task>(args.into(), item.into()).into()
}

#[doc = include_str!("../doc/process.md")]
#[proc_macro_attribute]
pub fn process(
    args: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand_attr::<ast::Process>(args.into(), item.into()).into()
}

/// One attribute macro, as the driver sees it.
trait AttrMacro: Sized {
    /// `task` or `process`.
    const NAME: &'static str;
    /// What the attribute applies to, for the error on any other item.
    const TARGET: &'static str;
    type Attrs;
    fn parse_attrs(cx: &Ctxt, args: TokenStream) -> Self::Attrs;
    fn from_syn(attrs: Self::Attrs, func: ItemFn) -> Self;
    fn check(&self, cx: &Ctxt);
    /// The generated code; only called on a model that passed `check`.
    fn expand(&self) -> TokenStream;
    /// The stub emitted next to the errors.
    fn fallback(&self) -> TokenStream;
    fn func(&self) -> &ItemFn;
}

impl AttrMacro for ast::Task {
    const NAME: &'static str = "task";
    const TARGET: &'static str = "a function";
    type Attrs = ast::TaskAttrs;
    fn parse_attrs(cx: &Ctxt, args: TokenStream) -> Self::Attrs {
        ast::TaskAttrs::from_tokens(cx, args)
    }
    fn from_syn(attrs: Self::Attrs, func: ItemFn) -> Self {
        ast::Task::from_syn(attrs, func)
    }
    fn check(&self, cx: &Ctxt) {
        check::task(cx, self);
    }
    fn expand(&self) -> TokenStream {
        expand::task(self)
    }
    fn fallback(&self) -> TokenStream {
        fallback::task(self)
    }
    fn func(&self) -> &ItemFn {
        &self.func
    }
}

impl AttrMacro for ast::Process {
    const NAME: &'static str = "process";
    const TARGET: &'static str = "a function taking `&mut Builder`";
    type Attrs = ast::ProcessAttrs;
    fn parse_attrs(cx: &Ctxt, args: TokenStream) -> Self::Attrs {
        ast::ProcessAttrs::from_tokens(cx, args)
    }
    fn from_syn(attrs: Self::Attrs, func: ItemFn) -> Self {
        ast::Process::from_syn(attrs, func)
    }
    fn check(&self, cx: &Ctxt) {
        check::process(cx, self);
    }
    fn expand(&self) -> TokenStream {
        expand::process(self)
    }
    fn fallback(&self) -> TokenStream {
        fallback::process(self)
    }
    fn func(&self) -> &ItemFn {
        &self.func
    }
}

/// The driver both macros share: parse the arguments and the item, check the model, then
/// generate code, or, if anything was reported, the item, every error and a stub.
#[allow(clippy::needless_pass_by_value)] // the shims hand over owned streams
fn expand_attr<M: AttrMacro>(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let attrs = M::parse_attrs(&cx, args);
    let func = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Fn(f)) => f,
        Ok(other) => {
            cx.error_spanned_by(
                item_head(&other),
                format_args!(
                    "`#[{}]` can only be applied to {}, not to {}",
                    M::NAME,
                    M::TARGET,
                    item_kind(&other)
                ),
            );
            let err = cx.check().expect_err("an error was recorded");
            return fallback::with_errors(&item, &TokenStream::new(), &err);
        }
        Err(e) => {
            cx.push(e);
            let err = cx.check().expect_err("an error was recorded");
            return fallback::with_errors(&item, &TokenStream::new(), &err);
        }
    };
    let model = M::from_syn(attrs, func);
    model.check(&cx);
    match cx.check() {
        Ok(()) => {
            let out = model.expand();
            if std::env::var_os("PROCESSION_MACROS_DEBUG").is_some() {
                eprintln!("{out}");
            }
            out
        }
        Err(err) => {
            let func = model.func();
            fallback::with_errors(&quote::quote!(#func), &model.fallback(), &err)
        }
    }
}

/// How an item that is not a function is called in "can only be applied to" errors.
fn item_kind(item: &syn::Item) -> &'static str {
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
fn item_head(item: &syn::Item) -> proc_macro2::TokenStream {
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
