//! E-mail notifications against a real SMTP server in the test process (mailin-embedded,
//! with a CA and a server certificate made by rcgen at test time): STARTTLS (proven by a
//! proxy that sees the plain bytes: `STARTTLS`, then nothing readable), AUTH, several
//! recipients, a multipart HTML + text report; and the failures: a server without
//! STARTTLS, an untrusted certificate, implicit TLS against a plain greeting, a server
//! that never answers.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_parser::MessageParser;
use mailin_embedded::{response, AuthMechanism, Handler, Response, Server, SslConfig};
use procession::notify::{
    Channel, DeliveryError, DeliveryOptions, EmailConfig, RetrySchedule, SmtpConfig,
};
use procession::prelude::*;
use procession::store::{DeliveryQuery, DeliveryState};

// ------------------------------------------------------------------ the process

#[derive(Debug, thiserror::Error)]
#[error("disk <full>")]
struct DiskFull;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the export")]
struct ExportFailed(#[source] DiskFull);

#[task]
fn ok_task() -> u32 {
    1
}

#[task]
fn bad_task(rows: u32) -> Result<u32, ExportFailed> {
    if rows > 1_000 {
        return Ok(rows);
    }
    Err(ExportFailed(DiskFull))
}

#[task]
fn after_bad(x: u32) -> u32 {
    x
}

#[process]
fn export(p: &mut Builder) {
    let a = p.task(OkTask::new());
    let b = p.task(BadTask::new(a));
    p.task(AfterBad::new(b));
}

// ------------------------------------------------------------------ the SMTP server

#[derive(Debug, Clone, Default)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

#[derive(Clone, Default)]
struct Capture {
    mails: Arc<Mutex<Vec<Mail>>>,
    auths: Arc<Mutex<Vec<(String, String)>>>,
    current: Mail,
}

impl Handler for Capture {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Mail {
            from: from.to_owned(),
            to: to.to_vec(),
            data: Vec::new(),
        };
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.mails
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.current));
        response::OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.auths
            .lock()
            .unwrap()
            .push((user.to_owned(), password.to_owned()));
        if (user, password) == ("reports", "app-password") {
            response::AUTH_OK
        } else {
            response::INVALID_CREDENTIALS
        }
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.auth_plain("", user, password)
    }
}

struct Smtp {
    port: u16,
    capture: Capture,
    ca_pem: String,
}

