//! [`run`], the thin tokio edge of `cluster.sync`: one TCP connection to the
//! peer at a time, re-established with bounded backoff, each driving a
//! [`SyncSession`] and exchanging [`Message`]s and [`LinkEvent`]s with the
//! daemon over mpsc channels.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::link_stats::LinkStats;
use super::messages::Message;
use super::outbox::OutboxReceiver;
use super::quiet::Quiet;
use super::session::{Event, Local, SyncSession};
use super::wire::SyncKey;
use super::{DEAD_PEER_TIMEOUT, NO_NONCE};
use crate::config::Role;

/// Smallest pause between two connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Largest pause between two connection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Unwritten bytes above which no more messages are taken from the daemon.
const WRITE_HIGH_WATER: usize = 1024 * 1024;
/// Connections from the peer's address that may be authenticating at once;
/// more are closed at once.
const MAX_HANDSHAKES: usize = 4;

/// What the link needs to know: `cluster.sync`, the key, this node.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `cluster.sync.listen`.
    pub listen: SocketAddrV4,
    /// `cluster.sync.peer`.
    pub peer: SocketAddrV4,
    /// The shared key.
    pub key: SyncKey,
    /// This node.
    pub local: Local,
}

/// What the link tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A session paired. Messages sent before this were dropped: send the
    /// full state now (configuration and admin changes, an affinity snapshot).
    Connected {
        /// The peer's `node.name`.
        peer_node: String,
        /// The peer's `cluster.role`.
        peer_role: Role,
        /// The peer's boot id.
        peer_boot_id: u64,
    },
    /// A message from the peer.
    Message(Message),
    /// The paired session ended; the link reconnects by itself.
    Disconnected {
        /// Why, as a log line.
        reason: String,
    },
}

/// Why the link cannot run at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// `listen` and `peer` are the same endpoint.
    #[error("cluster.sync.listen and cluster.sync.peer are both {addr}: peer must be the other node's sync address")]
    SameEndpoint {
        /// The endpoint.
        addr: SocketAddrV4,
    },
}

/// Runs the sync link until the daemon drops its end of `outgoing` or
/// `incoming`.
///
/// Both nodes listen; the node whose `listen` endpoint is lower dials the
/// other's and refuses incoming connections, the other only accepts, and only
/// from the peer's IP address; a new connection from the peer replaces the
/// current one (the peer dials only when its side is gone). A dialer binds its
/// socket to the `listen` IP so that it comes from the address the peer
/// expects. Failed attempts are retried after 100 ms, doubling up to 2 s;
/// repeated identical failures are logged once.
///
/// Messages from `outgoing` are sent while a session is paired and dropped
/// otherwise: after [`LinkEvent::Connected`] the daemon sends its full state.
/// Per connection the link holds at most one frame being received and about
/// 1 MiB plus one frame of unwritten bytes.
///
/// # Errors
///
/// [`LinkError::SameEndpoint`] when `listen` equals `peer`.
pub async fn run(
    listener: TcpListener,
    config: LinkConfig,
    mut outgoing: OutboxReceiver,
    incoming: mpsc::Sender<LinkEvent>,
    stats: Arc<LinkStats>,
) -> Result<(), LinkError> {
    if config.listen == config.peer {
        return Err(LinkError::SameEndpoint { addr: config.peer });
    }
    let link = Link {
        config,
        incoming,
        stats,
    };
    if link.config.listen < link.config.peer {
        tokio::select! {
            () = link.dial_loop(&mut outgoing) => {}
            () = link.refuse_incoming(&listener) => {}
        }
    } else {
        link.accept_loop(&listener, &mut outgoing).await;
    }
    link.stats.set_connected(false);
    Ok(())
}

/// How one connection ended.
enum Outcome {
    /// The daemon is gone: stop.
    Stop,
    /// The connection is over.
    Ended { paired: bool, reason: String },
    /// The peer connected anew and authenticated; carry on with that
    /// connection.
    Replaced {
        paired: bool,
        reason: String,
        next: Box<Paired>,
    },
}

/// Connections authenticating at once.
type Handshakes<'a> =
    FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = Result<Paired, String>> + Send + 'a>>>;

