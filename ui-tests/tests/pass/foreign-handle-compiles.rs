// WF-36: a handle made by another graph's builder type-checks (handles carry no graph brand in
// their type); the mistake is caught when the graph is built, as `GraphError::ForeignHandle`
use procession::prelude::*;

#[task]
fn one() -> u32 {
    1
}

#[task]
fn double(x: u32) -> u32 {
    x * 2
}

#[process]
fn borrows_a_handle(p: &mut Builder) {
    let mut other = TaskGraph::new();
    let foreign = other.add("one", One::new()).unwrap();
    p.task(Double::new(foreign));
}

fn main() {
    let err = Graph::of(BorrowsAHandle {}).unwrap_err();
    assert!(matches!(err, GraphError::ForeignHandle { .. }), "{err}");
}
