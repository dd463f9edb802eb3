//! Compile-fail and compile-pass cases for `#[task]` and `#[process]`.
//!
//! Each `tests/fail/<area>/<mistake>.rs` holds one mistake and the `.stderr` rustc must
//! print for it; `tests/pass/*.rs` must build. Mistakes whose message depends on the `tz`
//! feature (on by default here) are in `tests/fail-tz` (checked with it) and
//! `tests/fail-no-tz` (checked by `cargo test -p ui-tests --no-default-features`). Snapshots are taken with one compiler
//! (1.95, no `rust-src`); regenerate them with
//! `TRYBUILD=overwrite cargo test -p ui-tests` and read the diff. On any other compiler
//! the test is ignored: rustc's wording changes between releases.

#[rustversion::attr(
    not(stable(1.95)),
    ignore = "stderr snapshots are taken with rustc 1.95"
)]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/fail/**/*.rs");
    #[cfg(feature = "tz")]
    {
        t.compile_fail("tests/fail-tz/**/*.rs");
        t.pass("tests/pass/*.rs");
    }
    #[cfg(not(feature = "tz"))]
    t.compile_fail("tests/fail-no-tz/**/*.rs");
}
