//! `lbd`'s main loop: owns the state, applies configurations, answers the
//! control socket and metrics scrapes, applies health-check results, follows
//! real-server MAC addresses, handles signals.
//!
//! Start-up order matters: maps are filled before the program is attached,
//! and VIPs are added only once the program forwards, so the first packet
//! to a VIP is already balanced. Shutdown runs the other way. In a pair, the
//! VIPs follow VRRP instead ([`cluster`]).

mod advice;
mod census;
mod cluster;
mod connections;
mod console;
mod derive;
mod ha_thread;
mod nat;
mod neighbours;
mod reexec;
mod relay;
mod requests;
mod status;
mod systemd;
mod takeover;

use census::{census_thread, CensusShared};
use derive::{
    attach_mode, check_targets, config_summary, redirect_specs, secondary_services, vips_to_keep,
    wanted_vips,
};
use neighbours::NEIGHBOUR_POLL;

pub use reexec::{handed_over, was_reexecuted, Exec, HandedOver};
pub use status::format_mac;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use anyhow::Context as _;
use rtnetlink::Handle;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    admin::AdminStore,
    audit::{Actor, AuditLog},
    balancer::{self, Balancer, Health},
    config::{CheckKind, Config, ServiceKind},
    control::{self, protocol::Reply, Pending},
    dataplane::{ArpLease, EbpfMaps, Maps, Program},
    guard::Guard,
    health::{HealthEvent, HealthMonitor},
    limits::{self, Budget, ConnectionGate},
    metrics::{self, Metrics, Scrape},
    neighbour,
    redirect::{Limits as RedirectLimits, Redirects},
    vip::Vips,
};

struct Daemon {
    config_path: PathBuf,
    /// The configuration as the file (or `lbctl apply`) gave it, with the
    /// running `node` and `cluster` sections.
    config: Config,
    program: Program,
    attach_mode: &'static str,
    /// The data path's ARP lease (renewed by the HA thread in a pair).
    arp_lease: Arc<ArpLease>,
    balancer: Balancer<EbpfMaps>,
    admin: AdminStore,
    /// `STATE_DIR/audit.log`: every administrative change.
    audit: AuditLog,
    /// The descriptors lbd's listeners share (the rest is kept for checks,
    /// VRRP, sync and control).
    budget: Arc<Budget>,
    health: HealthMonitor,
    redirects: Redirects,
    guard: Guard,
    metrics: Metrics,
    census: Arc<Mutex<CensusShared>>,
    handle: Handle,
    ifindex: u32,
    vips: Vips,
    prompted: BTreeMap<Ipv4Addr, Instant>,
    /// The configuration file's text (the primary sends it to the secondary).
    config_text: String,
    /// The HA pair, when `cluster:` is configured.
    cluster: Option<cluster::Cluster>,
    /// What SIGUSR2 executes.
    exec: Exec,
    /// The control socket and the metrics listener, handed over on SIGUSR2.
    listeners: Vec<(String, std::os::fd::RawFd)>,
    /// What the lbd this one re-executed handed over of the pair (taken
    /// when the cluster starts).
    handed_over: HandedOver,
    /// Live NAT and SNAT connections per real server, as of the last sweep.
    connections: connections::Connections,
    /// The web console, its charts' data.
    web: console::WebState,
}

