//! The census from lbd's side: runs the kernel's pass over the affinity
//! table (`lb_census`, see `lb_common::census`) and reads what it found.

use std::{collections::BTreeMap, os::fd::AsFd as _, sync::Arc};

use aya::{
    maps::{Array, MapData, RingBuf},
    programs::ProgramFd,
};
use lb_common::{
    census::{
        CensusRun, CensusService, StreamedEntry, CENSUS_EXPIRING_AT, CENSUS_SWEPT_AT,
        CENSUS_TOTALS_AT, EXPIRY_SECONDS,
    },
    Affinity, AffinityKey, MAX_REALS, MAX_SERVICES,
};

use super::{mapped::CensusCounts, raw_bpf, ClientCounts, DataplaneError, Result};

/// What one census pass found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CensusOutcome {
    /// Live entries per real-server index (those with any).
    pub per_real: BTreeMap<u32, u64>,
    /// Entries in the table.
    pub entries: u64,
    /// Live entries.
    pub live: u64,
    /// Entries removed, well past their expiry.
    pub swept: u64,
    /// Entries for the peer, marked as sent in this pass.
    pub streamed: Vec<(AffinityKey, Affinity)>,
    /// Entries the peer needs that wait for a later pass (the budget).
    pub behind: u64,
    /// Live entries that expire in each of the next seconds unless their
    /// client is seen first: (second, real-server index, entries).
    pub expiring: Vec<(u32, u32, u64)>,
}

/// Runs census passes (from a background thread).
pub trait CensusRunner: Send {
    /// What the census knows of each service, by id (written when changed).
    ///
    /// # Errors
    /// A failed map write.
    fn set_services(&mut self, services: &[CensusService]) -> Result<()>;

    /// One pass under `run`'s orders.
    ///
    /// # Errors
    /// When the program cannot be run or refuses (no orders).
    fn run(&mut self, run: &CensusRun) -> Result<CensusOutcome>;

    /// The entries the data path wrote since the last call, at most `max`
    /// (the rest are dropped: the next walk finds them).
    fn take_new(&mut self, max: usize) -> Vec<(AffinityKey, Affinity)>;
}

/// The kernel's census: the program's descriptor and its maps.
pub struct EbpfCensus {
    pub(super) program: ProgramFd,
    pub(super) services: Array<MapData, CensusService>,
    pub(super) written: Vec<CensusService>,
    pub(super) orders: Array<MapData, CensusRun>,
    pub(super) counts: CensusCounts,
    pub(super) stream: RingBuf<MapData>,
    pub(super) new_entries: RingBuf<MapData>,
    pub(super) client_counts: Arc<ClientCounts>,
}

/// Reads every record of `ring` as a [`StreamedEntry`], keeping at most `max`.
fn drain(ring: &mut RingBuf<MapData>, max: usize, out: &mut Vec<(AffinityKey, Affinity)>) {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<StreamedEntry>() || out.len() >= max {
            continue;
        }
        // SAFETY: the record is a `StreamedEntry` the kernel wrote (length
        // checked); read unaligned, as nothing here promises alignment.
        let e = unsafe { item.as_ptr().cast::<StreamedEntry>().read_unaligned() };
        out.push((e.key, e.value));
    }
}

/// `XDP_PASS`: the census program ran.
const RAN: u32 = 2;
/// The smallest frame an XDP test run takes (an Ethernet header).
const FRAME: [u8; 64] = [0; 64];

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

impl CensusRunner for EbpfCensus {
    fn set_services(&mut self, services: &[CensusService]) -> Result<()> {
        for (id, service) in (0..MAX_SERVICES).zip(
            services
                .iter()
                .chain(std::iter::repeat(&CensusService::default())),
        ) {
            if self.written.get(id as usize) != Some(service) {
                self.services
                    .set(id, *service, 0)
                    .map_err(map_error("CENSUS_SERVICES"))?;
                if let Some(w) = self.written.get_mut(id as usize) {
                    *w = *service;
                }
            }
        }
        Ok(())
    }

    fn run(&mut self, run: &CensusRun) -> Result<CensusOutcome> {
        self.orders
            .set(0, *run, 0)
            .map_err(map_error("CENSUS_RUN"))?;
        self.counts.zero();
        let ran = raw_bpf::run_program(self.program.as_fd(), &FRAME).map_err(|source| {
            DataplaneError::Raw {
                what: "running the census program",
                source,
            }
        })?;
        if ran != RAN {
            return Err(DataplaneError::Missing("the census's orders (CENSUS_RUN)"));
        }
        let mut out = CensusOutcome {
            per_real: (0..MAX_REALS)
                .filter_map(|i| Some((i, self.counts.get(i))).filter(|(_, n)| *n > 0))
                .collect(),
            entries: self.counts.get(CENSUS_TOTALS_AT),
            live: self.counts.get(CENSUS_TOTALS_AT + 1),
            behind: self.counts.get(CENSUS_TOTALS_AT + 3),
            ..CensusOutcome::default()
        };
        for second in 0..EXPIRY_SECONDS {
            for real in 0..MAX_REALS {
                let n = self
                    .counts
                    .get(CENSUS_EXPIRING_AT + second * MAX_REALS + real);
                if n > 0 {
                    out.expiring.push((second, real, n));
                }
            }
        }
        for id in 0..MAX_SERVICES {
            let n = self.counts.get(CENSUS_SWEPT_AT + id);
            if n > 0 {
                self.client_counts.take(id, n);
                out.swept += n;
            }
        }
        drain(&mut self.stream, usize::MAX, &mut out.streamed);
        Ok(out)
    }

    fn take_new(&mut self, max: usize) -> Vec<(AffinityKey, Affinity)> {
        let mut out = Vec::new();
        drain(&mut self.new_entries, max, &mut out);
        out
    }
}
