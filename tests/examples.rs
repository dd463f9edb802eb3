//! The examples run as tests, so `cargo test` proves they work as shown.

#[path = "../examples/crawler.rs"]
mod crawler;

// The crawler example: shared resources, a per-run event stream, and a cancel once the
// crawl has made progress; it asserts its own outcome.
#[test]
fn crawler_example_runs() {
    crawler::main().expect("the crawler example ends without an error");
}
