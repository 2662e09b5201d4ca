//! The NAT and SNAT connection table, the daemon's part: a background
//! thread sweeps it (removes expired connections, counts live ones per
//! server) and, on a paired master, finds the connections the peer must
//! hear of ([`ConnStream`]); the daemon sends them with the session
//! stream's beat, and a backup installs what it receives, so that a
//! failover keeps every connection.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use lb_common::nat::{Conn, ConnKey};

use super::Daemon;
use crate::{
    dataplane::ConnTable,
    monotonic_ns,
    sync::{self, ConnStream, TrackedConnection},
};

/// How often expired connections are removed and live ones counted: every
/// second (the live counts `lbctl status` and the metrics show are then at
/// most about a second old) while a sweep takes at most [`CHEAP_SWEEP`] or
/// this node streams to its peer (a new connection then reaches the backup
/// within about this, plus the stream's beat); else (a table of hundreds
/// of thousands) every [`SLOW_SWEEP_EVERY`].
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The longest sweep repeated every [`SWEEP_EVERY`] (2 % of a CPU).
const CHEAP_SWEEP: Duration = Duration::from_millis(20);

/// How often a costlier sweep runs, unless this node streams to its peer.
const SLOW_SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The time between two sweeps, the last having taken `last`.
fn sweep_every(streaming: bool, last: Duration) -> Duration {
    if streaming || last <= CHEAP_SWEEP {
        SWEEP_EVERY
    } else {
        SLOW_SWEEP_EVERY
    }
}

/// Connections found to send that may wait for the daemon; past this the
/// stream starts over once the daemon has caught up.
const MAX_READY: usize = 1 << 20;

/// The connection table's sweep, shared with its thread.
#[derive(Default)]
pub(super) struct ConnShared {
    /// Live connections by real-server index, as of the last sweep.
    pub(super) counts: BTreeMap<u32, u64>,
    /// Streaming to the peer (this node is a paired master).
    pub(super) streaming: bool,
    /// The peer holds none of them: the next sweep sends all.
    pub(super) restart: bool,
    /// Found to send, waiting for the daemon.
    pub(super) ready: Vec<(ConnKey, Conn)>,
}

/// Shared between the daemon and the sweep thread.
pub(super) type Connections = Arc<Mutex<ConnShared>>;

/// Sweeps the connection table as [`sweep_every`] says until `stop` is set.
#[expect(
    clippy::needless_pass_by_value,
    reason = "owned by the thread it runs on"
)]
pub(super) fn sweep_thread(
    table: Arc<Mutex<ConnTable>>,
    shared: Connections,
    stop: Arc<AtomicBool>,
) {
    const TICK: Duration = Duration::from_millis(200);
    let mut stream = ConnStream::default();
    let mut waited = Duration::ZERO;
    let mut last = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        waited += TICK;
        let streaming = shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .streaming;
        if waited < sweep_every(streaming, last) {
            continue;
        }
        waited = Duration::ZERO;
        let began = std::time::Instant::now();
        let swept = table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sweep(monotonic_ns());
        last = began.elapsed();
        let swept = match swept {
            Ok(swept) => swept,
            Err(error) => {
                log::warn!("sweeping expired connections: {error}");
                continue;
            }
        };
        if swept.removed > 0 {
            log::debug!("removed {} expired connection entries", swept.removed);
        }
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        s.counts = swept.live_by_real;
        if std::mem::take(&mut s.restart) || !s.streaming {
            stream.restart();
        }
        if s.streaming {
            let found = stream.pass(&swept.live);
            if s.ready.len() + found.len() > MAX_READY {
                log::warn!("sync: the peer is slow to take connections; sending them all again");
                s.ready.clear();
                stream.restart();
            } else {
                s.ready.extend(found);
            }
        }
    }
}

impl Daemon {
    /// The connection stream starts (this node became a paired master, or
    /// the peer is back): everything goes at the next sweep.
    pub(super) fn start_connection_stream(&self) {
        let mut s = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.streaming = true;
        s.restart = true;
        s.ready.clear();
    }

    /// This node stopped being master: nothing more to send.
    pub(super) fn stop_connection_stream(&self) {
        let mut s = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.streaming = false;
        s.ready.clear();
    }

    /// Sends the connections the last sweeps found; a batch the queue to
    /// the peer refuses starts the stream over.
    pub(super) fn send_connections(&mut self) {
        let ready = {
            let mut s = self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !s.streaming {
                return;
            }
            std::mem::take(&mut s.ready)
        };
        if ready.is_empty() {
            return;
        }
        let now = monotonic_ns();
        let entries: Vec<TrackedConnection> = ready
            .iter()
            .filter_map(|(key, conn)| self.balancer.tracked_connection(key, conn, now))
            .collect();
        for message in sync::connection_batches(entries) {
            if !self.queue_for_peer(message) {
                self.connections
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .restart = true;
                return;
            }
        }
    }

    /// A backup installs the master's connections.
    pub(super) fn install_connections(&self, entries: &[TrackedConnection]) {
        let now = monotonic_ns();
        let pairs: Vec<(ConnKey, Conn)> = entries
            .iter()
            .filter_map(|c| self.balancer.connection_entries(c, now))
            .flatten()
            .collect();
        if pairs.len() < entries.len() * 2 {
            log::debug!(
                "sync: {} connections for services or servers not known here",
                entries.len() - pairs.len() / 2
            );
        }
        let table = self.balancer.maps().nat().conn_table();
        let installed = table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .install(&pairs);
        match installed {
            Ok(0) => {}
            Ok(full) => log::warn!(
                "sync: {full} connection entries from the peer did not fit: the connection \
                 table is full (a failover would reset those connections)"
            ),
            Err(error) => log::error!("sync: installing connections from the peer: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_a_second_old_unless_a_sweep_is_costly() {
        assert_eq!(sweep_every(false, Duration::ZERO), Duration::from_secs(1));
        assert_eq!(sweep_every(false, CHEAP_SWEEP), Duration::from_secs(1));
        assert_eq!(
            sweep_every(false, CHEAP_SWEEP * 2),
            Duration::from_secs(5),
            "a large table is swept less often"
        );
        assert_eq!(
            sweep_every(true, Duration::from_millis(300)),
            Duration::from_secs(1),
            "while streaming, every second whatever it costs"
        );
    }
}
