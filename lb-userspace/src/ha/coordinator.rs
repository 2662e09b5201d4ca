//! The HA coordinator: the pair's policy, sans-IO.
//!
//! It owns the VRRP state machine ([`crate::vrrp`]) and decides, from
//! `(now, event)` alone, what the daemon must do: hold or release the VIPs,
//! announce them, send on the sync channel, apply the primary's
//! configuration, merge admin changes, install or stream sessions. It never
//! reads the clock, touches a socket or a file; the daemon feeds it
//! ([`Coordinator::handle_vrrp`], [`Coordinator::handle_sync`],
//! [`Coordinator::handle_timeout`], and the local changes), then carries out
//! [`Coordinator::poll_action`] and sleeps until [`Coordinator::poll_timeout`].
//!
//! The rules it keeps (shared/CONTRACT.md, Behaviour, and RFC 5798):
//! - **Preempt only with the sessions.** A node with a sync channel starts
//!   with its VRRP priority held at 1, so it cannot preempt, until the
//!   peer's affinity snapshot has arrived or [`SYNC_HOLD`] has passed: a
//!   takeover never happens before the sessions are there.
//! - **The primary's configuration is the truth**: sent on every pairing and
//!   every change; a configuration from a secondary is ignored.
//! - **Admin changes replicate both ways**, the latest winning (the merge
//!   itself is [`crate::admin::AdminStore::merge`]); they are accepted on the
//!   primary, and on the secondary only while it is master and the primary is
//!   unreachable.
//! - **The master streams sessions** every [`STREAM_EVERY`]: from nothing
//!   on takeover and on pairing with a new peer process, resumed from the
//!   peer's last confirmed pass when the same peer process comes back (a
//!   slow or flapping link gets the rest of the stream, not the whole table
//!   again; see [`crate::sync::StreamTracker`]). A backup installs what it
//!   receives and confirms each pass; a master ignores sessions (its own
//!   table is newer).
//! - **Split brain heals loudly**: a master hearing another master's
//!   advertisement announces its VIPs again (at most every
//!   [`CONFLICT_GARP_EVERY`]) so neighbours learn where they are.
//! - **No link, no VRRP** (keepalived's FAULT): while the node's interface
//!   has no link, VRRP stops as at shutdown (a master gives the VIPs up)
//!   and the node says `fault`; with the link back it starts again as a
//!   returning node does, in Backup with the preempt hold.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::{
    config::Role,
    sync::{self, LinkEvent, Message, SnapshotMark},
    vrrp::{self, Action, State, Vrrp},
};

pub use super::actions::{HaAction, Outgoing, StreamStep};
use super::{
    garp::GarpSchedule,
    handover::{AdvertRelay, Resumed},
    socket::Received,
};

mod status;

/// How long a returning node waits for the peer's affinity table before it
/// may preempt anyway.
pub const SYNC_HOLD: Duration = Duration::from_secs(10);
/// Fewest seconds between two re-announcements after hearing another master.
pub const CONFLICT_GARP_EVERY: Duration = Duration::from_secs(1);
/// How often the master streams what changed in its affinity table.
pub const STREAM_EVERY: Duration = Duration::from_secs(1);

/// What the coordinator needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `cluster.role`.
    pub role: Role,
    /// VRRP as configured (the configured priority included).
    pub vrrp: vrrp::Config,
    /// Whether `cluster.sync` is configured.
    pub sync: bool,
}

/// The sync channel as the coordinator sees it.
#[derive(Debug, Default)]
struct SyncView {
    connected: bool,
    peer_node: Option<String>,
    /// The paired peer process (its boot id).
    peer_boot: Option<u64>,
    /// Configurations sent (primary) or received (secondary).
    config_version: u64,
    /// On the primary: the last configuration the secondary answered for,
    /// and why it could not apply it, if it could not.
    peer_applied: Option<(u64, Option<String>)>,
}

