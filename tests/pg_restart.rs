//! The PostgreSQL store survives its server (issue 14, item 5): a run goes on through a
//! `pg_ctl restart -m immediate` and through killed backends, finishes `done` with every
//! result stored and no task run twice; a server down longer than the retry window makes
//! store calls fail with [`StoreError::Unavailable`] (no panic, no hang), and a runtime
//! opened once the server is back resumes the run. A proxy that cuts the connection at a
//! `COMMIT` shows that a commit whose answer was lost is not applied twice, and one that
//! never arrived is applied once.
//!
//! Each test starts a cluster of its own (`pg/mod.rs`, `synchronous_commit = on`: an
//! immediate stop loses no acknowledged commit), since it stops or restarts it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use procession::prelude::*;
use procession::store::StoreError;
use procession::{EventKind, State, TaskStatus};
use tracing_subscriber::layer::SubscriberExt as _;

mod pg;

use pg::{Cluster, Durability};

/// Tasks per run, at most [`AT_ONCE`] at a time, each [`NAP`] long: the run lasts a few
/// seconds, long enough for the server to go and come back under it.
const TASKS: u32 = 80;
const AT_ONCE: usize = 4;
const NAP: Duration = Duration::from_millis(100);

/// Side effects: how many times each task of each test (`tag`) started.
static EFFECTS: Mutex<Option<HashMap<(String, u32), u32>>> = Mutex::new(None);

fn effect(tag: &str, i: u32) {
    *EFFECTS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry((tag.to_owned(), i))
        .or_insert(0) += 1;
}

fn effects(tag: &str) -> HashMap<u32, u32> {
    EFFECTS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .iter()
        .filter(|((t, _), _)| t == tag)
        .map(|((_, i), n)| (*i, *n))
        .collect()
}

fn value(i: u32) -> u64 {
    u64::from(i) * 3 + 1
}

#[task]
async fn nap(tag: String, i: u32) -> u64 {
    effect(&tag, i);
    tokio::time::sleep(NAP).await;
    value(i)
}

#[process(mode = "concurrent")]
fn naps(p: &mut Builder, tag: String, n: u32) {
    p.each(0..n, |p, i| p.task(Nap::new(tag.clone(), i)));
}

fn node(i: u32) -> String {
    format!("each[{i}]/nap")
}

// ------------------------------------------------------------- what the store logged

/// Messages of the store's reconnect logs, with their `database` field.
static LOGGED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Recorder;

#[derive(Default)]
struct Fields {
    message: String,
    database: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "database" => self.database = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        if f.message.contains("PostgreSQL") {
            LOGGED.lock().unwrap().push((f.database, f.message));
        }
    }
}

fn record_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Recorder));
    });
}

/// How many times the store logged that it reconnected to database `db`.
fn reconnects(db: &str) -> usize {
    LOGGED
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, m)| d.ends_with(&format!("/{db}")) && m.contains("reconnected"))
        .count()
}

// ------------------------------------------------------------------------ helpers

fn db_name(url: &str) -> String {
    let path = url.rsplit('/').next().unwrap_or_default();
    path.split('?').next().unwrap_or_default().to_owned()
}

/// A cluster of the test's own and a database on it.
fn setup(test: &str) -> Option<(Arc<Cluster>, String)> {
    record_logs();
    let cluster = pg::own_cluster(Durability::Commits)?;
    let url = cluster
        .database(test)
        .expect("a database on the new cluster");
    Some((Arc::new(cluster), url))
}

/// Waits until `n` tasks of run `run` were reported done (the report follows their
/// write), returns their node ids.
async fn done_tasks(events: &mut procession::EventStream, run: &str, n: usize) -> Vec<String> {
    let prefix = format!("{run}/");
    let mut done = Vec::new();
    tokio::time::timeout(Duration::from_mins(2), async {
        while done.len() < n {
            let e = events.next().await.expect("the event stream goes on");
            if let (EventKind::State { state: State::Done }, Some(node)) =
                (&e.kind, e.id.strip_prefix(&prefix))
            {
                done.push(node.to_owned());
            }
        }
    })
    .await
    .expect("tasks get done");
    done
}

