//! The VRRP version 3 advertisement for IPv4 on the wire (RFC 5798 section
//! 5.2): [`encode`], [`decode`] with the section 7.1 receive checks, and
//! [`check_ip`] for the IP header fields. The checksum covers the IPv4
//! pseudo-header (section 5.2.8), as keepalived computes it with `version 3`.

use std::net::Ipv4Addr;

use super::{IP_PROTOCOL, IP_TTL, MAX_ADDRESSES, MAX_ADVERT_INTERVAL_CS};

/// Version nibble of VRRP version 3 (section 5.2.1).
const VERSION: u8 = 3;
/// Type nibble of an ADVERTISEMENT, the only type defined (section 5.2.2).
const TYPE_ADVERTISEMENT: u8 = 1;
/// Fixed part of the message before the address list.
const HEADER_LEN: usize = 8;

/// One VRRP version 3 ADVERTISEMENT for IPv4 (RFC 5798 section 5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Virtual router id.
    pub vrid: u8,
    /// Sender's priority; 0 means "the master is leaving".
    pub priority: u8,
    /// Sender's advertisement interval in centiseconds (12 bits).
    pub max_advert_interval_cs: u16,
    /// The virtual addresses of the virtual router.
    pub addresses: Vec<Ipv4Addr>,
}

/// Why a received packet was not accepted as a VRRP version 3 advertisement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The IP TTL was not 255 (section 5.1.1.3).
    #[error(
        "VRRP packet arrived with TTL {ttl}, not 255: it was forwarded by a router or \
         sent by a non-conforming peer; VRRP peers must share one link"
    )]
    BadTtl {
        /// The TTL the packet carried.
        ttl: u8,
    },
    /// The IP protocol was not 112.
    #[error("IP protocol {protocol} is not VRRP (112): the socket is bound to the wrong protocol")]
    BadProtocol {
        /// The protocol number the packet carried.
        protocol: u8,
    },
    /// Shorter than the fixed header or than its own address count says.
    #[error("VRRP message of {len} bytes is truncated, {needed} needed: check the peer's MTU and the capture")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header (and its address count) require.
        needed: usize,
    },
    /// Not VRRP version 3 (section 7.1).
    #[error("VRRP version {version} received, only version 3 is spoken: set `vrrp_version 3` on the peer")]
    BadVersion {
        /// The version nibble received.
        version: u8,
    },
    /// Not an ADVERTISEMENT (section 5.2.2).
    #[error("VRRP message type {kind} is unknown, only 1 (ADVERTISEMENT) exists: the peer is not speaking VRRPv3")]
    BadType {
        /// The type nibble received.
        kind: u8,
    },
    /// More bytes than the address count accounts for.
    #[error(
        "VRRP advertisement announces {count} addresses but is {len} bytes long: \
         the peer may speak VRRPv2 framing (authentication data) or IPv6"
    )]
    CountMismatch {
        /// The address count field.
        count: u8,
        /// Bytes received.
        len: usize,
    },
    /// The checksum over the IPv4 pseudo-header and message is wrong (section 5.2.8).
    #[error(
        "VRRP checksum {found:#06x} is wrong (expected {expected:#06x} over the IPv4 \
         pseudo-header): the packet is damaged, or the peer sums without the pseudo-header \
         or with the multicast group as destination (keepalived `unicast_chksum_compat`)"
    )]
    BadChecksum {
        /// Checksum in the packet.
        found: u16,
        /// Checksum computed over the pseudo-header and message.
        expected: u16,
    },
    /// An advertisement interval of 0 would make the master-down interval 0.
    #[error(
        "VRRP advertisement interval is 0 centiseconds: set the peer's advert_int to 0.01..40.95 s"
    )]
    ZeroInterval,
}

/// Checks the IP header fields of a received VRRP packet (RFC 5798 sections 5.1.1.3 and 7.1).
///
/// # Errors
///
/// [`DecodeError::BadProtocol`] unless `protocol` is 112, [`DecodeError::BadTtl`]
/// unless `ttl` is 255.
pub fn check_ip(ttl: u8, protocol: u8) -> Result<(), DecodeError> {
    if protocol != IP_PROTOCOL {
        return Err(DecodeError::BadProtocol { protocol });
    }
    if ttl != IP_TTL {
        return Err(DecodeError::BadTtl { ttl });
    }
    Ok(())
}

