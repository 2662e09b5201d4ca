//! The coordinator's answer to `lbctl ha` (and the `ha` of `lbctl status`).

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use super::Coordinator;
use crate::{
    config::Role,
    control::protocol::{HaRole, HaState, HaStatus, SyncStatus},
    sync::LinkStatsSnapshot,
    vrrp::State,
};

impl Coordinator {
    /// `lbctl ha`: the pair as of `now`, with the sync link's endpoint and
    /// counters when it is configured.
    #[must_use]
    pub fn status(
        &self,
        now: Instant,
        link: Option<(SocketAddrV4, LinkStatsSnapshot)>,
    ) -> HaStatus {
        let last = self.vrrp.last_advert();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let sync = match (&self.sync, link) {
            (Some(view), Some((peer, stats))) => SyncStatus {
                configured: true,
                peer: Some(peer.to_string()),
                peer_node: view.peer_node.clone(),
                connected: view.connected,
                sent: stats.sent,
                received: stats.received,
                lag_ms: stats.lag_ms,
                last_error: stats.last_error,
                config_version: (self.role == Role::Primary).then_some(view.config_version),
                peer_applied_version: view.peer_applied.as_ref().map(|(v, _)| *v),
                peer_apply_error: view.peer_applied.as_ref().and_then(|(_, e)| e.clone()),
            },
            _ => SyncStatus::default(),
        };
        HaStatus {
            role: match self.role {
                Role::Primary => HaRole::Primary,
                Role::Secondary => HaRole::Secondary,
            },
            state: match self.vrrp.state() {
                _ if self.fault => HaState::Fault,
                State::Initialize => HaState::Init,
                State::Backup => HaState::Backup,
                State::Master => HaState::Master,
            },
            peer: self.vrrp.config().peer,
            priority: Some(self.vrrp.priority()),
            configured_priority: Some(self.configured_priority),
            preempt_held: self.preempt_held(),
            advert_interval_ms: Some(millis(self.vrrp.master_adver_interval())),
            last_advert_age_ms: last.map(|(at, _, _)| millis(now.saturating_duration_since(at))),
            last_advert_from: last.map(|(_, from, _)| from),
            last_advert_priority: last.map(|(_, _, p)| p),
            vrrp_drops: self.vrrp.counters().dropped_total(),
            sync,
        }
    }
}
