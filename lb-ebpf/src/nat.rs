//! NAT and SNAT forwarding: the connection table, the rewrite with
//! incremental checksums, and the way out (the kernel's routing table
//! through `bpf_fib_lookup`, then `XDP_TX` or a devmap redirect).
//!
//! A client's frame for a NAT or SNAT service follows its tracked
//! connection while the connection lives and its server keeps clients
//! (online or drained: a connection outlives a drain and the persistence
//! timeout). Otherwise the server is chosen as for direct routing (affinity,
//! else the ring) and a connection is tracked: its reply entry first (for
//! SNAT with a port of its own, see `snat`), then its client entry. A
//! connection whose server is halted, down or gone is replaced by a new
//! one on another server, which answers a frame of a connection it does
//! not know with a reset: the client reconnects at once instead of
//! waiting for its timeouts.
//!
//! A frame that is not for a service is looked up as a server's reply; a
//! frame to a SNAT address that matches no connection goes to the kernel
//! (counted). An ICMP error about a tracked connection's packet, from
//! either side, goes to the other side, translated ([`icmp`]). See
//! `lb_common::nat` for the table's layout.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_F_NO_PREALLOC},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_jiffies64},
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    nat::{
        conn_is_live, Conn, ConnKey, NatCounters, NatNote, NatReal, NatService, CONN_CLOSED,
        CONN_ESTABLISHED, CONN_FIN, CONN_FRESH_JIFFIES, CONN_SYN, CONN_UDP, FORWARDING_SNAT,
        MAX_CONN_ENTRIES, MAX_EGRESS_INTERFACES,
    },
    Reason, Service, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, MAX_REALS, MAX_SERVICES,
    REAL_F_KEEP_CLIENTS,
};

use crate::{
    parse::{
        ptr_at, EthHdr, Frame, Ipv4Hdr, MacWords, Ports, ETH_HDR_LEN, ICMP_HDR_LEN, TCP_ACK,
        TCP_FIN, TCP_RST, TCP_SYN,
    },
    snat, REALS,
};

/// Tracked connections, both directions (see the module doc). Written here
/// for new connections and their state; lbd removes expired ones. Not
/// preallocated: a node without NAT services pays nothing for it.
#[map]
pub(crate) static CONNS: HashMap<ConnKey, Conn> =
    HashMap::with_max_entries(MAX_CONN_ENTRIES, BPF_F_NO_PREALLOC);

/// NAT settings by service id (SNAT address, port range). Written by lbd.
#[map]
static NAT_SERVICES: Array<NatService> = Array::with_max_entries(MAX_SERVICES, 0);

/// NAT settings by real-server index (the server's port). Written by lbd.
#[map]
static NAT_REALS: Array<NatReal> = Array::with_max_entries(MAX_REALS, 0);

/// The interfaces a translated frame may leave by, by ifindex: lbd's
/// interface and its server interfaces. Written by lbd.
#[map]
static NAT_EGRESS: DevMapHash = DevMapHash::with_max_entries(MAX_EGRESS_INTERFACES, 0);

/// The SNAT addresses of the services, network byte order: a frame to one
/// that matches no connection is counted ([`NatNote::NoConnection`]).
/// Written by lbd.
#[map]
static SNAT_ADDRESSES: HashMap<u32, u8> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Slot 0: 1 while a NAT or SNAT service exists. Every frame for no
/// service is looked up as a server's reply only then, so a node without
/// NAT services pays nothing for it (an array lookup is inlined). Written
/// by lbd.
#[map]
static NAT_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Per CPU, direct-mapped by destination address: the next hop the
/// kernel's routing table gave for it, reused for [`NEXT_HOP_FRESH_JIFFIES`]
/// (a route or neighbour change is followed within about a second), so an
/// established connection's frame costs no FIB lookup. Written and read
/// here only.
#[map]
static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);

/// Slots of [`NEXT_HOPS`] (a power of two).
const NEXT_HOP_SLOTS: u32 = 256;
/// A cached next hop is used for this many kernel ticks: 1 s at `HZ=100`,
/// less at faster ticks.
const NEXT_HOP_FRESH_JIFFIES: u32 = 100;

