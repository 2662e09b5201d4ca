//! Building Ethernet/IPv4/TCP/UDP frames for packet tests, with correct
//! checksums, and a reference parser to judge what the XDP program did.

use std::net::Ipv4Addr;

/// One frame to build.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol (6, 17, 1, ...).
    pub protocol: u8,
    /// Source port (TCP/UDP).
    pub sport: u16,
    /// Destination port (TCP/UDP).
    pub dport: u16,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// IPv4 options (a multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// The fragment field (flags and offset).
    pub frag: u16,
    /// Time to live.
    pub ttl: u8,
    /// Payload after the L4 header.
    pub payload: Vec<u8>,
}

impl FrameSpec {
    /// A TCP segment with ACK set (an established client's) from `src` to
    /// `dst:dport`.
    #[must_use]
    pub fn tcp(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            dst_mac,
            src_mac: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            protocol: 6,
            sport: 40_000,
            dport,
            tcp_flags: 0x10,
            ip_options: Vec::new(),
            frag: 0x4000,
            ttl: 64,
            payload: Vec::new(),
        }
    }

    /// A bare TCP SYN (no ACK) from `src` to `dst:dport`.
    #[must_use]
    pub fn syn(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            tcp_flags: 0x02,
            ..Self::tcp(dst_mac, src, dst, dport)
        }
    }

    /// A UDP datagram with a small payload.
    #[must_use]
    pub fn udp(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            protocol: 17,
            payload: b"query".to_vec(),
            ..Self::tcp(dst_mac, src, dst, dport)
        }
    }

    /// The frame's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let l4 = match self.protocol {
            6 => {
                let mut h = vec![0_u8; 20];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[4..8].copy_from_slice(&1_u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = self.tcp_flags;
                h[14..16].copy_from_slice(&64_240_u16.to_be_bytes());
                h.extend_from_slice(&self.payload);
                h
            }
            17 => {
                let mut h = vec![0_u8; 8];
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                let len = u16::try_from(8 + self.payload.len()).unwrap_or(u16::MAX);
                h[4..6].copy_from_slice(&len.to_be_bytes());
                h.extend_from_slice(&self.payload);
                h
            }
            1 => {
                let mut h = vec![8, 0, 0, 0, 0, 1, 0, 1];
                h.extend_from_slice(&self.payload);
                h
            }
            _ => self.payload.clone(),
        };
        let ihl = 5 + self.ip_options.len() / 4;
        let total = ihl * 4 + l4.len();
        let mut ip = vec![0_u8; 20];
        ip[0] = 0x40 | u8::try_from(ihl).unwrap_or(15);
        ip[2..4].copy_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234_u16.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.protocol;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.ip_options);
        let check = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&check.to_be_bytes());

        let mut l4 = l4;
        if matches!(self.protocol, 6 | 17) {
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&self.src.octets());
            pseudo.extend_from_slice(&self.dst.octets());
            pseudo.extend_from_slice(&[0, self.protocol]);
            pseudo.extend_from_slice(&u16::try_from(l4.len()).unwrap_or(u16::MAX).to_be_bytes());
            let at = if self.protocol == 6 { 16 } else { 6 };
            let sum = checksum(&l4, partial(&pseudo));
            l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }

        let mut frame = Vec::with_capacity(14 + total);
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&0x0800_u16.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// An ICMP error (`kind` 3 destination unreachable, 11 time exceeded) from
/// `from` to `to`, quoting the first `quote` bytes of `quoted`'s IP datagram
/// (the frame `quoted` without its Ethernet header), as a router sends it.
#[must_use]
pub fn icmp_error(
    dst_mac: [u8; 6],
    from: Ipv4Addr,
    to: Ipv4Addr,
    kind: u8,
    code: u8,
    quoted: &[u8],
    quote: usize,
) -> Vec<u8> {
    let datagram = quoted.get(14..).unwrap_or_default();
    let mut payload = datagram[..quote.min(datagram.len())].to_vec();
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.append(&mut payload);
    let sum = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut spec = FrameSpec {
        protocol: 1,
        ..FrameSpec::tcp(dst_mac, from, to, 0)
    };
    spec.src_mac = [0x02, 0, 0, 0, 0, 0x01];
    let mut frame = spec.build();
    // Replace the echo request `build` makes with the error.
    frame.truncate(14 + 20);
    frame.extend_from_slice(&icmp);
    let total = u16::try_from(20 + icmp.len()).unwrap_or(u16::MAX);
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let check = checksum(&frame[14..34], 0);
    frame[24..26].copy_from_slice(&check.to_be_bytes());
    frame
}

