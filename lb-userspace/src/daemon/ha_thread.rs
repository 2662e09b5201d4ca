//! The HA pair's own thread. VRRP advertisements, the master-down timer and
//! received advertisements never wait behind the daemon's work (installing
//! a snapshot, an `nft` call, an fsync per VIP, converting a million
//! sessions): this thread owns the VRRP socket and the sync link's events,
//! runs the [`Coordinator`] on a single-threaded runtime with nothing else
//! on it, sends advertisements itself, and hands every other action to the
//! daemon in order.
//!
//! Each advertisement it sends as master also renews the node's ARP lease
//! in the data path, which outlives lbd: if lbd dies, the lease lapses
//! within three advertisement intervals, when the peer takes over, and the
//! node stops answering ARP for the VIPs (while still forwarding what
//! reaches it).
//!
//! The daemon reaches the coordinator through [`HaThread::with`] (local
//! changes: reload, admin change, shutdown) and [`HaThread::read`] (status);
//! the lock is never held across I/O other than a VRRP send.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::{mpsc, Notify};

use crate::{
    dataplane::ArpLease,
    ha::{Coordinator, HaAction, VrrpSocket},
    sync::LinkEvent,
};

/// Actions the daemon has not carried out yet, at most.
const ACTION_QUEUE: usize = 1024;
/// Room kept in the action queue for VRRP's own actions: the sync link is
/// read only while this much is free, so a slow daemon slows the link (which
/// has its own bounded queue), never VRRP.
const RESERVED_FOR_VRRP: usize = 64;

/// Where the VRRP socket is opened.
pub(super) struct SocketPlace {
    pub(super) interface: String,
    pub(super) ifindex: u32,
    pub(super) local: Ipv4Addr,
    pub(super) unicast: bool,
}

/// The node's ARP lease and how far each advertisement renews it.
#[derive(Clone)]
pub(super) struct Lease {
    pub(super) memory: Arc<ArpLease>,
    pub(super) span: Duration,
}

/// How often the interface's link is looked at (a node without link is in
/// fault: [`Coordinator::link_changed`]).
const LINK_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Byte 2 of a VRRP version 3 advertisement: the sender's priority.
const PRIORITY_BYTE: usize = 2;

/// The daemon's handle on the HA thread.
pub(super) struct HaThread {
    coordinator: Arc<Mutex<Coordinator>>,
    socket: Arc<VrrpSocket>,
    to_daemon: mpsc::Sender<HaAction>,
    lease: Lease,
    wake: Arc<Notify>,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

/// What one thread or the other needs to drain the coordinator.
struct Drain<'a> {
    socket: &'a VrrpSocket,
    to_daemon: &'a mpsc::Sender<HaAction>,
    lease: &'a Lease,
}

impl Drain<'_> {
    /// Sends the advertisements due and hands the rest to the daemon.
    fn drain(&self, coordinator: &mut Coordinator) {
        while let Some(action) = coordinator.poll_action() {
            match action {
                HaAction::SendVrrp { to, message } => {
                    // Only a master advertises; priority 0 is its goodbye.
                    if message.get(PRIORITY_BYTE).is_some_and(|p| *p > 0) {
                        self.lease.memory.renew(self.lease.span);
                    }
                    if let Err(error) = self.socket.send(to, &message) {
                        log::warn!("VRRP: sending to {to}: {error}");
                    }
                }
                other => {
                    if let Err(error) = self.to_daemon.try_send(other) {
                        log::error!(
                            "cluster: the daemon's queue of HA actions is full; dropped {error:?}"
                        );
                    }
                }
            }
        }
    }
}