/// One [`NEXT_HOPS`] slot: a FIB answer for `dst` as seen from `ingress`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    dst: u32,
    ingress: u32,
    ifindex: u32,
    /// When it was asked (`bpf_jiffies64`, low 32 bits); 0: never.
    seen_jiffies: u32,
    dmac: MacWords,
    smac: MacWords,
}

/// Slot 0, per CPU: a count of every [`NatNote`]. Written here.
#[map]
static NAT_NOTES: PerCpuArray<NatCounters> = PerCpuArray::with_max_entries(1, 0);

/// `AF_INET`, for the FIB lookup.
const AF_INET: u8 = 2;
/// Length of an IPv4 header without options.
const IPV4_HDR_LEN: usize = 20;
/// Byte offset of the checksum in the TCP and the UDP header.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;

#[inline(always)]
pub(crate) fn note(n: NatNote) {
    if let Some(c) = NAT_NOTES.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, valid for this run.
        unsafe { (*c).counts[n as usize] += 1 };
    }
}

/// The state after a frame with `flags` (0 for UDP) in state `state`. A
/// SYN on a closing or closed connection opens it again (a client reusing
/// its port): the mapping stays, the state starts over.
#[inline(always)]
fn next_state(state: u8, protocol: u8, flags: u8) -> u8 {
    let state = if flags & TCP_SYN != 0 && (state == CONN_FIN || state == CONN_CLOSED) {
        CONN_SYN
    } else {
        state
    };
    if protocol != IPPROTO_TCP {
        CONN_UDP
    } else if flags & TCP_RST != 0 {
        CONN_CLOSED
    } else if flags & TCP_FIN != 0 && state != CONN_CLOSED {
        CONN_FIN
    } else if state == CONN_SYN && flags & TCP_ACK != 0 {
        CONN_ESTABLISHED
    } else {
        state
    }
}

/// How recently the data path checked an entry, and the clock reads that
/// cost: the kernel tick always (inlined), nanoseconds only when needed.
#[derive(Clone, Copy)]
pub struct ConnClock {
    /// `bpf_jiffies64`, low 32 bits.
    pub jiffies: u32,
}

impl ConnClock {
    #[inline(always)]
    fn fresh(self, conn: &Conn) -> bool {
        conn.seen_jiffies != 0 && self.jiffies.wrapping_sub(conn.seen_jiffies) < CONN_FRESH_JIFFIES
    }

    /// See [`crate::clock::now_ns`].
    #[inline(always)]
    pub(crate) fn ns() -> u64 {
        crate::clock::now_ns()
    }
}

/// Whether a connection's entry is live: checked a moment ago, else by its
/// state's timeout.
#[inline(always)]
fn live(conn: &Conn, clock: ConnClock) -> bool {
    clock.fresh(conn) || conn_is_live(ConnClock::ns(), conn.last_seen_ns, conn.state)
}

/// Follows a frame of the connection whose entry (of the frame's
/// direction) is at `entry`: its state, and its time unless checked a
/// moment ago (an established connection's frames then write nothing). A
/// FIN when the other direction has sent its own closes both (the
/// connection is over: its entries, and a SNAT port, are free 10 s on
/// rather than after the 2 min a half-closed connection keeps); only FIN
/// frames look the other up. Returns whether it wrote the entry.
#[inline(always)]
fn follow(entry: *mut Conn, conn: &Conn, protocol: u8, flags: u8, clock: ConnClock) -> bool {
    let state = next_state(conn.state, protocol, flags);
    if state == conn.state && clock.fresh(conn) {
        return false;
    }
    // SAFETY: a value pointer from the map, valid for this run; a racing
    // CPU writes a value as good. The time first: an entry that looks
    // fresh is live.
    unsafe {
        (*entry).last_seen_ns = ConnClock::ns();
        (*entry).seen_jiffies = clock.jiffies;
        (*entry).state = state;
    }
    if state != CONN_FIN || flags & TCP_FIN == 0 {
        return true;
    }
    if let Some(other) = CONNS.get_ptr_mut(&conn.reverse_key(protocol)) {
        // SAFETY: as above.
        unsafe {
            if (*other).state == CONN_FIN {
                (*other).state = CONN_CLOSED;
                (*entry).state = CONN_CLOSED;
            }
        }
    }
    true
}