/// The run's report rebuilt from the database by a new runtime: the run ended `done`,
/// and every task's result is there.
async fn check_stored(url: &str, run: &str) {
    let rt = Runtime::connect(url.to_owned())
        .register::<Naps>()
        .start()
        .await
        .expect("the database opens again");
    let rec = rt
        .get(run)
        .await
        .unwrap()
        .expect("the run's record is stored");
    assert_eq!(rec.state(), State::Done, "{rec:?}");
    let report = rt.report(run).await.unwrap();
    assert_eq!(report.tasks.len(), TASKS as usize);
    for i in 0..TASKS {
        let t = report
            .tasks
            .iter()
            .find(|t| *t.id == node(i))
            .unwrap_or_else(|| panic!("task {} is stored", node(i)));
        assert_eq!(t.status, TaskStatus::Success, "{}", node(i));
        assert_eq!(t.result_as::<u64>().unwrap(), value(i), "{}", node(i));
    }
    rt.shutdown().await.unwrap();
}

fn assert_each_ran_once(tag: &str) {
    let ran = effects(tag);
    for i in 0..TASKS {
        assert_eq!(
            ran.get(&i),
            Some(&1),
            "task {} ran {:?} times",
            node(i),
            ran.get(&i)
        );
    }
}

// ------------------------------------------------------------------------ the tests

// Issue 14 item 5, test (d): `pg_ctl restart -m immediate` in the middle of a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_on_through_a_server_restart() {
    let Some((cluster, url)) = setup("restart") else {
        return;
    };
    let tag = "restart";
    let rt = Runtime::connect(url.clone())
        .register::<Naps>()
        .start()
        .await
        .unwrap();
    let mut events = rt.subscribe();
    let run = rt
        .launch(
            Launch::new(Naps {
                tag: tag.into(),
                n: TASKS,
            })
            .id("restarted")
            .max_concurrency(AT_ONCE),
        )
        .await
        .unwrap();
    let before = done_tasks(&mut events, "restarted", 8).await;
    assert!(before.len() < TASKS as usize);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.restart_immediate())
        .await
        .unwrap()
        .expect("the server restarts");
    let report = run.wait().await.expect("the run ends");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    rt.shutdown().await.unwrap();
    drop(rt);
    check_stored(&url, "restarted").await;
    assert_each_ran_once(tag);
    assert!(
        reconnects(&db_name(&url)) > 0,
        "the store never reconnected: did the restart miss the run?"
    );
}

// Issue 14 item 5: the store's sessions are killed (`pg_terminate_backend`) again and
// again during a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_on_when_its_backends_are_killed() {
    let Some((cluster, url)) = setup("terminate") else {
        return;
    };
    let tag = "terminate";
    let rt = Runtime::connect(url.clone())
        .register::<Naps>()
        .start()
        .await
        .unwrap();
    let mut events = rt.subscribe();
    let run = rt
        .launch(
            Launch::new(Naps {
                tag: tag.into(),
                n: TASKS,
            })
            .id("terminated")
            .max_concurrency(AT_ONCE),
        )
        .await
        .unwrap();
    done_tasks(&mut events, "terminated", 4).await;
    let (admin, db) = (cluster.url.clone(), db_name(&url));
    let killed = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        let mut killed = 0i64;
        for _ in 0..6 {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
                     FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&db],
                )
                .unwrap()
                .get(0);
            killed += n;
            std::thread::sleep(Duration::from_millis(300));
        }
        killed
    })
    .await
    .unwrap();
    let report = run.wait().await.expect("the run ends");
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    rt.shutdown().await.unwrap();
    drop(rt);
    check_stored(&url, "terminated").await;
    assert_each_ran_once(tag);
    assert!(killed > 0, "no session of the store was found to kill");
    assert!(
        reconnects(&db_name(&url)) > 0,
        "the store never reconnected"
    );
}

