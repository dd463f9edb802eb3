// a resource is supplied by the runtime, so it is not an argument of the task's `new`
use procession::prelude::*;

struct Pool;

#[task]
async fn load(pool: Res<Pool>, id: u32) -> u32 {
    let _ = pool;
    id
}

#[process]
fn job(p: &mut Builder) {
    p.task(Load::new(Res::new(Pool), 1));
}

fn main() {}