/// The 5-tuple of a client's frame as it arrives.
#[inline(always)]
pub fn client_key(frame: &Frame) -> ConnKey {
    ConnKey::new(
        frame.client,
        frame.key.vip,
        frame.sport,
        frame.key.port,
        frame.key.protocol,
    )
}

/// A client's frame for a NAT or SNAT service: its tracked connection, if
/// it lives and its server keeps clients (its state and time brought up to
/// date), and whether this frame wrote the entry (a change of state, or
/// its first full check in about a second); else `None`, and the caller
/// chooses a server and [`track`]s.
#[inline(always)]
pub fn existing(key: &ConnKey, frame: &Frame, clock: ConnClock) -> Option<(Conn, bool)> {
    let entry = CONNS.get_ptr_mut(key)?;
    // SAFETY: a value pointer from the map, valid for this run.
    let conn = unsafe { *entry };
    if !live(&conn, clock) || !keeps_clients(&conn) {
        note(NatNote::ConnStale);
        return None;
    }
    note(NatNote::ConnHit);
    let written = follow(entry, &conn, key.protocol, frame.tcp_flags, clock);
    Some((conn, written))
}

/// Rewrites a frame to `conn`'s 5-tuple and sends it on; the XDP action.
#[inline(always)]
pub fn send(ctx: &XdpContext, frame: &Frame, conn: &Conn) -> Result<u32, Reason> {
    translate(ctx, frame, conn)?;
    egress(ctx, conn.src, conn.dst, frame.key.protocol)
}

/// Whether a connection's server still keeps its clients (online or drained).
#[inline(always)]
fn keeps_clients(conn: &Conn) -> bool {
    matches!(REALS.get(conn.real), Some(r) if r.address == conn.dst && r.flags & REAL_F_KEEP_CLIENTS != 0)
}

/// Tracks a new connection of `key` to real server `real`; returns its
/// client entry.
#[inline(always)]
pub fn track(
    key: &ConnKey,
    frame: &Frame,
    service: &Service,
    real: u32,
    clock: ConnClock,
) -> Result<Conn, Reason> {
    let now = ConnClock::ns();
    let target = REALS.get(real).ok_or(Reason::DropInternal)?;
    let port = match NAT_REALS.get(real) {
        Some(r) if r.port != 0 => r.port,
        _ => key.dport,
    };
    let state = next_state(
        CONN_SYN,
        key.protocol,
        frame.tcp_flags & (TCP_SYN | TCP_RST | TCP_FIN),
    );
    let mut out = Conn {
        src: key.src,
        dst: target.address,
        sport: key.sport,
        dport: port,
        real,
        last_seen_ns: now,
        state,
        reply: 0,
        service_id: service.id as u16,
        seen_jiffies: clock.jiffies,
    };
    let back = Conn {
        src: key.dst,
        dst: key.src,
        sport: key.dport,
        dport: key.sport,
        real,
        last_seen_ns: now,
        state,
        reply: 1,
        service_id: service.id as u16,
        seen_jiffies: clock.jiffies,
    };
    let mut reply = ConnKey::new(target.address, key.src, port, key.sport, key.protocol);
    if service.forwarding == FORWARDING_SNAT {
        let nat = NAT_SERVICES.get(service.id).ok_or(Reason::DropInternal)?;
        out.src = nat.snat_address;
        reply.dst = nat.snat_address;
        reply.dport = snat::take_port(&reply, &back, real, &nat)?;
        out.sport = reply.dport;
    } else if CONNS.insert(&reply, &back, 0).is_err() {
        note(NatNote::TableFull);
        return Err(Reason::DropInternal);
    }
    if CONNS.insert(key, &out, 0).is_err() {
        let _ = CONNS.remove(&reply);
        note(NatNote::TableFull);
        return Err(Reason::DropInternal);
    }
    note(NatNote::ConnNew);
    Ok(out)
}

