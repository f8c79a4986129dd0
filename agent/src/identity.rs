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

/// What to do when the machine's key is unreadable.
const LOST_KEY: &str = "this machine cannot prove who it is without it: put the file back from a backup, or remove key.pem, cert.pem and identity.toml from the state directory and enroll the machine again with a new token (`drover tokens create`)";

/// What to do when the certificate is unreadable.
const LOST_CERT: &str = "put the file back from a backup, or remove cert.pem and identity.toml from the state directory and enroll the machine again with a new token (`drover tokens create`); the key was kept";

/// Loads the identity, making a key on first start. A damaged key or
/// certificate is an error that says what to do, and nothing is removed; a
/// missing or damaged `identity.toml` (or one naming another serial, from
/// a renewal cut short) is made again from the certificate, so the machine
/// never enrolls again for want of it.
pub fn load_or_create(dir: &Path) -> Result<StoredIdentity, IdentityError> {
    std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io { path: dir.display().to_string(), source })?;
    let (key_path, cert_path, record_path) = paths(dir);
    let damaged = |path: &Path, reason: String, fix| IdentityError::Damaged { path: path.display().to_string(), reason, fix };
    let key = if key_path.exists() {
        identity::read_key_pem(&key_path).map_err(|e| damaged(&key_path, e.to_string(), LOST_KEY))?
    } else {
        let key = identity::generate_key()?;
        identity::write_key_pem(&key_path, &key)?;
        tracing::info!(path = %key_path.display(), "generated this machine's key");
        key
    };
    if !cert_path.exists() {
        return Ok(StoredIdentity { key, cert_der: None, record: None });
    }
    let cert_der = identity::read_cert_pem(&cert_path).map_err(|e| damaged(&cert_path, e.to_string(), LOST_CERT))?;
    let cert = identity::PeerCertificate::parse(&cert_der).map_err(|e| damaged(&cert_path, e.to_string(), LOST_CERT))?;
    let identity::Subject::Machine(machine_id) = cert.subject else {
        return Err(damaged(&cert_path, "an admin's certificate, not a machine's".into(), LOST_CERT));
    };
    let recorded: Option<IdentityRecord> = match std::fs::read_to_string(&record_path) {
        Ok(text) => toml::from_str(&text)
            .inspect_err(|e| tracing::warn!(path = %record_path.display(), error = %e, "damaged; making it again from the certificate"))
            .ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(IdentityError::Io { path: record_path.display().to_string(), source }),
    };
    let record = match recorded {
        Some(r) if r.serial == cert.serial && r.machine_id == machine_id => r,
        _ => {
            let record = IdentityRecord {
                machine_id,
                serial: cert.serial,
                not_after: cert.not_after_ms,
                lifetime_ms: cert.not_after_ms.saturating_sub(cert.not_before_ms),
            };
            write_record(&record_path, &record)?;
            tracing::warn!(path = %record_path.display(), machine = %record.machine_id, "identity record made again from the certificate");
            record
        }
    };
    Ok(StoredIdentity { key, cert_der: Some(cert_der), record: Some(record) })
}

fn write_record(path: &Path, record: &IdentityRecord) -> Result<(), IdentityError> {
    let text = toml::to_string(record).expect("identity record serialises");
    identity::write_atomic(path, text.as_bytes(), 0o600)
}

/// Stores a newly issued certificate: the certificate first, then the record
/// that names it, each atomically.
pub fn store_certificate(dir: &Path, issued: &IssuedCertificate) -> Result<IdentityRecord, IdentityError> {
    let (_, cert_path, record_path) = paths(dir);
    identity::write_atomic(&cert_path, identity::cert_pem(&issued.certificate_der).as_bytes(), 0o600)?;
    let record =
        IdentityRecord { machine_id: issued.subject.clone(), serial: issued.serial.clone(), not_after: issued.not_after, lifetime_ms: issued.lifetime_ms };
    write_record(&record_path, &record)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine certificate for `key`, as the coordinator issues one.
    fn issued(key: &rcgen::KeyPair) -> IssuedCertificate {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![rcgen::SanType::URI("drover://machine/m-0123".try_into().expect("uri"))];
        params.serial_number = Some(vec![0x0a, 0x0b].into());
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(key).expect("cert");
        let parsed = identity::PeerCertificate::parse(cert.der()).expect("a drover certificate");
        IssuedCertificate {
            subject: "m-0123".into(),
            certificate_der: cert.der().to_vec(),
            serial: parsed.serial,
            not_after: parsed.not_after_ms,
            lifetime_ms: parsed.not_after_ms - parsed.not_before_ms,
        }
    }

    fn enrolled() -> (tempfile::TempDir, IdentityRecord) {
        let dir = tempfile::tempdir().expect("tempdir");
        let stored = load_or_create(dir.path()).expect("a new key");
        let record = store_certificate(dir.path(), &issued(&stored.key)).expect("store");
        (dir, record)
    }

    #[test]
    fn a_damaged_or_missing_identity_record_is_made_again_from_the_certificate() {
        for damage in [Some("machine_id = \"m-0123\"\nserial = "), None] {
            let (dir, record) = enrolled();
            let path = dir.path().join(IDENTITY_FILE);
            match damage {
                Some(cut) => std::fs::write(&path, cut).expect("garble"),
                None => std::fs::remove_file(&path).expect("remove"),
            }
            let stored = load_or_create(dir.path()).expect("the identity is kept");
            let again = stored.record.expect("a record, so no new enrollment");
            assert_eq!(again.machine_id, record.machine_id);
            assert_eq!(again.serial, record.serial);
            assert_eq!(again.not_after, record.not_after);
            assert!(stored.cert_der.is_some());
            let text = std::fs::read_to_string(&path).expect("written again");
            assert_eq!(toml::from_str::<IdentityRecord>(&text).expect("readable"), again);
        }
    }

    #[test]
    fn a_damaged_key_or_certificate_is_an_error_that_says_what_to_do_and_removes_nothing() {
        for (file, what) in [(KEY_FILE, "key"), (CERT_FILE, "certificate")] {
            let (dir, _) = enrolled();
            let path = dir.path().join(file);
            let whole = std::fs::read(&path).expect("read");
            std::fs::write(&path, &whole[..whole.len() / 3]).expect("cut short");
            let e = load_or_create(dir.path()).err().unwrap_or_else(|| panic!("a damaged {what} is refused"));
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()) && text.contains("damaged"), "{text}");
            assert!(text.contains("drover tokens create") && text.contains("backup"), "{text}");
            for kept in [KEY_FILE, CERT_FILE, IDENTITY_FILE] {
                assert!(dir.path().join(kept).exists(), "{kept} is kept");
            }
        }
    }
}
