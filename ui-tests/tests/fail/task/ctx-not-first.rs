// the task context `&Ctx` must come before the inputs
use procession::prelude::*;

#[task]
async fn fetch(url: String, ctx: &Ctx) -> String {
    ctx.progress(50.0, "fetching");
    url
}

fn main() {}
