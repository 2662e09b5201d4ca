//! The control protocol's messages: one typed request and one typed reply
//! per command, shared by `lbd` (which builds them), `lbctl` (which prints
//! them) and the web console.
//!
//! The JSON is the contract's (shared/CONTRACT.md, "JSON shapes"): fields may
//! be added, never renamed or dropped. Each reply travels as
//! `{"ok":true,"result":{...}}` or `{"ok":false,"error":"..."}`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{config::AdminState, web::users::Role};

/// A command for `lbd`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Node, services, real servers and counters: a [`StatusReport`].
    Status,
    /// Set a real server's administrative state: an [`AdminReport`].
    SetState {
        /// Service name.
        service: String,
        /// Real-server name.
        server: String,
        /// The new state.
        state: AdminState,
    },
    /// Set a real server's weight: an [`AdminReport`].
    Weight {
        /// Service name.
        service: String,
        /// Real-server name.
        server: String,
        /// The new weight.
        weight: u16,
    },
    /// Validate and apply a configuration: an [`ApplyReport`].
    Apply {
        /// The file's name, for error positions.
        file: String,
        /// The file's contents.
        text: String,
    },
    /// Which real server a client goes to, and why: an [`AffinityReport`].
    Affinity {
        /// Service name.
        service: String,
        /// Client address.
        client: Ipv4Addr,
    },
    /// A NAT or SNAT service's tracked connections: a [`ConnectionsReport`].
    Connections {
        /// Service name.
        service: String,
        /// Only this real server's, if given.
        server: Option<String>,
    },
    /// The share of clients a configuration would move: a [`PlanReport`].
    Plan {
        /// The file's name, for error positions.
        file: String,
        /// The file's contents.
        text: String,
    },
    /// High-availability state: an [`HaStatus`].
    Ha,
    /// Add a web console user, or set a user's role and password: a
    /// [`UserReport`]. The password travels hashed.
    UserAdd {
        /// Sign-in name.
        name: String,
        /// `admin` or `viewer`.
        role: Role,
        /// The password's argon2id hash.
        hash: String,
    },
    /// Remove a web console user: a [`UserReport`].
    UserDel {
        /// Sign-in name.
        name: String,
    },
}

/// A reply as it travels: a result of type `T`, or an error for the operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply<T> {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result (when `ok`).
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    /// What went wrong (when not `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Reply<T> {
    /// A successful reply.
    pub fn ok(result: T) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failed reply.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(message.into()),
        }
    }

    /// The result, or the error's text.
    ///
    /// # Errors
    /// When lbd refused the request (or sent neither a result nor an error).
    pub fn into_result(self) -> Result<T, String> {
        match (self.ok, self.result) {
            (true, Some(result)) => Ok(result),
            _ => Err(self
                .error
                .unwrap_or_else(|| "lbd reported an unspecified error".into())),
        }
    }
}

/// The result of any request, as lbd sends it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// `status`.
    Status(Box<StatusReport>),
    /// `set_state`, `weight`.
    Admin(AdminReport),
    /// `apply`.
    Apply(ApplyReport),
    /// `affinity`.
    Affinity(AffinityReport),
    /// `plan`.
    Plan(PlanReport),
    /// `ha`.
    Ha(Box<HaStatus>),
    /// `connections`.
    Connections(ConnectionsReport),
    /// `user_add`, `user_del`.
    User(UserReport),
}

/// The answer to `lbctl user add|del`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserReport {
    /// Sign-in name.
    pub name: String,
    /// `added`, `updated` or `removed`.
    pub change: String,
    /// The role now (none once removed).
    pub role: Option<Role>,
    /// The users file written.
    pub users_file: String,
}

impl UserReport {
    /// `name` added as `role` (`before`: the role it had, if it existed).
    #[must_use]
    pub fn added(name: &str, before: Option<Role>, role: Role, file: &std::path::Path) -> Self {
        Self {
            name: name.to_owned(),
            change: if before.is_some() { "updated" } else { "added" }.into(),
            role: Some(role),
            users_file: file.display().to_string(),
        }
    }

