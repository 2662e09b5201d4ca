//! `cluster.sync`: the authenticated replication channel between the two nodes
//! of an HA pair. The primary sends its configuration (`services`, `defaults`)
//! and admin changes; both nodes send admin changes and affinity entries.
//!
//! Two layers:
//!
//! - [`SyncSession`], a sans-IO session over one byte stream: feed it bytes
//!   with [`SyncSession::handle_bytes`] and the clock with
//!   [`SyncSession::handle_timeout`], hand it [`Message`]s with
//!   [`SyncSession::send`], and drain [`SyncSession::poll_transmit`] (bytes
//!   to write) and [`SyncSession::poll_event`]. It never reads the clock,
//!   touches a socket or draws random numbers (the session nonce is an input).
//! - [`run`], the thin tokio edge: one TCP connection to the peer at a time,
//!   re-established with bounded backoff, exchanging [`Message`]s and
//!   [`LinkEvent`]s with the daemon over mpsc channels.
//!
//! # Wire format
//!
//! Every frame is `length (u32 BE) | version (u8) | kind (u8) | seq (u64 BE) |
//! payload | tag (32 bytes)`, where `length` counts everything after itself
//! and a whole frame is at most [`MAX_FRAME`] bytes; the length is checked
//! before anything else is read. Integers are big-endian, strings are a
//! length (u16, or u32 for the configuration text) and UTF-8 bytes, lists a
//! u32 count and their elements, options a 0/1 byte then the value.
//!
//! The tag is HMAC-SHA256 (RFC 2104, SHA-256 from RFC 6234) with the shared
//! key over `"lbd cluster.sync v1" | sender nonce | receiver nonce | frame
//! without tag`, compared in constant time.
//!
//! # Handshake and replay protection
//!
//! Each side draws a random 16-byte nonce per connection and sends it first,
//! in a `Hello` (sequence number 0) whose tag covers an all-zero receiver
//! nonce, since the peer's is not known yet. On a valid `Hello` a side answers
//! `Confirm` (sequence 1), whose tag, like every later frame's, covers both
//! nonces. A side is paired when the peer's `Confirm` checks out: the peer has
//! the key and has seen this connection's fresh nonce, so a recorded
//! connection cannot be replayed into a new one, and nothing a replayed
//! `Hello` says is acted upon. Within a connection each direction's sequence
//! numbers must go up by exactly one per frame, so a frame replayed, dropped
//! or reordered inside a connection is refused. A frame reflected back to its
//! sender fails because the nonce order differs. No traffic is encrypted:
//! the channel is authenticated, not confidential.
//!
//! After pairing, each side sends a heartbeat every [`HEARTBEAT_INTERVAL`];
//! the peer echoes it, which measures the round trip including anything queued
//! ahead of it (the replication lag). A side that hears nothing for
//! [`DEAD_PEER_TIMEOUT`] (handshake included) fails the session.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::config::Role;

/// Version of the sync protocol carried in every frame header.
pub const VERSION: u8 = 1;
/// Largest frame, length prefix and tag included (4 MiB).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Shortest shared key accepted.
pub const MIN_KEY_LEN: usize = 32;
/// Length of the per-connection random nonce.
pub const NONCE_LEN: usize = 16;
/// How often a paired session sends a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a session waits for any valid frame before giving up on the peer.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Budget of encoded entries per `Sessions` message built by [`session_batches`].
pub const SESSION_BATCH_BYTES: usize = 256 * 1024;

/// Receive buffer capacity kept between frames; more is released once drained.
const RX_KEEP: usize = 1024 * 1024;
const PREFIX_LEN: usize = 4;
const HEADER_LEN: usize = 10;
const TAG_LEN: usize = 32;
const MAC_DOMAIN: &[u8] = b"lbd cluster.sync v1";
/// Receiver nonce a `Hello`'s tag covers: the peer's is not known yet.
const NO_NONCE: Nonce = [0; NONCE_LEN];

const KIND_HELLO: u8 = 1;
const KIND_CONFIRM: u8 = 2;
const KIND_HEARTBEAT: u8 = 3;
const KIND_HEARTBEAT_ACK: u8 = 4;
const KIND_CONFIG: u8 = 16;
const KIND_ADMIN: u8 = 17;
const KIND_SESSIONS: u8 = 18;

/// Smallest encodings of list elements, to bound counts by the bytes left.
const MIN_ADMIN_CHANGE_LEN: usize = 2 + 2 + 1 + 1 + 1 + 8;
const MIN_SESSION_ENTRY_LEN: usize = 2 + 4 + 4 + 4;
/// Encoded size of a session entry apart from its service name.
const SESSION_ENTRY_FIXED_LEN: usize = MIN_SESSION_ENTRY_LEN;

