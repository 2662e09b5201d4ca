//! Types shared by the XDP program (`lb-ebpf`) and the daemon (`lb-userspace`).
//!
//! Every type that crosses the kernel boundary lives here, `#[repr(C)]`, with
//! explicit padding and a compile-time size check, so both sides agree on the
//! layout byte for byte. Addresses and ports are kept in network byte order,
//! exactly as they appear in the packet, so the data path never swaps bytes.
//!
//! With the `user` feature the types implement `aya::Pod` for use in map calls.
#![no_std]

pub mod census;
pub mod nat;

/// The most virtual services (VIP:port:protocol) one load balancer serves
/// (ids fit [`Real::service_id`]).
pub const MAX_SERVICES: u32 = 256;

/// The most real servers over all services (one entry per service and server).
pub const MAX_REALS: u32 = 16_384;

/// Entries in one service's Maglev lookup table: a prime (as Maglev needs),
/// and at least 100 x the real servers of a service (Cilium's default size).
pub const MAGLEV_RING_SIZE: u32 = 16_381;

/// The most real servers in one service, so that the ring keeps >= 100 entries each.
pub const MAX_REALS_PER_SERVICE: u32 = MAGLEV_RING_SIZE / 100;

/// Ring slots: two per service, so a new ring is written beside the live one
/// and switched in by one update of the service entry.
pub const MAGLEV_RING_SLOTS: u32 = MAX_SERVICES * 2;

/// Capacity of the client affinity (persistence) table: over a million
/// clients. The table never evicts: a full table (or a service at its
/// [`Service::max_clients`]) stops remembering new clients, never forgets
/// a live one. lbd removes expired entries.
pub const MAX_AFFINITY_ENTRIES: u32 = 1_250_000;

/// Real-server index meaning "no real server" in a Maglev ring or service entry.
pub const NO_REAL: u32 = 0;

/// The longest a busy client's entry goes without its last-seen time being
/// refreshed: [`AFFINITY_FRESH_JIFFIES`] at the slowest tick, `HZ=100`. (So
/// a busy client does not write the shared table on every packet.)
pub const AFFINITY_REFRESH_NS: u64 = 1_000_000_000;

/// An entry the data path refreshed less than this many kernel ticks ago is
/// live without reading the nanosecond clock, a helper call: at most 1 s at
/// `HZ=100` (the fewest ticks a second Linux has), well inside the shortest
/// timeout, [`MIN_AFFINITY_TIMEOUT_S`]. The data path refreshes a live entry
/// only once it is older: at most every 100 ticks, at least every
/// [`AFFINITY_REFRESH_NS`].
pub const AFFINITY_FRESH_JIFFIES: u32 = 100;

/// Slots of the XDP program's per-CPU flow cache (a power of two): 320 KiB a CPU.
pub const FLOW_CACHE_SLOTS: u32 = 8192;

/// A cached forwarding decision is taken again from the shared tables after
/// this many kernel ticks: 1 s at the common `HZ=250`, 0.25 s at 1000, 2.5 s
/// at 100. (Jiffies because the verifier inlines `bpf_jiffies64`, where a
/// nanosecond clock read costs a helper call.)
pub const FLOW_CACHE_MAX_AGE_JIFFIES: u32 = 250;

/// How far an affinity entry's last-seen time may lag behind the client's
/// last frame: the refresh interval plus the flow cache's longest age (250
/// jiffies at `HZ=100`), during which cache hits do not touch the table.
pub const AFFINITY_LAG_NS: u64 = AFFINITY_REFRESH_NS + 2_500_000_000;

/// The shortest `timeout_s` the configuration accepts: well above
/// [`AFFINITY_LAG_NS`], so that a timeout is honoured to within a few seconds.
pub const MIN_AFFINITY_TIMEOUT_S: u32 = 10;

/// What the data path compares an entry's age with ([`Service::timeout_ns`])
/// for a configured timeout: the timeout plus [`AFFINITY_LAG_NS`], so that a
/// client is never forgotten early, and at most that much late.
#[must_use]
pub const fn affinity_expiry_ns(timeout_s: u32) -> u64 {
    timeout_s as u64 * 1_000_000_000 + AFFINITY_LAG_NS
}

/// Whether an entry last seen at `last_seen_ns` is still live at `now_ns`.
/// The age saturates: an entry refreshed by another CPU after `now_ns` was
/// read (a time "from the future") is as fresh as can be, not 2^64 ns old.
#[must_use]
#[expect(
    clippy::inline_always,
    reason = "called from the XDP program, which must not make calls"
)]
#[inline(always)]
pub const fn affinity_is_live(now_ns: u64, last_seen_ns: u64, expiry_ns: u64) -> bool {
    now_ns.saturating_sub(last_seen_ns) <= expiry_ns
}

