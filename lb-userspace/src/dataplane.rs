//! The XDP program and its maps: the only code that touches aya.
//!
//! [`Maps`] is the narrow interface the control plane writes through;
//! [`EbpfMaps`] implements it over the kernel's maps and [`FakeMaps`] in
//! memory, so the control plane is tested without root. [`Program`] loads
//! and attaches the XDP program itself.

use std::{
    collections::HashMap as StdHashMap,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{fence, Ordering},
};

use aya::{
    maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError,
};
use lb_common::{
    ring_index, Affinity, AffinityKey, Counters, Globals, Real, Reason, ReasonCounters, Service,
    ServiceKey, MAGLEV_RING_SLOTS,
};
use memmap2::{MmapMut, MmapOptions};

/// The compiled XDP object, embedded at build time by `build.rs` from
/// `cargo xtask build-ebpf`'s output (empty when it was not built).
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// Name of the XDP entry point in the object.
const PROGRAM_NAME: &str = "lb_xdp";

/// Errors of the data path.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The binary was built without the XDP object.
    #[error("this lbd was built without its XDP program: run `cargo xtask build` (which builds lb-ebpf first)")]
    NoObject,
    /// The kernel refused the object or a map.
    #[error("cannot load the XDP program: {0}")]
    Load(#[source] EbpfError),
    /// The object lacks an expected map or program.
    #[error("the XDP object has no {0}; rebuild it with `cargo xtask build-ebpf`")]
    Missing(&'static str),
    /// Loading into the kernel or attaching failed.
    #[error("{what}: {source}")]
    Program {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// The ring array could not be mapped into memory.
    #[error("cannot map MAGLEV_RINGS into memory (an old kernel without BPF_F_MMAPABLE?): {0}")]
    RingMemory(#[source] std::io::Error),
    /// A value for the per-CPU maps could not be built.
    #[error("per-CPU value: {0}")]
    PerCpu(#[source] std::io::Error),
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

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
            real_stats: PerCpuArray::try_from(take("REAL_STATS")?)
                .map_err(map_err("REAL_STATS"))?,
            reasons: PerCpuArray::try_from(take("REASONS")?).map_err(map_err("REASONS"))?,
            globals: Array::try_from(take("GLOBALS")?).map_err(map_err("GLOBALS"))?,
            globals_written: Globals::default(),
        })
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.detach();
    }
}

/// What the control plane reads and writes in the data path. Every method
/// fails only when a map operation fails.
///
/// The data path caches its forwarding decisions per CPU (see
/// [`Globals::flow_generation`]); every write that could contradict a cached
/// decision (a service or a real server written or removed, an affinity
/// entry written) empties that cache itself, so callers never have to.
#[expect(
    clippy::missing_errors_doc,
    reason = "one rule for all methods, stated above"
)]
pub trait Maps {
    /// Sets the data path's global settings.
    fn set_globals(&mut self, globals: Globals) -> Result<()>;
    /// Writes a real-server slot.
    fn set_real(&mut self, index: u32, real: Real) -> Result<()>;
    /// Writes a whole Maglev ring into `slot`.
    fn set_ring(&mut self, slot: u32, ring: &[u32]) -> Result<()>;
    /// Adds or replaces a service.
    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()>;
    /// Removes a service (absent is fine).
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Zeroes the counters of a real-server index (on reuse).
    fn reset_real_counters(&mut self, index: u32) -> Result<()>;
    /// A real server's counters, summed over CPUs.
    fn real_counters(&self, index: u32) -> Result<Counters>;
    /// Every [`Reason`] counter, summed over CPUs, in [`Reason::ALL`] order.
    fn reasons(&self) -> Result<Vec<u64>>;
    /// One client's affinity entry.
    fn affinity(&self, key: &AffinityKey) -> Result<Option<Affinity>>;
    /// Calls `f` for every affinity entry.
    fn for_each_affinity(&self, f: &mut dyn FnMut(&AffinityKey, &Affinity)) -> Result<()>;
    /// A second, independent handle on the affinity table, so a background
    /// thread can walk it without holding up the daemon.
    fn affinity_scanner(&self) -> Result<Box<dyn AffinityScan>>;
    /// Adds or replaces affinity entries (HA sync; tests), then empties the
    /// flow cache once.
    fn set_affinities(&mut self, entries: &[(AffinityKey, Affinity)]) -> Result<()>;
    /// Adds or replaces one affinity entry.
    fn set_affinity(&mut self, key: AffinityKey, value: Affinity) -> Result<()> {
        self.set_affinities(&[(key, value)])
    }
    /// Empties the data path's flow cache on every CPU: the next frame of
    /// every flow is decided from the shared tables again.
    fn flush_flow_cache(&mut self) -> Result<()>;
}

/// Walks the affinity table.
pub trait AffinityScan: Send {
    /// Calls `f` for every entry.
    ///
    /// # Errors
    /// When reading the map fails.
    fn scan(&self, f: &mut dyn FnMut(&AffinityKey, &Affinity)) -> Result<()>;
}

/// An affinity-table handle of its own (a second descriptor on the same map).
pub struct AffinityReader {
    map: HashMap<MapData, AffinityKey, Affinity>,
}

fn scan_map(
    map: &HashMap<MapData, AffinityKey, Affinity>,
    f: &mut dyn FnMut(&AffinityKey, &Affinity),
) -> Result<()> {
    for entry in map {
        match entry {
            Ok((key, value)) => f(&key, &value),
            // An entry evicted between listing and reading is simply gone.
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
            Err(e) => return Err(map_error("AFFINITY")(e)),
        }
    }
    Ok(())
}