    /// `name` removed.
    #[must_use]
    pub fn removed(name: &str, file: &std::path::Path) -> Self {
        Self {
            name: name.to_owned(),
            change: "removed".into(),
            role: None,
            users_file: file.display().to_string(),
        }
    }
}

/// Marks the reply type of each request, so a client asks for the right one.
pub trait Response: DeserializeOwned {}
impl Response for StatusReport {}
impl Response for AdminReport {}
impl Response for ApplyReport {}
impl Response for AffinityReport {}
impl Response for PlanReport {}
impl Response for HaStatus {}
impl Response for ConnectionsReport {}
impl Response for UserReport {}

/// `lbctl connections`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsReport {
    /// The tracked connections, oldest activity last.
    pub connections: Vec<ConnectionEntry>,
}

/// One tracked connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionEntry {
    /// The client's address and port, `IP:PORT`.
    pub client: String,
    /// The real server's name.
    pub server: String,
    /// `syn`, `established`, `fin`, `closed` or `udp`.
    pub state: String,
    /// Seconds since the client's last frame.
    pub age_s: f64,
}

/// `lbctl status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `node.name`.
    pub node: String,
    /// The HA pair (or `standalone`).
    pub ha: HaStatus,
    /// `node.interface`.
    pub interface: String,
    /// How the XDP program is attached (`native`, `generic`, `detached`).
    pub xdp_mode: String,
    /// The VIPs this node holds now.
    pub vips: Vec<Ipv4Addr>,
    /// Live persistence entries, all services.
    pub affinity_entries: u64,
    /// Every service, in the configuration's order.
    pub services: Vec<ServiceStatus>,
    /// The data path's pass, drop and forward reasons, by name.
    pub dataplane: BTreeMap<String, u64>,
}

/// How a service is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// Forwarded by the XDP program.
    Forward,
    /// Answered by lbd with an HTTP redirect.
    Redirect,
}

/// One service in [`StatusReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Its VIP.
    pub vip: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Forward or redirect.
    #[serde(rename = "type")]
    pub kind: ServiceType,
    /// How a forward service reaches its servers: `dr`, `nat` or `snat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<String>,
    /// Packets forwarded (0 for a redirect service).
    pub packets: u64,
    /// Bytes forwarded (0 for a redirect service).
    pub bytes: u64,
    /// New clients placed by the ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_clients: Option<u64>,
    /// The real servers (empty for a redirect service).
    pub real_servers: Vec<RealStatus>,
    /// The fallback server, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackStatus>,
    /// A redirect service's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectStatus>,
    /// Entries it holds in the persistence table (live or not yet removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remembered_clients: Option<u64>,
    /// The most it may hold; new clients beyond are served from the ring
    /// without being remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<u64>,
    /// Requests a redirect service answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

/// A real server's health as the data path uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Takes clients (subject to its admin state).
    Up,
    /// Takes none; its clients moved.
    Down,
}

impl HealthState {
    /// The word `lbctl` and the metrics show.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// One real server in [`ServiceStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RealStatus {
    /// Name in the service.
    pub name: String,
    /// Address.
    pub address: Ipv4Addr,
    /// Up or down.
    pub health: HealthState,
    /// The last health check's outcome.
    #[serde(default)]
    pub last_check: Option<CheckStatus>,
    /// Online, drain or halt.
    pub admin_state: AdminState,
    /// Weight in use.
    pub weight: u16,
    /// Live persistence entries on this server.
    pub active_clients: u64,
    /// NAT and SNAT: its live tracked connections (counted every second;
    /// every 5 s while a count costs more than 20 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_connections: Option<u64>,
    /// Packets forwarded to it.
    pub packets: u64,
    /// Bytes forwarded to it.
    pub bytes: u64,
    /// New clients the ring gave it.
    pub new_clients: u64,
    /// Its MAC address, once resolved.
    #[serde(default)]
    pub mac: Option<String>,
    /// Whether its MAC address is known; an unresolved server gets no
    /// client and keeps none.
    #[serde(default = "resolved_by_default")]
    pub resolved: bool,
}

