//! Implementation detail of the `procession` crate: the `#[task]` and `#[process]`
//! attribute macros. Depend on `procession` and use them from there; their documentation
//! lives on the re-exports.

mod attr;
mod ctxt;
mod process;
mod task;

use proc_macro::TokenStream;

/// Turns a function into a task. See the `procession` crate documentation.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    task::expand(args.into(), item.into()).into()
}

/// Turns a function taking a `&mut Builder` into a process. See the `procession` crate
/// documentation.
#[proc_macro_attribute]
pub fn process(args: TokenStream, item: TokenStream) -> TokenStream {
    process::expand(args.into(), item.into()).into()
}
