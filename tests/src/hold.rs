//! Connections held open to a listener, as an attacker (or a broken
//! client) would: the tests of bounded listeners.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::lab::DrLab;

/// Keeps up to `count` TCP connections open to each of `targets` from the
/// client namespace for `hold`, spread over its source addresses, opening
/// a new one whenever lbd closes one (as an attacker would); returns the
/// number of connections made in all.
///
/// # Panics
/// When the client's namespace cannot be entered.
pub fn hold_connections(
    lab: &DrLab,
    targets: Vec<SocketAddrV4>,
    count: usize,
    hold: Duration,
) -> std::thread::JoinHandle<usize> {
    let sources = lab.client_sources().to_vec();
    let ns = lab.client_ns().to_owned();
    std::thread::spawn(move || {
        crate::lab::in_netns(&ns, move || {
            let connect = |i: usize, to: SocketAddrV4| -> Option<Socket> {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).ok()?;
                let source = SocketAddrV4::new(sources[i % sources.len()], 0);
                socket.bind(&SockAddr::from(source)).ok()?;
                socket
                    .connect_timeout(&SockAddr::from(to), Duration::from_millis(300))
                    .ok()?;
                socket.set_nonblocking(true).ok()?;
                Some(socket)
            };
            let started = Instant::now();
            let mut pool: Vec<(SocketAddrV4, Option<Socket>)> = targets
                .iter()
                .flat_map(|to| std::iter::repeat_n(*to, count))
                .map(|to| (to, None))
                .collect();
            let mut made = 0;
            while started.elapsed() < hold {
                for (i, (to, slot)) in pool.iter_mut().enumerate() {
                    if started.elapsed() >= hold {
                        break;
                    }
                    let alive = slot.as_ref().is_some_and(|socket| {
                        let mut byte = [std::mem::MaybeUninit::new(0_u8)];
                        matches!(
                            socket.peek(&mut byte),
                            Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
                        )
                    });
                    if !alive {
                        *slot = connect(i, *to);
                        made += usize::from(slot.is_some());
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            made
        })
        .unwrap_or_else(|e| panic!("{e}"))
    })
}
