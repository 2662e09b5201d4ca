//! The census (see `lb_common::census`): one in-kernel walk of the affinity
//! table a second, run by lbd with `BPF_PROG_TEST_RUN` and never attached.
//! It counts live entries per real server into [`CENSUS_COUNTS`], removes
//! entries well past their expiry (lbd subtracts them from
//! `CLIENT_COUNTS`), and on a paired master hands the entries the peer
//! needs to [`STREAM_OUT`], marking each with the pass that sent it.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_NO_WAKEUP},
    helpers::{bpf_for_each_map_elem, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, RingBuf},
    programs::XdpContext,
};
use lb_common::{
    census::{
        seconds_left, stream_wanted, sweepable, CensusRun, CensusService, StreamedEntry,
        CENSUS_EXPIRING_AT, CENSUS_SLOTS, CENSUS_SWEPT_AT, CENSUS_TOTALS_AT, EXPIRY_SECONDS,
        NEW_RING_BYTES, STREAM_RING_BYTES,
    },
    Affinity, AffinityKey, MAX_REALS, MAX_SERVICES, REAL_F_KEEP_CLIENTS,
};

use crate::{AFFINITY, REALS};

/// Timeouts and refresh intervals by service id. Written by lbd.
#[map]
static CENSUS_SERVICES: Array<CensusService> = Array::with_max_entries(MAX_SERVICES, 0);

/// Slot 0: this run's orders. Written by lbd before each run.
#[map]
static CENSUS_RUN: Array<CensusRun> = Array::with_max_entries(1, 0);

/// The run's results (see `lb_common::census` for the layout): zeroed by
/// lbd before each run, through its mapping, and read after it.
#[map]
static CENSUS_COUNTS: Array<u64> = Array::with_max_entries(CENSUS_SLOTS, BPF_F_MMAPABLE);

/// Entries for the peer, read by lbd after each run.
#[map]
static STREAM_OUT: RingBuf = RingBuf::with_byte_size(STREAM_RING_BYTES, 0);

/// Every entry the data path writes (a new client, or one placed anew),
/// read by lbd every second: counted at once, and sent to the peer at once
/// (the next walk sends it again, marked). When lbd falls behind, records
/// are dropped: the walk finds those entries all the same.
#[map]
static NEW_ENTRIES: RingBuf = RingBuf::with_byte_size(NEW_RING_BYTES, 0);

/// Ring-buffer records are committed without waking a reader: lbd reads
/// both rings on its own schedule and never waits on them, and a wakeup
/// is an interrupt (`irq_work`) on the first record after each read.
const NO_WAKEUP: u64 = BPF_RB_NO_WAKEUP as u64;

/// Announces an entry the data path has just written.
#[inline(always)]
pub(crate) fn announce(key: &AffinityKey, value: &Affinity) {
    let record = StreamedEntry {
        key: *key,
        value: *value,
    };
    let _ = NEW_ENTRIES.output::<StreamedEntry>(&record, NO_WAKEUP);
}

/// What the walk carries from entry to entry (on the program's stack).
#[repr(C)]
struct Walk {
    run: CensusRun,
    now: u64,
    entries: u64,
    live: u64,
    streamed: u64,
    behind: u64,
}

/// Adds `n` to slot `i` of [`CENSUS_COUNTS`] (only this program writes it,
/// one run at a time).
#[inline(always)]
fn add(i: u32, n: u64) {
    if let Some(slot) = CENSUS_COUNTS.get_ptr_mut(i) {
        // SAFETY: a value pointer into an array map, valid for this run.
        unsafe { *slot += n };
    }
}

/// One entry of the walk; 0: go on.
#[inline(never)]
extern "C" fn census_entry(
    _map: *mut c_void,
    key: *mut AffinityKey,
    value: *mut Affinity,
    walk: *mut Walk,
) -> i64 {
    // SAFETY: the kernel passes the current element's key and value and the
    // caller's context, all valid for this call.
    let (key, walk) = unsafe { (&*key, &mut *walk) };
    // SAFETY: as above.
    let entry = unsafe { *value };
    walk.entries += 1;
    let service = CENSUS_SERVICES
        .get(key.service_id)
        .copied()
        .unwrap_or_default();
    let age = walk.now.saturating_sub(entry.last_seen_ns);
    if service.known == 0 || age > service.timeout_ns {
        let (margin, grace) = (walk.run.sweep_margin_ns, walk.run.unknown_grace_ns);
        if sweepable(age, &service, margin, grace) && key.service_id < MAX_SERVICES {
            // Read again: the data path may have written the client anew.
            // SAFETY: only read.
            let now_entry = unsafe { AFFINITY.get(key) }.copied();
            let still = now_entry.is_some_and(|e| {
                sweepable(
                    walk.now.saturating_sub(e.last_seen_ns),
                    &service,
                    margin,
                    grace,
                )
            });
            if still && AFFINITY.remove(key).is_ok() {
                add(CENSUS_SWEPT_AT + key.service_id, 1);
            }
        }
        return 0;
    }
    let valid = REALS.get(entry.real).is_some_and(|r| {
        r.address == entry.real_address
            && u32::from(r.service_id) == key.service_id
            && r.flags & REAL_F_KEEP_CLIENTS != 0
    });
    if !valid {
        return 0;
    }
    add(entry.real, 1);
    walk.live += 1;
    let left = seconds_left(walk.now, entry.last_seen_ns, service.timeout_ns);
    if left < u64::from(EXPIRY_SECONDS) {
        add(CENSUS_EXPIRING_AT + left as u32 * MAX_REALS + entry.real, 1);
    }
    let run = &walk.run;
    if run.pass != 0 && stream_wanted(&entry, run, service.refresh_passes) {
        if walk.streamed >= u64::from(run.budget) {
            walk.behind += 1;
            return 0;
        }
        let record = StreamedEntry {
            key: *key,
            value: entry,
        };
        if STREAM_OUT
            .output::<StreamedEntry>(&record, NO_WAKEUP)
            .is_ok()
        {
            // SAFETY: the current element's value; the data path writes
            // other fields of it, never this one.
            unsafe { (*value).sync_pass = run.pass };
            walk.streamed += 1;
        } else {
            walk.behind += 1;
        }
    }
    0
}

/// The census program: one walk of the affinity table (the frame it is
/// run with is ignored).
#[xdp]
pub fn lb_census(_ctx: XdpContext) -> u32 {
    let Some(run) = CENSUS_RUN.get(0).copied() else {
        return 1;
    };
    let mut walk = Walk {
        run,
        // SAFETY: a helper without preconditions.
        now: unsafe { bpf_ktime_get_ns() },
        entries: 0,
        live: 0,
        streamed: 0,
        behind: 0,
    };
    // SAFETY: the map is the affinity table, the callback has the signature
    // the kernel calls it with, and the context lives on this stack for the
    // whole walk.
    unsafe {
        bpf_for_each_map_elem(
            core::ptr::addr_of!(AFFINITY).cast_mut().cast(),
            census_entry as *mut c_void,
            core::ptr::addr_of_mut!(walk).cast(),
            0,
        );
    }
    add(CENSUS_TOTALS_AT, walk.entries);
    add(CENSUS_TOTALS_AT + 1, walk.live);
    add(CENSUS_TOTALS_AT + 2, walk.streamed);
    add(CENSUS_TOTALS_AT + 3, walk.behind);
    2
}
