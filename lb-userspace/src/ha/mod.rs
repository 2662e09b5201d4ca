//! The HA pair: the sans-IO [`coordinator`] holds the pair's policy (VRRP,
//! preempt hold, what to replicate when) and hands out [`actions`]; [`socket`] is VRRP's raw socket
//! and [`garp`] the schedule of gratuitous ARP after a takeover;
//! [`handover`] is what a member hands the lbd it re-executes. The daemon
//! (`daemon::cluster`) is the I/O shell between them and the rest of lbd.
//! Tests: `pair_sim` (two coordinators on a simulated network with a fake
//! clock) and `pair_tests` (the pair's rules on it).

pub mod actions;
pub mod coordinator;
pub mod garp;
pub mod handover;
pub mod socket;

#[cfg(test)]
mod pair_sim;
#[cfg(test)]
mod pair_tests;

pub use coordinator::{Coordinator, HaAction, Outgoing, Settings, StreamStep};
pub use garp::GarpSchedule;
pub use handover::{AdvertRelay, Handover, Resumed, HANDOVER_ENV, RELAY_ENV};
pub use socket::{parse_ipv4, Received, SocketError, VrrpSocket};