/// VIPs the data path answers ARP for (at most one per service).
pub const MAX_HELD_VIPS: u32 = MAX_SERVICES;

/// IP protocol number of ICMP (errors about service traffic are forwarded).
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol numbers used in [`ServiceKey::protocol`].
pub const IPPROTO_TCP: u8 = 6;
/// See [`IPPROTO_TCP`].
pub const IPPROTO_UDP: u8 = 17;

/// Key of the services map: a virtual service as the packet names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Virtual IP address, network byte order.
    pub vip: u32,
    /// Destination port, network byte order.
    pub port: u16,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub protocol: u8,
    /// Always zero.
    pub pad: u8,
}

/// Value of the services map: how to pick a real server for the service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Names the service in affinity keys and real-server slots.
    pub id: u32,
    /// The live Maglev ring slot (`0..MAGLEV_RING_SLOTS`).
    pub ring_slot: u32,
    /// Mask applied to the client's source address, network byte order.
    pub netmask: u32,
    /// Real-server index used while the ring is empty, or [`NO_REAL`].
    pub fallback_real: u32,
    /// Affinity expiry ([`affinity_expiry_ns`] of the configured timeout): an
    /// entry not seen for longer no longer counts.
    pub timeout_ns: u64,
    /// The most clients the service may hold in the affinity table; a new
    /// client beyond it is served from the ring without being remembered.
    pub max_clients: u32,
    /// `nat::FORWARDING_*` (0, direct routing, in every older layout).
    pub forwarding: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// Key of the fragments map: a VIP and protocol whose fragments go to one
/// service (the only service of that protocol on the VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipProtocol {
    /// Virtual IP address, network byte order.
    pub vip: u32,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub protocol: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

impl VipProtocol {
    /// A key with its padding zeroed (written out, as in
    /// [`nat::ConnKey::new`], so the BPF target makes no `memset` call).
    #[must_use]
    pub const fn new(vip: u32, protocol: u8) -> Self {
        Self {
            vip,
            protocol,
            pad: [0, 0, 0],
        }
    }
}

/// Entries of the fragments map: one per VIP and protocol.
pub const MAX_FRAGMENT_TARGETS: u32 = MAX_SERVICES;

/// Real-server flag: its MAC address is known; without it the server is kept
/// out of the ring, and frames that reach it anyway are dropped.
pub const REAL_F_RESOLVED: u32 = 1 << 0;
/// Real-server flag: clients that have an affinity entry for it keep it
/// (online or drain). Cleared when it is halted, down or removed.
pub const REAL_F_KEEP_CLIENTS: u32 = 1 << 1;

/// Value of the real-servers array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Real {
    /// The real server's address, network byte order. An affinity entry only
    /// counts while it names the same address as the slot it points to.
    pub address: u32,
    /// `REAL_F_*` bits.
    pub flags: u32,
    /// Destination MAC address for frames sent to it.
    pub mac: [u8; 6],
    /// The [`Service::id`] the slot belongs to ([`NO_SERVICE`] when unused):
    /// an affinity entry counts only in its own service's slots, also after
    /// a reload has handed a freed slot to another service.
    pub service_id: u16,
}

/// [`Real::service_id`] of a slot no service uses.
pub const NO_SERVICE: u16 = u16::MAX;

/// Key of the affinity (persistence) table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// [`Service::id`].
    pub service_id: u32,
    /// Client source address masked by the service netmask, network byte order.
    pub client: u32,
}

/// Value of the affinity table: where a client goes and when it was last seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Affinity {
    /// Real-server index.
    pub real: u32,
    /// That real server's address when the entry was made, network byte order.
    pub real_address: u32,
    /// `CLOCK_MONOTONIC` nanoseconds of the last packet (refreshed at least
    /// every [`AFFINITY_REFRESH_NS`] while the client sends).
    pub last_seen_ns: u64,
    /// `bpf_jiffies64()` (its low 32 bits) when the data path last wrote
    /// `last_seen_ns`; 0 when lbd wrote the entry. While it is less than
    /// [`AFFINITY_FRESH_JIFFIES`] old the entry is live without a clock read
    /// (see there). The census removes an entry long before the ticks wrap.
    pub seen_jiffies: u32,
    /// The census pass that last sent this entry to the peer; 0: never
    /// (a new entry, or one written again with another server). See
    /// [`census::stream_wanted`].
    pub sync_pass: u32,
}

