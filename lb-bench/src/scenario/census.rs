//! lbd's own CPU with a million live clients in its affinity table, alone
//! and as the master of a pair, and the time a snapshot of them takes to
//! reach the backup (issue 12). The entries are written into the running
//! lbd's `AFFINITY` map from here, for a service and servers it serves, so
//! lbd counts, and streams, them as it would real clients.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::{
    cpu::{process_ticks, ticks_per_second},
    lab::{
        files::{lbd_config, pair_files, PairFiles},
        remove_guard, BenchLab, RunningLbd,
    },
    signal::{check_stop, nap},
};

/// Seconds lbd's CPU is measured over, once the table is full.
pub(crate) const MEASURE_S: u64 = 10;
const MEASURE: Duration = Duration::from_secs(MEASURE_S);
/// The master sends a client seen since it was last sent again once a
/// minute (services with timeouts over 4 minutes): its CPU is measured over
/// this long, with every client seen again at its start.
const REFRESH_CYCLE: Duration = Duration::from_secs(65);
/// lbd's walk of the table (`WALK_EVERY`): one passes before measuring.
const WALK: Duration = Duration::from_secs(5);
/// The bench's cluster key (any 32+ bytes).
const KEY: &[u8] = b"bench-census-key-0123456789abcdef-0123456789abcdef\n";

/// The figures of this scenario.
#[derive(Clone, Debug, Default)]
pub(crate) struct CensusFigures {
    /// Live entries written.
    pub(crate) entries: u32,
    /// Seconds to write them (the bench's own work).
    pub(crate) fill_s: f64,
    /// A single lbd: % of one core, and seconds until `lbctl status`
    /// counted them all.
    pub(crate) single_cpu_pct: f64,
    pub(crate) single_counted_s: f64,
    /// The master of a pair, steady (after the snapshot): % of one core.
    pub(crate) master_cpu_pct: f64,
    /// Seconds from the backup's start until it held every entry, and the
    /// master's % of one core meanwhile.
    pub(crate) snapshot_s: f64,
    pub(crate) snapshot_master_cpu_pct: f64,
}

/// Writes `n` live clients into the lbd in `ns` (see `lb_tests::affinity`).
fn fill(ns: &str, n: u32) -> Result<f64> {
    lb_tests::affinity::fill(ns, n, &|| check_stop().map_err(|e| format!("{e:#}")))
        .map_err(|e| anyhow!(e))
}

/// Active clients `lbctl status` counts.
fn counted(lbd: &RunningLbd) -> u64 {
    BenchLab::lbctl(&lbd.socket, &["status", "--json"])
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| {
            v["services"].as_array().map(|services| {
                services
                    .iter()
                    .flat_map(|s| s["real_servers"].as_array().cloned().unwrap_or_default())
                    .filter_map(|r| r["active_clients"].as_u64())
                    .sum()
            })
        })
        .unwrap_or(0)
}

/// Waits until lbd counts at least `n` active clients; the seconds it took.
fn wait_counted(lbd: &RunningLbd, n: u64, timeout: Duration) -> Result<f64> {
    let start = Instant::now();
    loop {
        if counted(lbd) >= n {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > timeout {
            bail!(
                "{} counts {} active clients of {n} after {timeout:?}",
                lbd.ns,
                counted(lbd)
            );
        }
        nap(Duration::from_millis(100))?;
    }
}

/// % of one core `pid` used over `d`.
fn cpu_pct(pid: u32, d: Duration) -> Result<f64> {
    let before = process_ticks(pid).ok_or_else(|| anyhow!("lbd {pid} is gone"))?;
    let start = Instant::now();
    nap(d)?;
    let after = process_ticks(pid).ok_or_else(|| anyhow!("lbd {pid} is gone"))?;
    Ok(cpu_share(after - before, start.elapsed()))
}

fn cpu_share(ticks: u64, over: Duration) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "clock ticks")]
    let ticks = ticks as f64;
    100.0 * ticks / ticks_per_second() / over.as_secs_f64()
}

