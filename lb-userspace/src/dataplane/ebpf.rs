//! The kernel side: the aya-backed XDP [`Program`] (load, verify, attach)
//! and [`EbpfMaps`], its maps behind the [`Maps`] trait, with the Maglev ring
//! array mapped into this process and a second handle on the affinity table
//! for background scans.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
    Ebpf,
};
use lb_common::{
    Affinity, AffinityKey, Counters, Globals, Real, Reason, ReasonCounters, Service, ServiceKey,
    VipProtocol, MAX_SERVICES, NO_SERVICE,
};

use super::{
    census::EbpfCensus,
    mapped::{CensusCounts, ClientCounts, RingMemory},
    next_generation, DataplaneError, Maps, Result,
};

/// `BPF_NOEXIST`: insert only where there is no entry.
const BPF_NOEXIST: u64 = 1;
/// `EEXIST` and `E2BIG`, as a hash map's insert answers them.
const EEXIST: i32 = 17;
const E2BIG: i32 = 7;

/// The compiled XDP object, embedded at build time by `build.rs` from
/// `cargo xtask build-ebpf`'s output (empty when it was not built).
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// Name of the XDP entry point in the object.
const PROGRAM_NAME: &str = "lb_xdp";
/// Name of the census program (run by lbd, never attached).
const CENSUS_NAME: &str = "lb_census";

/// How the program is attached (the configuration's `xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (fast path); fails where the driver has no XDP support.
    Native,
    /// In the generic networking path (works everywhere, slower).
    Generic,
    /// Native, else generic with a warning.
    Auto,
}

/// The loaded XDP program, attached to one interface while it lives.
pub struct Program {
    ebpf: Ebpf,
    attached_mode: Option<&'static str>,
}

impl Program {
    /// Loads the embedded object into the kernel (maps created, program
    /// verified) without attaching it.
    ///
    /// # Errors
    /// When the object is missing or the kernel refuses it.
    pub fn load() -> Result<Self> {
        if PROGRAM_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        Self::load_bytes(PROGRAM_OBJECT)
    }

    /// Loads an object from bytes (the tests load the same embedded object).
    ///
    /// # Errors
    /// When the kernel refuses the object.
    pub fn load_bytes(object: &[u8]) -> Result<Self> {
        let mut ebpf = Ebpf::load(object).map_err(DataplaneError::Load)?;
        let program = Self::xdp(&mut ebpf)?;
        program.load().map_err(|source| DataplaneError::Program {
            what: "the kernel's verifier refused the XDP program".into(),
            source,
        })?;
        let census = Self::census_program(&mut ebpf)?;
        census.load().map_err(|source| DataplaneError::Program {
            what: "the kernel's verifier refused the census program".into(),
            source,
        })?;
        Ok(Self {
            ebpf,
            attached_mode: None,
        })
    }

