//! Active-client counting: a background thread passes over the affinity
//! table about once a second (batched reads, an array lookup per entry),
//! counts live entries per real server, removes entries well past their
//! expiry (the table never evicts by itself), and on a paired master also
//! finds what to stream to the peer ([`crate::sync::StreamTracker`]).

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
    balancer::{Census, CensusKey, Tally},
    dataplane::AffinityScan,
    monotonic_ns,
    sync::{self, PassOutcome, StreamTracker},
};

/// How often active clients are counted (a pass over the affinity table).
pub(super) const CENSUS_EVERY: Duration = Duration::from_secs(1);

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
}

/// One pass of the stream, for the daemon to send.
pub(super) struct ReadyPass {
    pub(super) epoch: u64,
    pub(super) entries: Vec<(AffinityKey, Affinity)>,
    pub(super) outcome: PassOutcome,
    /// Live entries in the table.
    pub(super) total: u64,
}

/// Most entries one pass removes (a system call each); more wait for the next.
const MAX_SWEPT: usize = 500_000;

/// Counts active clients every [`CENSUS_EVERY`] until `stop` is set, and
/// finds what to stream while asked to.
#[expect(
    clippy::needless_pass_by_value,
    reason = "owned by the thread it runs on"
)]
pub(super) fn census_thread(
    mut scanner: Box<dyn AffinityScan>,
    shared: Arc<Mutex<CensusShared>>,
    stop: Arc<AtomicBool>,
) {
    let mut tracker = StreamTracker::default();
    while !stop.load(Ordering::Relaxed) {
        let Ok((key, stream, epoch)) = shared.lock().map(|mut s| {
            for command in std::mem::take(&mut s.stream.commands) {
                command(&mut tracker);
            }
            let stream = s.stream.on && s.stream.ready.is_none();
            (s.key.clone(), stream, s.stream.epoch)
        }) else {
            return;
        };
        let started = monotonic_ns();
        let mut tally = Tally::default();
        let mut streamed = Vec::new();
        let mut dead = Vec::new();
        if stream {
            tracker.start_pass();
        }
        let result = scanner.scan(&mut |k, v| {
            let live = tally.add(&key, k, v, started);
            if !live && dead.len() < MAX_SWEPT && key.sweepable(k, v, started) {
                dead.push(*k);
            }
            if live && stream {
                let refresh = key.timeout(k.service_id).map_or(u64::MAX, sync::refresh_ns);
                if tracker.offer(k, v, refresh) {
                    streamed.push((*k, *v));
                }
            }
        });
        for k in sweep(scanner.as_mut(), &key, &dead) {
            tracker.forget(&k);
        }
        let outcome = stream.then(|| tracker.end_pass());
        match result {
            Ok(()) => {
                if let Ok(mut s) = shared.lock() {
                    let census = tally.finish();
                    if let Some(outcome) = outcome {
                        s.stream.ready = Some(ReadyPass {
                            epoch,
                            entries: streamed,
                            outcome,
                            total: census.live,
                        });
                    }
                    s.latest = census;
                }
            }
            Err(error) => {
                if stream {
                    // The pass may have recorded entries it never handed over.
                    tracker.resume();
                }
                log::warn!("counting active clients: {error}");
            }
        }
        std::thread::sleep(CENSUS_EVERY);
    }
}

/// Removes the entries found dead, each checked again just before (the
/// data path may have renewed it since the pass read it). Returns those
/// removed.
fn sweep(
    scanner: &mut dyn AffinityScan,
    key: &CensusKey,
    dead: &[AffinityKey],
) -> Vec<AffinityKey> {
    let mut removed = Vec::new();
    for k in dead {
        match scanner.remove_if(k, &|v| key.sweepable(k, v, monotonic_ns())) {
            Ok(true) => removed.push(*k),
            Ok(false) => {}
            Err(error) => {
                log::warn!("removing expired persistence entries: {error}");
                break;
            }
        }
    }
    if !removed.is_empty() {
        log::debug!("removed {} expired persistence entries", removed.len());
    }
    removed
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
