//! The simulated pair the coordinator's tests (`pair_tests`) run on: two
//! coordinators on a simulated network with a fake clock: VRRP
//! advertisements go through the real codec, the sync channel carries the
//! real messages, links can be cut and healed, nodes killed and restarted.
//! Each node's "shell" carries out the actions as the daemon does, against
//! an admin store in a temporary directory and an in-memory session table.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use super::coordinator::{Coordinator, HaAction, Outgoing, Settings, StreamStep};
use super::socket::Received;
use crate::{
    admin::AdminStore,
    config::{AdminState, Role},
    sync::{self, LinkEvent, Message, SessionEntry, StreamTracker, TrackedConnection},
    vrrp::{self, State},
};

pub(super) const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// Advertisement interval: 1 s (100 centiseconds).
pub(super) const ADVERT: Duration = Duration::from_secs(1);
pub(super) const SERVICE: &str = "hyperspace";

pub(super) fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + u8::try_from(i).unwrap_or(0))
}

/// Node 0 is the primary (priority 200), node 1 the secondary (100).
pub(super) fn settings(i: usize) -> Settings {
    Settings {
        role: if i == 0 {
            Role::Primary
        } else {
            Role::Secondary
        },
        vrrp: vrrp::Config {
            vrid: 51,
            priority: if i == 0 { 200 } else { 100 },
            advert_interval_cs: 100,
            preempt: true,
            addresses: vec![VIP],
            local: address(i),
            peer: Some(address(1 - i)),
        },
        sync: true,
    }
}

/// `Master_Down_Interval` of the secondary (RFC 5798 section 6.1).
pub(super) fn master_down_of_secondary() -> Duration {
    ADVERT * 3 + ADVERT * (256 - 100) / 256
}

/// What one node's daemon would hold.
pub(super) struct Node {
    pub(super) c: Coordinator,
    pub(super) alive: bool,
    pub(super) dir: PathBuf,
    pub(super) admin: AdminStore,
    pub(super) config_text: String,
    pub(super) applied_yaml: Option<String>,
    pub(super) vips_held: bool,
    pub(super) garps: u32,
    /// client -> real-server address.
    pub(super) sessions: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Sessions held when this node last added the VIPs.
    pub(super) sessions_at_takeover: Option<usize>,
    /// (time, new state).
    pub(super) transitions: Vec<(Duration, State)>,
    /// Session streams this node's coordinator asked for.
    pub(super) streams: usize,
    /// What this node's stream has sent (the census's tracker).
    pub(super) tracker: StreamTracker,
    /// The census's view of `sessions`: each client's entry and the pass
    /// that last sent it.
    pub(super) synced: BTreeMap<Ipv4Addr, lb_common::Affinity>,
    /// Session entries this node has sent.
    pub(super) entries_sent: usize,
    /// Tracked NAT connections, by client.
    pub(super) connections: BTreeMap<SocketAddrV4, TrackedConnection>,
    /// Connections this node's stream has sent since it (re)started.
    pub(super) connections_sent: BTreeSet<SocketAddrV4>,
    /// This lbd process (a restart is a new one).
    pub(super) boot: u64,
    /// How far this node's wall clock is off, in milliseconds.
    pub(super) wall_skew_ms: i64,
}

pub(super) enum Delivery {
    Vrrp(Received),
    Sync(LinkEvent),
}

pub(super) struct Pair {
    pub(super) base: Instant,
    pub(super) now: Instant,
    pub(super) nodes: Vec<Node>,
    pub(super) vrrp_cut: bool,
    pub(super) sync_cut: bool,
    pub(super) sync_up: bool,
    /// The link breaks as the next snapshot `End` to this node is about to
    /// be delivered (the entries before it arrived, the end and the
    /// confirmation did not).
    pub(super) break_at_end: Option<usize>,
    pub(super) queue: VecDeque<(usize, Delivery)>,
}