/// A per-connection random value, the anchor of replay protection.
pub type Nonce = [u8; NONCE_LEN];

// ===== messages =====

/// What the daemon exchanges with its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The primary's whole configuration, sent on pairing and on every change.
    Config {
        /// Increases with every configuration the primary applies.
        version: u64,
        /// The configuration text; the receiver uses its `services` and
        /// `defaults` and keeps its own `node` and `cluster` sections.
        yaml: String,
        /// The primary's admin changes.
        admin: Vec<AdminChange>,
    },
    /// Admin-state changes, in both directions; the latest `changed_ms` wins.
    Admin {
        /// The changes.
        changes: Vec<AdminChange>,
    },
    /// Affinity entries. A full snapshot (sent on every (re)connection) is a
    /// run of these from one marked `Begin` to one marked `End`; a receiver
    /// applies a message's entries before acting on its mark.
    Sessions {
        /// The entries.
        entries: Vec<SessionEntry>,
        /// Snapshot boundary, if this message starts or ends one.
        snapshot: Option<SnapshotMark>,
    },
}

/// One server's admin change, by names (indexes differ between nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminChange {
    /// Service name.
    pub service: String,
    /// Real-server name within the service.
    pub server: String,
    /// State set with lbctl (`online`, `drain`, `halt`), if any.
    pub state: Option<String>,
    /// Weight set with lbctl, if any.
    pub weight: Option<u16>,
    /// The file's weight when the lbctl weight was set.
    pub file_weight: Option<u16>,
    /// Unix time of the change in milliseconds.
    pub changed_ms: u64,
}

/// One affinity entry: service by name and server by address, because ids
/// differ between nodes, and an age, because clocks differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    /// Service name.
    pub service: String,
    /// Client address, already masked by the service's persistence netmask.
    pub client: Ipv4Addr,
    /// The real server's address.
    pub server_address: Ipv4Addr,
    /// Milliseconds since the client was last seen.
    pub age_ms: u32,
}

/// Boundary of a full affinity snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMark {
    /// First message of a snapshot of `total` entries.
    Begin {
        /// Entries in the whole snapshot.
        total: u64,
    },
    /// Last message of the snapshot.
    End,
}

/// Splits affinity entries into [`Message::Sessions`] of at most
/// [`SESSION_BATCH_BYTES`] of entries each. With `snapshot`, the first message
/// is marked `Begin` and an empty message marked `End` follows the last one.
#[must_use]
pub fn session_batches(entries: Vec<SessionEntry>, snapshot: bool) -> Vec<Message> {
    let total = entries.len() as u64;
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let len = SESSION_ENTRY_FIXED_LEN + entry.service.len();
        if !batch.is_empty() && bytes + len > SESSION_BATCH_BYTES {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += len;
        batch.push(entry);
    }
    if !batch.is_empty() || (snapshot && batches.is_empty()) {
        batches.push(batch);
    }
    let mut messages: Vec<Message> = batches
        .into_iter()
        .enumerate()
        .map(|(i, entries)| Message::Sessions {
            entries,
            snapshot: (snapshot && i == 0).then_some(SnapshotMark::Begin { total }),
        })
        .collect();
    if snapshot {
        messages.push(Message::Sessions {
            entries: Vec::new(),
            snapshot: Some(SnapshotMark::End),
        });
    }
    messages
}

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

/// Frame bodies: the daemon's messages and the session's own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Hello(Hello),
    Confirm,
    Heartbeat { sent_ms: u64 },
    HeartbeatAck { sent_ms: u64 },
    Message(Message),
}

/// First frame each way.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hello {
    nonce: Nonce,
    node: String,
    role: Role,
    boot_id: u64,
}

impl Body {
    fn kind(&self) -> u8 {
        match self {
            Body::Hello(_) => KIND_HELLO,
            Body::Confirm => KIND_CONFIRM,
            Body::Heartbeat { .. } => KIND_HEARTBEAT,
            Body::HeartbeatAck { .. } => KIND_HEARTBEAT_ACK,
            Body::Message(Message::Config { .. }) => KIND_CONFIG,
            Body::Message(Message::Admin { .. }) => KIND_ADMIN,
            Body::Message(Message::Sessions { .. }) => KIND_SESSIONS,
        }
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_HELLO => "Hello",
        KIND_CONFIRM => "Confirm",
        KIND_HEARTBEAT => "Heartbeat",
        KIND_HEARTBEAT_ACK => "HeartbeatAck",
        KIND_CONFIG => "Config",
        KIND_ADMIN => "Admin",
        KIND_SESSIONS => "Sessions",
        _ => "unknown",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Secondary => "secondary",
    }
}

// ===== errors =====

