//! The HA pair's I/O shell: feeds the [`Coordinator`] what the VRRP socket
//! and the sync link deliver, with the time, and carries out what it asks
//! for (VIPs, gratuitous ARP, messages to the peer, replicated
//! configuration, admin changes and sessions). The policy lives in
//! [`crate::ha::coordinator`]; nothing here decides.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::mpsc;

use super::Daemon;
use crate::{
    audit::Actor,
    config::{self, Config},
    control::protocol::HaStatus,
    ha::{Coordinator, HaAction, Outgoing, Received, Settings, VrrpSocket},
    monotonic_ns, state_file,
    sync::{self, LinkConfig, LinkEvent, LinkStats, Local, Message, SyncKey},
    vrrp,
};

/// The sync link as the daemon holds it.
struct Link {
    outgoing: sync::Outbox,
    stats: Arc<LinkStats>,
    peer: SocketAddrV4,
}

/// One node of the pair: the coordinator and its I/O.
pub(super) struct Cluster {
    pub(super) coordinator: Coordinator,
    socket: Arc<VrrpSocket>,
    link: Option<Link>,
}

/// Where the cluster's inputs arrive.
pub(super) struct ClusterInputs {
    pub(super) vrrp: mpsc::Receiver<Received>,
    pub(super) sync: mpsc::Receiver<LinkEvent>,
}

/// The file the secondary keeps the primary's configuration in.
pub(super) fn replicated_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("replicated.yaml")
}