/// A CA, and a certificate for 127.0.0.1 and localhost signed by it: (ca, cert, key).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Starts a server on 127.0.0.1 (STARTTLS offered when `tls`, AUTH when `auth`); it runs
/// until the test binary ends (mailin has no stop).
fn smtp(tls: bool, auth: bool) -> Smtp {
    let (ca_pem, cert, key) = certificates();
    // The server reads both files in `with_ssl`: the directory is removed (by its guard)
    // before the server starts serving.
    let dir = tempfile::Builder::new()
        .prefix("procession-smtp-")
        .tempdir()
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let capture = Capture::default();
    let mut server = Server::new(capture.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    server.with_name("localhost").with_tcp_listener(listener);
    if tls {
        server
            .with_ssl(SslConfig::SelfSigned {
                cert_path: cert_path.display().to_string(),
                key_path: key_path.display().to_string(),
            })
            .unwrap();
    }
    if auth {
        server
            .with_auth(AuthMechanism::Plain)
            .with_auth(AuthMechanism::Login);
    }
    drop(dir);
    std::thread::spawn(move || {
        if let Err(e) = server.serve() {
            eprintln!("smtp server stopped: {e}");
        }
    });
    Smtp {
        port,
        capture,
        ca_pem,
    }
}

/// A TCP proxy in front of `port` that keeps every byte the client sent.
async fn sniffing_proxy(port: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let proxy_port = listener.local_addr().unwrap().port();
    let keep = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut server = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            let _ = sw.shutdown().await;
                            return;
                        }
                        keep.lock().unwrap().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (proxy_port, seen)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

async fn wait_mails(capture: &Capture, n: usize) -> Vec<Mail> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mails = capture.mails.lock().unwrap().clone();
        if mails.len() >= n {
            return mails;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} mails arrived",
            mails.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn report() -> RunReport {
    let rt = Runtime::in_memory()
        .register::<Export>()
        .start()
        .await
        .unwrap();
    rt.run(Launch::new(Export {}).id("export-1")).await.unwrap()
}

// ------------------------------------------------------------------ the tests

// PROC-101 (one HTML mail with every task) and PROC-103 (only_errors: subject says
// "failed", body has the errored task only), through the runtime's outbox, over
// STARTTLS with AUTH, to several recipients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_auth_and_a_multipart_report() {
    let server = smtp(true, true);
    let (proxy, seen) = sniffing_proxy(server.port).await;
    let config = |to: &[&str]| {
        EmailConfig::new(
            SmtpConfig::starttls("127.0.0.1", proxy)
                .credentials("reports", "app-password")
                .trust_pem(server.ca_pem.as_bytes())
                .unwrap()
                .timeout(Duration::from_secs(10)),
            "Reports <reports@example.test>",
            to,
        )
        .unwrap()
    };
    let rt = Runtime::in_memory()
        .register::<Export>()
        .notify(Channel::email("team", config(&["a@example.test", "b@example.test"])).unwrap())
        .notify(
            Channel::email("oncall", config(&["oncall@example.test"]))
                .unwrap()
                .only_errors(),
        )
        .delivery(
            DeliveryOptions::default()
                .schedule(RetrySchedule::new([Duration::ZERO]).unwrap())
                .poll(Duration::from_millis(20)),
        )
        .start()
        .await
        .unwrap();
    rt.run(Launch::new(Export {}).id("export-1")).await.unwrap();
    let mails = wait_mails(&server.capture, 2).await;
    let team = mails
        .iter()
        .find(|m| m.to.len() == 2)
        .expect("the team's mail");
    let oncall = mails
        .iter()
        .find(|m| m.to.len() == 1)
        .expect("the on-call mail");

    // Envelope and AUTH.
    assert_eq!(team.from, "reports@example.test");
    assert_eq!(team.to, vec!["a@example.test", "b@example.test"]);
    assert_eq!(oncall.to, vec!["oncall@example.test"]);
    let auths = server.capture.auths.lock().unwrap().clone();
    assert_eq!(auths.len(), 2);
    assert!(auths
        .iter()
        .all(|a| a == &("reports".to_owned(), "app-password".to_owned())));
    // STARTTLS happened before anything else was said: the proxy saw the command, and
    // neither the envelope nor the credentials in clear.
    let plain = seen.lock().unwrap().clone();
    assert!(contains(&plain, "STARTTLS"));
    for secret in ["MAIL FROM", "RCPT TO", "AUTH", "export-1"] {
        assert!(
            !contains(&plain, secret),
            "`{secret}` went over the wire in clear"
        );
    }

    // The message: multipart/alternative with a text and an HTML part.
    assert!(contains(&team.data, "multipart/alternative"));
    let msg = MessageParser::default()
        .parse(&team.data)
        .expect("a MIME message");
    let subject = msg.subject().unwrap();
    assert!(
        subject.contains("failed") && subject.contains("export-1"),
        "{subject}"
    );
    let from = msg.from().unwrap().first().unwrap();
    assert_eq!(from.address().unwrap(), "reports@example.test");
    assert_eq!(from.name().unwrap(), "Reports");
    let html = msg.body_html(0).unwrap();
    let text = msg.body_text(0).unwrap();
    assert!(html.contains("<table") && !text.contains("<table"));
    for body in [&html, &text] {
        for t in [
            "ok_task",
            "bad_task",
            "after_bad",
            "cannot write the export",
            "disk",
            "skipped because of it",
        ] {
            assert!(body.contains(t), "`{t}` missing from:\n{body}");
        }
    }
    assert!(
        html.contains("disk &lt;full&gt;"),
        "errors are escaped in HTML"
    );
    assert!(text.contains("disk <full>"));

    let oncall_msg = MessageParser::default().parse(&oncall.data).unwrap();
    assert!(oncall_msg
        .subject()
        .unwrap()
        .to_lowercase()
        .contains("failed"));
    let body = oncall_msg.body_html(0).unwrap();
    assert!(
        body.contains("bad_task") && !body.contains("ok_task"),
        "{body}"
    );

    // The server has both messages before the notifier has the server's last reply and
    // records the delivery: wait for the records (a bounded wait, not one read).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = rt
            .deliveries(DeliveryQuery::new().run("export-1"))
            .await
            .unwrap();
        assert_eq!(page.deliveries.len(), 2);
        if page
            .deliveries
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", page.deliveries);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.shutdown().await.unwrap();
}

