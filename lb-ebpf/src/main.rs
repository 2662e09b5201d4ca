//! The XDP data path of the load balancer: direct routing with source-IP affinity.
//!
//! A frame to a configured VIP:port:protocol is sent back out of the interface
//! it came in on (`XDP_TX`) with only its Ethernet addresses rewritten: the
//! destination becomes the chosen real server's MAC, the source the interface's.
//! The real server holds the VIP on a loopback and answers the client directly.
//!
//! The real server is chosen by the client's source address masked by the
//! service netmask: first from the affinity table (a live entry keeps its
//! server), else from the service's Maglev ring, and the choice is written back.
//! Everything else goes to the kernel untouched, and every decision is counted
//! in [`REASONS`].
//!
//! A client that keeps sending is served from [`FLOW_CACHE`], a per-CPU
//! exact-match cache of the decision above (the idea of Open vSwitch's EMC):
//! on a hit the frame costs no hash-table lookup and no clock read, only
//! lookups the verifier inlines. The shared tables stay the truth: a cached
//! decision is taken again from them at least every
//! [`FLOW_CACHE_MAX_AGE_JIFFIES`], and at once after lbd changes a service, a
//! real server or an affinity entry (it bumps [`Globals::flow_generation`]).
//!
//! Reads top to bottom: constants, maps, parsing helpers, the pipeline.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE},
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    client_hash, ring_index, Affinity, AffinityKey, Counters, Globals, Real, Reason,
    ReasonCounters, Service, ServiceKey, AFFINITY_REFRESH_NS, FLOW_CACHE_MAX_AGE_JIFFIES,
    FLOW_CACHE_MIN_TIMEOUT_NS, FLOW_CACHE_SLOTS, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_RING_SIZE,
    MAGLEV_RING_SLOTS, MAX_AFFINITY_ENTRIES, MAX_REALS, MAX_SERVICES, NO_REAL, REAL_F_KEEP_CLIENTS,
    REAL_F_RESOLVED,
};

// ---------------------------------------------------------------- constants

const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HDR_LEN: usize = 20;
const IP_MORE_FRAGMENTS: u16 = 0x2000;
const IP_FRAGMENT_OFFSET: u16 = 0x1FFF;
const TCP_MIN_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;

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
/// packet time. Written here on every new client; lbd reads it for status and
/// removes nothing (the timeout and LRU eviction age entries out).
#[map]
static AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::with_max_entries(MAX_AFFINITY_ENTRIES, 0);

