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

mod listener;
mod response;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use tokio::sync::watch;

pub use self::listener::bind;
use self::listener::{accept_loop, Handover, Listener};
pub use self::response::{location, respond, BadRequest};
use crate::limits::{Budget, Caps, ConnectionGate};

/// Redirection status codes a redirect service may answer with (RFC 9110 §15.4).
pub const REDIRECT_CODES: &[u16] = &[301, 302, 303, 307, 308];

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
    /// Concurrent connections per client address and listener (a site's
    /// NAT puts a whole hospital's browsers behind one address: generous,
    /// but a quarter of the listener at most).
    pub max_per_address: usize,
    /// Longest a connection may live, whatever it does (bounds slow readers and
    /// slowly sent request bodies).
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_per_address: 1024,
            max_connection_age: Duration::from_mins(2),
        }
    }
}

/// The redirect listeners: one task per VIP:port, reconciled by [`Redirects::set`].
///
/// Dropping it stops every listener and closes their connections.
#[derive(Debug)]
pub struct Redirects {
    limits: Limits,
    /// The descriptors all of lbd's listeners share.
    budget: Arc<Budget>,
    listeners: HashMap<SocketAddrV4, Listener>,
    /// Set while handing the listeners over to a re-executed lbd: no
    /// connection is accepted, open ones close after their current request.
    handing_over: watch::Sender<bool>,
    /// Connections open now, over all listeners.
    open: Arc<AtomicUsize>,
}

impl Default for Redirects {
    fn default() -> Self {
        Self::with_limits(Limits::default(), Budget::with_capacity(usize::MAX))
    }
}

impl Redirects {
    /// No listeners, default [`Limits`], no budget beyond them (tests).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// No listeners; listeners started later use `limits` and draw on
    /// `budget`.
    #[must_use]
    pub fn with_limits(limits: Limits, budget: Arc<Budget>) -> Self {
        Self {
            limits,
            budget,
            listeners: HashMap::new(),
            handing_over: watch::channel(false).0,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Stops accepting connections (they wait in the listening sockets'
    /// queues for whoever accepts next) and closes each open one after its
    /// current request; returns once none is open, or after `bound`, with
    /// how many were still open.
    pub async fn hand_over(&self, bound: Duration) -> usize {
        self.handing_over.send_replace(true);
        let deadline = tokio::time::Instant::now() + bound;
        while self.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.open.load(Ordering::Relaxed)
    }

    /// Accepts connections again (a hand-over that did not happen).
    pub fn resume(&self) {
        self.handing_over.send_replace(false);
    }

    /// Every listening socket, by name, for a re-execution to hand over
    /// ([`crate::inherit`]).
    #[must_use]
    pub fn listening(&self) -> Vec<(String, std::os::fd::RawFd)> {
        use std::os::fd::AsRawFd as _;
        self.listeners
            .iter()
            .map(|(addr, l)| (listener::inherited_name(*addr), l.socket.as_raw_fd()))
            .collect()
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
            let gate = ConnectionGate::new(
                Caps {
                    per_address: self.limits.max_per_address,
                    total: self.limits.max_connections,
                },
                Arc::clone(&self.budget),
            );
            let task = tokio::spawn(accept_loop(
                Arc::clone(&socket),
                spec_rx,
                Arc::clone(&answered),
                self.limits,
                gate,
                Handover {
                    handing_over: self.handing_over.subscribe(),
                    open: Arc::clone(&self.open),
                },
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::testing::{connect, exchange, header_of, loopback, read_response, start};
    use super::*;

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
}
