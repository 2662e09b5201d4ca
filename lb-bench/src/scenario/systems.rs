//! Starting and stopping each compared system in the lab: direct, bare DR
//! (`bench-bare-dr` loaded and attached here), lbd, nftables, `HAProxy`.

use std::{fs, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_tests::lab::{in_netns, run_in, wait_for_tcp, ProcHandle};

use crate::{
    cpu::attached_xdp_id,
    lab::{
        files::{haproxy_conf, lbd_config, nft_rules},
        BenchLab, RunningLbd,
    },
    options::System,
    HTTP_PORT, REALS,
};

/// The system currently carrying traffic, and what its teardown needs.
pub(crate) enum Active {
    Direct,
    BareDr {
        ebpf: Ebpf,
        prog_id: u32,
    },
    Lbd {
        lbd: RunningLbd,
        prog_id: u32,
        pid: u32,
        /// `Lbd`, `LbdSnat` or `LbdNat`: what to undo afterwards (the
        /// servers' routes to the clients, the host's port range).
        system: System,
    },
    Nftables,
    Haproxy {
        handle: ProcHandle,
        pid: u32,
    },
}

/// Loads `bench-bare-dr` with the lab's VIP, port and MACs patched in.
pub(crate) fn load_bare_dr(
    obj: &Path,
    vip: Ipv4Addr,
    lb_mac: [u8; 6],
    macs: &[[u8; 6]],
) -> Result<Ebpf> {
    let vip_ne = u32::from_ne_bytes(vip.octets());
    let port_ne = u16::from_ne_bytes(HTTP_PORT.to_be_bytes());
    let count = u32::try_from(macs.len()).unwrap_or(0);
    let mut table = [[0_u8; 6]; 8];
    for (slot, mac) in table.iter_mut().zip(macs) {
        *slot = *mac;
    }
    let bytes = fs::read(obj)
        .with_context(|| format!("reading {} (run `cargo xtask build-ebpf`)", obj.display()))?;
    let mut ebpf = EbpfLoader::new()
        .override_global("VIP", &vip_ne, true)
        .override_global("PORT", &port_ne, true)
        .override_global("REAL_COUNT", &count, true)
        .override_global("REAL_MACS", &table, true)
        .override_global("LB_MAC", &lb_mac, true)
        .load(&bytes)
        .context("loading bench-bare-dr")?;
    let prog: &mut Xdp = ebpf
        .program_mut("bench_bare_dr")
        .ok_or_else(|| anyhow!("bench-bare-dr has no program bench_bare_dr"))?
        .try_into()?;
    prog.load().context("verifying bench-bare-dr")?;
    Ok(ebpf)
}

/// The load balancer's ephemeral ports as `tune` sets them, and while lbd
/// runs SNAT (which takes the ports below).
const TUNED_PORT_RANGE: &str = "1024 65535";
const SNAT_RUN_PORT_RANGE: &str = "32768 65535";

impl BenchLab {
    fn lb_port_range(&self, ns: &str, range: &str) -> Result<()> {
        let setting = format!("net.ipv4.ip_local_port_range={range}");
        run_in(ns, &["sysctl", "-q", "-w", &setting])?;
        Ok(())
    }

    /// Routes the client sources' subnets from every real server through
    /// `gateway` (the load balancer for NAT, whose servers answer through
    /// it; else the client host, as the lab builds it).
    fn route_sources_via(&self, gateway: &str) -> Result<()> {
        for i in 0..REALS {
            for net in lb_tests::lab::SOURCE_NETS {
                run_in(
                    self.lab.real_ns(i),
                    &["ip", "route", "replace", net, "via", gateway],
                )?;
            }
        }
        Ok(())
    }

    pub(crate) fn start_system(&mut self, system: System) -> Result<Active> {
        let lb = self.lab.lb_ns().to_string();
        match system {
            System::Direct => Ok(Active::Direct),
            System::BareDr => {
                self.lb_vip(&lb, "add")?;
                let macs: Vec<[u8; 6]> = (0..REALS).map(|i| self.lab.real_mac(i)).collect();
                let obj = self.bare_dr_obj.clone();
                let (vip, lb_mac) = (self.lab.vip(), self.lab.lb_mac());
                let ebpf = in_netns(&lb, move || -> Result<Ebpf> {
                    let mut ebpf = load_bare_dr(&obj, vip, lb_mac, &macs)?;
                    let prog: &mut Xdp = ebpf
                        .program_mut("bench_bare_dr")
                        .ok_or_else(|| anyhow!("no program"))?
                        .try_into()?;
                    prog.attach("eth0", XdpMode::Driver)
                        .context("attaching bench-bare-dr to eth0")?;
                    Ok(ebpf)
                })??;
                let prog_id = attached_xdp_id(&lb, "eth0")?;
                Ok(Active::BareDr { ebpf, prog_id })
            }
            System::Lbd | System::LbdSnat | System::LbdNat => {
                let (dir, forwarding) = match system {
                    System::LbdSnat => ("lbd-snat", "snat"),
                    System::LbdNat => ("lbd-nat", "nat"),
                    _ => ("lbd-traffic", "dr"),
                };
                let dir = self.lab.dir().join(dir);
                let config = lbd_config(&dir, "bench", &self.lab, "{ type: none }", "").replace(
                    "    persistence:",
                    &format!("    forwarding: {forwarding}\n    persistence:"),
                );
                if system == System::LbdNat {
                    self.route_sources_via(&self.lab.lb_address().to_string())?;
                }
                if system == System::LbdSnat {
                    // SNAT takes its ports outside the host's own range,
                    // which `tune` opened to all of them.
                    self.lb_port_range(&lb, SNAT_RUN_PORT_RANGE)?;
                }
                let lbd = self.start_lbd(&lb, &dir, &config)?;
                let prog_id = attached_xdp_id(&lb, "eth0")?;
                let pid = self.lab.pid(lbd.handle).unwrap_or(0);
                Ok(Active::Lbd {
                    lbd,
                    prog_id,
                    pid,
                    system,
                })
            }
            System::Nftables => {
                run_in(&lb, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
                self.lb_vip(&lb, "add")?;
                let rules = self.lab.dir().join("bench.nft");
                fs::write(&rules, nft_rules(self.lab.vip(), &self.reals()))?;
                run_in(&lb, &["nft", "-f", &rules.to_string_lossy()])?;
                Ok(Active::Nftables)
            }
            System::Haproxy => {
                self.lb_vip(&lb, "add")?;
                let dir = self.lab.dir().join("haproxy");
                fs::create_dir_all(&dir)?;
                let conf = dir.join("haproxy.cfg");
                fs::write(&conf, haproxy_conf(&dir, self.lab.vip(), &self.reals()))?;
                let log = self.lab.log_path("haproxy.log");
                let handle = self
                    .lab
                    .spawn_in(
                        &lb,
                        &[
                            "taskset",
                            "-c",
                            &self.server_cpu,
                            "haproxy",
                            "-db",
                            "-f",
                            &conf.to_string_lossy(),
                        ],
                        &log,
                    )
                    .map_err(|e| anyhow!("starting haproxy: {e}"))?;
                wait_for_tcp(&lb, self.vip_addr(), Duration::from_secs(10)).map_err(|e| {
                    anyhow!(
                        "haproxy: {e}; {}",
                        fs::read_to_string(&log).unwrap_or_default()
                    )
                })?;
                let pid = self.lab.pid(handle).unwrap_or(0);
                Ok(Active::Haproxy { handle, pid })
            }
        }
    }

    pub(crate) fn stop_system(&mut self, active: Active) -> Result<()> {
        let lb = self.lab.lb_ns().to_string();
        match active {
            Active::Direct => {}
            Active::BareDr { ebpf, .. } => {
                drop(ebpf);
                self.lb_vip(&lb, "del")?;
            }
            Active::Lbd { lbd, system, .. } => {
                self.stop_lbd(&lbd);
                match system {
                    System::LbdNat => {
                        self.route_sources_via(&self.lab.client_address().to_string())?;
                    }
                    System::LbdSnat => self.lb_port_range(&lb, TUNED_PORT_RANGE)?,
                    _ => {}
                }
            }
            Active::Nftables => {
                run_in(&lb, &["nft", "delete", "table", "ip", "lbbench"])?;
                self.lb_vip(&lb, "del")?;
                run_in(&lb, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])?;
            }
            Active::Haproxy { handle, .. } => {
                self.lab.kill(handle).map_err(|e| anyhow!("{e}"))?;
                self.lb_vip(&lb, "del")?;
            }
        }
        Ok(())
    }
}