/// One node of the pair.
#[derive(Debug)]
pub struct Coordinator {
    role: Role,
    vrrp: Vrrp,
    garp: GarpSchedule,
    configured_priority: u8,
    /// Set while the priority is held at 1 (see the module doc).
    hold_until: Option<Instant>,
    /// Set while the node's interface has no link: VRRP is stopped.
    fault: bool,
    last_conflict: Option<Instant>,
    sync: Option<SyncView>,
    next_stream: Option<Instant>,
    /// The peer process the session stream goes to while this node stays
    /// master (a reconnection to it resumes the stream).
    streamed_to: Option<u64>,
    actions: VecDeque<HaAction>,
}

impl Coordinator {
    /// Starts VRRP (in Backup) at `now`; with a sync channel, the priority
    /// is held at 1 until the peer's sessions arrive.
    #[must_use]
    pub fn new(now: Instant, settings: Settings) -> Self {
        let hold = settings.sync;
        let mut coordinator = Self::unstarted(now, settings, hold);
        coordinator.vrrp.startup(now);
        coordinator.pump(now);
        coordinator
    }

    /// Starts in a process that re-executed lbd (SIGUSR2) and goes on as
    /// the same member of the pair: a master stays master, advertising now
    /// and on, without a gratuitous ARP and without the preempt hold (its
    /// table is the pair's newest); its session stream resumes with the
    /// same peer process. Anything else, or another VRID now, starts as
    /// [`Coordinator::new`] does.
    #[must_use]
    pub fn resume(now: Instant, settings: Settings, resumed: &Resumed) -> Self {
        if !resumed.master || resumed.vrid != settings.vrrp.vrid {
            let mut coordinator = Self::new(now, settings);
            if let Some(sync) = coordinator.sync.as_mut() {
                sync.config_version = resumed.config_version;
            }
            return coordinator;
        }
        let mut coordinator = Self::unstarted(now, settings, false);
        if let Some(sync) = coordinator.sync.as_mut() {
            sync.config_version = resumed.config_version;
        }
        coordinator.streamed_to = resumed.streamed_to;
        coordinator.vrrp.resume_master(now);
        // Held already; any VIP the file gained since is added.
        coordinator.actions.push_back(HaAction::AddVips);
        coordinator.pump(now);
        coordinator
    }

    /// What a re-executed lbd needs to go on as this member of the pair.
    #[must_use]
    pub fn hand_over(&self) -> Resumed {
        Resumed {
            vrid: self.vrrp.config().vrid,
            master: self.is_master(),
            streamed_to: self.streamed_to,
            config_version: self.sync.as_ref().map_or(0, |s| s.config_version),
        }
    }

    /// While master: the advertisement that keeps the peer a backup while
    /// lbd re-executes, and when the next one is due.
    #[must_use]
    pub fn advert_relay(&self) -> Option<AdvertRelay> {
        if !self.is_master() {
            return None;
        }
        let to = self.vrrp.destination();
        Some(AdvertRelay {
            to,
            message: vrrp::encode(
                &self.vrrp.advertisement(self.vrrp.priority()),
                self.vrrp.config().local,
                to,
            ),
            every: self.vrrp.master_adver_interval(),
            next: self.vrrp.poll_timeout()?,
        })
    }

    /// The coordinator before VRRP's first event; `hold`: the priority
    /// held at 1 (see the module doc).
    fn unstarted(now: Instant, settings: Settings, hold: bool) -> Self {
        let configured_priority = settings.vrrp.priority;
        let vrrp = Vrrp::new(vrrp::Config {
            priority: if hold { 1 } else { configured_priority },
            ..settings.vrrp
        });
        Self {
            role: settings.role,
            vrrp,
            garp: GarpSchedule::default(),
            configured_priority,
            hold_until: hold.then_some(now + SYNC_HOLD),
            fault: false,
            last_conflict: None,
            sync: settings.sync.then(SyncView::default),
            next_stream: settings.sync.then_some(now + STREAM_EVERY),
            streamed_to: None,
            actions: VecDeque::new(),
        }
    }