impl Pair {
    /// Both nodes started at once, the sync link paired at once.
    pub(super) fn new(test: &str) -> Self {
        let base = Instant::now();
        let nodes = (0..2)
            .map(|i| {
                let dir = std::env::temp_dir()
                    .join(format!("lbd-pair-{test}-{i}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                let admin =
                    AdminStore::load(&dir, &format!("node{i}")).unwrap_or_else(|e| panic!("{e}"));
                Node {
                    c: Coordinator::new(base, settings(i)),
                    alive: true,
                    dir,
                    admin,
                    config_text: format!("# configuration of node {i}\n"),
                    applied_yaml: None,
                    vips_held: false,
                    garps: 0,
                    sessions: BTreeMap::new(),
                    sessions_at_takeover: None,
                    transitions: Vec::new(),
                    streams: 0,
                    tracker: StreamTracker::default(),
                    synced: BTreeMap::new(),
                    entries_sent: 0,
                    connections: BTreeMap::new(),
                    connections_sent: BTreeSet::new(),
                    boot: 1,
                    wall_skew_ms: 0,
                }
            })
            .collect();
        let mut pair = Self {
            base,
            now: base,
            nodes,
            vrrp_cut: false,
            sync_cut: false,
            sync_up: false,
            break_at_end: None,
            queue: VecDeque::new(),
        };
        pair.connect();
        pair
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub(super) fn ms(&self) -> u64 {
        u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Node `i`'s wall clock, in Unix milliseconds (skewed as set).
    pub(super) fn wall_ms(&self, i: usize) -> u64 {
        (1_700_000_000_000 + self.ms()).saturating_add_signed(self.nodes[i].wall_skew_ms)
    }

    pub(super) fn masters(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| self.nodes[i].alive && self.nodes[i].c.is_master())
            .collect()
    }

    /// Pairs the sync link if both nodes are alive and it is not cut.
    pub(super) fn connect(&mut self) {
        if self.sync_up || self.sync_cut || !self.nodes.iter().all(|n| n.alive) {
            return;
        }
        self.sync_up = true;
        for i in 0..2 {
            let event = LinkEvent::Connected {
                peer_node: format!("lb{}", 2 - i),
                peer_role: settings(1 - i).role,
                peer_boot_id: self.nodes[1 - i].boot,
            };
            self.queue.push_back((i, Delivery::Sync(event)));
        }
        self.run();
    }

    pub(super) fn disconnect(&mut self) {
        if !self.sync_up {
            return;
        }
        self.sync_up = false;
        for i in 0..2 {
            let event = LinkEvent::Disconnected {
                reason: "cut".into(),
            };
            self.queue.push_back((i, Delivery::Sync(event)));
        }
        self.run();
    }

    pub(super) fn partition(&mut self) {
        self.vrrp_cut = true;
        self.sync_cut = true;
        self.disconnect();
    }

    pub(super) fn heal(&mut self) {
        self.vrrp_cut = false;
        self.sync_cut = false;
        self.connect();
    }

    /// `kill -9`: nothing more from or to the node.
    pub(super) fn kill(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.nodes[i].vips_held = false;
        self.disconnect();
    }

    /// A new lbd on node `i`: same state directory, empty session table.
    pub(super) fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.c = Coordinator::new(self.now, settings(i));
        node.admin =
            AdminStore::load(&node.dir, &format!("node{i}")).unwrap_or_else(|e| panic!("{e}"));
        node.alive = true;
        node.sessions.clear();
        node.sessions_at_takeover = None;
        node.tracker = StreamTracker::default();
        node.synced.clear();
        node.boot += 1;
        self.run();
        self.connect();
    }

    /// SIGUSR2 on node `i`: a new lbd in the same process goes on from the
    /// coordinator's hand-over, with the data path as it was (sessions and
    /// the census's marks); the sync link drops with the old process and
    /// pairs again.
    pub(super) fn reexecute(&mut self, i: usize) {
        let resumed = self.nodes[i].c.hand_over();
        let secs = self.elapsed().as_secs();
        let node = &mut self.nodes[i];
        node.c = Coordinator::resume(self.now, settings(i), &resumed);
        node.tracker = node.tracker.clone().handed_over(secs);
        self.disconnect();
        self.run();
        self.connect();
    }

    /// Runs the fake clock forward by `d`, firing every timer on time.
    pub(super) fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = (0..2)
                .filter(|&i| self.nodes[i].alive)
                .filter_map(|i| self.nodes[i].c.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for i in 0..2 {
                        if self.nodes[i].alive
                            && self.nodes[i]
                                .c
                                .poll_timeout()
                                .is_some_and(|t| t <= self.now)
                        {
                            self.nodes[i].c.handle_timeout(self.now);
                        }
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Carries out every action and delivers every message until quiet.
    pub(super) fn run(&mut self) {
        loop {
            let mut progressed = false;
            while let Some((to, delivery)) = self.queue.pop_front() {
                progressed = true;
                if !self.nodes[to].alive {
                    continue;
                }
                let now = self.now;
                match delivery {
                    Delivery::Vrrp(packet) => self.nodes[to].c.handle_vrrp(now, &packet),
                    Delivery::Sync(event) => self.nodes[to].c.handle_sync(now, event),
                }
            }
            for i in 0..2 {
                while self.nodes[i].alive {
                    let Some(action) = self.nodes[i].c.poll_action() else {
                        break;
                    };
                    progressed = true;
                    self.carry_out(i, action);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    pub(super) fn carry_out(&mut self, i: usize, action: HaAction) {
        let peer = 1 - i;
        let elapsed = self.elapsed();
        let node = &mut self.nodes[i];
        match action {
            HaAction::SendVrrp { to, message } => {
                if !self.vrrp_cut && to == address(peer) {
                    let packet = Received {
                        src: address(i),
                        dst: to,
                        ttl: vrrp::IP_TTL,
                        protocol: vrrp::IP_PROTOCOL,
                        payload: message,
                        at: self.now,
                    };
                    self.queue.push_back((peer, Delivery::Vrrp(packet)));
                }
            }
            HaAction::AddVips => {
                node.vips_held = true;
                node.sessions_at_takeover = Some(node.sessions.len());
            }
            HaAction::RemoveVips => node.vips_held = false,
            HaAction::Garp { frames } => node.garps += frames,
            HaAction::Send(out) => {
                let message = match out {
                    Outgoing::Message(m) => m,
                    Outgoing::Config { version } => Message::Config {
                        version,
                        yaml: node.config_text.clone(),
                        admin: node.admin.changes(),
                    },
                    Outgoing::AllAdmin => Message::Admin {
                        changes: node.admin.changes(),
                    },
                    Outgoing::Admin { service, server } => Message::Admin {
                        changes: node.admin.recorded(&service, &server).into_iter().collect(),
                    },
                };
                self.deliver_sync(peer, message);
            }
            HaAction::ApplyConfig {
                version,
                yaml,
                admin,
            } => {
                for change in &admin {
                    node.admin.merge(change).unwrap_or_else(|e| panic!("{e}"));
                }
                node.applied_yaml = Some(yaml);
                node.c.config_applied(version, None);
            }
            HaAction::MergeAdmin(changes) => {
                for change in &changes {
                    node.admin.merge(change).unwrap_or_else(|e| panic!("{e}"));
                }
            }
            HaAction::InstallSessions(entries) => {
                for e in entries {
                    node.sessions.insert(e.client, e.server_address);
                }
            }
            HaAction::InstallConnections(entries) => {
                for e in entries {
                    node.connections.insert(e.client, e);
                }
            }
            HaAction::StreamSessions(step) => {
                node.streams += 1;
                match step {
                    StreamStep::Restart => node.tracker.restart(),
                    StreamStep::Resume => node.tracker.resume(),
                    StreamStep::Next => {}
                }
                // The connection stream: all again after a (re)start, then
                // what is new.
                if step != StreamStep::Next {
                    node.connections_sent.clear();
                }
                let new: Vec<TrackedConnection> = node
                    .connections
                    .values()
                    .filter(|c| !node.connections_sent.contains(&c.client))
                    .cloned()
                    .collect();
                node.connections_sent.extend(new.iter().map(|c| c.client));
                let connections = sync::connection_batches(new);
                // One census pass over the table, by the kernel's rule.
                let plan = node.tracker.start_pass(elapsed.as_secs());
                for (client, server) in &node.sessions {
                    let fresh = lb_common::Affinity {
                        real: 1,
                        real_address: u32::from(*server),
                        last_seen_ns: 0,
                        seen_jiffies: 0,
                        sync_pass: 0,
                    };
                    let entry = node.synced.entry(*client).or_insert(fresh);
                    if entry.real_address != fresh.real_address {
                        *entry = fresh;
                    }
                }
                let sessions = &node.sessions;
                node.synced.retain(|c, _| sessions.contains_key(c));
                let clients: Vec<Ipv4Addr> = node.synced.keys().copied().collect();
                let (sent, behind) =
                    sync::pass_over(node.synced.values_mut(), plan, 0, 60, usize::MAX);
                let entries: Vec<SessionEntry> = sent
                    .iter()
                    .map(|&i| SessionEntry {
                        service: SERVICE.into(),
                        client: clients[i],
                        server_address: node.sessions[&clients[i]],
                        age_ms: 0,
                    })
                    .collect();
                let outcome = node.tracker.end_pass(behind);
                let total = node.sessions.len() as u64;
                node.entries_sent += entries.len();
                for message in sync::stream_messages(entries, &outcome, total)
                    .into_iter()
                    .chain(connections)
                {
                    self.deliver_sync(peer, message);
                }
            }
            HaAction::SessionsConfirmed { pass } => node.tracker.confirmed(pass),
            HaAction::StateChanged { to, .. } => node.transitions.push((elapsed, to)),
        }
    }

    pub(super) fn deliver_sync(&mut self, to: usize, message: Message) {
        let end = matches!(
            message,
            Message::Sessions {
                snapshot: Some(sync::SnapshotMark::End),
                ..
            }
        );
        if end && self.break_at_end == Some(to) && self.sync_up {
            self.break_at_end = None;
            self.sync_up = false;
            for i in 0..2 {
                let event = LinkEvent::Disconnected {
                    reason: "broken mid-stream".into(),
                };
                self.queue.push_back((i, Delivery::Sync(event)));
            }
        }
        if self.sync_up {
            self.queue
                .push_back((to, Delivery::Sync(LinkEvent::Message(message))));
        }
    }

    /// An admin change made with lbctl on node `i` at the fake clock's time.
    pub(super) fn drain(
        &mut self,
        i: usize,
        server: &str,
        state: AdminState,
    ) -> Result<(), String> {
        if let Some(why) = self.nodes[i].c.refuse_admin() {
            return Err(why);
        }
        let ms = self.wall_ms(i);
        let node = &mut self.nodes[i];
        node.admin
            .set_state_at(SERVICE, server, state, ms)
            .map_err(|e| e.to_string())?;
        node.c.admin_changed(SERVICE, server);
        self.run();
        Ok(())
    }

    /// Both nodes record admin state `state` for `server`.
    pub(super) fn assert_both(&self, server: &str, state: &str, why: &str) {
        for node in 0..2 {
            assert_eq!(
                self.state_of(node, server).as_deref(),
                Some(state),
                "node {node}, {server}: {why}"
            );
        }
    }

    pub(super) fn state_of(&self, i: usize, server: &str) -> Option<String> {
        self.nodes[i]
            .admin
            .get(SERVICE, server)
            .and_then(|o| o.state.clone())
    }

    /// Steady state: both up and paired, the primary master.
    pub(super) fn steady(test: &str) -> Self {
        let mut pair = Self::new(test);
        pair.advance(ADVERT * 10);
        assert_eq!(pair.masters(), vec![0], "the primary is master");
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}

pub(super) fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, n)
}
