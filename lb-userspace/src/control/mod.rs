//! The control socket: how `lbctl` (and the web console) talk to `lbd`.
//!
//! [`protocol`] holds the typed requests and replies both sides share,
//! [`server`] the listener inside lbd, [`client`] the call lbctl makes.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{call, ClientError};
pub use protocol::{Answer, Reply, Request};
pub use server::{bind, serve, ControlError, Pending, CAPS, MAX_REQUEST_BYTES};