/// The last health check of a real server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// Whether it passed.
    pub passed: bool,
    /// What the probe saw.
    pub detail: String,
    /// How long it took.
    pub latency_ms: f64,
}

/// A service's fallback server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FallbackStatus {
    /// Its address.
    pub address: Ipv4Addr,
    /// Packets forwarded to it.
    pub packets: u64,
    /// Bytes forwarded to it.
    pub bytes: u64,
}

/// A redirect service's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RedirectStatus {
    /// HTTP status code.
    pub code: u16,
    /// `http` or `https`.
    pub scheme: String,
    /// Port in the `Location`, if any.
    pub port: Option<u16>,
}

/// The answer to `drain`, `halt`, `online` and `weight`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdminReport {
    /// Service name.
    pub service: String,
    /// Real-server name.
    pub server: String,
    /// The state set (for `drain`, `halt`, `online`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state: Option<AdminState>,
    /// The weight set (for `weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
}

/// The answer to `apply`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Always true in a successful reply.
    pub applied: bool,
    /// What the operator should know (empty when nothing).
    pub note: String,
}

/// Where a client's real server came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AffinitySource {
    /// A live persistence entry.
    Table,
    /// The Maglev ring (no live entry).
    Hash,
}

/// `lbctl affinity`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffinityReport {
    /// Service name.
    pub service: String,
    /// The client's address.
    pub client: Ipv4Addr,
    /// The real server's name, if any server would take it.
    pub server: Option<String>,
    /// Table or hash.
    pub source: AffinitySource,
    /// The entry's age (table only).
    pub age_s: Option<f64>,
}

/// `lbctl plan`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    /// One line per service of the planned file.
    pub services: Vec<PlanService>,
}

/// One service of a [`PlanReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanService {
    /// Service name.
    pub name: String,
    /// Share of client addresses whose server would change, 0..=1.
    pub moved_share: f64,
    /// The planned file no longer has it (as a forwarding service).
    #[serde(default)]
    pub removed: bool,
}

/// This node's place in the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaRole {
    /// The pair's configured truth.
    Primary,
    /// The standby.
    Secondary,
    /// No `cluster:` section.
    Standalone,
}

/// The node's HA state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaState {
    /// A single node (no pair).
    Standalone,
    /// Holds the VIPs.
    Master,
    /// Watches the master.
    Backup,
    /// Not running VRRP (starting or stopping).
    Init,
    /// VRRP cannot run.
    Fault,
}

/// `lbctl ha`, and the head of `lbctl status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HaStatus {
    /// Primary, secondary or standalone.
    pub role: HaRole,
    /// Master, backup, ...
    pub state: HaState,
    /// The unicast VRRP peer, if configured.
    pub peer: Option<Ipv4Addr>,
    /// Running VRRP priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// Configured VRRP priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_priority: Option<u8>,
    /// Whether the priority is held at 1 until the peer's sessions arrive.
    #[serde(default)]
    pub preempt_held: bool,
    /// The master's advertisement interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advert_interval_ms: Option<u64>,
    /// Age of the last accepted advertisement.
    pub last_advert_age_ms: Option<u64>,
    /// Its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_advert_from: Option<Ipv4Addr>,
    /// Its priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_advert_priority: Option<u8>,
    /// VRRP packets dropped.
    #[serde(default)]
    pub vrrp_drops: u64,
    /// The sync channel.
    pub sync: SyncStatus,
}

impl HaStatus {
    /// A node without a pair.
    #[must_use]
    pub fn standalone() -> Self {
        Self {
            role: HaRole::Standalone,
            state: HaState::Standalone,
            peer: None,
            priority: None,
            configured_priority: None,
            preempt_held: false,
            advert_interval_ms: None,
            last_advert_age_ms: None,
            last_advert_from: None,
            last_advert_priority: None,
            vrrp_drops: 0,
            sync: SyncStatus::default(),
        }
    }
}

