//! The maps' locked memory with many persistence entries written, and
//! whether the first of them still counts after the fill.

use std::{collections::BTreeMap, fs, net::Ipv4Addr, time::Instant};

use anyhow::{anyhow, Result};
use lb_common::Affinity;
use lb_userspace::{
    balancer::Balancer,
    config::Config,
    dataplane::{Maps as _, Program},
    monotonic_ns,
};

use crate::{
    scenario::packet::{small_config, BENCH_REALS, LB_MAC},
    signal::check_stop,
    stats::ms,
};

/// memlock of every map this process holds, by map id.
fn memlock_by_map_id() -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for entry in dir.flatten() {
        let info = fs::read_to_string(entry.path()).unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            if let (Ok(id), Ok(bytes)) = (id.parse(), bytes.parse()) {
                out.insert(id, bytes);
            }
        }
    }
    out
}

/// Locked bytes per map, (entries, ms to write them), first entry kept.
pub(crate) type AffinityMemory = (Vec<(String, u64)>, (u32, f64), bool);

pub(crate) fn affinity_memory(fill: u32) -> Result<AffinityMemory> {
    let mut program = Program::load_bytes(Program::object()).map_err(|e| anyhow!("{e}"))?;
    let map_ids = program
        .xdp_program()
        .map_err(|e| anyhow!("{e}"))?
        .info()?
        .map_ids()?
        .unwrap_or_default();
    let maps = program.take_maps().map_err(|e| anyhow!("{e}"))?;
    let mut balancer = Balancer::new(maps, LB_MAC).map_err(|e| anyhow!("{e}"))?;
    let config = Config::from_yaml(&small_config(), "bench.yaml").map_err(|e| anyhow!("{e}"))?;
    balancer.apply(&config).map_err(|e| anyhow!("{e}"))?;
    // Resolved, as in a lab: an unresolved server keeps no clients.
    for real in BENCH_REALS {
        balancer
            .set_mac(real, Some(LB_MAC))
            .map_err(|e| anyhow!("{e}"))?;
    }
    let web = balancer.service("web").map_err(|e| anyhow!("{e}"))?.clone();
    let rs1 = web
        .reals
        .first()
        .ok_or_else(|| anyhow!("no real server"))?
        .clone();
    let now = monotonic_ns();
    let start = Instant::now();
    for i in 0..fill {
        if i % 65_536 == 0 {
            check_stop()?;
        }
        let key = web.client_key(Ipv4Addr::from(0x0a00_0000 + i));
        let value = Affinity {
            real: rs1.index,
            real_address: u32::from_ne_bytes(rs1.address.octets()),
            last_seen_ns: now,
            seen_jiffies: 0,
            sync_pass: 0,
        };
        balancer
            .maps_mut()
            .set_affinity(key, value)
            .map_err(|e| anyhow!("affinity entry {i}: {e}"))?;
    }
    let took = ms(start.elapsed());
    let first_kept = {
        let active = balancer
            .active_clients(monotonic_ns())
            .map_err(|e| anyhow!("{e}"))?;
        active.get(&rs1.index).copied() == Some(u64::from(fill))
    };
    let memlock = memlock_by_map_id();
    let mut by_name = Vec::new();
    for id in map_ids {
        let name = aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|m| m.name_as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("map {id}"));
        if let Some(bytes) = memlock.get(&id) {
            by_name.push((name, *bytes));
        }
    }
    by_name.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    Ok((by_name, (fill, took), first_kept))
}
