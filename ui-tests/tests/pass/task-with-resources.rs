// resources mix with the context and inputs in any order after the context, in async and
// blocking tasks; `new` takes the inputs only
use procession::prelude::*;
use std::sync::Mutex;

struct Pool(Mutex<Vec<u32>>);
struct Prefix(String);

#[task]
async fn store(ctx: &Ctx, pool: Res<Pool>, id: u32, prefix: Res<Prefix>) -> String {
    ctx.progress(50.0, "storing");
    pool.0.lock().unwrap().push(id);
    format!("{}{id}", prefix.0)
}

#[task]
fn shout(text: String, prefix: Res<Prefix>) -> String {
    format!("{}{}", prefix.0, text.to_uppercase())
}

#[process]
fn job(p: &mut Builder, id: u32) {
    let s = p.task(Store::new(id));
    p.task(Shout::new(s));
}

fn main() {
    assert_eq!(<Store as Task>::META.resources.len(), 2);
    assert_eq!(<Shout as Task>::META.resources, &[procession::ResourceKey::of::<Prefix>()]);
    let _ = Job { id: 1 };
}
