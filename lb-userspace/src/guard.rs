//! The kernel-path guard for forwarding services.
//!
//! XDP forwards every frame of a forwarding service before the kernel sees
//! it. If lbd dies, its XDP link goes with it while the VIP stays on the
//! interface, and the kernel would answer the clients' packets with TCP
//! resets (nothing listens on those ports here), cutting every connection
//! that the peer's takeover, or a quick restart, would otherwise have kept.
//! A small nftables table drops those packets in the kernel instead: the
//! client retransmits, and its connection survives.
//!
//! A second table (family `arp`) keeps the kernel from answering ARP for
//! the VIPs at all: while lbd runs, its XDP program answers ARP for the VIPs
//! this node holds (master, or a single node), and when lbd dies nobody here
//! answers any more, so a dead master, whose kernel still holds the VIPs,
//! never draws clients back from the new master (contract: "A node whose lbd
//! died never answers ARP for the VIPs").
//!
//! The tables are written with `nft -f -`, nftables' own tool: one atomic
//! transaction per change, and nothing to keep in step with the kernel's
//! netlink ABI by hand. Without `nft` lbd still runs, with a warning.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use crate::config::Protocol;

/// Errors writing the guard.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// `nft` is not installed.
    #[error("nft not found: install nftables (apt-get install nftables) so that a crashed lbd does not reset clients' connections")]
    NoNft,
    /// `nft` refused the table.
    #[error("nft refused the guard table: {0}")]
    Refused(String),
    /// Running `nft` failed.
    #[error("running nft: {0}")]
    Io(#[from] std::io::Error),
}

/// The guard table of one interface.
pub struct Guard {
    table: String,
}

impl Guard {
    /// The guard of interface `interface` (table `ip lbd_<interface>`).
    #[must_use]
    pub fn new(interface: &str) -> Self {
        let name: String = interface
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Self {
            table: format!("lbd_{name}"),
        }
    }

    /// The table's name (for logs and tests).
    #[must_use]
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The ruleset that drops, in the kernel's input path, what XDP forwards
    /// (`services`), and every ARP request for one of `vips`.
    #[must_use]
    pub fn ruleset(&self, services: &[(Ipv4Addr, u16, Protocol)], vips: &[Ipv4Addr]) -> String {
        let mut rules = String::new();
        for (vip, port, protocol) in services {
            let _ = writeln!(rules, "    ip daddr {vip} {protocol} dport {port} drop");
        }
        let mut arp_rules = String::new();
        for vip in vips {
            let _ = writeln!(
                arp_rules,
                "    arp operation request arp daddr ip {vip} drop"
            );
        }
        // "add" then "delete" empties a table whether or not it existed,
        // all in the same transaction as the new contents.
        format!(
            "add table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n  chain input {{\n    type filter hook input priority filter - 10; policy accept;\n{rules}  }}\n}}\n\
             add table arp {t}\ndelete table arp {t}\ntable arp {t} {{\n  chain input {{\n    type filter hook input priority filter; policy accept;\n{arp_rules}  }}\n}}\n",
            t = self.table
        )
    }

    /// Makes the guard cover exactly `services` (forwarding VIP:port:protocol)
    /// and the ARP of `vips` (every VIP of the configuration).
    ///
    /// # Errors
    /// When nft is missing or refuses the tables.
    pub fn set(
        &self,
        services: &[(Ipv4Addr, u16, Protocol)],
        vips: &[Ipv4Addr],
    ) -> Result<(), GuardError> {
        nft(&self.ruleset(services, vips))
    }

    /// Removes the guard (at a clean stop).
    ///
    /// # Errors
    /// When nft is missing or fails.
    pub fn remove(&self) -> Result<(), GuardError> {
        nft(&format!(
            "add table ip {t}\ndelete table ip {t}\nadd table arp {t}\ndelete table arp {t}\n",
            t = self.table
        ))
    }
}

fn nft(script: &str) -> Result<(), GuardError> {
    let mut child = match Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(GuardError::NoNft),
        Err(e) => return Err(GuardError::Io(e)),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GuardError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_drops_exactly_the_forwarded_services() {
        let guard = Guard::new("eth0.10");
        assert_eq!(guard.table(), "lbd_eth0_10");
        let text = guard.ruleset(
            &[
                (Ipv4Addr::new(198, 18, 0, 100), 443, Protocol::Tcp),
                (Ipv4Addr::new(198, 18, 0, 100), 53, Protocol::Udp),
            ],
            &[
                Ipv4Addr::new(198, 18, 0, 100),
                Ipv4Addr::new(198, 18, 0, 101),
            ],
        );
        assert!(text.starts_with("add table ip lbd_eth0_10\ndelete table ip lbd_eth0_10\n"));
        assert!(text.contains("ip daddr 198.18.0.100 tcp dport 443 drop\n"));
        assert!(text.contains("ip daddr 198.18.0.100 udp dport 53 drop\n"));
        assert!(text.contains("add table arp lbd_eth0_10\ndelete table arp lbd_eth0_10\n"));
        assert!(text.contains("arp operation request arp daddr ip 198.18.0.101 drop\n"));
        assert_eq!(text.matches(" drop").count(), 4);
    }
}
