//! Uniqueness: service names and VIP:port:protocol over the whole file, real
//! server names and addresses within one service.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::diag::Ctx;
use super::model::Protocol;
use super::yaml::Pos;

/// Names and endpoints seen so far, for uniqueness checks.
#[derive(Default)]
pub(super) struct Registry {
    names: HashMap<String, Pos>,
    endpoints: HashMap<(Ipv4Addr, u16, Protocol), (String, Pos)>,
    pub(super) reals: usize,
}

impl Registry {
    /// Records service `name`, written at `pos`; a name used before is an
    /// error.
    pub(super) fn service_name(&mut self, ctx: &mut Ctx, name: &str, pos: Pos, path: &str) {
        if let Some(first) = self.names.get(name) {
            ctx.error(
                pos,
                path,
                format!("duplicate service name \"{name}\"; first used at line {}; service names must be unique", first.line),
            );
        } else {
            self.names.insert(name.to_owned(), pos);
        }
    }

    /// Records the VIP:port:protocol of the service `label`, whose VIP is
    /// written at `pos`; one used before is an error.
    pub(super) fn endpoint(
        &mut self,
        ctx: &mut Ctx,
        (vip, port, protocol): (Ipv4Addr, u16, Protocol),
        label: String,
        pos: Pos,
        path: &str,
    ) {
        if let Some((first, first_pos)) = self.endpoints.get(&(vip, port, protocol)) {
            ctx.error(
                pos,
                path,
                format!(
                    "duplicate VIP:port:protocol {vip}:{port}/{protocol}; first used by service \"{first}\" at line {}",
                    first_pos.line
                ),
            );
        } else {
            self.endpoints.insert((vip, port, protocol), (label, pos));
        }
    }
}

/// The real servers of one service seen so far.
#[derive(Default)]
pub(super) struct SeenReals {
    names: HashMap<String, Pos>,
    addresses: HashMap<Ipv4Addr, Pos>,
}

impl SeenReals {
    /// Records real server `name`, written at `pos`; a name used before in
    /// the service is an error.
    pub(super) fn name(&mut self, ctx: &mut Ctx, name: &str, pos: Pos, path: &str) {
        if let Some(first) = self.names.get(name) {
            ctx.error(
                pos,
                path,
                format!(
                    "duplicate real server name \"{name}\" in this service; first used at line {}",
                    first.line
                ),
            );
        } else {
            self.names.insert(name.to_owned(), pos);
        }
    }

    /// Records real server `address`, written at `pos`; the service's VIP or
    /// an address used before in the service is an error.
    pub(super) fn address(
        &mut self,
        ctx: &mut Ctx,
        address: Ipv4Addr,
        vip: Option<Ipv4Addr>,
        pos: Pos,
        path: &str,
    ) {
        if Some(address) == vip {
            ctx.error(
                pos,
                path,
                format!("{address} is the service's VIP; a real server needs its own address"),
            );
        } else if let Some(first) = self.addresses.get(&address) {
            ctx.error(
                pos,
                path,
                format!(
                    "duplicate real server address {address} in this service; first used at line {}",
                    first.line
                ),
            );
        } else {
            self.addresses.insert(address, pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::{Redirect, ServiceKind};

    #[test]
    fn duplicate_service_name() {
        let second = WEB.replace("port: 443", "port: 80");
        let yaml = with_services(&format!("{WEB}{second}"));
        assert_only(
            &yaml,
            loc(&yaml, "web", 1),
            "services[1].name: duplicate service name \"web\"; first used at line 5",
        );
    }

    #[test]
    fn duplicate_vip_port_protocol() {
        let second = WEB
            .replace("web", "web2")
            .replace("198.18.0.21", "198.18.0.22");
        let yaml = with_services(&format!("{WEB}{second}"));
        assert_only(
            &yaml,
            loc(&yaml, "198.18.0.100", 1),
            "duplicate VIP:port:protocol 198.18.0.100:443/tcp; first used by service \"web\" at line 6",
        );
    }

    #[test]
    fn redirect_counts_as_tcp_on_the_same_vip_and_port() {
        let yaml = with_services(&format!(
            "{WEB}  - name: redir\n    vip: 198.18.0.100\n    port: 443\n    redirect: {{ code: 308 }}\n"
        ));
        assert_only(
            &yaml,
            loc(&yaml, "198.18.0.100", 1),
            "duplicate VIP:port:protocol 198.18.0.100:443/tcp",
        );
    }

    #[test]
    fn same_vip_and_port_with_other_protocols_is_fine() {
        let udp = WEB
            .replace("web", "web-udp")
            .replace("port: 443", "port: 443\n    protocol: udp");
        let redirect = "  - { name: redir, vip: 198.18.0.100, port: 80, redirect: ~ }\n";
        let c = parse(&with_services(&format!("{WEB}{udp}{redirect}")));
        assert_eq!(c.services.len(), 3);
        assert_eq!(c.services[1].protocol, Protocol::Udp);
        assert_eq!(
            c.services[2].kind,
            ServiceKind::Redirect(Redirect {
                code: 301,
                scheme: "https".into(),
                port: None
            })
        );
    }

    #[test]
    fn duplicate_real_servers() {
        let yaml = with_services(&format!(
            "{WEB}      - name: r1\n        address: 198.18.0.22\n"
        ));
        assert_only(
            &yaml,
            loc(&yaml, "r1", 1),
            "services[0].real_servers[1].name: duplicate real server name \"r1\" in this service; first used at line 9",
        );
        let yaml = with_services(&format!(
            "{WEB}      - name: r2\n        address: 198.18.0.21\n"
        ));
        assert_only(
            &yaml,
            loc(&yaml, "198.18.0.21", 1),
            "duplicate real server address 198.18.0.21 in this service; first used at line 10",
        );
        let yaml = with_services(&WEB.replace("198.18.0.21", "198.18.0.100"));
        assert_only(
            &yaml,
            loc(&yaml, "198.18.0.100", 1),
            "198.18.0.100 is the service's VIP",
        );
        let other = WEB.replace("web", "web2").replace("443", "80");
        parse(&with_services(&format!("{WEB}{other}")));
    }
}
