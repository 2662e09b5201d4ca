//! [`SyncSession`], the sans-IO `cluster.sync` session over one byte stream:
//! the handshake that binds both connections' nonces, per-direction sequence
//! numbers, heartbeats and the dead-peer timeout. It never reads the clock,
//! touches a socket or draws random numbers (the session nonce is an input).

use std::collections::VecDeque;
use std::time::Instant;

use hmac::Mac;

use super::messages::{decode_body, kind_name, Body, DecodeError, Hello, Message, KIND_HELLO};
use super::wire::{frame_len, seal, SyncKey, HEADER_LEN, PREFIX_LEN, TAG_LEN};
use super::{
    Nonce, DEAD_PEER_TIMEOUT, HEARTBEAT_INTERVAL, MAX_FRAME, NONCE_LEN, NO_NONCE, VERSION,
};
use crate::config::Role;

/// Receive buffer capacity kept between frames; more is released once drained.
const RX_KEEP: usize = 1024 * 1024;

/// This node, as announced to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// `node.name`.
    pub node: String,
    /// `cluster.role`.
    pub role: Role,
    /// Random per daemon start, so the peer can tell a restart from a reconnection.
    pub boot_id: u64,
}

/// Why a session failed. Each message reads after "sync peer ADDR ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// A frame's tag did not match: the peer does not have the key (or the
    /// stream was tampered with or replayed).
    #[error("failed authentication: is cluster.sync.key_file the same on both nodes?")]
    AuthFailed,
    /// The length prefix announces more than [`MAX_FRAME`].
    #[error(
        "announced a frame of {len} bytes, more than the {MAX_FRAME}-byte limit: it is not \
         an lbd sync endpoint, or runs an incompatible lbd; check cluster.sync.peer"
    )]
    FrameTooLarge {
        /// Announced frame size, prefix included.
        len: u64,
    },
    /// The length prefix announces less than a header and a tag.
    #[error("announced a frame of {len} bytes, too short for a header and tag: it is not an lbd sync endpoint")]
    FrameTooShort {
        /// Announced frame size, prefix included.
        len: u64,
    },
    /// An authenticated frame could not be decoded.
    #[error("sent a malformed frame ({0}): run the same lbd version on both nodes")]
    Malformed(#[from] DecodeError),
    /// The frame header names another protocol version.
    #[error("speaks sync protocol version {version}, this lbd speaks {VERSION}: run the same lbd version on both nodes")]
    UnsupportedVersion {
        /// The version received.
        version: u8,
    },
    /// A frame's sequence number is not the next one: replayed, dropped or reordered.
    #[error("sent frame number {got} where {expected} was due (a replayed or reordered frame); reconnecting")]
    Sequence {
        /// The sequence number due.
        expected: u64,
        /// The sequence number received.
        got: u64,
    },
    /// A valid frame arrived at the wrong point of the handshake.
    #[error("sent a {got} frame where a {expected} frame was due: run the same lbd version on both nodes")]
    UnexpectedFrame {
        /// Kind received.
        got: &'static str,
        /// Kind due.
        expected: &'static str,
    },
    /// The peer's nonce is this session's own: the link loops back to itself.
    #[error("is this very node: cluster.sync.peer must be the other node's sync address")]
    SelfConnection,
    /// The peer announces this node's own name.
    #[error("is also named {node:?}: node.name must differ between the two nodes")]
    SameNodeName {
        /// The shared name.
        node: String,
    },
    /// Both nodes have the same `cluster.role`.
    #[error("is also configured as {role}: set cluster.role to primary on one node and secondary on the other")]
    RoleConflict {
        /// The shared role.
        role: &'static str,
    },
    /// No valid frame for [`DEAD_PEER_TIMEOUT`].
    #[error("sent nothing for {silent_ms} ms: it is down, stalled or unreachable")]
    Timeout {
        /// Time since the last valid frame (or the start of the session).
        silent_ms: u64,
    },
    /// This node's `Hello` cannot be encoded.
    #[error("cannot be greeted: {0}")]
    Greeting(SendError),
}

/// Why [`SyncSession::send`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The handshake has not completed (or the session failed).
    #[error("the sync peer is not connected")]
    NotPaired,
    /// The encoded frame would exceed [`MAX_FRAME`].
    #[error("a sync frame of {len} bytes exceeds the {MAX_FRAME}-byte limit: send fewer entries per message")]
    TooLarge {
        /// The encoded size.
        len: usize,
    },
    /// A string does not fit its length field.
    #[error("{field} of {len} bytes is too long for a sync message")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

