//! The console's TLS: the configured certificate and key (PEM), or a
//! self-signed certificate generated once into `state_dir` (`web.crt`,
//! `web.key`, mode 0600) and kept across restarts, so a browser that was
//! told to trust it once keeps trusting it. Its SHA-256 fingerprint is
//! logged at every start, for comparing with what the browser shows.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use crate::config::WebTls;

/// Errors setting up the console's TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
    },
    /// rustls refused the certificate and key.
    #[error("node.web.tls: {0}; check that the key belongs to the certificate")]
    Config(String),
    /// The self-signed certificate could not be made.
    #[error("cannot generate the console's self-signed certificate: {0}")]
    Generate(String),
}

/// The certificate chain and key in use, and where they came from.
pub struct Identity {
    /// Chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's SHA-256 fingerprint, `AA:BB:...`.
    pub fingerprint: String,
    /// Where the certificate is.
    pub cert_path: PathBuf,
}

impl Identity {
    /// The configured files, or the self-signed pair under `state_dir`
    /// (generated for `listen`'s address when absent).
    ///
    /// # Errors
    /// When a file cannot be read or written, or holds no certificate or key.
    pub fn load(
        tls: Option<&WebTls>,
        state_dir: &Path,
        listen: SocketAddr,
    ) -> Result<Self, TlsError> {
        let (cert, key) = if let Some(t) = tls {
            (t.cert.clone(), t.key.clone())
        } else {
            let cert = state_dir.join("web.crt");
            let key = state_dir.join("web.key");
            if !cert.exists() || !key.exists() {
                generate(&cert, &key, listen)?;
            }
            (cert, key)
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .and_then(Iterator::collect)
            .map_err(|e| pem_error(&cert, &e))?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::File {
                path: cert,
                message: "no certificate in the file; expected PEM (BEGIN CERTIFICATE)".into(),
            });
        };
        let fingerprint = fingerprint(leaf);
        let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| pem_error(&key, &e))?;
        Ok(Self {
            chain,
            key: key_der,
            fingerprint,
            cert_path: cert,
        })
    }

    /// A rustls server configuration with this identity, HTTP/1.1 only.
    ///
    /// # Errors
    /// When the key does not fit the certificate.
    pub fn server_config(self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(self.chain, self.key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn pem_error(path: &Path, e: &rustls::pki_types::pem::Error) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: format!(
            "cannot read it as PEM ({e}); give node.web.tls a PEM certificate and key"
        ),
    }
}

/// `AA:BB:..` of the SHA-256 of the certificate's DER.
#[must_use]
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Writes a self-signed certificate for the listen address (and the
/// host's name) and its key, the key with mode 0600.
fn generate(cert: &Path, key: &Path, listen: SocketAddr) -> Result<(), TlsError> {
    let mut names = vec![listen.ip().to_string(), "localhost".to_owned()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let write = |path: &Path, text: String| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
                path: dir.to_owned(),
                message: format!("cannot create the directory: {e} (check node.state_dir)"),
            })?;
        }
        crate::state_file::write_atomically(path, text.as_bytes()).map_err(|e| TlsError::File {
            path: path.to_owned(),
            message: format!("cannot write it: {e} (check node.state_dir)"),
        })
    };
    write(key, made.signing_key.serialize_pem())?;
    write(cert, made.cert.pem())?;
    log::info!(
        "web console: generated a self-signed certificate {} (key {}); set node.web.tls to use your own",
        cert.display(),
        key.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("lbd-web-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let listen: SocketAddr = "198.18.0.11:8443".parse().unwrap_or_else(|e| panic!("{e}"));
        let first = Identity::load(None, &dir, listen).unwrap_or_else(|e| panic!("{e}"));
        let again = Identity::load(None, &dir, listen).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.fingerprint, again.fingerprint, "kept across starts");
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("web.key")).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        assert!(first.server_config().is_ok());

        let tls = WebTls {
            cert: dir.join("absent.crt"),
            key: dir.join("web.key"),
        };
        let e = Identity::load(Some(&tls), &dir, listen)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("absent.crt")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
