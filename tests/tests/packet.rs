//! The real XDP program in the kernel (`BPF_PROG_TEST_RUN`), its maps filled by
//! the daemon's own control plane: a table of fixtures (name, input frame,
//! expected verdict, expected output frame, expected reason counter), then a
//! seeded property test over 100,000 random and mutated frames.
//!
//! Needs root (loading BPF programs). The kernel refuses test frames shorter
//! than an Ethernet header, so truncation starts at 14 bytes.

use std::{collections::BTreeMap, net::Ipv4Addr};

use lb_common::census::CensusRun;
use lb_common::{Affinity, Reason};
use lb_tests::frames::{self, parse_fragment, parse_service_frame, FrameSpec};
use lb_tests::wait::{wait_until, SLACK};
use lb_userspace::{
    balancer::{Balancer, SWEEP_MARGIN_NS, UNKNOWN_SERVICE_GRACE_NS},
    config::{AdminState, Config},
    dataplane::{CensusRunner as _, EbpfCensus, EbpfMaps, Maps, Program},
    monotonic_ns,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const IFACE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP_NO_MAC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);

const CONFIG: &str = "
node: { name: fixture, interface: eth0 }
services:
  - name: web
    vip: 198.18.0.100
    port: 80
    persistence: { timeout_s: 300 }
    real_servers:
      - { name: rs1, address: 198.18.0.21 }
      - { name: rs2, address: 198.18.0.22 }
      - { name: rs3, address: 198.18.0.23 }
  - name: dns
    vip: 198.18.0.100
    port: 53
    protocol: udp
    real_servers:
      - { name: dns1, address: 198.18.0.31 }
      - { name: dns2, address: 198.18.0.32 }
  - name: web-redirect
    vip: 198.18.0.100
    port: 8080
    redirect: { code: 301 }
  - name: unresolved
    vip: 198.18.0.101
    port: 80
    real_servers:
      - { name: dark, address: 198.18.0.41 }
  - name: capped
    vip: 198.18.0.102
    port: 443
    persistence: { timeout_s: 300, max_clients: 2 }
    real_servers:
      - { name: cap1, address: 198.18.0.51 }
      - { name: cap2, address: 198.18.0.52 }
";

const VIP_CAPPED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 102);

fn mac_of(address: Ipv4Addr) -> [u8; 6] {
    let o = address.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

struct Harness {
    program: Program,
    balancer: Balancer<EbpfMaps>,
}

impl Harness {
    /// Loads the program and applies [`CONFIG`]. The thread stays on its
    /// CPU: the flow cache is per CPU, and a fixture names the one reason
    /// its frame is counted under (a cache hit on one CPU is a table hit on
    /// another).
    fn new() -> Self {
        lb_tests::xdp::pin_to_one_cpu();
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "packet tests load BPF programs: run them as root"
        );
        assert!(
            !Program::object().is_empty(),
            "no XDP object: run `cargo xtask build` first"
        );
        let mut program =
            Program::load_bytes(Program::object()).unwrap_or_else(|e| panic!("loading: {e}"));
        let maps = program.take_maps().unwrap_or_else(|e| panic!("maps: {e}"));
        let mut balancer = Balancer::new(maps, IFACE_MAC).unwrap_or_else(|e| panic!("{e}"));
        let config = Config::from_yaml(CONFIG, "fixture.yaml").unwrap_or_else(|e| panic!("{e}"));
        balancer.apply(&config).unwrap_or_else(|e| panic!("{e}"));
        for address in balancer.addresses() {
            if address != Ipv4Addr::new(198, 18, 0, 41) {
                balancer
                    .set_mac(address, Some(mac_of(address)))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        Self { program, balancer }
    }

    /// Runs one frame; returns the verdict and the output frame.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        lb_tests::xdp::run(&mut self.program, frame)
    }

    fn reasons(&self) -> BTreeMap<&'static str, u64> {
        let counts = self.balancer.reasons().unwrap_or_else(|e| panic!("{e}"));
        Reason::ALL.iter().map(|r| r.name()).zip(counts).collect()
    }

    /// The name of the server the Maglev ring gives `client` of `service`.
    fn hashed_name(&self, service: &str, client: Ipv4Addr) -> String {
        let state = self
            .balancer
            .service(service)
            .unwrap_or_else(|e| panic!("{e}"));
        state
            .hashed_server(client)
            .unwrap_or_else(|| panic!("no server for {client}"))
            .name
            .clone()
    }

    /// The MAC of the server the Maglev ring gives `client` of `service`.
    fn hashed_mac(&self, service: &str, client: Ipv4Addr) -> [u8; 6] {
        let state = self
            .balancer
            .service(service)
            .unwrap_or_else(|e| panic!("{e}"));
        let server = state
            .hashed_server(client)
            .unwrap_or_else(|| panic!("no server for {client}"));
        mac_of(server.address)
    }

    fn plant(&mut self, service: &str, client: Ipv4Addr, server: &str, age_s: u64) {
        self.plant_at(
            service,
            client,
            server,
            monotonic_ns().saturating_sub(age_s * 1_000_000_000),
        );
    }

    /// Plants an entry last seen at `last_seen_ns` (which may be ahead of
    /// the clock, as when another CPU refreshed it after this one read it).
    fn plant_at(&mut self, service: &str, client: Ipv4Addr, server: &str, last_seen_ns: u64) {
        let state = self
            .balancer
            .service(service)
            .unwrap_or_else(|e| panic!("{e}"))
            .clone();
        let real = state
            .reals
            .iter()
            .find(|r| r.name == server)
            .unwrap_or_else(|| panic!("{server}"));
        let entry = Affinity {
            real: real.index,
            real_address: u32::from_ne_bytes(real.address.octets()),
            last_seen_ns,
            seen_jiffies: 0,
            sync_pass: 0,
        };
        self.balancer
            .maps_mut()
            .set_affinity(state.client_key(client), entry)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// What the output frame must be.
enum Output {
    /// Byte for byte the input.
    Unchanged,
    /// Byte for byte this frame.
    Exactly(Vec<u8>),
    /// The input with these destination and source MACs, nothing else changed.
    Macs([u8; 6], [u8; 6]),
}

struct Fixture {
    name: String,
    input: Vec<u8>,
    verdict: u32,
    output: Output,
    reason: Reason,
}

fn pass(name: impl Into<String>, input: Vec<u8>, reason: Reason) -> Fixture {
    Fixture {
        name: name.into(),
        input,
        verdict: XDP_PASS,
        output: Output::Unchanged,
        reason,
    }
}

fn forward(name: impl Into<String>, input: Vec<u8>, to: [u8; 6]) -> Fixture {
    Fixture {
        name: name.into(),
        input,
        verdict: XDP_TX,
        output: Output::Macs(to, IFACE_MAC),
        reason: Reason::Forwarded,
    }
}

fn check(h: &mut Harness, f: &Fixture) {
    let before = h.reasons();
    let (verdict, out) = h.run(&f.input);
    let after = h.reasons();
    assert_eq!(verdict, f.verdict, "{}: verdict", f.name);
    match f.output {
        Output::Unchanged => assert_eq!(
            out, f.input,
            "{}: output must be the input untouched",
            f.name
        ),
        Output::Exactly(ref expected) => {
            assert_eq!(&out, expected, "{}: output", f.name);
        }
        Output::Macs(dst, src) => {
            let mut expected = f.input.clone();
            expected[0..6].copy_from_slice(&dst);
            expected[6..12].copy_from_slice(&src);
            assert_eq!(out, expected, "{}: only the MACs change", f.name);
        }
    }
    let verdicts: Vec<(&str, u64)> = Reason::ALL
        .iter()
        .filter(|r| r.is_verdict())
        .map(|r| (r.name(), after[r.name()] - before[r.name()]))
        .filter(|(_, d)| *d > 0)
        .collect();
    assert_eq!(
        verdicts,
        vec![(f.reason.name(), 1)],
        "{}: exactly its reason is counted once",
        f.name
    );
}

/// The contract's "A node whose lbd died never answers ARP for the VIPs":
/// the kernel never does (lbd's guard), so the data path answers ARP
/// requests for the VIPs this node holds, and only those.
#[test]
fn arp_is_answered_for_held_vips_only() {
    let mut h = Harness::new();
    let request = frames::arp(OTHER_MAC, client(7), VIP);
    check(
        &mut h,
        &pass("a VIP not held (backup)", request.clone(), Reason::PassArp),
    );
    h.balancer
        .maps_mut()
        .set_held_vips(&[VIP].into_iter().collect())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut reply = OTHER_MAC.to_vec();
    reply.extend_from_slice(&IFACE_MAC);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&IFACE_MAC);
    reply.extend_from_slice(&VIP.octets());
    reply.extend_from_slice(&OTHER_MAC);
    reply.extend_from_slice(&client(7).octets());
    check(
        &mut h,
        &Fixture {
            name: "a held VIP: the request becomes the reply, sent back".into(),
            input: request.clone(),
            verdict: XDP_TX,
            output: Output::Exactly(reply),
            reason: Reason::ArpAnswered,
        },
    );
    let mut announcement = frames::arp(OTHER_MAC, VIP, VIP);
    check(
        &mut h,
        &pass(
            "a gratuitous request for the VIP (the other node's announcement)",
            announcement.clone(),
            Reason::PassArp,
        ),
    );
    announcement[21] = 2;
    check(&mut h, &pass("an ARP reply", announcement, Reason::PassArp));
    check(
        &mut h,
        &pass(
            "a request for another address",
            frames::arp(OTHER_MAC, client(7), Ipv4Addr::new(198, 18, 0, 10)),
            Reason::PassArp,
        ),
    );
    check(
        &mut h,
        &pass("truncated ARP", request[..30].to_vec(), Reason::PassArp),
    );
    h.balancer
        .maps_mut()
        .set_held_vips(&std::collections::BTreeSet::new())
        .unwrap_or_else(|e| panic!("{e}"));
    check(&mut h, &pass("the VIP given up", request, Reason::PassArp));
}

fn client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, i)
}

