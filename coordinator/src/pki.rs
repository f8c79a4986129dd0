//! The fleet's certificate authority: creation at `drover init`, the server
//! certificate, and signing machine and admin certificates.
//!
//! Only the public key is taken from a CSR (after its signature is checked);
//! the subject, SAN, lifetime and serial are decided here.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use drover_net::identity::{self, hex_lower, Subject, ADMIN_URI_PREFIX, MACHINE_URI_PREFIX};
use drover_protocol::v1::IssuedCertificate;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key";

/// Certificates are valid from a little before they are issued, to tolerate
/// clocks that are slightly behind.
const BACKDATE: Duration = Duration::from_secs(60);

/// The fleet CA, loaded with its key.
pub struct Ca {
    pub cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// A CSR whose signature was checked ([`Ca::check_csr`]).
pub struct CheckedCsr(CertificateSigningRequestParams);

impl CheckedCsr {
    /// The SHA-256 (hex) of the public key it carries.
    pub fn key_fingerprint(&self) -> String {
        use rcgen::PublicKeyData;
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.0.public_key.subject_public_key_info()))
    }
}

/// Why a CSR could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("certificate signing request is not valid: {0}")]
    BadCsr(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so that the DER integer holds
    // exactly these bytes and the hex we record matches what peers read.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    (SerialNumber::from_slice(&bytes), hex_lower(&bytes))
}

fn millis(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

impl Ca {
    /// Creates a new CA (ECDSA P-256) and returns it with its key's PEM.
    pub fn generate(fleet_name: &str) -> Result<(Self, String)> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Drover fleet CA ({fleet_name})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::from_secs(20 * 365 * 24 * 3600);
        params.serial_number = Some(random_serial().0);
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        let key_pem = key.serialize_pem();
        let cert_der = cert.der().to_vec();
        let issuer = Issuer::new(params, key);
        Ok((Ca { cert_der, issuer }, key_pem))
    }

    /// This fleet's identity on shared systems (block storage properties,
    /// VM names and descriptions): `drover-` and the first 16 hex digits of
    /// the SHA-256 of the CA certificate. It lasts as long as the fleet's
    /// CA, and every coordinator of the fleet has the same.
    pub fn fleet_id(&self) -> String {
        use sha2::Digest;
        format!("drover-{}", &hex_lower(&sha2::Sha256::digest(&self.cert_der))[..16])
    }

    /// Loads the CA from the state directory.
    pub fn load(state_dir: &Path) -> Result<Self> {
        let cert_der = identity::read_cert_pem(&state_dir.join(CA_CERT_FILE))?;
        let key = identity::read_key_pem(&state_dir.join(CA_KEY_FILE))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key).context("the fleet CA certificate cannot be used for signing")?;
        Ok(Ca { cert_der, issuer })
    }

    /// Issues the coordinator's server certificate for `names` (DNS names or
    /// IP addresses). Returns (certificate DER, key PEM).
    pub fn server_certificate(&self, names: &[String]) -> Result<(Vec<u8>, String)> {
        let key = KeyPair::generate().context("generating the server key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "drover coordinator");
        params.distinguished_name = dn;
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().with_context(|| format!("{name:?} is not a valid DNS name"))?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::from_secs(5 * 365 * 24 * 3600);
        params.serial_number = Some(random_serial().0);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).context("signing the server certificate")?;
        Ok((cert.der().to_vec(), key.serialize_pem()))
    }

    /// Parses a CSR and checks its signature, once for all that is done
    /// with it (an enrollment fingerprints its key and signs it).
    pub fn check_csr(csr_der: &[u8]) -> Result<CheckedCsr, SignError> {
        CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).map(CheckedCsr).map_err(|e| SignError::BadCsr(e.to_string()))
    }

    pub fn sign_client(&self, csr_der: &[u8], subject: &Subject, lifetime: Duration) -> Result<IssuedCertificate, SignError> {
        self.sign_checked(&Ca::check_csr(csr_der)?, subject, lifetime)
    }

    /// Signs a client certificate for `subject` with the key of a checked
    /// CSR, valid for `lifetime` from now.
    pub fn sign_checked(&self, csr: &CheckedCsr, subject: &Subject, lifetime: Duration) -> Result<IssuedCertificate, SignError> {
        let csr = &csr.0;
        let (uri, cn) = match subject {
            Subject::Machine(id) => (format!("{MACHINE_URI_PREFIX}{id}"), id.clone()),
            Subject::Admin(name) => (format!("{ADMIN_URI_PREFIX}{name}"), name.clone()),
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn.clone());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(|e: rcgen::Error| SignError::Sign(e.to_string()))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(IssuedCertificate {
            subject: cn,
            certificate_der: cert.der().to_vec(),
            serial: serial_hex,
            not_after: millis(params.not_after),
            lifetime_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_net::identity::PeerCertificate;

    #[test]
    fn the_coordinator_decides_the_identity_not_the_csr() {
        let (ca, _) = Ca::generate("test").expect("ca");
        let key = identity::generate_key().expect("key");
        // The CSR asks to be an admin; the coordinator signs a machine.
        let csr = identity::csr_der(&key, "drover://admin/root").expect("csr");
        let issued = ca.sign_client(&csr, &Subject::Machine("m-1".into()), Duration::from_secs(60)).expect("sign");
        let peer = PeerCertificate::parse(&issued.certificate_der).expect("parse");
        assert_eq!(peer.subject, Subject::Machine("m-1".into()));
        assert_eq!(peer.serial, issued.serial);
        assert_eq!(peer.not_after_ms / 1000, issued.not_after / 1000);
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let (ca, _) = Ca::generate("test").expect("ca");
        let key = identity::generate_key().expect("key");
        let mut csr = identity::csr_der(&key, "x").expect("csr");
        let n = csr.len();
        csr[n - 5] ^= 0x55;
        assert!(matches!(ca.sign_client(&csr, &Subject::Machine("m".into()), Duration::from_secs(60)), Err(SignError::BadCsr(_))));
        assert!(ca.sign_client(b"garbage", &Subject::Machine("m".into()), Duration::from_secs(60)).is_err());
    }
}
