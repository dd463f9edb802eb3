//! Code generation from a checked model. Nothing here reports a user error: every rule is
//! checked in `check.rs` before these run.

mod checks;
mod process;
mod task;

pub(crate) use checks::assumed_data;
pub(crate) use process::{data_bounds, process, process_type};
pub(crate) use task::task;
