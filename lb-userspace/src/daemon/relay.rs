//! The advertisement relay: while a master re-executes lbd (SIGUSR2), a
//! child process sends the master's VRRP advertisement on time, so the
//! backup never misses one and never takes over. The exec, loading the XDP
//! program over the running one and starting up take longer than an
//! advertisement interval; the relay bridges them.
//!
//! The relay is forked from the old lbd just before the exec and stopped
//! by the new lbd once it has advertised itself (it is the same process, so
//! the relay is its child and it reaps it). It also renews the node's ARP
//! lease with each advertisement, as the master's VRRP thread does. It ends
//! by itself when its parent process is gone (the new lbd failed to start:
//! the backup takes over as after a crash) or after [`RELAY_BOUND`].
//!
//! Written with `fork` and raw system calls, not as a spawned program: the
//! child shares the ARP lease's memory with the data path and needs no
//! binary (after a package upgrade the old one is deleted, the new one
//! may not know the relay). A child of a threaded process may only make
//! async-signal-safe calls: it allocates nothing and calls only
//! `sigaction`, `sigprocmask`, `close_range`, `clock_gettime`,
//! `clock_nanosleep`, `getppid`, `sendto` and `_exit`.

use std::{
    io,
    os::fd::RawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{dataplane::ArpLease, ha::AdvertRelay, monotonic_ns};

/// The longest the relay advertises for a new lbd that has not taken over.
pub(super) const RELAY_BOUND: Duration = Duration::from_secs(30);

/// A running relay.
#[derive(Debug, Clone, Copy)]
pub(super) struct Relay {
    pid: libc::pid_t,
}

/// Signals lbd handles (through tokio's handlers, which the child must not
/// run): back to their default in the relay.
const SIGNALS: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR2,
    libc::SIGPIPE,
];

impl Relay {
    /// Forks the relay: it sends `relay.message` from the VRRP socket
    /// `socket` at `relay.next` and every `relay.every` after, renewing
    /// `lease` by `lease_span` each time.
    ///
    /// # Errors
    /// When the fork fails.
    pub(super) fn start(
        socket: RawFd,
        relay: &AdvertRelay,
        lease: &Arc<ArpLease>,
        lease_span: Duration,
    ) -> io::Result<Self> {
        // Everything the child needs, made before the fork.
        let every_ns = u64::try_from(relay.every.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let first_ns = monotonic_ns().saturating_add(
            u64::try_from(
                relay
                    .next
                    .saturating_duration_since(Instant::now())
                    .as_nanos(),
            )
            .unwrap_or(0),
        );
        let rounds = u64::try_from(RELAY_BOUND.as_nanos()).unwrap_or(u64::MAX) / every_ns + 1;
        let to = libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(relay.to).to_be(),
            },
            sin_zero: [0; 8],
        };
        let message: &[u8] = &relay.message;
        let lease: &ArpLease = lease;
        // SAFETY: getpid cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child only runs `advertise`, which makes
        // async-signal-safe calls on memory prepared above (see the module
        // doc), and never returns.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => advertise(
                parent, socket, &to, message, first_ns, every_ns, rounds, lease, lease_span,
            ),
            pid => Ok(Self { pid }),
        }
    }

    /// The relay's process id (handed to the new lbd).
    pub(super) fn pid(self) -> u32 {
        u32::try_from(self.pid).unwrap_or(0)
    }

    /// The relay a previous lbd of this process started.
    pub(super) fn adopt(pid: u32) -> Option<Self> {
        libc::pid_t::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .map(|pid| Self { pid })
    }

    /// Stops and reaps the relay. It is this process's child, so its pid
    /// cannot have been reused before this reaps it.
    pub(super) fn stop(self) {
        // SAFETY: plain system calls on this process's child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The relay's life: see the module doc.
#[expect(
    clippy::too_many_arguments,
    reason = "all of it prepared before the fork"
)]
fn advertise(
    parent: libc::pid_t,
    socket: RawFd,
    to: &libc::sockaddr_in,
    message: &[u8],
    first_ns: u64,
    every_ns: u64,
    rounds: u64,
    lease: &ArpLease,
    lease_span: Duration,
) -> ! {
    // SAFETY: async-signal-safe calls only, on the child's own state.
    unsafe {
        for signal in SIGNALS {
            libc::signal(signal, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut());
        // Nothing of lbd's but the VRRP socket stays open here: listeners,
        // the sync connection and the control socket close with the old lbd.
        let socket_fd = libc::c_uint::try_from(socket).unwrap_or(0);
        if socket_fd > 3 {
            libc::close_range(3, socket_fd - 1, 0);
        }
        libc::close_range(socket_fd + 1, libc::c_uint::MAX, 0);
        let mut due = first_ns;
        for _ in 0..rounds {
            let at = libc::timespec {
                tv_sec: libc::time_t::try_from(due / 1_000_000_000).unwrap_or(0),
                tv_nsec: libc::c_long::try_from(due % 1_000_000_000).unwrap_or(0),
            };
            while libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &raw const at,
                std::ptr::null_mut(),
            ) == libc::EINTR
            {}
            if libc::getppid() != parent {
                break;
            }
            libc::sendto(
                socket,
                message.as_ptr().cast(),
                message.len(),
                0,
                std::ptr::from_ref(to).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).unwrap_or(16),
            );
            lease.renew(lease_span);
            due = due.saturating_add(every_ns);
        }
        libc::_exit(0)
    }
}
