//! The census: the kernel-side pass over the affinity table that lbd runs
//! once a second (`lb_census`, run with `BPF_PROG_TEST_RUN`, never
//! attached). In one `bpf_for_each_map_elem` walk it counts live entries per
//! real server, removes entries well past their expiry, and on a paired
//! master hands the entries the peer needs to a ring buffer. Walking the
//! table from userspace cost a system call per entry (or per hash bucket,
//! batched): half a core at a million clients.
//!
//! A walk touches every entry (about 150 ns each at a million, most of it
//! waiting for memory), so lbd walks every few seconds; between walks the
//! data path announces each entry it writes on a ring (`NEW_ENTRIES`), so
//! new clients are counted, and reach the peer, within a second.
//!
//! The rules are plain functions here, so the kernel and lbd's tests use
//! the same ones.

use crate::{Affinity, AffinityKey, MAX_REALS, MAX_SERVICES};

/// What the census knows of a service, by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusService {
    /// The service's entry lifetime (see [`crate::affinity_expiry_ns`]).
    pub timeout_ns: u64,
    /// Passes after which a live entry is sent to the peer again.
    pub refresh_passes: u32,
    /// 1 for a service in use; 0: entries of this id are of a removed service.
    pub known: u32,
}

/// One census run's orders (slot 0 of `CENSUS_RUN`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusRun {
    /// The stream pass this run is (0: no stream).
    pub pass: u32,
    /// Entries sent in passes `(lost_lo, lost_hi]` count as never sent.
    pub lost_lo: u32,
    /// See `lost_lo`.
    pub lost_hi: u32,
    /// Most entries this run hands to the stream.
    pub budget: u32,
    /// `CLOCK_MONOTONIC` at pass 0: pass `p` starts about `p` seconds later
    /// (pass numbers follow the seconds).
    pub pass_base_ns: u64,
    /// How long past its expiry an entry stays before it is removed.
    pub sweep_margin_ns: u64,
    /// Entries of an unknown service are removed once unseen this long.
    pub unknown_grace_ns: u64,
}

/// An entry handed to the stream (the ring buffer's record).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamedEntry {
    /// The table's key.
    pub key: AffinityKey,
    /// The entry as the census read it.
    pub value: Affinity,
}

/// Where the per-service removals start in `CENSUS_COUNTS` (after the live
/// entries per real-server index).
pub const CENSUS_SWEPT_AT: u32 = MAX_REALS;
/// Where the totals start: entries seen, live, streamed, left for a later pass.
pub const CENSUS_TOTALS_AT: u32 = MAX_REALS + MAX_SERVICES;
/// Seconds ahead the census tells, per real server, how many live entries
/// expire in each (unless refreshed first): lbd counts them out second by
/// second between walks.
pub const EXPIRY_SECONDS: u32 = 8;
/// Where those counts start: `EXPIRY_SECONDS` rows of `MAX_REALS`.
pub const CENSUS_EXPIRING_AT: u32 = CENSUS_TOTALS_AT + 4;
/// Slots of `CENSUS_COUNTS`.
pub const CENSUS_SLOTS: u32 = CENSUS_EXPIRING_AT + EXPIRY_SECONDS * MAX_REALS;
/// Bytes of the stream's ring buffer: room for [`STREAM_PER_PASS`] records
/// (8-byte header each) with a margin.
pub const STREAM_RING_BYTES: u32 = 16 << 20;
/// Most entries one census pass streams.
pub const STREAM_PER_PASS: u32 = 300_000;
/// Bytes of the data path's ring of new entries (`NEW_ENTRIES`): 100,000
/// records, read by lbd every second.
pub const NEW_RING_BYTES: u32 = 4 << 20;

/// Passes after which the peer gets a live entry again: a quarter of the
/// service's timeout in seconds (a pass is about a second), between 1 and
/// 60. The peer's copy then expires at most that much before ours.
#[must_use]
pub const fn refresh_passes(timeout_ns: u64) -> u32 {
    let quarter = timeout_ns / 4 / 1_000_000_000;
    if quarter < 1 {
        1
    } else if quarter > 60 {
        60
    } else {
        #[expect(clippy::cast_possible_truncation, reason = "at most 60 here")]
        let passes = quarter as u32;
        passes
    }
}

