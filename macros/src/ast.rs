//! The typed models both macros work from: the arguments (each key's value already parsed
//! by `values.rs`) and the function, each parameter classified by what it is written as.
//! Building a model reports only malformed arguments; the rules about the function live
//! in `check.rs`.

use proc_macro2::TokenStream;
use quote::format_ident;
use syn::{FnArg, Ident, ItemFn, Pat, PatType, Receiver, ReturnType, Type, TypeReference};

use crate::attr::{self, set_once, CommonAttrs, Spanned, PROCESS_KEYS, TASK_KEYS};
use crate::ctxt::Ctxt;
use crate::types::{contains_impl_trait, ref_to, result_type_arg};
use crate::values::{self, Backoff, Mode, OnDepFailure, Overlap};

/// The most `retries` a task may declare.
const MAX_RETRIES: u64 = 1000;

/// The arguments of `#[task(...)]`.
#[derive(Default)]
pub(crate) struct TaskAttrs {
    pub(crate) common: CommonAttrs,
    pub(crate) retries: Option<Spanned<u32>>,
    pub(crate) max_attempts: Option<Spanned<u32>>,
    pub(crate) retry_on: Option<Spanned<Vec<syn::Path>>>,
    pub(crate) retry_timeouts: Option<Spanned<bool>>,
    pub(crate) backoff: Option<Spanned<Backoff>>,
    /// In milliseconds, greater than zero.
    pub(crate) timeout: Option<Spanned<u64>>,
    pub(crate) on_dep_failure: Option<Spanned<OnDepFailure>>,
    /// `optional` or `optional = true`: the task's failure does not fail its run.
    pub(crate) optional: Option<Spanned<bool>>,
}

