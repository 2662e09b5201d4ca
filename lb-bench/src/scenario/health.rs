//! A real server dies: from its nginx's `SIGKILL` to lbd's health checks
//! moving its clients to the other servers.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use lb_tests::lab::in_netns;
use serde_json::Value;

use crate::{
    client::http_get,
    lab::{files::lbd_config, BenchLab, RunningLbd},
    signal::{check_stop, nap, STOP},
    stats::ms,
    REALS,
};

/// A real server's death to its clients moving.
#[derive(Clone, Debug)]
pub(crate) struct HealthFailover {
    pub(crate) settings: String,
    pub(crate) victim: String,
    pub(crate) clients: usize,
    pub(crate) first_moved_ms: Option<f64>,
    pub(crate) all_moved_ms: Option<f64>,
    pub(crate) expected: String,
}

const HEALTH_INTERVAL_MS: u64 = 500;
const HEALTH_TIMEOUT_MS: u64 = 250;
const HEALTH_FALL: u64 = 3;

impl BenchLab {
    pub(crate) fn health_failover(&mut self) -> Result<HealthFailover> {
        let lb = self.lab.lb_ns().to_string();
        let dir = self.lab.dir().join("lbd-health");
        let settings = format!(
            "{{ type: tcp, interval_ms: {HEALTH_INTERVAL_MS}, timeout_ms: {HEALTH_TIMEOUT_MS}, rise: 2, fall: {HEALTH_FALL} }}"
        );
        let config = lbd_config(&dir, "bench", &self.lab, &settings, "");
        let lbd = self.start_lbd(&lb, &dir, &config)?;
        let result = self.health_failover_with(&lbd, &settings);
        self.stop_lbd(&lbd);
        // Whatever happened, the victim serves again for what follows.
        for i in 0..REALS {
            if self.nginx[i].is_none() {
                self.start_nginx(i)?;
            }
        }
        result
    }

    fn health_failover_with(&mut self, lbd: &RunningLbd, settings: &str) -> Result<HealthFailover> {
        // Every server up (a check or two done).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            check_stop()?;
            let status: Value =
                serde_json::from_str(&Self::lbctl(&lbd.socket, &["status", "--json"])?)
                    .unwrap_or(Value::Null);
            let up = status["services"][0]["real_servers"]
                .as_array()
                .is_some_and(|rs| rs.iter().all(|r| r["health"] == "up"));
            if up {
                break;
            }
            if Instant::now() >= deadline {
                bail!("lbd never saw every real server up: {status}");
            }
            thread::sleep(Duration::from_millis(100));
        }
        nap(Duration::from_millis(2 * HEALTH_INTERVAL_MS))?;
        let sources: Vec<Ipv4Addr> = self.lab.client_sources()[..48].to_vec();
        let vip = self.vip_addr();
        let placed = in_netns(self.lab.client_ns(), {
            let sources = sources.clone();
            move || {
                sources
                    .iter()
                    .map(|s| (*s, http_get(*s, vip, Duration::from_secs(1))))
                    .collect::<Vec<_>>()
            }
        })?;
        let mut by_server: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for (s, answer) in placed {
            let server = answer.map_err(|e| anyhow!("before the failure, {s}: {e}"))?;
            by_server.entry(server).or_default().push(s);
        }
        let (victim, clients) = by_server
            .iter()
            .max_by_key(|(_, v)| v.len())
            .map(|(k, v)| (k.clone(), v.clone()))
            .ok_or_else(|| anyhow!("no client was served"))?;
        let index = (0..REALS)
            .find(|i| self.lab.real_name(*i) == victim)
            .ok_or_else(|| anyhow!("unknown server {victim}"))?;
        let start = Instant::now();
        self.kill_nginx(index)?;
        let victim_c = victim.clone();
        let clients_c = clients.clone();
        let (first, all) = in_netns(self.lab.client_ns(), move || {
            let mut moved: BTreeMap<Ipv4Addr, Duration> = BTreeMap::new();
            let mut first = None;
            while start.elapsed() < Duration::from_secs(20)
                && moved.len() < clients_c.len()
                && !STOP.load(Ordering::SeqCst)
            {
                for s in &clients_c {
                    if moved.contains_key(s) {
                        continue;
                    }
                    if let Ok(server) = http_get(*s, vip, Duration::from_millis(200)) {
                        if server != victim_c {
                            let at = start.elapsed();
                            moved.insert(*s, at);
                            first.get_or_insert(at);
                        }
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
            let all = (moved.len() == clients_c.len())
                .then(|| moved.values().max().copied())
                .flatten();
            (first, all)
        })?;
        let interval = HEALTH_INTERVAL_MS;
        Ok(HealthFailover {
            settings: settings.to_string(),
            victim,
            clients: clients.len(),
            first_moved_ms: first.map(ms),
            all_moved_ms: all.map(ms),
            expected: format!(
                "{} to {} ms ({} failed checks, {interval} ms apart, each failing at once on a refused connection)",
                (HEALTH_FALL - 1) * interval,
                HEALTH_FALL * interval,
                HEALTH_FALL
            ),
        })
    }
}
