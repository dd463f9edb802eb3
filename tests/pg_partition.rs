//! A worker cut off from PostgreSQL by a network partition (issue 14, optional item):
//! the worker runs in a network namespace of its own and reaches the server over a veth
//! pair; the test takes the link down while the worker runs spread tasks, and up again.
//!
//! Unlike a killed or stopped worker, a partitioned one keeps running with connections
//! that neither answer nor break (no packet crosses, no reset comes). What must hold:
//! the other worker takes its tasks over once their leases expire and the run ends with
//! the right result; the cut-off worker stops its tasks on its own (its heartbeat cannot
//! reach the database); once the link is back it heartbeats again, and its late finishes
//! are refused.
//!
//! Needs root (namespaces, links) and `ip` (iproute2): `cargo xtask test` installs
//! iproute2 when missing and, as root, sets `PROCESSION_REQUIRE_NETNS=1`, so that a
//! missing `ip` fails the test instead of skipping it. Not root: the test says so and
//! passes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procession::prelude::*;
use procession::State;

mod pg;
use pg::{rows, run_state, wait_until, Durability};

// ------------------------------------------------------------------ the work

/// Records its attempt in `effects`, sleeps `ms`, returns `i`.
#[task]
async fn slow_part(ctx: &Ctx, url: String, i: u32, ms: u64) -> u64 {
    let worker = std::env::var("PGP_NAME").unwrap_or_else(|_| "test".into());
    let (run, attempt) = (ctx.process_id().to_owned(), ctx.attempt());
    // The worker in the namespace reaches the server at its own address.
    let url = std::env::var("PGP_URL").unwrap_or(url);
    tokio::task::spawn_blocking(move || {
        // A worker cut off may hang here until the link is back; what it writes then
        // is an attempt of its own (its own key), never another worker's.
        if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
            let _ = c.execute(
                "INSERT INTO effects (run, task, attempt, worker) VALUES ($1, $2, $3, $4)",
                &[
                    &run,
                    &i32::try_from(i).unwrap(),
                    &i32::try_from(attempt).unwrap(),
                    &worker,
                ],
            );
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    u64::from(i)
}

#[task]
#[allow(clippy::needless_pass_by_value)] // task inputs are owned
fn add_up(parts: Vec<u64>) -> u64 {
    parts.iter().sum()
}

#[process]
fn parts(p: &mut Builder, url: String, n: u32, ms: u64) {
    let all: Vec<_> = (1..=n)
        .map(|i| p.task(SlowPart::new(url.clone(), i, ms)))
        .collect();
    p.task(AddUp::new(all));
}

const LEASE: Duration = Duration::from_secs(2);

fn runtime(url: &str) -> procession::RuntimeBuilder {
    Runtime::connect(url.to_owned())
        .lease(LEASE)
        .spread_tasks(true)
        .spread_capacity(4)
        .register::<Parts>()
}

/// The worker role: runs only when the test binary is re-executed with `PGP_URL` set
/// (inside the namespace). Prints `ready <worker id>`, then its task stats every 100 ms.
#[test]
fn pg_partition_worker_entry() {
    let Ok(url) = std::env::var("PGP_URL") else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let rt = runtime(&url).start().await.expect("the database opens");
            println!("ready {}", rt.worker_id());
            loop {
                let s = rt.task_stats();
                println!(
                    "stats claimed={} finished={} fenced={} refused={}",
                    s.claimed, s.finished, s.fenced, s.refused
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
}

// ------------------------------------------------------------------ the network

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A network namespace joined to this one by a veth pair: `10.231.<k>.1` here,
/// `10.231.<k>.2` there. Removed when dropped.
struct Netns {
    ns: String,
    host_if: String,
    k: u32,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let k = pid % 250 + 1;
        let net = Netns {
            ns: format!("procession-part-{pid}"),
            host_if: format!("pp{pid}h"),
            k,
        };
        let peer = format!("pp{pid}n");
        ip(&["netns", "add", &net.ns])?;
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &net.ns])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host()),
            "dev",
            &net.host_if,
        ])?;
        ip(&["link", "set", &net.host_if, "up"])?;
        let inside = format!("10.231.{k}.2/24");
        ip(&["-n", &net.ns, "addr", "add", &inside, "dev", &peer])?;
        ip(&["-n", &net.ns, "link", "set", &peer, "up"])?;
        ip(&["-n", &net.ns, "link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// The address of this side.
    fn host(&self) -> String {
        format!("10.231.{}.1", self.k)
    }

    /// The partition: the link goes down (packets are dropped, no reset is sent).
    fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).unwrap();
    }

    fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// The worker process inside the namespace; killed when dropped.
