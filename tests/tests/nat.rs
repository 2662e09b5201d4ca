//! NAT and SNAT through the real XDP program (`BPF_PROG_TEST_RUN`), its maps
//! written by lbd's control plane, in a namespace of its own
//! ([`lb_tests::natns`]) whose routing and neighbour tables the program's
//! FIB lookups read, so each output frame is known byte for byte.
//!
//! Needs root.

use std::net::Ipv4Addr;

use lb_common::nat::{Conn, ConnKey, NatNote, CONN_CLOSED, CONN_ESTABLISHED, CONN_FIN, CONN_SYN};
use lb_common::Reason;
use lb_tests::frames::{icmp_error, FrameSpec};
use lb_tests::lab::in_netns;
use lb_tests::natns::{server_mac, NatNetns, C0_MAC, CLIENT, CLIENT_MAC, V0_MAC};
use lb_userspace::{
    balancer::Balancer,
    config::{AdminState, Config},
    dataplane::{EbpfMaps, Program},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const RS1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 21);
const RS2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 22);
const DNS1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 31);

const CONFIG: &str = "
node: { name: fixture, interface: c0, server_interfaces: [v0] }
services:
  - name: web
    vip: 198.18.0.100
    port: 443
    forwarding: snat
    snat_address: 198.18.1.1
    real_servers:
      - { name: rs1, address: 198.18.1.21, port: 8443 }
  - name: app
    vip: 198.18.0.100
    port: 80
    forwarding: nat
    real_servers:
      - { name: rs2, address: 198.18.1.22 }
  - name: dns
    vip: 198.18.0.100
    port: 53
    protocol: udp
    forwarding: snat
    snat_address: 198.18.1.1
    real_servers:
      - { name: dns1, address: 198.18.1.31 }
";

struct Harness {
    program: Program,
    balancer: Balancer<EbpfMaps>,
}

impl Harness {
    /// Loads the program, applies [`CONFIG`] with SNAT ports `ports`
    /// (first, count), and lets frames leave by `egress`. The thread stays
    /// on its CPU: the next-hop cache is per CPU.
    fn new(egress: &[u32], ports: Option<(u16, u16)>) -> Self {
        lb_tests::xdp::pin_to_one_cpu();
        assert!(
            !Program::object().is_empty(),
            "no XDP object: run `cargo xtask build` first"
        );
        let mut program =
            Program::load_bytes(Program::object()).unwrap_or_else(|e| panic!("loading: {e}"));
        let maps = program.take_maps().unwrap_or_else(|e| panic!("maps: {e}"));
        let mut balancer = Balancer::new(maps, C0_MAC).unwrap_or_else(|e| panic!("{e}"));
        if let Some((first, count)) = ports {
            balancer.set_snat_ports(first, count);
        }
        let config = Config::from_yaml(CONFIG, "nat.yaml").unwrap_or_else(|e| panic!("{e}"));
        balancer.apply(&config).unwrap_or_else(|e| panic!("{e}"));
        balancer
            .maps_mut()
            .nat_mut()
            .set_egress(egress)
            .unwrap_or_else(|e| panic!("{e}"));
        Self { program, balancer }
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        lb_tests::xdp::run(&mut self.program, frame)
    }

