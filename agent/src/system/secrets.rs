//! Secrets and facts on disk: `<runtime>/secrets/<name>` written atomically
//! with their mode, owner and group from the start; secrets no longer
//! assigned are removed; `<runtime>/facts.json` replaced atomically.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use drover_protocol::v1::SecretFile;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secret {secret}: no user named {name:?} on this machine")]
    NoUser { secret: String, name: String },
    #[error("secret {secret}: no group named {name:?} on this machine")]
    NoGroup { secret: String, name: String },
    #[error("secret name {0:?} is not a plain file name")]
    BadName(String),
    #[error("facts are not a JSON object: {0}")]
    BadFacts(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io { path: path.display().to_string(), source }
}

pub fn secrets_dir(runtime: &Path) -> PathBuf {
    runtime.join("secrets")
}

pub fn facts_path(runtime: &Path) -> PathBuf {
    runtime.join("facts.json")
}

fn ids(secret: &SecretFile) -> Result<(Option<nix::unistd::Uid>, Option<nix::unistd::Gid>), SecretsError> {
    let uid = match &secret.owner {
        Some(name) => Some(
            nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| SecretsError::NoUser { secret: secret.name.clone(), name: name.clone() })?
                .uid,
        ),
        None => None,
    };
    let gid = match &secret.group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| SecretsError::NoGroup { secret: secret.name.clone(), name: name.clone() })?
                .gid,
        ),
        None => None,
    };
    Ok((uid, gid))
}

/// Writes every secret and removes the ones no longer assigned. Owners and
/// groups are resolved first, so a missing user changes nothing on disk.
pub fn write_secrets(runtime: &Path, secrets: &[SecretFile]) -> Result<(), SecretsError> {
    let dir = secrets_dir(runtime);
    let mut resolved = Vec::with_capacity(secrets.len());
    for secret in secrets {
        if secret.name.is_empty() || secret.name.starts_with('.') || secret.name.contains('/') {
            return Err(SecretsError::BadName(secret.name.clone()));
        }
        resolved.push((secret, ids(secret)?));
    }
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o751)).map_err(io(&dir))?;
    for (secret, (uid, gid)) in resolved {
        let path = dir.join(&secret.name);
        let tmp = dir.join(format!(".{}.tmp", secret.name));
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(secret.value.expose()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        if uid.is_some() || gid.is_some() {
            nix::unistd::chown(&tmp, uid, gid).map_err(|e| SecretsError::Io {
                path: tmp.display().to_string(),
                source: e.into(),
            })?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(secret.mode)).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    let keep: BTreeSet<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    for entry in fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !keep.contains(name.as_str()) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// Writes the facts (a JSON object) to `<runtime>/facts.json`, mode 0644.
pub fn write_facts(runtime: &Path, facts_json: &str) -> Result<(), SecretsError> {
    let value: serde_json::Value =
        serde_json::from_str(facts_json).map_err(|e| SecretsError::BadFacts(e.to_string()))?;
    if !value.is_object() {
        return Err(SecretsError::BadFacts("not an object".into()));
    }
    fs::create_dir_all(runtime).map_err(io(runtime))?;
    let path = facts_path(runtime);
    let pretty = serde_json::to_string_pretty(&value).map_err(|e| SecretsError::BadFacts(e.to_string()))?;
    drover_net::identity::write_atomic(&path, pretty.as_bytes(), 0o644).map_err(|e| SecretsError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::v1::SecretBytes;

    fn secret(name: &str, value: &str, mode: u32) -> SecretFile {
        SecretFile { name: name.into(), value: SecretBytes::new(value.as_bytes().to_vec()), owner: None, group: None, mode }
    }

    #[test]
    fn secrets_land_with_their_mode_and_stale_ones_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_secrets(dir.path(), &[secret("a", "1", 0o400), secret("b", "2", 0o440)]).expect("write");
        let a = secrets_dir(dir.path()).join("a");
        assert_eq!(fs::read_to_string(&a).expect("a"), "1");
        assert_eq!(fs::metadata(&a).expect("meta").permissions().mode() & 0o7777, 0o400);
        assert_eq!(fs::metadata(secrets_dir(dir.path()).join("b")).expect("b").permissions().mode() & 0o7777, 0o440);
        write_secrets(dir.path(), &[secret("b", "3", 0o400)]).expect("rewrite");
        assert!(!a.exists(), "a secret no longer assigned is removed");
        assert_eq!(fs::read_to_string(secrets_dir(dir.path()).join("b")).expect("b"), "3");
        let names: Vec<_> = fs::read_dir(secrets_dir(dir.path())).expect("ls").map(|e| e.expect("e").file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left behind: {names:?}");
    }

    #[test]
    fn owner_and_group_are_applied_and_unknown_users_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = secret("svc", "x", 0o400);
        s.owner = Some("nobody".into());
        s.group = Some("nogroup".into());
        write_secrets(dir.path(), &[s]).expect("write");
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(secrets_dir(dir.path()).join("svc")).expect("meta");
        assert_eq!(meta.uid(), nix::unistd::User::from_name("nobody").expect("lookup").expect("nobody").uid.as_raw());
        assert_eq!(meta.gid(), nix::unistd::Group::from_name("nogroup").expect("lookup").expect("nogroup").gid.as_raw());
        let mut bad = secret("other", "y", 0o400);
        bad.owner = Some("no-such-user-here".into());
        let err = write_secrets(dir.path(), &[bad]).expect_err("unknown user");
        assert!(err.to_string().contains("no-such-user-here"));
        assert!(secrets_dir(dir.path()).join("svc").exists(), "a refused write removes nothing");
    }

    #[test]
    fn facts_must_be_an_object() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_facts(dir.path(), r#"{"tenant":"a"}"#).expect("facts");
        assert!(fs::read_to_string(facts_path(dir.path())).expect("read").contains("\"tenant\": \"a\""));
        assert!(write_facts(dir.path(), "[1]").is_err());
    }
}
