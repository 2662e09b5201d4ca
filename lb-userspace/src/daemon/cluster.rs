//! The HA pair's I/O shell: carries out what the [`Coordinator`] asks for
//! (VIPs, gratuitous ARP, messages to the peer, replicated configuration,
//! admin changes and sessions) and tells it of local changes. The
//! coordinator and the VRRP socket run on their own thread
//! ([`super::ha_thread`]); the policy lives in [`crate::ha::coordinator`];
//! nothing here decides.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use tokio::sync::mpsc;

use super::Daemon;
use crate::{
    audit::Actor,
    config::{self, Config},
    control::protocol::HaStatus,
    ha::{Coordinator, HaAction, Handover, Outgoing, Settings, StreamStep},
    monotonic_ns, state_file,
    sync::{self, LinkConfig, LinkEvent, LinkStats, Local, Message, SyncKey},
    vrrp,
};

use super::ha_thread::{HaThread, SocketPlace};

/// The sync link as the daemon holds it.
struct Link {
    outgoing: sync::Outbox,
    stats: Arc<LinkStats>,
    peer: SocketAddrV4,
}

/// One node of the pair: the coordinator on its thread, and the sync link.
pub(super) struct Cluster {
    pub(super) ha: HaThread,
    link: Option<Link>,
    /// This process's id on the sync link (kept across a re-execution).
    boot_id: u64,
}

/// Bytes of sessions waiting for the peer above which the stream waits.
const STREAM_BACKLOG: usize = 16 << 20;

/// The file the secondary keeps the primary's configuration in.
pub(super) fn replicated_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("replicated.yaml")
}

/// Opens the sync link and starts the coordinator on its thread, with the
/// VRRP socket, going on from `handover` when lbd was re-executed. Returns
/// the actions the daemon must carry out.
pub(super) async fn start(
    config: &Config,
    cluster: &config::Cluster,
    place: SocketPlace,
    vips: Vec<Ipv4Addr>,
    arp_lease: std::sync::Arc<crate::dataplane::ArpLease>,
    handover: Option<&Handover>,
) -> anyhow::Result<(Cluster, mpsc::Receiver<HaAction>)> {
    let boot_id = handover.map_or_else(
        || getrandom::u64().unwrap_or_else(|_| monotonic_ns()),
        |h| h.boot_id,
    );
    let (link, sync_rx) = start_sync(config, cluster, boot_id).await?;
    let local = place.local;

    let vrrp_config = vrrp::Config {
        vrid: cluster.vrid,
        priority: cluster.priority,
        advert_interval_cs: u16::try_from(cluster.advert_interval_ms / 10)
            .unwrap_or(vrrp::MAX_ADVERT_INTERVAL_CS),
        preempt: cluster.preempt,
        addresses: vips,
        local,
        peer: cluster.peer,
    };
    vrrp_config.validate()?;
    let settings = Settings {
        role: cluster.role,
        vrrp: vrrp_config,
        sync: link.is_some(),
    };
    let coordinator = match handover {
        Some(h) => Coordinator::resume(Instant::now(), settings, &h.coordinator),
        None => Coordinator::new(Instant::now(), settings),
    };
    let held = coordinator.preempt_held();
    let resumed_master = coordinator.is_master();
    // Lapsed until this node advertises as master; then three intervals
    // ahead, when the peer would take over from a silent master. A master
    // re-executed keeps the lease its relay renewed.
    if !resumed_master {
        arp_lease.set(1);
    }
    let lease = super::ha_thread::Lease {
        memory: arp_lease,
        span: std::time::Duration::from_millis(u64::from(cluster.advert_interval_ms) * 3),
    };
    let (ha, actions) = HaThread::start(coordinator, place, lease, sync_rx)?;
    log::info!(
        "cluster: VRRP vrid {} from {local} to {}, priority {}{}",
        cluster.vrid,
        cluster
            .peer
            .map_or_else(|| "224.0.0.18".to_owned(), |p| p.to_string()),
        cluster.priority,
        if resumed_master {
            " (re-executed master: goes on as master)"
        } else if held {
            " (held at 1 until the peer's session table arrives)"
        } else {
            ""
        }
    );
    Ok((Cluster { ha, link, boot_id }, actions))
}

