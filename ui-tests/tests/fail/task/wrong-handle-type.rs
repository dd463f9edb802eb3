// the output of a task returning `f64` cannot feed an input declared `Vec<Order>`
use procession::prelude::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    amount: f64,
}

#[task]
fn load_orders() -> Vec<Order> {
    Vec::new()
}

#[task]
fn total_revenue(orders: Vec<Order>) -> f64 {
    orders.iter().map(|o| o.amount).sum()
}

#[task]
fn report(orders: Vec<Order>) -> String {
    format!("{} orders", orders.len())
}

#[process]
fn nightly(p: &mut Builder) {
    let orders = p.task(LoadOrders::new());
    let total = p.task(TotalRevenue::new(orders));
    p.task(Report::new(total));
}

fn main() {}
