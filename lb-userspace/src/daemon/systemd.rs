//! systemd's notification protocol (`Type=notify`, `WatchdogSec=`): READY
//! once lbd forwards and answers, RELOADING around a SIGHUP, STOPPING at a
//! clean stop, and a watchdog ping from the main loop, so a loop that hangs
//! is restarted (the data path forwards meanwhile, and the next lbd takes
//! it over). Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//! `NOTIFY_SOCKET` is kept in the environment: a re-executed lbd (SIGUSR2)
//! is the same service process and says READY again.

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, state) {
        log::debug!("systemd notification: {error}");
    }
}

/// lbd forwards and answers.
pub(super) fn ready() {
    notify(&[NotifyState::Ready]);
}

/// A SIGHUP is being handled.
pub(super) fn reloading() {
    notify(&[NotifyState::Reloading]);
}

/// lbd is stopping.
pub(super) fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// How often to ping the watchdog (half its timeout), if systemd wants it.
pub(super) fn watchdog_every() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
        .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
}

/// The main loop is alive.
pub(super) fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}