fn lock(c: &Mutex<Coordinator>) -> MutexGuard<'_, Coordinator> {
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HaThread {
    /// Opens the VRRP socket on a thread of its own and starts the
    /// coordinator there. The daemon receives the actions it must carry out.
    ///
    /// # Errors
    /// When the thread or its runtime cannot start, or the socket cannot be
    /// opened.
    pub(super) fn start(
        coordinator: Coordinator,
        place: SocketPlace,
        lease: Lease,
        sync_events: mpsc::Receiver<LinkEvent>,
    ) -> anyhow::Result<(Self, mpsc::Receiver<HaAction>)> {
        let coordinator = Arc::new(Mutex::new(coordinator));
        let (to_daemon, actions) = mpsc::channel(ACTION_QUEUE);
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());
        let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let (coordinator, to_daemon, lease) =
                (coordinator.clone(), to_daemon.clone(), lease.clone());
            let (wake, stop) = (wake.clone(), stop.clone());
            std::thread::Builder::new()
                .name("vrrp".into())
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            let _ = opened_tx.send(Err(anyhow::anyhow!(error)));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let socket = match VrrpSocket::open(
                            &place.interface,
                            place.ifindex,
                            place.local,
                            place.unicast,
                        ) {
                            Ok(socket) => Arc::new(socket),
                            Err(error) => {
                                let _ = opened_tx.send(Err(anyhow::anyhow!(error)));
                                return;
                            }
                        };
                        let _ = opened_tx.send(Ok(socket.clone()));
                        let drain = Drain {
                            socket: &socket,
                            to_daemon: &to_daemon,
                            lease: &lease,
                        };
                        serve(&coordinator, &drain, sync_events, &wake, &stop).await;
                    });
                })
                .context("starting the VRRP thread")?
        };
        let socket = opened_rx
            .recv()
            .context("the VRRP thread stopped before opening its socket")??;
        let handle = Self {
            coordinator,
            socket,
            to_daemon,
            lease,
            wake,
            stop,
            thread: Some(thread),
        };
        // The coordinator's first actions (it starts in Backup).
        handle.with(|_, _| ());
        Ok((handle, actions))
    }

    /// Runs `f` on the coordinator with the time, then sends what it made
    /// due and hands the rest to the daemon's queue.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut Coordinator, Instant) -> R) -> R {
        let mut c = lock(&self.coordinator);
        let result = f(&mut c, Instant::now());
        Drain {
            socket: &self.socket,
            to_daemon: &self.to_daemon,
            lease: &self.lease,
        }
        .drain(&mut c);
        drop(c);
        // Its next deadline may have moved.
        self.wake.notify_one();
        result
    }

    /// While master: starts the relay that advertises for this node while
    /// lbd re-executes ([`super::relay`]), with the coordinator held so
    /// that this thread sends nothing in between.
    pub(super) fn start_relay(&self) -> Option<std::io::Result<super::relay::Relay>> {
        let c = lock(&self.coordinator);
        let relay = c.advert_relay()?;
        Some(super::relay::Relay::start(
            self.socket.raw_fd(),
            &relay,
            &self.lease.memory,
            self.lease.span,
        ))
    }

    /// Reads the coordinator.
    pub(super) fn read<R>(&self, f: impl FnOnce(&Coordinator) -> R) -> R {
        f(&lock(&self.coordinator))
    }

    /// Stops the thread (after the daemon's last [`HaThread::with`]).
    pub(super) fn stop(&mut self) {
        self.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HaThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread's loop: received advertisements first, then the
/// coordinator's timers, the sync link, the interface's link and the
/// daemon's wake-ups.
async fn serve(
    coordinator: &Mutex<Coordinator>,
    drain: &Drain<'_>,
    mut sync_events: mpsc::Receiver<LinkEvent>,
    wake: &Notify,
    stop: &Notify,
) {
    let (socket, to_daemon) = (drain.socket, drain.to_daemon);
    let mut sync_open = true;
    let mut link_check = tokio::time::interval(LINK_CHECK_EVERY);
    link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut link_unknown = false;
    loop {
        let deadline = lock(coordinator).poll_timeout();
        let room = to_daemon.capacity() >= RESERVED_FOR_VRRP;
        tokio::select! {
            biased;
            () = stop.notified() => return,
            packet = socket.recv() => match packet {
                Ok(Some(packet)) => {
                    let mut c = lock(coordinator);
                    c.handle_vrrp(Instant::now(), &packet);
                    drain.drain(&mut c);
                }
                Ok(None) => {}
                Err(error) => {
                    log::warn!("VRRP socket: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = super::sleep_until(deadline) => {
                let mut c = lock(coordinator);
                c.handle_timeout(Instant::now());
                drain.drain(&mut c);
            }
            event = sync_events.recv(), if room && sync_open => match event {
                Some(event) => {
                    let mut c = lock(coordinator);
                    c.handle_sync(Instant::now(), event);
                    drain.drain(&mut c);
                }
                None => sync_open = false,
            },
            _ = link_check.tick() => match socket.link_up() {
                Ok(up) => {
                    link_unknown = false;
                    let mut c = lock(coordinator);
                    c.link_changed(Instant::now(), up);
                    drain.drain(&mut c);
                }
                Err(error) if !link_unknown => {
                    link_unknown = true;
                    log::warn!("VRRP: cannot read the interface's link state: {error}");
                }
                Err(_) => {}
            },
            () = wake.notified() => {}
            // The daemon took actions: there may be room for the link again.
            () = tokio::time::sleep(Duration::from_millis(50)), if !room => {}
        }
    }
}
