//! Many live clients written straight into a running lbd's affinity table,
//! for tests and benchmarks that need more clients than a lab can send. The
//! keys are table entries only: nothing is ever sent from them.

use std::{net::Ipv4Addr, time::Instant};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapInfo},
    programs::loaded_programs,
};
use lb_common::{Affinity, AffinityKey, Real, Service, ServiceKey};
use lb_userspace::monotonic_ns;

use crate::lab::run;

/// The id of the XDP program attached to `dev` in namespace `ns`.
///
/// # Errors
/// When `ip` fails or no program is attached.
pub fn attached_xdp_id(ns: &str, dev: &str) -> Result<u32, String> {
    let out = run(&["ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev])
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("ip -j link show: {e}"))?;
    v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| {
            v[0]["xdp"]["attached"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|p| p["prog"]["id"].as_u64())
        })
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| format!("no XDP program on {dev} in {ns}: {out}"))
}

/// The map `name` of the lbd attached to `eth0` in `ns`.
///
/// # Errors
/// When there is no such program or map.
pub fn lbd_map(ns: &str, name: &str) -> Result<MapData, String> {
    let prog_id = attached_xdp_id(ns, "eth0")?;
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .ok_or_else(|| format!("lbd's program {prog_id} is gone"))?;
    let id = info
        .map_ids()
        .map_err(|e| e.to_string())?
        .unwrap_or_default()
        .into_iter()
        .find(|id| {
            MapInfo::from_id(*id)
                .ok()
                .is_some_and(|m| m.name_as_str() == Some(name))
        })
        .ok_or_else(|| format!("lbd's program has no {name} map"))?;
    MapData::from_id(id).map_err(|e| e.to_string())
}

/// Writes `n` live clients of the first service of the lbd in `ns`, spread
/// over its servers; returns the seconds it took. `stop` is asked every
/// 65,536 entries whether to give up.
///
/// # Errors
/// A missing map or server, a failed write, or `stop`'s error.
pub fn fill(ns: &str, n: u32, stop: &dyn Fn() -> Result<(), String>) -> Result<f64, String> {
    let e = |e: aya::maps::MapError| e.to_string();
    let services: HashMap<MapData, ServiceKey, Service> =
        HashMap::try_from(Map::HashMap(lbd_map(ns, "SERVICES")?)).map_err(e)?;
    let service = services
        .iter()
        .filter_map(Result::ok)
        .map(|(_, s)| s)
        .next()
        .ok_or("lbd serves nothing")?;
    let reals: Array<MapData, Real> =
        Array::try_from(Map::Array(lbd_map(ns, "REALS")?)).map_err(e)?;
    let servers: Vec<(u32, Real)> = (0..reals.len())
        .filter_map(|i| reals.get(&i, 0).ok().map(|r| (i, r)))
        .filter(|(_, r)| r.address != 0 && u32::from(r.service_id) == service.id)
        .collect();
    if servers.is_empty() {
        return Err("lbd's service has no real server in REALS".into());
    }
    let mut affinity: HashMap<MapData, AffinityKey, Affinity> =
        HashMap::try_from(Map::HashMap(lbd_map(ns, "AFFINITY")?)).map_err(e)?;
    let start = Instant::now();
    let now = monotonic_ns();
    for i in 0..n {
        if i % 65_536 == 0 {
            stop()?;
        }
        let (index, real) = servers[i as usize % servers.len()];
        let key = AffinityKey {
            service_id: service.id,
            client: u32::from(Ipv4Addr::new(198, 19, 0, 0))
                .wrapping_add(i)
                .to_be(),
        };
        let value = Affinity {
            real: index,
            real_address: real.address,
            last_seen_ns: now,
            seen_jiffies: 0,
            sync_pass: 0,
        };
        affinity
            .insert(key, value, 0)
            .map_err(|err| format!("writing entry {i} of {n}: {err}"))?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Marks every client of the lbd in `ns` as seen now, as the data path does
/// for a client that keeps sending (only the time changes); returns how
/// many it touched.
///
/// # Errors
/// A missing map or a failed write.
pub fn touch(ns: &str) -> Result<u64, String> {
    let mut affinity: HashMap<MapData, AffinityKey, Affinity> =
        HashMap::try_from(Map::HashMap(lbd_map(ns, "AFFINITY")?)).map_err(|e| e.to_string())?;
    let keys: Vec<AffinityKey> = affinity.keys().filter_map(Result::ok).collect();
    let now = monotonic_ns();
    let mut touched = 0;
    for key in keys {
        if let Ok(mut value) = affinity.get(&key, 0) {
            value.last_seen_ns = now;
            affinity
                .insert(key, value, 0)
                .map_err(|e| format!("touching an entry: {e}"))?;
            touched += 1;
        }
    }
    Ok(touched)
}
