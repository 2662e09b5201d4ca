//! The HA coordinator's rules, tested as a pair on the simulated network of
//! [`super::pair_sim`]. Every test cites the rule it checks.

use super::coordinator::SYNC_HOLD;
use super::pair_sim::{address, client, master_down_of_secondary, Pair, ADVERT};
use crate::{config::AdminState, vrrp::State};

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

/// Issue 14 (NAT and SNAT in a pair): the master's tracked connections
/// reach the backup, which holds them when it takes over.
#[test]
fn the_masters_connections_reach_the_backup_and_outlive_the_takeover() {
    let mut pair = Pair::steady("conns");
    for n in 1..=3 {
        let c = connection(n);
        pair.nodes[0].connections.insert(c.client, c);
    }
    pair.advance(ADVERT * 2);
    assert_eq!(pair.nodes[1].connections.len(), 3, "streamed to the backup");
    let late = connection(4);
    pair.nodes[0].connections.insert(late.client, late);
    pair.advance(ADVERT * 2);
    assert_eq!(pair.nodes[1].connections.len(), 4, "and each new one");
    pair.kill(0);
    pair.advance(master_down_of_secondary() + ADVERT);
    assert_eq!(pair.masters(), vec![1]);
    assert_eq!(pair.nodes[1].connections, pair.nodes[0].connections);
}

/// A tracked connection of client `n`.
fn connection(n: u8) -> crate::sync::TrackedConnection {
    let at = |host: std::net::Ipv4Addr, port: u16| std::net::SocketAddrV4::new(host, port);
    crate::sync::TrackedConnection {
        service: "web".into(),
        protocol: 6,
        client: at(client(n), 40_000),
        vip: at(std::net::Ipv4Addr::new(198, 18, 0, 100), 443),
        source: at(
            std::net::Ipv4Addr::new(198, 18, 0, 99),
            1_024 + u16::from(n),
        ),
        server: at(std::net::Ipv4Addr::new(198, 18, 0, 21), 443),
        state: lb_common::nat::CONN_ESTABLISHED,
        age_ms: 0,
    }
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
    preempts_once_the_sessions_are_in(&mut pair, 7);
}

/// Node 0 is back, a backup, while node 1 is master with `sessions` and
/// the sync link is cut: node 0 holds its priority at 1 (no preemption)
/// until the link is back, then takes over with every session.
fn preempts_once_the_sessions_are_in(pair: &mut Pair, sessions: usize) {
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
    assert_eq!(pair.nodes[0].sessions_at_takeover, Some(sessions));
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

/// Issue 13 (SIGUSR2 on the master): the re-executed lbd goes on as master,
/// so the backup never takes over and nobody is told again where the VIPs
/// are; the sync session comes back as the same process and the stream
/// resumes: what the backup confirmed is not sent again, new clients are.
#[test]
fn a_re_executed_master_stays_master_and_resumes_its_stream() {
    let mut pair = Pair::steady("reexec");
    for n in 1..=20 {
        pair.nodes[0].sessions.insert(client(n), address(9));
    }
    pair.advance(ADVERT * 10);
    assert_eq!(pair.nodes[1].sessions.len(), 20, "streamed to the backup");
    let garps = pair.nodes[0].garps;
    let sent = pair.nodes[0].entries_sent;
    let backup = pair.nodes[1].transitions.clone();

    pair.reexecute(0);
    pair.advance(master_down_of_secondary() * 3);
    assert_eq!(pair.masters(), vec![0]);
    assert!(pair.nodes[0].vips_held && !pair.nodes[1].vips_held);
    assert_eq!(pair.nodes[1].transitions, backup, "the backup never moved");
    assert_eq!(pair.nodes[0].garps, garps, "no gratuitous ARP");
    assert_eq!(pair.nodes[0].c.priority(), 200, "no preempt hold");
    assert_eq!(pair.nodes[0].entries_sent, sent, "no new snapshot");

    pair.nodes[0].sessions.insert(client(21), address(9));
    pair.advance(ADVERT * 10);
    assert_eq!(pair.nodes[1].sessions.len(), 21, "the stream goes on");
}

/// The coordinator's "no link, no VRRP" rule (keepalived's FAULT): the
/// master's interface loses its link; it gives the VIPs up at once and says
/// `fault` (not master) for as long as the link is gone, while the peer
/// takes over; with the link back it is a backup and, a returning primary,
/// takes over again only with the peer's sessions.
#[test]
fn a_master_without_link_is_in_fault_and_gives_the_vips_up() {
    use crate::control::protocol::HaState;
    let mut pair = Pair::steady("fault");
    assert_eq!(pair.masters(), vec![0]);
    pair.partition();
    let now = pair.now;
    pair.nodes[0].c.link_changed(now, false);
    pair.run();
    assert!(!pair.nodes[0].vips_held, "the VIPs are given up at once");
    pair.advance(ADVERT * 6);
    assert_eq!(pair.masters(), vec![1], "the peer took over");
    assert!(pair.nodes[0].c.fault());
    assert_eq!(pair.nodes[0].c.status(pair.now, None).state, HaState::Fault);
    pair.nodes[0].c.link_changed(pair.now, false);
    pair.run();
    assert_eq!(pair.masters(), vec![1], "a repeated report changes nothing");

    for n in 1..=7 {
        pair.nodes[1].sessions.insert(client(n), address(8));
    }
    let now = pair.now;
    pair.nodes[0].c.link_changed(now, true);
    pair.vrrp_cut = false;
    pair.run();
    assert_eq!(pair.nodes[0].c.state(), State::Backup);
    assert_eq!(
        pair.nodes[0].c.status(pair.now, None).state,
        HaState::Backup
    );
    preempts_once_the_sessions_are_in(&mut pair, 7);
}
