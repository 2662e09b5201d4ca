//! One whole bench run: the checks before it, every scenario in turn, and
//! the report written from what they found.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use lb_tests::paths;

use crate::{
    lab::{ebpf_dir, BenchLab},
    machine::{loadavg, machine, Machine},
    options::Options,
    report::write_outputs,
    scenario::{
        census::CensusFigures,
        control::{control_plane, ControlPlane},
        flood::FloodFigures,
        ha::{Event, HaStall},
        health::HealthFailover,
        packet::{packet_costs, PacketCost},
        traffic::{traffic, Probes, RunResult},
    },
    signal::check_stop,
};

/// Everything one bench run found.
pub(crate) struct Findings {
    pub(crate) opts: Options,
    pub(crate) machine: Machine,
    pub(crate) runs: Vec<(usize, RunResult)>,
    pub(crate) probes: Probes,
    pub(crate) costs: Result<Vec<PacketCost>, String>,
    pub(crate) control: ControlPlane,
    pub(crate) control_errors: Vec<String>,
    pub(crate) health: Result<HealthFailover, String>,
    pub(crate) flood: Result<FloodFigures, String>,
    pub(crate) census: Result<CensusFigures, String>,
    pub(crate) ha: Vec<HaStall>,
    pub(crate) elapsed: Duration,
}

/// What the caller (the binary, the test) learns.
#[derive(Debug)]
pub struct Outcome {
    /// `BENCHMARKS.md` as written.
    pub report: PathBuf,
    /// `bench/results.json`.
    pub json: PathBuf,
    /// `bench/results.svg`.
    pub chart: PathBuf,
    /// Systems or workloads with failed requests or no requests at all.
    pub problems: Vec<String>,
}

/// Root, the tools and the built artifacts are there.
fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench builds network namespaces and loads XDP programs: run it as root");
    }
    for tool in [
        "wrk", "nginx", "haproxy", "nft", "gcc", "taskset", "ethtool",
    ] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            bail!("{tool} is missing: run `cargo xtask setup` (it installs nginx, haproxy, wrk, nftables)");
        }
    }
    for obj in ["bench-bare-dr", "bench-floor", "lab-pass"] {
        if !ebpf_dir().join(obj).is_file() {
            bail!(
                "no {} (run `cargo xtask build-ebpf`)",
                ebpf_dir().join(obj).display()
            );
        }
    }
    if !paths::lbd().is_file() || !paths::lbctl().is_file() {
        bail!(
            "no lbd/lbctl in {} (run `cargo xtask build`)",
            paths::bin_dir().display()
        );
    }
    Ok(())
}

/// Runs one scenario if `wanted`, saying so, and what kept it from being
/// measured if something did.
fn scenario<T>(wanted: bool, what: &str, run: impl FnOnce() -> Result<T>) -> Result<T, String> {
    if !wanted {
        return Err("skipped (LB_BENCH_ONLY)".into());
    }
    eprintln!("bench: {what}");
    let result = run().map_err(|e| format!("{e:#}"));
    if let Err(e) = &result {
        eprintln!(
            "bench:   not measured: {}",
            e.lines().next().unwrap_or_default()
        );
    }
    result
}

/// Runs the whole bench and writes the report.
///
/// # Errors
/// When the lab cannot be built, a system cannot be started, or the report
/// cannot be written. Figures that cannot be measured (say, the HA pair) are
/// reported as such instead.
pub fn run_bench(opts: &Options) -> Result<Outcome> {
    preflight()?;
    let only = std::env::var("LB_BENCH_ONLY").ok();
    let wants = |part: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p.trim() == part))
    };
    let started = Instant::now();
    let mut machine = machine();
    eprintln!(
        "bench: {} rounds, load average {} on {} CPUs",
        opts.rounds, machine.load_before, machine.nproc
    );

    let costs = if wants("packet") {
        eprintln!("bench: per-packet cost (BPF_PROG_TEST_RUN)");
        packet_costs(opts.quick).map_err(|e| format!("{e:#}"))
    } else {
        Err("skipped (LB_BENCH_ONLY)".into())
    };
    check_stop()?;

    let mut control = ControlPlane::default();
    let mut control_errors = Vec::new();
    if wants("control") {
        eprintln!("bench: control plane");
        control_plane(opts, &mut control, &mut control_errors)?;
    }

    eprintln!("bench: building the lab");
    let mut lab = BenchLab::start()?;
    let (runs, probes) = if wants("traffic") {
        traffic(&mut lab, opts)?
    } else {
        (Vec::new(), BTreeMap::new())
    };

    if wants("drain") {
        eprintln!("bench: lbctl drain to the map change");
        match lab.drain_timing(if opts.quick { 2 } else { 6 }) {
            Ok((to_map, wall)) => {
                control.drain_ms = to_map;
                control.lbctl_ms = wall;
            }
            Err(e) => control_errors.push(format!("drain timing: {e:#}")),
        }
        check_stop()?;
    }

    let health = if wants("health") {
        eprintln!("bench: a real server dies");
        lab.health_failover().map_err(|e| format!("{e:#}"))
    } else {
        Err("skipped (LB_BENCH_ONLY)".into())
    };
    check_stop()?;

    let flood = scenario(wants("flood"), "a flood of spoofed sources", || {
        lab.flood_bench(opts)
    });
    check_stop()?;

    let census = scenario(
        wants("census"),
        "lbd's CPU with a million active clients, and their snapshot to a peer",
        || lab.census_bench(if opts.quick { 100_000 } else { 1_000_000 }, opts.quick),
    );
    check_stop()?;

    let mut ha = Vec::new();
    let adverts: &[u64] = if opts.quick { &[100] } else { &[100, 1000] };
    for event in Event::ALL.into_iter().filter(|_| wants("ha")) {
        let intervals: &[u64] = if event.pair() { adverts } else { &[0] };
        for advert in intervals {
            eprintln!("bench: {}, {advert} ms adverts", event.describe());
            let result = lab.ha_stall(event, *advert).map_err(|e| format!("{e:#}"));
            if let Err(e) = &result {
                eprintln!(
                    "bench:   not measured: {}",
                    e.lines().next().unwrap_or_default()
                );
            }
            ha.push(HaStall {
                event,
                advert_ms: *advert,
                result,
            });
            check_stop()?;
        }
    }
    drop(lab);
    machine.load_after = loadavg();

    let findings = Findings {
        opts: opts.clone(),
        machine,
        runs,
        probes,
        costs,
        control,
        control_errors,
        health,
        flood,
        census,
        ha,
        elapsed: started.elapsed(),
    };
    write_outputs(&findings)
}