/// A frame that is no service's: a server's reply to a tracked connection
/// (translated back to VIP:port -> client:port), else `Err`: passed.
#[inline(always)]
pub fn reply(ctx: &XdpContext, frame: &Frame, clock: ConnClock) -> Result<u32, Reason> {
    if NAT_ACTIVE.get(0).is_none_or(|on| *on == 0) {
        return Err(Reason::PassNotService);
    }
    let key = client_key(frame);
    let Some(entry) = CONNS.get_ptr_mut(&key) else {
        // SAFETY: the map value is not used.
        if unsafe { SNAT_ADDRESSES.get(&key.dst) }.is_some() {
            note(NatNote::NoConnection);
        }
        return Err(Reason::PassNotService);
    };
    // SAFETY: a value pointer from the map, valid for this run.
    let conn = unsafe { *entry };
    if conn.reply != 1 || !live(&conn, clock) {
        return Err(Reason::PassNotService);
    }
    let _ = follow(entry, &conn, key.protocol, frame.tcp_flags, clock);
    note(NatNote::Reply);
    send(ctx, frame, &conn)
}

/// An ICMP error (destination unreachable, time exceeded) about a packet
/// of a tracked connection that this node sent: from the client's side
/// (to the VIP, quoting VIP:port -> client:port) or the server's (to the
/// SNAT address or, with NAT, the client, quoting what went to the
/// server). It goes on to the connection's other side as if about the
/// packet that side sent: the outer destination, the quoted packet's
/// addresses and ports, and every checksum but the quoted transport one
/// (which receivers do not check, and which is often not quoted whole)
/// translated; the outer source too when the error came from the quoted
/// packet's destination itself. `Err`: no live connection (passed).
#[inline(always)]
pub fn icmp(ctx: &XdpContext, frame: &Frame, miss: Reason) -> Result<u32, Reason> {
    if NAT_ACTIVE.get(0).is_none_or(|on| *on == 0) {
        return Err(miss);
    }
    // The quoted packet answers frames arriving as its reverse: those
    // frames' entry says how they left, so what the other side sent.
    let key = client_key(frame);
    // SAFETY: the map value is only read here.
    let conn = *unsafe { CONNS.get(&key) }.ok_or(miss)?;
    let now = ConnClock::ns();
    if !conn_is_live(now, conn.last_seen_ns, conn.state) {
        return Err(miss);
    }
    let source = translate_icmp(ctx, frame, &conn)?;
    note(NatNote::IcmpTranslated);
    egress(ctx, source, conn.dst, IPPROTO_ICMP)
}

/// Rewrites an ICMP error for [`icmp`]: to `conn.dst`, quoting
/// `conn.dst:dport -> conn.src:sport`. Returns the outer source it leaves
/// with. A quoted header with options is the kernel's.
#[inline(always)]
fn translate_icmp(ctx: &XdpContext, frame: &Frame, conn: &Conn) -> Result<u32, Reason> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(Reason::DropInternal)?;
    let icmp_check: *mut u16 = ptr_at(ctx, frame.l4 + 2).ok_or(Reason::DropInternal)?;
    let inner: *mut Ipv4Hdr = ptr_at(ctx, frame.l4 + ICMP_HDR_LEN).ok_or(Reason::DropInternal)?;
    let ports: *mut Ports =
        ptr_at(ctx, frame.l4 + ICMP_HDR_LEN + IPV4_HDR_LEN).ok_or(Reason::PassIcmp)?;
    // SAFETY: each pointer checked by `ptr_at`; the frame is ours to change.
    unsafe {
        if (*inner).version_ihl != 0x45 || (*ip).ttl <= 1 {
            return Err(Reason::PassIcmp);
        }
        let (src, dst) = ((*ip).saddr, (*ip).daddr);
        // The quoted packet's destination reporting on itself: the error
        // comes from the address the other side sent to.
        let new_src = if src == (*inner).daddr { conn.src } else { src };
        let ttl_word: *mut u16 = core::ptr::addr_of_mut!((*ip).ttl).cast();
        let old_ttl = ttl_word.read_unaligned();
        (*ip).ttl -= 1;
        let mut check = csum_replace2((*ip).check, old_ttl, ttl_word.read_unaligned());
        check = csum_replace4(check, src, new_src);
        check = csum_replace4(check, dst, conn.dst);
        (*ip).check = check;
        (*ip).saddr = new_src;
        (*ip).daddr = conn.dst;

        let (isrc, idst, icheck) = ((*inner).saddr, (*inner).daddr, (*inner).check);
        let (isport, idport) = ((*ports).src, (*ports).dst);
        let mut inner_check = csum_replace4(icheck, isrc, conn.dst);
        inner_check = csum_replace4(inner_check, idst, conn.src);
        (*inner).saddr = conn.dst;
        (*inner).daddr = conn.src;
        (*inner).check = inner_check;
        (*ports).src = conn.dport;
        (*ports).dst = conn.sport;
        // The ICMP checksum covers the quoted bytes: each change, at an
        // even offset from the ICMP header, enters it.
        let mut c = csum_replace4(*icmp_check, isrc, conn.dst);
        c = csum_replace4(c, idst, conn.src);
        c = csum_replace2(c, icheck, inner_check);
        c = csum_replace2(c, isport, conn.dport);
        c = csum_replace2(c, idport, conn.sport);
        *icmp_check = c;
        Ok(new_src)
    }
}

