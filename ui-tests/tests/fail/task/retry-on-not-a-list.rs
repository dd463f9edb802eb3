// PROC-62: `retry_on` takes a list of error types, even for one type
use procession::prelude::*;

#[task(retries = 2, retry_on = std::io::Error)]
fn flaky() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
