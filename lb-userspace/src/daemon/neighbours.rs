//! Real-server MAC addresses: read from the kernel's neighbour table, asked
//! for again while missing, and written to the data path when they change.

use std::time::{Duration, Instant};

use super::{format_mac, Daemon};
use crate::neighbour;

/// How long start-up waits for real-server MACs before serving anyway.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);
/// How often the neighbour table is read.
pub(super) const NEIGHBOUR_POLL: Duration = Duration::from_secs(1);
/// How often an unresolved address is asked for again.
const PROMPT_EVERY: Duration = Duration::from_secs(2);

impl Daemon {
    /// Asks for every real server's MAC and waits (bounded) for the answers.
    pub(super) async fn resolve_at_start(&mut self) {
        let deadline = Instant::now() + RESOLVE_WAIT;
        loop {
            self.follow_neighbours().await;
            if self.balancer.unresolved().is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let missing = self.balancer.unresolved();
        if !missing.is_empty() {
            log::warn!(
                "no MAC address yet for {missing:?}: they get no client until they answer \
                 ARP (are they up, and on the same network as {}?)",
                self.config.node.interface
            );
        }
    }

    /// Reads the neighbour table; records new or changed MACs; asks the
    /// kernel to resolve what is missing.
    pub(super) async fn follow_neighbours(&mut self) {
        let table = match neighbour::table(&self.handle, self.ifindex).await {
            Ok(table) => table,
            Err(error) => {
                log::warn!("{error}");
                return;
            }
        };
        for address in self.balancer.addresses() {
            if let Some(mac) = table.get(&address) {
                match self.balancer.set_mac(address, Some(*mac)) {
                    Ok(true) => {
                        log::info!("real server {address} is at {}", format_mac(*mac));
                        self.publish_census_key();
                    }
                    Ok(false) => {}
                    Err(error) => log::error!("{error}"),
                }
                continue;
            }
            let due = self
                .prompted
                .get(&address)
                .is_none_or(|at| at.elapsed() >= PROMPT_EVERY);
            if due {
                self.prompted.insert(address, Instant::now());
                if let Err(error) = neighbour::prompt(&self.handle, self.ifindex, address).await {
                    log::warn!("{error}");
                }
            }
        }
    }
}
