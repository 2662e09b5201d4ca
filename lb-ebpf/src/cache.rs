//! The per-CPU flow cache: the last decision for a (VIP, port, protocol,
//! client) that hashed to each slot, valid while its service's generation
//! in [`FLOW_GENERATIONS`](crate::FLOW_GENERATIONS) is unchanged and it is
//! younger than [`FLOW_CACHE_MAX_AGE_JIFFIES`].

use core::mem::size_of;

use lb_common::{ServiceKey, FLOW_CACHE_MAX_AGE_JIFFIES, FLOW_CACHE_SLOTS, MAX_SERVICES};

use crate::{parse::MacWords, Decision, FLOW_CACHE, FLOW_GENERATIONS};

/// One [`FLOW_CACHE`] slot: a forwarding decision and when it was taken.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedFlow {
    /// The service's [`FLOW_GENERATIONS`] entry when taken; 0 is never valid.
    generation: u32,
    /// The low 32 bits of `bpf_jiffies64()` when taken from the shared tables.
    taken_jiffies: u32,
    /// The flow: VIP, client (unmasked), port, protocol, as in the frame.
    vip: u32,
    client: u32,
    port: u16,
    protocol: u8,
    /// The service's id (below `MAX_SERVICES`, 256), naming its generation.
    service_id: u8,
    /// The real server's index and MAC address.
    real: u32,
    mac: MacWords,
    pad2: u16,
}

const _: () = assert!(size_of::<CachedFlow>() == 32);
const _: () = assert!(MAX_SERVICES <= 256);

/// A service's flow-cache generation (0: its decisions are not cached).
/// Read volatile: it is read twice around a decision, and both reads must
/// happen.
#[inline(always)]
pub fn generation(service_id: u32) -> u32 {
    match FLOW_GENERATIONS.get_ptr(service_id) {
        // SAFETY: a value pointer into an array map, valid for this run.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// The [`FLOW_CACHE`] slot of a flow: a multiplicative (Fibonacci) hash,
/// whose top bits are well mixed and cost one multiplication.
#[inline(always)]
fn slot(key: &ServiceKey, client: u32) -> u32 {
    let mixed = client ^ key.vip.rotate_left(16) ^ u32::from(key.port);
    mixed.wrapping_mul(0x9E37_79B1) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros())
}

/// The cached decision for this flow, if its service's generation has not
/// moved and it is young enough. Anything else is left to the shared tables.
/// (The real server's state is not looked at: lbd bumps the service's
/// generation whenever it writes one of its slots.)
#[inline(always)]
pub fn lookup(key: &ServiceKey, client: u32, jiffies: u32) -> Option<Decision> {
    // SAFETY: a per-CPU value pointer, only read here.
    let cached = unsafe { *FLOW_CACHE.get_ptr(slot(key, client))? };
    if cached.vip != key.vip
        || cached.client != client
        || cached.port != key.port
        || cached.protocol != key.protocol
        || jiffies.wrapping_sub(cached.taken_jiffies) > FLOW_CACHE_MAX_AGE_JIFFIES
        || cached.generation == 0
        || cached.generation != generation(u32::from(cached.service_id))
    {
        return None;
    }
    Some(Decision {
        real: cached.real,
        mac: cached.mac,
        new_client: false,
    })
}

/// Remembers a decision taken from the shared tables under `generation`.
#[inline(always)]
pub fn store(
    key: &ServiceKey,
    client: u32,
    service_id: u32,
    decision: &Decision,
    generation: u32,
    jiffies: u32,
) {
    if let Some(slot) = FLOW_CACHE.get_ptr_mut(slot(key, client)) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe {
            *slot = CachedFlow {
                generation,
                taken_jiffies: jiffies,
                vip: key.vip,
                client,
                port: key.port,
                protocol: key.protocol,
                service_id: service_id as u8,
                real: decision.real,
                mac: decision.mac,
                pad2: 0,
            };
        }
    }
}
