//! `cluster.sync`: the authenticated replication channel between the two nodes
//! of an HA pair. The primary sends its configuration (`services`, `defaults`)
//! and admin changes; both nodes send admin changes and affinity entries; the
//! master sends the NAT and SNAT connections it tracks.
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
//!   re-established with bounded backoff, taking [`Message`]s from an
//!   [`Outbox`] (configuration and admin changes ahead of sessions) and
//!   giving [`LinkEvent`]s to the daemon over an mpsc channel.
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

use std::time::Duration;

mod conn_stream;
mod link;
mod link_stats;
mod messages;
mod outbox;
mod quiet;
mod session;
mod stream;
mod wire;

pub use conn_stream::{connection_batches, ConnStream, TrackedConnection, CONN_REFRESH_NS};
pub use link::{run, LinkConfig, LinkError, LinkEvent};
pub use link_stats::{LinkStats, LinkStatsSnapshot};
pub use messages::{
    session_batches, stream_messages, AdminChange, DecodeError, Message, SessionEntry,
    SnapshotMark, SESSION_BATCH_BYTES,
};
pub use outbox::{outbox, Outbox, OutboxReceiver, SessionsDropped, SESSION_QUEUE_BYTES};
pub use session::{Event, Local, SendError, SessionStats, SyncError, SyncSession};
pub use stream::{pass_over, PassOutcome, PassPlan, StreamTracker};
pub use wire::{KeyError, SyncKey, MIN_KEY_LEN};

/// Version of the sync protocol carried in every frame header.
pub const VERSION: u8 = 3;
/// Largest frame, length prefix and tag included (4 MiB).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Length of the per-connection random nonce.
pub const NONCE_LEN: usize = 16;
/// How often a paired session sends a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a session waits for any valid frame before giving up on the peer.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Receiver nonce a `Hello`'s tag covers: the peer's is not known yet.
const NO_NONCE: Nonce = [0; NONCE_LEN];

/// A per-connection random value, the anchor of replay protection.
pub type Nonce = [u8; NONCE_LEN];

#[cfg(test)]
mod fixtures;
