//! `#[process]`: parse the arguments and the builder function, generate the process type.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::spanned::Spanned as _;
use syn::{FnArg, Ident, ItemFn, Pat, ReturnType, Type};

use crate::attr::{self, set_once, Spanned};
use crate::ctxt::{with_errors, Ctxt};

/// Every key `#[process]` accepts, with its form.
const KEYS: &[&str] = &[
    "name",        // name = "stable_name"
    "description", // description = "text"
    "schedule",    // schedule = "0 2 * * *"  (5-field cron, checked at compile time)
    "mode",        // mode = "sequential" | "concurrent"
    "hooks",       // hooks = TypeImplementingHooksAndDefault
    "crate",       // crate = "path::to::procession"
];

#[derive(Default)]
struct Args {
    name: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    schedule: Option<Spanned<String>>,
    mode: Option<Spanned<&'static str>>,
    hooks: Option<Spanned<syn::Type>>,
    krate: Option<Spanned<syn::Path>>,
}

fn parse_args(cx: &Ctxt, args: TokenStream) -> Args {
    let mut out = Args::default();
    let parser = syn::meta::parser(|meta| {
        let key = attr::path_str(&meta.path);
        match key.as_str() {
            "name" => {
                if let Some(s) = attr::lit_str(cx, &meta, "the process's stable name")? {
                    if s.value().trim().is_empty() {
                        cx.error_spanned_by(&s, "`name` cannot be empty");
                    }
                    set_once(cx, &mut out.name, &meta.path, s.value());
                }
            }
            "description" => {
                if let Some(s) = attr::lit_str(cx, &meta, "the process's description")? {
                    set_once(cx, &mut out.description, &meta.path, s.value());
                }
            }
            "schedule" => {
                if let Some(s) = attr::lit_str(
                    cx,
                    &meta,
                    "a 5-field cron expression such as `\"0 2 * * *\"`",
                )? {
                    match procession_cron::check(&s.value()) {
                        Ok(_) => set_once(cx, &mut out.schedule, &meta.path, s.value()),
                        Err(msg) => {
                            cx.error_spanned_by(&s, format_args!("invalid `schedule`: {msg}"));
                        }
                    }
                }
            }
            "mode" => {
                if let Some(s) = attr::lit_str(cx, &meta, "`\"sequential\"` or `\"concurrent\"`")? {
                    let v = s.value();
                    match v.as_str() {
                        "sequential" => set_once(cx, &mut out.mode, &meta.path, "sequential"),
                        "concurrent" => set_once(cx, &mut out.mode, &meta.path, "concurrent"),
                        other => {
                            // Near misses, and the words other schedulers use for the same modes.
                            let near = match other.to_ascii_lowercase().as_str() {
                                "parallel" | "concurrently" | "async" => Some("concurrent"),
                                "serial" | "sequence" | "sequentially" | "sync" => {
                                    Some("sequential")
                                }
                                _ => attr::suggest(other, &["sequential", "concurrent"]),
                            };
                            let hint = near
                                .map(|s| format!(" (did you mean `{s}`?)"))
                                .unwrap_or_default();
                            cx.error_spanned_by(&s, format_args!("unknown `mode` value `{other}`{hint}; expected `\"sequential\"` or `\"concurrent\"`"));
                        }
                    }
                }
            }
            "hooks" => {
                let ty: syn::Type = meta.value()?.parse()?;
                set_once(cx, &mut out.hooks, &meta.path, ty);
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
                attr::unknown_key(cx, "process", &meta.path, KEYS);
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

struct Param {
    field: Ident,
    ty: Type,
}

fn is_builder(ty: &Type) -> Option<bool> {
    if let Type::Reference(r) = ty {
        if let Type::Path(p) = &*r.elem {
            if p.path.segments.last().is_some_and(|s| s.ident == "Builder") {
                return Some(r.mutability.is_some());
            }
        }
    }
    None
}

fn analyse(cx: &Ctxt, func: &ItemFn) -> Vec<Param> {
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        cx.error_spanned_by(a, "a `#[process]` function only builds the graph, so it cannot be `async`; put the async work in `#[task]` functions");
    }
    if let Some(u) = &sig.unsafety {
        cx.error_spanned_by(u, "`#[process]` cannot be applied to an `unsafe fn`");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_spanned_by(&sig.generics, "`#[process]` functions cannot be generic: the parameters are stored, so they must be concrete owned types");
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        cx.error_spanned_by(ty, "a `#[process]` function adds tasks to the builder and returns nothing; remove the return type");
    }
    let mut params = Vec::new();
    // Where the builder is: one mistake (a missing, misplaced or shared builder) gives one
    // error, and the other parameters still become fields of the process struct.
    let builder_at = sig
        .inputs
        .iter()
        .position(|a| matches!(a, FnArg::Typed(pt) if is_builder(&pt.ty).is_some()));
    match (builder_at, sig.inputs.first()) {
        (_, None) => cx.error_spanned_by(
            &sig.ident,
            format_args!("a `#[process]` function takes the builder as its first parameter: `fn {}(p: &mut Builder)`", sig.ident),
        ),
        // Reported with the parameter below when it is not first or not `&mut`.
        (Some(_), _) => {}
        (None, Some(FnArg::Receiver(r))) => cx.error_spanned_by(
            r,
            "`#[process]` functions cannot take `self`; the first parameter is the builder: `p: &mut Builder`",
        ),
        (None, Some(first)) => cx.error_spanned_by(
            first,
            format_args!("the first parameter of a `#[process]` function is the builder: `fn {}(p: &mut Builder, ...)`", sig.ident),
        ),
    }
    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) => {
                if i != 0 || builder_at.is_some() {
                    cx.error_spanned_by(r, "`#[process]` functions cannot take `self`");
                }
            }
            FnArg::Typed(pt) => {
                if let Some(is_mut) = is_builder(&pt.ty) {
                    if Some(i) != builder_at {
                        cx.error_spanned_by(
                            &pt.ty,
                            "a `#[process]` function takes one builder; remove this parameter",
                        );
                    } else if i != 0 {
                        let pat = &pt.pat;
                        cx.error_spanned_by(
                            pt,
                            format_args!("the builder must be the first parameter: move `{}: &mut Builder` to the front", quote!(#pat)),
                        );
                    } else if !is_mut {
                        cx.error_spanned_by(
                            &pt.ty,
                            "the builder must be taken mutably: `p: &mut Builder`",
                        );
                    }
                    continue;
                }
                if let Type::Reference(_) = &*pt.ty {
                    cx.error_spanned_by(&pt.ty, "process parameters must be owned values, because they are stored with each run (use `String` for `&str`, `Vec<T>` for `&[T]`)");
                    continue;
                }
                match &*pt.pat {
                    Pat::Ident(pi) => params.push(Param {
                        field: pi.ident.clone(),
                        ty: (*pt.ty).clone(),
                    }),
                    other => {
                        cx.error_spanned_by(other, "process parameters become fields of the process struct, so each needs a plain name (`sources: Vec<String>`)");
                    }
                }
            }
        }
    }
    params
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
                format_args!("`#[process]` can only be applied to a function taking `&mut Builder`, not to {what}"),
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
    let params = analyse(&cx, &func);
    let krate: syn::Path = parsed
        .krate
        .as_ref()
        .map_or_else(|| syn::parse_quote!(::procession), |k| k.value.clone());
    let name = Ident::new(
        &attr::camel(&func.sig.ident.to_string()),
        func.sig.ident.span(),
    );
    match cx.check() {
        Ok(()) => {
            let out = generate(&func, &name, &params, &parsed, &krate);
            if std::env::var_os("PROCESSION_MACROS_DEBUG").is_some() {
                eprintln!("{out}");
            }
            out
        }
        Err(err) => {
            // The process type, with a `Process` impl that builds nothing: code that uses
            // the process still type-checks, so only the real mistake is reported.
            let p = quote!(#krate::__private);
            let ty = process_type(&func.vis, &name, &params, &krate);
            let bounds = data_bounds(&params, &krate);
            let stub = quote! {
                #ty
                #[allow(clippy::all, clippy::pedantic)]
                impl #p::Process for #name where #( #bounds, )* {
                    const META: #p::ProcessMeta = #p::ProcessMeta {
                        name: "",
                        description: "",
                        schedule: #p::None,
                        mode: #p::Mode::Sequential,
                    };
                    fn build(self, _: &mut #p::Builder) {
                        unimplemented!("`#[process]` reported an error")
                    }
                }
            };
            with_errors(&quote!(#func), &stub, &err)
        }
    }
}

fn generate(
    func: &ItemFn,
    name: &Ident,
    params: &[Param],
    args: &Args,
    krate: &syn::Path,
) -> TokenStream {
    let p = quote!(#krate::__private);
    let vis = &func.vis;
    let fn_name = &func.sig.ident;
    let fields: Vec<&Ident> = params.iter().map(|p| &p.field).collect();
    let proc_name = args.name.as_ref().map_or_else(
        || fn_name.to_string().trim_start_matches("r#").to_owned(),
        |n| n.value.clone(),
    );
    let description = args
        .description
        .as_ref()
        .map_or_else(|| attr::doc_summary(&func.attrs), |d| d.value.clone());
    let schedule = match &args.schedule {
        Some(s) => {
            let v = &s.value;
            quote!(#p::Some(#v))
        }
        None => quote!(#p::None),
    };
    let mode = match args.mode.as_ref().map(|m| m.value) {
        Some("concurrent") => quote!(#p::Mode::Concurrent),
        _ => quote!(#p::Mode::Sequential),
    };
    let hooks = args.hooks.as_ref().map(|h| {
        // Spanned at the type, so a type that is not `Hooks + Default` is reported there.
        let ty = &h.value;
        let make = attr::around(
            ty,
            quote!(<),
            quote!(as ::core::default::Default>::default()),
        );
        let coerce = attr::respan(
            quote!(#p::Arc::new(__procession_hooks) as #p::Arc<dyn #p::Hooks>),
            ty.span(),
        );
        let value = attr::respan(quote!(__procession_hooks), ty.span());
        quote! {
            fn hooks() -> #p::Option<#p::Arc<dyn #p::Hooks>> {
                let #value = #make;
                #p::Some(#coerce)
            }
        }
    });
    let doc = format!(
        "Process type generated by `#[process]` for [`{fn_name}`]: its fields are the function's parameters (stored with each run); launch it with `Runtime::launch`."
    );
    let span = Span::mixed_site();
    let builder = Ident::new("__procession_builder", span);
    let ty = process_type(vis, name, params, krate);
    let bounds = data_bounds(params, krate);
    quote! {
        // Parameters must be owned (they are stored), even when the body only reads them.
        #[allow(clippy::needless_pass_by_value)]
        #func

        #[doc = #doc]
        #ty

        #[automatically_derived]
        impl #p::Process for #name where #( #bounds, )* {
            const META: #p::ProcessMeta = #p::ProcessMeta {
                name: #proc_name,
                description: #description,
                schedule: #schedule,
                mode: #mode,
            };

            fn build(self, #builder: &mut #p::Builder) {
                #fn_name(#builder, #( self.#fields ),*);
            }

            #hooks
        }
    }
}

/// `T: Data` for each parameter type, spanned at the type: a parameter that cannot be
/// stored is reported there, once, and the impls carrying these bounds add no errors.
fn data_bounds(params: &[Param], krate: &syn::Path) -> Vec<TokenStream> {
    params
        .iter()
        .map(|param| attr::around(&param.ty, quote!(), quote!(: #krate::__private::Data)))
        .collect()
}

/// The process struct: one public field per parameter, serde impls and `Debug`.
///
/// Each field's serde bound is `T: Data`, spanned at the parameter type, instead of
/// serde's own `T: Serialize` uses inside the generated impls: a parameter that cannot be
/// stored then gives the same two errors a task input does, at the parameter, instead of
/// one error per serde helper pointing into serde's sources.
fn process_type(
    vis: &syn::Visibility,
    name: &Ident,
    params: &[Param],
    krate: &syn::Path,
) -> TokenStream {
    let p = quote!(#krate::__private);
    let krate_str = quote!(#krate).to_string().replace(' ', "");
    let serde_path = format!("{krate_str}::__private::serde");
    let fields = params.iter().map(|param| {
        let (field, ty) = (&param.field, &param.ty);
        let bound = syn::LitStr::new(
            &format!("{}: {krate_str}::__private::Data", quote!(#ty)),
            ty.span(),
        );
        quote! {
            #[allow(missing_docs)]
            #[serde(bound = #bound)]
            pub #field: #ty,
        }
    });
    quote! {
        #[derive(#p::serde::Serialize, #p::serde::Deserialize)]
        #[serde(crate = #serde_path)]
        #vis struct #name {
            #( #fields )*
        }

        #[automatically_derived]
        impl ::core::fmt::Debug for #name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#name)).finish_non_exhaustive()
            }
        }
    }
}
