//! A flood of spoofed client sources against lbd while real clients keep
//! coming: the contract's "Hostile traffic" measured. lbd serves `web` on
//! the VIP and 16 more services on other ports of it (17 services with
//! persistence share the table); the lab's 256 real clients are placed
//! first and rs3 is drained, so its clients stay there only by their table
//! entries. Then, side by side in one run: wrk (64 connections, each closed
//! after one request, from the 256 real sources) without the flood, and
//! again while [`lb_tests::flood`] sends TCP SYNs and ACKs from 130,048
//! spoofed sources to all 17 services as fast as the lab takes them (or at
//! `LB_BENCH_FLOOD_PPS`) for 30 s (`LB_BENCH_FLOOD_SECS`; 5 s with
//! `--quick`). Afterwards every real client asks again: a client answered by
//! another server than before has moved (target: none), and `lbctl affinity`
//! says which clients the table no longer holds.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use lb_tests::{
    flood::{flood_until, FloodFrame, FloodReport, FloodSpec, SPOOFED_SOURCES},
    lab::{in_netns, DrLab},
};
use serde_json::Value;

use crate::{
    client::http_get,
    lab::{BenchLab, RunningLbd},
    options::Options,
    signal::{check_stop, nap, STOP},
    stats::as_f64,
    HTTP_PORT, SOURCES,
};

/// Services besides `web`, on ports 8001 and on of the same VIP.
const OTHER_SERVICES: u16 = 16;
const FIRST_OTHER_PORT: u16 = 8001;
/// The server drained once the clients are placed.
const DRAINED: &str = "rs3";
/// How long the flood runs alone before the measured traffic starts.
const RAMP: Duration = Duration::from_secs(1);
/// Concurrent connections of the real traffic.
const CONNECTIONS: usize = 64;
/// wrk's own per-request timeout.
const WRK_TIMEOUT: &str = "2s";
/// Flood length of a full run and of `--quick`.
const FLOOD_SECS: u64 = 30;
const QUICK_FLOOD_SECS: u64 = 5;

/// One wrk run of the real traffic.
#[derive(Clone, Debug, Default)]
pub(crate) struct RealTraffic {
    pub(crate) requests: u64,
    pub(crate) duration_s: f64,
    pub(crate) errors: u64,
}

impl RealTraffic {
    pub(crate) fn rate(&self) -> Option<f64> {
        (self.duration_s > 0.0).then(|| as_f64(self.requests) / self.duration_s)
    }
}

/// What the flood did and what it did to the real clients.
#[derive(Clone, Debug)]
pub(crate) struct FloodFigures {
    /// The flood's length asked for.
    pub(crate) seconds: u64,
    /// Its frame-rate cap, if any.
    pub(crate) cap: Option<u64>,
    /// Services flooded (`web` included).
    pub(crate) services: usize,
    /// What the sender did.
    pub(crate) flood: FloodReport,
    /// Data-path counters over the flood window (flood and real traffic).
    pub(crate) forwarded: u64,
    pub(crate) quota_full: u64,
    pub(crate) table_full: u64,
    pub(crate) syn_unremembered: u64,
    /// Live persistence entries afterwards, all services.
    pub(crate) entries_after: u64,
    /// Real clients placed before the flood, and how many on the drained server.
    pub(crate) clients: usize,
    pub(crate) on_drained: usize,
    /// Real clients answered by another server after the flood.
    pub(crate) moved: usize,
    /// Real clients `lbctl affinity` no longer finds in the table.
    pub(crate) forgotten: usize,
    /// Real traffic without and during the flood.
    pub(crate) without: RealTraffic,
    pub(crate) during: RealTraffic,
}

impl FloodFigures {
    /// New connections per second during the flood over without it.
    pub(crate) fn ratio(&self) -> Option<f64> {
        match (self.during.rate(), self.without.rate()) {
            (Some(d), Some(w)) if w > 0.0 => Some(d / w),
            _ => None,
        }
    }
}

/// An environment setting as a number in `range`, if set.
fn setting<T>(name: &str, range: std::ops::RangeInclusive<T>) -> Result<Option<T>>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(text) => match text.trim().parse::<T>() {
            Ok(v) if range.contains(&v) => Ok(Some(v)),
            _ => bail!(
                "{name}={text:?}: expected a number from {} to {}",
                range.start(),
                range.end()
            ),
        },
    }
}

