//! A namespace for running the XDP program's NAT and SNAT path on single
//! frames (`BPF_PROG_TEST_RUN`), whose routing and neighbour tables the
//! program's FIB lookups read: clients on `c0` (198.18.0.0/24), real
//! servers on `v0` (198.18.1.0/24), every neighbour entry permanent and
//! every MAC address fixed, so each output frame is known byte for byte.
//! `BPF_PROG_TEST_RUN` runs the program as if on `lo`, so every translated
//! frame leaves by a redirect through the devmap.

use std::net::Ipv4Addr;

use crate::lab::{run, LabError};

/// `c0`, the clients' side (lbd's interface).
pub const C0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// `v0`, the servers' side.
pub const V0_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x01];
/// The client on `c0`.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
/// Its MAC address.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
/// `v0`'s address (a SNAT address the namespace holds).
pub const V0_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

/// The MAC address of the server at `address` on `v0`.
#[must_use]
pub fn server_mac(address: Ipv4Addr) -> [u8; 6] {
    let o = address.octets();
    [0x02, 0, 0, 0, o[2], o[3]]
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The namespace, removed when dropped.
#[derive(Debug)]
pub struct NatNetns(String);

impl NatNetns {
    /// Builds `lbnat-TAG-PID` with [`CLIENT`] and `servers` (on `v0`, MACs
    /// from [`server_mac`]) as permanent neighbours and forwarding on.
    ///
    /// # Errors
    /// The command that failed (what was built is removed).
    pub fn new(tag: &str, servers: &[Ipv4Addr]) -> Result<Self, LabError> {
        let name = format!("lbnat-{tag}-{}", std::process::id());
        let _ = run(&["ip", "netns", "del", &name]);
        run(&["ip", "netns", "add", &name])?;
        let ns = Self(name);
        let n = ns.0.as_str();
        let mut steps: Vec<Vec<String>> =
            vec![strings(&["ip", "-n", n, "link", "set", "lo", "up"])];
        for (dev, peer, m, address) in [
            ("c0", "c1", C0_MAC, "198.18.0.10/24"),
            ("v0", "v1", V0_MAC, "198.18.1.1/24"),
        ] {
            let m = mac(m);
            steps.push(strings(&[
                "ip", "-n", n, "link", "add", dev, "address", &m, "type", "veth", "peer", "name",
                peer,
            ]));
            steps.push(strings(&[
                "ip", "-n", n, "addr", "add", address, "dev", dev,
            ]));
            steps.push(strings(&["ip", "-n", n, "link", "set", dev, "up"]));
            steps.push(strings(&["ip", "-n", n, "link", "set", peer, "up"]));
        }
        let neighbours = std::iter::once((CLIENT, "c0", CLIENT_MAC))
            .chain(servers.iter().map(|a| (*a, "v0", server_mac(*a))));
        for (address, dev, m) in neighbours {
            steps.push(strings(&[
                "ip",
                "-n",
                n,
                "neigh",
                "add",
                &address.to_string(),
                "lladdr",
                &mac(m),
                "dev",
                dev,
                "nud",
                "permanent",
            ]));
        }
        for key in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv4.conf.lo.forwarding=1",
        ] {
            steps.push(strings(&["ip", "netns", "exec", n, "sysctl", "-qw", key]));
        }
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            run(&args)?;
        }
        Ok(ns)
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The interface index of `dev` in the namespace.
    ///
    /// # Errors
    /// When `ip` fails or prints no index.
    pub fn ifindex(&self, dev: &str) -> Result<u32, LabError> {
        let out = run(&["ip", "-n", &self.0, "-o", "link", "show", dev])?;
        out.split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .ok_or_else(|| LabError::Invalid(format!("no ifindex for {dev}: {out}")))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

impl Drop for NatNetns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}
