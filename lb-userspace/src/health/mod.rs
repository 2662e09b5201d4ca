//! Real-server health checks: the probes, the rise/fall decision, and the
//! scheduler that runs them.
//!
//! Probe and decision are kept apart:
//! - [`probe`](fn@probe) runs one check against one server and returns pass or fail,
//!   the time it took and a reason an operator can read. A `tcp` check is a
//!   TCP connect; `http` and `https` send one HTTP/1.1 `GET` (RFC 9112) with
//!   `Host` (RFC 9110 §7.2) and `Connection: close`, the latter over TLS
//!   (RFC 8446) with the server name indication (RFC 6066 §3) when `host` is
//!   set; `exec` runs a program and passes on exit status 0. The whole probe
//!   is bounded by `timeout_ms`.
//! - [`Hysteresis`] is the pure rise/fall decision: a server counts as up
//!   until its first check completes, a failed first check takes it down at
//!   once, and after that `rise` consecutive passes bring it up and `fall`
//!   consecutive failures take it down.
//! - [`HealthMonitor`] runs every distinct check in its own task, so checks
//!   run concurrently, one slow server never delays another, and a check
//!   still running is never started again. Identical checks (same address,
//!   same parameters) used by several services run once and their result goes
//!   to every (service, server) that uses them. Results go through one
//!   dispatcher task, so the [`HealthEvent`]s of a server always arrive in
//!   the order its checks completed.

mod hysteresis;
mod probe;
mod schedule;
#[cfg(test)]
mod testing;

pub use self::hysteresis::Hysteresis;
pub use self::probe::{
    end_running_checks, probe, resume_checks, HealthError, ProbeResult, ProbeSpec, ProbeTarget,
    HEALTH_USER_AGENT, MAX_BODY,
};
pub use self::schedule::{next_start, CheckTarget, HealthEvent, HealthMonitor, ServerHealth};