fn real_mac(h: &Harness, service: &str, server: &str) -> [u8; 6] {
    let state = h
        .balancer
        .service(service)
        .unwrap_or_else(|e| panic!("{e}"));
    let real = state
        .reals
        .iter()
        .find(|r| r.name == server)
        .unwrap_or_else(|| panic!("{server}"));
    mac_of(real.address)
}

/// A server of "web" other than the one with `mac`, and its MAC.
fn other_server(h: &Harness, mac: [u8; 6]) -> (&'static str, [u8; 6]) {
    ["rs1", "rs2", "rs3"]
        .into_iter()
        .map(|s| (s, real_mac(h, "web", s)))
        .find(|(_, m)| *m != mac)
        .unwrap_or_else(|| panic!("three servers"))
}

fn entry(h: &Harness, service: &str, client: Ipv4Addr) -> Option<Affinity> {
    let state = h
        .balancer
        .service(service)
        .unwrap_or_else(|e| panic!("{e}"));
    h.balancer
        .maps()
        .affinity(&state.client_key(client))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn last_seen(h: &Harness, service: &str, client: Ipv4Addr) -> u64 {
    entry(h, service, client)
        .unwrap_or_else(|| panic!("no affinity entry for {client}"))
        .last_seen_ns
}

#[test]
#[expect(clippy::too_many_lines, reason = "the fixture table")]
fn fixtures() {
    let mut h = Harness::new();
    let syn = FrameSpec::tcp(IFACE_MAC, client(7), VIP, 80);
    let syn_frame = syn.build();
    let hashed = h.hashed_mac("web", client(7));

    let mut table = vec![
        forward(
            "VIP SYN forwarded with the right MACs, nothing else changed",
            syn_frame.clone(),
            hashed,
        ),
        forward(
            "the same client again: same server",
            syn_frame.clone(),
            hashed,
        ),
        pass(
            "non-VIP port on the VIP",
            FrameSpec::tcp(IFACE_MAC, client(7), VIP, 22).build(),
            Reason::PassNotService,
        ),
        pass(
            "non-VIP address",
            FrameSpec::tcp(IFACE_MAC, client(7), Ipv4Addr::new(198, 18, 0, 10), 80).build(),
            Reason::PassNotService,
        ),
        pass(
            "UDP to a TCP service port",
            FrameSpec::udp(IFACE_MAC, client(7), VIP, 80).build(),
            Reason::PassNotService,
        ),
        pass(
            "ARP for a VIP this node does not hold (backup)",
            frames::arp(OTHER_MAC, client(7), VIP),
            Reason::PassArp,
        ),
        pass(
            "ICMP echo to the VIP",
            FrameSpec {
                protocol: 1,
                ..syn.clone()
            }
            .build(),
            Reason::PassIcmp,
        ),
        pass(
            "VRRP",
            FrameSpec {
                protocol: 112,
                ..syn.clone()
            }
            .build(),
            Reason::PassNotTcpUdp,
        ),
        pass("IPv6", frames::ipv6(IFACE_MAC), Reason::PassIpv6),
        pass(
            "VLAN-tagged VIP SYN",
            frames::vlan_tagged(&syn_frame, 10),
            Reason::PassVlan,
        ),
        pass(
            "redirect service port (answered by lbd itself)",
            FrameSpec::tcp(IFACE_MAC, client(7), VIP, 8080).build(),
            Reason::PassNotService,
        ),
        pass(
            "TCP fragment to a VIP with two TCP services (web, web-redirect)",
            FrameSpec {
                frag: 0x2000,
                ..syn.clone()
            }
            .build(),
            Reason::PassFragment,
        ),
        forward(
            "later UDP fragment to a VIP with one UDP service: by source",
            FrameSpec {
                frag: 0x0010,
                protocol: 17,
                ..syn.clone()
            }
            .build(),
            h.hashed_mac("dns", client(7)),
        ),
        pass(
            "ICMP fragment",
            FrameSpec {
                frag: 0x2000,
                protocol: 1,
                ..syn.clone()
            }
            .build(),
            Reason::PassFragment,
        ),
        pass(
            "VIP SYN for another host's MAC",
            FrameSpec::tcp(OTHER_MAC, client(7), VIP, 80).build(),
            Reason::PassNotForUs,
        ),
        pass(
            "VIP SYN to broadcast",
            FrameSpec::tcp([0xff; 6], client(7), VIP, 80).build(),
            Reason::PassNotForUs,
        ),
        forward(
            "IP options: forwarded unchanged",
            FrameSpec {
                ip_options: vec![1, 1, 1, 0],
                ..syn.clone()
            }
            .build(),
            hashed,
        ),
        forward(
            "TTL 1: forwarded unchanged (DR works at layer 2)",
            FrameSpec {
                ttl: 1,
                ..syn.clone()
            }
            .build(),
            hashed,
        ),
        forward(
            "a frame with Ethernet padding",
            {
                let mut f = syn_frame.clone();
                f.extend_from_slice(&[0; 6]);
                f
            },
            hashed,
        ),
        Fixture {
            name: "a service whose only real server has no MAC: none in the ring".into(),
            input: FrameSpec::tcp(IFACE_MAC, client(7), VIP_NO_MAC, 80).build(),
            verdict: XDP_DROP,
            output: Output::Unchanged,
            reason: Reason::DropNoReal,
        },
        Fixture {
            name: "a frame from its real server's own MAC (a router's loop)".into(),
            input: FrameSpec {
                src_mac: hashed,
                ..syn.clone()
            }
            .build(),
            verdict: XDP_DROP,
            output: Output::Unchanged,
            reason: Reason::DropLoop,
        },
    ];

    let udp = FrameSpec::udp(IFACE_MAC, client(9), VIP, 53);
    table.push(forward(
        "UDP service",
        udp.build(),
        h.hashed_mac("dns", client(9)),
    ));

    let mut bad_checksum = syn_frame.clone();
    bad_checksum[24] ^= 0xff;
    table.push(forward(
        "bad IP checksum: forwarded unchanged",
        bad_checksum,
        hashed,
    ));

    let mut bad_version = syn_frame.clone();
    bad_version[14] = 0x65;
    table.push(pass(
        "IP version 6 in an IPv4 ethertype",
        bad_version,
        Reason::PassBadIp,
    ));
    let mut short_ihl = syn_frame.clone();
    short_ihl[14] = 0x44;
    table.push(pass("IHL below 5", short_ihl, Reason::PassBadIp));
    let mut bad_doff = syn_frame.clone();
    bad_doff[14 + 20 + 12] = 4 << 4;
    table.push(pass("TCP data offset below 5", bad_doff, Reason::PassBadL4));
    let mut long_doff = syn_frame.clone();
    long_doff[14 + 20 + 12] = 6 << 4;
    table.push(pass(
        "TCP data offset past the end",
        long_doff,
        Reason::PassTruncatedL4,
    ));
    let mut long_total = syn_frame.clone();
    long_total[16..18].copy_from_slice(&100_u16.to_be_bytes());
    table.push(pass(
        "IP total length past the end of the frame",
        long_total,
        Reason::PassTruncatedIp,
    ));

    // Truncation at every length from the Ethernet header on.
    // Inside the IP header, or past it while the total length still claims
    // 40 bytes: either way the IP datagram is incomplete.
    for cut in 14..syn_frame.len() {
        table.push(pass(
            format!("SYN truncated to {cut} bytes"),
            syn_frame[..cut].to_vec(),
            Reason::PassTruncatedIp,
        ));
    }
    // Truncated inside L4 with a consistent IP total length.
    for l4_len in 0..20 {
        let mut f = syn_frame[..34 + l4_len].to_vec();
        let total = u16::try_from(20 + l4_len).unwrap_or(0);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        table.push(pass(
            format!("TCP header of {l4_len} bytes"),
            f,
            Reason::PassTruncatedL4,
        ));
    }
    let mut udp_short = udp.build()[..34 + 7].to_vec();
    udp_short[16..18].copy_from_slice(&27_u16.to_be_bytes());
    table.push(pass(
        "UDP header of 7 bytes",
        udp_short,
        Reason::PassTruncatedL4,
    ));
    table.push(pass(
        "Ethernet header only",
        syn_frame[..14].to_vec(),
        Reason::PassTruncatedIp,
    ));

    for fixture in &table {
        check(&mut h, fixture);
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one client's story, step by step")]
fn persistence_hit_expiry_and_server_states() {
    let mut h = Harness::new();
    let c = client(33);
    let hashed = h.hashed_mac("web", c);
    // Plant an entry on a server the hash would not choose.
    let (other, other_mac) = other_server(&h, hashed);
    let frame = FrameSpec::tcp(IFACE_MAC, c, VIP, 80).build();

    h.plant("web", c, other, 10);
    check(
        &mut h,
        &forward(
            "persistence hit: the table wins over the hash",
            frame.clone(),
            other_mac,
        ),
    );
    let after_hit = h.reasons();
    assert!(after_hit["affinity_hit"] >= 1);

    // Timeout 300 s plus the data path's 3.5 s of lag: 305 s is expired.
    h.plant("web", c, other, 305);
    check(
        &mut h,
        &forward("expired entry: back to the hash", frame.clone(), hashed),
    );
    // The new choice is remembered: with its server drained the ring has
    // another server for the client, and only the table keeps it where it is.
    let chosen = h.hashed_name("web", c);
    h.balancer
        .set_admin_state("web", &chosen, AdminState::Drain)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        h.hashed_mac("web", c),
        hashed,
        "the drained server is out of the ring"
    );
    check(
        &mut h,
        &forward("and the new choice is remembered", frame.clone(), hashed),
    );
    h.balancer
        .set_admin_state("web", &chosen, AdminState::Online)
        .unwrap_or_else(|e| panic!("{e}"));

    h.plant("web", c, other, 10);
    h.balancer
        .set_admin_state("web", other, AdminState::Drain)
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut h,
        &forward("drained server keeps its client", frame.clone(), other_mac),
    );
    h.balancer
        .set_admin_state("web", other, AdminState::Halt)
        .unwrap_or_else(|e| panic!("{e}"));
    let hashed_without = h.hashed_mac("web", c);
    assert_ne!(hashed_without, other_mac);
    check(
        &mut h,
        &forward(
            "halted server loses its client at once",
            frame.clone(),
            hashed_without,
        ),
    );
    let stale = h.reasons()["affinity_stale"];
    assert!(stale >= 1, "the stale entry is counted");

    // A server removed by a reload loses its clients; the others keep
    // theirs, also where the new ring would send them elsewhere: each kept
    // client remembers a server that is neither its ring choice nor the
    // removed one.
    h.balancer
        .set_admin_state("web", other, AdminState::Online)
        .unwrap_or_else(|e| panic!("{e}"));
    let removed = "rs3";
    let lost = client(45);
    h.plant("web", lost, removed, 10);
    let kept: Vec<(Ipv4Addr, &str)> = (100..=163)
        .map(client)
        .map(|k| {
            let hashed = h.hashed_name("web", k);
            let server = ["rs1", "rs2"]
                .into_iter()
                .find(|s| *s != hashed)
                .unwrap_or("rs1");
            (k, server)
        })
        .collect();
    for (k, server) in &kept {
        h.plant("web", *k, server, 10);
    }
    let without: String = CONFIG
        .lines()
        .filter(|l| !l.contains(&format!("name: {removed},")))
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::from_yaml(&without, "fixture.yaml").unwrap_or_else(|e| panic!("{e}"));
    h.balancer.apply(&config).unwrap_or_else(|e| panic!("{e}"));
    let mut elsewhere_by_ring = 0;
    for (k, server) in &kept {
        let mac = real_mac(&h, "web", server);
        if h.hashed_mac("web", *k) != mac {
            elsewhere_by_ring += 1;
        }
        check(
            &mut h,
            &forward(
                format!("after the reload {k} keeps {server}"),
                FrameSpec::tcp(IFACE_MAC, *k, VIP, 80).build(),
                mac,
            ),
        );
    }
    assert!(
        elsewhere_by_ring > 0,
        "the new ring would move some of the kept clients: only the table keeps them"
    );
    let lost_to = h.hashed_mac("web", lost);
    check(
        &mut h,
        &forward(
            "a client of the removed server goes by the new ring",
            FrameSpec::tcp(IFACE_MAC, lost, VIP, 80).build(),
            lost_to,
        ),
    );
}

#[test]
fn fallback_serves_while_no_server_is_up_and_is_not_remembered() {
    let mut h = Harness::new();
    let with_fallback = CONFIG.replace(
        "    persistence: { timeout_s: 300 }\n",
        "    persistence: { timeout_s: 300 }\n    fallback: { address: 198.18.0.50 }\n",
    );
    let config =
        Config::from_yaml(&with_fallback, "fixture.yaml").unwrap_or_else(|e| panic!("{e}"));
    h.balancer.apply(&config).unwrap_or_else(|e| panic!("{e}"));
    let fallback = Ipv4Addr::new(198, 18, 0, 50);
    h.balancer
        .set_mac(fallback, Some(mac_of(fallback)))
        .unwrap_or_else(|e| panic!("{e}"));
    for name in ["rs1", "rs2", "rs3"] {
        h.balancer
            .set_admin_state("web", name, AdminState::Halt)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let frame = FrameSpec::tcp(IFACE_MAC, client(60), VIP, 80).build();
    check(
        &mut h,
        &forward(
            "no server up: the fallback",
            frame.clone(),
            mac_of(fallback),
        ),
    );
    h.balancer
        .set_admin_state("web", "rs2", AdminState::Online)
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut h,
        &forward(
            "a server is back: it gets the client",
            frame,
            mac_of(Ipv4Addr::new(198, 18, 0, 22)),
        ),
    );

    let dns = FrameSpec::udp(IFACE_MAC, client(61), VIP, 53).build();
    h.balancer
        .set_admin_state("dns", "dns1", AdminState::Halt)
        .unwrap_or_else(|e| panic!("{e}"));
    h.balancer
        .set_admin_state("dns", "dns2", AdminState::Halt)
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut h,
        &Fixture {
            name: "no server and no fallback: dropped, counted".into(),
            input: dns,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            reason: Reason::DropNoReal,
        },
    );
}

