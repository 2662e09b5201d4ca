//! The console's listener: bounded like lbd's other listeners, HTTPS only.
//!
//! Each accepted connection is admitted by its [`ConnectionGate`] (per
//! client address and in all) before anything is read. Its first byte says
//! whether it speaks TLS (a handshake record starts with 0x16); plain HTTP
//! gets a `400` saying to use `https://`, in clear, and is closed. A TLS
//! connection has [`HANDSHAKE_TIMEOUT`] to finish its handshake and then
//! serves HTTP/1.1 through hyper, for at most [`MAX_CONNECTION_AGE`].

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;

use super::routes::Console;
use crate::limits::ConnectionGate;

/// Time a client has to send its first byte and finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one connection is served (a browser opens another).
const MAX_CONNECTION_AGE: Duration = Duration::from_mins(10);

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Errors starting the console.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The listener could not be bound.
    #[error("cannot serve the web console on {address}: {source} (change node.web.listen)")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The name the console's listener is handed over by on SIGUSR2.
pub const INHERITED: &str = "web";

/// Binds `node.web.listen`, or takes the listener the lbd this one
/// re-executed handed over (so no connection is refused across an upgrade).
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, WebError> {
    if let Some(fd) = crate::inherit::take(INHERITED) {
        let listener = std::net::TcpListener::from(fd);
        if listener.local_addr().ok() == Some(address) && listener.set_nonblocking(true).is_ok() {
            if let Ok(listener) = TcpListener::from_std(listener) {
                log::info!("web console: listening on the socket the previous lbd handed over");
                return Ok(listener);
            }
        }
    }
    TcpListener::bind(address)
        .await
        .map_err(|source| WebError::Bind { address, source })
}

/// Serves the console on `listener` forever.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    console: Arc<Console>,
    gate: Arc<ConnectionGate>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                log::warn!("web console: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admission = match gate.admit(peer.ip()) {
            Ok(admission) => admission,
            Err(refusal) => {
                log::debug!("web console: closing a connection from {peer}: {refusal}");
                continue;
            }
        };
        let tls = tls.clone();
        let console = Arc::clone(&console);
        tokio::spawn(async move {
            let _admission = admission;
            let _ =
                tokio::time::timeout(MAX_CONNECTION_AGE, connection(stream, peer, tls, console))
                    .await;
        });
    }
}

/// One connection: refuse plain HTTP, else TLS, then HTTP/1.1.
async fn connection(stream: TcpStream, peer: SocketAddr, tls: TlsAcceptor, console: Arc<Console>) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            refuse_plain_http(stream).await;
            return;
        }
        _ => return,
    }
    let tls_stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            log::debug!("web console: TLS handshake with {peer} failed: {error}");
            return;
        }
        Err(_) => return,
    };
    let service = service_fn(move |request: Request<Incoming>| {
        let console = Arc::clone(&console);
        async move { Ok::<_, Infallible>(console.respond(request, peer.ip()).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls_stream), service)
        .await;
}

/// Answers a plain-HTTP request with a clear refusal and closes.
async fn refuse_plain_http(mut stream: TcpStream) {
    let body = "This is the lbd web console: it speaks HTTPS only. Use https:// in the address.\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
