//! What lbd reports: `lbctl status` (a typed [`StatusReport`]) and the
//! metrics snapshot, both read from the balancer, the health monitor, the
//! census and the HA coordinator.

use std::collections::BTreeMap;

use lb_common::Reason;

use super::Daemon;
use crate::{
    balancer::Health,
    config::ServiceKind,
    control::protocol::{
        CheckStatus, FallbackStatus, HealthState, RealStatus, RedirectStatus, ServiceStatus,
        ServiceType, StatusReport,
    },
    health::ServerHealth,
    metrics::{RealSample, ServiceSample, Snapshot},
};

/// `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn health_state(health: Health) -> HealthState {
    if health == Health::Up {
        HealthState::Up
    } else {
        HealthState::Down
    }
}

impl Daemon {
    fn health_of(&self) -> BTreeMap<(String, String), ServerHealth> {
        self.health
            .snapshot()
            .into_iter()
            .map(|h| ((h.service.clone(), h.server.clone()), h))
            .collect()
    }

    /// The numbers the metrics endpoint renders.
    pub(super) fn snapshot(&self) -> Snapshot {
        let census = self.census();
        let mut services = Vec::new();
        for state in self.balancer.services() {
            let counters = self.balancer.service_counters(state).unwrap_or_default();
            let reals = state
                .reals
                .iter()
                .map(|r| {
                    let c = self.balancer.real_counters(r).unwrap_or_default();
                    RealSample {
                        name: r.name.clone(),
                        packets: c.packets,
                        bytes: c.bytes,
                        new_clients: c.new_clients,
                        up: r.health == Health::Up,
                        active_clients: census.per_real.get(&r.index).copied().unwrap_or(0),
                        active_connections: self.connections_of(state, r.index),
                        resolved: r.resolved(),
                    }
                })
                .collect();
            services.push(ServiceSample {
                name: state.config.name.clone(),
                packets: counters.packets,
                bytes: counters.bytes,
                reals,
                remembered_clients: self.balancer.remembered_clients(state),
                max_clients: u64::from(state.max_clients),
            });
        }
        let reasons = self.balancer.reasons().unwrap_or_default();
        Snapshot {
            services,
            affinity_entries: census.live,
            ha_master: self.holds_vips(),
            sync_connected: self.sync_connected(),
            reasons: Reason::ALL
                .iter()
                .map(|r| r.name())
                .zip(reasons)
                .chain(
                    lb_common::nat::NatNote::ALL
                        .iter()
                        .map(|n| n.as_str())
                        .zip(self.balancer.maps().nat().notes().unwrap_or_default()),
                )
                .collect(),
        }
    }

    /// `lbctl status`.
    pub(super) fn status(&self) -> anyhow::Result<StatusReport> {
        let census = self.census();
        let health = self.health_of();
        let redirected: BTreeMap<String, u64> = self.redirects.stats().into_iter().collect();
        let mut services = Vec::new();
        for service in &self.config.services {
            let mut entry = ServiceStatus {
                name: service.name.clone(),
                vip: service.vip,
                port: service.port,
                protocol: service.protocol.to_string(),
                kind: ServiceType::Forward,
                forwarding: None,
                packets: 0,
                bytes: 0,
                new_clients: None,
                real_servers: Vec::new(),
                fallback: None,
                redirect: None,
                requests: None,
                remembered_clients: None,
                max_clients: None,
            };
            match &service.kind {
                ServiceKind::Redirect(r) => {
                    entry.kind = ServiceType::Redirect;
                    entry.redirect = Some(RedirectStatus {
                        code: r.code,
                        scheme: r.scheme.clone(),
                        port: r.port,
                    });
                    entry.requests = Some(redirected.get(&service.name).copied().unwrap_or(0));
                }
                ServiceKind::Forward(forward) => {
                    entry.forwarding = Some(forward.forwarding.as_str().to_owned());
                    let state = self.balancer.service(&service.name)?;
                    let counters = self.balancer.service_counters(state)?;
                    entry.packets = counters.packets;
                    entry.bytes = counters.bytes;
                    entry.new_clients = Some(counters.new_clients);
                    entry.remembered_clients = Some(self.balancer.remembered_clients(state));
                    entry.max_clients = Some(u64::from(state.max_clients));
                    for r in &state.reals {
                        let c = self.balancer.real_counters(r)?;
                        let last = health
                            .get(&(service.name.clone(), r.name.clone()))
                            .and_then(|h| h.last.as_ref());
                        entry.real_servers.push(RealStatus {
                            name: r.name.clone(),
                            address: r.address,
                            health: health_state(r.health),
                            last_check: last.map(|l| CheckStatus {
                                passed: l.passed,
                                detail: l.detail.clone(),
                                latency_ms: l.latency.as_secs_f64() * 1000.0,
                            }),
                            admin_state: r.admin,
                            weight: r.weight,
                            active_clients: census.per_real.get(&r.index).copied().unwrap_or(0),
                            active_connections: self.connections_of(state, r.index),
                            packets: c.packets,
                            bytes: c.bytes,
                            new_clients: c.new_clients,
                            mac: r.mac.map(format_mac),
                            resolved: r.resolved(),
                        });
                    }
                    if let Some(f) = &state.fallback {
                        let c = self.balancer.real_counters(f)?;
                        entry.fallback = Some(FallbackStatus {
                            address: f.address,
                            packets: c.packets,
                            bytes: c.bytes,
                        });
                    }
                }
            }
            services.push(entry);
        }
        let mut dataplane: BTreeMap<String, u64> = Reason::ALL
            .iter()
            .zip(self.balancer.reasons()?)
            .map(|(reason, count)| (reason.name().to_owned(), count))
            .collect();
        if let Ok(notes) = self.balancer.maps().nat().notes() {
            for (note, count) in lb_common::nat::NatNote::ALL.iter().zip(notes) {
                dataplane.insert(note.as_str().to_owned(), count);
            }
        }
        Ok(StatusReport {
            node: self.config.node.name.clone(),
            ha: self.ha_status(),
            interface: self.config.node.interface.clone(),
            xdp_mode: self.attach_mode.to_owned(),
            vips: self.vips.owned().iter().copied().collect(),
            affinity_entries: census.live,
            services,
            dataplane,
        })
    }
}
