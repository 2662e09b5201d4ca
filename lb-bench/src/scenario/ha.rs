//! Crashes, restarts and upgrades: the traffic stall, failed requests and
//! moved clients when a single node's lbd is killed (and started again) or
//! re-executed, and when a pair's master loses lbd, re-executes it or dies
//! as a whole node (its link goes down).

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use lb_tests::lab::{in_netns, run};
use serde_json::Value;

use crate::{
    client::http_get,
    lab::{
        files::{lbd_config, pair_files, PairFiles},
        remove_guard, BenchLab, RunningLbd,
    },
    signal::{check_stop, nap, STOP},
    stats::{as_f64, ms},
};

/// What happens to lbd while clients ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A single node: `kill -9` of lbd, then lbd started again at once.
    SingleKilled,
    /// A single node: SIGUSR2.
    SingleReexec,
    /// A pair: `kill -9` of the master's lbd (the node lives on).
    MasterLbdKilled,
    /// A pair: SIGUSR2 on the master.
    MasterReexec,
    /// A pair: the master node dies (its link goes down, lbd is killed).
    MasterNodeDown,
}

impl Event {
    /// Every event, in report order.
    pub(crate) const ALL: [Event; 5] = [
        Event::SingleKilled,
        Event::SingleReexec,
        Event::MasterLbdKilled,
        Event::MasterReexec,
        Event::MasterNodeDown,
    ];

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Event::SingleKilled => "single node: `kill -9` of lbd, started again",
            Event::SingleReexec => "single node: SIGUSR2 (re-execution)",
            Event::MasterLbdKilled => "pair: `kill -9` of the master's lbd",
            Event::MasterReexec => "pair: SIGUSR2 on the master",
            Event::MasterNodeDown => "pair: the master node dies (link down)",
        }
    }

    pub(crate) fn pair(self) -> bool {
        !matches!(self, Event::SingleKilled | Event::SingleReexec)
    }
}

/// The traffic stall at one event.
#[derive(Clone, Debug)]
pub(crate) struct HaStall {
    pub(crate) event: Event,
    /// The pair's advertisement interval (0 for a single node).
    pub(crate) advert_ms: u64,
    pub(crate) result: Result<HaMeasure, String>,
}

#[derive(Clone, Debug)]
pub(crate) struct HaMeasure {
    /// Longest time without an answer, from before the kill on.
    pub(crate) stall_ms: f64,
    /// Whether any answer came after the kill.
    pub(crate) recovered: bool,
    pub(crate) failed_attempts: usize,
    pub(crate) failing_sources: usize,
    /// First failure's start and last failure's end, ms after the kill.
    pub(crate) failure_window_ms: Option<(f64, f64)>,
    pub(crate) first_error: String,
    pub(crate) sources: usize,
    pub(crate) moved_after: usize,
    pub(crate) answered_after: usize,
    pub(crate) expected_ms: f64,
}

/// Concurrent probe clients of the HA stall, and their connect timeout.
const HA_PROBERS: usize = 4;
const HA_PROBE_TIMEOUT: Duration = Duration::from_millis(100);

const HA_KEY: &[u8] = b"bench-cluster-key-0123456789abcdef-0123456789abcdef\n";

impl BenchLab {
    /// Measures `event` (for a pair, with `advert_ms` advertisements).
    pub(crate) fn ha_stall(&mut self, event: Event, advert_ms: u64) -> Result<HaMeasure> {
        let tag = format!("ha-{event:?}-{advert_ms}");
        let base = self.lab.dir().join(&tag);
        let (ns1, ns2) = (self.lab.lb_ns().to_string(), self.lab.lb2_ns().to_string());
        let PairFiles { d1, d2, c1, c2 } =
            pair_files(&base, &self.lab, 51, advert_ms.max(100), 7946, HA_KEY)?;
        let (lb1, lb2) = if event.pair() {
            let lb1 = self.start_lbd(&ns1, &d1, &c1)?;
            match self.start_lbd(&ns2, &d2, &c2) {
                Ok(l) => (lb1, Some(l)),
                Err(e) => {
                    self.stop_lbd(&lb1);
                    return Err(e);
                }
            }
        } else {
            let d = base.join("single");
            let config = lbd_config(&d, "lb1", &self.lab, "{ type: none }", "");
            (self.start_lbd(&ns1, &d, &config)?, None)
        };
        let mut running = vec![lb1.clone()];
        running.extend(lb2.clone());
        let result = self.ha_stall_with(&lb1, lb2.as_ref(), event, advert_ms, &mut running);
        // The latest first: an lbd started again holds what the killed
        // one left (its guard table).
        for l in running.iter().rev() {
            self.stop_lbd(l);
        }
        // A killed lbd leaves its VIP, its guard table and its data path by
        // design; a dead node's link is down: clear both nodes for what
        // follows.
        let vip = format!("{}/32", self.lab.vip());
        for ns in [&ns1, &ns2] {
            let _ = run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            let _ = run(&["ip", "-n", ns, "link", "set", "eth0", "xdp", "off"]);
            let _ = run(&["ip", "-n", ns, "addr", "del", &vip, "dev", "eth0"]);
            remove_guard(ns);
        }
        let _ = run(&[
            "ip",
            "-n",
            self.lab.client_ns(),
            "neigh",
            "flush",
            "to",
            &self.lab.vip().to_string(),
        ]);
        result
    }