impl AffinityScan for AffinityReader {
    fn scan(&self, f: &mut dyn FnMut(&AffinityKey, &Affinity)) -> Result<()> {
        scan_map(&self.map, f)
    }
}

/// The Maglev ring array, mapped into this process: writing a ring is 16381
/// stores rather than 16381 system calls (a drain reaches the data path in
/// microseconds, not tens of milliseconds).
struct RingMemory {
    memory: MmapMut,
    /// Keeps the map's descriptor as long as the mapping.
    _map: MapData,
}

impl RingMemory {
    /// Bytes from one array element to the next: the kernel rounds an array
    /// map's values up to 8 bytes.
    const STRIDE: usize = size_of::<u32>().next_multiple_of(8);

    fn map(map: Map) -> Result<Self> {
        let Map::Array(map) = map else {
            return Err(DataplaneError::Missing("MAGLEV_RINGS as an array"));
        };
        let len = ring_index(MAGLEV_RING_SLOTS, 0) as usize * Self::STRIDE;
        // SAFETY: the mapping is of a BPF array created mmapable by the
        // object; only this process writes it, and the data path reads
        // whole 4-byte entries, which these single aligned stores never tear.
        let memory = unsafe {
            MmapOptions::new()
                .len(len)
                .map_mut(map.fd().as_fd().as_raw_fd())
        }
        .map_err(DataplaneError::RingMemory)?;
        Ok(Self { memory, _map: map })
    }

    /// Writes `ring` into `slot`; the caller then points the service at it.
    fn write(&mut self, slot: u32, ring: &[u32]) -> Result<()> {
        let start = ring_index(slot, 0) as usize * Self::STRIDE;
        let end = ring_index(slot + 1, 0) as usize * Self::STRIDE;
        let area = self
            .memory
            .get_mut(start..end)
            .ok_or(DataplaneError::Missing("a ring slot of MAGLEV_RINGS"))?;
        for (entry, real) in area.chunks_exact_mut(Self::STRIDE).zip(ring) {
            entry[..size_of::<u32>()].copy_from_slice(&real.to_ne_bytes());
        }
        // The ring is complete before the service entry (a system call)
        // can make the data path read it.
        fence(Ordering::Release);
        Ok(())
    }
}

/// The kernel's maps, taken from a loaded [`Program`].
pub struct EbpfMaps {
    services: HashMap<MapData, ServiceKey, Service>,
    rings: RingMemory,
    reals: Array<MapData, Real>,
    affinity: HashMap<MapData, AffinityKey, Affinity>,
    real_stats: PerCpuArray<MapData, Counters>,
    reasons: PerCpuArray<MapData, ReasonCounters>,
    globals: Array<MapData, Globals>,
    /// What `globals` holds, so the generation can be bumped without a read.
    globals_written: Globals,
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

impl Maps for EbpfMaps {
    fn set_globals(&mut self, globals: Globals) -> Result<()> {
        self.globals
            .set(0, globals, 0)
            .map_err(map_error("GLOBALS"))?;
        self.globals_written = globals;
        Ok(())
    }

    fn flush_flow_cache(&mut self) -> Result<()> {
        let mut globals = self.globals_written;
        globals.flow_generation = next_generation(globals.flow_generation);
        self.set_globals(globals)
    }

    fn set_real(&mut self, index: u32, real: Real) -> Result<()> {
        self.reals.set(index, real, 0).map_err(map_error("REALS"))?;
        self.flush_flow_cache()
    }

    fn set_ring(&mut self, slot: u32, ring: &[u32]) -> Result<()> {
        self.rings.write(slot, ring)
    }

    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()> {
        self.services
            .insert(key, service, 0)
            .map_err(map_error("SERVICES"))?;
        self.flush_flow_cache()
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        match self.services.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
            Err(e) => return Err(map_error("SERVICES")(e)),
        }
        self.flush_flow_cache()
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
        match self.affinity.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(None),
            Err(e) => Err(map_error("AFFINITY")(e)),
        }
    }

    fn for_each_affinity(&self, f: &mut dyn FnMut(&AffinityKey, &Affinity)) -> Result<()> {
        scan_map(&self.affinity, f)
    }

    fn affinity_scanner(&self) -> Result<Box<dyn AffinityScan>> {
        let info = self.affinity.map().info().map_err(map_error("AFFINITY"))?;
        let data = MapData::from_id(info.id()).map_err(map_error("AFFINITY"))?;
        let map = Map::from_map_data(data).map_err(map_error("AFFINITY"))?;
        let map = HashMap::try_from(map).map_err(map_error("AFFINITY"))?;
        Ok(Box::new(AffinityReader { map }))
    }

    fn set_affinities(&mut self, entries: &[(AffinityKey, Affinity)]) -> Result<()> {
        let written = entries.iter().try_for_each(|(key, value)| {
            self.affinity
                .insert(key, value, 0)
                .map_err(map_error("AFFINITY"))
        });
        // Also after a failure: the entries written before it count.
        self.flush_flow_cache()?;
        written
    }
}

/// The flow-cache generation after `current`: never 0, which disables the cache.
fn next_generation(current: u64) -> u64 {
    current.wrapping_add(1).max(1)
}

/// An in-memory stand-in for [`EbpfMaps`], for control-plane tests.
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
