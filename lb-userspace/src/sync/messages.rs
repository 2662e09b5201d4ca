//! The messages the daemon exchanges with its peer over `cluster.sync`, and the
//! codec of frame payloads: integers big-endian, strings a length (u16, or u32
//! for the configuration text) and UTF-8 bytes, lists a u32 count and their
//! elements, options a 0/1 byte then the value. Decoding is total and its
//! allocations are bounded by the payload's length.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::session::SendError;
use super::{conn_stream::TrackedConnection, stream::PassOutcome, Nonce};
use crate::config::Role;

/// Budget of encoded entries per `Sessions` message built by [`session_batches`].
pub const SESSION_BATCH_BYTES: usize = 256 * 1024;

pub(super) const KIND_HELLO: u8 = 1;
const KIND_CONFIRM: u8 = 2;
pub(super) const KIND_HEARTBEAT: u8 = 3;
const KIND_HEARTBEAT_ACK: u8 = 4;
const KIND_CONFIG: u8 = 16;
const KIND_ADMIN: u8 = 17;
const KIND_SESSIONS: u8 = 18;
const KIND_APPLIED: u8 = 19;
const KIND_PASS: u8 = 20;
const KIND_CONNECTIONS: u8 = 21;

/// Smallest encodings of list elements, to bound counts by the bytes left.
const MIN_ADMIN_CHANGE_LEN: usize = 2 + 2 + 1 + 1 + 1 + 8 + 8 + 2;
const MIN_SESSION_ENTRY_LEN: usize = 2 + 4 + 4 + 4;
/// Encoded size of a session entry apart from its service name.
const SESSION_ENTRY_FIXED_LEN: usize = MIN_SESSION_ENTRY_LEN;
/// Encoded size of a tracked connection apart from its service name.
pub(super) const CONNECTION_FIXED_LEN: usize = 2 + 1 + 4 * 6 + 1 + 4;

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
    /// Admin-state changes, in both directions; the latest (by `seq`, then
    /// `origin`) wins.
    Admin {
        /// The changes.
        changes: Vec<AdminChange>,
    },
    /// The secondary's answer to a [`Message::Config`]: applied (and kept),
    /// or not, and why.
    Applied {
        /// The configuration's version.
        version: u64,
        /// Why it could not be applied; `None`: applied.
        error: Option<String>,
    },
    /// The session stream's progress. From the master: every entry of
    /// stream pass `pass` has been sent before this message. From the backup:
    /// every entry up to pass `pass` is installed here (the master resumes
    /// from there after a reconnection instead of sending everything again).
    Pass {
        /// The master's pass number (from 1, per pairing of the same nodes).
        pass: u64,
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
    /// Tracked NAT and SNAT connections, from the master (see
    /// [`crate::sync::ConnStream`]): the backup installs them, so that a
    /// failover keeps every connection.
    Connections {
        /// The connections.
        entries: Vec<TrackedConnection>,
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
    /// Unix time of the change in milliseconds (for people; never compared).
    pub changed_ms: u64,
    /// The change's hybrid-logical-clock stamp: the later change wins.
    pub seq: u64,
    /// The node that made it (the tie-break between equal counters).
    pub origin: String,
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

/// One pass of the master's session stream as messages: its entries in
/// batches (the first marked `Begin` when the stream starts over, with the
/// table's `total` live entries), `End` when the pass caught up, then the
/// `Pass` mark the peer confirms. A pass with nothing to say is no message.
#[must_use]
pub fn stream_messages(
    entries: Vec<SessionEntry>,
    outcome: &PassOutcome,
    total: u64,
) -> Vec<Message> {
    if entries.is_empty() && !outcome.begin && !outcome.end {
        return Vec::new();
    }
    let mut messages = session_batches(entries, false);
    if outcome.begin {
        match messages.first_mut() {
            Some(Message::Sessions { snapshot, .. }) => {
                *snapshot = Some(SnapshotMark::Begin { total });
            }
            _ => messages.push(Message::Sessions {
                entries: Vec::new(),
                snapshot: Some(SnapshotMark::Begin { total }),
            }),
        }
    }
    if outcome.end {
        messages.push(Message::Sessions {
            entries: Vec::new(),
            snapshot: Some(SnapshotMark::End),
        });
    }
    messages.push(Message::Pass { pass: outcome.pass });
    messages
}

/// Frame bodies: the daemon's messages and the session's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Body {
    Hello(Hello),
    Confirm,
    Heartbeat { sent_ms: u64 },
    HeartbeatAck { sent_ms: u64 },
    Message(Message),
}

/// First frame each way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hello {
    pub(super) nonce: Nonce,
    pub(super) node: String,
    pub(super) role: Role,
    pub(super) boot_id: u64,
}

