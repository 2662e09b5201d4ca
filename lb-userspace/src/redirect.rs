//! Redirect services: HTTP listeners that `lbd` answers itself, sending every
//! request on to another scheme (typically `http://` to `https://`).
//!
//! Each redirect service gets one TCP listener on its VIP:port. Every request is
//! answered with the configured redirection status (RFC 9110 §15.4: 301, 302,
//! 303, 307 or 308) and `Location: SCHEME://HOST[:PORT]/path?query`, where HOST
//! is the request's Host header without its port (RFC 9112 §3.2), or the
//! authority of an absolute-form request target (RFC 9112 §3.2.2), or else the
//! VIP. Message syntax, keep-alive (RFC 9112 §9.3) and the automatic `400` for
//! unparsable requests come from hyper's HTTP/1 server; [`location`] and
//! [`respond`] are the pure policy and are unit-tested without sockets.
//!
//! A listener binds with `IP_FREEBIND` so it can listen before the VIP is on the
//! interface (the backup of an HA pair does not hold the VIPs), and with
//! `SO_REUSEADDR`. Slow or flooding clients are bounded by [`Limits`]: a header
//! read timeout (which is also the keep-alive idle timeout), a cap on concurrent
//! connections per listener (beyond it new connections are reset at once), and a
//! maximum connection age.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// Redirection status codes a redirect service may answer with (RFC 9110 §15.4).
pub const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

/// Longest host name accepted from a Host header (RFC 1035 §2.3.4, plus a trailing dot).
const MAX_HOST_NAME_LEN: usize = 254;
/// Largest request head hyper buffers per connection, bounding memory per client.
const MAX_BUF_SIZE: usize = 64 * 1024;
/// Listen backlog of a redirect listener.
const BACKLOG: i32 = 1024;
/// Pause after an accept error that is not the client's (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How much of a client-supplied value an error message repeats.
const MAX_ECHO: usize = 100;

/// One redirect service, as the listener needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectSpec {
    /// Service name, for logs and statistics.
    pub service: String,
    /// Address to listen on; also the Location host when a request names none.
    pub vip: Ipv4Addr,
    /// TCP port to listen on.
    pub port: u16,
    /// Status code: 301, 302, 303, 307 or 308.
    pub code: u16,
    /// Scheme of the Location URL: `http` or `https`.
    pub scheme: String,
    /// Port put in the Location URL; `None` leaves it out (the scheme's default).
    pub target_port: Option<u16>,
}

impl RedirectSpec {
    /// The address the service listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.vip, self.port)
    }
}

/// Why a request cannot be redirected; it is answered with `400 Bad Request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The Host (or the request target's authority) is not a host name or address.
    #[error("host {0:?} is not a host name, IPv4 address or bracketed IPv6 address with an optional port")]
    InvalidHost(String),
    /// The request target is not an origin-form path (or `*`).
    #[error("request target {0:?} is not an absolute path with an optional query")]
    InvalidTarget(String),
    /// More than one Host header (RFC 9112 §3.2 requires a 400).
    #[error("request with more than one Host header")]
    DuplicateHost,
}

