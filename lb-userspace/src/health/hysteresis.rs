//! The rise/fall decision of one health check: pure, no clock, no I/O.
//!
//! A server counts as up until its first check completes, a failed first
//! check takes it down at once, and after that `rise` consecutive passes
//! bring it up and `fall` consecutive failures take it down.

use crate::balancer::Health;

/// The rise/fall decision for one check: pure, no clock, no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    health: Health,
    passes: u32,
    failures: u32,
    checks: u64,
}

impl Hysteresis {
    /// A server not checked yet (so up); `rise` and `fall` of 0 count as 1.
    #[must_use]
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            health: Health::Up,
            passes: 0,
            failures: 0,
            checks: 0,
        }
    }

    /// A check that has run before with this outcome (a data path taken
    /// over from an earlier lbd): no first-check rule, `health` until
    /// `rise` passes or `fall` failures say otherwise.
    #[must_use]
    pub fn established(rise: u32, fall: u32, health: Health) -> Self {
        Self {
            health,
            checks: 1,
            ..Self::new(rise, fall)
        }
    }

    /// Records one completed check; returns the new health when it flips.
    pub fn record(&mut self, passed: bool) -> Option<Health> {
        let first = self.checks == 0;
        self.checks = self.checks.saturating_add(1);
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            if self.health == Health::Down && self.passes >= self.rise {
                self.health = Health::Up;
                return Some(Health::Up);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            if self.health == Health::Up && (first || self.failures >= self.fall) {
                self.health = Health::Down;
                return Some(Health::Down);
            }
        }
        None
    }

    /// Current health.
    #[must_use]
    pub fn health(&self) -> Health {
        self.health
    }

    /// Passes in a row up to now.
    #[must_use]
    pub fn consecutive_passes(&self) -> u32 {
        self.passes
    }

    /// Failures in a row up to now.
    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Checks recorded since this state was created.
    #[must_use]
    pub fn checks(&self) -> u64 {
        self.checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_until_the_first_check_and_a_first_pass_changes_nothing() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.health(), Health::Up);
        assert_eq!(h.record(true), None);
        assert_eq!(
            (h.health(), h.consecutive_passes(), h.checks()),
            (Health::Up, 1, 1)
        );
    }

    #[test]
    fn a_failed_first_check_takes_the_server_down_at_once() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!((h.health(), h.consecutive_failures()), (Health::Down, 1));
    }

    #[test]
    fn fall_consecutive_failures_take_it_down_rise_passes_bring_it_up() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.consecutive_failures(), 2);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(false), None, "no second flip");
        assert_eq!(h.record(true), None);
        assert_eq!(h.consecutive_passes(), 1);
        assert_eq!(h.record(true), Some(Health::Up));
        assert_eq!(h.record(true), None);
        assert_eq!((h.health(), h.checks()), (Health::Up, 8));
    }

    #[test]
    fn a_flapping_server_flips_only_when_rise_or_fall_is_met() {
        let mut h = Hysteresis::new(3, 3);
        assert_eq!(h.record(false), Some(Health::Down));
        for _ in 0..10 {
            assert_eq!(h.record(true), None);
            assert_eq!(h.record(true), None);
            assert_eq!(h.record(false), None);
        }
        assert_eq!(h.health(), Health::Down);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(true), Some(Health::Up));
        for _ in 0..10 {
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(true), None);
        }
        assert_eq!(h.health(), Health::Up);
    }

    #[test]
    fn an_established_check_keeps_its_health_until_rise_or_fall() {
        let mut down = Hysteresis::established(2, 3, Health::Down);
        assert_eq!(down.record(true), None, "one pass is not rise");
        assert_eq!(down.record(true), Some(Health::Up));
        let mut up = Hysteresis::established(2, 3, Health::Up);
        assert_eq!(up.record(false), None, "no first-check rule");
        assert_eq!(up.record(false), None);
        assert_eq!(up.record(false), Some(Health::Down));
    }

    #[test]
    fn rise_and_fall_of_zero_count_as_one() {
        let mut h = Hysteresis::new(0, 0);
        assert_eq!(h.record(true), None);
        assert_eq!(h.record(false), Some(Health::Down));
        assert_eq!(h.record(true), Some(Health::Up));
    }
}
