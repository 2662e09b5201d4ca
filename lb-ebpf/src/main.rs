//! The XDP data path of the load balancer: direct routing with source-IP affinity.
//!
//! A frame to a configured VIP:port:protocol is sent back out of the interface
//! it came in on (`XDP_TX`) with only its Ethernet addresses rewritten: the
//! destination becomes the chosen real server's MAC, the source the interface's.
//! The real server holds the VIP on a loopback and answers the client directly.
//!
//! The real server is chosen by the client's source address masked by the
//! service netmask: first from the affinity table (a live entry keeps its
//! server), else from the service's Maglev ring, and the choice is written
//! back unless the client has not shown it is real (a bare TCP SYN), its
//! service holds its share of the table, or the table is full: the table
//! never evicts, so no flood of new sources can take a live client's entry.
//! Fragments and ICMP errors about a service's packets go where the same
//! client's datagrams go. Everything else goes to the kernel untouched, and
//! every decision is counted in [`REASONS`].
//!
//! A client that keeps sending is served from [`FLOW_CACHE`] (see `cache`):
//! on a hit the frame costs no hash-table lookup and no clock read.
//!
//! Modules: `parse` (what a frame is), `cache` (the flow cache), `clock`
//! (the entries' time), `count` (counters), `arp` (answers for held VIPs),
//! `census` (the walk of the affinity table), `nat` and `snat` (NAT and
//! SNAT forwarding); here: the maps, the lookups and the pipeline.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so `core::sync::atomic` offers no
// read-modify-write; its `lock ... +=` instruction is reached through the
// intrinsic (the kernel's `__sync_fetch_and_add` with the result unused).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod arp;
mod cache;
mod census;
mod clock;
mod count;
mod nat;
mod parse;
mod snat;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{xdp_action, BPF_EXIST, BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::bpf_jiffies64,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    affinity_is_live, client_hash, nat::FORWARDING_DR, ring_index, Affinity, AffinityKey, Counters,
    Globals, Real, Reason, ReasonCounters, Service, ServiceKey, VipProtocol,
    AFFINITY_FRESH_JIFFIES, FLOW_CACHE_SLOTS, MAGLEV_RING_SIZE, MAGLEV_RING_SLOTS,
    MAX_AFFINITY_ENTRIES, MAX_FRAGMENT_TARGETS, MAX_HELD_VIPS, MAX_REALS, MAX_SERVICES, NO_REAL,
    REAL_F_KEEP_CLIENTS, REAL_F_RESOLVED,
};

use crate::{
    cache::CachedFlow,
    clock::Clock,
    count::{count_forwarded, Tally},
    parse::{mac_words, parse, ptr_at, EthHdr, Frame, FrameKind, MacWords},
};

/// `E2BIG`: what a full hash map answers to an insert.
const E2BIG: i64 = 7;

// --------------------------------------------------------------------- maps

/// Virtual services by VIP, port and protocol. Written by lbd.
#[map]
static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Maglev rings, `MAGLEV_RING_SIZE` real-server indexes per slot, two slots per
/// service (live and next). Read on every affinity miss; lbd writes a ring
/// straight into the map's memory, which it maps into its own (mmapable).
#[map]
static MAGLEV_RINGS: Array<u32> =
    Array::with_max_entries(MAGLEV_RING_SLOTS * MAGLEV_RING_SIZE, BPF_F_MMAPABLE);

/// Real servers by index (0 is "none"): address, MAC, flags. Written by lbd.
#[map]
static REALS: Array<Real> = Array::with_max_entries(MAX_REALS, 0);

/// Client affinity: (service, masked client address) to real server and last
/// packet time. A plain hash, not an LRU: nothing is ever evicted to make
/// room. Written here for new clients (counted in [`CLIENT_COUNTS`]); lbd
/// removes expired entries, and adds the peer's.
#[map]
static AFFINITY: HashMap<AffinityKey, Affinity> =
    HashMap::with_max_entries(MAX_AFFINITY_ENTRIES, 0);

/// Entries each service holds in [`AFFINITY`], by service id: added to here
/// (atomically), taken from by lbd when it removes an entry (mmapable).
#[map]
static CLIENT_COUNTS: Array<u64> = Array::with_max_entries(MAX_SERVICES, BPF_F_MMAPABLE);

