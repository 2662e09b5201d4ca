//! [`FakeMaps`], the data path's maps in memory, so that the control plane
//! is tested without root.

use std::collections::{BTreeMap, HashMap as StdHashMap};

use lb_common::{
    Affinity, AffinityKey, Counters, Globals, Real, Reason, Service, ServiceKey, VipProtocol,
    NO_SERVICE,
};

use super::{next_generation, Maps, Projection, Result};

/// One write to the maps, in the order made (tests check the order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// A real-server slot: its index and flags.
    Real { index: u32, flags: u32 },
    /// A ring slot.
    Ring { slot: u32 },
    /// A service entry: its id and live ring slot.
    Service { id: u32, ring_slot: u32 },
}

/// An in-memory stand-in for [`EbpfMaps`](super::EbpfMaps), for control-plane tests.
#[derive(Clone, Debug, Default)]
pub struct FakeMaps {
    /// Global settings.
    pub globals: Globals,
    /// Real-server slots written.
    pub reals: StdHashMap<u32, Real>,
    /// Rings by slot.
    pub rings: StdHashMap<u32, Vec<u32>>,
    /// Services.
    pub services: StdHashMap<ServiceKey, Service>,
    /// The fragments map.
    pub fragments: BTreeMap<VipProtocol, u16>,
    /// The VIPs answered for.
    pub held_vips: std::collections::BTreeSet<std::net::Ipv4Addr>,
    /// Real-server counters by index.
    pub real_stats: StdHashMap<u32, Counters>,
    /// Affinity entries.
    pub affinity: StdHashMap<AffinityKey, Affinity>,
    /// Flow-cache generation by service id.
    pub generations: BTreeMap<u32, u32>,
    /// Client counts by service id.
    pub client_counts: BTreeMap<u32, u64>,
    /// NAT settings by service id.
    pub nat_services: BTreeMap<u32, lb_common::nat::NatService>,
    /// NAT settings by real-server slot.
    pub nat_reals: BTreeMap<u32, lb_common::nat::NatReal>,
    /// The SNAT addresses.
    pub snat_addresses: std::collections::BTreeSet<std::net::Ipv4Addr>,
    /// Whether a NAT or SNAT service exists.
    pub nat_active: bool,
    /// Slots, rings and services, in the order written.
    pub writes: Vec<Write>,
    /// Taken over ([`Maps::take_over`]): writing what is there is skipped,
    /// as the kernel's maps do.
    pub taken_over: bool,
}

impl Maps for FakeMaps {
    fn set_globals(&mut self, globals: Globals) -> Result<()> {
        self.globals = globals;
        Ok(())
    }
    fn take_over(&mut self) -> Result<Projection> {
        self.taken_over = true;
        let rings = self
            .services
            .values()
            .filter_map(|s| Some((s.ring_slot, self.rings.get(&s.ring_slot)?.clone())))
            .collect();
        Ok(Projection {
            services: self.services.iter().map(|(k, s)| (*k, *s)).collect(),
            reals: self
                .reals
                .iter()
                .filter(|(_, r)| r.address != 0)
                .map(|(i, r)| (*i, *r))
                .collect(),
            rings,
        })
    }
    fn set_real(&mut self, index: u32, real: Real) -> Result<()> {
        if self.taken_over && self.reals.get(&index) == Some(&real) {
            return Ok(());
        }
        let before = self.reals.insert(index, real);
        self.writes.push(Write::Real {
            index,
            flags: real.flags,
        });
        for owner in [before.map(|r| r.service_id), Some(real.service_id)]
            .into_iter()
            .flatten()
        {
            if owner != NO_SERVICE {
                self.flush_flow_cache(u32::from(owner))?;
            }
        }
        Ok(())
    }
    fn set_ring(&mut self, slot: u32, ring: &[u32]) -> Result<()> {
        self.rings.insert(slot, ring.to_vec());
        self.writes.push(Write::Ring { slot });
        Ok(())
    }
    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()> {
        if self.taken_over && self.services.get(&key) == Some(&service) {
            return Ok(());
        }
        self.services.insert(key, service);
        self.writes.push(Write::Service {
            id: service.id,
            ring_slot: service.ring_slot,
        });
        self.flush_flow_cache(service.id)
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        match self.services.remove(key) {
            Some(service) => self.flush_flow_cache(service.id),
            None => Ok(()),
        }
    }
    fn set_fragments(&mut self, targets: &BTreeMap<VipProtocol, u16>) -> Result<()> {
        self.fragments = targets.clone();
        Ok(())
    }
    fn set_nat_service(&mut self, service_id: u32, nat: lb_common::nat::NatService) -> Result<()> {
        self.nat_services.insert(service_id, nat);
        Ok(())
    }
    fn set_nat_real(&mut self, index: u32, nat: lb_common::nat::NatReal) -> Result<()> {
        self.nat_reals.insert(index, nat);
        Ok(())
    }
    fn set_snat_addresses(
        &mut self,
        addresses: &std::collections::BTreeSet<std::net::Ipv4Addr>,
    ) -> Result<()> {
        self.snat_addresses.clone_from(addresses);
        Ok(())
    }
    fn set_nat_active(&mut self, on: bool) -> Result<()> {
        self.nat_active = on;
        Ok(())
    }
    fn set_held_vips(
        &mut self,
        vips: &std::collections::BTreeSet<std::net::Ipv4Addr>,
    ) -> Result<()> {
        self.held_vips.clone_from(vips);
        Ok(())
    }
    fn reset_real_counters(&mut self, index: u32) -> Result<()> {
        self.real_stats.remove(&index);
        Ok(())
    }
    fn real_counters(&self, index: u32) -> Result<Counters> {
        Ok(self.real_stats.get(&index).copied().unwrap_or_default())
    }
    fn reasons(&self) -> Result<Vec<u64>> {
        Ok(vec![0; Reason::ALL.len()])
    }
    fn affinity(&self, key: &AffinityKey) -> Result<Option<Affinity>> {
        Ok(self.affinity.get(key).copied())
    }
    fn for_each_affinity(&self, f: &mut dyn FnMut(&AffinityKey, &Affinity)) -> Result<()> {
        self.affinity.iter().for_each(|(k, v)| f(k, v));
        Ok(())
    }
    fn set_affinities(&mut self, entries: &[(AffinityKey, Affinity)]) -> Result<usize> {
        for (key, value) in entries {
            if self.affinity.insert(*key, *value).is_none() {
                *self.client_counts.entry(key.service_id).or_insert(0) += 1;
            }
            self.flush_flow_cache(key.service_id)?;
        }
        Ok(0)
    }
    fn client_count(&self, service_id: u32) -> u64 {
        self.client_counts.get(&service_id).copied().unwrap_or(0)
    }
    fn reset_client_count(&mut self, service_id: u32) {
        self.client_counts.insert(service_id, 0);
    }
    fn flush_flow_cache(&mut self, service_id: u32) -> Result<()> {
        let generation = self.generations.entry(service_id).or_insert(0);
        *generation = next_generation(*generation);
        Ok(())
    }
    fn disable_flow_cache(&mut self, service_id: u32) -> Result<()> {
        self.generations.insert(service_id, 0);
        Ok(())
    }
}