impl BenchLab {
    /// The whole scenario with `n` entries.
    /// `quick`: the master's steady CPU over 10 s, not a whole refresh cycle.
    pub(crate) fn census_bench(&mut self, n: u32, quick: bool) -> Result<CensusFigures> {
        let mut figures = CensusFigures {
            entries: n,
            ..CensusFigures::default()
        };
        let ns1 = self.lab.lb_ns().to_string();
        let dir = self.lab.dir().join("lbd-census");
        let config = lbd_config(&dir, "bench", &self.lab, "{ type: none }", "");
        let lbd = self.start_lbd(&ns1, &dir, &config)?;
        let single = (|| -> Result<()> {
            figures.fill_s = fill(&ns1, n)?;
            let filled = Instant::now();
            wait_counted(&lbd, u64::from(n), Duration::from_secs(30))?;
            figures.single_counted_s = filled.elapsed().as_secs_f64();
            let pid = self
                .lab
                .pid(lbd.handle)
                .ok_or_else(|| anyhow!("lbd is gone"))?;
            if std::env::var_os("LB_BENCH_HOLD").is_some() {
                eprintln!("bench: holding lbd {pid} for 40 s");
                nap(Duration::from_secs(40))?;
            }
            figures.single_cpu_pct = cpu_pct(pid, MEASURE)?;
            Ok(())
        })();
        self.stop_lbd(&lbd);
        single?;
        check_stop()?;
        self.census_pair(n, quick, &mut figures)?;
        Ok(figures)
    }

    /// lb1 (primary) fills up alone; lb2 starts and receives the snapshot.
    fn census_pair(&mut self, n: u32, quick: bool, figures: &mut CensusFigures) -> Result<()> {
        let base = self.lab.dir().join("census-pair");
        let PairFiles { d1, d2, c1, c2 } = pair_files(&base, &self.lab, 52, 1000, 7947, KEY)?;
        let (ns1, ns2) = (self.lab.lb_ns().to_string(), self.lab.lb2_ns().to_string());
        let lb1 = self.start_lbd(&ns1, &d1, &c1)?;
        let mut lb2 = None;
        let result = (|| -> Result<()> {
            let deadline = Instant::now() + Duration::from_secs(20);
            while BenchLab::lbctl(&lb1.socket, &["ha", "--json"])
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_none_or(|v| v["state"] != "master")
            {
                if Instant::now() > deadline {
                    bail!("lb1 did not become master alone");
                }
                nap(Duration::from_millis(200))?;
            }
            fill(&ns1, n)?;
            wait_counted(&lb1, u64::from(n), Duration::from_secs(30))?;
            let pid = self
                .lab
                .pid(lb1.handle)
                .ok_or_else(|| anyhow!("lb1 is gone"))?;
            let before = process_ticks(pid).ok_or_else(|| anyhow!("lb1 is gone"))?;
            let start = Instant::now();
            let second = self.start_lbd(&ns2, &d2, &c2)?;
            let backup = lb2.insert(second);
            wait_counted(backup, u64::from(n), Duration::from_secs(120))?;
            figures.snapshot_s = start.elapsed().as_secs_f64();
            let after = process_ticks(pid).ok_or_else(|| anyhow!("lb1 is gone"))?;
            figures.snapshot_master_cpu_pct = cpu_share(after - before, start.elapsed());
            if std::env::var_os("LB_BENCH_HOLD").is_some() {
                eprintln!("bench: holding master {pid} for 90 s");
                nap(Duration::from_secs(90))?;
            }
            // Past the snapshot's last passes; then every client is seen
            // again, as if all were active: each is due to be sent again once
            // a minute after it was sent, inside the window measured.
            nap(WALK)?;
            lb_tests::affinity::touch(&ns1).map_err(|e| anyhow!(e))?;
            // A whole refresh cycle: every entry is sent again once a minute.
            figures.master_cpu_pct = cpu_pct(pid, if quick { MEASURE } else { REFRESH_CYCLE })?;
            Ok(())
        })();
        for l in [Some(&lb1), lb2.as_ref()].into_iter().flatten() {
            self.stop_lbd(l);
        }
        let vip = format!("{}/32", self.lab.vip());
        for ns in [&ns1, &ns2] {
            let _ = lb_tests::lab::run(&["ip", "-n", ns, "addr", "del", &vip, "dev", "eth0"]);
            remove_guard(ns);
        }
        result
    }
}
