//! The NAT and SNAT maps of the data path (`lb-ebpf/src/nat.rs`): the
//! settings lbd writes (per service, per real server, the SNAT addresses,
//! the interfaces frames may leave by), and the connection table it reads,
//! lists and sweeps.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    Ebpf,
};
use lb_common::nat::{conn_is_live, Conn, ConnKey, NatCounters, NatReal, NatService};

use super::{
    ebpf::{errno, map_error, E2BIG},
    DataplaneError, Result,
};

/// The NAT maps, taken from the loaded object.
pub struct NatMaps {
    services: Array<MapData, NatService>,
    reals: Array<MapData, NatReal>,
    snat_addresses: HashMap<MapData, u32, u8>,
    active: Array<MapData, u32>,
    conns: Arc<Mutex<ConnTable>>,
    egress: aya::maps::DevMapHash<MapData>,
    notes: PerCpuArray<MapData, NatCounters>,
    /// What `snat_addresses` holds.
    snat_written: BTreeSet<Ipv4Addr>,
    /// What `services` holds, by service id.
    services_written: std::collections::HashMap<u32, NatService>,
    /// What `reals` holds, by index.
    reals_written: std::collections::HashMap<u32, NatReal>,
}

impl NatMaps {
    pub(super) fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        Ok(Self {
            services: Array::try_from(take("NAT_SERVICES")?).map_err(map_error("NAT_SERVICES"))?,
            reals: Array::try_from(take("NAT_REALS")?).map_err(map_error("NAT_REALS"))?,
            snat_addresses: HashMap::try_from(take("SNAT_ADDRESSES")?)
                .map_err(map_error("SNAT_ADDRESSES"))?,
            active: Array::try_from(take("NAT_ACTIVE")?).map_err(map_error("NAT_ACTIVE"))?,
            conns: Arc::new(Mutex::new(ConnTable(
                HashMap::try_from(take("CONNS")?).map_err(map_error("CONNS"))?,
            ))),
            egress: aya::maps::DevMapHash::try_from(take("NAT_EGRESS")?)
                .map_err(map_error("NAT_EGRESS"))?,
            notes: PerCpuArray::try_from(take("NAT_NOTES")?).map_err(map_error("NAT_NOTES"))?,
            snat_written: BTreeSet::new(),
            services_written: std::collections::HashMap::new(),
            reals_written: std::collections::HashMap::new(),
        })
    }

    /// Writes a service's NAT settings.
    pub(super) fn set_service(&mut self, id: u32, nat: NatService) -> Result<()> {
        if self.services_written.get(&id) == Some(&nat) {
            return Ok(());
        }
        self.services
            .set(id, nat, 0)
            .map_err(map_error("NAT_SERVICES"))?;
        self.services_written.insert(id, nat);
        Ok(())
    }

    /// Writes a real server's NAT settings.
    pub(super) fn set_real(&mut self, index: u32, nat: NatReal) -> Result<()> {
        if self.reals_written.get(&index) == Some(&nat) {
            return Ok(());
        }
        self.reals
            .set(index, nat, 0)
            .map_err(map_error("NAT_REALS"))?;
        self.reals_written.insert(index, nat);
        Ok(())
    }

    /// Whether a NAT or SNAT service exists (replies are looked up only then).
    pub(super) fn set_active(&mut self, on: bool) -> Result<()> {
        self.active
            .set(0, u32::from(on), 0)
            .map_err(map_error("NAT_ACTIVE"))
    }

    /// Replaces the SNAT addresses.
    pub(super) fn set_snat_addresses(&mut self, addresses: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let key = |a: &Ipv4Addr| u32::from_ne_bytes(a.octets());
        for gone in self.snat_written.difference(addresses) {
            match self.snat_addresses.remove(&key(gone)) {
                Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
                Err(e) => return Err(map_error("SNAT_ADDRESSES")(e)),
            }
        }
        for new in addresses.difference(&self.snat_written) {
            self.snat_addresses
                .insert(key(new), 1, 0)
                .map_err(map_error("SNAT_ADDRESSES"))?;
        }
        self.snat_written.clone_from(addresses);
        Ok(())
    }

    /// Lets translated frames leave by the interfaces `ifindexes`.
    ///
    /// # Errors
    /// When the kernel refuses an interface (one without XDP transmit).
    pub fn set_egress(&mut self, ifindexes: &[u32]) -> Result<()> {
        for index in ifindexes {
            self.egress
                .insert(*index, *index, None, 0)
                .map_err(|e| match e {
                    aya::maps::xdp::XdpMapError::MapError(e) => map_error("NAT_EGRESS")(e),
                    other @ aya::maps::xdp::XdpMapError::ChainedProgramNotSupported => {
                        DataplaneError::Raw {
                            what: "adding an interface to NAT_EGRESS",
                            source: std::io::Error::other(other.to_string()),
                        }
                    }
                })?;
        }
        Ok(())
    }

    /// Every NAT note's count, summed over CPUs, in `NatNote::ALL` order.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn notes(&self) -> Result<Vec<u64>> {
        let values = self.notes.get(&0, 0).map_err(map_error("NAT_NOTES"))?;
        let mut sums = vec![0_u64; lb_common::nat::NAT_NOTE_COUNT as usize];
        for cpu in values.iter() {
            for (sum, count) in sums.iter_mut().zip(cpu.counts) {
                *sum += count;
            }
        }
        Ok(sums)
    }

    /// The connection table, shared with the thread that sweeps it.
    #[must_use]
    pub fn conn_table(&self) -> Arc<Mutex<ConnTable>> {
        Arc::clone(&self.conns)
    }
}

