//! The control socket's client side: one request, one typed reply.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream as StdUnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{Reply, Request, Response};

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
    /// lbd refused the request; the text says why (configuration errors
    /// come one per line, each already positioned).
    #[error("{0}")]
    Refused(String),
    /// lbd's reply was not understood.
    #[error("lbd sent a reply lbctl does not understand: {0}")]
    Reply(String),
}

/// Sends one request and waits (up to `timeout`) for its reply, of the type
/// the request is answered with (see [`Request`]).
///
/// # Errors
/// When lbd cannot be reached, refuses the request, or its reply is malformed.
pub fn call<T: Response>(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<T, ClientError> {
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
    let reply: Reply<T> =
        serde_json::from_str(&line).map_err(|e| ClientError::Reply(format!("{e}: {line:?}")))?;
    reply.into_result().map_err(ClientError::Refused)
}
