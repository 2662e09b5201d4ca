//! Timers as data: a protocol state machine names its timers in an enum and
//! keeps one deadline per timer in a [`TimerTable`]; its `poll_timeout` is
//! the earliest deadline, and the caller's clock decides when one fires
//! (quinn-proto's `TimerTable`, the shape STYLE.md asks for).

use std::{marker::PhantomData, time::Instant};

/// A set of named timers: an enum whose variants index a [`TimerTable`].
pub trait Timer: Copy + 'static {
    /// Every timer, in index order.
    const ALL: &'static [Self];
    /// This timer's slot in the table.
    fn index(self) -> usize;
}

/// One optional deadline per timer of `T` (`N` is `T::ALL.len()`).
#[derive(Debug, Clone)]
pub struct TimerTable<T, const N: usize> {
    deadlines: [Option<Instant>; N],
    timers: PhantomData<T>,
}

impl<T, const N: usize> Default for TimerTable<T, N> {
    fn default() -> Self {
        Self {
            deadlines: [None; N],
            timers: PhantomData,
        }
    }
}

impl<T: Timer, const N: usize> TimerTable<T, N> {
    /// Arms `timer` to fire at `at` (replacing an earlier deadline).
    pub fn set(&mut self, timer: T, at: Instant) {
        self.deadlines[timer.index()] = Some(at);
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: T) {
        self.deadlines[timer.index()] = None;
    }

    /// The earliest deadline of any armed timer.
    #[must_use]
    pub fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Disarms and returns a timer due at `now`, if any (in `T::ALL` order).
    pub fn take_expired(&mut self, now: Instant) -> Option<T> {
        let timer = T::ALL
            .iter()
            .copied()
            .find(|t| self.deadlines[t.index()].is_some_and(|at| at <= now))?;
        self.stop(timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum T {
        A,
        B,
    }

    impl Timer for T {
        const ALL: &'static [Self] = &[T::A, T::B];
        fn index(self) -> usize {
            self as usize
        }
    }

    #[test]
    fn expired_timers_fire_once_in_order() {
        let t0 = Instant::now();
        let mut table: TimerTable<T, 2> = TimerTable::default();
        assert_eq!(table.next(), None);
        table.set(T::B, t0 + Duration::from_secs(1));
        table.set(T::A, t0 + Duration::from_secs(2));
        assert_eq!(table.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(table.take_expired(t0), None);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(table.take_expired(later), Some(T::A));
        assert_eq!(table.take_expired(later), Some(T::B));
        assert_eq!(table.take_expired(later), None);
        table.set(T::A, t0);
        table.stop(T::A);
        assert_eq!(table.next(), None);
    }
}
