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
mod nat;
mod plan;
mod state;
mod takeover;
#[cfg(test)]
mod testing;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use lb_common::{
    Counters, Globals, Real, VipProtocol, LAYOUT_VERSION, MAGLEV_RING_SIZE, MAX_AFFINITY_ENTRIES,
    MAX_REALS, MAX_SERVICES, NO_REAL, NO_SERVICE,
};

pub use self::affinity::AffinityAnswer;
pub use self::census::{Census, CensusKey, Tally, SWEEP_MARGIN_NS, UNKNOWN_SERVICE_GRACE_NS};
pub use self::nat::{check_snat_ports, snat_ports, MIN_SNAT_PORTS};
pub use self::plan::{plan, plan_change};
pub use self::state::{ring_for, Health, RealState, ServiceState};
pub use self::takeover::TakeoverReport;
use crate::{
    config::{AdminState, Config, Forwarding, ServiceKind},
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
    /// A SNAT service without an address to send from.
    #[error("service {0:?} (forwarding: snat) has no snat_address and no interface address towards its servers was found; set snat_address")]
    NoSnatAddress(String),
    /// The host's ephemeral port range leaves SNAT too few ports.
    #[error("service {service:?} (forwarding: snat): net.ipv4.ip_local_port_range leaves only {ports} ports of 1024-65535 for SNAT (at least {min} needed: the host's own connections take that range); narrow it, e.g. `sysctl -w net.ipv4.ip_local_port_range='32768 60999'`, and reload")]
    TooFewSnatPorts {
        /// The service.
        service: String,
        /// Ports left.
        ports: u16,
        /// Ports needed.
        min: u16,
    },
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
    /// Where the search for a free service id starts: ids go round, so an
    /// id is handed out again only after every other one has been, long
    /// after lbd has swept the entries of the service that had it.
    next_id: u32,
    /// SNAT ports and default addresses (see `nat`).
    nat: nat::NatSettings,
}

