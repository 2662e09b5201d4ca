//! `bpf(2)` commands aya 0.14 lacks, made here by hand:
//!
//! - `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): reads a hash map [`BATCH`] entries
//!   per call, where aya's iterator costs two calls per entry ([`for_each`]).
//! - `BPF_PROG_TEST_RUN` on a bare program descriptor ([`run_program`]):
//!   aya runs a program only through its owning `Ebpf`, which the census
//!   thread does not hold.
//! - `BPF_MAP_LOOKUP_ELEM`, `BPF_MAP_GET_NEXT_KEY` and `BPF_MAP_UPDATE_ELEM`
//!   on keys and values of sizes known only at run time ([`lookup_bytes`],
//!   [`next_key`], [`update_bytes`]): maps another lbd's layout defined.

use std::{
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

/// The `bpf(2)` command number of `BPF_MAP_LOOKUP_BATCH`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The `bpf(2)` command number of `BPF_MAP_LOOKUP_ELEM`.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
/// The `bpf(2)` command number of `BPF_MAP_UPDATE_ELEM`.
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// The `bpf(2)` command number of `BPF_MAP_GET_NEXT_KEY`.
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
/// The `bpf(2)` command number of `BPF_PROG_TEST_RUN`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Entries read per system call: large enough that a hash bucket never
/// holds more (the kernel answers `ENOSPC` then), small enough to stay in
/// cache (4,096 affinity entries are 160 KiB).
pub const BATCH: u32 = 4096;

/// The batch operations' part of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A descriptor as `union bpf_attr` carries it.
fn fd_number(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

/// Calls `f` for every entry of the hash map behind `fd`, [`BATCH`] at a
/// time. Entries written or removed during the walk may or may not be seen,
/// as with any walk of a live map.
///
/// # Errors
/// The system call's error: `EINVAL` on a kernel or map type without batch
/// lookups (the caller falls back to a walk one entry at a time).
pub fn for_each<K: Pod, V: Pod>(fd: BorrowedFd<'_>, f: &mut dyn FnMut(&K, &V)) -> io::Result<()> {
    let capacity = BATCH as usize;
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(capacity);
    keys.resize_with(capacity, MaybeUninit::uninit);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(capacity);
    values.resize_with(capacity, MaybeUninit::uninit);
    // The position in the table: a bucket number for hash maps (u32); a
    // u64 leaves room whatever the kernel writes.
    let mut position = 0_u64;
    let mut next = 0_u64;
    let map_fd = fd_number(fd)?;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::addr_of!(position) as u64
            },
            out_batch: std::ptr::addr_of_mut!(next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the layout the kernel expects for this command;
        // every pointer in it is to a live buffer of the size given (`count`
        // keys and values of the map's key and value types, checked by the
        // caller's types against the map), and `position`/`next` outlive
        // the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::addr_of_mut!(attr),
                size_of::<BatchAttr>(),
            )
        };
        let error = (rc < 0).then(io::Error::last_os_error);
        let end = match error {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) => return Err(e),
        };
        let read = (attr.count as usize).min(capacity);
        for (k, v) in keys[..read].iter().zip(&values[..read]) {
            // SAFETY: the kernel wrote the first `attr.count` keys and values.
            let (k, v) = unsafe { (k.assume_init_ref(), v.assume_init_ref()) };
            f(k, v);
        }
        if end {
            return Ok(());
        }
        position = next;
        first = false;
    }
}

/// The test-run part of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs the program behind `fd` once on `data` (for XDP, a frame of at
/// least 14 bytes); returns its return value.
///
/// # Errors
/// The system call's error.
pub fn run_program(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: fd_number(fd)?,
        data_size_in: u32::try_from(data.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        data_in: data.as_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is the layout the kernel expects for this command; its
    // only pointer is to `data`, of the size given, alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            std::ptr::addr_of_mut!(attr),
            size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr.retval)
}

/// The element operations' part of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One element command on the map behind `fd`: `key`, and `value` (the
/// value read or written, or the next key).
fn elem(
    command: libc::c_long,
    fd: BorrowedFd<'_>,
    key: Option<&[u8]>,
    value: *mut u8,
    flags: u64,
) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd_number(fd)?,
        _pad: 0,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value: value as u64,
        flags,
    };
    // SAFETY: `attr` is the layout the kernel expects for the element
    // commands; it points at `key` and at `value`, sized as the map's keys
    // and values (the callers' duty), both alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::addr_of_mut!(attr),
            size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The value of `key` in the map behind `fd`, whose values are
/// `value_size` bytes.
///
/// # Errors
/// The system call's error (`ENOENT`: no such key).
pub fn lookup_bytes(fd: BorrowedFd<'_>, key: &[u8], value_size: usize) -> io::Result<Vec<u8>> {
    let mut value = vec![0_u8; value_size];
    elem(BPF_MAP_LOOKUP_ELEM, fd, Some(key), value.as_mut_ptr(), 0)?;
    Ok(value)
}

/// The key after `key` (the first with `None`) in the map behind `fd`,
/// whose keys are `key_size` bytes; `None` after the last.
///
/// # Errors
/// The system call's error.
pub fn next_key(
    fd: BorrowedFd<'_>,
    key: Option<&[u8]>,
    key_size: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut next = vec![0_u8; key_size];
    match elem(BPF_MAP_GET_NEXT_KEY, fd, key, next.as_mut_ptr(), 0) {
        Ok(()) => Ok(Some(next)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `key` -> `value` into the map behind `fd` (`flags` as
/// `BPF_MAP_UPDATE_ELEM` takes them).
///
/// # Errors
/// The system call's error.
pub fn update_bytes(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    // The kernel only reads the value of an update.
    elem(
        BPF_MAP_UPDATE_ELEM,
        fd,
        Some(key),
        value.as_ptr().cast_mut(),
        flags,
    )
}
