//! `lbd`, the load-balancer daemon, and `lbctl`, its control tool.
//!
//! One module per concern: [`config`] reads and validates the YAML file,
//! [`maglev`] builds consistent-hash tables, [`balancer`] holds the control
//! plane's truth and projects it onto the XDP maps through [`dataplane`] (the
//! only module that touches aya), [`neighbour`] follows real-server MAC
//! addresses, [`vip`] holds the virtual addresses, [`control`] is the socket
//! `lbctl` talks to, [`audit`] records every administrative change, and
//! [`web`] is the HTTPS console, and [`daemon`] ties them together.

pub mod admin;
pub mod audit;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod guard;
pub mod ha;
pub mod health;
pub mod inherit;
pub mod limits;
pub mod maglev;
pub mod metrics;
pub mod neighbour;
pub mod redirect;
pub mod state_file;
pub mod sync;
pub mod timer;
pub mod vip;
pub mod vrrp;
pub mod web;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the XDP program stamps
/// affinity and connection entries with (`bpf_ktime_get_coarse_ns`: the
/// same clock as of the kernel's last tick).
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
