//! Real-server health checks: the probes, the rise/fall decision, and the
//! scheduler that runs them.
//!
//! Probe and decision are kept apart:
//! - [`probe`] runs one check against one server and returns pass or fail,
//!   the time it took and a reason an operator can read. A `tcp` check is a
//!   TCP connect; `http` and `https` send one HTTP/1.1 `GET` (RFC 9112) with
//!   `Host` (RFC 9110 §7.2) and `Connection: close`, the latter over TLS
//!   (RFC 8446) with the server name indication (RFC 6066 §3) when `host` is
//!   set; `exec` runs a program and passes on exit status 0. The whole probe
//!   is bounded by `timeout_ms`.
//! - [`Hysteresis`] is the pure rise/fall decision: a server counts as up
//!   until its first check completes, a failed first check takes it down at
//!   once, and after that `rise` consecutive passes bring it up and `fall`
//!   consecutive failures take it down.
//! - [`HealthMonitor`] runs every distinct check in its own task, so checks
//!   run concurrently, one slow server never delays another, and a check
//!   still running is never started again. Identical checks (same address,
//!   same parameters) used by several services run once and their result goes
//!   to every (service, server) that uses them. Results go through one
//!   dispatcher task, so the [`HealthEvent`]s of a server always arrive in
//!   the order its checks completed.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::balancer::Health;
use crate::config::{CheckKind, HealthCheck};

/// At most this many bytes of a response body are read and matched against
/// `expect_body`.
pub const MAX_BODY: usize = 64 * 1024;

/// The `User-Agent` of HTTP checks.
pub const HEALTH_USER_AGENT: &str = "lbd-health-check";

/// At most this many bytes of an exec check's standard error are kept for
/// the failure reason.
const MAX_STDERR: usize = 4096;

/// Longest reason taken from an exec check's standard error, in characters.
const MAX_STDERR_LINE: usize = 200;

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

// ---------------------------------------------------------------------------
// Decision
// ---------------------------------------------------------------------------

/// The rise/fall decision for one check: pure, no clock, no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    health: Health,
    passes: u32,
    failures: u32,
    checks: u64,
}

impl Hysteresis {
    /// A server not checked yet (so up); `rise` and `fall` of 0 count as 1.
    #[must_use]
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            health: Health::Up,
            passes: 0,
            failures: 0,
            checks: 0,
        }
    }

    /// Records one completed check; returns the new health when it flips.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let first = self.checks == 0;
        self.checks = self.checks.saturating_add(1);
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            if self.health == Health::Down && self.passes >= self.rise {
                self.health = Health::Up;
                return Some(Health::Up);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            if self.health == Health::Up && (first || self.failures >= self.fall) {
                self.health = Health::Down;
                return Some(Health::Down);
            }
        }
        None
    }

    /// Current health.
    #[must_use]
    pub fn health(&self) -> Health {
        self.health
    }

    /// Passes in a row up to now.
    #[must_use]
    pub fn consecutive_passes(&self) -> u32 {
        self.passes
    }

    /// Failures in a row up to now.
    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Checks recorded since this state was created.
    #[must_use]
    pub fn checks(&self) -> u64 {
        self.checks
    }
}

/// When the next check starts: one interval after the previous one started
/// (intervals run start to start), or `now` if that time has passed because
/// the check took longer than the interval.
#[must_use]
pub fn next_start(started: Instant, now: Instant, interval: Duration) -> Instant {
    (started + interval).max(now)
}

// ---------------------------------------------------------------------------
// Probe
// ---------------------------------------------------------------------------

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

