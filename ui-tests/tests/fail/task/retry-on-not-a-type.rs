// `retry_on` lists error types; a number is not one
use procession::prelude::*;

#[task(retries = 2, retry_on = [std::io::Error, 404])]
fn fetch() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
