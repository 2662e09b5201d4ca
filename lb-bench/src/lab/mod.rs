//! The bench's lab: lb-tests' [`DrLab`] with nginx in the real servers, the
//! bind shim and wrk's script, and the lbd instances the bench starts in it.

pub(crate) mod files;

use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use lb_tests::{
    lab::{in_netns, run, run_in, wait_for_tcp, DrLab, DrLabOptions, ProcHandle},
    paths,
};
use serde_json::Value;

use self::files::{nginx_conf, BIND_SHIM_C, WRK_LUA};
use crate::{
    client::{direct_pick, http_get},
    options::System,
    signal::check_stop,
    HTTP_PORT, REALS, SOURCES,
};

/// Port of the lab's own Python servers, stopped at once: nginx serves.
const LAB_PY_PORT: u16 = 8080;
/// Sources asked before each system's runs to prove it serves.
const PROBE_SOURCES: usize = 8;
/// How long a system may take to come up (lbd resolving MACs, `HAProxy` listening).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The lab plus what the bench runs in it.
pub(crate) struct BenchLab {
    pub(crate) lab: DrLab,
    pub(crate) nginx: Vec<Option<ProcHandle>>,
    pub(crate) shim: PathBuf,
    pub(crate) lua: PathBuf,
    pub(crate) client_cpu: String,
    pub(crate) server_cpu: String,
    pub(crate) bare_dr_obj: PathBuf,
    pub(crate) runs: usize,
}

pub(crate) fn ebpf_dir() -> PathBuf {
    paths::target_dir().join("bpfel-unknown-none/release")
}

impl BenchLab {
    pub(crate) fn start() -> Result<Self> {
        let nproc = thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let lab = DrLab::start(DrLabOptions {
            real_servers: REALS,
            client_sources: SOURCES,
            http_port: LAB_PY_PORT,
            lab_pass_obj: ebpf_dir().join("lab-pass"),
            second_lb: true,
            ..DrLabOptions::default()
        })
        .map_err(|e| anyhow!("building the lab: {e}"))?;
        let mut me = Self {
            nginx: vec![None; REALS],
            shim: lab.dir().join("bindshim.so"),
            lua: lab.dir().join("report.lua"),
            client_cpu: (nproc - 1).to_string(),
            server_cpu: "0".into(),
            bare_dr_obj: ebpf_dir().join("bench-bare-dr"),
            runs: 0,
            lab,
        };
        for i in 0..REALS {
            me.lab.stop_http(i);
        }
        me.tune()?;
        let src = me.lab.dir().join("bindshim.c");
        fs::write(&src, BIND_SHIM_C)?;
        fs::write(&me.lua, WRK_LUA)?;
        let shim = me.shim.to_string_lossy().into_owned();
        run(&[
            "gcc",
            "-O2",
            "-shared",
            "-fPIC",
            "-o",
            &shim,
            &src.to_string_lossy(),
            "-ldl",
        ])
        .map_err(|e| anyhow!("compiling the bind shim: {e}"))?;
        for i in 0..REALS {
            me.start_nginx(i)?;
        }
        Ok(me)
    }

    /// Sysctls and offloads every system gets alike.
    fn tune(&self) -> Result<()> {
        let lab = &self.lab;
        run_in(
            lab.client_ns(),
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_local_port_range=1024 65535",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        )?;
        for ns in [lab.lb_ns(), lab.lb2_ns()] {
            run_in(
                ns,
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_local_port_range=1024 65535",
                    "net.core.somaxconn=4096",
                    "net.ipv4.conf.all.send_redirects=0",
                    "net.ipv4.conf.default.send_redirects=0",
                    "net.ipv4.conf.eth0.send_redirects=0",
                ],
            )?;
            // veth trap 2: locally sent frames (HAProxy's, lbd's health
            // checks) cross the switch port's XDP and would keep a partial
            // checksum.
            run_in(ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        }
        for i in 0..REALS {
            run_in(
                lab.real_ns(i),
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.core.somaxconn=4096",
                    "net.ipv4.tcp_max_syn_backlog=4096",
                ],
            )?;
        }
        Ok(())
    }

