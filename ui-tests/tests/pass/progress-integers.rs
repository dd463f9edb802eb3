// `ctx.progress` takes any number as the percentage, or `None` when it is unknown
use procession::prelude::*;

#[task]
async fn import(ctx: &Ctx, rows: Vec<String>) -> usize {
    ctx.progress(None, "counting");
    ctx.progress(0, "starting");
    ctx.progress(12.5, "a float");
    ctx.progress(50_u8, "a u8");
    for (i, _) in rows.iter().enumerate() {
        ctx.progress(i * 100 / rows.len(), "a usize");
        ctx.progress(i as u64, "a u64");
    }
    ctx.progress(Some(99.0), "an Option<f64>");
    ctx.progress(100.0_f32, "an f32");
    rows.len()
}

fn main() {
    let _ = Import::new(vec!["a".to_owned()]);
}
