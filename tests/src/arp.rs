//! Asking who answers ARP for an address: a request sent from a lab
//! namespace over an `AF_PACKET` socket, and every reply collected for a
//! while, so a test sees all the MACs that answer (a neighbour table keeps
//! only the last).

use std::{
    ffi::CString,
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::{frames, lab::in_netns};

const ETH_P_ARP: u16 = 0x0806;

/// Sends one ARP request for `target` on `interface` of namespace `ns`
/// (from `src_mac`, `src_ip`) and returns the sender MAC of every reply
/// for `target` that arrives within `wait`.
///
/// # Errors
/// When the namespace, interface or socket cannot be used.
pub fn who_answers(
    ns: &str,
    interface: &str,
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    target: Ipv4Addr,
    wait: Duration,
) -> io::Result<Vec<[u8; 6]>> {
    let name = CString::new(interface).map_err(io::Error::other)?;
    in_netns(ns, move || {
        ask(&name, &frames::arp(src_mac, src_ip, target), target, wait)
    })
    .map_err(|e| io::Error::other(e.to_string()))?
}

/// Sends `request` on interface `name` of this thread's namespace and
/// collects the replies from `target` for `wait`.
fn ask(
    name: &CString,
    request: &[u8],
    target: Ipv4Addr,
    wait: Duration,
) -> io::Result<Vec<[u8; 6]>> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let protocol = ETH_P_ARP.to_be();
    // SAFETY: plain socket(2).
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `sockaddr_ll` is plain data; all zeroes is valid.
    let mut at: libc::sockaddr_ll = unsafe { mem::zeroed() };
    at.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
    at.sll_protocol = protocol;
    at.sll_ifindex = libc::c_int::try_from(index).map_err(io::Error::other)?;
    let len = libc::socklen_t::try_from(mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0);
    // SAFETY: `at` is a valid `sockaddr_ll` of length `len`.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const at).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    let tv_len = libc::socklen_t::try_from(mem::size_of::<libc::timeval>()).unwrap_or(0);
    // SAFETY: a valid timeval of length `tv_len`.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            tv_len,
        );
    }
    // SAFETY: `request` is a valid buffer; the socket is bound to the interface.
    if unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut macs = Vec::new();
    let started = Instant::now();
    let mut buf = [0_u8; 128];
    while started.elapsed() < wait {
        // SAFETY: `buf` is a valid, writable buffer of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        // A reply (operation 2) whose sender address is `target`.
        if n >= 42
            && buf[12..14] == [0x08, 0x06]
            && buf[20..22] == [0, 2]
            && buf[28..32] == target.octets()
        {
            let mut mac = [0; 6];
            mac.copy_from_slice(&buf[22..28]);
            if !macs.contains(&mac) {
                macs.push(mac);
            }
        }
    }
    Ok(macs)
}
