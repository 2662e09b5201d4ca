//! [`EbpfMaps`]: the XDP program's maps behind the [`Maps`] trait, with the
//! Maglev ring array mapped into this process. What was written is
//! remembered, so writing the same again costs nothing and empties no
//! cache (a reload, or a data path taken over from an earlier lbd).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray, PerCpuValues},
    Ebpf,
};
use lb_common::{
    Affinity, AffinityKey, Counters, Globals, Real, Reason, ReasonCounters, Service, ServiceKey,
    VipProtocol, MAX_REALS, MAX_SERVICES, NO_SERVICE,
};

use super::{
    mapped::{ArpLease, ClientCounts, RingMemory},
    next_generation, DataplaneError, Maps, Projection, Result,
};

/// `BPF_NOEXIST`: insert only where there is no entry.
const BPF_NOEXIST: u64 = 1;
/// `EEXIST` and `E2BIG`, as a hash map's insert answers them.
const EEXIST: i32 = 17;
pub(super) const E2BIG: i32 = 7;

/// Walks the affinity table in batches ([`super::batch`]), or one entry
/// at a time where the kernel has no batched lookups.
fn scan_map(
    map: &HashMap<MapData, AffinityKey, Affinity>,
    f: &mut dyn FnMut(&AffinityKey, &Affinity),
) -> Result<()> {
    use std::os::fd::AsFd as _;
    static NO_BATCHES: std::sync::Once = std::sync::Once::new();
    match super::raw_bpf::for_each(map.map().fd().as_fd(), f) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => NO_BATCHES.call_once(|| {
            log::info!("this kernel has no batched map lookups: the affinity table is walked one entry at a time");
        }),
        Err(source) => {
            return Err(DataplaneError::Raw {
                what: "map AFFINITY: batched lookup",
                source,
            })
        }
    }
    for entry in map {
        match entry {
            Ok((key, value)) => f(&key, &value),
            // An entry removed between listing and reading is simply gone.
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
            Err(e) => return Err(map_error("AFFINITY")(e)),
        }
    }
    Ok(())
}

fn get_entry(
    map: &HashMap<MapData, AffinityKey, Affinity>,
    key: AffinityKey,
) -> Result<Option<Affinity>> {
    match map.get(&key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(None),
        Err(e) => Err(map_error("AFFINITY")(e)),
    }
}

/// The kernel's maps, taken from a loaded [`Program`].
pub struct EbpfMaps {
    services: HashMap<MapData, ServiceKey, Service>,
    rings: RingMemory,
    reals: Array<MapData, Real>,
    affinity: HashMap<MapData, AffinityKey, Affinity>,
    client_counts: Arc<ClientCounts>,
    generations: Array<MapData, u32>,
    fragments: HashMap<MapData, VipProtocol, u16>,
    /// The VIPs the data path answers ARP for (`HELD_VIPS`).
    held_vips: HashMap<MapData, u32, u8>,
    /// What `held_vips` holds.
    held_vips_written: BTreeSet<Ipv4Addr>,
    real_stats: PerCpuArray<MapData, Counters>,
    reasons: PerCpuArray<MapData, ReasonCounters>,
    globals: Array<MapData, Globals>,
    /// What `generations` holds, so a generation is bumped without a read.
    generations_written: Vec<u32>,
    /// What each real-server slot holds.
    reals_written: StdHashMap<u32, Real>,
    /// What each service entry holds.
    services_written: StdHashMap<ServiceKey, Service>,
    /// The node's ARP lease, mapped.
    arp_lease: Arc<ArpLease>,
    /// What `fragments` holds.
    fragments_written: BTreeMap<VipProtocol, u16>,
    /// The NAT and SNAT maps.
    nat: super::NatMaps,
}

pub(super) fn map_error(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

fn sum(values: &PerCpuValues<Counters>) -> Counters {
    values.iter().fold(Counters::default(), |acc, c| Counters {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
        new_clients: acc.new_clients + c.new_clients,
    })
}

fn zeroes() -> Result<PerCpuValues<Counters>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::PerCpu(e))?;
    PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(DataplaneError::PerCpu)
}

