//! The XDP [`Program`]: loaded from the object embedded in lbd, over the
//! maps of a data path an earlier lbd left running when there is one
//! ([`running`](super::running)), and attached to the interface over
//! netlink ([`attach`](super::attach)), where it stays when lbd dies.

use std::{
    os::fd::{AsFd as _, BorrowedFd},
    sync::Arc,
};

use aya::{
    maps::Array,
    programs::{ProgramFd, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::MAX_SERVICES;
use rtnetlink::Handle;

use super::{
    attach::{self, Attached, Hook},
    census::EbpfCensus,
    ebpf::map_error,
    layout::{self, Migration, MIGRATIONS},
    mapped::{CensusCounts, ClientCounts},
    running::{self, Running, Scratch},
    DataplaneError, EbpfMaps, Result,
};

/// The compiled XDP object, embedded at build time by `build.rs` from
/// `cargo xtask build-ebpf`'s output (empty when it was not built).
static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// Name of the XDP entry point in the object.
const PROGRAM_NAME: &str = running::PROGRAM_NAME;
/// Name of the census program (run by lbd, never attached).
const CENSUS_NAME: &str = "lb_census";

/// How the program is attached (the configuration's `xdp_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (fast path); fails where the driver has no XDP support.
    Native,
    /// In the generic networking path (works everywhere, slower).
    Generic,
    /// Native, else generic with a warning.
    Auto,
}

/// The program an earlier lbd left attached, which this one replaces.
pub struct Predecessor {
    /// Where it is attached (`None`: it was not).
    pub attached: Option<Attached>,
    /// Its descriptor (the replacement names it).
    pub program: ProgramFd,
    /// Whether it is the very program this lbd loads (same tag).
    pub same_program: bool,
}

/// What a program loaded over a running data path took over from it.
#[derive(Debug, Default)]
pub struct TakenOver {
    /// Maps taken over with every entry, by name.
    pub maps: Vec<String>,
    /// Maps of an older layout whose entries were carried over, with counts.
    pub carried: Vec<String>,
    /// Maps of the running data path left behind, entries lost, by name.
    pub lost: Vec<String>,
    /// The running data path's layout version.
    pub layout: Option<u32>,
}

/// The loaded XDP program: attached to one interface once [`attach`] ran,
/// and left there when this value (or lbd) goes, until [`detach`].
///
/// [`attach`]: Program::attach
/// [`detach`]: Program::detach
pub struct Program {
    ebpf: Ebpf,
    attached: Option<(u32, Hook)>,
    predecessor: Option<Predecessor>,
    /// Further interfaces it is attached to (NAT server interfaces).
    also: Vec<(u32, String, Hook)>,
}

impl Program {
    /// Loads the embedded object over `running`, a data path an earlier
    /// lbd left on the interface: every map it keeps as it is (entries,
    /// counters, rings) is taken over, the entries of a map an older layout
    /// defined are carried over ([`MIGRATIONS`]), the rest start empty.
    /// The running program stays attached until [`Program::attach`]
    /// replaces it.
    ///
    /// # Errors
    /// When the object is missing or the kernel refuses it.
    pub fn load_over(running: Option<Running>) -> Result<(Self, TakenOver)> {
        if PROGRAM_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        match running {
            None => Ok((Self::load_bytes(PROGRAM_OBJECT)?, TakenOver::default())),
            Some(running) => Self::load_bytes_over(PROGRAM_OBJECT, running, MIGRATIONS),
        }
    }

    /// Loads `object` over `running` as [`Program::load_over`] does, with
    /// the layout steps `migrations` (tests construct their own).
    ///
    /// # Errors
    /// When the kernel refuses the object, or a map cannot be read or
    /// written.
    pub fn load_bytes_over(
        object: &[u8],
        running: Running,
        migrations: &[Migration],
    ) -> Result<(Self, TakenOver)> {
        let layout = running.layout;
        let (attached, old_tag) = (running.attached, running.tag);
        let old_program = running
            .program
            .try_clone()
            .map_err(|source| DataplaneError::Raw {
                what: "duplicating the running program's descriptor",
                source,
            })?;
        let mut takeover = running.takeover(&running::shapes(object)?, migrations);
        // Without a scratch bpffs (no CAP_SYS_ADMIN, say) the maps cannot
        // be handed to the new program: it starts with empty ones rather
        // than not at all, and the log names what was lost and why.
        let mut scratch = match Scratch::new() {
            Ok(scratch) => Some(scratch),
            Err(error) => {
                log::error!("cannot take the running data path's maps over: {error}");
                let lost = takeover.reused.drain(..).map(|(name, _)| name);
                takeover.lost.extend(lost);
                None
            }
        };
        let mut pins = Vec::new();
        if let Some(scratch) = scratch.as_mut() {
            for (name, map) in &takeover.reused {
                pins.push((name.as_str(), scratch.pin(name, map)?));
            }
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(object).map_err(DataplaneError::Load)?;
        drop(scratch);
        let mut program = Self::verified(ebpf)?;
        let info =
            Self::xdp(&mut program.ebpf)?
                .info()
                .map_err(|source| DataplaneError::Program {
                    what: "reading the loaded XDP program".into(),
                    source,
                })?;
        let mut carried = Vec::new();
        if !takeover.carried.is_empty() {
            let new_maps = Running::maps_of_loaded(&info)?;
            for (name, shape, old, steps) in &takeover.carried {
                let Some(new) = new_maps.get(running::kernel_name(name)) else {
                    continue;
                };
                let (moved, left) =
                    layout::carry(old.fd().as_fd(), *shape, steps, new.fd().as_fd())?;
                carried.push(format!(
                    "{name} ({moved} entries carried over, {left} left behind)"
                ));
            }
        }
        program.predecessor = Some(Predecessor {
            attached,
            program: old_program,
            same_program: info.tag() == old_tag,
        });
        let taken = TakenOver {
            maps: takeover.reused.into_iter().map(|(name, _)| name).collect(),
            carried,
            lost: takeover.lost,
            layout,
        };
        Ok((program, taken))
    }

    /// Loads an object from bytes (the tests load the same embedded object).
    ///
    /// # Errors
    /// When the kernel refuses the object.
    pub fn load_bytes(object: &[u8]) -> Result<Self> {
        Self::verified(Ebpf::load(object).map_err(DataplaneError::Load)?)
    }

    fn verified(mut ebpf: Ebpf) -> Result<Self> {
        let program = Self::xdp(&mut ebpf)?;
        program.load().map_err(|source| DataplaneError::Program {
            what: "the kernel's verifier refused the XDP program".into(),
            source,
        })?;
        let census = Self::census_program(&mut ebpf)?;
        census.load().map_err(|source| DataplaneError::Program {
            what: "the kernel's verifier refused the census program".into(),
            source,
        })?;
        Ok(Self {
            ebpf,
            attached: None,
            also: Vec::new(),
            predecessor: None,
        })
    }

    /// The embedded object, for tests that load it themselves.
    #[must_use]
    pub fn object() -> &'static [u8] {
        PROGRAM_OBJECT
    }

    /// The program this one replaces when attached, if any.
    #[must_use]
    pub fn predecessor(&self) -> Option<&Predecessor> {
        self.predecessor.as_ref()
    }

    fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
        ebpf.program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or(DataplaneError::Missing("XDP program lb_xdp"))
    }

    fn census_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
        ebpf.program_mut(CENSUS_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or(DataplaneError::Missing("census program lb_census"))
    }

    fn fd(&mut self) -> Result<BorrowedFd<'_>> {
        Self::xdp(&mut self.ebpf)?
            .fd()
            .map(|fd| fd.as_fd())
            .map_err(|source| DataplaneError::Program {
                what: "the XDP program has no descriptor (not loaded)".into(),
                source,
            })
    }

    /// The census (program and maps), for the thread that runs it;
    /// `client_counts` are the data path's, which it keeps true as it
    /// removes entries.
    ///
    /// # Errors
    /// When a map is missing (a stale object) or a descriptor cannot be had.
    pub fn census(&mut self, client_counts: Arc<ClientCounts>) -> Result<EbpfCensus> {
        let program = Self::census_program(&mut self.ebpf)?
            .fd()
            .map_err(|source| DataplaneError::Program {
                what: "the census program".into(),
                source,
            })?
            .try_clone()
            .map_err(|source| DataplaneError::Raw {
                what: "duplicating the census program's descriptor",
                source,
            })?;
        let mut take = |name: &'static str| {
            self.ebpf
                .take_map(name)
                .ok_or(DataplaneError::Missing(name))
        };
        Ok(EbpfCensus {
            program,
            services: Array::try_from(take("CENSUS_SERVICES")?)
                .map_err(map_error("CENSUS_SERVICES"))?,
            written: vec![lb_common::census::CensusService::default(); MAX_SERVICES as usize],
            orders: Array::try_from(take("CENSUS_RUN")?).map_err(map_error("CENSUS_RUN"))?,
            counts: CensusCounts::map(take("CENSUS_COUNTS")?)?,
            stream: aya::maps::RingBuf::try_from(take("STREAM_OUT")?)
                .map_err(map_error("STREAM_OUT"))?,
            new_entries: aya::maps::RingBuf::try_from(take("NEW_ENTRIES")?)
                .map_err(map_error("NEW_ENTRIES"))?,
            client_counts,
        })
    }

    /// The loaded program, for `test_run`.
    ///
    /// # Errors
    /// Never for an object this crate built.
    pub fn xdp_program(&mut self) -> Result<&mut Xdp> {
        Self::xdp(&mut self.ebpf)
    }

    /// Attaches the program to interface `ifindex`: in place of its
    /// predecessor, in one step and in the predecessor's hook, when it was
    /// loaded over one; else where none is attached, as `mode` asks.
    /// Returns the hook used.
    ///
    /// # Errors
    /// When the interface refuses the program, or the predecessor is no
    /// longer the one attached.
    pub async fn attach(
        &mut self,
        handle: &Handle,
        ifindex: u32,
        interface: &str,
        mode: AttachMode,
    ) -> Result<Hook> {
        let predecessor = self.predecessor.as_ref().and_then(|p| {
            p.attached
                .map(|a| (a.hook, p.program.as_fd().try_clone_to_owned()))
        });
        let hook = if let Some((hook, old)) = predecessor {
            let old = old.map_err(|source| DataplaneError::Raw {
                what: "duplicating the running program's descriptor",
                source,
            })?;
            let fd = self.fd()?;
            attach::replace(handle, ifindex, interface, hook, old.as_fd(), fd).await?;
            hook
        } else {
            let fd = self.fd()?;
            attach::attach(handle, ifindex, interface, fd, mode).await?
        };
        self.attached = Some((ifindex, hook));
        Ok(hook)
    }

    /// Attaches the program to a further interface (a NAT server
    /// interface, where the servers' replies arrive): in place of an lbd
    /// program there (a crashed or re-executed lbd's), in one step, else
    /// afresh. Another program there is left alone and refused.
    ///
    /// # Errors
    /// When another program is attached there, or the kernel refuses.
    pub async fn attach_also(
        &mut self,
        handle: &Handle,
        ifindex: u32,
        interface: &str,
        mode: AttachMode,
    ) -> Result<Hook> {
        let found = super::running::find(handle, ifindex).await?;
        let fd = self.fd()?;
        let hook = match found {
            super::Found::Ours(running) => {
                let hook = running.attached.map_or(Hook::Generic, |a| a.hook);
                attach::replace(
                    handle,
                    ifindex,
                    interface,
                    hook,
                    running.program.as_fd(),
                    fd,
                )
                .await?;
                hook
            }
            super::Found::Nothing => attach::attach(handle, ifindex, interface, fd, mode).await?,
            super::Found::Foreign { prog_id, name } => {
                return Err(DataplaneError::Program {
                    what: format!(
                        "{interface} runs another XDP program ({name}, id {prog_id}); \
                         remove it (ip link set {interface} xdp off) or drop {interface} \
                         from node.server_interfaces"
                    ),
                    source: aya::programs::ProgramError::AlreadyAttached,
                })
            }
        };
        self.also.push((ifindex, interface.to_owned(), hook));
        Ok(hook)
    }

    /// Detaches the program from its interface (a clean stop). A program
    /// attached there since by someone else is left alone.
    ///
    /// # Errors
    /// When the kernel refuses.
    pub async fn detach(&mut self, handle: &Handle, interface: &str) -> Result<()> {
        for (ifindex, name, hook) in std::mem::take(&mut self.also) {
            let fd = self.fd()?;
            attach::detach(handle, ifindex, &name, hook, fd).await?;
        }
        let Some((ifindex, hook)) = self.attached.take() else {
            return Ok(());
        };
        let fd = self.fd()?;
        attach::detach(handle, ifindex, interface, hook, fd).await
    }

    /// Takes the maps out of the object, for the control plane to fill.
    ///
    /// # Errors
    /// When a map is missing or of the wrong kind (a stale object).
    pub fn take_maps(&mut self) -> Result<EbpfMaps> {
        EbpfMaps::take_from(&mut self.ebpf)
    }
}
