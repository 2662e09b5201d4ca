//! What the master streams of its affinity table to the peer, pass by pass.
//!
//! The census passes over the table once a second and offers every live
//! entry to the [`StreamTracker`], which remembers what it has sent of each
//! client and answers whether to send it now:
//!
//! - a client the peer has not been sent, or whose server changed: now;
//! - a client the data path keeps refreshing: again only once
//!   [`refresh_ns`] has passed since the copy the peer holds, so a
//!   million active clients cost the link a trickle, not a million entries a
//!   second;
//! - at most [`STREAM_PER_PASS`] entries a pass: the rest wait for the next
//!   (a snapshot of a million entries takes a few passes, and the link and
//!   the peer are never flooded).
//!
//! Every pass ends with a numbered `Pass` mark; the peer answers with the
//! last pass it has installed. After a reconnection to the same peer process
//! the stream resumes: only what was sent after the last answered pass is
//! sent again ([`StreamTracker::resume`]), not the whole table. A new peer
//! process, or a node that has just become master, starts from nothing
//! ([`StreamTracker::restart`]). Memory: about 24 bytes per client sent
//! (a hash map, so up to twice that with its slack).

use std::collections::HashMap;

use lb_common::{Affinity, AffinityKey};

/// Most entries one pass sends.
pub const STREAM_PER_PASS: usize = 250_000;

/// Longest a refreshed client waits to be sent again.
const MAX_REFRESH_NS: u64 = 60_000_000_000;
/// Shortest.
const MIN_REFRESH_NS: u64 = 1_000_000_000;

/// How long the peer's copy of an entry may lag the data path's: a quarter
/// of the service's timeout, between 1 and 60 seconds. The peer's entry then
/// expires at most that much earlier than ours, and never while the client
/// is active.
#[must_use]
pub fn refresh_ns(timeout_ns: u64) -> u64 {
    (timeout_ns / 4).clamp(MIN_REFRESH_NS, MAX_REFRESH_NS)
}

/// What the peer was sent of one client.
#[derive(Debug, Clone, Copy)]
struct Sent {
    real_address: u32,
    /// `last_seen_ns` as sent, in seconds (the refresh is seconds or more).
    seen_s: u32,
    /// The pass that sent it.
    pass: u32,
}

/// One pass's outcome, for the daemon to send.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// The pass's number (the `Pass` mark that follows its entries).
    pub pass: u64,
    /// Whether the stream starts over here (the peer holds nothing of ours).
    pub begin: bool,
    /// Whether the pass caught up since the stream (re)started: the peer now
    /// holds the whole table (the snapshot's `End`).
    pub end: bool,
}

/// The master's record of what the peer holds. See the module doc.
#[derive(Debug, Default)]
pub struct StreamTracker {
    sent: HashMap<u64, Sent, foldhash::fast::RandomState>,
    pass: u32,
    acked: u32,
    /// Entries sent in passes `(lo, hi]` count as unsent (lost with a link).
    resend: Option<(u32, u32)>,
    /// Sent this pass.
    taken: usize,
    /// Some entry waited for a later pass this pass.
    behind: bool,
    /// The stream started over and has not yet sent `begin`.
    starting: bool,
    /// The stream (re)started and has not caught up yet.
    catching_up: bool,
}

fn pack(k: &AffinityKey) -> u64 {
    (u64::from(k.service_id) << 32) | u64::from(k.client)
}

fn seconds(ns: u64) -> u32 {
    u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX)
}

impl StreamTracker {
    /// Starts over: the peer holds nothing (a new peer process, or this
    /// node has just become master).
    pub fn restart(&mut self) {
        self.sent.clear();
        self.resend = None;
        self.acked = self.pass;
        self.starting = true;
        self.catching_up = true;
    }

    /// The link came back to the same peer process: what it did not
    /// confirm is sent again, the rest stands.
    pub fn resume(&mut self) {
        self.resend_unconfirmed();
        self.catching_up = true;
    }

    /// Entries sent after the peer's last confirmed pass count as unsent
    /// (a batch the queue to the peer refused, or a lost connection).
    pub fn resend_unconfirmed(&mut self) {
        let lo = self.resend.map_or(self.acked, |(lo, _)| lo.min(self.acked));
        if lo < self.pass {
            self.resend = Some((lo, self.pass));
        }
    }

    /// The peer holds every pass up to `pass`.
    pub fn confirmed(&mut self, pass: u64) {
        let pass = u32::try_from(pass).unwrap_or(u32::MAX).min(self.pass);
        self.acked = self.acked.max(pass);
    }

    /// Starts a pass.
    pub fn start_pass(&mut self) {
        self.pass = self.pass.wrapping_add(1).max(1);
        self.taken = 0;
        self.behind = false;
    }

    /// Whether to send this live entry now (it is then recorded as sent).
    /// `refresh` is [`refresh_ns`] of its service.
    pub fn offer(&mut self, k: &AffinityKey, v: &Affinity, refresh: u64) -> bool {
        let key = pack(k);
        let seen_s = seconds(v.last_seen_ns);
        if let Some(sent) = self.sent.get(&key) {
            let lost = self
                .resend
                .is_some_and(|(lo, hi)| sent.pass > lo && sent.pass <= hi);
            let stale = u64::from(seen_s.saturating_sub(sent.seen_s)) * 1_000_000_000 >= refresh;
            if sent.real_address == v.real_address && !lost && !stale {
                return false;
            }
        }
        if self.taken >= STREAM_PER_PASS {
            self.behind = true;
            return false;
        }
        self.taken += 1;
        self.sent.insert(
            key,
            Sent {
                real_address: v.real_address,
                seen_s,
                pass: self.pass,
            },
        );
        true
    }

