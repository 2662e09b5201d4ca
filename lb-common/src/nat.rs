//! NAT and SNAT forwarding: the connection table the data path keeps and
//! the settings lbd writes for it.
//!
//! Each tracked connection has two entries in the table, one per direction,
//! each keyed by the 5-tuple as its frames arrive and holding the 5-tuple
//! they leave with: the client's frames (client:port -> VIP:port) leave as
//! (client or `snat_address`):port -> server:port, the server's replies
//! leave as VIP:port -> client:port. The entry of the client's direction
//! also names the real server, so a connection stays on its server for its
//! whole life, whatever the affinity table and the ring say later.

/// `Service::forwarding`: direct routing (the frame's addresses unchanged).
pub const FORWARDING_DR: u8 = 0;
/// `Service::forwarding`: destination NAT to the real server's address and port.
pub const FORWARDING_NAT: u8 = 1;
/// `Service::forwarding`: as NAT, and the source becomes the service's
/// SNAT address and a port of the data path's choosing.
pub const FORWARDING_SNAT: u8 = 2;

/// Entries of the connection table (two per connection).
pub const MAX_CONN_ENTRIES: u32 = 524_288;

/// Interfaces a translated frame may leave by (the devmap's size).
pub const MAX_EGRESS_INTERFACES: u32 = 64;

/// How many SNAT ports a new connection tries before it is refused (each
/// try is an atomic insert of the reply entry: two CPUs never take the
/// same port).
pub const SNAT_PORT_TRIES: u32 = 8;

/// A SNAT port whose connection both sides have closed (FIN both ways, or
/// a reset) is taken for a new connection once the connection's frames
/// have stopped this long, rather than after the closed state's 10 s: by
/// then the last ACK and any repeated FIN have passed, and at a high rate
/// of short connections the 10 s would hold more ports than the range has
/// (a refused SYN costs its client a second).
pub const SNAT_RECLAIM_AFTER_NS: u64 = 2_000_000_000;

/// How many of the [`SNAT_PORT_TRIES`] take the server's next port in order
/// (the rest are random, so a run of taken ports, such as the peer's
/// connections after a takeover, costs no refusal). In order, a port
/// comes back to the same server as late as the range allows: a server
/// that closed the port's last connection first holds it in TIME-WAIT
/// (60 s on Linux, up to 4 min on Windows) and, while it does, refuses
/// about half the new SYNs from it (those whose sequence number or
/// timestamp reads earlier than the last connection's). Random ports come
/// back at random, so some always come back within the TIME-WAIT.
pub const SNAT_PORT_TRIES_IN_ORDER: u32 = 4;

/// Key of the connection table: a frame's 5-tuple as it arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConnKey {
    /// Source address, network byte order.
    pub src: u32,
    /// Destination address, network byte order.
    pub dst: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Value of the connection table: the 5-tuple the frame leaves with,
/// and the connection's state as this direction has seen it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Conn {
    /// New source address, network byte order.
    pub src: u32,
    /// New destination address, network byte order.
    pub dst: u32,
    /// New source port, network byte order.
    pub sport: u16,
    /// New destination port, network byte order.
    pub dport: u16,
    /// The real server's index (`REALS`).
    pub real: u32,
    /// When a frame of this direction was last seen (the monotonic clock
    /// in ns, as of the kernel's last tick: `bpf_ktime_get_coarse_ns`).
    pub last_seen_ns: u64,
    /// `CONN_*`: the state this direction has seen.
    pub state: u8,
    /// 1 on the entry of the server's direction (the replies).
    pub reply: u8,
    /// The service's id.
    pub service_id: u16,
    /// The kernel tick (`bpf_jiffies64`, low 32 bits) of the data path's
    /// last full check of this entry, 0 for none: an entry checked less
    /// than [`CONN_FRESH_JIFFIES`] ago is live without a clock read.
    pub seen_jiffies: u32,
}

