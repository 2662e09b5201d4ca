//! SNAT ports: which port of a service's range a new connection to a real
//! server leaves from.
//!
//! A port is taken by an atomic insert of the connection's reply entry
//! (`BPF_NOEXIST`), so two CPUs never share one. The first tries take the
//! server's next port in order ([`SNAT_CURSORS`]), the rest are random
//! (see `lb_common::nat::SNAT_PORT_TRIES_IN_ORDER` for why); a port held
//! by a connection that is over is taken from it ([`reclaim`]).

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32, macros::map, maps::Array};
use lb_common::{
    nat::{
        Conn, ConnKey, NatNote, NatService, CONN_CLOSED, SNAT_PORT_TRIES, SNAT_PORT_TRIES_IN_ORDER,
        SNAT_RECLAIM_AFTER_NS,
    },
    Reason, MAX_REALS,
};

use crate::nat::{note, ConnClock, CONNS};

/// The next SNAT port to offer each real server, by real-server index: a
/// counter, so a service's ports go round its range in order and a port
/// comes back to the same server only after all the others. Written here
/// only.
#[map]
static SNAT_CURSORS: Array<u32> = Array::with_max_entries(MAX_REALS, 0);

/// Takes a port of `nat`'s range for a new connection to real server
/// `real`: inserts its reply entry `back` at `reply` with that port as the
/// destination port. Returns the port (network byte order); `Err` when
/// every try found its port taken (counted, the frame is dropped).
#[inline(always)]
pub fn take_port(reply: &ConnKey, back: &Conn, real: u32, nat: &NatService) -> Result<u16, Reason> {
    if nat.port_count == 0 {
        return Err(Reason::DropInternal);
    }
    let mut reply = *reply;
    let cursor = SNAT_CURSORS.get_ptr_mut(real);
    for i in 0..SNAT_PORT_TRIES {
        let n = match cursor {
            // Read and written back, not fetched and added atomically (an
            // instruction the BPF instruction set built for lacks): two
            // CPUs may read the same number, and the insert below gives
            // the port to one of them; the other goes on.
            // SAFETY: a value pointer into an array map, valid for this
            // run; an aligned 4-byte access never tears.
            Some(c) if i < SNAT_PORT_TRIES_IN_ORDER => unsafe {
                let n = core::ptr::read_volatile(c);
                core::ptr::write_volatile(c, n.wrapping_add(1));
                n
            },
            // SAFETY: a helper without arguments.
            _ => unsafe { bpf_get_prandom_u32() },
        };
        let port = (u32::from(nat.port_lo) + n % u32::from(nat.port_count)) as u16;
        reply.dport = port.to_be();
        if CONNS.insert(&reply, back, u64::from(BPF_NOEXIST)).is_ok() {
            return Ok(reply.dport);
        }
        if reclaim(&reply) && CONNS.insert(&reply, back, u64::from(BPF_NOEXIST)).is_ok() {
            note(NatNote::PortReclaimed);
            return Ok(reply.dport);
        }
        note(NatNote::PortCollision);
    }
    note(NatNote::PortsExhausted);
    Err(Reason::DropInternal)
}

/// Frees the SNAT port of the reply entry at `reply` if its connection is
/// over: closed (by FIN both ways, or a reset from either side), and no
/// frame of it for at least [`SNAT_RECLAIM_AFTER_NS`]. Both entries are
/// removed (the client's only while it still names this port). Returns
/// whether the port is free.
#[inline(always)]
fn reclaim(reply: &ConnKey) -> bool {
    // SAFETY: the map value is copied out at once.
    let Some(old) = (unsafe { CONNS.get(reply) }).copied() else {
        return true;
    };
    if old.reply != 1 {
        return false;
    }
    let now = ConnClock::ns();
    let quiet = |c: &Conn| now.saturating_sub(c.last_seen_ns) >= SNAT_RECLAIM_AFTER_NS;
    let client_key = old.reverse_key(reply.protocol);
    // SAFETY: as above.
    let client = (unsafe { CONNS.get(&client_key) })
        .copied()
        .filter(|c| c.src == reply.dst && c.sport == reply.dport);
    let (closed, quiet) = match &client {
        Some(c) => (
            old.state == CONN_CLOSED || c.state == CONN_CLOSED,
            quiet(&old) && quiet(c),
        ),
        None => (old.state == CONN_CLOSED, quiet(&old)),
    };
    if !closed || !quiet {
        return false;
    }
    if client.is_some() {
        let _ = CONNS.remove(&client_key);
    }
    let _ = CONNS.remove(reply);
    true
}
