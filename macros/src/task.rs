//! `#[task]`: parse the arguments and the function, check them, generate the task type.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{FnArg, Ident, ItemFn, LitStr, Pat, ReturnType, Type};

use crate::attr::{self, set_once, Backoff, Spanned};
use crate::ctxt::{with_errors, Ctxt};

/// Every key `#[task]` accepts, with its form.
const KEYS: &[&str] = &[
    "name",           // name = "stable_name"
    "description",    // description = "text"
    "retries",        // retries = 3            (0..=1000)
    "max_attempts",   // max_attempts = 4       (1..=1001), not with `retries`
    "retry_on",       // retry_on = [ErrorType, ...]
    "retry_timeouts", // retry_timeouts = false
    "backoff",        // backoff = "exponential(100ms, 5s)"
    "timeout",        // timeout = "30s"
    "on_dep_failure", // on_dep_failure = "fail" | "skip" | "run_anyway"
    "crate",          // crate = "path::to::procession"
];

const MAX_RETRIES: u64 = 1000;

#[derive(Default)]
struct Args {
    name: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    retries: Option<Spanned<u32>>,
    max_attempts: Option<Spanned<u32>>,
    retry_on: Option<Spanned<Vec<syn::Path>>>,
    retry_timeouts: Option<Spanned<bool>>,
    backoff: Option<Spanned<Backoff>>,
    timeout: Option<Spanned<u64>>,
    on_dep_failure: Option<Spanned<&'static str>>,
    krate: Option<Spanned<syn::Path>>,
}

