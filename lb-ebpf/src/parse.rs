//! Parsing: what a frame is, read with one bounds check per header.
//!
//! The outcome is a [`Frame`] that may be for a service (a TCP or UDP
//! datagram, a fragment, or an ICMP error quoting a service's packet), or
//! the [`Reason`] to hand the frame to the kernel.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{Reason, ServiceKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HDR_LEN: usize = 20;
const IP_MORE_FRAGMENTS: u16 = 0x2000;
const IP_FRAGMENT_OFFSET: u16 = 0x1FFF;
const TCP_MIN_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
/// Byte 13 of the TCP header: the flags.
const TCP_FLAGS_OFFSET: usize = 13;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// ICMP header length before the quoted datagram.
pub const ICMP_HDR_LEN: usize = size_of::<IcmpHdr>();
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// A MAC address as three 16-bit words. Frames start at an even address (the
/// XDP headroom is 256 bytes), so 16-bit loads and stores are the widest the
/// BPF target makes for a header field: it splits any access it cannot prove
/// aligned into single bytes, which costs more here than anything else.
pub type MacWords = [u16; 3];

/// `mac` as [`MacWords`], in the same byte order.
#[inline(always)]
pub fn mac_words(mac: [u8; 6]) -> MacWords {
    [
        u16::from_ne_bytes([mac[0], mac[1]]),
        u16::from_ne_bytes([mac[2], mac[3]]),
        u16::from_ne_bytes([mac[4], mac[5]]),
    ]
}

/// The Ethernet header.
#[repr(C)]
pub struct EthHdr {
    pub dst: MacWords,
    pub src: MacWords,
    pub ethertype: u16,
}

/// The fixed IPv4 header; every multi-byte field in network byte order.
/// Packed to 2 because it starts 14 bytes into the frame.
#[repr(C, packed(2))]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// The ICMP header before the quoted datagram.
#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    checksum: u16,
    rest: u32,
}

/// The first four bytes of TCP and UDP alike: source and destination port.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// A MAC address read from the frame as three 16-bit loads. A plain copy
/// of the array from frame memory compiles to a call of `memmove`, a
/// byte-by-byte loop in its own BPF function, which cost every frame more
/// than the rest of its parsing.
///
/// # Safety
/// `mac` points into the frame, bounds-checked by the caller.
#[inline(always)]
unsafe fn read_mac(mac: *const MacWords) -> MacWords {
    // SAFETY: per the contract above; `MacWords` is 2-aligned, as frames are.
    unsafe {
        [
            core::ptr::read_volatile(&raw const (*mac)[0]),
            core::ptr::read_volatile(&raw const (*mac)[1]),
            core::ptr::read_volatile(&raw const (*mac)[2]),
        ]
    }
}

/// The one bounds check: a pointer to a `T` at `offset`, if the frame holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// What kind of frame for a possible service this is; each is decided a
/// little differently.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A whole TCP or UDP datagram. `syn_only`: a TCP SYN without ACK (the
    /// only frame a spoofed source can send usefully), which is served but
    /// not remembered.
    Datagram { syn_only: bool },
    /// An IPv4 fragment (first or later): its service is the only one of its
    /// VIP and protocol, found in the fragments map ([`Frame::key`]'s port is 0).
    Fragment,
    /// An ICMP error about a packet sent from [`Frame::key`] to `client`
    /// ([`Frame::client`]); forwarded to that client's real server, read-only.
    IcmpError,
}

/// What the parser found in a frame bound for a possible service.
pub struct Frame {
    pub kind: FrameKind,
    /// The service as the frame names it (for ICMP: as the quoted packet does).
    pub key: ServiceKey,
    /// The client: the source address (for ICMP: the quoted destination).
    pub client: u32,
    /// The frame's destination MAC address.
    pub dst_mac: MacWords,
    /// The frame's source MAC address.
    pub src_mac: MacWords,
    /// A datagram's source port, network byte order; an ICMP error's
    /// client port (the quoted destination port); else 0.
    pub sport: u16,
    /// A datagram's TCP flags (else 0).
    pub tcp_flags: u8,
    /// A datagram's L4 header offset in the frame, an ICMP error's ICMP
    /// header offset (else 0).
    pub l4: usize,
}

