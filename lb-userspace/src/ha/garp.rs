//! When to send gratuitous ARP after a takeover (RFC 5798 section 6.4.1:
//! "for each IP address associated with the virtual router, broadcast a
//! gratuitous ARP request"), repeated so a neighbour that missed the first
//! burst still learns the new MAC.

use std::time::{Duration, Instant};

/// When to send gratuitous ARP after becoming master: a burst at once, then
/// single repeats, so a neighbour that missed the first still learns the new
/// MAC (keepalived sends 5 at once and 5 more after 5 s).
#[derive(Debug, Default)]
pub struct GarpSchedule {
    due: Vec<(Instant, u32)>,
}

/// The rounds after a takeover: (delay, frames per VIP).
const ROUNDS: [(Duration, u32); 4] = [
    (Duration::ZERO, 3),
    (Duration::from_millis(500), 1),
    (Duration::from_secs(2), 1),
    (Duration::from_secs(5), 3),
];

impl GarpSchedule {
    /// Schedules the rounds of one announcement, starting `now`.
    pub fn announce(&mut self, now: Instant) {
        self.due = ROUNDS
            .iter()
            .map(|(delay, count)| (now + *delay, *count))
            .collect();
    }

    /// Forgets pending rounds (on losing master).
    pub fn cancel(&mut self) {
        self.due.clear();
    }

    /// The next round's time.
    #[must_use]
    pub fn next(&self) -> Option<Instant> {
        self.due.iter().map(|(at, _)| *at).min()
    }

    /// The frames per VIP due by `now` (0 when nothing is due).
    pub fn take_due(&mut self, now: Instant) -> u32 {
        let mut frames = 0;
        self.due.retain(|(at, count)| {
            if *at <= now {
                frames += count;
                false
            } else {
                true
            }
        });
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_rounds_follow_a_takeover_and_stop_on_cancel() {
        let t0 = Instant::now();
        let mut g = GarpSchedule::default();
        g.announce(t0);
        assert_eq!(g.take_due(t0), 3);
        assert_eq!(g.take_due(t0), 0);
        assert_eq!(g.next(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(g.take_due(t0 + Duration::from_secs(3)), 2);
        g.cancel();
        assert_eq!(g.next(), None);
    }
}