/// Why a frame's payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ends inside a field.
    #[error("payload truncated")]
    Truncated,
    /// The payload goes on after its last field.
    #[error("{0} bytes after the last field")]
    TrailingBytes(usize),
    /// A string is not UTF-8.
    #[error("a string is not UTF-8")]
    BadUtf8,
    /// A list announces more elements than the bytes left can hold.
    #[error("a list announces {0} elements, more than the frame holds")]
    BadCount(u32),
    /// An enumeration or option byte has no meaning.
    #[error("{field} has the undefined value {value}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// The value received.
        value: u8,
    },
    /// The frame kind is unknown.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
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

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Fewer than [`MIN_KEY_LEN`] bytes.
    #[error(
        "the cluster sync key has {len} bytes, at least {MIN_KEY_LEN} are needed: \
         put a longer random secret in cluster.sync.key_file on both nodes"
    )]
    TooShort {
        /// Its length.
        len: usize,
    },
}

// ===== key and tags =====

/// The shared key, ready to compute tags. Cheap to clone; never printed.
#[derive(Clone)]
pub struct SyncKey(Hmac<Sha256>);

impl SyncKey {
    /// Makes a key from the bytes of `cluster.sync.key_file`.
    ///
    /// # Errors
    ///
    /// [`KeyError::TooShort`] under [`MIN_KEY_LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { len: bytes.len() });
        }
        Hmac::new_from_slice(bytes)
            .map(SyncKey)
            .map_err(|_| KeyError::TooShort { len: bytes.len() })
    }

    fn mac(&self, sender: &Nonce, receiver: &Nonce, framed: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(MAC_DOMAIN);
        mac.update(sender);
        mac.update(receiver);
        mac.update(framed);
        mac
    }
}

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SyncKey(..)")
    }
}

// ===== codec =====

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn len_of(field: &'static str, len: usize) -> SendError {
        SendError::FieldTooLong { field, len }
    }

    fn str16(&mut self, field: &'static str, s: &str) -> Result<(), SendError> {
        let len = u16::try_from(s.len()).map_err(|_| Self::len_of(field, s.len()))?;
        self.u16(len);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn str32(&mut self, field: &'static str, s: &str) -> Result<(), SendError> {
        let len = u32::try_from(s.len()).map_err(|_| Self::len_of(field, s.len()))?;
        self.u32(len);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn count(&mut self, field: &'static str, n: usize) -> Result<(), SendError> {
        self.u32(u32::try_from(n).map_err(|_| Self::len_of(field, n))?);
        Ok(())
    }

    fn opt_u16(&mut self, v: Option<u16>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u16(v);
            }
        }
    }

    fn admin(&mut self, changes: &[AdminChange]) -> Result<(), SendError> {
        self.count("admin change list", changes.len())?;
        for c in changes {
            self.str16("service name", &c.service)?;
            self.str16("server name", &c.server)?;
            match &c.state {
                None => self.u8(0),
                Some(state) => {
                    self.u8(1);
                    self.str16("admin state", state)?;
                }
            }
            self.opt_u16(c.weight);
            self.opt_u16(c.file_weight);
            self.u64(c.changed_ms);
        }
        Ok(())
    }
}

fn encode_payload(w: &mut Writer, body: &Body) -> Result<(), SendError> {
    match body {
        Body::Hello(h) => {
            w.0.extend_from_slice(&h.nonce);
            w.u8(match h.role {
                Role::Primary => 1,
                Role::Secondary => 2,
            });
            w.u64(h.boot_id);
            w.str16("node.name", &h.node)?;
        }
        Body::Confirm => {}
        Body::Heartbeat { sent_ms } | Body::HeartbeatAck { sent_ms } => w.u64(*sent_ms),
        Body::Message(Message::Config {
            version,
            yaml,
            admin,
        }) => {
            w.u64(*version);
            w.str32("configuration text", yaml)?;
            w.admin(admin)?;
        }
        Body::Message(Message::Admin { changes }) => w.admin(changes)?,
        Body::Message(Message::Sessions { entries, snapshot }) => {
            match snapshot {
                None => w.u8(0),
                Some(SnapshotMark::Begin { total }) => {
                    w.u8(1);
                    w.u64(*total);
                }
                Some(SnapshotMark::End) => w.u8(2),
            }
            w.count("session list", entries.len())?;
            for e in entries {
                w.str16("service name", &e.service)?;
                w.0.extend_from_slice(&e.client.octets());
                w.0.extend_from_slice(&e.server_address.octets());
                w.u32(e.age_ms);
            }
        }
    }
    Ok(())
}