/// Parses Ethernet, IPv4 and what follows; `Err` is the reason to pass.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Frame, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Reason::PassTruncatedEthernet)?;
    // SAFETY: `ptr_at` checked the header lies inside the frame.
    let (ethertype, dst_mac, src_mac) = unsafe {
        (
            u16::from_be((*eth).ethertype),
            read_mac(&raw const (*eth).dst),
            read_mac(&raw const (*eth).src),
        )
    };
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
    let mut frame = Frame {
        kind: FrameKind::Fragment,
        key: ServiceKey {
            vip: daddr,
            port: 0,
            protocol,
            pad: 0,
        },
        client: saddr,
        dst_mac,
        src_mac,
        sport: 0,
        tcp_flags: 0,
        l4: 0,
    };
    if frag_off & (IP_MORE_FRAGMENTS | IP_FRAGMENT_OFFSET) != 0 {
        // Later fragments carry no ports: every fragment, the first too, is
        // placed by VIP and protocol alone, so none is split from the others.
        return match protocol {
            IPPROTO_TCP | IPPROTO_UDP => Ok(frame),
            _ => Err(Reason::PassFragment),
        };
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
        IPPROTO_ICMP => return parse_icmp_error(ctx, l4, frame),
        _ => return Err(Reason::PassNotTcpUdp),
    };
    if header_len + l4_len > total_len {
        return Err(Reason::PassTruncatedL4);
    }
    let ports: *const Ports = ptr_at(ctx, l4).ok_or(Reason::PassTruncatedL4)?;
    // SAFETY: checked by `ptr_at`; the whole L4 header is inside `total_len`,
    // itself inside the frame.
    (frame.key.port, frame.sport) = unsafe { ((*ports).dst, (*ports).src) };
    frame.l4 = l4;
    let syn_only = if protocol == IPPROTO_TCP {
        let flags: *const u8 = ptr_at(ctx, l4 + TCP_FLAGS_OFFSET).ok_or(Reason::PassTruncatedL4)?;
        // SAFETY: checked by `ptr_at`.
        let flags = unsafe { *flags };
        frame.tcp_flags = flags;
        flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
    } else {
        false
    };
    frame.kind = FrameKind::Datagram { syn_only };
    Ok(frame)
}

/// An ICMP error (destination unreachable, time exceeded) addressed to the
/// address its quoted packet came from, quoting a TCP or UDP packet with its
/// ports: the service is the quoted source, the client the quoted destination.
/// Anything else ICMP is the kernel's.
#[inline(always)]
fn parse_icmp_error(ctx: &XdpContext, l4: usize, mut frame: Frame) -> Result<Frame, Reason> {
    // The whole 8-byte header: a 1-byte bounds check compiles to a
    // comparison the verifier does not take as proof of one byte.
    let icmp: *const IcmpHdr = ptr_at(ctx, l4).ok_or(Reason::PassIcmpTruncated)?;
    // SAFETY: checked by `ptr_at`.
    match unsafe { (*icmp).kind } {
        ICMP_DEST_UNREACHABLE | ICMP_TIME_EXCEEDED => {}
        _ => return Err(Reason::PassIcmp),
    }
    let quoted = l4 + ICMP_HDR_LEN;
    let inner: *const Ipv4Hdr = ptr_at(ctx, quoted).ok_or(Reason::PassIcmpTruncated)?;
    // SAFETY: checked by `ptr_at`.
    let (version_ihl, frag_off, protocol, saddr, daddr) = unsafe {
        (
            (*inner).version_ihl,
            u16::from_be((*inner).frag_off),
            (*inner).protocol,
            (*inner).saddr,
            (*inner).daddr,
        )
    };
    let inner_len = usize::from(version_ihl & 0x0F) * 4;
    if version_ihl >> 4 != 4 || inner_len < IPV4_MIN_HDR_LEN {
        return Err(Reason::PassIcmpTruncated);
    }
    if saddr != frame.key.vip
        || frag_off & IP_FRAGMENT_OFFSET != 0
        || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
    {
        return Err(Reason::PassIcmp);
    }
    let ports: *const Ports = ptr_at(ctx, quoted + inner_len).ok_or(Reason::PassIcmpTruncated)?;
    // SAFETY: checked by `ptr_at`.
    (frame.key.port, frame.sport) = unsafe { ((*ports).src, (*ports).dst) };
    frame.key.protocol = protocol;
    frame.client = daddr;
    frame.l4 = l4;
    frame.kind = FrameKind::IcmpError;
    Ok(frame)
}