/// Per-CPU packets, bytes and new clients per real-server index. Written here.
/// A slot belongs to one service, so lbd sums a service's traffic from its
/// slots: one counter update per frame instead of two.
#[map]
static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Slot 0, per CPU: a count of every [`Reason`], one verdict per frame plus
/// notes. Written here.
#[map]
static REASONS: PerCpuArray<ReasonCounters> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: settings of the whole data path (the interface MAC, the flow-cache
/// generation). Written by lbd.
#[map]
static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

/// Per-CPU, direct-mapped: the last decision for a (VIP, port, protocol,
/// client) that hashed to each slot. Written and read here only; lbd
/// invalidates all of it by bumping [`Globals::flow_generation`].
#[map]
static FLOW_CACHE: PerCpuArray<CachedFlow> = PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// One [`FLOW_CACHE`] slot: a forwarding decision and when it was taken.
#[repr(C)]
#[derive(Clone, Copy)]
struct CachedFlow {
    /// [`Globals::flow_generation`] when taken; a slot of another generation
    /// (or of generation 0, never written) is empty.
    generation: u64,
    /// The low 32 bits of `bpf_jiffies64()` when taken from the shared tables.
    taken_jiffies: u32,
    /// The flow: VIP, client (unmasked), port, protocol, as in the frame.
    vip: u32,
    client: u32,
    port: u16,
    protocol: u8,
    pad: u8,
    /// The real server's index and MAC address.
    real: u32,
    mac: MacWords,
    pad2: u16,
}

const _: () = assert!(size_of::<CachedFlow>() == 40);

// ------------------------------------------------------------------ parsing

/// A MAC address as three 16-bit words. Frames start at an even address (the
/// XDP headroom is 256 bytes), so 16-bit loads and stores are the widest the
/// BPF target makes for a header field: it splits any access it cannot prove
/// aligned into single bytes, which costs more here than anything else.
type MacWords = [u16; 3];

/// `mac` as [`MacWords`], in the same byte order.
#[inline(always)]
fn mac_words(mac: [u8; 6]) -> MacWords {
    [
        u16::from_ne_bytes([mac[0], mac[1]]),
        u16::from_ne_bytes([mac[2], mac[3]]),
        u16::from_ne_bytes([mac[4], mac[5]]),
    ]
}

#[repr(C)]
struct EthHdr {
    dst: MacWords,
    src: MacWords,
    ethertype: u16,
}

/// The fixed IPv4 header; every multi-byte field in network byte order.
/// Packed to 2 because it starts 14 bytes into the frame.
#[repr(C, packed(2))]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// The first four bytes of TCP and UDP alike: source and destination port.
#[repr(C)]
struct Ports {
    src: u16,
    dst: u16,
}

/// The one bounds check: a pointer to a `T` at `offset`, if the frame holds it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// What the parser found in a frame bound for a possible service.
struct Flow {
    key: ServiceKey,
    saddr: u32,
    /// The frame's destination MAC address.
    dst_mac: MacWords,
}

/// Parses Ethernet, IPv4 and the TCP or UDP header; `Err` is the reason to pass.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Flow, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::PassTruncatedEthernet)?;
    // SAFETY: `ptr_at` checked the header lies inside the frame.
    let (ethertype, dst_mac) = unsafe { (u16::from_be((*eth).ethertype), (*eth).dst) };
    match ethertype {
        ETH_P_IP => {}
        ETH_P_IPV6 => return Err(Reason::PassIpv6),
        ETH_P_8021Q | ETH_P_8021AD => return Err(Reason::PassVlan),
        _ => return Err(Reason::PassNotIpv4),
    }

    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(Reason::PassTruncatedIp)?;
    // SAFETY: as above, for the 20-byte IPv4 header.
    let (version_ihl, total_len, frag_off, protocol, saddr, daddr) = unsafe {
        (
            (*ip).version_ihl,
            usize::from(u16::from_be((*ip).total_len)),
            u16::from_be((*ip).frag_off),
            (*ip).protocol,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    let header_len = usize::from(version_ihl & 0x0F) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HDR_LEN || total_len < header_len {
        return Err(Reason::PassBadIp);
    }
    if ETH_HDR_LEN + total_len > ctx.data_end() - ctx.data() {
        return Err(Reason::PassTruncatedIp);
    }
    if frag_off & (IP_MORE_FRAGMENTS | IP_FRAGMENT_OFFSET) != 0 {
        return Err(Reason::PassFragment);
    }

    let l4 = ETH_HDR_LEN + header_len;
    let l4_len = match protocol {
        IPPROTO_TCP => {
            let offset_byte: *const u8 = ptr_at(ctx, l4 + 12).ok_or(Reason::PassTruncatedL4)?;
            // SAFETY: checked by `ptr_at`.
            let data_offset = usize::from(unsafe { *offset_byte } >> 4) * 4;
            if data_offset < TCP_MIN_HDR_LEN {
                return Err(Reason::PassBadL4);
            }
            data_offset
        }
        IPPROTO_UDP => UDP_HDR_LEN,
        _ => return Err(Reason::PassNotTcpUdp),
    };
    if header_len + l4_len > total_len {
        return Err(Reason::PassTruncatedL4);
    }
    let ports: *const Ports = ptr_at(ctx, l4).ok_or(Reason::PassTruncatedL4)?;
    // SAFETY: checked by `ptr_at`; the whole L4 header is inside `total_len`,
    // itself inside the frame.
    let port = unsafe { (*ports).dst };
    Ok(Flow {
        key: ServiceKey {
            vip: daddr,
            port,
            protocol,
            pad: 0,
        },
        saddr,
        dst_mac,
    })
}

// ------------------------------------------------------------------ lookups

/// A real server that may receive frames: its index and its entry.
struct Target {
    index: u32,
    real: Real,
}

/// Where a flow goes: the real server's index and MAC, and whether the
/// client is new to it (counted in [`Counters::new_clients`]).
struct Decision {
    real: u32,
    mac: MacWords,
    new_client: bool,
}

/// The [`FLOW_CACHE`] slot of a flow: a multiplicative (Fibonacci) hash,
/// whose top bits are well mixed and cost one multiplication.
#[inline(always)]
fn flow_slot(flow: &Flow) -> u32 {
    let mixed = flow.saddr ^ flow.key.vip.rotate_left(16) ^ u32::from(flow.key.port);
    mixed.wrapping_mul(0x9E37_79B1) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros())
}

/// The cached decision for this flow, if it is of this generation and young
/// enough. Anything else is left to the shared tables, which also count why.
/// (The real server's state is not looked at: lbd bumps the generation
/// whenever it writes [`REALS`].)
#[inline(always)]
fn cached_decision(flow: &Flow, generation: u64, jiffies: u32) -> Option<Decision> {
    // SAFETY: a per-CPU value pointer, only read here.
    let cached = unsafe { *FLOW_CACHE.get_ptr(flow_slot(flow))? };
    if cached.generation != generation
        || cached.vip != flow.key.vip
        || cached.client != flow.saddr
        || cached.port != flow.key.port
        || cached.protocol != flow.key.protocol
        || jiffies.wrapping_sub(cached.taken_jiffies) > FLOW_CACHE_MAX_AGE_JIFFIES
    {
        return None;
    }
    Some(Decision {
        real: cached.real,
        mac: cached.mac,
        new_client: false,
    })
}

/// Remembers a decision taken from the shared tables in this CPU's cache.
#[inline(always)]
fn cache_decision(flow: &Flow, decision: &Decision, generation: u64, jiffies: u32) {
    if let Some(slot) = FLOW_CACHE.get_ptr_mut(flow_slot(flow)) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe {
            *slot = CachedFlow {
                generation,
                taken_jiffies: jiffies,
                vip: flow.key.vip,
                client: flow.saddr,
                port: flow.key.port,
                protocol: flow.key.protocol,
                pad: 0,
                real: decision.real,
                mac: decision.mac,
                pad2: 0,
            };
        }
    }
}