/// Encodes `adv` as a VRRP version 3 message (no IP header) sent from `src` to `dst`.
///
/// The checksum covers the IPv4 pseudo-header (`src`, `dst`, protocol 112,
/// message length) and the message (section 5.2.8), so `dst` must be the
/// destination the packet is really sent to: [`MULTICAST_GROUP`](super::MULTICAST_GROUP) or the
/// unicast peer. Reserved bits are zero; the interval is cut to its 12 bits;
/// at most 255 addresses fit the count field and only those are encoded.
#[must_use]
pub fn encode(adv: &Advertisement, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let addresses = &adv.addresses[..adv.addresses.len().min(MAX_ADDRESSES)];
    let mut msg = Vec::with_capacity(HEADER_LEN + 4 * addresses.len());
    msg.push((VERSION << 4) | TYPE_ADVERTISEMENT);
    msg.push(adv.vrid);
    msg.push(adv.priority);
    msg.push(u8::try_from(addresses.len()).unwrap_or(u8::MAX));
    msg.extend_from_slice(&(adv.max_advert_interval_cs & MAX_ADVERT_INTERVAL_CS).to_be_bytes());
    msg.extend_from_slice(&[0, 0]);
    for address in addresses {
        msg.extend_from_slice(&address.octets());
    }
    let sum = fold(pseudo_header_sum(src, dst, msg.len()) + word_sum(&msg));
    msg[6..8].copy_from_slice(&(!sum).to_be_bytes());
    msg
}

/// Decodes a VRRP version 3 message (the IP payload) received from `src` for `dst`.
///
/// Checks, in this order: the fixed header is there, version 3, type 1, the
/// length matches the address count, the checksum over the IPv4 pseudo-header
/// and message, a non-zero interval. Reserved bits are ignored (section 5.2.6).
/// Never panics.
///
/// # Errors
///
/// The first check that fails, as a [`DecodeError`].
pub fn decode(msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Advertisement, DecodeError> {
    let Some((header, rest)) = msg.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated {
            len: msg.len(),
            needed: HEADER_LEN,
        });
    };
    let version = header[0] >> 4;
    if version != VERSION {
        return Err(DecodeError::BadVersion { version });
    }
    let kind = header[0] & 0x0f;
    if kind != TYPE_ADVERTISEMENT {
        return Err(DecodeError::BadType { kind });
    }
    let count = header[3];
    let needed = HEADER_LEN + 4 * usize::from(count);
    if msg.len() < needed {
        return Err(DecodeError::Truncated {
            len: msg.len(),
            needed,
        });
    }
    if msg.len() > needed {
        return Err(DecodeError::CountMismatch {
            count,
            len: msg.len(),
        });
    }
    let pseudo = pseudo_header_sum(src, dst, msg.len());
    if fold(pseudo + word_sum(msg)) != 0xffff {
        let without_field = fold(pseudo + word_sum(&header[..6]) + word_sum(rest));
        return Err(DecodeError::BadChecksum {
            found: u16::from_be_bytes([header[6], header[7]]),
            expected: !without_field,
        });
    }
    let max_advert_interval_cs =
        u16::from_be_bytes([header[4], header[5]]) & MAX_ADVERT_INTERVAL_CS;
    if max_advert_interval_cs == 0 {
        return Err(DecodeError::ZeroInterval);
    }
    let addresses = rest
        .chunks_exact(4)
        .map(|a| Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        .collect();
    Ok(Advertisement {
        vrid: header[1],
        priority: header[2],
        max_advert_interval_cs,
        addresses,
    })
}

/// One's complement sum (unfolded) of the IPv4 pseudo-header: source,
/// destination, zero, protocol 112, VRRP message length.
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> u64 {
    word_sum(&src.octets())
        + word_sum(&dst.octets())
        + u64::from(IP_PROTOCOL)
        + u64::from(u16::try_from(len).unwrap_or(u16::MAX))
}

