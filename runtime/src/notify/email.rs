//! The e-mail transport: a multipart HTML + plain text report over SMTP (lettre on tokio
//! with rustls), with an explicit security mode and a time limit on the whole send.

use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::error::{is_tls, ConfigError, DeliveryError};
use super::payload::Parsed;
use crate::error::one_line as chain;
use crate::report::{RunStatus, TaskReport, TaskStatus};

/// How the SMTP connection is protected. There is no "opportunistic" mode: a server
/// that does not offer STARTTLS fails a [`StartTls`](Security::StartTls) send instead of
/// receiving the report in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which is required (port 587 usually).
    StartTls,
    /// TLS from the first byte (port 465 usually).
    ImplicitTls,
    /// No encryption: only for a relay on the same host or a test server.
    Plain,
}

/// An SMTP server: host, port, security, credentials, time limits, extra trust anchors.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use procession::notify::SmtpConfig;
/// let smtp = SmtpConfig::starttls("smtp.example.com", 587)
///     .credentials("reports", "app-password")
///     .timeout(Duration::from_secs(20));
/// # let _ = smtp;
/// ```
#[derive(Clone)]
pub struct SmtpConfig {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<(String, String)>,
    timeout: Duration,
    connect_timeout: Duration,
    roots: Vec<Vec<u8>>,
    hello: Option<String>,
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SmtpConfig {
    fn new(host: &str, port: u16, security: Security) -> Self {
        SmtpConfig {
            host: host.to_owned(),
            port,
            security,
            credentials: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            roots: Vec::new(),
            hello: None,
        }
    }

    /// STARTTLS, required.
    pub fn starttls(host: &str, port: u16) -> Self {
        Self::new(host, port, Security::StartTls)
    }

    /// Implicit TLS.
    pub fn implicit_tls(host: &str, port: u16) -> Self {
        Self::new(host, port, Security::ImplicitTls)
    }

    /// No encryption (say so explicitly: there is no default).
    pub fn plain(host: &str, port: u16) -> Self {
        Self::new(host, port, Security::Plain)
    }

    /// Log in with `user` and `password` (AUTH PLAIN or LOGIN, as the server offers).
    #[must_use]
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// The time limit of a whole send, connect to the server's last answer (default
    /// 30 s). lettre's own limit covers only the connection, so a server that stops
    /// answering mid-session would otherwise hold a delivery forever.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The time limit of the connection alone (default 10 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Also trust this CA certificate (PEM), beside the system's: for a private server.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Certificate`] when `pem` is not a PEM certificate.
    pub fn trust_pem(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        // lettre reads text without any PEM block as no certificate, without an error.
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::Certificate {
                reason: "no `-----BEGIN CERTIFICATE-----` block".into(),
            });
        }
        Certificate::from_pem(pem).map_err(|e| ConfigError::Certificate { reason: chain(&e) })?;
        self.roots.push(pem.to_vec());
        Ok(self)
    }

    /// The name this client gives in `EHLO` (default: lettre's).
    #[must_use]
    pub fn hello_name(mut self, name: impl Into<String>) -> Self {
        self.hello = Some(name.into());
        self
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, DeliveryError> {
        let tls = || -> Result<TlsParameters, DeliveryError> {
            let mut b = TlsParameters::builder(self.host.clone());
            for pem in &self.roots {
                let cert = Certificate::from_pem(pem)
                    .map_err(|e| DeliveryError::Tls { message: chain(&e) })?;
                b = b.add_root_certificate(cert);
            }
            b.build()
                .map_err(|e| DeliveryError::Tls { message: chain(&e) })
        };
        let tls = match self.security {
            Security::StartTls => Tls::Required(tls()?),
            Security::ImplicitTls => Tls::Wrapper(tls()?),
            Security::Plain => Tls::None,
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .tls(tls)
            .timeout(Some(self.connect_timeout));
        if let Some((user, pass)) = &self.credentials {
            b = b.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        if let Some(name) = &self.hello {
            b = b.hello_name(lettre::transport::smtp::extension::ClientId::Domain(
                name.clone(),
            ));
        }
        Ok(b.build())
    }
}

/// An e-mail channel: the server, the sender, the recipients, a subject prefix.
///
/// The message is `multipart/alternative`: a plain text part and an HTML part with the
/// same content — a summary (process, run, status, timing, counts), a table of every
/// reported task (status, attempts, elapsed) and, per failure, the error, its source
/// chain and the tasks skipped because of it.
///
/// # Examples
///
/// ```
/// use procession::notify::{Channel, EmailConfig, SmtpConfig};
/// let mail = EmailConfig::new(
///     SmtpConfig::starttls("smtp.example.com", 587).credentials("reports", "app-password"),
///     "Reports <reports@example.com>",
///     ["oncall@example.com", "data@example.com"],
/// )?;
/// let channel = Channel::email("oncall", mail)?.only_failed_runs();
/// # let _ = channel;
/// assert!(EmailConfig::new(SmtpConfig::plain("localhost", 25), "not an address", ["a@b.c"]).is_err());
/// # Ok::<(), procession::notify::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct EmailConfig {
    smtp: SmtpConfig,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject_prefix: String,
}

impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp", &self.smtp)
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

fn mailbox(address: &str) -> Result<Mailbox, ConfigError> {
    address.parse().map_err(|e| ConfigError::Address {
        address: address.to_owned(),
        reason: format!("{e}"),
    })
}

impl EmailConfig {
    /// Mail from `from` to every address of `to` through `smtp`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Address`] for an address that does not parse,
    /// [`ConfigError::NoRecipients`] when `to` is empty.
    pub fn new<S: AsRef<str>>(
        smtp: SmtpConfig,
        from: &str,
        to: impl IntoIterator<Item = S>,
    ) -> Result<Self, ConfigError> {
        let to = to
            .into_iter()
            .map(|a| mailbox(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(ConfigError::NoRecipients);
        }
        Ok(EmailConfig {
            smtp,
            from: mailbox(from)?,
            to,
            subject_prefix: "[procession]".into(),
        })
    }

    /// Text put before every subject (default `[procession]`).
    #[must_use]
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// One attempt: render the stored `body` and send it.
    pub(crate) async fn send(&self, body: &str) -> Result<(), DeliveryError> {
        let parsed = Parsed::parse(body).map_err(|e| DeliveryError::Render {
            message: e.to_string(),
        })?;
        let message = self.message(&parsed)?;
        let transport = self.smtp.transport()?;
        match tokio::time::timeout(self.smtp.timeout, transport.send(message)).await {
            Err(_) => Err(DeliveryError::Timeout {
                after: self.smtp.timeout,
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e, self.smtp.security)),
        }
    }

    fn message(&self, n: &Parsed) -> Result<Message, DeliveryError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject(&self.subject_prefix, n));
        for to in &self.to {
            b = b.to(to.clone());
        }
        b.multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text(n)),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html(n)),
                ),
        )
        .map_err(|e| DeliveryError::Render {
            message: e.to_string(),
        })
    }
}