    /// A VRRP packet as the raw socket received it. VRRP's timers run from
    /// its arrival (`packet.at`), however late it is handled.
    pub fn handle_vrrp(&mut self, now: Instant, packet: &Received) {
        let advert = vrrp::check_ip(packet.ttl, packet.protocol)
            .and_then(|()| vrrp::decode(&packet.payload, packet.src, packet.dst));
        match advert {
            Err(error) => self.vrrp.record_drop((&error).into()),
            Ok(advert) => {
                let accepted = self.vrrp.counters().adverts_received;
                self.vrrp
                    .handle_advert(packet.at.min(now), packet.src, &advert);
                let accepted = self.vrrp.counters().adverts_received > accepted;
                // Another master we outrank (split brain healing): it steps
                // down on our next advertisement; tell the neighbours again
                // where the VIPs are.
                let conflict = accepted
                    && self.vrrp.state() == State::Master
                    && advert.vrid == self.vrrp.config().vrid
                    && packet.src != self.vrrp.config().local
                    && advert.priority > 0;
                if conflict
                    && self
                        .last_conflict
                        .is_none_or(|t| now.duration_since(t) >= CONFLICT_GARP_EVERY)
                {
                    self.last_conflict = Some(now);
                    log::warn!(
                        "cluster: {} also claims master; announcing the VIPs again",
                        packet.src
                    );
                    self.garp.announce(now);
                }
            }
        }
        self.pump(now);
    }

    /// An event of the sync link.
    pub fn handle_sync(&mut self, now: Instant, event: LinkEvent) {
        match event {
            LinkEvent::Connected {
                peer_node,
                peer_role,
                peer_boot_id,
            } => self.on_paired(peer_node, peer_role, peer_boot_id),
            LinkEvent::Disconnected { reason } => {
                if let Some(sync) = self.sync.as_mut() {
                    log::warn!("sync: disconnected: {reason}");
                    sync.connected = false;
                }
            }
            LinkEvent::Message(message) => self.on_message(now, message),
        }
        self.pump(now);
    }

