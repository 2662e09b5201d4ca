//! One forwarding service and its real servers as the control plane holds
//! them (configuration, data-path ids, administrative state, health, MAC),
//! what each projects onto the data path's maps, and the Maglev ring of a
//! set of real servers.

use std::net::Ipv4Addr;

use lb_common::{
    affinity_expiry_ns, client_hash, AffinityKey, Counters, Real, Service as MapService,
    ServiceKey, MAGLEV_RING_SIZE, NO_REAL, NO_SERVICE, REAL_F_KEEP_CLIENTS, REAL_F_RESOLVED,
};

use crate::{
    config::{self, AdminState, ServiceKind},
    maglev::{self, Backend},
};

/// Health of a real server as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Passing (or not checked yet, or `type: none`).
    Up,
    /// Failing.
    Down,
}

/// One real server of one service.
#[derive(Clone, Debug)]
pub struct RealState {
    /// Index of its data-path slot.
    pub index: u32,
    /// Name from the configuration.
    pub name: String,
    /// Address.
    pub address: Ipv4Addr,
    /// Maglev weight.
    pub weight: u16,
    /// Administrative state.
    pub admin: AdminState,
    /// Health.
    pub health: Health,
    /// MAC address, once resolved.
    pub mac: Option<[u8; 6]>,
    /// A NAT or SNAT service's server: reached through the kernel's routing
    /// table, so it needs no MAC address of its own.
    pub routed: bool,
}

impl RealState {
    /// Whether its MAC address is known. A server that never answered ARP
    /// gets no client and holds none: frames for it could only be dropped.
    #[must_use]
    pub fn resolved(&self) -> bool {
        self.routed || self.mac.is_some()
    }

    /// Whether new clients may be sent to it.
    #[must_use]
    pub fn takes_new_clients(&self) -> bool {
        self.admin == AdminState::Online
            && self.health == Health::Up
            && self.weight > 0
            && self.resolved()
    }

    /// Whether its existing clients keep it.
    #[must_use]
    pub fn keeps_clients(&self) -> bool {
        self.admin != AdminState::Halt && self.health == Health::Up && self.resolved()
    }

    /// The data path's entry for this server as a slot of service `service_id`.
    pub(super) fn slot(&self, service_id: u32) -> Real {
        let mut flags = 0;
        if self.resolved() {
            flags |= REAL_F_RESOLVED;
        }
        if self.keeps_clients() {
            flags |= REAL_F_KEEP_CLIENTS;
        }
        Real {
            address: u32::from_ne_bytes(self.address.octets()),
            flags,
            mac: self.mac.unwrap_or_default(),
            service_id: u16::try_from(service_id).unwrap_or(NO_SERVICE),
        }
    }
}

/// One forwarding service.
#[derive(Clone, Debug)]
pub struct ServiceState {
    /// The configuration it was built from.
    pub config: config::Service,
    /// Id in the data path.
    pub id: u32,
    /// Its real servers, in configuration order.
    pub reals: Vec<RealState>,
    /// The fallback server, if configured (never in the ring).
    pub fallback: Option<RealState>,
    /// The ring slot the data path reads.
    pub(super) live_slot: u32,
    /// The ring in that slot.
    pub(super) ring: Vec<u32>,
    /// Traffic counted by real-server slots that have since left the
    /// service (the data path counts per slot; a service is their sum).
    pub(super) retired: Counters,
    /// The most clients it may hold in the affinity table (its
    /// `max_clients`, else its share of the table).
    pub max_clients: u32,
}

impl ServiceState {
    pub(super) fn key(&self) -> ServiceKey {
        service_key(&self.config)
    }

    /// Its forwarding settings (`None` for a redirect service).
    #[must_use]
    pub fn forward(&self) -> Option<&config::Forward> {
        match &self.config.kind {
            ServiceKind::Forward(f) => Some(f),
            ServiceKind::Redirect(_) => None,
        }
    }

    pub(super) fn map_entry(&self) -> MapService {
        let (timeout_s, netmask) = self.forward().map_or((0, 32), |f| {
            (f.persistence.timeout_s, f.persistence.netmask)
        });
        MapService {
            id: self.id,
            ring_slot: self.live_slot,
            netmask: netmask_be(netmask),
            fallback_real: self.fallback.as_ref().map_or(NO_REAL, |f| f.index),
            timeout_ns: affinity_expiry_ns(timeout_s),
            max_clients: self.max_clients,
            forwarding: match self.forward().map(|f| f.forwarding) {
                Some(config::Forwarding::Nat) => lb_common::nat::FORWARDING_NAT,
                Some(config::Forwarding::Snat) => lb_common::nat::FORWARDING_SNAT,
                _ => lb_common::nat::FORWARDING_DR,
            },
            pad: [0; 3],
        }
    }

    /// The masked client address used as affinity key and hash input.
    #[must_use]
    pub fn client_key(&self, client: Ipv4Addr) -> AffinityKey {
        AffinityKey {
            service_id: self.id,
            client: u32::from_ne_bytes(client.octets()) & self.map_entry().netmask,
        }
    }

    /// The real server the ring gives a client (ignoring affinity).
    #[must_use]
    pub fn hashed_server(&self, client: Ipv4Addr) -> Option<&RealState> {
        let key = self.client_key(client);
        let index = self.ring[(client_hash(key.client) % MAGLEV_RING_SIZE) as usize];
        self.reals.iter().find(|r| r.index == index)
    }

    /// When an affinity entry expires, in nanoseconds since it was last
    /// seen: the configured timeout plus the data path's lag
    /// ([`affinity_expiry_ns`]).
    #[must_use]
    pub fn timeout_ns(&self) -> u64 {
        self.map_entry().timeout_ns
    }
}

pub(super) fn service_key(service: &config::Service) -> ServiceKey {
    ServiceKey {
        vip: u32::from_ne_bytes(service.vip.octets()),
        port: service.port.to_be(),
        protocol: service.protocol.number(),
        pad: 0,
    }
}

/// A prefix length as a mask in network byte order.
fn netmask_be(prefix: u8) -> u32 {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    mask.to_be()
}

/// The Maglev ring of a set of real servers.
#[must_use]
pub fn ring_for(reals: &[RealState]) -> Vec<u32> {
    let backends: Vec<Backend> = reals
        .iter()
        .filter(|r| r.takes_new_clients())
        .map(|r| Backend {
            id: r.index,
            key: u32::from(r.address),
            weight: u32::from(r.weight),
        })
        .collect();
    maglev::build(&backends, MAGLEV_RING_SIZE, NO_REAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmask_is_in_network_order() {
        assert_eq!(netmask_be(32), u32::MAX);
        assert_eq!(netmask_be(24), u32::from_ne_bytes([255, 255, 255, 0]));
        assert_eq!(netmask_be(8), u32::from_ne_bytes([255, 0, 0, 0]));
    }
}
