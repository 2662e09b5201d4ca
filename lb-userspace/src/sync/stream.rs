//! The master's session stream to its peer, pass by pass: which census
//! pass this is, which earlier passes count as lost, and when the peer holds
//! the whole table.
//!
//! The census (`lb_common::census`) decides per entry, in the kernel: an
//! entry goes to the peer when it was never sent (a new client, or one
//! written again with another server), when it was sent in a pass the peer
//! did not confirm, or when `refresh_passes` (a quarter of its timeout, 1
//! to 60 s) have passed since it was sent, so a million active clients cost
//! the link a trickle, not a million entries a second; at most
//! `STREAM_PER_PASS` a pass. Each entry records the pass that sent it.
//!
//! Every pass that sends something ends with a numbered `Pass` mark; the
//! peer answers with the last pass it has installed ([`StreamTracker::confirmed`]).
//! After a reconnection to the same peer process the stream resumes: what
//! was sent after the last confirmed pass counts as lost and is sent again
//! ([`StreamTracker::resume`]), the rest stands. A new peer process, or a
//! node that has just become master, starts over ([`StreamTracker::restart`]):
//! everything sent before counts as lost. Nothing here grows with the table.

/// One pass's orders for the census: its number and the lost passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassPlan {
    /// The pass's number (from 1).
    pub pass: u32,
    /// Entries sent in passes `(lost_lo, lost_hi]` count as never sent.
    pub lost_lo: u32,
    /// See `lost_lo`.
    pub lost_hi: u32,
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
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamTracker {
    pass: u32,
    acked: u32,
    lost: Option<(u32, u32)>,
    /// The stream started over and has not yet sent `begin`.
    starting: bool,
    /// The stream (re)started and has not caught up yet.
    catching_up: bool,
}

impl StreamTracker {
    /// Starts over: the peer holds nothing (a new peer process, or this
    /// node has just become master).
    pub fn restart(&mut self) {
        self.lost = (self.pass > 0).then_some((0, self.pass));
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
        let lo = self.lost.map_or(self.acked, |(lo, _)| lo.min(self.acked));
        if lo < self.pass {
            self.lost = Some((lo, self.pass));
        }
    }

    /// The peer holds every pass up to `pass`.
    pub fn confirmed(&mut self, pass: u64) {
        let pass = u32::try_from(pass).unwrap_or(u32::MAX).min(self.pass);
        self.acked = self.acked.max(pass);
    }

    /// The tracker as a re-executed lbd takes it over at `now_s` seconds
    /// (the count [`StreamTracker::start_pass`] takes): a pass its
    /// predecessor may have walked after this copy was taken counts as
    /// sent, and so as unconfirmed when the stream resumes.
    #[must_use]
    pub fn handed_over(mut self, now_s: u64) -> Self {
        let now = u32::try_from(now_s).unwrap_or(u32::MAX);
        self.pass = self.pass.saturating_add(1).max(now);
        self
    }

    /// The next pass's orders, at `now_s` seconds (any steady count): pass
    /// numbers follow the seconds, so `refresh_passes` are seconds however
    /// often the census walks.
    pub fn start_pass(&mut self, now_s: u64) -> PassPlan {
        let now = u32::try_from(now_s).unwrap_or(u32::MAX);
        self.pass = self.pass.saturating_add(1).max(now);
        let (lost_lo, lost_hi) = self.lost.unwrap_or((0, 0));
        PassPlan {
            pass: self.pass,
            lost_lo,
            lost_hi,
        }
    }

    /// Whether the stream has yet to catch up (since it started or resumed).
    #[must_use]
    pub fn catching_up(&self) -> bool {
        self.catching_up
    }

    /// Ends the pass: `behind`, some entry waited for a later pass.
    pub fn end_pass(&mut self, behind: bool) -> PassOutcome {
        if !behind {
            // Every lost entry still in the table was sent again.
            self.lost = None;
        }
        let outcome = PassOutcome {
            pass: u64::from(self.pass),
            begin: std::mem::take(&mut self.starting),
            end: self.catching_up && !behind,
        };
        if !behind {
            self.catching_up = false;
        }
        outcome
    }
}

/// The census's per-entry rule over an in-memory table, as the kernel
/// applies it (for tests and the HA simulation): the entries of `table`
/// the peer needs in pass `plan` (pass 0 at `base_ns`), at most `budget`,
/// marked as sent; and whether any waited.
pub fn pass_over<'a>(
    table: impl IntoIterator<Item = &'a mut lb_common::Affinity>,
    plan: PassPlan,
    base_ns: u64,
    refresh_passes: u32,
    budget: usize,
) -> (Vec<usize>, bool) {
    let run = lb_common::census::CensusRun {
        pass: plan.pass,
        lost_lo: plan.lost_lo,
        lost_hi: plan.lost_hi,
        pass_base_ns: base_ns,
        ..lb_common::census::CensusRun::default()
    };
    let mut sent = Vec::new();
    let mut behind = false;
    for (i, entry) in table.into_iter().enumerate() {
        if !lb_common::census::stream_wanted(entry, &run, refresh_passes) {
            continue;
        }
        if sent.len() >= budget {
            behind = true;
            continue;
        }
        entry.sync_pass = plan.pass;
        sent.push(i);
    }
    (sent, behind)
}

#[cfg(test)]
mod tests {
    use lb_common::Affinity;

