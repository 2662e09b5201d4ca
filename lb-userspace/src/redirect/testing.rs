//! Helpers shared by the redirect tests: redirect services on loopback and a
//! raw HTTP/1 client that reads one response at a time.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Limits, RedirectSpec, Redirects};

pub(super) const WAIT: Duration = Duration::from_secs(5);

pub(super) fn loopback(service: &str, last_octet: u8, code: u16) -> RedirectSpec {
    RedirectSpec {
        service: service.into(),
        vip: Ipv4Addr::new(127, 0, 0, last_octet),
        port: 0,
        code,
        scheme: "https".into(),
        target_port: None,
    }
}

pub(super) fn start(limits: Limits, specs: Vec<RedirectSpec>) -> Redirects {
    let mut redirects =
        Redirects::with_limits(limits, crate::limits::Budget::with_capacity(usize::MAX));
    redirects.set(specs).expect("listeners start");
    redirects
}

pub(super) fn fast_limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}

pub(super) async fn connect(addr: SocketAddrV4) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads one response: the head (up to the blank line) and a body of
/// `Content-Length` bytes (none for HEAD).
pub(super) async fn read_response(stream: &mut TcpStream, head_request: bool) -> (String, Vec<u8>) {
    tokio::time::timeout(WAIT, async {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read head");
            assert_eq!(
                n,
                1,
                "connection closed mid-head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).expect("ASCII head");
        let length: usize = header_of(&head, "content-length")
            .expect("every response has Content-Length")
            .parse()
            .expect("numeric Content-Length");
        let mut body = vec![0u8; if head_request { 0 } else { length }];
        stream.read_exact(&mut body).await.expect("read body");
        (head, body)
    })
    .await
    .expect("response in time")
}

pub(super) fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Waits for the server to close the connection: EOF or a reset.
pub(super) async fn expect_closed(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected data: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(elapsed) => panic!("connection still open after {within:?}: {elapsed}"),
    }
}

pub(super) async fn exchange(
    addr: SocketAddrV4,
    request: &str,
    head_request: bool,
) -> (String, Vec<u8>) {
    let mut stream = connect(addr).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    read_response(&mut stream, head_request).await
}
