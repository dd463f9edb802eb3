// a plain `fn` task returning `Result` with several accepted error types
use procession::prelude::*;

#[derive(Debug, thiserror::Error)]
enum ParseError {
    #[error("empty input")]
    Empty,
}

#[task]
fn parse(text: String) -> Result<u32, ParseError> {
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(text.len() as u32)
}

#[task]
fn parse_boxed(text: String) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    Ok(text.parse()?)
}

#[task]
fn parse_string_error(text: String) -> Result<u32, String> {
    text.parse()
        .map_err(|e: std::num::ParseIntError| e.to_string())
}

#[task]
fn parse_std_result(text: String) -> std::result::Result<u32, std::num::ParseIntError> {
    text.parse()
}

#[task]
fn final_error(text: String) -> Result<u32, NonRetryable> {
    text.parse().map_err(|_| NonRetryable::msg("not a number"))
}

#[process]
fn parsing(p: &mut Builder) {
    p.task(Parse::new("12"));
    p.task(ParseBoxed::new("12"));
    p.task(ParseStringError::new("12"));
    p.task(ParseStdResult::new("12"));
    p.task(FinalError::new("12"));
}

fn main() {
    assert_eq!(Graph::of(Parsing {}).unwrap().len(), 5);
}
