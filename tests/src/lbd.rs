//! Running `lbd` in a lab's load-balancer namespace, and `lbctl` against it.
//!
//! [`Lbd::start`] runs one lbd with its files at the top of the lab
//! directory. For HA pairs, [`Lbd::start_named`] runs an lbd in a chosen
//! namespace with its own files under `LAB_DIR/NAME/` (configuration,
//! control socket, state directory, log), so two can share a lab;
//! [`lab_config_named`], [`ClusterSpec`] and [`write_key`] build their
//! configuration.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use serde_json::Value;

use crate::{
    lab::{DrLab, LabError, ProcHandle},
    paths,
    wait::{poll_until, Probe, WaitError},
};

/// An `lbd` the lab tracks (stopped when the lab is dropped at the latest).
pub struct Lbd {
    /// Its configuration file.
    pub config: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its log.
    pub log: PathBuf,
    handle: Option<ProcHandle>,
    ns: String,
}

/// The port of `cluster.sync` in lab pairs.
pub const SYNC_PORT: u16 = 7946;

/// The VRRP advertisement interval of lab pairs ([`ClusterSpec::primary`]).
pub const ADVERT_INTERVAL_MS: u32 = 200;

/// How long a SIGKILLed lbd may take to be reaped before it is killed again.
const CRASH_REAP: Duration = Duration::from_secs(5);

/// How much of its log an [`Lbd`] adds to a failed wait.
const LOG_ON_FAILED_WAIT: u64 = 8000;

/// Where [`Lbd::start_named`] keeps the files of node `name`: `LAB_DIR/NAME`.
#[must_use]
pub fn node_dir(lab: &DrLab, name: &str) -> PathBuf {
    lab.dir().join(name)
}

/// A configuration for node `name` whose control socket and state
/// directory are under [`node_dir`]. `cluster_yaml` is the body of the
/// `cluster:` section (keys indented by two spaces, see
/// [`ClusterSpec::yaml`]); empty means no `cluster:` section. `services` is
/// the YAML list, as for [`lab_config`].
#[must_use]
pub fn lab_config_named(lab: &DrLab, name: &str, cluster_yaml: &str, services: &str) -> String {
    let dir = node_dir(lab, name);
    let dir = dir.display();
    let cluster = if cluster_yaml.trim().is_empty() {
        String::new()
    } else {
        format!("cluster:\n{}\n", cluster_yaml.trim_end())
    };
    format!(
        "node:\n  name: {name}\n  interface: {iface}\n  xdp_mode: native\n  control_socket: {dir}/lbd.sock\n  \
         state_dir: {dir}/state\n  metrics_listen: 127.0.0.1:9100\n{cluster}services:\n{services}",
        iface = lab.lb_interface(),
    )
}

/// The `cluster:` section of one node of a lab pair.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// VRRP virtual router id.
    pub vrid: u8,
    /// VRRP priority.
    pub priority: u8,
    /// VRRP advertisement interval.
    pub advert_interval_ms: u32,
    /// Whether a higher priority takes over from a running master.
    pub preempt: bool,
    /// `primary` or `secondary`.
    pub role: &'static str,
    /// This node's address (the sync listener binds it).
    pub address: Ipv4Addr,
    /// The other node's address (unicast VRRP peer, sync peer).
    pub peer: Ipv4Addr,
    /// The sync key file; `None` leaves out `sync:`.
    pub key_file: Option<PathBuf>,
}

impl ClusterSpec {
    /// The lab's primary on `lb` (priority 150, [`ADVERT_INTERVAL_MS`]
    /// adverts, VRID 51)
    /// peering with `lb2`, syncing with `key_file` if given.
    #[must_use]
    pub fn primary(lab: &DrLab, key_file: Option<&Path>) -> Self {
        Self {
            vrid: 51,
            priority: 150,
            advert_interval_ms: ADVERT_INTERVAL_MS,
            preempt: true,
            role: "primary",
            address: lab.lb_address(),
            peer: lab.lb2_address(),
            key_file: key_file.map(Path::to_path_buf),
        }
    }

