//! The rules a model must follow before code is generated for it. Each broken rule is one
//! error, spanned at the user's token; generation only runs when there are none.

use quote::quote;
use syn::{ReturnType, Type};

use crate::ast::{BadResource, Process, ProcessParam, Task, TaskParam};
use crate::ctxt::Ctxt;
use crate::types::{contains_impl_trait, result_type_arg};

pub(crate) fn task(cx: &Ctxt, task: &Task) {
    let attrs = &task.attrs;
    if let (Some(_), Some(max_attempts)) = (&attrs.retries, &attrs.max_attempts) {
        cx.push(syn::Error::new(
            max_attempts.span,
            "pass either `retries` or `max_attempts`, not both (`max_attempts = retries + 1`)",
        ));
    }
    let sig = &task.func.sig;
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
    for (i, param) in task.params.iter().enumerate() {
        match param {
            TaskParam::Receiver(r) => cx.error_spanned_by(
                r,
                "`#[task]` functions cannot take `self`: a task is a free function; move the method body into a function taking the values it needs",
            ),
            TaskParam::Ctx { ty, is_mut } => {
                if *is_mut {
                    cx.error_spanned_by(ty, "the task context is shared: take it as `&Ctx`, not `&mut Ctx`");
                } else if i != 0 {
                    cx.error_spanned_by(ty, "the task context `&Ctx` must be the first parameter");
                }
            }
            TaskParam::ImplTrait(ty) => {
                cx.error_spanned_by(ty, "`impl Trait` is not supported in task inputs: an input is stored between tasks, so it needs a concrete type");
            }
            TaskParam::Borrowed(r) => cx.error_spanned_by(
                r,
                format_args!(
                    "task inputs must be owned values, because they are stored between tasks: {}",
                    owned_hint(&r.elem)
                ),
            ),
            TaskParam::Resource(_) => {}
            TaskParam::BadResource(BadResource::Borrowed(ty)) => {
                let elem = match ty {
                    Type::Reference(r) => &*r.elem,
                    other => other,
                };
                cx.error_spanned_by(
                    ty,
                    format_args!(
                        "take the resource by value: `{}` (a `Res` is a shared handle: passing it does not copy the resource)",
                        quote!(#elem).to_string().replace(" < ", "<").replace(" >", ">").replace(" <", "<")
                    ),
                );
            }
            TaskParam::BadResource(BadResource::Arity(ty)) => cx.error_spanned_by(
                ty,
                "a resource parameter names one type: `db: Res<PgPool>`",
            ),
            TaskParam::BadResource(BadResource::Nested(res)) => cx.error_spanned_by(
                res,
                "a resource is a parameter of its own (`db: Res<PgPool>`), not part of another type; for a resource that may be missing, call `ctx.resource::<PgPool>()` in the body",
            ),
            TaskParam::Input(input) => {
                if input.field.to_string().starts_with("__procession") {
                    cx.error_spanned_by(
                        &input.field,
                        "names starting with `__procession` are reserved for generated code",
                    );
                }
            }
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        if contains_impl_trait(ty) {
            cx.error_spanned_by(ty, "`impl Trait` is not supported as a task's output: the output is stored, so it needs a concrete type");
        }
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
        if let Type::Reference(r) = &task.output {
            cx.error_spanned_by(
                &task.output,
                format_args!(
                    "a task's output must be an owned value, because it is stored for the tasks that read it: {}",
                    owned_hint(&r.elem)
                ),
            );
        }
    }
}

pub(crate) fn process(cx: &Ctxt, process: &Process) {
    let attrs = &process.attrs;
    if !attrs.schedule_written {
        let with = [
            attrs.tz.as_ref().map(|t| ("tz", t.span)),
            attrs.overlap.as_ref().map(|o| ("overlap", o.span)),
        ];
        for (key, span) in with.into_iter().flatten() {
            cx.push(syn::Error::new(
                span,
                format!("`{key}` applies to the process's schedule, and there is none: add `schedule = \"0 2 * * *\"` (or set both on a `Schedule` at run time)"),
            ));
        }
    }
    let sig = &process.func.sig;
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
    // One mistake (a missing, misplaced or shared builder) gives one error, and the other
    // parameters still become fields of the process type.
    let builder_at = process.builder_at();
    match (builder_at, sig.inputs.first()) {
        (_, None) => cx.error_spanned_by(
            &sig.ident,
            format_args!("a `#[process]` function takes the builder as its first parameter: `fn {}(p: &mut Builder)`", sig.ident),
        ),
        // Reported with the parameter below when it is not first or not `&mut`.
        (Some(_), _) => {}
        (None, Some(syn::FnArg::Receiver(r))) => cx.error_spanned_by(
            r,
            "`#[process]` functions cannot take `self`; the first parameter is the builder: `p: &mut Builder`",
        ),
        (None, Some(first)) => cx.error_spanned_by(
            first,
            format_args!("the first parameter of a `#[process]` function is the builder: `fn {}(p: &mut Builder, ...)`", sig.ident),
        ),
    }
    for (i, param) in process.params.iter().enumerate() {
        match param {
            ProcessParam::Receiver(r) => {
                if i != 0 || builder_at.is_some() {
                    cx.error_spanned_by(r, "`#[process]` functions cannot take `self`");
                }
            }
            ProcessParam::Builder { arg, is_mut } => {
                if Some(i) != builder_at {
                    cx.error_spanned_by(
                        &arg.ty,
                        "a `#[process]` function takes one builder; remove this parameter",
                    );
                } else if i != 0 {
                    let pat = &arg.pat;
                    cx.error_spanned_by(
                        arg,
                        format_args!("the builder must be the first parameter: move `{}: &mut Builder` to the front", quote!(#pat)),
                    );
                } else if !is_mut {
                    cx.error_spanned_by(
                        &arg.ty,
                        "the builder must be taken mutably: `p: &mut Builder`",
                    );
                }
            }
            ProcessParam::Borrowed(ty) => {
                cx.error_spanned_by(ty, "process parameters must be owned values, because they are stored with each run (use `String` for `&str`, `Vec<T>` for `&[T]`)");
            }
            ProcessParam::Pattern(pat) => {
                cx.error_spanned_by(pat, "process parameters become fields of the process struct, so each needs a plain name (`sources: Vec<String>`)");
            }
            ProcessParam::Field(_) => {}
        }
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