impl<M: Maps> Balancer<M> {
    /// A balancer with no services, writing to `maps`.
    ///
    /// # Errors
    /// When the globals cannot be written.
    pub fn new(mut maps: M, iface_mac: [u8; 6]) -> Result<Self> {
        maps.set_globals(Globals {
            layout: LAYOUT_VERSION,
            iface_mac,
            pad: [0; 2],
        })?;
        Ok(Self {
            maps,
            services: BTreeMap::new(),
            reals_in_use: BTreeMap::new(),
            iface_mac,
            macs: BTreeMap::new(),
            next_id: 0,
            nat: nat::NatSettings::default(),
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
        self.services
            .values()
            .flat_map(|s| s.reals.iter().chain(s.fallback.iter()))
            .filter(|r| !r.resolved())
            .map(|r| r.address)
            .collect()
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
        self.check_nat(config)?;
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
            .map(|i| (self.next_id + i) % MAX_SERVICES)
            .filter(|id| !used_ids.contains(id) && !old_ids.contains(id))
            .collect::<Vec<_>>()
            .into_iter();
        let shares = client_shares(config);
        let mut new_ids = Vec::new();
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
            let id = if let Some(old) = old {
                old.id
            } else {
                let id = fresh_ids.next().ok_or(BalancerError::TooManyServices)?;
                new_ids.push(id);
                id
            };
            let routed = forward.forwarding != Forwarding::Dr;
            let mut reals = Vec::with_capacity(forward.real_servers.len());
            for rs in &forward.real_servers {
                let previous = old.and_then(|o| o.reals.iter().find(|r| r.address == rs.address));
                let state = if let Some(p) = previous {
                    RealState {
                        name: rs.name.clone(),
                        weight: rs.weight,
                        routed,
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
                        routed,
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
                    routed,
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
                    max_clients: shares.get(&service.name).copied().unwrap_or(1),
                },
            );
        }

        // 1. Real-server slots (new ones with fresh counters, new services
        //    with a fresh client count). Slots that gain a right (or keep
        //    theirs) are written before the rings that use them; slots that
        //    lose one, after the rings that no longer do (`write_server`).
        for index in &new_indexes {
            self.maps.reset_real_counters(*index)?;
        }
        for id in &new_ids {
            self.maps.reset_client_count(*id);
            self.next_id = (id + 1) % MAX_SERVICES;
        }
        let mut losing = Vec::new();
        for state in next.values() {
            for r in state.reals.iter().chain(state.fallback.iter()) {
                let slot = r.slot(state.id);
                if self.loses_right(r.index, &slot) {
                    losing.push((r.index, slot));
                } else {
                    self.maps.set_real(r.index, slot)?;
                }
            }
        }
        // NAT settings before the service entries that use them.
        self.write_nat(&next)?;
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
        // 3. What is gone, and what lost a right.
        for (name, old) in &self.services {
            if !next.contains_key(name) {
                self.maps.remove_service(&old.key())?;
            }
        }
        for (index, slot) in losing {
            self.maps.set_real(index, slot)?;
        }
        self.maps.set_fragments(&fragment_ports(config))?;
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
        let before = state.reals[i].slot(state.id);
        state.reals[i].admin = admin;
        Self::write_server(maps, state, i, &before)
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
        let before = state.reals[i].slot(state.id);
        state.reals[i].health = health;
        Self::write_server(maps, state, i, &before)
    }

    /// Writes a changed real server and its service's ring in the order
    /// that never sends a new client where it may not go: a server that
    /// loses a right (to keep clients, to be resolved) leaves the ring
    /// first and has its slot written after; a server that gains one has its
    /// slot written first and joins the ring after. The data path checks
    /// the slot's flags on the ring path too, so a frame that read the old
    /// ring in between is dropped rather than remembered on a halted server.
    fn write_server(maps: &mut M, state: &mut ServiceState, i: usize, before: &Real) -> Result<()> {
        let slot = state.reals[i].slot(state.id);
        let index = state.reals[i].index;
        if slot.flags & !before.flags == 0 && before.flags & !slot.flags != 0 {
            Self::project_service(maps, state, false)?;
            maps.set_real(index, slot)?;
        } else {
            maps.set_real(index, slot)?;
            Self::project_service(maps, state, false)?;
        }
        Ok(())
    }

    /// Whether writing `slot` at `index` takes a flag away from what the
    /// data path has there now.
    fn loses_right(&self, index: u32, slot: &Real) -> bool {
        self.services
            .values()
            .flat_map(|s| {
                s.reals
                    .iter()
                    .chain(s.fallback.iter())
                    .map(move |r| (r.index, r.slot(s.id)))
            })
            .find(|(i, _)| *i == index)
            .is_some_and(|(_, now)| {
                now.flags & !slot.flags != 0 && now.service_id == slot.service_id
            })
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
            for i in 0..state.reals.len() {
                if state.reals[i].address == address {
                    let before = state.reals[i].slot(state.id);
                    state.reals[i].mac = mac;
                    Self::write_server(&mut self.maps, state, i, &before)?;
                }
            }
            let id = state.id;
            if let Some(f) = state.fallback.as_mut().filter(|f| f.address == address) {
                f.mac = mac;
                self.maps.set_real(f.index, f.slot(id))?;
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

    /// Entries the service holds in the affinity table (live or not yet
    /// swept), as the data path counts them against its `max_clients`.
    #[must_use]
    pub fn remembered_clients(&self, state: &ServiceState) -> u64 {
        self.maps.client_count(state.id)
    }
}

/// Each forwarding service's `max_clients`: its own, else an even share of
/// what the services with their own leave of the table.
fn client_shares(config: &Config) -> BTreeMap<String, u32> {
    let forwards: Vec<(&str, Option<u32>)> = config
        .services
        .iter()
        .filter_map(|s| match &s.kind {
            ServiceKind::Forward(f) => Some((s.name.as_str(), f.persistence.max_clients)),
            ServiceKind::Redirect(_) => None,
        })
        .collect();
    let reserved: u32 = forwards.iter().filter_map(|(_, m)| *m).sum();
    let open = u32::try_from(forwards.iter().filter(|(_, m)| m.is_none()).count()).unwrap_or(1);
    let share = MAX_AFFINITY_ENTRIES.saturating_sub(reserved) / open.max(1);
    forwards
        .into_iter()
        .map(|(name, own)| (name.to_owned(), own.unwrap_or(share).max(1)))
        .collect()
}

/// The fragments map: for each VIP and protocol with exactly one service
/// (forwarding or redirect), that service's port, if it forwards. Where a
/// VIP has several services of a protocol, fragments cannot be told apart
/// without reassembly, so they all go to the kernel.
fn fragment_ports(config: &Config) -> BTreeMap<VipProtocol, u16> {
    let mut seen: BTreeMap<(u32, u8), (usize, Option<u16>)> = BTreeMap::new();
    for s in &config.services {
        let key = state::service_key(s);
        let entry = seen.entry((key.vip, key.protocol)).or_insert((0, None));
        entry.0 += 1;
        entry.1 = match s.kind {
            ServiceKind::Forward(_) => Some(key.port),
            ServiceKind::Redirect(_) => None,
        };
    }
    seen.into_iter()
        .filter_map(|((vip, protocol), (count, port))| {
            let port = port.filter(|_| count == 1)?;
            Some((
                VipProtocol {
                    vip,
                    protocol,
                    pad: [0; 3],
                },
                port,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use lb_common::{REAL_F_KEEP_CLIENTS, REAL_F_RESOLVED};

    use super::testing::{balancer, config, live_ring, real_indexes, MAC, THREE};
    use super::*;
    use crate::dataplane::{FakeMaps, Write};

    #[test]
    fn apply_projects_services_reals_and_a_full_ring() {
        let b = balancer(&THREE);
        assert_eq!(b.maps().globals.iface_mac, MAC);
        assert_eq!(b.maps().services.len(), 1);
        let (key, service) = b.maps().services.iter().next().unwrap_or_else(|| panic!());
        assert_eq!(key.port, 80_u16.to_be());
        assert_eq!(key.protocol, 6);
        assert_eq!(service.netmask, u32::MAX);
        assert_eq!(service.timeout_ns, lb_common::affinity_expiry_ns(300));
        let ring = live_ring(&b);
        assert_eq!(ring.len(), MAGLEV_RING_SIZE as usize);
        let indexes: BTreeSet<u32> = ring.iter().copied().collect();
        assert_eq!(indexes.len(), 3);
        for index in indexes {
            let real = b.maps().reals[&index];
            assert_eq!(
                real.flags,
                REAL_F_KEEP_CLIENTS | REAL_F_RESOLVED,
                "resolved and keeping clients"
            );
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
        let mut b = super::testing::unresolved_balancer(&THREE);
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

    fn two_services() -> Config {
        let yaml = "node: { name: lb1, interface: eth0 }\nservices:\n  - name: web\n    vip: 198.18.0.100\n    port: 80\n    real_servers: [{ name: rs1, address: 198.18.0.21 }, { name: rs2, address: 198.18.0.22 }]\n  - name: mail\n    vip: 198.18.0.101\n    port: 25\n    persistence: { max_clients: 1000 }\n    real_servers: [{ name: rs1, address: 198.18.0.21 }]\n  - name: dns\n    vip: 198.18.0.101\n    port: 53\n    protocol: udp\n    real_servers: [{ name: rs1, address: 198.18.0.21 }]\n  - name: web-redirect\n    vip: 198.18.0.100\n    port: 8080\n    redirect: { code: 301, scheme: https }\n";
        Config::from_yaml(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn resolved(config: &Config) -> Balancer<FakeMaps> {
        let mut b = Balancer::new(FakeMaps::default(), MAC).unwrap_or_else(|e| panic!("{e}"));
        b.apply(config).unwrap_or_else(|e| panic!("{e}"));
        for address in b.addresses() {
            b.set_mac(address, Some([2, 0, 0, 0, 1, 1]))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        b
    }

    #[test]
    fn a_change_empties_the_flow_cache_of_its_own_service_only() {
        let mut b = resolved(&two_services());
        let web = b.service("web").unwrap_or_else(|e| panic!("{e}")).id;
        let mail = b.service("mail").unwrap_or_else(|e| panic!("{e}")).id;
        let before = b.maps().generations.clone();
        b.set_admin_state("web", "rs1", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            b.maps().generations[&web] > before[&web],
            "web's cache emptied"
        );
        assert_eq!(
            b.maps().generations[&mail],
            before[&mail],
            "mail keeps its cache"
        );
        b.set_health("mail", "rs1", Health::Down)
            .unwrap_or_else(|e| panic!("{e}"));
        let after = b.maps().generations.clone();
        assert!(after[&mail] > before[&mail]);
        b.apply(&config(&THREE[..2]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            b.maps().generations[&web] > after[&web],
            "a reload empties it too"
        );
        assert!(
            b.maps().generations[&mail] > after[&mail],
            "a removed service's cache is emptied"
        );
    }

    #[test]
    fn a_server_losing_a_right_leaves_the_ring_before_its_slot_changes() {
        let mut b = balancer(&THREE);
        let rs1 = real_indexes(&b)[0];
        let halt_position = |b: &Balancer<FakeMaps>| {
            let writes = &b.maps().writes;
            let slot = writes
                .iter()
                .rposition(|w| matches!(w, Write::Real { index, .. } if *index == rs1));
            let service = writes
                .iter()
                .rposition(|w| matches!(w, Write::Service { .. }));
            (slot, service)
        };
        b.maps_mut().writes.clear();
        b.set_admin_state("web", "rs1", AdminState::Halt)
            .unwrap_or_else(|e| panic!("{e}"));
        let (slot, service) = halt_position(&b);
        assert!(
            service < slot,
            "halt: the ring without rs1 is live before rs1's slot loses its clients: {:?}",
            b.maps().writes
        );
        assert!(!live_ring(&b).contains(&rs1));
        b.maps_mut().writes.clear();
        b.set_admin_state("web", "rs1", AdminState::Online)
            .unwrap_or_else(|e| panic!("{e}"));
        let (slot, service) = halt_position(&b);
        assert!(
            slot < service,
            "online: rs1's slot keeps clients before the ring names it: {:?}",
            b.maps().writes
        );
        b.maps_mut().writes.clear();
        b.set_health("web", "rs2", Health::Down)
            .unwrap_or_else(|e| panic!("{e}"));
        let rs2 = real_indexes(&b)[1];
        let writes = &b.maps().writes;
        let slot = writes
            .iter()
            .position(|w| matches!(w, Write::Real { index, .. } if *index == rs2));
        let service = writes
            .iter()
            .position(|w| matches!(w, Write::Service { .. }));
        assert!(service < slot, "down: ring first: {writes:?}");
    }

    #[test]
    fn an_unresolved_server_gets_no_client_and_keeps_none() {
        let mut b = super::testing::unresolved_balancer(&THREE);
        assert!(
            live_ring(&b).iter().all(|i| *i == NO_REAL),
            "no server has answered ARP: the ring is empty"
        );
        for index in real_indexes(&b) {
            let real = b.maps().reals[&index];
            assert_eq!(real.flags & (REAL_F_RESOLVED | REAL_F_KEEP_CLIENTS), 0);
        }
        let rs2: Ipv4Addr = "198.18.0.22".parse().unwrap_or_else(|e| panic!("{e}"));
        b.set_mac(rs2, Some([2, 0, 0, 0, 0, 22]))
            .unwrap_or_else(|e| panic!("{e}"));
        let indexes: BTreeSet<u32> = live_ring(&b).into_iter().collect();
        let rs2_index = real_indexes(&b)[1];
        assert_eq!(
            indexes,
            BTreeSet::from([rs2_index]),
            "only rs2 takes clients"
        );
        let flags = b.maps().reals[&rs2_index].flags;
        assert_eq!(flags, REAL_F_RESOLVED | REAL_F_KEEP_CLIENTS);
        let state = b.service("web").unwrap_or_else(|e| panic!("{e}"));
        assert!(!state.reals[0].resolved() && state.reals[1].resolved());
    }

    #[test]
    fn client_shares_split_what_explicit_maxima_leave() {
        let b = resolved(&two_services());
        let max = |name: &str| {
            b.service(name)
                .unwrap_or_else(|e| panic!("{e}"))
                .max_clients
        };
        assert_eq!(max("mail"), 1000);
        assert_eq!(max("web"), (MAX_AFFINITY_ENTRIES - 1000) / 2);
        assert_eq!(max("dns"), (MAX_AFFINITY_ENTRIES - 1000) / 2);
        let (_, web) = b
            .maps()
            .services
            .iter()
            .find(|(k, _)| k.port == 80_u16.to_be())
            .unwrap_or_else(|| panic!("web"));
        assert_eq!(web.max_clients, max("web"), "the data path gets the share");
    }

    #[test]
    fn fragments_go_to_the_only_service_of_a_vip_and_protocol() {
        let b = resolved(&two_services());
        let vip = |a: [u8; 4], protocol| VipProtocol {
            vip: u32::from_ne_bytes(a),
            protocol,
            pad: [0; 3],
        };
        let expected = BTreeMap::from([
            // mail (tcp 25) and dns (udp 53) are alone on .101 in their protocol.
            (vip([198, 18, 0, 101], 6), 25_u16.to_be()),
            (vip([198, 18, 0, 101], 17), 53_u16.to_be()),
        ]);
        // web shares .100/tcp with a redirect service: its fragments go to the kernel.
        assert_eq!(b.maps().fragments, expected);
    }

    #[test]
    fn service_ids_go_round_before_one_is_reused() {
        let mut b = balancer(&THREE);
        let first = b.service("web").unwrap_or_else(|e| panic!("{e}")).id;
        let mut other = config(&THREE);
        other.services[0].name = "web2".into();
        b.apply(&other).unwrap_or_else(|e| panic!("{e}"));
        let second = b.service("web2").unwrap_or_else(|e| panic!("{e}")).id;
        assert_ne!(
            first, second,
            "a removed service's id is not handed out at once"
        );
        assert_eq!(b.maps().client_count(second), 0);
    }
}