/// Whether the peer needs this live entry in `run`'s pass: never sent
/// (`sync_pass` 0: new, or written again with another server), sent in a
/// pass the peer did not confirm (`lost_lo < sync_pass <= lost_hi`), or
/// seen again since it was sent and sent `refresh_passes` passes ago or
/// more. An entry whose client has not been seen since is never sent again:
/// the peer's copy is the same.
#[must_use]
pub const fn stream_wanted(entry: &Affinity, run: &CensusRun, refresh_passes: u32) -> bool {
    let sent = entry.sync_pass;
    if sent == 0 || (sent > run.lost_lo && sent <= run.lost_hi) {
        return true;
    }
    let sent_at = run
        .pass_base_ns
        .saturating_add((sent as u64).saturating_mul(1_000_000_000));
    run.pass.saturating_sub(sent) >= refresh_passes && entry.last_seen_ns > sent_at
}

/// The whole seconds from `now_ns` until a live entry last seen at
/// `last_seen_ns` expires (its age passes `timeout_ns`).
#[must_use]
pub const fn seconds_left(now_ns: u64, last_seen_ns: u64, timeout_ns: u64) -> u64 {
    last_seen_ns
        .saturating_add(timeout_ns)
        .saturating_sub(now_ns)
        / 1_000_000_000
}

/// Whether an entry `age_ns` old is removed: expired by more than
/// `margin_ns` for a known service, unseen for `grace_ns` for an unknown one.
#[must_use]
pub const fn sweepable(
    age_ns: u64,
    service: &CensusService,
    margin_ns: u64,
    grace_ns: u64,
) -> bool {
    if service.known != 0 {
        age_ns > service.timeout_ns.saturating_add(margin_ns)
    } else {
        age_ns > grace_ns
    }
}

const _: () = assert!(core::mem::size_of::<CensusService>() == 16);
const _: () = assert!(core::mem::size_of::<CensusRun>() == 40);
const _: () = assert!(core::mem::size_of::<StreamedEntry>() == 32);
const _: () = assert!((STREAM_PER_PASS as u64) * 40 < STREAM_RING_BYTES as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_gets_new_lost_and_refreshed_entries_only() {
        const S: u64 = 1_000_000_000;
        let entry = |sync_pass, last_seen_ns| Affinity {
            real: 1,
            real_address: 1,
            last_seen_ns,
            seen_jiffies: 0,
            sync_pass,
        };
        let run = |pass, lost_lo, lost_hi| CensusRun {
            pass,
            lost_lo,
            lost_hi,
            pass_base_ns: 1_000 * S,
            ..CensusRun::default()
        };
        let seen = 1_003 * S;
        assert!(
            stream_wanted(&entry(0, seen), &run(5, 0, 0), 60),
            "never sent"
        );
        assert!(
            !stream_wanted(&entry(4, seen), &run(5, 0, 0), 60),
            "sent and confirmed"
        );
        assert!(
            stream_wanted(&entry(4, seen), &run(5, 3, 4), 60),
            "sent in a lost pass"
        );
        assert!(
            !stream_wanted(&entry(3, seen), &run(5, 3, 4), 60),
            "the last confirmed pass"
        );
        assert!(
            !stream_wanted(&entry(4, seen), &run(64, 0, 0), 60),
            "not seen since: the same"
        );
        assert!(
            stream_wanted(&entry(4, 1_010 * S), &run(64, 0, 0), 60),
            "seen since, due"
        );
        assert!(
            !stream_wanted(&entry(5, 1_010 * S), &run(64, 0, 0), 60),
            "seen since, not due"
        );
    }

    #[test]
    fn refreshes_come_every_quarter_timeout_between_1_and_60_passes() {
        assert_eq!(refresh_passes(8 * 3_600 * 1_000_000_000), 60);
        assert_eq!(refresh_passes(10 * 1_000_000_000), 2);
        assert_eq!(refresh_passes(1_000_000_000), 1);
    }

    #[test]
    fn expired_entries_are_removed_after_the_margin_unknown_ones_after_the_grace() {
        let known = CensusService {
            timeout_ns: 100,
            refresh_passes: 1,
            known: 1,
        };
        assert!(!sweepable(105, &known, 5, 1_000));
        assert!(sweepable(106, &known, 5, 1_000));
        let gone = CensusService::default();
        assert!(!sweepable(1_000, &gone, 5, 1_000));
        assert!(sweepable(1_001, &gone, 5, 1_000));
    }
}