/// Opens the sync link when `cluster.sync` is configured.
async fn start_sync(
    config: &Config,
    cluster: &config::Cluster,
    boot_id: u64,
) -> anyhow::Result<(Option<Link>, mpsc::Receiver<LinkEvent>)> {
    let (sync_tx, sync_rx) = mpsc::channel(1024);
    let Some(s) = &cluster.sync else {
        // Keep the sender so the channel stays open (and silent).
        std::mem::forget(sync_tx);
        return Ok((None, sync_rx));
    };
    let key = config::check_key_file(&s.key_file)
        .map_err(|m| anyhow::anyhow!("cluster.sync.key_file: {m}"))?;
    let key = SyncKey::new(&key).map_err(|e| anyhow::anyhow!("cluster.sync.key_file: {e}"))?;
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the sync peer on {} (cluster.sync.listen)",
                s.listen
            )
        })?;
    let (out_tx, out_rx) = sync::outbox();
    let stats = Arc::new(LinkStats::default());
    let link = LinkConfig {
        listen: s.listen,
        peer: s.peer,
        key,
        local: Local {
            node: config.node.name.clone(),
            role: cluster.role,
            boot_id,
        },
    };
    let link_stats = stats.clone();
    tokio::spawn(async move {
        if let Err(error) = sync::run(listener, link, out_rx, sync_tx, link_stats).await {
            log::error!("sync: {error}");
        }
    });
    Ok((
        Some(Link {
            outgoing: out_tx,
            stats,
            peer: s.peer,
        }),
        sync_rx,
    ))
}

