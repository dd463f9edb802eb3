// PROC-62: `retry_on` lists error types, not their names as strings
use procession::prelude::*;

#[task(retries = 2, retry_on = ["std::io::Error"])]
fn flaky() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
