//! A flood of spoofed client sources, sent into a lab: Ethernet/IPv4 frames
//! (TCP SYN, TCP ACK or UDP) to chosen VIP:port targets, from up to 130,048
//! source addresses the lab never uses, through an `AF_PACKET` socket in
//! `sendmmsg(2)` batches (packet(7); the kernel side is `packet_snd` in
//! `net/packet/af_packet.c`).
//!
//! The sources are 198.18.0.0/15 without 198.18.0.0/22, the lab's LAN (its
//! hosts, VIPs and client sources all live there: see [`crate::lab`]), so a
//! spoofed frame can never be mistaken for a lab host's, and the replies the
//! real servers try to send to a spoofed source have no route and go nowhere.
//!
//! A flood is described by a [`FloodSpec`] and run by [`flood`] (or
//! [`flood_until`], which also stops when a flag is set). Frames go out in
//! a fixed order: pass after pass over the sources; for each source, every
//! target; for each target, every frame kind. So each (target, source) pair
//! gets its frames next to each other (a SYN before an ACK, say), every
//! target sees every source in each pass, and with two passes or more every
//! source is seen again. A flood is bounded in frames and in time, always:
//! it ends at the first of its passes, its `max_frames`, its `max_duration`
//! (at most [`MAX_FLOOD_DURATION`]) or the stop flag, and says which in its
//! [`FloodReport`].
//!
//! Every frame carries valid IPv4 and TCP/UDP checksums; only the source
//! address, the source port and the checksums differ from one frame of a
//! target and kind to the next (see `sender`). The frames leave the lab
//! interface named in the spec, inside the lab namespace named in the spec,
//! and nowhere else: the sending thread joins that namespace with
//! [`in_netns`]; the calling thread is not affected.

mod sender;

use std::{
    fmt, io,
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::AtomicBool,
    time::Duration,
};

use crate::lab::{in_netns, LabError};

/// First spoofed source: 198.18.4.0, just past the lab's 198.18.0.0/22.
pub const FIRST_SPOOFED_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 0);

/// Spoofed sources there are: 198.18.0.0/15 (131,072 addresses) less the
/// lab's 198.18.0.0/22 (1,024), that is 198.18.4.0 to 198.19.255.255.
pub const SPOOFED_SOURCES: u32 = (1 << 17) - (1 << 10);

/// The longest flood a spec may ask for.
pub const MAX_FLOOD_DURATION: Duration = Duration::from_secs(600);

/// Longest interface name Linux accepts (`IFNAMSIZ` less the NUL).
const MAX_IFNAME: usize = 15;

/// Spoofed source number `index` (0-based, taken modulo [`SPOOFED_SOURCES`]).
#[must_use]
pub fn spoofed_source(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_SPOOFED_SOURCE) + index % SPOOFED_SOURCES)
}

/// Whether `addr` is one of the spoofed sources (in 198.18.0.0/15, outside
/// the lab's 198.18.0.0/22).
#[must_use]
pub fn is_spoofed_source(addr: Ipv4Addr) -> bool {
    let a = u32::from(addr);
    let first = u32::from(FIRST_SPOOFED_SOURCE);
    a >= first && a - first < SPOOFED_SOURCES
}

/// What each frame of a flood is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodFrame {
    /// A TCP segment with only SYN set: a connection attempt; the load
    /// balancer must serve it but not remember its source.
    TcpSyn,
    /// A TCP segment with only ACK set: what a client sends once connected,
    /// so the load balancer remembers its source (while there is room).
    TcpAck,
    /// A UDP datagram with a 5-byte payload.
    Udp,
}

impl FloodFrame {
    /// The name used in messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            FloodFrame::TcpSyn => "TCP SYN",
            FloodFrame::TcpAck => "TCP ACK",
            FloodFrame::Udp => "UDP",
        }
    }
}

/// One flood: where it is sent from, what to, from which sources, and its
/// bounds. Build it with [`FloodSpec::new`] and adjust the fields.
#[derive(Clone, Debug)]
pub struct FloodSpec {
    /// The lab namespace to send from (say, [`DrLab::client_ns`](crate::lab::DrLab::client_ns)).
    pub netns: String,
    /// The interface in that namespace the frames leave by (`eth0`).
    pub interface: String,
    /// The frames' source MAC: the sending host's own (a switch learns
    /// nothing new, as from a router in front of the load balancer).
    pub src_mac: [u8; 6],
    /// The frames' destination MAC: the load balancer's.
    pub dst_mac: [u8; 6],
    /// The VIP:port targets; every source is sent to each of them.
    pub targets: Vec<SocketAddrV4>,
    /// The frame kinds; every (target, source) pair gets one of each, in
    /// this order.
    pub kinds: Vec<FloodFrame>,
    /// How many spoofed sources: [`spoofed_source`]`(first_source)` and
    /// the ones after it (1 to [`SPOOFED_SOURCES`]).
    pub sources: u32,
    /// Index of the first spoofed source used.
    pub first_source: u32,
    /// Passes over all sources; `None`: until another bound.
    pub passes: Option<u32>,
    /// Most frames sent in all.
    pub max_frames: u64,
    /// Longest time spent sending (at most [`MAX_FLOOD_DURATION`]).
    pub max_duration: Duration,
    /// Frames per second at most; `None`: as fast as the lab takes them.
    pub max_rate: Option<u64>,
    /// A CPU to pin the sending thread to; `None`: wherever the scheduler
    /// puts it.
    pub cpu: Option<usize>,
}