/// Builds a whole frame: prefix, header, payload, tag.
fn seal(
    key: &SyncKey,
    sender: &Nonce,
    receiver: &Nonce,
    seq: u64,
    body: &Body,
) -> Result<Vec<u8>, SendError> {
    let mut w = Writer::default();
    w.u32(0);
    w.u8(VERSION);
    w.u8(body.kind());
    w.u64(seq);
    encode_payload(&mut w, body)?;
    let len = w.0.len() + TAG_LEN;
    if len > MAX_FRAME {
        return Err(SendError::TooLarge { len });
    }
    let announced = u32::try_from(len - PREFIX_LEN).map_err(|_| SendError::TooLarge { len })?;
    w.0[..PREFIX_LEN].copy_from_slice(&announced.to_be_bytes());
    let tag = key.mac(sender, receiver, &w.0).finalize().into_bytes();
    w.0.extend_from_slice(&tag);
    Ok(w.0)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn string(&mut self, len: usize) -> Result<String, DecodeError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8)
    }

    fn str16(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()?;
        self.string(usize::from(len))
    }

    fn str32(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()?;
        self.string(usize::try_from(len).map_err(|_| DecodeError::Truncated)?)
    }

    /// A list count, refused when the bytes left cannot hold that many elements.
    fn count(&mut self, min_len: usize) -> Result<usize, DecodeError> {
        let n = self.u32()?;
        match usize::try_from(n) {
            Ok(count) if count <= self.0.len() / min_len => Ok(count),
            _ => Err(DecodeError::BadCount(n)),
        }
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::BadValue { field, value }),
        }
    }

    fn opt_u16(&mut self, field: &'static str) -> Result<Option<u16>, DecodeError> {
        if self.flag(field)? {
            Ok(Some(self.u16()?))
        } else {
            Ok(None)
        }
    }

    fn admin(&mut self) -> Result<Vec<AdminChange>, DecodeError> {
        let n = self.count(MIN_ADMIN_CHANGE_LEN)?;
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            let service = self.str16()?;
            let server = self.str16()?;
            let state = if self.flag("admin state presence")? {
                Some(self.str16()?)
            } else {
                None
            };
            changes.push(AdminChange {
                service,
                server,
                state,
                weight: self.opt_u16("weight presence")?,
                file_weight: self.opt_u16("file weight presence")?,
                changed_ms: self.u64()?,
            });
        }
        Ok(changes)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.0.len()))
        }
    }
}

/// Decodes the payload of a frame of `kind`. Total: any input gives a value
/// or an error, and allocations are bounded by the payload's length.
fn decode_body(kind: u8, payload: &[u8]) -> Result<Body, DecodeError> {
    let mut r = Reader(payload);
    let body = match kind {
        KIND_HELLO => {
            let nonce = r.array()?;
            let role = match r.u8()? {
                1 => Role::Primary,
                2 => Role::Secondary,
                value => {
                    return Err(DecodeError::BadValue {
                        field: "role",
                        value,
                    })
                }
            };
            let boot_id = r.u64()?;
            let node = r.str16()?;
            Body::Hello(Hello {
                nonce,
                node,
                role,
                boot_id,
            })
        }
        KIND_CONFIRM => Body::Confirm,
        KIND_HEARTBEAT => Body::Heartbeat { sent_ms: r.u64()? },
        KIND_HEARTBEAT_ACK => Body::HeartbeatAck { sent_ms: r.u64()? },
        KIND_CONFIG => {
            let version = r.u64()?;
            let yaml = r.str32()?;
            let admin = r.admin()?;
            Body::Message(Message::Config {
                version,
                yaml,
                admin,
            })
        }
        KIND_ADMIN => Body::Message(Message::Admin {
            changes: r.admin()?,
        }),
        KIND_SESSIONS => {
            let snapshot = match r.u8()? {
                0 => None,
                1 => Some(SnapshotMark::Begin { total: r.u64()? }),
                2 => Some(SnapshotMark::End),
                value => {
                    return Err(DecodeError::BadValue {
                        field: "snapshot mark",
                        value,
                    })
                }
            };
            let n = r.count(MIN_SESSION_ENTRY_LEN)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(SessionEntry {
                    service: r.str16()?,
                    client: Ipv4Addr::from(r.array::<4>()?),
                    server_address: Ipv4Addr::from(r.array::<4>()?),
                    age_ms: r.u32()?,
                });
            }
            Body::Message(Message::Sessions { entries, snapshot })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    r.finish()?;
    Ok(body)
}

/// Length of the complete frame at the start of `buf`, `None` while it is
/// incomplete. The prefix is judged as soon as its four bytes are in.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, SyncError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let mut announced = [0; PREFIX_LEN];
    announced.copy_from_slice(prefix);
    let total = u64::from(u32::from_be_bytes(announced)) + PREFIX_LEN as u64;
    if total > MAX_FRAME as u64 {
        return Err(SyncError::FrameTooLarge { len: total });
    }
    if total < (PREFIX_LEN + HEADER_LEN + TAG_LEN) as u64 {
        return Err(SyncError::FrameTooShort { len: total });
    }
    let total = usize::try_from(total).map_err(|_| SyncError::FrameTooLarge { len: total })?;
    Ok((buf.len() >= total).then_some(total))
}