#[test]
fn a_slot_handed_to_another_service_does_not_keep_the_first_services_clients() {
    let mut h = Harness::new();
    let c = client(90);
    let slot_of = |h: &Harness, service: &str, server: &str| {
        let state = h
            .balancer
            .service(service)
            .unwrap_or_else(|e| panic!("{e}"));
        state
            .reals
            .iter()
            .find(|r| r.name == server)
            .map_or(0, |r| r.index)
    };
    let rs3_slot = slot_of(&h, "web", "rs3");
    h.plant("web", c, "rs3", 10);
    // rs3 leaves web; a later reload gives its address, and its freed slot,
    // to dns. The client's entry names that slot and that address.
    let without_rs3 = CONFIG.replace("      - { name: rs3, address: 198.18.0.23 }\n", "");
    let config = Config::from_yaml(&without_rs3, "fixture.yaml").unwrap_or_else(|e| panic!("{e}"));
    h.balancer.apply(&config).unwrap_or_else(|e| panic!("{e}"));
    let moved = without_rs3.replace(
        "      - { name: dns2, address: 198.18.0.32 }\n",
        "      - { name: dns2, address: 198.18.0.32 }\n      - { name: dns3, address: 198.18.0.23 }\n",
    );
    let config = Config::from_yaml(&moved, "fixture.yaml").unwrap_or_else(|e| panic!("{e}"));
    h.balancer.apply(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        slot_of(&h, "dns", "dns3"),
        rs3_slot,
        "the freed slot is reused"
    );
    let hashed = h.hashed_mac("web", c);
    assert_ne!(hashed, mac_of(Ipv4Addr::new(198, 18, 0, 23)));
    check(
        &mut h,
        &forward(
            "web's client is not sent to dns's server",
            FrameSpec::tcp(IFACE_MAC, c, VIP, 80).build(),
            hashed,
        ),
    );
}