/// The connection table (`CONNS`).
pub struct ConnTable(HashMap<MapData, ConnKey, Conn>);

impl ConnTable {
    /// Every tracked connection's entry of the client's direction.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn connections(&self) -> Result<Vec<(ConnKey, Conn)>> {
        let mut out = self.entries()?;
        out.retain(|(_, conn)| conn.reply == 0);
        Ok(out)
    }

    /// Every entry, both directions.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn entries(&self) -> Result<Vec<(ConnKey, Conn)>> {
        self.0
            .iter()
            .map(|item| item.map_err(map_error("CONNS")))
            .collect()
    }

    /// Removes the connections that have expired at `now_ns` (both entries
    /// of each, by the state and the latest time of either direction), and
    /// counts the live ones per real server.
    ///
    /// # Errors
    /// When the map cannot be read or written.
    pub fn sweep(&mut self, now_ns: u64) -> Result<Swept> {
        let mut entries = std::collections::HashMap::new();
        for item in &self.0 {
            let (key, conn) = item.map_err(map_error("CONNS"))?;
            entries.insert(key, conn);
        }
        let mut swept = Swept::default();
        let mut expired = Vec::new();
        for (key, conn) in &entries {
            let other = conn.reverse_key(key.protocol);
            // The connection's state is the furthest either direction has
            // seen (a reset from one side ends it), its time the latest.
            let (state, last_seen) =
                entries
                    .get(&other)
                    .map_or((conn.state, conn.last_seen_ns), |o| {
                        (
                            o.state.max(conn.state),
                            o.last_seen_ns.max(conn.last_seen_ns),
                        )
                    });
            if !conn_is_live(now_ns, last_seen, state) {
                expired.push(*key);
            } else if conn.reply == 0 {
                *swept.live_by_real.entry(conn.real).or_insert(0) += 1;
                swept.live.push((
                    *key,
                    Conn {
                        state,
                        last_seen_ns: last_seen,
                        ..*conn
                    },
                ));
            }
        }
        for key in &expired {
            match self.0.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
                Err(e) => return Err(map_error("CONNS")(e)),
            }
        }
        swept.removed = expired.len();
        Ok(swept)
    }

    /// Writes connection entries (both directions of connections from the
    /// peer), replacing any under the same keys. Returns how many did not
    /// fit (the table is full).
    ///
    /// # Errors
    /// When the map cannot be written for another reason.
    pub fn install(&mut self, entries: &[(ConnKey, Conn)]) -> Result<usize> {
        let mut full = 0;
        for (key, conn) in entries {
            match self.0.insert(key, conn, 0) {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(E2BIG) => full += 1,
                Err(e) => return Err(map_error("CONNS")(e)),
            }
        }
        Ok(full)
    }
}

/// What a sweep of the connection table did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Entries removed.
    pub removed: usize,
    /// Live connections by real-server index.
    pub live_by_real: std::collections::BTreeMap<u32, u64>,
    /// Each live connection's entry of the client's direction, with the
    /// state and time of the whole connection (both directions).
    pub live: Vec<(ConnKey, Conn)>,
}
