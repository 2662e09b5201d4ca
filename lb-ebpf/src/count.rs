//! Counting: every verdict and note in [`REASONS`](crate::REASONS), and the
//! traffic of each real server in [`REAL_STATS`](crate::REAL_STATS).

use lb_common::{Counters, Reason, ReasonCounters};

use crate::{REAL_STATS, REASONS};

/// This CPU's [`REASONS`] slot, looked up once per frame.
#[derive(Clone, Copy)]
pub struct Tally(Option<*mut ReasonCounters>);

impl Tally {
    #[inline(always)]
    pub fn this_cpu() -> Self {
        Self(REASONS.get_ptr_mut(0))
    }

    /// Counts a note or a verdict known where it is counted.
    #[inline(always)]
    pub fn count(self, reason: Reason) {
        self.bump(reason as usize);
    }

    /// Counts a frame's verdict, a `Reason` taken from a `Result`: its
    /// index is read through a volatile load, because the compiler knows a
    /// `Reason` is below `REASON_COUNT` and would drop the bounds check the
    /// verifier needs for a value it cannot bound itself.
    #[inline(always)]
    pub fn count_verdict(self, reason: Reason) {
        // SAFETY: a read of a local.
        let index = unsafe { core::ptr::read_volatile(&(reason as u32)) } as usize;
        self.bump(index);
    }

    #[inline(always)]
    fn bump(self, index: usize) {
        if let Some(tally) = self.0 {
            // SAFETY: per-CPU slot, no other writer while this program runs here.
            if let Some(counter) = unsafe { (*tally).counts.get_mut(index) } {
                *counter += 1;
            }
        }
    }
}

/// Counts a forwarded frame of `bytes` for real-server slot `real`.
#[inline(always)]
pub fn count_forwarded(real: u32, bytes: u64, new_client: bool) {
    let counters: Option<*mut Counters> = REAL_STATS.get_ptr_mut(real);
    if let Some(c) = counters {
        // SAFETY: per-CPU slot, as in `Tally::count`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            if new_client {
                (*c).new_clients += 1;
            }
        }
    }
}
