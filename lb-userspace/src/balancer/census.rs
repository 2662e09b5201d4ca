//! Active clients: live affinity entries counted per real server. An entry
//! is live while within its service's timeout and while its real-server
//! slot still holds the same address and keeps clients.

use std::collections::BTreeMap;

use lb_common::{Affinity, AffinityKey};

use super::{Balancer, Result};
use crate::dataplane::Maps;

/// Service timeouts and real-server slots, to judge affinity entries.
#[derive(Clone, Debug, Default)]
pub struct CensusKey {
    timeouts: BTreeMap<u32, u64>,
    slots: BTreeMap<u32, (u32, bool)>,
}

/// Live affinity entries, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Live entries per real-server index.
    pub per_real: BTreeMap<u32, u64>,
    /// Live entries in all.
    pub live: u64,
    /// Entries in the table, live or not.
    pub entries: u64,
}

impl Census {
    /// Counts one entry; returns whether it is live (within its timeout, for
    /// a server that still keeps clients).
    pub fn add(&mut self, key: &CensusKey, k: &AffinityKey, v: &Affinity, now_ns: u64) -> bool {
        self.entries += 1;
        let Some(timeout) = key.timeouts.get(&k.service_id) else {
            return false;
        };
        let live = now_ns.saturating_sub(v.last_seen_ns) <= *timeout;
        let valid = key
            .slots
            .get(&v.real)
            .is_some_and(|(address, keeps)| *address == v.real_address && *keeps);
        if live && valid {
            *self.per_real.entry(v.real).or_insert(0) += 1;
            self.live += 1;
        }
        live && valid
    }
}

/// Counts the live entries of an affinity table.
///
/// # Errors
/// A failed map read.
pub fn census(
    scan: &dyn crate::dataplane::AffinityScan,
    key: &CensusKey,
    now_ns: u64,
) -> Result<Census> {
    let mut out = Census::default();
    scan.scan(&mut |k, v| {
        out.add(key, k, v, now_ns);
    })?;
    Ok(out)
}

impl<M: Maps> Balancer<M> {
    /// What [`census`] needs to judge affinity entries: each service's
    /// timeout and each real-server slot's address and whether it keeps clients.
    #[must_use]
    pub fn census_key(&self) -> CensusKey {
        let mut key = CensusKey::default();
        for s in self.services.values() {
            key.timeouts.insert(s.id, s.timeout_ns());
            for r in &s.reals {
                key.slots.insert(
                    r.index,
                    (u32::from_ne_bytes(r.address.octets()), r.keeps_clients()),
                );
            }
        }
        key
    }

    /// Live affinity entries ("active clients") per real-server index.
    ///
    /// # Errors
    /// A failed map read.
    pub fn active_clients(&self, now_ns: u64) -> Result<BTreeMap<u32, u64>> {
        let mut census_out = Census::default();
        let key = self.census_key();
        self.maps.for_each_affinity(&mut |k, v| {
            census_out.add(&key, k, v, now_ns);
        })?;
        Ok(census_out.per_real)
    }
}