/// Runs `lbd` until SIGINT or SIGTERM.
///
/// # Errors
/// When start-up fails; the message says what to fix.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    exec: Exec,
    handed_over: HandedOver,
) -> anyhow::Result<()> {
    let config_text = std::fs::read_to_string(&config_path).unwrap_or_default();
    let mut config = config;
    if let Some(replicated) = secondary_services(&config) {
        log::info!("secondary: serving the primary's configuration kept in the state directory until the primary sends it again");
        config.services = replicated;
    }
    let node = config.node.clone();
    let fd_limit = limits::raise_fd_limit().unwrap_or_else(|error| {
        log::warn!("cannot read the open-file limit: {error}; assuming 1024");
        1024
    });
    let budget = Budget::for_fd_limit(fd_limit);
    log::info!(
        "open-file limit {fd_limit}: listeners may hold {} connections, {} are kept for checks, VRRP, sync and control",
        budget.capacity(),
        limits::RESERVED_FDS
    );
    let handle = neighbour::connect()?;
    let iface = neighbour::interface(&handle, &node.interface).await?;
    takeover::retire_elsewhere(&handle, &node.state_dir, &node.interface).await;
    let (mut program, taking_over) =
        takeover::load_data_path(&handle, iface.index, &node.interface).await?;
    let mut vips = Vips::new(handle.clone(), iface.index, iface.mac, &node.state_dir)?;
    let keep = vips_to_keep(&config, taking_over, &handed_over);
    let leftovers = vips.remove_leftovers(&keep).await?;
    if !leftovers.is_empty() {
        log::warn!("removed VIPs a previous lbd left behind: {leftovers:?}");
    }
    let (admin, warning) = AdminStore::load_or_set_aside(&node.state_dir, &node.name)?;
    if let Some(warning) = warning {
        log::error!("{warning}");
    }

    let maps = program.take_maps()?;
    let conn_table = maps.nat().conn_table();
    let arp_lease = maps.arp_lease();
    if config.cluster.is_none() {
        arp_lease.set(lb_common::ARP_LEASE_FOREVER);
    }
    let scanner: Box<dyn crate::dataplane::CensusRunner> =
        Box::new(program.census(maps.client_counts())?);
    let mut balancer = Balancer::new(maps, iface.mac)?;
    let known_health = if taking_over {
        takeover::take_over(&mut balancer, &admin, &config)?
    } else {
        Vec::new()
    };
    let listener = control::bind(&node.control_socket)?;
    let metrics_listener = metrics::bind(node.metrics_listen).await?;
    let (health_tx, health_rx) = mpsc::channel(1024);

    let stop_sweep = Arc::new(AtomicBool::new(false));
    let connections = connections::Connections::default();
    let sweeper = {
        let (table, shared, stop) = (conn_table, connections.clone(), stop_sweep.clone());
        std::thread::Builder::new()
            .name("conn-sweep".into())
            .spawn(move || connections::sweep_thread(table, shared, stop))
            .context("starting the connection sweeper")?
    };
    let census = Arc::new(Mutex::new(CensusShared::default()));
    if let Ok(mut shared) = census.lock() {
        shared.stream.tracker = census::stream_start(handed_over.handover.as_ref());
    }
    let stop_census = Arc::new(AtomicBool::new(false));
    let census_worker = {
        let (shared, stop) = (census.clone(), stop_census.clone());
        std::thread::Builder::new()
            .name("census".into())
            .spawn(move || census_thread(scanner, shared, stop))
            .context("starting the active-client counter")?
    };

    let mut daemon = Daemon {
        config_path,
        config: config.clone(),
        program,
        attach_mode: "detached",
        arp_lease,
        balancer,
        admin,
        audit: AuditLog::new(&node.state_dir),
        budget: Arc::clone(&budget),
        health: HealthMonitor::new(health_tx),
        redirects: Redirects::with_limits(RedirectLimits::default(), budget),
        guard: Guard::new(&node.interface),
        metrics: Metrics::new()?,
        census,
        handle,
        ifindex: iface.index,
        vips,
        prompted: BTreeMap::new(),
        config_text,
        cluster: None,
        exec,
        listeners: Vec::new(),
        handed_over,
        connections,
        web: console::WebState::default(),
    };
    daemon.health.assume(known_health);
    let result = daemon
        .serve(listener, metrics_listener, health_rx, config)
        .await;
    daemon.shutdown(result.is_ok()).await;
    stop_census.store(true, Ordering::Relaxed);
    stop_sweep.store(true, Ordering::Relaxed);
    let _ = census_worker.join();
    let _ = sweeper.join();
    if let Err(error) = std::fs::remove_file(&node.control_socket) {
        log::warn!("removing {}: {error}", node.control_socket.display());
    }
    result
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    async fn serve(
        &mut self,
        listener: tokio::net::UnixListener,
        metrics_listener: tokio::net::TcpListener,
        mut health_events: mpsc::Receiver<HealthEvent>,
        config: Config,
    ) -> anyhow::Result<()> {
        self.apply_services(&config)?;
        self.advise(&config).await;
        self.resolve_at_start().await;
        self.attach(&config).await?;
        self.attach_server_side(&config).await?;
        let mut ha_actions = match &config.cluster {
            None => {
                let added = self.vips.set(&wanted_vips(&config)).await?;
                self.publish_held_vips(None);
                log::info!("single node: VIPs added: {added:?}");
                let (_, none) = mpsc::channel(1);
                none
            }
            Some(cluster_config) => self.start_cluster(&config, cluster_config).await?,
        };
        // This lbd advertises now (or has nothing to advertise).
        self.handed_over.stop_relay();
        log::info!(
            "serving {} services on {} (XDP {} mode)",
            config.services.len(),
            config.node.interface,
            self.attach_mode
        );

        let (mut web_calls, web_server) = self.start_web().await?;
        self.record_listeners(&listener, &metrics_listener);
        let (tx, mut requests) = mpsc::channel::<Pending>(64);
        let control_gate = ConnectionGate::new(control::CAPS, Arc::clone(&self.budget));
        let server = tokio::spawn(control::serve(listener, tx, control_gate));
        let (scrape_tx, mut scrapes) = mpsc::channel::<Scrape>(16);
        let metrics_gate = ConnectionGate::new(metrics::CAPS, Arc::clone(&self.budget));
        let metrics_server =
            tokio::spawn(metrics::serve(metrics_listener, scrape_tx, metrics_gate));
        let mut history_tick =
            tokio::time::interval(std::time::Duration::from_secs(crate::web::history::STEP_S));
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut usr2 =
            signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?;
        let mut neighbour_tick = tokio::time::interval(NEIGHBOUR_POLL);
        let watchdog_every = systemd::watchdog_every();
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(std::time::Duration::from_secs(3600)));
        systemd::ready();
        loop {
            tokio::select! {
                _ = interrupt.recv() => { log::info!("SIGINT: stopping"); systemd::stopping(); break; }
                _ = terminate.recv() => { log::info!("SIGTERM: stopping"); systemd::stopping(); break; }
                _ = hangup.recv() => {
                    systemd::reloading();
                    self.reload().await;
                    systemd::ready();
                }
                _ = usr2.recv() => self.reexecute().await,
                Some((request, caller, reply)) = requests.recv() => {
                    let actor = caller.map_or_else(|| Actor::Lbctl("unknown user".into()), Actor::lbctl_user);
                    let answer = match self.handle_request(request, &actor).await {
                        Ok(answer) => Reply::ok(answer),
                        Err(message) => Reply::error(message),
                    };
                    let _ = reply.send(answer);
                }
                Some(event) = health_events.recv() => self.on_health(&event),
                Some(call) = web_calls.recv() => self.on_web_call(call).await,
                _ = history_tick.tick() => self.sample_history(),
                Some(scrape) = scrapes.recv() => {
                    let text = self.metrics.render(&self.snapshot()).unwrap_or_else(|e| format!("# {e}\n"));
                    let _ = scrape.send(text);
                }
                Some(action) = ha_actions.recv() => self.carry_out(action).await,
                _ = neighbour_tick.tick() => self.follow_neighbours().await,
                _ = watchdog.tick(), if watchdog_every.is_some() => systemd::watchdog(),
            }
        }
        server.abort();
        metrics_server.abort();
        if let Some(web_server) = web_server {
            web_server.abort();
        }
        self.stop_cluster(&mut ha_actions).await;
        Ok(())
    }

    /// Starts this member of the pair (going on from what a re-executed lbd
    /// handed over); returns the coordinator's actions.
    async fn start_cluster(
        &mut self,
        config: &Config,
        cluster_config: &crate::config::Cluster,
    ) -> anyhow::Result<mpsc::Receiver<crate::ha::HaAction>> {
        let local = self.vips.primary_address().await?.ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no IPv4 address of its own: VRRP needs one to send advertisements from",
                config.node.interface
            )
        })?;
        let vips: Vec<Ipv4Addr> = wanted_vips(config).into_iter().collect();
        // Held VIPs a crashed master left in the data path go (a
        // re-executed master's stay).
        self.publish_held_vips(None);
        let place = ha_thread::SocketPlace {
            interface: config.node.interface.clone(),
            ifindex: self.ifindex,
            local,
            unicast: cluster_config.peer.is_some(),
        };
        let (c, actions) = cluster::start(
            config,
            cluster_config,
            place,
            vips,
            Arc::clone(&self.arp_lease),
            self.handed_over.handover.as_ref(),
        )
        .await?;
        self.cluster = Some(c);
        Ok(actions)
    }

    /// Tells the data path which VIPs to answer ARP for: those held now,
    /// and of those only the ones in `keep` if given (before VIPs are
    /// removed, so that none is answered for after it has gone).
    fn publish_held_vips(&mut self, keep: Option<&BTreeSet<Ipv4Addr>>) {
        let held: BTreeSet<Ipv4Addr> = match keep {
            Some(keep) => self.vips.owned().intersection(keep).copied().collect(),
            None => self.vips.owned().clone(),
        };
        if let Err(error) = self.balancer.maps_mut().set_held_vips(&held) {
            log::error!("the data path will not answer ARP for the VIPs: {error}");
        }
    }

    /// Stops. `clean`: asked to (SIGTERM, SIGINT), so the data path is
    /// detached and the VIPs removed; else lbd stops on an error, and the
    /// data path goes on forwarding with its last state until the next lbd
    /// takes it over.
    async fn shutdown(&mut self, clean: bool) {
        self.health.shutdown();
        self.redirects.shutdown();
        if !clean {
            log::error!(
                "lbd stops on an error: the data path on {} keeps forwarding with its last \
                 state, and the next lbd started takes it over",
                self.config.node.interface
            );
            return;
        }
        self.publish_held_vips(Some(&BTreeSet::new()));
        if let Err(error) = self
            .program
            .detach(&self.handle, &self.config.node.interface)
            .await
        {
            log::error!("{error}");
        }
        if let Err(error) = self.vips.remove_all().await {
            log::error!("removing VIPs at shutdown: {error}");
        }
        if let Err(error) = self.guard.remove() {
            log::warn!("removing the guard table {}: {error}", self.guard.table());
        }
        log::info!("stopped: XDP program detached, VIPs removed");
    }

    /// Applies a file configuration's services (with the recorded lbctl
    /// changes) to the data path and the health checks.
    fn apply_services(&mut self, config: &Config) -> anyhow::Result<()> {
        let effective = self.admin.effective(config);
        self.prepare_nat(&effective)?;
        // Listeners first: binding is the step that can fail on a valid file
        // (a port taken by another program), and it changes nothing if it does.
        self.redirects.set(redirect_specs(&effective))?;
        self.balancer.apply(&effective)?;
        match self.admin.adopt(config) {
            Ok(dropped) => {
                for (service, server) in dropped {
                    self.audit.record(
                        &Actor::Reload,
                        &format!("{service}/{server}: the lbctl weight gives way to the file's"),
                        &serde_json::Value::Null,
                        &serde_json::Value::Null,
                    );
                }
            }
            Err(error) => log::warn!("{error}"),
        }
        let forwarded: Vec<_> = effective
            .services
            .iter()
            .filter(|s| matches!(s.kind, ServiceKind::Forward(_)))
            .map(|s| (s.vip, s.port, s.protocol))
            .collect();
        let vips: Vec<Ipv4Addr> = wanted_vips(&effective).into_iter().collect();
        if let Err(error) = self.guard.set(&forwarded, &vips) {
            log::warn!("{error}");
        }
        self.health.update(check_targets(&effective));
        for service in &effective.services {
            let ServiceKind::Forward(f) = &service.kind else {
                continue;
            };
            for rs in &f.real_servers {
                if f.health_check.kind == CheckKind::None {
                    let _ = self
                        .balancer
                        .set_health(&service.name, &rs.name, Health::Up);
                }
                // A server lbd already knows keeps its state across applies,
                // except where an lbctl change (here or from the peer) says
                // otherwise: that one always wins.
                if self
                    .admin
                    .get(&service.name, &rs.name)
                    .and_then(|o| o.state.as_ref())
                    .is_some()
                {
                    self.balancer
                        .set_admin_state(&service.name, &rs.name, rs.state)?;
                }
            }
        }
        self.publish_census_key();
        Ok(())
    }

    fn on_health(&mut self, event: &HealthEvent) {
        self.metrics
            .observe_check(&event.service, &event.server, event.result.latency);
        if event.changed {
            let word = if event.health == Health::Up {
                "up"
            } else {
                "down"
            };
            log::warn!(
                "{}/{}: health {word} ({})",
                event.service,
                event.server,
                event.result.detail
            );
            self.mark_health(
                &event.service,
                &event.server,
                event.health == Health::Up,
                &event.result.detail,
            );
        }
        match self
            .balancer
            .set_health(&event.service, &event.server, event.health)
        {
            Ok(()) => self.publish_census_key(),
            // A result for a server a reload just removed.
            Err(
                balancer::BalancerError::UnknownServer { .. }
                | balancer::BalancerError::UnknownService(_),
            ) => {}
            Err(error) => log::error!("{error}"),
        }
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
            Ok(mut next) => {
                if let Some(replicated) = secondary_services(&next) {
                    log::info!("SIGHUP on the secondary: services stay those of the primary");
                    next.services = replicated;
                }
                let text = std::fs::read_to_string(&self.config_path).unwrap_or_default();
                let before = config_summary(&self.config_text);
                let previous = self.config.clone();
                match self.apply(next).await {
                    Ok(note) => {
                        let after = config_summary(&text);
                        self.config_text = text;
                        self.replicate_config();
                        log::info!("SIGHUP: configuration reloaded{note}");
                        if before != after {
                            self.audit.record(
                                &Actor::Reload,
                                &format!("reload {} (SIGHUP)", self.config_path.display()),
                                &before,
                                &after,
                            );
                        }
                    }
                    Err(error) => {
                        // All or nothing, as `lbctl apply`: a step that
                        // failed may have left part of the new one.
                        self.restore(previous).await;
                        log::error!(
                            "SIGHUP: applying the configuration failed: {error:#}; \
                             the configuration in force before is applied again"
                        );
                    }
                }
            }
        }
    }

    /// Applies `previous` again after a configuration failed to apply or
    /// to be saved (a step that failed may have left part of the new one).
    async fn restore(&mut self, previous: Config) {
        if let Err(error) = self.apply(previous).await {
            log::error!(
                "restoring the configuration in force before failed too: {error:#}; \
                 check `lbctl status` and reload (SIGHUP)"
            );
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
        let mut next = next;
        next.node = self.config.node.clone();
        next.cluster = self.config.cluster.clone();
        self.enable_routing(&next)?;
        self.apply_services(&next)?;
        self.advise(&next).await;
        if let Some(Err(error)) = self.vips_changed(wanted_vips(&next).into_iter().collect()) {
            log::error!("VRRP: {error}; advertisements keep the previous VIPs");
        }
        if self.holds_vips() {
            let wanted = wanted_vips(&next);
            // A VIP given up is answered no longer before it leaves.
            self.publish_held_vips(Some(&wanted));
            self.vips.set(&wanted).await?;
            self.publish_held_vips(None);
        }
        self.config = next;
        self.follow_neighbours().await;
        Ok(note)
    }
}
