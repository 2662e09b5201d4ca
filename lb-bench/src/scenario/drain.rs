//! `lbctl drain` / `online` against a running lbd: the time to the change
//! of its `SERVICES` map, and lbctl's own run time.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use lb_common::{Service, ServiceKey};
use lb_tests::paths;

use crate::{
    lab::{files::lbd_config, BenchLab},
    signal::{check_stop, nap},
    stats::ms,
};

impl BenchLab {
    /// `lbctl drain` / `online` to the SERVICES entry's ring switch, `n` times.
    pub(crate) fn drain_timing(&mut self, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        let lb = self.lab.lb_ns().to_string();
        let dir = self.lab.dir().join("lbd-drain");
        let config = lbd_config(&dir, "bench", &self.lab, "{ type: none }", "");
        let lbd = self.start_lbd(&lb, &dir, &config)?;
        let result = (|| -> Result<(Vec<f64>, Vec<f64>)> {
            let data = lb_tests::affinity::lbd_map(&lb, "SERVICES").map_err(|e| anyhow!(e))?;
            let map: aya::maps::HashMap<aya::maps::MapData, ServiceKey, Service> =
                aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))?;
            let slot = || -> Option<u32> {
                map.iter()
                    .filter_map(Result::ok)
                    .map(|(_, s)| s.ring_slot)
                    .next()
            };
            let mut to_map = Vec::new();
            let mut lbctl_wall = Vec::new();
            for k in 0..n {
                check_stop()?;
                let verb = if k % 2 == 0 { "drain" } else { "online" };
                let before = slot().ok_or_else(|| anyhow!("the SERVICES map is empty"))?;
                let start = Instant::now();
                let mut child = Command::new(paths::lbctl())
                    .arg("--socket")
                    .arg(&lbd.socket)
                    .args([verb, "web", "rs1"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("running lbctl")?;
                let mut changed = None;
                let mut exited = None;
                while start.elapsed() < Duration::from_secs(5)
                    && (changed.is_none() || exited.is_none())
                {
                    if changed.is_none() && slot().is_some_and(|s| s != before) {
                        changed = Some(start.elapsed());
                    }
                    if exited.is_none() {
                        if let Some(status) = child.try_wait()? {
                            if !status.success() {
                                bail!("lbctl {verb} web rs1 failed ({status})");
                            }
                            exited = Some(start.elapsed());
                        }
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
                let changed = changed
                    .ok_or_else(|| anyhow!("lbctl {verb}: the map did not change within 5 s"))?;
                to_map.push(ms(changed));
                if let Some(e) = exited {
                    lbctl_wall.push(ms(e));
                }
                nap(Duration::from_millis(200))?;
            }
            Ok((to_map, lbctl_wall))
        })();
        self.stop_lbd(&lbd);
        result
    }
}
