//! `cargo xtask test`: the README's test command.
//!
//! Runs `cargo test --workspace --all-features` (extra arguments are passed on). The
//! dashboard tests drive a headless Chromium through chromedriver: when either is
//! missing and this runs as root, they are installed first with
//! `apt-get install -y chromium chromium-driver`; when not root, it says what to install.
//! Whenever the browser is there, the tests run with `PROCESSION_REQUIRE_BROWSER=1`, so
//! that a browser that cannot start fails them instead of skipping them.

use std::env;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

const PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];
const BROWSERS: [&str; 4] = ["chromium", "chromium-browser", "google-chrome", "chrome"];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask test [cargo test arguments]");
            ExitCode::from(2)
        }
    }
}

/// The first of `names` found on `PATH`.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn have_browser() -> bool {
    which(&["chromedriver"]).is_some() && which(&BROWSERS).is_some()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"0")
}

/// `apt-get update && apt-get install -y chromium chromium-driver`.
fn install_browser() -> Result<(), String> {
    let apt = |args: &[&str]| -> Result<(), String> {
        eprintln!("xtask: apt-get {}", args.join(" "));
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("apt-get {} failed ({status})", args.join(" ")))
        }
    };
    apt(&["update"])?;
    let mut install = vec!["install", "-y"];
    install.extend(PACKAGES);
    apt(&install)
}

fn test(extra: &[String]) -> ExitCode {
    let required = env::var("PROCESSION_REQUIRE_BROWSER").as_deref() == Ok("1");
    let mut browser = have_browser();
    if !browser {
        if is_root() {
            eprintln!("xtask: the dashboard tests need Chromium and chromedriver; installing them");
            if let Err(e) = install_browser() {
                eprintln!("xtask: {e}");
                return ExitCode::FAILURE;
            }
            browser = have_browser();
            if !browser {
                eprintln!("xtask: chromium or chromedriver is still not on PATH after the install");
                return ExitCode::FAILURE;
            }
        } else {
            eprintln!(
                "xtask: the dashboard tests need Chromium and chromedriver: run this as root to \
                 install them, or `sudo apt-get install -y {}`",
                PACKAGES.join(" ")
            );
            if required {
                return ExitCode::FAILURE;
            }
            eprintln!("xtask: running the tests without them (the browser tests say so and pass)");
        }
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--workspace", "--all-features"])
        .args(extra);
    if browser {
        cmd.env("PROCESSION_REQUIRE_BROWSER", "1");
    }
    match cmd.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("xtask: cargo test failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask: cannot run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}