impl Daemon {
    /// Whether this node holds the VIPs: a single node always, a pair's master.
    pub(super) fn holds_vips(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| c.ha.read(Coordinator::is_master))
    }

    /// Runs `f` on the coordinator, if this node is one of a pair.
    fn ha<R>(&self, f: impl FnOnce(&mut Coordinator, Instant) -> R) -> Option<R> {
        self.cluster.as_ref().map(|c| c.ha.with(f))
    }

    /// At shutdown: a master says priority 0 so the peer takes over at once;
    /// the VIPs go; the VRRP thread stops.
    pub(super) async fn stop_cluster(&mut self, actions: &mut mpsc::Receiver<HaAction>) {
        self.ha(Coordinator::shutdown);
        while let Ok(action) = actions.try_recv() {
            self.carry_out(action).await;
        }
        if let Some(c) = self.cluster.as_mut() {
            c.ha.stop();
        }
    }

    /// The primary's configuration changed: the peer gets it.
    pub(super) fn replicate_config(&mut self) {
        self.ha(|c, _| c.config_changed());
    }

    /// An admin change was made here: the peer gets it.
    pub(super) fn replicate_admin(&mut self, service: &str, server: &str) {
        self.ha(|c, _| c.admin_changed(service, server));
    }

    /// The configuration's VIPs changed: advertisements list them.
    pub(super) fn vips_changed(
        &mut self,
        vips: Vec<Ipv4Addr>,
    ) -> Option<Result<(), vrrp::ConfigError>> {
        self.ha(|c, now| c.vips_changed(now, vips))
    }

    /// Carries out one action of the coordinator.
    pub(super) async fn carry_out(&mut self, action: HaAction) {
        match action {
            // Sent by the VRRP thread itself; never handed out.
            HaAction::SendVrrp { .. } => {}
            HaAction::AddVips => {
                let wanted = super::wanted_vips(&self.config);
                match self.vips.set(&wanted).await {
                    Ok(added) => log::warn!("cluster: now MASTER; VIPs added: {added:?}"),
                    Err(error) => {
                        log::error!("cluster: now MASTER but adding the VIPs failed: {error}");
                    }
                }
                self.publish_held_vips(None);
            }
            HaAction::RemoveVips => {
                self.stop_stream();
                self.publish_held_vips(Some(&std::collections::BTreeSet::new()));
                match self.vips.remove_all().await {
                    Ok(()) => log::warn!("cluster: VIPs released"),
                    Err(error) => log::error!("cluster: removing the VIPs failed: {error}"),
                }
                self.publish_held_vips(None);
            }
            HaAction::Garp { frames } => {
                for vip in self.vips.owned().clone() {
                    for _ in 0..frames {
                        if let Err(error) = self.vips.announce(vip) {
                            log::warn!("{error}");
                        }
                    }
                }
            }
            HaAction::Send(outgoing) => self.send_to_peer(outgoing),
            HaAction::ApplyConfig {
                version,
                yaml,
                admin,
            } => {
                for change in &admin {
                    self.merge_admin(change);
                }
                let error = match self.apply_replicated(&yaml).await {
                    Ok(()) => None,
                    Err(error) => {
                        log::error!("sync: the primary's configuration was not applied: {error:#}");
                        Some(format!("{error:#}"))
                    }
                };
                self.ha(|c, _| c.config_applied(version, error));
            }
            HaAction::MergeAdmin(changes) => {
                let mut changed = false;
                for change in &changes {
                    changed |= self.merge_admin(change);
                }
                if changed {
                    let config = self.config.clone();
                    if let Err(error) = self.apply_services(&config) {
                        log::error!("sync: applying admin changes from the peer: {error:#}");
                    }
                }
            }
            HaAction::InstallSessions(entries) => {
                match self.balancer.install_sessions(&entries, monotonic_ns()) {
                    Ok(installed) if installed < entries.len() => log::debug!(
                        "sync: {} affinity entries for services or servers not known here",
                        entries.len() - installed
                    ),
                    Ok(_) => {}
                    Err(error) => log::error!("sync: installing affinity entries: {error}"),
                }
            }
            HaAction::InstallConnections(entries) => self.install_connections(&entries),
            HaAction::StreamSessions(step) => self.stream_sessions(step),
            HaAction::SessionsConfirmed { pass } => self.stream_command(move |t| t.confirmed(pass)),
            HaAction::StateChanged { from, to } => {
                log::warn!("cluster: VRRP {from} -> {to}");
            }
        }
    }

    /// Fills in what the coordinator asked to send, and queues it.
    fn send_to_peer(&self, outgoing: Outgoing) {
        let message = match outgoing {
            Outgoing::Message(message) => message,
            Outgoing::Config { version } => Message::Config {
                version,
                yaml: self.config_text.clone(),
                admin: self.admin.changes(),
            },
            Outgoing::AllAdmin => Message::Admin {
                changes: self.admin.changes(),
            },
            Outgoing::Admin { service, server } => Message::Admin {
                changes: self.admin.recorded(&service, &server).into_iter().collect(),
            },
        };
        let _ = self.queue_for_peer(message);
    }

    /// Queues `message` for the peer; false when the queue refused it.
    pub(super) fn queue_for_peer(&self, message: Message) -> bool {
        let Some(link) = self.cluster.as_ref().and_then(|c| c.link.as_ref()) else {
            return false;
        };
        match link.outgoing.push(message) {
            Ok(()) => true,
            Err(error) => {
                log::warn!("sync: {error}");
                false
            }
        }
    }

    /// The peer, as the audit log names it.
    fn peer_actor(&self) -> Actor {
        let name = self
            .cluster
            .as_ref()
            .and_then(|c| c.ha.read(|c| c.peer_node().map(str::to_owned)))
            .unwrap_or_else(|| "the peer".to_owned());
        Actor::Peer(name)
    }

    /// Takes a peer's admin change if newer; returns whether it was taken.
    fn merge_admin(&mut self, change: &sync::AdminChange) -> bool {
        let record = |o: Option<&crate::admin::Override>| {
            o.map_or(
                serde_json::Value::Null,
                |o| serde_json::json!({"admin_state": o.state, "weight": o.weight}),
            )
        };
        let before = record(self.admin.get(&change.service, &change.server));
        match self.admin.merge(change) {
            Ok(taken) => {
                if taken {
                    let after = record(self.admin.get(&change.service, &change.server));
                    let what = format!(
                        "{} {}/{}",
                        change.state.as_deref().unwrap_or("weight"),
                        change.service,
                        change.server
                    );
                    self.audit
                        .record(&self.peer_actor(), &what, &before, &after);
                }
                taken
            }
            Err(error) => {
                log::error!("sync: {error}");
                false
            }
        }
    }

    /// The secondary takes the primary's services (keeping its own node and
    /// cluster sections), keeps them under `state_dir`, and applies them.
    async fn apply_replicated(&mut self, yaml: &str) -> anyhow::Result<()> {
        let primary = Config::from_yaml(yaml, "configuration from the primary")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let path = replicated_path(&self.config.node.state_dir);
        let mut next = self.config.clone();
        next.services = primary.services;
        // What this node ran until now: the primary's last configuration it
        // kept, else its own file's.
        let before = super::config_summary(
            &std::fs::read_to_string(&path).unwrap_or_else(|_| self.config_text.clone()),
        );
        // Applied first and kept only then: the secondary never keeps a
        // configuration it could not apply.
        let previous = self.config.clone();
        if let Err(error) = self.apply(next).await {
            self.restore(previous).await;
            return Err(error);
        }
        if let Err(error) = state_file::write_atomically(&path, yaml.as_bytes()) {
            self.restore(previous).await;
            return Err(anyhow::anyhow!(error))
                .with_context(|| format!("keeping it in {}", path.display()));
        }
        if before != super::config_summary(yaml) {
            self.audit.record(
                &self.peer_actor(),
                "configuration from the primary",
                &before,
                &super::config_summary(yaml),
            );
        }
        log::info!(
            "sync: configuration from the primary applied ({} services)",
            self.config.services.len()
        );
        Ok(())
    }

    /// The session stream: starts over or resumes (the census thread's
    /// next pass finds what to send), or sends the pass the census found.
    fn stream_sessions(&mut self, step: StreamStep) {
        match step {
            StreamStep::Restart | StreamStep::Resume => {
                if step == StreamStep::Restart {
                    log::info!("sync: streaming the whole affinity table to the peer (a new peer process, or this node has just become master)");
                } else {
                    log::info!("sync: resuming the session stream to the same peer process (what it did not confirm goes again)");
                }
                self.start_connection_stream();
                if let Ok(mut shared) = self.census.lock() {
                    let stream = &mut shared.stream;
                    stream.on = true;
                    stream.epoch += 1;
                    stream.ready = None;
                    stream.fresh.clear();
                    stream.commands.push(if step == StreamStep::Restart {
                        Box::new(sync::StreamTracker::restart)
                    } else {
                        Box::new(sync::StreamTracker::resume)
                    });
                }
            }
            StreamStep::Next => {
                self.send_connections();
                self.send_stream_pass();
            }
        }
    }

    /// Sends the pass the census found, unless the queue to the peer still
    /// holds more than [`STREAM_BACKLOG`] bytes (the pass then waits, and
    /// the census finds no more meanwhile).
    fn send_stream_pass(&mut self) {
        let backlog = self
            .cluster
            .as_ref()
            .and_then(|c| c.link.as_ref())
            .map_or(0, |l| l.outgoing.session_bytes());
        if backlog > STREAM_BACKLOG {
            return;
        }
        let Ok((pass, fresh, epoch)) = self.census.lock().map(|mut s| {
            let on = s.stream.on;
            let pass = s.stream.ready.take().filter(|_| on);
            let fresh = std::mem::take(&mut s.stream.fresh);
            (pass, if on { fresh } else { Vec::new() }, s.stream.epoch)
        }) else {
            return;
        };
        let now = monotonic_ns();
        if !fresh.is_empty() {
            let entries: Vec<sync::SessionEntry> = fresh
                .iter()
                .filter_map(|(k, v)| self.balancer.session_entry(k, v, now))
                .collect();
            // Best effort: a batch refused here goes with the next walk.
            for message in sync::session_batches(entries, false) {
                if !self.queue_for_peer(message) {
                    break;
                }
            }
        }
        let Some(pass) = pass.filter(|p| p.epoch == epoch) else {
            return;
        };
        let entries: Vec<sync::SessionEntry> = pass
            .entries
            .iter()
            .filter_map(|(k, v)| self.balancer.session_entry(k, v, now))
            .collect();
        for message in sync::stream_messages(entries, &pass.outcome, pass.total) {
            if !self.queue_for_peer(message) {
                // The rest of the pass (its end and mark included) is not
                // sent: what the peer did not confirm goes again.
                self.stream_command(sync::StreamTracker::resume);
                return;
            }
        }
    }

    /// Changes the stream's tracker before the census's next pass.
    fn stream_command(&self, command: impl FnOnce(&mut sync::StreamTracker) + Send + 'static) {
        if let Ok(mut shared) = self.census.lock() {
            shared.stream.commands.push(Box::new(command));
        }
    }

    /// This node stopped being master: nothing more to stream.
    fn stop_stream(&self) {
        self.stop_connection_stream();
        if let Ok(mut shared) = self.census.lock() {
            shared.stream.on = false;
            shared.stream.ready = None;
            shared.stream.fresh.clear();
        }
    }

    /// Why `lbctl apply` is refused here, if it is.
    pub(super) fn refuse_apply(&self) -> Option<String> {
        self.cluster.as_ref()?.ha.read(Coordinator::refuse_apply)
    }

    /// Why an admin change is refused here, if it is.
    pub(super) fn refuse_admin(&self) -> Option<String> {
        self.cluster.as_ref()?.ha.read(Coordinator::refuse_admin)
    }

    /// `lbctl ha`.
    pub(super) fn ha_status(&self) -> HaStatus {
        let Some(c) = self.cluster.as_ref() else {
            return HaStatus::standalone();
        };
        let link = c.link.as_ref().map(|l| (l.peer, l.stats.snapshot()));
        c.ha.read(|coordinator| coordinator.status(Instant::now(), link))
    }

    /// What a re-executed lbd needs to go on as this member of the pair,
    /// and while master the relay started to advertise meanwhile (see
    /// [`super::relay`]).
    pub(super) fn hand_over_ha(&self) -> Option<(Handover, Option<super::relay::Relay>)> {
        let c = self.cluster.as_ref()?;
        let (base_ns, tracker) = self.census.lock().ok()?.stream.tracker.clone();
        let seconds = monotonic_ns().saturating_sub(base_ns) / 1_000_000_000;
        let handover = Handover {
            coordinator: c.ha.read(Coordinator::hand_over),
            boot_id: c.boot_id,
            stream_base_ns: base_ns,
            stream: tracker.handed_over(seconds),
        };
        let relay = match c.ha.start_relay() {
            None => None,
            Some(Ok(relay)) => Some(relay),
            Some(Err(error)) => {
                log::warn!("SIGUSR2: no advertisement relay ({error}); the backup may take over while lbd starts");
                None
            }
        };
        Some((handover, relay))
    }

    pub(super) fn sync_connected(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.ha.read(Coordinator::connected))
    }
}
