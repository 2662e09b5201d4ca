//! Active-client counting: a background thread runs the kernel's census
//! about once a second (one in-kernel walk of the affinity table, see
//! `lb_common::census`), which counts live entries per real server, removes
//! entries well past their expiry (the table never evicts by itself), and on
//! a paired master also finds what to stream to the peer
//! ([`crate::sync::StreamTracker`]).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
    time::Instant,
};

use lb_common::{Affinity, AffinityKey};

use super::Daemon;
use crate::{
    balancer::{Census, CensusKey, SWEEP_MARGIN_NS, UNKNOWN_SERVICE_GRACE_NS},
    dataplane::{CensusOutcome, CensusRunner},
    monotonic_ns,
    sync::{PassOutcome, PassPlan, StreamTracker},
};
use lb_common::census::{CensusRun, STREAM_PER_PASS};

/// How often active clients are counted: the new entries the data path
/// announced, and every [`WALK_EVERY`] a walk of the whole table.
pub(super) const CENSUS_EVERY: Duration = Duration::from_secs(1);

/// How often the census walks the table (expiries are counted, expired
/// entries removed, refreshes streamed), except while the stream catches
/// up with a peer (then every second). A walk touches every entry: at a
/// million, about 150 ms of a core.
pub(super) const WALK_EVERY: Duration = Duration::from_secs(5);

/// New entries taken from the data path's ring a second, at most (the rest
/// wait for the next walk).
const MAX_NEW: usize = 100_000;

/// Active-client counting, shared with its background thread. In a pair the
/// same pass also finds what the master streams to its peer.
#[derive(Default)]
pub(super) struct CensusShared {
    pub(super) key: CensusKey,
    pub(super) latest: Census,
    pub(super) stream: StreamShared,
}

/// A change to the stream's tracker, made before the next pass.
pub(super) type StreamCommand = Box<dyn FnOnce(&mut StreamTracker) + Send>;

/// The session stream between the daemon and the census thread.
#[derive(Default)]
pub(super) struct StreamShared {
    /// Streaming (this node is a paired master).
    pub(super) on: bool,
    /// Bumped when the stream restarts or resumes: a pass taken before is
    /// not sent.
    pub(super) epoch: u64,
    /// For the tracker, in order.
    pub(super) commands: Vec<StreamCommand>,
    /// The last pass's entries, waiting for the daemon. Until the daemon
    /// takes them no pass adds more: a slow peer slows the stream.
    pub(super) ready: Option<ReadyPass>,
    /// Entries the data path wrote since, sent at once without a mark (the
    /// next walk sends them again, marked).
    pub(super) fresh: Vec<(AffinityKey, Affinity)>,
    /// The stream's pass 0 (monotonic ns) and its tracker as of the last
    /// pass, for a re-execution to hand over.
    pub(super) tracker: (u64, StreamTracker),
}

/// One pass of the stream, for the daemon to send.
pub(super) struct ReadyPass {
    pub(super) epoch: u64,
    pub(super) entries: Vec<(AffinityKey, Affinity)>,
    pub(super) outcome: PassOutcome,
    /// Live entries in the table.
    pub(super) total: u64,
}

/// The stream's pass 0 and tracker: handed over by the lbd this one
/// re-executed, or from now (pass numbers follow the seconds since pass 0,
/// see `CensusRun`).
pub(super) fn stream_start(handover: Option<&crate::ha::Handover>) -> (u64, StreamTracker) {
    handover.map_or_else(
        || (monotonic_ns(), StreamTracker::default()),
        |h| (h.stream_base_ns, h.stream.clone()),
    )
}

