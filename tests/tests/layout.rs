//! Issue 13: a data path of an older layout is taken over with its
//! clients. The test constructs the older layout: the running data path is
//! the real program with its maps filled by the control plane, except its
//! affinity table, made by hand with 16-byte entries (server index, its
//! address, last seen: no tick, no sync pass), as a layout 0 would have had
//! it. The next program is loaded over it with one migration step (0 to 1)
//! for that table, and a client whose entry names a server that is not its
//! ring choice is still sent there.
//!
//! Needs root (loading BPF programs, creating maps).

use std::{net::Ipv4Addr, os::fd::AsFd as _};

use aya::maps::MapData;
use lb_common::{Affinity, AffinityKey, LAYOUT_VERSION};
use lb_tests::{bpf, frames::FrameSpec};
use lb_userspace::{
    balancer::Balancer,
    config::Config,
    dataplane::{EbpfMaps, Migration, Program, Running},
    monotonic_ns,
};

const XDP_TX: u32 = 3;
const IFACE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const CLIENTS: u8 = 40;

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
";

/// The constructed layout 0's affinity value: 16 bytes.
const OLD_VALUE: usize = 16;

fn mac_of(address: Ipv4Addr) -> [u8; 6] {
    let o = address.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

/// Layout 0 to 1: the entry gains the tick and the sync pass (both 0: the
/// next packet refreshes the one, the next census pass sends the client).
fn widen(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let real = u32::from_ne_bytes(value.get(0..4)?.try_into().ok()?);
    let real_address = u32::from_ne_bytes(value.get(4..8)?.try_into().ok()?);
    let last_seen_ns = u64::from_ne_bytes(value.get(8..16)?.try_into().ok()?);
    let entry = Affinity {
        real,
        real_address,
        last_seen_ns,
        seen_jiffies: 0,
        sync_pass: 0,
    };
    // SAFETY: a plain #[repr(C)] struct without padding, read as its bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(&entry).cast::<u8>(),
            std::mem::size_of::<Affinity>(),
        )
    };
    Some((key.to_vec(), bytes.to_vec()))
}

#[test]
fn a_table_of_a_constructed_older_layout_is_taken_over_with_its_clients() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "loading BPF programs needs root"
    );
    assert!(
        !Program::object().is_empty(),
        "run `cargo xtask build` first"
    );

    let mut first = Program::load_bytes(Program::object()).unwrap_or_else(|e| panic!("{e}"));
    let maps = first.take_maps().unwrap_or_else(|e| panic!("{e}"));
    let mut balancer: Balancer<EbpfMaps> =
        Balancer::new(maps, IFACE_MAC).unwrap_or_else(|e| panic!("{e}"));
    let config = Config::from_yaml(CONFIG, "fixture.yaml").unwrap_or_else(|e| panic!("{e}"));
    balancer.apply(&config).unwrap_or_else(|e| panic!("{e}"));
    for address in balancer.addresses() {
        balancer
            .set_mac(address, Some(mac_of(address)))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let web = balancer
        .service("web")
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();

    // Each client's entry names a server that is not its ring choice.
    let old = bpf::create_hash(
        "AFFINITY",
        u32::try_from(std::mem::size_of::<AffinityKey>()).unwrap_or(8),
        u32::try_from(OLD_VALUE).unwrap_or(16),
        1024,
    )
    .unwrap_or_else(|e| panic!("creating the old layout's table: {e}"));
    let now = monotonic_ns();
    let mut placed = Vec::new();
    for i in 1..=CLIENTS {
        let client = Ipv4Addr::new(198, 19, 7, i);
        let hashed = web.hashed_server(client).map(|r| r.index);
        let Some(real) = web.reals.iter().find(|r| Some(r.index) != hashed) else {
            continue;
        };
        let key = web.client_key(client);
        let mut value = Vec::with_capacity(OLD_VALUE);
        value.extend_from_slice(&real.index.to_ne_bytes());
        value.extend_from_slice(&u32::from_ne_bytes(real.address.octets()).to_ne_bytes());
        value.extend_from_slice(&now.to_ne_bytes());
        // SAFETY: a plain #[repr(C)] key, read as its bytes.
        let key_bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&key).cast::<u8>(),
                std::mem::size_of::<AffinityKey>(),
            )
        };
        bpf::update(old.as_fd(), key_bytes, &value).unwrap_or_else(|e| panic!("{e}"));
        placed.push((client, real.address));
    }
    assert_eq!(placed.len(), usize::from(CLIENTS));

    let info = first
        .xdp_program()
        .unwrap_or_else(|e| panic!("{e}"))
        .info()
        .unwrap_or_else(|e| panic!("{e}"));
    let old = MapData::from_fd(old).unwrap_or_else(|e| panic!("{e}"));
    let running = Running::of_program(&info)
        .and_then(|r| r.with_map("AFFINITY", old, 0))
        .unwrap_or_else(|e| panic!("{e}"));
    let steps = [Migration {
        from: 0,
        map: "AFFINITY",
        convert: widen,
    }];
    assert_eq!(
        LAYOUT_VERSION, 1,
        "the constructed layout is the one before this one"
    );
    let (mut next, taken) = Program::load_bytes_over(Program::object(), running, &steps)
        .unwrap_or_else(|e| panic!("loading over the old layout: {e}"));
    assert!(
        taken
            .carried
            .iter()
            .any(|c| c.starts_with("AFFINITY (40 entries carried over, 0 left behind)")),
        "the table is carried over: {taken:?}"
    );
    assert!(
        taken.maps.contains(&"SERVICES".to_owned()),
        "the rest is kept: {taken:?}"
    );

    for (client, server) in placed {
        let frame = FrameSpec::tcp(IFACE_MAC, client, VIP, 80).build();
        let (verdict, out) = lb_tests::xdp::run(&mut next, &frame);
        assert_eq!(verdict, XDP_TX, "{client} is forwarded");
        assert_eq!(
            out.get(0..6),
            Some(&mac_of(server)[..]),
            "{client} stays on {server}, its server before the new layout"
        );
    }
}