#[test]
fn the_flow_cache_serves_repeat_frames_and_never_outlives_a_change() {
    let mut h = Harness::new();
    let c = client(70);
    let frame = FrameSpec::tcp(IFACE_MAC, c, VIP, 80).build();
    let hashed = h.hashed_mac("web", c);
    check(&mut h, &forward("a new client", frame.clone(), hashed));
    let hits = h.reasons()["flow_cache_hit"];
    check(&mut h, &forward("its next frame", frame.clone(), hashed));
    assert_eq!(
        h.reasons()["flow_cache_hit"],
        hits + 1,
        "the next frame is served from the cache"
    );
    let (other, other_mac) = other_server(&h, hashed);

    // An entry written by lbd (as the peer's session stream does) wins at once.
    h.plant("web", c, other, 0);
    check(
        &mut h,
        &forward("an entry from the peer", frame.clone(), other_mac),
    );
    check(
        &mut h,
        &forward("and it is cached", frame.clone(), other_mac),
    );

    // Frames not addressed to us are passed, cached flow or not.
    let mut not_ours = frame.clone();
    not_ours[0..6].copy_from_slice(&OTHER_MAC);
    check(
        &mut h,
        &pass(
            "a cached flow to another MAC",
            not_ours,
            Reason::PassNotForUs,
        ),
    );

    // A halted server loses its cached clients on their next frame.
    h.balancer
        .set_admin_state("web", other, AdminState::Halt)
        .unwrap_or_else(|e| panic!("{e}"));
    let rehashed = h.hashed_mac("web", c);
    check(
        &mut h,
        &forward("its server halted", frame.clone(), rehashed),
    );

    // A service removed by a reload stops at once.
    let without_web: String =
        CONFIG.replace("port: 80\n    persistence", "port: 81\n    persistence");
    let config = Config::from_yaml(&without_web, "fixture.yaml").unwrap_or_else(|e| panic!("{e}"));
    h.balancer.apply(&config).unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut h,
        &pass("its service moved away", frame, Reason::PassNotService),
    );
}

#[test]
fn cached_clients_stay_fresh_in_the_table() {
    let mut h = Harness::new();
    let c = client(80);
    let frame = FrameSpec::tcp(IFACE_MAC, c, VIP, 80).build();
    let hashed = h.hashed_mac("web", c);
    // The cache serves, and still hands the flow back to the table often
    // enough to keep its last-seen time fresh (the lag that
    // `lb_common::AFFINITY_LAG_NS` adds to every timeout). The entry names a
    // server the ring would not choose, so every frame shows which of the
    // two decided.
    let (server, server_mac) = other_server(&h, hashed);
    h.plant("web", c, server, 5);
    check(
        &mut h,
        &forward("refreshes the entry", frame.clone(), server_mac),
    );
    let first = last_seen(&h, "web", c);
    assert!(monotonic_ns() - first < 1_000_000_000, "refreshed");
    let hits = h.reasons()["flow_cache_hit"];
    // The cache hands a flow back after FLOW_CACHE_MAX_AGE_JIFFIES ticks
    // (2.5 s at the slowest HZ, 100), and the table refreshes an entry older
    // than AFFINITY_REFRESH_NS (a second).
    let slowest_tick = std::time::Duration::from_millis(10);
    let bound = slowest_tick * lb_common::FLOW_CACHE_MAX_AGE_JIFFIES
        + std::time::Duration::from_nanos(lb_common::AFFINITY_REFRESH_NS)
        + SLACK;
    let _ = wait_until(
        "a busy cached client's entry to be refreshed",
        bound,
        || {
            check(&mut h, &forward("a busy client", frame.clone(), server_mac));
            let seen = last_seen(&h, "web", c);
            if seen == first {
                Err(format!(
                    "last seen {} ms ago",
                    monotonic_ns().saturating_sub(seen) / 1_000_000
                ))
            } else {
                Ok(seen)
            }
        },
    );
    assert!(
        h.reasons()["flow_cache_hit"] > hits,
        "frames in between came from the cache"
    );
}

/// A random frame: mostly mutations of valid service frames, some noise.
fn random_frame(rng: &mut StdRng) -> Vec<u8> {
    let dst_mac = if rng.random_bool(0.9) {
        IFACE_MAC
    } else {
        OTHER_MAC
    };
    let src = Ipv4Addr::new(198, 18, rng.random_range(0..4), rng.random());
    let (dst, port, udp) = match rng.random_range(0..6) {
        0 => (VIP, 80, false),
        1 => (VIP, 53, true),
        2 => (VIP, rng.random(), rng.random_bool(0.5)),
        3 => (VIP_NO_MAC, 80, false),
        4 => (Ipv4Addr::new(198, 18, 0, rng.random()), 80, false),
        _ => (VIP, 80, rng.random_bool(0.5)),
    };
    let mut spec = if udp {
        FrameSpec::udp(dst_mac, src, dst, port)
    } else {
        FrameSpec::tcp(dst_mac, src, dst, port)
    };
    if rng.random_bool(0.1) {
        spec.ip_options = vec![1; 4 * rng.random_range(1..=10)];
    }
    if rng.random_bool(0.05) {
        spec.frag = rng.random();
    }
    spec.payload = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
    let mut frame = spec.build();
    match rng.random_range(0..10) {
        0 => frame.truncate(rng.random_range(14..=frame.len())),
        1..=3 => {
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(12..frame.len());
                frame[at] = rng.random();
            }
        }
        4 => {
            let len = rng.random_range(14..128);
            frame = (0..len).map(|_| rng.random()).collect();
        }
        _ => {}
    }
    frame
}

