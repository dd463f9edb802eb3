//! Code for a `#[task]` function: the function, the task type, its constructor and its
//! `Task` impl.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned as _;
use syn::{Ident, ReturnType, Type};

use crate::ast::{Task, TaskAttrs, TaskParam};
use crate::attr;
use crate::expand::checks::{assumed_data, stored_checks, Stored};
use crate::span;
use crate::types::result_type_arg;
use crate::values::{Backoff, OnDepFailure};

pub(crate) fn task(model: &Task) -> TokenStream {
    let args = &model.attrs;
    let krate = &args.common.krate();
    let p = quote!(#krate::__private);
    let func = &model.func;
    let vis = &func.vis;
    let fn_name = &func.sig.ident;
    let name = &model.ident;
    let task_name = args.common.name_or(fn_name);
    let description = args.common.description_or_doc(&func.attrs);
    let is_async = func.sig.asyncness.is_some();
    let fields: Vec<&Ident> = model.inputs().map(|i| &i.field).collect();
    let tys: Vec<&Type> = model.inputs().map(|i| &i.ty).collect();
    let output = &model.output;
    let policy = policy(args, krate);
    let ctx = Ident::new("__procession_ctx", Span::mixed_site());
    // The resolved inputs get names of their own: a parameter named like the function
    // (`fn foo(foo: String)`) would otherwise shadow it at the call.
    let locals: Vec<Ident> = (0..fields.len())
        .map(|i| format_ident!("__procession_arg{}", i, span = Span::mixed_site()))
        .collect();
    // In parameter order: the context, inputs (fields of the task type) and resources
    // (read from the context before the body runs).
    let mut input_locals = locals.iter();
    let call_args = model.params.iter().filter_map(|param| match param {
        TaskParam::Ctx { .. } => Some(quote!(&#ctx)),
        TaskParam::Input(_) => input_locals.next().map(ToTokens::to_token_stream),
        TaskParam::Resource(r) => Some(r.local.to_token_stream()),
        _ => None,
    });
    let call_args = quote!(#(#call_args),*);
    let res_locals: Vec<&Ident> = model.resources().map(|r| &r.local).collect();
    let res_tys: Vec<&Type> = model.resources().map(|r| &r.ty).collect();
    let fetch_resources = quote! {
        #( let #res_locals = #p::resource::<#res_tys>(&#ctx)?; )*
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
    // The runtime keeps an attempt's future inside the task when it is small: what it
    // holds twice counts. An `async` block would hold the inputs once as its own and once
    // in the function's future it awaits (and `ctx` twice when rebound inside it).
    let takes_ctx = model
        .params
        .iter()
        .any(|param| matches!(param, TaskParam::Ctx { .. }))
        || !res_locals.is_empty();
    let body = if is_async && !takes_ctx {
        // The function's future itself, its result converted when it ends (`ctx`, which
        // it does not take, is dropped here).
        let convert = if model.result.is_some() {
            quote!(#p::task_result)
        } else {
            quote!(#p::Ok)
        };
        quote! {
            #p::run_async_then(#fn_name(#call_args), #convert)
        }
    } else if is_async {
        // `ctx` is moved into the block (the function borrows it) and stays there.
        quote! {
            #p::run_async(async move {
                #fetch_resources
                #wrapped
            })
        }
    } else {
        quote! {
            #p::run_blocking(#task_name, move || {
                let #ctx = #ctx;
                let _ = &#ctx;
                #fetch_resources
                #wrapped
            })
        }
    };
    // A type that cannot be stored is reported once, in words, by `checks`; the impl's
    // bounds on the same types report nothing.
    let mut stored: Vec<Stored<'_>> = model
        .inputs()
        .map(|i| Stored {
            check: "StoredInput",
            name: &i.field,
            ty: &i.ty,
        })
        .collect();
    let mut bounds_on_impl: Vec<TokenStream> = tys.iter().map(|ty| assumed_data(&p, ty)).collect();
    // A resource must be shareable between threads: reported at its type.
    bounds_on_impl.extend(
        res_tys
            .iter()
            .map(|ty| span::around(ty, quote!(), quote!(: #p::Resource))),
    );
    if let ReturnType::Type(_, ty) = &func.sig.output {
        stored.push(Stored {
            check: "StoredOutput",
            name: fn_name,
            ty: output,
        });
        bounds_on_impl.push(assumed_data(&p, output));
        if model.result.is_some() {
            // Reported at `E` when the type is written `Result<T, E>`.
            let err_ty = result_type_arg(ty, 1);
            bounds_on_impl.push(span::around_at(
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
        .map(|ty| span::around(ty, quote!(impl #p::IntoArg<), quote!(, #name>)));
    let new = Ident::new("new", fn_name.span());
    // A `run_anyway` task takes other tasks' outputs only as `Option`s (it runs when they
    // fail): without this impl, a plain `Out<T>` for a `T` input does not compile.
    let plain_inputs = (!matches!(args.on_dep_failure(), OnDepFailure::RunAnyway)).then(|| {
        quote! {
            #[automatically_derived]
            #[diagnostic::do_not_recommend]
            impl #p::PlainInputs for #name {}
        }
    });
    let checks = stored_checks(&p, &stored);
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

        #plain_inputs

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
                resources: &[ #( #p::ResourceKey::of::<#res_tys>(), )* ],
            };
            const TAKES_CTX: bool = #takes_ctx;

            // Inlined into the builder (once per task added): the visitor it is given is
            // then a known closure, called directly, not through its vtable.
            #[inline]
            fn visit_inputs(&self, __procession_f: &mut dyn FnMut(#p::Read)) {
                let _ = &__procession_f;
                #( self.#fields.visit(__procession_f); )*
            }

            fn into_args(self, __procession_inputs: &#p::Inputs<'_>) -> #p::Result<Self::Args, #p::InputError> {
                let _ = __procession_inputs;
                #p::Ok(( #( self.#fields.resolve(__procession_inputs)?, )* ))
            }

            #[allow(clippy::used_underscore_binding)]
            fn call(__procession_args: Self::Args, #ctx: #p::Ctx) -> impl #p::Future<Output = #p::Result<Self::Output, #p::BoxError>> + ::core::marker::Send + 'static {
                let ( #( #locals, )* ) = __procession_args;
                #body
            }

            fn output_cloner() -> #p::Option<#p::OutputCloner> {
                #[allow(unused_imports)]
                use #p::{CloneProbeNo as _, CloneProbeYes as _};
                (&&#p::CloneProbe::<Self::Output>::new()).cloner()
            }
        }

        #checks
    }
}

fn policy(args: &TaskAttrs, krate: &syn::Path) -> TokenStream {
    let p = quote!(#krate::__private);
    let max_attempts = args.max_attempts();
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
                // Not `ErrorMatcher::of::<E>`: a type that is not an error is then reported
                // by `RetryOn`'s message alone, without a note pointing into the runtime.
                quote_spanned! {path.span()=>
                    #p::ErrorMatcher { name: #name, matches: <#path as #p::RetryOn<_>>::MATCHES }
                }
            });
            quote!(#p::Some(&[#(#matchers),*]))
        }
    };
    let retry_timeouts = args.retry_timeouts.as_ref().is_none_or(|r| r.value);
    let optional = args.optional();
    let dep = match args.on_dep_failure() {
        OnDepFailure::Fail => quote!(#p::OnDepFailure::Fail),
        OnDepFailure::Skip => quote!(#p::OnDepFailure::Skip),
        OnDepFailure::RunAnyway => quote!(#p::OnDepFailure::RunAnyway),
    };
    quote! {
        #p::Policy {
            max_attempts: #max_attempts,
            backoff: #backoff,
            timeout: #timeout,
            retry_on: #retry_on,
            retry_timeouts: #retry_timeouts,
            on_dep_failure: #dep,
            optional: #optional,
        }
    }
}

fn opt_ms(ms: Option<u64>, p: &TokenStream) -> TokenStream {
    match ms {
        Some(ms) => quote!(#p::Some(#p::Duration::from_millis(#ms))),
        None => quote!(#p::None),
    }
}