/// Traffic counters kept per CPU for each real-server slot (a service's are
/// the sum of its slots').
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames forwarded.
    pub packets: u64,
    /// Bytes forwarded (whole Ethernet frames).
    pub bytes: u64,
    /// Clients that got a real server from the Maglev ring (no live affinity entry).
    pub new_clients: u64,
}

impl core::ops::AddAssign for Counters {
    fn add_assign(&mut self, other: Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_clients += other.new_clients;
    }
}

/// The layout of the maps lbd shares with a running data path: the key and
/// value types of every map below and their sizes. A data path outlives the
/// lbd that loaded it; the next lbd adopts its maps only if it was built
/// with the same layout, and carries their entries over otherwise (bump
/// this on any change to a shared map, and write the carrying-over).
pub const LAYOUT_VERSION: u32 = 1;

/// The ARP lease (slot 0 of the data path's lease array) of a node that
/// answers ARP for its VIPs for as long as the data path runs: a single
/// node. In a pair, the master's lbd keeps the lease a little ahead of the
/// monotonic clock (`bpf_ktime_get_ns`) as it advertises, so a node whose
/// lbd died stops answering ARP for the VIPs by the time its peer takes
/// them over, while its data path forwards what still reaches it.
pub const ARP_LEASE_FOREVER: u64 = 0;

/// Settings of the whole data path, in slot 0 of the globals array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// [`LAYOUT_VERSION`] of the lbd that wrote it: always the first field,
    /// in every layout, so that any later lbd can read it.
    pub layout: u32,
    /// MAC address of the interface the program is attached to: only frames
    /// addressed to it are forwarded, and forwarded frames leave with it as source.
    pub iface_mac: [u8; 6],
    /// Always zero.
    pub pad: [u8; 2],
}

/// Why the program returned what it returned: one per-CPU counter each.
/// Verdicts (exactly one per frame) come first, then notes on how the real
/// server was chosen.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Forwarded to a real server (`XDP_TX`).
    Forwarded = 0,
    /// Passed: neither IPv4, IPv6 nor ARP (LLDP, ...).
    PassNotIpv4,
    /// Passed: IPv6 (not served yet).
    PassIpv6,
    /// Passed: VLAN-tagged (802.1Q / 802.1ad).
    PassVlan,
    /// Passed: frame shorter than its Ethernet header.
    PassTruncatedEthernet,
    /// Passed: frame ends inside the IPv4 header or before its total length.
    PassTruncatedIp,
    /// Passed: IPv4 header malformed (IHL < 5, total length shorter than the header).
    PassBadIp,
    /// Passed: a fragment for a VIP with no single service of its protocol.
    PassFragment,
    /// Passed: neither TCP, UDP nor ICMP (VRRP, ...).
    PassNotTcpUdp,
    /// Passed: frame ends inside the TCP or UDP header.
    PassTruncatedL4,
    /// Passed: TCP data offset below 5 words.
    PassBadL4,
    /// Passed: no service for this destination address, port and protocol.
    PassNotService,
    /// Passed: service traffic in a frame not addressed to this interface's MAC.
    PassNotForUs,
    /// Passed: ICMP that is not an error about a service's traffic (echo, errors about other flows).
    PassIcmp,
    /// Passed: an ICMP error whose quoted header is cut short or malformed.
    PassIcmpTruncated,
    /// Dropped: no real server in the ring and no fallback.
    DropNoReal,
    /// Dropped: the chosen real server's MAC address is not known (never remembered).
    DropRealUnresolved,
    /// Dropped: the ring named a server that is halted, down or of another service (a write in flight).
    DropRealNotReady,
    /// Dropped: the real server's MAC is the frame's own source (a router answering ARP for an off-link server): sending it back would loop.
    DropLoop,
    /// Dropped: a map the daemon fills had no entry where one must be.
    DropInternal,
    /// Answered (`XDP_TX`): an ARP request for a VIP this node holds.
    ArpAnswered,
    /// Passed: ARP that is not a request for a VIP this node holds (the
    /// kernel drops requests for the others: lbd's guard).
    PassArp,
    /// Passed (and so dropped by lbd's guard): an ARP request for a held VIP
    /// after the node's claim to the VIPs lapsed (the ARP lease's deadline
    /// passed, see [`ARP_LEASE_FOREVER`]: its lbd died, and its peer takes
    /// the VIPs over).
    PassArpLeaseLapsed,
    /// Note: a live affinity entry chose the real server.
    AffinityHit,
    /// Note: no affinity entry; the Maglev ring chose.
    AffinityMiss,
    /// Note: an entry older than the timeout was replaced.
    AffinityExpired,
    /// Note: an entry for a halted, down or removed server was replaced.
    AffinityStale,
    /// Note: the fallback server was used.
    Fallback,
    /// Note: an affinity hit served from this CPU's flow cache.
    FlowCacheHit,
    /// Note: a new client's bare TCP SYN was served from the ring and not remembered (a client is remembered once it shows it is real: a frame with ACK).
    FloodSynUnremembered,
    /// Note: a new client was served from the ring and not remembered: its service holds its `max_clients`.
    FloodQuotaFull,
    /// Note: a new client was served from the ring and not remembered: the affinity table is full.
    FloodTableFull,
    /// Note: an ICMP error about a service's traffic was forwarded to the client's real server.
    IcmpToReal,
    /// Note: an IPv4 fragment was forwarded (all of a datagram's fragments go to one server).
    FragmentToReal,
}