/// Flow-cache generation by service id: lbd bumps a service's after writing
/// anything that could contradict a cached decision of that service, which
/// empties every CPU's cache of it and of no other. 0: not cached.
#[map]
static FLOW_GENERATIONS: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

/// The destination port of the one service of a VIP and protocol, by which
/// its fragments are placed. lbd writes an entry only where a VIP has a single
/// service (forwarding or redirect) of that protocol; elsewhere fragments go
/// to the kernel whole.
#[map]
static FRAGMENTS: HashMap<VipProtocol, u16> = HashMap::with_max_entries(MAX_FRAGMENT_TARGETS, 0);

/// Per-CPU packets, bytes and new clients per real-server index. Written here.
/// A slot belongs to one service, so lbd sums a service's traffic from its
/// slots: one counter update per frame instead of two.
#[map]
static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Slot 0, per CPU: a count of every [`Reason`], one verdict per frame plus
/// notes. Written here.
#[map]
static REASONS: PerCpuArray<ReasonCounters> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: settings of the whole data path (the interface MAC). Written by lbd.
#[map]
static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

/// The VIPs this node holds now (master, or a single node), by address in
/// network byte order: ARP requests for them are answered here (see `arp`).
/// Written by lbd as it adds and removes VIPs.
#[map]
static HELD_VIPS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_HELD_VIPS, 0);

/// Slot 0: the node's ARP lease, in `bpf_ktime_get_ns` nanoseconds: held VIPs
/// are answered until then ([`lb_common::ARP_LEASE_FOREVER`]: always). The
/// master of a pair renews it as it advertises (mmapable). Read only for ARP
/// requests for a held VIP.
#[map]
static ARP_LEASE: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Per-CPU, direct-mapped decisions (see `cache`). Written and read here only.
#[map]
static FLOW_CACHE: PerCpuArray<CachedFlow> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

// ------------------------------------------------------------------ lookups

/// A real server that may receive frames: its index and its entry.
struct Target {
    index: u32,
    real: Real,
}

/// Where a flow goes: the real server's index and MAC, and whether the
/// client is new to it (counted in [`Counters::new_clients`]).
pub struct Decision {
    pub real: u32,
    pub mac: MacWords,
    pub new_client: bool,
}

/// What the affinity table says of a client.
enum Remembered {
    /// A live entry for a server that keeps its clients.
    Live(Target),
    /// An entry that no longer counts (expired, or its server is halted,
    /// down or gone): replaced in place when the client is remembered again.
    Replaceable,
    /// No entry.
    Absent,
}

/// The client's affinity entry. `refresh`: bring a live entry's last-seen
/// time up to now, unless the data path did so less than
/// `AFFINITY_FRESH_JIFFIES` ticks ago (then it is live without a clock read).
#[inline(always)]
fn lookup_affinity(
    key: &AffinityKey,
    service: &Service,
    clock: &mut Clock,
    refresh: bool,
    tally: Tally,
) -> Remembered {
    let Some(entry) = AFFINITY.get_ptr_mut(key) else {
        return Remembered::Absent;
    };
    // SAFETY: a value pointer from the map, valid for this program run.
    let Affinity {
        real: index,
        real_address,
        last_seen_ns,
        seen_jiffies,
        ..
    } = unsafe { *entry };
    // Another CPU may have stored a tick later than the one read here: the
    // difference wraps to a large number, and the entry is checked in full.
    let fresh = seen_jiffies != 0
        && (clock.jiffies as u32).wrapping_sub(seen_jiffies) < AFFINITY_FRESH_JIFFIES;
    if !fresh && !affinity_is_live(clock.ns(), last_seen_ns, service.timeout_ns) {
        tally.count(Reason::AffinityExpired);
        return Remembered::Replaceable;
    }
    let real = match REALS.get(index) {
        Some(real)
            if real.address == real_address
                && u32::from(real.service_id) == service.id
                && real.flags & REAL_F_KEEP_CLIENTS != 0 =>
        {
            *real
        }
        _ => {
            tally.count(Reason::AffinityStale);
            return Remembered::Replaceable;
        }
    };
    if refresh && !fresh {
        // SAFETY: as above; a racing writer on another CPU stores a time as
        // good. The time first: an entry that looks fresh is live.
        unsafe {
            (*entry).last_seen_ns = clock.ns();
            (*entry).seen_jiffies = clock.jiffies as u32;
        }
    }
    tally.count(Reason::AffinityHit);
    Remembered::Live(Target { index, real })
}

