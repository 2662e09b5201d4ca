//! The bare direct-routing (DR) forwarder of `cargo xtask bench`: the limit
//! of any DR load balancer on this machine, against which `lb_xdp` is
//! measured.
//!
//! Every TCP frame to VIP:PORT leaves again (`XDP_TX`) with its destination
//! MAC set to one of `REAL_COUNT` real servers, picked by a plain
//! multiplicative hash of the source address, and its source MAC set to the
//! load balancer's. No maps, no persistence, no counters; everything else
//! goes to the kernel. The constants are patched at load time
//! (`EbpfLoader::override_global`).
#![no_std]
#![no_main]

use core::{mem::size_of, ptr::read_volatile};

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Most real servers the forwarder spreads over.
const MAX_REALS: usize = 8;
const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: [u8; 2] = 0x0800_u16.to_be_bytes();
const IPPROTO_TCP: u8 = 6;

/// The VIP, network byte order (as read from the frame).
#[unsafe(no_mangle)]
static VIP: u32 = 0;
/// The service port, network byte order.
#[unsafe(no_mangle)]
static PORT: u16 = 0;
/// How many entries of `REAL_MACS` are used (1..=8).
#[unsafe(no_mangle)]
static REAL_COUNT: u32 = 0;
/// The real servers' MACs.
#[unsafe(no_mangle)]
static REAL_MACS: [[u8; 6]; MAX_REALS] = [[0; 6]; MAX_REALS];
/// The load balancer's own MAC: the source of forwarded frames.
#[unsafe(no_mangle)]
static LB_MAC: [u8; 6] = [0; 6];

/// The two addresses at the start of an Ethernet frame.
#[repr(C)]
struct Macs {
    dst: [u8; 6],
    src: [u8; 6],
}

#[expect(clippy::inline_always, reason = "BPF code must not make calls")]
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Forwards VIP:PORT TCP frames by a hash of the source address.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature of an XDP entry point"
)]
pub fn bench_bare_dr(ctx: XdpContext) -> u32 {
    forward(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[expect(clippy::inline_always, reason = "BPF code must not make calls")]
#[inline(always)]
fn forward(ctx: &XdpContext) -> Option<u32> {
    let ethertype: *const [u8; 2] = ptr_at(ctx, 12)?;
    // SAFETY: `ptr_at` checked every pointer below lies inside the frame.
    if unsafe { *ethertype } != ETH_P_IP {
        return None;
    }
    let ip: *const [u8; 20] = ptr_at(ctx, ETH_HDR_LEN)?;
    let ip = unsafe { *ip };
    let vip = unsafe { read_volatile(&raw const VIP) };
    if ip[9] != IPPROTO_TCP || u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]) != vip {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    let dport: *const u16 = ptr_at(ctx, ETH_HDR_LEN + ihl + 2)?;
    if unsafe { *dport } != unsafe { read_volatile(&raw const PORT) } {
        return None;
    }
    let count = unsafe { read_volatile(&raw const REAL_COUNT) };
    if count == 0 {
        return None;
    }
    let saddr = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let pick = ((saddr.wrapping_mul(0x9E37_79B1) >> 16) % count) as usize;
    let mac = unsafe { read_volatile(REAL_MACS.get(pick)?) };
    let eth: *mut Macs = ptr_at(ctx, 0)?;
    let lb_mac = unsafe { read_volatile(&raw const LB_MAC) };
    unsafe {
        (*eth).dst = mac;
        (*eth).src = lb_mac;
    }
    Some(xdp_action::XDP_TX)
}

lb_common::bpf_object_essentials!();
