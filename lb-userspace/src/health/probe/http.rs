//! The `http` and `https` checks: one HTTP/1.1 `GET` (RFC 9112) with `Host`
//! (RFC 9110 §7.2) and `Connection: close`, the latter over TLS (RFC 8446)
//! with the server name indication (RFC 6066 §3) when `host` is set; the
//! status must fall in `expect_status` and the body match `expect_body`.

use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::{server_name, tls_config};
use super::{HealthError, Outcome, Phase, ProbeSpec, ProbeTarget};
use crate::config::{CheckKind, HealthCheck};

/// At most this many bytes of a response body are read and matched against
/// `expect_body`.
pub const MAX_BODY: usize = 64 * 1024;

/// The `User-Agent` of HTTP checks.
pub const HEALTH_USER_AGENT: &str = "lbd-health-check";

#[derive(Debug)]
pub(super) struct HttpProbe {
    uri: Uri,
    host: Option<String>,
    expect_status: (u16, u16),
    expect_body: Option<regex::bytes::Regex>,
    /// `Some` for https, with the server name when `host` is set.
    tls: Option<(Arc<ClientConfig>, Option<ServerName<'static>>)>,
}

impl HttpProbe {
    pub(super) fn new(check: &HealthCheck) -> Result<Self, HealthError> {
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

/// The HTTP exchange over a connected `stream`, in TLS for https.
pub(super) async fn request(
    stream: TcpStream,
    http: &HttpProbe,
    check: &ProbeSpec,
    target: &ProbeTarget,
    phase: &Phase,
) -> Outcome {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testing::{failed, http, http_server, passed, reply, run};

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
}
