//! Array maps mapped into this process (`BPF_F_MMAPABLE`): the Maglev rings,
//! written with plain stores instead of one system call per entry, the
//! per-service client counts, which the data path and lbd change atomically,
//! and the ARP lease, renewed with one store as the master advertises.

use std::{
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{fence, AtomicU64, Ordering},
};

use aya::maps::{Map, MapData};
use lb_common::{census::CENSUS_SLOTS, ring_index, MAGLEV_RING_SLOTS, MAX_SERVICES};
use memmap2::{MmapOptions, MmapRaw};

use super::{DataplaneError, Result};

/// An mmapable array map, mapped: `len` values `stride` bytes apart (the
/// kernel rounds an array's values up to 8 bytes).
struct MappedArray {
    memory: MmapRaw,
    /// Keeps the map's descriptor as long as the mapping.
    _map: MapData,
}

impl MappedArray {
    fn map(map: Map, name: &'static str, bytes: usize) -> Result<Self> {
        let Map::Array(map) = map else {
            return Err(DataplaneError::Missing(name));
        };
        let memory = MmapOptions::new()
            .len(bytes)
            .map_raw(map.fd().as_fd().as_raw_fd())
            .map_err(|source| DataplaneError::Mapped { map: name, source })?;
        Ok(Self { memory, _map: map })
    }
}

/// The Maglev ring array, mapped: writing a ring is 16381 stores rather than
/// 16381 system calls (a drain reaches the data path in microseconds, not
/// tens of milliseconds).
pub(super) struct RingMemory(MappedArray);

impl RingMemory {
    const STRIDE: usize = size_of::<u32>().next_multiple_of(8);

    pub(super) fn map(map: Map) -> Result<Self> {
        let bytes = ring_index(MAGLEV_RING_SLOTS, 0) as usize * Self::STRIDE;
        MappedArray::map(map, "MAGLEV_RINGS", bytes).map(Self)
    }

    /// Entry `i` of ring slot `slot`, inside the mapping.
    fn entry(&self, slot: u32, i: usize) -> Result<*mut u32> {
        if slot >= MAGLEV_RING_SLOTS || i >= ring_index(1, 0) as usize {
            return Err(DataplaneError::Missing("a ring slot of MAGLEV_RINGS"));
        }
        let offset = ring_index(slot, 0) as usize * Self::STRIDE + i * Self::STRIDE;
        #[expect(
            clippy::cast_ptr_alignment,
            reason = "the mapping is page-aligned and entries are 8 bytes apart"
        )]
        // SAFETY: inside the mapping (slot and entry checked above).
        Ok(unsafe { self.0.memory.as_mut_ptr().add(offset).cast::<u32>() })
    }

    /// Writes `ring` into `slot`; the caller then points the service at it.
    pub(super) fn write(&mut self, slot: u32, ring: &[u32]) -> Result<()> {
        for (i, real) in ring.iter().take(ring_index(1, 0) as usize).enumerate() {
            // SAFETY: an entry of the mapping; aligned 4-byte stores, which
            // the data path's 4-byte loads never see torn. Only this process
            // writes rings.
            unsafe { self.entry(slot, i)?.write_volatile(*real) };
        }
        // The ring is complete before the service entry (a system call)
        // can make the data path read it.
        fence(Ordering::Release);
        Ok(())
    }

    /// The ring in `slot` (taking over a running data path).
    pub(super) fn read(&self, slot: u32) -> Result<Vec<u32>> {
        (0..ring_index(1, 0) as usize)
            // SAFETY: an entry of the mapping; aligned 4-byte loads.
            .map(|i| self.entry(slot, i).map(|p| unsafe { p.read_volatile() }))
            .collect()
    }
}

/// The node's ARP lease (`ARP_LEASE`), mapped: the master of a pair renews
/// it with one store each time it advertises.
pub struct ArpLease(MappedArray);

impl ArpLease {
    pub(super) fn map(map: Map) -> Result<Self> {
        MappedArray::map(map, "ARP_LEASE", size_of::<u64>()).map(Self)
    }

