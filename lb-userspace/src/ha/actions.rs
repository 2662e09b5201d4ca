//! What the HA coordinator hands the daemon to do ([`HaAction`]) and what
//! it sends the peer ([`Outgoing`]): the boundary between the sans-IO
//! policy in [`super::coordinator`] and the daemon's I/O.

use std::net::Ipv4Addr;

use crate::{
    sync::{AdminChange, Message, SessionEntry, TrackedConnection},
    vrrp::State,
};

/// Something the daemon must do, in the order handed out.
#[derive(Debug, Clone, PartialEq)]
pub enum HaAction {
    /// Send this VRRP message (IP protocol 112, TTL 255) to `to`.
    SendVrrp {
        /// Destination: the unicast peer or 224.0.0.18.
        to: Ipv4Addr,
        /// The encoded advertisement.
        message: Vec<u8>,
    },
    /// Hold the VIPs: add them to the interface.
    AddVips,
    /// Release the VIPs.
    RemoveVips,
    /// Send this many gratuitous ARPs for each VIP held.
    Garp {
        /// Frames per VIP.
        frames: u32,
    },
    /// Send to the peer (only handed out while paired).
    Send(Outgoing),
    /// The secondary takes the primary's configuration (its services) with
    /// the primary's admin changes merged first, keeps it once applied, and
    /// answers with [`Coordinator::config_applied`](super::Coordinator::config_applied).
    ApplyConfig {
        /// The configuration's version (for the answer).
        version: u64,
        /// The primary's configuration text.
        yaml: String,
        /// The primary's admin changes.
        admin: Vec<AdminChange>,
    },
    /// Merge the peer's admin changes (the latest wins) and apply those taken.
    MergeAdmin(Vec<AdminChange>),
    /// Install the peer's affinity entries.
    InstallSessions(Vec<SessionEntry>),
    /// Install the master's tracked NAT and SNAT connections.
    InstallConnections(Vec<TrackedConnection>),
    /// Stream affinity entries to the peer.
    StreamSessions(StreamStep),
    /// The peer has installed every streamed pass up to `pass`.
    SessionsConfirmed {
        /// The master's pass number.
        pass: u64,
    },
    /// The VRRP state changed (for logs and metrics).
    StateChanged {
        /// Previous state.
        from: State,
        /// New state.
        to: State,
    },
}

/// What the session stream does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStep {
    /// Start over: the peer holds nothing of this node's table.
    Restart,
    /// The same peer process is back: send again what it did not confirm.
    Resume,
    /// Send what the last pass found to send.
    Next,
}

/// A message for the peer; the daemon fills in what it owns.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A complete message.
    Message(Message),
    /// The configuration text and every admin change, as `version`.
    Config {
        /// Increases with every configuration sent.
        version: u64,
    },
    /// Every recorded admin change.
    AllAdmin,
    /// The recorded admin change of one server.
    Admin {
        /// Service name.
        service: String,
        /// Real-server name.
        server: String,
    },
}
