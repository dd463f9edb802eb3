// a resource is shared by tasks on several threads, so it must be `Send + Sync`
use procession::prelude::*;
use std::cell::RefCell;

#[task]
async fn load(cache: Res<RefCell<Vec<u32>>>, id: u32) -> u32 {
    cache.borrow_mut().push(id);
    id
}

fn main() {}
