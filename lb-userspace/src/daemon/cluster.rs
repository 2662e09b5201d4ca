//! The HA pair inside `lbd`: drives the VRRP state machine from its raw
//! socket and timers, holds or releases the VIPs, and keeps the peer in step
//! over the sync channel (configuration, admin changes, affinity entries).
//!
//! Who may change what (contract, Behaviour): the primary's configuration is
//! the truth; `lbctl apply` works on the primary only; admin changes work on
//! the primary, and on the secondary while it is master and the primary is
//! unreachable. A returning node holds its VRRP priority at 1 (it cannot
//! preempt) until the peer's affinity table has arrived or `SYNC_HOLD` has
//! passed, so a takeover never happens before the sessions are there.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::Daemon;
use crate::{
    config::{self, Config, Role},
    ha::{GarpSchedule, Received, VrrpSocket},
    monotonic_ns,
    sync::{self, LinkConfig, LinkEvent, LinkStats, Local, Message, SnapshotMark, SyncKey},
    vrrp::{self, Action, State, Vrrp},
};

/// How long a returning node waits for the peer's affinity table before it
/// may preempt anyway.
const SYNC_HOLD: Duration = Duration::from_secs(10);
/// Fewest seconds between two re-announcements after hearing another master.
const CONFLICT_GARP_EVERY: Duration = Duration::from_secs(1);

/// The sync channel as the daemon sees it.
pub(super) struct SyncState {
    outgoing: mpsc::Sender<Message>,
    stats: Arc<LinkStats>,
    peer: SocketAddrV4,
    /// Whether a session is paired now.
    connected: bool,
    /// The peer's node name, once paired.
    peer_node: Option<String>,
    /// Configurations sent (primary) or received (secondary).
    config_version: u64,
}

/// One node of the pair.
pub(super) struct Cluster {
    pub(super) role: Role,
    pub(super) vrrp: Vrrp,
    socket: Arc<VrrpSocket>,
    garp: GarpSchedule,
    configured_priority: u8,
    /// Set while the priority is held at 1 (see the module doc).
    hold_until: Option<Instant>,
    last_conflict: Option<Instant>,
    peer: Option<Ipv4Addr>,
    pub(super) sync: Option<SyncState>,
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

/// Opens the VRRP socket and the sync link, and starts VRRP (in Backup).
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

    let (sync, sync_rx) = start_sync(config, cluster).await?;

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
    let now = Instant::now();
    let hold = sync.is_some();
    let mut machine = Vrrp::new(vrrp::Config {
        priority: if hold { 1 } else { cluster.priority },
        ..vrrp_config
    });
    machine.startup(now);
    log::info!(
        "cluster: VRRP vrid {} from {local} to {}, priority {}{}",
        cluster.vrid,
        cluster
            .peer
            .map_or_else(|| "224.0.0.18".to_owned(), |p| p.to_string()),
        cluster.priority,
        if hold {
            " (held at 1 until the peer's session table arrives)"
        } else {
            ""
        }
    );
    Ok((
        Cluster {
            role: cluster.role,
            vrrp: machine,
            socket,
            garp: GarpSchedule::default(),
            configured_priority: cluster.priority,
            hold_until: hold.then_some(now + SYNC_HOLD),
            last_conflict: None,
            peer: cluster.peer,
            sync,
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
) -> anyhow::Result<(Option<SyncState>, mpsc::Receiver<LinkEvent>)> {
    let (sync_tx, sync_rx) = mpsc::channel(1024);
    let sync = match &cluster.sync {
        None => {
            // Keep the sender so the channel stays open (and silent).
            std::mem::forget(sync_tx);
            None
        }
        Some(s) => {
            let key = config::check_key_file(&s.key_file)
                .map_err(|m| anyhow::anyhow!("cluster.sync.key_file: {m}"))?;
            let key =
                SyncKey::new(&key).map_err(|e| anyhow::anyhow!("cluster.sync.key_file: {e}"))?;
            let listener = tokio::net::TcpListener::bind(s.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen for the sync peer on {} (cluster.sync.listen)",
                        s.listen
                    )
                })?;
            let (out_tx, out_rx) = mpsc::channel(4096);
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
            Some(SyncState {
                outgoing: out_tx,
                stats,
                peer: s.peer,
                connected: false,
                peer_node: None,
                config_version: 0,
            })
        }
    };

    Ok((sync, sync_rx))
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Initialize => "init",
        State::Backup => "backup",
        State::Master => "master",
    }
}