fn parse_args(cx: &Ctxt, args: TokenStream) -> Args {
    let mut out = Args::default();
    let mut conflict_reported = false;
    let parser = syn::meta::parser(|meta| {
        let key = attr::path_str(&meta.path);
        match key.as_str() {
            "name" => {
                if let Some(s) = attr::lit_str(cx, &meta, "the task's stable name")? {
                    let v = s.value();
                    if v.trim().is_empty() {
                        cx.error_spanned_by(&s, "`name` cannot be empty");
                    }
                    set_once(cx, &mut out.name, &meta.path, v);
                }
            }
            "description" => {
                if let Some(s) = attr::lit_str(cx, &meta, "the task's description")? {
                    set_once(cx, &mut out.description, &meta.path, s.value());
                }
            }
            "retries" | "max_attempts" => {
                let expr: syn::Expr = meta.value()?.parse()?;
                let (min, max) = if key == "retries" {
                    (0, MAX_RETRIES)
                } else {
                    (1, MAX_RETRIES + 1)
                };
                let other_set = if key == "retries" {
                    out.max_attempts.is_some()
                } else {
                    out.retries.is_some()
                };
                if other_set && !conflict_reported {
                    conflict_reported = true;
                    cx.error_spanned_by(&meta.path, "pass either `retries` or `max_attempts`, not both (`max_attempts = retries + 1`)");
                }
                if let Some(n) = int_in_range(cx, &expr, &key, min, max) {
                    let slot = if key == "retries" {
                        &mut out.retries
                    } else {
                        &mut out.max_attempts
                    };
                    set_once(cx, slot, &meta.path, n);
                }
            }
            "retry_on" => {
                let value = meta.value()?;
                let expr: syn::Expr = value.parse()?;
                match expr {
                    syn::Expr::Array(arr) => {
                        let mut paths = Vec::new();
                        for e in &arr.elems {
                            match e {
                                syn::Expr::Path(p) if p.qself.is_none() => paths.push(p.path.clone()),
                                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => cx.error_spanned_by(
                                    s,
                                    format_args!("`retry_on` lists error types, not their names: write `{}` without quotes", s.value()),
                                ),
                                other => cx.error_spanned_by(other, "`retry_on` lists error types, like `[std::io::Error, MyError]`"),
                            }
                        }
                        if arr.elems.is_empty() {
                            cx.error_spanned_by(&arr, "`retry_on` is empty: list at least one error type, or remove it to retry every error");
                        }
                        if paths.len() == arr.elems.len() {
                            set_once(cx, &mut out.retry_on, &meta.path, paths);
                        }
                    }
                    syn::Expr::Path(p) => {
                        cx.error_spanned_by(&p, format_args!("`retry_on` expects a list: write `retry_on = [{}]`", attr::path_str(&p.path)));
                    }
                    other => cx.error_spanned_by(&other, "`retry_on` expects a list of error types, like `[std::io::Error, MyError]`"),
                }
            }
            "retry_timeouts" => {
                let lit: syn::Expr = meta.value()?.parse()?;
                match lit {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Bool(b),
                        ..
                    }) => {
                        set_once(cx, &mut out.retry_timeouts, &meta.path, b.value);
                    }
                    other => {
                        cx.error_spanned_by(&other, "`retry_timeouts` expects `true` or `false`");
                    }
                }
            }
            "backoff" => {
                if let Some(s) =
                    attr::lit_str(cx, &meta, "for example `\"exponential(100ms, 5s)\"`")?
                {
                    match attr::parse_backoff(&s.value()) {
                        Ok(b) => set_once(cx, &mut out.backoff, &meta.path, b),
                        Err(msg) => cx.error_spanned_by(&s, msg),
                    }
                }
            }
            "timeout" => {
                let expr: syn::Expr = meta.value()?.parse()?;
                match &expr {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => match attr::parse_duration(&s.value()) {
                        Ok(0) => cx.error_spanned_by(
                            s,
                            "`timeout` must be greater than zero; remove it for no limit",
                        ),
                        Ok(ms) => set_once(cx, &mut out.timeout, &meta.path, ms),
                        Err(msg) => {
                            cx.error_spanned_by(s, format_args!("malformed `timeout`: {msg}"));
                        }
                    },
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Int(i),
                        ..
                    }) => {
                        cx.error_spanned_by(
                            i,
                            format_args!(
                                "`timeout` needs a unit: write `timeout = \"{}s\"` or `\"{}ms\"`",
                                i.base10_digits(),
                                i.base10_digits()
                            ),
                        );
                    }
                    other => cx.error_spanned_by(
                        other,
                        "`timeout` expects a duration string such as `\"30s\"` or `\"250ms\"`",
                    ),
                }
            }
            "on_dep_failure" => {
                if let Some(s) =
                    attr::lit_str(cx, &meta, "`\"fail\"`, `\"skip\"` or `\"run_anyway\"`")?
                {
                    let v = s.value();
                    let known = ["fail", "skip", "run_anyway"];
                    match known.iter().find(|k| **k == v.replace('-', "_")) {
                        Some(k) => set_once(cx, &mut out.on_dep_failure, &meta.path, *k),
                        None => {
                            let hint = attr::suggest(&v, &known)
                                .map(|s| format!(" (did you mean `{s}`?)"))
                                .unwrap_or_default();
                            cx.error_spanned_by(&s, format_args!("unknown `on_dep_failure` value `{v}`{hint}; expected `\"fail\"`, `\"skip\"` or `\"run_anyway\"`"));
                        }
                    }
                }
            }
            "crate" => {
                if let Some(s) = attr::lit_str(cx, &meta, "the path procession is reachable at")? {
                    match s.parse::<syn::Path>() {
                        Ok(p) => set_once(cx, &mut out.krate, &meta.path, p),
                        Err(_) => cx.error_spanned_by(
                            &s,
                            "`crate` expects a path such as `\"::procession\"`",
                        ),
                    }
                }
            }
            _ => {
                attr::unknown_key(cx, "task", &meta.path, KEYS);
                attr::skip_value(&meta)?;
            }
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        cx.push(e);
    }
    out
}

fn int_in_range(cx: &Ctxt, expr: &syn::Expr, key: &str, min: u64, max: u64) -> Option<u32> {
    let bad = || format!("`{key}` must be an integer from {min} to {max}");
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => match i.base10_parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n as u32),
            Ok(n) => {
                cx.error_spanned_by(i, format_args!("{}, got {n}", bad()));
                None
            }
            Err(_) => {
                cx.error_spanned_by(i, bad());
                None
            }
        },
        syn::Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => {
            cx.error_spanned_by(expr, format_args!("{}; it cannot be negative", bad()));
            None
        }
        other => {
            cx.error_spanned_by(other, format_args!("{}; write a number literal", bad()));
            None
        }
    }
}

/// A parameter of the task function (not the context).
struct Input {
    field: Ident,
    ty: Type,
}

struct Model {
    func: ItemFn,
    struct_name: Ident,
    has_ctx: bool,
    inputs: Vec<Input>,
    output: Type,
    /// `Some(return type)` when the function returns a `Result`.
    result: Option<Type>,
}