/// Number of [`Reason`] counters.
pub const REASON_COUNT: u32 = Reason::FragmentToReal as u32 + 1;

/// Value of the reasons map (one slot, per CPU): a counter per [`Reason`],
/// indexed by its number, so a frame looks its CPU's counters up once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasonCounters {
    /// Frames (or notes) counted, in [`Reason::ALL`] order.
    pub counts: [u64; REASON_COUNT as usize],
}

impl Default for ReasonCounters {
    fn default() -> Self {
        Self {
            counts: [0; REASON_COUNT as usize],
        }
    }
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Forwarded,
        Reason::PassNotIpv4,
        Reason::PassIpv6,
        Reason::PassVlan,
        Reason::PassTruncatedEthernet,
        Reason::PassTruncatedIp,
        Reason::PassBadIp,
        Reason::PassFragment,
        Reason::PassNotTcpUdp,
        Reason::PassTruncatedL4,
        Reason::PassBadL4,
        Reason::PassNotService,
        Reason::PassNotForUs,
        Reason::PassIcmp,
        Reason::PassIcmpTruncated,
        Reason::DropNoReal,
        Reason::DropRealUnresolved,
        Reason::DropRealNotReady,
        Reason::DropLoop,
        Reason::DropInternal,
        Reason::ArpAnswered,
        Reason::PassArp,
        Reason::PassArpLeaseLapsed,
        Reason::AffinityHit,
        Reason::AffinityMiss,
        Reason::AffinityExpired,
        Reason::AffinityStale,
        Reason::Fallback,
        Reason::FlowCacheHit,
        Reason::FloodSynUnremembered,
        Reason::FloodQuotaFull,
        Reason::FloodTableFull,
        Reason::IcmpToReal,
        Reason::FragmentToReal,
    ];

    /// A stable snake-case name for logs, `lbctl status` and metrics labels.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassIpv6 => "pass_ipv6",
            Reason::PassVlan => "pass_vlan",
            Reason::PassTruncatedEthernet => "pass_truncated_ethernet",
            Reason::PassTruncatedIp => "pass_truncated_ip",
            Reason::PassBadIp => "pass_bad_ip",
            Reason::PassFragment => "pass_fragment",
            Reason::PassNotTcpUdp => "pass_not_tcp_udp",
            Reason::PassTruncatedL4 => "pass_truncated_l4",
            Reason::PassBadL4 => "pass_bad_l4",
            Reason::PassNotService => "pass_not_service",
            Reason::PassNotForUs => "pass_not_for_us",
            Reason::PassIcmp => "pass_icmp",
            Reason::PassIcmpTruncated => "pass_icmp_truncated",
            Reason::DropNoReal => "drop_no_real",
            Reason::DropRealUnresolved => "drop_real_unresolved",
            Reason::DropRealNotReady => "drop_real_not_ready",
            Reason::DropLoop => "drop_loop",
            Reason::DropInternal => "drop_internal",
            Reason::ArpAnswered => "arp_answered",
            Reason::PassArp => "pass_arp",
            Reason::PassArpLeaseLapsed => "pass_arp_lease_lapsed",
            Reason::AffinityHit => "affinity_hit",
            Reason::AffinityMiss => "affinity_miss",
            Reason::AffinityExpired => "affinity_expired",
            Reason::AffinityStale => "affinity_stale",
            Reason::Fallback => "fallback",
            Reason::FlowCacheHit => "flow_cache_hit",
            Reason::FloodSynUnremembered => "flood_syn_unremembered",
            Reason::FloodQuotaFull => "flood_quota_full",
            Reason::FloodTableFull => "flood_table_full",
            Reason::IcmpToReal => "icmp_to_real",
            Reason::FragmentToReal => "fragment_to_real",
        }
    }

    /// Whether this reason is a verdict (pass, drop or forward) rather than a
    /// note on how the real server was chosen. Exactly one verdict reason is
    /// counted per frame.
    #[must_use]
    pub const fn is_verdict(self) -> bool {
        (self as u32) <= Reason::PassArpLeaseLapsed as u32
    }
}

