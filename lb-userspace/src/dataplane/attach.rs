//! Attaching the XDP program to `node.interface` over netlink, so that the
//! attachment belongs to the interface, not to lbd's process: a data path
//! outlives a crashed or re-executing lbd and is found again through the
//! interface (`IFLA_XDP_PROG_ID`). A `bpf_link` (aya's default) would go with
//! the last descriptor, that is with the process.
//!
//! Replacing one program by another is one atomic netlink request
//! (`XDP_FLAGS_REPLACE` with the expected program), so no frame meets an
//! interface without a program, and a program someone else attached in the
//! meantime is never replaced or removed by mistake.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use futures::TryStreamExt as _;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use rtnetlink::Handle;

use super::{AttachMode, DataplaneError, Result};

/// Fail rather than replace a program that is there.
const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
/// The generic (socket-buffer) path.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// In the driver.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// Replace the program given as expected, and only it.
const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// Where a program is attached: in the driver or in the generic path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// In the driver ("native").
    Driver,
    /// In the generic networking path.
    Generic,
}

impl Hook {
    /// As `lbctl status` and the logs name it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Hook::Driver => "native",
            Hook::Generic => "generic",
        }
    }

    fn flag(self) -> u32 {
        match self {
            Hook::Driver => XDP_FLAGS_DRV_MODE,
            Hook::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// The XDP program attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The kernel's id of the program.
    pub prog_id: u32,
    /// Where it is attached.
    pub hook: Hook,
}

/// The program attached to interface `ifindex`, if any.
///
/// # Errors
/// When the netlink request fails.
pub async fn attached(handle: &Handle, ifindex: u32) -> Result<Option<Attached>> {
    let mut links = handle.link().get().match_index(ifindex).execute();
    let link = links
        .try_next()
        .await
        .map_err(|source| DataplaneError::Netlink {
            what: format!("reading the XDP program of interface {ifindex}"),
            source,
        })?;
    let Some(link) = link else {
        return Ok(None);
    };
    let mut found = (None, None);
    for attribute in link.attributes {
        if let LinkAttribute::Xdp(xdp) = attribute {
            for nla in xdp {
                match nla {
                    LinkXdp::ProgId(id) if id != 0 => found.0 = Some(id),
                    LinkXdp::Attached(XdpAttached::Driver) => found.1 = Some(Hook::Driver),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => found.1 = Some(Hook::Generic),
                    _ => {}
                }
            }
        }
    }
    Ok(match found {
        (Some(prog_id), Some(hook)) => Some(Attached { prog_id, hook }),
        _ => None,
    })
}

async fn set(handle: &Handle, ifindex: u32, xdp: Vec<LinkXdp>, what: String) -> Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    message.attributes.push(LinkAttribute::Xdp(xdp));
    handle
        .link()
        .set(message)
        .execute()
        .await
        .map_err(|source| DataplaneError::Netlink { what, source })
}

/// Attaches `program` to `ifindex` where no program is attached, in the
/// hook `mode` asks for (`Auto`: the driver, else the generic path with a
/// warning). Returns the hook used.
///
/// # Errors
/// When the interface refuses the program in every hook tried.
pub async fn attach(
    handle: &Handle,
    ifindex: u32,
    interface: &str,
    program: BorrowedFd<'_>,
    mode: AttachMode,
) -> Result<Hook> {
    let attempt = |hook: Hook| {
        let xdp = vec![
            LinkXdp::Fd(program.as_raw_fd()),
            LinkXdp::Flags(hook.flag() | XDP_FLAGS_UPDATE_IF_NOEXIST),
        ];
        let what = format!(
            "cannot attach the XDP program to {interface} in {} mode (does the interface \
             exist, and is no other XDP program attached? `ip link show dev {interface}` tells; \
             `ip link set dev {interface} xdp off` removes a leftover)",
            hook.name()
        );
        set(handle, ifindex, xdp, what)
    };
    match mode {
        AttachMode::Native => attempt(Hook::Driver).await.map(|()| Hook::Driver),
        AttachMode::Generic => attempt(Hook::Generic).await.map(|()| Hook::Generic),
        AttachMode::Auto => match attempt(Hook::Driver).await {
            Ok(()) => Ok(Hook::Driver),
            Err(error) => {
                log::warn!("{error}; falling back to generic mode, which is slower");
                attempt(Hook::Generic).await.map(|()| Hook::Generic)
            }
        },
    }
}

/// Replaces `old` (attached to `ifindex` in `hook`) by `program` in one
/// step: every frame meets one or the other.
///
/// # Errors
/// When `old` is no longer the attached program, or the kernel refuses.
pub async fn replace(
    handle: &Handle,
    ifindex: u32,
    interface: &str,
    hook: Hook,
    old: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
) -> Result<()> {
    let xdp = vec![
        LinkXdp::Fd(program.as_raw_fd()),
        LinkXdp::Flags(hook.flag() | XDP_FLAGS_REPLACE),
        LinkXdp::ExpectedFd(fd_number(old)),
    ];
    let what = format!("replacing the running XDP program on {interface}");
    set(handle, ifindex, xdp, what).await
}

/// Detaches `program` from `ifindex` (attached in `hook`), and nothing
/// else: a program attached since by someone else stays.
///
/// # Errors
/// When `program` is not the attached program, or the kernel refuses.
pub async fn detach(
    handle: &Handle,
    ifindex: u32,
    interface: &str,
    hook: Hook,
    program: BorrowedFd<'_>,
) -> Result<()> {
    let xdp = vec![
        LinkXdp::Fd(-1),
        LinkXdp::Flags(hook.flag() | XDP_FLAGS_REPLACE),
        LinkXdp::ExpectedFd(fd_number(program)),
    ];
    let what = format!("detaching the XDP program from {interface}");
    set(handle, ifindex, xdp, what).await
}

/// A descriptor as the `IFLA_XDP_EXPECTED_FD` attribute carries it (a
/// descriptor lbd holds is never negative).
fn fd_number(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}