/// The real server the service's Maglev ring gives the client, or the
/// fallback, and whether it may be remembered for the client (the fallback
/// never is, so clients leave it as soon as a real server is back). The
/// server's slot is checked as on the affinity path: lbd writes a ring
/// before taking a server's right to clients away, but a frame may read the
/// ring in between.
#[inline(always)]
fn lookup_ring(service: &Service, client: u32, tally: Tally) -> Result<(Target, bool), Reason> {
    let slot_entry = client_hash(client) % MAGLEV_RING_SIZE;
    let mut index = *MAGLEV_RINGS
        .get(ring_index(service.ring_slot, slot_entry))
        .ok_or(Reason::DropInternal)?;
    let mut remember = true;
    if index == NO_REAL {
        index = service.fallback_real;
        if index == NO_REAL {
            return Err(Reason::DropNoReal);
        }
        tally.count(Reason::Fallback);
        remember = false;
    }
    let real = *REALS.get(index).ok_or(Reason::DropInternal)?;
    if real.flags & REAL_F_RESOLVED == 0 {
        return Err(Reason::DropRealUnresolved);
    }
    if real.flags & REAL_F_KEEP_CLIENTS == 0 || u32::from(real.service_id) != service.id {
        return Err(Reason::DropRealNotReady);
    }
    Ok((Target { index, real }, remember))
}

/// Writes a new client's entry, unless its service holds its share of the
/// table or the table is full (counted; the client is served all the same).
/// `replace`: an entry that no longer counts is there, and is overwritten
/// in place (the service's count does not change). Returns whether the
/// client is now in the table.
#[inline(always)]
fn remember(
    key: &AffinityKey,
    entry: &Affinity,
    service: &Service,
    replace: bool,
    tally: Tally,
) -> bool {
    if replace && AFFINITY.insert(key, entry, u64::from(BPF_EXIST)).is_ok() {
        census::announce(key, entry);
        return true;
    }
    let Some(count) = CLIENT_COUNTS.get_ptr_mut(service.id) else {
        return false;
    };
    // SAFETY: a value pointer into an array map, valid for this run; other
    // CPUs and lbd change it only atomically, and an aligned 8-byte load
    // never tears.
    if unsafe { core::ptr::read_volatile(count) } >= u64::from(service.max_clients) {
        tally.count(Reason::FloodQuotaFull);
        return false;
    }
    match AFFINITY.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            // SAFETY: as above; the result is unused, so this is one
            // `lock *(u64 *)(count) += 1`.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(count, 1) };
            census::announce(key, entry);
            true
        }
        Err(error) if i64::from(error) == -E2BIG => {
            tally.count(Reason::FloodTableFull);
            false
        }
        // EEXIST: another CPU remembered the same client just now.
        Err(_) => false,
    }
}

// ---------------------------------------------------------------- rewriting

/// Readdresses the frame to the real server: the only change made to it.
#[inline(always)]
fn rewrite_macs(ctx: &XdpContext, dst: MacWords, src: MacWords) -> Result<(), Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::DropInternal)?;
    // SAFETY: checked by `ptr_at`; the frame is ours to change.
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
    }
    Ok(())
}

// ----------------------------------------------------------------- pipeline

/// The program attached to `node.interface`. Inlined into the entry point
/// the macro wraps it in: as a function of its own it would cost every
/// frame a BPF-to-BPF call.
#[xdp]
#[inline(always)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let tally = Tally::this_cpu();
    let (action, reason) = match try_lb_xdp(&ctx, tally) {
        Ok(action) => (action, Reason::Forwarded),
        // Looked at only now, so an IPv4 frame does not pay for it.
        Err(Reason::PassNotIpv4) => match answer_arp(&ctx) {
            Some(Ok(())) => (xdp_action::XDP_TX, Reason::ArpAnswered),
            Some(Err(reason)) => (xdp_action::XDP_PASS, reason),
            None => (xdp_action::XDP_PASS, Reason::PassNotIpv4),
        },
        Err(reason) => {
            let action = match reason {
                Reason::DropNoReal
                | Reason::DropRealUnresolved
                | Reason::DropRealNotReady
                | Reason::DropLoop
                | Reason::DropInternal => xdp_action::XDP_DROP,
                _ => xdp_action::XDP_PASS,
            };
            (action, reason)
        }
    };
    tally.count_verdict(reason);
    action
}

