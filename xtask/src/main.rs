//! `cargo xtask test`: the README's test command.
//!
//! Runs `cargo test --workspace --all-features` (extra arguments are passed on) after
//! making sure the real components some tests drive are on the machine:
//!
//! - the dashboard tests drive a headless Chromium through chromedriver (Debian packages
//!   `chromium` and `chromium-driver`);
//! - the PostgreSQL tests start a throw-away cluster from the distribution's server
//!   (package `postgresql`), unless `PROCESSION_PG_URL` names a server to use.
//!
//! What is missing is installed with `apt-get install -y …` when this runs as root;
//! otherwise it says what to install. Whatever is there is then required: the tests run
//! with `PROCESSION_REQUIRE_BROWSER=1` and `PROCESSION_REQUIRE_POSTGRES=1`, so that a
//! component that cannot start fails them instead of skipping them. Setting either
//! variable to `1` yourself makes a missing component an error here too.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const BROWSERS: [&str; 4] = ["chromium", "chromium-browser", "google-chrome", "chrome"];

/// A component some tests need.
struct Need {
    /// What the tests use it for.
    what: &'static str,
    /// The Debian packages that provide it.
    packages: &'static [&'static str],
    /// The variable that makes the tests fail without it.
    require: &'static str,
    /// Whether it is on the machine.
    present: fn() -> bool,
}

const NEEDS: [Need; 3] = [
    Need {
        what: "the dashboard tests (headless Chromium and chromedriver)",
        packages: &["chromium", "chromium-driver"],
        require: "PROCESSION_REQUIRE_BROWSER",
        present: have_browser,
    },
    Need {
        what: "the PostgreSQL tests (a throw-away cluster: initdb and pg_ctl)",
        packages: &["postgresql"],
        require: "PROCESSION_REQUIRE_POSTGRES",
        present: have_postgres,
    },
    Need {
        what: "the network partition test (network namespaces and veth pairs: `ip`)",
        packages: &["iproute2"],
        require: "PROCESSION_REQUIRE_NETNS",
        present: have_ip,
    },
];

fn have_ip() -> bool {
    which(&["ip"]).is_some()
}

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

/// A server named by `PROCESSION_PG_URL`, or Debian's `initdb` under
/// `/usr/lib/postgresql/<version>/bin` (where the tests' harness looks for it).
fn have_postgres() -> bool {
    if env::var_os("PROCESSION_PG_URL").is_some() {
        return true;
    }
    std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions
            .flatten()
            .any(|v| Path::new(&v.path()).join("bin/initdb").is_file())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"0")
}

/// `apt-get update && apt-get install -y <packages>`.
fn install(packages: &[&str]) -> Result<(), String> {
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
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(packages);
    apt(&args)
}

fn test(extra: &[String]) -> ExitCode {
    let missing: Vec<&Need> = NEEDS.iter().filter(|n| !(n.present)()).collect();
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().flat_map(|n| n.packages).copied().collect();
        for n in &missing {
            eprintln!("xtask: {} need {}", n.what, n.packages.join(" "));
        }
        if is_root() {
            if let Err(e) = install(&packages) {
                eprintln!("xtask: {e}");
                return ExitCode::FAILURE;
            }
            if let Some(n) = missing.iter().find(|n| !(n.present)()) {
                eprintln!("xtask: {} are still missing after the install", n.what);
                return ExitCode::FAILURE;
            }
        } else {
            eprintln!(
                "xtask: run this as root to install them, or `sudo apt-get install -y {}`",
                packages.join(" ")
            );
            if let Some(n) = missing
                .iter()
                .find(|n| env::var(n.require).as_deref() == Ok("1"))
            {
                eprintln!("xtask: {}=1 and {} are missing", n.require, n.what);
                return ExitCode::FAILURE;
            }
            eprintln!("xtask: running the tests without them (those tests say so and pass)");
        }
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--workspace", "--all-features"])
        .args(extra);
    for n in NEEDS.iter().filter(|n| (n.present)()) {
        cmd.env(n.require, "1");
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
