//! The control plane's truth: services, real servers, their states and rings.
//!
//! The data path's maps are a projection of this state, written through the
//! [`Maps`] trait. Every change goes the same way: work out the new state in
//! memory, write real-server slots first, then each changed ring into its
//! service's idle ring slot, then the service entry that switches to it, and
//! last clear what is gone, so the data path never sees a half-built ring or
//! a ring that names a server it does not know.
//!
//! Identity: a service is its name; a real server is (service, address). Both
//! keep their service id and real-server index across reloads, so affinity
//! entries stay valid; an entry for a removed server stops counting at once
//! because its slot's address and flags change.

mod affinity;
mod census;
mod plan;
mod state;
#[cfg(test)]
mod testing;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use lb_common::{
    Counters, Globals, Real, MAGLEV_RING_SIZE, MAX_REALS, MAX_SERVICES, NO_REAL, NO_SERVICE,
};

pub use self::affinity::AffinityAnswer;
pub use self::census::{census, Census, CensusKey};
pub use self::plan::plan;
pub use self::state::{ring_for, Health, RealState, ServiceState};
use crate::{
    config::{AdminState, Config, ServiceKind},
    dataplane::{DataplaneError, Maps},
};

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// Writing the data path failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// More services than the data path holds.
    #[error("too many services: the data path holds {MAX_SERVICES}")]
    TooManyServices,
    /// More real servers than the data path holds.
    #[error("too many real servers over all services: the data path holds {}", MAX_REALS - 1)]
    TooManyReals,
    /// No such service.
    #[error("no service named {0:?}; `lbctl status` lists them")]
    UnknownService(String),
    /// No such real server.
    #[error("service {service:?} has no real server named {server:?}; `lbctl status` lists them")]
    UnknownServer {
        /// The service.
        service: String,
        /// The server asked for.
        server: String,
    },
    /// The service is a redirect service, answered by lbd itself.
    #[error("service {0:?} is a redirect service: it has no real servers")]
    RedirectService(String),
}

type Result<T, E = BalancerError> = std::result::Result<T, E>;

/// The control plane's state, projected onto `M`.
pub struct Balancer<M: Maps> {
    maps: M,
    services: BTreeMap<String, ServiceState>,
    /// Real-server index → (service name, address) while in use; index 0 is never used.
    reals_in_use: BTreeMap<u32, (String, Ipv4Addr)>,
    iface_mac: [u8; 6],
    macs: BTreeMap<Ipv4Addr, [u8; 6]>,
}

impl<M: Maps> Balancer<M> {
    /// A balancer with no services, writing to `maps`.
    ///
    /// # Errors
    /// When the globals cannot be written.
    pub fn new(mut maps: M, iface_mac: [u8; 6]) -> Result<Self> {
        maps.set_globals(Globals {
            iface_mac,
            pad: [0; 2],
            flow_generation: 1,
        })?;
        Ok(Self {
            maps,
            services: BTreeMap::new(),
            reals_in_use: BTreeMap::new(),
            iface_mac,
            macs: BTreeMap::new(),
        })
    }

    /// The maps (tests read the fake's contents).
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The maps, writable (tests plant affinity entries).
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// The interface MAC the data path sends from.
    #[must_use]
    pub fn iface_mac(&self) -> [u8; 6] {
        self.iface_mac
    }

