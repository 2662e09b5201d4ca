//! Time in the data path: the kernel tick (`bpf_jiffies64`, inlined by the
//! verifier) for "seen a moment ago", and [`now_ns`] for entries' times.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

/// The time entries are stamped and aged with: the kernel's monotonic
/// clock as of the last tick (`bpf_ktime_get_coarse_ns`), the clock of
/// `bpf_ktime_get_ns` and of lbd's `CLOCK_MONOTONIC`, at most a tick
/// (4 ms at `HZ=250`) behind. It reads what the tick stored instead of the
/// time source (a new client's insert took about 50 ns less in quick
/// packet runs); an entry read against the exact clock (lbd's census)
/// looks up to a tick older, against timeouts of seconds. The ARP lease
/// keeps the exact clock: its margin to the peer's takeover can be under
/// a millisecond.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The clocks of a decision: the kernel tick, always read (the verifier
/// inlines it), and [`now_ns`], a helper call, read only when an entry is
/// not known to be fresh or a new one is written.
pub struct Clock {
    /// `bpf_jiffies64` when the decision began.
    pub jiffies: u64,
    /// [`now_ns`], once read.
    pub ns: Option<u64>,
}

impl Clock {
    /// [`now_ns`], read on first use and kept for the rest of the decision.
    #[inline(always)]
    pub fn ns(&mut self) -> u64 {
        match self.ns {
            Some(ns) => ns,
            None => {
                let ns = now_ns();
                self.ns = Some(ns);
                ns
            }
        }
    }
}
