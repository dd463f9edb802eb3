//! The `procession` command line (see the `procession_cli` library for what it does).

fn main() -> std::process::ExitCode {
    procession_cli::main()
}