#[derive(Debug)]
struct HttpProbe {
    uri: Uri,
    host: Option<String>,
    expect_status: (u16, u16),
    expect_body: Option<regex::bytes::Regex>,
    /// `Some` for https, with the server name when `host` is set.
    tls: Option<(Arc<ClientConfig>, Option<ServerName<'static>>)>,
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

impl HttpProbe {
    fn new(check: &HealthCheck) -> Result<Self, HealthError> {
        let uri: Uri = check
            .path
            .parse()
            .map_err(|_| HealthError::BadPath(check.path.clone()))?;
        if uri.scheme().is_some() || uri.authority().is_some() || !check.path.starts_with('/') {
            return Err(HealthError::BadPath(check.path.clone()));
        }
        let expect_body = check
            .expect_body
            .as_deref()
            .map(|pattern| {
                regex::bytes::Regex::new(pattern).map_err(|source| HealthError::BadBodyPattern {
                    pattern: pattern.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let tls = if check.kind == CheckKind::Https {
            let name = check.host.as_deref().map(server_name).transpose()?;
            Some((tls_config(check.tls_verify)?, name))
        } else {
            None
        };
        Ok(Self {
            uri,
            host: check.host.clone(),
            expect_status: check.expect_status,
            expect_body,
            tls,
        })
    }
}

/// The TLS server name for `host`: a DNS name or an IP address, any
/// `:port` suffix dropped.
fn server_name(host: &str) -> Result<ServerName<'static>, HealthError> {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else {
        match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':')
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => host,
        }
    };
    ServerName::try_from(bare.to_owned()).map_err(|_| HealthError::BadServerName(host.to_owned()))
}

/// The shared rustls client configuration, verifying or not. Built once:
/// the system's CA certificates are read at the first verifying check.
fn tls_config(verify: bool) -> Result<Arc<ClientConfig>, HealthError> {
    static VERIFYING: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    static ACCEPTING: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let cell = if verify { &VERIFYING } else { &ACCEPTING };
    if let Some(config) = cell.get() {
        return Ok(Arc::clone(config));
    }
    let built = build_tls_config(verify)?;
    Ok(Arc::clone(cell.get_or_init(|| built)))
}

fn build_tls_config(verify: bool) -> Result<Arc<ClientConfig>, HealthError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(HealthError::Tls)?;
    let mut config = if verify {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let why = if loaded.errors.is_empty() {
                "none installed".to_owned()
            } else {
                loaded
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(HealthError::NoRootCertificates(why));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `tls_verify: false`: any certificate is accepted for any name, but the
/// handshake signatures are still checked, so the peer does hold the key of
/// the certificate it shows.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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

/// Runs `check` once against `target`.
pub async fn probe(check: &ProbeSpec, target: &ProbeTarget) -> ProbeResult {
    let started = Instant::now();
    let outcome = match &check.kind {
        ProbeKind::None => Ok("no check (type none)".to_owned()),
        ProbeKind::Exec(command) => exec_probe(command, check, target).await,
        ProbeKind::Tcp | ProbeKind::Http(_) => {
            let phase = Phase::default();
            match tokio::time::timeout(check.timeout, network_probe(check, target, &phase)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!(
                    "{} ({})",
                    timed_out(check.timeout),
                    phase.describe()
                )),
            }
        }
    };
    let latency = started.elapsed();
    match outcome {
        Ok(detail) => ProbeResult {
            passed: true,
            latency,
            detail,
        },
        Err(detail) => ProbeResult {
            passed: false,
            latency,
            detail,
        },
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {} ms", timeout.as_millis())
}

async fn network_probe(check: &ProbeSpec, target: &ProbeTarget, phase: &Phase) -> Outcome {
    let stream = TcpStream::connect(SocketAddr::from((target.address, check.port)))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connect refused".to_owned(),
            _ => format!("connect: {e}"),
        })?;
    let ProbeKind::Http(http) = &check.kind else {
        return Ok("connected".to_owned());
    };
    // Only a latency tweak; the request is small either way.
    let _ = stream.set_nodelay(true);
    match &http.tls {
        None => {
            let host = host_header(http, target.address, check.port, 80);
            http_exchange(TokioIo::new(stream), http, host, phase).await
        }
        Some((config, name)) => {
            phase.set(Phase::TLS);
            let name = name
                .clone()
                .unwrap_or(ServerName::IpAddress(IpAddr::V4(target.address).into()));
            let tls = TlsConnector::from(Arc::clone(config))
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let host = host_header(http, target.address, check.port, 443);
            http_exchange(TokioIo::new(tls), http, host, phase).await
        }
    }
}

/// `host` if set, else the server's address with the port unless it is the
/// scheme's default (RFC 9110 §7.2).
fn host_header(http: &HttpProbe, address: Ipv4Addr, port: u16, default_port: u16) -> String {
    match &http.host {
        Some(host) => host.clone(),
        None if port == default_port => address.to_string(),
        None => format!("{address}:{port}"),
    }
}

async fn http_exchange<I>(io: I, http: &HttpProbe, host: String, phase: &Phase) -> Outcome
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    phase.set(Phase::RESPONSE);
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(http.uri.clone())
        .header(HOST, host)
        .header(USER_AGENT, HEALTH_USER_AGENT)
        .header(CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("HTTP: cannot build the request: {e}"))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let (low, high) = http.expect_status;
        if !(low..=high).contains(&status) {
            return Err(if low == high {
                format!("status {status} is not {low}")
            } else {
                format!("status {status} not in {low}-{high}")
            });
        }
        let Some(pattern) = &http.expect_body else {
            return Ok(format!("status {status}"));
        };
        phase.set(Phase::BODY);
        let body = read_body(response.into_body(), MAX_BODY).await?;
        if pattern.is_match(&body) {
            Ok(format!(
                "status {status}, body matches /{}/",
                pattern.as_str()
            ))
        } else {
            Err(format!("body does not match /{}/", pattern.as_str()))
        }
    };
    // The connection is driven here rather than spawned, so that nothing
    // outlives the probe's timeout.
    let mut connection = pin!(connection);
    let mut exchange = pin!(exchange);
    let mut connection_done = false;
    loop {
        tokio::select! {
            biased;
            outcome = &mut exchange => return outcome,
            closed = &mut connection, if !connection_done => {
                connection_done = true;
                if let Err(e) = closed {
                    return Err(format!("HTTP: {e}"));
                }
            }
        }
    }
}

/// The first `limit` bytes of a body.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Vec<u8>, String> {
    let mut kept = Vec::new();
    while kept.len() < limit {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(format!("HTTP: reading the body: {e}")),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = limit - kept.len();
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    }
    Ok(kept)
}

/// Runs the exec check's program in its own process group; on timeout the
/// whole group is killed and the program reaped. The check is complete when
/// the program has exited and its standard error is closed.
async fn exec_probe(command: &[String], check: &ProbeSpec, target: &ProbeTarget) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Err("no command configured".to_owned());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("LB_SERVER_ADDRESS", target.address.to_string())
        .env("LB_SERVER_PORT", check.port.to_string())
        .env("LB_SERVICE", &target.service)
        .env("LB_SERVER_NAME", &target.server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut group = GroupKiller(child.id().and_then(|pid| i32::try_from(pid).ok()));
    let stderr = child.stderr.take();
    let finished = tokio::time::timeout(check.timeout, async {
        tokio::join!(child.wait(), read_tail(stderr, MAX_STDERR))
    })
    .await;
    let Ok(done) = finished else {
        group.kill();
        // Kills the program if it still runs, and reaps it.
        let _ = child.kill().await;
        return Err(timed_out(check.timeout));
    };
    group.disarm();
    match done {
        (Ok(status), _) if status.success() => Ok("exit 0".to_owned()),
        (Ok(status), stderr) => Err(describe_exit(status, &stderr)),
        (Err(e), _) => Err(format!("waiting for {program}: {e}")),
    }
}

/// Kills an exec check's process group, at the latest when dropped (the
/// probe was cancelled), unless disarmed once the program has finished.
/// The program itself is then killed and reaped by tokio (`kill_on_drop`).
struct GroupKiller(Option<i32>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            // SAFETY: killpg(2) only sends a signal; `group` is the process
            // group that this check's program leads (`process_group(0)`).
            unsafe { libc::killpg(group, libc::SIGKILL) };
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `limit` bytes a reader gives until it closes.
async fn read_tail<R: AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0_u8; 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > limit {
                    kept.drain(..kept.len() - limit);
                }
            }
        }
    }
    kept
}

/// "exit 1" or "killed by signal 9", with the last line of standard error.
fn describe_exit(status: ExitStatus, stderr: &[u8]) -> String {
    let mut detail = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    };
    let text = String::from_utf8_lossy(stderr);
    if let Some(line) = text.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        detail.push_str(": ");
        detail.extend(line.chars().take(MAX_STDERR_LINE));
    }
    detail
}

