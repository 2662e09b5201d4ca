//! The pure policy of a redirect service: the `Location` URL for a request
//! (RFC 9110 §15.4, with the Host rules of RFC 9112 §3.2 and §3.2.2) and the
//! whole response, the redirect or `400 Bad Request`. No sockets here.

use std::fmt::Write as _;
use std::net::Ipv6Addr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use log::debug;

use super::RedirectSpec;

/// Longest host name accepted from a Host header (RFC 1035 §2.3.4, plus a trailing dot).
const MAX_HOST_NAME_LEN: usize = 254;
/// How much of a client-supplied value an error message repeats.
const MAX_ECHO: usize = 100;

/// Why a request cannot be redirected; it is answered with `400 Bad Request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The Host (or the request target's authority) is not a host name or address.
    #[error("host {0:?} is not a host name, IPv4 address or bracketed IPv6 address with an optional port")]
    InvalidHost(String),
    /// The request target is not an origin-form path (or `*`).
    #[error("request target {0:?} is not an absolute path with an optional query")]
    InvalidTarget(String),
    /// More than one Host header (RFC 9112 §3.2 requires a 400).
    #[error("request with more than one Host header")]
    DuplicateHost,
}

/// The Location URL for a request: `SCHEME://HOST[:PORT]` followed by the
/// request's path and query.
///
/// `host_header` is the Host header's value (or an absolute-form target's
/// authority); its port is dropped, and without it (or when it is empty) the VIP
/// is used. `path_and_query` is the origin-form request target; `*` (from
/// `OPTIONS *`) and an empty target become `/`. Bytes beyond ASCII are
/// percent-encoded.
///
/// # Errors
///
/// [`BadRequest::InvalidHost`] when the host has characters a host name may not
/// have, or a malformed port; [`BadRequest::InvalidTarget`] when the target is not
/// a path or has control characters or spaces.
pub fn location(
    spec: &RedirectSpec,
    host_header: Option<&str>,
    path_and_query: &str,
) -> Result<String, BadRequest> {
    let mut url = String::with_capacity(64 + path_and_query.len());
    url.push_str(&spec.scheme);
    url.push_str("://");
    match host_header.map(host_without_port).transpose()? {
        Some(host) if !host.is_empty() => url.push_str(host),
        _ => {
            let _ = write!(url, "{}", spec.vip);
        }
    }
    if let Some(port) = spec.target_port {
        let _ = write!(url, ":{port}");
    }
    let target = match path_and_query {
        "" | "*" => "/",
        other => other,
    };
    if target.starts_with('?') {
        url.push('/');
    } else if !target.starts_with('/') {
        return Err(BadRequest::InvalidTarget(clip(target)));
    }
    for byte in target.bytes() {
        match byte {
            0x21..=0x7e => url.push(char::from(byte)),
            0x80..=0xff => {
                let _ = write!(url, "%{byte:02X}");
            }
            _ => return Err(BadRequest::InvalidTarget(clip(target))),
        }
    }
    Ok(url)
}

/// The host part of a Host header value (`host`, `host:port`, `[v6]`,
/// `[v6]:port`), checked so that it can be put into a URL as it is.
fn host_without_port(value: &str) -> Result<&str, BadRequest> {
    let invalid = || BadRequest::InvalidHost(clip(value));
    let (host, port) = if value.starts_with('[') {
        let end = value.find(']').ok_or_else(invalid)?;
        let (host, rest) = value.split_at(end + 1);
        host[1..end].parse::<Ipv6Addr>().map_err(|_| invalid())?;
        let port = match rest.strip_prefix(':') {
            Some(port) => port,
            None if rest.is_empty() => "",
            None => return Err(invalid()),
        };
        (host, port)
    } else {
        let (host, port) = value.split_once(':').unwrap_or((value, ""));
        if !is_host_name(host) {
            return Err(invalid());
        }
        (host, port)
    };
    // RFC 3986 allows an empty port ("host:"); anything else must be a port number.
    if !port.is_empty()
        && (!port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err())
    {
        return Err(invalid());
    }
    Ok(host)
}

/// A DNS name or dotted IPv4 address: letters, digits, `-`, `_`, non-empty
/// labels separated by dots, an optional trailing dot. The empty string (an
/// empty Host header) is accepted and means "no host".
fn is_host_name(host: &str) -> bool {
    if host.is_empty() {
        return true;
    }
    if host.len() > MAX_HOST_NAME_LEN {
        return false;
    }
    let labels = host.strip_suffix('.').unwrap_or(host);
    labels.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// A client-supplied value shortened for an error message.
fn clip(value: &str) -> String {
    value.chars().take(MAX_ECHO).collect()
}

/// The response to one request: the redirect, or `400 Bad Request` with
/// `Connection: close` when the request cannot be redirected.
///
/// Every response carries `Content-Length`; a HEAD response has the headers of
/// the GET response and no body.
#[must_use]
pub fn respond<B>(spec: &RedirectSpec, request: &Request<B>) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    match redirect_target(spec, request) {
        Ok(url) => match HeaderValue::from_str(&url) {
            Ok(value) => redirect_response(spec.code, value, &url, head),
            Err(_) => bad_request(head),
        },
        Err(reason) => {
            debug!("redirect service {}: bad request: {reason}", spec.service);
            bad_request(head)
        }
    }
}