    /// The lab's secondary on `lb2` (priority 100), like [`Self::primary`].
    #[must_use]
    pub fn secondary(lab: &DrLab, key_file: Option<&Path>) -> Self {
        Self {
            priority: 100,
            role: "secondary",
            address: lab.lb2_address(),
            peer: lab.lb_address(),
            ..Self::primary(lab, key_file)
        }
    }

    /// The section's body for [`lab_config_named`].
    #[must_use]
    pub fn yaml(&self) -> String {
        let mut s = format!(
            "  vrid: {}\n  priority: {}\n  advert_interval_ms: {}\n  preempt: {}\n  peer: {}\n  role: {}\n",
            self.vrid, self.priority, self.advert_interval_ms, self.preempt, self.peer, self.role
        );
        if let Some(key) = &self.key_file {
            let _ = write!(
                s,
                "  sync:\n    listen: {}:{SYNC_PORT}\n    peer: {}:{SYNC_PORT}\n    key_file: {}\n",
                self.address,
                self.peer,
                key.display()
            );
        }
        s
    }
}

/// Writes a cluster key (mode 0600) named `file_name` into the lab directory.
///
/// # Errors
/// When the file cannot be written.
pub fn write_key(lab: &DrLab, file_name: &str, key: &[u8]) -> Result<PathBuf, LabError> {
    let path = lab.dir().join(file_name);
    let io = |source| LabError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    std::io::Write::write_all(&mut file, key).map_err(io)?;
    Ok(path)
}

/// The last `max` bytes of a file (empty if it cannot be read).
fn file_tail(path: &Path, max: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_default()
}

/// How much of its log an [`Lbd`] prints when dropped during a panic.
const LOG_ON_PANIC: u64 = 24_000;

impl Drop for Lbd {
    /// Prints the end of lbd's log when a test panics, so failures come
    /// with the daemon's side of the story.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- lbd log {} (last {LOG_ON_PANIC} bytes) ----\n{}\n---- end of {} ----",
                self.log.display(),
                file_tail(&self.log, LOG_ON_PANIC),
                self.log.display()
            );
        }
    }
}

/// A single-node configuration for the lab: `services` is the YAML list.
#[must_use]
pub fn lab_config(lab: &DrLab, services: &str) -> String {
    let dir = lab.dir().display();
    format!(
        "node:\n  name: {tag}\n  interface: {iface}\n  xdp_mode: native\n  control_socket: {dir}/lbd.sock\n  \
         state_dir: {dir}/state\n  metrics_listen: 127.0.0.1:9100\nservices:\n{services}",
        tag = lab.tag(),
        iface = lab.lb_interface(),
    )
}

/// The YAML of one DR service on the lab's VIP with the first `n` real servers.
#[must_use]
pub fn web_service(lab: &DrLab, n: usize, timeout_s: u32) -> String {
    let mut s = format!(
        "  - name: web\n    vip: {}\n    port: {}\n    persistence: {{ timeout_s: {timeout_s} }}\n    real_servers:\n",
        lab.vip(),
        lab.http_port()
    );
    for i in 0..n {
        let _ = writeln!(
            s,
            "      - {{ name: {}, address: {} }}",
            lab.real_name(i),
            lab.real_address(i)
        );
    }
    s
}

impl Lbd {
    /// Writes `config` and starts lbd in the lab's load-balancer namespace.
    ///
    /// # Errors
    /// When the file cannot be written or lbd not started.
    pub fn start(lab: &mut DrLab, config: &str) -> Result<Self, LabError> {
        Self::start_wrapped(lab, config, &[])
    }

