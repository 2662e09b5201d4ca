//! The sending side of a flood, run on a thread inside the lab namespace:
//! an `AF_PACKET` raw socket on the interface (protocol 0, so it receives
//! nothing), one frame template per (target, kind) built by
//! [`FrameSpec::build`], each frame a template copy with its source address
//! and port written in and both checksums computed again (RFC 1071), and
//! batches of [`BATCH`] frames per `sendmmsg(2)` call.
//!
//! Every frame is addressed to the interface and the destination MAC by a
//! `sockaddr_ll` (`sll_protocol` IPv4), so the kernel needs no header
//! parsing of its own (`packet_snd`). A frame the interface refuses for
//! now (`ENOBUFS`: a veth peer's queue is full) is offered again after the
//! thread yields: the lab's own queues pace the flood.

use std::{
    ffi::CString,
    io, mem,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::{spoofed_source, FloodEnd, FloodError, FloodFrame, FloodReport, FloodSpec};
use crate::frames::FrameSpec;

/// Frames per `sendmmsg(2)` call.
const BATCH: usize = 64;
/// Room for one frame (the largest, UDP with its payload, is 47 bytes).
const SLOT: usize = 128;
/// Refusals in a row after which the interface counts as failed for good.
const MAX_REFUSALS_IN_A_ROW: u32 = 100_000;

const ETH_HEADER: usize = 14;
const IP_HEADER: usize = 20;
/// Offset of the IPv4 header checksum in a frame.
const IP_CHECKSUM: usize = ETH_HEADER + 10;
/// Offset of the IPv4 source address (the destination follows it).
const IP_SOURCE: usize = ETH_HEADER + 12;
/// Offset of the TCP or UDP header (no IP options).
const L4: usize = ETH_HEADER + IP_HEADER;
const TCP_CHECKSUM: usize = L4 + 16;
const UDP_CHECKSUM: usize = L4 + 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IPv4's EtherType, as `sll_protocol` wants it: network order.
const ETH_P_IP_BE: u16 = 0x0800_u16.to_be();

/// The frame description of one kind, source and target, as
/// [`crate::frames`] builds it.
pub(super) fn frame_spec(
    kind: FloodFrame,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    source: Ipv4Addr,
    sport: u16,
    target: SocketAddrV4,
) -> FrameSpec {
    let mut spec = match kind {
        FloodFrame::Udp => FrameSpec::udp(dst_mac, source, *target.ip(), target.port()),
        FloodFrame::TcpSyn | FloodFrame::TcpAck => {
            FrameSpec::tcp(dst_mac, source, *target.ip(), target.port())
        }
    };
    spec.src_mac = src_mac;
    spec.sport = sport;
    spec.tcp_flags = match kind {
        FloodFrame::TcpSyn => TCP_SYN,
        FloodFrame::TcpAck => TCP_ACK,
        FloodFrame::Udp => 0,
    };
    spec
}

/// One (target, kind)'s frame, to copy and patch per source.
pub(super) struct Template {
    bytes: Vec<u8>,
    protocol: u8,
    l4_checksum: usize,
}

impl Template {
    pub(super) fn new(
        kind: FloodFrame,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        target: SocketAddrV4,
    ) -> Self {
        let spec = frame_spec(kind, src_mac, dst_mac, Ipv4Addr::UNSPECIFIED, 0, target);
        let (protocol, l4_checksum) = match kind {
            FloodFrame::Udp => (17, UDP_CHECKSUM),
            FloodFrame::TcpSyn | FloodFrame::TcpAck => (6, TCP_CHECKSUM),
        };
        Self {
            bytes: spec.build(),
            protocol,
            l4_checksum,
        }
    }

    /// Writes the frame from `source:sport` into the start of `slot`, with
    /// both checksums, and returns its length.
    pub(super) fn write(&self, slot: &mut [u8], source: Ipv4Addr, sport: u16) -> usize {
        let len = self.bytes.len();
        let frame = &mut slot[..len];
        frame.copy_from_slice(&self.bytes);
        frame[IP_SOURCE..IP_SOURCE + 4].copy_from_slice(&source.octets());
        frame[L4..L4 + 2].copy_from_slice(&sport.to_be_bytes());
        frame[IP_CHECKSUM..IP_CHECKSUM + 2].fill(0);
        let ip = fold(sum16(&frame[ETH_HEADER..L4], 0));
        frame[IP_CHECKSUM..IP_CHECKSUM + 2].copy_from_slice(&ip.to_be_bytes());

        let at = self.l4_checksum;
        frame[at..at + 2].fill(0);
        // The pseudo header: source and destination address, protocol, length.
        let l4_len = u32::try_from(len - L4).unwrap_or(0);
        let pseudo = sum16(&frame[IP_SOURCE..IP_SOURCE + 8], 0) + u32::from(self.protocol) + l4_len;
        let mut l4 = fold(sum16(&frame[L4..], pseudo));
        if l4 == 0 && self.protocol == 17 {
            // RFC 768: a computed zero is sent as all ones (zero means none).
            l4 = 0xffff;
        }
        frame[at..at + 2].copy_from_slice(&l4.to_be_bytes());
        len
    }
}

/// The ones'-complement sum of `bytes` as big-endian 16-bit words (an odd
/// last byte padded with zero), added to `initial`, not yet folded.
fn sum16(bytes: &[u8], initial: u32) -> u32 {
    bytes.chunks(2).fold(initial, |sum, word| {
        sum + u32::from(u16::from_be_bytes([
            word[0],
            word.get(1).copied().unwrap_or(0),
        ]))
    })
}

/// The checksum of a sum: folded to 16 bits and complemented.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// The source port of a source in a pass: spread over 1024..65535, and
/// different in each pass (as a client's next connection would be).
pub(super) fn source_port(source_index: u32, pass: u32) -> u16 {
    // The pass moves the port by a prime stride, never a multiple of the range.
    let mixed =
        (source_index.wrapping_mul(0x9E37_79B1) >> 16).wrapping_add(pass.wrapping_mul(7_919));
    1024 + u16::try_from(mixed % 64_512).unwrap_or(0)
}

/// An `AF_PACKET` socket that only sends, on one interface.
struct PacketSocket {
    fd: OwnedFd,
    /// Where every frame goes: the interface, IPv4, the destination MAC.
    to: libc::sockaddr_ll,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> FloodError {
    let what = what.into();
    move |source| FloodError::Io { what, source }
}

/// The size of a `sockaddr_ll`, as the socket calls want it.
fn sockaddr_ll_len() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0)
}