    fn ha_state(lbd: &RunningLbd) -> Value {
        Self::lbctl(&lbd.socket, &["ha", "--json"])
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until lb1 is master and lb2 backup, both synced.
    fn settle(lb1: &RunningLbd, lb2: &RunningLbd) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            check_stop()?;
            let (h1, h2) = (Self::ha_state(lb1), Self::ha_state(lb2));
            if h1["state"] == "master"
                && h2["state"] == "backup"
                && h1["sync"]["connected"] == true
                && h2["sync"]["connected"] == true
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the pair did not settle (lb1 {h1}, lb2 {h2}); lb1 log:\n{}\nlb2 log:\n{}",
                    tail(&lb1.log),
                    tail(&lb2.log)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The measurement; lbds started on the way are added to `running`.
    fn ha_stall_with(
        &mut self,
        lb1: &RunningLbd,
        lb2: Option<&RunningLbd>,
        event: Event,
        advert_ms: u64,
        running: &mut Vec<RunningLbd>,
    ) -> Result<HaMeasure> {
        if let Some(lb2) = lb2 {
            Self::settle(lb1, lb2)?;
        }
        let sources: Vec<Ipv4Addr> = self.lab.client_sources()[..24].to_vec();
        let vip = self.vip_addr();
        let before: BTreeMap<Ipv4Addr, String> = in_netns(self.lab.client_ns(), {
            let sources = sources.clone();
            move || {
                sources
                    .iter()
                    .map(|s| (*s, http_get(*s, vip, Duration::from_secs(1))))
                    .collect::<Vec<_>>()
            }
        })?
        .into_iter()
        .map(|(s, a)| {
            a.map(|server| (s, server))
                .map_err(|e| anyhow!("before the event, {s}: {e}"))
        })
        .collect::<Result<_>>()?;
        // Let the sessions reach the backup.
        nap(Duration::from_millis(1500))?;
        let pid = self
            .lab
            .pid(lb1.handle)
            .ok_or_else(|| anyhow!("lb1 is not running"))?;
        let takeover = 3.0 * as_f64(advert_ms) + as_f64(advert_ms) * 156.0 / 256.0;
        let expected = if event == Event::MasterNodeDown {
            takeover
        } else {
            0.0
        };
        let after = Duration::from_secs_f64(takeover * 2.0 / 1000.0) + Duration::from_secs(3);
        let lead = Duration::from_millis(800);
        let ns1 = lb1.ns.clone();
        let client_ns = self.lab.client_ns().to_owned();
        let (log, event_at) =
            probe_through(&client_ns, &sources, vip, lead, after, || -> Result<()> {
                let signal = |s| {
                    // SAFETY: kill(2) on lbd, a child the lab has not reaped.
                    unsafe { libc::kill(i32::try_from(pid).unwrap_or(0), s) };
                };
                match event {
                    Event::SingleReexec | Event::MasterReexec => signal(libc::SIGUSR2),
                    Event::MasterLbdKilled => signal(libc::SIGKILL),
                    Event::MasterNodeDown => {
                        run(&["ip", "-n", &ns1, "link", "set", "eth0", "down"])
                            .map_err(|e| anyhow!("{e}"))?;
                        signal(libc::SIGKILL);
                    }
                    Event::SingleKilled => {
                        signal(libc::SIGKILL);
                        let config = fs::read_to_string(lb1.log.with_file_name("lbd.yaml"))?;
                        let dir = lb1
                            .socket
                            .parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_default();
                        running.push(self.start_lbd(&ns1, &dir, &config)?);
                    }
                }
                Ok(())
            })?;
        Ok(ha_measure(&log, event_at, &before, expected, lead + after))
    }
}

/// Asks the VIP from `sources` (several probers at once) for `lead`, runs
/// `event`, and goes on for `after`. Returns every attempt and when the
/// event happened (both from the probers' start).
fn probe_through(
    client_ns: &str,
    sources: &[Ipv4Addr],
    vip: SocketAddrV4,
    lead: Duration,
    after: Duration,
    event: impl FnOnce() -> Result<()>,
) -> Result<(Vec<Attempt>, Duration)> {
    let client_ns = client_ns.to_string();
    let sources = sources.to_vec();
    // Several probers, each over its own share of the sources, so an
    // answer after the takeover is seen within a fraction of the
    // connect timeout.
    let start = Instant::now();
    let probers: Vec<_> = (0..HA_PROBERS)
        .map(|p| {
            let mine: Vec<Ipv4Addr> = sources
                .iter()
                .skip(p)
                .step_by(HA_PROBERS)
                .copied()
                .collect();
            let ns = client_ns.clone();
            thread::spawn(move || {
                in_netns(&ns, move || {
                    let mut log: Vec<Attempt> = Vec::new();
                    if mine.is_empty() {
                        return log;
                    }
                    thread::sleep(
                        HA_PROBE_TIMEOUT * u32::try_from(p).unwrap_or(0)
                            / u32::try_from(HA_PROBERS).unwrap_or(1),
                    );
                    let mut k = 0;
                    while start.elapsed() < lead + after && !STOP.load(Ordering::SeqCst) {
                        let source = mine[k % mine.len()];
                        k += 1;
                        let begun = start.elapsed();
                        let answer = http_get(source, vip, HA_PROBE_TIMEOUT);
                        log.push(Attempt {
                            begun,
                            ended: start.elapsed(),
                            source,
                            answer,
                        });
                        thread::sleep(Duration::from_millis(2));
                    }
                    log
                })
            })
        })
        .collect();
    thread::sleep(lead);
    let happened = Instant::now();
    let outcome = event();
    let mut log = Vec::new();
    for prober in probers {
        log.extend(
            prober
                .join()
                .map_err(|_| anyhow!("a probe thread panicked"))?
                .map_err(|e| anyhow!("{e}"))?,
        );
    }
    log.sort_by_key(|a| a.ended);
    check_stop()?;
    outcome?;
    Ok((log, happened.saturating_duration_since(start)))
}

/// One request of the HA probe, times from the probe's start.
struct Attempt {
    begun: Duration,
    ended: Duration,
    source: Ipv4Addr,
    answer: Result<String, String>,
}

/// The stall: the longest time without an answer that overlaps the event
/// or follows it (answers counted when they complete).
fn ha_measure(
    log: &[Attempt],
    event_at: Duration,
    before: &BTreeMap<Ipv4Addr, String>,
    expected_ms: f64,
    end: Duration,
) -> HaMeasure {
    let answered: Vec<Duration> = log
        .iter()
        .filter(|a| a.answer.is_ok())
        .map(|a| a.ended)
        .collect();
    let mut stall = Duration::ZERO;
    let mut prev = answered
        .iter()
        .filter(|t| **t <= event_at)
        .max()
        .copied()
        .unwrap_or(Duration::ZERO);
    for t in answered.iter().filter(|t| **t > event_at) {
        stall = stall.max(t.saturating_sub(prev));
        prev = *t;
    }
    let recovered = answered.iter().any(|t| *t > event_at);
    stall = stall.max(end.saturating_sub(prev));
    let failures: Vec<&Attempt> = log
        .iter()
        .filter(|a| a.ended > event_at && a.answer.is_err())
        .collect();
    let failing_sources: std::collections::BTreeSet<Ipv4Addr> =
        failures.iter().map(|a| a.source).collect();
    let after: Vec<&Attempt> = log
        .iter()
        .filter(|a| a.begun > event_at && a.answer.is_ok())
        .collect();
    let moved_after = after
        .iter()
        .filter(|a| before.get(&a.source) != a.answer.as_ref().ok())
        .count();
    HaMeasure {
        stall_ms: ms(stall),
        recovered,
        failed_attempts: failures.len(),
        failing_sources: failing_sources.len(),
        failure_window_ms: failures.first().zip(failures.last()).map(|(a, b)| {
            (
                ms(a.begun.saturating_sub(event_at)),
                ms(b.ended.saturating_sub(event_at)),
            )
        }),
        first_error: failures
            .first()
            .and_then(|a| a.answer.as_ref().err().cloned())
            .unwrap_or_default(),
        sources: before.len(),
        moved_after,
        answered_after: after.len(),
        expected_ms,
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(3000);
    text.get(start..).unwrap_or_default().to_string()
}