impl Cluster {
    fn connected(&self) -> bool {
        self.sync.as_ref().is_some_and(|s| s.connected)
    }

    fn send(&self, message: Message) {
        if let Some(sync) = &self.sync {
            if sync.connected {
                if let Err(error) = sync.outgoing.try_send(message) {
                    log::warn!("sync: a message to the peer was not queued: {error}");
                }
            }
        }
    }

    fn release_hold(&mut self, why: &str) {
        if self.hold_until.take().is_some() {
            log::info!(
                "cluster: {why}; VRRP priority back to {}",
                self.configured_priority
            );
            self.vrrp
                .set_priority(Instant::now(), self.configured_priority);
        }
    }

    fn primary_label(&self) -> String {
        let address = self
            .peer
            .map_or_else(|| "the other node".to_owned(), |p| p.to_string());
        match self.sync.as_ref().and_then(|s| s.peer_node.clone()) {
            Some(node) => format!("{node} ({address})"),
            None => address,
        }
    }
}

impl Daemon {
    /// Whether this node holds the VIPs: a single node always, a pair's master.
    pub(super) fn holds_vips(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| c.vrrp.state() == State::Master)
    }

    /// The earliest HA timer: VRRP, a gratuitous-ARP round, the end of a hold.
    pub(super) fn ha_deadline(&self) -> Option<Instant> {
        let c = self.cluster.as_ref()?;
        [c.vrrp.poll_timeout(), c.garp.next(), c.hold_until]
            .into_iter()
            .flatten()
            .min()
    }

    pub(super) async fn on_vrrp_packet(&mut self, packet: Received) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let advert = vrrp::check_ip(packet.ttl, packet.protocol)
            .and_then(|()| vrrp::decode(&packet.payload, packet.src, packet.dst));
        match advert {
            Err(error) => c.vrrp.record_drop((&error).into()),
            Ok(advert) => {
                let now = Instant::now();
                c.vrrp.handle_advert(now, packet.src, &advert);
                // Another master we outrank (split brain healing): it steps
                // down on our next advertisement; tell the neighbours again
                // where the VIPs are.
                let conflict = c.vrrp.state() == State::Master
                    && advert.vrid == c.vrrp.config().vrid
                    && packet.src != c.vrrp.config().local
                    && advert.priority > 0;
                if conflict
                    && c.last_conflict
                        .is_none_or(|t| now.duration_since(t) >= CONFLICT_GARP_EVERY)
                {
                    c.last_conflict = Some(now);
                    log::warn!(
                        "cluster: {} also claims master; announcing the VIPs again",
                        packet.src
                    );
                    c.garp.announce(now);
                }
            }
        }
        self.drain_vrrp().await;
    }

    pub(super) async fn on_ha_timer(&mut self) {
        let now = Instant::now();
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.hold_until.is_some_and(|t| t <= now) {
            c.release_hold("no session table from the peer in time");
        }
        if c.vrrp.poll_timeout().is_some_and(|t| t <= now) {
            c.vrrp.handle_timeout(now);
        }
        let frames = c.garp.take_due(now);
        if frames > 0 && c.vrrp.state() == State::Master {
            for vip in self.vips.owned().clone() {
                for _ in 0..frames {
                    if let Err(error) = self.vips.announce(vip) {
                        log::warn!("{error}");
                    }
                }
            }
        }
        self.drain_vrrp().await;
    }

    /// Carries out what VRRP asked for.
    pub(super) async fn drain_vrrp(&mut self) {
        loop {
            let Some(c) = self.cluster.as_mut() else {
                return;
            };
            let Some(action) = c.vrrp.poll_action() else {
                return;
            };
            match action {
                Action::SendAdvert { priority } => {
                    let destination = c.vrrp.destination();
                    let message = vrrp::encode(
                        &c.vrrp.advertisement(priority),
                        c.vrrp.config().local,
                        destination,
                    );
                    if let Err(error) = c.socket.send(destination, &message) {
                        log::warn!("VRRP: sending to {destination}: {error}");
                    }
                }
                Action::SendGarp => c.garp.announce(Instant::now()),
                Action::BecameMaster => {
                    let wanted = super::wanted_vips(&self.config);
                    match self.vips.set(&wanted).await {
                        Ok(added) => log::warn!("cluster: now MASTER; VIPs added: {added:?}"),
                        Err(error) => {
                            log::error!("cluster: now MASTER but adding the VIPs failed: {error}");
                        }
                    }
                    self.send_sessions(true);
                }
                Action::BecameBackup | Action::Stopped => {
                    c.garp.cancel();
                    match self.vips.remove_all().await {
                        Ok(()) => log::warn!(
                            "cluster: now {}; VIPs removed",
                            state_name(c.vrrp.state()).to_uppercase()
                        ),
                        Err(error) => log::error!("cluster: removing the VIPs failed: {error}"),
                    }
                }
                Action::StateChanged { from, to } => {
                    log::info!("cluster: VRRP {} -> {}", state_name(from), state_name(to));
                }
            }
        }
    }

    /// At shutdown: a master says priority 0 so the peer takes over at once.
    pub(super) async fn stop_cluster(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.vrrp.shutdown(Instant::now());
        }
        self.drain_vrrp().await;
    }

    pub(super) async fn on_sync(&mut self, event: LinkEvent) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some(sync) = c.sync.as_mut() else { return };
        match event {
            LinkEvent::Connected {
                peer_node,
                peer_role,
                ..
            } => {
                log::warn!(
                    "sync: paired with {peer_node} ({peer_role:?}) at {}",
                    sync.peer
                );
                sync.connected = true;
                sync.peer_node = Some(peer_node);
                if c.role == Role::Primary {
                    self.send_config();
                }
                let changes = self.admin.changes();
                if let Some(c) = self.cluster.as_ref() {
                    c.send(Message::Admin { changes });
                }
                let master = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.vrrp.state() == State::Master);
                if master {
                    self.send_sessions(true);
                } else if let Some(c) = self.cluster.as_ref() {
                    // An empty snapshot: tells a returning peer it has all there is.
                    for message in sync::session_batches(Vec::new(), true) {
                        c.send(message);
                    }
                }
            }
            LinkEvent::Disconnected { reason } => {
                log::warn!("sync: disconnected from {}: {reason}", sync.peer);
                sync.connected = false;
            }
            LinkEvent::Message(message) => self.on_sync_message(message).await,
        }
    }

    async fn on_sync_message(&mut self, message: Message) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match message {
            Message::Config {
                version,
                yaml,
                admin,
            } => {
                if c.role == Role::Primary {
                    log::warn!(
                        "sync: ignoring a configuration from the peer: this node is the primary"
                    );
                    return;
                }
                if let Some(sync) = c.sync.as_mut() {
                    sync.config_version = version;
                }
                for change in &admin {
                    self.merge_admin(change);
                }
                if let Err(error) = self.apply_replicated(&yaml).await {
                    log::error!("sync: the primary's configuration was not applied: {error:#}");
                }
            }
            Message::Admin { changes } => {
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
            Message::Sessions { entries, snapshot } => {
                if c.vrrp.state() != State::Master {
                    match self.balancer.install_sessions(&entries, monotonic_ns()) {
                        Ok(installed) if installed < entries.len() => log::debug!(
                            "sync: {} affinity entries for services or servers not known here",
                            entries.len() - installed
                        ),
                        Ok(_) => {}
                        Err(error) => log::error!("sync: installing affinity entries: {error}"),
                    }
                }
                if snapshot == Some(SnapshotMark::End) {
                    if let Some(c) = self.cluster.as_mut() {
                        c.release_hold("the peer's session table has arrived");
                    }
                }
            }
        }
    }

    /// Takes a peer's admin change if newer; returns whether it was taken.
    fn merge_admin(&mut self, change: &sync::AdminChange) -> bool {
        match self.admin.merge(change) {
            Ok(taken) => {
                if taken {
                    log::info!(
                        "sync: admin change from the peer: {}/{} {:?} {:?}",
                        change.service,
                        change.server,
                        change.state,
                        change.weight
                    );
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
        super::write_atomically(&path, yaml)
            .with_context(|| format!("keeping it in {}", path.display()))?;
        let mut next = self.config.clone();
        next.services = primary.services;
        self.apply(next).await?;
        log::info!(
            "sync: configuration from the primary applied ({} services)",
            self.config.services.len()
        );
        Ok(())
    }

    /// The primary sends its configuration and admin changes.
    pub(super) fn send_config(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.role != Role::Primary {
            return;
        }
        let Some(sync) = c.sync.as_mut() else { return };
        sync.config_version += 1;
        let message = Message::Config {
            version: sync.config_version,
            yaml: self.config_text.clone(),
            admin: self.admin.changes(),
        };
        c.send(message);
    }

    /// Sends one admin change to the peer.
    pub(super) fn send_admin(&self, service: &str, server: &str) {
        if let (Some(c), Some(change)) =
            (self.cluster.as_ref(), self.admin.recorded(service, server))
        {
            c.send(Message::Admin {
                changes: vec![change],
            });
        }
    }

    /// The master streams affinity entries: the full table when `full`
    /// (pairing, takeover), else what changed since the last pass.
    pub(super) fn send_sessions(&mut self, full: bool) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        if !c.connected() || c.vrrp.state() != State::Master {
            return;
        }
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
                c.send(message);
            }
        }
        if !changed.is_empty() {
            for message in sync::session_batches(convert(changed), false) {
                c.send(message);
            }
        }
    }

    /// Why `lbctl apply` is refused here, if it is.
    pub(super) fn refuse_apply(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        (c.role == Role::Secondary).then(|| {
            format!(
                "this node is the secondary of the pair: apply configuration changes on the primary, {}",
                c.primary_label()
            )
        })
    }

    /// Why an admin change is refused here, if it is.
    pub(super) fn refuse_admin(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        if c.role == Role::Primary || (c.vrrp.state() == State::Master && !c.connected()) {
            return None;
        }
        Some(format!(
            "this node is the secondary of the pair: drain, halt, online and weight go to the primary, {} \
             (the secondary takes them only while it is master and the primary is unreachable)",
            c.primary_label()
        ))
    }

    /// `lbctl ha`.
    pub(super) fn ha_json(&self) -> Value {
        let Some(c) = self.cluster.as_ref() else {
            return json!({
                "role": "standalone", "state": "standalone", "peer": null,
                "last_advert_age_ms": null,
                "sync": {"connected": false, "sent": 0, "received": 0, "lag_ms": null},
            });
        };
        let stats = c.sync.as_ref().map(|s| s.stats.snapshot());
        let last = c.vrrp.last_advert();
        json!({
            "role": if c.role == Role::Primary { "primary" } else { "secondary" },
            "state": state_name(c.vrrp.state()),
            "peer": c.peer.map(|p| p.to_string()),
            "priority": c.vrrp.priority(),
            "configured_priority": c.configured_priority,
            "preempt_held": c.hold_until.is_some(),
            "advert_interval_ms": u64::try_from(c.vrrp.master_adver_interval().as_millis()).unwrap_or(u64::MAX),
            "last_advert_age_ms": last.map(|(at, _, _)| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
            "last_advert_from": last.map(|(_, from, _)| from.to_string()),
            "last_advert_priority": last.map(|(_, _, p)| p),
            "vrrp_drops": c.vrrp.counters().dropped_total(),
            "sync": match (&c.sync, stats) {
                (Some(s), Some(st)) => json!({
                    "configured": true,
                    "peer": s.peer.to_string(),
                    "peer_node": s.peer_node,
                    "connected": s.connected,
                    "sent": st.sent,
                    "received": st.received,
                    "lag_ms": st.lag_ms,
                    "last_error": st.last_error,
                }),
                _ => json!({"configured": false, "connected": false, "sent": 0, "received": 0, "lag_ms": null}),
            },
        })
    }

    pub(super) fn sync_connected(&self) -> bool {
        self.cluster.as_ref().is_some_and(Cluster::connected)
    }
}
