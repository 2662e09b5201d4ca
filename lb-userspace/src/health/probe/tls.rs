//! The rustls client of `https` checks (RFC 8446): the server name sent as
//! SNI (RFC 6066 §3), and the shared client configuration, verifying
//! against the system's CA certificates or (`tls_verify: false`) accepting
//! any certificate.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::HealthError;

/// The TLS server name for `host`: a DNS name or an IP address, any
/// `:port` suffix dropped.
pub(super) fn server_name(host: &str) -> Result<ServerName<'static>, HealthError> {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else {
        match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':')
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => host,
        }
    };
    ServerName::try_from(bare.to_owned()).map_err(|_| HealthError::BadServerName(host.to_owned()))
}

/// The shared rustls client configuration, verifying or not. Built once:
/// the system's CA certificates are read at the first verifying check.
pub(super) fn tls_config(verify: bool) -> Result<Arc<ClientConfig>, HealthError> {
    static VERIFYING: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    static ACCEPTING: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let cell = if verify { &VERIFYING } else { &ACCEPTING };
    if let Some(config) = cell.get() {
        return Ok(Arc::clone(config));
    }
    let built = build_tls_config(verify)?;
    Ok(Arc::clone(cell.get_or_init(|| built)))
}

fn build_tls_config(verify: bool) -> Result<Arc<ClientConfig>, HealthError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(HealthError::Tls)?;
    let mut config = if verify {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let why = if loaded.errors.is_empty() {
                "none installed".to_owned()
            } else {
                loaded
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(HealthError::NoRootCertificates(why));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `tls_verify: false`: any certificate is accepted for any name, but the
/// handshake signatures are still checked, so the peer does hold the key of
/// the certificate it shows.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::config::{CheckKind, HealthCheck};
    use crate::health::testing::{check, http_server, passed, reply, run, target};
    use crate::health::{probe, ProbeSpec};

    fn self_signed_acceptor() -> TlsAcceptor {
        let key = rcgen::generate_simple_self_signed(vec!["app.example.org".to_owned()]).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der)
        .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    #[tokio::test]
    async fn https_without_verification_accepts_a_self_signed_certificate_and_sends_sni() {
        let (port, mut seen, _) = http_server(reply(200, "OK"), Some(self_signed_acceptor())).await;
        let c = HealthCheck {
            host: Some("app.example.org".to_owned()),
            expect_body: Some("OK".to_owned()),
            ..check(CheckKind::Https, port)
        };
        passed(&run(&c).await, "status 200, body matches /OK/");
        let s = seen.recv().await.unwrap();
        assert_eq!(s.sni.as_deref(), Some("app.example.org"));
        assert_eq!(s.header("host"), Some("app.example.org"));

        let c = check(CheckKind::Https, port);
        passed(&run(&c).await, "status 200");
        let s = seen.recv().await.unwrap();
        assert_eq!(s.sni, None, "no SNI for an IP address");
        assert_eq!(s.header("host"), Some(format!("127.0.0.1:{port}").as_str()));
    }

    #[tokio::test]
    async fn https_with_verification_refuses_a_self_signed_certificate() {
        let (port, _seen, _) = http_server(reply(200, "OK"), Some(self_signed_acceptor())).await;
        let c = HealthCheck {
            host: Some("app.example.org".to_owned()),
            tls_verify: true,
            ..check(CheckKind::Https, port)
        };
        match ProbeSpec::new(&c) {
            // A machine without CA certificates cannot verify anything.
            Err(e) => assert!(e.to_string().starts_with("TLS: no trusted root"), "{e}"),
            Ok(spec) => {
                let r = probe(&spec, &target()).await;
                assert!(!r.passed);
                assert!(
                    r.detail.starts_with("TLS: invalid peer certificate"),
                    "{}",
                    r.detail
                );
            }
        }
    }

    #[test]
    fn the_tls_server_name_drops_a_port_and_keeps_ip_addresses() {
        assert_eq!(
            server_name("app.example.org:8443").unwrap(),
            ServerName::try_from("app.example.org").unwrap()
        );
        assert!(matches!(
            server_name("10.1.2.3").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:443").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(server_name("bad name!").is_err());
    }
}