/// The sync channel in [`HaStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Whether `cluster.sync` is configured.
    #[serde(default)]
    pub configured: bool,
    /// The peer's sync endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The peer's node name, once paired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_node: Option<String>,
    /// Whether a session is paired now.
    pub connected: bool,
    /// Messages sent.
    pub sent: u64,
    /// Messages received.
    pub received: u64,
    /// Latest heartbeat round trip.
    pub lag_ms: Option<u64>,
    /// Why the last connection failed or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// On the primary: the version of the configuration last sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<u64>,
    /// On the primary: the last version the secondary answered for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_applied_version: Option<u64>,
    /// On the primary: why the secondary could not apply that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_apply_error: Option<String>,
}

/// [`RealStatus::resolved`] of a status written before it existed.
fn resolved_by_default() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::SetState {
            service: "web".into(),
            server: "rs1".into(),
            state: AdminState::Drain,
        };
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"command":"set_state","service":"web","server":"rs1","state":"drain"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).ok(), Some(r));
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
        let bad_state = r#"{"command":"set_state","service":"web","server":"rs1","state":"off"}"#;
        assert!(serde_json::from_str::<Request>(bad_state).is_err());
    }

    #[test]
    fn replies_carry_a_result_or_an_error() {
        let ok = serde_json::to_string(&Reply::ok(Answer::Plan(PlanReport { services: vec![] })))
            .unwrap_or_default();
        assert_eq!(ok, r#"{"ok":true,"result":{"services":[]}}"#);
        let err = serde_json::to_string(&Reply::<Answer>::error("no")).unwrap_or_default();
        assert_eq!(err, r#"{"ok":false,"error":"no"}"#);
        let back: Reply<PlanReport> = serde_json::from_str(&err).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.into_result(), Err("no".to_owned()));
    }

    #[test]
    fn status_json_has_the_contract_names() {
        let status = StatusReport {
            node: "lb1".into(),
            ha: HaStatus::standalone(),
            interface: "eth0".into(),
            xdp_mode: "native".into(),
            vips: vec![Ipv4Addr::new(198, 18, 0, 100)],
            affinity_entries: 1,
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: Ipv4Addr::new(198, 18, 0, 100),
                port: 443,
                protocol: "tcp".into(),
                kind: ServiceType::Forward,
                forwarding: Some("dr".into()),
                packets: 2,
                bytes: 3,
                new_clients: Some(1),
                real_servers: vec![RealStatus {
                    name: "rs1".into(),
                    address: Ipv4Addr::new(198, 18, 0, 21),
                    health: HealthState::Up,
                    last_check: None,
                    admin_state: AdminState::Drain,
                    weight: 100,
                    active_clients: 1,
                    active_connections: None,
                    packets: 2,
                    bytes: 3,
                    new_clients: 1,
                    mac: None,
                    resolved: false,
                }],
                fallback: None,
                redirect: None,
                requests: None,
                remembered_clients: Some(1),
                max_clients: Some(1_250_000),
            }],
            dataplane: BTreeMap::new(),
        };
        let v = serde_json::to_value(&status).unwrap_or_default();
        assert_eq!(v["node"], "lb1");
        assert_eq!(v["ha"]["state"], "standalone");
        assert_eq!(v["ha"]["role"], "standalone");
        let s = &v["services"][0];
        for key in ["name", "vip", "port", "protocol", "packets", "bytes"] {
            assert!(!s[key].is_null(), "service field {key}");
        }
        let r = &s["real_servers"][0];
        assert_eq!(r["health"], "up");
        assert_eq!(r["admin_state"], "drain");
        assert_eq!(r["address"], "198.18.0.21");
        assert_eq!(r["resolved"], false);
        assert_eq!(s["remembered_clients"], 1);
        for key in ["name", "weight", "active_clients", "packets", "bytes"] {
            assert!(!r[key].is_null(), "real-server field {key}");
        }
        let back: StatusReport = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, status);
    }
}
