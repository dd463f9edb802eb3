// a parameter may share its function's name (or a module in its own type): the generated
// code neither shadows the function nor the module
use procession::prelude::*;

mod order {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    pub struct Order {
        pub amount: f64,
    }
}

#[task]
fn foo(foo: String) -> usize {
    foo.len()
}

#[task]
async fn bar(ctx: &Ctx, bar: u32) -> u32 {
    ctx.progress(50, "half way");
    bar * 2
}

#[task]
fn order(order: order::Order) -> order::Order {
    order
}

#[process]
fn nightly(p: &mut Builder, nightly: String) {
    let n = p.task(Foo::new(nightly));
    let _ = n;
    p.task(Bar::new(3));
    p.task(Order::new(order::Order { amount: 1.0 }));
}

fn main() {
    assert_eq!(foo("abc".into()), 3);
    let graph = Graph::of(Nightly {
        nightly: "x".into(),
    })
    .unwrap();
    assert_eq!(graph.len(), 3);
}
