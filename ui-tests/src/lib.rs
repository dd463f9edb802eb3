//! trybuild cases for the procession macros (see tests/ui.rs).
