//! What a type is written as: the macros see tokens, not types, so these look at syntax only.

use syn::Type;

/// `Some(is_mut)` when `ty` is `&X` or `&mut X` for a path whose last segment is `name`
/// (`&Ctx`, `&mut procession::Builder`).
pub(crate) fn ref_to(ty: &Type, name: &str) -> Option<bool> {
    if let Type::Reference(r) = ty {
        if let Type::Path(p) = &*r.elem {
            if p.path.segments.last().is_some_and(|s| s.ident == name) {
                return Some(r.mutability.is_some());
            }
        }
    }
    None
}

/// True when `impl Trait` appears anywhere in `ty`.
pub(crate) fn contains_impl_trait(ty: &Type) -> bool {
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

/// The `n`th type argument of `ty` when it is written `Result<…>` (any path ending in
/// `Result`).
pub(crate) fn result_type_arg(ty: &Type, n: usize) -> Option<Type> {
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
