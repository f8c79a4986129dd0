//! The agent's own identity on disk: its private key (made here, mode 0600,
//! never sent anywhere), its certificate and what the coordinator said about
//! it (machine id, expiry, lifetime).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use drover_net::identity::{self, IdentityError};
use drover_protocol::v1::IssuedCertificate;

pub const KEY_FILE: &str = "key.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const IDENTITY_FILE: &str = "identity.toml";

/// What the agent records about its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub machine_id: String,
    pub serial: String,
    pub not_after: u64,
    pub lifetime_ms: u64,
}

impl IdentityRecord {
    /// When to renew: two thirds into the certificate's lifetime.
    pub fn renew_at(&self) -> u64 {
        self.not_after.saturating_sub(self.lifetime_ms / 3)
    }
}

/// The key and, once enrolled, the certificate.
pub struct StoredIdentity {
    pub key: rcgen::KeyPair,
    pub cert_der: Option<Vec<u8>>,
    pub record: Option<IdentityRecord>,
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join(KEY_FILE), dir.join(CERT_FILE), dir.join(IDENTITY_FILE))
}

/// Loads the identity, making a key on first start.
pub fn load_or_create(dir: &Path) -> Result<StoredIdentity, IdentityError> {
    std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let (key_path, cert_path, record_path) = paths(dir);
    let key = if key_path.exists() {
        identity::read_key_pem(&key_path)?
    } else {
        let key = identity::generate_key()?;
        identity::write_key_pem(&key_path, &key)?;
        tracing::info!(path = %key_path.display(), "generated this machine's key");
        key
    };
    let record: Option<IdentityRecord> = std::fs::read_to_string(&record_path)
        .ok()
        .and_then(|t| toml::from_str(&t).ok());
    let cert_der = if cert_path.exists() && record.is_some() {
        Some(identity::read_cert_pem(&cert_path)?)
    } else {
        None
    };
    Ok(StoredIdentity {
        key,
        record: cert_der.as_ref().and(record),
        cert_der,
    })
}

/// Stores a newly issued certificate: the certificate first, then the record
/// that names it, each atomically.
pub fn store_certificate(
    dir: &Path,
    issued: &IssuedCertificate,
) -> Result<IdentityRecord, IdentityError> {
    let (_, cert_path, record_path) = paths(dir);
    identity::write_atomic(
        &cert_path,
        identity::cert_pem(&issued.certificate_der).as_bytes(),
        0o600,
    )?;
    let record = IdentityRecord {
        machine_id: issued.subject.clone(),
        serial: issued.serial.clone(),
        not_after: issued.not_after,
        lifetime_ms: issued.lifetime_ms,
    };
    let text = toml::to_string(&record).expect("identity record serialises");
    identity::write_atomic(&record_path, text.as_bytes(), 0o600)?;
    Ok(record)
}