/// A connection whose handshake has completed: the peer holds the key.
struct Paired {
    session: SyncSession,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    peer_node: String,
    peer_role: Role,
    peer_boot_id: u64,
}

struct Backoff(Duration);

impl Backoff {
    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        pause
    }
}

struct Link {
    config: LinkConfig,
    incoming: mpsc::Sender<LinkEvent>,
    stats: Arc<LinkStats>,
}

/// Awaits `fut` while dropping what the daemon sends meanwhile; `None` when
/// the daemon has dropped its sender.
async fn draining<F: Future>(outgoing: &mut OutboxReceiver, fut: F) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            message = outgoing.recv() => message?,
        };
    }
}

async fn connect_from(local: SocketAddrV4, peer: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if !local.ip().is_unspecified() {
        socket.bind(SocketAddr::V4(SocketAddrV4::new(*local.ip(), 0)))?;
    }
    socket.connect(SocketAddr::V4(peer)).await
}

async fn accept_on(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

impl Link {
    fn peer(&self) -> SocketAddrV4 {
        self.config.peer
    }

    async fn dial_loop(&self, outgoing: &mut OutboxReceiver) {
        let mut backoff = Backoff(BACKOFF_MIN);
        let mut quiet = Quiet::default();
        loop {
            let attempt = tokio::time::timeout(
                CONNECT_TIMEOUT,
                connect_from(self.config.listen, self.peer()),
            );
            let Some(attempt) = draining(outgoing, attempt).await else {
                return;
            };
            let outcome = match attempt {
                Ok(Ok(stream)) => match draining(outgoing, self.handshake(stream)).await {
                    None => Outcome::Stop,
                    Some(Ok(paired)) => self.drive(paired, None, outgoing).await,
                    Some(Err(reason)) => Outcome::Ended {
                        paired: false,
                        reason,
                    },
                },
                Ok(Err(e)) => Outcome::Ended {
                    paired: false,
                    reason: format!("sync peer {} cannot be reached: {e}", self.peer()),
                },
                Err(_) => Outcome::Ended {
                    paired: false,
                    reason: format!(
                        "sync peer {} did not answer within {} s",
                        self.peer(),
                        CONNECT_TIMEOUT.as_secs()
                    ),
                },
            };
            let (paired, reason) = match outcome {
                Outcome::Stop => return,
                Outcome::Ended { paired, reason } | Outcome::Replaced { paired, reason, .. } => {
                    (paired, reason)
                }
            };
            if paired {
                backoff = Backoff(BACKOFF_MIN);
                quiet = Quiet::default();
            }
            if !self.ended(paired, &reason, &mut quiet).await {
                return;
            }
            if draining(outgoing, tokio::time::sleep(backoff.next()))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    async fn accept_loop(&self, listener: &TcpListener, outgoing: &mut OutboxReceiver) {
        let mut quiet = Quiet::default();
        let mut next = None;
        loop {
            let paired = match next.take() {
                Some(paired) => paired,
                None => match draining(outgoing, self.accept_authenticated(listener)).await {
                    Some(paired) => paired,
                    None => return,
                },
            };
            let (paired, reason) = match self.drive(paired, Some(listener), outgoing).await {
                Outcome::Stop => return,
                Outcome::Ended { paired, reason } => (paired, reason),
                Outcome::Replaced {
                    paired,
                    reason,
                    next: replacement,
                } => {
                    next = Some(*replacement);
                    (paired, reason)
                }
            };
            if paired {
                quiet = Quiet::default();
            }
            if !self.ended(paired, &reason, &mut quiet).await {
                return;
            }
        }
    }

    /// Reports the end of a connection; false when the daemon is gone.
    async fn ended(&self, paired: bool, reason: &str, quiet: &mut Quiet) -> bool {
        self.stats.set_error(reason);
        if !paired {
            quiet.warn(reason);
            return true;
        }
        log::warn!("{reason}");
        self.stats.set_connected(false);
        self.incoming
            .send(LinkEvent::Disconnected {
                reason: reason.to_owned(),
            })
            .await
            .is_ok()
    }

    /// Whether a connection from `from` may be served; logs a refusal.
    fn admits(&self, from: SocketAddr, quiet: &mut Quiet) -> bool {
        if from.ip() == IpAddr::V4(*self.peer().ip()) {
            return true;
        }
        quiet.warn(&format!(
            "sync connection from {} refused: only the peer {} may connect (cluster.sync.peer)",
            from.ip(),
            self.peer().ip()
        ));
        false
    }

    /// Waits for a connection from the peer's address that authenticates.
    /// Several may be authenticating at once (up to [`MAX_HANDSHAKES`]), so
    /// connections that never complete a handshake cannot hold up the one
    /// that does.
    async fn accept_authenticated(&self, listener: &TcpListener) -> Paired {
        let mut quiet = Quiet::default();
        let mut handshakes = FuturesUnordered::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, from)) if self.admits(from, &mut quiet) => {
                        self.start_handshake(&mut handshakes, stream, from, &mut quiet);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        quiet.warn(&format!("sync listener {}: {e}", self.config.listen));
                        tokio::time::sleep(BACKOFF_MIN).await;
                    }
                },
                Some(done) = handshakes.next(), if !handshakes.is_empty() => match done {
                    Ok(paired) => return paired,
                    Err(reason) => {
                        self.stats.set_error(&reason);
                        quiet.warn(&reason);
                    }
                },
            }
        }
    }

    /// Starts authenticating `stream`, unless [`MAX_HANDSHAKES`] are under
    /// way already (then it is closed).
    fn start_handshake<'a>(
        &'a self,
        handshakes: &mut Handshakes<'a>,
        stream: TcpStream,
        from: SocketAddr,
        quiet: &mut Quiet,
    ) {
        if handshakes.len() >= MAX_HANDSHAKES {
            quiet.warn(&format!(
                "sync connection from {} closed: {MAX_HANDSHAKES} connections from the peer's \
                 address are authenticating already",
                from.ip()
            ));
            return;
        }
        handshakes.push(Box::pin(self.handshake(stream)));
    }

    /// On the dialing node: closes whatever connects, saying why.
    async fn refuse_incoming(&self, listener: &TcpListener) {
        let mut quiet = Quiet::default();
        loop {
            match listener.accept().await {
                Ok((_, from)) => quiet.warn(&format!(
                    "sync connection from {} refused: this node has the lower sync address \
                     and dials its peer; on the other node cluster.sync.listen must be {} and \
                     cluster.sync.peer {}",
                    from.ip(),
                    self.peer(),
                    self.config.listen
                )),
                Err(e) => {
                    quiet.warn(&format!("sync listener {}: {e}", self.config.listen));
                    tokio::time::sleep(BACKOFF_MIN).await;
                }
            }
        }
    }

    /// Starts a session on `stream` and writes its Hello before anything is
    /// read, so that a peer refused on its first frame still learns why from
    /// ours.
    async fn greet(
        &self,
        stream: TcpStream,
    ) -> Result<(SyncSession, OwnedReadHalf, OwnedWriteHalf), String> {
        let peer = self.peer();
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("sync peer {peer}: cannot set TCP_NODELAY: {e}");
        }
        let mut nonce = NO_NONCE;
        getrandom::fill(&mut nonce)
            .map_err(|e| format!("sync peer {peer}: no random nonce for the session: {e}"))?;
        let mut session = SyncSession::new(
            self.config.local.clone(),
            self.config.key.clone(),
            nonce,
            Instant::now(),
        );
        let (rd, mut wr) = stream.into_split();
        let mut hello = Vec::new();
        while let Some(frame) = session.poll_transmit() {
            hello.extend_from_slice(&frame);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, wr.write_all(&hello)).await {
            Ok(Ok(())) => Ok((session, rd, wr)),
            Ok(Err(e)) => Err(format!("sync peer {peer}: connection failed: {e}")),
            Err(_) => Err(format!(
                "sync peer {peer} did not take a greeting within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }

    /// Greets and authenticates `stream` within [`CONNECT_TIMEOUT`]: the
    /// peer must complete the handshake (prove it holds the key) before the
    /// connection counts for anything.
    async fn handshake(&self, stream: TcpStream) -> Result<Paired, String> {
        let peer = self.peer();
        let (mut session, mut rd, mut wr) = self.greet(stream).await?;
        let attempt = async {
            let mut rbuf = vec![0; READ_CHUNK];
            loop {
                while let Some(frame) = session.poll_transmit() {
                    wr.write_all(&frame)
                        .await
                        .map_err(|e| format!("sync peer {peer}: connection failed: {e}"))?;
                }
                match session.poll_event() {
                    Some(Event::Paired {
                        peer_node,
                        peer_role,
                        peer_boot_id,
                    }) => return Ok((peer_node, peer_role, peer_boot_id)),
                    Some(Event::Failed(e)) => return Err(format!("sync peer {peer} {e}")),
                    Some(Event::Received(_)) | None => {}
                }
                match rd.read(&mut rbuf).await {
                    Ok(0) => {
                        return Err(format!(
                            "sync connection from {} closed before it authenticated",
                            peer.ip()
                        ))
                    }
                    Ok(n) => session.handle_bytes(Instant::now(), &rbuf[..n]),
                    Err(e) => return Err(format!("sync peer {peer}: connection failed: {e}")),
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok((peer_node, peer_role, peer_boot_id))) => Ok(Paired {
                session,
                rd,
                wr,
                peer_node,
                peer_role,
                peer_boot_id,
            }),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(format!(
                "sync connection from {} did not authenticate within {} s",
                peer.ip(),
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }

    /// Hands the session's events to the daemon; `Err` ends the connection.
    async fn deliver(&self, session: &mut SyncSession, paired: &mut bool) -> Result<(), Outcome> {
        let peer = self.peer();
        while let Some(event) = session.poll_event() {
            let to_daemon = match event {
                Event::Paired {
                    peer_node,
                    peer_role,
                    peer_boot_id,
                } => {
                    *paired = true;
                    log::info!(
                        "sync peer {peer} connected: node {peer_node}, {}",
                        peer_role.as_str()
                    );
                    self.stats.set_connected(true);
                    LinkEvent::Connected {
                        peer_node,
                        peer_role,
                        peer_boot_id,
                    }
                }
                Event::Received(message) => LinkEvent::Message(message),
                Event::Failed(e) => {
                    return Err(Outcome::Ended {
                        paired: *paired,
                        reason: format!("sync peer {peer} {e}"),
                    })
                }
            };
            if self.incoming.send(to_daemon).await.is_err() {
                return Err(Outcome::Stop);
            }
        }
        Ok(())
    }

    /// Runs one authenticated connection until it fails, the peer connects
    /// anew and authenticates, or the daemon goes away.
    async fn drive(
        &self,
        paired_conn: Paired,
        listener: Option<&TcpListener>,
        outgoing: &mut OutboxReceiver,
    ) -> Outcome {
        let peer = self.peer();
        let ended = |paired, reason: String| Outcome::Ended { paired, reason };
        let Paired {
            mut session,
            mut rd,
            mut wr,
            peer_node,
            peer_role,
            peer_boot_id,
        } = paired_conn;
        log::info!(
            "sync peer {peer} connected: node {peer_node}, {}",
            peer_role.as_str()
        );
        self.stats.set_connected(true);
        let connected = LinkEvent::Connected {
            peer_node,
            peer_role,
            peer_boot_id,
        };
        if self.incoming.send(connected).await.is_err() {
            return Outcome::Stop;
        }
        let mut wbuf: Vec<u8> = Vec::new();
        let mut rbuf = vec![0; READ_CHUNK];
        let mut paired = true;
        let base = {
            let s = self.stats.snapshot();
            (s.sent, s.received)
        };
        let mut quiet = Quiet::default();
        let mut handshakes = FuturesUnordered::new();
        loop {
            while let Some(frame) = session.poll_transmit() {
                wbuf.extend_from_slice(&frame);
            }
            let delivered = self.deliver(&mut session, &mut paired).await;
            self.stats.update(base, session.stats());
            if let Err(outcome) = delivered {
                return outcome;
            }
            let deadline = session.poll_timeout();
            let sleep_to = tokio::time::Instant::from_std(
                deadline.unwrap_or_else(|| Instant::now() + DEAD_PEER_TIMEOUT),
            );
            tokio::select! {
                read = rd.read(&mut rbuf) => match read {
                    Ok(0) => return ended(paired, format!("sync peer {peer} closed the connection")),
                    Ok(n) => session.handle_bytes(Instant::now(), &rbuf[..n]),
                    Err(e) => return ended(paired, format!("sync peer {peer}: connection failed: {e}")),
                },
                written = wr.write(&wbuf), if !wbuf.is_empty() => match written {
                    Ok(n) if n > 0 => {
                        wbuf.drain(..n);
                    }
                    Ok(_) => return ended(paired, format!("sync peer {peer}: connection closed while writing")),
                    Err(e) => return ended(paired, format!("sync peer {peer}: connection failed: {e}")),
                },
                message = outgoing.recv(), if wbuf.len() < WRITE_HIGH_WATER => match message {
                    None => return Outcome::Stop,
                    Some(message) => {
                        if let Err(e) = session.send(message) {
                            log::warn!("sync peer {peer}: message not sent: {e}");
                        }
                    }
                },
                // A new connection from the peer's address replaces this one
                // only once it has authenticated: one that does not (a
                // stranger on the peer's address) never disturbs the session.
                accepted = accept_on(listener) => match accepted {
                    Ok((stream, from)) if self.admits(from, &mut quiet) => {
                        self.start_handshake(&mut handshakes, stream, from, &mut quiet);
                    }
                    Ok(_) => {}
                    Err(e) => quiet.warn(&format!("sync listener {}: {e}", self.config.listen)),
                },
                Some(done) = handshakes.next(), if !handshakes.is_empty() => match done {
                    Ok(next) => {
                        return Outcome::Replaced {
                            paired,
                            reason: format!("sync peer {peer} connected anew and authenticated; the old connection is closed"),
                            next: Box::new(next),
                        };
                    }
                    Err(reason) => quiet.warn(&reason),
                },
                () = tokio::time::sleep_until(sleep_to), if deadline.is_some() => {
                    session.handle_timeout(Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::sync::fixtures::{change, entry, key, local};
    use crate::sync::session_batches;

    struct Node {
        out: crate::sync::Outbox,
        events: mpsc::Receiver<LinkEvent>,
        stats: Arc<LinkStats>,
        task: tokio::task::JoinHandle<Result<(), LinkError>>,
    }

    async fn listener(ip: Ipv4Addr) -> (TcpListener, SocketAddrV4) {
        let l = TcpListener::bind(SocketAddrV4::new(ip, 0)).await.unwrap();
        let SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            panic!("not v4")
        };
        (l, addr)
    }

    fn start(
        l: TcpListener,
        listen: SocketAddrV4,
        peer: SocketAddrV4,
        key: SyncKey,
        me: Local,
    ) -> Node {
        let (out, out_rx) = crate::sync::outbox();
        let (ev_tx, events) = mpsc::channel(16);
        let stats = Arc::new(LinkStats::default());
        let config = LinkConfig {
            listen,
            peer,
            key,
            local: me,
        };
        let task = tokio::spawn(run(l, config, out_rx, ev_tx, stats.clone()));
        Node {
            out,
            events,
            stats,
            task,
        }
    }

    /// lb1 (primary) and lb2 (secondary) on loopback with the same key,
    /// started (not yet paired), and their sync addresses.
    async fn two_edges() -> (Node, Node, (SocketAddrV4, SocketAddrV4)) {
        let lo = Ipv4Addr::LOCALHOST;
        let ((la, a_addr), (lb, b_addr)) = (listener(lo).await, listener(lo).await);
        let a = start(la, a_addr, b_addr, key(), local("lb1", Role::Primary));
        let b = start(lb, b_addr, a_addr, key(), local("lb2", Role::Secondary));
        (a, b, (a_addr, b_addr))
    }

    async fn next_event(node: &mut Node) -> LinkEvent {
        tokio::time::timeout(Duration::from_secs(10), node.events.recv())
            .await
            .expect("no link event within 10 s")
            .expect("link stopped")
    }

    #[tokio::test]
    async fn two_edges_pair_and_replicate_over_loopback() {
        let (mut a, mut b, _) = two_edges().await;

        assert!(matches!(
            next_event(&mut a).await,
            LinkEvent::Connected { peer_node, peer_role: Role::Secondary, .. } if peer_node == "lb2"
        ));
        assert!(matches!(
            next_event(&mut b).await,
            LinkEvent::Connected { peer_node, peer_role: Role::Primary, .. } if peer_node == "lb1"
        ));

        let config = Message::Config {
            version: 1,
            yaml: "services: []\n".into(),
            admin: vec![change(1)],
        };
        a.out.push(config.clone()).unwrap();
        assert_eq!(next_event(&mut b).await, LinkEvent::Message(config));

        let snapshot = session_batches((0..100).map(entry).collect(), true);
        for m in &snapshot {
            b.out.push(m.clone()).unwrap();
        }
        for m in snapshot {
            assert_eq!(next_event(&mut a).await, LinkEvent::Message(m));
        }
        let s = b.stats.snapshot();
        assert!(s.connected);
        assert_eq!(s.sent, 2);
        assert_eq!(a.stats.snapshot().received, 2);

        // The daemon going away ends the link; the peer notices and reconnects later.
        drop(a.out);
        a.task.await.unwrap().unwrap();
        assert!(matches!(
            next_event(&mut b).await,
            LinkEvent::Disconnected { .. }
        ));
        assert!(!b.stats.snapshot().connected);
    }

    /// Issue 12, "Sync under attack": connections from the peer's own
    /// address that never authenticate (silent, or sending garbage) do not
    /// replace or disturb the paired session, in either direction.
    #[tokio::test]
    async fn unauthenticated_connections_from_the_peers_address_do_not_disturb_the_session() {
        let (mut a, mut b, (a_addr, b_addr)) = two_edges().await;
        assert!(matches!(
            next_event(&mut a).await,
            LinkEvent::Connected { .. }
        ));
        assert!(matches!(
            next_event(&mut b).await,
            LinkEvent::Connected { .. }
        ));

        let mut held = Vec::new();
        for round in 0..20_u8 {
            for to in [a_addr, b_addr] {
                if let Ok(mut stream) = TcpStream::connect(to).await {
                    if round % 2 == 0 {
                        let _ = stream.write_all(&[0, 0, 0, 40, 2, 1, round]).await;
                    }
                    held.push(stream);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            // An admin change still goes through at once.
            a.out
                .push(Message::Admin {
                    changes: vec![change(u64::from(round))],
                })
                .unwrap();
            match next_event(&mut b).await {
                LinkEvent::Message(Message::Admin { changes }) => {
                    assert_eq!(changes, vec![change(u64::from(round))]);
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert!(a.events.try_recv().is_err(), "the primary saw no event");
        assert!(b.stats.snapshot().connected && a.stats.snapshot().connected);
    }

    #[tokio::test]
    async fn an_edge_with_the_wrong_key_is_refused() {
        let lo = Ipv4Addr::LOCALHOST;
        let ((la, a_addr), (lb, b_addr)) = (listener(lo).await, listener(lo).await);
        let wrong = SyncKey::new(b"not the key, but thirty-two bytes long").unwrap();
        let mut a = start(la, a_addr, b_addr, key(), local("lb1", Role::Primary));
        let mut b = start(lb, b_addr, a_addr, wrong, local("lb2", Role::Secondary));

        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(a.events.try_recv().is_err());
        assert!(b.events.try_recv().is_err());
        for node in [&a, &b] {
            let s = node.stats.snapshot();
            assert!(!s.connected);
            let error = s.last_error.unwrap_or_default();
            assert!(
                error.contains(
                    "failed authentication: is cluster.sync.key_file the same on both nodes?"
                ),
                "{error}"
            );
        }
        let want = format!("sync peer {b_addr} failed authentication");
        assert!(a.stats.snapshot().last_error.unwrap().starts_with(&want));
    }

    #[tokio::test]
    async fn connections_from_other_addresses_are_refused() {
        // The acceptor (higher address) expects its peer at 127.0.0.2.
        let (l, addr) = listener(Ipv4Addr::new(127, 0, 0, 3)).await;
        let peer = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 1);
        let node = start(l, addr, peer, key(), local("lb2", Role::Secondary));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("not closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "the stranger was greeted");
        drop(node.out);
        node.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn same_endpoint_is_a_configuration_error() {
        let (l, addr) = listener(Ipv4Addr::LOCALHOST).await;
        let node = start(l, addr, addr, key(), local("lb1", Role::Primary));
        assert_eq!(
            node.task.await.unwrap(),
            Err(LinkError::SameEndpoint { addr })
        );
    }
}