fn is_ctx_type(ty: &Type) -> Option<bool> {
    // Some(is_mut) when `ty` is `&Ctx` / `&mut Ctx` (any path ending in `Ctx`).
    if let Type::Reference(r) = ty {
        if let Type::Path(p) = &*r.elem {
            if p.path.segments.last().is_some_and(|s| s.ident == "Ctx") {
                return Some(r.mutability.is_some());
            }
        }
    }
    None
}

fn contains_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut f = Finder(false);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

fn analyse(cx: &Ctxt, func: ItemFn) -> Model {
    let sig = &func.sig;
    if let Some(u) = &sig.unsafety {
        cx.error_spanned_by(u, "`#[task]` cannot be applied to an `unsafe fn`: the runtime calls tasks without an `unsafe` block");
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(abi, "`#[task]` functions cannot have an `extern` ABI");
    }
    if let Some(v) = &sig.variadic {
        cx.error_spanned_by(v, "`#[task]` functions cannot be variadic");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let what = if sig
            .generics
            .params
            .iter()
            .all(|p| matches!(p, syn::GenericParam::Lifetime(_)))
        {
            "lifetime parameters"
        } else {
            "generic parameters"
        };
        cx.error_spanned_by(
            &sig.generics,
            format_args!("`#[task]` functions cannot have {what}: a task's inputs and output are stored, so they must be concrete owned types; write one task per concrete type"),
        );
    }
    let mut has_ctx = false;
    let mut inputs = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) => cx.error_spanned_by(
                r,
                "`#[task]` functions cannot take `self`: a task is a free function; move the method body into a function taking the values it needs",
            ),
            FnArg::Typed(pt) => {
                if let Some(is_mut) = is_ctx_type(&pt.ty) {
                    if is_mut {
                        cx.error_spanned_by(&pt.ty, "the task context is shared: take it as `&Ctx`, not `&mut Ctx`");
                    } else if i != 0 {
                        cx.error_spanned_by(&pt.ty, "the task context `&Ctx` must be the first parameter");
                    } else {
                        has_ctx = true;
                    }
                    continue;
                }
                if contains_impl_trait(&pt.ty) {
                    cx.error_spanned_by(&pt.ty, "`impl Trait` is not supported in task inputs: an input is stored between tasks, so it needs a concrete type");
                    continue;
                }
                if let Type::Reference(r) = &*pt.ty {
                    cx.error_spanned_by(
                        &pt.ty,
                        format_args!(
                            "task inputs must be owned values, because they are stored between tasks: {}",
                            owned_hint(&r.elem)
                        ),
                    );
                    continue;
                }
                let field = match &*pt.pat {
                    Pat::Ident(pi) => {
                        let mut id = pi.ident.clone();
                        if id.to_string().starts_with("__procession") {
                            cx.error_spanned_by(&pi.ident, "names starting with `__procession` are reserved for generated code");
                        }
                        id.set_span(pi.ident.span());
                        id
                    }
                    _ => format_ident!("arg{}", i),
                };
                inputs.push(Input {
                    field,
                    ty: (*pt.ty).clone(),
                });
            }
        }
    }
    let (output, result) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), None),
        ReturnType::Type(_, ty) => {
            if contains_impl_trait(ty) {
                cx.error_spanned_by(ty, "`impl Trait` is not supported as a task's output: the output is stored, so it needs a concrete type");
            }
            let (output, result) = match result_ok_type(ty) {
                Some(ok) => (ok, Some((**ty).clone())),
                None => ((**ty).clone(), None),
            };
            if let Some(err) = result_type_arg(ty, 1) {
                if let Some(missing) = unsendable_box_dyn(&err) {
                    cx.error_spanned_by(
                        &err,
                        format_args!(
                            "a task's error is sent between threads, so a boxed error must be {missing}: write `Box<dyn std::error::Error + Send + Sync>`"
                        ),
                    );
                }
            }
            if let Type::Reference(r) = &output {
                cx.error_spanned_by(
                    &output,
                    format_args!(
                        "a task's output must be an owned value, because it is stored for the tasks that read it: {}",
                        owned_hint(&r.elem)
                    ),
                );
            }
            (output, result)
        }
    };
    let struct_name = Ident::new(&attr::camel(&sig.ident.to_string()), sig.ident.span());
    Model {
        func,
        struct_name,
        has_ctx,
        inputs,
        output,
        result,
    }
}