/// The service a fragment goes to: the only service of its VIP and
/// protocol. Web shares its VIP's TCP with web-redirect, so its fragments
/// go to the kernel.
fn fragment_service(frame: &[u8]) -> Option<(frames::ServiceFrame, &'static str)> {
    let p = parse_fragment(frame).filter(|p| p.dst_mac == IFACE_MAC)?;
    match (p.dst, p.protocol) {
        (VIP, 17) => Some((p, "dns")),
        (VIP_NO_MAC, 6) => Some((p, "unresolved")),
        (VIP_CAPPED, 6) => Some((p, "capped")),
        _ => None,
    }
}

/// Plants an affinity entry for every client of 198.18.3.0/24 in `web` and
/// `dns`, each on a server that is not its ring choice; returns the MAC each
/// must reach, by service and client.
fn plant_clients_off_the_ring(h: &mut Harness) -> BTreeMap<(&'static str, Ipv4Addr), [u8; 6]> {
    let mut planted = BTreeMap::new();
    for (service, servers) in [
        ("web", ["rs1", "rs2", "rs3"].as_slice()),
        ("dns", ["dns1", "dns2"].as_slice()),
    ] {
        for last in 0..=255 {
            let c = Ipv4Addr::new(198, 18, 3, last);
            let hashed = h.hashed_mac(service, c);
            let server = servers
                .iter()
                .copied()
                .find(|s| real_mac(h, service, s) != hashed)
                .unwrap_or_else(|| panic!("{service} has a server besides the ring's"));
            h.plant(service, c, server, 10);
            planted.insert((service, c), real_mac(h, service, server));
        }
    }
    planted
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one generator, one oracle per verdict"
)]
fn property_every_forwarded_frame_is_a_service_frame_with_only_its_macs_changed() {
    const FRAMES: usize = 100_000;
    let seed = std::env::var("LB_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1b0b);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = Harness::new();
    let services: [((Ipv4Addr, u16, u8), &str); 4] = [
        ((VIP, 80, 6), "web"),
        ((VIP, 53, 17), "dns"),
        ((VIP_NO_MAC, 80, 6), "unresolved"),
        ((VIP_CAPPED, 443, 6), "capped"),
    ];
    // The oracle: a client of 198.18.3.0/24 goes to the server planted for
    // it, any other to its ring choice (its first frame writes that choice
    // to the table, and nothing changes the ring during the run).
    let planted = plant_clients_off_the_ring(&mut h);
    let before = h.reasons();
    let (mut forwarded, mut passed, mut dropped) = (0_u64, 0_u64, 0_u64);
    for i in 0..FRAMES {
        let frame = random_frame(&mut rng);
        let (verdict, out) = h.run(&frame);
        let service = parse_service_frame(&frame)
            .filter(|p| p.dst_mac == IFACE_MAC)
            .and_then(|p| {
                services
                    .iter()
                    .find(|(key, _)| *key == (p.dst, p.dport, p.protocol))
                    .map(|(_, name)| (p, *name))
            })
            .or_else(|| fragment_service(&frame));
        let context = || format!("frame {i} (seed {seed:#x}): {frame:02x?}");
        match verdict {
            XDP_TX => {
                forwarded += 1;
                let (s, name) = service.unwrap_or_else(|| {
                    panic!(
                        "forwarded a frame that is not a service frame: {}",
                        context()
                    )
                });
                assert_ne!(
                    s.dst,
                    VIP_NO_MAC,
                    "forwarded to an unresolved server: {}",
                    context()
                );
                assert_eq!(out.len(), frame.len(), "{}", context());
                assert_eq!(
                    out[12..],
                    frame[12..],
                    "only the MACs may change: {}",
                    context()
                );
                assert_eq!(out[6..12], IFACE_MAC, "{}", context());
                let expected = planted
                    .get(&(name, s.src))
                    .copied()
                    .unwrap_or_else(|| h.hashed_mac(name, s.src));
                assert_eq!(
                    out[0..6],
                    expected,
                    "to the server of {} in {name}: {}",
                    s.src,
                    context()
                );
            }
            XDP_PASS => {
                passed += 1;
                assert_eq!(out, frame, "a passed frame is untouched: {}", context());
                if let Some((s, _)) = service {
                    panic!(
                        "a well-formed service frame was passed ({s:?}): {}",
                        context()
                    );
                }
            }
            XDP_DROP => {
                dropped += 1;
                let (s, _) = service.unwrap_or_else(|| {
                    panic!("dropped a frame that is not a service frame: {}", context())
                });
                assert_eq!(
                    s.dst,
                    VIP_NO_MAC,
                    "only the unresolved service drops here: {}",
                    context()
                );
            }
            other => panic!("unexpected verdict {other}: {}", context()),
        }
    }
    let after = h.reasons();
    let delta = |name: &str| after[name] - before[name];
    assert_eq!(delta("forwarded"), forwarded);
    let pass_total: u64 = Reason::ALL
        .iter()
        .filter(|r| r.name().starts_with("pass_"))
        .map(|r| delta(r.name()))
        .sum();
    let drop_total: u64 = Reason::ALL
        .iter()
        .filter(|r| r.name().starts_with("drop_"))
        .map(|r| delta(r.name()))
        .sum();
    assert_eq!(pass_total, passed, "every pass has a counted reason");
    assert_eq!(drop_total, dropped, "every drop has a counted reason");
    assert!(
        forwarded > 10_000 && passed > 10_000 && dropped > 1_000,
        "the generator covers all verdicts: {forwarded} {passed} {dropped}"
    );
}

/// The kernel's accounting of an affinity map's memory (`memlock` in the
/// map's fdinfo), found among this process's descriptors.
fn affinity_map_memlock() -> Option<u64> {
    let fds = std::fs::read_dir("/proc/self/fdinfo").ok()?;
    for fd in fds.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        // BPF_MAP_TYPE_HASH: the table never evicts.
        if field("map_type:").as_deref() == Some("1")
            && field("max_entries:").as_deref()
                == Some(&lb_common::MAX_AFFINITY_ENTRIES.to_string())
        {
            return field("memlock:").and_then(|v| v.parse().ok());
        }
    }
    None
}

