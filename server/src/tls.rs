//! TLS set-up with rustls and the `ring` provider: the upstream client configuration (webpki
//! roots plus an optional extra CA bundle, TLS ≥ 1.2) and the optional server-side acceptor.
//!
//! Certificates are read once at start-up; nothing here runs per request.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A TLS file or configuration problem, naming the file concerned.
#[derive(Debug)]
pub struct TlsError {
    /// The file (or setting) concerned.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

impl core::fmt::Display for TlsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "TLS file {}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for TlsError {}

fn err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = File::open(path).map_err(|e| err(path, e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = File::open(path).map_err(|e| err(path, e.to_string()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| err(path, e.to_string()))?
        .ok_or_else(|| err(path, "no PEM private key found"))
}

/// The upstream client configuration: webpki roots, plus every certificate of `ca_bundle`.
/// ALPN is set later by the connector (h2 and http/1.1).
pub fn client_config(ca_bundle: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_bundle {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| err(path, e.to_string()))?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(Path::new("<rustls>"), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The server-side acceptor for a TLS listener. With `http2`, ALPN offers `h2` first.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    http2: bool,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| err(key, e.to_string()))?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_has_webpki_roots_and_ring() {
        let cfg = client_config(None).unwrap();
        // TLS 1.2 and 1.3 only, ring provider: at least one suite of each version.
        assert!(
            cfg.crypto_provider()
                .cipher_suites
                .iter()
                .any(|s| s.version() == &rustls::version::TLS13)
        );
        assert!(
            cfg.crypto_provider()
                .cipher_suites
                .iter()
                .any(|s| s.version() == &rustls::version::TLS12)
        );
    }

    #[test]
    fn missing_ca_bundle_names_the_file() {
        let e = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn acceptor_rejects_empty_pem() {
        let dir = std::env::temp_dir().join(format!("dp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "not a pem").unwrap();
        let Err(e) = acceptor(&cert, &cert, false) else {
            panic!("empty PEM accepted")
        };
        assert!(e.message.contains("no PEM certificate"), "{e}");
    }
}