/// What a session reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed: the peer has the key and answered this
    /// connection's nonce. Send the full state now.
    Paired {
        /// The peer's `node.name`.
        peer_node: String,
        /// The peer's `cluster.role`.
        peer_role: Role,
        /// The peer's boot id: a new value means the peer daemon restarted.
        peer_boot_id: u64,
    },
    /// An authenticated message from the peer.
    Received(Message),
    /// The session is over; close the connection and start a new one.
    Failed(SyncError),
}

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Messages sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Round trip of the latest heartbeat in milliseconds, queueing included.
    pub lag_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Our `Hello` is out; waiting for the peer's.
    AwaitHello,
    /// Our `Confirm` is out; waiting for the peer's.
    AwaitConfirm,
    Paired,
    Failed,
}

/// The session's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Fires when the peer has been silent for [`DEAD_PEER_TIMEOUT`].
    DeadPeer,
    /// Fires when the next heartbeat is due.
    Heartbeat,
}

impl crate::timer::Timer for Timer {
    const ALL: &'static [Self] = &[Timer::DeadPeer, Timer::Heartbeat];

    fn index(self) -> usize {
        self as usize
    }
}

/// A deadline per timer.
type TimerTable = crate::timer::TimerTable<Timer, 2>;

/// One sync connection's protocol state, driven by the caller's clock and I/O.
///
/// Create one per TCP connection with a fresh random nonce. Feed received
/// bytes to [`handle_bytes`](Self::handle_bytes), call
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout),
/// and after every call write out [`poll_transmit`](Self::poll_transmit) and
/// handle [`poll_event`](Self::poll_event). After [`Event::Failed`] the
/// session is inert: close the connection.
#[derive(Debug)]
pub struct SyncSession {
    key: SyncKey,
    local: Local,
    nonce: Nonce,
    peer_nonce: Option<Nonce>,
    peer: Option<Hello>,
    state: State,
    send_seq: u64,
    recv_seq: u64,
    rx: Vec<u8>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    timers: TimerTable,
    epoch: Instant,
    last_rx: Instant,
    stats: SessionStats,
}

impl SyncSession {
    /// Starts a session and queues this node's `Hello`. `nonce` must be fresh
    /// random bytes for every connection.
    #[must_use]
    pub fn new(local: Local, key: SyncKey, nonce: Nonce, now: Instant) -> Self {
        let mut session = SyncSession {
            key,
            local,
            nonce,
            peer_nonce: None,
            peer: None,
            state: State::AwaitHello,
            send_seq: 0,
            recv_seq: 0,
            rx: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            timers: TimerTable::default(),
            epoch: now,
            last_rx: now,
            stats: SessionStats::default(),
        };
        session.timers.set(Timer::DeadPeer, now + DEAD_PEER_TIMEOUT);
        let hello = Body::Hello(Hello {
            nonce,
            node: session.local.node.clone(),
            role: session.local.role,
            boot_id: session.local.boot_id,
        });
        if let Err(e) = session.queue(&hello) {
            session.fail(SyncError::Greeting(e));
        }
        session
    }

    /// Whether the handshake has completed and the session has not failed.
    #[must_use]
    pub fn is_paired(&self) -> bool {
        self.state == State::Paired
    }

    /// The session's counters.
    #[must_use]
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Queues a message for the peer.
    ///
    /// # Errors
    ///
    /// [`SendError::NotPaired`] before [`Event::Paired`] or after
    /// [`Event::Failed`]; [`SendError::TooLarge`] or
    /// [`SendError::FieldTooLong`] when it does not fit a frame. The session
    /// goes on either way.
    pub fn send(&mut self, message: Message) -> Result<(), SendError> {
        if self.state != State::Paired {
            return Err(SendError::NotPaired);
        }
        self.queue(&Body::Message(message))?;
        self.stats.sent += 1;
        Ok(())
    }

