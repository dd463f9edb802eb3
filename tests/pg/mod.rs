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
//!
//! A test that stops or restarts the server starts a [`Cluster`] of its own
//! ([`own_cluster`]; never the external server). The benchmark program includes this
//! file too (`#[path]`) for its cluster with `fsync` on.

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
    match create_database(&admin, test) {
        Ok(url) => Some(url),
        Err(why) => unavailable(&why),
    }
}

/// Creates a new, empty database named after `test` on the server of `admin` (a URL of
/// a role allowed to create databases); returns its URL.
pub(crate) fn create_database(admin: &str, test: &str) -> Result<String, String> {
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
    let (url, n) = (admin.to_owned(), name.clone());
    std::thread::spawn(move || -> Result<(), String> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        c.batch_execute(&format!("CREATE DATABASE {n}"))
            .map_err(|e| format!("cannot create database {n}: {e}"))
    })
    .join()
    .map_err(|_| "the database creator panicked".to_owned())
    .and_then(|r| r)?;
    Ok(with_dbname(admin, &name))
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

pub(crate) fn unavailable<T>(why: &str) -> Option<T> {
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
    // Kept for the whole test binary: the watchdog stops it when the binary exits.
    Cluster::start(Durability::None).map(|c| std::mem::ManuallyDrop::new(c).url.clone())
}

/// A cluster of the calling test's own (`None` after a message when no server binaries
/// can be found and the tests are not required).
pub(crate) fn own_cluster(durability: Durability) -> Option<Cluster> {
    match Cluster::start(durability) {
        Ok(c) => Some(c),
        Err(why) => unavailable(&why),
    }
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

/// What the server may lose when it stops abruptly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// `fsync`, `synchronous_commit` and `full_page_writes` off: fast functional tests;
    /// an immediate stop may lose commits it had acknowledged.
    None,
    /// `synchronous_commit` on (`fsync` off): an immediate stop or restart of the server
    /// loses no acknowledged commit (only a crash of the machine would).
    Commits,
    /// Everything on, as a production server: for benchmarks.
    Full,
}

/// A throw-away cluster under a temporary directory, served on a free port of
/// 127.0.0.1; stopped and removed when dropped, or by its watchdog when the process
/// exits however it exits.
pub(crate) struct Cluster {
    /// `postgres://postgres@127.0.0.1:<port>/postgres` (the superuser, trusted).
    pub(crate) url: String,
    bin: PathBuf,
    root: bool,
    dir: PathBuf,
    data: PathBuf,
    options: String,
}

