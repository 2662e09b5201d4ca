//! Real-server MAC addresses from the kernel's neighbour (ARP) table.
//!
//! In direct routing the load balancer rewrites only the destination MAC, so
//! it must know each real server's. The kernel already resolves and refreshes
//! them; this module reads its table over rtnetlink and, for an address it
//! lacks, asks the kernel to resolve it (`RTM_NEWNEIGH` with `NTF_USE`, the
//! same as a packet waiting for the address would).

use std::{collections::BTreeMap, net::Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::{
    link::LinkAttribute,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
    AddressFamily,
};
use rtnetlink::Handle;

/// Errors talking to the kernel's routing netlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening the netlink socket failed.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A request failed.
    #[error("{what}: {source}")]
    Request {
        /// What was asked.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The interface does not exist.
    #[error("interface {0:?} does not exist (check node.interface; `ip link` lists interfaces)")]
    NoInterface(String),
    /// The interface has no Ethernet address.
    #[error("interface {0:?} has no Ethernet (MAC) address; XDP direct routing needs one")]
    NoMac(String),
}

/// Opens a routing-netlink connection, driven by a background task.
///
/// # Errors
/// When the socket cannot be opened.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// An interface's index and MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Kernel interface index.
    pub index: u32,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// Looks up an interface by name.
///
/// # Errors
/// When it does not exist or has no MAC address.
pub async fn interface(handle: &Handle, name: &str) -> Result<Interface, NetlinkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    let link = match links.try_next().await {
        Ok(Some(link)) => link,
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
            return Err(NetlinkError::NoInterface(name.to_owned()))
        }
        Err(source) => {
            return Err(NetlinkError::Request {
                what: format!("looking up interface {name}"),
                source,
            })
        }
    };
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| NetlinkError::NoMac(name.to_owned()))?;
    Ok(Interface {
        index: link.header.index,
        mac,
    })
}

/// The usable IPv4 neighbour entries of one interface: address to MAC.
/// Entries that are incomplete or failed are left out.
///
/// # Errors
/// When the dump fails.
pub async fn table(
    handle: &Handle,
    ifindex: u32,
) -> Result<BTreeMap<Ipv4Addr, [u8; 6]>, NetlinkError> {
    let mut entries = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    let mut out = BTreeMap::new();
    loop {
        let entry = entries
            .try_next()
            .await
            .map_err(|source| NetlinkError::Request {
                what: "reading the neighbour table".into(),
                source,
            })?;
        let Some(entry) = entry else { break };
        if entry.header.ifindex != ifindex
            || matches!(
                entry.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            )
        {
            continue;
        }
        let mut address = None;
        let mut mac = None;
        for attribute in &entry.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => address = Some(*a),
                NeighbourAttribute::LinkLayerAddress(bytes) => {
                    mac = <[u8; 6]>::try_from(bytes.as_slice()).ok();
                }
                _ => {}
            }
        }
        if let (Some(address), Some(mac)) = (address, mac) {
            if mac != [0; 6] {
                out.insert(address, mac);
            }
        }
    }
    Ok(out)
}

/// Asks the kernel to resolve `address` on `ifindex` (it sends an ARP request).
///
/// # Errors
/// When the kernel refuses the request.
pub async fn prompt(handle: &Handle, ifindex: u32, address: Ipv4Addr) -> Result<(), NetlinkError> {
    handle
        .neighbours()
        .add(ifindex, address.into())
        .state(NeighbourState::None)
        .flags(NeighbourFlags::Use)
        .replace()
        .execute()
        .await
        .map_err(|source| NetlinkError::Request {
            what: format!("asking the kernel to resolve {address}"),
            source,
        })
}
