//! ARP for the VIPs: answered here, for the VIPs this node holds now
//! ([`HELD_VIPS`](crate::HELD_VIPS), written by lbd as it adds and removes
//! them), and never by the kernel (lbd's guard drops ARP requests for every
//! VIP in the kernel's input path). So a node whose lbd has died, and whose
//! XDP program went with it, answers no ARP for a VIP its kernel still
//! holds, and cannot draw clients back from the new master. A data path
//! outlives its lbd: in a pair, the master's lbd renews an ARP lease as it
//! advertises ([`ARP_LEASE`](crate::ARP_LEASE)), and a node whose lbd died
//! stops answering once the lease lapses, by the time its peer takes over.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{Reason, ARP_LEASE_FOREVER};

use crate::{
    parse::{ptr_at, EthHdr, MacWords},
    ARP_LEASE, HELD_VIPS,
};

const ETH_HDR_LEN: usize = 14;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

/// An ARP packet for IPv4 over Ethernet (RFC 826), in network byte order;
/// addresses as 16-bit words (it starts 14 bytes into the frame).
#[repr(C, packed(2))]
struct ArpIpv4 {
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    oper: u16,
    sha: MacWords,
    spa: [u16; 2],
    tha: MacWords,
    tpa: [u16; 2],
}

/// `None` for a frame that is not ARP. For ARP: `Ok` when the frame has
/// been turned into the reply (send it back, `XDP_TX`), else the reason to
/// pass it to the kernel (which drops requests for VIPs).
#[inline(always)]
pub fn answer(ctx: &XdpContext, iface_mac: MacWords) -> Option<Result<(), Reason>> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked the header lies inside the frame.
    if u16::from_be(unsafe { (*eth).ethertype }) != ETH_P_ARP {
        return None;
    }
    Some(reply(ctx, eth, iface_mac))
}

#[inline(always)]
fn reply(ctx: &XdpContext, eth: *mut EthHdr, iface_mac: MacWords) -> Result<(), Reason> {
    let arp: *mut ArpIpv4 = ptr_at(ctx, ETH_HDR_LEN).ok_or(Reason::PassArp)?;
    // SAFETY: checked by `ptr_at`; the frame is ours to change.
    unsafe {
        if u16::from_be((*arp).htype) != ARP_HTYPE_ETHERNET
            || u16::from_be((*arp).ptype) != ETH_P_IP
            || (*arp).hlen != 6
            || (*arp).plen != 4
            || u16::from_be((*arp).oper) != ARP_OP_REQUEST
        {
            return Err(Reason::PassArp);
        }
        let (tpa, spa, sha) = ((*arp).tpa, (*arp).spa, (*arp).sha);
        // A gratuitous request (an announcement of the sender's own
        // address) asks nothing.
        if tpa == spa {
            return Err(Reason::PassArp);
        }
        let target = u32::from(tpa[0]) | (u32::from(tpa[1]) << 16);
        if HELD_VIPS.get(&target).is_none() {
            return Err(Reason::PassArp);
        }
        if !lease_holds() {
            return Err(Reason::PassArpLeaseLapsed);
        }
        (*arp).oper = ARP_OP_REPLY.to_be();
        (*arp).tha = sha;
        (*arp).tpa = spa;
        (*arp).sha = iface_mac;
        (*arp).spa = tpa;
        (*eth).dst = (*eth).src;
        (*eth).src = iface_mac;
    }
    Ok(())
}

/// Whether this node still claims its held VIPs: no lease (a single node),
/// or one that has not lapsed.
#[inline(always)]
fn lease_holds() -> bool {
    let until = ARP_LEASE
        .get_ptr(0)
        // SAFETY: a value pointer into an array map, valid for this run;
        // lbd stores it with one aligned 8-byte store.
        .map_or(ARP_LEASE_FOREVER, |p| unsafe {
            core::ptr::read_volatile(p)
        });
    // SAFETY: a helper without arguments.
    until == ARP_LEASE_FOREVER || unsafe { bpf_ktime_get_ns() } < until
}