/// For `Box<dyn Trait + ...>` lacking `Send` or `Sync`: which of them are missing.
fn unsendable_box_dyn(ty: &Type) -> Option<&'static str> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Box" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let Some(syn::GenericArgument::Type(Type::TraitObject(obj))) = args.args.first() else {
        return None;
    };
    let has = |name: &str| {
        obj.bounds.iter().any(|b| {
            matches!(b, syn::TypeParamBound::Trait(t)
                if t.path.segments.last().is_some_and(|s| s.ident == name))
        })
    };
    match (has("Send"), has("Sync")) {
        (true, true) => None,
        (false, false) => Some("`Send + Sync`"),
        (false, true) => Some("`Send`"),
        (true, false) => Some("`Sync`"),
    }
}

/// How to own what a reference points at.
fn owned_hint(elem: &Type) -> &'static str {
    match elem {
        Type::Path(p) if p.path.is_ident("str") => "use `String` instead of `&str`",
        Type::Slice(_) => "use `Vec<T>` instead of `&[T]`",
        _ => "use the value itself instead of a reference",
    }
}

/// True when `ty` can be written as an associated type in an impl: no `impl Trait`, no
/// references, no `_`, no macro.
fn is_nameable(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = false;
        }
        fn visit_type_reference(&mut self, _: &'ast syn::TypeReference) {
            self.0 = false;
        }
        fn visit_type_infer(&mut self, _: &'ast syn::TypeInfer) {
            self.0 = false;
        }
        fn visit_type_macro(&mut self, _: &'ast syn::TypeMacro) {
            self.0 = false;
        }
    }
    let mut f = Finder(true);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

/// `T` when `ty` is written `Result<T, …>` (any path ending in `Result`).
fn result_ok_type(ty: &Type) -> Option<Type> {
    result_type_arg(ty, 0)
}

/// The `n`th type argument of `ty` when it is written `Result<…>`.
fn result_type_arg(ty: &Type, n: usize) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args
        .iter()
        .filter_map(|a| match a {
            syn::GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        })
        .nth(n)
}