/// The affinity table's kernel memory as the README quotes it (section
/// "Memory": MiB for 1,250,000 entries).
const README_AFFINITY_MIB: u64 = 127;
/// How far the measured figure may be from the README's.
const MEMORY_TOLERANCE_PERCENT: u64 = 10;

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "fill, then every check on the full table"
)]
fn the_affinity_table_holds_a_million_clients_and_a_full_table_evicts_none() {
    const CLIENTS: u32 = lb_common::MAX_AFFINITY_ENTRIES;
    let mut h = Harness::new();
    let state = h
        .balancer
        .service("web")
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    let first = Ipv4Addr::from(base);
    // Every entry names a server the ring would not give the first client,
    // so that client's frame shows the table decided.
    let hashed = state
        .hashed_server(first)
        .unwrap_or_else(|| panic!("no server for {first}"))
        .index;
    let planted = state
        .reals
        .iter()
        .find(|r| r.index != hashed)
        .unwrap_or_else(|| panic!("web has a server besides the ring's choice"));
    let now = monotonic_ns();
    let planted_entry = Affinity {
        real: planted.index,
        real_address: u32::from_ne_bytes(planted.address.octets()),
        last_seen_ns: now,
        seen_jiffies: 0,
        sync_pass: 0,
    };
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..CLIENTS {
        batch.push((state.client_key(Ipv4Addr::from(base + i)), planted_entry));
        if batch.len() == batch.capacity() || i + 1 == CLIENTS {
            let full = h
                .balancer
                .maps_mut()
                .set_affinities(&batch)
                .unwrap_or_else(|e| panic!("entries up to {i}: {e}"));
            assert_eq!(full, 0, "entries up to {i} fit");
            batch.clear();
        }
    }
    // The table is full: new clients are served from the ring and not
    // remembered, whether their service is over its share (web holds far
    // more than a third of the table) or not (dns holds nothing).
    for (service, port, build) in [
        ("web", 80, FrameSpec::tcp as fn(_, _, _, _) -> FrameSpec),
        ("dns", 53, FrameSpec::udp),
    ] {
        let newcomer = Ipv4Addr::new(198, 18, 2, 9);
        let before = h.reasons();
        let frame = build(IFACE_MAC, newcomer, VIP, port).build();
        let to = h.hashed_mac(service, newcomer);
        check(
            &mut h,
            &forward(format!("a new {service} client on a full table"), frame, to),
        );
        let after = h.reasons();
        let why = if service == "web" {
            "flood_quota_full"
        } else {
            "flood_table_full"
        };
        assert_eq!(after[why] - before[why], 1, "{service}: counted as {why}");
        assert!(
            entry(&h, service, newcomer).is_none(),
            "{service}: not remembered"
        );
    }
    // The first client written is still there and still wins over the hash.
    let frame = FrameSpec::tcp(IFACE_MAC, first, VIP, 80).build();
    let (verdict, out) = h.run(&frame);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(
        out[0..6],
        mac_of(planted.address),
        "the oldest of a million entries still counts"
    );
    let active = h
        .balancer
        .active_clients(monotonic_ns())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        active.get(&planted.index).copied(),
        Some(u64::from(CLIENTS)),
        "no entry was evicted"
    );
    assert_eq!(
        h.balancer.remembered_clients(&state),
        u64::from(CLIENTS),
        "the service's count follows the entries lbd wrote"
    );
    let bytes = affinity_map_memlock().unwrap_or_else(|| {
        panic!(
            "no affinity map (max_entries {}) among this process's descriptors in /proc/self/fdinfo",
            lb_common::MAX_AFFINITY_ENTRIES
        )
    });
    eprintln!(
        "affinity table: {} entries, {} MiB locked ({} bytes per entry)",
        lb_common::MAX_AFFINITY_ENTRIES,
        bytes >> 20,
        bytes / u64::from(lb_common::MAX_AFFINITY_ENTRIES)
    );
    let quoted = README_AFFINITY_MIB << 20;
    let tolerance = quoted * MEMORY_TOLERANCE_PERCENT / 100;
    assert!(
        (quoted - tolerance..=quoted + tolerance).contains(&bytes),
        "the affinity table takes {bytes} bytes ({} MiB); the README says \
         {README_AFFINITY_MIB} MiB (within {MEMORY_TOLERANCE_PERCENT} %)",
        bytes >> 20
    );
}

#[test]
fn an_entry_refreshed_after_the_clock_was_read_is_a_hit() {
    let mut h = Harness::new();
    let c = client(88);
    let hashed = h.hashed_mac("web", c);
    let (other, other_mac) = other_server(&h, hashed);
    // Another CPU refreshed the entry after this one read the clock: its
    // last-seen time is ahead of "now". An age that wraps would call it
    // 2^64 ns old and move the client.
    h.plant_at("web", c, other, monotonic_ns() + 5_000_000_000);
    let before = h.reasons();
    let frame = FrameSpec::tcp(IFACE_MAC, c, VIP, 80).build();
    check(
        &mut h,
        &forward("an entry from the future", frame, other_mac),
    );
    let after = h.reasons();
    assert_eq!(after["affinity_hit"] - before["affinity_hit"], 1);
    assert_eq!(after["affinity_expired"], before["affinity_expired"]);
}

#[test]
fn a_bare_syn_is_served_but_not_remembered_until_the_client_acks() {
    let mut h = Harness::new();
    let c = client(90);
    let hashed = h.hashed_mac("web", c);
    let before = h.reasons();
    check(
        &mut h,
        &forward(
            "a bare SYN",
            FrameSpec::syn(IFACE_MAC, c, VIP, 80).build(),
            hashed,
        ),
    );
    let after = h.reasons();
    assert_eq!(
        after["flood_syn_unremembered"] - before["flood_syn_unremembered"],
        1
    );
    assert!(
        entry(&h, "web", c).is_none(),
        "a SYN alone is not remembered"
    );
    check(
        &mut h,
        &forward(
            "its ACK",
            FrameSpec::tcp(IFACE_MAC, c, VIP, 80).build(),
            hashed,
        ),
    );
    assert!(entry(&h, "web", c).is_some(), "remembered once it acks");
}

#[test]
fn a_service_remembers_at_most_its_share_and_others_are_untouched() {
    let mut h = Harness::new();
    let newcomer = |i| Ipv4Addr::new(198, 18, 4, i);
    for i in 1..=2 {
        let c = newcomer(i);
        let frame = FrameSpec::tcp(IFACE_MAC, c, VIP_CAPPED, 443).build();
        let to = h.hashed_mac("capped", c);
        check(&mut h, &forward("within max_clients", frame, to));
        assert!(entry(&h, "capped", c).is_some(), "{c} remembered");
    }
    let third = newcomer(3);
    let before = h.reasons();
    let to = h.hashed_mac("capped", third);
    check(
        &mut h,
        &forward(
            "over max_clients: served from the ring",
            FrameSpec::tcp(IFACE_MAC, third, VIP_CAPPED, 443).build(),
            to,
        ),
    );
    assert_eq!(
        h.reasons()["flood_quota_full"] - before["flood_quota_full"],
        1
    );
    assert!(entry(&h, "capped", third).is_none(), "not remembered");
    let state = h
        .balancer
        .service("capped")
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();
    assert_eq!(h.balancer.remembered_clients(&state), 2);
    // Another service is not limited by capped's share.
    let web_client = newcomer(4);
    let to = h.hashed_mac("web", web_client);
    check(
        &mut h,
        &forward(
            "another service's new client",
            FrameSpec::tcp(IFACE_MAC, web_client, VIP, 80).build(),
            to,
        ),
    );
    assert!(entry(&h, "web", web_client).is_some());
    // An expired entry is renewed in place, whatever the count.
    h.plant("capped", newcomer(1), "cap1", 400);
    let to = h.hashed_mac("capped", newcomer(1));
    check(
        &mut h,
        &forward(
            "an expired client returns",
            FrameSpec::tcp(IFACE_MAC, newcomer(1), VIP_CAPPED, 443).build(),
            to,
        ),
    );
    let renewed = last_seen(&h, "capped", newcomer(1));
    assert!(monotonic_ns() - renewed < 1_000_000_000, "renewed in place");
    assert_eq!(h.balancer.remembered_clients(&state), 2);
}

