// PROC-63: every type in `retry_on` must be an error type; `i32` is not
use procession::prelude::*;

#[task(retries = 2, retry_on = [i32])]
fn flaky() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