    fn connections(&self) -> Vec<(ConnKey, Conn)> {
        self.balancer
            .maps()
            .nat()
            .conn_table()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .connections()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The client entry of the connection from `client:sport`.
    fn connection(&self, client: Ipv4Addr, sport: u16) -> Conn {
        self.connections()
            .into_iter()
            .find(|(k, _)| k.src == u32::from_ne_bytes(client.octets()) && k.sport == sport.to_be())
            .map_or_else(|| panic!("no connection from {client}:{sport}"), |(_, c)| c)
    }

    fn note(&self, note: NatNote) -> u64 {
        self.balancer
            .maps()
            .nat()
            .notes()
            .unwrap_or_else(|e| panic!("{e}"))[note as usize]
    }

    fn reason(&self, reason: Reason) -> u64 {
        self.balancer.reasons().unwrap_or_else(|e| panic!("{e}"))[reason as usize]
    }
}

fn client_frame(dport: u16, flags: u8) -> FrameSpec {
    FrameSpec {
        src_mac: CLIENT_MAC,
        tcp_flags: flags,
        ..FrameSpec::tcp(C0_MAC, CLIENT, VIP, dport)
    }
}

/// `spec` as it leaves for `to` (MACs from the FIB: `v0` to the server).
fn to_server(spec: &FrameSpec, src: Ipv4Addr, sport: u16, to: Ipv4Addr, dport: u16) -> Vec<u8> {
    FrameSpec {
        dst_mac: server_mac(to),
        src_mac: V0_MAC,
        src,
        dst: to,
        sport,
        dport,
        ttl: spec.ttl - 1,
        ..spec.clone()
    }
    .build()
}

/// A server's reply from `from:sport` to `to:dport`.
fn server_frame(from: Ipv4Addr, sport: u16, to: Ipv4Addr, dport: u16, flags: u8) -> FrameSpec {
    FrameSpec {
        dst_mac: V0_MAC,
        src_mac: server_mac(from),
        src: from,
        dst: to,
        sport,
        dport,
        tcp_flags: flags,
        ..FrameSpec::tcp(V0_MAC, from, to, dport)
    }
}

/// The reply as the client gets it: from VIP:`vport`, MACs of `c0`.
fn to_client(spec: &FrameSpec, vport: u16) -> Vec<u8> {
    FrameSpec {
        dst_mac: CLIENT_MAC,
        src_mac: C0_MAC,
        src: VIP,
        dst: CLIENT,
        sport: vport,
        dport: 40_000,
        ttl: spec.ttl - 1,
        ..spec.clone()
    }
    .build()
}

/// The namespace with this file's servers as neighbours.
fn netns(test: &str) -> NatNetns {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "NAT packet tests need root");
    NatNetns::new(test, &[RS1, RS2, DNS1]).unwrap_or_else(|e| panic!("{e}"))
}

/// The interfaces translated frames leave by.
fn egress(ns: &NatNetns) -> [u32; 2] {
    let index = |dev| ns.ifindex(dev).unwrap_or_else(|e| panic!("{e}"));
    [index("c0"), index("v0")]
}

fn in_ns<T: Send>(ns: &NatNetns, f: impl FnOnce(&NatNetns) -> T + Send) -> T {
    in_netns(ns.name(), || f(ns)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn snat_and_nat_translate_both_ways_with_exact_frames() {
    let ns = netns("both");
    let egress = egress(&ns);
    in_ns(&ns, |_| {
        let mut h = Harness::new(&egress, None);

        // SNAT: the SYN leaves from the SNAT address and a port of lbd's,
        // to the server's own port, MACs from the FIB.
        let syn = client_frame(443, 0x02);
        let (verdict, out) = h.run(&syn.build());
        assert_eq!(verdict, XDP_REDIRECT, "the SYN leaves by v0");
        let conn = h.connection(CLIENT, 40_000);
        let port = u16::from_be(conn.sport);
        assert!(
            (1024..32_768).contains(&port),
            "a port outside the ephemeral range: {port}"
        );
        assert_eq!(conn.state, CONN_SYN);
        assert_eq!(
            out,
            to_server(&syn, SNAT, port, RS1, 8443),
            "the SYN to rs1"
        );

        // The SYN-ACK comes back to the SNAT address and goes to the client
        // from VIP:443.
        let syn_ack = server_frame(RS1, 8443, SNAT, port, 0x12);
        let (verdict, out) = h.run(&syn_ack.build());
        assert_eq!(verdict, XDP_REDIRECT, "the SYN-ACK leaves by c0");
        assert_eq!(out, to_client(&syn_ack, 443), "the SYN-ACK to the client");
        assert_eq!(h.note(NatNote::Reply), 1);

        // The client's ACK follows the connection: established.
        let ack = client_frame(443, 0x10);
        let (verdict, out) = h.run(&ack.build());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_server(&ack, SNAT, port, RS1, 8443));
        assert_eq!(h.connection(CLIENT, 40_000).state, CONN_ESTABLISHED);
        assert_eq!(h.note(NatNote::ConnHit), 1);

        // NAT: only the destination changes; the server sees the client.
        let syn = client_frame(80, 0x02);
        let (verdict, out) = h.run(&syn.build());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_server(&syn, CLIENT, 40_000, RS2, 80), "NAT: to rs2");
        let reply = server_frame(RS2, 80, CLIENT, 40_000, 0x12);
        let (verdict, out) = h.run(&reply.build());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out, to_client(&reply, 80), "NAT: the reply from VIP:80");
        assert_eq!(h.reason(Reason::Forwarded), 5);
    });
}

