//! The XDP program and its maps: the only code that touches aya.
//!
//! [`Maps`] is the narrow interface the control plane writes through;
//! [`EbpfMaps`] implements it over the kernel's maps and [`FakeMaps`] in
//! memory, so the control plane is tested without root. [`Program`] loads
//! and attaches the XDP program itself.

mod ebpf;
mod fake;

use aya::{maps::MapError, programs::ProgramError, EbpfError};
use lb_common::{Affinity, AffinityKey, Counters, Globals, Real, Service, ServiceKey};

pub use self::ebpf::{AffinityReader, AttachMode, EbpfMaps, Program};
pub use self::fake::FakeMaps;

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
    /// Every [`Reason`](lb_common::Reason) counter, summed over CPUs, in
    /// [`Reason::ALL`](lb_common::Reason::ALL) order.
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

/// The flow-cache generation after `current`: never 0, which disables the cache.
fn next_generation(current: u64) -> u64 {
    current.wrapping_add(1).max(1)
}
