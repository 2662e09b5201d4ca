//! The `lbd` configuration file: YAML parsing and validation.
//!
//! The file is read with yaml-rust2's event parser into a small tree that
//! keeps the line and column of every key and value, and [`Config`] is then
//! extracted from that tree by hand. serde with `serde_yaml` would be shorter,
//! but it stops at the first error and has no position for a semantic error
//! such as a duplicate service or an out-of-range weight. Here every error
//! found in one pass is reported as `FILE:LINE:COLUMN: message`, pointing at
//! the offending key or value, and nothing is returned unless the whole file
//! is valid.
//!
//! The YAML accepted:
//! - one document, whose top level is a mapping;
//! - plain scalars follow the YAML 1.2 core schema: empty, `~` and `null` are
//!   null, `true` and `false` are booleans, decimal digits are integers and
//!   anything else that looks like a number is a number; a quoted scalar is
//!   always a string, so `port: "443"` is an error;
//! - anchors, aliases and tags are rejected (`defaults:` covers sharing);
//! - an optional key written without a value (`key:` or `key: ~`) counts as
//!   absent, and a mapping-valued key without a value as an empty mapping.
//!
//! Keys that do not apply to a health check's type (a `path` on a tcp check,
//! say) are accepted and ignored, so that `defaults` can hold them for all.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use lb_common::{MAX_REALS, MAX_REALS_PER_SERVICE, MAX_SERVICES};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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
    /// File holding the shared key (see [`check_key_file`]).
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

/// A forwarding service's settings, with defaults merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
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

/// One configuration error, at a position in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.file, *.line, *.column, .message))]
pub struct ConfigError {
    /// File name as given by the caller.
    pub file: String,
    /// 1-based line; 0 when the error concerns the whole file.
    pub line: usize,
    /// 1-based column; 0 when the error concerns the whole file.
    pub column: usize,
    /// What is wrong and what to do.
    pub message: String,
}

fn render(file: &str, line: usize, column: usize, message: &str) -> String {
    if line == 0 {
        format!("{file}: {message}")
    } else {
        format!("{file}:{line}:{column}: {message}")
    }
}

/// All errors found in a configuration, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn join_lines(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Parses and validates a configuration; `file` is used in error messages.
    ///
    /// # Errors
    ///
    /// Every error found, each with its position, when the text is not a
    /// valid configuration.
    pub fn from_yaml(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let mut ctx = Ctx::default();
        let root = match parse_yaml(text, &mut ctx) {
            Ok(root) => root,
            Err(error) => return Err(finish(file, vec![error])),
        };
        let config = extract(&mut ctx, root.as_ref());
        match config {
            Some(config) if ctx.errors.is_empty() => Ok(config),
            None if ctx.errors.is_empty() => Err(finish(
                file,
                vec![(
                    Pos::START,
                    "internal error: the configuration was rejected without a reason".to_owned(),
                )],
            )),
            _ => Err(finish(file, ctx.errors)),
        }
    }

    /// Reads, parses and validates the configuration file at `path`.
    ///
    /// # Errors
    ///
    /// An error without position when the file cannot be read, otherwise as
    /// for [`Config::from_yaml`].
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_yaml(&text, &file),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file,
                line: 0,
                column: 0,
                message: format!("cannot read the configuration: {e}"),
            }])),
        }
    }

    /// The service named `name`.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Reads the cluster sync key from `path`: the file's bytes without trailing
/// whitespace.
///
/// # Errors
///
/// A message saying what to do when the file cannot be read, is readable or
/// writable by group or others, or holds fewer than 32 bytes.
pub fn check_key_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;

    let shown = path.display();
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("{shown}: cannot open the cluster key: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{shown}: cannot read the cluster key's metadata: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: the cluster key must be a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown}: mode {mode:04o} lets other users read the cluster key; run: chmod 600 {shown}"
        ));
    }
    let mut key = Vec::new();
    file.read_to_end(&mut key)
        .map_err(|e| format!("{shown}: cannot read the cluster key: {e}"))?;
    while key.last().is_some_and(u8::is_ascii_whitespace) {
        key.pop();
    }
    if key.len() < 32 {
        return Err(format!(
            "{shown}: the cluster key has {} bytes; it needs at least 32, e.g. run: \
             head -c 32 /dev/urandom | base64 > {shown}; chmod 600 {shown}",
            key.len()
        ));
    }
    Ok(key)
}

// ---------------------------------------------------------------------------
// The marked YAML tree.

/// A position in the file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    line: usize,
    column: usize,
}

impl Pos {
    const START: Self = Self { line: 1, column: 1 };