/// RFC 1624, eqn. 3: the checksum `check` after a 32-bit word changed from
/// `old` to `new` (all three as they lie in the frame).
#[inline(always)]
fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let mut sum = u32::from(!check)
        + u32::from(!(old as u16))
        + u32::from(!((old >> 16) as u16))
        + u32::from(new as u16)
        + u32::from((new >> 16) as u16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// As [`csum_replace4`] for a 16-bit word.
#[inline(always)]
fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrites the frame's addresses and ports to `to`'s, with the IPv4 and
/// the TCP or UDP checksum updated (a UDP checksum of 0, none, stays 0).
#[inline(always)]
fn translate(ctx: &XdpContext, frame: &Frame, to: &Conn) -> Result<(), Reason> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(Reason::DropInternal)?;
    let ports: *mut Ports = ptr_at(ctx, frame.l4).ok_or(Reason::DropInternal)?;
    let check_at = if frame.key.protocol == IPPROTO_UDP {
        frame.l4 + UDP_CHECK
    } else {
        frame.l4 + TCP_CHECK
    };
    let l4_check: *mut u16 = ptr_at(ctx, check_at).ok_or(Reason::DropInternal)?;
    // SAFETY: each pointer checked by `ptr_at`; the frame is ours to change.
    unsafe {
        // A router: the TTL goes down by one; a frame that would leave
        // with none goes to the kernel, which answers "time exceeded".
        if (*ip).ttl <= 1 {
            return Err(Reason::PassNotService);
        }
        let ttl_word: *mut u16 = core::ptr::addr_of_mut!((*ip).ttl).cast();
        let old_ttl = ttl_word.read_unaligned();
        (*ip).ttl -= 1;
        let (src, dst) = ((*ip).saddr, (*ip).daddr);
        let (sport, dport) = ((*ports).src, (*ports).dst);
        let mut check = csum_replace2((*ip).check, old_ttl, ttl_word.read_unaligned());
        check = csum_replace4(check, src, to.src);
        check = csum_replace4(check, dst, to.dst);
        (*ip).check = check;
        (*ip).saddr = to.src;
        (*ip).daddr = to.dst;
        (*ports).src = to.sport;
        (*ports).dst = to.dport;
        let old = *l4_check;
        if frame.key.protocol == IPPROTO_TCP || old != 0 {
            let mut c = csum_replace4(old, src, to.src);
            c = csum_replace4(c, dst, to.dst);
            c = csum_replace2(c, sport, to.sport);
            c = csum_replace2(c, dport, to.dport);
            if frame.key.protocol == IPPROTO_UDP && c == 0 {
                c = 0xffff;
            }
            *l4_check = c;
        }
    }
    Ok(())
}

