//! The per-packet cost of the XDP programs in the kernel
//! (`BPF_PROG_TEST_RUN`): `lb_xdp` beside `bench-bare-dr` and `bench-floor`,
//! whose maps are filled outside any lab.

use std::{borrow::Cow, fmt::Write as _, fs, net::Ipv4Addr};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lb_tests::{
    frames::FrameSpec,
    lab::in_netns,
    natns::{NatNetns, C0_MAC, CLIENT, CLIENT_MAC},
};
use lb_userspace::{
    balancer::Balancer,
    config::Config,
    dataplane::{EbpfMaps, Maps as _, Program},
};

use crate::{
    lab::ebpf_dir,
    scenario::systems::load_bare_dr,
    signal::check_stop,
    stats::{as_f64, median},
    HTTP_PORT,
};

/// One `BPF_PROG_TEST_RUN` figure.
#[derive(Clone, Debug)]
pub(crate) struct PacketCost {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) repeat: u32,
    pub(crate) ns: f64,
    /// The floor measured the same way (same repeat).
    pub(crate) floor_ns: f64,
    /// Cost / floor: for repeated runs the median of the ratios of each
    /// round (program and floor measured back to back), which drifts less
    /// than the ratio of the medians.
    pub(crate) ratio: f64,
    /// Cost / the bare forwarder (`bench-bare-dr`, which parses the same
    /// headers), measured the same way; NaN for single-shot rows.
    pub(crate) bare_ratio: f64,
}

/// Median over `reps` runs of `repeat` iterations; checks the verdict.
fn time_run(prog: &mut Xdp, frame: &[u8], repeat: u32, reps: usize, verdict: u32) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..reps {
        samples.push(as_f64(run_once(prog, frame, repeat, verdict)?));
    }
    median(&samples).ok_or_else(|| anyhow!("no samples"))
}

/// One `BPF_PROG_TEST_RUN` of `repeat` iterations: the kernel's mean
/// nanoseconds per iteration, after checking the verdict.
fn run_once(prog: &mut Xdp, frame: &[u8], repeat: u32, verdict: u32) -> Result<u64> {
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    if result.return_value != verdict {
        bail!(
            "verdict {} where {verdict} was expected",
            result.return_value
        );
    }
    Ok(u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX))
}

/// Mean kernel-measured time of single runs over `frames` (one each).
fn time_single(prog: &mut Xdp, frames: &[Vec<u8>], verdict: u32) -> Result<f64> {
    let mut total = 0_u64;
    for frame in frames {
        total += run_once(prog, frame, 1, verdict)?;
    }
    Ok(as_f64(total) / as_f64(frames.len().max(1) as u64))
}

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
pub(crate) const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

fn mac_of(address: Ipv4Addr) -> [u8; 6] {
    let o = address.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

/// Port of a second service like the lab's, whose flow cache is switched
/// off: its hits are decided from `AFFINITY`.
const UNCACHED_PORT: u16 = 81;

/// The lab's service as a bare configuration (for maps loaded outside a
/// lab), and the same service on `UNCACHED_PORT`.
pub(crate) fn small_config() -> String {
    let reals = BENCH_REALS
        .iter()
        .enumerate()
        .fold(String::new(), |mut list, (i, a)| {
            let _ = writeln!(list, "      - {{ name: rs{}, address: {a} }}", i + 1);
            list
        });
    format!(
        "node: {{ name: bench, interface: eth0 }}\nservices:\n  - name: web\n    vip: {BENCH_VIP}\n    \
         port: {HTTP_PORT}\n    persistence: {{ timeout_s: 3600 }}\n    real_servers:\n{reals}  \
         - name: uncached\n    vip: {BENCH_VIP}\n    port: {UNCACHED_PORT}\n    \
         persistence: {{ timeout_s: 3600 }}\n    real_servers:\n{reals}"
    )
}

const BENCH_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub(crate) const BENCH_REALS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 0, 21),
    Ipv4Addr::new(198, 18, 0, 22),
    Ipv4Addr::new(198, 18, 0, 23),
];

