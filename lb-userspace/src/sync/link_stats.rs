//! The sync link's state as `lbctl ha` and the metrics see it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::session::SessionStats;

/// Link state shared with `lbctl ha` and the metrics; written by [`run`](super::run) only.
#[derive(Debug)]
pub struct LinkStats {
    connected: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    /// `u64::MAX` while unknown.
    lag_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`LinkStats`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatsSnapshot {
    /// Whether a session is paired now.
    pub connected: bool,
    /// Messages sent since the daemon started.
    pub sent: u64,
    /// Messages received since the daemon started.
    pub received: u64,
    /// Latest heartbeat round trip, queueing included.
    pub lag_ms: Option<u64>,
    /// The latest reason a connection failed or ended.
    pub last_error: Option<String>,
}

impl Default for LinkStats {
    fn default() -> Self {
        LinkStats {
            connected: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            lag_ms: AtomicU64::new(u64::MAX),
            last_error: Mutex::new(None),
        }
    }
}

impl LinkStats {
    /// Reads the current values.
    #[must_use]
    pub fn snapshot(&self) -> LinkStatsSnapshot {
        let lag = self.lag_ms.load(Ordering::Relaxed);
        LinkStatsSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            lag_ms: (lag != u64::MAX).then_some(lag),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    pub(super) fn set_error(&self, reason: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
    }

    pub(super) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub(super) fn update(&self, base: (u64, u64), session: SessionStats) {
        self.sent.store(base.0 + session.sent, Ordering::Relaxed);
        self.received
            .store(base.1 + session.received, Ordering::Relaxed);
        if let Some(lag) = session.lag_ms {
            self.lag_ms.store(lag, Ordering::Relaxed);
        }
    }
}
