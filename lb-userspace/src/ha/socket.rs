//! The HA pair's network edge for VRRP: advertisements on a raw IPv4 socket
//! (protocol 112, TTL 255, multicast 224.0.0.18 or a unicast peer).
//!
//! The protocol itself is [`crate::vrrp`] (sans-IO); the daemon feeds it
//! what this socket receives and sends what it asks for.

use std::{io, mem::MaybeUninit, net::Ipv4Addr, num::NonZeroU32, time::Instant};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::vrrp::{IP_PROTOCOL, IP_TTL, MULTICAST_GROUP};

/// Errors opening the VRRP socket.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the VRRP socket on {interface}: {source} (lbd needs CAP_NET_RAW)")]
pub struct SocketError {
    interface: String,
    #[source]
    source: io::Error,
}

/// One received VRRP packet, with what the IP header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// IP source.
    pub src: Ipv4Addr,
    /// IP destination.
    pub dst: Ipv4Addr,
    /// IP time to live (must be 255).
    pub ttl: u8,
    /// IP protocol (112).
    pub protocol: u8,
    /// The VRRP message.
    pub payload: Vec<u8>,
    /// When it was read off the socket (VRRP's timers run from there, not
    /// from when it was handled).
    pub at: Instant,
}

/// Splits a raw IPv4 packet as a raw socket delivers it (header included),
/// received `at`.
#[must_use]
pub fn parse_ipv4(packet: &[u8], at: Instant) -> Option<Received> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    if header < 20 || total < header || packet.len() < header {
        return None;
    }
    // The kernel may report the total length in host order or trimmed; take
    // what is there, bounded by the claimed length.
    let end = total.min(packet.len()).max(header);
    let octets =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Some(Received {
        src: octets(12),
        dst: octets(16),
        ttl: packet[8],
        protocol: packet[9],
        payload: packet[header..end].to_vec(),
        at,
    })
}

/// The raw socket VRRP advertisements travel on.
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    interface: String,
}

impl VrrpSocket {
    /// Opens the socket on `interface` (index `ifindex`, primary address
    /// `local`): bound to the device, TTL 255, and joined to 224.0.0.18
    /// when there is no unicast peer.
    ///
    /// # Errors
    /// When the socket cannot be opened or configured.
    pub fn open(
        interface: &str,
        ifindex: u32,
        local: Ipv4Addr,
        unicast: bool,
    ) -> Result<Self, SocketError> {
        let error = |source| SocketError {
            interface: interface.to_owned(),
            source,
        };
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(IP_PROTOCOL))),
        )
        .map_err(error)?;
        socket
            .bind_device_by_index_v4(NonZeroU32::new(ifindex))
            .map_err(error)?;
        socket.set_ttl_v4(u32::from(IP_TTL)).map_err(error)?;
        socket
            .set_multicast_ttl_v4(u32::from(IP_TTL))
            .map_err(error)?;
        socket.set_multicast_loop_v4(false).map_err(error)?;
        socket.set_multicast_if_v4(&local).map_err(error)?;
        if !unicast {
            socket
                .join_multicast_v4_n(&MULTICAST_GROUP, &InterfaceIndexOrAddress::Index(ifindex))
                .map_err(error)?;
        }
        socket.set_nonblocking(true).map_err(error)?;
        // SAFETY: the AsyncFd owns the socket, so its descriptor stays open
        // and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| error(e.into()))?;
        Ok(Self {
            fd,
            interface: interface.to_owned(),
        })
    }

    /// Whether the interface is up with a carrier (`IFF_UP` and
    /// `IFF_RUNNING`), as this network namespace's kernel says. By hand:
    /// one `SIOCGIFFLAGS` ioctl, which neither `socket2` nor `nix` wraps (a
    /// netlink dump would do the same at more cost, ten times a second).
    ///
    /// # Errors
    /// When the kernel cannot say (the interface is gone).
    pub fn link_up(&self) -> io::Result<bool> {
        // SAFETY: a zeroed ifreq is a valid one (an empty name, no flags).
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        let name = self.interface.bytes().take(libc::IFNAMSIZ - 1);
        for (to, from) in request.ifr_name.iter_mut().zip(name) {
            *to = from.cast_signed();
        }
        // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name of `request`
        // and writes its flags; the descriptor is this socket's, open.
        if unsafe { libc::ioctl(self.raw_fd(), libc::SIOCGIFFLAGS, &raw mut request) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = i32::from(unsafe { request.ifr_ifru.ifru_flags });
        Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
    }

    /// The socket's descriptor (for the advertisement relay).
    #[must_use]
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        self.fd.get_ref().as_raw_fd()
    }

    /// Waits for the next packet.
    ///
    /// # Errors
    /// On a socket error.
    pub async fn recv(&self) -> io::Result<Option<Received>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buffer = [MaybeUninit::<u8>::uninit(); 2048];
            match guard.try_io(|fd| fd.get_ref().recv(&mut buffer)) {
                Ok(Ok(n)) => {
                    let at = Instant::now();
                    // SAFETY: recv initialised the first n bytes.
                    let bytes: Vec<u8> = buffer[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    return Ok(parse_ipv4(&bytes, at));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Sends a VRRP message to `dst` (the kernel adds the IP header).
    ///
    /// # Errors
    /// On a socket error.
    pub fn send(&self, dst: Ipv4Addr, message: &[u8]) -> io::Result<()> {
        let address = std::net::SocketAddrV4::new(dst, 0);
        self.fd
            .get_ref()
            .send_to(message, &address.into())
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_packets_are_split_at_the_ip_header() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 255, 112, 0, 0, 198, 18, 0, 10, 224, 0, 0, 18,
        ];
        p.extend_from_slice(&[0x31, 51, 150, 1, 0, 100, 0, 0]);
        let now = Instant::now();
        let r = parse_ipv4(&p, now).unwrap_or_else(|| panic!("parses"));
        assert_eq!(r.at, now);
        assert_eq!(r.src, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(r.dst, MULTICAST_GROUP);
        assert_eq!((r.ttl, r.protocol), (255, 112));
        assert_eq!(r.payload.len(), 8);
        assert!(parse_ipv4(&p[..10], now).is_none());
        assert!(parse_ipv4(&[0x65; 40], now).is_none());
    }
}
