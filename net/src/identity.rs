//! Identities: key pairs and CSRs made where the key lives, the identity a
//! certificate carries, and files that hold keys (mode 0600, written
//! atomically).
//!
//! A certificate names its holder with one URI subject alternative name:
//! `drover://machine/<id>` for machines, `drover://admin/<name>` for admins.
//! The coordinator chooses these names when it signs; it never copies them
//! from a request.

use std::fs;
use std::path::Path;

use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// URI prefix of machine identities.
pub const MACHINE_URI_PREFIX: &str = "drover://machine/";
/// URI prefix of admin identities.
pub const ADMIN_URI_PREFIX: &str = "drover://admin/";

/// Why an identity could not be made, read or stored.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("key generation failed: {0}")]
    KeyGen(String),
    #[error("certificate signing request could not be made: {0}")]
    Csr(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PEM {what}")]
    Pem { path: String, what: &'static str },
    #[error("certificate could not be parsed: {0}")]
    Parse(String),
    #[error("certificate carries no drover identity (expected one URI SAN drover://machine/<id> or drover://admin/<name>)")]
    NoIdentity,
    /// A file of an identity that cannot be read: what is wrong and what to
    /// do. Nothing was removed.
    #[error("{path} is damaged ({reason}); {fix}")]
    Damaged { path: String, reason: String, fix: &'static str },
}

/// Generates a fresh ECDSA P-256 key pair.
pub fn generate_key() -> Result<KeyPair, IdentityError> {
    KeyPair::generate().map_err(|e| IdentityError::KeyGen(e.to_string()))
}

/// Makes a CSR (DER) for `key`. The subject is informational only.
pub fn csr_der(key: &KeyPair, common_name: &str) -> Result<Vec<u8>, IdentityError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| IdentityError::Csr(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(key).map_err(|e| IdentityError::Csr(e.to_string()))?;
    Ok(csr.der().to_vec())
}

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Machine(String),
    Admin(String),
}

/// What the coordinator reads from a verified peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    pub subject: Subject,
    /// Lowercase hex of the serial number's bytes.
    pub serial: String,
    /// Expiry, milliseconds since the Unix epoch.
    pub not_after_ms: u64,
    /// Start of validity, milliseconds since the Unix epoch.
    pub not_before_ms: u64,
}

impl PeerCertificate {
    /// Reads the identity from a certificate's DER. Only the first URI SAN
    /// with a drover prefix counts; certificates with several are refused.
    pub fn parse(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let san = cert.subject_alternative_name().map_err(|e| IdentityError::Parse(e.to_string()))?.ok_or(IdentityError::NoIdentity)?;
        let mut subjects = san.value.general_names.iter().filter_map(|name| match name {
            GeneralName::URI(uri) => {
                if let Some(id) = uri.strip_prefix(MACHINE_URI_PREFIX) {
                    Some(Subject::Machine(id.to_string()))
                } else {
                    uri.strip_prefix(ADMIN_URI_PREFIX).map(|name| Subject::Admin(name.to_string()))
                }
            }
            _ => None,
        });
        let subject = subjects.next().ok_or(IdentityError::NoIdentity)?;
        if subjects.next().is_some() {
            return Err(IdentityError::NoIdentity);
        }
        let ms = |t: i64| u64::try_from(t).unwrap_or(0).saturating_mul(1000);
        Ok(PeerCertificate {
            subject,
            serial: hex_lower(cert.raw_serial()),
            not_after_ms: ms(cert.validity().not_after.timestamp()),
            not_before_ms: ms(cert.validity().not_before.timestamp()),
        })
    }
}

/// Lowercase hex of `bytes`.
pub fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` atomically with the given mode (see
/// [`crate::fsutil::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    crate::fsutil::write_atomic(path, bytes, mode).map_err(|source| IdentityError::Io { path: path.display().to_string(), source })
}

/// Writes a private key (PEM) with mode 0600.
pub fn write_key_pem(path: &Path, key: &KeyPair) -> Result<(), IdentityError> {
    write_atomic(path, key.serialize_pem().as_bytes(), 0o600)
}

/// Reads a PEM private key.
pub fn read_key_pem(path: &Path) -> Result<KeyPair, IdentityError> {
    let text = fs::read_to_string(path).map_err(|source| IdentityError::Io { path: path.display().to_string(), source })?;
    KeyPair::from_pem(&text).map_err(|_| IdentityError::Pem { path: path.display().to_string(), what: "private key" })
}

/// PEM text of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

/// DER of the first certificate in PEM text.
pub fn cert_der_from_pem(text: &str) -> Option<Vec<u8>> {
    CertificateDer::from_pem_slice(text.as_bytes()).ok().map(|c| c.to_vec())
}

/// Reads the first certificate of a PEM file.
pub fn read_cert_pem(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let text = fs::read_to_string(path).map_err(|source| IdentityError::Io { path: path.display().to_string(), source })?;
    cert_der_from_pem(&text).ok_or(IdentityError::Pem { path: path.display().to_string(), what: "certificate" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pem_round_trips_through_the_pki_types_parser() {
        let key = generate_key().expect("key");
        let cert = CertificateParams::new(vec!["x.test".to_string()]).expect("params").self_signed(&key).expect("cert");
        let pem = cert_pem(cert.der());
        assert_eq!(pem, cert.pem().replace("\r\n", "\n"));
        assert_eq!(cert_der_from_pem(&pem).expect("der"), cert.der().to_vec());
    }

    #[test]
    fn key_files_are_private_and_replaced_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        let key = generate_key().expect("key");
        write_key_pem(&path, &key).expect("write");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = read_key_pem(&path).expect("read");
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        write_key_pem(&path, &generate_key().expect("key")).expect("rewrite");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_certificate_without_a_drover_uri_has_no_identity() {
        let key = generate_key().expect("key");
        let cert = CertificateParams::new(vec!["x.test".to_string()]).expect("params").self_signed(&key).expect("cert");
        assert!(matches!(PeerCertificate::parse(cert.der()), Err(IdentityError::NoIdentity)));
    }
}