    pub(crate) fn start_nginx(&mut self, i: usize) -> Result<()> {
        let name = self.lab.real_name(i);
        let dir = self.lab.dir().join(format!("{name}-nginx"));
        fs::create_dir_all(dir.join("tmp"))?;
        let conf = dir.join("nginx.conf");
        fs::write(&conf, nginx_conf(&dir, &name))?;
        let ns = self.lab.real_ns(i).to_string();
        let log = self.lab.log_path(&format!("{name}-nginx.log"));
        let handle = self
            .lab
            .spawn_in(
                &ns,
                &[
                    "taskset",
                    "-c",
                    &self.server_cpu,
                    "nginx",
                    "-p",
                    &dir.to_string_lossy(),
                    "-e",
                    &dir.join("error.log").to_string_lossy(),
                    "-c",
                    &conf.to_string_lossy(),
                ],
                &log,
            )
            .map_err(|e| anyhow!("starting nginx in {ns}: {e}"))?;
        self.nginx[i] = Some(handle);
        wait_for_tcp(
            &ns,
            SocketAddrV4::new(self.lab.real_address(i), HTTP_PORT),
            Duration::from_secs(10),
        )
        .map_err(|e| {
            anyhow!(
                "nginx of {name}: {e}; {}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        })
    }

    /// Kills real server `i`'s nginx with SIGKILL (a crash).
    pub(crate) fn kill_nginx(&mut self, i: usize) -> Result<()> {
        if let Some(handle) = self.nginx[i].take() {
            if let Some(pid) = self.lab.pid(handle) {
                // SAFETY: kill(2) on a child the lab has not reaped.
                unsafe { libc::kill(i32::try_from(pid).unwrap_or(0), libc::SIGKILL) };
            }
            self.lab.kill(handle).map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    }

    pub(crate) fn reals(&self) -> Vec<Ipv4Addr> {
        (0..REALS).map(|i| self.lab.real_address(i)).collect()
    }

    pub(crate) fn vip_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.lab.vip(), HTTP_PORT)
    }

    pub(crate) fn lb_vip(&self, ns: &str, verb: &str) -> Result<()> {
        let vip = format!("{}/32", self.lab.vip());
        run(&["ip", "-n", ns, "addr", verb, &vip, "dev", "eth0"])?;
        Ok(())
    }

    /// A few requests from different sources: the system under test serves.
    pub(crate) fn probe(&self, system: System) -> Result<BTreeMap<String, usize>> {
        let sources: Vec<Ipv4Addr> = (0..PROBE_SOURCES)
            .map(|k| self.lab.client_sources()[(k * 37) % SOURCES])
            .collect();
        let reals = self.reals();
        let vip = self.vip_addr();
        let answers = in_netns(self.lab.client_ns(), move || {
            sources
                .iter()
                .map(|s| {
                    let dst = if system == System::Direct {
                        SocketAddrV4::new(reals[direct_pick(*s, reals.len())], HTTP_PORT)
                    } else {
                        vip
                    };
                    let mut last = Err(String::new());
                    for _ in 0..3 {
                        last = http_get(*s, dst, Duration::from_secs(1));
                        if last.is_ok() {
                            break;
                        }
                    }
                    (*s, last)
                })
                .collect::<Vec<_>>()
        })?;
        let mut share = BTreeMap::new();
        for (s, answer) in answers {
            let server =
                answer.map_err(|e| anyhow!("{} does not serve {s}: {e}", system.name()))?;
            if !server.starts_with("rs") {
                bail!("{} answered {s} with {server:?}", system.name());
            }
            *share.entry(server).or_insert(0) += 1;
        }
        Ok(share)
    }

    pub(crate) fn lbctl(socket: &Path, args: &[&str]) -> Result<String> {
        let out = Command::new(paths::lbctl())
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()
            .context("running lbctl")?;
        output_ok(&out, &format!("lbctl {}", args.join(" ")))
    }

    /// Starts lbd in `ns` with `config` (files under `dir`); waits until it
    /// answers and has every real server's MAC.
    pub(crate) fn start_lbd(&mut self, ns: &str, dir: &Path, config: &str) -> Result<RunningLbd> {
        fs::create_dir_all(dir)?;
        let path = dir.join("lbd.yaml");
        fs::write(&path, config)?;
        let log = dir.join("lbd.log");
        let lbd = paths::lbd();
        let handle = self
            .lab
            .spawn_in(
                ns,
                &[
                    "taskset",
                    "-c",
                    &self.server_cpu,
                    &lbd.to_string_lossy(),
                    "--config",
                    &path.to_string_lossy(),
                ],
                &log,
            )
            .map_err(|e| anyhow!("starting lbd: {e}"))?;
        let running = RunningLbd {
            handle,
            socket: dir.join("lbd.sock"),
            log,
            ns: ns.to_string(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            check_stop()?;
            if let Ok(text) = Self::lbctl(&running.socket, &["status", "--json"]) {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let ready = v["services"].as_array().is_some_and(|ss| {
                    !ss.is_empty()
                        && ss.iter().all(|s| {
                            s["real_servers"]
                                .as_array()
                                .is_some_and(|rs| rs.iter().all(|r| r["mac"].is_string()))
                        })
                });
                if ready {
                    return Ok(running);
                }
            }
            if matches!(self.lab.try_wait(handle), Ok(Some(_))) || Instant::now() >= deadline {
                let log = fs::read_to_string(&running.log).unwrap_or_default();
                let _ = self.lab.kill(handle);
                bail!("lbd in {ns} did not become ready; its log:\n{log}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn stop_lbd(&mut self, lbd: &RunningLbd) {
        if let Err(e) = self.lab.kill(lbd.handle) {
            eprintln!("bench: stopping lbd in {}: {e}", lbd.ns);
        }
        // A stopped lbd removes its kernel-path guard (an nftables table
        // dropping VIP traffic on input); one left behind would silently
        // break HAProxy's runs, so say so and remove it.
        if run_in(&lbd.ns, &["nft", "list", "table", "ip", GUARD_TABLE]).is_ok() {
            eprintln!(
                "bench: lbd left its guard table {GUARD_TABLE} in {}; removing it",
                lbd.ns
            );
            remove_guard(&lbd.ns);
        }
    }
}

fn output_ok(out: &Output, what: &str) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

/// The table of lbd's kernel-path guard for `eth0` (`lb-userspace/src/guard.rs`).
const GUARD_TABLE: &str = "lbd_eth0";

pub(crate) fn remove_guard(ns: &str) {
    let _ = run_in(ns, &["nft", "delete", "table", "ip", GUARD_TABLE]);
}

/// An lbd the bench started.
#[derive(Clone)]
pub(crate) struct RunningLbd {
    pub(crate) handle: ProcHandle,
    pub(crate) socket: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) ns: String,
}