/// `lb_xdp` loaded, its maps filled by its own control plane from
/// [`small_config`]. `BPF_PROG_TEST_RUN` repeats on the same buffer: with the
/// real servers' MAC set to the interface's own, the rewritten frame is again
/// one for us, so every repetition is a full forward (a hit), not a pass.
fn loaded_product() -> Result<(Program, Balancer<EbpfMaps>)> {
    if Program::object().is_empty() {
        bail!("this lb-bench was built without the XDP object: run `cargo xtask build`");
    }
    let mut program = Program::load_bytes(&product_object()?).map_err(|e| anyhow!("{e}"))?;
    let maps = program.take_maps().map_err(|e| anyhow!("{e}"))?;
    let mut balancer = Balancer::new(maps, LB_MAC).map_err(|e| anyhow!("{e}"))?;
    let config = Config::from_yaml(&small_config(), "bench.yaml").map_err(|e| anyhow!("{e}"))?;
    balancer.apply(&config).map_err(|e| anyhow!("{e}"))?;
    for a in BENCH_REALS {
        balancer
            .set_mac(a, Some(LB_MAC))
            .map_err(|e| anyhow!("{e}"))?;
    }
    let uncached = balancer.service("uncached").map_err(|e| anyhow!("{e}"))?.id;
    balancer
        .maps_mut()
        .disable_flow_cache(uncached)
        .map_err(|e| anyhow!("{e}"))?;
    Ok((program, balancer))
}

/// The `lb_xdp` object to time: the one built into this binary, or the
/// file `LB_BENCH_OBJECT` names (a build to compare, timed beside the same
/// floor and bare forwarder without rebuilding the bench).
fn product_object() -> Result<Cow<'static, [u8]>> {
    match std::env::var_os("LB_BENCH_OBJECT") {
        Some(path) => {
            let bytes = fs::read(&path)
                .with_context(|| format!("reading LB_BENCH_OBJECT {}", path.to_string_lossy()))?;
            Ok(Cow::Owned(bytes))
        }
        None => Ok(Cow::Borrowed(Program::object())),
    }
}

/// The XDP program `name` of a loaded object.
fn xdp_of<'a>(object: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(object
        .program_mut(name)
        .ok_or_else(|| anyhow!("no {name} program"))?
        .try_into()?)
}

/// `bench-floor` loaded into the kernel.
fn load_floor() -> Result<Ebpf> {
    let bytes = fs::read(ebpf_dir().join("bench-floor"))
        .context("reading bench-floor (run `cargo xtask build-ebpf`)")?;
    let mut obj = Ebpf::load(&bytes).context("loading bench-floor")?;
    xdp_of(&mut obj, "bench_floor")?.load()?;
    Ok(obj)
}

