//! The bench's own client: one HTTP GET from a chosen source address, and
//! the real server a source goes to when there is no load balancer.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The server a client source goes to in `direct` mode (and in bare DR): a
/// plain multiplicative hash of the address, the same as the shim's and
/// `bench-bare-dr`'s.
#[must_use]
pub fn direct_pick(source: Ipv4Addr, reals: usize) -> usize {
    let n = u32::try_from(reals).unwrap_or(1).max(1);
    ((u32::from(source).wrapping_mul(0x9E37_79B1) >> 16) % n) as usize
}

/// One HTTP/1.0 GET from `source` to `dst`; the first line of the body (the
/// real server's name).
pub(crate) fn http_get(
    source: Ipv4Addr,
    dst: SocketAddrV4,
    timeout: Duration,
) -> Result<String, String> {
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| e.to_string())?;
    socket
        .bind(&SockAddr::from(SocketAddrV4::new(source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    socket
        .connect_timeout(&SockAddr::from(dst), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "status {:?}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.lines().next().unwrap_or_default().trim().to_string())
}