/// Why redirect listeners could not be (re)configured.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// Something else listens on the address.
    #[error("cannot listen on {addr}: address in use (is another web server bound to port {port} on this host? stop it or give the redirect service another VIP:port)", port = .addr.port())]
    AddressInUse {
        /// The address.
        addr: SocketAddrV4,
    },
    /// The process may not bind the port.
    #[error("cannot listen on {addr}: permission denied (run lbd as root or give it CAP_NET_BIND_SERVICE)")]
    PermissionDenied {
        /// The address.
        addr: SocketAddrV4,
    },
    /// Any other failure to create, bind or listen on the socket.
    #[error("cannot listen on {addr}: {source} (check that the VIP is a unicast IPv4 address)")]
    Bind {
        /// The address.
        addr: SocketAddrV4,
        /// What the kernel said.
        source: io::Error,
    },
    /// Listeners were started outside a tokio runtime.
    #[error("internal error: redirect listeners must be started from inside lbd's tokio runtime")]
    NoRuntime,
    /// Two redirect services share one VIP:port.
    #[error(
        "redirect services {first:?} and {second:?} both use {addr}; give each its own VIP:port"
    )]
    DuplicateAddress {
        /// The shared address.
        addr: SocketAddrV4,
        /// One service.
        first: String,
        /// The other service.
        second: String,
    },
    /// The status code is not a redirection.
    #[error("redirect service {service:?}: code {code} is not a redirect; use 301, 302, 303, 307 or 308")]
    InvalidCode {
        /// The service.
        service: String,
        /// The code given.
        code: u16,
    },
    /// The scheme is neither `http` nor `https`.
    #[error("redirect service {service:?}: scheme {scheme:?} is not supported; use http or https")]
    InvalidScheme {
        /// The service.
        service: String,
        /// The scheme given.
        scheme: String,
    },
}

/// Bounds that keep slow or flooding clients from exhausting a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a complete request head, counted from the
    /// connection's start or from the end of the previous response; so it is
    /// also the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    /// Concurrent connections per listener; further ones are reset at once.
    pub max_connections: usize,
    /// Longest a connection may live, whatever it does (bounds slow readers and
    /// slowly sent request bodies).
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connection_age: Duration::from_mins(2),
        }
    }
}

/// The Location URL for a request: `SCHEME://HOST[:PORT]` followed by the
/// request's path and query.
///
/// `host_header` is the Host header's value (or an absolute-form target's
/// authority); its port is dropped, and without it (or when it is empty) the VIP
/// is used. `path_and_query` is the origin-form request target; `*` (from
/// `OPTIONS *`) and an empty target become `/`. Bytes beyond ASCII are
/// percent-encoded.
///
/// # Errors
///
/// [`BadRequest::InvalidHost`] when the host has characters a host name may not
/// have, or a malformed port; [`BadRequest::InvalidTarget`] when the target is not
/// a path or has control characters or spaces.
pub fn location(
    spec: &RedirectSpec,
    host_header: Option<&str>,
    path_and_query: &str,
) -> Result<String, BadRequest> {
    let mut url = String::with_capacity(64 + path_and_query.len());
    url.push_str(&spec.scheme);
    url.push_str("://");
    match host_header.map(host_without_port).transpose()? {
        Some(host) if !host.is_empty() => url.push_str(host),
        _ => {
            let _ = write!(url, "{}", spec.vip);
        }
    }
    if let Some(port) = spec.target_port {
        let _ = write!(url, ":{port}");
    }
    let target = match path_and_query {
        "" | "*" => "/",
        other => other,
    };
    if target.starts_with('?') {
        url.push('/');
    } else if !target.starts_with('/') {
        return Err(BadRequest::InvalidTarget(clip(target)));
    }
    for byte in target.bytes() {
        match byte {
            0x21..=0x7e => url.push(char::from(byte)),
            0x80..=0xff => {
                let _ = write!(url, "%{byte:02X}");
            }
            _ => return Err(BadRequest::InvalidTarget(clip(target))),
        }
    }
    Ok(url)
}

/// The host part of a Host header value (`host`, `host:port`, `[v6]`,
/// `[v6]:port`), checked so that it can be put into a URL as it is.
fn host_without_port(value: &str) -> Result<&str, BadRequest> {
    let invalid = || BadRequest::InvalidHost(clip(value));
    let (host, port) = if value.starts_with('[') {
        let end = value.find(']').ok_or_else(invalid)?;
        let (host, rest) = value.split_at(end + 1);
        host[1..end].parse::<Ipv6Addr>().map_err(|_| invalid())?;
        let port = match rest.strip_prefix(':') {
            Some(port) => port,
            None if rest.is_empty() => "",
            None => return Err(invalid()),
        };
        (host, port)
    } else {
        let (host, port) = value.split_once(':').unwrap_or((value, ""));
        if !is_host_name(host) {
            return Err(invalid());
        }
        (host, port)
    };
    // RFC 3986 allows an empty port ("host:"); anything else must be a port number.
    if !port.is_empty()
        && (!port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err())
    {
        return Err(invalid());
    }
    Ok(host)
}

