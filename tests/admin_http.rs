//! The admin API over real HTTP on 127.0.0.1 (issue 15): the live event stream resumes
//! with `Last-Event-ID` without losing or duplicating an event, falls back to `resync`,
//! and forgets disconnected clients; `serve` refuses a public address without a token.

use std::time::Duration;

use futures::StreamExt;
use procession::admin::{self, Admin, AdminConfig, AdminError, EventId};
use procession::prelude::*;
use serde_json::Value;

#[task]
async fn chatty(ctx: &Ctx, n: u32) {
    for i in 0..n {
        ctx.progress(f64::from(i % 100), format!("step {i}"));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[process]
fn talk(p: &mut Builder, n: u32) {
    p.task(Chatty::new(n));
}

#[derive(Debug, Clone)]
struct Sse {
    id: String,
    event: String,
    data: Value,
}

/// Reads SSE events from a response until `stop` says so (or the stream ends).
async fn read_events(res: reqwest::Response, mut stop: impl FnMut(&[Sse]) -> bool) -> Vec<Sse> {
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut e = Sse {
                id: String::new(),
                event: "message".into(),
                data: Value::Null,
            };
            let mut is_event = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    v.trim().clone_into(&mut e.id);
                    is_event = true;
                } else if let Some(v) = line.strip_prefix("event:") {
                    v.trim().clone_into(&mut e.event);
                } else if let Some(v) = line.strip_prefix("data:") {
                    e.data = serde_json::from_str(v.trim()).unwrap_or(Value::Null);
                }
            }
            if is_event {
                out.push(e);
                if stop(&out) {
                    return out;
                }
            }
        }
    }
    out
}

fn ended(run: &str) -> impl FnMut(&[Sse]) -> bool + '_ {
    move |evs| {
        evs.last().is_some_and(|e| {
            e.data["kind"] == "state"
                && e.data["id"] == run
                && matches!(
                    e.data["state"].as_str(),
                    Some("done" | "failed" | "cancelled")
                )
        })
    }
}

async fn connect(base: &str, query: &str, last: Option<&str>) -> reqwest::Response {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("{base}/api/events?{query}"));
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    res
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

// A client that disconnects in the middle of a run and reconnects with `Last-Event-ID`
// gets exactly what a client that stayed connected got: nothing lost, nothing twice.
// The disconnected subscriber is counted out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_last_event_id_loses_and_duplicates_nothing() {
    let rt = Runtime::in_memory()
        .register::<Talk>()
        .start()
        .await
        .unwrap();
    let adm = Admin::new(
        rt.clone(),
        AdminConfig::default().keep_alive(Duration::from_millis(50)),
    );
    let server = adm.clone().serve(([127, 0, 0, 1], 0).into()).await.unwrap();
    let base = format!("http://{}", server.local_addr());

    let reference = connect(&base, "run=talk-1", None).await;
    let first = connect(&base, "run=talk-1", None).await;
    wait_for(|| adm.subscribers() == 2).await;
    rt.launch(Launch::new(Talk { n: 300 }).id("talk-1"))
        .await
        .unwrap();

    let reference = tokio::spawn(read_events(reference, ended("talk-1")));
    let part1 = read_events(first, |evs| evs.len() == 40).await;
    // Dropped: the server notices at its next write and forgets the client.
    wait_for(|| adm.subscribers() == 1).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let last = part1.last().unwrap().id.clone();
    let again = connect(&base, "run=talk-1", Some(&last)).await;
    let part2 = read_events(again, ended("talk-1")).await;
    let reference = reference.await.unwrap();

    let ids = |evs: &[Sse]| evs.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let mut resumed = ids(&part1);
    resumed.extend(ids(&part2));
    assert!(
        reference.len() > 300,
        "every progress call is an event: {}",
        reference.len()
    );
    assert_eq!(resumed, ids(&reference));
    assert!(part2.iter().all(|e| e.event != "resync"));
    // Ids only grow.
    let nums: Vec<EventId> = resumed.iter().map(|i| i.parse().unwrap()).collect();
    assert!(nums.windows(2).all(|w| w[0] < w[1]));
    server.shutdown().await;
    // axum reports a connection closed a moment before it drops the connection's state
    // (which holds the subscriber): the count reaches 0 shortly after, not necessarily
    // at the instant `shutdown` returns.
    wait_for(|| adm.subscribers() == 0).await;
}

