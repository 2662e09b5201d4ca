//! Taking over a data path an earlier lbd left running: the control plane's
//! state rebuilt from what the maps hold, matched to the configuration by
//! service key (VIP, port, protocol) and real-server address, so that the
//! next [`Balancer::apply`] keeps every id, index and ring that still holds
//! and writes only what changed. Affinity entries name a service id and a
//! real-server index: keeping both is what keeps every client on its server.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use lb_common::{
    Counters, Real, Service as MapService, ServiceKey, MAGLEV_RING_SIZE, MAX_SERVICES, NO_REAL,
    REAL_F_KEEP_CLIENTS, REAL_F_RESOLVED,
};

use super::{state::service_key, Balancer, Health, RealState, Result, ServiceState};
use crate::{
    config::{self, AdminState, Config, ServiceKind},
    dataplane::Maps,
};

/// What a take-over found, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TakeoverReport {
    /// Services of the configuration found running, with their ids.
    pub services: usize,
    /// Real servers found running.
    pub servers: usize,
    /// Of those, found down (kept down until their checks pass `rise` times).
    pub down: Vec<(String, String)>,
    /// The health of every real server found running, by (service, server),
    /// for the health checks to start from.
    pub health: Vec<((String, String), Health)>,
    /// Services running that the configuration no longer has (removed).
    pub removed: usize,
}

/// A real server's address as a slot holds it.
fn slot_address(address: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(address.octets())
}

/// The health a running slot shows: a server that may not keep clients
/// although it is resolved and not halted was down.
fn health_of(slot: &Real, admin: AdminState) -> Health {
    let resolved = slot.flags & REAL_F_RESOLVED != 0;
    if resolved && admin != AdminState::Halt && slot.flags & REAL_F_KEEP_CLIENTS == 0 {
        Health::Down
    } else {
        Health::Up
    }
}

impl<M: Maps> Balancer<M> {
    /// Takes over what the maps hold (a data path left running) for
    /// `config`, before the first [`apply`](Balancer::apply) of it. Only
    /// valid on a balancer that has applied nothing yet.
    ///
    /// # Errors
    /// When the maps cannot be read or written.
    pub fn take_over(&mut self, config: &Config) -> Result<TakeoverReport> {
        let running = self.maps.take_over()?;
        let mut report = TakeoverReport::default();
        let mut by_key: HashMap<ServiceKey, MapService> =
            running.services.iter().copied().collect();
        let mut unclaimed: BTreeMap<u32, Real> = running.reals.clone();
        for service in &config.services {
            let ServiceKind::Forward(forward) = &service.kind else {
                continue;
            };
            let Some(entry) = by_key.remove(&service_key(service)) else {
                continue;
            };
            if entry.id >= MAX_SERVICES || self.services.values().any(|s| s.id == entry.id) {
                continue;
            }
            let ring = running
                .rings
                .get(&entry.ring_slot)
                .cloned()
                .unwrap_or_else(|| vec![NO_REAL; MAGLEV_RING_SIZE as usize]);
            let state =
                self.take_service(service, forward, &entry, ring, &mut unclaimed, &mut report);
            self.next_id = self.next_id.max((entry.id + 1) % MAX_SERVICES);
            self.services.insert(service.name.clone(), state);
        }
        // Services the file no longer has go at once; their slots, and
        // those of servers it no longer has, are cleared by the next apply
        // once no ring names them (they stay "in use" until then).
        for (key, entry) in by_key {
            self.maps.remove_service(&key)?;
            self.next_id = self.next_id.max((entry.id + 1) % MAX_SERVICES);
            report.removed += 1;
        }
        for (index, slot) in unclaimed {
            self.reals_in_use.insert(
                index,
                (String::new(), Ipv4Addr::from(slot.address.to_ne_bytes())),
            );
        }
        Ok(report)
    }

