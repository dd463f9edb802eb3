// a task is a free function: `#[task]` on a method taking `&self` is refused
use procession::prelude::*;

struct Client;

impl Client {
    #[task]
    fn fetch(&self, url: String) -> String {
        url
    }
}

fn main() {}