/// lbd with `web` on the VIP and the other services on other ports of
/// it, all with the lab's real servers, persistence 3600 s, checks `none`.
fn flood_config(dir: &Path, lab: &DrLab) -> String {
    let d = dir.display();
    let mut reals = String::new();
    for i in 0..lab.real_count() {
        let _ = writeln!(
            reals,
            "      - {{ name: {}, address: {} }}",
            lab.real_name(i),
            lab.real_address(i)
        );
    }
    let mut s = format!(
        "node:\n  name: bench\n  interface: eth0\n  xdp_mode: native\n  control_socket: {d}/lbd.sock\n  \
         state_dir: {d}/state\n  metrics_listen: 127.0.0.1:9100\nservices:\n"
    );
    let services = std::iter::once(("web".to_owned(), HTTP_PORT))
        .chain((0..OTHER_SERVICES).map(|k| (format!("flood{:02}", k + 1), FIRST_OTHER_PORT + k)));
    for (name, port) in services {
        let _ = write!(
            s,
            "  - name: {name}\n    vip: {vip}\n    port: {port}\n    persistence: {{ timeout_s: 3600 }}\n    \
             health_check: {{ type: none }}\n    real_servers:\n{reals}",
            vip = lab.vip()
        );
    }
    s
}

/// A data-path counter from `lbctl status --json` (0 if it has none).
fn counter(status: &Value, name: &str) -> u64 {
    status["dataplane"][name].as_u64().unwrap_or(0)
}

impl BenchLab {
    /// The flood scenario (see the module's documentation).
    pub(crate) fn flood_bench(&mut self, opts: &Options) -> Result<FloodFigures> {
        let default_secs = if opts.quick {
            QUICK_FLOOD_SECS
        } else {
            FLOOD_SECS
        };
        let seconds = setting("LB_BENCH_FLOOD_SECS", 3..=600)?.unwrap_or(default_secs);
        let cap = setting("LB_BENCH_FLOOD_PPS", 1..=100_000_000)?;
        let cpu = setting("LB_BENCH_FLOOD_CPU", 0..=1023)?;
        let lb = self.lab.lb_ns().to_string();
        let dir = self.lab.dir().join("lbd-flood");
        let config = flood_config(&dir, &self.lab);
        let lbd = self.start_lbd(&lb, &dir, &config)?;
        let result = self.flood_with(&lbd, seconds, cap, cpu);
        self.stop_lbd(&lbd);
        result
    }

    fn status_json(lbd: &RunningLbd) -> Result<Value> {
        let text = Self::lbctl(&lbd.socket, &["status", "--json"])?;
        serde_json::from_str(&text).context("`lbctl status --json` is not JSON")
    }

    /// One request from every real source: the server that answered each.
    fn ask_every_source(&self, when: &str) -> Result<BTreeMap<Ipv4Addr, String>> {
        let sources: Vec<Ipv4Addr> = self.lab.client_sources()[..SOURCES].to_vec();
        let vip = self.vip_addr();
        let answers = in_netns(self.lab.client_ns(), move || {
            sources
                .iter()
                .map(|s| {
                    let mut last = Err(String::new());
                    for _ in 0..3 {
                        last = http_get(*s, vip, Duration::from_secs(1));
                        if last.is_ok() {
                            break;
                        }
                    }
                    (*s, last)
                })
                .collect::<Vec<_>>()
        })?;
        answers
            .into_iter()
            .map(|(s, a)| {
                a.map(|server| (s, server))
                    .map_err(|e| anyhow!("{when}, {s} was not answered: {e}"))
            })
            .collect()
    }