    /// One service of the configuration found running as `entry`: its
    /// servers claimed from the `unclaimed` slots by address.
    fn take_service(
        &mut self,
        service: &config::Service,
        forward: &config::Forward,
        entry: &MapService,
        ring: Vec<u32>,
        unclaimed: &mut BTreeMap<u32, Real>,
        report: &mut TakeoverReport,
    ) -> ServiceState {
        let mut claim = |address: Ipv4Addr, name: &str, admin: AdminState| {
            let (index, slot) = unclaimed.iter().find_map(|(index, slot)| {
                (u32::from(slot.service_id) == entry.id && slot.address == slot_address(address))
                    .then_some((*index, *slot))
            })?;
            unclaimed.remove(&index);
            let mac = (slot.flags & REAL_F_RESOLVED != 0).then_some(slot.mac);
            if let Some(mac) = mac {
                self.macs.insert(address, mac);
            }
            self.reals_in_use
                .insert(index, (service.name.clone(), address));
            Some(RealState {
                index,
                name: name.to_owned(),
                address,
                weight: 0,
                admin,
                health: health_of(&slot, admin),
                mac,
                routed: forward.forwarding != crate::config::Forwarding::Dr,
            })
        };
        let mut reals = Vec::new();
        for rs in &forward.real_servers {
            let Some(real) = claim(rs.address, &rs.name, rs.state) else {
                continue;
            };
            let key = (service.name.clone(), rs.name.clone());
            if real.health == Health::Down {
                report.down.push(key.clone());
            }
            report.health.push((key, real.health));
            reals.push(RealState {
                weight: rs.weight,
                ..real
            });
        }
        let fallback = forward
            .fallback
            .filter(|_| entry.fallback_real != NO_REAL)
            .and_then(|address| claim(address, "fallback", AdminState::Online))
            .map(|f| RealState {
                health: Health::Up,
                ..f
            });
        report.services += 1;
        report.servers += reals.len();
        ServiceState {
            config: service.clone(),
            id: entry.id,
            reals,
            fallback,
            live_slot: entry.ring_slot,
            ring,
            retired: Counters::default(),
            max_clients: entry.max_clients,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::{balancer, config, MAC, THREE};
    use crate::dataplane::{FakeMaps, Write};

    /// The maps a first lbd left, taken over by a second one.
    fn second_lbd(first: &Balancer<FakeMaps>) -> Balancer<FakeMaps> {
        let mut maps = first.maps().clone();
        maps.writes.clear();
        Balancer::new(maps, MAC).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_same_configuration_is_taken_over_without_a_write() {
        let mut first = balancer(&THREE);
        let drained = {
            let mut c = config(&THREE);
            if let ServiceKind::Forward(f) = &mut c.services[0].kind {
                f.real_servers[0].state = AdminState::Drain;
            }
            c
        };
        first
            .set_admin_state("web", "rs1", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        first
            .set_health("web", "rs2", Health::Down)
            .unwrap_or_else(|e| panic!("{e}"));
        let web = first
            .service("web")
            .unwrap_or_else(|e| panic!("{e}"))
            .clone();

        let mut second = second_lbd(&first);
        let report = second.take_over(&drained).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            report,
            TakeoverReport {
                services: 1,
                servers: 3,
                down: vec![("web".into(), "rs2".into())],
                health: ["rs1", "rs2", "rs3"]
                    .iter()
                    .map(|s| (
                        ("web".into(), (*s).into()),
                        if *s == "rs2" {
                            Health::Down
                        } else {
                            Health::Up
                        }
                    ))
                    .collect(),
                removed: 0,
            }
        );
        second.apply(&drained).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            second.maps().writes,
            Vec::<Write>::new(),
            "nothing written again"
        );
        let taken = second.service("web").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(taken.id, web.id);
        assert_eq!(taken.live_slot, web.live_slot);
        assert_eq!(taken.ring, web.ring);
        let indexes = |s: &ServiceState| {
            s.reals
                .iter()
                .map(|r| (r.index, r.health, r.admin))
                .collect::<Vec<_>>()
        };
        assert_eq!(indexes(taken), indexes(&web));
        assert!(
            second.unresolved().is_empty(),
            "every MAC known from the slots"
        );
    }

    #[test]
    fn what_the_file_dropped_meanwhile_goes_after_the_rings_stop_naming_it() {
        let first = balancer(&THREE);
        let old_index = first.service("web").unwrap_or_else(|e| panic!("{e}")).reals[2].index;
        let mut second = second_lbd(&first);
        let two = config(&THREE[..2]);
        second.take_over(&two).unwrap_or_else(|e| panic!("{e}"));
        second.apply(&two).unwrap_or_else(|e| panic!("{e}"));
        let writes = &second.maps().writes;
        let ring = writes.iter().position(|w| matches!(w, Write::Ring { .. }));
        let cleared = writes.iter().position(|w| {
            *w == Write::Real {
                index: old_index,
                flags: 0,
            }
        });
        assert!(
            matches!((ring, cleared), (Some(r), Some(c)) if r < c),
            "the ring without rs3 first, then its slot cleared: {writes:?}"
        );
        assert_eq!(second.maps().reals[&old_index].address, 0);
    }

    #[test]
    fn a_service_the_file_no_longer_has_is_removed() {
        let first = balancer(&THREE);
        let mut second = second_lbd(&first);
        let mut other = config(&THREE);
        other.services[0].port = 8080;
        let report = second.take_over(&other).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((report.services, report.removed), (0, 1));
        assert!(second.maps().services.is_empty());
        second.apply(&other).unwrap_or_else(|e| panic!("{e}"));
        let new_id = second.service("web").unwrap_or_else(|e| panic!("{e}")).id;
        let old_id = first.service("web").unwrap_or_else(|e| panic!("{e}")).id;
        assert_ne!(
            new_id, old_id,
            "the removed service's id is not handed out at once"
        );
    }
}
