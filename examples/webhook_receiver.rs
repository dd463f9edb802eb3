//! A webhook receiver for procession's notifications: verifies each request's Standard
//! Webhooks signature on the *raw* body (never on JSON parsed and written again), drops
//! replays by `webhook-id`, and prints what happened to the run.
//!
//! ```sh
//! cargo run --example webhook_receiver --features webhook
//! # in another terminal:
//! PROCESSION_WEBHOOK_URL=http://127.0.0.1:3000/hook cargo run --example daily_report --features webhook
//! ```
//!
//! `PROCESSION_WEBHOOK_SECRET` sets the secret (the same on both sides; a demo secret by
//! default), `PORT` the port (3000).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use procession::notify::{verify, Secret};

/// The secret the flagship example signs with when `PROCESSION_WEBHOOK_SECRET` is unset.
const DEMO_SECRET: &str = "whsec_cHJvY2Vzc2lvbi1kZW1vLXNlY3JldC0wMTIzNDU2Nzg5";

#[derive(Clone)]
struct App {
    secrets: Vec<Secret>,
    seen: Arc<Mutex<HashSet<String>>>,
}

async fn hook(State(app): State<App>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = match verify(&headers, &body, &app.secrets, SystemTime::now()) {
        Ok(id) => id.to_owned(),
        Err(e) => {
            eprintln!("refused a request: {e}");
            return StatusCode::UNAUTHORIZED;
        }
    };
    // Deliveries are at least once: the same id may come twice (a retry after a lost
    // answer, a sender restarted mid-request). Act once per id.
    if !app.seen.lock().unwrap().insert(id.clone()) {
        println!("{id}: already handled");
        return StatusCode::NO_CONTENT;
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    println!(
        "{id}: {} {} ({})",
        event["type"].as_str().unwrap_or("?"),
        event["process_id"].as_str().unwrap_or("?"),
        event["process"].as_str().unwrap_or("?"),
    );
    for task in event["tasks"].as_array().into_iter().flatten() {
        let status = task["status"].as_str().unwrap_or("?");
        let mut line = format!("  {:<9} {}", status, task["id"].as_str().unwrap_or("?"));
        if let Some(message) = task["error"]["message"].as_str() {
            line.push_str(": ");
            line.push_str(message);
        }
        println!("{line}");
    }
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("PROCESSION_WEBHOOK_SECRET").unwrap_or_else(|_| DEMO_SECRET.into());
    let app = App {
        secrets: vec![Secret::parse(&secret)?],
        seen: Arc::default(),
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}/hook", listener.local_addr()?);
    let router = Router::new().route("/hook", post(hook)).with_state(app);
    axum::serve(listener, router).await?;
    Ok(())
}