// ---------------------------------------------------------------------------
// Scheduler
// ---------------------------------------------------------------------------

/// One real server of one service, with its health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTarget {
    /// Service name.
    pub service: String,
    /// Real-server name.
    pub server: String,
    /// Real-server address.
    pub address: Ipv4Addr,
    /// The service's health check.
    pub check: HealthCheck,
}

/// A completed check of one (service, server), or its current health when
/// it starts sharing a check that already ran or gets `type: none`.
///
/// Apply `health` on every event (it is idempotent); `changed` only says
/// whether this check flipped the health, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// Service name.
    pub service: String,
    /// Real-server name.
    pub server: String,
    /// Health after this check.
    pub health: Health,
    /// Whether this check flipped the health.
    pub changed: bool,
    /// The check's outcome.
    pub result: ProbeResult,
}

/// One (service, server) as [`HealthMonitor::snapshot`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHealth {
    /// Service name.
    pub service: String,
    /// Real-server name.
    pub server: String,
    /// Real-server address.
    pub address: Ipv4Addr,
    /// Type of check.
    pub kind: CheckKind,
    /// Current health (up until the first check completes).
    pub health: Health,
    /// The last completed check, if any.
    pub last: Option<ProbeResult>,
}

/// Identity of a distinct check: the address and every field that changes
/// what the probe does; fields the check's type ignores are left out, so
/// that, say, two tcp checks differing only in an inherited `path` are one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CheckKey {
    address: Ipv4Addr,
    kind: CheckKind,
    port: u16,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<(u16, u16)>,
    expect_body: Option<String>,
    tls_verify: bool,
    command: Vec<String>,
    interval_ms: u32,
    timeout_ms: u32,
    rise: u32,
    fall: u32,
    /// An exec check's environment names its service and server, so each
    /// (service, server) has its own.
    owner: Option<(String, String)>,
}

impl CheckKey {
    fn new(target: &CheckTarget) -> Self {
        let check = &target.check;
        let http = matches!(check.kind, CheckKind::Http | CheckKind::Https);
        let exec = check.kind == CheckKind::Exec;
        Self {
            address: target.address,
            kind: check.kind,
            port: check.port,
            path: http.then(|| check.path.clone()),
            host: check.host.clone().filter(|_| http),
            expect_status: http.then_some(check.expect_status),
            expect_body: check.expect_body.clone().filter(|_| http),
            tls_verify: check.kind == CheckKind::Https && check.tls_verify,
            command: if exec {
                check.command.clone()
            } else {
                Vec::new()
            },
            interval_ms: check.interval_ms,
            timeout_ms: check.timeout_ms,
            rise: check.rise,
            fall: check.fall,
            owner: exec.then(|| (target.service.clone(), target.server.clone())),
        }
    }
}

/// A (service, server) pair.
type Subscriber = (String, String);

/// One running distinct check.
#[derive(Debug)]
struct Entry {
    key: CheckKey,
    hysteresis: Hysteresis,
    last: Option<ProbeResult>,
    subscribers: Vec<Subscriber>,
}

/// A check task to start.
#[derive(Debug)]
struct StartCheck {
    id: u64,
    check: HealthCheck,
    target: ProbeTarget,
}

/// What [`Registry::update`] asks of the monitor.
#[derive(Debug, Default)]
struct Plan {
    start: Vec<StartCheck>,
    stop: Vec<u64>,
    /// Subscribers whose current health must be told now.
    announce: Vec<Subscriber>,
}

/// Which checks exist, who uses them, and their rise/fall state: pure.
#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    ids: HashMap<CheckKey, u64>,
    /// `type: none` targets and their addresses.
    unchecked: BTreeMap<Subscriber, Ipv4Addr>,
}