#[test]
fn udp_with_and_without_a_checksum_and_a_reset_ends_a_connection() {
    let ns = netns("udp");
    let egress = egress(&ns);
    in_ns(&ns, |_| {
        let mut h = Harness::new(&egress, None);
        let query = FrameSpec {
            src_mac: CLIENT_MAC,
            ..FrameSpec::udp(C0_MAC, CLIENT, VIP, 53)
        };
        let (verdict, out) = h.run(&query.build());
        assert_eq!(verdict, XDP_REDIRECT);
        let port = u16::from_be(h.connection(CLIENT, 40_000).sport);
        assert_eq!(
            out,
            to_server(&query, SNAT, port, DNS1, 53),
            "UDP, checksum updated"
        );

        // A datagram without a checksum (0) leaves without one.
        let mut bare = query.build();
        bare[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        let (verdict, out) = h.run(&bare);
        assert_eq!(verdict, XDP_REDIRECT);
        let mut expected = to_server(&query, SNAT, port, DNS1, 53);
        expected[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(out, expected, "UDP without a checksum keeps none");

        // TCP: a reset from the client closes its connection.
        let (verdict, _) = h.run(&client_frame(80, 0x02).build());
        assert_eq!(verdict, XDP_REDIRECT);
        let (verdict, _) = h.run(&client_frame(80, 0x14).build());
        assert_eq!(verdict, XDP_REDIRECT, "the reset is forwarded");
        let closed = h
            .connections()
            .into_iter()
            .find(|(k, _)| k.dport == 80_u16.to_be())
            .map(|(_, c)| c.state);
        assert_eq!(closed, Some(CONN_CLOSED), "the reset closed the connection");

        // lbd's sweep keeps what lives and removes what expired, both
        // entries of each connection.
        let table = h.balancer.maps().nat().conn_table();
        let mut table = table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = lb_userspace::monotonic_ns();
        let kept = table.sweep(now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept.removed, 0, "nothing has expired yet");
        assert_eq!(
            kept.live_by_real.values().sum::<u64>(),
            2,
            "two connections live"
        );
        // The reset connection (10 s) is gone 11 s on, the UDP flow (5 min) not.
        let later = table
            .sweep(now + 11_000_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(later.removed, 2, "both entries of the reset connection");
        assert_eq!(
            table.connections().unwrap_or_else(|e| panic!("{e}")).len(),
            1
        );
        let gone = table
            .sweep(now + 301_000_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gone.removed, 2, "then the UDP flow's");
        assert!(table
            .connections()
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty());
    });
}

#[test]
fn unknown_frames_to_the_snat_address_go_to_the_kernel_and_ports_run_out_cleanly() {
    let ns = netns("ports");
    let egress = egress(&ns);
    in_ns(&ns, |_| {
        // One SNAT port only: the first client takes it, the second finds
        // it taken on every try and is dropped.
        let mut h = Harness::new(&egress, Some((2000, 1)));
        let stray = server_frame(RS1, 9999, SNAT, 5555, 0x10);
        let (verdict, out) = h.run(&stray.build());
        assert_eq!(
            (verdict, out),
            (XDP_PASS, stray.build()),
            "no connection: to the kernel"
        );
        assert_eq!(h.note(NatNote::NoConnection), 1);
        assert_eq!(h.reason(Reason::PassNotService), 1);

        let (verdict, _) = h.run(&client_frame(443, 0x02).build());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(u16::from_be(h.connection(CLIENT, 40_000).sport), 2000);
        let other = FrameSpec {
            sport: 40_001,
            ..client_frame(443, 0x02)
        };
        let (verdict, _) = h.run(&other.build());
        assert_eq!(verdict, XDP_DROP, "no port left");
        assert_eq!(h.note(NatNote::PortCollision), 8);
        assert_eq!(h.note(NatNote::PortsExhausted), 1);
    });
}

/// SNAT ports go round the range in order, per server: a port freed comes
/// back only after the others (a server may still hold its last
/// connection in TIME-WAIT), and a taken one is passed over.
#[test]
fn snat_ports_go_round_the_range_in_order_and_a_freed_one_comes_back_last() {
    let ns = netns("order");
    let egress = egress(&ns);
    in_ns(&ns, |_| {
        let mut h = Harness::new(&egress, Some((2000, 4)));
        let syn = |sport: u16| {
            FrameSpec {
                sport,
                ..client_frame(443, 0x02)
            }
            .build()
        };
        let open = |h: &mut Harness, sport: u16| {
            let (verdict, _) = h.run(&syn(sport));
            assert_eq!(verdict, XDP_REDIRECT, "SYN from port {sport}");
            u16::from_be(h.connection(CLIENT, sport).sport)
        };
        let ports: Vec<u16> = (40_000..40_003).map(|p| open(&mut h, p)).collect();
        assert_eq!(ports, [2000, 2001, 2002], "in order");

        // The connection on 2001 is reset, and swept once expired.
        let reset = FrameSpec {
            sport: 40_001,
            ..client_frame(443, 0x04)
        };
        assert_eq!(h.run(&reset.build()).0, XDP_REDIRECT);
        let table = h.balancer.maps().nat().conn_table();
        let swept = table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sweep(lb_userspace::monotonic_ns() + 11_000_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(swept.removed, 2, "the reset connection's entries");

        assert_eq!(
            open(&mut h, 40_003),
            2003,
            "the next one, not the freed one"
        );
        assert_eq!(h.note(NatNote::PortCollision), 0);
        assert_eq!(
            open(&mut h, 40_004),
            2001,
            "round again: 2000 is taken and passed over, 2001 is free"
        );
        assert_eq!(h.note(NatNote::PortCollision), 1);
    });
}

/// A SNAT port is taken again from a connection both sides have closed
/// once it has been quiet for `SNAT_RECLAIM_AFTER_NS` (2 s), not after
/// the closed state's 10 s; never from one that is open or closed just now.
#[test]
fn a_closed_connections_snat_port_is_taken_again_after_two_quiet_seconds() {
    let ns = netns("reclaim");
    let egress = egress(&ns);
    in_ns(&ns, |_| {
        // One port: each connection needs the last one's.
        let mut h = Harness::new(&egress, Some((2000, 1)));
        let from = |sport: u16, flags: u8| {
            FrameSpec {
                sport,
                ..client_frame(443, flags)
            }
            .build()
        };
        let forward = |h: &mut Harness, frame: Vec<u8>| {
            let (verdict, _) = h.run(&frame);
            assert_eq!(verdict, XDP_REDIRECT);
        };
        // Make every entry look `secs` older.
        let age = |h: &Harness, secs: u64| {
            let table = h.balancer.maps().nat().conn_table();
            let mut table = table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let older: Vec<(ConnKey, Conn)> = table
                .entries()
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|(k, c)| {
                    let last_seen_ns = c.last_seen_ns.saturating_sub(secs * 1_000_000_000);
                    (k, Conn { last_seen_ns, ..c })
                })
                .collect();
            table.install(&older).unwrap_or_else(|e| panic!("{e}"));
        };

        // An open connection holds its port, however quiet.
        forward(&mut h, from(40_000, 0x02));
        forward(&mut h, server_frame(RS1, 8443, SNAT, 2000, 0x12).build());
        forward(&mut h, from(40_000, 0x10));
        age(&h, 3);
        assert_eq!(h.run(&from(40_001, 0x02)).0, XDP_DROP, "open: not taken");

        // Closed both ways just now: still held.
        forward(&mut h, from(40_000, 0x11));
        forward(&mut h, server_frame(RS1, 8443, SNAT, 2000, 0x11).build());
        assert_eq!(h.connection(CLIENT, 40_000).state, CONN_CLOSED);
        assert_eq!(h.run(&from(40_001, 0x02)).0, XDP_DROP, "closed just now");
        assert_eq!(h.note(NatNote::PortsExhausted), 2);
        assert_eq!(h.note(NatNote::PortReclaimed), 0);

        // Quiet for 3 s: the new connection takes the port, and the old
        // connection's entries are gone.
        age(&h, 3);
        forward(&mut h, from(40_001, 0x02));
        assert_eq!(u16::from_be(h.connection(CLIENT, 40_001).sport), 2000);
        assert_eq!(h.note(NatNote::PortReclaimed), 1);
        let table = h.balancer.maps().nat().conn_table();
        let entries = table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entries.len(), 2, "only the new connection's two entries");

        // A reset from one side ends a connection as well.
        forward(&mut h, from(40_001, 0x04));
        age(&h, 3);
        forward(&mut h, from(40_002, 0x02));
        assert_eq!(u16::from_be(h.connection(CLIENT, 40_002).sport), 2000);
        assert_eq!(h.note(NatNote::PortReclaimed), 2);
    });
}

#[test]
fn a_connection_outlives_a_drain_and_a_halted_server_takes_none() {
    let ns = netns("drain");
    let egress = egress(&ns);
    in_ns(&ns, |_| {
        let mut h = Harness::new(&egress, None);
        let (verdict, _) = h.run(&client_frame(80, 0x02).build());
        assert_eq!(verdict, XDP_REDIRECT);
        h.balancer
            .set_admin_state("app", "rs2", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        let ack = client_frame(80, 0x10);
        let (verdict, out) = h.run(&ack.build());
        assert_eq!(
            verdict, XDP_REDIRECT,
            "a drained server keeps its connection"
        );
        assert_eq!(out, to_server(&ack, CLIENT, 40_000, RS2, 80));
        // The handshake showed the client is real: it is remembered, and
        // its next connection keeps the drained server, as with direct
        // routing.
        let again = FrameSpec {
            sport: 40_001,
            ..client_frame(80, 0x02)
        };
        let (verdict, out) = h.run(&again.build());
        assert_eq!(verdict, XDP_REDIRECT, "the client's next connection");
        assert_eq!(out, to_server(&again, CLIENT, 40_001, RS2, 80));
        let stranger = FrameSpec {
            src: Ipv4Addr::new(198, 18, 0, 51),
            ..client_frame(80, 0x02)
        };
        assert_eq!(
            h.run(&stranger.build()).0,
            XDP_DROP,
            "but takes no new client"
        );
        h.balancer
            .set_admin_state("app", "rs2", AdminState::Halt)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            h.run(&ack.build()).0,
            XDP_DROP,
            "a halted server keeps none"
        );
        assert_eq!(h.note(NatNote::ConnStale), 1);
    });
}

/// `frame` as it leaves lbd: MACs `dst_mac` and `src_mac`, TTL one less,
/// the IPv4 checksum made again.
fn forwarded(mut frame: Vec<u8>, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[22] -= 1;
    frame[24..26].copy_from_slice(&[0, 0]);
    let check = lb_tests::frames::checksum(&frame[14..34], 0);
    frame[24..26].copy_from_slice(&check.to_be_bytes());
    frame
}

/// An ICMP error about a tracked connection's packet goes to the other
/// side of the connection, as if about the packet that side sent: "needs
/// fragmentation" from a router on the clients' side to the server (path
/// MTU discovery through SNAT), "port unreachable" from the server itself
/// to the client, from the VIP. Exact frames: outer and quoted addresses,
/// ports and checksums. An error about no connection goes to the kernel.
#[test]
fn icmp_errors_about_a_connection_reach_its_other_side() {
    const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    let ns = netns("icmp");
    let egress = egress(&ns);
    in_ns(&ns, |_| {
        let mut h = Harness::new(&egress, None);
        let syn = client_frame(443, 0x02);
        let (verdict, _) = h.run(&syn.build());
        assert_eq!(verdict, XDP_REDIRECT);
        let port = u16::from_be(h.connection(CLIENT, 40_000).sport);
        let syn_ack = server_frame(RS1, 8443, SNAT, port, 0x12);
        let (verdict, _) = h.run(&syn_ack.build());
        assert_eq!(verdict, XDP_REDIRECT);

        // A router before the client cannot pass the SYN-ACK on unfragmented.
        let too_big = icmp_error(C0_MAC, ROUTER, VIP, 3, 4, &to_client(&syn_ack, 443), 28);
        let (verdict, out) = h.run(&too_big);
        assert_eq!(verdict, XDP_REDIRECT, "to the server, by v0");
        let as_sent = FrameSpec {
            ttl: syn_ack.ttl - 1,
            ..syn_ack.clone()
        }
        .build();
        let expected = forwarded(
            icmp_error(C0_MAC, ROUTER, RS1, 3, 4, &as_sent, 28),
            server_mac(RS1),
            V0_MAC,
        );
        assert_eq!(
            out, expected,
            "about RS1:8443 -> SNAT:{port}, from the router"
        );

        // The server refuses the SYN it was sent: the client hears it from the VIP.
        let refused = icmp_error(
            V0_MAC,
            RS1,
            SNAT,
            3,
            3,
            &to_server(&syn, SNAT, port, RS1, 8443),
            28,
        );
        let (verdict, out) = h.run(&refused);
        assert_eq!(verdict, XDP_REDIRECT, "to the client, by c0");
        let as_sent = FrameSpec {
            ttl: syn.ttl - 1,
            ..syn.clone()
        }
        .build();
        let expected = forwarded(
            icmp_error(V0_MAC, VIP, CLIENT, 3, 3, &as_sent, 28),
            CLIENT_MAC,
            C0_MAC,
        );
        assert_eq!(out, expected, "about CLIENT:40000 -> VIP:443, from the VIP");
        assert_eq!(h.note(NatNote::IcmpTranslated), 2);

        // About a connection there is not: the kernel's.
        let other = FrameSpec {
            sport: 443,
            ..FrameSpec::tcp(CLIENT_MAC, VIP, CLIENT, 40_999)
        };
        let stray = icmp_error(C0_MAC, ROUTER, VIP, 3, 4, &other.build(), 28);
        let (verdict, out) = h.run(&stray);
        assert_eq!((verdict, out), (XDP_PASS, stray), "no connection: passed");
        assert_eq!(h.reason(Reason::PassIcmp), 1);
    });
}

/// A connection both sides have closed (FIN each way) is over at once:
/// both entries closed (its SNAT port free 10 s on, not after the 2 min a
/// half-closed one keeps). A client reusing the port opens it again with
/// its SYN, on the same mapping.
#[test]
fn a_connection_closed_by_both_sides_is_over_and_a_syn_reopens_it() {
    let ns = netns("fin");
    let egress = egress(&ns);
    in_ns(&ns, |_| {
        let mut h = Harness::new(&egress, None);
        let (verdict, _) = h.run(&client_frame(443, 0x02).build());
        assert_eq!(verdict, XDP_REDIRECT);
        let port = u16::from_be(h.connection(CLIENT, 40_000).sport);
        let mut send = |frame: Vec<u8>| {
            let (verdict, _) = h.run(&frame);
            assert_eq!(verdict, XDP_REDIRECT);
            h.connection(CLIENT, 40_000)
        };
        send(server_frame(RS1, 8443, SNAT, port, 0x12).build());
        assert_eq!(
            send(client_frame(443, 0x10).build()).state,
            CONN_ESTABLISHED
        );
        assert_eq!(
            send(client_frame(443, 0x11).build()).state,
            CONN_FIN,
            "half closed"
        );
        assert_eq!(
            send(server_frame(RS1, 8443, SNAT, port, 0x11).build()).state,
            CONN_CLOSED,
            "the server's FIN ends it"
        );
        let again = send(client_frame(443, 0x02).build());
        assert_eq!(
            again.state, CONN_SYN,
            "a SYN on the same port opens it again"
        );
        assert_eq!(u16::from_be(again.sport), port, "on the same mapping");
    });
}

/// The data path reuses the routing table's answer for a destination (no
/// FIB lookup per frame) for at most about a second: a server's new MAC
/// address is followed within that, not before.
#[test]
fn a_next_hop_is_reused_for_a_moment_and_then_asked_again() {
    let ns = netns("hop");
    let egress = egress(&ns);
    let name = ns.name().to_owned();
    in_ns(&ns, |_| {
        let mut h = Harness::new(&egress, None);
        let (verdict, out) = h.run(&client_frame(80, 0x02).build());
        assert_eq!(verdict, XDP_REDIRECT);
        assert_eq!(out[0..6], server_mac(RS2), "to rs2's MAC");
        let moved = [0x02, 0, 0, 0, 0x77, 0x22];
        let mac = moved.map(|b| format!("{b:02x}")).join(":");
        lb_tests::lab::run(&[
            "ip",
            "-n",
            &name,
            "neigh",
            "replace",
            &RS2.to_string(),
            "lladdr",
            &mac,
            "dev",
            "v0",
            "nud",
            "permanent",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let (_, out) = h.run(&client_frame(80, 0x10).build());
        assert_eq!(
            out[0..6],
            server_mac(RS2),
            "a moment later: the cached answer"
        );
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        let (_, out) = h.run(&client_frame(80, 0x10).build());
        assert_eq!(out[0..6], moved, "a second later: the new MAC");
    });
}