fn classify(e: &lettre::transport::smtp::Error, security: Security) -> DeliveryError {
    let message = chain(e);
    if e.is_tls() || is_tls(e) {
        return DeliveryError::Tls { message };
    }
    if security == Security::StartTls && e.is_client() && message.contains("STARTTLS") {
        return DeliveryError::Tls {
            message: format!(
                "the server does not offer STARTTLS, which this channel requires ({message})"
            ),
        };
    }
    if e.is_timeout() {
        return DeliveryError::Timeout {
            after: Duration::ZERO,
        };
    }
    if let Some(code) = e.status() {
        return DeliveryError::Smtp {
            code: Some(u16::from(code)),
            message,
        };
    }
    if e.is_transient() || e.is_permanent() || e.is_response() {
        return DeliveryError::Smtp {
            code: None,
            message,
        };
    }
    if e.is_client() {
        return DeliveryError::Request { message };
    }
    DeliveryError::Connect { message }
}

fn status_word(n: &Parsed) -> &'static str {
    match n.report.status {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

fn counts(n: &Parsed) -> String {
    let count = |s: TaskStatus| n.report.tasks.iter().filter(|t| t.status == s).count();
    let mut parts = vec![format!("{} succeeded", count(TaskStatus::Success))];
    for (s, word) in [
        (TaskStatus::Errored, "errored"),
        (TaskStatus::Skipped, "skipped"),
        (TaskStatus::Cancelled, "cancelled"),
    ] {
        let c = count(s);
        if c > 0 {
            parts.push(format!("{c} {word}"));
        }
    }
    parts.join(", ")
}

fn subject(prefix: &str, n: &Parsed) -> String {
    let errored = n
        .report
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Errored)
        .count();
    let tail = if errored > 0 {
        format!(
            ": {errored} task{} errored",
            if errored == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    format!(
        "{prefix} {} {} {}{tail}",
        n.report.process,
        n.process_id,
        status_word(n)
    )
    .trim_start()
    .to_owned()
}

fn status_label(t: &TaskReport) -> &'static str {
    match t.status {
        TaskStatus::Success => "success",
        TaskStatus::Errored => "errored",
        TaskStatus::Skipped => "skipped",
        TaskStatus::Cancelled => "cancelled",
    }
}

fn ms(t: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(t).unwrap_or(i64::MAX)).map_or_else(
        || t.to_string(),
        |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn text(n: &Parsed) -> String {
    let r = &n.report;
    let mut s = format!(
        "{} ({}) {}\nrun {} · {}\n",
        r.process,
        n.process_id,
        status_word(n).to_uppercase(),
        n.kind,
        counts(n)
    );
    if let Some(start) = n.started_at {
        let _ = writeln!(s, "started {}", ms(start));
    }
    let _ = writeln!(
        s,
        "ended   {} after {:.3}s\n",
        ms(n.ended_at),
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "{:<32} {:<9} {:>8} {:>10}",
        "task", "status", "attempts", "elapsed"
    );
    for t in &r.tasks {
        let _ = writeln!(
            s,
            "{:<32} {:<9} {:>8} {:>9.3}s",
            t.id,
            status_label(t),
            t.attempts,
            t.elapsed().as_secs_f64()
        );
    }
    for t in r.tasks.iter().filter(|t| t.error.is_some()) {
        let e = t.error.as_ref().expect("filtered");
        let _ = write!(s, "\n{} failed: {}\n", t.id, e.message);
        for (i, c) in e.chain.iter().enumerate().skip(1) {
            let _ = writeln!(s, "  {i}: caused by: {c}");
        }
        if !e.downstream_impact.is_empty() {
            let _ = writeln!(
                s,
                "  skipped because of it: {}",
                e.downstream_impact.join(", ")
            );
        }
    }
    s
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(n: &Parsed) -> String {
    let r = &n.report;
    let colour = match r.status {
        RunStatus::Succeeded => "#1a7f37",
        RunStatus::Failed => "#cf222e",
        RunStatus::Cancelled => "#9a6700",
    };
    let mut s = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head>\
         <body style=\"font-family:system-ui,sans-serif;color:#1f2328\">",
    );
    let _ = write!(
        s,
        "<h2 style=\"margin:0 0 4px\">{} <span style=\"color:{colour}\">{}</span></h2>\
         <p style=\"margin:0 0 12px;color:#59636e\">run <code>{}</code> · {}",
        esc(&r.process),
        esc(status_word(n)),
        esc(&n.process_id),
        esc(&counts(n))
    );
    if let Some(start) = n.started_at {
        let _ = write!(s, " · started {}", esc(&ms(start)));
    }
    let _ = write!(
        s,
        " · ended {} after {:.3}s</p>",
        esc(&ms(n.ended_at)),
        r.elapsed.as_secs_f64()
    );
    s.push_str(
        "<table style=\"border-collapse:collapse\" cellpadding=\"4\">\
         <tr style=\"text-align:left;border-bottom:1px solid #d1d9e0\">\
         <th>task</th><th>status</th><th>attempts</th><th>elapsed</th></tr>",
    );
    for t in &r.tasks {
        let c = match t.status {
            TaskStatus::Success => "#1a7f37",
            TaskStatus::Errored => "#cf222e",
            TaskStatus::Skipped | TaskStatus::Cancelled => "#9a6700",
        };
        let _ = write!(
            s,
            "<tr><td><code>{}</code></td><td style=\"color:{c}\">{}</td>\
             <td style=\"text-align:right\">{}</td><td style=\"text-align:right\">{:.3}s</td></tr>",
            esc(&t.id),
            status_label(t),
            t.attempts,
            t.elapsed().as_secs_f64()
        );
    }
    s.push_str("</table>");
    for t in r.tasks.iter().filter(|t| t.error.is_some()) {
        let e = t.error.as_ref().expect("filtered");
        let _ = write!(
            s,
            "<h3 style=\"margin:16px 0 4px;color:#cf222e\"><code>{}</code> failed</h3>\
             <p style=\"margin:0\">{}</p>",
            esc(&t.id),
            esc(&e.message)
        );
        if e.chain.len() > 1 {
            s.push_str("<ol style=\"margin:4px 0\">");
            for c in e.chain.iter().skip(1) {
                let _ = write!(s, "<li>caused by: {}</li>", esc(c));
            }
            s.push_str("</ol>");
        }
        if !e.downstream_impact.is_empty() {
            let skipped: Vec<String> = e
                .downstream_impact
                .iter()
                .map(|d| format!("<code>{}</code>", esc(d)))
                .collect();
            let _ = write!(
                s,
                "<p style=\"margin:4px 0\">skipped because of it: {}</p>",
                skipped.join(", ")
            );
        }
    }
    s.push_str("</body></html>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_what_it_shows() {
        assert_eq!(esc("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn addresses_are_checked() {
        let smtp = || SmtpConfig::plain("localhost", 25);
        assert!(matches!(
            EmailConfig::new(smtp(), "a@b.c", Vec::<&str>::new()),
            Err(ConfigError::NoRecipients)
        ));
        assert!(matches!(
            EmailConfig::new(smtp(), "a@b.c", ["no at sign"]),
            Err(ConfigError::Address { .. })
        ));
        assert!(EmailConfig::new(smtp(), "Ops <ops@example.com>", ["a@b.c", "d@e.f"]).is_ok());
        assert!(matches!(
            smtp().trust_pem(b"not a pem"),
            Err(ConfigError::Certificate { .. })
        ));
    }
}
