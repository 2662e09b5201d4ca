//! Listening sockets handed from one lbd to the next across a re-execution
//! (SIGUSR2): the running lbd clears close-on-exec on its listeners and
//! names them in `LBD_LISTEN_FDS` (`NAME=FD,...`); the next one, the same
//! process, takes each by name where it would bind it, so a client never
//! meets a closed port. A descriptor that is not a listening socket of the
//! expected address is closed and bound afresh.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    sync::{Mutex, OnceLock, PoisonError},
};

/// The environment variable naming the inherited listeners.
pub const LISTEN_FDS_ENV: &str = "LBD_LISTEN_FDS";

/// Listeners inherited at start, by name, until taken.
fn inherited() -> &'static Mutex<BTreeMap<String, OwnedFd>> {
    static INHERITED: OnceLock<Mutex<BTreeMap<String, OwnedFd>>> = OnceLock::new();
    INHERITED.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Whether `fd` is an open socket.
fn is_socket(fd: RawFd) -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat into the buffer or fails.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded.
    let mode = unsafe { stat.assume_init() }.st_mode;
    mode & libc::S_IFMT == libc::S_IFSOCK
}

/// Parses `NAME=FD,...` as the previous lbd wrote it.
fn parse(text: &str) -> Vec<(String, RawFd)> {
    text.split(',')
        .filter_map(|pair| {
            let (name, fd) = pair.split_once('=')?;
            let fd: RawFd = fd.trim().parse().ok()?;
            (fd > 2 && !name.is_empty()).then(|| (name.to_owned(), fd))
        })
        .collect()
}

/// Takes the listeners named in [`LISTEN_FDS_ENV`] (once, at start, before
/// any other descriptor is opened) and removes the variable, so that no
/// child process sees it. Returns their names.
pub fn from_env() -> Vec<String> {
    let Some(text) = std::env::var_os(LISTEN_FDS_ENV) else {
        return Vec::new();
    };
    // SAFETY: called at start, before lbd starts any thread.
    unsafe { std::env::remove_var(LISTEN_FDS_ENV) };
    let mut map = inherited().lock().unwrap_or_else(PoisonError::into_inner);
    for (name, fd) in parse(&text.to_string_lossy()) {
        if is_socket(fd) {
            // SAFETY: the previous lbd left this descriptor open for us
            // alone, and nothing in this process has taken it yet.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(owned.as_fd(), true);
            map.insert(name, owned);
        }
    }
    map.keys().cloned().collect()
}

/// The inherited listener `name`, if there is one (each is taken once).
pub fn take(name: &str) -> Option<OwnedFd> {
    inherited()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(name)
}

/// Closes every inherited listener nobody took (a listener the new
/// configuration no longer has).
pub fn drop_untaken() -> Vec<String> {
    let mut map = inherited().lock().unwrap_or_else(PoisonError::into_inner);
    let names = map.keys().cloned().collect();
    map.clear();
    names
}

/// Sets or clears close-on-exec on `fd`. (A failure only means the next
/// lbd binds that listener afresh.)
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFD/F_SETFD on a descriptor we hold.
    unsafe {
        let flags = libc::fcntl(raw, libc::F_GETFD);
        if flags >= 0 {
            let flags = if on {
                flags | libc::FD_CLOEXEC
            } else {
                flags & !libc::FD_CLOEXEC
            };
            libc::fcntl(raw, libc::F_SETFD, flags);
        }
    }
}

/// The value of [`LISTEN_FDS_ENV`] for these listeners.
#[must_use]
pub fn env_value(listeners: &[(String, RawFd)]) -> String {
    listeners
        .iter()
        .map(|(name, fd)| format!("{name}={fd}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_descriptors_round_trip_and_bad_pairs_are_skipped() {
        let listeners = vec![
            ("metrics".to_owned(), 7),
            ("redirect/198.18.0.100:80".to_owned(), 9),
        ];
        assert_eq!(parse(&env_value(&listeners)), listeners);
        assert_eq!(parse("a=1,=5,b=x,c=12"), vec![("c".to_owned(), 12)]);
    }
}
