//! VRRP version 3 for IPv4 (RFC 5798): the advertisement codec and a sans-IO
//! state machine that decides who is master of the pair.
//!
//! Nothing here touches a socket or reads the clock. The edge that owns the raw
//! IP protocol 112 socket does the I/O:
//!
//! 1. on receipt it checks the IP header with [`check_ip`], decodes the payload
//!    with [`decode`] (reporting failures to [`Vrrp::record_drop`]) and hands
//!    the result to [`Vrrp::handle_advert`];
//! 2. it sleeps until [`Vrrp::poll_timeout`] and then calls
//!    [`Vrrp::handle_timeout`];
//! 3. after every call it drains [`Vrrp::poll_action`]: `SendAdvert` is turned
//!    into bytes with [`Vrrp::advertisement`] and [`encode`] and sent to
//!    [`Vrrp::destination`] with TTL 255; `BecameMaster` adds the virtual
//!    addresses, `SendGarp` announces them, `BecameBackup` and `Stopped`
//!    remove them.
//!
//! The wire format is RFC 5798 section 5.2; the checksum covers the IPv4
//! pseudo-header (section 5.2.8), as keepalived computes it with
//! `version 3`. Receive checks follow section 7.1 and the state machine
//! section 6.4. Timer arithmetic uses the section 6.1 formulas on
//! centisecond intervals and keeps the result to the nanosecond instead of
//! rounding it to whole centiseconds (keepalived keeps microseconds).

use std::net::Ipv4Addr;

mod codec;
mod machine;

pub use codec::{check_ip, decode, encode, Advertisement, DecodeError};
pub use machine::{Action, Config, ConfigError, Counters, DropReason, State, Vrrp};

/// IP protocol number of VRRP (RFC 5798 section 5.1.1.4).
pub const IP_PROTOCOL: u8 = 112;
/// The TTL every VRRP packet is sent with and must arrive with (section 5.1.1.3).
pub const IP_TTL: u8 = 255;
/// Multicast group advertisements go to when no unicast peer is set (section 5.1.1.2).
pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// Priority a master sends when it stops being master (section 5.2.4).
pub const PRIORITY_STOP: u8 = 0;
/// Priority of the router that owns the virtual addresses (section 5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// Largest Max Adver Int: the field is 12 bits of centiseconds (section 5.2.7).
pub const MAX_ADVERT_INTERVAL_CS: u16 = 0x0fff;
/// The address count is one byte.
const MAX_ADDRESSES: usize = 255;

#[cfg(test)]
pub(crate) mod sim;
