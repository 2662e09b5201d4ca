//! The traffic comparison: every system, round after round, under every
//! load (wrk through the bind shim), with the CPU time each run cost.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    cpu::{machine_busy_ticks, process_ticks, program_run_time, ticks_per_second, CpuSample},
    lab::BenchLab,
    machine::loadavg,
    options::{Options, System, Workload},
    scenario::systems::Active,
    signal::{check_stop, nap, STOP},
    stats::as_f64,
    HTTP_PORT, SOURCES,
};

/// Concurrent connections of the keep-alive and new-connection loads.
const CONNECTIONS: usize = 64;
/// wrk's own per-request timeout.
const WRK_TIMEOUT: &str = "2s";

/// Runs a command with a time limit; stdout and stderr go to `log`.
fn run_bounded(cmd: &mut Command, limit: Duration, log: &Path) -> Result<std::process::ExitStatus> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline || STOP.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            check_stop()?;
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl BenchLab {
    fn cpu_sample(active: &Active) -> CpuSample {
        let (xdp_ns, process_ticks) = match active {
            Active::Direct | Active::Nftables => (None, None),
            Active::BareDr { prog_id, .. } => (
                program_run_time(*prog_id)
                    .map(|(t, _)| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)),
                None,
            ),
            Active::Lbd { prog_id, pid, .. } => (
                program_run_time(*prog_id)
                    .map(|(t, _)| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)),
                process_ticks(*pid),
            ),
            Active::Haproxy { pid, .. } => (None, process_ticks(*pid)),
        };
        CpuSample {
            machine_ticks: machine_busy_ticks(),
            xdp_ns,
            process_ticks,
        }
    }

    /// One wrk run against the active system.
    fn wrk(
        &mut self,
        system: System,
        active: &Active,
        workload: Workload,
        secs: u64,
    ) -> Result<RunResult> {
        let conns = match workload {
            Workload::SingleConnection => 1,
            _ => CONNECTIONS,
        };
        let url = format!("http://{}:{HTTP_PORT}/", self.lab.vip());
        let reals = self
            .reals()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.lab.client_ns(),
            "taskset",
            "-c",
            &self.client_cpu,
            "env",
        ])
        .arg(format!("LD_PRELOAD={}", self.shim.display()))
        .arg(format!("BENCH_SRC_FIRST={}", self.lab.client_sources()[0]))
        .arg(format!("BENCH_SRC_COUNT={SOURCES}"))
        .arg(format!("BENCH_VIP={}", self.lab.vip()));
        if system == System::Direct {
            cmd.arg(format!("BENCH_DIRECT={reals}"));
        }
        cmd.args([
            "wrk",
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            WRK_TIMEOUT,
        ])
        .arg("-s")
        .arg(&self.lua);
        if workload == Workload::NewConnections {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(&url);
        self.runs += 1;
        let log = self.lab.dir().join(format!("wrk-{}.out", self.runs));
        let before = Self::cpu_sample(active);
        let retransmits_before = syn_retransmits(self.lab.client_ns());
        let status = run_bounded(&mut cmd, Duration::from_secs(secs + 15), &log)?;
        let after = Self::cpu_sample(active);
        let syn_retransmits = match (retransmits_before, syn_retransmits(self.lab.client_ns())) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let text = fs::read_to_string(&log).unwrap_or_default();
        if !status.success() {
            bail!("wrk against {} failed ({status}): {text}", system.name());
        }
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("BENCH-RESULT "))
            .ok_or_else(|| anyhow!("wrk printed no result: {text}"))?;
        let n: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if n.len() < 10 {
            bail!("cannot parse wrk's result {line:?}");
        }
        let hz = ticks_per_second();
        let machine_cpu_s = as_f64(after.machine_ticks.saturating_sub(before.machine_ticks)) / hz;
        let xdp_s = match (before.xdp_ns, after.xdp_ns) {
            (Some(a), Some(b)) => Some(as_f64(b.saturating_sub(a)) / 1e9),
            _ => None,
        };
        let proc_s = match (before.process_ticks, after.process_ticks) {
            (Some(a), Some(b)) => Some(as_f64(b.saturating_sub(a)) / hz),
            _ => None,
        };
        let lb_cpu_s = match (xdp_s, proc_s) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        Ok(RunResult {
            system,
            workload,
            requests: n[0],
            duration_s: as_f64(n[1]) / 1e6,
            errors: n[3] + n[4] + n[5] + n[6] + n[7],
            error_detail: format!(
                "connect {} read {} write {} status {} timeout {}",
                n[3], n[4], n[5], n[6], n[7]
            ),
            p50_us: as_f64(n[8]),
            p99_us: as_f64(n[9]),
            machine_cpu_s,
            lb_cpu_s,
            xdp_cpu_s: xdp_s,
            process_cpu_s: proc_s,
            syn_retransmits,
            load_after: None,
        })
    }
}