/// Sum of big-endian 16-bit words (RFC 1071); an odd last byte is padded with zero.
fn word_sum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    let mut sum: u64 = words
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds carries back into 16 bits (end-around carry).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::vrrp::sim::{advert, PEER, SRC, VIP1, VIP2};
    use crate::vrrp::MULTICAST_GROUP;

    /// RFC 1071 checksum written independently of the module: 32-bit
    /// accumulator over the pseudo-header and message laid out in one buffer.
    fn reference_checksum(src: Ipv4Addr, dst: Ipv4Addr, msg: &[u8]) -> u16 {
        let mut buf = Vec::new();
        buf.extend_from_slice(&src.octets());
        buf.extend_from_slice(&dst.octets());
        buf.push(0);
        buf.push(112);
        buf.extend_from_slice(&u16::try_from(msg.len()).unwrap().to_be_bytes());
        buf.extend_from_slice(msg);
        buf[18..20].fill(0);
        let mut acc: u32 = 0;
        for pair in buf.chunks(2) {
            acc += (u32::from(pair[0]) << 8) | u32::from(*pair.get(1).unwrap_or(&0));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !u16::try_from(acc).unwrap()
    }

    #[test]
    fn rfc5798_5_2_known_answer_built_by_hand() {
        // Section 5.2 layout, byte by byte: version 3 | type 1, VRID 51,
        // priority 150, count 2, rsvd 0 | interval 100 cs, checksum, addresses.
        let mut expected = vec![
            0x31, 51, 150, 2, //
            0x00, 0x64, 0x00, 0x00, //
            198, 18, 0, 100, //
            198, 18, 0, 101,
        ];
        // Section 5.2.8 checksum with the pseudo-header, summed by hand:
        // c612+000b+e000+0012+0070+0010 + 3133+9602+0064+0000+c612+0064+c612+0065
        // = 0x3fb35, folded 0xfb38, complemented 0x04c7.
        assert_eq!(reference_checksum(SRC, MULTICAST_GROUP, &expected), 0x04c7);
        expected[6..8].copy_from_slice(&0x04c7_u16.to_be_bytes());

        let adv = Advertisement {
            vrid: 51,
            priority: 150,
            max_advert_interval_cs: 100,
            addresses: vec![VIP1, VIP2],
        };
        assert_eq!(encode(&adv, SRC, MULTICAST_GROUP), expected);
        assert_eq!(decode(&expected, SRC, MULTICAST_GROUP), Ok(adv.clone()));

        // Unicast: the pseudo-header carries the peer, so the checksum differs.
        let unicast = encode(&adv, SRC, PEER);
        assert_eq!(u16::from_be_bytes([unicast[6], unicast[7]]), 0x1ebb);
        assert_eq!(reference_checksum(SRC, PEER, &unicast), 0x1ebb);
    }

    /// A real keepalived VRRP version 3 advertisement, as captured by tcpdump and
    /// published as the `vrrpv3PacketPriority100` vector of a gopacket fork's
    /// `layers/vrrp_test.go` (test `TestVRRPPv3acketPacket0`). tcpdump's decode:
    /// `IP (tos 0xc0, ttl 255, id 82, proto VRRP (112), length 40) 10.0.0.130 >
    /// 224.0.0.18: VRRPv3, Advertisement, vrid 1, prio 100, intvl 100cs, length 20,
    /// addrs(3): 192.168.200.16,192.168.200.17,192.168.200.18`. The addresses are
    /// those of keepalived's sample configuration; tos 0xc0 and a counting IP id
    /// are how keepalived builds its IP header.
    const KEEPALIVED_V3_FRAME: [u8; 60] = [
        // Ethernet: 00:50:56:39:0a:20 > 01:00:5e:00:00:12, IPv4.
        0x01, 0x00, 0x5e, 0x00, 0x00, 0x12, 0x00, 0x50, 0x56, 0x39, 0x0a, 0x20, 0x08, 0x00,
        // IPv4: tos 0xc0, length 40, id 82, ttl 255, protocol 112, 10.0.0.130 > 224.0.0.18.
        0x45, 0xc0, 0x00, 0x28, 0x00, 0x52, 0x00, 0x00, 0xff, 0x70, 0xcf, 0xbf, 0x0a, 0x00, 0x00,
        0x82, 0xe0, 0x00, 0x00, 0x12,
        // VRRPv3: 3/1, vrid 1, prio 100, 3 addresses, 100 cs, checksum 0xe54e, addresses.
        0x31, 0x01, 0x64, 0x03, 0x00, 0x64, 0xe5, 0x4e, 0xc0, 0xa8, 0xc8, 0x10, 0xc0, 0xa8, 0xc8,
        0x11, 0xc0, 0xa8, 0xc8, 0x12, // Ethernet padding to 60 bytes.
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn rfc5798_5_2_8_decodes_a_keepalived_capture() {
        let ip = &KEEPALIVED_V3_FRAME[14..];
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        check_ip(ip[8], ip[9]).unwrap();
        let payload = &ip[header_len..total_len];
        let adv = decode(payload, src, dst).unwrap();
        assert_eq!(
            adv,
            Advertisement {
                vrid: 1,
                priority: 100,
                max_advert_interval_cs: 100,
                addresses: vec![
                    Ipv4Addr::new(192, 168, 200, 16),
                    Ipv4Addr::new(192, 168, 200, 17),
                    Ipv4Addr::new(192, 168, 200, 18),
                ],
            }
        );
        // Our encoder produces keepalived's bytes, checksum included.
        assert_eq!(encode(&adv, src, dst), payload);
        assert_eq!(reference_checksum(src, dst, payload), 0xe54e);
    }

    #[test]
    fn rfc5798_5_2_8_checksum_covers_the_pseudo_header() {
        let msg = encode(&advert(150, 100), SRC, MULTICAST_GROUP);
        assert!(matches!(
            decode(&msg, SRC, PEER),
            Err(DecodeError::BadChecksum { .. })
        ));
        assert!(matches!(
            decode(&msg, PEER, MULTICAST_GROUP),
            Err(DecodeError::BadChecksum { .. })
        ));
        assert!(decode(&msg, SRC, MULTICAST_GROUP).is_ok());
    }

    #[test]
    fn codec_round_trips() {
        let mut rng = StdRng::seed_from_u64(5798);
        for _ in 0..1000 {
            let count = rng.random_range(0..=20);
            let adv = Advertisement {
                vrid: rng.random(),
                priority: rng.random(),
                max_advert_interval_cs: rng.random_range(1..=MAX_ADVERT_INTERVAL_CS),
                addresses: (0..count)
                    .map(|_| Ipv4Addr::from(rng.random::<u32>()))
                    .collect(),
            };
            let (src, dst) = (
                Ipv4Addr::from(rng.random::<u32>()),
                Ipv4Addr::from(rng.random::<u32>()),
            );
            let msg = encode(&adv, src, dst);
            assert_eq!(msg.len(), 8 + 4 * count);
            assert_eq!(
                reference_checksum(src, dst, &msg),
                u16::from_be_bytes([msg[6], msg[7]])
            );
            assert_eq!(decode(&msg, src, dst), Ok(adv));
        }
    }

    #[test]
    fn rfc5798_5_2_6_reserved_bits_zero_on_send_ignored_on_receipt() {
        let adv = Advertisement {
            max_advert_interval_cs: 0xf123,
            ..advert(100, 0)
        };
        let mut msg = encode(&adv, SRC, MULTICAST_GROUP);
        assert_eq!(msg[4] >> 4, 0, "reserved nibble must be zero");
        assert_eq!(
            u16::from_be_bytes([msg[4], msg[5]]),
            0x0123,
            "interval is cut to 12 bits"
        );
        // Set the reserved bits and fix the checksum: still the same advert.
        msg[4] |= 0xa0;
        msg[6..8].fill(0);
        let sum = reference_checksum(SRC, MULTICAST_GROUP, &msg);
        msg[6..8].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(
            decode(&msg, SRC, MULTICAST_GROUP)
                .unwrap()
                .max_advert_interval_cs,
            0x0123
        );
    }

    /// Re-computes the checksum after a test edits a field.
    fn with_checksum(mut msg: Vec<u8>) -> Vec<u8> {
        msg[6..8].fill(0);
        let sum = reference_checksum(SRC, MULTICAST_GROUP, &msg);
        msg[6..8].copy_from_slice(&sum.to_be_bytes());
        msg
    }

    #[test]
    fn rfc5798_7_1_decode_rejects_malformed_messages() {
        let good = encode(&advert(150, 100), SRC, MULTICAST_GROUP);
        let dec = |m: &[u8]| decode(m, SRC, MULTICAST_GROUP);

        let mut v2 = good.clone();
        v2[0] = 0x21;
        assert_eq!(
            dec(&with_checksum(v2)),
            Err(DecodeError::BadVersion { version: 2 })
        );

        let mut bad_type = good.clone();
        bad_type[0] = 0x32;
        assert_eq!(
            dec(&with_checksum(bad_type)),
            Err(DecodeError::BadType { kind: 2 })
        );

        let mut bad_sum = good.clone();
        bad_sum[7] ^= 0x01;
        let found = u16::from_be_bytes([bad_sum[6], bad_sum[7]]);
        let expected = u16::from_be_bytes([good[6], good[7]]);
        assert_eq!(
            dec(&bad_sum),
            Err(DecodeError::BadChecksum { found, expected })
        );

        let mut flipped = good.clone();
        flipped[12] ^= 0x80;
        assert!(matches!(
            dec(&flipped),
            Err(DecodeError::BadChecksum { .. })
        ));

        assert_eq!(
            dec(&good[..7]),
            Err(DecodeError::Truncated { len: 7, needed: 8 })
        );
        assert_eq!(dec(&[]), Err(DecodeError::Truncated { len: 0, needed: 8 }));
        assert_eq!(
            dec(&good[..12]),
            Err(DecodeError::Truncated {
                len: 12,
                needed: 16
            })
        );

        let mut extra = good.clone();
        extra.extend_from_slice(&[0; 4]);
        assert_eq!(
            dec(&extra),
            Err(DecodeError::CountMismatch { count: 2, len: 20 })
        );
        let mut fewer = good.clone();
        fewer[3] = 1;
        assert_eq!(
            dec(&with_checksum(fewer)),
            Err(DecodeError::CountMismatch { count: 1, len: 16 })
        );

        let mut zero = good.clone();
        zero[4..6].fill(0);
        assert_eq!(dec(&with_checksum(zero)), Err(DecodeError::ZeroInterval));
    }

    #[test]
    fn rfc5798_5_1_1_3_check_ip_requires_ttl_255_and_protocol_112() {
        assert_eq!(check_ip(255, 112), Ok(()));
        assert_eq!(check_ip(254, 112), Err(DecodeError::BadTtl { ttl: 254 }));
        assert_eq!(check_ip(64, 112), Err(DecodeError::BadTtl { ttl: 64 }));
        assert_eq!(
            check_ip(255, 6),
            Err(DecodeError::BadProtocol { protocol: 6 })
        );
    }

    #[test]
    fn decode_is_total_on_random_input() {
        let mut rng = StdRng::seed_from_u64(0x5798_0112);
        let good = encode(&advert(150, 100), SRC, MULTICAST_GROUP);
        let mut accepted = 0;
        for i in 0..100_000 {
            let msg: Vec<u8> = match i % 3 {
                // Pure noise.
                0 => {
                    let mut m = vec![0; rng.random_range(0..=48)];
                    rng.fill(&mut m[..]);
                    m
                }
                // A plausible v3 header with a random count and length, checksum fixed.
                1 => {
                    let mut m = vec![0; rng.random_range(8..=48)];
                    rng.fill(&mut m[..]);
                    m[0] = 0x31;
                    m[3] = rng.random_range(0..=12);
                    if m.len() % 2 == 0 {
                        with_checksum(m)
                    } else {
                        m
                    }
                }
                // A valid advert with a few bytes mutated.
                _ => {
                    let mut m = good.clone();
                    for _ in 0..rng.random_range(1..=3) {
                        let at = rng.random_range(0..m.len());
                        m[at] = rng.random();
                    }
                    m.truncate(rng.random_range(0..=m.len() + 1));
                    m
                }
            };
            if let Ok(adv) = decode(&msg, SRC, MULTICAST_GROUP) {
                accepted += 1;
                assert_eq!(msg.len(), 8 + 4 * adv.addresses.len());
                let again = encode(&adv, SRC, MULTICAST_GROUP);
                assert_eq!(again[..4], msg[..4]);
                assert_eq!(again[8..], msg[8..]);
            }
        }
        assert!(
            accepted > 300,
            "the generator must reach the accepting path, got {accepted}"
        );
    }

    /// Advertisements captured from keepalived 2.2.7 on this machine
    /// (`tests/fixtures/keepalived-2.2.7-vrrpv3.txt`): they decode, and our
    /// encoder reproduces them byte for byte, checksum included (RFC 5798
    /// section 5.2.8, IPv4 pseudo-header), unicast and multicast.
    #[test]
    fn rfc5798_5_2_keepalived_captures_decode_and_reencode() {
        let fixtures = include_str!("../../tests/fixtures/keepalived-2.2.7-vrrpv3.txt");
        let mut checked = 0;
        for line in fixtures
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (kind, hex) = line.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            let packet: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or_else(|e| panic!("{e}")))
                .collect();
            let header = usize::from(packet[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            assert_eq!(
                check_ip(packet[8], packet[9]),
                Ok(()),
                "{kind}: TTL 255, protocol 112"
            );
            let message = &packet[header..];
            let adv = decode(message, src, dst).unwrap_or_else(|e| panic!("{kind}: {e}"));
            match kind {
                "unicast" => {
                    assert_eq!(
                        (adv.vrid, adv.priority, adv.max_advert_interval_cs),
                        (51, 150, 100)
                    );
                    assert_eq!(adv.addresses, vec![Ipv4Addr::new(198, 18, 0, 100)]);
                }
                "multicast" => {
                    assert_eq!(dst, MULTICAST_GROUP);
                    assert_eq!(
                        (adv.vrid, adv.priority, adv.max_advert_interval_cs),
                        (52, 200, 50)
                    );
                    assert_eq!(adv.addresses.len(), 2);
                }
                other => panic!("unknown fixture kind {other}"),
            }
            assert_eq!(
                encode(&adv, src, dst),
                message,
                "{kind}: re-encoded byte for byte"
            );
            checked += 1;
        }
        assert_eq!(checked, 3);
    }
}
