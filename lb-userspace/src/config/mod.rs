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
//! [`Config::load`] reads the file as UTF-8 text; a byte that is not UTF-8 is
//! reported at its line and column, like any other error.
//!
//! Keys that do not apply to a health check's type (a `path` on a tcp check,
//! say) are accepted and ignored, so that `defaults` can hold them for all.

mod defaults;
mod diag;
mod fields;
mod model;
mod sections;
mod services;
mod unique;
mod yaml;

use std::io::Read;
use std::path::Path;

pub use diag::{ConfigError, ConfigErrors};
pub use model::{
    AdminState, CheckKind, Cluster, Config, Forward, Forwarding, HealthCheck, Node,
    ParseAdminStateError, Persistence, Protocol, RealServer, Redirect, Role, Service, ServiceKind,
    Sync, Web, WebTls, XdpMode, DEFAULT_CONTROL_SOCKET, DEFAULT_METRICS_LISTEN,
    DEFAULT_SESSION_TIMEOUT_S, DEFAULT_STATE_DIR,
};

use diag::{finish, Ctx};
use sections::extract;
use yaml::{parse_yaml, Pos};

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
    /// As [`Config::read_text`], otherwise as for [`Config::from_yaml`].
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = Self::read_text(path)?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Reads the configuration file at `path` as text (what `lbctl apply`
    /// and `lbctl plan` send to lbd).
    ///
    /// # Errors
    ///
    /// An error without position when the file cannot be read, one at the
    /// first bad byte when it is not UTF-8 text.
    pub fn read_text(path: &Path) -> Result<String, ConfigErrors> {
        let file = path.display().to_string();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigError {
                    file,
                    line: 0,
                    column: 0,
                    message: format!("cannot read the configuration: {e}"),
                }]))
            }
        };
        String::from_utf8(bytes).map_err(|e| {
            let valid_up_to = e.utf8_error().valid_up_to();
            finish(&file, vec![not_utf8(e.as_bytes(), valid_up_to)])
        })
    }
}

/// The error for a file that is not UTF-8 text, whose first bad byte is at
/// `valid_up_to`: at that byte's line and column, the column counted in
/// characters as for every other error.
fn not_utf8(bytes: &[u8], valid_up_to: usize) -> (Pos, String) {
    let (valid, rest) = bytes.split_at(valid_up_to);
    let valid = std::str::from_utf8(valid).unwrap_or_default();
    let byte = rest.first().copied().unwrap_or_default();
    (
        Pos::after(valid),
        format!("the file is not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8"),
    )
}