/// The live affinity entry of a client, if it still names a usable server.
/// Refreshes its last-seen time (at most once per `AFFINITY_REFRESH_NS`).
#[inline(always)]
fn lookup_affinity(key: &AffinityKey, service: &Service, now: u64, tally: Tally) -> Option<Target> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: a value pointer from the map, valid for this program run.
    let Affinity {
        real: index,
        real_address,
        last_seen_ns,
    } = unsafe { *entry };
    if now.wrapping_sub(last_seen_ns) > service.timeout_ns {
        tally.count(Reason::AffinityExpired);
        return None;
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
            return None;
        }
    };
    if now.wrapping_sub(last_seen_ns) > AFFINITY_REFRESH_NS {
        // SAFETY: as above; a racing writer on another CPU stores a time as good.
        unsafe { (*entry).last_seen_ns = now };
    }
    tally.count(Reason::AffinityHit);
    Some(Target { index, real })
}

/// The real server the service's Maglev ring gives the client, or the fallback,
/// and whether to remember it for the client (the fallback is never remembered,
/// so clients leave it as soon as a real server is back).
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
    Ok((Target { index, real }, remember))
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

// ----------------------------------------------------------------- counting

/// This CPU's [`REASONS`] slot, looked up once per frame.
#[derive(Clone, Copy)]
struct Tally(Option<*mut ReasonCounters>);

impl Tally {
    #[inline(always)]
    fn this_cpu() -> Self {
        Self(REASONS.get_ptr_mut(0))
    }

    #[inline(always)]
    fn count(self, reason: Reason) {
        if let Some(tally) = self.0 {
            // SAFETY: per-CPU slot, no other writer while this program runs here.
            if let Some(counter) = unsafe { (*tally).counts.get_mut(reason as usize) } {
                *counter += 1;
            }
        }
    }
}

