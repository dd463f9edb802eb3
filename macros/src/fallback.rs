//! What a macro emits when it reports an error: the user's item unchanged, the errors, and
//! a stub of the generated type so that code using it still type-checks and only the real
//! mistake is reported.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Ident, Type};

use crate::ast::{Process, Task};
use crate::expand;

/// The user's item, untouched, plus the errors: keeps rust-analyzer and later errors useful.
pub(crate) fn with_errors(
    item: &TokenStream,
    extra: &TokenStream,
    error: &syn::Error,
) -> TokenStream {
    let errors = error.to_compile_error();
    quote::quote! {
        #item
        #extra
        #errors
    }
}

/// On error: the user's function plus a task type with the right name and constructor
/// arity, so the rest of the crate type-checks and only the real mistake is reported.
pub(crate) fn task(model: &Task) -> TokenStream {
    // A method (`self` receiver) sits in an impl block, where a stub struct would only add
    // errors of its own.
    if model.is_method() {
        return TokenStream::new();
    }
    let krate = &model.attrs.common.krate();
    let vis = &model.func.vis;
    let name = &model.ident;
    let fields: Vec<&Ident> = model.inputs().map(|i| &i.field).collect();
    // Keep the declared output type when it can be named in an impl, so the task's handle
    // keeps its type where it is used and no second error follows; `()` otherwise.
    let (output, bound) = if is_nameable(&model.output) {
        let output = &model.output;
        let bound = expand::assumed_data(&quote!(#krate::__private), output);
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
                resources: &[],
            };
            fn visit_inputs(&self, _: &mut dyn FnMut(#krate::__private::Read)) {}
            fn into_args(self, _: &#krate::__private::Inputs<'_>) -> #krate::__private::Result<(), #krate::__private::InputError> {
                unimplemented!("`#[task]` reported an error")
            }
            fn call(_: (), _: #krate::__private::Ctx) -> impl #krate::__private::Future<Output = #krate::__private::Result<Self::Output, #krate::__private::BoxError>> + ::core::marker::Send + 'static {
                async { unimplemented!("`#[task]` reported an error") }
            }
        }
    }
}

/// On error: the user's function plus the process type, with a `Process` impl that builds
/// nothing, so code that uses the process still type-checks.
pub(crate) fn process(model: &Process) -> TokenStream {
    // As for tasks: a method sits in an impl block, where a stub would only add errors.
    if model.is_method() {
        return TokenStream::new();
    }
    let krate = model.attrs.common.krate();
    let name = &model.ident;
    let p = quote!(#krate::__private);
    let ty = expand::process_type(model);
    let bounds = expand::data_bounds(model);
    quote! {
        #ty
        #[allow(clippy::all, clippy::pedantic)]
        impl #p::Process for #name where #( #bounds, )* {
            const META: #p::ProcessMeta = #p::ProcessMeta {
                name: "",
                description: "",
                schedule: #p::None,
                tz: #p::None,
                overlap: #p::Overlap::Skip,
                mode: #p::Mode::Dataflow,
            };
            fn build(self, _: &mut #p::Builder) {
                unimplemented!("`#[process]` reported an error")
            }
        }
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