/// A DNS name or dotted IPv4 address: letters, digits, `-`, `_`, non-empty
/// labels separated by dots, an optional trailing dot. The empty string (an
/// empty Host header) is accepted and means "no host".
fn is_host_name(host: &str) -> bool {
    if host.is_empty() {
        return true;
    }
    if host.len() > MAX_HOST_NAME_LEN {
        return false;
    }
    let labels = host.strip_suffix('.').unwrap_or(host);
    labels.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// A client-supplied value shortened for an error message.
fn clip(value: &str) -> String {
    value.chars().take(MAX_ECHO).collect()
}

/// The response to one request: the redirect, or `400 Bad Request` with
/// `Connection: close` when the request cannot be redirected.
///
/// Every response carries `Content-Length`; a HEAD response has the headers of
/// the GET response and no body.
#[must_use]
pub fn respond<B>(spec: &RedirectSpec, request: &Request<B>) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    match redirect_target(spec, request) {
        Ok(url) => match HeaderValue::from_str(&url) {
            Ok(value) => redirect_response(spec.code, value, &url, head),
            Err(_) => bad_request(head),
        },
        Err(reason) => {
            debug!("redirect service {}: bad request: {reason}", spec.service);
            bad_request(head)
        }
    }
}

/// The Location URL for a request, applying RFC 9112 §3.2's rules on Host.
fn redirect_target<B>(spec: &RedirectSpec, request: &Request<B>) -> Result<String, BadRequest> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::DuplicateHost);
    }
    let host = host
        .map(|value| {
            value.to_str().map_err(|_| {
                BadRequest::InvalidHost(clip(&String::from_utf8_lossy(value.as_bytes())))
            })
        })
        .transpose()?;
    // RFC 9112 wants a 400 for an HTTP/1.1 request without Host; the
    // product contract redirects it to the VIP instead, which serves the
    // client better and reveals nothing the client does not know.
    let uri = request.uri();
    match (uri.scheme(), uri.authority()) {
        // Absolute form: the target's authority wins over Host (RFC 9112 §3.2.2).
        (Some(_), Some(authority)) => location(
            spec,
            Some(authority.as_str()),
            uri.path_and_query().map_or("/", |pq| pq.as_str()),
        ),
        // Authority form (CONNECT): nothing to redirect to.
        (None, Some(authority)) => Err(BadRequest::InvalidTarget(clip(authority.as_str()))),
        _ => location(
            spec,
            host,
            uri.path_and_query()
                .map_or_else(|| uri.path(), |pq| pq.as_str()),
        ),
    }
}

/// A redirect with a tiny HTML body (empty for HEAD, with the GET length).
fn redirect_response(
    code: u16,
    location: HeaderValue,
    url: &str,
    head: bool,
) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Redirect")
    );
    let href = html_escape(url);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{title}</title></head>\
         <body><h1>{title}</h1><p>This page has moved to <a href=\"{href}\">{href}</a>.</p></body></html>\n"
    );
    let mut response = sized_response(status, body.into(), head);
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// `400 Bad Request`, closing the connection.
fn bad_request(head: bool) -> Response<Full<Bytes>> {
    let mut response = sized_response(
        StatusCode::BAD_REQUEST,
        Bytes::from_static(b"400 Bad Request\n"),
        head,
    );
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A response with `Content-Length` set to the body's length, sending the body
/// unless the request was HEAD.
fn sized_response(status: StatusCode, body: Bytes, head: bool) -> Response<Full<Bytes>> {
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(if head {
        Full::default()
    } else {
        Full::new(body)
    });
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, length);
    response
}

