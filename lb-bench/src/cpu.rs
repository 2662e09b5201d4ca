//! CPU time: the whole machine's and a process's (from `/proc`), an XDP
//! program's (kernel run-time statistics), and which XDP program is
//! attached to a device.

use std::{fs, time::Duration};

use anyhow::{anyhow, Result};
use aya::programs::loaded_programs;

/// Busy CPU time of the whole machine (user, nice, system, irq, softirq), in
/// clock ticks.
pub(crate) fn machine_busy_ticks() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    [0, 1, 2, 5, 6]
        .iter()
        .map(|i| f.get(*i).copied().unwrap_or(0))
        .sum()
}

/// User + system CPU time of a process, in clock ticks.
pub(crate) fn process_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        #[expect(clippy::cast_precision_loss, reason = "a small number")]
        let hz = hz as f64;
        hz
    } else {
        100.0
    }
}

/// Run time and run count of a loaded BPF program (counted only while
/// `BPF_ENABLE_STATS` is held).
pub(crate) fn program_run_time(id: u32) -> Option<(Duration, u64)> {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| (p.run_time(), p.run_count()))
}

/// The id of the XDP program attached to `dev` in namespace `ns`.
pub(crate) fn attached_xdp_id(ns: &str, dev: &str) -> Result<u32> {
    lb_tests::affinity::attached_xdp_id(ns, dev).map_err(|e| anyhow!(e))
}

/// CPU counters at one moment, to subtract.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuSample {
    pub(crate) machine_ticks: u64,
    pub(crate) xdp_ns: Option<u64>,
    pub(crate) process_ticks: Option<u64>,
}