// Issue 14 item 5: the server stays down longer than the retry window: a store call
// fails with the typed error within about the window; a runtime opened once the server
// is back resumes the run, and no task reported done before the outage runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_fails_calls_and_the_next_runtime_resumes_the_run() {
    let Some((cluster, url)) = setup("outage") else {
        return;
    };
    let tag = "outage";
    let window = Duration::from_secs(2);
    let rt = Runtime::connect(format!("{url}?retry_window=2s"))
        .register::<Naps>()
        .start()
        .await
        .unwrap();
    let mut events = rt.subscribe();
    drop(
        rt.launch(
            Launch::new(Naps {
                tag: tag.into(),
                n: TASKS,
            })
            .id("outage")
            .max_concurrency(AT_ONCE),
        )
        .await
        .unwrap(),
    );
    let reported: HashSet<String> = done_tasks(&mut events, "outage", 8)
        .await
        .into_iter()
        .collect();
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_immediate())
        .await
        .unwrap()
        .expect("the server stops");
    let asked = Instant::now();
    let err = rt.get("outage").await.expect_err("no server, no record");
    let waited = asked.elapsed();
    match &err {
        procession::Error::Store(StoreError::Unavailable {
            waited_ms, source, ..
        }) => {
            assert!(*waited_ms <= 2_000, "{err}");
            let mut chain = source.to_string();
            let mut cause = std::error::Error::source(&**source);
            while let Some(c) = cause {
                chain = format!("{chain}: {c}");
                cause = c.source();
            }
            assert!(chain.contains("connect"), "the cause is named: {chain}");
        }
        other => panic!("expected StoreError::Unavailable, got {other:?}"),
    }
    // Generous: the window, plus one connect attempt, plus a loaded machine.
    assert!(
        waited < window + Duration::from_secs(20),
        "waited {waited:?}"
    );
    // The worker goes away while the server is down (no hang: its writes give up).
    tokio::time::timeout(Duration::from_mins(2), rt.shutdown())
        .await
        .expect("the shutdown ends while the server is down")
        .ok();
    drop(rt);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap()
        .expect("the server starts again");
    let again = Runtime::connect(url.clone())
        .register::<Naps>()
        .start()
        .await
        .expect("the database opens once the server is back");
    let report = tokio::time::timeout(Duration::from_mins(2), again.wait("outage"))
        .await
        .expect("the resumed run ends")
        .unwrap();
    assert_eq!(report.status, RunStatus::Succeeded, "{report:?}");
    again.shutdown().await.unwrap();
    drop(again);
    check_stored(&url, "outage").await;
    let ran = effects(tag);
    for i in 0..TASKS {
        let n = ran.get(&i).copied().unwrap_or(0);
        assert!(n >= 1, "task {} never ran", node(i));
        if reported.contains(&node(i)) {
            assert_eq!(
                n,
                1,
                "task {} was reported done before the outage, yet ran {n} times",
                node(i)
            );
        }
    }
}

// ------------------------------------------------- a COMMIT whose answer is lost

/// What the proxy does with the first `COMMIT` after it is armed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cut {
    /// Forwards it, lets the server commit, and drops the answer and the connection.
    Answer,
    /// Drops it and the connection: the server rolls the transaction back.
    Commit,
}

/// A TCP proxy in front of the server on 127.0.0.1 that cuts one connection at its
/// first `COMMIT` once armed (a simple query, as the store sends it).
struct Proxy {
    port: u16,
    armed: Arc<Mutex<Option<Cut>>>,
}

impl Proxy {
    fn start(server: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed: Arc<Mutex<Option<Cut>>> = Arc::new(Mutex::new(None));
        let a = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let a = a.clone();
                std::thread::spawn(move || {
                    if let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", server)) {
                        let _ = relay(client, server, &a);
                    }
                });
            }
        });
        Proxy { port, armed }
    }

    fn arm(&self, cut: Cut) {
        *self.armed.lock().unwrap() = Some(cut);
    }

    fn fired(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }
}