impl PacketSocket {
    fn open(interface: &str, dst_mac: [u8; 6]) -> Result<Self, FloodError> {
        let name = CString::new(interface)
            .map_err(|_| FloodError::Invalid(format!("interface name {interface:?}")))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            let error = io::Error::last_os_error();
            return Err(io_error(format!("no interface {interface} here"))(error));
        }
        let index = libc::c_int::try_from(index)
            .map_err(|_| FloodError::Invalid(format!("interface index {index}")))?;
        // SAFETY: plain socket(2). Protocol 0: no frame is ever delivered
        // to this socket, it only sends.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let error = io::Error::last_os_error();
            return Err(io_error("opening an AF_PACKET socket (needs CAP_NET_RAW)")(
                error,
            ));
        }
        // SAFETY: `raw` is a descriptor just opened, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `sockaddr_ll` is plain data; all zeroes is a valid value.
        let mut at: libc::sockaddr_ll = unsafe { mem::zeroed() };
        at.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
        at.sll_ifindex = index;
        // SAFETY: `at` is a valid `sockaddr_ll` of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const at).cast::<libc::sockaddr>(),
                sockaddr_ll_len(),
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            return Err(io_error(format!("binding to {interface}"))(error));
        }
        let mut to = at;
        to.sll_protocol = ETH_P_IP_BE;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&dst_mac);
        Ok(Self { fd, to })
    }
}