    /// yaml-rust2 markers have 1-based lines and 0-based columns.
    fn of(mark: Marker) -> Self {
        Self {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

/// A YAML node with its position.
#[derive(Debug)]
enum Yaml {
    Scalar {
        text: String,
        plain: bool,
        pos: Pos,
    },
    Seq {
        items: Vec<Yaml>,
        pos: Pos,
    },
    Map {
        entries: Vec<Entry>,
        pos: Pos,
    },
    /// Stands in for an alias, which was already reported.
    Invalid(Pos),
}

/// A key and its value in a mapping.
#[derive(Debug)]
struct Entry {
    key: Key,
    value: Yaml,
}

/// A mapping key; `name` is `None` when the key was not a scalar (reported).
#[derive(Debug)]
struct Key {
    name: Option<String>,
    pos: Pos,
}

/// A scalar typed by the YAML 1.2 core schema.
enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(&'a str),
    Float(&'a str),
    Str(&'a str),
}

impl Yaml {
    fn pos(&self) -> Pos {
        match self {
            Self::Scalar { pos, .. }
            | Self::Seq { pos, .. }
            | Self::Map { pos, .. }
            | Self::Invalid(pos) => *pos,
        }
    }

    fn scalar(&self) -> Option<Scalar<'_>> {
        match self {
            Self::Scalar { text, plain, .. } => Some(classify(text, *plain)),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.scalar(), Some(Scalar::Null))
    }
}

fn classify(text: &str, plain: bool) -> Scalar<'_> {
    if !plain {
        return Scalar::Str(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
        "true" | "True" | "TRUE" => Scalar::Bool(true),
        "false" | "False" | "FALSE" => Scalar::Bool(false),
        _ if is_int(text) => Scalar::Int(text),
        _ if is_float(text) => Scalar::Float(text),
        _ => Scalar::Str(text),
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_int(text: &str) -> bool {
    is_digits(text.strip_prefix(['-', '+']).unwrap_or(text))
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`, `.inf`, `.nan`.
fn is_float(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", fraction)) => is_digits(fraction),
        Some((whole, fraction)) => is_digits(whole) && (fraction.is_empty() || is_digits(fraction)),
        None => is_digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(|e| is_digits(e.strip_prefix(['-', '+']).unwrap_or(e)))
}

/// A collection being built.
enum Frame {
    Seq {
        items: Vec<Yaml>,
        pos: Pos,
    },
    Map {
        entries: Vec<Entry>,
        pos: Pos,
        key: Option<Key>,
    },
}

/// Builds the tree from parser events, noting unsupported YAML features.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Yaml>,
    documents: usize,
    errors: Vec<(Pos, String)>,
}

impl Builder {
    fn properties(&mut self, pos: Pos, anchor: usize, tag: Option<&Tag>) {
        if anchor != 0 {
            self.errors.push((
                pos,
                "YAML anchors (&name) are not supported; write the value out in full".to_owned(),
            ));
        }
        if let Some(tag) = tag {
            self.errors.push((
                pos,
                format!(
                    "YAML tags ({}{}) are not supported; remove the tag (quote a value to make it a string)",
                    tag.handle, tag.suffix
                ),
            ));
        }
    }

    fn push(&mut self, node: Yaml) {
        match self.stack.last_mut() {
            None => {
                if self.documents <= 1 && self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, pos, key }) => {
                if let Some(k) = key.take() {
                    entries.push(Entry {
                        key: k,
                        value: node,
                    });
                } else {
                    let key_pos = node.pos();
                    // A block mapping is marked at its first key's colon:
                    // point at the first key instead.
                    if entries.is_empty() && key_pos < *pos {
                        *pos = key_pos;
                    }
                    let name = match node {
                        Yaml::Scalar { text, .. } => Some(text),
                        Yaml::Invalid(_) => None,
                        Yaml::Seq { .. } | Yaml::Map { .. } => {
                            self.errors.push((
                                key_pos,
                                "a key must be a plain word, not a list or a mapping".to_owned(),
                            ));
                            None
                        }
                    };
                    *key = Some(Key { name, pos: key_pos });
                }
            }
        }
    }

    fn close(&mut self) {
        match self.stack.pop() {
            Some(Frame::Seq { items, pos }) => self.push(Yaml::Seq { items, pos }),
            Some(Frame::Map { entries, pos, .. }) => self.push(Yaml::Map { entries, pos }),
            None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = Pos::of(mark);
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.errors.push((
                        pos,
                        "a second YAML document; the configuration must be a single document"
                            .to_owned(),
                    ));
                }
            }
            Event::Alias(_) => {
                self.errors.push((
                    pos,
                    "YAML aliases (*name) are not supported; write the value out in full"
                        .to_owned(),
                ));
                self.push(Yaml::Invalid(pos));
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.properties(pos, anchor, tag.as_ref());
                self.push(Yaml::Scalar {
                    text,
                    plain: style == TScalarStyle::Plain,
                    pos,
                });
            }
            Event::SequenceStart(anchor, tag) => {
                self.properties(pos, anchor, tag.as_ref());
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    pos,
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.properties(pos, anchor, tag.as_ref());
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    pos,
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Parses `text` into a tree; a syntax error is returned alone, other
/// problems are added to `ctx`.
fn parse_yaml(text: &str, ctx: &mut Ctx) -> Result<Option<Yaml>, (Pos, String)> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err((
            Pos::of(*e.marker()),
            format!("YAML syntax error: {}", e.info()),
        ));
    }
    ctx.errors.append(&mut builder.errors);
    Ok(builder.root)
}

// ---------------------------------------------------------------------------
// Extraction helpers.

/// Errors found so far.
#[derive(Default)]
struct Ctx {
    errors: Vec<(Pos, String)>,
}

impl Ctx {
    /// Records `message` about `path` (a dotted key path; empty at top level).
    fn error(&mut self, pos: Pos, path: &str, message: impl fmt::Display) {
        let text = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        self.errors.push((pos, text));
    }
}

/// Sorts errors by position, drops repeats and names the file.
fn finish(file: &str, mut errors: Vec<(Pos, String)>) -> ConfigErrors {
    errors.sort_by_key(|(pos, _)| *pos);
    errors.dedup();
    ConfigErrors(
        errors
            .into_iter()
            .map(|(pos, message)| ConfigError {
                file: file.to_owned(),
                line: pos.line,
                column: pos.column,
                message,
            })
            .collect(),
    )
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Optimal string alignment distance (edits, with adjacent transpositions).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0_usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate `word` was most likely meant to be.
fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    if word.len() >= 3 {
        if let Some(c) = candidates.iter().find(|c| c.starts_with(word)) {
            return Some(c);
        }
    }
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, _)| *d <= 2 && *d < word.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn one_of(what: &str, word: &str, candidates: &[&str]) -> String {
    let hint = suggest(word, candidates)
        .map(|s| format!("did you mean \"{s}\"? "))
        .unwrap_or_default();
    format!(
        "unknown {what} \"{word}\"; {hint}expected one of: {}",
        candidates.join(", ")
    )
}

fn describe(node: &Yaml) -> String {
    match node {
        Yaml::Seq { .. } => "a list".to_owned(),
        Yaml::Map { .. } => "a mapping".to_owned(),
        Yaml::Invalid(_) => "an alias".to_owned(),
        Yaml::Scalar { text, plain, .. } => match classify(text, *plain) {
            Scalar::Null => "nothing (null)".to_owned(),
            Scalar::Bool(b) => format!("boolean {b}"),
            Scalar::Int(t) => format!("integer {t}"),
            Scalar::Float(t) => format!("number {t}"),
            Scalar::Str(s) if s.chars().count() > 40 => {
                format!("string \"{}...\"", s.chars().take(40).collect::<String>())
            }
            Scalar::Str(s) => format!("string {s:?}"),
        },
    }
}

fn wrong_type(ctx: &mut Ctx, path: &str, node: &Yaml, expected: &str) {
    if !matches!(node, Yaml::Invalid(_)) {
        ctx.error(
            node.pos(),
            path,
            format!("expected {expected}, found {}", describe(node)),
        );
    }
}

/// The keys of one mapping, checked for unknown and duplicate keys.
struct Fields<'a> {
    path: String,
    /// Where a missing key is reported.
    at: Pos,
    entries: Vec<&'a Entry>,
}

impl<'a> Fields<'a> {
    /// Opens `node` as a mapping with keys from `allowed`; null is an empty
    /// mapping. `None` (reported) when it is not a mapping.
    fn open(ctx: &mut Ctx, node: &'a Yaml, path: &str, at: Pos, allowed: &[&str]) -> Option<Self> {
        let all = match node {
            Yaml::Map { entries, .. } => entries.as_slice(),
            _ if node.is_null() => &[],
            _ => {
                wrong_type(ctx, path, node, "a mapping (key: value)");
                return None;
            }
        };
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        let mut entries = Vec::new();
        for entry in all {
            let Some(name) = entry.key.name.as_deref() else {
                continue;
            };
            if let Some(first) = seen.get(name) {
                ctx.error(
                    entry.key.pos,
                    path,
                    format!(
                        "duplicate key \"{name}\" (first set at line {}); remove one of them",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(name, entry.key.pos);
            if allowed.contains(&name) {
                entries.push(entry);
            } else {
                ctx.error(entry.key.pos, path, one_of("key", name, allowed));
            }
        }
        Some(Self {
            path: path.to_owned(),
            at,
            entries,
        })
    }

    fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.entries
            .iter()
            .copied()
            .find(|e| e.key.name.as_deref() == Some(key))
    }

    /// The value of `key`; `None` when absent or null.
    fn value(&self, key: &str) -> Option<&'a Yaml> {
        self.entry(key).map(|e| &e.value).filter(|v| !v.is_null())
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Reports `key` as missing.
    fn missing(&self, ctx: &mut Ctx, key: &str, hint: &str) {
        ctx.error(
            self.at,
            &self.path,
            format!("missing required key \"{key}\"{hint}"),
        );
    }

    /// An optional value: `None` when absent, null or invalid (reported).
    fn opt<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        get: impl FnOnce(&mut Ctx, &str, &'a Yaml) -> Option<T>,
    ) -> Option<T> {
        let node = self.value(key)?;
        get(ctx, &self.path(key), node)
    }

    /// A value with a default: `None` only when invalid (reported).
    fn or<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        default: T,
        get: impl FnOnce(&mut Ctx, &str, &'a Yaml) -> Option<T>,
    ) -> Option<T> {
        match self.value(key) {
            None => Some(default),
            Some(node) => get(ctx, &self.path(key), node),
        }
    }

    /// A required value: `None` when missing or invalid (reported).
    fn req<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        get: impl FnOnce(&mut Ctx, &str, &'a Yaml) -> Option<T>,
    ) -> Option<T> {
        match self.entry(key) {
            None => {
                self.missing(ctx, key, "");
                None
            }
            Some(e) if e.value.is_null() => {
                ctx.error(
                    e.key.pos,
                    &self.path(key),
                    "has no value; write one after the colon",
                );
                None
            }
            Some(e) => get(ctx, &self.path(key), &e.value),
        }
    }

    /// An optional value with where it was written.
    fn set<T>(
        &self,
        ctx: &mut Ctx,
        key: &str,
        get: impl FnOnce(&mut Ctx, &str, &'a Yaml) -> Option<T>,
    ) -> Option<Set<T>> {
        let entry = self.entry(key).filter(|e| !e.value.is_null())?;
        let path = self.path(key);
        let value = get(ctx, &path, &entry.value)?;
        Some(Set {
            value,
            pos: entry.value.pos(),
            path,
        })
    }
}

/// A value and where it was written.
struct Set<T> {
    value: T,
    pos: Pos,
    path: String,
}

type Get<T> = Box<dyn Fn(&mut Ctx, &str, &Yaml) -> Option<T>>;

fn text<'a>(ctx: &mut Ctx, path: &str, node: &'a Yaml, expected: &str) -> Option<&'a str> {
    if let Some(Scalar::Str(s)) = node.scalar() {
        Some(s)
    } else {
        wrong_type(ctx, path, node, expected);
        None
    }
}

/// Any string; a number or boolean gets a hint to quote it.
fn string(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<String> {
    match node.scalar() {
        Some(Scalar::Str(s)) => Some(s.to_owned()),
        Some(Scalar::Int(_) | Scalar::Float(_) | Scalar::Bool(_)) => {
            ctx.error(
                node.pos(),
                path,
                format!(
                    "expected a string, found {}; quote it to make it a string",
                    describe(node)
                ),
            );
            None
        }
        _ => {
            wrong_type(ctx, path, node, "a string");
            None
        }
    }
}

fn non_empty(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<String> {
    let s = string(ctx, path, node)?;
    if s.trim().is_empty() {
        ctx.error(node.pos(), path, "must not be empty");
        return None;
    }
    Some(s)
}

/// A service or real server name: 1..=64 of `[A-Za-z0-9._-]`.
fn valid_name(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<String> {
    let s = string(ctx, path, node)?;
    let valid = (1..=64).contains(&s.chars().count())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        ctx.error(
            node.pos(),
            path,
            format!("{s:?} is not a valid name; use 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"),
        );
        return None;
    }
    Some(s)
}

fn integer(ctx: &mut Ctx, path: &str, node: &Yaml, lo: i64, hi: i64) -> Option<i64> {
    match node.scalar() {
        Some(Scalar::Int(t)) => match t.parse::<i64>() {
            Ok(v) if (lo..=hi).contains(&v) => Some(v),
            _ => {
                ctx.error(
                    node.pos(),
                    path,
                    format!("{t} is out of range; expected {lo}..={hi}"),
                );
                None
            }
        },
        Some(Scalar::Str(s)) if is_int(s.trim()) => {
            ctx.error(
                node.pos(),
                path,
                format!("expected an integer, found string {s:?}; remove the quotes"),
            );
            None
        }
        _ => {
            wrong_type(ctx, path, node, "an integer");
            None
        }
    }
}

/// An integer in `lo..=hi`, converted to `T`.
fn ranged<T: TryFrom<i64> + 'static>(lo: i64, hi: i64) -> Get<T> {
    Box::new(move |ctx, path, node| {
        integer(ctx, path, node, lo, hi).and_then(|v| T::try_from(v).ok())
    })
}

fn boolean(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<bool> {
    if let Some(Scalar::Bool(b)) = node.scalar() {
        Some(b)
    } else {
        wrong_type(ctx, path, node, "true or false");
        None
    }
}

/// One of the names in `table`.
fn choice<T: Copy + 'static>(table: &'static [(&'static str, T)]) -> Get<T> {
    Box::new(move |ctx, path, node| {
        let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
        let Some(Scalar::Str(s)) = node.scalar() else {
            wrong_type(ctx, path, node, &format!("one of: {}", names.join(", ")));
            return None;
        };
        let found = table.iter().find(|(n, _)| *n == s).map(|(_, v)| *v);
        if found.is_none() {
            ctx.error(node.pos(), path, one_of("value", s, &names));
        }
        found
    })
}

/// A unicast IPv4 address; `what` names it in plural for the IPv6 message.
fn ipv4(what: &'static str) -> Get<Ipv4Addr> {
    Box::new(move |ctx, path, node| {
        let s = text(ctx, path, node, "an IPv4 address")?;
        let addr = match s.parse::<Ipv4Addr>() {
            Ok(addr) => addr,
            Err(_) if s.parse::<Ipv6Addr>().is_ok() => {
                ctx.error(
                    node.pos(),
                    path,
                    format!("IPv6 {what} are not supported yet; use an IPv4 address"),
                );
                return None;
            }
            Err(_) => {
                ctx.error(
                    node.pos(),
                    path,
                    format!("{s:?} is not an IPv4 address; expected e.g. 198.18.0.10"),
                );
                return None;
            }
        };
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
            ctx.error(
                node.pos(),
                path,
                format!("{addr} is not a unicast address; use a host address"),
            );
            return None;
        }
        Some(addr)
    })
}

fn absolute_path(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<PathBuf> {
    let s = text(ctx, path, node, "an absolute path")?;
    if !Path::new(s).is_absolute() {
        ctx.error(
            node.pos(),
            path,
            format!("{s:?} is not an absolute path; write it from the root, e.g. /etc/lbd/..."),
        );
        return None;
    }
    Some(PathBuf::from(s))
}

fn socket_address(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<SocketAddr> {
    let s = text(ctx, path, node, "an address IP:PORT")?;
    match s.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Some(addr),
        Ok(_) => {
            ctx.error(
                node.pos(),
                path,
                "port 0 is out of range; expected 1..=65535",
            );
            None
        }
        Err(_) => {
            ctx.error(
                node.pos(),
                path,
                format!("{s:?} is not an address IP:PORT; expected e.g. 127.0.0.1:9100"),
            );
            None
        }
    }
}

fn socket_address_v4(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<SocketAddrV4> {
    match socket_address(ctx, path, node)? {
        SocketAddr::V4(addr) => Some(addr),
        SocketAddr::V6(_) => {
            ctx.error(
                node.pos(),
                path,
                "IPv6 is not supported here; expected IPv4:PORT, e.g. 198.18.0.11:7946",
            );
            None
        }
    }
}

fn list<'a>(ctx: &mut Ctx, path: &str, node: &'a Yaml, expected: &str) -> Option<&'a [Yaml]> {
    if let Yaml::Seq { items, .. } = node {
        Some(items)
    } else {
        wrong_type(ctx, path, node, expected);
        None
    }
}

// ---------------------------------------------------------------------------
// The configuration sections.

const ROOT_KEYS: &[&str] = &["node", "cluster", "defaults", "services"];
const NODE_KEYS: &[&str] = &[
    "name",
    "interface",
    "xdp_mode",
    "control_socket",
    "metrics_listen",
    "state_dir",
];
const CLUSTER_KEYS: &[&str] = &[
    "vrid",
    "priority",
    "advert_interval_ms",
    "preempt",
    "peer",
    "role",
    "sync",
];
const SYNC_KEYS: &[&str] = &["listen", "peer", "key_file"];
const DEFAULTS_KEYS: &[&str] = &["persistence", "health_check"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "vip",
    "port",
    "protocol",
    "forwarding",
    "persistence",
    "health_check",
    "fallback",
    "real_servers",
    "redirect",
];
const PERSISTENCE_KEYS: &[&str] = &["timeout_s", "netmask"];
const CHECK_KEYS: &[&str] = &[
    "type",
    "port",
    "path",
    "host",
    "expect_status",
    "expect_body",
    "tls_verify",
    "command",
    "interval_ms",
    "timeout_ms",
    "rise",
    "fall",
];
const FALLBACK_KEYS: &[&str] = &["address"];
const REAL_KEYS: &[&str] = &["name", "address", "weight", "state"];
const REDIRECT_KEYS: &[&str] = &["code", "scheme", "port"];
/// Keys a redirect service must not have.
const FORWARD_ONLY_KEYS: &[&str] = &[
    "real_servers",
    "persistence",
    "health_check",
    "fallback",
    "forwarding",
];

const XDP_MODES: &[(&str, XdpMode)] = &[
    ("native", XdpMode::Native),
    ("generic", XdpMode::Generic),
    ("auto", XdpMode::Auto),
];
const ROLES: &[(&str, Role)] = &[("primary", Role::Primary), ("secondary", Role::Secondary)];
const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
const CHECK_KINDS: &[(&str, CheckKind)] = &[
    ("tcp", CheckKind::Tcp),
    ("http", CheckKind::Http),
    ("https", CheckKind::Https),
    ("exec", CheckKind::Exec),
    ("none", CheckKind::None),
];
const ADMIN_STATES: &[(&str, AdminState)] = &[
    ("online", AdminState::Online),
    ("drain", AdminState::Drain),
    ("halt", AdminState::Halt),
];
const SCHEMES: &[(&str, &str)] = &[("http", "http"), ("https", "https")];
const REDIRECT_CODES: &[u16] = &[301, 302, 303, 307, 308];

fn extract(ctx: &mut Ctx, root: Option<&Yaml>) -> Option<Config> {
    let Some(root) = root.filter(|r| !r.is_null()) else {
        ctx.error(
            Pos::START,
            "",
            "empty configuration; expected a mapping with at least node: and services:",
        );
        return None;
    };
    if !matches!(root, Yaml::Map { .. }) {
        wrong_type(
            ctx,
            "",
            root,
            "a mapping with node:, cluster:, defaults: and services: at the top level",
        );
        return None;
    }
    let f = Fields::open(ctx, root, "", root.pos(), ROOT_KEYS)?;
    let node = if let Some(e) = f.entry("node") {
        node(ctx, e)
    } else {
        f.missing(ctx, "node", "");
        None
    };
    let cluster = f.entry("cluster").and_then(|e| cluster(ctx, e));
    let defaults = f
        .entry("defaults")
        .map(|e| defaults(ctx, e))
        .unwrap_or_default();
    let services = if let Some(e) = f.entry("services") {
        services(ctx, e, &defaults)
    } else {
        f.missing(ctx, "services", " (write services: [] for none)");
        Vec::new()
    };
    Some(Config {
        node: node?,
        cluster,
        services,
    })
}

fn node(ctx: &mut Ctx, entry: &Entry) -> Option<Node> {
    let f = Fields::open(ctx, &entry.value, "node", entry.key.pos, NODE_KEYS)?;
    let name = f.req(ctx, "name", non_empty);
    let interface = f.req(ctx, "interface", |ctx, path, node| {
        let s = string(ctx, path, node)?;
        if s.is_empty() || s.len() > 15 || s.contains('/') || s.chars().any(char::is_whitespace) {
            ctx.error(
                node.pos(),
                path,
                format!("{s:?} is not an interface name; expected 1 to 15 characters without '/' or spaces"),
            );
            return None;
        }
        Some(s)
    });
    let xdp_mode = f.or(ctx, "xdp_mode", XdpMode::Auto, choice(XDP_MODES));
    let control_socket = f.or(
        ctx,
        "control_socket",
        PathBuf::from(DEFAULT_CONTROL_SOCKET),
        absolute_path,
    );
    let metrics_listen = f.or(
        ctx,
        "metrics_listen",
        DEFAULT_METRICS_LISTEN,
        socket_address,
    );
    let state_dir = f.or(
        ctx,
        "state_dir",
        PathBuf::from(DEFAULT_STATE_DIR),
        absolute_path,
    );
    Some(Node {
        name: name?,
        interface: interface?,
        xdp_mode: xdp_mode?,
        control_socket: control_socket?,
        metrics_listen: metrics_listen?,
        state_dir: state_dir?,
    })
}

fn cluster(ctx: &mut Ctx, entry: &Entry) -> Option<Cluster> {
    let f = Fields::open(ctx, &entry.value, "cluster", entry.key.pos, CLUSTER_KEYS)?;
    let vrid = f.req(ctx, "vrid", ranged::<u8>(1, 255));
    let priority = f.req(ctx, "priority", ranged::<u8>(1, 254));
    let advert_interval_ms = f.or(ctx, "advert_interval_ms", 1000, |ctx, path, node| {
        let v = ranged::<u32>(10, 40_950)(ctx, path, node)?;
        if v % 10 != 0 {
            ctx.error(
                node.pos(),
                path,
                format!("{v} is not a multiple of 10; VRRP counts the interval in centiseconds"),
            );
            return None;
        }
        Some(v)
    });
    let preempt = f.or(ctx, "preempt", true, boolean);
    let peer = f.opt(ctx, "peer", ipv4("VRRP peers"));
    let role = f.req(ctx, "role", choice(ROLES));
    let sync = f.entry("sync").and_then(|e| sync(ctx, e));
    Some(Cluster {
        vrid: vrid?,
        priority: priority?,
        advert_interval_ms: advert_interval_ms?,
        preempt: preempt?,
        peer,
        role: role?,
        sync,
    })
}

fn sync(ctx: &mut Ctx, entry: &Entry) -> Option<Sync> {
    let f = Fields::open(ctx, &entry.value, "cluster.sync", entry.key.pos, SYNC_KEYS)?;
    let listen = f.req(ctx, "listen", socket_address_v4);
    let peer = f.req(ctx, "peer", socket_address_v4);
    let key_file = f.req(ctx, "key_file", absolute_path);
    Some(Sync {
        listen: listen?,
        peer: peer?,
        key_file: key_file?,
    })
}

/// The `defaults:` section, or one service's own settings, before merging.
#[derive(Default)]
struct Defaults {
    persistence: PersistenceSpec,
    health_check: CheckSpec,
}

fn defaults(ctx: &mut Ctx, entry: &Entry) -> Defaults {
    let Some(f) = Fields::open(ctx, &entry.value, "defaults", entry.key.pos, DEFAULTS_KEYS) else {
        return Defaults::default();
    };
    Defaults {
        persistence: f
            .entry("persistence")
            .map(|e| persistence(ctx, e, &f.path("persistence")))
            .unwrap_or_default(),
        health_check: f
            .entry("health_check")
            .map(|e| check(ctx, e, &f.path("health_check")))
            .unwrap_or_default(),
    }
}

#[derive(Default, Clone, Copy)]
struct PersistenceSpec {
    timeout_s: Option<u32>,
    netmask: Option<u8>,
}

fn persistence(ctx: &mut Ctx, entry: &Entry, path: &str) -> PersistenceSpec {
    let Some(f) = Fields::open(ctx, &entry.value, path, entry.key.pos, PERSISTENCE_KEYS) else {
        return PersistenceSpec::default();
    };
    PersistenceSpec {
        timeout_s: f.opt(ctx, "timeout_s", ranged(1, 604_800)),
        netmask: f.opt(ctx, "netmask", ranged(8, 32)),
    }
}

/// A health check as written in one place.
#[derive(Default)]
struct CheckSpec {
    /// The `health_check` key and its path, if written.
    at: Option<(Pos, String)>,
    kind: Option<Set<CheckKind>>,
    port: Option<Set<u16>>,
    path: Option<Set<String>>,
    host: Option<Set<String>>,
    expect_status: Option<Set<(u16, u16)>>,
    expect_body: Option<Set<String>>,
    tls_verify: Option<Set<bool>>,
    command: Option<Set<Vec<String>>>,
    /// Whether `command` was written, valid or not.
    command_written: bool,
    interval_ms: Option<Set<u32>>,
    timeout_ms: Option<Set<u32>>,
    rise: Option<Set<u32>>,
    fall: Option<Set<u32>>,
}

fn check(ctx: &mut Ctx, entry: &Entry, path: &str) -> CheckSpec {
    let mut spec = CheckSpec {
        at: Some((entry.key.pos, path.to_owned())),
        ..CheckSpec::default()
    };
    let Some(f) = Fields::open(ctx, &entry.value, path, entry.key.pos, CHECK_KEYS) else {
        return spec;
    };
    spec.kind = f.set(ctx, "type", choice(CHECK_KINDS));
    spec.port = f.set(ctx, "port", ranged(1, 65_535));
    spec.path = f.set(ctx, "path", |ctx, path, node| {
        let s = string(ctx, path, node)?;
        if !s.starts_with('/') || s.chars().any(char::is_whitespace) {
            ctx.error(
                node.pos(),
                path,
                format!("{s:?} is not a URL path; it must start with '/' and hold no spaces"),
            );
            return None;
        }
        Some(s)
    });
    spec.host = f.set(ctx, "host", |ctx, path, node| {
        let s = non_empty(ctx, path, node)?;
        if s.chars().any(char::is_whitespace) {
            ctx.error(
                node.pos(),
                path,
                format!("{s:?} is not a host name; remove the spaces"),
            );
            return None;
        }
        Some(s)
    });
    spec.expect_status = f.set(ctx, "expect_status", status_range);
    spec.expect_body = f.set(ctx, "expect_body", |ctx, path, node| {
        let s = string(ctx, path, node)?;
        if let Err(e) = regex::Regex::new(&s) {
            ctx.error(
                node.pos(),
                path,
                format!("invalid regular expression: {}", regex_message(&e)),
            );
            return None;
        }
        Some(s)
    });
    spec.tls_verify = f.set(ctx, "tls_verify", boolean);
    spec.command = f.set(ctx, "command", command);
    spec.command_written = f.entry("command").is_some();
    spec.interval_ms = f.set(ctx, "interval_ms", ranged(100, 3_600_000));
    spec.timeout_ms = f.set(ctx, "timeout_ms", ranged(10, 3_600_000));
    spec.rise = f.set(ctx, "rise", ranged(1, 100));
    spec.fall = f.set(ctx, "fall", ranged(1, 100));
    spec
}

/// The one-line core of a regex error (its `Display` spans several lines).
fn regex_message(error: &regex::Error) -> String {
    let full = error.to_string();
    full.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(
            || full.lines().map(str::trim).collect::<Vec<_>>().join(" "),
            str::to_owned,
        )
}

/// `"NNN"`, `"NNN-MMM"` or an integer, with 100 <= NNN <= MMM <= 599.
fn status_range(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<(u16, u16)> {
    const HELP: &str =
        "expected \"NNN\" or \"NNN-MMM\" with 100 <= NNN <= MMM <= 599, e.g. \"200-399\"";
    let parse = |s: &str| {
        if s.len() == 3 && is_digits(s) {
            s.parse::<u16>().ok()
        } else {
            None
        }
    };
    let (text, range) = match node.scalar() {
        Some(Scalar::Int(t)) => (t, parse(t).map(|v| (v, v))),
        Some(Scalar::Str(s)) => {
            let range = match s.split_once('-') {
                Some((lo, hi)) => parse(lo.trim()).zip(parse(hi.trim())),
                None => parse(s.trim()).map(|v| (v, v)),
            };
            (s, range)
        }
        _ => {
            wrong_type(ctx, path, node, "a status range such as \"200-399\"");
            return None;
        }
    };
    match range {
        Some((lo, hi)) if (100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi => {
            Some((lo, hi))
        }
        _ => {
            ctx.error(
                node.pos(),
                path,
                format!("{text:?} is not a valid status range; {HELP}"),
            );
            None
        }
    }
}

fn command(ctx: &mut Ctx, path: &str, node: &Yaml) -> Option<Vec<String>> {
    let items = list(
        ctx,
        path,
        node,
        "a list of strings, e.g. [\"/usr/local/bin/check\", \"--fast\"]",
    )?;
    if items.is_empty() {
        ctx.error(
            node.pos(),
            path,
            "must not be empty; give the program and its arguments",
        );
        return None;
    }
    let mut words = Vec::new();
    for (i, item) in items.iter().enumerate() {
        words.push(non_empty(ctx, &format!("{path}[{i}]"), item));
    }
    words.into_iter().collect()
}

fn merge_persistence(own: PersistenceSpec, inherited: PersistenceSpec) -> Persistence {
    Persistence {
        timeout_s: own.timeout_s.or(inherited.timeout_s).unwrap_or(300),
        netmask: own.netmask.or(inherited.netmask).unwrap_or(32),
    }
}

/// Merges a service's health check over the defaults, field by field.
fn merge_check(
    ctx: &mut Ctx,
    own: &CheckSpec,
    inherited: &CheckSpec,
    service_port: u16,
) -> HealthCheck {
    /// The service's setting of a field, else the default's.
    macro_rules! pick {
        ($field:ident) => {
            own.$field.as_ref().or(inherited.$field.as_ref())
        };
    }
    macro_rules! value {
        ($field:ident) => {
            pick!($field).map(|s| s.value.clone())
        };
    }
    let kind = value!(kind).unwrap_or(CheckKind::Tcp);
    let command = value!(command);
    let command_written = own.command_written || inherited.command_written;
    if kind == CheckKind::Exec && !command_written {
        if let Some((pos, path)) = own.at.as_ref().or(inherited.at.as_ref()) {
            ctx.error(
                *pos,
                path,
                "type exec needs a command; add e.g. command: [\"/usr/local/bin/check\", \"--fast\"]",
            );
        }
    }
    let interval = pick!(interval_ms);
    let timeout = pick!(timeout_ms);
    let interval_ms = interval.map_or(2000, |s| s.value);
    let timeout_ms = timeout.map_or(1000, |s| s.value);
    if timeout_ms > interval_ms {
        match (timeout, interval) {
            (Some(t), _) => ctx.error(
                t.pos,
                &t.path,
                format!("{timeout_ms} is out of range; expected 10..={interval_ms} (at most interval_ms)"),
            ),
            (None, Some(i)) => ctx.error(
                i.pos,
                &i.path,
                format!("{interval_ms} is less than the default timeout_ms {timeout_ms}; set timeout_ms to at most {interval_ms}"),
            ),
            (None, None) => {}
        }
    }
    HealthCheck {
        kind,
        port: value!(port).unwrap_or(service_port),
        path: value!(path).unwrap_or_else(|| "/".to_owned()),
        host: value!(host),
        expect_status: value!(expect_status).unwrap_or((200, 399)),
        expect_body: value!(expect_body),
        tls_verify: value!(tls_verify).unwrap_or(false),
        command: command.unwrap_or_default(),
        interval_ms,
        timeout_ms,
        rise: value!(rise).unwrap_or(2),
        fall: value!(fall).unwrap_or(3),
    }
}

/// Names and endpoints seen so far, for uniqueness checks.
#[derive(Default)]
struct Registry {
    names: HashMap<String, Pos>,
    endpoints: HashMap<(Ipv4Addr, u16, Protocol), (String, Pos)>,
    reals: usize,
}

fn services(ctx: &mut Ctx, entry: &Entry, defaults: &Defaults) -> Vec<Service> {
    let Some(items) = list(
        ctx,
        "services",
        &entry.value,
        "a list of services (write services: [] for none)",
    ) else {
        return Vec::new();
    };
    if u32::try_from(items.len()).map_or(true, |n| n > MAX_SERVICES) {
        ctx.error(
            entry.key.pos,
            "services",
            format!(
                "{} services; at most {MAX_SERVICES} are supported",
                items.len()
            ),
        );
    }
    let mut registry = Registry::default();
    let mut services = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(s) = service(
            ctx,
            item,
            &format!("services[{i}]"),
            defaults,
            &mut registry,
        ) {
            services.push(s);
        }
    }
    // Slot 0 of the data path's real-server array means "none".
    let capacity = MAX_REALS - 1;
    if u32::try_from(registry.reals).map_or(true, |n| n > capacity) {
        ctx.error(
            entry.key.pos,
            "services",
            format!(
                "{} real servers over all services; at most {capacity} are supported (fallback servers count too)",
                registry.reals
            ),
        );
    }
    services
}

fn service(
    ctx: &mut Ctx,
    node: &Yaml,
    path: &str,
    defaults: &Defaults,
    registry: &mut Registry,
) -> Option<Service> {
    let f = Fields::open(ctx, node, path, node.pos(), SERVICE_KEYS)?;
    let name = f.req(ctx, "name", valid_name);
    if let (Some(name), Some(e)) = (&name, f.entry("name")) {
        let pos = e.value.pos();
        if let Some(first) = registry.names.get(name) {
            ctx.error(
                pos,
                &f.path("name"),
                format!("duplicate service name \"{name}\"; first used at line {}; service names must be unique", first.line),
            );
        } else {
            registry.names.insert(name.clone(), pos);
        }
    }
    let vip = f.req(ctx, "vip", ipv4("VIPs"));
    let port = f.req(ctx, "port", ranged::<u16>(1, 65_535));
    let protocol = f.or(ctx, "protocol", Protocol::Tcp, choice(PROTOCOLS));
    let kind = match f.entry("redirect") {
        Some(e) => {
            for key in FORWARD_ONLY_KEYS {
                if let Some(extra) = f.entry(key) {
                    ctx.error(
                        extra.key.pos,
                        &f.path(key),
                        format!("a redirect service must not have {key}; remove it, or remove redirect: to forward traffic"),
                    );
                }
            }
            if protocol == Some(Protocol::Udp) {
                if let Some(p) = f.value("protocol") {
                    ctx.error(
                        p.pos(),
                        &f.path("protocol"),
                        "a redirect service answers over HTTP; its protocol must be tcp",
                    );
                }
            }
            redirect(ctx, e, &f.path("redirect")).map(ServiceKind::Redirect)
        }
        None => forward(ctx, &f, defaults, vip, port, registry).map(ServiceKind::Forward),
    };
    let protocol = if matches!(kind, Some(ServiceKind::Redirect(_))) {
        Some(Protocol::Tcp)
    } else {
        protocol
    };
    if let (Some(vip), Some(port), Some(protocol), Some(e)) = (vip, port, protocol, f.entry("vip"))
    {
        let label = name.clone().unwrap_or_else(|| path.to_owned());
        let pos = e.value.pos();
        if let Some((first, first_pos)) = registry.endpoints.get(&(vip, port, protocol)) {
            ctx.error(
                pos,
                &f.path("vip"),
                format!(
                    "duplicate VIP:port:protocol {vip}:{port}/{protocol}; first used by service \"{first}\" at line {}",
                    first_pos.line
                ),
            );
        } else {
            registry
                .endpoints
                .insert((vip, port, protocol), (label, pos));
        }
    }
    Some(Service {
        name: name?,
        vip: vip?,
        port: port?,
        protocol: protocol?,
        kind: kind?,
    })
}

fn redirect(ctx: &mut Ctx, entry: &Entry, path: &str) -> Option<Redirect> {
    let f = Fields::open(ctx, &entry.value, path, entry.key.pos, REDIRECT_KEYS)?;
    let code = f.or(ctx, "code", 301, |ctx, path, node| {
        let code = ranged::<u16>(100, 599)(ctx, path, node)?;
        if !REDIRECT_CODES.contains(&code) {
            ctx.error(
                node.pos(),
                path,
                format!(
                    "{code} is not a redirect status; expected one of: 301, 302, 303, 307, 308"
                ),
            );
            return None;
        }
        Some(code)
    });
    let scheme = f.or(ctx, "scheme", "https", choice(SCHEMES));
    let port = f.or(ctx, "port", None, |ctx, path, node| {
        ranged::<u16>(1, 65_535)(ctx, path, node).map(Some)
    });
    Some(Redirect {
        code: code?,
        scheme: scheme?.to_owned(),
        port: port?,
    })
}

fn forward(
    ctx: &mut Ctx,
    f: &Fields<'_>,
    defaults: &Defaults,
    vip: Option<Ipv4Addr>,
    port: Option<u16>,
    registry: &mut Registry,
) -> Option<Forward> {
    let forwarding = f.or(ctx, "forwarding", (), |ctx, path, node| {
        let mode = text(ctx, path, node, "a forwarding mode (dr)")?;
        if mode != "dr" {
            ctx.error(
                node.pos(),
                path,
                format!("forwarding mode {mode} is not supported yet; use dr"),
            );
            return None;
        }
        Some(())
    });
    let persistence = f
        .entry("persistence")
        .map(|e| persistence(ctx, e, &f.path("persistence")))
        .unwrap_or_default();
    let own_check = f
        .entry("health_check")
        .map(|e| check(ctx, e, &f.path("health_check")))
        .unwrap_or_default();
    let health_check = merge_check(ctx, &own_check, &defaults.health_check, port.unwrap_or(0));
    let fallback = match f.entry("fallback") {
        None => Some(None),
        Some(e) => fallback(ctx, e, &f.path("fallback"), vip).map(Some),
    };
    let real_servers = real_servers(ctx, f, vip, registry);
    forwarding?;
    Some(Forward {
        persistence: merge_persistence(persistence, defaults.persistence),
        health_check,
        fallback: fallback?,
        real_servers: real_servers?,
    })
}

fn fallback(ctx: &mut Ctx, entry: &Entry, path: &str, vip: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let f = Fields::open(ctx, &entry.value, path, entry.key.pos, FALLBACK_KEYS)?;
    let address = f.req(ctx, "address", ipv4("fallback servers"))?;
    if Some(address) == vip {
        if let Some(node) = f.value("address") {
            ctx.error(
                node.pos(),
                &f.path("address"),
                format!("{address} is the service's VIP; use another server"),
            );
        }
        return None;
    }
    Some(address)
}

fn real_servers(
    ctx: &mut Ctx,
    f: &Fields<'_>,
    vip: Option<Ipv4Addr>,
    registry: &mut Registry,
) -> Option<Vec<RealServer>> {
    let Some(entry) = f.entry("real_servers") else {
        f.missing(
            ctx,
            "real_servers",
            "; a forwarding service needs at least one real server (or add redirect: to make it a redirect service)",
        );
        return None;
    };
    let path = f.path("real_servers");
    let items = list(ctx, &path, &entry.value, "a list of real servers")?;
    registry.reals += items.len();
    if items.is_empty() || u32::try_from(items.len()).map_or(true, |n| n > MAX_REALS_PER_SERVICE) {
        ctx.error(
            entry.key.pos,
            &path,
            format!(
                "{} real servers; expected 1..={MAX_REALS_PER_SERVICE}",
                items.len()
            ),
        );
    }
    let mut names: HashMap<String, Pos> = HashMap::new();
    let mut addresses: HashMap<Ipv4Addr, Pos> = HashMap::new();
    let mut reals = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let Some(r) = Fields::open(ctx, item, &path, item.pos(), REAL_KEYS) else {
            reals.push(None);
            continue;
        };
        let name = r.req(ctx, "name", valid_name);
        if let (Some(n), Some(node)) = (&name, r.value("name")) {
            if let Some(first) = names.get(n) {
                ctx.error(
                    node.pos(),
                    &r.path("name"),
                    format!(
                        "duplicate real server name \"{n}\" in this service; first used at line {}",
                        first.line
                    ),
                );
            } else {
                names.insert(n.clone(), node.pos());
            }
        }
        let address = r.req(ctx, "address", ipv4("real servers"));
        if let (Some(a), Some(node)) = (address, r.value("address")) {
            if Some(a) == vip {
                ctx.error(
                    node.pos(),
                    &r.path("address"),
                    format!("{a} is the service's VIP; a real server needs its own address"),
                );
            } else if let Some(first) = addresses.get(&a) {
                ctx.error(
                    node.pos(),
                    &r.path("address"),
                    format!(
                        "duplicate real server address {a} in this service; first used at line {}",
                        first.line
                    ),
                );
            } else {
                addresses.insert(a, node.pos());
            }
        }
        let weight = r.or(ctx, "weight", 100, ranged::<u16>(0, 65_535));
        let state = r.or(ctx, "state", AdminState::Online, choice(ADMIN_STATES));
        reals.push(match (name, address, weight, state) {
            (Some(name), Some(address), Some(weight), Some(state)) => Some(RealServer {
                name,
                address,
                weight,
                state,
            }),
            _ => None,
        });
    }
    reals.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    const NODE: &str = "node:\n  name: lb1\n  interface: eth0\n";

    /// One forwarding service; starts at line 5 after `with_services`.
    const WEB: &str = "  - name: web
    vip: 198.18.0.100
    port: 443
    real_servers:
      - name: r1
        address: 198.18.0.21
";

    const FULL: &str = r#"node:
  name: lb1                      # required; non-empty string
  interface: eth0                # required; 1..=15 chars, no '/', no whitespace
  xdp_mode: auto                 # native | generic | auto (default auto)
  control_socket: /run/lbd/lbd.sock   # default; absolute path
  metrics_listen: 127.0.0.1:9100      # default; socket address IP:PORT
  state_dir: /var/lib/lbd             # default; absolute path

cluster:                         # optional; absent = single node
  vrid: 51                       # required, 1..255
  priority: 150                  # required, 1..254
  advert_interval_ms: 1000       # default 1000; 10..40950, a multiple of 10
  preempt: true                  # default true
  peer: 198.18.0.12              # optional IPv4 unicast VRRP peer; absent = multicast 224.0.0.18
  role: primary                  # required: primary | secondary
  sync:                          # optional
    listen: 198.18.0.11:7946     # required IPv4:port
    peer: 198.18.0.12:7946       # required IPv4:port
    key_file: /etc/lbd/cluster.key   # required absolute path

defaults:                        # optional; every service inherits what it does not set
  persistence: { timeout_s: 300, netmask: 32 }
  health_check: { type: tcp, interval_ms: 2000, timeout_ms: 1000, rise: 2, fall: 3 }

services:                        # required (may be an empty list)
  - name: hyperspace             # required; unique; 1..=64 chars of [A-Za-z0-9._-]
    vip: 198.18.0.100            # required; IPv4 (an IPv6 address gets "IPv6 VIPs are not supported yet")
    port: 443                    # required; 1..=65535
    protocol: tcp                # tcp | udp; default tcp
    forwarding: dr               # dr (default); anything else: "forwarding mode X is not supported yet; use dr"
    persistence: { timeout_s: 3600, netmask: 32 }   # timeout_s 1..=604800, netmask 8..=32
    health_check:
      type: https                # tcp | http | https | exec | none
      port: 443                  # default: the service port
      path: /                    # http, https; must start with '/'; default "/"
      host: hyperspace.example.org   # optional
      expect_status: "200-399"   # http, https; "NNN" or "NNN-MMM", 100..=599, low<=high; default 200-399; an int 200 is also accepted
      expect_body: "OK"          # optional regular expression (validate it with the regex crate)
      tls_verify: false          # https; default false
      command: ["/usr/local/bin/check", "--fast"]   # exec: required non-empty list of strings for type exec
      interval_ms: 2000          # 100..=3600000
      timeout_ms: 1000           # 10..=interval_ms
      rise: 2                    # 1..=100
      fall: 3                    # 1..=100
    fallback: { address: 198.18.0.50 }   # optional
    real_servers:                # required for a forwarding service; 1..=MAX_REALS_PER_SERVICE entries
      - name: hs1                # required; unique in the service; same charset as service names
        address: 198.18.0.21     # required IPv4; unique in the service; must not equal the VIP
        weight: 100              # 0..65535, default 100
        state: online            # online | drain | halt; default online

  - name: hyperspace-redirect    # a redirect service: answered by lbd itself over HTTP
    vip: 198.18.0.100
    port: 80
    redirect: { code: 301, scheme: https }   # code 301|302|303|307|308 (default 301); scheme http|https (default https); optional port 1..=65535
"#;

    fn with_services(body: &str) -> String {
        format!("{NODE}services:\n{body}")
    }

    fn with_cluster(cluster: &str) -> String {
        format!("{NODE}cluster:\n{cluster}services: []\n")
    }

    fn parse(yaml: &str) -> Config {
        Config::from_yaml(yaml, "t.yaml")
            .unwrap_or_else(|e| panic!("unexpected errors:\n{e}\nin:\n{yaml}"))
    }

    fn errors(yaml: &str) -> Vec<ConfigError> {
        match Config::from_yaml(yaml, "t.yaml") {
            Ok(c) => panic!("expected errors, got {c:?}\nin:\n{yaml}"),
            Err(e) => e.0,
        }
    }

    /// 1-based line and column of the `nth` (from 0) occurrence of `needle`.
    fn loc(text: &str, needle: &str, nth: usize) -> (usize, usize) {
        let (index, _) = text
            .match_indices(needle)
            .nth(nth)
            .unwrap_or_else(|| panic!("{needle:?} #{nth} not in the text"));
        let before = &text[..index];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// Asserts that the only error is at `at` and its message contains `fragment`.
    fn assert_only(yaml: &str, at: (usize, usize), fragment: &str) {
        let errs = errors(yaml);
        assert_eq!(
            errs.len(),
            1,
            "expected one error, got:\n{}",
            ConfigErrors(errs.clone())
        );
        assert_at(&errs[0], at, fragment);
    }

    fn assert_at(e: &ConfigError, at: (usize, usize), fragment: &str) {
        assert_eq!((e.line, e.column), at, "wrong position for: {e}");
        assert!(
            e.message.contains(fragment),
            "{e}\ndoes not contain {fragment:?}"
        );
        assert_eq!(e.file, "t.yaml");
    }

    /// Asserts that some error is at `at` with `fragment` in its message.
    fn assert_some(yaml: &str, at: (usize, usize), fragment: &str) {
        let errs = errors(yaml);
        assert!(
            errs.iter()
                .any(|e| (e.line, e.column) == at && e.message.contains(fragment)),
            "no error at {at:?} containing {fragment:?}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }

    #[test]
    fn full_example_parses() {
        let c = parse(FULL);
        assert_eq!(
            c.node,
            Node {
                name: "lb1".into(),
                interface: "eth0".into(),
                xdp_mode: XdpMode::Auto,
                control_socket: "/run/lbd/lbd.sock".into(),
                metrics_listen: "127.0.0.1:9100".parse().unwrap(),
                state_dir: "/var/lib/lbd".into(),
            }
        );
        assert_eq!(
            c.cluster,
            Some(Cluster {
                vrid: 51,
                priority: 150,
                advert_interval_ms: 1000,
                preempt: true,
                peer: Some(Ipv4Addr::new(198, 18, 0, 12)),
                role: Role::Primary,
                sync: Some(Sync {
                    listen: "198.18.0.11:7946".parse().unwrap(),
                    peer: "198.18.0.12:7946".parse().unwrap(),
                    key_file: "/etc/lbd/cluster.key".into(),
                }),
            })
        );
        assert_eq!(c.services.len(), 2);
        let hs = c.service("hyperspace").unwrap();
        assert_eq!(
            (hs.vip, hs.port, hs.protocol),
            (Ipv4Addr::new(198, 18, 0, 100), 443, Protocol::Tcp)
        );
        let ServiceKind::Forward(fwd) = &hs.kind else {
            panic!("not forward: {hs:?}")
        };
        assert_eq!(
            fwd.persistence,
            Persistence {
                timeout_s: 3600,
                netmask: 32
            }
        );
        assert_eq!(
            fwd.health_check,
            HealthCheck {
                kind: CheckKind::Https,
                port: 443,
                path: "/".into(),
                host: Some("hyperspace.example.org".into()),
                expect_status: (200, 399),
                expect_body: Some("OK".into()),
                tls_verify: false,
                command: vec!["/usr/local/bin/check".into(), "--fast".into()],
                interval_ms: 2000,
                timeout_ms: 1000,
                rise: 2,
                fall: 3,
            }
        );
        assert_eq!(fwd.fallback, Some(Ipv4Addr::new(198, 18, 0, 50)));
        assert_eq!(
            fwd.real_servers,
            vec![RealServer {
                name: "hs1".into(),
                address: Ipv4Addr::new(198, 18, 0, 21),
                weight: 100,
                state: AdminState::Online,
            }]
        );
        let redirect = c.service("hyperspace-redirect").unwrap();
        assert_eq!((redirect.port, redirect.protocol), (80, Protocol::Tcp));
        assert_eq!(
            redirect.kind,
            ServiceKind::Redirect(Redirect {
                code: 301,
                scheme: "https".into(),
                port: None
            })
        );
        assert!(c.service("nope").is_none());
    }

    #[test]
    fn minimal_config_gets_builtin_defaults() {
        let c = parse(&with_services(WEB));
        assert_eq!(c.node.xdp_mode, XdpMode::Auto);
        assert_eq!(c.node.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.node.metrics_listen, DEFAULT_METRICS_LISTEN);
        assert_eq!(c.node.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert!(c.cluster.is_none());
        let ServiceKind::Forward(fwd) = &c.services[0].kind else {
            panic!()
        };
        assert_eq!(
            fwd.persistence,
            Persistence {
                timeout_s: 300,
                netmask: 32
            }
        );
        let hc = &fwd.health_check;
        assert_eq!(
            (hc.kind, hc.port, hc.path.as_str()),
            (CheckKind::Tcp, 443, "/")
        );
        assert_eq!(
            (hc.interval_ms, hc.timeout_ms, hc.rise, hc.fall),
            (2000, 1000, 2, 3)
        );
        assert_eq!((hc.expect_status, hc.tls_verify), ((200, 399), false));
        assert_eq!(fwd.real_servers[0].weight, 100);
        assert_eq!(fwd.fallback, None);
        let empty = parse(&format!("{NODE}services: []\n"));
        assert!(empty.services.is_empty());
    }

    #[test]
    fn defaults_merge_field_by_field() {
        let yaml = format!(
            "{NODE}defaults:
  persistence: {{ timeout_s: 600 }}
  health_check: {{ type: http, path: /health, interval_ms: 5000, rise: 4 }}
services:
  - {{ name: a, vip: 198.18.0.100, port: 80, real_servers: [{{ name: r, address: 198.18.0.21 }}] }}
  - name: b
    vip: 198.18.0.100
    port: 81
    persistence: {{ netmask: 24 }}
    health_check: {{ rise: 1, timeout_ms: 3000 }}
    real_servers: [{{ name: r, address: 198.18.0.21 }}]
  - name: c
    vip: 198.18.0.100
    port: 82
    health_check: {{ type: tcp, port: 8080 }}
    real_servers: [{{ name: r, address: 198.18.0.21 }}]
"
        );
        let c = parse(&yaml);
        let fwd = |name: &str| match &c.service(name).unwrap().kind {
            ServiceKind::Forward(f) => f.clone(),
            ServiceKind::Redirect(_) => panic!("redirect"),
        };
        let a = fwd("a");
        assert_eq!(
            a.persistence,
            Persistence {
                timeout_s: 600,
                netmask: 32
            }
        );
        let hc = &a.health_check;
        assert_eq!(
            (hc.kind, hc.port, hc.path.as_str()),
            (CheckKind::Http, 80, "/health")
        );
        assert_eq!(
            (hc.interval_ms, hc.timeout_ms, hc.rise, hc.fall),
            (5000, 1000, 4, 3)
        );
        let b = fwd("b");
        assert_eq!(
            b.persistence,
            Persistence {
                timeout_s: 600,
                netmask: 24
            }
        );
        let hc = &b.health_check;
        assert_eq!(
            (hc.kind, hc.port, hc.path.as_str()),
            (CheckKind::Http, 81, "/health")
        );
        assert_eq!(
            (hc.interval_ms, hc.timeout_ms, hc.rise, hc.fall),
            (5000, 3000, 1, 3)
        );
        let hc = fwd("c").health_check;
        assert_eq!(
            (hc.kind, hc.port, hc.interval_ms, hc.rise),
            (CheckKind::Tcp, 8080, 5000, 4)
        );
    }

    #[test]
    fn merged_timeout_points_where_it_was_written() {
        let yaml = format!(
            "{NODE}defaults:
  health_check: {{ timeout_ms: 1500 }}
services:
{WEB}    health_check: {{ interval_ms: 1000 }}
"
        );
        assert_only(
            &yaml,
            loc(&yaml, "1500", 0),
            "defaults.health_check.timeout_ms: 1500 is out of range; expected 10..=1000",
        );
        let yaml = with_services(&format!("{WEB}    health_check: {{ interval_ms: 500 }}\n"));
        assert_only(
            &yaml,
            loc(&yaml, "500", 0),
            "less than the default timeout_ms 1000",
        );
    }

    #[test]
    fn syntax_errors_use_the_scanner_position() {
        let yaml = "node:\n  name: lb1\n interface: eth0\nservices: []\n";
        let e = errors(yaml);
        assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            (3, 11),
            "YAML syntax error: while parsing a block mapping, did not find expected key",
        );
        let e = errors("node:\n\tname: lb1\n");
        assert_at(&e[0], (2, 2), "YAML syntax error: tabs disallowed");
        let e = errors("node: [lb1\nservices: []\n");
        assert_at(&e[0], (2, 9), "YAML syntax error");
    }

    #[test]
    fn empty_and_non_mapping_documents() {
        for yaml in ["", "# nothing here\n", "---\n", "~\n"] {
            assert_only(yaml, (1, 1), "empty configuration");
        }
        assert_only("- node\n", (1, 1), "expected a mapping with node:");
        assert_only("\n\nlb1\n", (3, 1), "found string \"lb1\"");
    }

    #[test]
    fn second_document_is_rejected() {
        let yaml = format!("{NODE}services: []\n---\nfoo: 1\n");
        assert_only(&yaml, (5, 1), "single document");
    }

    #[test]
    fn anchors_aliases_and_tags_are_rejected() {
        let yaml = "node: &n\n  name: lb1\n  interface: eth0\nservices: []\nother: *n\n";
        let e = errors(yaml);
        assert!(
            e.iter()
                .any(|e| e.message.contains("anchors (&name) are not supported")),
            "{e:?}"
        );
        assert_some(
            yaml,
            loc(yaml, "*n", 0),
            "aliases (*name) are not supported",
        );
        let yaml = "node:\n  name: !!str lb1\n  interface: eth0\nservices: []\n";
        assert_only(
            yaml,
            loc(yaml, "lb1", 0),
            "tags (tag:yaml.org,2002:str) are not supported",
        );
    }

    #[test]
    fn unknown_key_at_top_level() {
        let yaml = format!("{NODE}services: []\nnodes: {{}}\n");
        assert_only(
            &yaml,
            (5, 1),
            "unknown key \"nodes\"; did you mean \"node\"? expected one of: node, cluster, defaults, services",
        );
    }

    #[test]
    fn unknown_key_in_a_service() {
        let yaml = with_services(&format!("{WEB}    prot: udp\n"));
        assert_only(
            &yaml,
            loc(&yaml, "prot:", 0),
            "services[0]: unknown key \"prot\"; did you mean \"protocol\"? expected one of: name, vip, port, protocol,",
        );
    }

    #[test]
    fn unknown_key_in_a_real_server() {
        let yaml = with_services(&format!("{WEB}        wieght: 5\n"));
        assert_only(
            &yaml,
            loc(&yaml, "wieght", 0),
            "services[0].real_servers[0]: unknown key \"wieght\"; did you mean \"weight\"?",
        );
    }

    #[test]
    fn wrong_types() {
        let yaml = with_services(&WEB.replace("port: 443", "port: \"443\""));
        assert_only(
            &yaml,
            loc(&yaml, "\"443\"", 0),
            "services[0].port: expected an integer, found string \"443\"; remove the quotes",
        );
        let yaml = "node: 5\nservices: []\n";
        assert_only(
            yaml,
            (1, 7),
            "node: expected a mapping (key: value), found integer 5",
        );
        let yaml = with_services(&format!("{WEB}    persistence: [300, 32]\n"));
        assert_only(
            &yaml,
            loc(&yaml, "[300", 0),
            "services[0].persistence: expected a mapping (key: value), found a list",
        );
        let yaml = "node:\n  name: 12\n  interface: eth0\nservices: []\n";
        assert_only(
            yaml,
            (2, 9),
            "expected a string, found integer 12; quote it",
        );
        let yaml = with_cluster("  vrid: 1\n  priority: 1\n  role: primary\n  preempt: yes\n");
        assert_only(
            &yaml,
            loc(&yaml, "yes", 0),
            "cluster.preempt: expected true or false, found string \"yes\"",
        );
        let yaml = format!("{NODE}services:\n  name: web\n");
        assert_only(&yaml, (5, 3), "services: expected a list of services");
    }

    #[test]
    fn duplicate_keys() {
        let yaml = with_services(&format!("{WEB}    port: 444\n"));
        assert_only(
            &yaml,
            loc(&yaml, "port:", 1),
            "services[0]: duplicate key \"port\" (first set at line 7); remove one of them",
        );
    }

    #[test]
    fn missing_required_keys() {
        let yaml = "node:\n  name: lb1\nservices: []\n";
        assert_only(yaml, (1, 1), "node: missing required key \"interface\"");
        let yaml = format!("{NODE}services: []\ncluster:\n  vrid: 1\n  role: primary\n");
        assert_only(
            &yaml,
            loc(&yaml, "cluster", 0),
            "cluster: missing required key \"priority\"",
        );
        let yaml = with_services(&WEB.replace("    vip: 198.18.0.100\n", ""));
        assert_only(&yaml, (5, 5), "services[0]: missing required key \"vip\"");
        let yaml = with_services("  - { name: web, vip: 198.18.0.100, port: 443 }\n");
        assert_only(
            &yaml,
            (5, 5),
            "missing required key \"real_servers\"; a forwarding service needs",
        );
        assert_only(NODE, (1, 1), "missing required key \"services\"");
        let yaml = "node:\n  name:\n  interface: eth0\nservices: []\n";
        assert_only(yaml, (2, 3), "node.name: has no value");
    }

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
    fn cluster_ranges() {
        let cluster = |vrid: &str, priority: &str, advert: &str| {
            with_cluster(&format!(
                "  vrid: {vrid}\n  priority: {priority}\n  advert_interval_ms: {advert}\n  role: primary\n"
            ))
        };
        let yaml = cluster("0", "100", "1000");
        assert_only(
            &yaml,
            (5, 9),
            "cluster.vrid: 0 is out of range; expected 1..=255",
        );
        let yaml = cluster("1", "255", "1000");
        assert_only(
            &yaml,
            (6, 13),
            "cluster.priority: 255 is out of range; expected 1..=254",
        );
        let yaml = cluster("1", "100", "15");
        assert_only(
            &yaml,
            (7, 23),
            "cluster.advert_interval_ms: 15 is not a multiple of 10",
        );
        let yaml = cluster("1", "100", "40960");
        assert_only(&yaml, (7, 23), "40960 is out of range; expected 10..=40950");
        let yaml = cluster("1", "100", "99999999999999999999999");
        assert_only(&yaml, (7, 23), "99999999999999999999999 is out of range");
        let yaml = with_cluster("  vrid: 1\n  priority: 1\n  role: primary\n  peer: 224.0.0.18\n");
        assert_only(
            &yaml,
            loc(&yaml, "224", 0),
            "224.0.0.18 is not a unicast address",
        );
        let yaml = with_cluster(
            "  vrid: 1\n  priority: 1\n  role: boss\n  sync:\n    listen: \"[::1]:7946\"\n    peer: 198.18.0.12:7946\n    key_file: cluster.key\n",
        );
        let e = errors(&yaml);
        assert_eq!(e.len(), 3, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            loc(&yaml, "boss", 0),
            "unknown value \"boss\"; expected one of: primary, secondary",
        );
        assert_at(
            &e[1],
            loc(&yaml, "\"[::1]", 0),
            "cluster.sync.listen: IPv6 is not supported here",
        );
        assert_at(&e[2], loc(&yaml, "cluster.key", 0), "not an absolute path");
    }

    #[test]
    fn service_and_real_server_ranges() {
        let yaml = with_services(&format!("{WEB}        weight: 70000\n"));
        assert_only(
            &yaml,
            loc(&yaml, "70000", 0),
            "services[0].real_servers[0].weight: 70000 is out of range; expected 0..=65535",
        );
        let yaml = with_services(&WEB.replace("port: 443", "port: 0"));
        assert_only(
            &yaml,
            (7, 11),
            "services[0].port: 0 is out of range; expected 1..=65535",
        );
        let yaml = with_services(&format!("{WEB}    persistence: {{ netmask: 7 }}\n"));
        assert_only(
            &yaml,
            loc(&yaml, "7 }", 0),
            "services[0].persistence.netmask: 7 is out of range; expected 8..=32",
        );
        let yaml = with_services(&format!(
            "{WEB}    health_check: {{ interval_ms: 1000, timeout_ms: 2000 }}\n"
        ));
        assert_only(
            &yaml,
            loc(&yaml, "2000", 0),
            "services[0].health_check.timeout_ms: 2000 is out of range; expected 10..=1000",
        );
        let yaml = with_services(&format!("{WEB}        state: drained\n"));
        assert_only(
            &yaml,
            loc(&yaml, "drained", 0),
            "unknown value \"drained\"; did you mean \"drain\"?",
        );
        let yaml = with_services(&format!("{WEB}    forwarding: nat\n"));
        assert_only(
            &yaml,
            loc(&yaml, "nat", 0),
            "forwarding mode nat is not supported yet; use dr",
        );
    }

    #[test]
    fn node_values() {
        let yaml = "node:\n  name: lb1\n  interface: abcdefghijklmnop\n  xdp_mode: fast\n  control_socket: lbd.sock\n  metrics_listen: localhost\nservices: []\n";
        let e = errors(yaml);
        assert_eq!(e.len(), 4, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            (3, 14),
            "not an interface name; expected 1 to 15 characters",
        );
        assert_at(&e[1], (4, 13), "unknown value \"fast\"");
        assert_at(&e[2], (5, 19), "\"lbd.sock\" is not an absolute path");
        assert_at(&e[3], (6, 19), "\"localhost\" is not an address IP:PORT");
        let yaml = "node:\n  name: lb1\n  interface: eth0\n  xdp_mode: native\n  metrics_listen: \"[::1]:9100\"\nservices: []\n";
        let c = parse(yaml);
        assert_eq!(c.node.xdp_mode, XdpMode::Native);
        assert_eq!(
            c.node.metrics_listen,
            "[::1]:9100".parse::<SocketAddr>().unwrap()
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

    #[test]
    fn several_errors_in_one_pass() {
        let yaml = "node:
  name: lb1
  interface: eth0
  colour: blue
services:
  - name: web
    port: 443
    real_servers:
      - { name: r1, address: 198.18.0.21, weight: 70000 }
  - name: web
    vip: 198.18.0.101
    port: 80
    real_servers: []
";
        let e = errors(yaml);
        assert_eq!(e.len(), 5, "{}", ConfigErrors(e.clone()));
        assert_at(&e[0], (4, 3), "node: unknown key \"colour\"");
        assert_at(&e[1], (6, 5), "services[0]: missing required key \"vip\"");
        assert_at(
            &e[2],
            loc(yaml, "70000", 0),
            "weight: 70000 is out of range",
        );
        assert_at(&e[3], (10, 11), "duplicate service name \"web\"");
        assert_at(
            &e[4],
            (13, 5),
            "services[1].real_servers: 0 real servers; expected 1..=163",
        );
        let text = ConfigErrors(e).to_string();
        assert_eq!(text.lines().count(), 5);
        assert!(
            text.starts_with("t.yaml:4:3: node: unknown key \"colour\""),
            "{text}"
        );
    }

    #[test]
    fn redirect_must_not_have_forwarding_keys() {
        let yaml = with_services(&format!(
            "{WEB}    health_check: {{ type: tcp }}\n    protocol: udp\n    redirect: {{ code: 300, scheme: ftp, port: 0 }}\n"
        ));
        let e = errors(&yaml);
        assert_eq!(e.len(), 6, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            loc(&yaml, "real_servers", 0),
            "services[0].real_servers: a redirect service must not have real_servers",
        );
        assert_at(
            &e[1],
            loc(&yaml, "health_check", 0),
            "must not have health_check",
        );
        assert_at(&e[2], loc(&yaml, "udp", 0), "its protocol must be tcp");
        assert_at(&e[3], loc(&yaml, "300", 0), "300 is not a redirect status");
        assert_at(
            &e[4],
            loc(&yaml, "ftp", 0),
            "unknown value \"ftp\"; did you mean \"http\"? expected one of: http, https",
        );
        assert_at(
            &e[5],
            loc(&yaml, "0 }", 0),
            "redirect.port: 0 is out of range",
        );
        let c = parse(&with_services("  - { name: r, vip: 198.18.0.1, port: 80, redirect: { code: 307, scheme: http, port: 8080 } }\n"));
        assert_eq!(
            c.services[0].kind,
            ServiceKind::Redirect(Redirect {
                code: 307,
                scheme: "http".into(),
                port: Some(8080)
            })
        );
    }

    #[test]
    fn health_check_values() {
        let check = |body: &str| {
            with_services(&format!(
                "{WEB}    health_check: {{ type: http, {body} }}\n"
            ))
        };
        let yaml = check("expect_body: \"(unclosed\"");
        assert_only(
            &yaml,
            loc(&yaml, "\"(unclosed", 0),
            "expect_body: invalid regular expression: unclosed group",
        );
        for bad in ["\"abc\"", "\"399-200\"", "600", "\"20-30\"", "\"200-\""] {
            let yaml = check(&format!("expect_status: {bad}"));
            assert_only(
                &yaml,
                loc(&yaml, bad, 0),
                "is not a valid status range; expected \"NNN\" or \"NNN-MMM\"",
            );
        }
        for (good, range) in [
            ("200", (200, 200)),
            ("\"204\"", (204, 204)),
            ("\"200-299\"", (200, 299)),
        ] {
            let c = parse(&check(&format!("expect_status: {good}")));
            let ServiceKind::Forward(f) = &c.services[0].kind else {
                panic!()
            };
            assert_eq!(f.health_check.expect_status, range);
        }
        let yaml = check("path: health");
        assert_only(
            &yaml,
            loc(&yaml, "health }", 0),
            "is not a URL path; it must start with '/'",
        );
    }

    #[test]
    fn exec_check_needs_a_command() {
        let yaml = with_services(&format!("{WEB}    health_check: {{ type: exec }}\n"));
        assert_only(
            &yaml,
            loc(&yaml, "health_check", 0),
            "services[0].health_check: type exec needs a command",
        );
        let second = WEB.replace("web", "web2").replace("443", "80");
        let yaml =
            format!("{NODE}defaults:\n  health_check:\n    type: exec\nservices:\n{WEB}{second}");
        assert_only(
            &yaml,
            (5, 3),
            "defaults.health_check: type exec needs a command",
        );
        let yaml = with_services(&format!(
            "{WEB}    health_check: {{ type: exec, command: [] }}\n"
        ));
        assert_only(&yaml, loc(&yaml, "[]", 0), "command: must not be empty");
        let yaml = with_services(&format!(
            "{WEB}    health_check: {{ type: exec, command: [/bin/check, 5] }}\n"
        ));
        assert_only(
            &yaml,
            loc(&yaml, "5]", 0),
            "command[1]: expected a string, found integer 5",
        );
        let c = parse(&with_services(&format!(
            "{WEB}    health_check: {{ type: exec, command: [/bin/check, \"5\"] }}\n"
        )));
        let ServiceKind::Forward(f) = &c.services[0].kind else {
            panic!()
        };
        assert_eq!(
            (f.health_check.kind, f.health_check.command.clone()),
            (
                CheckKind::Exec,
                vec!["/bin/check".to_owned(), "5".to_owned()]
            )
        );
    }

    #[test]
    fn ipv6_vip_is_not_supported_yet() {
        let yaml = with_services(&WEB.replace("198.18.0.100", "2001:db8::1"));
        assert_only(
            &yaml,
            (6, 10),
            "services[0].vip: IPv6 VIPs are not supported yet",
        );
        let yaml = with_services(&WEB.replace("198.18.0.100", "198.18.0.300"));
        assert_only(&yaml, (6, 10), "\"198.18.0.300\" is not an IPv4 address");
        let yaml = with_services(&WEB.replace("198.18.0.21", "fd00::21"));
        assert_only(&yaml, (10, 18), "IPv6 real servers are not supported yet");
    }

    #[test]
    fn fallback_is_checked() {
        let yaml = with_services(&format!("{WEB}    fallback: {{ address: 198.18.0.100 }}\n"));
        assert_only(&yaml, loc(&yaml, "198.18.0.100", 1), "is the service's VIP");
        let yaml = with_services(&format!("{WEB}    fallback: {{ adress: 198.18.0.5 }}\n"));
        let e = errors(&yaml);
        assert_eq!(e.len(), 2, "{}", ConfigErrors(e.clone()));
        assert_at(
            &e[0],
            loc(&yaml, "fallback", 0),
            "missing required key \"address\"",
        );
        assert_at(&e[1], loc(&yaml, "adress", 0), "did you mean \"address\"?");
    }

    #[test]
    fn service_limits() {
        let mut body = String::new();
        for i in 0..=MAX_SERVICES {
            writeln!(
                body,
                "  - {{ name: s{i}, vip: 198.18.0.100, port: {}, real_servers: [{{ name: r, address: 198.18.1.1 }}] }}",
                i + 1
            ).unwrap();
        }
        assert_only(
            &with_services(&body),
            (4, 1),
            "257 services; at most 256 are supported",
        );
        let mut body =
            String::from("  - name: big\n    vip: 198.18.0.100\n    port: 80\n    real_servers:\n");
        for i in 0..=MAX_REALS_PER_SERVICE {
            writeln!(
                body,
                "      - {{ name: r{i}, address: 198.18.1.{} }}",
                i + 1
            )
            .unwrap();
        }
        assert_only(
            &with_services(&body),
            (8, 5),
            "164 real servers; expected 1..=163",
        );
        let mut body = String::new();
        for s in 0..103 {
            writeln!(
                body,
                "  - name: s{s}\n    vip: 198.18.0.100\n    port: {}\n    real_servers:",
                s + 1
            )
            .unwrap();
            for i in 0..160 {
                writeln!(
                    body,
                    "      - {{ name: r{i}, address: 198.18.1.{} }}",
                    i + 1
                )
                .unwrap();
            }
        }
        assert_only(
            &with_services(&body),
            (4, 1),
            "16480 real servers over all services; at most 16383",
        );
    }

    #[test]
    fn names_are_checked() {
        let yaml = with_services(&WEB.replace("name: web", "name: \"web site\""));
        assert_only(
            &yaml,
            (5, 11),
            "\"web site\" is not a valid name; use 1 to 64 characters",
        );
        let long = "x".repeat(65);
        let yaml = with_services(&WEB.replace("name: r1", &format!("name: {long}")));
        assert_only(&yaml, (9, 15), "is not a valid name");
    }

    #[test]
    fn error_display() {
        let e = ConfigError {
            file: "f.yaml".into(),
            line: 3,
            column: 7,
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "f.yaml:3:7: bad");
        let whole = ConfigError {
            file: "f.yaml".into(),
            line: 0,
            column: 0,
            message: "cannot read".into(),
        };
        assert_eq!(whole.to_string(), "f.yaml: cannot read");
        assert_eq!(
            ConfigErrors(vec![e, whole]).to_string(),
            "f.yaml:3:7: bad\nf.yaml: cannot read"
        );
    }

    #[test]
    fn load_reports_a_missing_file_without_position() {
        let path =
            std::env::temp_dir().join(format!("lbd-config-missing-{}.yaml", std::process::id()));
        let Err(ConfigErrors(e)) = Config::load(&path) else {
            panic!("loaded a missing file")
        };
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].column), (0, 0));
        assert!(
            e[0].to_string().starts_with(&format!(
                "{}: cannot read the configuration",
                path.display()
            )),
            "{}",
            e[0]
        );
    }

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

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir()
                .join(format!("lbd-config-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir(&dir).unwrap();
            Self(dir)
        }

        fn key(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn key_file_checks() {
        let dir = TempDir::new("key");
        let key = [b'k'; 40];
        let mut with_newline = key.to_vec();
        with_newline.extend_from_slice(b" \n\n");
        let ok = dir.key("ok", &with_newline, 0o600);
        assert_eq!(check_key_file(&ok), Ok(key.to_vec()));
        let strict = dir.key("strict", &key, 0o400);
        assert_eq!(check_key_file(&strict), Ok(key.to_vec()));
        let short = dir.key("short", b"0123456789012345678901234567890\n", 0o600);
        let e = check_key_file(&short).unwrap_err();
        assert!(e.contains("has 31 bytes; it needs at least 32"), "{e}");
        let open = dir.key("open", &key, 0o640);
        let e = check_key_file(&open).unwrap_err();
        assert!(
            e.contains(&format!(
                "mode 0640 lets other users read the cluster key; run: chmod 600 {}",
                open.display()
            )),
            "{e}"
        );
        let e = check_key_file(&dir.0.join("absent")).unwrap_err();
        assert!(e.contains("cannot open the cluster key"), "{e}");
        let e = check_key_file(&dir.0).unwrap_err();
        assert!(e.contains("must be a regular file"), "{e}");
        let path = dir.0.clone();
        drop(dir);
        assert!(!path.exists());
    }
}
