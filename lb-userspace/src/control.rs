//! The control socket: how `lbctl` talks to `lbd`.
//!
//! One JSON request per line on a Unix stream socket (mode 0600, so only
//! root may use it), one JSON reply per line. The socket side only moves
//! bytes: each request is handed to the daemon's main loop over a channel and
//! answered from there, so the daemon's state has one owner.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader as TokioBufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

/// Largest request accepted (a configuration file travels inside `apply`).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// A command for `lbd`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Node, services, real servers and counters.
    Status,
    /// Set a real server's administrative state.
    SetState {
        /// Service name.
        service: String,
        /// Real-server name.
        server: String,
        /// "online", "drain" or "halt".
        state: String,
    },
    /// Set a real server's weight.
    Weight {
        /// Service name.
        service: String,
        /// Real-server name.
        server: String,
        /// The new weight.
        weight: u16,
    },
    /// Validate and apply a configuration.
    Apply {
        /// The file's name, for error positions.
        file: String,
        /// The file's contents.
        text: String,
    },
    /// Which real server a client goes to, and why.
    Affinity {
        /// Service name.
        service: String,
        /// Client address.
        client: String,
    },
    /// The share of clients a configuration would move, per service.
    Plan {
        /// The file's name, for error positions.
        file: String,
        /// The file's contents.
        text: String,
    },
    /// High-availability state.
    Ha,
}

/// The reply to a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result (when `ok`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub result: Value,
    /// What went wrong (when not `ok`), for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// A successful reply.
    #[must_use]
    pub fn ok(result: Value) -> Self {
        Self {
            ok: true,
            result,
            error: None,
        }
    }

    /// A failed reply.
    #[must_use]
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: Value::Null,
            error: Some(message.into()),
        }
    }
}

/// A request waiting for the daemon's answer.
pub type Pending = (Request, oneshot::Sender<Reply>);

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

/// Accepts connections forever, passing each request to `requests`.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Pending>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, requests.clone()));
            }
            Err(error) => {
                log::warn!("control socket: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, requests: mpsc::Sender<Pending>) {
    let (read, mut write) = stream.into_split();
    let mut lines = TokioBufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = String::new();
    loop {
        line.clear();
        let reply =
            match tokio::time::timeout(Duration::from_secs(30), lines.read_line(&mut line)).await {
                Err(_) | Ok(Ok(0)) => return,
                Ok(Err(error)) => Reply::error(format!("unreadable request: {error}")),
                Ok(Ok(_)) if !line.ends_with('\n') => Reply::error(format!(
                    "request too long (the limit is {MAX_REQUEST_BYTES} bytes)"
                )),
                Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                    Err(error) => Reply::error(format!("malformed request: {error}")),
                    Ok(request) => {
                        let (tx, rx) = oneshot::channel();
                        if requests.send((request, tx)).await.is_err() {
                            return;
                        }
                        rx.await
                            .unwrap_or_else(|_| Reply::error("lbd is shutting down"))
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

/// Errors of a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No lbd listens on the socket.
    #[error("cannot reach lbd at {path}: {source} (is lbd running? is --socket right?)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The exchange failed midway.
    #[error("talking to lbd at {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// lbd's reply was not understood.
    #[error("lbd sent a reply lbctl does not understand: {0}")]
    Reply(String),
}

/// Sends one request and waits (up to `timeout`) for the reply.
///
/// # Errors
/// When lbd cannot be reached or its reply is malformed.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let stream = StdUnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let io_error = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    let mut bytes = serde_json::to_vec(request).map_err(|e| ClientError::Reply(e.to_string()))?;
    bytes.push(b'\n');
    (&stream).write_all(&bytes).map_err(io_error)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(io_error)?;
    serde_json::from_str(&line).map_err(|e| ClientError::Reply(format!("{e}: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::SetState {
            service: "web".into(),
            server: "rs1".into(),
            state: "drain".into(),
        };
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"command":"set_state","service":"web","server":"rs1","state":"drain"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).ok(), Some(r));
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
    }

    #[test]
    fn replies_carry_a_result_or_an_error() {
        let ok = serde_json::to_string(&Reply::ok(serde_json::json!({"a": 1}))).unwrap_or_default();
        assert_eq!(ok, r#"{"ok":true,"result":{"a":1}}"#);
        let err = serde_json::to_string(&Reply::error("no")).unwrap_or_default();
        assert_eq!(err, r#"{"ok":false,"error":"no"}"#);
    }
}
