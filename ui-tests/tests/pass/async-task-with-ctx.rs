// an `async fn` task taking the context first, then owned inputs
use procession::prelude::*;

#[task]
async fn fetch(ctx: &Ctx, url: String, attempts: u32) -> String {
    ctx.progress(10.0, format!("fetching {url}"));
    if !ctx.should_continue() {
        return String::new();
    }
    format!(
        "{url} after {attempts} attempt(s), attempt {}",
        ctx.attempt()
    )
}

#[task]
fn sync_with_ctx(ctx: &Ctx) -> String {
    ctx.task_name().to_owned()
}

fn main() {
    assert!(<Fetch as Task>::META.is_async);
    assert!(!<SyncWithCtx as Task>::META.is_async);
    let _ = Fetch::new("https://example.invalid", 3);
}
