//! Warnings about a configuration that is valid but will not work as its
//! author expects on this network, logged at start and on every reload.

use std::net::Ipv4Addr;

use super::Daemon;
use crate::config::{Config, Forwarding, ServiceKind};

/// Real servers outside every subnet of the interface. Direct routing
/// rewrites only the MAC address, so a real server must be on the link: an
/// off-link address is either never resolved (it gets no client) or
/// answered for by a router, whose MAC the data path then refuses to send
/// to when the frame came from that router (`drop_loop`).
fn off_link_servers(config: &Config, subnets: &[(Ipv4Addr, u8)]) -> Vec<String> {
    let on_link = |address: Ipv4Addr| {
        subnets.iter().any(|(net, prefix)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
            *prefix < 32 && u32::from(address) & mask == u32::from(*net) & mask
        })
    };
    let mut out = Vec::new();
    for service in &config.services {
        let ServiceKind::Forward(f) = &service.kind else {
            continue;
        };
        if f.forwarding != Forwarding::Dr {
            // NAT and SNAT servers are reached through the routing table.
            continue;
        }
        for rs in &f.real_servers {
            if !on_link(rs.address) {
                out.push(format!(
                    "{}/{} ({}) is not on a subnet of {}: direct routing reaches only servers \
                     on the interface's own network; it will get no client unless it answers \
                     ARP there",
                    service.name, rs.name, rs.address, config.node.interface
                ));
            }
        }
    }
    out
}

/// VIPs with several services of one protocol: IPv4 fragments carry no
/// ports after the first, so theirs go to the kernel rather than be split.
fn shared_fragment_vips(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, service) in config.services.iter().enumerate() {
        let others = config.services[..i]
            .iter()
            .filter(|s| s.vip == service.vip && s.protocol == service.protocol)
            .count();
        if others == 1 && service.protocol.to_string() == "udp" {
            out.push(format!(
                "{} has several {} services: fragmented datagrams to it go to this host's \
                 kernel, not to a real server (use one port per VIP for UDP services that \
                 fragment)",
                service.vip, service.protocol
            ));
        }
    }
    out
}

/// SNAT services of a pair that name no `snat_address`: they send from
/// this node's own address, which the peer does not take over, so a
/// failover resets their connections.
fn unfloated_snat(config: &Config) -> Vec<String> {
    if config.cluster.is_none() {
        return Vec::new();
    }
    config
        .services
        .iter()
        .filter(|s| {
            matches!(&s.kind, ServiceKind::Forward(f)
                if f.forwarding == Forwarding::Snat && f.snat_address.is_none())
        })
        .map(|s| {
            format!(
                "{} (forwarding: snat) names no snat_address: its servers answer this node's own                  address, which the peer does not take over, so a failover resets its                  connections; set snat_address to a free address both nodes reach (it floats                  with the VIPs)",
                s.name
            )
        })
        .collect()
}

impl Daemon {
    /// Logs what [`off_link_servers`], [`shared_fragment_vips`] and
    /// [`unfloated_snat`] find.
    pub(super) async fn advise(&self, config: &Config) {
        match self.vips.addresses().await {
            Ok(subnets) => {
                for warning in off_link_servers(config, &subnets) {
                    log::warn!("{warning}");
                }
            }
            Err(error) => log::warn!("cannot list the interface's addresses: {error}"),
        }
        for warning in shared_fragment_vips(config)
            .into_iter()
            .chain(unfloated_snat(config))
        {
            log::warn!("{warning}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!(
            "node: {{ name: lb1, interface: eth0 }}\nservices:\n  - name: web\n    vip: 198.18.0.100\n    port: 80\n    real_servers:\n      - {{ name: near, address: 198.18.0.21 }}\n      - {{ name: far, address: 198.19.5.21 }}\n{extra}"
        );
        Config::from_yaml(&yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_server_off_the_interface_subnets_is_named() {
        let subnets = [
            (Ipv4Addr::new(198, 18, 0, 11), 24),
            (Ipv4Addr::new(198, 18, 0, 100), 32),
        ];
        let warnings = off_link_servers(&config(""), &subnets);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("web/far (198.19.5.21) is not on a subnet of eth0"));
        let nat = config("").services[0].clone();
        let mut nat_config = config("");
        if let ServiceKind::Forward(f) = &mut nat_config.services[0].kind {
            f.forwarding = Forwarding::Snat;
        }
        assert!(
            off_link_servers(&nat_config, &subnets).is_empty(),
            "SNAT servers may be anywhere routed: {}",
            nat.name
        );
        // A /32 (a VIP) is no subnet.
        let only_vip = [(Ipv4Addr::new(198, 18, 0, 21), 32)];
        assert_eq!(off_link_servers(&config(""), &only_vip).len(), 2);
    }

    #[test]
    fn several_udp_services_on_a_vip_are_named_once() {
        let udp = "  - name: dns\n    vip: 198.18.0.100\n    port: 53\n    protocol: udp\n    real_servers: [{ name: a, address: 198.18.0.21 }]\n  - name: ntp\n    vip: 198.18.0.100\n    port: 123\n    protocol: udp\n    real_servers: [{ name: a, address: 198.18.0.21 }]\n  - name: syslog\n    vip: 198.18.0.100\n    port: 514\n    protocol: udp\n    real_servers: [{ name: a, address: 198.18.0.21 }]\n";
        assert!(shared_fragment_vips(&config("")).is_empty());
        let warnings = shared_fragment_vips(&config(udp));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("198.18.0.100 has several udp services"));
    }

    #[test]
    fn a_pairs_snat_service_without_a_floating_address_is_named() {
        let snat = |address: &str, cluster: &str| {
            let yaml = format!(
                "node: {{ name: lb1, interface: eth0 }}\n{cluster}services:\n  - name: web\n    vip: 198.18.0.100\n    port: 80\n    forwarding: snat\n{address}    real_servers:\n      - {{ name: a, address: 198.18.0.21 }}\n"
            );
            Config::from_yaml(&yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
        };
        let pair = "cluster: { vrid: 51, priority: 150, role: primary }\n";
        let floating = "    snat_address: 198.18.0.99\n";
        assert!(unfloated_snat(&snat("", "")).is_empty(), "a single node");
        assert!(unfloated_snat(&snat(floating, pair)).is_empty(), "floating");
        let warnings = unfloated_snat(&snat("", pair));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("web (forwarding: snat) names no snat_address"));
    }
}