#[test]
fn the_ring_path_checks_the_slot_before_sending_or_remembering() {
    let mut h = Harness::new();
    let c = client(95);
    let state = h
        .balancer
        .service("web")
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();
    let server = state
        .hashed_server(c)
        .unwrap_or_else(|| panic!("no server for {c}"))
        .clone();
    let frame = FrameSpec::tcp(IFACE_MAC, c, VIP, 80).build();
    // The ring still names a server whose slot was already written halted
    // or down (a write in flight): neither sent to nor remembered.
    let slot = |flags| lb_common::Real {
        address: u32::from_ne_bytes(server.address.octets()),
        flags,
        mac: mac_of(server.address),
        service_id: u16::try_from(state.id).unwrap_or(u16::MAX),
    };
    h.balancer
        .maps_mut()
        .set_real(server.index, slot(lb_common::REAL_F_RESOLVED))
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut h,
        &Fixture {
            name: "ring names a halted slot".into(),
            input: frame.clone(),
            verdict: XDP_DROP,
            output: Output::Unchanged,
            reason: Reason::DropRealNotReady,
        },
    );
    assert!(
        entry(&h, "web", c).is_none(),
        "not remembered on a halted server"
    );
    h.balancer
        .maps_mut()
        .set_real(server.index, slot(lb_common::REAL_F_KEEP_CLIENTS))
        .unwrap_or_else(|e| panic!("{e}"));
    check(
        &mut h,
        &Fixture {
            name: "ring names an unresolved slot".into(),
            input: frame,
            verdict: XDP_DROP,
            output: Output::Unchanged,
            reason: Reason::DropRealUnresolved,
        },
    );
    assert!(
        entry(&h, "web", c).is_none(),
        "not remembered on an unresolved server"
    );
}

/// A packet `server` sent for `VIP:sport` to `client:40000`, as quoted by an
/// ICMP error about it.
fn reply_from_vip(client: Ipv4Addr, sport: u16, udp: bool) -> Vec<u8> {
    let mut spec = if udp {
        FrameSpec::udp(OTHER_MAC, VIP, client, 40_000)
    } else {
        FrameSpec::tcp(OTHER_MAC, VIP, client, 40_000)
    };
    spec.sport = sport;
    spec.payload = vec![0x55; 1400];
    spec.build()
}

#[test]
#[expect(clippy::too_many_lines, reason = "the ICMP fixture table")]
fn icmp_errors_about_a_service_flow_reach_the_clients_server() {
    let mut h = Harness::new();
    let router = Ipv4Addr::new(198, 18, 0, 1);
    let c = client(97);
    let hashed = h.hashed_mac("web", c);
    let (other, other_mac) = other_server(&h, hashed);
    h.plant("web", c, other, 10);
    let quoted = reply_from_vip(c, 80, false);
    let icmp = |kind, code, quoted: &[u8], quote| {
        frames::icmp_error(IFACE_MAC, router, VIP, kind, code, quoted, quote)
    };
    let before = h.reasons();
    let table = [
        forward(
            "fragmentation needed, about a web reply: to the client's server",
            icmp(3, 4, &quoted, 28),
            other_mac,
        ),
        forward(
            "port unreachable, a longer quote",
            icmp(3, 3, &quoted, 548),
            other_mac,
        ),
        forward("time exceeded", icmp(11, 0, &quoted, 28), other_mac),
        forward(
            "about a dns reply (UDP)",
            icmp(3, 4, &reply_from_vip(client(98), 53, true), 28),
            h.hashed_mac("dns", client(98)),
        ),
        forward(
            "about a client with no entry: its ring choice",
            icmp(3, 4, &reply_from_vip(client(99), 80, false), 28),
            h.hashed_mac("web", client(99)),
        ),
        pass(
            "about a flow of no service (VIP:22)",
            icmp(3, 4, &reply_from_vip(c, 22, false), 28),
            Reason::PassIcmp,
        ),
        pass(
            "quoting a packet from another source than the VIP",
            {
                let mut other_source = FrameSpec::tcp(OTHER_MAC, router, c, 40_000);
                other_source.sport = 80;
                icmp(3, 4, &other_source.build(), 28)
            },
            Reason::PassIcmp,
        ),
        pass(
            "quote cut inside the ports",
            icmp(3, 4, &quoted, 22),
            Reason::PassIcmpTruncated,
        ),
        pass(
            "quote cut inside the IP header",
            icmp(3, 4, &quoted, 12),
            Reason::PassIcmpTruncated,
        ),
        pass(
            "echo request",
            FrameSpec {
                protocol: 1,
                ..FrameSpec::tcp(IFACE_MAC, router, VIP, 0)
            }
            .build(),
            Reason::PassIcmp,
        ),
        pass(
            "an ICMP error for another MAC",
            frames::icmp_error(OTHER_MAC, router, VIP, 3, 4, &quoted, 28),
            Reason::PassNotForUs,
        ),
    ];
    for fixture in &table {
        check(&mut h, fixture);
    }
    let after = h.reasons();
    assert_eq!(after["icmp_to_real"] - before["icmp_to_real"], 5);
    assert!(
        entry(&h, "web", client(99)).is_none(),
        "an ICMP error remembers nobody"
    );
}

#[test]
fn all_fragments_of_a_udp_datagram_reach_the_same_server() {
    let mut h = Harness::new();
    let datagram = |c| {
        let mut spec = FrameSpec::udp(IFACE_MAC, c, VIP, 53);
        spec.payload = (0..=255).collect();
        spec.build()
    };
    // A known client on a server off its ring choice: both fragments follow
    // the table, in either order.
    let known = client(101);
    let hashed = h.hashed_mac("dns", known);
    let server = ["dns1", "dns2"]
        .into_iter()
        .find(|s| real_mac(&h, "dns", s) != hashed)
        .unwrap_or_else(|| panic!("dns has two servers"));
    h.plant("dns", known, server, 10);
    let planted = real_mac(&h, "dns", server);
    let (first, later) = frames::fragments(&datagram(known), 64);
    let before = h.reasons();
    check(&mut h, &forward("later fragment first", later, planted));
    check(&mut h, &forward("then the first", first, planted));
    assert_eq!(
        h.reasons()["fragment_to_real"] - before["fragment_to_real"],
        2
    );
    // A new client: its fragments and its next datagram share a server.
    let new = client(102);
    let (first, later) = frames::fragments(&datagram(new), 128);
    let to = h.hashed_mac("dns", new);
    check(&mut h, &forward("a new client's first fragment", first, to));
    check(&mut h, &forward("its later fragment", later, to));
    check(&mut h, &forward("its next datagram", datagram(new), to));
    assert!(
        entry(&h, "dns", new).is_some(),
        "remembered as a datagram is"
    );
}

#[test]
fn a_change_to_one_service_leaves_the_others_cached() {
    let mut h = Harness::new();
    let c = client(110);
    let frame = FrameSpec::udp(IFACE_MAC, c, VIP, 53).build();
    let to = h.hashed_mac("dns", c);
    check(&mut h, &forward("a dns client", frame.clone(), to));
    let before = h.reasons()["flow_cache_hit"];
    check(&mut h, &forward("again: cached", frame.clone(), to));
    assert_eq!(h.reasons()["flow_cache_hit"], before + 1);
    // A change to web (a drain) leaves dns's cache alone.
    h.balancer
        .set_admin_state("web", "rs1", AdminState::Drain)
        .unwrap_or_else(|e| panic!("{e}"));
    let before = h.reasons()["flow_cache_hit"];
    check(&mut h, &forward("after a web change", frame.clone(), to));
    assert_eq!(
        h.reasons()["flow_cache_hit"],
        before + 1,
        "still served from the cache"
    );
    // A change to dns empties dns's cache.
    h.balancer
        .set_weight("dns", "dns1", 50)
        .unwrap_or_else(|e| panic!("{e}"));
    let before = h.reasons()["flow_cache_hit"];
    check(&mut h, &forward("after a dns change", frame, to));
    assert_eq!(
        h.reasons()["flow_cache_hit"],
        before,
        "decided from the tables again"
    );
}

