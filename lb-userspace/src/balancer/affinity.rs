//! Client affinity seen from the control plane: where a client is sent and
//! why ([`Balancer::affinity_of`]), and the affinity entries exchanged with
//! the HA peer ([`Balancer::session_entry`], [`Balancer::install_sessions`]).

use std::net::Ipv4Addr;

use lb_common::{Affinity, AffinityKey};

use super::{Balancer, Result};
use crate::{control::protocol::AffinitySource, dataplane::Maps};

/// What a client's traffic is sent to, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct AffinityAnswer {
    /// The real server's name (None: no server would take it).
    pub server: Option<String>,
    /// A live affinity entry, or the ring.
    pub source: AffinitySource,
    /// Age of the table entry in seconds.
    pub age_s: Option<f64>,
}

impl<M: Maps> Balancer<M> {
    /// An affinity entry as the sync channel carries it: service by name,
    /// server by address, and its age. None for an entry of an unknown
    /// service or server.
    #[must_use]
    pub fn session_entry(
        &self,
        key: &AffinityKey,
        value: &Affinity,
        now_ns: u64,
    ) -> Option<crate::sync::SessionEntry> {
        let service = self.services.values().find(|s| s.id == key.service_id)?;
        let real = service.reals.iter().find(|r| r.index == value.real)?;
        if u32::from_ne_bytes(real.address.octets()) != value.real_address {
            return None;
        }
        let age_ms = now_ns.saturating_sub(value.last_seen_ns) / 1_000_000;
        Some(crate::sync::SessionEntry {
            service: service.config.name.clone(),
            client: Ipv4Addr::from(key.client.to_ne_bytes()),
            server_address: real.address,
            age_ms: u32::try_from(age_ms).unwrap_or(u32::MAX),
        })
    }

    /// Installs affinity entries received from the peer, so this node sends
    /// their clients to the same real servers. Returns how many were written;
    /// entries for a service or server unknown here are skipped.
    ///
    /// # Errors
    /// A failed map write.
    pub fn install_sessions(
        &mut self,
        entries: &[crate::sync::SessionEntry],
        now_ns: u64,
    ) -> Result<usize> {
        let batch: Vec<(AffinityKey, Affinity)> = entries
            .iter()
            .filter_map(|entry| self.session_affinity(entry, now_ns))
            .collect();
        let full = self.maps.set_affinities(&batch)?;
        if full > 0 {
            log::warn!(
                "{full} sessions from the peer did not fit: the persistence table is full \
                 (their clients are served from the ring)"
            );
        }
        Ok(batch.len() - full)
    }

    /// The affinity entry for a session from the peer, if its service and
    /// server are known here.
    fn session_affinity(
        &self,
        entry: &crate::sync::SessionEntry,
        now_ns: u64,
    ) -> Option<(AffinityKey, Affinity)> {
        let service = self.services.get(&entry.service)?;
        let real = service
            .reals
            .iter()
            .find(|r| r.address == entry.server_address)?;
        let value = Affinity {
            real: real.index,
            real_address: u32::from_ne_bytes(real.address.octets()),
            last_seen_ns: now_ns.saturating_sub(u64::from(entry.age_ms) * 1_000_000),
            seen_jiffies: 0,
            sync_pass: 0,
        };
        Some((service.client_key(entry.client), value))
    }

