//! `lbd`'s main loop: owns the state, applies configurations, answers the
//! control socket, follows real-server MAC addresses, handles signals.
//!
//! Start-up order matters: maps are filled before the program is attached,
//! and VIPs are added only once the program forwards, so the first packet
//! to a VIP is already balanced. Shutdown runs the other way.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lb_common::Reason;
use rtnetlink::Handle;
use serde_json::{json, Value};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    balancer::{self, Balancer, Health},
    config::{AdminState, Config, ServiceKind, XdpMode},
    control::{self, Pending, Reply, Request},
    dataplane::{AttachMode, EbpfMaps, Program},
    monotonic_ns, neighbour,
    vip::Vips,
};

/// How long start-up waits for real-server MACs before serving anyway.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);
/// How often the neighbour table is read.
const NEIGHBOUR_POLL: Duration = Duration::from_secs(1);
/// How often an unresolved address is asked for again.
const PROMPT_EVERY: Duration = Duration::from_secs(2);

struct Daemon {
    config_path: PathBuf,
    config: Config,
    program: Program,
    attach_mode: &'static str,
    balancer: Balancer<EbpfMaps>,
    handle: Handle,
    ifindex: u32,
    vips: Vips,
    prompted: BTreeMap<Ipv4Addr, Instant>,
}

fn attach_mode(mode: XdpMode) -> AttachMode {
    match mode {
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
        XdpMode::Auto => AttachMode::Auto,
    }
}

/// Every VIP of the configuration (forwarding and redirect services).
fn wanted_vips(config: &Config) -> BTreeSet<Ipv4Addr> {
    config.services.iter().map(|s| s.vip).collect()
}

/// Runs `lbd` until SIGINT or SIGTERM.
///
/// # Errors
/// When start-up fails; the message says what to fix.
pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let node = config.node.clone();
    let handle = neighbour::connect()?;
    let iface = neighbour::interface(&handle, &node.interface).await?;
    let mut vips = Vips::new(handle.clone(), iface.index, iface.mac, &node.state_dir)?;
    let leftovers = vips.remove_leftovers().await?;
    if !leftovers.is_empty() {
        log::warn!("removed VIPs a previous lbd left behind: {leftovers:?}");
    }

    let mut program = Program::load()?;
    let maps = program.take_maps()?;
    let balancer = Balancer::new(maps, iface.mac)?;
    let listener = control::bind(&node.control_socket)?;
    let mut daemon = Daemon {
        config_path,
        config: config.clone(),
        program,
        attach_mode: "detached",
        balancer,
        handle,
        ifindex: iface.index,
        vips,
        prompted: BTreeMap::new(),
    };
    let result = daemon.serve(listener, &config).await;
    daemon.shutdown().await;
    if let Err(error) = std::fs::remove_file(&node.control_socket) {
        log::warn!("removing {}: {error}", node.control_socket.display());
    }
    result
}

impl Daemon {
    async fn serve(
        &mut self,
        listener: tokio::net::UnixListener,
        config: &Config,
    ) -> anyhow::Result<()> {
        self.balancer.apply(config)?;
        self.resolve_at_start().await;
        self.attach_mode = self
            .program
            .attach(&config.node.interface, attach_mode(config.node.xdp_mode))?;
        let added = self.vips.set(&wanted_vips(config)).await?;
        log::info!(
            "serving {} services on {} (XDP {} mode); VIPs added: {added:?}",
            config.services.len(),
            config.node.interface,
            self.attach_mode
        );

        let (tx, mut requests) = mpsc::channel::<Pending>(64);
        let server = tokio::spawn(control::serve(listener, tx));
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut neighbour_tick = tokio::time::interval(NEIGHBOUR_POLL);
        loop {
            tokio::select! {
                _ = interrupt.recv() => { log::info!("SIGINT: stopping"); break; }
                _ = terminate.recv() => { log::info!("SIGTERM: stopping"); break; }
                _ = hangup.recv() => self.reload().await,
                Some((request, reply)) = requests.recv() => {
                    let answer = self.handle_request(request).await;
                    let _ = reply.send(answer);
                }
                _ = neighbour_tick.tick() => self.follow_neighbours().await,
            }
        }
        server.abort();
        Ok(())
    }

    async fn shutdown(&mut self) {
        self.program.detach();
        if let Err(error) = self.vips.remove_all().await {
            log::error!("removing VIPs at shutdown: {error}");
        }
        log::info!("stopped: XDP program detached, VIPs removed");
    }