/// The Location URL for a request, applying RFC 9112 §3.2's rules on Host.
fn redirect_target<B>(spec: &RedirectSpec, request: &Request<B>) -> Result<String, BadRequest> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::DuplicateHost);
    }
    let host = host
        .map(|value| {
            value.to_str().map_err(|_| {
                BadRequest::InvalidHost(clip(&String::from_utf8_lossy(value.as_bytes())))
            })
        })
        .transpose()?;
    // RFC 9112 wants a 400 for an HTTP/1.1 request without Host; the
    // product contract redirects it to the VIP instead, which serves the
    // client better and reveals nothing the client does not know.
    let uri = request.uri();
    match (uri.scheme(), uri.authority()) {
        // Absolute form: the target's authority wins over Host (RFC 9112 §3.2.2).
        (Some(_), Some(authority)) => location(
            spec,
            Some(authority.as_str()),
            uri.path_and_query().map_or("/", |pq| pq.as_str()),
        ),
        // Authority form (CONNECT): nothing to redirect to.
        (None, Some(authority)) => Err(BadRequest::InvalidTarget(clip(authority.as_str()))),
        _ => location(
            spec,
            host,
            uri.path_and_query()
                .map_or_else(|| uri.path(), |pq| pq.as_str()),
        ),
    }
}

/// A redirect with a tiny HTML body (empty for HEAD, with the GET length).
fn redirect_response(
    code: u16,
    location: HeaderValue,
    url: &str,
    head: bool,
) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Redirect")
    );
    let href = html_escape(url);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{title}</title></head>\
         <body><h1>{title}</h1><p>This page has moved to <a href=\"{href}\">{href}</a>.</p></body></html>\n"
    );
    let mut response = sized_response(status, body.into(), head);
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// `400 Bad Request`, closing the connection.
fn bad_request(head: bool) -> Response<Full<Bytes>> {
    let mut response = sized_response(
        StatusCode::BAD_REQUEST,
        Bytes::from_static(b"400 Bad Request\n"),
        head,
    );
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A response with `Content-Length` set to the body's length, sending the body
/// unless the request was HEAD.
fn sized_response(status: StatusCode, body: Bytes, head: bool) -> Response<Full<Bytes>> {
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(if head {
        Full::default()
    } else {
        Full::new(body)
    });
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, length);
    response
}

