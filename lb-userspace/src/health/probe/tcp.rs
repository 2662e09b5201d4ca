//! The `tcp` check: a TCP connect to the server's check port. `http` and
//! `https` checks carry on over the connection it opens.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{is_local, LocalError, Outcome, Phase, ProbeKind, ProbeSpec, ProbeTarget};

pub(super) async fn network_probe(
    check: &ProbeSpec,
    target: &ProbeTarget,
    phase: &Phase,
) -> Result<Outcome, LocalError> {
    let stream = match TcpStream::connect(SocketAddr::from((target.address, check.port))).await {
        Ok(stream) => stream,
        Err(e) if is_local(&e) => return Err(LocalError(format!("cannot connect from here: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Ok(Err("connect refused".to_owned()))
        }
        Err(e) => return Ok(Err(format!("connect: {e}"))),
    };
    let ProbeKind::Http(http) = &check.kind else {
        return Ok(Ok("connected".to_owned()));
    };
    Ok(super::http::request(stream, http, check, target, phase).await)
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

    #[test]
    fn running_out_of_descriptors_is_a_local_error() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(super::is_local(&emfile));
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(!super::is_local(&refused));
    }
}
