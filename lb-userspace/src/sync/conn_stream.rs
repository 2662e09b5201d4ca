//! Which tracked NAT and SNAT connections a paired master sends its peer,
//! so that a failover keeps them: each new connection, each change of its
//! state or translation, and every [`CONN_REFRESH_NS`] each one still in
//! use (the peer's copy then never expires before the master's); after a
//! (re)pairing, all of them.
//!
//! A connection travels as a [`TrackedConnection`], in
//! [`Message::Connections`] batches ([`connection_batches`]).
//!
//! Unlike the affinity stream there is no confirmation: connections are
//! few beside clients, so a new pairing (or a message the link refused)
//! simply sends the whole table again.

use std::{collections::HashMap, net::SocketAddrV4};

use lb_common::nat::{Conn, ConnKey};

use super::messages::{Message, CONNECTION_FIXED_LEN, SESSION_BATCH_BYTES};

/// One tracked NAT or SNAT connection: service by name and server by
/// address (ids differ between nodes), and an age (clocks differ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedConnection {
    /// Service name.
    pub service: String,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// The client's frames arrive from here...
    pub client: SocketAddrV4,
    /// ...to the service's VIP and port.
    pub vip: SocketAddrV4,
    /// They leave from here (the client, or the SNAT address and port)...
    pub source: SocketAddrV4,
    /// ...to the real server's address and port.
    pub server: SocketAddrV4,
    /// The connection's state (`lb_common::nat::CONN_*`).
    pub state: u8,
    /// Milliseconds since either side last sent a frame.
    pub age_ms: u32,
}

/// Splits tracked connections into [`Message::Connections`] of at most
/// [`SESSION_BATCH_BYTES`] each.
#[must_use]
pub fn connection_batches(entries: Vec<TrackedConnection>) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let len = CONNECTION_FIXED_LEN + entry.service.len();
        if !batch.is_empty() && bytes + len > SESSION_BATCH_BYTES {
            messages.push(Message::Connections {
                entries: std::mem::take(&mut batch),
            });
            bytes = 0;
        }
        bytes += len;
        batch.push(entry);
    }
    if !batch.is_empty() {
        messages.push(Message::Connections { entries: batch });
    }
    messages
}

/// A connection still in use is sent again after this long (well within
/// the shortest timeout it can be refreshed in, a UDP flow's 5 min).
pub const CONN_REFRESH_NS: u64 = 60_000_000_000;

/// What was last sent of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    conn: Conn,
}

impl Sent {
    /// Whether `now` (the same connection's entry, later) says something
    /// the peer does not know: another state or translation, or a frame
    /// seen a refresh interval after the one it has.
    fn stale(&self, now: &Conn) -> bool {
        let same = Conn {
            last_seen_ns: now.last_seen_ns,
            seen_jiffies: now.seen_jiffies,
            ..self.conn
        };
        same != *now || now.last_seen_ns.saturating_sub(self.conn.last_seen_ns) >= CONN_REFRESH_NS
    }
}

/// The master's record of what its peer has of the connection table.
#[derive(Clone, Debug, Default)]
pub struct ConnStream {
    sent: HashMap<ConnKey, Sent>,
}

impl ConnStream {
    /// The peer holds nothing (a new pairing, or a message was refused):
    /// the next pass sends every connection.
    pub fn restart(&mut self) {
        self.sent.clear();
    }

    /// One pass over the live connections (`live`: each connection's entry
    /// of the client's direction, its state and time those of both
    /// directions): returns those to send. Connections no longer live are
    /// forgotten (the peer's copy expires by the same rule).
    pub fn pass(&mut self, live: &[(ConnKey, Conn)]) -> Vec<(ConnKey, Conn)> {
        let mut out = Vec::new();
        let mut sent = HashMap::with_capacity(live.len());
        for (key, conn) in live {
            let known = self.sent.get(key).filter(|s| !s.stale(conn)).copied();
            let record = known.unwrap_or_else(|| {
                out.push((*key, *conn));
                Sent { conn: *conn }
            });
            sent.insert(*key, record);
        }
        self.sent = sent;
        out
    }
}

#[cfg(test)]
mod tests {
    use lb_common::nat::{CONN_ESTABLISHED, CONN_FIN, CONN_SYN};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn conn(port: u16, state: u8, last_seen_ns: u64) -> (ConnKey, Conn) {
        let key = ConnKey {
            src: 1,
            dst: 2,
            sport: port,
            dport: 80,
            protocol: 6,
            pad: [0; 3],
        };
        let conn = Conn {
            src: 3,
            dst: 4,
            sport: port + 1000,
            dport: 8080,
            real: 1,
            last_seen_ns,
            state,
            reply: 0,
            service_id: 1,
            seen_jiffies: 0,
        };
        (key, conn)
    }

    #[test]
    fn new_changed_and_refreshed_connections_are_sent_once() {
        let mut stream = ConnStream::default();
        let a = conn(1, CONN_SYN, 10 * S);
        let b = conn(2, CONN_ESTABLISHED, 10 * S);
        assert_eq!(stream.pass(&[a, b]), vec![a, b], "new: both");
        assert!(stream.pass(&[a, b]).is_empty(), "nothing new");

        let mut b_ticked = b;
        b_ticked.1.seen_jiffies = 7;
        assert!(
            stream.pass(&[a, b_ticked]).is_empty(),
            "the data path's tick is no news"
        );

        let a_up = conn(1, CONN_ESTABLISHED, 11 * S);
        let b_seen = conn(2, CONN_ESTABLISHED, 30 * S);
        assert_eq!(stream.pass(&[a_up, b_seen]), vec![a_up], "a state change");

        let mut a_moved = a_up;
        a_moved.1.sport += 1;
        assert_eq!(
            stream.pass(&[a_moved, b_seen]),
            vec![a_moved],
            "a new translation"
        );

        let b_later = conn(2, CONN_ESTABLISHED, 10 * S + CONN_REFRESH_NS);
        assert_eq!(stream.pass(&[a_moved, b_later]), vec![b_later], "refreshed");
        assert!(stream.pass(&[a_moved, b_later]).is_empty());

        let b_fin = conn(2, CONN_FIN, 10 * S + CONN_REFRESH_NS);
        assert_eq!(stream.pass(&[b_fin]), vec![b_fin], "ending");
        assert_eq!(
            stream.pass(&[a_moved, b_fin]),
            vec![a_moved],
            "forgotten once gone"
        );

        stream.restart();
        assert_eq!(
            stream.pass(&[a_moved, b_fin]),
            vec![a_moved, b_fin],
            "after a restart: all"
        );
    }
}
