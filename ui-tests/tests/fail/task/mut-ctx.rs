// the task context is shared with the runtime, so a task takes `&Ctx`, never `&mut Ctx`
use procession::prelude::*;

#[task]
async fn fetch(ctx: &mut Ctx, url: String) -> String {
    ctx.progress(50.0, "fetching");
    url
}

fn main() {}