    /// The embedded object, for tests that load it themselves.
    #[must_use]
    pub fn object() -> &'static [u8] {
        PROGRAM_OBJECT
    }

    fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
        ebpf.program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or(DataplaneError::Missing("XDP program lb_xdp"))
    }

    fn census_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
        ebpf.program_mut(CENSUS_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or(DataplaneError::Missing("census program lb_census"))
    }

    /// The census (program and maps), for the thread that runs it;
    /// `client_counts` are the data path's, which it keeps true as it
    /// removes entries.
    ///
    /// # Errors
    /// When a map is missing (a stale object) or a descriptor cannot be had.
    pub fn census(&mut self, client_counts: Arc<ClientCounts>) -> Result<EbpfCensus> {
        let program = Self::census_program(&mut self.ebpf)?
            .fd()
            .map_err(|source| DataplaneError::Program {
                what: "the census program".into(),
                source,
            })?
            .try_clone()
            .map_err(|source| DataplaneError::Raw {
                what: "duplicating the census program's descriptor",
                source,
            })?;
        let mut take = |name: &'static str| {
            self.ebpf
                .take_map(name)
                .ok_or(DataplaneError::Missing(name))
        };
        Ok(EbpfCensus {
            program,
            services: Array::try_from(take("CENSUS_SERVICES")?)
                .map_err(map_error("CENSUS_SERVICES"))?,
            written: vec![lb_common::census::CensusService::default(); MAX_SERVICES as usize],
            orders: Array::try_from(take("CENSUS_RUN")?).map_err(map_error("CENSUS_RUN"))?,
            counts: CensusCounts::map(take("CENSUS_COUNTS")?)?,
            stream: aya::maps::RingBuf::try_from(take("STREAM_OUT")?)
                .map_err(map_error("STREAM_OUT"))?,
            new_entries: aya::maps::RingBuf::try_from(take("NEW_ENTRIES")?)
                .map_err(map_error("NEW_ENTRIES"))?,
            client_counts,
        })
    }

    /// The loaded program, for `test_run`.
    ///
    /// # Errors
    /// Never for an object this crate built.
    pub fn xdp_program(&mut self) -> Result<&mut Xdp> {
        Self::xdp(&mut self.ebpf)
    }

    /// Attaches the program to `interface`. Returns the mode used ("native" or
    /// "generic"); the program stays attached until this value is dropped.
    ///
    /// # Errors
    /// When the interface does not exist or already has an XDP program.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<&'static str> {
        let program = Self::xdp(&mut self.ebpf)?;
        let attempt = |program: &mut Xdp, xdp_mode: XdpMode, name: &'static str| {
            program
                .attach(interface, xdp_mode)
                .map(|_| name)
                .map_err(|source| DataplaneError::Program {
                    what: format!(
                        "cannot attach the XDP program to {interface} in {name} mode (does the \
                         interface exist, and is no other XDP program attached? \
                         `ip link show dev {interface}` tells; `ip link set dev {interface} xdp off` \
                         removes a leftover)"
                    ),
                    source,
                })
        };
        let used = match mode {
            AttachMode::Native => attempt(program, XdpMode::Driver, "native")?,
            AttachMode::Generic => attempt(program, XdpMode::Skb, "generic")?,
            AttachMode::Auto => match attempt(program, XdpMode::Driver, "native") {
                Ok(used) => used,
                Err(error) => {
                    log::warn!("{error}; falling back to generic mode, which is slower");
                    attempt(program, XdpMode::Skb, "generic")?
                }
            },
        };
        self.attached_mode = Some(used);
        Ok(used)
    }

    /// Detaches the program from its interface (also done on drop).
    pub fn detach(&mut self) {
        if self.attached_mode.take().is_some() {
            if let Ok(program) = Self::xdp(&mut self.ebpf) {
                // Unloading closes every link the program holds.
                if let Err(error) = program.unload() {
                    log::warn!("detaching the XDP program: {error}");
                }
            }
        }
    }

    /// Takes the maps out of the object, for the control plane to fill.
    ///
    /// # Errors
    /// When a map is missing or of the wrong kind (a stale object).
    pub fn take_maps(&mut self) -> Result<EbpfMaps> {
        let mut take = |name: &'static str| {
            self.ebpf
                .take_map(name)
                .ok_or(DataplaneError::Missing(name))
        };
        let map_err = |map: &'static str| move |source| DataplaneError::Map { map, source };
        Ok(EbpfMaps {
            services: HashMap::try_from(take("SERVICES")?).map_err(map_err("SERVICES"))?,
            rings: RingMemory::map(take("MAGLEV_RINGS")?)?,
            reals: Array::try_from(take("REALS")?).map_err(map_err("REALS"))?,
            affinity: HashMap::try_from(take("AFFINITY")?).map_err(map_err("AFFINITY"))?,
            client_counts: Arc::new(ClientCounts::map(take("CLIENT_COUNTS")?)?),
            generations: Array::try_from(take("FLOW_GENERATIONS")?)
                .map_err(map_err("FLOW_GENERATIONS"))?,
            fragments: HashMap::try_from(take("FRAGMENTS")?).map_err(map_err("FRAGMENTS"))?,
            held_vips: HashMap::try_from(take("HELD_VIPS")?).map_err(map_err("HELD_VIPS"))?,
            real_stats: PerCpuArray::try_from(take("REAL_STATS")?)
                .map_err(map_err("REAL_STATS"))?,
            reasons: PerCpuArray::try_from(take("REASONS")?).map_err(map_err("REASONS"))?,
            globals: Array::try_from(take("GLOBALS")?).map_err(map_err("GLOBALS"))?,
            generations_written: vec![0; MAX_SERVICES as usize],
            slot_owners: StdHashMap::new(),
            service_ids: StdHashMap::new(),
            fragments_written: BTreeMap::new(),
            held_vips_written: BTreeSet::new(),
        })
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.detach();
    }
}

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
    /// The service id each real-server slot was last written with.
    slot_owners: StdHashMap<u32, u16>,
    /// The id of each service written.
    service_ids: StdHashMap<ServiceKey, u32>,
    /// What `fragments` holds.
    fragments_written: BTreeMap<VipProtocol, u16>,
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
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
fn errno(error: &MapError) -> Option<i32> {
    match error {
        MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

impl EbpfMaps {
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
        self.reals.set(index, real, 0).map_err(map_error("REALS"))?;
        let before = self.slot_owners.insert(index, real.service_id);
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
        self.services
            .insert(key, service, 0)
            .map_err(map_error("SERVICES"))?;
        self.service_ids.insert(key, service.id);
        self.flush_flow_cache(service.id)
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        match self.services.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
            Err(e) => return Err(map_error("SERVICES")(e)),
        }
        match self.service_ids.remove(key) {
            Some(id) => self.flush_flow_cache(id),
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