/// An entry the data path checked less than this many kernel ticks ago is
/// live without reading the nanosecond clock (and its time is not written
/// again): at most 1 s at `HZ=100`, well inside the shortest timeout (10 s).
pub const CONN_FRESH_JIFFIES: u32 = 100;

impl ConnKey {
    /// A key with its padding zeroed.
    ///
    /// The padding is written as `[0, 0, 0]`: for the BPF target, the
    /// repeat form `[0; 3]` becomes a call of `memset`, a function of its
    /// own, on every frame that builds a key.
    #[must_use]
    pub const fn new(src: u32, dst: u32, sport: u16, dport: u16, protocol: u8) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            protocol,
            pad: [0, 0, 0],
        }
    }
}

impl Conn {
    /// The key of the other direction's entry: the 5-tuple this direction's
    /// frames leave with, reversed (the frames the other side sends back).
    #[must_use]
    pub const fn reverse_key(&self, protocol: u8) -> ConnKey {
        ConnKey::new(self.dst, self.src, self.dport, self.sport, protocol)
    }
}

/// A TCP connection of which only the SYN has been seen.
pub const CONN_SYN: u8 = 0;
/// A TCP connection past its handshake.
pub const CONN_ESTABLISHED: u8 = 1;
/// A TCP connection one side of which has sent FIN.
pub const CONN_FIN: u8 = 2;
/// A TCP connection reset.
pub const CONN_CLOSED: u8 = 3;
/// A UDP flow.
pub const CONN_UDP: u8 = 4;

/// How long a connection in `state` lives without a frame: a half-open
/// connection 30 s; an established one 2 h 4 min (RFC 5382's minimum for
/// NATs: long idle clinical sessions are kept); after FIN 2 min; after RST
/// 10 s; a UDP flow 5 min.
#[must_use]
pub const fn conn_timeout_ns(state: u8) -> u64 {
    const S: u64 = 1_000_000_000;
    match state {
        CONN_SYN => 30 * S,
        CONN_ESTABLISHED => 7_440 * S,
        CONN_FIN => 120 * S,
        CONN_CLOSED => 10 * S,
        _ => 300 * S,
    }
}

/// Whether a connection entry last seen at `last_seen_ns` in `state` is
/// still live at `now_ns`. An entry written after `now_ns` was read (by
/// another CPU) is live.
#[must_use]
pub const fn conn_is_live(now_ns: u64, last_seen_ns: u64, state: u8) -> bool {
    now_ns.saturating_sub(last_seen_ns) <= conn_timeout_ns(state)
}

/// NAT settings of a service, by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NatService {
    /// The SNAT source address, network byte order (SNAT only).
    pub snat_address: u32,
    /// The first SNAT port, host byte order.
    pub port_lo: u16,
    /// How many SNAT ports from `port_lo` on.
    pub port_count: u16,
}

/// NAT settings of a real server, by real-server index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NatReal {
    /// The server's port, network byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
}

/// What the NAT path did, counted per CPU beside the verdicts (`NAT_NOTES`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatNote {
    /// A new connection was tracked.
    ConnNew = 0,
    /// A client's frame followed its tracked connection.
    ConnHit,
    /// A server's reply was translated back to the client.
    Reply,
    /// The connection's server is halted, down or gone: its entry was
    /// replaced by a new connection's (the new server answers with a reset).
    ConnStale,
    /// A SNAT port was taken already; the next one was tried.
    PortCollision,
    /// No free SNAT port in `SNAT_PORT_TRIES` tries: the frame was dropped.
    PortsExhausted,
    /// The connection table is full: the frame was dropped.
    TableFull,
    /// No route to the frame's new destination: dropped.
    NoRoute,
    /// The next hop's MAC address is not known yet: the translated frame
    /// was passed to the kernel, which forwards it and resolves the hop.
    NoNeighbour,
    /// The route leaves by an interface lbd has not attached: dropped.
    EgressUnknown,
    /// A frame to a SNAT address that matches no connection: passed.
    NoConnection,
    /// The frame left by another interface than it came in by.
    Redirected,
    /// An ICMP error about a tracked connection's packet was translated
    /// and sent to the other side of the connection.
    IcmpTranslated,
    /// A SNAT port was taken from a connection both sides closed at least
    /// [`SNAT_RECLAIM_AFTER_NS`] ago, before its entries expired.
    PortReclaimed,
}

