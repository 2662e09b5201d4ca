//! NAT and SNAT services: what the data path needs beside the ring (the
//! SNAT address and port range of each service, each server's port, the
//! SNAT addresses), written before the service entries that use it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use lb_common::nat::{Conn, ConnKey, NatReal, NatService};

use super::{Balancer, BalancerError, Result, ServiceState};
use crate::{
    config::{Config, Forwarding, ServiceKind},
    dataplane::Maps,
    sync::TrackedConnection,
};

/// SNAT ports lbd may use when the host's ephemeral range is unknown:
/// 1024 up to the kernel's default `ip_local_port_range` (32768-60999).
const DEFAULT_PORTS: (u16, u16) = (1024, 31_744);

/// The fewest SNAT ports a SNAT service is run with: a port is taken again
/// only once its connection has gone (10 s after it closed), so fewer would
/// refuse new connections to a server beyond about 100 a second.
pub const MIN_SNAT_PORTS: u16 = 1024;

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

/// Refuses a configuration with a SNAT service when the host's ephemeral
/// range leaves SNAT fewer than [`MIN_SNAT_PORTS`] (`ports`, from
/// [`snat_ports`]).
///
/// # Errors
/// [`BalancerError::TooFewSnatPorts`], naming the first SNAT service.
pub fn check_snat_ports(config: &Config, ports: u16) -> Result<()> {
    let snat = config
        .services
        .iter()
        .find(|s| matches!(&s.kind, ServiceKind::Forward(f) if f.forwarding == Forwarding::Snat));
    match snat {
        Some(service) if ports < MIN_SNAT_PORTS => Err(BalancerError::TooFewSnatPorts {
            service: service.name.clone(),
            ports,
            min: MIN_SNAT_PORTS,
        }),
        _ => Ok(()),
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
            let ServiceKind::Forward(f) = &service.kind else {
                continue;
            };
            if f.forwarding != Forwarding::Snat {
                continue;
            }
            if self.snat_address(&service.name, f.snat_address).is_none() {
                return Err(BalancerError::NoSnatAddress(service.name.clone()));
            }
        }
        Ok(())
    }

    /// A connection of the data path's table (its entry of the client's
    /// direction, `last_seen_ns` the latest of both) as the peer is sent
    /// it; `None` when its service or server is gone.
    #[must_use]
    pub fn tracked_connection(
        &self,
        key: &ConnKey,
        conn: &Conn,
        now_ns: u64,
    ) -> Option<TrackedConnection> {
        let state = self
            .services
            .values()
            .find(|s| s.id == u32::from(conn.service_id))?;
        state.reals.iter().find(|r| r.index == conn.real)?;
        let at = |address: u32, port: u16| {
            SocketAddrV4::new(Ipv4Addr::from(address.to_ne_bytes()), u16::from_be(port))
        };
        let age_ms = now_ns.saturating_sub(conn.last_seen_ns) / 1_000_000;
        Some(TrackedConnection {
            service: state.config.name.clone(),
            protocol: key.protocol,
            client: at(key.src, key.sport),
            vip: at(key.dst, key.dport),
            source: at(conn.src, conn.sport),
            server: at(conn.dst, conn.dport),
            state: conn.state,
            age_ms: u32::try_from(age_ms).unwrap_or(u32::MAX),
        })
    }

    /// The two entries (the client's direction, then the server's) of a
    /// connection from the peer, as the data path would have written them;
    /// `None` when its service is not a NAT or SNAT service here on the
    /// same VIP and port, or its server not one of the service's.
    #[must_use]
    pub fn connection_entries(
        &self,
        c: &TrackedConnection,
        now_ns: u64,
    ) -> Option<[(ConnKey, Conn); 2]> {
        let state = self.services.get(&c.service)?;
        let forwarding = state.forward()?.forwarding;
        if forwarding == Forwarding::Dr
            || state.config.vip != *c.vip.ip()
            || state.config.port != c.vip.port()
        {
            return None;
        }
        let real = state.reals.iter().find(|r| r.address == *c.server.ip())?;
        let ip = |a: &SocketAddrV4| u32::from_ne_bytes(a.ip().octets());
        let key = ConnKey {
            src: ip(&c.client),
            dst: ip(&c.vip),
            sport: c.client.port().to_be(),
            dport: c.vip.port().to_be(),
            protocol: c.protocol,
            pad: [0; 3],
        };
        let out = Conn {
            src: ip(&c.source),
            dst: ip(&c.server),
            sport: c.source.port().to_be(),
            dport: c.server.port().to_be(),
            real: real.index,
            last_seen_ns: now_ns.saturating_sub(u64::from(c.age_ms) * 1_000_000),
            state: c.state,
            reply: 0,
            service_id: u16::try_from(state.id).ok()?,
            seen_jiffies: 0,
        };
        let back = Conn {
            src: key.dst,
            dst: key.src,
            sport: key.dport,
            dport: key.sport,
            reply: 1,
            ..out
        };
        Some([(key, out), (out.reverse_key(c.protocol), back)])
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
        let refused = check_snat_ports(&config, snat_ports(1024, 65_535).1)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("leaves only 0 ports"),
            "an ephemeral range over every port leaves SNAT none: refused ({refused})"
        );
        assert!(check_snat_ports(&config, MIN_SNAT_PORTS).is_ok());
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

    /// Issue 14: a connection crosses to the peer by names and addresses,
    /// and comes back as the two entries the data path would have written
    /// there (the peer's own service id and server index, the same
    /// translation), aged alike; a service that differs there is skipped.
    #[test]
    fn a_connection_crosses_to_the_peer_by_names() {
        const MS: u64 = 1_000_000;
        let web = "  - name: web\n    vip: 198.18.0.100\n    port: 443\n    forwarding: snat\n    snat_address: 198.18.0.99\n    real_servers:\n      - { name: a, address: 198.18.1.21, port: 8443 }\n      - { name: b, address: 198.18.1.22 }\n";
        let other = "  - name: app\n    vip: 198.18.0.101\n    port: 80\n    forwarding: nat\n    real_servers:\n      - { name: c, address: 198.18.1.23 }\n";
        let balancer = |services: &str| {
            let yaml = format!("node: {{ name: t, interface: eth0 }}\nservices:\n{services}");
            let config = Config::from_yaml(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
            let mut b = Balancer::new(FakeMaps::default(), [2, 0, 0, 0, 0, 1])
                .unwrap_or_else(|e| panic!("{e}"));
            b.apply(&config).unwrap_or_else(|e| panic!("{e}"));
            b
        };
        let master = balancer(&format!("{other}{web}"));
        let backup = balancer(web);
        let ip = |s: &str| {
            u32::from_ne_bytes(
                s.parse::<Ipv4Addr>()
                    .unwrap_or(Ipv4Addr::UNSPECIFIED)
                    .octets(),
            )
        };
        let (m_web, b_web) = (
            master.service("web").unwrap_or_else(|e| panic!("{e}")),
            backup.service("web").unwrap_or_else(|e| panic!("{e}")),
        );
        assert_ne!(m_web.id, b_web.id, "the test needs ids that differ");
        let key = ConnKey {
            src: ip("198.18.2.7"),
            dst: ip("198.18.0.100"),
            sport: 40_001_u16.to_be(),
            dport: 443_u16.to_be(),
            protocol: 6,
            pad: [0; 3],
        };
        let conn = Conn {
            src: ip("198.18.0.99"),
            dst: ip("198.18.1.21"),
            sport: 2_000_u16.to_be(),
            dport: 8443_u16.to_be(),
            real: m_web.reals[0].index,
            last_seen_ns: 1_000 * MS,
            state: lb_common::nat::CONN_ESTABLISHED,
            reply: 0,
            service_id: u16::try_from(m_web.id).unwrap_or(0),
            seen_jiffies: 0,
        };
        let tracked = master
            .tracked_connection(&key, &conn, 1_250 * MS)
            .unwrap_or_else(|| panic!("known"));
        assert_eq!(tracked.age_ms, 250);
        assert_eq!(tracked.source.to_string(), "198.18.0.99:2000");
        assert_eq!(tracked.server.to_string(), "198.18.1.21:8443");

        let [(k1, c1), (k2, c2)] = backup
            .connection_entries(&tracked, 5_000 * MS)
            .unwrap_or_else(|| panic!("known at the peer"));
        let b_real = b_web.reals[0].index;
        let b_id = u16::try_from(b_web.id).unwrap_or(0);
        assert_eq!(k1, key);
        assert_eq!(
            c1,
            Conn {
                real: b_real,
                service_id: b_id,
                last_seen_ns: 4_750 * MS,
                ..conn
            }
        );
        assert_eq!(
            (
                k2.src,
                k2.dst,
                u16::from_be(k2.sport),
                u16::from_be(k2.dport)
            ),
            (ip("198.18.1.21"), ip("198.18.0.99"), 8443, 2000),
            "the server's replies, to the SNAT address and port"
        );
        assert_eq!(
            (c2.src, c2.dst, c2.sport, c2.dport, c2.reply, c2.real),
            (key.dst, key.src, key.dport, key.sport, 1, b_real),
            "leave as the VIP to the client"
        );

        let moved = TrackedConnection {
            vip: "198.18.0.100:444".parse().unwrap_or_else(|e| panic!("{e}")),
            ..tracked.clone()
        };
        assert!(
            backup.connection_entries(&moved, 0).is_none(),
            "another port there"
        );
        let gone = TrackedConnection {
            service: "app".into(),
            ..tracked
        };
        assert!(
            backup.connection_entries(&gone, 0).is_none(),
            "no such service there"
        );
    }
}
