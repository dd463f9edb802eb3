// task errors cross threads: `Box<dyn Error>` must be `Box<dyn Error + Send + Sync>`
use procession::prelude::*;

#[task]
fn parse(text: String) -> Result<u32, Box<dyn std::error::Error>> {
    Ok(text.parse()?)
}

fn main() {}