#[inline(always)]
fn add(counters: Option<*mut Counters>, bytes: u64, new_client: bool) {
    if let Some(c) = counters {
        // SAFETY: per-CPU slot, as in `Tally::count`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            if new_client {
                (*c).new_clients += 1;
            }
        }
    }
}

// ----------------------------------------------------------------- pipeline

/// The program attached to `node.interface`.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let tally = Tally::this_cpu();
    let (action, reason) = match try_lb_xdp(&ctx, tally) {
        Ok(()) => (xdp_action::XDP_TX, Reason::Forwarded),
        Err(reason) => {
            let action = match reason {
                Reason::DropNoReal | Reason::DropRealUnresolved | Reason::DropInternal => {
                    xdp_action::XDP_DROP
                }
                _ => xdp_action::XDP_PASS,
            };
            (action, reason)
        }
    };
    tally.count(reason);
    action
}

/// `Ok` forwards the (rewritten) frame; `Err` names why it is passed or dropped.
#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext, tally: Tally) -> Result<(), Reason> {
    let flow = parse(ctx)?;
    let globals = *GLOBALS.get(0).ok_or(Reason::DropInternal)?;
    let iface_mac = mac_words(globals.iface_mac);
    // SAFETY: a helper without arguments; the verifier inlines it. The low
    // 32 bits are enough to measure an age of a few hundred ticks.
    let jiffies = unsafe { bpf_jiffies64() } as u32;

    let decision = match cached_decision(&flow, globals.flow_generation, jiffies) {
        Some(decision) => {
            if flow.dst_mac != iface_mac {
                return Err(Reason::PassNotForUs);
            }
            tally.count(Reason::FlowCacheHit);
            tally.count(Reason::AffinityHit);
            decision
        }
        None => {
            let (decision, cacheable) = decide(&flow, iface_mac, tally)?;
            if cacheable && globals.flow_generation != 0 {
                cache_decision(&flow, &decision, globals.flow_generation, jiffies);
            }
            decision
        }
    };

    rewrite_macs(ctx, decision.mac, iface_mac)?;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    add(
        REAL_STATS.get_ptr_mut(decision.real),
        bytes,
        decision.new_client,
    );
    Ok(())
}

/// The decision from the shared tables: the service, then the client's
/// affinity entry, else the Maglev ring. Also says whether the decision may
/// be cached (it is in the affinity table and the service's timeout is long
/// enough for the cache's age not to matter).
#[inline(always)]
fn decide(flow: &Flow, iface_mac: MacWords, tally: Tally) -> Result<(Decision, bool), Reason> {
    // SAFETY: the map value is only read here.
    let service = *unsafe { SERVICES.get(flow.key) }.ok_or(Reason::PassNotService)?;
    if flow.dst_mac != iface_mac {
        return Err(Reason::PassNotForUs);
    }

    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = AffinityKey {
        service_id: service.id,
        client: flow.saddr & service.netmask,
    };
    let (target, new_client, remembered) = match lookup_affinity(&key, &service, now, tally) {
        Some(target) => (target, false, true),
        None => {
            tally.count(Reason::AffinityMiss);
            let (target, remember) = lookup_ring(&service, key.client, tally)?;
            if remember {
                let entry = Affinity {
                    real: target.index,
                    real_address: target.real.address,
                    last_seen_ns: now,
                };
                // A full table evicts its least recently used entry; an
                // insert cannot fail otherwise, and the frame goes out anyway.
                let _ = AFFINITY.insert(key, entry, 0);
            }
            (target, true, remember)
        }
    };
    if target.real.flags & REAL_F_RESOLVED == 0 {
        return Err(Reason::DropRealUnresolved);
    }
    let cacheable = remembered && service.timeout_ns >= FLOW_CACHE_MIN_TIMEOUT_NS;
    Ok((
        Decision {
            real: target.index,
            mac: mac_words(target.real.mac),
            new_client,
        },
        cacheable,
    ))
}

lb_common::bpf_object_essentials!();