impl Registry {
    /// Reconciles with a new target list.
    fn update(&mut self, targets: Vec<CheckTarget>) -> Plan {
        let mut wanted: Vec<(CheckKey, CheckTarget, Vec<Subscriber>)> = Vec::new();
        let mut index: HashMap<CheckKey, usize> = HashMap::new();
        let mut unchecked = BTreeMap::new();
        for target in targets {
            let subscriber = (target.service.clone(), target.server.clone());
            if target.check.kind == CheckKind::None {
                unchecked.insert(subscriber, target.address);
                continue;
            }
            let key = CheckKey::new(&target);
            if let Some(&i) = index.get(&key) {
                wanted[i].2.push(subscriber);
            } else {
                index.insert(key.clone(), wanted.len());
                wanted.push((key, target, vec![subscriber]));
            }
        }

        let mut plan = Plan::default();
        self.ids.retain(|key, id| {
            let keep = index.contains_key(key);
            if !keep {
                plan.stop.push(*id);
                self.entries.remove(id);
            }
            keep
        });
        for (key, target, subscribers) in wanted {
            if let Some(entry) = self.ids.get(&key).and_then(|id| self.entries.get_mut(id)) {
                if entry.last.is_some() {
                    plan.announce.extend(
                        subscribers
                            .iter()
                            .filter(|s| !entry.subscribers.contains(s))
                            .cloned(),
                    );
                }
                entry.subscribers = subscribers;
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.ids.insert(key.clone(), id);
            self.entries.insert(
                id,
                Entry {
                    key,
                    hysteresis: Hysteresis::new(target.check.rise, target.check.fall),
                    last: None,
                    subscribers,
                },
            );
            plan.start.push(StartCheck {
                id,
                check: target.check,
                target: ProbeTarget {
                    address: target.address,
                    service: target.service,
                    server: target.server,
                },
            });
        }
        plan.announce.extend(
            unchecked
                .keys()
                .filter(|s| !self.unchecked.contains_key(*s))
                .cloned(),
        );
        self.unchecked = unchecked;
        plan
    }

    /// Applies a completed check; results of stopped checks are dropped.
    fn record(&mut self, id: u64, result: ProbeResult) -> Vec<HealthEvent> {
        let Some(entry) = self.entries.get_mut(&id) else {
            return Vec::new();
        };
        let changed = entry.hysteresis.record(result.passed).is_some();
        let health = entry.hysteresis.health();
        let events = entry
            .subscribers
            .iter()
            .map(|(service, server)| HealthEvent {
                service: service.clone(),
                server: server.clone(),
                health,
                changed,
                result: result.clone(),
            })
            .collect();
        entry.last = Some(result);
        events
    }

    /// The current health of each subscriber that has one to tell.
    fn announce(&self, subscribers: &[Subscriber]) -> Vec<HealthEvent> {
        subscribers
            .iter()
            .filter_map(|subscriber| {
                let (health, result) = if self.unchecked.contains_key(subscriber) {
                    (Health::Up, unchecked_result())
                } else {
                    let entry = self
                        .entries
                        .values()
                        .find(|e| e.subscribers.contains(subscriber))?;
                    (entry.hysteresis.health(), entry.last.clone()?)
                };
                Some(HealthEvent {
                    service: subscriber.0.clone(),
                    server: subscriber.1.clone(),
                    health,
                    changed: false,
                    result,
                })
            })
            .collect()
    }

    fn snapshot(&self) -> Vec<ServerHealth> {
        let mut all: Vec<ServerHealth> = self
            .entries
            .values()
            .flat_map(|entry| {
                entry
                    .subscribers
                    .iter()
                    .map(|(service, server)| ServerHealth {
                        service: service.clone(),
                        server: server.clone(),
                        address: entry.key.address,
                        kind: entry.key.kind,
                        health: entry.hysteresis.health(),
                        last: entry.last.clone(),
                    })
            })
            .chain(
                self.unchecked
                    .iter()
                    .map(|((service, server), address)| ServerHealth {
                        service: service.clone(),
                        server: server.clone(),
                        address: *address,
                        kind: CheckKind::None,
                        health: Health::Up,
                        last: None,
                    }),
            )
            .collect();
        all.sort_by(|a, b| (&a.service, &a.server).cmp(&(&b.service, &b.server)));
        all
    }
}

fn unchecked_result() -> ProbeResult {
    ProbeResult {
        passed: true,
        latency: Duration::ZERO,
        detail: "no check (type none)".to_owned(),
    }
}

/// Messages to the dispatcher.
#[derive(Debug)]
enum Message {
    /// A check task completed a probe.
    Result { id: u64, result: ProbeResult },
    /// Tell these subscribers their current health.
    Announce(Vec<Subscriber>),
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the health checks and reports to one event channel.
///
/// Create and update it inside a Tokio runtime. Dropping it stops every
/// check.
#[derive(Debug)]
pub struct HealthMonitor {
    registry: Arc<Mutex<Registry>>,
    tasks: HashMap<u64, JoinHandle<()>>,
    inbox: mpsc::UnboundedSender<Message>,
    dispatcher: JoinHandle<()>,
}

impl HealthMonitor {
    /// A monitor with no checks that will send its events to `events`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    #[must_use]
    pub fn new(events: mpsc::Sender<HealthEvent>) -> Self {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let (inbox, messages) = mpsc::unbounded_channel();
        let dispatcher = tokio::spawn(dispatch(Arc::clone(&registry), messages, events));
        Self {
            registry,
            tasks: HashMap::new(),
            inbox,
            dispatcher,
        }
    }

    /// Makes the running checks those of `targets`: starts new checks, stops
    /// unused ones, keeps unchanged ones (and their rise/fall state).
    pub fn update(&mut self, targets: Vec<CheckTarget>) {
        let plan = lock(&self.registry).update(targets);
        for id in plan.stop {
            if let Some(task) = self.tasks.remove(&id) {
                task.abort();
            }
        }
        for start in plan.start {
            let spec = ProbeSpec::new(&start.check).map_err(|e| e.to_string());
            let interval = Duration::from_millis(u64::from(start.check.interval_ms.max(1)));
            let task = tokio::spawn(run_check(
                start.id,
                spec,
                start.target,
                interval,
                self.inbox.clone(),
            ));
            self.tasks.insert(start.id, task);
        }
        if !plan.announce.is_empty() {
            // Fails only once the dispatcher has stopped, when no one listens.
            let _ = self.inbox.send(Message::Announce(plan.announce));
        }
    }

    /// Every (service, server) with its health and last check, sorted.
    #[must_use]
    pub fn snapshot(&self) -> Vec<ServerHealth> {
        lock(&self.registry).snapshot()
    }

    /// Stops every check; no event is sent after this.
    pub fn shutdown(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.abort();
        }
        self.dispatcher.abort();
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Applies results in the order they arrive and sends the events.
async fn dispatch(
    registry: Arc<Mutex<Registry>>,
    mut messages: mpsc::UnboundedReceiver<Message>,
    events: mpsc::Sender<HealthEvent>,
) {
    while let Some(message) = messages.recv().await {
        let out = {
            let mut registry = lock(&registry);
            match message {
                Message::Result { id, result } => registry.record(id, result),
                Message::Announce(subscribers) => registry.announce(&subscribers),
            }
        };
        for event in out {
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// One distinct check: probe, report, wait for the next interval start.
async fn run_check(
    id: u64,
    spec: Result<ProbeSpec, String>,
    target: ProbeTarget,
    interval: Duration,
    inbox: mpsc::UnboundedSender<Message>,
) {
    loop {
        let started = Instant::now();
        let result = match &spec {
            Ok(spec) => probe(spec, &target).await,
            Err(reason) => ProbeResult {
                passed: false,
                latency: Duration::ZERO,
                detail: format!("cannot run the check: {reason}"),
            },
        };
        if inbox.send(Message::Result { id, result }).is_err() {
            return;
        }
        tokio::time::sleep_until(next_start(started, Instant::now(), interval)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn check(kind: CheckKind, port: u16) -> HealthCheck {
        HealthCheck {
            kind,
            port,
            path: "/".to_owned(),
            host: None,
            expect_status: (200, 399),
            expect_body: None,
            tls_verify: false,
            command: Vec::new(),
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 2,
            fall: 3,
        }
    }

    fn exec(script: &str, timeout_ms: u32) -> HealthCheck {
        HealthCheck {
            command: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
            timeout_ms,
            ..check(CheckKind::Exec, 8080)
        }
    }

    fn target() -> ProbeTarget {
        ProbeTarget {
            address: LOCAL,
            service: "svc".to_owned(),
            server: "rs1".to_owned(),
        }
    }

    async fn run(check: &HealthCheck) -> ProbeResult {
        let spec = ProbeSpec::new(check).expect("valid check");
        probe(&spec, &target()).await
    }

    fn passed(result: &ProbeResult, detail: &str) {
        assert!(result.passed, "expected a pass, got {result:?}");
        assert_eq!(result.detail, detail);
    }

    fn failed(result: &ProbeResult, detail: &str) {
        assert!(!result.passed, "expected a failure, got {result:?}");
        assert_eq!(result.detail, detail);
    }

    // --- Hysteresis -------------------------------------------------------

    #[test]
    fn up_until_the_first_check_and_a_first_pass_changes_nothing() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.health(), Health::Up);
        assert_eq!(h.record(true), None);
        assert_eq!(
            (h.health(), h.consecutive_passes(), h.checks()),
            (Health::Up, 1, 1)
        );
    }

    #[test]
    fn a_failed_first_check_takes_the_server_down_at_once() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!((h.health(), h.consecutive_failures()), (Health::Down, 1));
    }

    #[test]
    fn fall_consecutive_failures_take_it_down_rise_passes_bring_it_up() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.consecutive_failures(), 2);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(false), None, "no second flip");
        assert_eq!(h.record(true), None);
        assert_eq!(h.consecutive_passes(), 1);
        assert_eq!(h.record(true), Some(Health::Up));
        assert_eq!(h.record(true), None);
        assert_eq!((h.health(), h.checks()), (Health::Up, 8));
    }

