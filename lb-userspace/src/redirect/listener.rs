//! The sockets of the redirect services: binding a listener with
//! `IP_FREEBIND` and `SO_REUSEADDR`, the accept loop with its cap on
//! concurrent connections, and serving each connection with hyper's HTTP/1
//! server within the [`Limits`](super::Limits).

use std::convert::Infallible;
use std::io;
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::response::respond;
use super::{Limits, RedirectError, RedirectSpec};
use crate::limits::{Admission, ConnectionGate};

/// Largest request head hyper buffers per connection, bounding memory per client.
const MAX_BUF_SIZE: usize = 64 * 1024;
/// Listen backlog of a redirect listener.
const BACKLOG: i32 = 1024;
/// Pause after an accept error that is not the client's (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A listening socket on `addr` with `IP_FREEBIND` (so the VIP need not be on an
/// interface yet) and `SO_REUSEADDR`.
///
/// # Errors
///
/// [`RedirectError::NoRuntime`] outside a tokio runtime; otherwise the bind or
/// listen failure, saying what to do about it.
pub fn bind(addr: SocketAddrV4) -> Result<TcpListener, RedirectError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(RedirectError::NoRuntime);
    }
    // The socket of the lbd this process was before a re-execution.
    if let Some(fd) = crate::inherit::take(&inherited_name(addr)) {
        let listener = std::net::TcpListener::from(fd);
        if listener.local_addr().ok() == Some(SocketAddr::V4(addr))
            && listener.set_nonblocking(true).is_ok()
        {
            if let Ok(listener) = TcpListener::from_std(listener) {
                return Ok(listener);
            }
        }
    }
    let socket = listening_socket(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => RedirectError::AddressInUse { addr },
        io::ErrorKind::PermissionDenied => RedirectError::PermissionDenied { addr },
        _ => RedirectError::Bind { addr, source },
    })?;
    TcpListener::from_std(socket.into()).map_err(|source| RedirectError::Bind { addr, source })
}

/// The name of a redirect listener handed across a re-execution.
#[must_use]
pub fn inherited_name(addr: SocketAddrV4) -> String {
    format!("redirect/{addr}")
}