/// `None` for a frame that is not ARP; else as [`arp::answer`].
#[inline(always)]
fn answer_arp(ctx: &XdpContext) -> Option<Result<(), Reason>> {
    // An array's slot always exists; before lbd writes it, HELD_VIPS is
    // empty too and nothing is answered.
    let iface_mac = GLOBALS.get(0).map_or([0; 3], |g| mac_words(g.iface_mac));
    arp::answer(ctx, iface_mac)
}

/// `Ok` forwards the (rewritten) frame with that action (`XDP_TX`, or a
/// redirect for NAT); `Err` names why it is passed or dropped.
#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext, tally: Tally) -> Result<u32, Reason> {
    let mut frame = parse(ctx)?;
    let globals = *GLOBALS.get(0).ok_or(Reason::DropInternal)?;
    let iface_mac = mac_words(globals.iface_mac);
    match frame.kind {
        FrameKind::Datagram { .. } => {}
        FrameKind::Fragment => {
            let target = VipProtocol::new(frame.key.vip, frame.key.protocol);
            // SAFETY: the map value is only read here.
            frame.key.port = *unsafe { FRAGMENTS.get(&target) }.ok_or(Reason::PassFragment)?;
        }
        FrameKind::IcmpError => {
            // SAFETY: as above.
            if unsafe { SERVICES.get(&frame.key) }.is_none() {
                // About a packet a NAT or SNAT connection's server sent.
                return nat::icmp(ctx, &frame, Reason::PassIcmp);
            }
        }
    }
    // SAFETY: a helper without arguments; the verifier inlines it.
    let jiffies = unsafe { bpf_jiffies64() };

    let cached = match frame.kind {
        FrameKind::Datagram { .. } => cache::lookup(&frame.key, frame.client, jiffies as u32),
        _ => None,
    };
    let decision = match cached {
        Some(decision) => {
            if frame.dst_mac != iface_mac {
                return Err(Reason::PassNotForUs);
            }
            tally.count(Reason::FlowCacheHit);
            tally.count(Reason::AffinityHit);
            decision
        }
        None => {
            // SAFETY: the map value is only read here.
            let Some(service) = (unsafe { SERVICES.get(&frame.key) }).copied() else {
                return match frame.kind {
                    FrameKind::Datagram { .. } => nat::reply(
                        ctx,
                        &frame,
                        nat::ConnClock {
                            jiffies: jiffies as u32,
                        },
                    ),
                    FrameKind::Fragment | FrameKind::IcmpError => Err(Reason::PassNotService),
                };
            };
            if frame.dst_mac != iface_mac {
                return Err(Reason::PassNotForUs);
            }
            if service.forwarding != FORWARDING_DR {
                return forward_nat(ctx, &frame, &service, jiffies, tally);
            }
            decide(&frame, &service, jiffies, tally)?
        }
    };
    // A frame from our own MAC cannot have come through a router (and the
    // benchmarks loop frames back to us that way).
    if decision.mac == frame.src_mac && frame.src_mac != iface_mac {
        return Err(Reason::DropLoop);
    }
    match frame.kind {
        FrameKind::Datagram { .. } => {}
        FrameKind::Fragment => tally.count(Reason::FragmentToReal),
        FrameKind::IcmpError => tally.count(Reason::IcmpToReal),
    }

    rewrite_macs(ctx, decision.mac, iface_mac)?;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    count_forwarded(decision.real, bytes, decision.new_client);
    Ok(xdp_action::XDP_TX)
}

/// A frame for a NAT or SNAT service: whole datagrams follow their tracked
/// connection (a new one's server chosen as for direct routing), ICMP
/// errors about them go to its server ([`nat::icmp`]); fragments go to
/// the kernel (counted as such).
#[inline(always)]
fn forward_nat(
    ctx: &XdpContext,
    frame: &Frame,
    service: &Service,
    jiffies: u64,
    tally: Tally,
) -> Result<u32, Reason> {
    match frame.kind {
        FrameKind::Datagram { .. } => {}
        FrameKind::Fragment => return Err(Reason::PassFragment),
        FrameKind::IcmpError => return nat::icmp(ctx, frame, Reason::PassIcmp),
    }
    let clock = nat::ConnClock {
        jiffies: jiffies as u32,
    };
    let key = nat::client_key(frame);
    let (conn, new_client) = match nat::existing(&key, frame, clock) {
        Some((conn, checked)) => {
            if checked {
                keep_client(frame, service, &conn, jiffies, tally);
            }
            (conn, false)
        }
        None => {
            let decision = decide(frame, service, jiffies, tally)?;
            let conn = nat::track(&key, frame, service, decision.real, clock)?;
            (conn, decision.new_client)
        }
    };
    let action = nat::send(ctx, frame, &conn)?;
    let real = conn.real;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    count_forwarded(real, bytes, new_client);
    Ok(action)
}

