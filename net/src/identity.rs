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
    csr_der_bound(key, common_name, None)
}

/// The TLS exporter label of an enrollment's session binding (RFC 5705).
pub const ENROLLMENT_BINDING_LABEL: &[u8] = b"EXPORTER-drover-enrollment";

/// The subject attribute that carries the binding: `dnQualifier`
/// (2.5.4.46), whose value is [`BINDING_PREFIX`] and the binding in hex.
const BINDING_ATTRIBUTE: [u64; 4] = [2, 5, 4, 46];
const BINDING_PREFIX: &str = "drover-enrollment:";

/// The value both ends of one TLS session compute alike, and no other
/// session gives: 32 bytes exported under [`ENROLLMENT_BINDING_LABEL`].
/// `None` when the connection cannot export (no TLS session).
pub fn enrollment_binding(conn: &quinn::Connection) -> Option<String> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, ENROLLMENT_BINDING_LABEL, b"").ok()?;
    Some(out.iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes a CSR (DER) for `key`; with `binding`, the subject also carries
/// it, so that the CSR's signature — made with the key — vouches that the
/// key's holder is on the session that binding came from.
pub fn csr_der_bound(key: &KeyPair, common_name: &str, binding: Option<&str>) -> Result<Vec<u8>, IdentityError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| IdentityError::Csr(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    if let Some(binding) = binding {
        let value = rcgen::string::PrintableString::try_from(format!("{BINDING_PREFIX}{binding}")).map_err(|e| IdentityError::Csr(e.to_string()))?;
        dn.push(rcgen::DnType::CustomDnType(BINDING_ATTRIBUTE.to_vec()), rcgen::DnValue::PrintableString(value));
    }
    params.distinguished_name = dn;
    let csr = params.serialize_request(key).map_err(|e| IdentityError::Csr(e.to_string()))?;
    Ok(csr.der().to_vec())
}

/// The session binding a CSR's subject carries, if any. The CSR's
/// signature is not checked here: the binding means something only of a
/// CSR whose signature was (as signing it checks).
pub fn csr_binding(csr_der: &[u8]) -> Result<Option<String>, IdentityError> {
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let oid = x509_parser::oid_registry::Oid::from(&BINDING_ATTRIBUTE).map_err(|_| IdentityError::Parse("binding attribute".into()))?;
    let mut found = None;
    for attribute in csr.certification_request_info.subject.iter_by_oid(&oid) {
        let value = attribute.as_str().map_err(|e| IdentityError::Parse(e.to_string()))?;
        let Some(binding) = value.strip_prefix(BINDING_PREFIX) else { continue };
        if found.replace(binding.to_string()).is_some() {
            return Err(IdentityError::Parse("the CSR carries two session bindings".into()));
        }
    }
    Ok(found)
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
    fn a_csr_carries_its_session_binding_and_still_signs() {
        let key = generate_key().expect("key");
        let binding = "ab".repeat(32);
        let bound = csr_der_bound(&key, "vm1", Some(&binding)).expect("csr");
        assert_eq!(csr_binding(&bound).expect("parses").as_deref(), Some(binding.as_str()));
        assert_eq!(csr_binding(&csr_der(&key, "vm1").expect("csr")).expect("parses"), None);
        // The CSR's signature covers the binding, and the signing side reads it.
        let params = rcgen::CertificateSigningRequestParams::from_der(&bound.into()).expect("a valid, signed CSR");
        assert_eq!(params.params.distinguished_name.iter().count(), 2);
        assert!(csr_binding(b"not a csr").is_err());
    }

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