// STARTTLS is required, never opportunistic: a server that does not offer it gets
// nothing, and the attempt fails with a TLS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_required() {
    let server = smtp(false, false);
    let report = report().await;
    let cfg = EmailConfig::new(
        SmtpConfig::starttls("127.0.0.1", server.port).timeout(Duration::from_secs(5)),
        "reports@example.test",
        ["a@example.test"],
    )
    .unwrap();
    let err = Channel::email("mail", cfg)
        .unwrap()
        .send(&report)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::Tls { .. } | DeliveryError::Smtp { .. }),
        "{err:?}"
    );
    assert!(err.to_string().to_lowercase().contains("tls"), "{err}");
    assert!(server.capture.mails.lock().unwrap().is_empty());
    // Plain, when asked for explicitly, sends.
    let cfg = EmailConfig::new(
        SmtpConfig::plain("127.0.0.1", server.port),
        "reports@example.test",
        ["a@example.test"],
    )
    .unwrap();
    Channel::email("mail", cfg)
        .unwrap()
        .send(&report)
        .await
        .unwrap();
    assert_eq!(wait_mails(&server.capture, 1).await.len(), 1);
}

// A certificate the client does not trust, and implicit TLS against a server that greets
// in plain text: TLS errors, in bounded time, nothing delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mismatches_fail_in_bounded_time() {
    let server = smtp(true, true);
    let report = report().await;
    let untrusted = EmailConfig::new(
        SmtpConfig::starttls("127.0.0.1", server.port).timeout(Duration::from_secs(5)),
        "reports@example.test",
        ["a@example.test"],
    )
    .unwrap();
    let err = Channel::email("mail", untrusted)
        .unwrap()
        .send(&report)
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Tls { .. }), "{err:?}");
    let t = Instant::now();
    let implicit = EmailConfig::new(
        SmtpConfig::implicit_tls("127.0.0.1", server.port)
            .trust_pem(server.ca_pem.as_bytes())
            .unwrap()
            .timeout(Duration::from_secs(2)),
        "reports@example.test",
        ["a@example.test"],
    )
    .unwrap();
    let err = Channel::email("mail", implicit)
        .unwrap()
        .send(&report)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DeliveryError::Tls { .. } | DeliveryError::Timeout { .. }
        ),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(4));
    assert!(server.capture.mails.lock().unwrap().is_empty());
}

// A server that accepts the connection and never says a word: the whole send is bounded
// by the channel's timeout (lettre's own covers only the connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let report = report().await;
    let cfg = EmailConfig::new(
        SmtpConfig::starttls("127.0.0.1", port).timeout(Duration::from_millis(500)),
        "reports@example.test",
        ["a@example.test"],
    )
    .unwrap();
    let t = Instant::now();
    let err = Channel::email("mail", cfg)
        .unwrap()
        .send(&report)
        .await
        .unwrap_err();
    assert!(matches!(err, DeliveryError::Timeout { .. }), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

// Wrong credentials: the server's refusal is a typed SMTP error with its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_an_smtp_error() {
    let server = smtp(true, true);
    let report = report().await;
    let cfg = EmailConfig::new(
        SmtpConfig::starttls("127.0.0.1", server.port)
            .credentials("reports", "wrong")
            .trust_pem(server.ca_pem.as_bytes())
            .unwrap(),
        "reports@example.test",
        ["a@example.test"],
    )
    .unwrap();
    let err = Channel::email("mail", cfg)
        .unwrap()
        .send(&report)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DeliveryError::Smtp {
                code: Some(535),
                ..
            }
        ),
        "{err:?}"
    );
}