impl Cluster {
    /// `initdb` and `pg_ctl start` with the newest server binaries installed.
    pub(crate) fn start(durability: Durability) -> Result<Cluster, String> {
        let bin =
            bindir().ok_or("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")?;
        let root = is_root();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "procession-pg-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if root {
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(&dir);
            run(chown, "chown")?;
        }
        let data = dir.join("data");
        let mut initdb = as_postgres(root, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
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
                "while [ -d /proc/{pid} ] && [ -d '{data}' ]; do sleep 0.3; done; {stop} -D '{data}' stop -m immediate; rm -rf '{dir}'",
                pid = std::process::id(),
                data = data.display(),
                dir = dir.display(),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the watchdog: {e}"))?;
        let settings = match durability {
            Durability::None => "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Durability::Commits => "-c fsync=off -c synchronous_commit=on",
            Durability::Full => "-c fsync=on -c synchronous_commit=on",
        };
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' \
             {settings} -c max_connections=200",
            dir.display()
        );
        let cluster = Cluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            root,
            dir,
            data,
            options,
        };
        cluster.pg_ctl("start", &[])?;
        Ok(cluster)
    }

    /// Also serves address `addr` (e.g. the host end of a veth pair), trusting clients
    /// of network `net` (CIDR); restarts the server. The URL stays on 127.0.0.1.
    pub(crate) fn listen_also(&mut self, addr: &str, net: &str) -> Result<(), String> {
        use std::io::Write as _;
        let hba = self.data.join("pg_hba.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&hba)
            .and_then(|mut f| writeln!(f, "host all all {net} trust"))
            .map_err(|e| format!("cannot write {}: {e}", hba.display()))?;
        self.options = self.options.replace(
            "listen_addresses=127.0.0.1",
            &format!("listen_addresses='127.0.0.1,{addr}'"),
        );
        self.pg_ctl("restart", &["-m", "fast"])
    }

    /// A new, empty database named after `test`; its URL.
    pub(crate) fn database(&self, test: &str) -> Result<String, String> {
        create_database(&self.url, test)
    }

    /// The path of server program `name` (`pgbench`, `psql`, …).
    pub(crate) fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// `pg_ctl restart -m immediate`: the server stops at once, as in a crash (open
    /// sessions break, transactions in flight are rolled back by recovery), and starts
    /// again; returns when it accepts connections.
    pub(crate) fn restart_immediate(&self) -> Result<(), String> {
        self.pg_ctl("restart", &["-m", "immediate"])
    }

    /// `pg_ctl stop -m immediate`.
    pub(crate) fn stop_immediate(&self) -> Result<(), String> {
        self.pg_ctl("stop", &["-m", "immediate"])
    }

    /// `pg_ctl start` after [`stop_immediate`](Cluster::stop_immediate); returns when
    /// the server accepts connections.
    pub(crate) fn start_again(&self) -> Result<(), String> {
        self.pg_ctl("start", &[])
    }

    fn pg_ctl(&self, action: &str, extra: &[&str]) -> Result<(), String> {
        let mut cmd = as_postgres(self.root, &self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("log"));
        cmd.args(extra);
        if action != "stop" {
            cmd.args(["-w", "-t", "60", "-o", &self.options]);
        }
        cmd.arg(action);
        run(cmd, &format!("pg_ctl {action}")).map_err(|e| {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            format!("{e}\nserver log:\n{log}")
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl("stop", &["-m", "immediate"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------- shared by the multi-process worker tests

/// Runs `q` on the database at `url`, panicking with the statement on failure.
pub(crate) fn sql(url: &str, q: &str) {
    execute(url, q).unwrap_or_else(|e| panic!("{q}: {e}"));
}

/// Rows of a query (outside any async context).
pub(crate) fn rows(url: &str, q: &str) -> Vec<postgres::Row> {
    let (url, q) = (url.to_owned(), q.to_owned());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query(q.as_str(), &[]).unwrap()
    })
    .join()
    .unwrap()
}

/// A new database (see [`database`]) with the side-effect tables of [`effect_tables`].
pub(crate) fn database_with(test: &str, tables: &[&str]) -> Option<String> {
    let url = database(test)?;
    effect_tables(&url, tables);
    Some(url)
}

/// Creates a table of task side effects for each name in `tables`: `(run, task,
/// attempt, worker)`, one row per task and attempt (a second one fails).
pub(crate) fn effect_tables(url: &str, tables: &[&str]) {
    for t in tables {
        sql(
            url,
            &format!(
                "CREATE TABLE {t} (run text, task integer, attempt integer, worker text,
                                   PRIMARY KEY (run, task, attempt))"
            ),
        );
    }
}

/// `(task, attempt, worker)` of run `run`'s effects, in order of task and attempt.
pub(crate) fn effects_of(url: &str, run: &str) -> Vec<(i32, i32, String)> {
    rows(
        url,
        &format!(
            "SELECT task, attempt, worker FROM effects WHERE run = '{run}' ORDER BY task, attempt"
        ),
    )
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Polls `f` every 20 ms until it holds; panics after `within`.
pub(crate) fn wait_until(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Prints a worker process's warnings on stdout, where the test reads them.
pub(crate) struct Warnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                let _ = write!(self.0, " {}={v:?}", f.name());
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                use std::fmt::Write as _;
                let _ = write!(self.0, " {}={v}", f.name());
            }
        }
        if *event.metadata().level() <= tracing::Level::WARN {
            let mut t = Text(String::new());
            event.record(&mut t);
            println!("WARN{}", t.0);
        }
    }
}

/// The state of run `id`'s record, read straight from the table (`None` before it exists).
pub(crate) fn run_state(url: &str, id: &str) -> Option<procession::State> {
    let code: Option<i16> = rows(
        url,
        &format!("SELECT state FROM procession_records WHERE id = '{id}'"),
    )
    .first()
    .map(|r| r.get(0));
    code.map(|c| procession::State::ALL[usize::try_from(c).unwrap()])
}

/// Collects the rest of a worker process's output lines on a thread of their own; with
/// `echo`, its warnings are printed too, prefixed by that name.
pub(crate) fn collect_lines(
    lines: impl Iterator<Item = std::io::Result<String>> + Send + 'static,
    echo: Option<String>,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if let Some(who) = echo.as_deref().filter(|_| l.starts_with("WARN")) {
                println!("{who}: {l}");
            }
            s2.lock().unwrap().push(l);
        }
    });
    seen
}

/// The last value of counter `name` in the `stats name=value …` lines of `lines` (0
/// before the first).
pub(crate) fn last_stat(lines: &std::sync::Mutex<Vec<String>>, name: &str) -> u64 {
    let key = format!("{name}=");
    lines
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|l| l.starts_with("stats "))
        .and_then(|l| {
            l.split(' ')
                .find_map(|w| w.strip_prefix(key.as_str()))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