struct Worker {
    child: std::process::Child,
    id: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(net: &Netns, url: &str) -> Worker {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &net.ns])
            .arg(std::env::current_exe().unwrap())
            .args([
                "pg_partition_worker_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("PGP_URL", url)
            .env("PGP_NAME", "cut")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the worker starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let id = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("ready ").map(|(_, id)| id.trim().to_owned()))
            .expect("the worker says it is ready");
        Worker {
            child,
            id,
            lines: pg::collect_lines(lines, None),
        }
    }

    /// The last value of counter `name` in its printed stats.
    fn stat(&self, name: &str) -> u64 {
        pg::last_stat(&self.lines, name)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

// ------------------------------------------------------------------ the test

#[test]
fn a_partitioned_workers_tasks_run_elsewhere_and_it_rejoins() {
    if std::env::var("PGP_URL").is_ok() {
        return;
    }
    if !is_root() {
        eprintln!("the network partition test needs root (network namespaces): skipped");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        assert!(
            std::env::var("PROCESSION_REQUIRE_NETNS").as_deref() != Ok("1"),
            "PROCESSION_REQUIRE_NETNS=1 but `ip` (iproute2) is missing"
        );
        eprintln!("install iproute2 (apt-get install -y iproute2) to run the partition test");
        return;
    }
    let net = Netns::create().expect("a network namespace and a veth pair");
    let Some(mut cluster) = pg::own_cluster(Durability::None) else {
        return;
    };
    cluster
        .listen_also(&net.host(), &format!("10.231.{}.0/24", net.k))
        .expect("the server also listens on the veth address");
    let url = cluster.database("partition").unwrap();
    pg::effect_tables(&url, &["effects"]);
    // The same database, as the namespace reaches it.
    let far = url.replace("127.0.0.1", &net.host());
    let cut = Worker::start(&net, &far);

    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = tokio.block_on(runtime(&url).start()).unwrap();
    let h = tokio
        .block_on(
            rt.launch(
                Launch::new(Parts {
                    url: url.clone(),
                    n: 8,
                    ms: 3_000,
                })
                .id("cutrun"),
            ),
        )
        .unwrap();
    let effects = || pg::effects_of(&url, "cutrun");
    wait_until(
        "the namespaced worker to start parts",
        Duration::from_mins(1),
        || effects().iter().any(|e| e.2 == "cut"),
    );
    net.cut();
    let cut_at = Instant::now();
    let lost: Vec<i32> = effects()
        .iter()
        .filter(|e| e.2 == "cut")
        .map(|e| e.0)
        .collect();
    let ended = Instant::now() + Duration::from_mins(2);
    while matches!(run_state(&url, "cutrun"), Some(s) if s.is_active()) {
        if Instant::now() > ended {
            let activity = rows(
                &url,
                "SELECT coalesce(client_addr::text, ''), state, coalesce(left(query, 120), '')
                 FROM pg_stat_activity WHERE datname = current_database()",
            );
            let activity: Vec<(String, String, String)> = activity
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get::<_, Option<String>>(1).unwrap_or_default(),
                        r.get(2),
                    )
                })
                .collect();
            panic!("the run did not end within 2 minutes of the cut: {activity:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = tokio.block_on(h.wait()).unwrap();
    let took = cut_at.elapsed();
    assert!(report.is_success(), "{}", report.summary());
    assert_eq!(
        report.result::<u64>("add_up").unwrap(),
        (1..=8).sum::<u64>()
    );
    let fx = effects();
    for t in &lost {
        assert!(
            fx.iter().any(|e| e.0 == *t && e.2 == "test"),
            "part {t} of the cut-off worker ran again here: {fx:?}"
        );
    }
    println!("the partitioned worker's parts {lost:?} ran elsewhere; run ended {took:?} after the cut (lease {LEASE:?})");

    // Back on the network: it heartbeats again, and what it finished late is refused.
    let healed_ms = now_ms();
    net.heal();
    wait_until(
        "the cut-off worker to heartbeat again",
        Duration::from_mins(3),
        || {
            rows(
                &url,
                &format!(
                    "SELECT last_heartbeat FROM procession_workers WHERE id = '{}'",
                    cut.id
                ),
            )
            .first()
            .is_some_and(|r| r.get::<_, i64>(0) > healed_ms)
        },
    );
    wait_until(
        "the cut-off worker to count its stopped or refused tasks",
        Duration::from_mins(1),
        || cut.stat("refused") + cut.stat("fenced") >= 1,
    );
    assert_eq!(cut.stat("finished"), 0, "nothing it ran was accepted");
    assert_eq!(
        tokio.block_on(rt.get("cutrun")).unwrap().unwrap().state(),
        State::Done
    );
    tokio.block_on(rt.shutdown()).unwrap();
}