/// Text made safe for an HTML attribute and element content.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

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
    let socket = listening_socket(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => RedirectError::AddressInUse { addr },
        io::ErrorKind::PermissionDenied => RedirectError::PermissionDenied { addr },
        _ => RedirectError::Bind { addr, source },
    })?;
    TcpListener::from_std(socket.into()).map_err(|source| RedirectError::Bind { addr, source })
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

/// The redirect listeners: one task per VIP:port, reconciled by [`Redirects::set`].
///
/// Dropping it stops every listener and closes their connections.
#[derive(Debug, Default)]
pub struct Redirects {
    limits: Limits,
    listeners: HashMap<SocketAddrV4, Listener>,
}

/// One running listener.
#[derive(Debug)]
struct Listener {
    /// The service's current settings, read by every request.
    spec: watch::Sender<Arc<RedirectSpec>>,
    /// Responses sent.
    answered: Arc<AtomicU64>,
    /// The listening socket, shared with the task so that `stop` can close it at once.
    socket: Arc<TcpListener>,
    /// The accept loop; it owns the connection tasks.
    task: JoinHandle<()>,
}

impl Listener {
    /// Stops accepting now and drops every connection.
    fn stop(self) {
        // Shutting down a listening socket takes it out of LISTEN at once (so the
        // port can be bound again right away) even before the aborted task, which
        // also holds it, is dropped.
        let _ = SockRef::from(&*self.socket).shutdown(Shutdown::Read);
        self.task.abort();
    }
}

impl Redirects {
    /// No listeners, default [`Limits`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// No listeners; listeners started later use `limits`.
    #[must_use]
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            limits,
            listeners: HashMap::new(),
        }
    }

    /// Makes the running listeners match `specs`: starts new ones, stops those no
    /// longer wanted, and updates a service whose VIP:port is unchanged in place
    /// (no rebind, open connections keep going with the new settings).
    ///
    /// All-or-nothing: on an error nothing changes. Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// An invalid or duplicate spec, or a listener that cannot be bound.
    pub fn set(&mut self, specs: Vec<RedirectSpec>) -> Result<(), RedirectError> {
        let mut wanted: HashMap<SocketAddrV4, RedirectSpec> = HashMap::with_capacity(specs.len());
        for spec in specs {
            validate(&spec)?;
            if let Some(other) = wanted.get(&spec.addr()) {
                return Err(RedirectError::DuplicateAddress {
                    addr: spec.addr(),
                    first: other.service.clone(),
                    second: spec.service,
                });
            }
            wanted.insert(spec.addr(), spec);
        }
        let mut bound = Vec::new();
        for addr in wanted.keys() {
            if !self.listeners.contains_key(addr) {
                bound.push((*addr, bind(*addr)?));
            }
        }
        let stale: Vec<SocketAddrV4> = self
            .listeners
            .keys()
            .filter(|addr| !wanted.contains_key(addr))
            .copied()
            .collect();
        for addr in stale {
            if let Some(listener) = self.listeners.remove(&addr) {
                debug!("redirect listener on {addr} stopped");
                listener.stop();
            }
        }
        for (addr, spec) in &wanted {
            if let Some(listener) = self.listeners.get(addr) {
                listener.spec.send_if_modified(|current| {
                    let changed = **current != *spec;
                    if changed {
                        *current = Arc::new(spec.clone());
                    }
                    changed
                });
            }
        }
        for (addr, socket) in bound {
            let Some(spec) = wanted.remove(&addr) else {
                continue;
            };
            debug!("redirect service {} listening on {addr}", spec.service);
            let (spec_tx, spec_rx) = watch::channel(Arc::new(spec));
            let answered = Arc::new(AtomicU64::new(0));
            let socket = Arc::new(socket);
            let task = tokio::spawn(accept_loop(
                Arc::clone(&socket),
                spec_rx,
                Arc::clone(&answered),
                self.limits,
            ));
            self.listeners.insert(
                addr,
                Listener {
                    spec: spec_tx,
                    answered,
                    socket,
                    task,
                },
            );
        }
        Ok(())
    }

    /// Requests answered per service (redirects and the service's own `400`s;
    /// not hyper's automatic `400` for unparsable requests), sorted by name.
    #[must_use]
    pub fn stats(&self) -> Vec<(String, u64)> {
        let mut stats: Vec<(String, u64)> = self
            .listeners
            .values()
            .map(|l| {
                (
                    l.spec.borrow().service.clone(),
                    l.answered.load(Ordering::Relaxed),
                )
            })
            .collect();
        stats.sort();
        stats
    }

    /// The address a service's listener is bound to (differs from the spec when
    /// its port is 0).
    #[must_use]
    pub fn local_addr(&self, service: &str) -> Option<SocketAddrV4> {
        self.listeners
            .values()
            .find(|l| l.spec.borrow().service == service)
            .and_then(|l| match l.socket.local_addr() {
                Ok(SocketAddr::V4(addr)) => Some(addr),
                _ => None,
            })
    }

    /// Stops every listener and drops their connections.
    pub fn shutdown(&mut self) {
        for (_, listener) in self.listeners.drain() {
            listener.stop();
        }
    }
}

