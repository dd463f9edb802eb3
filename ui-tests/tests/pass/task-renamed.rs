// `name = "..."` gives a task a stable name of its own, used for node ids
use procession::prelude::*;

#[task(name = "load")]
fn load_orders_v2() -> Vec<u32> {
    vec![1, 2]
}

#[process]
fn orders(p: &mut Builder) {
    p.task(LoadOrdersV2::new());
}

fn main() {
    assert_eq!(<LoadOrdersV2 as Task>::META.name, "load");
    assert_eq!(Graph::of(Orders {}).unwrap().node_ids(), vec!["load"]);
}
