//! The control socket's server side: how `lbd` listens for `lbctl`.
//!
//! One JSON request per line on a Unix stream socket (mode 0600, so only
//! root may use it), one JSON reply per line. The socket side only moves
//! bytes: each request is handed to the daemon's main loop over a channel and
//! answered from there, so the daemon's state has one owner.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader as TokioBufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::protocol::{Answer, Reply, Request};
use crate::limits::{Caps, ConnectionGate};

/// Largest request accepted (a configuration file travels inside `apply`).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// A request waiting for the daemon's answer: the request, the Unix user id
/// of the process that sent it (the socket's peer credentials; `None` if
/// the kernel would not say), and where the answer goes.
pub type Pending = (Request, Option<u32>, oneshot::Sender<Reply<Answer>>);

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created.
    #[error("control socket {path}: {source}")]
    Bind {
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another lbd answers on the socket.
    #[error("control socket {0} is in use: is another lbd running with this configuration? (set node.control_socket to run two)")]
    InUse(PathBuf),
}

/// Binds the control socket at `path` (creating its directory, replacing a
/// stale socket left by a crashed lbd, refusing one a live lbd answers on).
///
/// # Errors
/// When the socket cannot be created or is in use.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_error = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    // The socket of the lbd this process was before a re-execution.
    if let Some(fd) = crate::inherit::take("control") {
        let listener = std::os::unix::net::UnixListener::from(fd);
        let same = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p == path))
            .unwrap_or(false);
        if same && path.exists() && listener.set_nonblocking(true).is_ok() {
            if let Ok(listener) = UnixListener::from_std(listener) {
                return Ok(listener);
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_error)?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_error)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// The control socket's caps: only root can connect (mode 0600), but a
/// script gone wrong should not take every descriptor either. All callers
/// count as one address.
pub const CAPS: Caps = Caps {
    per_address: 64,
    total: 64,
};

/// Accepts connections forever, passing each request to `requests`, while
/// `gate` admits them.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Pending>,
    gate: Arc<ConnectionGate>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match gate.admit(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) {
                Ok(admission) => {
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        let _admission = admission;
                        connection(stream, requests).await;
                    });
                }
                Err(refusal) => log::warn!("control socket: closing a connection: {refusal}"),
            },
            Err(error) => {
                log::warn!("control socket: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, requests: mpsc::Sender<Pending>) {
    let caller = stream.peer_cred().ok().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    let mut lines = TokioBufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = String::new();
    loop {
        line.clear();
        let reply =
            match tokio::time::timeout(Duration::from_secs(30), lines.read_line(&mut line)).await {
                Err(_) | Ok(Ok(0)) => return,
                Ok(Err(error)) => Reply::<Answer>::error(format!("unreadable request: {error}")),
                Ok(Ok(_)) if !line.ends_with('\n') => Reply::<Answer>::error(format!(
                    "request too long (the limit is {MAX_REQUEST_BYTES} bytes)"
                )),
                Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                    Err(error) => Reply::<Answer>::error(format!("malformed request: {error}")),
                    Ok(request) => {
                        let (tx, rx) = oneshot::channel();
                        if requests.send((request, caller, tx)).await.is_err() {
                            return;
                        }
                        rx.await
                            .unwrap_or_else(|_| Reply::<Answer>::error("lbd is shutting down"))
                    }
                },
            };
        let Ok(mut bytes) = serde_json::to_vec(&reply) else {
            return;
        };
        bytes.push(b'\n');
        if write.write_all(&bytes).await.is_err() || !line.ends_with('\n') {
            return;
        }
    }
}