    /// Fires what is due at `now`: the end of a hold, VRRP timers,
    /// gratuitous-ARP rounds, the session stream.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.hold_until.is_some_and(|t| t <= now) {
            self.release_hold(now, "no session table from the peer in time");
        }
        if self.vrrp.poll_timeout().is_some_and(|t| t <= now) {
            self.vrrp.handle_timeout(now);
        }
        if self.next_stream.is_some_and(|t| t <= now) {
            self.next_stream = Some(now + STREAM_EVERY);
            if self.is_master() && self.connected() {
                self.actions
                    .push_back(HaAction::StreamSessions(StreamStep::Next));
            }
        }
        self.pump(now);
    }

    /// The primary's configuration changed (reload or `lbctl apply`): send it.
    pub fn config_changed(&mut self) {
        if self.role == Role::Primary {
            self.send_config();
        }
    }

    /// The configuration's VIPs changed (reload, `lbctl apply`, the
    /// primary's configuration): advertisements list them from now on (at
    /// once while master).
    ///
    /// # Errors
    /// More VIPs than an advertisement can list; nothing changes then.
    pub fn vips_changed(
        &mut self,
        now: Instant,
        vips: Vec<std::net::Ipv4Addr>,
    ) -> Result<(), crate::vrrp::ConfigError> {
        self.vrrp.set_addresses(now, vips)?;
        self.pump(now);
        Ok(())
    }

    /// The secondary applied the primary's configuration `version`, or
    /// could not (`error`): tell the primary (`lbctl ha` there shows it).
    pub fn config_applied(&mut self, version: u64, error: Option<String>) {
        if self.role == Role::Secondary {
            self.send(Outgoing::Message(Message::Applied { version, error }));
        }
    }

    /// The configuration version last sent (primary) or received
    /// (secondary), and on the primary the secondary's last answer.
    #[must_use]
    pub fn config_versions(&self) -> (u64, Option<(u64, Option<String>)>) {
        self.sync
            .as_ref()
            .map_or((0, None), |s| (s.config_version, s.peer_applied.clone()))
    }

    /// An admin change was made here: send it to the peer.
    pub fn admin_changed(&mut self, service: &str, server: &str) {
        self.send(Outgoing::Admin {
            service: service.to_owned(),
            server: server.to_owned(),
        });
    }

    /// The node's interface lost its link (`up` false) or has it again.
    /// Lost: VRRP stops as at shutdown (a master gives the VIPs up; its
    /// goodbye cannot leave, so the peer takes over when the advertisements
    /// stop) and the node is in fault. Back: VRRP starts in Backup, with the
    /// priority held as for a returning node (the peer may have served new
    /// clients meanwhile). A repeated report changes nothing.
    pub fn link_changed(&mut self, now: Instant, up: bool) {
        if up != self.fault {
            return;
        }
        self.fault = !up;
        if up {
            log::warn!("cluster: the interface has its link again; VRRP starts in Backup");
            if self.sync.is_some() {
                self.hold_until = Some(now + SYNC_HOLD);
                self.vrrp.set_priority(now, 1);
            }
            self.vrrp.startup(now);
        } else {
            log::error!(
                "cluster: the interface has no link; fault: VRRP stopped and the VIPs given up until it returns"
            );
            self.vrrp.shutdown(now);
        }
        self.pump(now);
    }

    /// Whether the node is in fault (its interface has no link).
    #[must_use]
    pub fn fault(&self) -> bool {
        self.fault
    }

    /// At shutdown: a master says priority 0 so the peer takes over at once.
    pub fn shutdown(&mut self, now: Instant) {
        self.vrrp.shutdown(now);
        self.pump(now);
    }

    /// When [`Coordinator::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.vrrp.poll_timeout(),
            self.garp.next(),
            self.hold_until,
            self.next_stream,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next thing to do, oldest first.
    pub fn poll_action(&mut self) -> Option<HaAction> {
        self.actions.pop_front()
    }

    /// Whether this node is master (and so holds the VIPs).
    #[must_use]
    pub fn is_master(&self) -> bool {
        self.vrrp.state() == State::Master
    }

    /// Whether a sync session is paired now.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.sync.as_ref().is_some_and(|s| s.connected)
    }

    /// The peer's node name, once a sync session has paired.
    #[must_use]
    pub fn peer_node(&self) -> Option<&str> {
        self.sync.as_ref().and_then(|s| s.peer_node.as_deref())
    }

    /// The VRRP state.
    #[must_use]
    pub fn state(&self) -> State {
        self.vrrp.state()
    }

    /// The running VRRP priority.
    #[must_use]
    pub fn priority(&self) -> u8 {
        self.vrrp.priority()
    }

    /// Whether the priority is held at 1 (waiting for the peer's sessions).
    #[must_use]
    pub fn preempt_held(&self) -> bool {
        self.hold_until.is_some()
    }

    /// Why `lbctl apply` is refused here, if it is.
    #[must_use]
    pub fn refuse_apply(&self) -> Option<String> {
        (self.role == Role::Secondary).then(|| {
            format!(
                "this node is the secondary of the pair: apply configuration changes on the primary, {}",
                self.primary_label()
            )
        })
    }

    /// Why an admin change is refused here, if it is.
    #[must_use]
    pub fn refuse_admin(&self) -> Option<String> {
        if self.role == Role::Primary || (self.is_master() && !self.connected()) {
            return None;
        }
        Some(format!(
            "this node is the secondary of the pair: drain, halt, online and weight go to the primary, {} \
             (the secondary takes them only while it is master and the primary is unreachable)",
            self.primary_label()
        ))
    }

    fn on_paired(&mut self, peer_node: String, peer_role: Role, peer_boot: u64) {
        let Some(sync) = self.sync.as_mut() else {
            return;
        };
        log::warn!("sync: paired with {peer_node} ({})", peer_role.as_str());
        sync.connected = true;
        sync.peer_node = Some(peer_node);
        sync.peer_boot = Some(peer_boot);
        if self.role == Role::Primary {
            self.send_config();
        }
        self.send(Outgoing::AllAdmin);
        if self.is_master() {
            let step = if self.streamed_to == Some(peer_boot) {
                StreamStep::Resume
            } else {
                StreamStep::Restart
            };
            self.streamed_to = Some(peer_boot);
            self.actions.push_back(HaAction::StreamSessions(step));
        } else {
            // An empty snapshot: tells a returning peer it has all there is.
            for message in sync::session_batches(Vec::new(), true) {
                self.send(Outgoing::Message(message));
            }
        }
    }

    fn on_message(&mut self, now: Instant, message: Message) {
        match message {
            Message::Config {
                version,
                yaml,
                admin,
            } => {
                if self.role == Role::Primary {
                    log::warn!(
                        "sync: ignoring a configuration from the peer: this node is the primary"
                    );
                    return;
                }
                if let Some(sync) = self.sync.as_mut() {
                    sync.config_version = version;
                }
                self.actions.push_back(HaAction::ApplyConfig {
                    version,
                    yaml,
                    admin,
                });
            }
            Message::Applied { version, error } => {
                if self.role != Role::Primary {
                    return;
                }
                match &error {
                    None => log::info!("sync: the secondary applied configuration {version}"),
                    Some(why) => log::error!(
                        "sync: the secondary could not apply configuration {version}: {why}"
                    ),
                }
                if let Some(sync) = self.sync.as_mut() {
                    sync.peer_applied = Some((version, error));
                }
            }
            Message::Admin { changes } => self.actions.push_back(HaAction::MergeAdmin(changes)),
            Message::Pass { pass } => {
                if self.is_master() {
                    self.actions.push_back(HaAction::SessionsConfirmed { pass });
                } else {
                    // After the installs queued before it: confirmed once
                    // carried out.
                    self.send(Outgoing::Message(Message::Pass { pass }));
                }
            }
            Message::Sessions { entries, snapshot } => {
                if !self.is_master() && !entries.is_empty() {
                    self.actions.push_back(HaAction::InstallSessions(entries));
                }
                if snapshot == Some(SnapshotMark::End) {
                    self.release_hold(now, "the peer's session table has arrived");
                }
            }
            // A master keeps its own: two masters at once (a split) each
            // track what they forward.
            Message::Connections { entries } => {
                if !self.is_master() && !entries.is_empty() {
                    self.actions
                        .push_back(HaAction::InstallConnections(entries));
                }
            }
        }
    }

    fn send_config(&mut self) {
        let Some(sync) = self.sync.as_mut() else {
            return;
        };
        sync.config_version += 1;
        let version = sync.config_version;
        self.send(Outgoing::Config { version });
    }

    /// Queues a message for the peer while paired (the link drops what is
    /// sent before pairing; pairing sends the whole state anyway).
    fn send(&mut self, message: Outgoing) {
        if self.connected() {
            self.actions.push_back(HaAction::Send(message));
        }
    }

    fn release_hold(&mut self, now: Instant, why: &str) {
        if self.hold_until.take().is_some() {
            log::info!(
                "cluster: {why}; VRRP priority back to {}",
                self.configured_priority
            );
            self.vrrp.set_priority(now, self.configured_priority);
        }
    }

    fn primary_label(&self) -> String {
        let address = self
            .vrrp
            .config()
            .peer
            .map_or_else(|| "the other node".to_owned(), |p| p.to_string());
        match self.sync.as_ref().and_then(|s| s.peer_node.clone()) {
            Some(node) => format!("{node} ({address})"),
            None => address,
        }
    }

    /// Turns what VRRP asked for into actions, then the GARP frames due.
    fn pump(&mut self, now: Instant) {
        while let Some(action) = self.vrrp.poll_action() {
            match action {
                Action::SendAdvert { priority } => {
                    let to = self.vrrp.destination();
                    let message = vrrp::encode(
                        &self.vrrp.advertisement(priority),
                        self.vrrp.config().local,
                        to,
                    );
                    self.actions.push_back(HaAction::SendVrrp { to, message });
                }
                Action::SendGarp => self.garp.announce(now),
                Action::BecameMaster => {
                    self.actions.push_back(HaAction::AddVips);
                    self.streamed_to = None;
                    if self.connected() {
                        self.streamed_to = self.sync.as_ref().and_then(|s| s.peer_boot);
                        self.actions
                            .push_back(HaAction::StreamSessions(StreamStep::Restart));
                    }
                }
                Action::BecameBackup | Action::Stopped => {
                    self.streamed_to = None;
                    self.garp.cancel();
                    self.actions.push_back(HaAction::RemoveVips);
                }
                Action::StateChanged { from, to } => {
                    self.actions.push_back(HaAction::StateChanged { from, to });
                }
            }
        }
        let frames = self.garp.take_due(now);
        if frames > 0 && self.is_master() {
            self.actions.push_back(HaAction::Garp { frames });
        }
    }
}
