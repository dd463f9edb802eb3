// a resource is a parameter of its own, not part of another type
use procession::prelude::*;

struct Pool;

#[task]
async fn load(pool: Option<Res<Pool>>, id: u32) -> u32 {
    let _ = pool;
    id
}

fn main() {}
