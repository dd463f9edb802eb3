//! A throw-away PostgreSQL for the tests: one cluster per test binary, a database per
//! test.
//!
//! `PROCESSION_PG_URL` (a URL of a role allowed to create databases) points the tests at
//! an external server. Otherwise the first test that needs one starts a cluster with the
//! server binaries of the distribution (`/usr/lib/postgresql/*/bin`): `initdb` and
//! `pg_ctl` in a temporary directory, as user `postgres` when the tests run as root, on
//! a free port of 127.0.0.1, with `fsync=off`. A watchdog stops the server and removes
//! the directory as soon as the test binary exits, however it exits.
//!
//! When no server can be had, [`database`] returns `None` after saying how to install
//! one, unless `PROCESSION_REQUIRE_POSTGRES=1`: then it fails the test.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The URL of a new, empty database named after `test`; `None` (after a message) when
/// no server can be had and the tests are not required.
pub(crate) fn database(test: &str) -> Option<String> {
    let admin = match SERVER.get_or_init(server) {
        Ok(url) => url.clone(),
        Err(why) => return unavailable(why),
    };
    let name = format!(
        "t_{}_{}_{}",
        test.chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            })
            .take(30)
            .collect::<String>(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    // The blocking client must not run inside the test's tokio runtime.
    let created = {
        let (admin, name) = (admin.clone(), name.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls)
                .map_err(|e| format!("cannot connect to {admin}: {e}"))?;
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .map_err(|e| format!("cannot create database {name}: {e}"))
        })
        .join()
        .map_err(|_| "the database creator panicked".to_owned())
        .and_then(|r| r)
    };
    if let Err(why) = created {
        return unavailable(&why);
    }
    Some(with_dbname(&admin, &name))
}

/// Runs `sql` on the database at `url` (outside any async context).
pub(crate) fn execute(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
        c.batch_execute(&sql).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "panicked".to_owned())
    .and_then(|r| r)
}

fn unavailable<T>(why: &str) -> Option<T> {
    assert!(
        std::env::var("PROCESSION_REQUIRE_POSTGRES").as_deref() != Ok("1"),
        "PROCESSION_REQUIRE_POSTGRES=1 but no PostgreSQL server could be had: {why}"
    );
    eprintln!(
        "install postgresql (apt-get install -y postgresql) to run the PostgreSQL tests ({why})"
    );
    None
}

fn with_dbname(url: &str, db: &str) -> String {
    // Our URLs end with `/<db>` (no query string).
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && i > url.find("://").unwrap_or(0) + 2 => {
            format!("{}/{db}", &url[..i])
        }
        _ => format!("{url}/{db}"),
    }
}

fn server() -> Result<String, String> {
    if let Ok(url) = std::env::var("PROCESSION_PG_URL") {
        return Ok(url);
    }
    start_cluster()
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and `pg_ctl`.
fn bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when we are root (the server refuses root).
fn as_postgres(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn start_cluster() -> Result<String, String> {
    let bin = bindir().ok_or("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")?;
    let root = is_root();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("procession-pg-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if root {
        let mut chown = Command::new("chown");
        chown.arg("postgres:postgres").arg(&dir);
        run(chown, "chown")?;
    }
    let data = dir.join("data");
    let mut initdb = as_postgres(root, &bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
    run(initdb, "initdb")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    // The watchdog first: whatever happens next, the server goes when we go.
    let pg_ctl = bin.join("pg_ctl");
    let stop = if root {
        format!("runuser -u postgres -- '{}'", pg_ctl.display())
    } else {
        format!("'{}'", pg_ctl.display())
    };
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while [ -d /proc/{pid} ]; do sleep 0.3; done; {stop} -D '{data}' stop -m immediate; rm -rf '{dir}'",
            pid = std::process::id(),
            data = data.display(),
            dir = dir.display(),
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the watchdog: {e}"))?;
    let mut start = as_postgres(root, &pg_ctl);
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-w", "-t", "60", "-o"])
        .arg(format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            dir.display()
        ))
        .arg("start");
    run(start, "pg_ctl start").map_err(|e| {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        format!("{e}\nserver log:\n{log}")
    })?;
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}
