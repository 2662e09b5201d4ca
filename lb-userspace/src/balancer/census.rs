//! Active clients: live affinity entries counted per real server. An entry
//! is live while within its service's timeout and while its real-server
//! slot still holds the same address and keeps clients.

use std::collections::BTreeMap;

use lb_common::{
    census::{refresh_passes, CensusService},
    Affinity, AffinityKey, MAX_SERVICES,
};

use super::{Balancer, Result};
use crate::dataplane::Maps;
#[cfg(test)]
use lb_common::census::sweepable;

/// Service timeouts and real-server slots, to judge affinity entries.
/// Indexed by service id and real-server index (both small), so judging an
/// entry costs two array reads: a pass reads a million of them a second.
#[derive(Clone, Debug, Default)]
pub struct CensusKey {
    /// Timeout (ns) per service id; `None` for ids not in use.
    timeouts: Vec<Option<u64>>,
    /// (address, keeps clients) per real-server index.
    slots: Vec<Option<(u32, bool)>>,
}

/// `v[i]`, growing `v` to hold it.
fn slot<T: Clone>(v: &mut Vec<Option<T>>, i: u32) -> &mut Option<T> {
    let i = i as usize;
    if v.len() <= i {
        v.resize(i + 1, None);
    }
    &mut v[i]
}

/// How long past its expiry an entry stays before lbd removes it: the data
/// path replaces an expired entry itself when its client comes back, so
/// there is no hurry, and a margin keeps lbd well clear of entries the data
/// path is renewing.
pub const SWEEP_MARGIN_NS: u64 = 5_000_000_000;

/// Entries of a service the key does not name (removed, or added after the
/// key was taken) are removed once unseen for this long.
pub const UNKNOWN_SERVICE_GRACE_NS: u64 = 60_000_000_000;

impl CensusKey {
    /// What the kernel's census knows of each service, by id.
    #[must_use]
    pub fn services(&self) -> Vec<CensusService> {
        (0..MAX_SERVICES)
            .map(|id| match self.timeout(id) {
                Some(timeout_ns) => CensusService {
                    timeout_ns,
                    refresh_passes: refresh_passes(timeout_ns),
                    known: 1,
                },
                None => CensusService::default(),
            })
            .collect()
    }

    /// The timeout of service `id`, if the key knows it.
    #[must_use]
    pub fn timeout(&self, id: u32) -> Option<u64> {
        self.timeouts.get(id as usize).copied().flatten()
    }

    /// The real-server index whose client this entry is, if it is live:
    /// within its service's timeout, for a slot that still holds the same
    /// address and keeps clients.
    #[must_use]
    pub fn live_real(&self, k: &AffinityKey, v: &Affinity, now_ns: u64) -> Option<u32> {
        let timeout = self.timeout(k.service_id)?;
        let live = now_ns.saturating_sub(v.last_seen_ns) <= timeout;
        let valid = self
            .slots
            .get(v.real as usize)
            .copied()
            .flatten()
            .is_some_and(|(address, keeps)| address == v.real_address && keeps);
        (live && valid).then_some(v.real)
    }
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

/// A census being taken: counts in an array by real-server index.
#[derive(Debug, Default)]
pub struct Tally {
    per_real: Vec<u64>,
    live: u64,
    entries: u64,
}

impl Tally {
    /// Counts one entry; returns whether it is live (see [`CensusKey::live_real`]).
    pub fn add(&mut self, key: &CensusKey, k: &AffinityKey, v: &Affinity, now_ns: u64) -> bool {
        self.entries += 1;
        let Some(real) = key.live_real(k, v, now_ns) else {
            return false;
        };
        let i = real as usize;
        if self.per_real.len() <= i {
            self.per_real.resize(i + 1, 0);
        }
        self.per_real[i] += 1;
        self.live += 1;
        true
    }

    /// The counts taken.
    #[must_use]
    pub fn finish(self) -> Census {
        Census {
            per_real: (0_u32..)
                .zip(self.per_real)
                .filter(|(_, n)| *n > 0)
                .collect(),
            live: self.live,
            entries: self.entries,
        }
    }
}

impl<M: Maps> Balancer<M> {
    /// What [`census`] needs to judge affinity entries: each service's
    /// timeout and each real-server slot's address and whether it keeps clients.
    #[must_use]
    pub fn census_key(&self) -> CensusKey {
        let mut key = CensusKey::default();
        for s in self.services.values() {
            *slot(&mut key.timeouts, s.id) = Some(s.timeout_ns());
            for r in &s.reals {
                *slot(&mut key.slots, r.index) =
                    Some((u32::from_ne_bytes(r.address.octets()), r.keeps_clients()));
            }
        }
        key
    }

    /// Live affinity entries ("active clients") per real-server index.
    ///
    /// # Errors
    /// A failed map read.
    pub fn active_clients(&self, now_ns: u64) -> Result<BTreeMap<u32, u64>> {
        let mut tally = Tally::default();
        let key = self.census_key();
        self.maps.for_each_affinity(&mut |k, v| {
            tally.add(&key, k, v, now_ns);
        })?;
        Ok(tally.finish().per_real)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{balancer, THREE};
    use super::*;

    #[test]
    fn only_entries_well_past_their_expiry_or_of_gone_services_are_swept() {
        let b = balancer(&THREE);
        let services = b.census_key().services();
        let state = b.service("web").unwrap_or_else(|e| panic!("{e}"));
        let web = services[state.id as usize];
        assert_eq!(web.timeout_ns, state.timeout_ns());
        let expiry = web.timeout_ns;
        let swept =
            |age, s: &CensusService| sweepable(age, s, SWEEP_MARGIN_NS, UNKNOWN_SERVICE_GRACE_NS);
        assert!(!swept(expiry, &web));
        assert!(!swept(expiry + SWEEP_MARGIN_NS, &web));
        assert!(swept(expiry + SWEEP_MARGIN_NS + 1, &web));
        let gone = services[state.id as usize + 1];
        assert_eq!(gone.known, 0, "no service with that id");
        assert!(!swept(UNKNOWN_SERVICE_GRACE_NS, &gone));
        assert!(swept(UNKNOWN_SERVICE_GRACE_NS + 1, &gone));
    }
}
