//! Test PKI made in Rust with `rcgen` (ECDSA P-256, milliseconds to generate): a CA, a server
//! certificate it signs (SANs of TESTBED §1.2), and a self-signed token-signing certificate whose
//! libtrust key ID goes into the JWT `kid` (TESTBED §1.4). Everything is written as PEM files.
//!
//! Files in the directory given to [`Pki::generate`]: `ca.crt`, `ca.key`, `server.crt`,
//! `server.key`, `signer.crt`, `signer.key` (PKCS#8), `bundle.crt` (the registry's
//! `rootcertbundle`: the signer cert) and `certs/ca.crt` (a directory holding only the CA, for
//! skopeo `--src-cert-dir` / podman `--cert-dir`, which reject stray `.key` files).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};

use crate::error::{FixtureResult, unexpected};

/// Subject alternative names of the server certificate.
pub const SERVER_SANS: &[&str] = &[
    "127.0.0.1",
    "::1",
    "localhost",
    "*.example.test",
    "docker.example.test",
    "registry.test",
    "*.registry.test",
];

/// Paths and PEM texts of the generated test PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Directory holding every file.
    pub dir: PathBuf,
    /// The CA certificate (PEM file).
    pub ca_cert: PathBuf,
    /// The CA certificate as PEM text (for `reqwest::Certificate::from_pem` and friends).
    pub ca_pem: String,
    /// The CA private key (PKCS#8 PEM file).
    pub ca_key: PathBuf,
    /// The server certificate signed by the CA (PEM file).
    pub server_cert: PathBuf,
    /// The server certificate as PEM text.
    pub server_cert_pem: String,
    /// The server private key (PKCS#8 PEM file).
    pub server_key: PathBuf,
    /// The server private key as PKCS#8 PEM text.
    pub server_key_pem: String,
    /// The self-signed token-signing certificate (PEM file).
    pub signer_cert: PathBuf,
    /// The token-signing private key (PKCS#8 PEM file, as `EncodingKey::from_ec_pem` wants).
    pub signer_key: PathBuf,
    /// The token-signing private key as PKCS#8 PEM text.
    pub signer_key_pem: String,
    /// The libtrust key ID of the signer's public key (JWT header `kid`).
    pub signer_kid: String,
    /// The registry's `rootcertbundle` (holds the signer certificate).
    pub bundle: PathBuf,
    /// A directory holding only `ca.crt` (skopeo `--src-cert-dir`, podman `--cert-dir`).
    pub cert_dir: PathBuf,
}

impl Pki {
    /// Generates a fresh PKI into `dir` (created if missing).
    pub fn generate(dir: &Path) -> FixtureResult<Self> {
        std::fs::create_dir_all(dir.join("certs"))?;
        let rc = |e: rcgen::Error| unexpected(format!("rcgen: {e}"));

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        ca_params.distinguished_name = common_name("dockerproxy test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut ca_params);
        let ca = ca_params.self_signed(&ca_key).map_err(rc)?;

        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let sans: Vec<String> = SERVER_SANS.iter().map(|s| (*s).to_owned()).collect();
        let mut server_params = CertificateParams::new(sans).map_err(rc)?;
        server_params.distinguished_name = common_name("127.0.0.1");
        server_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        set_validity(&mut server_params);
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .map_err(rc)?;

        let signer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let mut signer_params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        signer_params.distinguished_name = common_name("dockerproxy test token signer");
        signer_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut signer_params);
        let signer = signer_params.self_signed(&signer_key).map_err(rc)?;

        let pki = Self {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            ca_pem: ca.pem(),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_cert_pem: server.pem(),
            server_key: dir.join("server.key"),
            server_key_pem: server_key.serialize_pem(),
            signer_cert: dir.join("signer.crt"),
            signer_key: dir.join("signer.key"),
            signer_key_pem: signer_key.serialize_pem(),
            signer_kid: libtrust_key_id(&signer_key.public_key_der()),
            bundle: dir.join("bundle.crt"),
            cert_dir: dir.join("certs"),
        };
        std::fs::write(&pki.ca_cert, &pki.ca_pem)?;
        std::fs::write(&pki.ca_key, ca_key.serialize_pem())?;
        std::fs::write(&pki.server_cert, &pki.server_cert_pem)?;
        std::fs::write(&pki.server_key, &pki.server_key_pem)?;
        std::fs::write(&pki.signer_cert, signer.pem())?;
        std::fs::write(&pki.signer_key, &pki.signer_key_pem)?;
        std::fs::write(&pki.bundle, signer.pem())?;
        std::fs::write(pki.cert_dir.join("ca.crt"), &pki.ca_pem)?;
        Ok(pki)
    }

    /// The CA as a `reqwest` root certificate.
    pub fn reqwest_ca(&self) -> FixtureResult<reqwest::Certificate> {
        Ok(reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?)
    }
}

/// The libtrust key ID of a public key given as X.509 SubjectPublicKeyInfo DER: SHA-256, first
/// 30 bytes, base32 without padding (48 chars), 12 groups of 4 joined by `:` (TESTBED §1.4).
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let encoded = data_encoding::BASE32_NOPAD.encode(&digest[..30]);
    let groups: Vec<&str> = (0..encoded.len())
        .step_by(4)
        .filter_map(|i| encoded.get(i..i + 4))
        .collect();
    groups.join(":")
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn set_validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_shape() {
        let kid = libtrust_key_id(b"anything");
        assert_eq!(kid.len(), 48 + 11);
        assert_eq!(kid.split(':').count(), 12);
        assert!(kid.split(':').all(|g| g.len() == 4));
        assert!(
            kid.chars()
                .all(|c| c == ':' || c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
    }

    #[test]
    fn generates_all_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate(tmp.path()).expect("pki");
        for path in [
            &pki.ca_cert,
            &pki.server_cert,
            &pki.server_key,
            &pki.signer_key,
            &pki.bundle,
        ] {
            let text = std::fs::read_to_string(path).expect("read");
            assert!(text.starts_with("-----BEGIN "), "{}", path.display());
        }
        assert!(pki.signer_key_pem.contains("BEGIN PRIVATE KEY"));
        assert!(pki.cert_dir.join("ca.crt").exists());
        assert_eq!(std::fs::read_dir(&pki.cert_dir).expect("dir").count(), 1);
    }
}
