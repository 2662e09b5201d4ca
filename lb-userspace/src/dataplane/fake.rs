//! [`FakeMaps`], the data path's maps in memory, so that the control plane
//! is tested without root.

use std::collections::HashMap as StdHashMap;

use lb_common::{Affinity, AffinityKey, Counters, Globals, Real, Reason, Service, ServiceKey};

use super::{next_generation, AffinityScan, Maps, Result};

/// An in-memory stand-in for [`EbpfMaps`](super::EbpfMaps), for control-plane tests.
#[derive(Debug, Default)]
pub struct FakeMaps {
    /// Global settings.
    pub globals: Globals,
    /// Real-server slots written.
    pub reals: StdHashMap<u32, Real>,
    /// Rings by slot.
    pub rings: StdHashMap<u32, Vec<u32>>,
    /// Services.
    pub services: StdHashMap<ServiceKey, Service>,
    /// Real-server counters by index.
    pub real_stats: StdHashMap<u32, Counters>,
    /// Affinity entries.
    pub affinity: StdHashMap<AffinityKey, Affinity>,
}

impl Maps for FakeMaps {
    fn set_globals(&mut self, globals: Globals) -> Result<()> {
        self.globals = globals;
        Ok(())
    }
    fn set_real(&mut self, index: u32, real: Real) -> Result<()> {
        self.reals.insert(index, real);
        self.flush_flow_cache()
    }
    fn set_ring(&mut self, slot: u32, ring: &[u32]) -> Result<()> {
        self.rings.insert(slot, ring.to_vec());
        Ok(())
    }
    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()> {
        self.services.insert(key, service);
        self.flush_flow_cache()
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.services.remove(key);
        self.flush_flow_cache()
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
    fn affinity_scanner(&self) -> Result<Box<dyn AffinityScan>> {
        Ok(Box::new(FakeAffinity(self.affinity.clone())))
    }
    fn set_affinities(&mut self, entries: &[(AffinityKey, Affinity)]) -> Result<()> {
        self.affinity.extend(entries.iter().copied());
        self.flush_flow_cache()
    }
    fn flush_flow_cache(&mut self) -> Result<()> {
        self.globals.flow_generation = next_generation(self.globals.flow_generation);
        Ok(())
    }
}

/// A copy of a [`FakeMaps`] affinity table.
struct FakeAffinity(StdHashMap<AffinityKey, Affinity>);

impl AffinityScan for FakeAffinity {
    fn scan(&self, f: &mut dyn FnMut(&AffinityKey, &Affinity)) -> Result<()> {
        self.0.iter().for_each(|(k, v)| f(k, v));
        Ok(())
    }
}
