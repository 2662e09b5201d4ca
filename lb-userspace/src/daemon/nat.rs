//! NAT and SNAT, the daemon's part: the SNAT ports (outside the host's
//! ephemeral range) and default addresses (the interface towards the
//! servers) before each apply; at start, the program on each server
//! interface, the interfaces frames may leave by, and forwarding enabled
//! where the data path's routing lookups need it; `lbctl connections`.
//! The connection table's sweep and replication: [`super::connections`].

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::PoisonError,
    time::Duration,
};

use anyhow::Context as _;

use super::{attach_mode, Daemon};
use crate::{
    balancer::{check_snat_ports, snat_ports},
    config::{Config, Forwarding, ServiceKind},
    control::protocol::{ConnectionEntry, ConnectionsReport},
    monotonic_ns, neighbour,
};

/// Whether `config` has a NAT or SNAT service.
fn translates(config: &Config) -> bool {
    config
        .services
        .iter()
        .any(|s| matches!(&s.kind, ServiceKind::Forward(f) if f.forwarding != Forwarding::Dr))
}

/// The host's ephemeral port range (`ip_local_port_range`).
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

/// The address this host sends from towards `to`: the kernel's own choice
/// for a route there (a UDP socket connected to it sends nothing).
fn source_towards(to: Ipv4Addr) -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(SocketAddrV4::new(to, 9)).ok()?;
    match socket.local_addr().ok()? {
        std::net::SocketAddr::V4(local) => Some(*local.ip()),
        std::net::SocketAddr::V6(_) => None,
    }
}

impl Daemon {
    /// A real server's live connections as of the last sweep (`None`: the
    /// service tracks none, direct routing).
    pub(super) fn connections_of(
        &self,
        state: &crate::balancer::ServiceState,
        index: u32,
    ) -> Option<u64> {
        let forwarding = state.forward().map(|f| f.forwarding)?;
        if forwarding == Forwarding::Dr {
            return None;
        }
        let shared = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(shared.counts.get(&index).copied().unwrap_or(0))
    }

    /// `lbctl connections`: `service`'s tracked connections (one server's
    /// if `server`), most recently active first.
    pub(super) fn connections(
        &self,
        service: &str,
        server: Option<&str>,
    ) -> Result<ConnectionsReport, String> {
        let state = self.balancer.service(service).map_err(|e| e.to_string())?;
        let forwarding = state.forward().map(|f| f.forwarding);
        if forwarding != Some(Forwarding::Nat) && forwarding != Some(Forwarding::Snat) {
            return Err(format!(
                "{service} forwards by direct routing, which tracks no connections; \
                 `lbctl affinity {service} CLIENT` shows where a client goes"
            ));
        }
        if let Some(name) = server {
            if !state.reals.iter().any(|r| r.name == name) {
                return Err(format!(
                    "service {service:?} has no real server named {name:?}; `lbctl status` lists them"
                ));
            }
        }
        let table = self.balancer.maps().nat().conn_table();
        let entries = table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connections()
            .map_err(|e| format!("reading the connection table: {e}"))?;
        let now = monotonic_ns();
        let mut connections: Vec<ConnectionEntry> = entries
            .into_iter()
            .filter(|(_, c)| u32::from(c.service_id) == state.id)
            .filter_map(|(key, conn)| {
                let real = state.reals.iter().find(|r| r.index == conn.real)?;
                if server.is_some_and(|s| s != real.name) {
                    return None;
                }
                let client = SocketAddrV4::new(
                    Ipv4Addr::from(key.src.to_ne_bytes()),
                    u16::from_be(key.sport),
                );
                Some(ConnectionEntry {
                    client: client.to_string(),
                    server: real.name.clone(),
                    state: state_name(conn.state).to_owned(),
                    age_s: Duration::from_nanos(now.saturating_sub(conn.last_seen_ns))
                        .as_secs_f64(),
                })
            })
            .collect();
        connections.sort_by(|a, b| a.age_s.total_cmp(&b.age_s));
        Ok(ConnectionsReport { connections })
    }

    /// Before an apply: SNAT ports and the addresses of SNAT services that
    /// name none.
    ///
    /// # Errors
    /// When the host's ephemeral range leaves a SNAT service too few ports.
    pub(super) fn prepare_nat(&mut self, config: &Config) -> anyhow::Result<()> {
        if let Some((lo, hi)) = ephemeral_range() {
            let (first, count) = snat_ports(lo, hi);
            check_snat_ports(config, count)?;
            self.balancer.set_snat_ports(first, count);
        }
        let mut defaults = BTreeMap::new();
        for service in &config.services {
            let ServiceKind::Forward(f) = &service.kind else {
                continue;
            };
            if f.forwarding != Forwarding::Snat || f.snat_address.is_some() {
                continue;
            }
            if let Some(address) = f
                .real_servers
                .first()
                .and_then(|r| source_towards(r.address))
            {
                log::info!(
                    "{}: SNAT from {address} (the interface towards its servers)",
                    service.name
                );
                defaults.insert(service.name.clone(), address);
            }
        }
        self.balancer.set_snat_defaults(defaults);
        Ok(())
    }

    /// At start: the program on each server interface (the servers'
    /// replies arrive there), every interface a translated frame may leave
    /// by, and routing enabled where the services need it.
    pub(super) async fn attach_server_side(&mut self, config: &Config) -> anyhow::Result<()> {
        let mut egress = vec![self.ifindex];
        for name in &config.node.server_interfaces {
            let iface = neighbour::interface(&self.handle, name)
                .await
                .with_context(|| format!("node.server_interfaces: {name}"))?;
            let hook = self
                .program
                .attach_also(
                    &self.handle,
                    iface.index,
                    name,
                    attach_mode(config.node.xdp_mode),
                )
                .await?;
            log::info!(
                "XDP program attached to server interface {name} ({} mode)",
                hook.name()
            );
            egress.push(iface.index);
        }
        self.balancer
            .maps_mut()
            .nat_mut()
            .set_egress(&egress)
            .context("the interfaces NAT frames leave by")?;
        self.enable_routing(config)
    }

    /// With a NAT or SNAT service (at start and on every change): IPv4
    /// `forwarding` on lbd's interfaces, which the data path's routing
    /// lookups need, and `accept_local`: a translated frame whose next hop
    /// the kernel has not resolved yet is handed to it to forward, and such
    /// a frame comes from a VIP or a SNAT address, this host's own.
    pub(super) fn enable_routing(&self, config: &Config) -> anyhow::Result<()> {
        if !translates(config) {
            return Ok(());
        }
        let servers = &config.node.server_interfaces;
        for name in std::iter::once(&config.node.interface).chain(servers) {
            for (setting, why) in [
                ("forwarding", "NAT and SNAT route through this host"),
                (
                    "accept_local",
                    "the kernel forwards translated frames until it has resolved their next hop",
                ),
            ] {
                let path = format!("/proc/sys/net/ipv4/conf/{name}/{setting}");
                if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
                    continue;
                }
                std::fs::write(&path, "1")
                    .with_context(|| format!("setting {path} to 1, which NAT and SNAT need"))?;
                log::info!("{setting} enabled on {name}: {why}");
            }
        }
        Ok(())
    }
}

/// A connection state as `lbctl connections` names it.
fn state_name(state: u8) -> &'static str {
    match state {
        lb_common::nat::CONN_SYN => "syn",
        lb_common::nat::CONN_ESTABLISHED => "established",
        lb_common::nat::CONN_FIN => "fin",
        lb_common::nat::CONN_CLOSED => "closed",
        _ => "udp",
    }
}