/// Number of [`NatNote`] counters.
pub const NAT_NOTE_COUNT: u32 = NatNote::PortReclaimed as u32 + 1;

impl NatNote {
    /// Every note, in counter order.
    pub const ALL: [NatNote; NAT_NOTE_COUNT as usize] = [
        NatNote::ConnNew,
        NatNote::ConnHit,
        NatNote::Reply,
        NatNote::ConnStale,
        NatNote::PortCollision,
        NatNote::PortsExhausted,
        NatNote::TableFull,
        NatNote::NoRoute,
        NatNote::NoNeighbour,
        NatNote::EgressUnknown,
        NatNote::NoConnection,
        NatNote::Redirected,
        NatNote::IcmpTranslated,
        NatNote::PortReclaimed,
    ];

    /// The metric label.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            NatNote::ConnNew => "nat_conn_new",
            NatNote::ConnHit => "nat_conn_hit",
            NatNote::Reply => "nat_reply",
            NatNote::ConnStale => "nat_conn_stale",
            NatNote::PortCollision => "nat_port_collision",
            NatNote::PortsExhausted => "nat_ports_exhausted",
            NatNote::TableFull => "nat_table_full",
            NatNote::NoRoute => "nat_no_route",
            NatNote::NoNeighbour => "nat_no_neighbour",
            NatNote::EgressUnknown => "nat_egress_unknown",
            NatNote::NoConnection => "nat_no_connection",
            NatNote::Redirected => "nat_redirected",
            NatNote::IcmpTranslated => "nat_icmp_translated",
            NatNote::PortReclaimed => "nat_port_reclaimed",
        }
    }
}

/// Value of the NAT notes map (one slot, per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatCounters {
    /// A counter per [`NatNote`], in [`NatNote::ALL`] order.
    pub counts: [u64; NAT_NOTE_COUNT as usize],
}

const _: () = assert!(core::mem::size_of::<ConnKey>() == 16);
const _: () = assert!(core::mem::size_of::<Conn>() == 32);
const _: () = assert!(core::mem::size_of::<NatService>() == 8);
const _: () = assert!(core::mem::size_of::<NatReal>() == 4);

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for the NAT maps' types: `#[repr(C)]`, `Copy`, no implicit
    //! padding (the size assertions above pin the layout).
    use super::{Conn, ConnKey, NatCounters, NatReal, NatService};

    // SAFETY: plain-old-data structs with explicit padding fields, checked sizes.
    unsafe impl aya::Pod for ConnKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Conn {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatService {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NatReal {}
    // SAFETY: as above (an array of u64).
    unsafe impl aya::Pod for NatCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_expire_by_state_and_a_later_write_is_live() {
        let s = 1_000_000_000;
        assert!(conn_is_live(100 * s, 90 * s, CONN_CLOSED));
        assert!(!conn_is_live(101 * s, 90 * s, CONN_CLOSED));
        assert!(conn_is_live(7_000 * s, 0, CONN_ESTABLISHED));
        assert!(!conn_is_live(31 * s, 0, CONN_SYN));
        assert!(
            conn_is_live(5, 9, CONN_SYN),
            "written after the clock was read"
        );
        assert_eq!(NatNote::ALL.len(), NAT_NOTE_COUNT as usize);
        for (i, note) in NatNote::ALL.iter().enumerate() {
            assert_eq!(*note as usize, i);
        }
    }
}