/// `frame` (unfragmented IPv4 without options) cut into two fragments, the
/// first carrying `first_len` bytes of the IP payload (a multiple of 8).
#[must_use]
pub fn fragments(frame: &[u8], first_len: usize) -> (Vec<u8>, Vec<u8>) {
    let header = &frame[..34];
    let payload = &frame[34..];
    let piece = |data: &[u8], frag: u16| {
        let mut out = header.to_vec();
        let total = u16::try_from(20 + data.len()).unwrap_or(u16::MAX);
        out[16..18].copy_from_slice(&total.to_be_bytes());
        out[20..22].copy_from_slice(&frag.to_be_bytes());
        out[24..26].copy_from_slice(&[0, 0]);
        let check = checksum(&out[14..34], 0);
        out[24..26].copy_from_slice(&check.to_be_bytes());
        out.extend_from_slice(data);
        out
    };
    let offset = u16::try_from(first_len / 8).unwrap_or(0);
    (
        piece(&payload[..first_len], 0x2000),
        piece(&payload[first_len..], offset),
    )
}

fn partial(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `bytes`, starting from a partial sum.
#[must_use]
pub fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial + partial(bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// An ARP request frame.
#[must_use]
pub fn arp(src_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// An IPv6 frame (a minimal header and a few bytes).
#[must_use]
pub fn ipv6(dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&[
        0x02, 0, 0, 0, 0, 0x02, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 8, 17, 64,
    ]);
    f.extend_from_slice(&[0; 32]);
    f.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 8, 0, 0]);
    f
}

/// `frame` with an 802.1Q tag (VLAN `vid`) after the MAC addresses.
#[must_use]
pub fn vlan_tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// What a well-formed frame to a service looks like, to the reference parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceFrame {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol (6 or 17).
    pub protocol: u8,
    /// Destination port.
    pub dport: u16,
}

/// The reference parser: `Some` when `frame` is a complete, unfragmented
/// Ethernet/IPv4 TCP or UDP frame (the contract's "well-formed"), written
/// independently of the XDP program's parser.
#[must_use]
pub fn parse_service_frame(frame: &[u8]) -> Option<ServiceFrame> {
    let (ip, ihl, total) = ipv4_datagram(frame)?;
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return None;
    }
    let protocol = ip[9];
    let l4 = &ip[ihl..total];
    let header = match protocol {
        6 if l4.len() >= 20 => usize::from(l4[12] >> 4) * 4,
        17 => 8,
        _ => return None,
    };
    if header < 8 || (protocol == 6 && header < 20) || l4.len() < header {
        return None;
    }
    let mut dst_mac = [0; 6];
    dst_mac.copy_from_slice(&frame[..6]);
    Some(ServiceFrame {
        dst_mac,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        protocol,
        dport: u16::from_be_bytes([l4[2], l4[3]]),
    })
}

/// The reference parser for fragments: `Some` (with `dport` 0) when `frame`
/// is an Ethernet/IPv4 fragment (first or later) with a complete IP header,
/// whatever follows it.
#[must_use]
pub fn parse_fragment(frame: &[u8]) -> Option<ServiceFrame> {
    let (ip, _, _) = ipv4_datagram(frame)?;
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0 {
        return None;
    }
    let mut dst_mac = [0; 6];
    dst_mac.copy_from_slice(&frame[..6]);
    Some(ServiceFrame {
        dst_mac,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        protocol: ip[9],
        dport: 0,
    })
}

/// The IPv4 datagram of an Ethernet frame with a complete header and total
/// length: the bytes from the IP header on, its header length and its total.
fn ipv4_datagram(frame: &[u8]) -> Option<(&[u8], usize, usize)> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || total > ip.len() {
        return None;
    }
    Some((ip, ihl, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_parse_and_carry_valid_checksums() {
        let spec = FrameSpec::tcp(
            [2, 0, 0, 0, 0, 10],
            Ipv4Addr::new(198, 18, 1, 1),
            Ipv4Addr::new(198, 18, 0, 100),
            80,
        );
        let f = spec.build();
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(checksum(&f[14..34], 0), 0, "IP header checksum verifies");
        let parsed = parse_service_frame(&f).unwrap_or_else(|| panic!("parses"));
        assert_eq!(parsed.dport, 80);
        assert_eq!(parsed.protocol, 6);
        for cut in 14..f.len() {
            assert!(
                parse_service_frame(&f[..cut]).is_none(),
                "truncated at {cut}"
            );
        }
    }
}
