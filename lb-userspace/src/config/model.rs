//! The configuration as `lbd` uses it: the types [`Config::from_yaml`] returns,
//! every default filled in, and the names of their values.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;

/// Default path of the control socket (`node.control_socket`).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lbd/lbd.sock";
/// Default address of the metrics endpoint (`node.metrics_listen`).
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9100));
/// Default state directory (`node.state_dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lbd";

/// The whole configuration of one `lbd` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node: its name, interface and local endpoints.
    pub node: Node,
    /// High availability (VRRP and state sync); `None` for a single node.
    pub cluster: Option<Cluster>,
    /// The virtual services, in file order.
    pub services: Vec<Service>,
}

impl Config {
    /// The service named `name`.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The `node:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Name of this load balancer.
    pub name: String,
    /// Interface the XDP program is attached to.
    pub interface: String,
    /// How the XDP program is attached.
    pub xdp_mode: XdpMode,
    /// Path of the control socket used by `lbctl`.
    pub control_socket: PathBuf,
    /// Address of the Prometheus metrics endpoint.
    pub metrics_listen: SocketAddr,
    /// Directory for persistent state.
    pub state_dir: PathBuf,
    /// Further interfaces NAT and SNAT real servers are reached through
    /// (the kernel's routing table picks one); lbd attaches to each.
    pub server_interfaces: Vec<String>,
    /// The web console; `None` serves none.
    pub web: Option<Web>,
}

/// Default idle time after which a console session ends (`node.web.session_timeout_s`).
pub const DEFAULT_SESSION_TIMEOUT_S: u32 = 900;

/// The `node.web:` section: the HTTPS console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Web {
    /// Address the console listens on (HTTPS only).
    pub listen: SocketAddr,
    /// Certificate and key; `None` uses a self-signed certificate generated
    /// once into `state_dir`.
    pub tls: Option<WebTls>,
    /// The console's users (written by `lbctl user`).
    pub users_file: PathBuf,
    /// Seconds without a request after which a session ends.
    pub session_timeout_s: u32,
}

/// `node.web.tls`: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebTls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// In the driver; fails where the driver lacks XDP support.
    Native,
    /// Generic (SKB) mode; works everywhere, slower.
    Generic,
    /// Native where supported, generic otherwise.
    Auto,
}

/// The `cluster:` section: VRRP and state sync between two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// VRRP virtual router id (1..=255).
    pub vrid: u8,
    /// VRRP priority (1..=254).
    pub priority: u8,
    /// VRRP advertisement interval in milliseconds (a multiple of 10).
    pub advert_interval_ms: u32,
    /// Whether a higher-priority node takes over from a running master.
    pub preempt: bool,
    /// Unicast VRRP peer; `None` means multicast to 224.0.0.18.
    pub peer: Option<Ipv4Addr>,
    /// Configured role of this node.
    pub role: Role,
    /// Connection-state sync with the peer, if configured.
    pub sync: Option<Sync>,
}

/// Configured cluster role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The preferred master.
    Primary,
    /// The standby.
    Secondary,
}

impl Role {
    /// The name used in the configuration, logs and `lbctl ha`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

/// The `cluster.sync:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// Local address the sync listener binds.
    pub listen: SocketAddrV4,
    /// The peer's sync address.
    pub peer: SocketAddrV4,
    /// File holding the shared key (see [`check_key_file`](super::check_key_file)).
    pub key_file: PathBuf,
}

/// One virtual service: a VIP, port and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Virtual IP address.
    pub vip: Ipv4Addr,
    /// Virtual port.
    pub port: u16,
    /// Transport protocol (always tcp for a redirect service).
    pub protocol: Protocol,
    /// Forwarding to real servers, or an HTTP redirect.
    pub kind: ServiceKind,
}

/// Transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number: 6 for tcp, 17 for udp.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => lb_common::IPPROTO_TCP,
            Self::Udp => lb_common::IPPROTO_UDP,
        }
    }

    /// The name used in the configuration.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a service does with its traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// Forwarded to real servers by the XDP program.
    Forward(Forward),
    /// Answered by `lbd` itself with an HTTP redirect.
    Redirect(Redirect),
}

/// How a forwarding service's frames reach its real servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forwarding {
    /// Direct routing: only the MAC addresses change.
    Dr,
    /// Destination NAT: the real server's address and port.
    Nat,
    /// NAT, and the source becomes `snat_address` and a port of lbd's.
    Snat,
}

