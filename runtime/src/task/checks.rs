//! The traits behind the compile-time checks of `#[task]` and `#[process]`.
//!
//! They appear in compiler errors (``the trait `StoredInput<config, _>` is not implemented
//! for `Config` ``), which is why they are documented; you never implement or call them.
//! Each check is generated next to the item, spanned at the type it checks, and fails
//! with one message that says what is wrong and how to fix it:
//!
//! | trait | checks | fix |
//! |---|---|---|
//! | [`StoredInput`] | a task parameter's type | derive `Serialize` and `Deserialize` (inputs are stored between tasks) |
//! | [`StoredOutput`] | a task's output type | the same (outputs are stored for the tasks that read them) |
//! | [`StoredParam`] | a process parameter's type | the same (parameters are stored with each run) |
//! | [`RetryOn`] | each type in `#[task(retry_on = [...])]` | list error types (`std::error::Error + 'static`) |
//!
//! # How
//!
//! Generated code asserts `<Type as StoredInput<param, _>>::check()` for every parameter,
//! in a generic fn whose type parameter is named after the parameter, so the message can
//! name it. Each trait has two impls: one for the types that meet the requirement
//! ([`Holds`]) and one no type can take ([`NeverHolds`]). With two candidates rustc weighs
//! both and, when neither applies, reports the check trait itself, with its message, once,
//! instead of one raw error per unmet serde bound; the second generic parameter is
//! inferred. A call through a qualified path, unlike a generic fn's bound, adds no
//! "required by a bound in …" note pointing into the runtime's sources.
//!
//! # Examples
//!
//! ```
//! use procession::checks::StoredInput;
//!
//! // What `#[task] fn f(order_id: u64)` asserts about its parameter:
//! #[allow(non_camel_case_types)]
//! fn check<order_id>() {
//!     <u64 as StoredInput<order_id, _>>::check();
//! }
//! check::<()>();
//! ```

use std::error::Error as StdError;

use crate::task::data::Data;

/// Marks the impl of a check trait taken by the types that meet the requirement.
#[derive(Debug)]
pub enum Holds {}

/// Marks the impl of a check trait that no type takes (see the module docs).
#[derive(Debug)]
pub enum NeverHolds {}

/// Implemented by no type: the bound of the [`NeverHolds`] impls.
pub trait Impossible {}

/// Met by a task parameter's type that can be stored: task inputs are stored between
/// tasks. Implemented for every [`Data`](crate::Data) type.
#[diagnostic::on_unimplemented(
    message = "task input `{Param}` is stored between tasks, so its type `{Self}` must implement `Serialize` and `Deserialize`",
    label = "cannot be stored",
    note = "task inputs are written to the store (JSON) and read back by the task, possibly after a restart: the type must implement `serde::Serialize`, `serde::de::DeserializeOwned` and `Send`, and own its data",
    note = "for your own types add `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait StoredInput<Param, M> {
    /// Does nothing: calling it asserts the bound.
    fn check() {}
}

impl<T: Data, P> StoredInput<P, Holds> for T {}
impl<T: Impossible, P> StoredInput<P, NeverHolds> for T {}

/// Met by a task's output type that can be stored: outputs are stored for the tasks that
/// read them. Implemented for every [`Data`](crate::Data) type.
#[diagnostic::on_unimplemented(
    message = "the output of task `{Task}` is stored for the tasks that read it, so its type `{Self}` must implement `Serialize` and `Deserialize`",
    label = "cannot be stored",
    note = "a task's output is written to the store (JSON) when the task ends: the type must implement `serde::Serialize`, `serde::de::DeserializeOwned` and `Send`, and own its data",
    note = "for your own types add `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait StoredOutput<Task, M> {
    /// Does nothing: calling it asserts the bound.
    fn check() {}
}

impl<T: Data, K> StoredOutput<K, Holds> for T {}
impl<T: Impossible, K> StoredOutput<K, NeverHolds> for T {}

/// Met by a process parameter's type that can be stored: parameters are stored with each
/// run. Implemented for every [`Data`](crate::Data) type.
#[diagnostic::on_unimplemented(
    message = "process parameter `{Param}` is stored with each run, so its type `{Self}` must implement `Serialize` and `Deserialize`",
    label = "cannot be stored",
    note = "a run's parameters are written to the store (JSON) so that a restarted program can rebuild the run: the type must implement `serde::Serialize`, `serde::de::DeserializeOwned` and `Send`, and own its data",
    note = "for your own types add `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait StoredParam<Param, M> {
    /// Does nothing: calling it asserts the bound.
    fn check() {}
}

impl<T: Data, P> StoredParam<P, Holds> for T {}
impl<T: Impossible, P> StoredParam<P, NeverHolds> for T {}

/// Met by each type listed in `#[task(retry_on = [...])]`: error types. Implemented for
/// every `std::error::Error + 'static` type.
#[diagnostic::on_unimplemented(
    message = "`retry_on` lists error types, and `{Self}` is not one",
    label = "does not implement `std::error::Error`",
    note = "`retry_on = [A, B]` retries an attempt whose error (or an error in its `source()` chain) is an `A` or a `B`; each must implement `std::error::Error + 'static`"
)]
pub trait RetryOn<M> {
    /// True when the error, or an error in its source chain, is a `Self`.
    const MATCHES: fn(&(dyn StdError + 'static)) -> bool;
}

impl<E: StdError + 'static> RetryOn<Holds> for E {
    const MATCHES: fn(&(dyn StdError + 'static)) -> bool = super::chain_has::<E>;
}

impl<E: Impossible> RetryOn<NeverHolds> for E {
    const MATCHES: fn(&(dyn StdError + 'static)) -> bool = |_| false;
}