// ===== session =====

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
                role: role_name(hello.role),
            });
        }
        self.peer_nonce = Some(hello.nonce);
        self.peer = Some(hello);
        self.state = State::AwaitConfirm;
        self.queue_internal(&Body::Confirm);
        Ok(())
    }
}

// ===== TCP edge =====

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

/// Link state shared with `lbctl ha` and the metrics; written by [`run`] only.
#[derive(Debug)]
pub struct LinkStats {
    connected: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    /// `u64::MAX` while unknown.
    lag_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`LinkStats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatsSnapshot {
    /// Whether a session is paired now.
    pub connected: bool,
    /// Messages sent since the daemon started.
    pub sent: u64,
    /// Messages received since the daemon started.
    pub received: u64,
    /// Latest heartbeat round trip, queueing included.
    pub lag_ms: Option<u64>,
    /// The latest reason a connection failed or ended.
    pub last_error: Option<String>,
}

impl Default for LinkStats {
    fn default() -> Self {
        LinkStats {
            connected: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            lag_ms: AtomicU64::new(u64::MAX),
            last_error: Mutex::new(None),
        }
    }
}

impl LinkStats {
    /// Reads the current values.
    #[must_use]
    pub fn snapshot(&self) -> LinkStatsSnapshot {
        let lag = self.lag_ms.load(Ordering::Relaxed);
        LinkStatsSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            lag_ms: (lag != u64::MAX).then_some(lag),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    fn set_error(&self, reason: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
    }

    fn update(&self, base: (u64, u64), session: SessionStats) {
        self.sent.store(base.0 + session.sent, Ordering::Relaxed);
        self.received
            .store(base.1 + session.received, Ordering::Relaxed);
        if let Some(lag) = session.lag_ms {
            self.lag_ms.store(lag, Ordering::Relaxed);
        }
    }
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
    mut outgoing: mpsc::Receiver<Message>,
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
    link.stats.connected.store(false, Ordering::Relaxed);
    Ok(())
}

/// How one connection ended.
enum Outcome {
    /// The daemon is gone: stop.
    Stop,
    /// The connection is over.
    Ended { paired: bool, reason: String },
    /// The peer connected anew; carry on with that connection.
    Replaced {
        paired: bool,
        reason: String,
        stream: TcpStream,
    },
}

/// Logs a failure at warning level unless it repeats the previous one.
#[derive(Default)]
struct Quiet(Option<String>);

impl Quiet {
    fn warn(&mut self, line: &str) {
        if self.0.as_deref() == Some(line) {
            log::debug!("{line}");
        } else {
            log::warn!("{line}");
            self.0 = Some(line.to_owned());
        }
    }
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
async fn draining<F: Future>(outgoing: &mut mpsc::Receiver<Message>, fut: F) -> Option<F::Output> {
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

    async fn dial_loop(&self, outgoing: &mut mpsc::Receiver<Message>) {
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
                Ok(Ok(stream)) => self.drive(stream, None, outgoing).await,
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

    async fn accept_loop(&self, listener: &TcpListener, outgoing: &mut mpsc::Receiver<Message>) {
        let mut quiet = Quiet::default();
        let mut next = None;
        loop {
            let stream = match next.take() {
                Some(stream) => stream,
                None => match draining(outgoing, self.accept_peer(listener)).await {
                    Some(stream) => stream,
                    None => return,
                },
            };
            let (paired, reason) = match self.drive(stream, Some(listener), outgoing).await {
                Outcome::Stop => return,
                Outcome::Ended { paired, reason } => (paired, reason),
                Outcome::Replaced {
                    paired,
                    reason,
                    stream,
                } => {
                    next = Some(stream);
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
        self.stats.connected.store(false, Ordering::Relaxed);
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
            "sync connection from {from} refused: only the peer {} may connect (cluster.sync.peer)",
            self.peer().ip()
        ));
        false
    }

    /// Waits for a connection from the peer's address.
    async fn accept_peer(&self, listener: &TcpListener) -> TcpStream {
        let mut quiet = Quiet::default();
        loop {
            match listener.accept().await {
                Ok((stream, from)) if self.admits(from, &mut quiet) => return stream,
                Ok(_) => {}
                Err(e) => {
                    quiet.warn(&format!("sync listener {}: {e}", self.config.listen));
                    tokio::time::sleep(BACKOFF_MIN).await;
                }
            }
        }
    }

    /// On the dialing node: closes whatever connects, saying why.
    async fn refuse_incoming(&self, listener: &TcpListener) {
        let mut quiet = Quiet::default();
        loop {
            match listener.accept().await {
                Ok((_, from)) => quiet.warn(&format!(
                    "sync connection from {from} refused: this node has the lower sync address \
                     and dials its peer; on the other node cluster.sync.listen must be {} and \
                     cluster.sync.peer {}",
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
                        role_name(peer_role)
                    );
                    self.stats.connected.store(true, Ordering::Relaxed);
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

    /// Runs one connection until it fails or the daemon goes away.
    async fn drive(
        &self,
        stream: TcpStream,
        listener: Option<&TcpListener>,
        outgoing: &mut mpsc::Receiver<Message>,
    ) -> Outcome {
        let peer = self.peer();
        let ended = |paired, reason: String| Outcome::Ended { paired, reason };
        let (mut session, mut rd, mut wr) = match self.greet(stream).await {
            Ok(greeted) => greeted,
            Err(reason) => return ended(false, reason),
        };
        let mut wbuf: Vec<u8> = Vec::new();
        let mut rbuf = vec![0; READ_CHUNK];
        let mut paired = false;
        let base = {
            let s = self.stats.snapshot();
            (s.sent, s.received)
        };
        let mut quiet = Quiet::default();
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
                    Some(message) if paired => {
                        if let Err(e) = session.send(message) {
                            log::warn!("sync peer {peer}: message not sent: {e}");
                        }
                    }
                    Some(_) => {}
                },
                accepted = accept_on(listener) => match accepted {
                    Ok((stream, from)) if self.admits(from, &mut quiet) => {
                        return Outcome::Replaced {
                            paired,
                            reason: format!("sync peer {peer} connected anew; the old connection is closed"),
                            stream,
                        };
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("sync listener {}: {e}", self.config.listen),
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
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";

    fn key() -> SyncKey {
        SyncKey::new(KEY).unwrap()
    }

    fn local(node: &str, role: Role) -> Local {
        Local {
            node: node.to_owned(),
            role,
            boot_id: 7,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn session(node: &str, role: Role, key: SyncKey, nonce: u8, now: Instant) -> SyncSession {
        SyncSession::new(local(node, role), key, [nonce; NONCE_LEN], now)
    }

    fn primary(now: Instant) -> SyncSession {
        session("lb1", Role::Primary, key(), 1, now)
    }

    fn secondary(now: Instant) -> SyncSession {
        session("lb2", Role::Secondary, key(), 2, now)
    }

    fn drain(s: &mut SyncSession) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(frame) = s.poll_transmit() {
            out.extend(frame);
        }
        out
    }

    fn events(s: &mut SyncSession) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// Delivers bytes both ways until both sides are quiet; returns what
    /// `b` sent to `a` (the recording an attacker could make).
    fn pump(a: &mut SyncSession, b: &mut SyncSession, now: Instant) -> Vec<u8> {
        let mut recorded = Vec::new();
        loop {
            let ab = drain(a);
            let ba = drain(b);
            if ab.is_empty() && ba.is_empty() {
                return recorded;
            }
            b.handle_bytes(now, &ab);
            a.handle_bytes(now, &ba);
            recorded.extend(ba);
        }
    }

    fn paired(now: Instant) -> (SyncSession, SyncSession) {
        let (mut a, mut b) = (primary(now), secondary(now));
        pump(&mut a, &mut b, now);
        assert!(a.is_paired() && b.is_paired());
        events(&mut a);
        events(&mut b);
        (a, b)
    }

    fn change(n: u64) -> AdminChange {
        AdminChange {
            service: "hyperspace".into(),
            server: format!("hs{n}"),
            state: n.is_multiple_of(2).then(|| "drain".into()),
            weight: Some(u16::try_from(n).unwrap()),
            file_weight: n.is_multiple_of(3).then_some(100),
            changed_ms: 1_700_000_000_000 + n,
        }
    }

    fn entry(n: u8) -> SessionEntry {
        SessionEntry {
            service: "hyperspace".into(),
            client: Ipv4Addr::new(10, 0, 0, n),
            server_address: Ipv4Addr::new(198, 18, 0, 21),
            age_ms: u32::from(n) * 1000,
        }
    }

    fn all_bodies() -> Vec<Body> {
        vec![
            Body::Hello(Hello {
                nonce: [9; NONCE_LEN],
                node: "lb1".into(),
                role: Role::Secondary,
                boot_id: u64::MAX,
            }),
            Body::Confirm,
            Body::Heartbeat { sent_ms: 12345 },
            Body::HeartbeatAck { sent_ms: 0 },
            Body::Message(Message::Config {
                version: 3,
                yaml: "services:\n  - name: hyperspace # ünïcode\n".into(),
                admin: vec![change(1), change(2), change(3)],
            }),
            Body::Message(Message::Config {
                version: 0,
                yaml: String::new(),
                admin: vec![],
            }),
            Body::Message(Message::Admin {
                changes: vec![change(6)],
            }),
            Body::Message(Message::Sessions {
                entries: vec![entry(1), entry(2)],
                snapshot: Some(SnapshotMark::Begin { total: 2 }),
            }),
            Body::Message(Message::Sessions {
                entries: vec![],
                snapshot: Some(SnapshotMark::End),
            }),
            Body::Message(Message::Sessions {
                entries: vec![entry(3)],
                snapshot: None,
            }),
        ]
    }

    fn payload_of(body: &Body) -> Vec<u8> {
        let mut w = Writer::default();
        encode_payload(&mut w, body).unwrap();
        w.0
    }

    #[test]
    fn every_kind_round_trips() {
        for body in all_bodies() {
            let payload = payload_of(&body);
            assert_eq!(decode_body(body.kind(), &payload), Ok(body.clone()));
            // Every strict prefix is refused, never misread.
            for cut in 0..payload.len() {
                assert!(
                    decode_body(body.kind(), &payload[..cut]).is_err(),
                    "{body:?} cut at {cut}"
                );
            }
            let mut longer = payload.clone();
            longer.push(0);
            assert_eq!(
                decode_body(body.kind(), &longer),
                Err(DecodeError::TrailingBytes(1))
            );
        }
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
        assert_eq!(a.stats().sent, 6);
        assert_eq!(b.stats().received, 6);
    }

    #[test]
    fn wire_format_is_pinned() {
        let payload = payload_of(&Body::Hello(Hello {
            nonce: [0xaa; NONCE_LEN],
            node: "lb1".into(),
            role: Role::Primary,
            boot_id: 0x0102_0304_0506_0708,
        }));
        let mut want = vec![0xaa; NONCE_LEN];
        want.extend([1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 3, b'l', b'b', b'1']);
        assert_eq!(payload, want);

        let payload = payload_of(&Body::Message(Message::Sessions {
            entries: vec![entry(5)],
            snapshot: Some(SnapshotMark::Begin { total: 1 }),
        }));
        let mut want = vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 10];
        want.extend(b"hyperspace");
        want.extend([10, 0, 0, 5, 198, 18, 0, 21, 0, 0, 0x13, 0x88]);
        assert_eq!(payload, want);

        let frame = seal(
            &key(),
            &[1; 16],
            &[2; 16],
            5,
            &Body::Heartbeat { sent_ms: 1 },
        )
        .unwrap();
        assert_eq!(frame.len(), 4 + 10 + 8 + 32);
        assert_eq!(
            frame[..14],
            [0, 0, 0, 50, VERSION, KIND_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0, 5]
        );
        assert_eq!(frame[14..22], [0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn counts_larger_than_the_payload_are_refused_before_allocating() {
        let mut payload = vec![0];
        payload.extend(u32::MAX.to_be_bytes());
        assert_eq!(
            decode_body(KIND_SESSIONS, &payload),
            Err(DecodeError::BadCount(u32::MAX))
        );
        assert_eq!(
            decode_body(KIND_ADMIN, &1000u32.to_be_bytes()),
            Err(DecodeError::BadCount(1000))
        );
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

    #[test]
    fn session_batches_bracket_a_snapshot() {
        let many: Vec<SessionEntry> = (0..30_000u32)
            .map(|n| SessionEntry {
                client: Ipv4Addr::from(n),
                ..entry(0)
            })
            .collect();
        let batches = session_batches(many.clone(), true);
        assert!(batches.len() > 2);
        let mut seen = Vec::new();
        for (i, m) in batches.iter().enumerate() {
            let Message::Sessions { entries, snapshot } = m else {
                panic!("not sessions")
            };
            let want = match i {
                0 => Some(SnapshotMark::Begin { total: 30_000 }),
                i if i == batches.len() - 1 => Some(SnapshotMark::End),
                _ => None,
            };
            assert_eq!(*snapshot, want);
            let bytes: usize = entries.iter().map(|e| 14 + e.service.len()).sum();
            assert!(bytes <= SESSION_BATCH_BYTES);
            seen.extend(entries.iter().cloned());
            assert!(seal(&key(), &[0; 16], &[0; 16], 0, &Body::Message(m.clone())).is_ok());
        }
        assert_eq!(seen, many);
        assert_eq!(
            session_batches(vec![], true),
            vec![
                Message::Sessions {
                    entries: vec![],
                    snapshot: Some(SnapshotMark::Begin { total: 0 })
                },
                Message::Sessions {
                    entries: vec![],
                    snapshot: Some(SnapshotMark::End)
                },
            ]
        );
        assert_eq!(session_batches(vec![], false), vec![]);
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            SyncKey::new(&[1; 31]).err(),
            Some(KeyError::TooShort { len: 31 })
        );
        assert!(SyncKey::new(&[1; 32]).is_ok());
        assert_eq!(format!("{:?}", key()), "SyncKey(..)");
    }

    /// Mutates `frame` in one of several ways.
    fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>) {
        if frame.is_empty() {
            frame.push(rng.random());
            return;
        }
        match rng.random_range(0..6) {
            0 => {
                let i = rng.random_range(0..frame.len());
                frame[i] ^= 1 << rng.random_range(0..8);
            }
            1 => frame.truncate(rng.random_range(0..frame.len())),
            2 => {
                let i = rng.random_range(0..frame.len());
                frame.insert(i, rng.random());
            }
            3 => {
                let i = rng.random_range(0..frame.len());
                frame.remove(i);
            }
            4 => {
                let n = rng.random_range(0..4).min(frame.len());
                for b in &mut frame[..n] {
                    *b = rng.random();
                }
            }
            _ => {
                let len = rng.random_range(0..64);
                let mut junk = vec![0; len];
                rng.fill(&mut junk[..]);
                frame.extend(junk);
            }
        }
    }

    #[test]
    fn fuzz_decoding_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let now = Instant::now();
        let payloads: Vec<(u8, Vec<u8>)> = all_bodies()
            .iter()
            .map(|b| (b.kind(), payload_of(b)))
            .collect();
        let kinds = [0, 1, 2, 3, 4, 5, 16, 17, 18, 19, 255];
        for round in 0..100_000u32 {
            // The payload decoder, on mutated and on random payloads.
            let (kind, mut payload) = payloads[rng.random_range(0..payloads.len())].clone();
            if payload.is_empty() || round % 4 == 0 {
                payload = vec![0; rng.random_range(0..48)];
                rng.fill(&mut payload[..]);
            } else {
                for _ in 0..rng.random_range(1..4) {
                    mutate(&mut rng, &mut payload);
                }
            }
            let kind = if rng.random_bool(0.9) {
                kind
            } else {
                kinds[rng.random_range(0..kinds.len())]
            };
            let _ = decode_body(kind, &payload);

            // A whole session fed a mutated, or validly tagged but garbled,
            // stream: it must fail or carry on, never panic.
            let mut a = secondary(now);
            let mut stream = if round % 4 < 2 {
                let mut w = Writer::default();
                w.u32(0);
                w.u8(VERSION);
                w.u8(KIND_HELLO);
                w.u64(0);
                w.0.extend_from_slice(&[1; NONCE_LEN]);
                w.0.extend_from_slice(&payload);
                let len = u32::try_from(w.0.len() + TAG_LEN - PREFIX_LEN).unwrap();
                w.0[..4].copy_from_slice(&len.to_be_bytes());
                let tag = key()
                    .mac(&[1; NONCE_LEN], &NO_NONCE, &w.0)
                    .finalize()
                    .into_bytes();
                w.0.extend_from_slice(&tag);
                w.0
            } else {
                let mut b = primary(now);
                drain(&mut b)
            };
            if round % 4 != 0 {
                mutate(&mut rng, &mut stream);
            }
            let split = rng.random_range(0..=stream.len());
            a.handle_bytes(now, &stream[..split]);
            a.handle_bytes(now, &stream[split..]);
            for e in events(&mut a) {
                assert!(!matches!(e, Event::Received(_)), "{e:?}");
            }
        }
    }

    // ----- TCP edge, on loopback -----

    struct Node {
        out: mpsc::Sender<Message>,
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
        let (out, out_rx) = mpsc::channel(16);
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

    async fn next_event(node: &mut Node) -> LinkEvent {
        tokio::time::timeout(Duration::from_secs(10), node.events.recv())
            .await
            .expect("no link event within 10 s")
            .expect("link stopped")
    }

    #[tokio::test]
    async fn two_edges_pair_and_replicate_over_loopback() {
        let lo = Ipv4Addr::LOCALHOST;
        let ((la, a_addr), (lb, b_addr)) = (listener(lo).await, listener(lo).await);
        let mut a = start(la, a_addr, b_addr, key(), local("lb1", Role::Primary));
        let mut b = start(lb, b_addr, a_addr, key(), local("lb2", Role::Secondary));

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
        a.out.send(config.clone()).await.unwrap();
        assert_eq!(next_event(&mut b).await, LinkEvent::Message(config));

        let snapshot = session_batches((0..100).map(entry).collect(), true);
        for m in &snapshot {
            b.out.send(m.clone()).await.unwrap();
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