/// A batch of frames and the `sendmmsg(2)` headers pointing at them.
struct Batch {
    slots: Vec<[u8; SLOT]>,
    lens: Vec<usize>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

/// How one batch went.
struct Sent {
    frames: usize,
    retries: u64,
}

impl Batch {
    fn new() -> Self {
        Self {
            slots: vec![[0; SLOT]; BATCH],
            lens: vec![0; BATCH],
            iov: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: `mmsghdr` is plain data; all zeroes (null pointers,
            // zero lengths) is a valid value.
            msgs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
        }
    }

    /// Sends the first `n` frames, offering a refused one again after
    /// yielding; returns how many went out (all, unless the interface kept
    /// refusing or `stop` was set meanwhile).
    fn send(
        &mut self,
        socket: &mut PacketSocket,
        n: usize,
        stop: &AtomicBool,
    ) -> Result<Sent, FloodError> {
        let n = n.min(BATCH);
        // The pointers are taken here, right before the calls that use them.
        let to = (&raw mut socket.to).cast::<libc::c_void>();
        for i in 0..n {
            self.iov[i] = libc::iovec {
                iov_base: self.slots[i].as_mut_ptr().cast::<libc::c_void>(),
                iov_len: self.lens[i],
            };
        }
        let iov = self.iov.as_mut_ptr();
        for (i, msg) in self.msgs.iter_mut().take(n).enumerate() {
            msg.msg_hdr.msg_name = to;
            msg.msg_hdr.msg_namelen = sockaddr_ll_len();
            // SAFETY: `i < n <= BATCH == iov.len()`.
            msg.msg_hdr.msg_iov = unsafe { iov.add(i) };
            msg.msg_hdr.msg_iovlen = 1;
            msg.msg_len = 0;
        }
        let msgs = self.msgs.as_mut_ptr();
        let mut done = 0;
        let mut retries = 0_u64;
        let mut refused_in_a_row = 0_u32;
        while done < n {
            let count = libc::c_uint::try_from(n - done).unwrap_or(1);
            // SAFETY: `msgs[done..n]` are initialised headers whose name,
            // iovec and buffer pointers point into `socket.to`, `self.iov`
            // and `self.slots`, which are neither moved nor otherwise
            // touched until the call returns.
            let rc = unsafe { libc::sendmmsg(socket.fd.as_raw_fd(), msgs.add(done), count, 0) };
            if let Ok(sent) = usize::try_from(rc) {
                if sent > 0 {
                    done += sent;
                    refused_in_a_row = 0;
                    continue;
                }
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) | None => {
                    retries += 1;
                    refused_in_a_row += 1;
                    if refused_in_a_row >= MAX_REFUSALS_IN_A_ROW {
                        return Err(io_error(format!(
                            "the interface refused {MAX_REFUSALS_IN_A_ROW} frames in a row"
                        ))(error));
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::yield_now();
                }
                Some(_) => return Err(io_error("sendmmsg")(error)),
            }
        }
        Ok(Sent {
            frames: done,
            retries,
        })
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<(), FloodError> {
    // SAFETY: `cpu_set_t` is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: CPU_SET indexes the set's array (beyond its last CPU it
    // panics, it never writes out of bounds).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is this thread; `set` is a valid set of the given size.
    let rc =
        unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &raw const set) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        return Err(io_error(format!("pinning the sender to CPU {cpu}"))(error));
    }
    Ok(())
}

/// Where the next frame is in the flood's order: pass, source, target, kind.
struct Cursor {
    pass: u32,
    source: u32,
    target: usize,
    kind: usize,
}

impl Cursor {
    /// Moves on by one frame; returns whether a pass was just completed.
    fn advance(&mut self, spec: &FloodSpec) -> bool {
        self.kind += 1;
        if self.kind < spec.kinds.len() {
            return false;
        }
        self.kind = 0;
        self.target += 1;
        if self.target < spec.targets.len() {
            return false;
        }
        self.target = 0;
        self.source += 1;
        if self.source < spec.sources {
            return false;
        }
        self.source = 0;
        self.pass += 1;
        true
    }
}

/// The time at which `frames` are due at `rate` frames per second.
fn due(frames: u64, rate: u64) -> Duration {
    let nanos = u128::from(frames) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Sends the flood from the current thread (which has joined the lab
/// namespace). `spec` has been checked.
pub(super) fn send_flood(spec: &FloodSpec, stop: &AtomicBool) -> Result<FloodReport, FloodError> {
    if let Some(cpu) = spec.cpu {
        pin_to(cpu)?;
    }
    let mut socket = PacketSocket::open(&spec.interface, spec.dst_mac)?;
    // templates[target * kinds + kind]
    let templates: Vec<Template> = spec
        .targets
        .iter()
        .flat_map(|t| {
            spec.kinds
                .iter()
                .map(move |k| Template::new(*k, spec.src_mac, spec.dst_mac, *t))
        })
        .collect();
    let kinds = spec.kinds.len();
    let per_pair = u64::try_from(kinds).unwrap_or(1);
    let mut batch = Batch::new();
    let mut at = Cursor {
        pass: 0,
        source: 0,
        target: 0,
        kind: 0,
    };
    let mut frames = 0_u64;
    let mut first_pass_frames = 0_u64;
    let mut retries = 0_u64;
    let started = Instant::now();
    let ended = loop {
        if spec.passes.is_some_and(|p| at.pass >= p) {
            break FloodEnd::Passes;
        }
        if frames >= spec.max_frames {
            break FloodEnd::Frames;
        }
        let elapsed = started.elapsed();
        if elapsed >= spec.max_duration {
            break FloodEnd::Time;
        }
        if stop.load(Ordering::Relaxed) {
            break FloodEnd::Stopped;
        }
        if let Some(rate) = spec.max_rate {
            let wait = due(frames, rate).saturating_sub(elapsed);
            if !wait.is_zero() {
                thread::sleep(wait.min(spec.max_duration - elapsed));
                continue;
            }
        }
        // Fill the batch, in order, without running past any bound: a batch
        // that ends a pass ends there, so all its frames are of one pass.
        let room = usize::try_from(spec.max_frames - frames).unwrap_or(BATCH);
        let pass = at.pass;
        let mut n = 0;
        while n < BATCH.min(room) {
            let source_index = spec.first_source + at.source;
            let template = &templates[at.target * kinds + at.kind];
            batch.lens[n] = template.write(
                &mut batch.slots[n],
                spoofed_source(source_index),
                source_port(source_index, at.pass),
            );
            n += 1;
            if at.advance(spec) {
                break;
            }
        }
        let sent = batch.send(&mut socket, n, stop)?;
        retries += sent.retries;
        let sent_frames = u64::try_from(sent.frames).unwrap_or(0);
        frames += sent_frames;
        if pass == 0 {
            first_pass_frames += sent_frames;
        }
        if sent.frames < n {
            // Stopped while the interface refused: what was not sent is not
            // counted, nor is the pass it would have completed.
            at.pass = pass;
            break FloodEnd::Stopped;
        }
    };
    Ok(FloodReport {
        frames,
        elapsed: started.elapsed(),
        passes_completed: at.pass,
        pairs_reached: first_pass_frames.div_ceil(per_pair),
        retries,
        ended,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{checksum, parse_service_frame};

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 10];

    #[test]
    fn patched_frames_equal_built_ones_and_verify() {
        let target = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 443);
        for kind in [FloodFrame::TcpSyn, FloodFrame::TcpAck, FloodFrame::Udp] {
            let template = Template::new(kind, CLIENT_MAC, LB_MAC, target);
            for (i, pass) in [(0, 0), (1, 0), (77_777, 1), (130_047, 3)] {
                let source = spoofed_source(i);
                let sport = source_port(i, pass);
                let mut slot = [0_u8; SLOT];
                let len = template.write(&mut slot, source, sport);
                let frame = &slot[..len];
                let built = frame_spec(kind, CLIENT_MAC, LB_MAC, source, sport, target).build();
                assert_eq!(frame, &built[..], "{kind:?} from {source}:{sport}");
                assert_eq!(checksum(&frame[ETH_HEADER..L4], 0), 0, "IP checksum");
                let l4_len = u32::try_from(len - L4).unwrap_or(0);
                let pseudo = sum16(&frame[IP_SOURCE..IP_SOURCE + 8], 0)
                    + u32::from(template.protocol)
                    + l4_len;
                assert_eq!(fold(sum16(&frame[L4..], pseudo)), 0, "L4 checksum");
                let parsed = parse_service_frame(frame).unwrap_or_else(|| panic!("parses"));
                assert_eq!(parsed.src, source);
                assert_eq!(parsed.dst, *target.ip());
                assert_eq!(parsed.dport, 443);
                assert_eq!(parsed.dst_mac, LB_MAC);
                assert_eq!(&frame[6..12], &CLIENT_MAC);
                match kind {
                    FloodFrame::TcpSyn => assert_eq!(frame[L4 + 13], TCP_SYN),
                    FloodFrame::TcpAck => assert_eq!(frame[L4 + 13], TCP_ACK),
                    FloodFrame::Udp => assert_eq!(frame[ETH_HEADER + 9], 17),
                }
            }
        }
    }

    #[test]
    fn source_ports_are_unprivileged_and_change_with_the_pass() {
        for i in [0, 1, 2, 65_535, 130_047] {
            assert!(source_port(i, 0) >= 1024);
            assert_ne!(source_port(i, 0), source_port(i, 1), "{i}");
        }
    }

    #[test]
    fn the_cursor_walks_sources_then_targets_then_kinds() {
        let spec = FloodSpec {
            sources: 2,
            ..FloodSpec::new(
                "ns",
                "eth0",
                CLIENT_MAC,
                LB_MAC,
                &[
                    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
                    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 101), 80),
                ],
                &[FloodFrame::TcpSyn, FloodFrame::TcpAck],
            )
        };
        let mut at = Cursor {
            pass: 0,
            source: 0,
            target: 0,
            kind: 0,
        };
        let mut seen = Vec::new();
        let mut ends = 0;
        for _ in 0..spec.frames_per_pass() * 2 {
            seen.push((at.pass, at.source, at.target, at.kind));
            if at.advance(&spec) {
                ends += 1;
            }
        }
        assert_eq!(ends, 2);
        assert_eq!(
            &seen[..8],
            &[
                (0, 0, 0, 0),
                (0, 0, 0, 1),
                (0, 0, 1, 0),
                (0, 0, 1, 1),
                (0, 1, 0, 0),
                (0, 1, 0, 1),
                (0, 1, 1, 0),
                (0, 1, 1, 1),
            ]
        );
        assert_eq!(seen[8], (1, 0, 0, 0));
    }

    #[test]
    fn the_rate_limit_spaces_frames_evenly() {
        assert_eq!(due(0, 1000), Duration::ZERO);
        assert_eq!(due(1000, 1000), Duration::from_secs(1));
        assert_eq!(due(1, 4), Duration::from_millis(250));
    }
}
