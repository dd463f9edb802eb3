// a resource is taken by value (`Res<T>` is a shared handle), not by reference
use procession::prelude::*;

struct Pool;

#[task]
async fn load(pool: &Res<Pool>, id: u32) -> u32 {
    let _ = pool;
    id
}

fn main() {}
