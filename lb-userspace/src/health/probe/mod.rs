//! One health check against one server: [`probe`] runs it and returns pass
//! or fail, the time it took and a reason an operator can read. The whole
//! probe is bounded by `timeout_ms`; a check that cannot be prepared is
//! refused with a [`HealthError`].

mod exec;
mod http;
mod tcp;
mod tls;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use self::exec::exec_probe;
pub use self::exec::{end_running_checks, resume_checks};
use self::http::HttpProbe;
pub use self::http::{HEALTH_USER_AGENT, MAX_BODY};
use self::tcp::network_probe;
use crate::config::{CheckKind, HealthCheck};

/// Why a health check cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// `expect_body` is not a regular expression.
    #[error("expect_body {pattern:?} is not a valid regular expression ({source}); fix it in the configuration")]
    BadBodyPattern {
        /// The pattern as configured.
        pattern: String,
        /// What the regex crate found wrong.
        #[source]
        source: regex::Error,
    },
    /// `path` is not an origin-form request target.
    #[error("path {0:?} is not a request path; write it like /health or /status?full=1")]
    BadPath(String),
    /// `host` cannot be sent as a TLS server name.
    #[error("host {0:?} is not a valid TLS server name; set host to a DNS name or an IP address")]
    BadServerName(String),
    /// rustls refused to build a client configuration.
    #[error("TLS: cannot set up the client: {0}")]
    Tls(#[source] rustls::Error),
    /// `tls_verify: true` but the system holds no usable CA certificate.
    #[error("TLS: no trusted root certificate found in the system store ({0}); install ca-certificates or set tls_verify: false")]
    NoRootCertificates(String),
}

/// A health check made ready to run: regular expression compiled, request
/// target parsed, TLS configuration chosen.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    kind: ProbeKind,
    port: u16,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum ProbeKind {
    None,
    Tcp,
    Http(Arc<HttpProbe>),
    Exec(Vec<String>),
}

impl ProbeSpec {
    /// Prepares `check` to run.
    ///
    /// # Errors
    /// When `expect_body`, `path` or `host` cannot be used, or (for https) no
    /// TLS client can be set up.
    pub fn new(check: &HealthCheck) -> Result<Self, HealthError> {
        let kind = match check.kind {
            CheckKind::None => ProbeKind::None,
            CheckKind::Tcp => ProbeKind::Tcp,
            CheckKind::Exec => ProbeKind::Exec(check.command.clone()),
            CheckKind::Http | CheckKind::Https => ProbeKind::Http(Arc::new(HttpProbe::new(check)?)),
        };
        Ok(Self {
            kind,
            port: check.port,
            timeout: Duration::from_millis(u64::from(check.timeout_ms)),
        })
    }
}

/// The server a probe is aimed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// Address of the real server.
    pub address: Ipv4Addr,
    /// Service name (`LB_SERVICE` for exec checks).
    pub service: String,
    /// Real-server name (`LB_SERVER_NAME` for exec checks).
    pub server: String,
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the check passed.
    pub passed: bool,
    /// The check could not run for a reason on this machine (no file
    /// descriptors, no memory, no local port): it says nothing about the
    /// server, so it is logged and never counted towards rise or fall.
    pub local_error: bool,
    /// Time from the start of the probe to its outcome.
    pub latency: Duration,
    /// What happened, for an operator: "status 503 not in 200-399",
    /// "connect refused", "timed out after 1000 ms (connecting)", "exit 1".
    pub detail: String,
}

/// What a probe was doing, for the timeout message.
#[derive(Default)]
struct Phase(AtomicU8);

impl Phase {
    const CONNECT: u8 = 0;
    const TLS: u8 = 1;
    const RESPONSE: u8 = 2;
    const BODY: u8 = 3;

    fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }

    fn describe(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            Self::CONNECT => "connecting",
            Self::TLS => "in the TLS handshake",
            Self::RESPONSE => "waiting for the response",
            _ => "reading the body",
        }
    }
}

/// A pass or fail reason.
type Outcome = Result<String, String>;

/// Why a probe could not run at all on this machine.
struct LocalError(String);

/// The errors of a socket or process call that are this machine's, not the
/// server's: out of descriptors, memory, buffers or local ports.
fn is_local(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOMEM
                | libc::ENOBUFS
                | libc::EADDRNOTAVAIL
                | libc::EAGAIN
        )
    )
}

/// Runs `check` once against `target`.
pub async fn probe(check: &ProbeSpec, target: &ProbeTarget) -> ProbeResult {
    let started = Instant::now();
    let outcome = match &check.kind {
        ProbeKind::None => Ok(Ok("no check (type none)".to_owned())),
        ProbeKind::Exec(command) => exec_probe(command, check, target).await,
        ProbeKind::Tcp | ProbeKind::Http(_) => {
            let phase = Phase::default();
            match tokio::time::timeout(check.timeout, network_probe(check, target, &phase)).await {
                Ok(outcome) => outcome,
                Err(_) => Ok(Err(format!(
                    "{} ({})",
                    timed_out(check.timeout),
                    phase.describe()
                ))),
            }
        }
    };
    let latency = started.elapsed();
    let (passed, local_error, detail) = match outcome {
        Ok(Ok(detail)) => (true, false, detail),
        Ok(Err(detail)) => (false, false, detail),
        Err(LocalError(detail)) => (false, true, detail),
    };
    ProbeResult {
        passed,
        local_error,
        latency,
        detail,
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {} ms", timeout.as_millis())
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::health::testing::{failed, http, run, LOCAL};

    #[tokio::test]
    async fn a_server_that_accepts_but_never_answers_times_out() {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let c = HealthCheck {
            timeout_ms: 200,
            ..http(port)
        };
        let r = run(&c).await;
        failed(&r, "timed out after 200 ms (waiting for the response)");
        assert!(r.latency >= Duration::from_millis(200) && r.latency < Duration::from_secs(2));
        holder.abort();
    }
}
