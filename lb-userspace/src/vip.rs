//! Virtual IP addresses on `node.interface`, and gratuitous ARP for them.
//!
//! lbd owns the VIPs it adds: each is recorded in `STATE_DIR/vips` before it
//! is added, so that after a crash the next start removes what the crashed
//! process left. An address that was already on the interface before lbd
//! added it is not lbd's and is never removed.

use std::{
    collections::BTreeSet,
    fs, io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use futures::TryStreamExt;
use netlink_packet_route::{address::AddressAttribute, AddressFamily};
use rtnetlink::Handle;

use crate::neighbour::NetlinkError;

/// Errors managing VIPs.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The record under `state_dir` could not be written or read.
    #[error("{path}: {source} (check node.state_dir: it must be a writable directory)")]
    Record {
        /// The record's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Sending gratuitous ARP failed.
    #[error("sending gratuitous ARP for {vip}: {source}")]
    Garp {
        /// The VIP.
        vip: Ipv4Addr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
}

type Result<T, E = VipError> = std::result::Result<T, E>;

/// The VIPs lbd holds on one interface.
pub struct Vips {
    handle: Handle,
    ifindex: u32,
    mac: [u8; 6],
    record: PathBuf,
    owned: BTreeSet<Ipv4Addr>,
}

impl Vips {
    /// Manages VIPs on interface `ifindex` (MAC `mac`), recording them under `state_dir`.
    ///
    /// # Errors
    /// When `state_dir` cannot be created.
    pub fn new(handle: Handle, ifindex: u32, mac: [u8; 6], state_dir: &Path) -> Result<Self> {
        fs::create_dir_all(state_dir).map_err(|source| VipError::Record {
            path: state_dir.to_owned(),
            source,
        })?;
        Ok(Self {
            handle,
            ifindex,
            mac,
            record: state_dir.join("vips"),
            owned: BTreeSet::new(),
        })
    }

    /// The VIPs lbd added and holds now.
    #[must_use]
    pub fn owned(&self) -> &BTreeSet<Ipv4Addr> {
        &self.owned
    }

    /// Removes the VIPs a previous lbd recorded and did not remove (it
    /// crashed), except those in `keep`, which this lbd holds from now on
    /// (a single node taking over a running data path keeps serving them).
    /// Returns the VIPs removed.
    ///
    /// # Errors
    /// When the record cannot be read or an address cannot be removed.
    pub async fn remove_leftovers(&mut self, keep: &BTreeSet<Ipv4Addr>) -> Result<Vec<Ipv4Addr>> {
        let text = match fs::read_to_string(&self.record) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(VipError::Record {
                    path: self.record.clone(),
                    source,
                })
            }
        };
        let (kept, leftovers): (Vec<Ipv4Addr>, Vec<Ipv4Addr>) = text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .partition(|vip| keep.contains(vip));
        for vip in &leftovers {
            self.delete_address(*vip).await?;
        }
        self.owned = kept.into_iter().collect();
        self.write_record()?;
        Ok(leftovers)
    }

    /// The interface's IPv4 addresses with their prefix lengths.
    ///
    /// # Errors
    /// When the addresses cannot be listed.
    pub async fn addresses(&self) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut messages = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.ifindex)
            .execute();
        let mut out = Vec::new();
        while let Some(message) =
            messages
                .try_next()
                .await
                .map_err(|source| NetlinkError::Request {
                    what: "listing interface addresses".into(),
                    source,
                })?
        {
            if message.header.family != AddressFamily::Inet || message.header.index != self.ifindex
            {
                continue;
            }
            let local = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(a)) => Some(*a),
                _ => None,
            });
            let address = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(std::net::IpAddr::V4(a)) => Some(*a),
                _ => None,
            });
            if let Some(a) = local.or(address) {
                out.push((a, message.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// The host's IPv4 addresses, on every interface.
    async fn present(&self) -> Result<BTreeSet<Ipv4Addr>> {
        let mut messages = self.handle.address().get().execute();
        let mut out = BTreeSet::new();
        while let Some(message) =
            messages
                .try_next()
                .await
                .map_err(|source| NetlinkError::Request {
                    what: "listing the host's addresses".into(),
                    source,
                })?
        {
            if message.header.family != AddressFamily::Inet {
                continue;
            }
            for attribute in &message.attributes {
                if let AddressAttribute::Local(std::net::IpAddr::V4(a))
                | AddressAttribute::Address(std::net::IpAddr::V4(a)) = attribute
                {
                    out.insert(*a);
                }
            }
        }
        Ok(out)
    }

    /// The interface's own IPv4 address (the first one that is not a /32 and
    /// not a VIP lbd added): VRRP advertisements are sent from it.
    ///
    /// # Errors
    /// When the addresses cannot be listed.
    pub async fn primary_address(&self) -> Result<Option<Ipv4Addr>> {
        let mine: Vec<(Ipv4Addr, u8)> = self
            .addresses()
            .await?
            .into_iter()
            .filter(|(a, _)| !self.owned.contains(a))
            .collect();
        Ok(mine
            .iter()
            .find(|(_, prefix)| *prefix < 32)
            .or_else(|| mine.first())
            .map(|(a, _)| *a))
    }

    /// Makes the held VIPs exactly `wanted`: adds the missing ones (as /32;
    /// an address the host has already, on any interface, is the host's and
    /// is neither added nor ever removed), removes those lbd added that are
    /// no longer wanted, and sends gratuitous ARP for each VIP added.
    /// Returns the VIPs added.
    ///
    /// # Errors
    /// When an address cannot be added or removed, or the record written.
    pub async fn set(&mut self, wanted: &BTreeSet<Ipv4Addr>) -> Result<Vec<Ipv4Addr>> {
        let present = self.present().await?;
        let mut added = Vec::new();
        for vip in wanted {
            if self.owned.contains(vip) || present.contains(vip) {
                continue;
            }
            self.owned.insert(*vip);
            self.write_record()?;
            self.handle
                .address()
                .add(self.ifindex, (*vip).into(), 32)
                .execute()
                .await
                .map_err(|source| NetlinkError::Request {
                    what: format!("adding VIP {vip}/32"),
                    source,
                })?;
            added.push(*vip);
        }
        let gone: Vec<Ipv4Addr> = self.owned.difference(wanted).copied().collect();
        for vip in gone {
            self.delete_address(vip).await?;
            self.owned.remove(&vip);
            self.write_record()?;
        }
        for vip in &added {
            self.announce(*vip)?;
        }
        Ok(added)
    }

    /// Removes every VIP lbd added (at shutdown).
    ///
    /// # Errors
    /// When an address cannot be removed or the record written.
    pub async fn remove_all(&mut self) -> Result<()> {
        self.set(&BTreeSet::new()).await.map(|_| ())
    }

    async fn delete_address(&self, vip: Ipv4Addr) -> Result<()> {
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.ifindex)
            .set_address_filter(vip.into())
            .execute();
        while let Some(message) =
            addresses
                .try_next()
                .await
                .map_err(|source| NetlinkError::Request {
                    what: format!("looking up VIP {vip}"),
                    source,
                })?
        {
            if message.header.index != self.ifindex || message.header.prefix_len != 32 {
                continue;
            }
            self.handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(|source| NetlinkError::Request {
                    what: format!("removing VIP {vip}"),
                    source,
                })?;
        }
        Ok(())
    }

    fn write_record(&self) -> Result<()> {
        let text: String = self.owned.iter().map(|vip| format!("{vip}\n")).collect();
        crate::state_file::write_atomically(&self.record, text.as_bytes()).map_err(|source| {
            VipError::Record {
                path: self.record.clone(),
                source,
            }
        })
    }

    /// Sends one gratuitous ARP request for `vip` from this interface, so
    /// neighbours update their ARP caches to this node's MAC.
    ///
    /// # Errors
    /// When the packet socket cannot be opened or the frame not sent.
    pub fn announce(&self, vip: Ipv4Addr) -> Result<()> {
        send_garp(self.ifindex, self.mac, vip).map_err(|source| VipError::Garp { vip, source })
    }
}

/// A gratuitous ARP request frame (RFC 5227 section 3: sender and target
/// address both the VIP, broadcast destination).
#[must_use]
pub fn garp_frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 42] {
    let mut frame = [0_u8; 42];
    frame[0..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x0806_u16.to_be_bytes());
    frame[14..16].copy_from_slice(&1_u16.to_be_bytes()); // Ethernet
    frame[16..18].copy_from_slice(&0x0800_u16.to_be_bytes()); // IPv4
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&1_u16.to_be_bytes()); // request
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&vip.octets());
    frame[32..38].copy_from_slice(&[0; 6]);
    frame[38..42].copy_from_slice(&vip.octets());
    frame
}

/// Sends a gratuitous ARP through an `AF_PACKET` socket: no crate wraps
/// sending one raw frame better than these few lines of libc.
fn send_garp(ifindex: u32, mac: [u8; 6], vip: Ipv4Addr) -> io::Result<()> {
    let frame = garp_frame(mac, vip);
    let protocol = 0x0806_u16.to_be();
    // SAFETY: a plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
    address.sll_protocol = protocol;
    address.sll_ifindex =
        i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: the frame and address outlive the call; lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::addr_of!(address).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or_default(),
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_frame_announces_the_vip_from_our_mac() {
        let mac = [2, 0, 0, 0, 0, 10];
        let f = garp_frame(mac, Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[198, 18, 0, 100]);
        assert_eq!(&f[38..42], &[198, 18, 0, 100]);
    }
}