    use super::*;

    const BUDGET: usize = 4;

    fn table(n: usize) -> Vec<Affinity> {
        vec![
            Affinity {
                real: 1,
                real_address: 7,
                last_seen_ns: 1,
                seen_jiffies: 0,
                sync_pass: 0,
            };
            n
        ]
    }

    /// One pass over `t` (pass p at p seconds; every client seen just
    /// before it): the indexes sent.
    fn pass(s: &mut StreamTracker, t: &mut [Affinity], refresh: u32) -> (Vec<usize>, PassOutcome) {
        let plan = s.start_pass(0);
        for e in t.iter_mut() {
            e.last_seen_ns = u64::from(plan.pass) * 1_000_000_000 - 1;
        }
        let (sent, behind) = pass_over(t.iter_mut(), plan, 0, refresh, BUDGET);
        (sent, s.end_pass(behind))
    }

    #[test]
    fn refreshed_clients_are_sent_again_only_after_the_refresh_interval() {
        let (mut s, mut t) = (StreamTracker::default(), table(3));
        s.restart();
        let (sent, outcome) = pass(&mut s, &mut t, 10);
        assert_eq!(sent, [0, 1, 2]);
        assert!(outcome.begin && outcome.end);
        for p in 2..11 {
            assert_eq!(pass(&mut s, &mut t, 10).0, Vec::<usize>::new(), "pass {p}");
        }
        assert_eq!(pass(&mut s, &mut t, 10).0, [0, 1, 2], "pass 11: due again");
        // Written again with another server: sent at once.
        t[1].sync_pass = 0;
        assert_eq!(pass(&mut s, &mut t, 10).0, [1]);
        // A client not seen since it was sent is never sent again.
        let (mut s, mut t) = (StreamTracker::default(), table(2));
        s.restart();
        assert_eq!(pass(&mut s, &mut t, 1).0, [0, 1]);
        for p in 2..10 {
            let plan = s.start_pass(0);
            let (idle, _) = pass_over(t.iter_mut(), plan, 0, 1, BUDGET);
            assert!(idle.is_empty(), "pass {p}: {idle:?}");
        }
    }

    #[test]
    fn a_snapshot_larger_than_a_pass_takes_several_and_ends_once_caught_up() {
        let (mut s, mut t) = (StreamTracker::default(), table(2 * BUDGET + 1));
        s.restart();
        let (first, o1) = pass(&mut s, &mut t, 60);
        assert_eq!(first.len(), BUDGET);
        assert!(o1.begin && !o1.end);
        let (second, o2) = pass(&mut s, &mut t, 60);
        assert_eq!(second.len(), BUDGET);
        assert!(!o2.begin && !o2.end);
        let (third, o3) = pass(&mut s, &mut t, 60);
        assert_eq!(third, [2 * BUDGET]);
        assert!(o3.end);
    }

    #[test]
    fn an_interrupted_stream_resumes_from_the_last_confirmed_pass() {
        let (mut s, mut t) = (StreamTracker::default(), table(3 * BUDGET));
        s.restart();
        let (_, o1) = pass(&mut s, &mut t, 60);
        s.confirmed(o1.pass);
        let (second, _) = pass(&mut s, &mut t, 60);
        // The link drops before the peer confirms pass 2; it comes back.
        s.resume();
        let (again, o3) = pass(&mut s, &mut t, 60);
        assert_eq!(again, second, "pass 2 is sent again, pass 1 is not");
        assert!(!o3.begin && !o3.end);
        let (rest, o4) = pass(&mut s, &mut t, 60);
        assert_eq!(rest.len(), BUDGET, "then what was never sent");
        assert!(o4.end, "and the peer hears the table is complete");
        assert!(pass(&mut s, &mut t, 60).0.is_empty());
        // A new peer process holds nothing: everything again.
        s.restart();
        let (all, o) = pass(&mut s, &mut t, 60);
        assert_eq!(all.len(), BUDGET);
        assert!(o.begin);
    }

    #[test]
    fn a_handed_over_tracker_sends_again_a_pass_walked_after_its_copy() {
        let (mut s, mut t) = (StreamTracker::default(), table(3 * BUDGET));
        s.restart();
        let (_, o1) = pass(&mut s, &mut t, 60);
        s.confirmed(o1.pass);
        let copy = s.clone();
        // The old lbd walks pass 2 after the copy was taken, then executes
        // the new one, which re-pairs with the same peer process.
        let (second, _) = pass(&mut s, &mut t, 60);
        let mut s = copy.handed_over(0);
        s.resume();
        let (again, o) = pass(&mut s, &mut t, 60);
        assert_eq!(again, second, "pass 2 is sent again, pass 1 is not");
        assert!(!o.begin, "not a new snapshot");
    }

    #[test]
    fn a_refused_batch_is_sent_again() {
        let (mut s, mut t) = (StreamTracker::default(), table(4));
        s.restart();
        let (_, o1) = pass(&mut s, &mut t, 60);
        s.confirmed(o1.pass);
        t.extend(table(2));
        assert_eq!(pass(&mut s, &mut t, 60).0, [4, 5]);
        s.resend_unconfirmed();
        assert_eq!(pass(&mut s, &mut t, 60).0, [4, 5]);
        assert!(pass(&mut s, &mut t, 60).0.is_empty());
    }
}