/// Sends the rewritten frame towards `dst` as the kernel's routing table
/// says: the next hop's MAC from its neighbour table, out of the interface
/// it came in by (`XDP_TX`) or another lbd has attached (redirect). A next
/// hop the kernel has not resolved yet: the kernel forwards the frame
/// (`XDP_PASS`), which resolves it.
#[inline(always)]
fn egress(ctx: &XdpContext, src: u32, dst: u32, protocol: u8) -> Result<u32, Reason> {
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: a helper without arguments; the verifier inlines it.
    let jiffies = unsafe { bpf_jiffies64() } as u32;
    let slot = dst.wrapping_mul(0x9E37_79B1) >> (32 - NEXT_HOP_SLOTS.trailing_zeros());
    let cached = NEXT_HOPS.get_ptr_mut(slot);
    if let Some(hop) = cached {
        // SAFETY: this CPU's slot, valid for this run.
        let hop = unsafe { *hop };
        if hop.dst == dst
            && hop.ingress == ingress
            && hop.seen_jiffies != 0
            && jiffies.wrapping_sub(hop.seen_jiffies) < NEXT_HOP_FRESH_JIFFIES
        {
            return leave(ctx, ingress, hop.ifindex, hop.dmac, hop.smac);
        }
    }
    let Some((ifindex, dmac, smac)) = fib(ctx, ingress, src, dst, protocol)? else {
        // The kernel forwards the translated frame itself, resolving the
        // next hop on the way (later frames then take the fast path).
        note(NatNote::NoNeighbour);
        return Ok(xdp_action::XDP_PASS);
    };
    if let Some(hop) = cached {
        // SAFETY: as above.
        unsafe {
            *hop = NextHop {
                dst,
                ingress,
                ifindex,
                seen_jiffies: jiffies,
                dmac,
                smac,
            };
        }
    }
    leave(ctx, ingress, ifindex, dmac, smac)
}

/// The FIB lookup's parameter block, or the words it is zeroed by.
#[repr(C)]
union FibParams {
    words: [u64; 8],
    params: bpf_fib_lookup,
}

const _: () = assert!(core::mem::size_of::<FibParams>() == core::mem::size_of::<bpf_fib_lookup>());

/// Asks the kernel's routing table the way to `dst`: the interface and the
/// MAC addresses; `None` while the next hop's MAC is not known; `Err`: no
/// route (dropped).
#[inline(always)]
fn fib(
    ctx: &XdpContext,
    ingress: u32,
    src: u32,
    dst: u32,
    protocol: u8,
) -> Result<Option<(u32, MacWords, MacWords)>, Reason> {
    // Zeroed by eight volatile word stores: `mem::zeroed()`, or plain
    // stores LLVM merges back into one, becomes a call of `memset` (a
    // byte loop in a function of its own) for the BPF target.
    let mut zeroed = FibParams { words: [0; 8] };
    // SAFETY: `words` is the field just written; each store is in bounds.
    unsafe {
        for word in &mut zeroed.words {
            core::ptr::write_volatile(word, 0);
        }
    }
    // SAFETY: all-zero is a valid value of this plain C struct.
    let params = unsafe { &mut zeroed.params };
    params.family = AF_INET;
    params.l4_protocol = protocol;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: the context and a parameter block of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &raw mut *params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        return Ok(None);
    }
    if rc != 0 {
        note(NatNote::NoRoute);
        return Err(Reason::DropNoReal);
    }
    Ok(Some((
        params.ifindex,
        crate::parse::mac_words(params.dmac),
        crate::parse::mac_words(params.smac),
    )))
}

/// The frame leaves by `ifindex` to `dmac` from `smac`: `XDP_TX` by the
/// interface it came in by, else a redirect.
#[inline(always)]
fn leave(
    ctx: &XdpContext,
    ingress: u32,
    ifindex: u32,
    dmac: MacWords,
    smac: MacWords,
) -> Result<u32, Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::DropInternal)?;
    // SAFETY: checked by `ptr_at`; the frame is ours to change.
    unsafe {
        (*eth).dst = dmac;
        (*eth).src = smac;
    }
    if ifindex == ingress {
        return Ok(xdp_action::XDP_TX);
    }
    match NAT_EGRESS.redirect(ifindex, 0) {
        Ok(action) if action == xdp_action::XDP_REDIRECT => {
            note(NatNote::Redirected);
            Ok(action)
        }
        _ => {
            note(NatNote::EgressUnknown);
            Err(Reason::DropInternal)
        }
    }
}