    /// [`Self::start`] with lbd run by `wrapper` (a command and its
    /// arguments before lbd's, e.g. `prlimit --nofile=1024:`).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_wrapped(
        lab: &mut DrLab,
        config: &str,
        wrapper: &[&str],
    ) -> Result<Self, LabError> {
        let dir = lab.dir().to_owned();
        let ns = lab.lb_ns().to_owned();
        let log = lab.log_path("lbd");
        Self::spawn(lab, &ns, &dir, config, log, wrapper, &paths::lbd())
    }

    /// [`Self::start`] with the lbd binary at `binary` (a copy the test
    /// replaces, as a package upgrade does).
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_binary(lab: &mut DrLab, config: &str, binary: &Path) -> Result<Self, LabError> {
        let dir = lab.dir().to_owned();
        let ns = lab.lb_ns().to_owned();
        let log = lab.log_path("lbd");
        Self::spawn(lab, &ns, &dir, config, log, &[], binary)
    }

    /// Writes `DIR/lbd.yaml` and starts lbd on it in `ns`, logging to `log`;
    /// its socket and state directory are `DIR/lbd.sock` and `DIR/state`.
    fn spawn(
        lab: &mut DrLab,
        ns: &str,
        dir: &Path,
        config: &str,
        log: PathBuf,
        wrapper: &[&str],
        lbd: &Path,
    ) -> Result<Self, LabError> {
        if !lbd.is_file() {
            return Err(LabError::Invalid(format!(
                "no lbd at {}: {}",
                lbd.display(),
                paths::BUILD_HINT
            )));
        }
        let path = dir.join("lbd.yaml");
        fs::write(&path, config).map_err(|source| LabError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        let (lbd, file) = (lbd.display().to_string(), path.display().to_string());
        let mut command: Vec<&str> = wrapper.to_vec();
        command.extend([lbd.as_str(), "--config", file.as_str()]);
        let handle = lab.spawn_in(ns, &command, &log)?;
        Ok(Self {
            config: path,
            socket: dir.join("lbd.sock"),
            state_dir: dir.join("state"),
            log,
            handle: Some(handle),
            ns: ns.to_owned(),
        })
    }

    /// Writes `config` to `LAB_DIR/NAME/lbd.yaml` and starts lbd in namespace
    /// `ns`, with its control socket, state directory (as `config` names
    /// them: see [`lab_config_named`]) and log (`lbd.log`, appended to
    /// across restarts) in the same directory. Starting the same name again
    /// (after a stop or crash) reuses the files.
    ///
    /// # Errors
    /// When the files cannot be written or lbd not started.
    pub fn start_named(
        lab: &mut DrLab,
        ns: &str,
        name: &str,
        config: &str,
    ) -> Result<Self, LabError> {
        Self::start_named_wrapped(lab, ns, name, config, &[])
    }

    /// [`Self::start_named`] with lbd run by `wrapper` (see
    /// [`Self::start_wrapped`]).
    ///
    /// # Errors
    /// As [`Self::start_named`].
    pub fn start_named_wrapped(
        lab: &mut DrLab,
        ns: &str,
        name: &str,
        config: &str,
        wrapper: &[&str],
    ) -> Result<Self, LabError> {
        Self::named(lab, ns, name, config, wrapper, &paths::lbd())
    }

    /// [`Self::start_named`] with the lbd binary at `binary` (a copy the
    /// test replaces, as a package upgrade does).
    ///
    /// # Errors
    /// As [`Self::start_named`].
    pub fn start_named_binary(
        lab: &mut DrLab,
        ns: &str,
        name: &str,
        config: &str,
        binary: &Path,
    ) -> Result<Self, LabError> {
        Self::named(lab, ns, name, config, &[], binary)
    }

    /// Starts `binary` (run by `wrapper`) as node `name`, its files in
    /// [`node_dir`].
    fn named(
        lab: &mut DrLab,
        ns: &str,
        name: &str,
        config: &str,
        wrapper: &[&str],
        binary: &Path,
    ) -> Result<Self, LabError> {
        let dir = node_dir(lab, name);
        fs::create_dir_all(&dir).map_err(|source| LabError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let log = dir.join("lbd.log");
        Self::spawn(lab, ns, &dir, config, log, wrapper, binary)
    }

    /// The namespace lbd runs in.
    #[must_use]
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// lbd's log so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `lbctl ha --json`, parsed (None while lbd does not answer).
    #[must_use]
    pub fn ha(&self) -> Option<Value> {
        let out = self.lbctl(&["ha", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The VRRP state `lbctl ha` reports (`master`, `backup`, `init`, ...).
    #[must_use]
    pub fn ha_state(&self) -> Option<String> {
        self.ha()
            .and_then(|v| v["state"].as_str().map(str::to_owned))
    }

    /// Waits until lbd answers `lbctl status` (or `timeout` passes).
    ///
    /// # Errors
    /// [`LabError::Wait`] (timed out, or lbd exited), with lbd's log.
    pub fn wait_answering(&self, lab: &mut DrLab, timeout: Duration) -> Result<Value, LabError> {
        self.wait_for(lab, timeout, "lbd answering `lbctl status`", || {
            self.status()
                .ok_or_else(|| "`lbctl status` does not answer".to_owned())
        })
    }

    /// Polls `lbctl ha --json` until `accept` holds for it (or `timeout`
    /// passes); returns the accepted value.
    ///
    /// # Errors
    /// [`LabError::Wait`] (timed out, with the last answer; or lbd exited),
    /// with lbd's log.
    pub fn wait_ha(
        &self,
        lab: &mut DrLab,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Result<Value, LabError> {
        self.wait_for(lab, timeout, what, || {
            let ha = self
                .ha()
                .ok_or_else(|| "`lbctl ha` does not answer".to_owned())?;
            if accept(&ha) {
                Ok(ha)
            } else {
                Err(format!("`lbctl ha`: {ha}"))
            }
        })
    }

    /// Polls `probe` (see [`poll_until`]) until it returns `Ok`, lbd exits
    /// or `timeout` passes; a failed wait carries the end of lbd's log.
    fn wait_for<T>(
        &self,
        lab: &mut DrLab,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut() -> Result<T, String>,
    ) -> Result<T, LabError> {
        let what = format!("{what} (lbd in {})", self.ns);
        poll_until(&what, timeout, || match probe() {
            Ok(found) => Probe::Ready(found),
            Err(seen) => match self.handle.map(|h| lab.try_wait(h)) {
                Some(Ok(Some(exit))) => Probe::Failed(format!("lbd exited ({exit})")),
                _ => Probe::Pending(seen),
            },
        })
        .map_err(|e| self.with_log(e))
    }

    /// `e` with the end of lbd's log appended.
    fn with_log(&self, e: WaitError) -> LabError {
        let log = format!(
            "\n---- lbd log {} (last {LOG_ON_FAILED_WAIT} bytes) ----\n{}",
            self.log.display(),
            file_tail(&self.log, LOG_ON_FAILED_WAIT)
        );
        LabError::Wait(match e {
            WaitError::TimedOut {
                what,
                timeout,
                last,
            } => WaitError::TimedOut {
                what,
                timeout,
                last: last + &log,
            },
            WaitError::Failed { what, after, why } => WaitError::Failed {
                what,
                after,
                why: why + &log,
            },
        })
    }

    /// Kills lbd with SIGKILL (a crash: nothing is cleaned up) and reaps it.
    ///
    /// # Errors
    /// When lbd does not run or cannot be reaped.
    pub fn crash(&mut self, lab: &mut DrLab) -> Result<(), LabError> {
        self.signal(lab, libc::SIGKILL)?;
        if let Some(handle) = self.handle.take() {
            // Not reaped in time: `kill` below stops it as usual, then reaps it.
            let _ = poll_until("lbd to die of SIGKILL", CRASH_REAP, || {
                match lab.try_wait(handle) {
                    Ok(Some(exit)) => Probe::Ready(exit),
                    Ok(None) => Probe::Pending("still running".into()),
                    Err(e) => Probe::Failed(e.to_string()),
                }
            });
            lab.kill(handle)?;
        }
        Ok(())
    }

    /// Whether lbd's process is still running.
    #[must_use]
    pub fn running(&self, lab: &mut DrLab) -> bool {
        self.handle
            .is_some_and(|h| matches!(lab.try_wait(h), Ok(None)))
    }

    /// lbd's PID while it runs.
    #[must_use]
    pub fn pid(&self, lab: &DrLab) -> Option<u32> {
        self.handle.and_then(|h| lab.pid(h))
    }

    /// Runs `lbctl --socket SOCKET ARGS...`.
    ///
    /// # Panics
    /// When lbctl cannot be started at all (saying how to build it).
    #[must_use]
    pub fn lbctl(&self, args: &[&str]) -> Output {
        let lbctl = paths::lbctl();
        std::process::Command::new(&lbctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} ({})",
                    lbctl.display(),
                    paths::BUILD_HINT
                )
            })
    }

    /// A real server's admin state in the first service, from `lbctl status`.
    #[must_use]
    pub fn admin_state(&self, server: &str) -> Option<String> {
        let status = self.status()?;
        status["services"][0]["real_servers"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == server)
            .and_then(|r| r["admin_state"].as_str().map(str::to_owned))
    }

    /// The audit log's lines, parsed, oldest first.
    ///
    /// # Panics
    /// On a line that is not JSON.
    #[must_use]
    pub fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state_dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// `lbctl status --json`, parsed (None while lbd does not answer).
    #[must_use]
    pub fn status(&self) -> Option<Value> {
        let out = self.lbctl(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until lbd answers and every real server of every service has a
    /// MAC address (or `timeout` passes).
    ///
    /// # Errors
    /// [`LabError::Wait`] (timed out, naming the servers without a MAC; or
    /// lbd exited), with lbd's log.
    pub fn wait_ready(&self, lab: &mut DrLab, timeout: Duration) -> Result<Value, LabError> {
        self.wait_for(lab, timeout, "lbd ready with every MAC resolved", || {
            let status = self
                .status()
                .ok_or_else(|| "`lbctl status` does not answer".to_owned())?;
            let unresolved: Vec<String> = status["services"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| {
                    s["real_servers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["resolved"] != true)
                        .map(move |r| {
                            format!(
                                "{}/{}",
                                s["name"].as_str().unwrap_or("?"),
                                r["name"].as_str().unwrap_or("?")
                            )
                        })
                })
                .collect();
            if unresolved.is_empty() {
                Ok(status)
            } else {
                Err(format!("no MAC yet for {}", unresolved.join(", ")))
            }
        })
    }

    /// Sends a signal to lbd.
    ///
    /// # Errors
    /// When lbd does not run.
    pub fn signal(&self, lab: &DrLab, signal: i32) -> Result<(), LabError> {
        let pid = self
            .pid(lab)
            .ok_or_else(|| LabError::Invalid("lbd is not running".into()))?;
        // SAFETY: kill(2) on a child this lab started and has not reaped.
        let rc = unsafe { libc::kill(i32::try_from(pid).unwrap_or(0), signal) };
        if rc != 0 {
            return Err(LabError::Invalid(format!("kill({pid}, {signal}) failed")));
        }
        Ok(())
    }

    /// Stops lbd with SIGTERM and waits for it to exit; returns whether it
    /// exited successfully.
    ///
    /// # Errors
    /// When it cannot be stopped.
    pub fn stop(&mut self, lab: &mut DrLab) -> Result<bool, LabError> {
        match self.handle.take() {
            Some(handle) => Ok(lab.kill(handle)?.success()),
            None => Ok(true),
        }
    }

    /// The VIPs on the load balancer's interface now.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn interface_addresses(&self, lab: &DrLab) -> Result<Vec<Ipv4Addr>, LabError> {
        let out = crate::lab::run_in(
            &self.ns,
            &["ip", "-4", "-o", "addr", "show", "dev", lab.lb_interface()],
        )?;
        Ok(out
            .split_whitespace()
            .filter_map(|w| w.split('/').next())
            .filter_map(|w| w.parse().ok())
            .collect())
    }

    /// Whether an XDP program is attached to the load balancer's interface.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn xdp_attached(&self, lab: &DrLab) -> Result<bool, LabError> {
        let out = crate::lab::run_in(
            &self.ns,
            &["ip", "-d", "link", "show", "dev", lab.lb_interface()],
        )?;
        Ok(out.contains("prog/xdp"))
    }
}

/// `lbctl ARGS`, asserting exit 0.
///
/// # Panics
/// When lbctl fails, with its status and stderr.
pub fn lbctl_ok(lbd: &Lbd, args: &[&str]) -> Output {
    let out = lbd.lbctl(args);
    assert!(
        out.status.success(),
        "lbctl {args:?}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `lbctl affinity SERVICE CLIENT --json`, parsed.
///
/// # Panics
/// When lbctl fails or does not answer JSON.
pub fn affinity(lbd: &Lbd, service: &str, client: Ipv4Addr) -> Value {
    let client = client.to_string();
    let out = lbctl_ok(lbd, &["affinity", service, &client, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lbctl affinity output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
