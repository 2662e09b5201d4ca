//! Helpers shared by the health-check tests: checks as configured, running a
//! probe against loopback, and an HTTP (or HTTPS) server to check.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::{probe, ProbeResult, ProbeSpec, ProbeTarget};
use crate::config::{CheckKind, HealthCheck};

pub(super) const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

pub(super) fn check(kind: CheckKind, port: u16) -> HealthCheck {
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

pub(super) fn exec(script: &str, timeout_ms: u32) -> HealthCheck {
    HealthCheck {
        command: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        timeout_ms,
        ..check(CheckKind::Exec, 8080)
    }
}

pub(super) fn target() -> ProbeTarget {
    ProbeTarget {
        address: LOCAL,
        service: "svc".to_owned(),
        server: "rs1".to_owned(),
    }
}

pub(super) async fn run(check: &HealthCheck) -> ProbeResult {
    let spec = ProbeSpec::new(check).expect("valid check");
    probe(&spec, &target()).await
}

pub(super) fn passed(result: &ProbeResult, detail: &str) {
    assert!(result.passed, "expected a pass, got {result:?}");
    assert_eq!(result.detail, detail);
}

pub(super) fn failed(result: &ProbeResult, detail: &str) {
    assert!(!result.passed, "expected a failure, got {result:?}");
    assert_eq!(result.detail, detail);
}

/// What the test server answers.
#[derive(Clone)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: String,
    pub(super) delay: Duration,
}

pub(super) fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: body.to_owned(),
        delay: Duration::ZERO,
    }
}

/// What the test server saw of one request.
#[derive(Debug)]
pub(super) struct Seen {
    pub(super) head: String,
    pub(super) sni: Option<String>,
}

impl Seen {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
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
pub(super) async fn http_server(
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

pub(super) fn http(port: u16) -> HealthCheck {
    check(CheckKind::Http, port)
}
