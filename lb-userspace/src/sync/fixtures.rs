//! Fixtures shared by the sync module's tests: the test key, nodes, sample
//! admin changes, affinity entries and frame bodies, and sessions wired back
//! to back.

use std::net::Ipv4Addr;
use std::time::Instant;

use super::messages::{encode_payload, Body, Hello, Writer};
use super::{
    AdminChange, Event, Local, Message, SessionEntry, SnapshotMark, SyncKey, SyncSession, NONCE_LEN,
};
use crate::config::Role;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";

pub(super) fn key() -> SyncKey {
    SyncKey::new(KEY).unwrap()
}

pub(super) fn local(node: &str, role: Role) -> Local {
    Local {
        node: node.to_owned(),
        role,
        boot_id: 7,
    }
}

pub(super) fn session(
    node: &str,
    role: Role,
    key: SyncKey,
    nonce: u8,
    now: Instant,
) -> SyncSession {
    SyncSession::new(local(node, role), key, [nonce; NONCE_LEN], now)
}

pub(super) fn primary(now: Instant) -> SyncSession {
    session("lb1", Role::Primary, key(), 1, now)
}

pub(super) fn secondary(now: Instant) -> SyncSession {
    session("lb2", Role::Secondary, key(), 2, now)
}

pub(super) fn drain(s: &mut SyncSession) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(frame) = s.poll_transmit() {
        out.extend(frame);
    }
    out
}

pub(super) fn events(s: &mut SyncSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Delivers bytes both ways until both sides are quiet; returns what
/// `b` sent to `a` (the recording an attacker could make).
pub(super) fn pump(a: &mut SyncSession, b: &mut SyncSession, now: Instant) -> Vec<u8> {
    let mut recorded = Vec::new();
    loop {
        let ab = drain(a);
        let ba = drain(b);
        if ab.is_empty() && ba.is_empty() {
            return recorded;
        }
        b.handle_bytes(now, &ab);
        a.handle_bytes(now, &ba);
        recorded.extend(ba);
    }
}

pub(super) fn paired(now: Instant) -> (SyncSession, SyncSession) {
    let (mut a, mut b) = (primary(now), secondary(now));
    pump(&mut a, &mut b, now);
    assert!(a.is_paired() && b.is_paired());
    events(&mut a);
    events(&mut b);
    (a, b)
}

pub(super) fn change(n: u64) -> AdminChange {
    AdminChange {
        service: "hyperspace".into(),
        server: format!("hs{n}"),
        state: n.is_multiple_of(2).then(|| "drain".into()),
        weight: Some(u16::try_from(n).unwrap()),
        file_weight: n.is_multiple_of(3).then_some(100),
        changed_ms: 1_700_000_000_000 + n,
        seq: n,
        origin: "lb1".into(),
    }
}

pub(super) fn entry(n: u8) -> SessionEntry {
    SessionEntry {
        service: "hyperspace".into(),
        client: Ipv4Addr::new(10, 0, 0, n),
        server_address: Ipv4Addr::new(198, 18, 0, 21),
        age_ms: u32::from(n) * 1000,
    }
}

pub(super) fn all_bodies() -> Vec<Body> {
    vec![
        Body::Hello(Hello {
            nonce: [9; NONCE_LEN],
            node: "lb1".into(),
            role: Role::Secondary,
            boot_id: u64::MAX,
        }),
        Body::Confirm,
        Body::Heartbeat { sent_ms: 12345 },
        Body::HeartbeatAck { sent_ms: 0 },
        Body::Message(Message::Config {
            version: 3,
            yaml: "services:\n  - name: hyperspace # ünïcode\n".into(),
            admin: vec![change(1), change(2), change(3)],
        }),
        Body::Message(Message::Config {
            version: 0,
            yaml: String::new(),
            admin: vec![],
        }),
        Body::Message(Message::Admin {
            changes: vec![change(6)],
        }),
        Body::Message(Message::Applied {
            version: 4,
            error: None,
        }),
        Body::Message(Message::Applied {
            version: 5,
            error: Some("cannot bind 198.18.0.100:80: address in use".into()),
        }),
        Body::Message(Message::Pass { pass: 7 }),
        Body::Message(Message::Sessions {
            entries: vec![entry(1), entry(2)],
            snapshot: Some(SnapshotMark::Begin { total: 2 }),
        }),
        Body::Message(Message::Sessions {
            entries: vec![],
            snapshot: Some(SnapshotMark::End),
        }),
        Body::Message(Message::Sessions {
            entries: vec![entry(3)],
            snapshot: None,
        }),
        Body::Message(Message::Connections {
            entries: vec![connection(1, 6), connection(2, 17)],
        }),
        Body::Message(Message::Connections { entries: vec![] }),
    ]
}

/// A tracked connection of client source `n`.
pub(super) fn connection(n: u8, protocol: u8) -> super::TrackedConnection {
    let at = |last: u8, port: u16| {
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 1, last), port)
    };
    super::TrackedConnection {
        service: "mychart".into(),
        protocol,
        client: at(n, 40_000 + u16::from(n)),
        vip: at(100, 443),
        source: at(11, 2_000 + u16::from(n)),
        server: at(21, 8443),
        state: lb_common::nat::CONN_ESTABLISHED,
        age_ms: u32::MAX,
    }
}

pub(super) fn payload_of(body: &Body) -> Vec<u8> {
    let mut w = Writer::default();
    encode_payload(&mut w, body).unwrap();
    w.0
}