    /// Where a client of `service` is sent, and why.
    ///
    /// # Errors
    /// Unknown service; a failed map read.
    pub fn affinity_of(
        &self,
        service: &str,
        client: Ipv4Addr,
        now_ns: u64,
    ) -> Result<AffinityAnswer> {
        let state = self.service(service)?;
        let key = state.client_key(client);
        if let Some(Affinity {
            real,
            real_address,
            last_seen_ns,
            ..
        }) = self.maps.affinity(&key)?
        {
            let age_ns = now_ns.saturating_sub(last_seen_ns);
            let holder = state.reals.iter().find(|r| {
                r.index == real
                    && u32::from_ne_bytes(r.address.octets()) == real_address
                    && r.keeps_clients()
            });
            if let (Some(holder), true) = (holder, age_ns <= state.timeout_ns()) {
                #[expect(clippy::cast_precision_loss, reason = "an age in seconds")]
                let age = age_ns as f64 / 1e9;
                return Ok(AffinityAnswer {
                    server: Some(holder.name.clone()),
                    source: AffinitySource::Table,
                    age_s: Some(age),
                });
            }
        }
        let server = state
            .hashed_server(client)
            .map(|r| r.name.clone())
            .or_else(|| state.fallback.as_ref().map(|f| f.address.to_string()));
        Ok(AffinityAnswer {
            server,
            source: AffinitySource::Hash,
            age_s: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{balancer, THREE};
    use super::*;

    #[test]
    fn affinity_answers_from_the_table_then_the_hash() {
        let mut b = balancer(&THREE);
        let client: Ipv4Addr = "198.18.1.7".parse().unwrap_or_else(|_| panic!());
        let hashed = b
            .affinity_of("web", client, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hashed.source, AffinitySource::Hash);
        let state = b.service("web").unwrap_or_else(|e| panic!("{e}")).clone();
        let rs3 = &state.reals[2];
        let key = state.client_key(client);
        b.maps_mut()
            .set_affinity(
                key,
                Affinity {
                    real: rs3.index,
                    real_address: u32::from_ne_bytes(rs3.address.octets()),
                    last_seen_ns: 1_000_000_000,
                    seen_jiffies: 0,
                    sync_pass: 0,
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let table = b
            .affinity_of("web", client, 3_000_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.server.as_deref(), Some("rs3"));
        assert_eq!(table.source, AffinitySource::Table);
        assert_eq!(
            b.active_clients(3_000_000_000)
                .unwrap_or_else(|e| panic!("{e}"))
                .get(&rs3.index),
            Some(&1)
        );
        // Timeout 300 s, last seen at 1 s: still the table's at 301 s plus
        // the data path's lag (never early), the ring's just after.
        let deadline = 1_000_000_000 + lb_common::affinity_expiry_ns(300);
        let kept = b
            .affinity_of("web", client, deadline)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept.source, AffinitySource::Table);
        let expired = b
            .affinity_of("web", client, deadline + 1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(expired.source, AffinitySource::Hash);
    }

    #[test]
    fn sessions_from_the_peer_are_installed_in_one_batch_that_empties_the_flow_cache() {
        let mut b = balancer(&THREE);
        let web_id = b.service("web").unwrap_or_else(|e| panic!("{e}")).id;
        let generation = b.maps().generations[&web_id];
        assert_ne!(generation, 0, "the cache is enabled");
        let entry = |service: &str, client: &str, server: &str| crate::sync::SessionEntry {
            service: service.to_owned(),
            client: client.parse().unwrap_or_else(|_| panic!("{client}")),
            server_address: server.parse().unwrap_or_else(|_| panic!("{server}")),
            age_ms: 2_000,
        };
        let entries = [
            entry("web", "198.18.1.1", "198.18.0.23"),
            entry("web", "198.18.1.2", "198.18.0.99"),
            entry("mail", "198.18.1.3", "198.18.0.21"),
            entry("web", "198.18.1.4", "198.18.0.21"),
        ];
        let installed = b
            .install_sessions(&entries, 10_000_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(installed, 2, "unknown server and unknown service skipped");
        assert_eq!(b.maps().affinity.len(), 2);
        assert!(b.maps().generations[&web_id] > generation);
        assert_eq!(b.maps().client_count(web_id), 2, "new entries are counted");
        let state = b.service("web").unwrap_or_else(|e| panic!("{e}"));
        let key = state.client_key("198.18.1.1".parse().unwrap_or_else(|_| panic!()));
        let value = b.maps().affinity[&key];
        assert_eq!(value.real, state.reals[2].index);
        assert_eq!(value.last_seen_ns, 8_000_000_000, "the peer's age is kept");
    }
}
