//! A data path an earlier lbd left running: found through the interface
//! (the XDP program attached to it), checked to be lbd's (program name,
//! layout version, the shape of each map), and its maps handed to the next
//! program, which takes them over with every entry.
//!
//! The kernel gives a map to a program being loaded only by descriptor,
//! and aya's loader takes existing maps only from bpffs pins: the maps are
//! pinned for the load in a scratch directory of a bpffs (the host's at
//! `/sys/fs/bpf`, else one mounted for the purpose) and unpinned at once.
//! Nothing stays pinned: the interface holds the program, the program its
//! maps, so a data path lives exactly as long as its interface, and two
//! lbds on two interfaces (or network namespaces) never meet.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::{fd::AsFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapInfo},
    programs::{loaded_programs, ProgramFd, ProgramInfo},
};
use lb_common::LAYOUT_VERSION;
use rtnetlink::Handle;

use super::{
    attach::{self, Attached},
    layout::{self, Fate, Migration},
    raw_bpf, DataplaneError, Result,
};

/// lbd's XDP program as the kernel names it.
pub const PROGRAM_NAME: &str = "lb_xdp";
/// The kernel keeps the first 15 bytes of a program's or map's name.
const KERNEL_NAME_LEN: usize = 15;
/// `statfs(2)`'s magic number of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What must be equal for a map of one program to serve another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Key size in bytes.
    pub key: u32,
    /// Value size in bytes.
    pub value: u32,
    /// Capacity.
    pub max_entries: u32,
    /// Creation flags (`BPF_F_MMAPABLE`, ...).
    pub flags: u32,
    /// The map type (`bpf_map_type`; `u32::MAX` if aya does not know it).
    pub kind: u32,
}

impl Shape {
    /// A map's shape as the kernel describes it.
    fn of(info: &MapInfo) -> Self {
        Self {
            key: info.key_size(),
            value: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
            kind: info.map_type().map_or(u32::MAX, |kind| kind as u32),
        }
    }

    /// Whether the map holds one value per CPU for each key.
    #[must_use]
    pub fn per_cpu(&self) -> bool {
        use aya_obj::generated::bpf_map_type::{
            BPF_MAP_TYPE_LRU_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_HASH,
        };
        [
            BPF_MAP_TYPE_PERCPU_HASH,
            BPF_MAP_TYPE_PERCPU_ARRAY,
            BPF_MAP_TYPE_LRU_PERCPU_HASH,
        ]
        .iter()
        .any(|kind| *kind as u32 == self.kind)
    }
}

/// The program attached to the interface.
pub enum Found {
    /// None: lbd loads its own.
    Nothing,
    /// lbd's data path, left by an earlier lbd.
    Ours(Running),
    /// Another program: lbd neither replaces nor removes it.
    Foreign {
        /// Its id (`bpftool prog show id ID`).
        prog_id: u32,
        /// Its name.
        name: String,
    },
}

/// A data path an earlier lbd left running.
pub struct Running {
    /// Where it is attached (`None`: a program not attached, in tests).
    pub attached: Option<Attached>,
    /// The program's tag (a hash of its instructions): equal for the same
    /// program built the same way.
    pub tag: u64,
    /// A descriptor of the program, naming it when it is replaced.
    pub program: ProgramFd,
    /// The layout version its lbd wrote into `GLOBALS` (`None`: unreadable).
    pub layout: Option<u32>,
    /// Its maps by (kernel) name, with their shapes.
    maps: BTreeMap<String, (Shape, MapData)>,
}

/// What the next program takes over from a running one.
#[derive(Default)]
pub struct Takeover {
    /// Maps the next program uses as they are, by object name.
    pub reused: Vec<(String, MapData)>,
    /// Maps whose entries are carried into the next program's, by object
    /// name, with the running map's shape and the steps.
    pub carried: Vec<(String, Shape, MapData, Vec<Migration>)>,
    /// Maps of the running program the next one cannot use (another
    /// shape or meaning): their entries are lost. By kernel name.
    pub lost: Vec<String>,
}