/// The rows of the programs timed `repeat` times a call, from each
/// round's figures in the order floor, bare DR, hit, table hit, pass.
fn repeated_rows(rounds: &[Vec<f64>; 5], repeat: u32) -> Vec<PacketCost> {
    let [floor_r, bare_r, ..] = rounds;
    let floor_ns = median(floor_r).unwrap_or(f64::NAN);
    let what = [
        ("floor", "`return XDP_TX` (bench-floor)"),
        ("bare DR", "bench-bare-dr, VIP frame"),
        ("lbd hit", "lb_xdp, persistence hit (from the flow cache)"),
        (
            "lbd table hit",
            "lb_xdp, persistence hit from `AFFINITY` (flow cache off for its service)",
        ),
        ("lbd pass", "lb_xdp, non-VIP frame (to the kernel)"),
    ];
    what.into_iter()
        .zip(rounds)
        .map(|((name, what), v)| {
            let ratios: Vec<f64> = v.iter().zip(floor_r).map(|(ns, f)| ns / f).collect();
            let bare_ratios: Vec<f64> = v.iter().zip(bare_r).map(|(ns, b)| ns / b).collect();
            PacketCost {
                name,
                what,
                repeat,
                ns: median(v).unwrap_or(f64::NAN),
                floor_ns,
                ratio: median(&ratios).unwrap_or(f64::NAN),
                bare_ratio: median(&bare_ratios).unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// New clients from 198.19.0.0/16, one frame per call. `syns` and `acks`
/// open as TCP does: a SYN (looked up, placed by the ring, not
/// remembered), then the same source's handshake ACK (remembered);
/// `first_acks` are other sources whose first frame is an ACK.
struct NewClients {
    syns: Vec<Vec<u8>>,
    acks: Vec<Vec<u8>>,
    first_acks: Vec<Vec<u8>>,
}

impl NewClients {
    fn new(count: u32) -> Self {
        let source = |i: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i);
        let syn = |i| FrameSpec::syn(LB_MAC, source(i), BENCH_VIP, HTTP_PORT).build();
        let ack = |i| FrameSpec::tcp(LB_MAC, source(i), BENCH_VIP, HTTP_PORT).build();
        Self {
            syns: (0..count).map(syn).collect(),
            acks: (0..count).map(ack).collect(),
            first_acks: (count..2 * count).map(ack).collect(),
        }
    }

    /// Mean ns per frame of the SYNs, then their ACKs, then the others.
    fn time(&self, lb: &mut Xdp) -> Result<[f64; 3]> {
        Ok([
            time_single(lb, &self.syns, XDP_TX).context("lb_xdp, new clients' SYNs")?,
            time_single(lb, &self.acks, XDP_TX).context("lb_xdp, their ACKs")?,
            time_single(lb, &self.first_acks, XDP_TX).context("lb_xdp, first-frame ACKs")?,
        ])
    }
}

pub(crate) fn packet_costs(quick: bool) -> Result<Vec<PacketCost>> {
    let repeat: u32 = if quick { 100_000 } else { 2_000_000 };
    let reps = if quick { 3 } else { 11 };
    let singles: u32 = if quick { 2_000 } else { 20_000 };
    let (vip, reals) = (BENCH_VIP, BENCH_REALS);
    let client = Ipv4Addr::new(198, 18, 1, 7);
    let syn = FrameSpec::tcp(LB_MAC, client, vip, HTTP_PORT).build();
    let uncached_syn = FrameSpec::tcp(LB_MAC, client, vip, UNCACHED_PORT).build();
    let other = FrameSpec::tcp(LB_MAC, client, Ipv4Addr::new(198, 18, 0, 10), 22).build();
    let new_clients = NewClients::new(singles);
    let hit_frames: Vec<Vec<u8>> = (0..singles).map(|_| syn.clone()).collect();

    let mut floor_obj = load_floor()?;
    let floor = xdp_of(&mut floor_obj, "bench_floor")?;
    // The bare forwarder.
    let real_macs: Vec<[u8; 6]> = reals.iter().map(|a| mac_of(*a)).collect();
    let mut bare_obj = load_bare_dr(&ebpf_dir().join("bench-bare-dr"), vip, LB_MAC, &real_macs)?;
    let bare = xdp_of(&mut bare_obj, "bench_bare_dr")?;

    let (mut program, _balancer) = loaded_product()?;
    let lb = program.xdp_program().map_err(|e| anyhow!("{e}"))?;
    // The first run makes the entry: from then on every run is a hit.
    time_run(lb, &syn, 1, 1, XDP_TX).context("lb_xdp, first VIP frame")?;
    time_run(lb, &uncached_syn, 1, 1, XDP_TX).context("lb_xdp, first uncached frame")?;

    // Interleave the programs so drift hits all alike.
    let mut rounds: [Vec<f64>; 5] = Default::default();
    for _ in 0..reps {
        check_stop()?;
        let [floor_r, bare_r, hit_r, table_r, pass_r] = &mut rounds;
        floor_r.push(time_run(floor, &syn, repeat, 1, XDP_TX).context("bench-floor")?);
        bare_r.push(time_run(bare, &syn, repeat, 1, XDP_TX).context("bench-bare-dr")?);
        hit_r.push(time_run(lb, &syn, repeat, 1, XDP_TX).context("lb_xdp, hit")?);
        let uncached = time_run(lb, &uncached_syn, repeat, 1, XDP_TX);
        table_r.push(uncached.context("lb_xdp, uncached hit")?);
        pass_r.push(time_run(lb, &other, repeat, 1, XDP_PASS).context("lb_xdp, pass")?);
    }
    let mut costs = repeated_rows(&rounds, repeat);
    let floor1 = time_single(floor, &hit_frames, XDP_TX).context("bench-floor, single")?;
    let hit1 = time_single(lb, &hit_frames, XDP_TX).context("lb_xdp, single hit")?;
    let [syn1, ack1, miss1] = new_clients.time(lb)?;
    let single = |(name, what, ns): (&'static str, &'static str, f64)| PacketCost {
        name,
        what,
        repeat: 1,
        ns,
        floor_ns: floor1,
        ratio: ns / floor1,
        bare_ratio: f64::NAN,
    };
    let snat1 = snat_established(singles).context("lb_xdp, SNAT established")?;
    costs.extend(
        [
            ("floor (single)", "`return XDP_TX`, one frame per call", floor1),
            ("lbd hit (single)", "lb_xdp, persistence hit, one frame per call", hit1),
            (
                "lbd new SYN (single)",
                "lb_xdp, new client's SYN: lookup in a cold table, Maglev, not remembered; one frame per call",
                syn1,
            ),
            (
                "lbd new ACK (single)",
                "lb_xdp, the same client's handshake ACK: Maglev + insert; one frame per call",
                ack1,
            ),
            (
                "lbd miss (single)",
                "lb_xdp, new client whose first frame is an ACK: cold table, Maglev + insert; one frame per call",
                miss1,
            ),
            (
                "lbd SNAT established (single)",
                "lb_xdp, an established SNAT connection's frame: `CONNS`, rewrite, FIB lookup, redirect; one frame per call",
                snat1,
            ),
        ]
        .map(single),
    );
    Ok(costs)
}

/// The SNAT service of [`snat_established`], in the namespace of
/// `lb_tests::natns`.
const SNAT_CONFIG: &str = "node: { name: bench, interface: c0, server_interfaces: [v0] }
services:
  - name: web
    vip: 198.18.0.100
    port: 80
    forwarding: snat
    snat_address: 198.18.1.1
    real_servers:
      - { name: rs1, address: 198.18.1.21 }
";

/// Mean time of single runs of `lb_xdp` over `count` frames of an
/// established SNAT connection, in a namespace whose routing and neighbour
/// tables its FIB lookups read.
fn snat_established(count: u32) -> Result<f64> {
    let server = Ipv4Addr::new(198, 18, 1, 21);
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    let ns = NatNetns::new("bench", &[server]).map_err(|e| anyhow!("{e}"))?;
    let egress = [
        ns.ifindex("c0").map_err(|e| anyhow!("{e}"))?,
        ns.ifindex("v0").map_err(|e| anyhow!("{e}"))?,
    ];
    let object = product_object()?;
    in_netns(ns.name(), move || -> Result<f64> {
        let mut program = Program::load_bytes(&object).map_err(|e| anyhow!("{e}"))?;
        let maps = program.take_maps().map_err(|e| anyhow!("{e}"))?;
        let mut balancer = Balancer::new(maps, C0_MAC).map_err(|e| anyhow!("{e}"))?;
        let config = Config::from_yaml(SNAT_CONFIG, "snat.yaml").map_err(|e| anyhow!("{e}"))?;
        balancer.apply(&config).map_err(|e| anyhow!("{e}"))?;
        balancer
            .maps_mut()
            .nat_mut()
            .set_egress(&egress)
            .map_err(|e| anyhow!("{e}"))?;
        let lb = program.xdp_program().map_err(|e| anyhow!("{e}"))?;
        let from_client = |spec: FrameSpec| FrameSpec {
            src_mac: CLIENT_MAC,
            ..spec
        };
        let syn = from_client(FrameSpec::syn(C0_MAC, CLIENT, vip, HTTP_PORT)).build();
        run_once(lb, &syn, 1, XDP_REDIRECT).context("the SYN that opens the connection")?;
        let ack = from_client(FrameSpec::tcp(C0_MAC, CLIENT, vip, HTTP_PORT)).build();
        let frames = vec![ack; usize::try_from(count).unwrap_or(0)];
        time_single(lb, &frames, XDP_REDIRECT)
    })
    .map_err(|e| anyhow!("{e}"))?
}
