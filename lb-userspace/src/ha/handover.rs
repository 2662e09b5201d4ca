//! What a member of the pair hands the lbd it re-executes on SIGUSR2 (same
//! process, new binary), so that to the peer nothing happened: a master
//! stays master with no advertisement missed, and the sync session comes
//! back as the same peer process, resuming its session stream instead of
//! starting a new snapshot.
//!
//! The old lbd writes a [`Handover`] into the new one's environment
//! ([`HANDOVER_ENV`]); the exec itself and the new lbd's start take longer
//! than an advertisement interval, so a master first starts a small relay
//! process that sends its [`AdvertRelay`] on time until the new lbd
//! advertises itself (`daemon::relay`).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::sync::StreamTracker;

/// The environment variable holding the [`Handover`] as JSON.
pub const HANDOVER_ENV: &str = "LBD_HA_HANDOVER";
/// The environment variable holding the advertisement relay's process id
/// (apart from the [`Handover`], so that the relay is stopped even when
/// the hand-over cannot be read).
pub const RELAY_ENV: &str = "LBD_RELAY_PID";

/// The coordinator's part of a hand-over ([`super::Coordinator::hand_over`],
/// [`super::Coordinator::resume`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    /// The virtual router the state belongs to: resumed only if the
    /// configuration still names it.
    pub vrid: u8,
    /// The node was master.
    pub master: bool,
    /// The peer process the session stream went to.
    pub streamed_to: Option<u64>,
    /// Configurations sent (primary) or received (secondary).
    pub config_version: u64,
}

/// Everything handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The coordinator's state.
    pub coordinator: Resumed,
    /// The sync session's boot id: the peer sees the same process.
    pub boot_id: u64,
    /// The session stream's pass 0, on the monotonic clock (pass numbers
    /// count seconds from there).
    pub stream_base_ns: u64,
    /// What the peer holds of the session stream.
    pub stream: StreamTracker,
}

/// Errors reading a hand-over.
#[derive(Debug, thiserror::Error)]
#[error("{HANDOVER_ENV} is not a hand-over from lbd ({0}); starting as after a restart")]
pub struct HandoverError(#[from] serde_json::Error);

impl Handover {
    /// The value for [`HANDOVER_ENV`].
    #[must_use]
    pub fn to_env(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a value of [`HANDOVER_ENV`].
    ///
    /// # Errors
    /// When it is not one [`Handover::to_env`] wrote.
    pub fn from_env(value: &str) -> Result<Self, HandoverError> {
        Ok(serde_json::from_str(value)?)
    }
}

/// A master's advertisement as the relay sends it while lbd re-executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertRelay {
    /// The unicast peer or 224.0.0.18.
    pub to: Ipv4Addr,
    /// The encoded advertisement (the kernel adds the IP header).
    pub message: Vec<u8>,
    /// The advertisement interval.
    pub every: Duration,
    /// When the next advertisement is due.
    pub next: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handover_reads_back_and_garbage_is_refused() {
        let handover = Handover {
            coordinator: Resumed {
                vrid: 51,
                master: true,
                streamed_to: Some(7),
                config_version: 3,
            },
            boot_id: 0xfeed,
            stream_base_ns: 12,
            stream: StreamTracker::default(),
        };
        let read = Handover::from_env(&handover.to_env()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, handover);
        let refused = Handover::from_env("{\"boot_id\": 1}").map(|_| ());
        assert!(refused.is_err_and(|e| e.to_string().contains(HANDOVER_ENV)));
    }
}