/// The program attached to `ifindex`, and whether it is lbd's.
///
/// # Errors
/// When the kernel cannot be asked (netlink, `bpf(2)`).
pub async fn find(handle: &Handle, ifindex: u32) -> Result<Found> {
    let Some(attached) = attach::attached(handle, ifindex).await? else {
        return Ok(Found::Nothing);
    };
    let info = loaded_programs()
        .filter_map(std::result::Result::ok)
        .find(|p| p.id() == attached.prog_id);
    let Some(info) = info else {
        // Detached between the two questions.
        return Ok(Found::Nothing);
    };
    let name = info.name_as_str().unwrap_or_default().to_owned();
    if name != PROGRAM_NAME {
        return Ok(Found::Foreign {
            prog_id: attached.prog_id,
            name,
        });
    }
    let mut running = Running::of_program(&info)?;
    running.attached = Some(attached);
    Ok(Found::Ours(running))
}

/// Detaches lbd's data path from `ifindex` (an interface the
/// configuration no longer uses), and nothing else. Returns whether there
/// was one.
///
/// # Errors
/// When the kernel cannot be asked or refuses.
pub async fn retire(handle: &Handle, ifindex: u32, interface: &str) -> Result<bool> {
    let Found::Ours(running) = find(handle, ifindex).await? else {
        return Ok(false);
    };
    let Some(attached) = running.attached else {
        return Ok(false);
    };
    attach::detach(
        handle,
        ifindex,
        interface,
        attached.hook,
        running.program.as_fd(),
    )
    .await?;
    Ok(true)
}

/// The maps of program `info`, by kernel name, with their shapes.
fn maps_of(info: &ProgramInfo) -> Result<BTreeMap<String, (Shape, MapData)>> {
    let ids = info
        .map_ids()
        .map_err(|source| DataplaneError::Program {
            what: "listing an XDP program's maps".into(),
            source,
        })?
        .unwrap_or_default();
    let mut maps = BTreeMap::new();
    for id in ids {
        let map = MapData::from_id(id).map_err(|source| DataplaneError::Map {
            map: "of the running data path",
            source,
        })?;
        let info = map.info().map_err(|source| DataplaneError::Map {
            map: "of the running data path",
            source,
        })?;
        let shape = Shape::of(&info);
        if let Some(name) = info.name_as_str() {
            maps.insert(name.to_owned(), (shape, map));
        }
    }
    Ok(maps)
}

impl Running {
    /// lbd's data path as loaded program `info` holds it (not attached).
    ///
    /// # Errors
    /// When the program or its maps cannot be opened.
    pub fn of_program(info: &ProgramInfo) -> Result<Self> {
        let program = info.fd().map_err(|source| DataplaneError::Program {
            what: format!("opening the running XDP program (id {})", info.id()),
            source,
        })?;
        let maps = maps_of(info)?;
        let layout = maps.get("GLOBALS").and_then(|(shape, map)| {
            let value =
                raw_bpf::lookup_bytes(map.fd().as_fd(), &0_u32.to_ne_bytes(), shape.value as usize)
                    .ok()?;
            let layout: [u8; 4] = value.get(..4)?.try_into().ok()?;
            Some(u32::from_ne_bytes(layout))
        });
        Ok(Self {
            attached: None,
            tag: info.tag(),
            program,
            layout,
            maps,
        })
    }

    /// The same data path with `map` in place of its map `name` and
    /// claiming layout `layout`: a data path of a layout constructed by a
    /// test.
    ///
    /// # Errors
    /// When the map's shape cannot be read.
    pub fn with_map(mut self, name: &str, map: MapData, layout: u32) -> Result<Self> {
        let info = map.info().map_err(|source| DataplaneError::Map {
            map: "of a constructed layout",
            source,
        })?;
        let shape = Shape::of(&info);
        self.maps.insert(kernel_name(name).to_owned(), (shape, map));
        self.layout = Some(layout);
        Ok(self)
    }