/// The SYN retransmissions counted in namespace `ns` so far.
fn syn_retransmits(ns: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/netstat"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp_ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPSynRetrans")
        .and_then(|(_, value)| value.parse().ok())
}

/// One wrk run.
#[derive(Clone, Debug)]
pub(crate) struct RunResult {
    pub(crate) system: System,
    pub(crate) workload: Workload,
    pub(crate) requests: u64,
    pub(crate) duration_s: f64,
    pub(crate) errors: u64,
    pub(crate) error_detail: String,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) machine_cpu_s: f64,
    pub(crate) lb_cpu_s: Option<f64>,
    pub(crate) xdp_cpu_s: Option<f64>,
    pub(crate) process_cpu_s: Option<f64>,
    /// SYNs the clients sent again during the run (`TcpExtTCPSynRetrans`):
    /// a first SYN dropped (a second's wait) or refused, as by a server
    /// holding the port in TIME-WAIT (a reset and a prompt retry).
    pub(crate) syn_retransmits: Option<u64>,
    /// The machine's 1-minute load average when the run ended.
    pub(crate) load_after: Option<f64>,
}

impl RunResult {
    pub(crate) fn rate(&self) -> f64 {
        if self.duration_s > 0.0 {
            as_f64(self.requests) / self.duration_s
        } else {
            0.0
        }
    }

    pub(crate) fn per_million(&self, cpu_s: f64) -> f64 {
        if self.requests == 0 {
            f64::NAN
        } else {
            cpu_s / as_f64(self.requests) * 1e6
        }
    }
}

/// Every system, round after round, under every load.
pub(crate) fn traffic(
    lab: &mut BenchLab,
    opts: &Options,
) -> Result<(Vec<(usize, RunResult)>, Probes)> {
    let mut runs = Vec::new();
    let mut probes = BTreeMap::new();
    // For work on the bench: only these systems (keys as in results.json).
    let systems = std::env::var("LB_BENCH_SYSTEMS").ok();
    // Run-time statistics of BPF programs (the LB's CPU in XDP) while
    // traffic flows; released before anything else is timed.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime);
    if let Err(e) = &stats {
        eprintln!("bench: no BPF run-time statistics ({e}); XDP CPU time not measured");
    }
    for round in 0..opts.rounds {
        eprintln!(
            "bench: round {} starts at load average {}",
            round + 1,
            loadavg()
        );
        for system in System::ALL.into_iter().filter(|s| {
            systems
                .as_deref()
                .is_none_or(|l| l.split(',').any(|k| k.trim() == s.key()))
        }) {
            check_stop()?;
            eprintln!(
                "bench: round {}/{}: {}",
                round + 1,
                opts.rounds,
                system.name()
            );
            let active = lab
                .start_system(system)
                .with_context(|| format!("starting {}", system.name()))?;
            let result = (|| -> Result<()> {
                let share = lab.probe(system)?;
                probes.entry(system).or_insert(share);
                for workload in Workload::ALL {
                    check_stop()?;
                    let mut r = lab.wrk(system, &active, workload, opts.load_duration(workload))?;
                    r.load_after = loadavg()
                        .split_whitespace()
                        .next()
                        .and_then(|l| l.parse().ok());
                    eprintln!(
                        "bench:   {:<18} {:>9.0}/s  p50 {:>6.0} us  p99 {:>6.0} us  errors {}  SYN retransmits {}",
                        workload.key(),
                        r.rate(),
                        r.p50_us,
                        r.p99_us,
                        r.errors,
                        r.syn_retransmits.map_or_else(|| "?".into(), |n| n.to_string())
                    );
                    runs.push((round, r));
                }
                Ok(())
            })();
            lab.stop_system(active)?;
            result.with_context(|| format!("measuring {}", system.name()))?;
            nap(Duration::from_millis(500))?;
        }
    }
    drop(stats);
    Ok((runs, probes))
}

/// Where the probe clients landed, per system.
pub(crate) type Probes = BTreeMap<System, BTreeMap<String, usize>>;