impl Drop for Redirects {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn validate(spec: &RedirectSpec) -> Result<(), RedirectError> {
    if !REDIRECT_CODES.contains(&spec.code) {
        return Err(RedirectError::InvalidCode {
            service: spec.service.clone(),
            code: spec.code,
        });
    }
    if spec.scheme != "http" && spec.scheme != "https" {
        return Err(RedirectError::InvalidScheme {
            service: spec.service.clone(),
            scheme: spec.scheme.clone(),
        });
    }
    Ok(())
}

/// Accepts connections until aborted, serving each in its own task while a
/// connection slot is free and resetting it at once otherwise.
async fn accept_loop(
    socket: Arc<TcpListener>,
    spec: watch::Receiver<Arc<RedirectSpec>>,
    answered: Arc<AtomicU64>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                        connections.spawn(serve(stream, slot, spec.clone(), Arc::clone(&answered), limits));
                    } else {
                        debug!(
                            "redirect listener {:?}: {} connections open, resetting {peer}",
                            socket.local_addr(),
                            limits.max_connections
                        );
                        // SO_LINGER 0: reset rather than leave the socket in TIME_WAIT.
                        let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    }
                }
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

/// Serves one connection with hyper until the client leaves, a timeout fires or
/// the connection reaches its maximum age.
async fn serve(
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    spec: watch::Receiver<Arc<RedirectSpec>>,
    answered: Arc<AtomicU64>,
    limits: Limits,
) {
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let current = Arc::clone(&spec.borrow());
        let response = respond(&current, &request);
        answered.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_BUF_SIZE)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.max_connection_age, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!("redirect connection ended: {error}"),
        Err(_) => debug!("redirect connection closed at its maximum age"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Version;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn spec(code: u16, scheme: &str, target_port: Option<u16>) -> RedirectSpec {
        RedirectSpec {
            service: "web-redirect".into(),
            vip: Ipv4Addr::new(198, 18, 0, 100),
            port: 80,
            code,
            scheme: scheme.into(),
            target_port,
        }
    }

    #[test]
    fn location_table() {
        let https = spec(301, "https", None);
        let with_port = spec(308, "https", Some(8443));
        let cases: &[(&RedirectSpec, Option<&str>, &str, &str)] = &[
            (&https, Some("example.org"), "/", "https://example.org/"),
            (
                &https,
                Some("example.org:8080"),
                "/a/b",
                "https://example.org/a/b",
            ),
            (&https, Some("Example.ORG."), "/", "https://Example.ORG./"),
            (&https, None, "/x", "https://198.18.0.100/x"),
            (&https, Some(""), "/x", "https://198.18.0.100/x"),
            (&https, Some("[::1]:8080"), "/", "https://[::1]/"),
            (&https, Some("[2001:db8::1]"), "/", "https://[2001:db8::1]/"),
            (&https, Some("10.1.2.3:80"), "/", "https://10.1.2.3/"),
            (&https, Some("host:"), "/", "https://host/"),
            (
                &https,
                Some("my_host-1.example"),
                "/",
                "https://my_host-1.example/",
            ),
            (
                &with_port,
                Some("example.org:80"),
                "/",
                "https://example.org:8443/",
            ),
            (&with_port, None, "/", "https://198.18.0.100:8443/"),
            (&https, Some("h"), "/p?q=1&r=%20s", "https://h/p?q=1&r=%20s"),
            (&https, Some("h"), "?q", "https://h/?q"),
            (&https, Some("h"), "*", "https://h/"),
            (&https, Some("h"), "", "https://h/"),
            (&https, Some("h"), "/caf\u{e9}", "https://h/caf%C3%A9"),
            (&spec(302, "http", None), Some("h"), "/", "http://h/"),
        ];
        for (spec, host, target, want) in cases {
            assert_eq!(
                location(spec, *host, target).as_deref(),
                Ok(*want),
                "host {host:?} target {target:?}"
            );
        }
    }

    #[test]
    fn location_rejects_hosts_that_are_not_host_names() {
        let https = spec(301, "https", None);
        let long = "a".repeat(MAX_HOST_NAME_LEN + 1);
        for host in [
            "evil.com/x",
            "a b",
            "user@host",
            "host\r\nSet-Cookie: x",
            "<script>",
            "h\"x",
            "h:80:90",
            "h:port",
            "h:99999",
            "a..b",
            ".a",
            "[::1",
            "[::1]x",
            "[not-v6]",
            "[::1]:http",
            "h%41",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    location(&https, Some(host), "/"),
                    Err(BadRequest::InvalidHost(_))
                ),
                "{host:?} accepted"
            );
        }
    }

    #[test]
    fn location_rejects_targets_that_are_not_paths() {
        let https = spec(301, "https", None);
        for target in ["x", "http:", "/a b", "/a\tb", "/\u{7f}"] {
            assert!(
                matches!(
                    location(&https, Some("h"), target),
                    Err(BadRequest::InvalidTarget(_))
                ),
                "{target:?} accepted"
            );
        }
    }

    fn request(method: Method, uri: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().expect("test URI");
        *request.version_mut() = version;
        for host in hosts {
            request.headers_mut().append(
                header::HOST,
                HeaderValue::from_str(host).expect("test host"),
            );
        }
        request
    }

    fn header<'a>(
        response: &'a Response<Full<Bytes>>,
        name: &header::HeaderName,
    ) -> Option<&'a str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn respond_rfc9112_3_2_host_rules() {
        let s = spec(301, "https", None);
        let missing = respond(&s, &request(Method::GET, "/", Version::HTTP_11, &[]));
        assert_eq!(
            missing.status(),
            StatusCode::MOVED_PERMANENTLY,
            "no Host: the VIP (contract)"
        );
        let twice = respond(
            &s,
            &request(Method::GET, "/", Version::HTTP_11, &["a", "b"]),
        );
        assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
        let http10 = respond(&s, &request(Method::GET, "/x", Version::HTTP_10, &[]));
        assert_eq!(http10.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            header(&http10, &header::LOCATION),
            Some("https://198.18.0.100/x")
        );
    }

    #[test]
    fn respond_rfc9112_3_2_2_absolute_form_uses_target_authority() {
        let s = spec(307, "https", None);
        let response = respond(
            &s,
            &request(
                Method::GET,
                "http://target.example:80/p?q",
                Version::HTTP_11,
                &["other.example"],
            ),
        );
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            header(&response, &header::LOCATION),
            Some("https://target.example/p?q")
        );
        let connect = respond(
            &s,
            &request(
                Method::CONNECT,
                "target.example:443",
                Version::HTTP_11,
                &["h"],
            ),
        );
        assert_eq!(connect.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn respond_head_has_get_headers_and_no_body() {
        use http_body_util::BodyExt as _;
        let s = spec(301, "https", None);
        let get = respond(&s, &request(Method::GET, "/", Version::HTTP_11, &["h"]));
        let head = respond(&s, &request(Method::HEAD, "/", Version::HTTP_11, &["h"]));
        assert_eq!(
            header(&get, &header::CONTENT_LENGTH),
            header(&head, &header::CONTENT_LENGTH)
        );
        assert_eq!(header(&head, &header::LOCATION), Some("https://h/"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let get_body = runtime
            .block_on(get.into_body().collect())
            .expect("body")
            .to_bytes();
        let head_body = runtime
            .block_on(head.into_body().collect())
            .expect("body")
            .to_bytes();
        assert!(head_body.is_empty());
        assert_eq!(
            header(
                &respond(&s, &request(Method::GET, "/", Version::HTTP_11, &["h"])),
                &header::CONTENT_LENGTH
            ),
            Some(get_body.len().to_string().as_str())
        );
    }

    #[test]
    fn respond_escapes_the_url_in_the_html_body() {
        use http_body_util::BodyExt as _;
        let s = spec(301, "https", None);
        let response = respond(
            &s,
            &request(Method::GET, "/a'b&c", Version::HTTP_11, &["h"]),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let body = runtime
            .block_on(response.into_body().collect())
            .expect("body")
            .to_bytes();
        let body = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(body.contains("href=\"https://h/a&#39;b&amp;c\""), "{body}");
        assert_eq!(html_escape("\"<b>"), "&quot;&lt;b&gt;");
    }

    // --- Real listeners on loopback ---

    const WAIT: Duration = Duration::from_secs(5);

    fn loopback(service: &str, last_octet: u8, code: u16) -> RedirectSpec {
        RedirectSpec {
            service: service.into(),
            vip: Ipv4Addr::new(127, 0, 0, last_octet),
            port: 0,
            code,
            scheme: "https".into(),
            target_port: None,
        }
    }

    fn start(limits: Limits, specs: Vec<RedirectSpec>) -> Redirects {
        let mut redirects = Redirects::with_limits(limits);
        redirects.set(specs).expect("listeners start");
        redirects
    }

    fn fast_limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(1),
            ..Limits::default()
        }
    }

    async fn connect(addr: SocketAddrV4) -> TcpStream {
        tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// Reads one response: the head (up to the blank line) and a body of
    /// `Content-Length` bytes (none for HEAD).
    async fn read_response(stream: &mut TcpStream, head_request: bool) -> (String, Vec<u8>) {
        tokio::time::timeout(WAIT, async {
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut byte).await.expect("read head");
                assert_eq!(
                    n,
                    1,
                    "connection closed mid-head: {:?}",
                    String::from_utf8_lossy(&buf)
                );
                buf.push(byte[0]);
            }
            let head = String::from_utf8(buf).expect("ASCII head");
            let length: usize = header_of(&head, "content-length")
                .expect("every response has Content-Length")
                .parse()
                .expect("numeric Content-Length");
            let mut body = vec![0u8; if head_request { 0 } else { length }];
            stream.read_exact(&mut body).await.expect("read body");
            (head, body)
        })
        .await
        .expect("response in time")
    }

    fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// Waits for the server to close the connection: EOF or a reset.
    async fn expect_closed(stream: &mut TcpStream, within: Duration) {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => panic!("unexpected data: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(elapsed) => panic!("connection still open after {within:?}: {elapsed}"),
        }
    }

    async fn exchange(addr: SocketAddrV4, request: &str, head_request: bool) -> (String, Vec<u8>) {
        let mut stream = connect(addr).await;
        stream.write_all(request.as_bytes()).await.expect("write");
        read_response(&mut stream, head_request).await
    }

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

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once() {
        let limits = Limits {
            max_connections: 8,
            ..Limits::default()
        };
        let redirects = start(limits, vec![loopback("r", 1, 301)]);
        let addr = redirects.local_addr("r").expect("bound");
        let mut open = Vec::new();
        for _ in 0..8 {
            open.push(connect(addr).await);
        }
        let mut ninth = connect(addr).await;
        expect_closed(&mut ninth, Duration::from_secs(1)).await;
        // The first eight are still served.
        for stream in &mut open {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .expect("write");
            let (head, _) = read_response(stream, false).await;
            assert!(head.starts_with("HTTP/1.1 301 "), "{head}");
        }
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
    async fn set_reconciles_listeners() {
        let mut redirects = start(
            Limits::default(),
            vec![loopback("a", 1, 301), loopback("b", 2, 302)],
        );
        let a = redirects.local_addr("a").expect("a bound");
        let b = redirects.local_addr("b").expect("b bound");
        let (head, _) = exchange(b, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", false).await;
        assert!(head.starts_with("HTTP/1.1 302 "), "{head}");

        // Keep a connection to `a` open across the update.
        let mut kept = connect(a).await;
        kept.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .expect("write");
        assert!(read_response(&mut kept, false)
            .await
            .0
            .starts_with("HTTP/1.1 301 "));

        // Change `a` in place (same configured VIP:port, so no rebind), drop `b`.
        let mut changed = loopback("a2", 1, 307);
        changed.target_port = Some(8443);
        redirects.set(vec![changed.clone()]).expect("update");
        assert_eq!(redirects.local_addr("a2"), Some(a));
        assert_eq!(redirects.local_addr("b"), None);
        assert!(TcpStream::connect(b).await.is_err(), "b still listening");
        kept.write_all(b"GET /k HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .expect("write");
        let (head, _) = read_response(&mut kept, false).await;
        assert!(head.starts_with("HTTP/1.1 307 "), "{head}");
        assert_eq!(header_of(&head, "location"), Some("https://h:8443/k"));
        assert_eq!(redirects.stats(), vec![("a2".to_string(), 2)]);

        // Remove and re-add on the same port without yielding to the runtime in
        // between: the port must be free as soon as `set` returns.
        redirects.set(Vec::new()).expect("stop all");
        assert!(redirects.stats().is_empty());
        changed.port = a.port();
        redirects
            .set(vec![changed])
            .expect("rebind the same port at once");
        let (head, _) = exchange(a, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", false).await;
        assert!(head.starts_with("HTTP/1.1 307 "), "{head}");

        redirects.shutdown();
        assert!(
            TcpStream::connect(a).await.is_err(),
            "listening after shutdown"
        );
    }

    #[tokio::test]
    async fn set_is_all_or_nothing() {
        let mut redirects = start(Limits::default(), vec![loopback("a", 1, 301)]);
        let a = redirects.local_addr("a").expect("bound");
        let occupied = std::net::TcpListener::bind("127.0.0.3:0").expect("bind");
        let taken = match occupied.local_addr().expect("addr") {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(_) => unreachable!(),
        };
        let mut clash = loopback("clash", 3, 301);
        clash.port = taken.port();
        let error = redirects.set(vec![clash]).expect_err("port in use");
        assert_eq!(
            error.to_string(),
            format!(
                "cannot listen on {taken}: address in use (is another web server bound to port {} on this host? stop it or give the redirect service another VIP:port)",
                taken.port()
            )
        );
        assert_eq!(
            redirects.local_addr("a"),
            Some(a),
            "a was stopped by a failed set"
        );

        let mut bad_code = loopback("x", 4, 200);
        assert!(matches!(
            redirects.set(vec![bad_code.clone()]),
            Err(RedirectError::InvalidCode { .. })
        ));
        bad_code.code = 301;
        bad_code.scheme = "ftp".into();
        assert!(matches!(
            redirects.set(vec![bad_code]),
            Err(RedirectError::InvalidScheme { .. })
        ));
        let mut twin = loopback("twin", 1, 301);
        twin.port = a.port();
        let mut same = loopback("a", 1, 301);
        same.port = a.port();
        assert!(matches!(
            redirects.set(vec![same, twin]),
            Err(RedirectError::DuplicateAddress { .. })
        ));
        assert_eq!(redirects.stats(), vec![("a".to_string(), 0)]);
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