/// Persistence for a NAT or SNAT connection's client, as direct routing
/// keeps it: the client's affinity entry refreshed, or written once the
/// client has shown it is real (the handshake's ACK; its SYN was not
/// remembered), for its connection's server. Called when the connection's
/// entry is checked in full, at most about once a second.
#[inline(always)]
fn keep_client(
    frame: &Frame,
    service: &Service,
    conn: &lb_common::nat::Conn,
    jiffies: u64,
    tally: Tally,
) {
    let key = AffinityKey {
        service_id: service.id,
        client: frame.client & service.netmask,
    };
    let mut clock = Clock { jiffies, ns: None };
    let replace = match lookup_affinity(&key, service, &mut clock, true, tally) {
        Remembered::Live(_) => return,
        Remembered::Replaceable => true,
        Remembered::Absent => false,
    };
    if frame.kind != (FrameKind::Datagram { syn_only: false }) {
        return;
    }
    let Some(real) = REALS.get(conn.real) else {
        return;
    };
    let entry = Affinity {
        real: conn.real,
        real_address: real.address,
        last_seen_ns: clock.ns(),
        seen_jiffies: clock.jiffies as u32,
        sync_pass: 0,
    };
    remember(&key, &entry, service, replace, tally);
}

/// The decision from the shared tables: the service, then the client's
/// affinity entry, else the Maglev ring (remembered when allowed). A
/// decision in the table is cached if the service's generation was the same
/// before and after it was taken, so a decision that raced with lbd's
/// writes is never kept; an ICMP error or a fragment is decided read-only
/// apart from remembering a fragment's client, and is not cached.
#[inline(always)]
fn decide(
    frame: &Frame,
    service: &Service,
    jiffies: u64,
    tally: Tally,
) -> Result<Decision, Reason> {
    let service = *service;
    let generation = cache::generation(service.id);
    let mut clock = Clock { jiffies, ns: None };
    let key = AffinityKey {
        service_id: service.id,
        client: frame.client & service.netmask,
    };
    let icmp = frame.kind == FrameKind::IcmpError;
    let (target, new_client, in_table) =
        match lookup_affinity(&key, &service, &mut clock, !icmp, tally) {
            Remembered::Live(target) => (target, false, true),
            other => {
                tally.count(Reason::AffinityMiss);
                let (target, may_remember) = lookup_ring(&service, key.client, tally)?;
                let mut remembered = false;
                if may_remember && !icmp {
                    if frame.kind == (FrameKind::Datagram { syn_only: true }) {
                        tally.count(Reason::FloodSynUnremembered);
                    } else {
                        let entry = Affinity {
                            real: target.index,
                            real_address: target.real.address,
                            last_seen_ns: clock.ns(),
                            seen_jiffies: clock.jiffies as u32,
                            sync_pass: 0,
                        };
                        let replace = matches!(other, Remembered::Replaceable);
                        remembered = remember(&key, &entry, &service, replace, tally);
                    }
                }
                (target, true, remembered)
            }
        };
    if target.real.flags & REAL_F_RESOLVED == 0 {
        return Err(Reason::DropRealUnresolved);
    }
    let decision = Decision {
        real: target.index,
        mac: mac_words(target.real.mac),
        new_client,
    };
    let cacheable = in_table
        && matches!(frame.kind, FrameKind::Datagram { .. })
        && service.forwarding == FORWARDING_DR;
    if cacheable && generation != 0 && generation == cache::generation(service.id) {
        cache::store(
            &frame.key,
            frame.client,
            service.id,
            &decision,
            generation,
            jiffies as u32,
        );
    }
    Ok(decision)
}

lb_common::bpf_object_essentials!();