impl Forwarding {
    /// The name used in the configuration.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dr => "dr",
            Self::Nat => "nat",
            Self::Snat => "snat",
        }
    }
}

/// A forwarding service's settings, with defaults merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Direct routing, NAT or SNAT.
    pub forwarding: Forwarding,
    /// SNAT: the source address the real servers see (absent: the address
    /// of the interface towards them).
    pub snat_address: Option<Ipv4Addr>,
    /// Client affinity.
    pub persistence: Persistence,
    /// Health check of the real servers.
    pub health_check: HealthCheck,
    /// Server used when no real server is available.
    pub fallback: Option<Ipv4Addr>,
    /// The real servers, in file order.
    pub real_servers: Vec<RealServer>,
}

/// Client affinity: a client keeps its real server while active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persistence {
    /// Idle time in seconds after which affinity is forgotten.
    pub timeout_s: u32,
    /// Prefix length grouping client addresses (32: per address).
    pub netmask: u8,
    /// The most clients the service may hold in the persistence table
    /// (absent: an even share of what the other services leave).
    pub max_clients: Option<u32>,
}

/// A health check, with defaults merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Type of check.
    pub kind: CheckKind,
    /// Port checked (the service port unless set).
    pub port: u16,
    /// HTTP path (http, https).
    pub path: String,
    /// HTTP `Host` header (http, https).
    pub host: Option<String>,
    /// Accepted HTTP status range, inclusive (http, https).
    pub expect_status: (u16, u16),
    /// Regular expression the response body must match (http, https).
    pub expect_body: Option<String>,
    /// Whether the server certificate is verified (https).
    pub tls_verify: bool,
    /// Program and arguments (exec).
    pub command: Vec<String>,
    /// Time between checks in milliseconds.
    pub interval_ms: u32,
    /// Time a check may take in milliseconds.
    pub timeout_ms: u32,
    /// Consecutive successes that bring a server up.
    pub rise: u32,
    /// Consecutive failures that bring a server down.
    pub fall: u32,
}

/// Type of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// TCP connect.
    Tcp,
    /// HTTP request.
    Http,
    /// HTTP request over TLS.
    Https,
    /// External program; exit status 0 means healthy.
    Exec,
    /// No check: servers are always up.
    None,
}

impl CheckKind {
    /// The name used in the configuration.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Https => "https",
            Self::Exec => "exec",
            Self::None => "none",
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One real server of a forwarding service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealServer {
    /// Name, unique in the service.
    pub name: String,
    /// Address, unique in the service.
    pub address: Ipv4Addr,
    /// Maglev weight; 0 takes no new clients.
    pub weight: u16,
    /// Administrative state.
    pub state: AdminState,
    /// NAT and SNAT: the server's port (absent: the service port).
    pub port: Option<u16>,
}

/// Administrative state of a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes traffic.
    Online,
    /// Keeps its existing clients, takes no new ones.
    Drain,
    /// Takes no traffic at all.
    Halt,
}

impl AdminState {
    /// The name used in the configuration and by `lbctl`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Drain => "drain",
            Self::Halt => "halt",
        }
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown administrative state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}; expected one of: online, drain, halt")]
pub struct ParseAdminStateError(pub String);

impl FromStr for AdminState {
    type Err = ParseAdminStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(Self::Online),
            "drain" => Ok(Self::Drain),
            "halt" => Ok(Self::Halt),
            _ => Err(ParseAdminStateError(s.to_owned())),
        }
    }
}

/// A redirect service's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// HTTP status: 301, 302, 303, 307 or 308.
    pub code: u16,
    /// Scheme of the target URL: `http` or `https`.
    pub scheme: String,
    /// Port of the target URL; `None` for the scheme's default.
    pub port: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_display_and_parse() {
        assert_eq!((Protocol::Tcp.number(), Protocol::Udp.number()), (6, 17));
        assert_eq!(
            (Protocol::Tcp.to_string(), Protocol::Udp.to_string()),
            ("tcp".into(), "udp".into())
        );
        for state in [AdminState::Online, AdminState::Drain, AdminState::Halt] {
            assert_eq!(state.to_string().parse::<AdminState>(), Ok(state));
        }
        assert_eq!(
            "up".parse::<AdminState>(),
            Err(ParseAdminStateError("up".into()))
        );
        assert_eq!(CheckKind::Https.to_string(), "https");
    }
}