impl TaskAttrs {
    pub(crate) fn from_tokens(cx: &Ctxt, args: TokenStream) -> Self {
        let mut out = TaskAttrs::default();
        let parser = syn::meta::parser(|meta| {
            let key = attr::path_str(&meta.path);
            if key == "optional" {
                // A flag: `optional`, or `optional = true | false`.
                let v = if meta.input.peek(syn::Token![=]) {
                    values::bool_lit(cx, &meta)?
                } else {
                    Some(true)
                };
                set_once(cx, &mut out.optional, &meta.path, v);
                return Ok(());
            }
            if attr::missing_value(cx, &meta, &key, TASK_KEYS)?
                || out.common.parse_key(cx, &meta, &key, "task")?
            {
                return Ok(());
            }
            let path = &meta.path;
            match key.as_str() {
                "retries" => {
                    let n = values::int_in_range(cx, &meta, 0, MAX_RETRIES)?;
                    set_once(cx, &mut out.retries, path, n);
                }
                "max_attempts" => {
                    let n = values::int_in_range(cx, &meta, 1, MAX_RETRIES + 1)?;
                    set_once(cx, &mut out.max_attempts, path, n);
                }
                "retry_on" => {
                    let types = values::error_types(cx, &meta)?;
                    set_once(cx, &mut out.retry_on, path, types);
                }
                "retry_timeouts" => {
                    let b = values::bool_lit(cx, &meta)?;
                    set_once(cx, &mut out.retry_timeouts, path, b);
                }
                "backoff" => {
                    let b = values::backoff(cx, &meta)?;
                    set_once(cx, &mut out.backoff, path, b);
                }
                "timeout" => {
                    let ms = values::timeout(cx, &meta)?;
                    set_once(cx, &mut out.timeout, path, ms);
                }
                "on_dep_failure" => {
                    let v = OnDepFailure::parse(cx, &meta)?;
                    set_once(cx, &mut out.on_dep_failure, path, v);
                }
                _ => {
                    attr::unknown_key(cx, "task", path, TASK_KEYS);
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

    /// `max_attempts`, or `retries + 1`, or 1.
    pub(crate) fn max_attempts(&self) -> u32 {
        match (&self.max_attempts, &self.retries) {
            (Some(m), _) => m.value,
            (None, Some(r)) => r.value + 1,
            (None, None) => 1,
        }
    }

    pub(crate) fn optional(&self) -> bool {
        self.optional.as_ref().is_some_and(|o| o.value)
    }

    pub(crate) fn on_dep_failure(&self) -> OnDepFailure {
        self.on_dep_failure
            .as_ref()
            .map_or_else(OnDepFailure::default, |d| d.value)
    }
}

/// The arguments of `#[process(...)]`.
#[derive(Default)]
pub(crate) struct ProcessAttrs {
    pub(crate) common: CommonAttrs,
    /// A cron expression (5 fields, or 6 with seconds first), already checked.
    pub(crate) schedule: Option<Spanned<String>>,
    /// Whether a `schedule` key was written (also when its value was refused), so that
    /// `tz` and `overlap` are not reported again for a schedule that was.
    pub(crate) schedule_written: bool,
    /// An IANA time zone name for the schedule, already checked.
    pub(crate) tz: Option<Spanned<String>>,
    /// The schedule's overlap policy.
    pub(crate) overlap: Option<Spanned<Overlap>>,
    pub(crate) mode: Option<Spanned<Mode>>,
    pub(crate) hooks: Option<Spanned<Type>>,
}

impl ProcessAttrs {
    pub(crate) fn from_tokens(cx: &Ctxt, args: TokenStream) -> Self {
        let mut out = ProcessAttrs::default();
        let parser = syn::meta::parser(|meta| {
            let key = attr::path_str(&meta.path);
            if attr::missing_value(cx, &meta, &key, PROCESS_KEYS)?
                || out.common.parse_key(cx, &meta, &key, "process")?
            {
                return Ok(());
            }
            let path = &meta.path;
            match key.as_str() {
                "schedule" => {
                    out.schedule_written = true;
                    let cron = values::schedule(cx, &meta)?;
                    set_once(cx, &mut out.schedule, path, cron);
                }
                "tz" => {
                    let tz = values::tz(cx, &meta)?;
                    set_once(cx, &mut out.tz, path, tz);
                }
                "overlap" => {
                    let overlap = Overlap::parse(cx, &meta)?;
                    set_once(cx, &mut out.overlap, path, overlap);
                }
                "mode" => {
                    let mode = Mode::parse(cx, &meta)?;
                    set_once(cx, &mut out.mode, path, mode);
                }
                "hooks" => {
                    let ty: Type = meta.value()?.parse()?;
                    set_once(cx, &mut out.hooks, path, Some(ty));
                }
                _ => {
                    attr::unknown_key(cx, "process", path, PROCESS_KEYS);
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

    pub(crate) fn mode(&self) -> Mode {
        self.mode.as_ref().map_or_else(Mode::default, |m| m.value)
    }
}

/// A `#[task]` function.
pub(crate) struct Task {
    pub(crate) attrs: TaskAttrs,
    pub(crate) func: ItemFn,
    /// The generated task type: the function's name in `CamelCase`.
    pub(crate) ident: Ident,
    /// One per parameter of the function, in order.
    pub(crate) params: Vec<TaskParam>,
    /// What the task produces: `T` for `-> T` and for `-> Result<T, E>`, `()` without a
    /// return type.
    pub(crate) output: Type,
    /// The whole return type when it is written `Result<…>`.
    pub(crate) result: Option<Type>,
}

/// A parameter of a `#[task]` function, by what it is written as.
pub(crate) enum TaskParam {
    Receiver(Receiver),
    /// `&Ctx` or `&mut Ctx`.
    Ctx {
        ty: Type,
        is_mut: bool,
    },
    /// A type with `impl Trait` in it.
    ImplTrait(Type),
    /// `&T` (other than the context).
    Borrowed(TypeReference),
    /// `Res<T>`: a shared resource the runtime supplies; not an argument of `new`.
    Resource(ResourceParam),
    /// Written with `Res` but not as `name: Res<T>`: `&Res<T>`, `Res` without exactly
    /// one type, or `Res<T>` inside another type.
    BadResource(BadResource),
    /// A value the task reads: a field of the task type and an argument of `new`.
    Input(Input),
}

pub(crate) struct ResourceParam {
    /// `T` in `Res<T>`.
    pub(crate) ty: Type,
    /// The local the generated code passes it in.
    pub(crate) local: Ident,
}

pub(crate) enum BadResource {
    /// `&Res<T>` or `&mut Res<T>`.
    Borrowed(Type),
    /// `Res`, `Res<A, B>`, `Res<'a>`…
    Arity(Type),
    /// `Option<Res<T>>`, `Vec<Res<T>>`…: the `Res` in the parameter's type.
    Nested(Type),
}

pub(crate) struct Input {
    /// The parameter's name, or `arg{i}` for a pattern.
    pub(crate) field: Ident,
    pub(crate) ty: Type,
}

impl Task {
    pub(crate) fn from_syn(attrs: TaskAttrs, func: ItemFn) -> Self {
        let sig = &func.sig;
        let params = sig
            .inputs
            .iter()
            .enumerate()
            .map(|(i, arg)| match arg {
                FnArg::Receiver(r) => TaskParam::Receiver(r.clone()),
                FnArg::Typed(pt) => task_param(i, pt),
            })
            .collect();
        let (output, result) = match &sig.output {
            ReturnType::Default => (syn::parse_quote!(()), None),
            ReturnType::Type(_, ty) => match result_type_arg(ty, 0) {
                Some(ok) => (ok, Some((**ty).clone())),
                None => ((**ty).clone(), None),
            },
        };
        let ident = Ident::new(&camel(&sig.ident.to_string()), sig.ident.span());
        Task {
            attrs,
            func,
            ident,
            params,
            output,
            result,
        }
    }

    pub(crate) fn resources(&self) -> impl Iterator<Item = &ResourceParam> {
        self.params.iter().filter_map(|p| match p {
            TaskParam::Resource(r) => Some(r),
            _ => None,
        })
    }

    pub(crate) fn inputs(&self) -> impl Iterator<Item = &Input> {
        self.params.iter().filter_map(|p| match p {
            TaskParam::Input(input) => Some(input),
            _ => None,
        })
    }

    pub(crate) fn is_method(&self) -> bool {
        self.params
            .iter()
            .any(|p| matches!(p, TaskParam::Receiver(_)))
    }
}

fn task_param(i: usize, pt: &PatType) -> TaskParam {
    let ty = &*pt.ty;
    if let Some(is_mut) = ref_to(ty, "Ctx") {
        return TaskParam::Ctx {
            ty: ty.clone(),
            is_mut,
        };
    }
    if contains_impl_trait(ty) {
        return TaskParam::ImplTrait(ty.clone());
    }
    if let Some(param) = resource_param(i, ty) {
        return param;
    }
    if let Type::Reference(r) = ty {
        return TaskParam::Borrowed(r.clone());
    }
    let field = match &*pt.pat {
        Pat::Ident(pi) => pi.ident.clone(),
        _ => format_ident!("arg{}", i),
    };
    TaskParam::Input(Input {
        field,
        ty: ty.clone(),
    })
}

/// `Res<T>` and the mistakes written with `Res`; `None` for a type without `Res` in it.
fn resource_param(i: usize, ty: &Type) -> Option<TaskParam> {
    if let Type::Reference(r) = ty {
        return res_args(&r.elem)
            .map(|_| TaskParam::BadResource(BadResource::Borrowed(ty.clone())));
    }
    if let Some(args) = res_args(ty) {
        let mut types = args.iter().filter_map(|a| match a {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        });
        return Some(match (args.len(), types.next()) {
            (1, Some(inner)) => TaskParam::Resource(ResourceParam {
                ty: inner.clone(),
                local: Ident::new(
                    &format!("__procession_res{i}"),
                    proc_macro2::Span::mixed_site(),
                ),
            }),
            _ => TaskParam::BadResource(BadResource::Arity(ty.clone())),
        });
    }
    find_res(ty).map(|inner| TaskParam::BadResource(BadResource::Nested(inner)))
}

/// The generic arguments of `ty` when it is a path ending in `Res` (none for a bare
/// `Res`).
fn res_args(ty: &Type) -> Option<Vec<syn::GenericArgument>> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Res" {
        return None;
    }
    Some(match &last.arguments {
        syn::PathArguments::AngleBracketed(a) => a.args.iter().cloned().collect(),
        _ => Vec::new(),
    })
}

/// A `Res<…>` anywhere inside `ty`.
fn find_res(ty: &Type) -> Option<Type> {
    struct Finder(Option<Type>);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type(&mut self, t: &'ast Type) {
            if self.0.is_none() && res_args(t).is_some() {
                self.0 = Some(t.clone());
            }
            syn::visit::visit_type(self, t);
        }
    }
    let mut f = Finder(None);
    syn::visit::Visit::visit_type(&mut f, ty);
    f.0
}

/// A `#[process]` function.
pub(crate) struct Process {
    pub(crate) attrs: ProcessAttrs,
    pub(crate) func: ItemFn,
    /// The generated process type: the function's name in `CamelCase`.
    pub(crate) ident: Ident,
    /// One per parameter of the function, in order.
    pub(crate) params: Vec<ProcessParam>,
}

/// A parameter of a `#[process]` function, by what it is written as.
pub(crate) enum ProcessParam {
    Receiver(Receiver),
    /// `&Builder` or `&mut Builder`.
    Builder {
        arg: PatType,
        is_mut: bool,
    },
    /// `&T` (other than the builder).
    Borrowed(Type),
    /// A parameter stored with each run: a field of the process type.
    Field(Field),
    /// A parameter written as a pattern other than a plain name.
    Pattern(Pat),
}

pub(crate) struct Field {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

impl Process {
    pub(crate) fn from_syn(attrs: ProcessAttrs, func: ItemFn) -> Self {
        let params = func
            .sig
            .inputs
            .iter()
            .map(|arg| match arg {
                FnArg::Receiver(r) => ProcessParam::Receiver(r.clone()),
                FnArg::Typed(pt) => {
                    if let Some(is_mut) = ref_to(&pt.ty, "Builder") {
                        ProcessParam::Builder {
                            arg: pt.clone(),
                            is_mut,
                        }
                    } else if let Type::Reference(_) = &*pt.ty {
                        ProcessParam::Borrowed((*pt.ty).clone())
                    } else if let Pat::Ident(pi) = &*pt.pat {
                        ProcessParam::Field(Field {
                            ident: pi.ident.clone(),
                            ty: (*pt.ty).clone(),
                        })
                    } else {
                        ProcessParam::Pattern((*pt.pat).clone())
                    }
                }
            })
            .collect();
        let ident = &func.sig.ident;
        let ident = Ident::new(&camel(&ident.to_string()), ident.span());
        Process {
            attrs,
            func,
            ident,
            params,
        }
    }

    pub(crate) fn fields(&self) -> impl Iterator<Item = &Field> {
        self.params.iter().filter_map(|p| match p {
            ProcessParam::Field(f) => Some(f),
            _ => None,
        })
    }

    pub(crate) fn is_method(&self) -> bool {
        self.params
            .iter()
            .any(|p| matches!(p, ProcessParam::Receiver(_)))
    }

    /// Where the builder is: the first parameter typed `&Builder` or `&mut Builder`.
    pub(crate) fn builder_at(&self) -> Option<usize> {
        self.params
            .iter()
            .position(|p| matches!(p, ProcessParam::Builder { .. }))
    }
}

/// `CamelCase` of a `snake_case` identifier.
fn camel(name: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(camel("fetch_orders"), "FetchOrders");
        assert_eq!(camel("a"), "A");
    }
}
