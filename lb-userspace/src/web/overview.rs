//! What the console shows, decided without I/O: the problems list (what a
//! person must see first), and the sentence a maintenance confirmation
//! shows.

use serde::Serialize;

use crate::control::protocol::{HaRole, HaState, HealthState, ServiceType, StatusReport};

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Clients are, or may soon be, affected.
    Critical,
    /// Worth a look.
    Warning,
}

/// One line of the problems list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// How bad.
    pub severity: Severity,
    /// What, in words.
    pub text: String,
}

/// The problems in `status`, critical first. `flood_per_s` is the rate of
/// the data path's `flood_*` decisions over the last sample.
#[must_use]
pub fn problems(status: &StatusReport, flood_per_s: f64) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut critical = |text: String| {
        out.push(Problem {
            severity: Severity::Critical,
            text,
        });
    };
    if status.xdp_mode == "detached" {
        critical(format!(
            "the XDP program is not attached to {}: nothing is forwarded",
            status.interface
        ));
    }
    let ha = &status.ha;
    if ha.role != HaRole::Standalone {
        match ha.state {
            HaState::Fault => critical("this node is in fault state: it cannot take over".into()),
            HaState::Backup if ha.last_advert_age_ms.is_none() => {
                critical("no advertisement heard from the master".into());
            }
            _ => {}
        }
        if ha.sync.configured && !ha.sync.connected {
            let why = ha
                .sync
                .last_error
                .as_deref()
                .map_or_else(String::new, |e| format!(": {e}"));
            critical(format!(
                "the peer is lost: the sync channel is not connected{why}"
            ));
        }
    }
    for service in &status.services {
        if service.kind != ServiceType::Forward {
            continue;
        }
        let mut taking = 0;
        for r in &service.real_servers {
            if r.health == HealthState::Down {
                let last = r.last_check.as_ref().map_or_else(String::new, |c| {
                    format!(": {} ({:.1} ms)", c.detail, c.latency_ms)
                });
                critical(format!("{}/{} is down{last}", service.name, r.name));
            } else if !r.resolved {
                critical(format!(
                    "{}/{} does not answer ARP (unresolved): it gets no clients",
                    service.name, r.name
                ));
            } else if r.admin_state == crate::config::AdminState::Online && r.weight > 0 {
                taking += 1;
            }
        }
        if taking == 0 && !service.real_servers.is_empty() {
            critical(format!(
                "{} has no real server taking new clients",
                service.name
            ));
        }
    }
    if flood_per_s > 0.0 {
        out.push(Problem {
            severity: Severity::Warning,
            text: format!(
                "flood in progress: {flood_per_s:.0} new sources/s are served without being remembered (flood_* counters)"
            ),
        });
    }
    out.sort_by_key(|p| p.severity != Severity::Critical);
    out
}

/// A maintenance action from the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Keep its clients, take no new ones.
    Drain,
    /// Take no traffic at all.
    Halt,
    /// Back in service.
    Online,
    /// A new weight.
    Weight,
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drain" => Ok(Self::Drain),
            "halt" => Ok(Self::Halt),
            "online" => Ok(Self::Online),
            "weight" => Ok(Self::Weight),
            other => Err(format!(
                "{other:?} is not an action; use drain, halt, online or weight"
            )),
        }
    }
}

/// What a confirmation needs to know about the server.
#[derive(Clone, Debug)]
pub struct Held {
    /// Its name.
    pub server: String,
    /// Live persistence entries on it.
    pub active_clients: u64,
    /// NAT and SNAT: its live connections.
    pub active_connections: Option<u64>,
    /// Its weight now.
    pub weight: u16,
}