impl FloodSpec {
    /// A flood from `netns`'s `interface` (frames from `src_mac` to
    /// `dst_mac`) to every target, one frame of each kind per (target,
    /// source) pair, over every spoofed source, two passes (every source is
    /// seen twice), at most 10,000,000 frames and 60 s, at full speed.
    #[must_use]
    pub fn new(
        netns: &str,
        interface: &str,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        targets: &[SocketAddrV4],
        kinds: &[FloodFrame],
    ) -> Self {
        Self {
            netns: netns.to_owned(),
            interface: interface.to_owned(),
            src_mac,
            dst_mac,
            targets: targets.to_vec(),
            kinds: kinds.to_vec(),
            sources: SPOOFED_SOURCES,
            first_source: 0,
            passes: Some(2),
            max_frames: 10_000_000,
            max_duration: Duration::from_secs(60),
            max_rate: None,
            cpu: None,
        }
    }

    /// Distinct (target, source) pairs: targets x sources.
    #[must_use]
    pub fn pairs(&self) -> u64 {
        u64::try_from(self.targets.len()).unwrap_or(u64::MAX) * u64::from(self.sources)
    }

    /// Frames in one pass over the sources: pairs x kinds.
    #[must_use]
    pub fn frames_per_pass(&self) -> u64 {
        self.pairs()
            .saturating_mul(u64::try_from(self.kinds.len()).unwrap_or(u64::MAX))
    }

    /// Frames the whole flood sends if no bound other than its passes ends
    /// it first (`None`: no pass limit).
    #[must_use]
    pub fn planned_frames(&self) -> Option<u64> {
        self.passes
            .map(|p| self.frames_per_pass().saturating_mul(u64::from(p)))
    }

    /// Why this spec cannot run, if it cannot.
    fn check(&self) -> Result<(), FloodError> {
        let invalid = |why: String| Err(FloodError::Invalid(why));
        if self.netns.is_empty() {
            return invalid("no namespace to send from".into());
        }
        if self.interface.is_empty() || self.interface.len() > MAX_IFNAME {
            return invalid(format!(
                "interface name {:?} must be 1 to {MAX_IFNAME} characters",
                self.interface
            ));
        }
        if self.targets.is_empty() || self.kinds.is_empty() {
            return invalid("a flood needs at least one target and one frame kind".into());
        }
        if self.sources == 0
            || u64::from(self.first_source) + u64::from(self.sources) > u64::from(SPOOFED_SOURCES)
        {
            return invalid(format!(
                "sources {}..{} are not within the {SPOOFED_SOURCES} spoofed sources",
                self.first_source,
                u64::from(self.first_source) + u64::from(self.sources)
            ));
        }
        if self.passes == Some(0) || self.max_frames == 0 || self.max_rate == Some(0) {
            return invalid("passes, max_frames and max_rate must not be 0".into());
        }
        if self.max_duration.is_zero() || self.max_duration > MAX_FLOOD_DURATION {
            return invalid(format!(
                "max_duration {:?} must be above 0 and at most {MAX_FLOOD_DURATION:?}",
                self.max_duration
            ));
        }
        if self.dst_mac == self.src_mac {
            return invalid("source and destination MAC are the same".into());
        }
        Ok(())
    }
}

/// What ended a flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodEnd {
    /// Every pass was sent.
    Passes,
    /// `max_frames` were sent.
    Frames,
    /// `max_duration` passed.
    Time,
    /// The stop flag was set.
    Stopped,
}

/// What a flood did.
#[derive(Clone, Debug)]
pub struct FloodReport {
    /// Frames the kernel took (each counted once, however often it had to
    /// be offered again).
    pub frames: u64,
    /// Time from the first frame to the last.
    pub elapsed: Duration,
    /// Passes over all sources completed.
    pub passes_completed: u32,
    /// Distinct (target, source) pairs that got at least one frame.
    pub pairs_reached: u64,
    /// Times the interface refused a frame for now (`ENOBUFS`, the lab's
    /// queues full) and it was offered again.
    pub retries: u64,
    /// What ended it.
    pub ended: FloodEnd,
}

