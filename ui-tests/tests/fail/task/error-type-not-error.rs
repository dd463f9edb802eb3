// the error of a `Result`-returning task must implement `std::error::Error`; `u8` does not
use procession::prelude::*;

#[task]
fn parse_port(text: String) -> Result<u16, u8> {
    text.parse().map_err(|_| 1)
}

fn main() {}