impl Body {
    pub(super) fn kind(&self) -> u8 {
        match self {
            Body::Hello(_) => KIND_HELLO,
            Body::Confirm => KIND_CONFIRM,
            Body::Heartbeat { .. } => KIND_HEARTBEAT,
            Body::HeartbeatAck { .. } => KIND_HEARTBEAT_ACK,
            Body::Message(Message::Config { .. }) => KIND_CONFIG,
            Body::Message(Message::Admin { .. }) => KIND_ADMIN,
            Body::Message(Message::Sessions { .. }) => KIND_SESSIONS,
            Body::Message(Message::Applied { .. }) => KIND_APPLIED,
            Body::Message(Message::Pass { .. }) => KIND_PASS,
            Body::Message(Message::Connections { .. }) => KIND_CONNECTIONS,
        }
    }
}

pub(super) fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_HELLO => "Hello",
        KIND_CONFIRM => "Confirm",
        KIND_HEARTBEAT => "Heartbeat",
        KIND_HEARTBEAT_ACK => "HeartbeatAck",
        KIND_CONFIG => "Config",
        KIND_ADMIN => "Admin",
        KIND_SESSIONS => "Sessions",
        KIND_APPLIED => "Applied",
        KIND_PASS => "Pass",
        KIND_CONNECTIONS => "Connections",
        _ => "unknown",
    }
}

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

#[derive(Default)]
pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    pub(super) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    pub(super) fn u64(&mut self, v: u64) {
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
            self.u64(c.seq);
            self.str16("node name", &c.origin)?;
        }
        Ok(())
    }
}

pub(super) fn encode_payload(w: &mut Writer, body: &Body) -> Result<(), SendError> {
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
        Body::Message(Message::Applied { version, error }) => {
            w.u64(*version);
            match error {
                None => w.u8(0),
                Some(error) => {
                    w.u8(1);
                    w.str16("apply error", error)?;
                }
            }
        }
        Body::Message(Message::Pass { pass }) => w.u64(*pass),
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
        Body::Message(Message::Connections { entries }) => {
            w.count("connection list", entries.len())?;
            for e in entries {
                w.str16("service name", &e.service)?;
                w.u8(e.protocol);
                for address in [e.client, e.vip, e.source, e.server] {
                    w.0.extend_from_slice(&address.ip().octets());
                    w.u16(address.port());
                }
                w.u8(e.state);
                w.u32(e.age_ms);
            }
        }
    }
    Ok(())
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
                seq: self.u64()?,
                origin: self.str16()?,
            });
        }
        Ok(changes)
    }

    fn socket_address(&mut self) -> Result<SocketAddrV4, DecodeError> {
        let ip = Ipv4Addr::from(self.array::<4>()?);
        Ok(SocketAddrV4::new(ip, self.u16()?))
    }

    fn connection(&mut self) -> Result<TrackedConnection, DecodeError> {
        let service = self.str16()?;
        let protocol = match self.u8()? {
            value @ (6 | 17) => value,
            value => {
                return Err(DecodeError::BadValue {
                    field: "connection protocol",
                    value,
                })
            }
        };
        let client = self.socket_address()?;
        let vip = self.socket_address()?;
        let source = self.socket_address()?;
        let server = self.socket_address()?;
        let state = match self.u8()? {
            value if value <= lb_common::nat::CONN_UDP => value,
            value => {
                return Err(DecodeError::BadValue {
                    field: "connection state",
                    value,
                })
            }
        };
        Ok(TrackedConnection {
            service,
            protocol,
            client,
            vip,
            source,
            server,
            state,
            age_ms: self.u32()?,
        })
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
pub(super) fn decode_body(kind: u8, payload: &[u8]) -> Result<Body, DecodeError> {
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
        KIND_APPLIED => {
            let version = r.u64()?;
            let error = if r.flag("apply error presence")? {
                Some(r.str16()?)
            } else {
                None
            };
            Body::Message(Message::Applied { version, error })
        }
        KIND_PASS => Body::Message(Message::Pass { pass: r.u64()? }),
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
        KIND_CONNECTIONS => {
            let n = r.count(CONNECTION_FIXED_LEN)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(r.connection()?);
            }
            Body::Message(Message::Connections { entries })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    r.finish()?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hmac::Mac;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::sync::fixtures::{
        all_bodies, drain, entry, events, key, payload_of, primary, secondary,
    };
    use crate::sync::wire::{seal, PREFIX_LEN, TAG_LEN};
    use crate::sync::{Event, NONCE_LEN, NO_NONCE, VERSION};

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
}
