//! `cargo xtask bench`: the load balancer side by side with what a hospital
//! would deploy instead, on this machine, in one run (issue 6).
//!
//! A network-namespace lab ([`DrLab`](lb_tests::lab::DrLab): a client with 256 source addresses,
//! the load balancer's namespace, three real servers running nginx) carries
//! five systems in turn, round after round (A B C D E A B C D E ...):
//!
//! 1. **direct**: the client picks a real server itself from its source
//!    address (no load balancer: the floor of the lab);
//! 2. **bare DR**: `bench-bare-dr`, an XDP forwarder with no tables and no
//!    counters (the limit of any direct-routing load balancer here);
//! 3. **lbd**: the product, started from a configuration file as a user would;
//! 4. **nftables**: DNAT by `jhash ip saddr` with masquerade;
//! 5. **`HAProxy`**: `mode tcp`, `balance source`, `hash-type consistent`,
//!    `nbthread 1`.
//!
//! The load is `wrk` with a bind shim (compiled here from [`BIND_SHIM_C`])
//! that gives every connection the next client source address; the client
//! runs on the last CPU, servers and user-space load balancers on CPU 0.
//! Beside the traffic: the per-packet cost of the XDP programs
//! (`BPF_PROG_TEST_RUN`), the control plane (Maglev tables, applying a large
//! configuration, `lbctl drain` to the map change, map memory), the time from
//! a real server's death to its clients moving, and the traffic stall when
//! the master of an HA pair is killed.
//!
//! Everything runs bounded in count and time; the lab (namespaces, processes,
//! files) is removed on every exit path, a Ctrl-C included. The results go to
//! `BENCHMARKS.md` (between the `lb-bench` markers, so the hand-written text
//! around them stays), `bench/results.svg` and `bench/results.json`.
//!
//! The binary `lb-bench` is a thin wrapper over [`run_bench`]. The measured
//! figures are one module each under `scenario`; the writers of the report,
//! the chart and the data are under `report`.

mod client;
mod cpu;
mod lab;
mod machine;
mod options;
mod report;
mod run;
mod scenario;
mod signal;
mod stats;

pub use client::direct_pick;
pub use lab::files::BIND_SHIM_C;
pub use options::{Options, System, Workload};
pub use run::{run_bench, Outcome};
pub use signal::{install_signal_handlers, STOP};

/// Port nginx listens on in the real servers (the service port).
pub(crate) const HTTP_PORT: u16 = 80;
/// Real servers in the lab.
pub(crate) const REALS: usize = 3;
/// Client source addresses.
pub(crate) const SOURCES: usize = 256;