    /// Answers ARP for the held VIPs until `until_ns` on the monotonic
    /// clock ([`lb_common::ARP_LEASE_FOREVER`]: for as long as the data
    /// path runs).
    pub fn set(&self, until_ns: u64) {
        // SAFETY: the mapping's first 8 bytes, page-aligned; the data path
        // reads them with one aligned load, so it never sees a torn value.
        unsafe {
            AtomicU64::from_ptr(self.0.memory.as_mut_ptr().cast())
                .store(until_ns, Ordering::Relaxed);
        }
    }

    /// Renews the lease for `span` from now.
    pub fn renew(&self, span: std::time::Duration) {
        let span = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        self.set(monotonic_ns().saturating_add(span).max(1));
    }
}

/// The monotonic clock in nanoseconds, as the data path's
/// `bpf_ktime_get_ns` reads it.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0))
}

/// How many affinity entries each service holds, by service id: the data
/// path adds one for each client it remembers (`lock xadd`); lbd takes one
/// for each entry it removes.
pub struct ClientCounts(MappedArray);

impl ClientCounts {
    const STRIDE: usize = size_of::<u64>();

    pub(super) fn map(map: Map) -> Result<Self> {
        MappedArray::map(map, "CLIENT_COUNTS", MAX_SERVICES as usize * Self::STRIDE).map(Self)
    }

    fn counter(&self, service_id: u32) -> Option<&AtomicU64> {
        if service_id >= MAX_SERVICES {
            return None;
        }
        // SAFETY: inside the mapping, 8-byte aligned (page-aligned base,
        // 8-byte stride), and only ever changed atomically, here and in the
        // data path; the mapping lives as long as `self`.
        Some(unsafe {
            AtomicU64::from_ptr(
                self.0
                    .memory
                    .as_mut_ptr()
                    .add(service_id as usize * Self::STRIDE)
                    .cast(),
            )
        })
    }

    /// Entries service `service_id` holds.
    #[must_use]
    pub fn get(&self, service_id: u32) -> u64 {
        self.counter(service_id)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts `n` entries added by lbd (the peer's).
    pub fn add(&self, service_id: u32, n: u64) {
        if let Some(c) = self.counter(service_id) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts one entry removed, never below zero (an id handed to a new
    /// service starts from zero while the old service's entries are swept).
    pub fn take_one(&self, service_id: u32) {
        if let Some(c) = self.counter(service_id) {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Counts `n` entries removed, never below zero.
    pub fn take(&self, service_id: u32, n: u64) {
        if let Some(c) = self.counter(service_id) {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        }
    }

    /// Starts a new service's count from zero.
    pub fn reset(&self, service_id: u32) {
        if let Some(c) = self.counter(service_id) {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// The census program's results (`CENSUS_COUNTS`), mapped: zeroed before a
/// run and read after it, without a system call per slot.
pub(super) struct CensusCounts(MappedArray);

impl CensusCounts {
    const STRIDE: usize = size_of::<u64>();

    pub(super) fn map(map: Map) -> Result<Self> {
        MappedArray::map(map, "CENSUS_COUNTS", CENSUS_SLOTS as usize * Self::STRIDE).map(Self)
    }

    /// Zeroes every slot (before a run).
    pub(super) fn zero(&mut self) {
        // SAFETY: the whole mapping, which lives as long as `self`; the
        // census program is not running (runs are made by this thread).
        unsafe {
            std::ptr::write_bytes(
                self.0.memory.as_mut_ptr(),
                0,
                CENSUS_SLOTS as usize * Self::STRIDE,
            );
        }
    }

    /// Slot `i` (after a run).
    pub(super) fn get(&self, i: u32) -> u64 {
        if i >= CENSUS_SLOTS {
            return 0;
        }
        // SAFETY: inside the mapping, 8-byte aligned; the run that wrote it
        // has returned (a system call), so the load sees its stores.
        unsafe {
            self.0
                .memory
                .as_mut_ptr()
                .add(i as usize * Self::STRIDE)
                .cast::<u64>()
                .read_volatile()
        }
    }
}