/// The errno of a failed map syscall, if that is what `error` is.
pub(super) fn errno(error: &MapError) -> Option<i32> {
    match error {
        MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

impl EbpfMaps {
    /// Takes the control plane's maps out of a loaded object.
    ///
    /// # Errors
    /// When a map is missing or of the wrong kind (a stale object).
    pub(super) fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        let nat = super::NatMaps::take_from(ebpf)?;
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        Ok(EbpfMaps {
            services: HashMap::try_from(take("SERVICES")?).map_err(map_error("SERVICES"))?,
            rings: RingMemory::map(take("MAGLEV_RINGS")?)?,
            reals: Array::try_from(take("REALS")?).map_err(map_error("REALS"))?,
            affinity: HashMap::try_from(take("AFFINITY")?).map_err(map_error("AFFINITY"))?,
            client_counts: Arc::new(ClientCounts::map(take("CLIENT_COUNTS")?)?),
            generations: Array::try_from(take("FLOW_GENERATIONS")?)
                .map_err(map_error("FLOW_GENERATIONS"))?,
            fragments: HashMap::try_from(take("FRAGMENTS")?).map_err(map_error("FRAGMENTS"))?,
            held_vips: HashMap::try_from(take("HELD_VIPS")?).map_err(map_error("HELD_VIPS"))?,
            real_stats: PerCpuArray::try_from(take("REAL_STATS")?)
                .map_err(map_error("REAL_STATS"))?,
            reasons: PerCpuArray::try_from(take("REASONS")?).map_err(map_error("REASONS"))?,
            globals: Array::try_from(take("GLOBALS")?).map_err(map_error("GLOBALS"))?,
            arp_lease: Arc::new(ArpLease::map(take("ARP_LEASE")?)?),
            generations_written: vec![0; MAX_SERVICES as usize],
            reals_written: StdHashMap::new(),
            services_written: StdHashMap::new(),
            fragments_written: BTreeMap::new(),
            held_vips_written: BTreeSet::new(),
            nat,
        })
    }

    /// The NAT and SNAT maps.
    #[must_use]
    pub fn nat(&self) -> &super::NatMaps {
        &self.nat
    }

    /// The NAT and SNAT maps, to write.
    pub fn nat_mut(&mut self) -> &mut super::NatMaps {
        &mut self.nat
    }

    /// The node's ARP lease, for the thread that renews it.
    #[must_use]
    pub fn arp_lease(&self) -> Arc<ArpLease> {
        Arc::clone(&self.arp_lease)
    }

    fn set_generation(&mut self, service_id: u32, generation: u32) -> Result<()> {
        if service_id >= MAX_SERVICES {
            return Ok(());
        }
        self.generations
            .set(service_id, generation, 0)
            .map_err(map_error("FLOW_GENERATIONS"))?;
        if let Some(written) = self.generations_written.get_mut(service_id as usize) {
            *written = generation;
        }
        Ok(())
    }

    /// The client counts, shared with the affinity scanner.
    #[must_use]
    pub fn client_counts(&self) -> Arc<ClientCounts> {
        Arc::clone(&self.client_counts)
    }
}

impl Maps for EbpfMaps {
    fn set_globals(&mut self, globals: Globals) -> Result<()> {
        self.globals
            .set(0, globals, 0)
            .map_err(map_error("GLOBALS"))
    }

    fn take_over(&mut self) -> Result<Projection> {
        let mut projection = Projection::default();
        for entry in &self.services {
            let (key, service) = entry.map_err(map_error("SERVICES"))?;
            projection.services.push((key, service));
            self.services_written.insert(key, service);
            projection
                .rings
                .insert(service.ring_slot, self.rings.read(service.ring_slot)?);
        }
        for index in 1..MAX_REALS {
            let real = self.reals.get(&index, 0).map_err(map_error("REALS"))?;
            if real.address != 0 {
                projection.reals.insert(index, real);
                self.reals_written.insert(index, real);
            }
        }
        for id in 0..MAX_SERVICES {
            let generation = self
                .generations
                .get(&id, 0)
                .map_err(map_error("FLOW_GENERATIONS"))?;
            if let Some(written) = self.generations_written.get_mut(id as usize) {
                *written = generation;
            }
        }
        for entry in &self.fragments {
            let (target, port) = entry.map_err(map_error("FRAGMENTS"))?;
            self.fragments_written.insert(target, port);
        }
        for entry in self.held_vips.keys() {
            let vip = entry.map_err(map_error("HELD_VIPS"))?;
            self.held_vips_written
                .insert(Ipv4Addr::from(vip.to_ne_bytes()));
        }
        Ok(projection)
    }

    fn flush_flow_cache(&mut self, service_id: u32) -> Result<()> {
        let current = self
            .generations_written
            .get(service_id as usize)
            .copied()
            .unwrap_or(0);
        self.set_generation(service_id, next_generation(current))
    }

    fn disable_flow_cache(&mut self, service_id: u32) -> Result<()> {
        self.set_generation(service_id, 0)
    }

    fn set_real(&mut self, index: u32, real: Real) -> Result<()> {
        if self.reals_written.get(&index) == Some(&real) {
            return Ok(());
        }
        self.reals.set(index, real, 0).map_err(map_error("REALS"))?;
        let before = self.reals_written.insert(index, real).map(|r| r.service_id);
        for owner in [before, Some(real.service_id)].into_iter().flatten() {
            if owner != NO_SERVICE {
                self.flush_flow_cache(u32::from(owner))?;
            }
        }
        Ok(())
    }

    fn set_ring(&mut self, slot: u32, ring: &[u32]) -> Result<()> {
        self.rings.write(slot, ring)
    }

    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()> {
        if self.services_written.get(&key) == Some(&service) {
            return Ok(());
        }
        self.services
            .insert(key, service, 0)
            .map_err(map_error("SERVICES"))?;
        self.services_written.insert(key, service);
        self.flush_flow_cache(service.id)
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        match self.services.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
            Err(e) => return Err(map_error("SERVICES")(e)),
        }
        match self.services_written.remove(key) {
            Some(service) => self.flush_flow_cache(service.id),
            None => Ok(()),
        }
    }

    fn set_fragments(&mut self, targets: &BTreeMap<VipProtocol, u16>) -> Result<()> {
        for (target, port) in targets {
            if self.fragments_written.get(target) != Some(port) {
                self.fragments
                    .insert(target, port, 0)
                    .map_err(map_error("FRAGMENTS"))?;
            }
        }
        let gone: Vec<VipProtocol> = self
            .fragments_written
            .keys()
            .filter(|t| !targets.contains_key(t))
            .copied()
            .collect();
        for target in &gone {
            match self.fragments.remove(target) {
                Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
                Err(e) => return Err(map_error("FRAGMENTS")(e)),
            }
        }
        self.fragments_written = targets.clone();
        Ok(())
    }

    fn set_nat_service(&mut self, service_id: u32, nat: lb_common::nat::NatService) -> Result<()> {
        self.nat.set_service(service_id, nat)
    }

    fn set_nat_real(&mut self, index: u32, nat: lb_common::nat::NatReal) -> Result<()> {
        self.nat.set_real(index, nat)
    }

    fn set_snat_addresses(&mut self, addresses: &BTreeSet<Ipv4Addr>) -> Result<()> {
        self.nat.set_snat_addresses(addresses)
    }

    fn set_nat_active(&mut self, on: bool) -> Result<()> {
        self.nat.set_active(on)
    }

    fn set_held_vips(&mut self, vips: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let key = |vip: &Ipv4Addr| u32::from_ne_bytes(vip.octets());
        // Gone first: a VIP given up is answered no longer before any other
        // change.
        for vip in self.held_vips_written.difference(vips) {
            match self.held_vips.remove(&key(vip)) {
                Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
                Err(e) => return Err(map_error("HELD_VIPS")(e)),
            }
        }
        for vip in vips.difference(&self.held_vips_written) {
            self.held_vips
                .insert(key(vip), 1, 0)
                .map_err(map_error("HELD_VIPS"))?;
        }
        self.held_vips_written.clone_from(vips);
        Ok(())
    }

    fn reset_real_counters(&mut self, index: u32) -> Result<()> {
        self.real_stats
            .set(index, zeroes()?, 0)
            .map_err(map_error("REAL_STATS"))
    }

    fn real_counters(&self, index: u32) -> Result<Counters> {
        Ok(sum(&self
            .real_stats
            .get(&index, 0)
            .map_err(map_error("REAL_STATS"))?))
    }

    fn reasons(&self) -> Result<Vec<u64>> {
        let per_cpu = self.reasons.get(&0, 0).map_err(map_error("REASONS"))?;
        let mut total = vec![0_u64; Reason::ALL.len()];
        for cpu in per_cpu.iter() {
            for (sum, n) in total.iter_mut().zip(cpu.counts) {
                *sum += n;
            }
        }
        Ok(total)
    }

    fn affinity(&self, key: &AffinityKey) -> Result<Option<Affinity>> {
        get_entry(&self.affinity, *key)
    }

    fn for_each_affinity(&self, f: &mut dyn FnMut(&AffinityKey, &Affinity)) -> Result<()> {
        scan_map(&self.affinity, f)
    }

    fn set_affinities(&mut self, entries: &[(AffinityKey, Affinity)]) -> Result<usize> {
        let mut full = 0;
        let mut services = std::collections::BTreeSet::new();
        let mut written = Ok(());
        for (key, value) in entries {
            services.insert(key.service_id);
            match self.affinity.insert(key, value, BPF_NOEXIST) {
                Ok(()) => self.client_counts.add(key.service_id, 1),
                Err(e) if errno(&e) == Some(EEXIST) => {
                    if let Err(e) = self.affinity.insert(key, value, 0) {
                        written = Err(map_error("AFFINITY")(e));
                        break;
                    }
                }
                Err(e) if errno(&e) == Some(E2BIG) => full += 1,
                Err(e) => {
                    written = Err(map_error("AFFINITY")(e));
                    break;
                }
            }
        }
        // Also after a failure: the entries written before it count.
        for service_id in services {
            self.flush_flow_cache(service_id)?;
        }
        written.map(|()| full)
    }

    fn client_count(&self, service_id: u32) -> u64 {
        self.client_counts.get(service_id)
    }

    fn reset_client_count(&mut self, service_id: u32) {
        self.client_counts.reset(service_id);
    }
}