/// Opens the VRRP socket and the sync link, and starts the coordinator.
pub(super) async fn start(
    config: &Config,
    cluster: &config::Cluster,
    ifindex: u32,
    local: Ipv4Addr,
    vips: Vec<Ipv4Addr>,
) -> anyhow::Result<(Cluster, ClusterInputs)> {
    let socket = Arc::new(VrrpSocket::open(
        &config.node.interface,
        ifindex,
        local,
        cluster.peer.is_some(),
    )?);
    let (vrrp_tx, vrrp_rx) = mpsc::channel(256);
    {
        let socket = socket.clone();
        tokio::spawn(async move {
            loop {
                match socket.recv().await {
                    Ok(Some(packet)) => {
                        if vrrp_tx.send(packet).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        log::warn!("VRRP socket: {error}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }

    let (link, sync_rx) = start_sync(config, cluster).await?;

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
    let held = link.is_some();
    let coordinator = Coordinator::new(
        Instant::now(),
        Settings {
            role: cluster.role,
            vrrp: vrrp_config,
            sync: held,
        },
    );
    log::info!(
        "cluster: VRRP vrid {} from {local} to {}, priority {}{}",
        cluster.vrid,
        cluster
            .peer
            .map_or_else(|| "224.0.0.18".to_owned(), |p| p.to_string()),
        cluster.priority,
        if held {
            " (held at 1 until the peer's session table arrives)"
        } else {
            ""
        }
    );
    Ok((
        Cluster {
            coordinator,
            socket,
            link,
        },
        ClusterInputs {
            vrrp: vrrp_rx,
            sync: sync_rx,
        },
    ))
}

/// Opens the sync link when `cluster.sync` is configured.
async fn start_sync(
    config: &Config,
    cluster: &config::Cluster,
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
            boot_id: getrandom::u64().unwrap_or_else(|_| monotonic_ns()),
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
            .is_none_or(|c| c.coordinator.is_master())
    }

    /// When the coordinator's next timer is due.
    pub(super) fn ha_deadline(&self) -> Option<Instant> {
        self.cluster.as_ref()?.coordinator.poll_timeout()
    }

    pub(super) async fn on_vrrp_packet(&mut self, packet: Received) {
        if let Some(c) = self.cluster.as_mut() {
            c.coordinator.handle_vrrp(Instant::now(), &packet);
        }
        self.carry_out_ha().await;
    }

    pub(super) async fn on_ha_timer(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.coordinator.handle_timeout(Instant::now());
        }
        self.carry_out_ha().await;
    }

    pub(super) async fn on_sync(&mut self, event: LinkEvent) {
        if let Some(c) = self.cluster.as_mut() {
            c.coordinator.handle_sync(Instant::now(), event);
        }
        self.carry_out_ha().await;
    }

    /// At shutdown: a master says priority 0 so the peer takes over at once.
    pub(super) async fn stop_cluster(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.coordinator.shutdown(Instant::now());
        }
        self.carry_out_ha().await;
    }

    /// The primary's configuration changed: the peer gets it.
    pub(super) fn replicate_config(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.coordinator.config_changed();
        }
    }

    /// An admin change was made here: the peer gets it.
    pub(super) fn replicate_admin(&mut self, service: &str, server: &str) {
        if let Some(c) = self.cluster.as_mut() {
            c.coordinator.admin_changed(service, server);
        }
    }

    /// Carries out everything the coordinator asked for.
    pub(super) async fn carry_out_ha(&mut self) {
        loop {
            let Some(action) = self
                .cluster
                .as_mut()
                .and_then(|c| c.coordinator.poll_action())
            else {
                return;
            };
            self.carry_out(action).await;
        }
    }

    async fn carry_out(&mut self, action: HaAction) {
        match action {
            HaAction::SendVrrp { to, message } => {
                if let Some(c) = self.cluster.as_ref() {
                    if let Err(error) = c.socket.send(to, &message) {
                        log::warn!("VRRP: sending to {to}: {error}");
                    }
                }
            }
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
                if let Some(c) = self.cluster.as_mut() {
                    c.coordinator.config_applied(version, error);
                }
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
            HaAction::StreamSessions { full } => self.stream_sessions(full),
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
        self.queue_for_peer(message);
    }

    fn queue_for_peer(&self, message: Message) {
        let Some(link) = self.cluster.as_ref().and_then(|c| c.link.as_ref()) else {
            return;
        };
        if let Err(error) = link.outgoing.push(message) {
            log::warn!("sync: {error}");
        }
    }

    /// The peer, as the audit log names it.
    fn peer_actor(&self) -> Actor {
        let name = self
            .cluster
            .as_ref()
            .and_then(|c| c.coordinator.peer_node())
            .unwrap_or("the peer");
        Actor::Peer(name.to_owned())
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
        let before = super::config_summary(&self.config_text);
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

    /// Streams affinity entries: asks the census for the full table when
    /// `full` (it is sent once taken), else sends what changed since the
    /// last pass (and a full table taken meanwhile).
    fn stream_sessions(&mut self, full: bool) {
        let Ok(mut shared) = self.census.lock() else {
            return;
        };
        shared.collect = true;
        if full {
            // The snapshot carries everything: what piled up before is moot.
            shared.changed.clear();
            shared.want_full = true;
            return;
        }
        let (changed, full_table) = (std::mem::take(&mut shared.changed), shared.full.take());
        drop(shared);
        let now = monotonic_ns();
        let convert = |entries: Vec<(lb_common::AffinityKey, lb_common::Affinity)>| -> Vec<sync::SessionEntry> {
            entries
                .iter()
                .filter_map(|(k, v)| self.balancer.session_entry(k, v, now))
                .collect()
        };
        if let Some(table) = full_table {
            for message in sync::session_batches(convert(table), true) {
                self.queue_for_peer(message);
            }
        }
        if !changed.is_empty() {
            for message in sync::session_batches(convert(changed), false) {
                self.queue_for_peer(message);
            }
        }
    }

    /// Why `lbctl apply` is refused here, if it is.
    pub(super) fn refuse_apply(&self) -> Option<String> {
        self.cluster.as_ref()?.coordinator.refuse_apply()
    }

    /// Why an admin change is refused here, if it is.
    pub(super) fn refuse_admin(&self) -> Option<String> {
        self.cluster.as_ref()?.coordinator.refuse_admin()
    }

    /// `lbctl ha`.
    pub(super) fn ha_status(&self) -> HaStatus {
        let Some(c) = self.cluster.as_ref() else {
            return HaStatus::standalone();
        };
        let link = c.link.as_ref().map(|l| (l.peer, l.stats.snapshot()));
        c.coordinator.status(Instant::now(), link)
    }

    pub(super) fn sync_connected(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.coordinator.connected())
    }
}