/// What every BPF object of `lb-ebpf` needs besides its programs: a panic
/// handler (never reached: the verifier refuses code that could panic) and
/// the license section the kernel reads (GPL-compatible, for GPL-only helpers).
#[macro_export]
macro_rules! bpf_object_essentials {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}

/// The hash of a (masked) client address that indexes the Maglev ring.
///
/// Shared by the XDP program and the daemon (`lbctl affinity`, `lbctl plan`),
/// and independent of the host, so both nodes of a pair pick the same server.
/// The input is the address in network byte order as stored in
/// [`AffinityKey::client`]; it is read as a big-endian number first.
/// `MurmurHash3`'s 32-bit finaliser: cheap, and every input bit moves the output.
#[must_use]
#[expect(
    clippy::inline_always,
    reason = "called from the XDP program, which must not make calls"
)]
#[inline(always)]
pub const fn client_hash(client_be: u32) -> u32 {
    let mut h = u32::from_be(client_be) ^ 0x9e37_79b9;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Index into the ring array of entry `index` of `slot`.
#[must_use]
#[expect(
    clippy::inline_always,
    reason = "called from the XDP program, which must not make calls"
)]
#[inline(always)]
pub const fn ring_index(slot: u32, index: u32) -> u32 {
    slot * MAGLEV_RING_SIZE + index
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);
const _: () = assert!(core::mem::size_of::<Service>() == 32);
const _: () = assert!(core::mem::size_of::<Real>() == 16);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);
const _: () = assert!(core::mem::size_of::<VipProtocol>() == 8);
const _: () = assert!(core::mem::size_of::<Affinity>() == 24);
const _: () = assert!(core::mem::size_of::<Counters>() == 24);
const _: () = assert!(core::mem::size_of::<Globals>() == 12);
const _: () = assert!(MAX_SERVICES <= NO_SERVICE as u32);
const _: () = assert!((MAGLEV_RING_SLOTS as u64) * (MAGLEV_RING_SIZE as u64) < u32::MAX as u64);

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for the map types: each is `#[repr(C)]`, `Copy`, and has no
    //! implicit padding (the size assertions above pin the layout).
    use super::{
        Affinity, AffinityKey, Counters, Globals, Real, ReasonCounters, Service, ServiceKey,
        VipProtocol,
    };

    // SAFETY: plain-old-data structs with explicit padding fields, checked sizes.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Service {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Real {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Affinity {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Globals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipProtocol {}
    // SAFETY: as above (an array of u64).
    unsafe impl aya::Pod for ReasonCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::census::CensusService {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::census::CensusRun {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::census::StreamedEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_listed_in_counter_order_with_unique_names() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.name());
            for other in &Reason::ALL[..i] {
                assert_ne!(other.name(), reason.name());
            }
        }
        assert!(Reason::DropInternal.is_verdict());
        assert!(Reason::DropLoop.is_verdict());
        assert!(!Reason::AffinityHit.is_verdict());
        assert!(!Reason::FloodTableFull.is_verdict());
    }

    #[test]
    fn ages_saturate_and_expiry_is_never_early() {
        let expiry = affinity_expiry_ns(MIN_AFFINITY_TIMEOUT_S);
        // Refreshed by another CPU after this one read the clock.
        assert!(affinity_is_live(1_000, 2_000, expiry));
        assert!(affinity_is_live(0, u64::MAX, expiry));
        assert!(affinity_is_live(expiry, 0, expiry));
        assert!(!affinity_is_live(expiry + 1, 0, expiry));
        // The lag of the refresh and the flow cache is added, never taken.
        assert!(expiry >= 10_000_000_000 + AFFINITY_REFRESH_NS);
        assert_eq!(expiry - 10_000_000_000, AFFINITY_LAG_NS);
    }

    #[test]
    fn client_hash_is_stable_across_releases() {
        const PINNED_A: u32 = 90_643_849;
        // Both nodes of a pair and every lbd version must agree: pinned values.
        let a = u32::from_ne_bytes([198, 18, 1, 7]);
        let b = u32::from_ne_bytes([198, 18, 1, 8]);
        assert_ne!(client_hash(a), client_hash(b));
        assert_eq!(client_hash(a), client_hash(a));
        assert_eq!(client_hash(0), 2_462_723_854);
        assert_eq!(client_hash(a), PINNED_A);
    }
}