#[test]
fn removing_expired_entries_gives_their_room_back() {
    let mut h = Harness::new();
    let state = h
        .balancer
        .service("capped")
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();
    // Two clients long gone fill capped's two places.
    let gone = [Ipv4Addr::new(198, 18, 5, 1), Ipv4Addr::new(198, 18, 5, 2)];
    for c in gone {
        h.plant("capped", c, "cap1", 400);
    }
    assert_eq!(h.balancer.remembered_clients(&state), 2);
    let newcomer = Ipv4Addr::new(198, 18, 5, 3);
    let frame = FrameSpec::tcp(IFACE_MAC, newcomer, VIP_CAPPED, 443).build();
    let to = h.hashed_mac("capped", newcomer);
    check(&mut h, &forward("capped is full", frame.clone(), to));
    assert!(entry(&h, "capped", newcomer).is_none());
    // lbd's census removes what is past its expiry, and counts it out.
    let mut census = census_of(&mut h);
    let found = census
        .run(&census_run(0, 0, 0, 0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.swept, 2, "both are past their expiry: {found:?}");
    assert_eq!(h.balancer.remembered_clients(&state), 0);
    check(&mut h, &forward("room again", frame, to));
    assert!(entry(&h, "capped", newcomer).is_some(), "remembered now");
    assert_eq!(h.balancer.remembered_clients(&state), 1);
    // A live entry is never removed.
    let found = census
        .run(&census_run(0, 0, 0, 0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.swept, 0);
    assert!(entry(&h, "capped", newcomer).is_some());
    assert_eq!(h.balancer.remembered_clients(&state), 1);
}

/// The kernel's census, its maps told the services as lbd tells them.
fn census_of(h: &mut Harness) -> EbpfCensus {
    let counts = h.balancer.maps().client_counts();
    let mut census = h.program.census(counts).unwrap_or_else(|e| panic!("{e}"));
    census
        .set_services(&h.balancer.census_key().services())
        .unwrap_or_else(|e| panic!("{e}"));
    census
}

fn census_run(pass: u32, lost_lo: u32, lost_hi: u32, budget: u32) -> CensusRun {
    CensusRun {
        pass,
        lost_lo,
        lost_hi,
        budget,
        pass_base_ns: 0,
        sweep_margin_ns: SWEEP_MARGIN_NS,
        unknown_grace_ns: UNKNOWN_SERVICE_GRACE_NS,
    }
}

/// Issue 12: the census walks the table in the kernel. One run counts live
/// entries per server (not those expired, nor those of a halted server),
/// removes the entries well past their expiry and those of a service gone
/// for long, and hands the peer each live entry once: again only when its
/// pass was lost, or when the entry is written anew; at most the budget.
#[test]
fn the_census_counts_sweeps_and_streams_in_the_kernel() {
    let mut h = Harness::new();
    let c = |n| Ipv4Addr::new(198, 18, 6, n);
    h.plant("web", c(1), "rs1", 0);
    h.plant("web", c(2), "rs1", 10);
    h.plant("web", c(3), "rs2", 0);
    // web's timeout is 300 s (and the refresh lag): expired, and then past
    // the margin.
    h.plant("web", c(4), "rs2", 305);
    h.plant("web", c(5), "rs3", 400);
    let web = h
        .balancer
        .service("web")
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();
    let rs = |name: &str| {
        web.reals
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .index
    };
    // An entry of a service id nobody has, unseen for long.
    let orphan = lb_common::AffinityKey {
        service_id: 200,
        ..web.client_key(c(6))
    };
    h.balancer
        .maps_mut()
        .set_affinity(
            orphan,
            Affinity {
                real: rs("rs1"),
                real_address: u32::from_ne_bytes([198, 18, 0, 21]),
                last_seen_ns: monotonic_ns()
                    .saturating_sub(UNKNOWN_SERVICE_GRACE_NS + 1_000_000_000),
                seen_jiffies: 0,
                sync_pass: 0,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let before = h.balancer.remembered_clients(&web);
    let mut census = census_of(&mut h);

    let found = census
        .run(&census_run(1, 0, 0, 100))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.entries, 6, "{found:?}");
    assert_eq!(found.live, 3);
    assert_eq!(
        found.per_real,
        BTreeMap::from([(rs("rs1"), 2), (rs("rs2"), 1)])
    );
    assert_eq!(found.swept, 2, "c5, past the margin, and the orphan");
    assert!(entry(&h, "web", c(5)).is_none() && entry(&h, "web", c(4)).is_some());
    assert_eq!(h.balancer.remembered_clients(&web), before - 1);
    let streamed = |found: &lb_userspace::dataplane::CensusOutcome| {
        let mut clients: Vec<u32> = found.streamed.iter().map(|(k, _)| k.client).collect();
        clients.sort_unstable();
        clients
    };
    let live: Vec<u32> = {
        let mut v: Vec<u32> = [1, 2, 3]
            .iter()
            .map(|n| web.client_key(c(*n)).client)
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(streamed(&found), live, "every live entry, once");
    assert!(
        found.streamed.iter().all(|(_, v)| v.sync_pass == 0),
        "as read, before marking"
    );

    let again = census
        .run(&census_run(2, 0, 0, 100))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.streamed.is_empty(), "sent in pass 1: {again:?}");
    let lost = census
        .run(&census_run(3, 0, 1, 100))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(streamed(&lost), live, "pass 1 lost: all again");
    // Written anew (another server): sent at the next pass.
    h.plant("web", c(1), "rs2", 0);
    let anew = census
        .run(&census_run(4, 0, 0, 100))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(streamed(&anew), vec![web.client_key(c(1)).client]);
    // The budget: one a pass, the rest left for later.
    let tight = census
        .run(&census_run(5, 0, 4, 1))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((tight.streamed.len(), tight.behind), (1, 2));
    // A client the data path remembers is announced at once, without a
    // walk; one it does not remember (a bare SYN) is not.
    let _ = census.take_new(1_000);
    let (newcomer, shy) = (c(7), c(8));
    let to = h.hashed_mac("web", newcomer);
    check(
        &mut h,
        &forward(
            "a new client",
            FrameSpec::tcp(IFACE_MAC, newcomer, VIP, 80).build(),
            to,
        ),
    );
    let to = h.hashed_mac("web", shy);
    check(
        &mut h,
        &forward(
            "a bare SYN",
            FrameSpec::syn(IFACE_MAC, shy, VIP, 80).build(),
            to,
        ),
    );
    let announced = census.take_new(1_000);
    assert_eq!(
        announced.iter().map(|(k, _)| k.client).collect::<Vec<_>>(),
        vec![web.client_key(newcomer).client],
        "{announced:?}"
    );
    assert_eq!(announced[0].1.sync_pass, 0, "never sent");
    // A halted server's clients are not counted.
    h.balancer
        .set_admin_state("web", "rs2", AdminState::Halt)
        .unwrap_or_else(|e| panic!("{e}"));
    census
        .set_services(&h.balancer.census_key().services())
        .unwrap_or_else(|e| panic!("{e}"));
    let halted = census
        .run(&census_run(0, 0, 0, 0))
        .unwrap_or_else(|e| panic!("{e}"));
    let rs2 = rs("rs2");
    assert!(!halted.per_real.contains_key(&rs2), "{halted:?}");
    assert!(
        halted.per_real.get(&rs("rs1")).is_some_and(|n| *n >= 1),
        "{halted:?}"
    );
    // Entries about to expire are told by the second (lbd counts them out
    // between walks): one of rs3's in 2 s (timeout 300 s plus the 3.5 s lag).
    h.plant("web", c(9), "rs3", 301);
    let soon = census
        .run(&census_run(0, 0, 0, 0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        soon.expiring
            .iter()
            .filter(|(_, real, _)| *real == rs("rs3"))
            .collect::<Vec<_>>(),
        vec![&(2, rs("rs3"), 1)],
        "{soon:?}"
    );
}