/// Relays one connection; the client's messages one by one, the server's bytes as they
/// come until `hold` is set (then nothing more reaches the client, which sees its
/// connection close).
fn relay(
    mut client: std::net::TcpStream,
    mut server: std::net::TcpStream,
    armed: &Mutex<Option<Cut>>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let hold = Arc::new(AtomicBool::new(false));
    {
        let (mut from, mut to, hold) = (server.try_clone()?, client.try_clone()?, hold.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(n) if n > 0 && !hold.load(Ordering::SeqCst) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    }
    let mut read = |n: usize| -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        client.read_exact(&mut v)?;
        Ok(v)
    };
    // Startup packets have no type byte (an SSL or GSS request comes before the real one).
    loop {
        let len = read(4)?;
        let n = u32::from_be_bytes(len[..].try_into().unwrap()) as usize;
        let body = read(n - 4)?;
        server.write_all(&len)?;
        server.write_all(&body)?;
        let code = u32::from_be_bytes(body[..4].try_into().unwrap());
        if code != 80_877_103 && code != 80_877_104 {
            break;
        }
    }
    loop {
        let head = read(5)?;
        let n = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        let body = read(n - 4)?;
        if head[0] == b'Q' && body.starts_with(b"COMMIT") {
            if let Some(cut) = armed.lock().unwrap().take() {
                hold.store(true, Ordering::SeqCst);
                if cut == Cut::Answer {
                    server.write_all(&head)?;
                    server.write_all(&body)?;
                    // The answer ends the relay (the other thread); the commit is done.
                    return Ok(());
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
        }
        server.write_all(&head)?;
        server.write_all(&body)?;
    }
}

/// Adds 1 to the record's counter through `Store::update`, through a proxy that cuts the
/// connection at the update's `COMMIT`; returns how many times the update function was
/// called and the counter afterwards.
fn count_through_a_cut(cut: Cut) -> Option<(u32, i64)> {
    use procession::store::{PgStore, Store, Update};
    record_logs();
    let cluster = pg::own_cluster(Durability::Commits)?;
    let url = cluster
        .database(&format!("cut_{cut:?}"))
        .expect("a database");
    let port: u16 = cluster
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("the cluster's port");
    let proxy = Proxy::start(port);
    let via = url.replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
    let store = PgStore::connect(&via).expect("the store opens through the proxy");
    let counter =
        |r: &procession::ProcessRecord| r.metadata.get("n").and_then(serde_json::Value::as_i64);
    store
        .update("counted", &mut |_| {
            let mut r = procession::ProcessRecord::new_root(
                "counted",
                "job",
                "counted",
                "",
                serde_json::json!({}),
            );
            r.metadata.insert("n".into(), 0.into());
            Update::Put(Box::new(r))
        })
        .unwrap();
    proxy.arm(cut);
    let mut calls = 0;
    let written = store
        .update("counted", &mut |cur| {
            calls += 1;
            let mut r = cur.expect("the record is there").clone();
            let n = counter(&r).unwrap_or(0);
            r.metadata.insert("n".into(), (n + 1).into());
            Update::Put(Box::new(r))
        })
        .expect("the update survives the cut")
        .expect("a record");
    assert!(proxy.fired(), "the proxy saw no COMMIT");
    assert_eq!(counter(&written), Some(1));
    let stored = store.get("counted").unwrap().expect("stored");
    drop(store);
    Some((calls, counter(&stored).unwrap_or(-1)))
}

// The connection breaks after the server committed an update but before its answer:
// the store learns that it committed (`txid_status`) and does not apply it twice.
#[test]
fn a_commit_whose_answer_was_lost_is_not_applied_twice() {
    let Some((calls, n)) = count_through_a_cut(Cut::Answer) else {
        return;
    };
    assert_eq!(n, 1, "the counter was incremented {n} times");
    assert_eq!(calls, 1, "the update function ran again after its commit");
}

// The connection breaks before the server got the COMMIT: the transaction was rolled
// back, and the update runs again on a new connection, once.
#[test]
fn a_commit_that_never_arrived_is_run_again() {
    let Some((calls, n)) = count_through_a_cut(Cut::Commit) else {
        return;
    };
    assert_eq!(n, 1, "the counter was incremented {n} times");
    assert_eq!(calls, 2, "the update function ran {calls} times");
}
