//! Bounded waiting: poll a probe until it reports what was awaited, or fail
//! naming what was awaited, for how long, and what the probe saw last. Every
//! wait of the lab, of the lbd driver and of the tests goes through here, so
//! a wait can fail, and says why when it does.
//!
//! Bounds come from the configured intervals (health-check `interval_ms`,
//! `rise`, `fall`, VRRP `advert_interval_ms`, lbd's census period) plus
//! [`SLACK`], never from a bare sub-second constant.

use std::{
    fmt, thread,
    time::{Duration, Instant},
};

/// How often a wait looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

/// Room on top of a bound derived from configured intervals, for a loaded
/// 2-core machine: starting `lbctl` or `ip`, scheduling delays, one more poll.
pub const SLACK: Duration = Duration::from_secs(2);

/// What one look at an awaited condition found.
#[derive(Clone, Debug)]
pub enum Probe<T> {
    /// It holds: the wait returns this.
    Ready(T),
    /// Not yet; what was seen instead.
    Pending(String),
    /// It never will (say, the process that was to bring it about exited):
    /// the wait stops at once.
    Failed(String),
}

/// Why a wait ended without what it awaited.
#[derive(Clone, Debug)]
pub enum WaitError {
    /// The bound passed.
    TimedOut {
        /// What was awaited.
        what: String,
        /// The bound.
        timeout: Duration,
        /// What the probe saw last.
        last: String,
    },
    /// The probe said it can no longer happen.
    Failed {
        /// What was awaited.
        what: String,
        /// How long it had been awaited.
        after: Duration,
        /// Why it cannot happen.
        why: String,
    },
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::TimedOut {
                what,
                timeout,
                last,
            } => write!(
                f,
                "timed out after {timeout:?} waiting for {what}; last seen: {last}"
            ),
            WaitError::Failed { what, after, why } => {
                write!(f, "gave up waiting for {what} after {after:?}: {why}")
            }
        }
    }
}

impl std::error::Error for WaitError {}

/// Looks with `probe` every [`POLL_EVERY`] until it is [`Probe::Ready`]
/// (returning its value) or [`Probe::Failed`], or `timeout` has passed. The
/// probe runs at least once, and once more at the bound.
///
/// # Errors
/// [`WaitError::TimedOut`] with the last [`Probe::Pending`] observation, or
/// [`WaitError::Failed`].
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Probe<T>,
) -> Result<T, WaitError> {
    let start = Instant::now();
    loop {
        let last = match probe() {
            Probe::Ready(found) => return Ok(found),
            Probe::Pending(seen) => seen,
            Probe::Failed(why) => {
                return Err(WaitError::Failed {
                    what: what.to_owned(),
                    after: start.elapsed(),
                    why,
                })
            }
        };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(WaitError::TimedOut {
                what: what.to_owned(),
                timeout,
                last,
            });
        }
        thread::sleep(POLL_EVERY.min(timeout - elapsed));
    }
}

/// Polls `probe` (as [`poll_until`]) until it returns `Ok`; an `Err` is
/// what it saw instead.
///
/// # Errors
/// [`WaitError::TimedOut`] after `timeout`, with the last `Err`.
pub fn try_wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, WaitError> {
    poll_until(what, timeout, || match probe() {
        Ok(found) => Probe::Ready(found),
        Err(seen) => Probe::Pending(seen),
    })
}

/// [`try_wait_until`] for tests: returns what `probe` found.
///
/// # Panics
/// After `timeout`: "timed out after {timeout:?} waiting for {what}; last
/// seen: {the last `Err`}".
#[must_use]
#[track_caller]
pub fn wait_until<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Result<T, String>) -> T {
    match try_wait_until(what, timeout, probe) {
        Ok(found) => found,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_returns_what_the_probe_found() {
        let mut looks = 0;
        let found = wait_until("the third look", Duration::from_secs(5), || {
            looks += 1;
            if looks == 3 {
                Ok(looks)
            } else {
                Err(format!("look {looks}"))
            }
        });
        assert_eq!(found, 3);
    }

    #[test]
    fn a_timeout_names_what_was_awaited_and_the_last_observation() {
        let mut looks = 0;
        let err = try_wait_until("Godot", Duration::from_millis(60), || {
            looks += 1;
            Err::<(), _>(format!("look {looks}"))
        })
        .expect_err("Godot never comes");
        let text = err.to_string();
        assert!(
            text.starts_with("timed out after 60ms waiting for Godot; last seen: look "),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("look {looks}")),
            "the last look: {text}"
        );
    }

    #[test]
    fn a_failed_probe_stops_the_wait_at_once() {
        let started = Instant::now();
        let err = poll_until::<()>("a dead process", Duration::from_secs(30), || {
            Probe::Failed("it exited".into())
        })
        .expect_err("it cannot happen");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            err.to_string()
                .starts_with("gave up waiting for a dead process after "),
            "{err}"
        );
        assert!(err.to_string().ends_with(": it exited"), "{err}");
    }

    #[test]
    #[should_panic(expected = "timed out after 0ns waiting for nothing; last seen: never")]
    fn wait_until_panics_with_the_message() {
        let () = wait_until("nothing", Duration::ZERO, || Err("never".to_owned()));
    }
}
