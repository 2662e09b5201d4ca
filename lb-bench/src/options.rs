//! What a run is asked to do ([`Options`]) and what it compares: the
//! [`System`]s, each under every [`Workload`].

use std::path::PathBuf;

/// What to run and where to write.
#[derive(Clone, Debug)]
pub struct Options {
    /// One short run of everything (the test suite's mode).
    pub quick: bool,
    /// Rounds of the traffic comparison (each system once per round).
    pub rounds: usize,
    /// Where `BENCHMARKS.md` and `bench/` are written.
    pub out_dir: PathBuf,
}

impl Options {
    /// The full bench (7 rounds) or `--quick` (1 round), writing to `out_dir`.
    #[must_use]
    pub fn new(quick: bool, out_dir: PathBuf) -> Self {
        Self {
            quick,
            rounds: if quick { 1 } else { 7 },
            out_dir,
        }
    }

    pub(crate) fn load_duration(&self, workload: Workload) -> u64 {
        match (self.quick, workload) {
            (true, Workload::SingleConnection) => 1,
            (true, _) => 2,
            (false, Workload::SingleConnection) => 3,
            (false, _) => 5,
        }
    }
}

/// The systems compared, in the order of each round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    /// No load balancer: the client picks the server.
    Direct,
    /// `bench-bare-dr`.
    BareDr,
    /// The product.
    Lbd,
    /// The product with `forwarding: snat` (from the load balancer's own
    /// address, as masquerade does).
    LbdSnat,
    /// The product with `forwarding: nat` (the servers route the clients'
    /// subnets through the load balancer for the run).
    LbdNat,
    /// nftables DNAT + masquerade.
    Nftables,
    /// `HAProxy` in TCP mode.
    Haproxy,
}

impl System {
    /// Every system, in round order.
    pub const ALL: [System; 7] = [
        System::Direct,
        System::BareDr,
        System::Lbd,
        System::LbdSnat,
        System::LbdNat,
        System::Nftables,
        System::Haproxy,
    ];

    /// The name used in the report.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::BareDr => "bare DR",
            System::Lbd => "lbd",
            System::LbdSnat => "lbd SNAT",
            System::LbdNat => "lbd NAT",
            System::Nftables => "nftables",
            System::Haproxy => "HAProxy",
        }
    }

    /// The key used in `results.json`.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::BareDr => "bare_dr",
            System::Lbd => "lbd",
            System::LbdSnat => "lbd_snat",
            System::LbdNat => "lbd_nat",
            System::Nftables => "nftables",
            System::Haproxy => "haproxy",
        }
    }
}

/// The loads each system carries per round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// 64 keep-alive connections from 64 sources.
    KeepAlive,
    /// 64 connections, each closed after one request (`Connection: close`).
    NewConnections,
    /// One keep-alive connection: latency without queueing.
    SingleConnection,
}

impl Workload {
    pub(crate) const ALL: [Workload; 3] = [
        Workload::KeepAlive,
        Workload::NewConnections,
        Workload::SingleConnection,
    ];

    pub(crate) fn key(self) -> &'static str {
        match self {
            Workload::KeepAlive => "keep_alive",
            Workload::NewConnections => "new_connections",
            Workload::SingleConnection => "single_connection",
        }
    }
}