impl FloodReport {
    /// Frames per second over the flood.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "frame counts far below 2^52")]
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.frames as f64 / secs
        } else {
            0.0
        }
    }

    /// Whether every source was sent at least twice (two passes or more).
    #[must_use]
    pub fn every_source_repeated(&self) -> bool {
        self.passes_completed >= 2
    }

    /// A one-line summary for messages.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "{} frames in {:.2?} ({:.0}/s), {} passes completed, {} (target, source) pairs \
             reached, {} retries, ended by {:?}",
            self.frames,
            self.elapsed,
            self.rate(),
            self.passes_completed,
            self.pairs_reached,
            self.retries,
            self.ended
        )
    }
}

/// Why a flood could not run.
#[derive(Debug)]
pub enum FloodError {
    /// The spec cannot work.
    Invalid(String),
    /// A socket operation failed.
    Io {
        /// What was being attempted.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The namespace could not be entered.
    Lab(LabError),
}

impl fmt::Display for FloodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FloodError::Invalid(why) => write!(f, "invalid flood: {why}"),
            FloodError::Io { what, source } => write!(f, "{what}: {source}"),
            FloodError::Lab(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FloodError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FloodError::Io { source, .. } => Some(source),
            FloodError::Lab(e) => Some(e),
            FloodError::Invalid(_) => None,
        }
    }
}

/// Sends the flood `spec` describes and reports what went out. Blocks until
/// one of its bounds ends it.
///
/// # Errors
/// [`FloodError::Invalid`] for a spec that cannot work, [`FloodError::Lab`]
/// when the namespace cannot be entered, [`FloodError::Io`] when the socket
/// cannot be opened or the interface fails for good.
pub fn flood(spec: &FloodSpec) -> Result<FloodReport, FloodError> {
    flood_until(spec, &AtomicBool::new(false))
}

/// Like [`flood`], also ending (between two batches) once `stop` is set.
///
/// # Errors
/// As [`flood`].
pub fn flood_until(spec: &FloodSpec, stop: &AtomicBool) -> Result<FloodReport, FloodError> {
    spec.check()?;
    in_netns(&spec.netns, || sender::send_flood(spec, stop)).map_err(FloodError::Lab)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FloodSpec {
        FloodSpec::new(
            "ns",
            "eth0",
            [2, 0, 0, 0, 0, 2],
            [2, 0, 0, 0, 0, 10],
            &[SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80)],
            &[FloodFrame::TcpSyn, FloodFrame::TcpAck],
        )
    }

    #[test]
    fn spoofed_sources_stay_out_of_the_lab_and_in_198_18_0_0_15() {
        assert_eq!(SPOOFED_SOURCES, 130_048);
        assert_eq!(spoofed_source(0), Ipv4Addr::new(198, 18, 4, 0));
        assert_eq!(
            spoofed_source(SPOOFED_SOURCES - 1),
            Ipv4Addr::new(198, 19, 255, 255)
        );
        assert_eq!(spoofed_source(SPOOFED_SOURCES), spoofed_source(0));
        for lab in [
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 100),
            Ipv4Addr::new(198, 18, 1, 0),
            Ipv4Addr::new(198, 18, 2, 253),
            Ipv4Addr::new(198, 18, 3, 255),
            Ipv4Addr::new(198, 20, 0, 0),
            Ipv4Addr::new(10, 0, 0, 1),
        ] {
            assert!(!is_spoofed_source(lab), "{lab}");
        }
        for i in [0, 1, 1000, SPOOFED_SOURCES - 1] {
            assert!(is_spoofed_source(spoofed_source(i)));
        }
    }

    #[test]
    fn specs_are_bounded_and_checked() {
        let s = spec();
        assert!(s.check().is_ok());
        assert_eq!(s.pairs(), u64::from(SPOOFED_SOURCES));
        assert_eq!(s.frames_per_pass(), 2 * u64::from(SPOOFED_SOURCES));
        assert_eq!(s.planned_frames(), Some(4 * u64::from(SPOOFED_SOURCES)));
        for bad in [
            FloodSpec {
                targets: Vec::new(),
                ..spec()
            },
            FloodSpec {
                kinds: Vec::new(),
                ..spec()
            },
            FloodSpec {
                sources: 0,
                ..spec()
            },
            FloodSpec {
                first_source: 1,
                ..spec()
            },
            FloodSpec {
                passes: Some(0),
                ..spec()
            },
            FloodSpec {
                max_frames: 0,
                ..spec()
            },
            FloodSpec {
                max_duration: Duration::ZERO,
                ..spec()
            },
            FloodSpec {
                max_duration: MAX_FLOOD_DURATION + Duration::from_secs(1),
                ..spec()
            },
            FloodSpec {
                max_rate: Some(0),
                ..spec()
            },
            FloodSpec {
                interface: "an-interface-name".into(),
                ..spec()
            },
            FloodSpec {
                dst_mac: [2, 0, 0, 0, 0, 2],
                ..spec()
            },
        ] {
            assert!(
                matches!(bad.check(), Err(FloodError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
