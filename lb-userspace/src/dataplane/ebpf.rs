//! The kernel side: the aya-backed XDP [`Program`] (load, verify, attach)
//! and [`EbpfMaps`], its maps behind the [`Maps`] trait, with the Maglev ring
//! array mapped into this process and a second handle on the affinity table
//! for background scans.

use std::{
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{fence, Ordering},
};

use aya::{
    maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
    Ebpf,
};
use lb_common::{
    ring_index, Affinity, AffinityKey, Counters, Globals, Real, Reason, ReasonCounters, Service,
    ServiceKey, MAGLEV_RING_SLOTS,
};
use memmap2::{MmapMut, MmapOptions};

use super::{next_generation, AffinityScan, DataplaneError, Maps, Result};

/// The compiled XDP object, embedded at build time by `build.rs` from
/// `cargo xtask build-ebpf`'s output (empty when it was not built).
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// Name of the XDP entry point in the object.
const PROGRAM_NAME: &str = "lb_xdp";

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