/// Text made safe for an HTML attribute and element content.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hyper::Version;

    use super::*;

    fn spec(code: u16, scheme: &str, target_port: Option<u16>) -> RedirectSpec {
        RedirectSpec {
            service: "web-redirect".into(),
            vip: Ipv4Addr::new(198, 18, 0, 100),
            port: 80,
            code,
            scheme: scheme.into(),
            target_port,
        }
    }

    #[test]
    fn location_table() {
        let https = spec(301, "https", None);
        let with_port = spec(308, "https", Some(8443));
        let cases: &[(&RedirectSpec, Option<&str>, &str, &str)] = &[
            (&https, Some("example.org"), "/", "https://example.org/"),
            (
                &https,
                Some("example.org:8080"),
                "/a/b",
                "https://example.org/a/b",
            ),
            (&https, Some("Example.ORG."), "/", "https://Example.ORG./"),
            (&https, None, "/x", "https://198.18.0.100/x"),
            (&https, Some(""), "/x", "https://198.18.0.100/x"),
            (&https, Some("[::1]:8080"), "/", "https://[::1]/"),
            (&https, Some("[2001:db8::1]"), "/", "https://[2001:db8::1]/"),
            (&https, Some("10.1.2.3:80"), "/", "https://10.1.2.3/"),
            (&https, Some("host:"), "/", "https://host/"),
            (
                &https,
                Some("my_host-1.example"),
                "/",
                "https://my_host-1.example/",
            ),
            (
                &with_port,
                Some("example.org:80"),
                "/",
                "https://example.org:8443/",
            ),
            (&with_port, None, "/", "https://198.18.0.100:8443/"),
            (&https, Some("h"), "/p?q=1&r=%20s", "https://h/p?q=1&r=%20s"),
            (&https, Some("h"), "?q", "https://h/?q"),
            (&https, Some("h"), "*", "https://h/"),
            (&https, Some("h"), "", "https://h/"),
            (&https, Some("h"), "/caf\u{e9}", "https://h/caf%C3%A9"),
            (&spec(302, "http", None), Some("h"), "/", "http://h/"),
        ];
        for (spec, host, target, want) in cases {
            assert_eq!(
                location(spec, *host, target).as_deref(),
                Ok(*want),
                "host {host:?} target {target:?}"
            );
        }
    }

    #[test]
    fn location_rejects_hosts_that_are_not_host_names() {
        let https = spec(301, "https", None);
        let long = "a".repeat(MAX_HOST_NAME_LEN + 1);
        for host in [
            "evil.com/x",
            "a b",
            "user@host",
            "host\r\nSet-Cookie: x",
            "<script>",
            "h\"x",
            "h:80:90",
            "h:port",
            "h:99999",
            "a..b",
            ".a",
            "[::1",
            "[::1]x",
            "[not-v6]",
            "[::1]:http",
            "h%41",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    location(&https, Some(host), "/"),
                    Err(BadRequest::InvalidHost(_))
                ),
                "{host:?} accepted"
            );
        }
    }

    #[test]
    fn location_rejects_targets_that_are_not_paths() {
        let https = spec(301, "https", None);
        for target in ["x", "http:", "/a b", "/a\tb", "/\u{7f}"] {
            assert!(
                matches!(
                    location(&https, Some("h"), target),
                    Err(BadRequest::InvalidTarget(_))
                ),
                "{target:?} accepted"
            );
        }
    }

    fn request(method: Method, uri: &str, version: Version, hosts: &[&str]) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri.parse().expect("test URI");
        *request.version_mut() = version;
        for host in hosts {
            request.headers_mut().append(
                header::HOST,
                HeaderValue::from_str(host).expect("test host"),
            );
        }
        request
    }

    fn header<'a>(
        response: &'a Response<Full<Bytes>>,
        name: &header::HeaderName,
    ) -> Option<&'a str> {
        response.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn respond_rfc9112_3_2_host_rules() {
        let s = spec(301, "https", None);
        let missing = respond(&s, &request(Method::GET, "/", Version::HTTP_11, &[]));
        assert_eq!(
            missing.status(),
            StatusCode::MOVED_PERMANENTLY,
            "no Host: the VIP (contract)"
        );
        let twice = respond(
            &s,
            &request(Method::GET, "/", Version::HTTP_11, &["a", "b"]),
        );
        assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
        let http10 = respond(&s, &request(Method::GET, "/x", Version::HTTP_10, &[]));
        assert_eq!(http10.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            header(&http10, &header::LOCATION),
            Some("https://198.18.0.100/x")
        );
    }

    #[test]
    fn respond_rfc9112_3_2_2_absolute_form_uses_target_authority() {
        let s = spec(307, "https", None);
        let response = respond(
            &s,
            &request(
                Method::GET,
                "http://target.example:80/p?q",
                Version::HTTP_11,
                &["other.example"],
            ),
        );
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            header(&response, &header::LOCATION),
            Some("https://target.example/p?q")
        );
        let connect = respond(
            &s,
            &request(
                Method::CONNECT,
                "target.example:443",
                Version::HTTP_11,
                &["h"],
            ),
        );
        assert_eq!(connect.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn respond_head_has_get_headers_and_no_body() {
        use http_body_util::BodyExt as _;
        let s = spec(301, "https", None);
        let get = respond(&s, &request(Method::GET, "/", Version::HTTP_11, &["h"]));
        let head = respond(&s, &request(Method::HEAD, "/", Version::HTTP_11, &["h"]));
        assert_eq!(
            header(&get, &header::CONTENT_LENGTH),
            header(&head, &header::CONTENT_LENGTH)
        );
        assert_eq!(header(&head, &header::LOCATION), Some("https://h/"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let get_body = runtime
            .block_on(get.into_body().collect())
            .expect("body")
            .to_bytes();
        let head_body = runtime
            .block_on(head.into_body().collect())
            .expect("body")
            .to_bytes();
        assert!(head_body.is_empty());
        assert_eq!(
            header(
                &respond(&s, &request(Method::GET, "/", Version::HTTP_11, &["h"])),
                &header::CONTENT_LENGTH
            ),
            Some(get_body.len().to_string().as_str())
        );
    }

    #[test]
    fn respond_escapes_the_url_in_the_html_body() {
        use http_body_util::BodyExt as _;
        let s = spec(301, "https", None);
        let response = respond(
            &s,
            &request(Method::GET, "/a'b&c", Version::HTTP_11, &["h"]),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let body = runtime
            .block_on(response.into_body().collect())
            .expect("body")
            .to_bytes();
        let body = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(body.contains("href=\"https://h/a&#39;b&amp;c\""), "{body}");
        assert_eq!(html_escape("\"<b>"), "&quot;&lt;b&gt;");
    }
}
