//! The XDP program and its maps: the only code that touches aya.
//!
//! [`Maps`] is the narrow interface the control plane writes through;
//! [`EbpfMaps`] implements it over the kernel's maps and [`FakeMaps`] in
//! memory, so the control plane is tested without root. [`Program`] loads
//! and attaches the XDP program itself.

mod attach;
mod census;
mod ebpf;
mod fake;
mod layout;
mod mapped;
mod nat;
mod program;
mod raw_bpf;
mod running;

use aya::{maps::MapError, programs::ProgramError, EbpfError};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use lb_common::{Affinity, AffinityKey, Counters, Globals, Real, Service, ServiceKey, VipProtocol};

pub use self::attach::Hook;
pub use self::census::{CensusOutcome, CensusRunner, EbpfCensus};
pub use self::ebpf::EbpfMaps;
pub use self::fake::{FakeMaps, Write};
pub use self::layout::{Migration, MIGRATIONS};
pub use self::mapped::{monotonic_ns, ArpLease, ClientCounts};
pub use self::nat::{ConnTable, NatMaps, Swept};
pub use self::program::{AttachMode, Predecessor, Program, TakenOver};
pub use self::running::{find as find_running, retire, Found, Running};

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
    /// A `bpf(2)` call made by hand failed.
    #[error("{what}: {source}")]
    Raw {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// An array map could not be mapped into memory.
    #[error("cannot map {map} into memory (an old kernel without BPF_F_MMAPABLE?): {source}")]
    Mapped {
        /// The map's name.
        map: &'static str,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
    /// A value for the per-CPU maps could not be built.
    #[error("per-CPU value: {0}")]
    PerCpu(#[source] std::io::Error),
    /// A netlink request (attaching, replacing, detaching) failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The embedded object could not be parsed.
    #[error("the embedded XDP object cannot be read ({0}); rebuild with `cargo xtask build`")]
    Object(String),
}

/// What the control plane writes into the data path, as read back from a
/// data path an earlier lbd left running.
#[derive(Clone, Debug, Default)]
pub struct Projection {
    /// Every service entry.
    pub services: Vec<(ServiceKey, Service)>,
    /// Every real-server slot in use (with an address).
    pub reals: BTreeMap<u32, Real>,
    /// The live ring of each service, by ring slot.
    pub rings: BTreeMap<u32, Vec<u32>>,
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// What the control plane reads and writes in the data path. Every method
/// fails only when a map operation fails.
///
/// The data path caches its forwarding decisions per CPU and per service
/// (see `FLOW_GENERATIONS` in lb-ebpf); every write that could contradict a
/// cached decision (a service or one of its real-server slots written or
/// removed, an affinity entry written) empties that service's cache itself,
/// so callers never have to, and other services keep theirs.
#[expect(
    clippy::missing_errors_doc,
    reason = "one rule for all methods, stated above"
)]
pub trait Maps {
    /// Sets the data path's global settings.
    fn set_globals(&mut self, globals: Globals) -> Result<()>;
    /// Reads what the maps hold (a data path taken over from an earlier
    /// lbd) and from then on counts it as written: writing the same again
    /// changes nothing and empties no cache.
    fn take_over(&mut self) -> Result<Projection>;
    /// Writes a real-server slot (and empties the cache of the service that
    /// held it and of the one that holds it now).
    fn set_real(&mut self, index: u32, real: Real) -> Result<()>;
    /// Writes a whole Maglev ring into `slot`.
    fn set_ring(&mut self, slot: u32, ring: &[u32]) -> Result<()>;
    /// Adds or replaces a service.
    fn set_service(&mut self, key: ServiceKey, service: Service) -> Result<()>;
    /// Removes a service (absent is fine).
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Replaces the fragments map: the port of the one service of each VIP
    /// and protocol whose fragments the data path forwards.
    fn set_fragments(&mut self, targets: &BTreeMap<VipProtocol, u16>) -> Result<()>;
    /// Replaces the VIPs the data path answers ARP for: those this node
    /// holds now.
    fn set_held_vips(&mut self, vips: &BTreeSet<Ipv4Addr>) -> Result<()>;
    /// Writes a NAT or SNAT service's settings, by service id.
    fn set_nat_service(&mut self, service_id: u32, nat: lb_common::nat::NatService) -> Result<()>;
    /// Writes a NAT or SNAT real server's settings, by slot.
    fn set_nat_real(&mut self, index: u32, nat: lb_common::nat::NatReal) -> Result<()>;
    /// Replaces the SNAT addresses of the services.
    fn set_snat_addresses(&mut self, addresses: &BTreeSet<Ipv4Addr>) -> Result<()>;
    /// Whether a NAT or SNAT service exists.
    fn set_nat_active(&mut self, on: bool) -> Result<()>;
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
    /// Adds or replaces affinity entries (HA sync; tests), then empties the
    /// flow cache of their services. New entries count towards their
    /// service's clients; returns how many did not fit (a full table).
    fn set_affinities(&mut self, entries: &[(AffinityKey, Affinity)]) -> Result<usize>;
    /// Adds or replaces one affinity entry.
    fn set_affinity(&mut self, key: AffinityKey, value: Affinity) -> Result<()> {
        self.set_affinities(&[(key, value)]).map(|_| ())
    }
    /// Entries service `service_id` holds in the affinity table.
    fn client_count(&self, service_id: u32) -> u64;
    /// Starts the count of a service id given to a new service from zero.
    fn reset_client_count(&mut self, service_id: u32);
    /// Empties the flow cache of one service on every CPU.
    fn flush_flow_cache(&mut self, service_id: u32) -> Result<()>;
    /// Keeps one service's decisions out of the flow cache until its next
    /// write (benchmarks measure the table path with it).
    fn disable_flow_cache(&mut self, service_id: u32) -> Result<()>;
}

/// A service's flow-cache generation after `current`: never 0, which
/// disables the cache.
fn next_generation(current: u32) -> u32 {
    current.wrapping_add(1).max(1)
}