fn listening_socket(addr: SocketAddrV4) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_freebind_v4(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(addr).into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

/// One running listener.
#[derive(Debug)]
pub(super) struct Listener {
    /// The service's current settings, read by every request.
    pub(super) spec: watch::Sender<Arc<RedirectSpec>>,
    /// Responses sent.
    pub(super) answered: Arc<AtomicU64>,
    /// The listening socket, shared with the task so that `stop` can close it at once.
    pub(super) socket: Arc<TcpListener>,
    /// The accept loop; it owns the connection tasks.
    pub(super) task: JoinHandle<()>,
}

impl Listener {
    /// Stops accepting now and drops every connection.
    pub(super) fn stop(self) {
        // Shutting down a listening socket takes it out of LISTEN at once (so the
        // port can be bound again right away) even before the aborted task, which
        // also holds it, is dropped.
        let _ = SockRef::from(&*self.socket).shutdown(Shutdown::Read);
        self.task.abort();
    }
}

/// The hand-over to a re-executed lbd, as each listener sees it.
pub(super) struct Handover {
    /// True while handing over: accept nothing, close after the request.
    pub(super) handing_over: watch::Receiver<bool>,
    /// Connections open over all listeners.
    pub(super) open: Arc<AtomicUsize>,
}

/// Counts one open connection while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until aborted (and not while handing over),
/// serving each in its own task while the gate admits it (its client
/// address and the listener under their caps, lbd's listeners under their
/// budget) and resetting it at once otherwise.
pub(super) async fn accept_loop(
    socket: Arc<TcpListener>,
    spec: watch::Receiver<Arc<RedirectSpec>>,
    answered: Arc<AtomicU64>,
    limits: Limits,
    gate: Arc<ConnectionGate>,
    handover: Handover,
) {
    let Handover {
        mut handing_over,
        open,
    } = handover;
    let mut connections = JoinSet::new();
    loop {
        let paused = *handing_over.borrow();
        tokio::select! {
            changed = handing_over.changed() => if changed.is_err() { return },
            accepted = socket.accept(), if !paused => match accepted {
                Ok((stream, peer)) => match gate.admit(peer.ip()) {
                    Ok(admission) => {
                        open.fetch_add(1, Ordering::Relaxed);
                        let counted = Open(Arc::clone(&open));
                        connections.spawn(serve(stream, admission, spec.clone(), Arc::clone(&answered), limits, (handing_over.clone(), counted)));
                    }
                    Err(refusal) => {
                        debug!(
                            "redirect listener {:?}: resetting {peer}: {refusal}",
                            socket.local_addr(),
                        );
                        // SO_LINGER 0: reset rather than leave the socket in TIME_WAIT.
                        let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    }
                },
                Err(error) if is_per_connection(&error) => {}
                Err(error) => {
                    warn!(
                        "redirect listener {:?}: accept failed: {error}; retrying",
                        socket.local_addr()
                    );
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Accept errors that concern one client only.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// Serves one connection with hyper until the client leaves, a timeout fires,
/// the connection reaches its maximum age, or a hand-over closes it after
/// its current request.
async fn serve(
    stream: TcpStream,
    _admission: Admission,
    spec: watch::Receiver<Arc<RedirectSpec>>,
    answered: Arc<AtomicU64>,
    limits: Limits,
    (mut handing_over, _open): (watch::Receiver<bool>, Open),
) {
    // A connection that has not sent a request yet is idle to hyper, which
    // would close it at once on a graceful shutdown, before the request
    // already on its way: such a connection is left to its first request,
    // whose response then says `Connection: close`.
    let started = Arc::new(AtomicBool::new(false));
    let service = {
        let (started, handing_over) = (Arc::clone(&started), handing_over.clone());
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            started.store(true, Ordering::Relaxed);
            let current = Arc::clone(&spec.borrow());
            let mut response = respond(&current, &request);
            if *handing_over.borrow() {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            answered.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_BUF_SIZE)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let age = tokio::time::sleep(limits.max_connection_age);
    let mut age = std::pin::pin!(age);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    debug!("redirect connection ended: {error}");
                }
                return;
            }
            () = &mut age => {
                debug!("redirect connection closed at its maximum age");
                return;
            }
            changed = handing_over.changed(), if !closing => {
                if changed.is_err() {
                    closing = true;
                } else if *handing_over.borrow() && started.load(Ordering::Relaxed) {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::redirect::testing::{
        connect, exchange, expect_closed, fast_limits, header_of, loopback, read_response, start,
        WAIT,
    };

    #[tokio::test]
    async fn get_with_host_is_redirected() {
        let redirects = start(Limits::default(), vec![loopback("r", 1, 301)]);
        let addr = redirects.local_addr("r").expect("bound");
        let (head, body) = exchange(
            addr,
            "GET /chart?id=7 HTTP/1.1\r\nHost: mychart.example:80\r\n\r\n",
            false,
        )
        .await;
        assert!(
            head.starts_with("HTTP/1.1 301 Moved Permanently\r\n"),
            "{head}"
        );
        assert_eq!(
            header_of(&head, "location"),
            Some("https://mychart.example/chart?id=7")
        );
        assert_eq!(
            header_of(&head, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(String::from_utf8_lossy(&body).contains("https://mychart.example/chart?id=7"));
        assert_eq!(redirects.stats(), vec![("r".to_string(), 1)]);
    }

    #[tokio::test]
    async fn http10_without_host_uses_the_vip_and_closes() {
        let redirects = start(Limits::default(), vec![loopback("r", 1, 302)]);
        let addr = redirects.local_addr("r").expect("bound");
        let mut stream = connect(addr).await;
        stream
            .write_all(b"GET /a HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let (head, _) = read_response(&mut stream, false).await;
        assert!(
            head.starts_with("HTTP/1.0 302 Found\r\n")
                || head.starts_with("HTTP/1.1 302 Found\r\n"),
            "{head}"
        );
        assert_eq!(header_of(&head, "location"), Some("https://127.0.0.1/a"));
        expect_closed(&mut stream, WAIT).await;
    }

    #[tokio::test]
    async fn http11_without_host_uses_the_vip() {
        let redirects = start(Limits::default(), vec![loopback("r", 1, 301)]);
        let addr = redirects.local_addr("r").expect("bound");
        let mut stream = connect(addr).await;
        stream
            .write_all(b"GET /b?x=1 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let (head, _) = read_response(&mut stream, false).await;
        assert!(head.starts_with("HTTP/1.1 301"), "{head}");
        assert_eq!(
            header_of(&head, "location"),
            Some("https://127.0.0.1/b?x=1")
        );
    }

    #[tokio::test]
    async fn http10_keep_alive_is_honoured() {
        let redirects = start(Limits::default(), vec![loopback("r", 1, 301)]);
        let addr = redirects.local_addr("r").expect("bound");
        let mut stream = connect(addr).await;
        for path in ["/one", "/two"] {
            let request = format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("write");
            let (head, _) = read_response(&mut stream, false).await;
            assert_eq!(
                header_of(&head, "location"),
                Some(format!("https://127.0.0.1{path}").as_str())
            );
        }
    }

    #[tokio::test]
    async fn head_gets_headers_without_body() {
        let redirects = start(Limits::default(), vec![loopback("r", 1, 301)]);
        let addr = redirects.local_addr("r").expect("bound");
        let mut stream = connect(addr).await;
        stream
            .write_all(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .expect("write");
        let (head, _) = read_response(&mut stream, true).await;
        assert!(head.starts_with("HTTP/1.1 301 "), "{head}");
        assert_eq!(header_of(&head, "location"), Some("https://h/x"));
        assert_ne!(header_of(&head, "content-length"), Some("0"));
        // The next bytes are the second response's, so HEAD sent no body.
        let (next, _) = read_response(&mut stream, false).await;
        assert!(
            next.starts_with("HTTP/1.1 301 "),
            "HEAD response had a body: {next}"
        );
        assert_eq!(header_of(&next, "location"), Some("https://h/y"));
    }

    #[tokio::test]
    async fn two_requests_on_one_keep_alive_connection() {
        let redirects = start(Limits::default(), vec![loopback("r", 1, 308)]);
        let addr = redirects.local_addr("r").expect("bound");
        let mut stream = connect(addr).await;
        for path in ["/first", "/second?x=1"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("write");
            let (head, _) = read_response(&mut stream, false).await;
            assert!(
                head.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
                "{head}"
            );
            assert_eq!(
                header_of(&head, "location"),
                Some(format!("https://h{path}").as_str())
            );
        }
        assert_eq!(redirects.stats(), vec![("r".to_string(), 2)]);
    }

    #[tokio::test]
    async fn malformed_requests_get_a_real_400() {
        let redirects = start(Limits::default(), vec![loopback("r", 1, 301)]);
        let addr = redirects.local_addr("r").expect("bound");
        for request in [
            "GARBAGE\r\n\r\n",
            "GET / HTTP/9.9\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost h\r\n\r\n",
            "G@T / HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: evil.example/x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            let mut stream = connect(addr).await;
            stream.write_all(request.as_bytes()).await.expect("write");
            let (head, _) = read_response(&mut stream, false).await;
            assert!(
                head.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{request:?} got {head}"
            );
            assert_eq!(header_of(&head, "location"), None, "{request:?}");
            expect_closed(&mut stream, WAIT).await;
        }
    }

    #[tokio::test]
    async fn slow_loris_connections_do_not_block_others_and_time_out() {
        let redirects = start(fast_limits(), vec![loopback("r", 1, 301)]);
        let addr = redirects.local_addr("r").expect("bound");
        let mut idle = Vec::new();
        for i in 0..50 {
            let mut stream = connect(addr).await;
            if i % 2 == 0 {
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: sl")
                    .await
                    .expect("write");
            }
            idle.push(stream);
        }
        let started = Instant::now();
        let (head, _) = exchange(addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", false).await;
        assert!(head.starts_with("HTTP/1.1 301 "), "{head}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "took {:?}",
            started.elapsed()
        );
        // The header read timeout (1 s here) closes every one of them.
        for stream in &mut idle {
            expect_closed(stream, Duration::from_secs(4)).await;
        }
    }

    #[tokio::test]
    async fn idle_keep_alive_connection_is_closed() {
        let redirects = start(fast_limits(), vec![loopback("r", 1, 301)]);
        let addr = redirects.local_addr("r").expect("bound");
        let mut stream = connect(addr).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .expect("write");
        read_response(&mut stream, false).await;
        let started = Instant::now();
        expect_closed(&mut stream, Duration::from_secs(4)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(800),
            "closed too early: {:?}",
            started.elapsed()
        );
    }

    /// Opens `cap` connections to `addr`, checks that one more is closed at
    /// once and that the `cap` open ones are still served; returns them.
    async fn fill_to_the_cap(addr: SocketAddrV4, cap: usize) -> Vec<TcpStream> {
        let mut open = Vec::new();
        for _ in 0..cap {
            open.push(connect(addr).await);
        }
        let mut one_more = connect(addr).await;
        expect_closed(&mut one_more, Duration::from_secs(1)).await;
        for stream in &mut open {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .expect("write");
            let (head, _) = read_response(stream, false).await;
            assert!(head.starts_with("HTTP/1.1 301 "), "{head}");
        }
        open
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once() {
        let limits = Limits {
            max_connections: 8,
            ..Limits::default()
        };
        let redirects = start(limits, vec![loopback("r", 1, 301)]);
        let addr = redirects.local_addr("r").expect("bound");
        let mut open = fill_to_the_cap(addr, 8).await;
        // Closing one frees its slot.
        drop(open.pop());
        let deadline = Instant::now() + WAIT;
        loop {
            let mut stream = connect(addr).await;
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 12];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut buf)).await
            {
                assert_eq!(&buf, b"HTTP/1.1 301");
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn one_client_address_cannot_take_the_whole_listener() {
        let limits = Limits {
            max_per_address: 4,
            ..Limits::default()
        };
        let redirects = start(limits, vec![loopback("p", 1, 301)]);
        // All from 127.0.0.1: the fifth is closed, the four are served.
        let _open = fill_to_the_cap(redirects.local_addr("p").expect("bound"), 4).await;
    }

    #[test]
    fn bind_outside_a_runtime_is_an_error() {
        assert!(matches!(
            bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
            Err(RedirectError::NoRuntime)
        ));
    }

    #[tokio::test]
    async fn bind_uses_freebind_for_addresses_not_on_any_interface() {
        // 198.18.0.0/15 (RFC 2544) is not configured here; without IP_FREEBIND
        // this fails with EADDRNOTAVAIL.
        let listener =
            bind(SocketAddrV4::new(Ipv4Addr::new(198, 18, 255, 254), 0)).expect("freebind");
        assert!(SockRef::from(&listener)
            .reuse_address()
            .expect("getsockopt"));
    }
}