// An id older than the replay buffer gets one `resync` event, then live events; a kind
// filter keeps only state changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_old_last_event_id_gets_one_resync() {
    let rt = Runtime::in_memory()
        .register::<Talk>()
        .start()
        .await
        .unwrap();
    let adm = Admin::new(rt.clone(), AdminConfig::default().replay_buffer(4));
    let server = adm.clone().serve(([127, 0, 0, 1], 0).into()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    rt.run(Launch::new(Talk { n: 20 }).id("talk-old"))
        .await
        .unwrap();
    wait_for(|| adm.last_event_id().seq() > 10).await;
    // The first id of this feed: long gone from a replay buffer of 4.
    let first = format!("{}-1", adm.last_event_id().epoch());
    let res = connect(&base, "kind=state", Some(&first)).await;
    let run = rt
        .launch(Launch::new(Talk { n: 5 }).id("talk-new"))
        .await
        .unwrap();
    let evs = read_events(res, ended("talk-new")).await;
    run.wait().await.unwrap();
    assert_eq!(evs[0].event, "resync");
    assert_eq!(evs.iter().filter(|e| e.event == "resync").count(), 1);
    assert!(evs[1..].iter().all(|e| e.event == "state"), "{evs:?}");
    server.shutdown().await;
}

// `serve` refuses a public address without a token, with a typed error; a loopback one
// answers JSON over HTTP.
#[tokio::test]
async fn serve_refuses_a_public_address_without_a_token() {
    let rt = Runtime::in_memory().start().await.unwrap();
    let err = admin::serve(rt.clone(), AdminConfig::default(), ([0, 0, 0, 0], 0).into())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AdminError::PublicWithoutToken { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("without a token"));
    let server = admin::serve(rt, AdminConfig::default(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let res = reqwest::get(format!("http://{}/api/runs/nope", server.local_addr()))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "not-found");
    server.shutdown().await;
}

// Event ids survive restarts: a client that read events, then a restart of the runtime on
// the same sled directory with a new admin, then a reconnect with the old id: one
// `resync` (the old id is not read as an id of the new feed), then live events whose ids
// are greater than every id before the restart. An id of the old format (a plain number)
// is from no feed: one `resync` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_from_before_a_restart_gets_one_resync_and_ids_keep_growing() {
    let dir = std::env::temp_dir().join(format!(
        "procession-sse-restart-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let rt = Runtime::open(&dir)
        .register::<Talk>()
        .start()
        .await
        .unwrap();
    let adm = Admin::new(rt.clone(), AdminConfig::default());
    let server = adm.clone().serve(([127, 0, 0, 1], 0).into()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let res = connect(&base, "", None).await;
    rt.launch(Launch::new(Talk { n: 30 }).id("before"))
        .await
        .unwrap();
    let before = read_events(res, ended("before")).await;
    let last_before: EventId = before.last().unwrap().id.parse().unwrap();
    assert!(before.len() > 30, "{}", before.len());
    server.shutdown().await;
    rt.shutdown().await.unwrap();
    drop((adm, rt));

    let rt = Runtime::open(&dir)
        .register::<Talk>()
        .start()
        .await
        .unwrap();
    let adm = Admin::new(rt.clone(), AdminConfig::default());
    let server = adm.clone().serve(([127, 0, 0, 1], 0).into()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    // A few events of the new feed first: with a per-instance counter, the old id would
    // now name one of them and the client would silently miss events.
    rt.run(Launch::new(Talk { n: 40 }).id("between"))
        .await
        .unwrap();
    wait_for(|| adm.last_event_id().seq() > 40).await;
    let res = connect(&base, "", Some(&last_before.to_string())).await;
    let old_format = connect(&base, "kind=state", Some("5")).await;
    let run = rt
        .launch(Launch::new(Talk { n: 10 }).id("after"))
        .await
        .unwrap();
    let after = read_events(res, ended("after")).await;
    let legacy = read_events(old_format, ended("after")).await;
    run.wait().await.unwrap();
    assert_eq!(after[0].event, "resync", "{:?}", &after[..3]);
    assert_eq!(after.iter().filter(|e| e.event == "resync").count(), 1);
    assert!(after[1..].iter().any(|e| e.data["id"] == "after"));
    let ids: Vec<EventId> = after.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(
        ids.iter().all(|i| *i > last_before),
        "{last_before} then {ids:?}"
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(adm.last_event_id().epoch() > last_before.epoch());
    assert_eq!(legacy[0].event, "resync");
    assert_eq!(legacy.iter().filter(|e| e.event == "resync").count(), 1);
    server.shutdown().await;
    rt.shutdown().await.unwrap();
    drop((adm, rt));
    let _ = std::fs::remove_dir_all(&dir);
}