    fn flood_with(
        &self,
        lbd: &RunningLbd,
        seconds: u64,
        cap: Option<u64>,
        cpu: Option<usize>,
    ) -> Result<FloodFigures> {
        // The real clients, placed; then rs3 drained: its clients stay on
        // it only by their table entries.
        let placed = self.ask_every_source("before the flood")?;
        Self::lbctl(&lbd.socket, &["drain", "web", DRAINED])?;
        let on_drained = placed.values().filter(|s| *s == DRAINED).count();
        check_stop()?;

        let measured = Duration::from_secs(seconds)
            .saturating_sub(RAMP + Duration::from_secs(1))
            .max(Duration::from_secs(1));
        eprintln!("bench:   real traffic without the flood");
        let without = self.real_traffic(measured, "without")?;

        let vip = self.lab.vip();
        let targets: Vec<SocketAddrV4> = std::iter::once(HTTP_PORT)
            .chain((0..OTHER_SERVICES).map(|k| FIRST_OTHER_PORT + k))
            .map(|port| SocketAddrV4::new(vip, port))
            .collect();
        let mut spec = FloodSpec::new(
            self.lab.client_ns(),
            "eth0",
            self.lab.client_mac(),
            self.lab.lb_mac(),
            &targets,
            &[FloodFrame::TcpSyn, FloodFrame::TcpAck],
        );
        spec.passes = None;
        spec.max_frames = u64::MAX;
        spec.max_duration = Duration::from_secs(seconds);
        spec.max_rate = cap;
        spec.cpu = cpu;

        let before = Self::status_json(lbd)?;
        eprintln!(
            "bench:   real traffic during {seconds} s of SYNs and ACKs from {SPOOFED_SOURCES} spoofed sources to {} services",
            targets.len()
        );
        let stop = AtomicBool::new(false);
        let (flood, during) = thread::scope(|scope| {
            let sender = scope.spawn(|| flood_until(&spec, &stop));
            let during = nap(RAMP).and_then(|()| self.real_traffic(measured, "during"));
            stop.store(true, Ordering::SeqCst);
            let flood = sender
                .join()
                .map_err(|_| anyhow!("the flood's sender panicked"))
                .and_then(|r| r.map_err(|e| anyhow!("the flood: {e}")));
            (flood, during)
        });
        let (flood, during) = (flood?, during?);
        let after = Self::status_json(lbd)?;
        eprintln!("bench:   flood: {}", flood.summary());

        let now = self.ask_every_source("after the flood")?;
        let moved = placed
            .iter()
            .filter(|(s, server)| now.get(*s) != Some(*server))
            .count();
        let mut forgotten = 0;
        for source in placed.keys() {
            let text = Self::lbctl(
                &lbd.socket,
                &["affinity", "web", &source.to_string(), "--json"],
            )?;
            let a: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if a["source"] != "table" {
                forgotten += 1;
            }
        }
        let delta = |name: &str| counter(&after, name).saturating_sub(counter(&before, name));
        Ok(FloodFigures {
            seconds,
            cap,
            services: targets.len(),
            forwarded: delta("forwarded"),
            quota_full: delta("flood_quota_full"),
            table_full: delta("flood_table_full"),
            syn_unremembered: delta("flood_syn_unremembered"),
            entries_after: after["affinity_entries"].as_u64().unwrap_or(0),
            clients: placed.len(),
            on_drained,
            moved,
            forgotten,
            without,
            during,
            flood,
        })
    }

    /// wrk from the real sources through the bind shim for `length`: 64
    /// connections, each closed after one request.
    fn real_traffic(&self, length: Duration, tag: &str) -> Result<RealTraffic> {
        let secs = length.as_secs().max(1);
        let url = format!("http://{}:{HTTP_PORT}/", self.lab.vip());
        let log = self.lab.dir().join(format!("wrk-flood-{tag}.out"));
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
        .arg(format!("BENCH_VIP={}", self.lab.vip()))
        .args([
            "wrk",
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{secs}s"),
            "--timeout",
            WRK_TIMEOUT,
        ])
        .arg("-s")
        .arg(&self.lua)
        .args(["-H", "Connection: close"])
        .arg(&url);
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting wrk")?;
        let deadline = Instant::now() + Duration::from_secs(secs + 15);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline || STOP.load(Ordering::SeqCst) {
                let _ = child.kill();
                let _ = child.wait();
                check_stop()?;
                bail!("wrk did not finish within {} s", secs + 15);
            }
            thread::sleep(Duration::from_millis(20));
        };
        let text = fs::read_to_string(&log).unwrap_or_default();
        if !status.success() {
            bail!("wrk failed ({status}): {text}");
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
        Ok(RealTraffic {
            requests: n[0],
            duration_s: as_f64(n[1]) / 1e6,
            errors: n[3] + n[4] + n[5] + n[6] + n[7],
        })
    }
}
