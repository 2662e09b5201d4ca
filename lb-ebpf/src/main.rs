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
//! Reads top to bottom: constants, maps, parsing helpers, the pipeline.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    client_hash, ring_index, Affinity, AffinityKey, Counters, Globals, Real, Reason, Service,
    ServiceKey, AFFINITY_REFRESH_NS, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_RING_SIZE, MAGLEV_RING_SLOTS,
    MAX_AFFINITY_ENTRIES, MAX_REALS, MAX_SERVICES, NO_REAL, REAL_F_KEEP_CLIENTS, REAL_F_RESOLVED,
    REASON_COUNT,
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
/// service (live and next). Written by lbd; read on every affinity miss.
#[map]
static MAGLEV_RINGS: Array<u32> = Array::with_max_entries(MAGLEV_RING_SLOTS * MAGLEV_RING_SIZE, 0);

/// Real servers by index (0 is "none"): address, MAC, flags. Written by lbd.
#[map]
static REALS: Array<Real> = Array::with_max_entries(MAX_REALS, 0);

/// Client affinity: (service, masked client address) to real server and last
/// packet time. Written here on every new client; lbd reads it for status and
/// removes nothing (the timeout and LRU eviction age entries out).
#[map]
static AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::with_max_entries(MAX_AFFINITY_ENTRIES, 0);

/// Per-CPU packets, bytes and new clients per service id. Written here.
#[map]
static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per-CPU packets, bytes and new clients per real-server index. Written here.
#[map]
static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

/// Per-CPU count of every [`Reason`]: one verdict per frame plus notes. Written here.
#[map]
static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Slot 0: settings of the whole data path (the interface MAC). Written by lbd.
#[map]
static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

// ------------------------------------------------------------------ parsing

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: [u8; 2],
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// The first four bytes of TCP and UDP alike: source and destination port.
#[repr(C)]
struct Ports {
    src: [u8; 2],
    dst: [u8; 2],
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
}

/// Parses Ethernet, IPv4 and the TCP or UDP header; `Err` is the reason to pass.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Flow, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::PassTruncatedEthernet)?;
    // SAFETY: `ptr_at` checked the header lies inside the frame.
    let ethertype = u16::from_be_bytes(unsafe { (*eth).ethertype });
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
            usize::from(u16::from_be_bytes((*ip).total_len)),
            u16::from_be_bytes((*ip).frag_off),
            (*ip).protocol,
            u32::from_ne_bytes((*ip).saddr),
            u32::from_ne_bytes((*ip).daddr),
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
    let port = u16::from_ne_bytes(unsafe { (*ports).dst });
    Ok(Flow {
        key: ServiceKey {
            vip: daddr,
            port,
            protocol,
            pad: 0,
        },
        saddr,
    })
}

// ------------------------------------------------------------------ lookups

/// A real server that may receive frames: its index and its entry.
struct Target {
    index: u32,
    real: Real,
}

/// The live affinity entry of a client, if it still names a usable server.
/// Refreshes its last-seen time (at most once per `AFFINITY_REFRESH_NS`).
#[inline(always)]
fn lookup_affinity(key: &AffinityKey, service: &Service, now: u64) -> Option<Target> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: a value pointer from the map, valid for this program run.
    let Affinity {
        real: index,
        real_address,
        last_seen_ns,
    } = unsafe { *entry };
    if now.wrapping_sub(last_seen_ns) > service.timeout_ns {
        count(Reason::AffinityExpired);
        return None;
    }
    let real = match REALS.get(index) {
        Some(real) if real.address == real_address && real.flags & REAL_F_KEEP_CLIENTS != 0 => {
            *real
        }
        _ => {
            count(Reason::AffinityStale);
            return None;
        }
    };
    if now.wrapping_sub(last_seen_ns) > AFFINITY_REFRESH_NS {
        // SAFETY: as above; a racing writer on another CPU stores a time as good.
        unsafe { (*entry).last_seen_ns = now };
    }
    count(Reason::AffinityHit);
    Some(Target { index, real })
}

/// The real server the service's Maglev ring gives the client, or the fallback,
/// and whether to remember it for the client (the fallback is never remembered,
/// so clients leave it as soon as a real server is back).
#[inline(always)]
fn lookup_ring(service: &Service, client: u32) -> Result<(Target, bool), Reason> {
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
        count(Reason::Fallback);
        remember = false;
    }
    let real = *REALS.get(index).ok_or(Reason::DropInternal)?;
    Ok((Target { index, real }, remember))
}

// ---------------------------------------------------------------- rewriting

/// Readdresses the frame to the real server: the only change made to it.
#[inline(always)]
fn rewrite_macs(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::DropInternal)?;
    // SAFETY: checked by `ptr_at`; the frame is ours to change.
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
    }
    Ok(())
}

// ----------------------------------------------------------------- counting

#[inline(always)]
fn count(reason: Reason) {
    if let Some(counter) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn add(counters: Option<*mut Counters>, bytes: u64, new_client: bool) {
    if let Some(c) = counters {
        // SAFETY: per-CPU slot, as in `count`.
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
    let (action, reason) = match try_lb_xdp(&ctx) {
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
    count(reason);
    action
}

/// `Ok` forwards the (rewritten) frame; `Err` names why it is passed or dropped.
#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<(), Reason> {
    let flow = parse(ctx)?;
    // SAFETY: the map value is only read here.
    let service = *unsafe { SERVICES.get(&flow.key) }.ok_or(Reason::PassNotService)?;

    let iface_mac = GLOBALS.get(0).ok_or(Reason::DropInternal)?.iface_mac;
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::DropInternal)?;
    // SAFETY: checked by `ptr_at`.
    if unsafe { (*eth).dst } != iface_mac {
        return Err(Reason::PassNotForUs);
    }

    let now = unsafe { bpf_ktime_get_ns() };
    let key = AffinityKey {
        service_id: service.id,
        client: flow.saddr & service.netmask,
    };
    let (target, new_client) = match lookup_affinity(&key, &service, now) {
        Some(target) => (target, false),
        None => {
            count(Reason::AffinityMiss);
            let (target, remember) = lookup_ring(&service, key.client)?;
            if remember {
                let entry = Affinity {
                    real: target.index,
                    real_address: target.real.address,
                    last_seen_ns: now,
                };
                // A full table evicts its least recently used entry; an
                // insert cannot fail otherwise, and the frame goes out anyway.
                let _ = AFFINITY.insert(&key, &entry, 0);
            }
            (target, true)
        }
    };
    if target.real.flags & REAL_F_RESOLVED == 0 {
        return Err(Reason::DropRealUnresolved);
    }

    rewrite_macs(ctx, target.real.mac, iface_mac)?;
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    add(SERVICE_STATS.get_ptr_mut(service.id), bytes, new_client);
    add(REAL_STATS.get_ptr_mut(target.index), bytes, new_client);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