    /// Takes in bytes read from the connection; they may hold any number of
    /// frames and end inside one.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.state == State::Failed {
            return;
        }
        let mut rx = std::mem::take(&mut self.rx);
        rx.extend_from_slice(bytes);
        let mut start = 0;
        while self.state != State::Failed {
            match frame_len(&rx[start..]) {
                Ok(None) => break,
                Ok(Some(len)) => {
                    let frame = &rx[start..start + len];
                    start += len;
                    if let Err(e) = self.handle_frame(now, frame) {
                        self.fail(e);
                    }
                }
                Err(e) => self.fail(e),
            }
        }
        if self.state == State::Failed {
            return;
        }
        rx.drain(..start);
        if rx.is_empty() && rx.capacity() > RX_KEEP {
            rx = Vec::new();
        }
        self.rx = rx;
    }

    /// Runs the timers due at `now`: heartbeats and the dead-peer check.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.take_expired(now) {
            match timer {
                Timer::DeadPeer => {
                    let silent = now.saturating_duration_since(self.last_rx);
                    self.fail(SyncError::Timeout {
                        silent_ms: u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
                    });
                    return;
                }
                Timer::Heartbeat => {
                    let sent_ms = self.millis(now);
                    self.queue_internal(&Body::Heartbeat { sent_ms });
                    self.timers.set(Timer::Heartbeat, now + HEARTBEAT_INTERVAL);
                }
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due; `None` once failed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The next frame to write to the connection.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event for the owner.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn queue(&mut self, body: &Body) -> Result<(), SendError> {
        let receiver = self.peer_nonce.unwrap_or(NO_NONCE);
        let frame = seal(&self.key, &self.nonce, &receiver, self.send_seq, body)?;
        self.send_seq += 1;
        self.transmits.push_back(frame);
        Ok(())
    }

    /// Queues a fixed-size session frame, which always fits.
    fn queue_internal(&mut self, body: &Body) {
        if let Err(e) = self.queue(body) {
            self.fail(SyncError::Greeting(e));
        }
    }

    fn fail(&mut self, error: SyncError) {
        if self.state == State::Failed {
            return;
        }
        self.state = State::Failed;
        self.timers = TimerTable::default();
        self.transmits.clear();
        self.rx = Vec::new();
        self.events.push_back(Event::Failed(error));
    }

    fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), SyncError> {
        let version = frame[PREFIX_LEN];
        if version != VERSION {
            return Err(SyncError::UnsupportedVersion { version });
        }
        let kind = frame[PREFIX_LEN + 1];
        let mut seq = [0; 8];
        seq.copy_from_slice(&frame[PREFIX_LEN + 2..PREFIX_LEN + HEADER_LEN]);
        let seq = u64::from_be_bytes(seq);
        let (framed, tag) = frame.split_at(frame.len() - TAG_LEN);
        let payload = &framed[PREFIX_LEN + HEADER_LEN..];

        // The sender nonce of a Hello sits at a fixed place in its payload;
        // nothing else is read before the tag checks out.
        let (sender, receiver) = if let Some(peer) = self.peer_nonce {
            (peer, self.nonce)
        } else {
            if kind != KIND_HELLO {
                return Err(SyncError::UnexpectedFrame {
                    got: kind_name(kind),
                    expected: "Hello",
                });
            }
            let mut nonce = NO_NONCE;
            nonce.copy_from_slice(payload.get(..NONCE_LEN).ok_or(SyncError::AuthFailed)?);
            (nonce, NO_NONCE)
        };
        self.key
            .mac(&sender, &receiver, framed)
            .verify_slice(tag)
            .map_err(|_| SyncError::AuthFailed)?;
        if seq != self.recv_seq {
            return Err(SyncError::Sequence {
                expected: self.recv_seq,
                got: seq,
            });
        }
        self.recv_seq += 1;
        let body = decode_body(kind, payload)?;
        self.last_rx = now;
        self.timers.set(Timer::DeadPeer, now + DEAD_PEER_TIMEOUT);

        match (self.state, body) {
            (State::AwaitHello, Body::Hello(hello)) => self.on_hello(hello),
            (State::AwaitConfirm, Body::Confirm) => {
                self.state = State::Paired;
                if let Some(peer) = &self.peer {
                    self.events.push_back(Event::Paired {
                        peer_node: peer.node.clone(),
                        peer_role: peer.role,
                        peer_boot_id: peer.boot_id,
                    });
                }
                self.timers.set(Timer::Heartbeat, now);
                Ok(())
            }
            (State::Paired, Body::Heartbeat { sent_ms }) => {
                self.queue_internal(&Body::HeartbeatAck { sent_ms });
                Ok(())
            }
            (State::Paired, Body::HeartbeatAck { sent_ms }) => {
                if let Some(lag) = self.millis(now).checked_sub(sent_ms) {
                    self.stats.lag_ms = Some(lag);
                }
                Ok(())
            }
            (State::Paired, Body::Message(message)) => {
                self.stats.received += 1;
                self.events.push_back(Event::Received(message));
                Ok(())
            }
            (state, body) => Err(SyncError::UnexpectedFrame {
                got: kind_name(body.kind()),
                expected: match state {
                    State::AwaitHello => "Hello",
                    State::AwaitConfirm => "Confirm",
                    State::Paired | State::Failed => "message or heartbeat",
                },
            }),
        }
    }

    fn on_hello(&mut self, hello: Hello) -> Result<(), SyncError> {
        if hello.nonce == self.nonce {
            return Err(SyncError::SelfConnection);
        }
        if hello.node == self.local.node {
            return Err(SyncError::SameNodeName { node: hello.node });
        }
        if hello.role == self.local.role {
            return Err(SyncError::RoleConflict {
                role: hello.role.as_str(),
            });
        }
        self.peer_nonce = Some(hello.nonce);
        self.peer = Some(hello);
        self.state = State::AwaitConfirm;
        self.queue_internal(&Body::Confirm);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::sync::fixtures::{
        all_bodies, change, drain, entry, events, key, paired, primary, pump, secondary, session,
    };
    use crate::sync::AdminChange;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn every_message_crosses_a_session() {
        let now = Instant::now();
        let (mut a, mut b) = paired(now);
        let messages: Vec<Message> = all_bodies()
            .into_iter()
            .filter_map(|b| match b {
                Body::Message(m) => Some(m),
                _ => None,
            })
            .collect();
        for m in &messages {
            a.send(m.clone()).unwrap();
        }
        pump(&mut a, &mut b, now);
        let got: Vec<Event> = events(&mut b);
        let want: Vec<Event> = messages.into_iter().map(Event::Received).collect();
        assert_eq!(got, want);
        assert_eq!(a.stats().sent, 11);
        assert_eq!(b.stats().received, 11);
    }

    #[test]
    fn handshake_pairs_and_reports_the_peer() {
        let now = Instant::now();
        let (mut a, mut b) = (primary(now), secondary(now));
        assert_eq!(
            a.send(Message::Admin { changes: vec![] }),
            Err(SendError::NotPaired)
        );
        pump(&mut a, &mut b, now);
        assert_eq!(
            events(&mut a),
            vec![Event::Paired {
                peer_node: "lb2".into(),
                peer_role: Role::Secondary,
                peer_boot_id: 7
            }]
        );
        assert_eq!(
            events(&mut b),
            vec![Event::Paired {
                peer_node: "lb1".into(),
                peer_role: Role::Primary,
                peer_boot_id: 7
            }]
        );
    }

    #[test]
    fn a_peer_without_the_key_fails_authentication_and_nothing_is_delivered() {
        let now = Instant::now();
        let mut a = primary(now);
        let other = SyncKey::new(b"another key, also thirty-two bytes long").unwrap();
        let mut b = session("lb2", Role::Secondary, other, 2, now);
        pump(&mut a, &mut b, now);
        assert_eq!(events(&mut a), vec![Event::Failed(SyncError::AuthFailed)]);
        assert_eq!(events(&mut b), vec![Event::Failed(SyncError::AuthFailed)]);
        assert!(!a.is_paired());
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn a_tampered_frame_fails_authentication_and_is_not_delivered() {
        let now = Instant::now();
        let (mut a, mut b) = paired(now);
        a.send(Message::Admin {
            changes: vec![change(1)],
        })
        .unwrap();
        let mut frame = drain(&mut a);
        let last = frame.len() - TAG_LEN - 1;
        frame[last] ^= 1;
        b.handle_bytes(now, &frame);
        assert_eq!(events(&mut b), vec![Event::Failed(SyncError::AuthFailed)]);
        assert_eq!(b.stats().received, 0);
        // The session stays dead.
        a.send(Message::Admin { changes: vec![] }).unwrap();
        b.handle_bytes(now, &drain(&mut a));
        assert_eq!(events(&mut b), vec![]);
    }

    #[test]
    fn a_recorded_session_replayed_into_a_new_one_is_refused() {
        let now = Instant::now();
        let (mut a, mut b) = (primary(now), secondary(now));
        let mut recording = pump(&mut a, &mut b, now);
        b.send(Message::Admin {
            changes: vec![change(2)],
        })
        .unwrap();
        recording.extend(pump(&mut a, &mut b, now));
        assert_eq!(events(&mut a).len(), 2);

        // Same node restarts the connection with a fresh nonce; the attacker
        // plays back everything b sent.
        let mut fresh = session("lb1", Role::Primary, key(), 3, now);
        fresh.handle_bytes(now, &recording);
        assert_eq!(
            events(&mut fresh),
            vec![Event::Failed(SyncError::AuthFailed)]
        );
        assert_eq!(fresh.stats().received, 0);

        // Even the same nonce would not help a reflected stream: a's own
        // frames are refused by a.
        let mut mirror = session("lb1", Role::Primary, key(), 1, now);
        recording = drain(&mut primary(now));
        mirror.handle_bytes(now, &recording);
        assert_eq!(
            events(&mut mirror),
            vec![Event::Failed(SyncError::SelfConnection)]
        );
    }

    #[test]
    fn a_frame_replayed_within_a_session_is_refused() {
        let now = Instant::now();
        let (mut a, mut b) = paired(now);
        b.send(Message::Admin {
            changes: vec![change(2)],
        })
        .unwrap();
        let frame = drain(&mut b);
        a.handle_bytes(now, &frame);
        a.handle_bytes(now, &frame);
        let got = events(&mut a);
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Event::Received(_)));
        assert!(matches!(
            got[1],
            Event::Failed(SyncError::Sequence { expected, got }) if got + 1 == expected
        ));
    }

    #[test]
    fn a_sequence_number_going_backwards_is_refused() {
        let now = Instant::now();
        let (mut a, mut b) = paired(now);
        b.send(Message::Admin { changes: vec![] }).unwrap();
        b.send(Message::Admin { changes: vec![] }).unwrap();
        a.handle_bytes(now, &drain(&mut b));
        assert_eq!(a.stats().received, 2);
        b.send_seq -= 2;
        b.send(Message::Admin {
            changes: vec![change(1)],
        })
        .unwrap();
        a.handle_bytes(now, &drain(&mut b));
        let got = events(&mut a);
        assert_eq!(
            got.last(),
            Some(&Event::Failed(SyncError::Sequence {
                expected: 4,
                got: 2
            }))
        );
        assert_eq!(a.stats().received, 2);
    }

    #[test]
    fn an_oversize_length_prefix_is_refused_before_reading_on() {
        let now = Instant::now();
        let mut a = primary(now);
        a.handle_bytes(now, &[0xff, 0xff]);
        assert_eq!(events(&mut a), vec![]);
        a.handle_bytes(now, &[0xff, 0xff]);
        assert_eq!(
            events(&mut a),
            vec![Event::Failed(SyncError::FrameTooLarge {
                len: u64::from(u32::MAX) + 4
            })]
        );

        // The largest legal prefix waits for the rest without reserving room
        // for it; one more byte is refused.
        let mut b = primary(now);
        let max = u32::try_from(MAX_FRAME - PREFIX_LEN).unwrap();
        b.handle_bytes(now, &max.to_be_bytes());
        assert_eq!(events(&mut b), vec![]);
        assert!(b.rx.capacity() < 1024);
        let mut c = primary(now);
        c.handle_bytes(now, &(max + 1).to_be_bytes());
        assert!(matches!(
            events(&mut c)[..],
            [Event::Failed(SyncError::FrameTooLarge { .. })]
        ));
        let mut d = primary(now);
        d.handle_bytes(now, &[0, 0, 0, 41]);
        assert!(matches!(
            events(&mut d)[..],
            [Event::Failed(SyncError::FrameTooShort { len: 45 })]
        ));
    }

    #[test]
    fn too_large_messages_are_refused_and_the_session_goes_on() {
        let now = Instant::now();
        let (mut a, mut b) = paired(now);
        let huge = Message::Config {
            version: 1,
            yaml: "x".repeat(MAX_FRAME),
            admin: vec![],
        };
        assert!(matches!(a.send(huge), Err(SendError::TooLarge { .. })));
        let long = Message::Admin {
            changes: vec![AdminChange {
                service: "s".repeat(70_000),
                ..change(1)
            }],
        };
        assert!(matches!(a.send(long), Err(SendError::FieldTooLong { .. })));
        a.send(Message::Admin { changes: vec![] }).unwrap();
        pump(&mut a, &mut b, now);
        assert_eq!(
            events(&mut b),
            vec![Event::Received(Message::Admin { changes: vec![] })]
        );
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let now = Instant::now();
        let (mut a, mut b) = (primary(now), secondary(now));
        let mut rng = StdRng::seed_from_u64(7);
        let mut deliver = |to: &mut SyncSession, bytes: Vec<u8>| {
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let n = rng.random_range(1..=rest.len().min(9));
                to.handle_bytes(now, &rest[..n]);
                rest = &rest[n..];
            }
        };
        for _ in 0..3 {
            let ab = drain(&mut a);
            let ba = drain(&mut b);
            deliver(&mut b, ab);
            deliver(&mut a, ba);
        }
        assert!(a.is_paired() && b.is_paired());
        a.send(Message::Sessions {
            entries: (0..50).map(entry).collect(),
            snapshot: None,
        })
        .unwrap();
        a.send(Message::Admin {
            changes: vec![change(4)],
        })
        .unwrap();
        let bytes = drain(&mut a);
        for byte in &bytes {
            b.handle_bytes(now, std::slice::from_ref(byte));
        }
        let got = events(&mut b);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[2],
            Event::Received(Message::Admin {
                changes: vec![change(4)]
            })
        );
        assert!(b.rx.is_empty());
    }

    #[test]
    fn heartbeats_measure_the_lag() {
        let t0 = Instant::now();
        let (mut a, mut b) = paired(t0);
        // A heartbeat is due at pairing, then every second.
        assert_eq!(a.poll_timeout(), Some(t0));
        a.handle_timeout(t0);
        assert_eq!(a.poll_timeout(), Some(t0 + HEARTBEAT_INTERVAL));
        b.handle_bytes(t0 + ms(10), &drain(&mut a));
        a.handle_bytes(t0 + ms(30), &drain(&mut b));
        assert_eq!(a.stats().lag_ms, Some(30));
        a.handle_timeout(t0 + ms(999));
        assert!(a.poll_transmit().is_none());
        a.handle_timeout(t0 + ms(1000));
        assert!(a.poll_transmit().is_some());
        assert_eq!(events(&mut a), vec![]);
    }

    #[test]
    fn a_silent_peer_is_declared_dead() {
        let t0 = Instant::now();
        let (mut a, mut b) = paired(t0);
        // b answers for a while, keeping a alive past the first timeout.
        let mut now = t0;
        for _ in 0..8 {
            now += HEARTBEAT_INTERVAL;
            a.handle_timeout(now);
            b.handle_timeout(now);
            pump(&mut a, &mut b, now);
        }
        assert!(a.is_paired());
        assert_eq!(events(&mut a), vec![]);
        let last_heard = now;
        // Then b goes silent.
        while a
            .poll_timeout()
            .is_some_and(|t| t < last_heard + DEAD_PEER_TIMEOUT)
        {
            let t = a.poll_timeout().unwrap();
            a.handle_timeout(t);
            drain(&mut a);
            assert_eq!(events(&mut a), vec![]);
        }
        assert_eq!(a.poll_timeout(), Some(last_heard + DEAD_PEER_TIMEOUT));
        a.handle_timeout(last_heard + DEAD_PEER_TIMEOUT);
        assert_eq!(
            events(&mut a),
            vec![Event::Failed(SyncError::Timeout { silent_ms: 5000 })]
        );
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn a_handshake_that_never_completes_times_out() {
        let t0 = Instant::now();
        let mut a = primary(t0);
        assert_eq!(a.poll_timeout(), Some(t0 + DEAD_PEER_TIMEOUT));
        a.handle_timeout(t0 + DEAD_PEER_TIMEOUT);
        assert_eq!(
            events(&mut a),
            vec![Event::Failed(SyncError::Timeout { silent_ms: 5000 })]
        );
    }

    #[test]
    fn misconfigured_pairs_are_refused() {
        let now = Instant::now();
        let mut a = primary(now);
        let mut b = session("lb2", Role::Primary, key(), 2, now);
        pump(&mut a, &mut b, now);
        assert_eq!(
            events(&mut a),
            vec![Event::Failed(SyncError::RoleConflict { role: "primary" })]
        );
        let mut a = primary(now);
        let mut b = session("lb1", Role::Secondary, key(), 2, now);
        pump(&mut a, &mut b, now);
        assert!(matches!(
            events(&mut a)[..],
            [Event::Failed(SyncError::SameNodeName { .. })]
        ));
    }
}
