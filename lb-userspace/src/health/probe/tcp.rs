//! The `tcp` check: a TCP connect to the server's check port. `http` and
//! `https` checks carry on over the connection it opens.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{Outcome, Phase, ProbeKind, ProbeSpec, ProbeTarget};

pub(super) async fn network_probe(
    check: &ProbeSpec,
    target: &ProbeTarget,
    phase: &Phase,
) -> Outcome {
    let stream = TcpStream::connect(SocketAddr::from((target.address, check.port)))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connect refused".to_owned(),
            _ => format!("connect: {e}"),
        })?;
    let ProbeKind::Http(http) = &check.kind else {
        return Ok("connected".to_owned());
    };
    super::http::request(stream, http, check, target, phase).await
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use crate::config::CheckKind;
    use crate::health::testing::{check, failed, passed, run, LOCAL};

    #[tokio::test]
    async fn tcp_check_passes_on_a_listener_and_fails_on_a_closed_port() {
        let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        passed(&run(&check(CheckKind::Tcp, port)).await, "connected");
        drop(listener);
        failed(&run(&check(CheckKind::Tcp, port)).await, "connect refused");
    }
}