    /// The entry left the table: forget it.
    pub fn forget(&mut self, k: &AffinityKey) {
        self.sent.remove(&pack(k));
    }

    /// Ends the pass.
    pub fn end_pass(&mut self) -> PassOutcome {
        let caught_up = !self.behind;
        if caught_up {
            self.resend = None;
        }
        let outcome = PassOutcome {
            pass: u64::from(self.pass),
            begin: std::mem::take(&mut self.starting),
            end: self.catching_up && caught_up,
        };
        if caught_up {
            self.catching_up = false;
        }
        outcome
    }

    /// Clients recorded as sent.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Whether nothing is recorded as sent.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(i: u32) -> AffinityKey {
        AffinityKey {
            service_id: 1,
            client: i,
        }
    }

    fn entry(real_address: u32, last_seen_ns: u64) -> Affinity {
        Affinity {
            real: 1,
            real_address,
            last_seen_ns,
            seen_jiffies: 0,
        }
    }

    /// One pass over `n` clients all seen at `seen_ns`: the clients sent.
    fn pass(t: &mut StreamTracker, n: u32, seen_ns: u64) -> (Vec<u32>, PassOutcome) {
        t.start_pass();
        let sent = (0..n)
            .filter(|i| t.offer(&key(*i), &entry(7, seen_ns), 10 * S))
            .collect();
        (sent, t.end_pass())
    }

    #[test]
    fn refreshed_clients_are_sent_again_only_after_the_refresh_interval() {
        let mut t = StreamTracker::default();
        t.restart();
        let (sent, outcome) = pass(&mut t, 3, 100 * S);
        assert_eq!(sent, [0, 1, 2]);
        assert!(outcome.begin && outcome.end);
        // Refreshed by the data path every second: nothing to send for 10 s.
        for s in 101..110 {
            assert_eq!(pass(&mut t, 3, s * S).0, Vec::<u32>::new(), "at {s} s");
        }
        assert_eq!(pass(&mut t, 3, 110 * S).0, [0, 1, 2]);
        // A new server is sent at once.
        t.start_pass();
        assert!(t.offer(&key(1), &entry(8, 110 * S), 10 * S));
        assert!(!t.offer(&key(2), &entry(7, 110 * S), 10 * S));
        assert_eq!(refresh_ns(8 * 3600 * S), 60 * S);
        assert_eq!(refresh_ns(10 * S), 2_500_000_000);
    }

    #[test]
    fn a_snapshot_larger_than_a_pass_takes_several_and_ends_once_caught_up() {
        let mut t = StreamTracker::default();
        t.restart();
        let n = u32::try_from(STREAM_PER_PASS).unwrap_or(u32::MAX) * 2 + 5;
        let (first, o1) = pass(&mut t, n, S);
        assert_eq!(first.len(), STREAM_PER_PASS);
        assert!(o1.begin && !o1.end);
        let (second, o2) = pass(&mut t, n, S);
        assert_eq!(second.len(), STREAM_PER_PASS);
        assert!(!o2.begin && !o2.end);
        let (third, o3) = pass(&mut t, n, S);
        assert_eq!(third.len(), 5);
        assert!(o3.end);
        assert_eq!(t.len(), n as usize);
    }

    #[test]
    fn an_interrupted_stream_resumes_from_the_last_confirmed_pass() {
        let mut t = StreamTracker::default();
        t.restart();
        let n = u32::try_from(STREAM_PER_PASS).unwrap_or(u32::MAX) * 3;
        let (_, o1) = pass(&mut t, n, S);
        t.confirmed(o1.pass);
        let (second, _) = pass(&mut t, n, S);
        // The link drops before the peer confirms pass 2; it comes back.
        t.resume();
        let (again, o3) = pass(&mut t, n, S);
        assert_eq!(again, second, "pass 2 is sent again, pass 1 is not");
        assert!(!o3.begin && !o3.end);
        let (rest, o4) = pass(&mut t, n, S);
        assert_eq!(rest.len(), STREAM_PER_PASS, "then what was never sent");
        assert!(o4.end, "and the peer hears the table is complete");
        assert_eq!(pass(&mut t, n, S).0.len(), 0);
        // A new peer process holds nothing: everything again.
        t.restart();
        assert_eq!(pass(&mut t, n, S).0.len(), STREAM_PER_PASS);
    }

    #[test]
    fn a_refused_batch_is_sent_again_and_forgotten_clients_count_as_new() {
        let mut t = StreamTracker::default();
        t.restart();
        let (_, o1) = pass(&mut t, 4, S);
        t.confirmed(o1.pass);
        t.start_pass();
        assert!(t.offer(&key(9), &entry(7, S), 10 * S));
        t.end_pass();
        t.resend_unconfirmed();
        assert_eq!(pass(&mut t, 10, S).0, [4, 5, 6, 7, 8, 9]);
        t.forget(&key(0));
        assert_eq!(pass(&mut t, 10, S).0, [0]);
    }
}
