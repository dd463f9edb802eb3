//! The admin API's routes, refusals and security, called in process (`tower::oneshot`),
//! plus a property test that throws random requests at it (issue 15).

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use procession::admin::{self, AdminConfig};
use procession::prelude::*;
use procession::Definition;
use serde_json::{json, Value};
use tower::ServiceExt;

#[task]
fn greet(name: String) -> String {
    format!("hello {name}")
}

#[process]
fn hello(p: &mut Builder, name: String) {
    p.task(Greet::new(name));
}

#[task]
fn boom() -> Result<u32, std::io::Error> {
    Err(std::io::Error::other("boom"))
}

#[task]
fn after(x: u32) -> u32 {
    x
}

#[task]
fn last(x: u32) -> u32 {
    x
}

#[process]
fn breaks(p: &mut Builder) {
    let a = p.task(Boom::new());
    let b = p.task(After::new(a));
    p.task(Last::new(b));
}

#[task]
async fn hold(ctx: &Ctx) {
    while ctx.should_continue() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[process]
fn holder(p: &mut Builder, team: String) {
    let _ = team;
    p.task(Hold::new());
}

async fn runtime() -> Runtime {
    Runtime::in_memory()
        .register::<Hello>()
        .register::<Breaks>()
        .register::<Holder>()
        .define(Definition::new("hello-def", Hello { name: "def".into() }).unwrap())
        .start()
        .await
        .unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

// Launch with JSON parameters, list with filters and keyset pages, show with tasks.
#[tokio::test]
async fn launch_list_page_and_show() {
    let rt = runtime().await;
    let app = admin::router(rt.clone(), AdminConfig::default());
    for i in 0..5 {
        let (s, v) = call(
            &app,
            post(
                "/api/runs",
                &json!({"process": "hello", "params": {"name": format!("n{i}")}, "id": format!("h-{i}"), "metadata": {"team": "alpha"}}).to_string(),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        rt.wait(&format!("h-{i}")).await.unwrap();
    }
    // Keyset pagination: two pages of 2 and one of 1, no repeats.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let uri = match &after {
            Some(c) => format!(
                "/api/runs?process=hello&state=done&limit=2&count=true&after={}",
                urlencode(c)
            ),
            None => "/api/runs?process=hello&state=done&limit=2&count=true".to_owned(),
        };
        let (s, v) = call(&app, get(&uri)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["total"], 5);
        for r in v["records"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_owned());
        }
        match v["next"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, vec!["h-0", "h-1", "h-2", "h-3", "h-4"]);
    // `order=newest`: newest first, paged with `next` below the last record, the exact
    // reverse of the default (oldest first) order, which `order=oldest` also gives.
    let oldest = pages(&app, "process=hello&state=done&limit=2").await;
    assert_eq!(oldest.len(), 5);
    assert_eq!(
        pages(&app, "process=hello&state=done&limit=2&order=oldest").await,
        oldest
    );
    let mut newest = pages(&app, "process=hello&state=done&limit=2&order=newest").await;
    newest.reverse();
    assert_eq!(newest, oldest);
    let (s, v) = call(
        &app,
        get("/api/runs?process=hello&state=done&order=newest&limit=1&count=true"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total"], 5, "the count ignores the order");
    let (_, v) = call(&app, get("/api/runs?meta.team=alpha&limit=500")).await;
    assert_eq!(v["records"].as_array().unwrap().len(), 5);
    let (_, v) = call(&app, get("/api/runs?meta.team=beta")).await;
    assert!(v["records"].as_array().unwrap().is_empty());
    // One record with its tasks and their results.
    let (s, v) = call(&app, get("/api/runs/h-3")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["record"]["status"]["state"], "done");
    assert_eq!(v["tasks"][0]["node"], "greet");
    assert_eq!(v["tasks"][0]["result"], "hello n3");
    assert_eq!(v["tasks"][0]["attempts"], 1);
    // A task record by its id, `/` percent-encoded.
    let (s, v) = call(&app, get("/api/runs/h-3%2Fgreet")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["record"]["kind"], "task");
}

/// The ids of every page of `GET /api/runs?{filter}`, following `next`.
async fn pages(app: &Router, filter: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut uri = format!("/api/runs?{filter}");
    loop {
        let (s, v) = call(app, get(&uri)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for r in v["records"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_owned());
        }
        match v["next"].as_str() {
            Some(c) => uri = format!("/api/runs?{filter}&after={}", urlencode(c)),
            None => return seen,
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// The graph of a failed run: edges, and the failure that skipped each skipped task.
#[tokio::test]
async fn graph_shows_what_skipped_what() {
    let rt = runtime().await;
    let app = admin::router(rt.clone(), AdminConfig::default());
    let report = rt.run(Launch::new(Breaks {}).id("b-1")).await.unwrap();
    assert!(!report.is_success());
    let (s, v) = call(&app, get("/api/runs/b-1/graph")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["edges"], json!([["boom", "after"], ["after", "last"]]));
    let node = |id: &str| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(node("boom")["state"], "failed");
    assert_eq!(node("after")["skipped_by"], json!(["boom"]));
    assert_eq!(node("last")["skipped_by"], json!(["boom"]));
}

// Typed refusals in one JSON shape: invalid params (422, naming the field), unknown
// type, unknown id (404), not cancellable (409), launch-blocked (409, OPT-240/OPT-349).
#[tokio::test]
async fn refusals_are_typed_and_share_one_shape() {
    let rt = runtime().await;
    let app = admin::router(rt.clone(), AdminConfig::default());
    let (s, v) = call(
        &app,
        post("/api/runs", r#"{"process":"hello","params":{"name":3}}"#),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&v), "invalid-params");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{v}"
    );
    assert_eq!(v["error"]["status"], 422);
    let (s, v) = call(&app, post("/api/runs", r#"{"process":"nope"}"#)).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown-process-type")
    );
    let (s, v) = call(&app, get("/api/runs/missing")).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not-found"));
    let (s, v) = call(&app, post("/api/runs/missing/cancel", "")).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not-found"));
    let (s, v) = call(&app, post("/api/runs/hello-def/cancel", "")).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::CONFLICT, "not-cancellable-state")
    );
    // Block, refuse, unblock, launch.
    let (s, v) = call(
        &app,
        post("/api/runs/hello-def/block", r#"{"reason":"deploy"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["record"]["launch_block"]["reason"], "deploy");
    let (s, v) = call(&app, post("/api/runs/hello-def/launch", "")).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "launch-blocked"));
    assert!(v["error"]["message"].as_str().unwrap().contains("deploy"));
    let (s, _) = call(&app, post("/api/runs/hello-def/unblock", "")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&app, post("/api/runs/hello-def/launch", "")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    rt.wait("hello-def").await.unwrap();
    let (s, v) = call(&app, post("/api/runs/hello-def/dismiss", "")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["record"]["status"]["state"], "idle");
    let (s, v) = call(&app, post("/api/resync", "")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

// OPT-160, OPT-163, OPT-164: cancel by filter: an empty filter is refused, a preview
// counts, the plain cancel returns before the runs end, the waiting one after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_by_filter_previews_cancels_and_waits() {
    let rt = runtime().await;
    let app = admin::router(rt.clone(), AdminConfig::default());
    let (s, v) = call(&app, post("/api/cancel", r#"{"filter":{}}"#)).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "empty-filter"));
    for i in 0..3 {
        rt.launch(
            Launch::new(Holder {
                team: "alpha".into(),
            })
            .id(format!("a-{i}"))
            .metadata("team", "alpha"),
        )
        .await
        .unwrap();
    }
    let (s, v) = call(
        &app,
        post(
            "/api/cancel",
            r#"{"filter":{"metadata":{"team":"alpha"}},"preview":true}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 3);
    let (s, v) = call(
        &app,
        post(
            "/api/cancel",
            r#"{"filter":{"metadata":{"team":"alpha"}},"wait_ms":20000}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["cancelled"].as_array().unwrap().len(), 3);
    assert_eq!(v["unfinished"], json!([]));
    let (_, v) = call(
        &app,
        get("/api/runs?meta.team=alpha&state=cancelled&count=true"),
    )
    .await;
    assert_eq!(v["total"], 3);
}

// Security: read-only, token, CSRF from browsers, foreign Host without a token,
// security headers, body limit, malformed JSON and filters.
#[tokio::test]
async fn security_checks_refuse_with_4xx() {
    let rt = runtime().await;
    let ro = admin::router(rt.clone(), AdminConfig::default().read_only(true));
    let (s, v) = call(&ro, post("/api/resync", "")).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "read-only"));
    let (s, _) = call(&ro, get("/api/runs")).await;
    assert_eq!(s, StatusCode::OK);

    let tok = admin::router(rt.clone(), AdminConfig::default().token("s3cret"));
    let (s, v) = call(&tok, get("/api/runs")).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let bad = Request::get("/api/runs")
        .header("authorization", "Bearer s3cre")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&tok, bad).await.0, StatusCode::UNAUTHORIZED);
    let good = Request::get("/api/runs")
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&tok, good).await.0, StatusCode::OK);

    let app = admin::router(rt.clone(), AdminConfig::default().body_limit(1024));
    // A browser mutation without the CSRF header; a cross-site one even with it.
    let from_browser = Request::post("/api/resync")
        .header("origin", "http://localhost:3000")
        .body(Body::empty())
        .unwrap();
    let (s, v) = call(&app, from_browser).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "csrf"));
    let cross = Request::post("/api/resync")
        .header("sec-fetch-site", "cross-site")
        .header("x-procession-csrf", "1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, cross).await.0, StatusCode::FORBIDDEN);
    let with_header = Request::post("/api/resync")
        .header("origin", "http://localhost:3000")
        .header("sec-fetch-site", "same-origin")
        .header("x-procession-csrf", "1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, with_header).await.0, StatusCode::OK);
    // DNS rebinding: without a token only loopback hosts are answered.
    let rebound = Request::get("/api/runs")
        .header("host", "evil.example:80")
        .body(Body::empty())
        .unwrap();
    let (s, v) = call(&app, rebound).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden-host"));
    // Headers on every response, refusals included.
    let res = app.clone().oneshot(get("/api/nothing-here")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    for (h, val) in [
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(res.headers()[h], val);
    }
    // A huge body, malformed JSON, unknown fields, invalid filters.
    let huge = format!(
        r#"{{"process":"hello","params":{{"name":"{}"}}}}"#,
        "x".repeat(4096)
    );
    let (s, v) = call(&app, post("/api/runs", &huge)).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large")
    );
    let (s, v) = call(&app, post("/api/runs", "{not json")).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid-json"));
    let (s, v) = call(&app, post("/api/runs", r#"{"process":"hello","colour":1}"#)).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid-json"));
    for q in [
        "state=sleeping",
        "limit=0",
        "limit=501",
        "from=yesterday",
        "after=nocolon",
        "bogus=1",
        "meta.=x",
        "order=random",
    ] {
        let (s, v) = call(&app, get(&format!("/api/runs?{q}"))).await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid-filter"),
            "{q}: {v}"
        );
    }
    let (_, v) = call(&app, get("/api/runs?order=latest")).await;
    assert_eq!(
        v["error"]["message"],
        "`order` must be `newest` or `oldest`, not `latest`"
    );
    let (s, v) = call(&app, get("/api/events?kind=everything")).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid-filter"));
    let ev = Request::get("/api/events")
        .header("last-event-id", "abc")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, ev).await.0, StatusCode::BAD_REQUEST);
    let (s, v) = call(
        &app,
        Request::delete("/api/runs").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed")
    );
}

mod random_requests {
    use super::*;
    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("api".to_owned()),
            Just("runs".to_owned()),
            Just("hello-def".to_owned()),
            Just("graph".to_owned()),
            Just("cancel".to_owned()),
            Just("block".to_owned()),
            Just("launch".to_owned()),
            Just("deliveries".to_owned()),
            Just("replay".to_owned()),
            Just("channels".to_owned()),
            Just("enable".to_owned()),
            Just("%2F".to_owned()),
            Just("%FF".to_owned()),
            "[a-z0-9%._~-]{0,12}",
        ]
    }

    fn request() -> impl Strategy<Value = (String, String, String, Vec<u8>)> {
        (
            prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE")],
            prop::collection::vec(segment(), 0..5),
            "[a-z.=&%0-9,:_-]{0,40}",
            prop_oneof![
                Just(b"{}".to_vec()),
                Just(br#"{"process":"hello","params":{"name":"x"}}"#.to_vec()),
                Just(br#"{"filter":{"state":["running"]},"preview":true}"#.to_vec()),
                prop::collection::vec(any::<u8>(), 0..64),
            ],
        )
            .prop_map(|(m, segs, q, body)| {
                let mut path = String::from("/api/");
                path.push_str(&segs.join("/"));
                (m.to_owned(), path, q, body)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        // Whatever arrives, the answer is a JSON error of the one shape or a success,
        // never a 5xx or a panic.
        #[test]
        fn random_requests_never_get_a_5xx((method, path, query, body) in request()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let runtime = super::runtime().await;
                let app = admin::router(runtime.clone(), AdminConfig::default());
                let uri = format!("{path}?{query}");
                let Ok(req) = Request::builder().method(method.as_str()).uri(&uri).body(Body::from(body)) else {
                    return Ok(());
                };
                if path == "/api/events" && method == "GET" {
                    return Ok(()); // a stream: covered by the HTTP tests
                }
                let res = app.oneshot(req).await.unwrap();
                let status = res.status();
                prop_assert!(!status.is_server_error(), "{method} {uri} -> {status}");
                let bytes = to_bytes(res.into_body(), 1 << 20).await.unwrap();
                if !status.is_success() {
                    let v: Value = serde_json::from_slice(&bytes).unwrap();
                    prop_assert!(v["error"]["code"].is_string(), "{v}");
                    prop_assert!(v["error"]["message"].is_string(), "{v}");
                }
                runtime.shutdown().await.unwrap();
                Ok(())
            })?;
        }
    }
}

// Issue 14 phase 2: GET /api/workers lists the workers sharing the store (this runtime
// alone on a single-process store) and names the one that answers.
#[tokio::test]
async fn workers_lists_this_worker_on_a_single_process_store() {
    let rt = runtime().await;
    let app = admin::router(rt.clone(), AdminConfig::default());
    let (s, v) = call(&app, get("/api/workers")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["worker"], rt.worker_id());
    let workers = v["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{v}");
    assert_eq!(workers[0]["id"], rt.worker_id());
    assert_eq!(workers[0]["pid"], std::process::id());
    assert!(
        workers[0]["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{v}"
    );
    assert!(
        workers[0]["last_heartbeat"].as_u64().unwrap()
            >= workers[0]["started_at"].as_u64().unwrap()
    );
    rt.shutdown().await.unwrap();
}