    /// SIGHUP: reads the file again and applies it, or changes nothing.
    async fn reload(&mut self) {
        match Config::load(&self.config_path) {
            Err(errors) => {
                log::error!("SIGHUP: the configuration is invalid; nothing changed:");
                for error in &errors.0 {
                    log::error!("{error}");
                }
            }
            Ok(next) => match self.apply(next).await {
                Ok(note) => log::info!("SIGHUP: configuration reloaded{note}"),
                Err(error) => log::error!("SIGHUP: applying the configuration failed: {error:#}"),
            },
        }
    }

    /// Applies a validated configuration's services; `node` and `cluster`
    /// changes wait for a restart (the returned note says so).
    async fn apply(&mut self, next: Config) -> anyhow::Result<String> {
        let mut note = String::new();
        if next.node != self.config.node || next.cluster != self.config.cluster {
            note = "; node and cluster changes take effect when lbd restarts".into();
            log::warn!("the configuration changes node or cluster settings: they take effect when lbd restarts");
        }
        let mut effective = next;
        effective.node = self.config.node.clone();
        effective.cluster = self.config.cluster.clone();
        self.balancer.apply(&effective)?;
        self.vips.set(&wanted_vips(&effective)).await?;
        self.config = effective;
        self.follow_neighbours().await;
        Ok(note)
    }

