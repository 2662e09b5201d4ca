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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use lb_common::{
    client_hash, Affinity, AffinityKey, Counters, Globals, Real, Service as MapService, ServiceKey,
    MAGLEV_RING_SIZE, MAX_REALS, MAX_SERVICES, NO_REAL, NO_SERVICE, REAL_F_KEEP_CLIENTS,
    REAL_F_RESOLVED,
};

use crate::{
    config::{self, AdminState, Config, ServiceKind},
    dataplane::{DataplaneError, Maps},
    maglev::{self, Backend},
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
}

impl RealState {
    /// Whether new clients may be sent to it.
    #[must_use]
    pub fn takes_new_clients(&self) -> bool {
        self.admin == AdminState::Online && self.health == Health::Up && self.weight > 0
    }

    /// Whether its existing clients keep it.
    #[must_use]
    pub fn keeps_clients(&self) -> bool {
        self.admin != AdminState::Halt && self.health == Health::Up
    }

    /// The data path's entry for this server as a slot of service `service_id`.
    fn slot(&self, service_id: u32) -> Real {
        let mut flags = 0;
        if self.mac.is_some() {
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
    live_slot: u32,
    /// The ring in that slot.
    ring: Vec<u32>,
    /// Traffic counted by real-server slots that have since left the
    /// service (the data path counts per slot; a service is their sum).
    retired: Counters,
}

impl ServiceState {
    fn key(&self) -> ServiceKey {
        service_key(&self.config)
    }

    fn forward(&self) -> Option<&config::Forward> {
        match &self.config.kind {
            ServiceKind::Forward(f) => Some(f),
            ServiceKind::Redirect(_) => None,
        }
    }

    fn map_entry(&self) -> MapService {
        let (timeout_s, netmask) = self.forward().map_or((0, 32), |f| {
            (f.persistence.timeout_s, f.persistence.netmask)
        });
        MapService {
            id: self.id,
            ring_slot: self.live_slot,
            netmask: netmask_be(netmask),
            fallback_real: self.fallback.as_ref().map_or(NO_REAL, |f| f.index),
            timeout_ns: u64::from(timeout_s) * 1_000_000_000,
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

    /// The affinity timeout in nanoseconds.
    #[must_use]
    pub fn timeout_ns(&self) -> u64 {
        self.map_entry().timeout_ns
    }
}

fn service_key(service: &config::Service) -> ServiceKey {
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

/// Service timeouts and real-server slots, to judge affinity entries.
#[derive(Clone, Debug, Default)]
pub struct CensusKey {
    timeouts: BTreeMap<u32, u64>,
    slots: BTreeMap<u32, (u32, bool)>,
}

/// Live affinity entries, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Live entries per real-server index.
    pub per_real: BTreeMap<u32, u64>,
    /// Live entries in all.
    pub live: u64,
    /// Entries in the table, live or not.
    pub entries: u64,
}

impl Census {
    /// Counts one entry; returns whether it is live (within its timeout, for
    /// a server that still keeps clients).
    pub fn add(&mut self, key: &CensusKey, k: &AffinityKey, v: &Affinity, now_ns: u64) -> bool {
        self.entries += 1;
        let Some(timeout) = key.timeouts.get(&k.service_id) else {
            return false;
        };
        let live = now_ns.saturating_sub(v.last_seen_ns) <= *timeout;
        let valid = key
            .slots
            .get(&v.real)
            .is_some_and(|(address, keeps)| *address == v.real_address && *keeps);
        if live && valid {
            *self.per_real.entry(v.real).or_insert(0) += 1;
            self.live += 1;
        }
        live && valid
    }
}

/// Counts the live entries of an affinity table.
///
/// # Errors
/// A failed map read.
pub fn census(
    scan: &dyn crate::dataplane::AffinityScan,
    key: &CensusKey,
    now_ns: u64,
) -> Result<Census> {
    let mut out = Census::default();
    scan.scan(&mut |k, v| {
        out.add(key, k, v, now_ns);
    })?;
    Ok(out)
}

/// What a client's traffic is sent to, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct AffinityAnswer {
    /// The real server's name (None: no server would take it).
    pub server: Option<String>,
    /// "table" (a live affinity entry) or "hash" (the ring).
    pub source: &'static str,
    /// Age of the table entry in seconds.
    pub age_s: Option<f64>,
}

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

    /// What [`census`] needs to judge affinity entries: each service's
    /// timeout and each real-server slot's address and whether it keeps clients.
    #[must_use]
    pub fn census_key(&self) -> CensusKey {
        let mut key = CensusKey::default();
        for s in self.services.values() {
            key.timeouts.insert(s.id, s.timeout_ns());
            for r in &s.reals {
                key.slots.insert(
                    r.index,
                    (u32::from_ne_bytes(r.address.octets()), r.keeps_clients()),
                );
            }
        }
        key
    }

    /// Live affinity entries ("active clients") per real-server index.
    ///
    /// # Errors
    /// A failed map read.
    pub fn active_clients(&self, now_ns: u64) -> Result<BTreeMap<u32, u64>> {
        let mut census_out = Census::default();
        let key = self.census_key();
        self.maps.for_each_affinity(&mut |k, v| {
            census_out.add(&key, k, v, now_ns);
        })?;
        Ok(census_out.per_real)
    }

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
        self.maps.set_affinities(&batch)?;
        Ok(batch.len())
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
                    source: "table",
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
            source: "hash",
            age_s: None,
        })
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

/// For each forwarding service of `next` that exists in `current`, the share
/// of client addresses whose real server would change (by the ring alone;
/// clients with live affinity entries keep theirs on a real apply).
#[must_use]
pub fn plan<M: Maps>(current: &Balancer<M>, next: &Config) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for service in &next.services {
        let ServiceKind::Forward(forward) = &service.kind else {
            continue;
        };
        let Ok(state) = current.service(&service.name) else {
            out.push((service.name.clone(), 1.0));
            continue;
        };
        // Ring entries name servers by address here, so both rings compare.
        let by_address = |reals: &[RealState]| -> Vec<u32> {
            let keyed: Vec<RealState> = reals
                .iter()
                .map(|r| RealState {
                    index: u32::from(r.address),
                    ..r.clone()
                })
                .collect();
            ring_for(&keyed)
        };
        let before = by_address(&state.reals);
        let after_reals: Vec<RealState> = forward
            .real_servers
            .iter()
            .map(|rs| {
                let previous = state.reals.iter().find(|r| r.address == rs.address);
                RealState {
                    index: 0,
                    name: rs.name.clone(),
                    address: rs.address,
                    weight: rs.weight,
                    admin: previous.map_or(rs.state, |p| p.admin),
                    health: previous.map_or(Health::Up, |p| p.health),
                    mac: None,
                }
            })
            .collect();
        let after = by_address(&after_reals);
        out.push((service.name.clone(), maglev::moved_share(&before, &after)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::FakeMaps;
    use std::fmt::Write as _;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 10];

    fn config(reals: &[(&str, &str)]) -> Config {
        let mut yaml = String::from(
            "node: { name: lb1, interface: eth0 }\nservices:\n  - name: web\n    vip: 198.18.0.100\n    port: 80\n    real_servers:\n",
        );
        for (name, address) in reals {
            let _ = writeln!(yaml, "      - {{ name: {name}, address: {address} }}");
        }
        match Config::from_yaml(&yaml, "test.yaml") {
            Ok(c) => c,
            Err(e) => panic!("test configuration invalid: {e}"),
        }
    }

    fn balancer(reals: &[(&str, &str)]) -> Balancer<FakeMaps> {
        let mut b = Balancer::new(FakeMaps::default(), MAC).unwrap_or_else(|e| panic!("{e}"));
        b.apply(&config(reals)).unwrap_or_else(|e| panic!("{e}"));
        b
    }

    fn real_indexes(b: &Balancer<FakeMaps>) -> Vec<u32> {
        b.service("web")
            .unwrap_or_else(|e| panic!("{e}"))
            .reals
            .iter()
            .map(|r| r.index)
            .collect()
    }

    fn live_ring(b: &Balancer<FakeMaps>) -> Vec<u32> {
        let (_, service) = b
            .maps()
            .services
            .iter()
            .next()
            .unwrap_or_else(|| panic!("no service"));
        b.maps().rings[&service.ring_slot].clone()
    }

    const THREE: [(&str, &str); 3] = [
        ("rs1", "198.18.0.21"),
        ("rs2", "198.18.0.22"),
        ("rs3", "198.18.0.23"),
    ];

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
    fn affinity_answers_from_the_table_then_the_hash() {
        let mut b = balancer(&THREE);
        let client: Ipv4Addr = "198.18.1.7".parse().unwrap_or_else(|_| panic!());
        let hashed = b
            .affinity_of("web", client, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hashed.source, "hash");
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
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let table = b
            .affinity_of("web", client, 3_000_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.server.as_deref(), Some("rs3"));
        assert_eq!(table.source, "table");
        assert_eq!(
            b.active_clients(3_000_000_000)
                .unwrap_or_else(|e| panic!("{e}"))
                .get(&rs3.index),
            Some(&1)
        );
        let expired = b
            .affinity_of("web", client, 302_000_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(expired.source, "hash");
    }

    #[test]
    fn plan_reports_the_moved_share() {
        let b = balancer(&THREE);
        let same = plan(&b, &config(&THREE));
        assert_eq!(same, vec![("web".to_owned(), 0.0)]);
        let fewer = plan(&b, &config(&THREE[..2]));
        let share = fewer[0].1;
        assert!(
            (0.30..0.40).contains(&share),
            "removing 1 of 3 moves about a third: {share}"
        );
    }

    #[test]
    fn sessions_from_the_peer_are_installed_in_one_batch_that_empties_the_flow_cache() {
        let mut b = balancer(&THREE);
        let generation = b.maps().globals.flow_generation;
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
        assert_eq!(b.maps().globals.flow_generation, generation + 1);
        let state = b.service("web").unwrap_or_else(|e| panic!("{e}"));
        let key = state.client_key("198.18.1.1".parse().unwrap_or_else(|_| panic!()));
        let value = b.maps().affinity[&key];
        assert_eq!(value.real, state.reals[2].index);
        assert_eq!(value.last_seen_ns, 8_000_000_000, "the peer's age is kept");
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

    #[test]
    fn netmask_is_in_network_order() {
        assert_eq!(netmask_be(32), u32::MAX);
        assert_eq!(netmask_be(24), u32::from_ne_bytes([255, 255, 255, 0]));
        assert_eq!(netmask_be(8), u32::from_ne_bytes([255, 0, 0, 0]));
    }
}
