//! Bounded resources: the process's file-descriptor budget and the
//! connection caps of every listener lbd opens to the network (redirect,
//! metrics, control).
//!
//! Anyone who reaches a listener can open connections, and each one costs a
//! descriptor. If listeners could take them all, health checks would fail
//! with "too many open files" and mark every real server down, and VRRP,
//! sync and the nft guard would fail too. So lbd raises its descriptor
//! limit at start, keeps [`RESERVED_FDS`] of it for its own work, and lets
//! the listeners share the rest: each [`ConnectionGate`] admits a
//! connection only while its client address is under its per-address cap,
//! the listener under its own total, and all listeners together under the
//! shared [`Budget`]. A refused connection is closed at once.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Descriptors kept back from the listeners for health checks, VRRP, sync,
/// netlink, nft, the maps and the log.
pub const RESERVED_FDS: u64 = 1024;

/// The descriptor limit lbd asks for: enough for every listener's total
/// with the reserve on top. Kept below the hard limit, never above.
const WANTED_FDS: u64 = 65_536;

/// Raises the soft `RLIMIT_NOFILE` towards [`WANTED_FDS`] (up to the hard
/// limit) and returns the soft limit now in force.
///
/// # Errors
/// When the limit cannot be read (it is then left as it was).
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = WANTED_FDS.min(limit.rlim_max);
    if wanted > limit.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above; lowering nothing, raising the soft limit only.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return Ok(wanted);
        }
        log::warn!(
            "cannot raise the open-file limit from {} to {wanted}: {}",
            limit.rlim_cur,
            io::Error::last_os_error()
        );
    }
    Ok(limit.rlim_cur)
}

/// The descriptors all listeners together may hold.
#[derive(Debug)]
pub struct Budget {
    capacity: usize,
    used: Mutex<usize>,
}

impl Budget {
    /// A budget for a process whose soft descriptor limit is `fd_limit`:
    /// the limit less [`RESERVED_FDS`] (at least 64).
    #[must_use]
    pub fn for_fd_limit(fd_limit: u64) -> Arc<Self> {
        let capacity =
            usize::try_from(fd_limit.saturating_sub(RESERVED_FDS).max(64)).unwrap_or(usize::MAX);
        Self::with_capacity(capacity)
    }

    /// A budget of `capacity` connections (tests).
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: Mutex::new(0),
        })
    }

    /// Connections the budget allows in all.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn take(&self) -> bool {
        let Ok(mut used) = self.used.lock() else {
            return false;
        };
        if *used >= self.capacity {
            return false;
        }
        *used += 1;
        true
    }

    fn give_back(&self) {
        if let Ok(mut used) = self.used.lock() {
            *used = used.saturating_sub(1);
        }
    }
}

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections one client address may hold open.
    pub per_address: usize,
    /// Connections the listener holds open in all.
    pub total: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The client address holds its share already.
    #[error("this client address holds {0} connections already")]
    PerAddress(usize),
    /// The listener holds its total already.
    #[error("the listener holds {0} connections already")]
    Total(usize),
    /// All listeners together hold the process's budget.
    #[error("the listeners hold every descriptor they may ({0})")]
    Budget(usize),
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Admits connections to one listener under its [`Caps`] and the shared
/// [`Budget`].
#[derive(Debug)]
pub struct ConnectionGate {
    caps: Caps,
    budget: Arc<Budget>,
    open: Mutex<Open>,
}

/// An admitted connection: gives its place back when dropped.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<ConnectionGate>,
    address: IpAddr,
}

impl ConnectionGate {
    /// A gate with `caps`, drawing on `budget`.
    #[must_use]
    pub fn new(caps: Caps, budget: Arc<Budget>) -> Arc<Self> {
        Arc::new(Self {
            caps,
            budget,
            open: Mutex::new(Open::default()),
        })
    }

    /// The caps.
    #[must_use]
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Connections open now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.open.lock().map_or(0, |o| o.total)
    }

    /// Admits a connection from `address`, or says why not.
    ///
    /// # Errors
    /// A [`Refusal`] when a cap or the budget is reached.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Admission, Refusal> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| Refusal::Total(self.caps.total))?;
        let from_address = open.by_address.get(&address).copied().unwrap_or(0);
        if from_address >= self.caps.per_address {
            return Err(Refusal::PerAddress(from_address));
        }
        if open.total >= self.caps.total {
            return Err(Refusal::Total(open.total));
        }
        if !self.budget.take() {
            return Err(Refusal::Budget(self.budget.capacity));
        }
        open.total += 1;
        *open.by_address.entry(address).or_insert(0) += 1;
        Ok(Admission {
            gate: Arc::clone(self),
            address,
        })
    }

    fn release(&self, address: IpAddr) {
        if let Ok(mut open) = self.open.lock() {
            open.total = open.total.saturating_sub(1);
            if let Some(n) = open.by_address.get_mut(&address) {
                *n -= 1;
                if *n == 0 {
                    open.by_address.remove(&address);
                }
            }
        }
        self.budget.give_back();
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gate.release(self.address);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 1, n))
    }

    #[test]
    fn each_address_gets_its_share_and_the_listener_its_total() {
        let gate = ConnectionGate::new(
            Caps {
                per_address: 2,
                total: 3,
            },
            Budget::with_capacity(100),
        );
        let a1 = gate.admit(ip(1)).unwrap_or_else(|e| panic!("{e}"));
        let _a2 = gate.admit(ip(1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gate.admit(ip(1)).map(|_| ()), Err(Refusal::PerAddress(2)));
        let _b1 = gate.admit(ip(2)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gate.admit(ip(3)).map(|_| ()), Err(Refusal::Total(3)));
        drop(a1);
        assert_eq!(gate.open(), 2);
        assert!(
            gate.admit(ip(3)).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn all_listeners_together_stay_within_the_budget() {
        let budget = Budget::with_capacity(3);
        let caps = Caps {
            per_address: 10,
            total: 10,
        };
        let (one, two) = (
            ConnectionGate::new(caps, Arc::clone(&budget)),
            ConnectionGate::new(caps, Arc::clone(&budget)),
        );
        let held: Vec<_> = (1..=3)
            .map(|n| one.admit(ip(n)).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(two.admit(ip(9)).map(|_| ()), Err(Refusal::Budget(3)));
        drop(held);
        assert!(two.admit(ip(9)).is_ok());
    }

    #[test]
    fn the_budget_keeps_the_reserve() {
        assert_eq!(Budget::for_fd_limit(65_536).capacity(), 65_536 - 1024);
        assert_eq!(Budget::for_fd_limit(1024).capacity(), 64);
    }
}