/// An error about what the value at `path` (keys from the top, as
/// `["cluster", "sync", "key_file"]`) names, such as a key file lbd cannot
/// use: at that value's place in the configuration `text` of `file`, as
/// every configuration error (without a place if `text` has no such key).
#[must_use]
pub fn error_at(file: &str, text: &str, path: &[&str], message: &str) -> ConfigError {
    fn value_pos(node: &yaml::Yaml, path: &[&str]) -> Option<Pos> {
        let Some((first, rest)) = path.split_first() else {
            return Some(node.pos());
        };
        let yaml::Yaml::Map { entries, .. } = node else {
            return None;
        };
        let entry = entries
            .iter()
            .find(|e| e.key.name.as_deref() == Some(*first))?;
        value_pos(&entry.value, rest)
    }
    let pos = parse_yaml(text, &mut Ctx::default())
        .ok()
        .flatten()
        .and_then(|root| value_pos(&root, path));
    let key = path.join(".");
    let message = message.strip_prefix(&format!("{key}: ")).unwrap_or(message);
    ConfigError {
        file: file.to_owned(),
        line: pos.map_or(0, |p| p.line),
        column: pos.map_or(0, |p| p.column),
        message: format!("{key}: {message}"),
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

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    const FULL: &str = r#"node:
  name: lb1                      # required; non-empty string
  interface: eth0                # required; 1..=15 chars, no '/', no whitespace
  xdp_mode: auto                 # native | generic | auto (default auto)
  control_socket: /run/lbd/lbd.sock   # default; absolute path
  metrics_listen: 127.0.0.1:9100      # default; socket address IP:PORT
  state_dir: /var/lib/lbd             # default; absolute path
  server_interfaces: [eth1]           # optional; interfaces towards nat/snat real servers; lbd attaches to each
  web:                                # optional; absent = no web console
    listen: 198.18.0.11:8443          # required; socket address IP:PORT, HTTPS only
    tls: { cert: /etc/lbd/web.crt, key: /etc/lbd/web.key }   # optional; absolute paths; absent = self-signed
    users_file: /etc/lbd/users        # required absolute path; written by `lbctl user`; mode 0600
    session_timeout_s: 900            # default 900; 5..86400: idle seconds before sign-in is asked again

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
    forwarding: dr               # dr (default) | nat | snat
    # snat_address: 198.18.0.11  # snat only (an error otherwise); default: the address of the interface towards the servers
    persistence: { timeout_s: 3600, netmask: 32 }   # timeout_s 10..=604800, netmask 8..=32
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
        port: 443                # nat, snat: the server's port (default: the service port); dr: must equal it
        weight: 100              # 0..65535, default 100
        state: online            # online | drain | halt; default online

  - name: hyperspace-redirect    # a redirect service: answered by lbd itself over HTTP
    vip: 198.18.0.100
    port: 80
    redirect: { code: 301, scheme: https }   # code 301|302|303|307|308 (default 301); scheme http|https (default https); optional port 1..=65535
"#;

    /// An error about a file the configuration names points at the key
    /// naming it, as every configuration error does.
    #[test]
    fn an_error_about_a_named_file_is_at_its_key() {
        let line = FULL
            .lines()
            .position(|l| l.contains("key_file:"))
            .map_or(0, |i| i + 1);
        let column = FULL
            .lines()
            .nth(line - 1)
            .and_then(|l| l.find("/etc/lbd/cluster.key"))
            .map_or(0, |c| c + 1);
        let error = error_at(
            "lbd.yaml",
            FULL,
            &["cluster", "sync", "key_file"],
            "cluster.sync.key_file: mode 0644 lets other users read it",
        );
        assert_eq!(
            error.to_string(),
            format!(
                "lbd.yaml:{line}:{column}: cluster.sync.key_file: mode 0644 lets other users read it"
            )
        );
        assert_eq!(
            error_at("lbd.yaml", "node: {}\n", &["node", "web", "tls"], "bad").to_string(),
            "lbd.yaml: node.web.tls: bad",
            "no such key: the file alone"
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
                server_interfaces: vec!["eth1".into()],
                web: Some(Web {
                    listen: "198.18.0.11:8443".parse().unwrap(),
                    tls: Some(WebTls {
                        cert: "/etc/lbd/web.crt".into(),
                        key: "/etc/lbd/web.key".into(),
                    }),
                    users_file: "/etc/lbd/users".into(),
                    session_timeout_s: 900,
                }),
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
                netmask: 32,
                max_clients: None
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
                port: Some(443),
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
                netmask: 32,
                max_clients: None
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
    fn load_reports_the_first_byte_that_is_not_utf8() {
        let dir = TempDir::new("utf8");
        // Columns count characters: "é" (2 bytes) and "€" (3 bytes) are
        // one column each, so the Latin-1 "\xe9" on line 3 is at column 12
        // (byte 15 of its line). CRLF ends a line once, as in yaml-rust2.
        let cases: [(&[u8], (usize, usize), u8); 3] = [
            (b"node: \xffoo\n", (1, 7), 0xff),
            (
                b"node:\n  name: lb1\n  # caf\xc3\xa9 \xe2\x82\xac \xe9t\xe9\n",
                (3, 12),
                0xe9,
            ),
            (b"node:\r\n  name: lb1\r\n\xfe", (3, 1), 0xfe),
        ];
        for (i, (contents, at, byte)) in cases.into_iter().enumerate() {
            let path = dir.0.join(format!("{i}.yaml"));
            std::fs::write(&path, contents).unwrap();
            let Err(ConfigErrors(e)) = Config::load(&path) else {
                panic!("loaded a file that is not UTF-8")
            };
            assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
            assert_eq!((e[0].line, e[0].column), at, "{}", e[0]);
            assert_eq!(
                e[0].to_string(),
                format!(
                    "{}:{}:{}: the file is not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8",
                    path.display(),
                    at.0,
                    at.1
                )
            );
        }
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
