//! Two coordinators on a simulated network with a fake clock: VRRP
//! advertisements go through the real codec, the sync channel carries the
//! real messages, links can be cut and healed, nodes killed and restarted.
//! Each node's "shell" carries out the actions as the daemon does, against
//! an admin store in a temporary directory and an in-memory session table.
//! Every test cites the rule it checks.

use std::{
    collections::{BTreeMap, VecDeque},
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use super::coordinator::{Coordinator, HaAction, Outgoing, Settings, StreamStep, SYNC_HOLD};
use super::socket::Received;
use crate::{
    admin::AdminStore,
    config::{AdminState, Role},
    sync::{self, LinkEvent, Message, SessionEntry, StreamTracker},
    vrrp::{self, State},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// Advertisement interval: 1 s (100 centiseconds).
const ADVERT: Duration = Duration::from_secs(1);
const SERVICE: &str = "hyperspace";

fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + u8::try_from(i).unwrap_or(0))
}

/// Node 0 is the primary (priority 200), node 1 the secondary (100).
fn settings(i: usize) -> Settings {
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
fn master_down_of_secondary() -> Duration {
    ADVERT * 3 + ADVERT * (256 - 100) / 256
}

/// What one node's daemon would hold.
struct Node {
    c: Coordinator,
    alive: bool,
    dir: PathBuf,
    admin: AdminStore,
    config_text: String,
    applied_yaml: Option<String>,
    vips_held: bool,
    garps: u32,
    /// client -> real-server address.
    sessions: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Sessions held when this node last added the VIPs.
    sessions_at_takeover: Option<usize>,
    /// (time, new state).
    transitions: Vec<(Duration, State)>,
    /// Session streams this node's coordinator asked for.
    streams: usize,
    /// What this node's stream has sent (the census's tracker).
    tracker: StreamTracker,
    /// The census's view of `sessions`: each client's entry and the pass
    /// that last sent it.
    synced: BTreeMap<Ipv4Addr, lb_common::Affinity>,
    /// Session entries this node has sent.
    entries_sent: usize,
    /// This lbd process (a restart is a new one).
    boot: u64,
    /// How far this node's wall clock is off, in milliseconds.
    wall_skew_ms: i64,
}

enum Delivery {
    Vrrp(Received),
    Sync(LinkEvent),
}

struct Pair {
    base: Instant,
    now: Instant,
    nodes: Vec<Node>,
    vrrp_cut: bool,
    sync_cut: bool,
    sync_up: bool,
    /// The link breaks as the next snapshot `End` to this node is about to
    /// be delivered (the entries before it arrived, the end and the
    /// confirmation did not).
    break_at_end: Option<usize>,
    queue: VecDeque<(usize, Delivery)>,
}

impl Pair {
    /// Both nodes started at once, the sync link paired at once.
    fn new(test: &str) -> Self {
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

    fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Node `i`'s wall clock, in Unix milliseconds (skewed as set).
    fn wall_ms(&self, i: usize) -> u64 {
        (1_700_000_000_000 + self.ms()).saturating_add_signed(self.nodes[i].wall_skew_ms)
    }

    fn masters(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| self.nodes[i].alive && self.nodes[i].c.is_master())
            .collect()
    }

    /// Pairs the sync link if both nodes are alive and it is not cut.
    fn connect(&mut self) {
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

    fn disconnect(&mut self) {
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

    fn partition(&mut self) {
        self.vrrp_cut = true;
        self.sync_cut = true;
        self.disconnect();
    }

    fn heal(&mut self) {
        self.vrrp_cut = false;
        self.sync_cut = false;
        self.connect();
    }

    /// `kill -9`: nothing more from or to the node.
    fn kill(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.nodes[i].vips_held = false;
        self.disconnect();
    }

    /// A new lbd on node `i`: same state directory, empty session table.
    fn restart(&mut self, i: usize) {
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

    /// Runs the fake clock forward by `d`, firing every timer on time.
    fn advance(&mut self, d: Duration) {
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
    fn run(&mut self) {
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

    fn carry_out(&mut self, i: usize, action: HaAction) {
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
            HaAction::StreamSessions(step) => {
                node.streams += 1;
                match step {
                    StreamStep::Restart => node.tracker.restart(),
                    StreamStep::Resume => node.tracker.resume(),
                    StreamStep::Next => {}
                }
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
                for message in sync::stream_messages(entries, &outcome, total) {
                    self.deliver_sync(peer, message);
                }
            }
            HaAction::SessionsConfirmed { pass } => node.tracker.confirmed(pass),
            HaAction::StateChanged { to, .. } => node.transitions.push((elapsed, to)),
        }
    }

    fn deliver_sync(&mut self, to: usize, message: Message) {
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
    fn drain(&mut self, i: usize, server: &str, state: AdminState) -> Result<(), String> {
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
    fn assert_both(&self, server: &str, state: &str, why: &str) {
        for node in 0..2 {
            assert_eq!(
                self.state_of(node, server).as_deref(),
                Some(state),
                "node {node}, {server}: {why}"
            );
        }
    }

    fn state_of(&self, i: usize, server: &str) -> Option<String> {
        self.nodes[i]
            .admin
            .get(SERVICE, server)
            .and_then(|o| o.state.clone())
    }

    /// Steady state: both up and paired, the primary master.
    fn steady(test: &str) -> Self {
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

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, n)
}

/// RFC 5798 section 6.4.2 (a backup with the higher priority and preempt
/// takes over) and the contract's "the primary's configuration is the
/// truth": both nodes start at once; the primary ends master, the
/// secondary backup with the primary's configuration, and only the master
/// holds the VIP.
#[test]
fn cold_start_of_both_makes_the_primary_master_and_replicates_its_configuration() {
    let mut pair = Pair::new("cold");
    pair.advance(ADVERT * 10);
    assert_eq!(pair.masters(), vec![0]);
    assert!(pair.nodes[0].vips_held && !pair.nodes[1].vips_held);
    assert_eq!(pair.nodes[1].c.state(), State::Backup);
    assert_eq!(
        pair.nodes[1].applied_yaml.as_deref(),
        Some(pair.nodes[0].config_text.as_str())
    );
    assert_eq!(
        pair.nodes[0].applied_yaml, None,
        "the primary ignores the secondary's"
    );
    assert!(!pair.nodes[0].c.preempt_held() && !pair.nodes[1].c.preempt_held());
    assert_eq!(pair.nodes[0].c.priority(), 200);
    // Issue 12: the secondary tells the primary it applied what it was sent.
    let (sent, applied) = pair.nodes[0].c.config_versions();
    assert!(sent >= 1, "the primary sent its configuration");
    assert_eq!(
        applied,
        Some((sent, None)),
        "and knows the secondary applied it"
    );
}

/// RFC 5798 section 6.4.2: a backup becomes master when
/// `Master_Down_Timer` fires (3 x `Master_Adver_Interval` + `Skew_Time`
/// after the last advertisement), not before; it holds the VIPs with the
/// sessions the master had streamed.
#[test]
fn rfc5798_6_4_2_backup_takes_over_when_the_master_dies() {
    let mut pair = Pair::steady("kill");
    for n in 1..=5 {
        pair.nodes[0].sessions.insert(client(n), address(9));
    }
    pair.advance(ADVERT * 2);
    assert_eq!(pair.nodes[1].sessions.len(), 5, "streamed to the backup");
    let killed = pair.elapsed();
    pair.kill(0);
    pair.advance(ADVERT * 3);
    assert!(!pair.nodes[1].c.is_master(), "not before 3 intervals");
    pair.advance(master_down_of_secondary());
    assert_eq!(pair.masters(), vec![1]);
    let took_over = pair.nodes[1]
        .transitions
        .iter()
        .find(|(t, s)| *s == State::Master && *t >= killed)
        .map(|(t, _)| *t - killed)
        .unwrap_or_else(|| panic!("no takeover"));
    assert!(took_over <= master_down_of_secondary(), "{took_over:?}");
    assert!(pair.nodes[1].vips_held);
    assert!(pair.nodes[1].garps > 0, "announced");
    assert_eq!(pair.nodes[1].sessions_at_takeover, Some(5));
}

/// RFC 5798 section 6.4.3 (a master hearing a higher priority becomes
/// backup) and the coordinator's split-brain rule (a master hearing another
/// master announces its VIPs again): cut apart, both become master; healed,
/// the secondary steps down and the primary re-announces.
#[test]
fn partition_and_heal_leaves_one_master_that_announces_again() {
    let mut pair = Pair::steady("partition");
    pair.partition();
    pair.advance(ADVERT * 6);
    assert_eq!(pair.masters(), vec![0, 1], "split brain while cut");
    let garps_before = pair.nodes[0].garps;
    pair.heal();
    pair.advance(ADVERT * 3);
    assert_eq!(pair.masters(), vec![0]);
    assert!(!pair.nodes[1].vips_held, "the secondary released the VIP");
    assert!(
        pair.nodes[0].garps > garps_before,
        "the primary announced the VIP again after the conflict"
    );
}

/// The coordinator's preempt rule: a returning primary holds its priority
/// at 1 until the master's session snapshot has arrived, so it takes over
/// only with every session, including those made while it was away.
#[test]
fn a_returning_primary_does_not_preempt_before_it_has_the_sessions() {
    let mut pair = Pair::steady("return");
    pair.kill(0);
    pair.advance(ADVERT * 6);
    assert_eq!(pair.masters(), vec![1]);
    for n in 1..=7 {
        pair.nodes[1].sessions.insert(client(n), address(8));
    }
    pair.sync_cut = true;
    pair.restart(0);
    pair.advance(SYNC_HOLD / 2);
    assert_eq!(
        pair.masters(),
        vec![1],
        "no preemption without the sessions"
    );
    assert!(pair.nodes[0].c.preempt_held());
    assert_eq!(pair.nodes[0].c.priority(), 1);
    pair.sync_cut = false;
    pair.connect();
    pair.advance(ADVERT * 5);
    assert_eq!(pair.masters(), vec![0], "preempts once the sessions are in");
    assert_eq!(pair.nodes[0].sessions_at_takeover, Some(7));
}

/// The same rule's bound: without a sync link the hold ends after
/// `SYNC_HOLD`, so a lost link never keeps the primary from serving.
#[test]
fn the_preempt_hold_ends_after_sync_hold_without_a_peer_table() {
    let mut pair = Pair::steady("hold");
    pair.kill(0);
    pair.advance(ADVERT * 6);
    pair.sync_cut = true;
    pair.restart(0);
    pair.advance(SYNC_HOLD - ADVERT);
    assert_eq!(pair.masters(), vec![1]);
    pair.advance(ADVERT * 5);
    assert_eq!(pair.masters(), vec![0]);
    assert!(!pair.nodes[0].c.preempt_held());
}

/// The contract's admin rule: changes are accepted on the primary, and on
/// the secondary only while it is master and the primary unreachable; they
/// replicate both ways and the latest change wins on both nodes.
#[test]
fn admin_changes_replicate_both_ways_and_the_latest_wins() {
    let mut pair = Pair::steady("admin");
    pair.drain(0, "hs1", AdminState::Drain)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pair.state_of(1, "hs1").as_deref(), Some("drain"));
    let refused = pair.drain(1, "hs2", AdminState::Halt);
    assert!(
        refused.is_err_and(|e| e.contains("go to the primary")),
        "a paired secondary refuses"
    );

    pair.partition();
    pair.advance(ADVERT * 6);
    assert!(pair.nodes[1].c.is_master());
    // During the partition: the primary changes hs1 first, the secondary later.
    pair.drain(0, "hs1", AdminState::Online)
        .unwrap_or_else(|e| panic!("{e}"));
    pair.advance(ADVERT);
    pair.drain(1, "hs1", AdminState::Halt)
        .unwrap_or_else(|e| panic!("a master without its primary accepts: {e}"));
    pair.advance(ADVERT);
    // ...and hs2 the other way round.
    pair.drain(1, "hs2", AdminState::Drain)
        .unwrap_or_else(|e| panic!("{e}"));
    pair.advance(ADVERT);
    pair.drain(0, "hs2", AdminState::Online)
        .unwrap_or_else(|e| panic!("{e}"));

    pair.heal();
    pair.advance(ADVERT * 3);
    pair.assert_both("hs1", "halt", "");
    pair.assert_both("hs2", "online", "");
}

/// Issue 12: a change made after seeing the peer's is the later one,
/// whichever node's wall clock is ten minutes off and in which direction.
#[test]
fn a_ten_minute_clock_skew_changes_nothing() {
    for skew in [-600_000, 600_000] {
        let mut pair = Pair::steady(&format!("skew{skew}"));
        pair.nodes[1].wall_skew_ms = skew;
        pair.drain(0, "hs1", AdminState::Drain)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pair.state_of(1, "hs1").as_deref(), Some("drain"));
        // The primary unreachable: the secondary, master, halts hs1.
        pair.partition();
        pair.advance(ADVERT * 6);
        assert!(pair.nodes[1].c.is_master());
        pair.drain(1, "hs1", AdminState::Halt)
            .unwrap_or_else(|e| panic!("{e}"));
        pair.heal();
        pair.advance(ADVERT * 3);
        let why = format!("skew {skew} ms: the secondary's later halt");
        pair.assert_both("hs1", "halt", &why);
        // And back: the primary returns hs1 after seeing the halt.
        pair.drain(0, "hs1", AdminState::Online)
            .unwrap_or_else(|e| panic!("{e}"));
        pair.advance(ADVERT);
        let why = format!("skew {skew} ms: the primary's later online");
        pair.assert_both("hs1", "online", &why);
    }
}

/// The coordinator's stream rule: a master sends sessions only while
/// paired, a backup never does, and a master ignores sessions it receives.
#[test]
fn only_the_paired_master_streams_sessions() {
    let mut pair = Pair::steady("stream");
    let (streams, backup_streams) = (pair.nodes[0].streams, pair.nodes[1].streams);
    pair.nodes[1].sessions.insert(client(1), address(7));
    pair.nodes[0].sessions.insert(client(2), address(9));
    pair.advance(ADVERT * 3);
    assert_eq!(pair.nodes[1].sessions.get(&client(2)), Some(&address(9)));
    assert_eq!(
        pair.nodes[0].sessions.get(&client(1)),
        None,
        "the backup's table does not flow to the master"
    );
    assert_eq!(
        pair.nodes[1].streams, backup_streams,
        "a backup never streams"
    );
    assert!(
        pair.nodes[0].streams >= streams + 2,
        "the master streams every second"
    );
    pair.disconnect();
    let streams = pair.nodes[0].streams;
    pair.advance(ADVERT * 3);
    assert_eq!(
        pair.nodes[0].streams, streams,
        "nothing to stream to while unpaired"
    );
}

/// Issue 12, a slow or flapping peer: a link that drops and comes back to
/// the same peer process resumes the session stream; it does not send the
/// table again. A restarted peer process (new boot id) gets all of it.
#[test]
fn a_flapping_link_resumes_the_stream_and_a_restarted_peer_gets_it_all() {
    let mut pair = Pair::steady("flap");
    for n in 1..=200 {
        pair.nodes[0].sessions.insert(client(n), address(9));
    }
    pair.advance(ADVERT * 2);
    assert_eq!(pair.nodes[1].sessions.len(), 200);
    let sent = pair.nodes[0].entries_sent;
    assert_eq!(sent, 200, "each client once");
    for round in 0..10 {
        pair.disconnect();
        pair.advance(ADVERT / 2);
        pair.connect();
        pair.advance(ADVERT * 2);
        assert_eq!(
            pair.nodes[0].entries_sent, sent,
            "reconnection {round}: nothing sent again"
        );
    }
    pair.nodes[0].sessions.insert(client(201), address(9));
    pair.advance(ADVERT * 2);
    assert_eq!(pair.nodes[0].entries_sent, sent + 1, "only the new client");
    pair.kill(1);
    pair.restart(1);
    pair.advance(ADVERT * 3);
    assert_eq!(pair.nodes[1].sessions.len(), 201);
    assert_eq!(
        pair.nodes[0].entries_sent,
        sent + 1 + 201,
        "all to a new process"
    );
}

/// Issue 12, a snapshot interrupted and resumed: the link breaks after the
/// returning primary received the entries but before the snapshot's end;
/// the returning primary stays held; on reconnection the master sends again
/// only what was not confirmed, and the end: the primary then preempts with
/// every session.
#[test]
fn an_interrupted_snapshot_is_resumed_and_the_hold_waits_for_its_end() {
    let mut pair = Pair::steady("resume");
    pair.kill(0);
    pair.advance(ADVERT * 6);
    assert_eq!(pair.masters(), vec![1]);
    for n in 1..=50 {
        pair.nodes[1].sessions.insert(client(n), address(8));
    }
    pair.sync_cut = true;
    pair.restart(0);
    pair.break_at_end = Some(0);
    pair.sync_cut = false;
    pair.connect();
    assert_eq!(pair.break_at_end, None, "the link broke mid-snapshot");
    assert_eq!(pair.nodes[0].sessions.len(), 50, "the entries arrived");
    let sent = pair.nodes[1].entries_sent;
    pair.advance(ADVERT * 2);
    assert!(pair.nodes[0].c.preempt_held(), "held: no end yet");
    assert_eq!(pair.masters(), vec![1]);
    pair.connect();
    pair.advance(ADVERT * 5);
    assert_eq!(pair.masters(), vec![0], "preempts once the snapshot ended");
    assert_eq!(pair.nodes[0].sessions_at_takeover, Some(50));
    assert_eq!(
        pair.nodes[1].entries_sent,
        sent + 50,
        "the unconfirmed pass once more, not a new snapshot each time"
    );
}