#[allow(clippy::needless_pass_by_value)] // the shim hands over owned streams
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let parsed = parse_args(&cx, args);
    let func: ItemFn = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Fn(f)) => f,
        Ok(other) => {
            let what = attr::item_kind(&other);
            cx.error_spanned_by(
                attr::item_head(&other),
                format_args!("`#[task]` can only be applied to a function, not to {what}"),
            );
            let err = cx.check().expect_err("an error was recorded");
            return with_errors(&item, &TokenStream::new(), &err);
        }
        Err(e) => {
            cx.push(e);
            let err = cx.check().expect_err("an error was recorded");
            return with_errors(&item, &TokenStream::new(), &err);
        }
    };
    let model = analyse(&cx, func);
    let krate: syn::Path = parsed
        .krate
        .as_ref()
        .map_or_else(|| syn::parse_quote!(::procession), |k| k.value.clone());
    match cx.check() {
        Ok(()) => {
            let out = generate(&model, &parsed, &krate);
            if std::env::var_os("PROCESSION_MACROS_DEBUG").is_some() {
                eprintln!("{out}");
            }
            out
        }
        Err(err) => {
            let func = &model.func;
            // A method (`self` receiver) sits in an impl block, where a stub struct would
            // only add errors of its own.
            let is_method = func
                .sig
                .inputs
                .iter()
                .any(|a| matches!(a, FnArg::Receiver(_)));
            let stub = if is_method {
                TokenStream::new()
            } else {
                fallback(&model, &krate)
            };
            with_errors(&quote!(#func), &stub, &err)
        }
    }
}

/// On error: the user's function plus a task type with the right name and constructor
/// arity, so the rest of the crate type-checks and only the real mistake is reported.
fn fallback(model: &Model, krate: &syn::Path) -> TokenStream {
    let vis = &model.func.vis;
    let name = &model.struct_name;
    let fields: Vec<&Ident> = model.inputs.iter().map(|i| &i.field).collect();
    // Keep the declared output type when it can be named in an impl, so the task's handle
    // keeps its type where it is used and no second error follows; `()` otherwise.
    let (output, bound) = if is_nameable(&model.output) {
        let output = &model.output;
        let bound = attr::around(output, quote!(), quote!(: #krate::__private::Data));
        (quote!(#output), quote!(where #bound))
    } else {
        (quote!(()), TokenStream::new())
    };
    quote! {
        #[allow(dead_code, missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
        #vis struct #name;
        #[allow(dead_code, missing_docs, clippy::all, clippy::pedantic)]
        impl #name {
            #vis fn new(#( #fields: impl ::core::any::Any ),*) -> Self {
                #( let _ = #fields; )*
                unimplemented!("`#[task]` reported an error")
            }
        }
        #[allow(clippy::all, clippy::pedantic)]
        impl #krate::__private::Task for #name #bound {
            type Output = #output;
            type Args = ();
            const META: #krate::__private::TaskMeta = #krate::__private::TaskMeta {
                name: "",
                function: "",
                description: "",
                is_async: false,
                policy: #krate::__private::Policy::DEFAULT,
            };
            fn visit_inputs(&self, _: &mut dyn FnMut(#krate::__private::NodeRef)) {}
            fn into_args(self, _: &#krate::__private::Inputs<'_>) -> #krate::__private::Result<(), #krate::__private::InputError> {
                unimplemented!("`#[task]` reported an error")
            }
            fn call(_: (), _: #krate::__private::Ctx) -> #krate::__private::TaskFuture<Self::Output> {
                unimplemented!("`#[task]` reported an error")
            }
        }
    }
}

fn policy_tokens(args: &Args, krate: &syn::Path) -> TokenStream {
    let p = quote!(#krate::__private);
    let max_attempts = match (&args.max_attempts, &args.retries) {
        (Some(m), _) => m.value,
        (None, Some(r)) => r.value + 1,
        (None, None) => 1,
    };
    let backoff = match args.backoff.as_ref().map(|b| &b.value) {
        None | Some(Backoff::None) => quote!(#p::Backoff::None),
        Some(Backoff::Fixed { ms, jitter }) => {
            quote!(#p::Backoff::Fixed { delay: #p::Duration::from_millis(#ms), jitter: #jitter })
        }
        Some(Backoff::Linear { base, cap, jitter }) => {
            let cap = opt_ms(*cap, &p);
            quote!(#p::Backoff::Linear { base: #p::Duration::from_millis(#base), cap: #cap, jitter: #jitter })
        }
        Some(Backoff::Exponential { base, cap, jitter }) => {
            let cap = opt_ms(*cap, &p);
            quote!(#p::Backoff::Exponential { base: #p::Duration::from_millis(#base), cap: #cap, jitter: #jitter })
        }
    };
    let timeout = opt_ms(args.timeout.as_ref().map(|t| t.value), &p);
    let retry_on = match &args.retry_on {
        None => quote!(#p::None),
        Some(list) => {
            let matchers = list.value.iter().map(|path| {
                let name = attr::path_str(path);
                quote_spanned!(path.span()=> #p::ErrorMatcher::of::<#path>(#name))
            });
            quote!(#p::Some(&[#(#matchers),*]))
        }
    };
    let retry_timeouts = args.retry_timeouts.as_ref().is_none_or(|r| r.value);
    let dep = match args.on_dep_failure.as_ref().map(|d| d.value) {
        Some("fail") => quote!(#p::OnDepFailure::Fail),
        Some("run_anyway") => quote!(#p::OnDepFailure::RunAnyway),
        _ => quote!(#p::OnDepFailure::Skip),
    };
    quote! {
        #p::Policy {
            max_attempts: #max_attempts,
            backoff: #backoff,
            timeout: #timeout,
            retry_on: #retry_on,
            retry_timeouts: #retry_timeouts,
            on_dep_failure: #dep,
        }
    }
}

fn opt_ms(ms: Option<u64>, p: &TokenStream) -> TokenStream {
    match ms {
        Some(ms) => quote!(#p::Some(#p::Duration::from_millis(#ms))),
        None => quote!(#p::None),
    }
}

fn generate(model: &Model, args: &Args, krate: &syn::Path) -> TokenStream {
    let p = quote!(#krate::__private);
    let func = &model.func;
    let vis = &func.vis;
    let fn_name = &func.sig.ident;
    let name = &model.struct_name;
    let task_name = args.name.as_ref().map_or_else(
        || fn_name.to_string().trim_start_matches("r#").to_owned(),
        |n| n.value.clone(),
    );
    let description = args
        .description
        .as_ref()
        .map_or_else(|| attr::doc_summary(&func.attrs), |d| d.value.clone());
    let is_async = func.sig.asyncness.is_some();
    let fields: Vec<&Ident> = model.inputs.iter().map(|i| &i.field).collect();
    let tys: Vec<&Type> = model.inputs.iter().map(|i| &i.ty).collect();
    let output = &model.output;
    let policy = policy_tokens(args, krate);
    let ctx = Ident::new("__procession_ctx", Span::mixed_site());
    let call_args = if model.has_ctx {
        quote!(&#ctx, #(#fields),*)
    } else {
        quote!(#(#fields),*)
    };
    let invoke = if is_async {
        quote!(#fn_name(#call_args).await)
    } else {
        quote!(#fn_name(#call_args))
    };
    let wrapped = if model.result.is_some() {
        quote!(#p::task_result(#invoke))
    } else {
        quote!(#p::Ok(#invoke))
    };
    let body = if is_async {
        quote! {
            #p::run_async(async move {
                let #ctx = #ctx;
                let _ = &#ctx;
                #wrapped
            })
        }
    } else {
        quote! {
            #p::run_blocking(#task_name, move || {
                let #ctx = #ctx;
                let _ = &#ctx;
                #wrapped
            })
        }
    };
    // Bounds spanned at the user's types: a type that cannot be stored is reported once,
    // at its parameter or at the return type, and nowhere else.
    let mut bounds_on_impl: Vec<TokenStream> = tys
        .iter()
        .map(|ty| attr::around(ty, quote!(), quote!(: #p::Data)))
        .collect();
    if let ReturnType::Type(_, ty) = &func.sig.output {
        bounds_on_impl.push(attr::around(output, quote!(), quote!(: #p::Data)));
        if model.result.is_some() {
            // Reported at `E` when the type is written `Result<T, E>`.
            let err_ty = result_type_arg(ty, 1);
            bounds_on_impl.push(attr::around_at(
                err_ty.as_ref().map_or(&**ty, |e| e),
                quote!(<),
                ty,
                quote!(as #p::TaskReturn>::Err: #p::IntoTaskError),
            ));
        }
    }
    let fn_doc = format!(
        "Task type generated by `#[task]` for [`{fn_name}`]: pass it to `Builder::task` to add `{task_name}` to a process."
    );
    let new_doc = format!(
        "Creates a `{task_name}` task. Each argument is a value or the output (`Out<T>`) of another task with that type."
    );
    // Spanned at each parameter type, so "required by a bound in `X::new`" shows the
    // declared type rather than the `#[task]` line.
    let bounds = tys
        .iter()
        .map(|ty| attr::around(ty, quote!(impl #p::IntoArg<), quote!(, #name>)));
    let new = Ident::new("new", fn_name.span());
    quote! {
        // Inputs must be owned (they are stored), even when the body only reads them.
        #[allow(clippy::needless_pass_by_value)]
        #func

        #[doc = #fn_doc]
        #vis struct #name {
            #( #fields: #p::Arg<#tys>, )*
        }

        #[allow(clippy::new_without_default, clippy::too_many_arguments, clippy::needless_pass_by_value)]
        impl #name {
            #[doc = #new_doc]
            #vis fn #new(#( #fields: #bounds ),*) -> Self {
                Self { #( #fields: #p::IntoArg::<#tys, #name>::into_arg(#fields), )* }
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Debug for #name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#name))
                    #( .field(::core::stringify!(#fields), &self.#fields) )*
                    .finish()
            }
        }

        #[automatically_derived]
        impl #p::Task for #name where #( #bounds_on_impl, )* {
            type Output = #output;
            type Args = ( #( #tys, )* );
            const META: #p::TaskMeta = #p::TaskMeta {
                name: #task_name,
                function: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#fn_name)),
                description: #description,
                is_async: #is_async,
                policy: #policy,
            };

            fn visit_inputs(&self, __procession_f: &mut dyn FnMut(#p::NodeRef)) {
                let _ = &__procession_f;
                #( self.#fields.visit(__procession_f); )*
            }

            fn into_args(self, __procession_inputs: &#p::Inputs<'_>) -> #p::Result<Self::Args, #p::InputError> {
                let _ = __procession_inputs;
                #p::Ok(( #( self.#fields.resolve(__procession_inputs)?, )* ))
            }

            #[allow(clippy::used_underscore_binding)]
            fn call(__procession_args: Self::Args, #ctx: #p::Ctx) -> #p::TaskFuture<Self::Output> {
                let ( #( #fields, )* ) = __procession_args;
                #body
            }
        }
    }
}

#[allow(dead_code)]
fn lit(s: &str) -> LitStr {
    LitStr::new(s, Span::call_site())
}