/// The confirmation's sentence: what the action does to the server's
/// clients, and the share of new clients that would move
/// (`moved_share`, as `lbctl plan` computes it).
#[must_use]
pub fn summary(action: Action, held: &Held, new_weight: Option<u16>, moved_share: f64) -> String {
    let name = &held.server;
    let clients = plural(held.active_clients, "active client");
    let conns = held.active_connections.map_or_else(String::new, |n| {
        format!(" and {}", plural(n, "open connection"))
    });
    let moved = format!("{:.1} %", moved_share * 100.0);
    match action {
        Action::Drain => format!(
            "{name} holds {clients}{conns}. Draining it keeps them on {name} and sends it no new \
             client: {moved} of new clients go to other servers."
        ),
        Action::Halt => format!(
            "{name} holds {clients}{conns}. Halting it sends them to other servers at once \
             (their sessions on {name} are lost) and it takes no traffic: {moved} of new \
             clients go to other servers."
        ),
        Action::Online => format!(
            "Returning {name} to service: it takes new clients again, {moved} of new clients \
             move to it. Clients placed elsewhere stay where they are."
        ),
        Action::Weight => {
            let to = new_weight.unwrap_or(held.weight);
            format!(
                "Changing the weight of {name} from {} to {to}: {moved} of new clients go to a \
                 different server. Clients already placed stay where they are.",
                held.weight
            )
        }
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdminState;
    use crate::control::protocol::{CheckStatus, HaStatus, RealStatus, ServiceStatus};

    fn real(name: &str, health: HealthState, admin: AdminState) -> RealStatus {
        RealStatus {
            name: name.into(),
            address: [198, 18, 1, 11].into(),
            health,
            last_check: Some(CheckStatus {
                passed: health == HealthState::Up,
                detail: "connect refused".into(),
                latency_ms: 0.4,
            }),
            admin_state: admin,
            weight: 100,
            active_clients: 0,
            active_connections: None,
            packets: 0,
            bytes: 0,
            new_clients: 0,
            mac: None,
            resolved: true,
        }
    }

    fn status(reals: Vec<RealStatus>) -> StatusReport {
        StatusReport {
            node: "lb1".into(),
            ha: HaStatus::standalone(),
            interface: "eth0".into(),
            xdp_mode: "native".into(),
            vips: vec![],
            affinity_entries: 0,
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: [198, 18, 0, 100].into(),
                port: 443,
                protocol: "tcp".into(),
                kind: ServiceType::Forward,
                forwarding: None,
                packets: 0,
                bytes: 0,
                new_clients: None,
                real_servers: reals,
                fallback: None,
                redirect: None,
                remembered_clients: None,
                max_clients: None,
                requests: None,
            }],
            dataplane: std::collections::BTreeMap::new(),
        }
    }

    #[test]
    fn a_healthy_node_has_no_problems_and_each_fault_is_named_critical_first() {
        let healthy = status(vec![
            real("rs1", HealthState::Up, AdminState::Online),
            real("rs2", HealthState::Up, AdminState::Drain),
        ]);
        assert_eq!(problems(&healthy, 0.0), vec![]);

        let mut sick = status(vec![
            real("rs1", HealthState::Down, AdminState::Online),
            real("rs2", HealthState::Up, AdminState::Halt),
        ]);
        sick.ha.role = HaRole::Primary;
        sick.ha.state = HaState::Master;
        sick.ha.sync.configured = true;
        let texts: Vec<(Severity, String)> = problems(&sick, 12.0)
            .into_iter()
            .map(|p| (p.severity, p.text))
            .collect();
        assert_eq!(
            texts,
            vec![
                (
                    Severity::Critical,
                    "the peer is lost: the sync channel is not connected".into()
                ),
                (
                    Severity::Critical,
                    "web/rs1 is down: connect refused (0.4 ms)".into()
                ),
                (
                    Severity::Critical,
                    "web has no real server taking new clients".into()
                ),
                (
                    Severity::Warning,
                    "flood in progress: 12 new sources/s are served without being remembered (flood_* counters)".into()
                ),
            ]
        );
    }

    #[test]
    fn a_confirmation_says_what_happens_to_the_servers_clients() {
        let held = Held {
            server: "rs1".into(),
            active_clients: 12,
            active_connections: None,
            weight: 100,
        };
        assert_eq!(
            summary(Action::Drain, &held, None, 1.0 / 3.0),
            "rs1 holds 12 active clients. Draining it keeps them on rs1 and sends it no new \
             client: 33.3 % of new clients go to other servers."
        );
        let one = Held {
            active_clients: 1,
            active_connections: Some(1),
            ..held.clone()
        };
        assert!(summary(Action::Halt, &one, None, 0.5)
            .starts_with("rs1 holds 1 active client and 1 open connection. Halting"));
        assert!(summary(Action::Weight, &held, Some(50), 0.25).contains("from 100 to 50: 25.0 %"));
        assert_eq!("halt".parse(), Ok(Action::Halt));
        assert!("reboot".parse::<Action>().is_err());
    }
}