/// Counts active clients every [`CENSUS_EVERY`] until `stop` is set, and
/// finds what to stream while asked to: a run of the kernel's census every
/// [`WALK_EVERY`] (every second while the stream catches up), and between
/// runs the entries the data path announced (see `lb_common::census`).
#[expect(
    clippy::needless_pass_by_value,
    reason = "owned by the thread it runs on"
)]
/// The stream starts from `shared.stream.tracker` (see [`stream_start`]).
pub(super) fn census_thread(
    mut census: Box<dyn CensusRunner>,
    shared: Arc<Mutex<CensusShared>>,
    stop: Arc<AtomicBool>,
) {
    let Ok((base_ns, mut tracker)) = shared.lock().map(|s| s.stream.tracker.clone()) else {
        return;
    };
    let mut walked: Option<Walked> = None;
    let mut added = BTreeMap::<u32, u64>::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok((key, on, waiting, epoch)) = shared.lock().map(|mut s| {
            for command in std::mem::take(&mut s.stream.commands) {
                command(&mut tracker);
            }
            s.stream.tracker = (base_ns, tracker.clone());
            let stream = &s.stream;
            (
                s.key.clone(),
                stream.on,
                stream.ready.is_some(),
                stream.epoch,
            )
        }) else {
            return;
        };
        if let Err(error) = census.set_services(&key.services()) {
            log::warn!("counting active clients: {error}");
        }
        let new = census.take_new(MAX_NEW);
        let stream = on && !waiting;
        let due = walked.as_ref().is_none_or(|w| w.at.elapsed() >= WALK_EVERY)
            || (stream && tracker.catching_up());
        if due {
            let plan = if stream {
                tracker.start_pass(monotonic_ns().saturating_sub(base_ns) / 1_000_000_000)
            } else {
                PassPlan::default()
            };
            match walk(census.as_mut(), plan, base_ns) {
                Ok(found) => {
                    let outcome = stream.then(|| tracker.end_pass(found.behind > 0));
                    let counted = Census {
                        per_real: found.per_real,
                        live: found.live,
                        entries: found.entries,
                    };
                    added.clear();
                    if let Ok(mut s) = shared.lock() {
                        s.stream.tracker = (base_ns, tracker.clone());
                        if let Some(outcome) = outcome {
                            s.stream.ready = Some(ReadyPass {
                                epoch,
                                entries: found.streamed,
                                outcome,
                                total: found.live,
                            });
                        }
                        // The walk sent them (or will, marked).
                        s.stream.fresh.clear();
                        s.latest = counted.clone();
                    }
                    walked = Some(Walked {
                        at: Instant::now(),
                        counted,
                        expiring: found.expiring,
                    });
                }
                Err(error) => {
                    if stream {
                        // The pass may have marked entries it never handed over.
                        tracker.end_pass(true);
                        tracker.resume();
                    }
                    log::warn!("counting active clients: {error}");
                }
            }
        } else {
            let now = monotonic_ns();
            for (k, v) in &new {
                if let Some(real) = key.live_real(k, v, now) {
                    *added.entry(real).or_insert(0) += 1;
                }
            }
            if let (Some(w), Ok(mut s)) = (walked.as_ref(), shared.lock()) {
                s.latest = w.now(&added);
                if on {
                    let room = MAX_NEW.saturating_sub(s.stream.fresh.len());
                    s.stream.fresh.extend(new.into_iter().take(room));
                }
            }
        }
        std::thread::sleep(CENSUS_EVERY);
    }
}

/// One run of the kernel's census under `plan` (no stream when its pass is
/// 0; pass 0 began at `base_ns`).
fn walk(
    census: &mut dyn CensusRunner,
    plan: PassPlan,
    base_ns: u64,
) -> Result<CensusOutcome, crate::dataplane::DataplaneError> {
    let found = census.run(&CensusRun {
        pass: plan.pass,
        lost_lo: plan.lost_lo,
        lost_hi: plan.lost_hi,
        budget: STREAM_PER_PASS,
        pass_base_ns: base_ns,
        sweep_margin_ns: SWEEP_MARGIN_NS,
        unknown_grace_ns: UNKNOWN_SERVICE_GRACE_NS,
    })?;
    if found.swept > 0 {
        log::debug!("removed {} expired persistence entries", found.swept);
    }
    Ok(found)
}

/// The last walk's counts, and what it said would expire.
struct Walked {
    at: Instant,
    counted: Census,
    expiring: Vec<(u32, u32, u64)>,
}

impl Walked {
    /// The counts now: the walk's, less the entries expired since (those
    /// that expire in a second that has passed), plus the clients the data
    /// path announced since.
    fn now(&self, added: &BTreeMap<u32, u64>) -> Census {
        let passed = self.at.elapsed().as_secs();
        let mut out = self.counted.clone();
        for (second, real, n) in &self.expiring {
            if u64::from(*second) < passed {
                if let Some(count) = out.per_real.get_mut(real) {
                    *count = count.saturating_sub(*n);
                }
                out.live = out.live.saturating_sub(*n);
            }
        }
        for (real, n) in added {
            *out.per_real.entry(*real).or_insert(0) += n;
            out.live += n;
            out.entries += n;
        }
        out.per_real.retain(|_, n| *n > 0);
        out
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Between walks: an entry the walk said expires in second k is
    /// counted out once k + 1 seconds have passed; announced clients are in.
    #[test]
    fn between_walks_expiries_leave_by_the_second_and_arrivals_come_in() {
        let walked = Walked {
            at: Instant::now() - Duration::from_millis(2_500),
            counted: Census {
                per_real: BTreeMap::from([(1, 10), (2, 5)]),
                live: 15,
                entries: 20,
            },
            expiring: vec![(0, 1, 3), (1, 2, 5), (2, 1, 4)],
        };
        let now = walked.now(&BTreeMap::from([(3, 1)]));
        assert_eq!(now.per_real, BTreeMap::from([(1, 7), (3, 1)]));
        assert_eq!((now.live, now.entries), (15 - 3 - 5 + 1, 21));
    }
}
