//! Running `lbd` in a lab's load-balancer namespace, and `lbctl` against it.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    lab::{DrLab, LabError, ProcHandle},
    paths,
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
        let path = lab.dir().join("lbd.yaml");
        std::fs::write(&path, config).map_err(|source| LabError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        let log = lab.log_path("lbd");
        let ns = lab.lb_ns().to_owned();
        let lbd = paths::lbd();
        let handle = lab.spawn_in(
            &ns,
            &[
                &lbd.display().to_string(),
                "--config",
                &path.display().to_string(),
            ],
            &log,
        )?;
        Ok(Self {
            config: path,
            socket: lab.dir().join("lbd.sock"),
            state_dir: lab.dir().join("state"),
            log,
            handle: Some(handle),
            ns,
        })
    }

    /// lbd's PID while it runs.
    #[must_use]
    pub fn pid(&self, lab: &DrLab) -> Option<u32> {
        self.handle.and_then(|h| lab.pid(h))
    }

    /// Runs `lbctl --socket SOCKET ARGS...`.
    ///
    /// # Panics
    /// When lbctl cannot be started at all.
    #[must_use]
    pub fn lbctl(&self, args: &[&str]) -> Output {
        std::process::Command::new(paths::lbctl())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run lbctl: {e}"))
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
    /// [`LabError::Timeout`] with lbd's log.
    pub fn wait_ready(&self, lab: &mut DrLab, timeout: Duration) -> Result<Value, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status() {
                let resolved = status["services"].as_array().is_some_and(|services| {
                    services.iter().all(|s| {
                        s["real_servers"]
                            .as_array()
                            .is_some_and(|rs| rs.iter().all(|r| r["mac"].is_string()))
                    })
                });
                if resolved {
                    return Ok(status);
                }
            }
            if let Some(handle) = self.handle {
                if let Ok(Some(exit)) = lab.try_wait(handle) {
                    return Err(LabError::Invalid(format!(
                        "lbd exited ({exit}) before it was ready:\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!(
                        "lbd ready with every MAC resolved; its log:\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    ),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
