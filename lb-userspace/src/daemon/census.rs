//! Active-client counting: a background thread passes over the affinity
//! table about once a second, counts live entries per real server, removes
//! entries well past their expiry (the table never evicts by itself), and
//! in a pair also collects what the master streams to its peer.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use lb_common::{Affinity, AffinityKey};

use super::Daemon;
use crate::{
    balancer::{Census, CensusKey},
    dataplane::AffinityScan,
    monotonic_ns,
};

/// How often active clients are counted (a pass over the affinity table).
pub(super) const CENSUS_EVERY: Duration = Duration::from_secs(1);

/// Active-client counting, shared with its background thread. In a pair the
/// same pass also collects the entries the master streams to its peer.
#[derive(Default)]
pub(super) struct CensusShared {
    pub(super) key: CensusKey,
    pub(super) latest: Census,
    /// Collect changed entries for the sync stream.
    pub(super) collect: bool,
    /// Entries written since the pass before (bounded by `MAX_STREAMED`).
    pub(super) changed: Vec<(AffinityKey, Affinity)>,
    /// Collect every live entry on the next pass (a snapshot for the peer).
    pub(super) want_full: bool,
    /// That snapshot, once taken.
    pub(super) full: Option<Vec<(AffinityKey, Affinity)>>,
}

/// Most entries one pass hands to the sync stream; more wait for the next.
const MAX_STREAMED: usize = 2_000_000;

/// Most entries one pass removes (a system call each); more wait for the next.
const MAX_SWEPT: usize = 500_000;

/// Counts active clients every [`CENSUS_EVERY`] until `stop` is set, and
/// collects entries for the sync stream when asked to.
#[expect(
    clippy::needless_pass_by_value,
    reason = "owned by the thread it runs on"
)]
pub(super) fn census_thread(
    mut scanner: Box<dyn AffinityScan>,
    shared: Arc<Mutex<CensusShared>>,
    stop: Arc<AtomicBool>,
) {
    let mut since = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok((key, collect, want_full)) = shared
            .lock()
            .map(|s| (s.key.clone(), s.collect, s.want_full))
        else {
            return;
        };
        let started = monotonic_ns();
        let mut census = Census::default();
        let mut changed = Vec::new();
        let mut full = Vec::new();
        let mut dead = Vec::new();
        let result = scanner.scan(&mut |k, v| {
            let live = census.add(&key, k, v, started);
            if !live && dead.len() < MAX_SWEPT && key.sweepable(k, v, started) {
                dead.push(*k);
            }
            if live && collect && v.last_seen_ns >= since && changed.len() < MAX_STREAMED {
                changed.push((*k, *v));
            }
            if live && want_full {
                full.push((*k, *v));
            }
        });
        sweep(scanner.as_mut(), &key, &dead);
        match result {
            Ok(()) => {
                if let Ok(mut s) = shared.lock() {
                    s.latest = census;
                    if collect {
                        s.changed.extend(changed);
                        s.changed.truncate(MAX_STREAMED);
                    }
                    if want_full {
                        s.want_full = false;
                        s.full = Some(full);
                    }
                }
                since = started;
            }
            Err(error) => log::warn!("counting active clients: {error}"),
        }
        std::thread::sleep(CENSUS_EVERY);
    }
}

/// Removes the entries found dead, each checked again just before (the
/// data path may have renewed it since the pass read it).
fn sweep(scanner: &mut dyn AffinityScan, key: &CensusKey, dead: &[AffinityKey]) {
    let mut removed = 0_usize;
    for k in dead {
        match scanner.remove_if(k, &|v| key.sweepable(k, v, monotonic_ns())) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(error) => {
                log::warn!("removing expired persistence entries: {error}");
                return;
            }
        }
    }
    if removed > 0 {
        log::debug!("removed {removed} expired persistence entries");
    }
}

impl Daemon {
    pub(super) fn publish_census_key(&self) {
        if let Ok(mut shared) = self.census.lock() {
            shared.key = self.balancer.census_key();
        }
    }

    pub(super) fn census(&self) -> Census {
        self.census
            .lock()
            .map(|s| s.latest.clone())
            .unwrap_or_default()
    }
}
