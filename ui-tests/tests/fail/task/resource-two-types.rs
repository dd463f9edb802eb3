// a resource parameter names exactly one type
use procession::prelude::*;

struct Pool;
struct Client;

#[task]
async fn load(both: Res<Pool, Client>, id: u32) -> u32 {
    let _ = both;
    id
}

fn main() {}