    #[test]
    fn a_flapping_server_flips_only_when_rise_or_fall_is_met() {
        let mut h = Hysteresis::new(3, 3);
        assert_eq!(h.record(false), Some(Health::Down));
        for _ in 0..10 {
            assert_eq!(h.record(true), None);
            assert_eq!(h.record(true), None);
            assert_eq!(h.record(false), None);
        }
        assert_eq!(h.health(), Health::Down);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Up));
        for _ in 0..10 {
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(true), None);
        }
        assert_eq!(h.health(), Health::Up);
    }

    #[test]
    fn rise_and_fall_of_zero_count_as_one() {
        let mut h = Hysteresis::new(0, 0);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(true), Some(Health::Up));
    }

    #[test]
    fn intervals_run_start_to_start_and_a_long_check_is_followed_at_once() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(100);
        let ms = Duration::from_millis;
        assert_eq!(next_start(t0, t0 + ms(30), interval), t0 + ms(100));
        assert_eq!(next_start(t0, t0 + ms(100), interval), t0 + ms(100));
        assert_eq!(next_start(t0, t0 + ms(250), interval), t0 + ms(250));
    }

    // --- Registry (pure) ----------------------------------------------------

    fn tgt(service: &str, server: &str, address: [u8; 4], check: HealthCheck) -> CheckTarget {
        CheckTarget {
            service: service.to_owned(),
            server: server.to_owned(),
            address: address.into(),
            check,
        }
    }

    fn result(passed: bool) -> ProbeResult {
        ProbeResult {
            passed,
            latency: Duration::from_millis(1),
            detail: if passed {
                "connected"
            } else {
                "connect refused"
            }
            .to_owned(),
        }
    }

    fn sub(service: &str, server: &str) -> Subscriber {
        (service.to_owned(), server.to_owned())
    }

    #[test]
    fn identical_checks_of_two_services_run_once_and_report_to_both() {
        let mut r = Registry::default();
        let plan = r.update(vec![
            tgt("a", "a1", [10, 0, 0, 1], check(CheckKind::Tcp, 443)),
            tgt("b", "b1", [10, 0, 0, 1], check(CheckKind::Tcp, 443)),
            tgt("b", "b2", [10, 0, 0, 2], check(CheckKind::Tcp, 443)),
        ]);
        assert_eq!(plan.start.len(), 2);
        let shared = plan.start[0].id;
        let events = r.record(shared, result(false));
        let who: Vec<_> = events
            .iter()
            .map(|e| (e.service.as_str(), e.server.as_str(), e.health, e.changed))
            .collect();
        assert_eq!(
            who,
            [
                ("a", "a1", Health::Down, true),
                ("b", "b1", Health::Down, true)
            ]
        );
    }

    #[test]
    fn fields_a_check_type_ignores_do_not_split_it_but_the_others_do() {
        let mut r = Registry::default();
        let tcp_other_path = HealthCheck {
            path: "/other".to_owned(),
            expect_body: Some("x".to_owned()),
            ..check(CheckKind::Tcp, 80)
        };
        let plan = r.update(vec![
            tgt("a", "s", [10, 0, 0, 1], check(CheckKind::Tcp, 80)),
            tgt("b", "s", [10, 0, 0, 1], tcp_other_path),
        ]);
        assert_eq!(plan.start.len(), 1);

        let mut r = Registry::default();
        let variants = [
            HealthCheck {
                path: "/other".to_owned(),
                ..check(CheckKind::Http, 80)
            },
            HealthCheck {
                timeout_ms: 500,
                ..check(CheckKind::Http, 80)
            },
            HealthCheck {
                rise: 5,
                ..check(CheckKind::Http, 80)
            },
            HealthCheck {
                port: 81,
                ..check(CheckKind::Http, 80)
            },
            HealthCheck {
                host: Some("h".to_owned()),
                ..check(CheckKind::Http, 80)
            },
            check(CheckKind::Https, 80),
        ];
        let mut targets = vec![tgt("base", "s", [10, 0, 0, 1], check(CheckKind::Http, 80))];
        targets.extend(
            variants
                .into_iter()
                .enumerate()
                .map(|(i, c)| tgt(&format!("v{i}"), "s", [10, 0, 0, 1], c)),
        );
        assert_eq!(r.update(targets).start.len(), 7);
    }

    #[test]
    fn exec_checks_are_per_server_because_their_environment_names_it() {
        let mut r = Registry::default();
        let plan = r.update(vec![
            tgt("a", "s1", [10, 0, 0, 1], exec("true", 100)),
            tgt("b", "s2", [10, 0, 0, 1], exec("true", 100)),
        ]);
        let names: Vec<_> = plan
            .start
            .iter()
            .map(|s| (s.target.service.as_str(), s.target.server.as_str()))
            .collect();
        assert_eq!(names, [("a", "s1"), ("b", "s2")]);
    }

    #[test]
    fn an_unchanged_check_keeps_running_and_keeps_its_state() {
        let mut r = Registry::default();
        let targets = vec![tgt("a", "s", [10, 0, 0, 1], check(CheckKind::Tcp, 80))];
        let id = r.update(targets.clone()).start[0].id;
        r.record(id, result(false));
        let plan = r.update(targets);
        assert!(plan.start.is_empty() && plan.stop.is_empty() && plan.announce.is_empty());
        let events = r.record(id, result(true));
        assert_eq!((events[0].health, events[0].changed), (Health::Down, false));
    }

    #[test]
    fn a_changed_check_restarts_and_results_of_the_old_one_are_dropped() {
        let mut r = Registry::default();
        let old = r.update(vec![tgt(
            "a",
            "s",
            [10, 0, 0, 1],
            check(CheckKind::Tcp, 80),
        )]);
        let old_id = old.start[0].id;
        let plan = r.update(vec![tgt(
            "a",
            "s",
            [10, 0, 0, 1],
            HealthCheck {
                timeout_ms: 200,
                ..check(CheckKind::Tcp, 80)
            },
        )]);
        assert_eq!(plan.stop, [old_id]);
        assert_eq!(plan.start.len(), 1);
        assert_ne!(plan.start[0].id, old_id);
        assert!(r.record(old_id, result(false)).is_empty());

        let plan = r.update(Vec::new());
        assert_eq!(plan.stop.len(), 1);
        assert!(r.snapshot().is_empty());
    }

    #[test]
    fn a_server_joining_a_check_that_already_ran_is_told_its_health() {
        let mut r = Registry::default();
        let id = r
            .update(vec![tgt(
                "a",
                "s",
                [10, 0, 0, 1],
                check(CheckKind::Tcp, 80),
            )])
            .start[0]
            .id;
        r.record(id, result(false));
        let plan = r.update(vec![
            tgt("a", "s", [10, 0, 0, 1], check(CheckKind::Tcp, 80)),
            tgt("b", "t", [10, 0, 0, 1], check(CheckKind::Tcp, 80)),
        ]);
        assert!(plan.start.is_empty());
        assert_eq!(plan.announce, [sub("b", "t")]);
        let events = r.announce(&plan.announce);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (
                events[0].server.as_str(),
                events[0].health,
                events[0].changed
            ),
            ("t", Health::Down, false)
        );
    }

    #[test]
    fn type_none_is_announced_up_once_and_shown_in_the_snapshot() {
        let mut r = Registry::default();
        let targets = vec![
            tgt("a", "s", [10, 0, 0, 1], check(CheckKind::None, 80)),
            tgt("a", "t", [10, 0, 0, 2], check(CheckKind::Tcp, 80)),
        ];
        let plan = r.update(targets.clone());
        assert_eq!(plan.start.len(), 1, "no task for type none");
        assert_eq!(plan.announce, [sub("a", "s")]);
        let events = r.announce(&plan.announce);
        assert_eq!(
            (events[0].health, events[0].result.passed),
            (Health::Up, true)
        );
        assert!(r.update(targets).announce.is_empty());
        let snapshot = r.snapshot();
        let rows: Vec<_> = snapshot
            .iter()
            .map(|s| (s.server.as_str(), s.kind, s.health, s.last.is_some()))
            .collect();
        assert_eq!(
            rows,
            [
                ("s", CheckKind::None, Health::Up, false),
                ("t", CheckKind::Tcp, Health::Up, false)
            ]
        );
    }

    // --- Probes against loopback --------------------------------------------

    #[tokio::test]
    async fn tcp_check_passes_on_a_listener_and_fails_on_a_closed_port() {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        passed(&run(&check(CheckKind::Tcp, port)).await, "connected");
        drop(listener);
        failed(&run(&check(CheckKind::Tcp, port)).await, "connect refused");
    }

    /// What the test server answers.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        body: String,
        delay: Duration,
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    /// What the test server saw of one request.
    #[derive(Debug)]
    struct Seen {
        head: String,
        sni: Option<String>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        reply: &Reply,
        sni: Option<String>,
        seen: &mpsc::UnboundedSender<Seen>,
    ) {
        let mut head = Vec::new();
        let mut buf = [0_u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = seen.send(Seen {
            head: String::from_utf8_lossy(&head).into_owned(),
            sni,
        });
        tokio::time::sleep(reply.delay).await;
        let response = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            reply.status,
            reply.body.len(),
            reply.body
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// An HTTP (or, with an acceptor, HTTPS) server on loopback; returns its
    /// port, what it saw, and the highest number of requests it had at once.
    async fn http_server(
        reply: Reply,
        tls: Option<TlsAcceptor>,
    ) -> (u16, mpsc::UnboundedReceiver<Seen>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        let active = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let most_seen = Arc::clone(&most);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (reply, tls, tx) = (reply.clone(), tls.clone(), tx.clone());
                let (active, most) = (Arc::clone(&active), Arc::clone(&most));
                tokio::spawn(async move {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    match tls {
                        None => answer(stream, &reply, None, &tx).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let sni = stream.get_ref().1.server_name().map(str::to_owned);
                                answer(stream, &reply, sni, &tx).await;
                            }
                        }
                    }
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (port, rx, most_seen)
    }

    fn http(port: u16) -> HealthCheck {
        check(CheckKind::Http, port)
    }

    #[tokio::test]
    async fn http_check_sends_path_host_user_agent_and_connection_close() {
        let (port, mut seen, _) = http_server(reply(200, "OK"), None).await;
        let c = HealthCheck {
            path: "/health?full=1".to_owned(),
            ..http(port)
        };
        passed(&run(&c).await, "status 200");
        let s = seen.recv().await.unwrap();
        assert!(
            s.head.starts_with("GET /health?full=1 HTTP/1.1\r\n"),
            "{}",
            s.head
        );
        assert_eq!(s.header("host"), Some(format!("127.0.0.1:{port}").as_str()));
        assert_eq!(s.header("user-agent"), Some(HEALTH_USER_AGENT));
        assert_eq!(s.header("connection"), Some("close"));

        let c = HealthCheck {
            host: Some("app.example.org".to_owned()),
            ..http(port)
        };
        passed(&run(&c).await, "status 200");
        assert_eq!(
            seen.recv().await.unwrap().header("host"),
            Some("app.example.org")
        );
    }

    #[tokio::test]
    async fn http_status_must_fall_in_the_expected_range() {
        let (port, _seen, _) = http_server(reply(503, "busy"), None).await;
        failed(&run(&http(port)).await, "status 503 not in 200-399");
        let c = HealthCheck {
            expect_status: (500, 503),
            ..http(port)
        };
        passed(&run(&c).await, "status 503");
        let c = HealthCheck {
            expect_status: (200, 200),
            ..http(port)
        };
        failed(&run(&c).await, "status 503 is not 200");
    }

    #[tokio::test]
    async fn http_body_must_match_the_expected_pattern() {
        let (port, _seen, _) = http_server(reply(200, "state: OK\n"), None).await;
        let c = HealthCheck {
            expect_body: Some("state: (OK|WARN)".to_owned()),
            ..http(port)
        };
        passed(
            &run(&c).await,
            "status 200, body matches /state: (OK|WARN)/",
        );
        let c = HealthCheck {
            expect_body: Some("^FAIL".to_owned()),
            ..http(port)
        };
        failed(&run(&c).await, "body does not match /^FAIL/");
    }

    #[tokio::test]
    async fn only_the_first_64_kib_of_the_body_is_matched() {
        let body = format!("{}MARK", "x".repeat(MAX_BODY));
        let (port, _seen, _) = http_server(reply(200, &body), None).await;
        let c = HealthCheck {
            expect_body: Some("MARK".to_owned()),
            ..http(port)
        };
        failed(&run(&c).await, "body does not match /MARK/");
        let c = HealthCheck {
            expect_body: Some("^x+$".to_owned()),
            ..http(port)
        };
        assert!(run(&c).await.passed);
    }

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

    fn self_signed_acceptor() -> TlsAcceptor {
        let key = rcgen::generate_simple_self_signed(vec!["app.example.org".to_owned()]).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der)
        .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    #[tokio::test]
    async fn https_without_verification_accepts_a_self_signed_certificate_and_sends_sni() {
        let (port, mut seen, _) = http_server(reply(200, "OK"), Some(self_signed_acceptor())).await;
        let c = HealthCheck {
            host: Some("app.example.org".to_owned()),
            expect_body: Some("OK".to_owned()),
            ..check(CheckKind::Https, port)
        };
        passed(&run(&c).await, "status 200, body matches /OK/");
        let s = seen.recv().await.unwrap();
        assert_eq!(s.sni.as_deref(), Some("app.example.org"));
        assert_eq!(s.header("host"), Some("app.example.org"));

        let c = check(CheckKind::Https, port);
        passed(&run(&c).await, "status 200");
        let s = seen.recv().await.unwrap();
        assert_eq!(s.sni, None, "no SNI for an IP address");
        assert_eq!(s.header("host"), Some(format!("127.0.0.1:{port}").as_str()));
    }

    #[tokio::test]
    async fn https_with_verification_refuses_a_self_signed_certificate() {
        let (port, _seen, _) = http_server(reply(200, "OK"), Some(self_signed_acceptor())).await;
        let c = HealthCheck {
            host: Some("app.example.org".to_owned()),
            tls_verify: true,
            ..check(CheckKind::Https, port)
        };
        match ProbeSpec::new(&c) {
            // A machine without CA certificates cannot verify anything.
            Err(e) => assert!(e.to_string().starts_with("TLS: no trusted root"), "{e}"),
            Ok(spec) => {
                let r = probe(&spec, &target()).await;
                assert!(!r.passed);
                assert!(
                    r.detail.starts_with("TLS: invalid peer certificate"),
                    "{}",
                    r.detail
                );
            }
        }
    }

    #[tokio::test]
    async fn exec_check_passes_on_exit_0_and_fails_otherwise() {
        passed(&run(&exec("true", 2000)).await, "exit 0");
        failed(&run(&exec("false", 2000)).await, "exit 1");
        failed(
            &run(&exec(
                "echo starting; echo 'db unreachable' >&2; exit 3",
                2000,
            ))
            .await,
            "exit 3: db unreachable",
        );
        let missing = HealthCheck {
            command: vec!["/nonexistent/check".to_owned()],
            ..exec("", 2000)
        };
        let r = run(&missing).await;
        assert!(
            r.detail.starts_with("cannot run /nonexistent/check: "),
            "{}",
            r.detail
        );
        let empty = HealthCheck {
            command: Vec::new(),
            ..exec("", 2000)
        };
        failed(&run(&empty).await, "no command configured");
    }

    #[tokio::test]
    async fn exec_check_gets_the_server_in_its_environment() {
        let script = r#"test "$LB_SERVER_ADDRESS" = 127.0.0.1 && test "$LB_SERVER_PORT" = 8080 &&
                        test "$LB_SERVICE" = svc && test "$LB_SERVER_NAME" = rs1"#;
        passed(&run(&exec(script, 2000)).await, "exit 0");
        failed(
            &run(&exec(r#"test "$LB_SERVER_ADDRESS" = 10.9.9.9"#, 2000)).await,
            "exit 1",
        );
    }

    fn gone_or_zombie(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn exec_check_past_its_timeout_is_killed_with_its_children_and_reaped() {
        let dir = std::env::temp_dir();
        let own = dir.join(format!("lbd-health-own-{}", std::process::id()));
        let kid = dir.join(format!("lbd-health-kid-{}", std::process::id()));
        let script = format!(
            "sleep 30 & echo $! > {kid}; echo $$ > {own}; wait",
            kid = kid.display(),
            own = own.display()
        );
        let started = std::time::Instant::now();
        let r = run(&exec(&script, 300)).await;
        failed(&r, "timed out after 300 ms");
        assert!(started.elapsed() < Duration::from_secs(5));
        let own_pid = std::fs::read_to_string(&own).unwrap();
        let kid_pid = std::fs::read_to_string(&kid).unwrap();
        // The program itself is our child: it must be killed and reaped.
        assert!(
            !std::path::Path::new(&format!("/proc/{}", own_pid.trim())).exists(),
            "the check's program is still there"
        );
        // Its child is adopted by init once killed, and reaped there.
        let mut killed = false;
        for _ in 0..50 {
            if gone_or_zombie(kid_pid.trim()) {
                killed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(killed, "the check's child survived the timeout");
        let _ = std::fs::remove_file(own);
        let _ = std::fs::remove_file(kid);
    }

    #[test]
    fn unusable_checks_are_refused_with_a_reason() {
        let c = HealthCheck {
            expect_body: Some("(unclosed".to_owned()),
            ..http(80)
        };
        let e = ProbeSpec::new(&c).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("expect_body \"(unclosed\" is not a valid"),
            "{e}"
        );
        let c = HealthCheck {
            path: "health".to_owned(),
            ..http(80)
        };
        assert!(matches!(ProbeSpec::new(&c), Err(HealthError::BadPath(_))));
        let c = HealthCheck {
            path: "http://other/".to_owned(),
            ..http(80)
        };
        assert!(matches!(ProbeSpec::new(&c), Err(HealthError::BadPath(_))));
    }

    #[test]
    fn the_tls_server_name_drops_a_port_and_keeps_ip_addresses() {
        assert_eq!(
            server_name("app.example.org:8443").unwrap(),
            ServerName::try_from("app.example.org").unwrap()
        );
        assert!(matches!(
            server_name("10.1.2.3").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:443").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(server_name("bad name!").is_err());
    }

    // --- Monitor --------------------------------------------------------------

    /// A TCP listener that counts the connections it accepts.
    async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok(_conn) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        (port, count)
    }

    fn local(service: &str, server: &str, check: HealthCheck) -> CheckTarget {
        tgt(service, server, [127, 0, 0, 1], check)
    }

    #[tokio::test]
    async fn a_check_shared_by_two_services_runs_once_and_reports_to_both() {
        let (port, connections) = counting_listener().await;
        let (tx, mut rx) = mpsc::channel(64);
        let mut monitor = HealthMonitor::new(tx);
        let c = HealthCheck {
            interval_ms: 100,
            ..check(CheckKind::Tcp, port)
        };
        monitor.update(vec![local("a", "s1", c.clone()), local("b", "s9", c)]);
        let mut per_service: HashMap<String, usize> = HashMap::new();
        timeout(Duration::from_secs(5), async {
            while per_service.len() < 2 || per_service.values().any(|&n| n < 3) {
                let event = rx.recv().await.unwrap();
                assert!(event.result.passed && event.health == Health::Up && !event.changed);
                *per_service.entry(event.service).or_default() += 1;
            }
        })
        .await
        .expect("3 events for each service within 5 s");
        monitor.shutdown();
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(event) = rx.try_recv() {
            *per_service.entry(event.service).or_default() += 1;
        }
        // Each check reported to both services (the dispatcher may have been
        // stopped between the two events of the last one), and at most one
        // more check was in flight when the monitor stopped.
        let (a, b) = (per_service["a"], per_service["b"]);
        let checks = a.max(b);
        assert!(a.abs_diff(b) <= 1, "{a} events for a, {b} for b");
        let n = connections.load(Ordering::SeqCst);
        assert!(
            (checks..=checks + 1).contains(&n),
            "{n} connections for {checks} shared checks"
        );
        let snapshot = monitor.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert!(snapshot
            .iter()
            .all(|s| s.last.as_ref().is_some_and(|r| r.passed)));
    }

    #[tokio::test]
    async fn a_slow_server_does_not_delay_the_checks_of_another() {
        let silent = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let (fast_port, _) = counting_listener().await;
        let (tx, mut rx) = mpsc::channel(64);
        let mut monitor = HealthMonitor::new(tx);
        monitor.update(vec![
            local(
                "a",
                "slow",
                HealthCheck {
                    interval_ms: 2000,
                    timeout_ms: 2000,
                    ..http(silent_port)
                },
            ),
            local(
                "a",
                "fast",
                HealthCheck {
                    interval_ms: 50,
                    ..check(CheckKind::Tcp, fast_port)
                },
            ),
        ]);
        let started = std::time::Instant::now();
        let mut fast = 0;
        while fast < 5 {
            let event = timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                event.server, "fast",
                "the slow check cannot have finished yet"
            );
            fast += 1;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1800),
            "{:?}",
            started.elapsed()
        );
        holder.abort();
    }

    #[tokio::test]
    async fn a_check_longer_than_its_interval_is_never_run_twice_at_once() {
        let slow = Reply {
            delay: Duration::from_millis(150),
            ..reply(200, "OK")
        };
        let (port, _seen, most) = http_server(slow, None).await;
        let (tx, mut rx) = mpsc::channel(64);
        let mut monitor = HealthMonitor::new(tx);
        let c = HealthCheck {
            interval_ms: 30,
            ..http(port)
        };
        monitor.update(vec![local("a", "s", c)]);
        let mut arrivals = Vec::new();
        for _ in 0..3 {
            timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            arrivals.push(std::time::Instant::now());
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "two checks ran at once");
        for pair in arrivals.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(140),
                "{:?}",
                pair[1] - pair[0]
            );
        }
    }

    #[tokio::test]
    async fn a_failed_first_check_reports_down_and_none_reports_up() {
        let closed = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let (tx, mut rx) = mpsc::channel(64);
        let mut monitor = HealthMonitor::new(tx);
        monitor.update(vec![
            local("a", "dead", check(CheckKind::Tcp, port)),
            local("a", "free", check(CheckKind::None, port)),
        ]);
        let mut events = Vec::new();
        for _ in 0..2 {
            events.push(
                timeout(Duration::from_secs(5), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        events.sort_by(|a, b| a.server.cmp(&b.server));
        assert_eq!(
            (
                events[0].server.as_str(),
                events[0].health,
                events[0].changed
            ),
            ("dead", Health::Down, true)
        );
        assert_eq!(events[0].result.detail, "connect refused");
        assert_eq!(
            (events[1].server.as_str(), events[1].health),
            ("free", Health::Up)
        );
        let health: Vec<_> = monitor.snapshot().iter().map(|s| s.health).collect();
        assert_eq!(health, [Health::Down, Health::Up]);
    }
}