    /// Asks for every real server's MAC and waits (bounded) for the answers.
    async fn resolve_at_start(&mut self) {
        let deadline = Instant::now() + RESOLVE_WAIT;
        loop {
            self.follow_neighbours().await;
            if self.balancer.unresolved().is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let missing = self.balancer.unresolved();
        if !missing.is_empty() {
            log::warn!(
                "no MAC address yet for {missing:?}: frames for them are dropped until they \
                 answer ARP (are they up, and on the same network as {}?)",
                self.config.node.interface
            );
        }
    }

    /// Reads the neighbour table; records new or changed MACs; asks the
    /// kernel to resolve what is missing.
    async fn follow_neighbours(&mut self) {
        let table = match neighbour::table(&self.handle, self.ifindex).await {
            Ok(table) => table,
            Err(error) => {
                log::warn!("{error}");
                return;
            }
        };
        for address in self.balancer.addresses() {
            if let Some(mac) = table.get(&address) {
                match self.balancer.set_mac(address, Some(*mac)) {
                    Ok(true) => log::info!("real server {address} is at {}", format_mac(*mac)),
                    Ok(false) => {}
                    Err(error) => log::error!("{error}"),
                }
                continue;
            }
            let due = self
                .prompted
                .get(&address)
                .is_none_or(|at| at.elapsed() >= PROMPT_EVERY);
            if due {
                self.prompted.insert(address, Instant::now());
                if let Err(error) = neighbour::prompt(&self.handle, self.ifindex, address).await {
                    log::warn!("{error}");
                }
            }
        }
    }

    async fn handle_request(&mut self, request: Request) -> Reply {
        match request {
            Request::Status => self
                .status()
                .map_or_else(|e| Reply::error(format!("{e:#}")), Reply::ok),
            Request::SetState {
                service,
                server,
                state,
            } => {
                let Ok(admin) = AdminState::from_str(&state) else {
                    return Reply::error(format!(
                        "unknown state {state:?}: use online, drain or halt"
                    ));
                };
                match self.balancer.set_admin_state(&service, &server, admin) {
                    Ok(()) => {
                        log::info!("{service}/{server}: admin state {admin}");
                        Reply::ok(
                            json!({"service": service, "server": server, "admin_state": admin.to_string()}),
                        )
                    }
                    Err(e) => Reply::error(e.to_string()),
                }
            }
            Request::Weight {
                service,
                server,
                weight,
            } => match self.balancer.set_weight(&service, &server, weight) {
                Ok(()) => {
                    log::info!("{service}/{server}: weight {weight}");
                    Reply::ok(json!({"service": service, "server": server, "weight": weight}))
                }
                Err(e) => Reply::error(e.to_string()),
            },
            Request::Apply { file, text } => self.apply_request(&file, &text).await,
            Request::Affinity { service, client } => {
                let Ok(address) = Ipv4Addr::from_str(client.trim()) else {
                    return Reply::error(format!("{client:?} is not an IPv4 address"));
                };
                match self.balancer.affinity_of(&service, address, monotonic_ns()) {
                    Ok(a) => Reply::ok(json!({
                        "service": service, "client": address.to_string(),
                        "server": a.server, "source": a.source, "age_s": a.age_s,
                    })),
                    Err(e) => Reply::error(e.to_string()),
                }
            }
            Request::Plan { file, text } => match Config::from_yaml(&text, &file) {
                Err(errors) => Reply::error(errors.to_string()),
                Ok(next) => {
                    let services: Vec<Value> = balancer::plan(&self.balancer, &next)
                        .into_iter()
                        .map(|(name, share)| json!({"name": name, "moved_share": share}))
                        .collect();
                    Reply::ok(json!({"services": services}))
                }
            },
            Request::Ha => Reply::ok(json!({
                "role": "standalone", "state": "standalone", "peer": null,
                "last_advert_age_ms": null,
                "sync": {"connected": false, "sent": 0, "received": 0, "lag_ms": null},
            })),
        }
    }

    /// `lbctl apply`: validate, write the file lbd was started with (so a
    /// restart or SIGHUP keeps it), then apply.
    async fn apply_request(&mut self, file: &str, text: &str) -> Reply {
        let next = match Config::from_yaml(text, file) {
            Ok(next) => next,
            Err(errors) => return Reply::error(errors.to_string()),
        };
        if let Err(error) = write_atomically(&self.config_path, text) {
            return Reply::error(format!(
                "cannot save the configuration to {}: {error}; nothing changed",
                self.config_path.display()
            ));
        }
        match self.apply(next).await {
            Ok(note) => {
                log::info!("configuration applied from {file}{note}");
                Reply::ok(json!({"applied": true, "note": note.trim_start_matches("; ")}))
            }
            Err(error) => Reply::error(format!("applying failed: {error:#}")),
        }
    }

    fn status(&self) -> anyhow::Result<Value> {
        let active = self.balancer.active_clients(monotonic_ns())?;
        let mut services = Vec::new();
        for service in &self.config.services {
            let base = json!({
                "name": service.name,
                "vip": service.vip.to_string(),
                "port": service.port,
                "protocol": service.protocol.to_string(),
            });
            let Value::Object(mut entry) = base else {
                continue;
            };
            match &service.kind {
                ServiceKind::Redirect(r) => {
                    entry.insert("type".into(), json!("redirect"));
                    entry.insert(
                        "redirect".into(),
                        json!({"code": r.code, "scheme": r.scheme, "port": r.port}),
                    );
                    entry.insert("packets".into(), json!(0));
                    entry.insert("bytes".into(), json!(0));
                    entry.insert("real_servers".into(), json!([]));
                }
                ServiceKind::Forward(_) => {
                    let state = self.balancer.service(&service.name)?;
                    let counters = self.balancer.service_counters(state)?;
                    entry.insert("type".into(), json!("forward"));
                    entry.insert("packets".into(), json!(counters.packets));
                    entry.insert("bytes".into(), json!(counters.bytes));
                    entry.insert("new_clients".into(), json!(counters.new_clients));
                    let mut reals = Vec::new();
                    for r in &state.reals {
                        let c = self.balancer.real_counters(r)?;
                        reals.push(json!({
                            "name": r.name,
                            "address": r.address.to_string(),
                            "health": if r.health == Health::Up { "up" } else { "down" },
                            "admin_state": r.admin.to_string(),
                            "weight": r.weight,
                            "active_clients": active.get(&r.index).copied().unwrap_or(0),
                            "packets": c.packets,
                            "bytes": c.bytes,
                            "new_clients": c.new_clients,
                            "mac": r.mac.map(format_mac),
                        }));
                    }
                    entry.insert("real_servers".into(), Value::Array(reals));
                    if let Some(f) = &state.fallback {
                        let c = self.balancer.real_counters(f)?;
                        entry.insert("fallback".into(), json!({
                            "address": f.address.to_string(), "packets": c.packets, "bytes": c.bytes,
                        }));
                    }
                }
            }
            services.push(Value::Object(entry));
        }
        let reasons: serde_json::Map<String, Value> = Reason::ALL
            .iter()
            .zip(self.balancer.reasons()?)
            .map(|(reason, count)| (reason.name().to_owned(), json!(count)))
            .collect();
        Ok(json!({
            "node": self.config.node.name,
            "ha": {"state": "standalone"},
            "interface": self.config.node.interface,
            "xdp_mode": self.attach_mode,
            "vips": self.vips.owned().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "services": services,
            "dataplane": reasons,
        }))
    }
}

/// `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("lbd-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