    /// Forwarding services by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceState> {
        self.services.values()
    }

    /// One forwarding service.
    ///
    /// # Errors
    /// When there is no such forwarding service.
    pub fn service(&self, name: &str) -> Result<&ServiceState> {
        self.services
            .get(name)
            .ok_or_else(|| BalancerError::UnknownService(name.to_owned()))
    }

    /// Every real-server and fallback address (for MAC resolution).
    #[must_use]
    pub fn addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.services
            .values()
            .flat_map(|s| s.reals.iter().chain(s.fallback.iter()))
            .map(|r| r.address)
            .collect()
    }

    /// Addresses whose MAC is not known yet.
    #[must_use]
    pub fn unresolved(&self) -> BTreeSet<Ipv4Addr> {
        let mut all = self.addresses();
        all.retain(|a| !self.macs.contains_key(a));
        all
    }

    /// Makes the data path serve `config`'s forwarding services. Services and
    /// servers that stay keep their ids, states and clients; new servers take
    /// their `state:` from the file. On error the maps may be partly written;
    /// the caller validates the configuration first, so only a kernel failure
    /// gets here.
    ///
    /// # Errors
    /// When the data path's capacity is exceeded or a map write fails.
    #[expect(
        clippy::too_many_lines,
        reason = "one transaction: work out the next state, then write it in order"
    )]
    pub fn apply(&mut self, config: &Config) -> Result<()> {
        let mut next: BTreeMap<String, ServiceState> = BTreeMap::new();
        let mut used_ids: BTreeSet<u32> = BTreeSet::new();
        let mut reals_in_use: BTreeMap<u32, (String, Ipv4Addr)> = BTreeMap::new();

        // Keep the ids and indexes of what stays.
        for service in &config.services {
            let ServiceKind::Forward(forward) = &service.kind else {
                continue;
            };
            if let Some(old) = self.services.get(&service.name) {
                used_ids.insert(old.id);
                for r in &old.reals {
                    if forward
                        .real_servers
                        .iter()
                        .any(|rs| rs.address == r.address)
                    {
                        reals_in_use.insert(r.index, (service.name.clone(), r.address));
                    }
                }
                if let Some(f) = old
                    .fallback
                    .as_ref()
                    .filter(|f| Some(f.address) == forward.fallback)
                {
                    reals_in_use.insert(f.index, (service.name.clone(), f.address));
                }
            }
        }
        // New services and servers never take an id or index in use before
        // this apply: those of removed ones are only cleared at the end.
        let old_ids: BTreeSet<u32> = self.services.values().map(|s| s.id).collect();
        let mut fresh_ids = (0..MAX_SERVICES)
            .filter(|id| !used_ids.contains(id) && !old_ids.contains(id))
            .collect::<Vec<_>>()
            .into_iter();
        let mut fresh_reals = (1..MAX_REALS)
            .filter(|i| !reals_in_use.contains_key(i) && !self.reals_in_use.contains_key(i))
            .collect::<Vec<_>>()
            .into_iter();
        let mut new_indexes = Vec::new();

        for service in &config.services {
            let ServiceKind::Forward(forward) = &service.kind else {
                continue;
            };
            let old = self.services.get(&service.name);
            let id = match old {
                Some(old) => old.id,
                None => fresh_ids.next().ok_or(BalancerError::TooManyServices)?,
            };
            let mut reals = Vec::with_capacity(forward.real_servers.len());
            for rs in &forward.real_servers {
                let previous = old.and_then(|o| o.reals.iter().find(|r| r.address == rs.address));
                let state = if let Some(p) = previous {
                    RealState {
                        name: rs.name.clone(),
                        weight: rs.weight,
                        ..p.clone()
                    }
                } else {
                    let index = fresh_reals.next().ok_or(BalancerError::TooManyReals)?;
                    new_indexes.push(index);
                    RealState {
                        index,
                        name: rs.name.clone(),
                        address: rs.address,
                        weight: rs.weight,
                        admin: rs.state,
                        health: Health::Up,
                        mac: self.macs.get(&rs.address).copied(),
                    }
                };
                reals_in_use.insert(state.index, (service.name.clone(), state.address));
                reals.push(state);
            }
            let fallback = if let Some(address) = forward.fallback {
                let previous = old
                    .and_then(|o| o.fallback.as_ref())
                    .filter(|f| f.address == address);
                let index = if let Some(p) = previous {
                    p.index
                } else {
                    let index = fresh_reals.next().ok_or(BalancerError::TooManyReals)?;
                    new_indexes.push(index);
                    index
                };
                reals_in_use.insert(index, (service.name.clone(), address));
                Some(RealState {
                    index,
                    name: "fallback".into(),
                    address,
                    weight: 0,
                    admin: AdminState::Online,
                    health: Health::Up,
                    mac: self.macs.get(&address).copied(),
                })
            } else {
                None
            };
            let (live_slot, ring, retired) = match old {
                Some(old) => (old.live_slot, old.ring.clone(), old.retired),
                None => (
                    id * 2,
                    vec![NO_REAL; MAGLEV_RING_SIZE as usize],
                    Counters::default(),
                ),
            };
            next.insert(
                service.name.clone(),
                ServiceState {
                    config: service.clone(),
                    id,
                    reals,
                    fallback,
                    live_slot,
                    ring,
                    retired,
                },
            );
        }

        // 1. Real-server slots (new ones with fresh counters).
        for index in &new_indexes {
            self.maps.reset_real_counters(*index)?;
        }
        for state in next.values() {
            for r in state.reals.iter().chain(state.fallback.iter()) {
                self.maps.set_real(r.index, r.slot(state.id))?;
            }
        }
        // 2. Rings and service entries; a service whose key changed is
        //    removed under its old key.
        for state in next.values_mut() {
            let old = self.services.get(&state.config.name);
            if let Some(old) = old {
                if old.key() != state.key() {
                    self.maps.remove_service(&old.key())?;
                }
            }
            Self::project_service(&mut self.maps, state, old.is_none())?;
        }
        // 3. What is gone.
        for (name, old) in &self.services {
            if !next.contains_key(name) {
                self.maps.remove_service(&old.key())?;
            }
        }
        for (index, (owner, _)) in &self.reals_in_use {
            if !reals_in_use.contains_key(index) {
                self.maps.set_real(
                    *index,
                    Real {
                        address: 0,
                        flags: 0,
                        mac: [0; 6],
                        service_id: NO_SERVICE,
                    },
                )?;
                // Unused from here on: what it counted stays the service's.
                if let Some(state) = next.get_mut(owner) {
                    state.retired += self.maps.real_counters(*index)?;
                }
            }
        }
        self.services = next;
        self.reals_in_use = reals_in_use;
        Ok(())
    }

    /// Rebuilds a service's ring and, if it changed (or `force`), writes it to
    /// the idle slot and switches the service entry to it.
    fn project_service(maps: &mut M, state: &mut ServiceState, force: bool) -> Result<()> {
        let ring = ring_for(&state.reals);
        if ring != state.ring || force {
            let idle = if state.live_slot == state.id * 2 {
                state.id * 2 + 1
            } else {
                state.id * 2
            };
            maps.set_ring(idle, &ring)?;
            state.live_slot = idle;
            state.ring = ring;
        }
        maps.set_service(state.key(), state.map_entry())?;
        Ok(())
    }

    fn real_mut(
        &mut self,
        service: &str,
        server: &str,
    ) -> Result<(&mut M, &mut ServiceState, usize)> {
        let state = self
            .services
            .get_mut(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_owned()))?;
        let position = state
            .reals
            .iter()
            .position(|r| r.name == server)
            .ok_or_else(|| BalancerError::UnknownServer {
                service: service.to_owned(),
                server: server.to_owned(),
            })?;
        Ok((&mut self.maps, state, position))
    }

    /// Changes a real server's administrative state (drain, halt, online).
    ///
    /// # Errors
    /// Unknown service or server; a failed map write.
    pub fn set_admin_state(
        &mut self,
        service: &str,
        server: &str,
        admin: AdminState,
    ) -> Result<()> {
        let (maps, state, i) = self.real_mut(service, server)?;
        state.reals[i].admin = admin;
        maps.set_real(state.reals[i].index, state.reals[i].slot(state.id))?;
        Self::project_service(maps, state, false)
    }

    /// Changes a real server's weight.
    ///
    /// # Errors
    /// Unknown service or server; a failed map write.
    pub fn set_weight(&mut self, service: &str, server: &str, weight: u16) -> Result<()> {
        let (maps, state, i) = self.real_mut(service, server)?;
        state.reals[i].weight = weight;
        Self::project_service(maps, state, false)
    }

    /// Records a real server's health.
    ///
    /// # Errors
    /// Unknown service or server; a failed map write.
    pub fn set_health(&mut self, service: &str, server: &str, health: Health) -> Result<()> {
        let (maps, state, i) = self.real_mut(service, server)?;
        state.reals[i].health = health;
        maps.set_real(state.reals[i].index, state.reals[i].slot(state.id))?;
        Self::project_service(maps, state, false)
    }

    /// Records the MAC address of `address` (or its loss), for every server
    /// and fallback with that address. Returns whether anything changed.
    ///
    /// # Errors
    /// A failed map write.
    pub fn set_mac(&mut self, address: Ipv4Addr, mac: Option<[u8; 6]>) -> Result<bool> {
        if self.macs.get(&address).copied() == mac {
            return Ok(false);
        }
        match mac {
            Some(mac) => self.macs.insert(address, mac),
            None => self.macs.remove(&address),
        };
        for state in self.services.values_mut() {
            let id = state.id;
            for r in state.reals.iter_mut().chain(state.fallback.iter_mut()) {
                if r.address == address {
                    r.mac = mac;
                    self.maps.set_real(r.index, r.slot(id))?;
                }
            }
        }
        Ok(true)
    }

    /// Counters of a service.
    ///
    /// # Errors
    /// A failed map read.
    pub fn service_counters(&self, state: &ServiceState) -> Result<Counters> {
        let mut total = state.retired;
        for r in state.reals.iter().chain(state.fallback.iter()) {
            total += self.maps.real_counters(r.index)?;
        }
        Ok(total)
    }

    /// Counters of a real server.
    ///
    /// # Errors
    /// A failed map read.
    pub fn real_counters(&self, real: &RealState) -> Result<Counters> {
        Ok(self.maps.real_counters(real.index)?)
    }

    /// The data path's reason counters, in [`lb_common::Reason::ALL`] order.
    ///
    /// # Errors
    /// A failed map read.
    pub fn reasons(&self) -> Result<Vec<u64>> {
        Ok(self.maps.reasons()?)
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{REAL_F_KEEP_CLIENTS, REAL_F_RESOLVED};

    use super::testing::{balancer, config, live_ring, real_indexes, MAC, THREE};
    use super::*;
    use crate::dataplane::FakeMaps;

    #[test]
    fn apply_projects_services_reals_and_a_full_ring() {
        let b = balancer(&THREE);
        assert_eq!(b.maps().globals.iface_mac, MAC);
        assert_eq!(b.maps().services.len(), 1);
        let (key, service) = b.maps().services.iter().next().unwrap_or_else(|| panic!());
        assert_eq!(key.port, 80_u16.to_be());
        assert_eq!(key.protocol, 6);
        assert_eq!(service.netmask, u32::MAX);
        assert_eq!(service.timeout_ns, 300 * 1_000_000_000);
        let ring = live_ring(&b);
        assert_eq!(ring.len(), MAGLEV_RING_SIZE as usize);
        let indexes: BTreeSet<u32> = ring.iter().copied().collect();
        assert_eq!(indexes.len(), 3);
        for index in indexes {
            let real = b.maps().reals[&index];
            assert_eq!(real.flags & REAL_F_KEEP_CLIENTS, REAL_F_KEEP_CLIENTS);
            assert_eq!(real.flags & REAL_F_RESOLVED, 0, "no MAC yet");
        }
    }

    #[test]
    fn a_reload_keeps_indexes_and_a_new_ring_goes_to_the_idle_slot() {
        let mut b = balancer(&THREE);
        let slot_before = b.maps().services.values().next().map(|s| s.ring_slot);
        let indexes = real_indexes(&b);
        b.apply(&config(&THREE[..2]))
            .unwrap_or_else(|e| panic!("{e}"));
        let after = real_indexes(&b);
        assert_eq!(after, indexes[..2]);
        let slot_after = b.maps().services.values().next().map(|s| s.ring_slot);
        assert_ne!(slot_before, slot_after, "the new ring is switched in");
        assert!(!live_ring(&b).contains(&indexes[2]));
        assert_eq!(
            b.maps().reals[&indexes[2]].flags,
            0,
            "the removed server's slot is cleared"
        );
    }

    #[test]
    fn drain_leaves_the_ring_but_keeps_clients_and_halt_drops_them() {
        let mut b = balancer(&THREE);
        let rs2 = b.service("web").unwrap_or_else(|e| panic!("{e}")).reals[1].index;
        b.set_admin_state("web", "rs2", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!live_ring(&b).contains(&rs2));
        assert_ne!(b.maps().reals[&rs2].flags & REAL_F_KEEP_CLIENTS, 0);
        b.set_admin_state("web", "rs2", AdminState::Halt)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.maps().reals[&rs2].flags & REAL_F_KEEP_CLIENTS, 0);
        b.set_admin_state("web", "rs2", AdminState::Online)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(live_ring(&b).contains(&rs2));
        assert!(matches!(
            b.set_admin_state("web", "nope", AdminState::Drain),
            Err(BalancerError::UnknownServer { .. })
        ));
        assert!(matches!(
            b.set_admin_state("nope", "rs1", AdminState::Drain),
            Err(BalancerError::UnknownService(_))
        ));
    }

    #[test]
    fn a_resolved_mac_marks_every_slot_of_that_address() {
        let mut b = balancer(&THREE);
        assert_eq!(b.unresolved().len(), 3);
        let mac = [2, 0, 0, 0, 0, 21];
        assert!(b
            .set_mac(
                "198.18.0.21".parse().unwrap_or_else(|_| panic!()),
                Some(mac)
            )
            .unwrap_or_else(|e| panic!("{e}")));
        let rs1 = b.service("web").unwrap_or_else(|e| panic!("{e}")).reals[0].index;
        assert_eq!(b.maps().reals[&rs1].mac, mac);
        assert_ne!(b.maps().reals[&rs1].flags & REAL_F_RESOLVED, 0);
        assert_eq!(b.unresolved().len(), 2);
    }

    #[test]
    fn a_service_counts_the_sum_of_its_servers_and_keeps_what_removed_ones_counted() {
        let mut b = balancer(&THREE);
        let indexes = real_indexes(&b);
        for (i, index) in indexes.iter().enumerate() {
            let n = 10_u64.pow(u32::try_from(i).unwrap_or(0));
            b.maps_mut().real_stats.insert(
                *index,
                Counters {
                    packets: n,
                    bytes: 100 * n,
                    new_clients: 1,
                },
            );
        }
        let total = |b: &Balancer<FakeMaps>| {
            let state = b.service("web").unwrap_or_else(|e| panic!("{e}"));
            b.service_counters(state).unwrap_or_else(|e| panic!("{e}"))
        };
        let expected = Counters {
            packets: 111,
            bytes: 11_100,
            new_clients: 3,
        };
        assert_eq!(total(&b), expected);
        b.apply(&config(&THREE[..2]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(total(&b), expected, "rs3 left; its traffic stays counted");
        b.apply(&config(&THREE)).unwrap_or_else(|e| panic!("{e}"));
        let rs3 = b.service("web").unwrap_or_else(|e| panic!("{e}")).reals[2].index;
        b.maps_mut().real_stats.remove(&rs3);
        assert_eq!(total(&b), expected, "back with fresh counters");
    }

    #[test]
    fn every_service_change_empties_the_flow_cache() {
        let mut b = balancer(&THREE);
        let before = b.maps().globals.flow_generation;
        b.set_admin_state("web", "rs1", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        let after_drain = b.maps().globals.flow_generation;
        assert!(after_drain > before, "the drained ring switched in");
        b.apply(&config(&THREE[..2]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(b.maps().globals.flow_generation > after_drain);
    }
}