    /// What a program with maps `wanted` (of this lbd's layout) takes over,
    /// map by map ([`layout::fate`]): used as it is, carried through the
    /// layout steps in `migrations`, or left behind.
    #[must_use]
    pub fn takeover(self, wanted: &BTreeMap<String, Shape>, migrations: &[Migration]) -> Takeover {
        let mut takeover = Takeover::default();
        let mut maps = self.maps;
        for (name, shape) in wanted {
            let Some((running, map)) = maps.remove(kernel_name(name)) else {
                continue;
            };
            match layout::fate(
                migrations,
                self.layout,
                LAYOUT_VERSION,
                name,
                running,
                *shape,
            ) {
                Fate::Reuse => takeover.reused.push((name.clone(), map)),
                Fate::Carry(steps) => takeover.carried.push((name.clone(), running, map, steps)),
                Fate::Lost => takeover.lost.push(kernel_name(name).to_owned()),
            }
        }
        takeover.lost.extend(maps.into_keys());
        takeover
    }

    /// The maps of program `info` (this lbd's, just loaded), by kernel name.
    ///
    /// # Errors
    /// When they cannot be opened.
    pub(super) fn maps_of_loaded(info: &ProgramInfo) -> Result<BTreeMap<String, MapData>> {
        Ok(maps_of(info)?
            .into_iter()
            .map(|(name, (_, map))| (name, map))
            .collect())
    }
}

/// The maps an object defines, by name, with their shapes.
///
/// # Errors
/// When the object cannot be parsed (a build problem).
pub fn shapes(object: &[u8]) -> Result<BTreeMap<String, Shape>> {
    let parsed =
        aya_obj::Object::parse(object).map_err(|e| DataplaneError::Object(e.to_string()))?;
    Ok(parsed
        .maps
        .iter()
        .map(|(name, map)| {
            (
                name.clone(),
                Shape {
                    key: map.key_size(),
                    value: map.value_size(),
                    max_entries: map.max_entries(),
                    flags: map.map_flags(),
                    kind: map.map_type(),
                },
            )
        })
        .collect())
}

/// `name` as the kernel keeps it.
pub(super) fn kernel_name(name: &str) -> &str {
    name.get(..KERNEL_NAME_LEN.min(name.len())).unwrap_or(name)
}

/// A scratch directory on a bpffs where maps are pinned while a program
/// that reuses them is loaded; removed (and unmounted, if mounted here)
/// when dropped.
pub struct Scratch {
    dir: PathBuf,
    mounted: bool,
    pinned: Vec<PathBuf>,
}

impl Scratch {
    /// Under the host's bpffs when `/sys/fs/bpf` is one, else on a bpffs
    /// mounted for the purpose under the temporary directory.
    ///
    /// # Errors
    /// When no directory can be made or no bpffs mounted.
    pub fn new() -> Result<Self> {
        let unique = format!("lbd-takeover-{}", std::process::id());
        let host = Path::new("/sys/fs/bpf");
        if is_bpffs(host) {
            let dir = host.join(&unique);
            std::fs::create_dir_all(&dir).map_err(|source| DataplaneError::Raw {
                what: "creating a scratch directory under /sys/fs/bpf",
                source,
            })?;
            return Ok(Self {
                dir,
                mounted: false,
                pinned: Vec::new(),
            });
        }
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir).map_err(|source| DataplaneError::Raw {
            what: "creating a scratch directory for a bpffs",
            source,
        })?;
        nix::mount::mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| DataplaneError::Raw {
            what: "mounting a scratch bpffs (lbd needs CAP_SYS_ADMIN)",
            source: errno.into(),
        })?;
        Ok(Self {
            dir,
            mounted: true,
            pinned: Vec::new(),
        })
    }

    /// Pins `map` as `name`; returns the path.
    ///
    /// # Errors
    /// When the kernel refuses.
    pub fn pin(&mut self, name: &str, map: &MapData) -> Result<PathBuf> {
        let path = self.dir.join(name);
        map.pin(&path).map_err(|error| DataplaneError::Raw {
            what: "pinning a map to take it over",
            source: std::io::Error::other(error.to_string()),
        })?;
        self.pinned.push(path.clone());
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.pinned {
            let _ = std::fs::remove_file(path);
        }
        if self.mounted {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Whether `path` is the root of a mounted bpffs.
fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid C string and a buffer of the size statfs writes.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: statfs succeeded and filled the buffer.
    #[expect(
        clippy::useless_conversion,
        reason = "f_type's type differs by platform"
    )]
    let kind = i64::from(unsafe { stat.assume_init() }.f_type);
    kind == BPF_FS_MAGIC
}
