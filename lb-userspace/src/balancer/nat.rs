//! NAT and SNAT services: what the data path needs beside the ring (the
//! SNAT address and port range of each service, each server's port, the
//! SNAT addresses), written before the service entries that use it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use lb_common::nat::{NatReal, NatService};

use super::{Balancer, BalancerError, Result, ServiceState};
use crate::{
    config::{Config, Forwarding, ServiceKind},
    dataplane::Maps,
};

/// SNAT ports lbd may use when the host's ephemeral range is unknown:
/// 1024 up to the kernel's default `ip_local_port_range` (32768-60999).
const DEFAULT_PORTS: (u16, u16) = (1024, 31_744);

/// Where SNAT comes from: the ports, and each SNAT service's address when
/// the file names none.
#[derive(Clone, Debug)]
pub(super) struct NatSettings {
    /// First port and count.
    ports: (u16, u16),
    /// By service name: the address of the interface towards its servers.
    defaults: BTreeMap<String, Ipv4Addr>,
}

impl Default for NatSettings {
    fn default() -> Self {
        Self {
            ports: DEFAULT_PORTS,
            defaults: BTreeMap::new(),
        }
    }
}

/// The ports SNAT may take: 1024-65535 outside the kernel's ephemeral
/// range `lo..=hi` (the host's own connections, lbd's health checks
/// included, take those), the larger of the two pieces left.
#[must_use]
pub fn snat_ports(lo: u16, hi: u16) -> (u16, u16) {
    let below = lo.saturating_sub(1024);
    let above = u16::MAX - hi.max(1023);
    if below >= above {
        (1024, below)
    } else {
        (hi + 1, above)
    }
}

impl<M: Maps> Balancer<M> {
    /// Sets the SNAT ports (first, count), from the host's ephemeral range
    /// ([`snat_ports`]).
    pub fn set_snat_ports(&mut self, first: u16, count: u16) {
        self.nat.ports = (first, count);
    }

    /// Sets the address each SNAT service without `snat_address` sends from.
    pub fn set_snat_defaults(&mut self, defaults: BTreeMap<String, Ipv4Addr>) {
        self.nat.defaults = defaults;
    }

    fn snat_address(&self, name: &str, configured: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        configured.or_else(|| self.nat.defaults.get(name).copied())
    }

    /// Refuses a configuration with a SNAT service that has no address.
    pub(super) fn check_nat(&self, config: &Config) -> Result<()> {
        for service in &config.services {
            if let ServiceKind::Forward(f) = &service.kind {
                if f.forwarding == Forwarding::Snat
                    && self.snat_address(&service.name, f.snat_address).is_none()
                {
                    return Err(BalancerError::NoSnatAddress(service.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Writes the NAT settings of the services of `next`.
    pub(super) fn write_nat(&mut self, next: &BTreeMap<String, ServiceState>) -> Result<()> {
        let mut addresses = BTreeSet::new();
        let mut active = false;
        for state in next.values() {
            let Some(f) = state.forward() else {
                continue;
            };
            if f.forwarding == Forwarding::Dr {
                continue;
            }
            active = true;
            let snat = if f.forwarding == Forwarding::Snat {
                let address = self
                    .snat_address(&state.config.name, f.snat_address)
                    .ok_or_else(|| BalancerError::NoSnatAddress(state.config.name.clone()))?;
                addresses.insert(address);
                u32::from_ne_bytes(address.octets())
            } else {
                0
            };
            self.maps.set_nat_service(
                state.id,
                NatService {
                    snat_address: snat,
                    port_lo: self.nat.ports.0,
                    port_count: self.nat.ports.1,
                },
            )?;
            for (rs, real) in f.real_servers.iter().zip(&state.reals) {
                let port = rs.port.unwrap_or(state.config.port);
                self.maps.set_nat_real(
                    real.index,
                    NatReal {
                        port: port.to_be(),
                        pad: 0,
                    },
                )?;
            }
        }
        self.maps.set_snat_addresses(&addresses)?;
        self.maps.set_nat_active(active)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::FakeMaps;

    #[test]
    fn snat_ports_avoid_the_ephemeral_range() {
        assert_eq!(snat_ports(32_768, 60_999), (1024, 31_744));
        assert_eq!(snat_ports(1024, 50_000), (50_001, 15_535));
        assert_eq!(snat_ports(20_000, 30_000), (30_001, 35_535));
    }

    #[test]
    fn a_snat_service_gets_its_address_ports_and_server_ports() {
        let yaml = "node: { name: t, interface: eth0 }\nservices:\n  - name: web\n    vip: 198.18.0.100\n    port: 443\n    forwarding: snat\n    real_servers:\n      - { name: a, address: 198.18.1.21, port: 8443 }\n      - { name: b, address: 198.18.1.22 }\n";
        let config = Config::from_yaml(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        let mut b = Balancer::new(FakeMaps::default(), [2, 0, 0, 0, 0, 1])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(b.apply(&config), Err(BalancerError::NoSnatAddress(_))),
            "no address, none found: refused"
        );
        let address = Ipv4Addr::new(198, 18, 1, 1);
        b.set_snat_defaults([("web".to_owned(), address)].into());
        b.apply(&config).unwrap_or_else(|e| panic!("{e}"));
        let state = b.service("web").unwrap_or_else(|e| panic!("{e}"));
        let nat = b.maps().nat_services[&state.id];
        assert_eq!(nat.snat_address, u32::from_ne_bytes(address.octets()));
        assert_eq!((nat.port_lo, nat.port_count), DEFAULT_PORTS);
        let ports: Vec<u16> = state
            .reals
            .iter()
            .map(|r| u16::from_be(b.maps().nat_reals[&r.index].port))
            .collect();
        assert_eq!(ports, [8443, 443]);
        assert_eq!(b.maps().snat_addresses, [address].into());
        assert!(b.maps().nat_active, "replies are looked up");
        assert!(b.unresolved().is_empty(), "routed servers need no MAC");
        let service = b
            .maps()
            .services
            .values()
            .next()
            .copied()
            .unwrap_or_else(|| panic!("entry"));
        assert_eq!(service.forwarding, lb_common::nat::FORWARDING_SNAT);
    }
}
