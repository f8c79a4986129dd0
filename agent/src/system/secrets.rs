//! Secrets and facts on disk: `<runtime>/secrets/<name>` written atomically
//! with their mode, owner and group from the start; secrets no longer
//! assigned are removed; `<runtime>/facts.json` replaced atomically.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use drover_net::fsutil::{write_atomic, write_atomic_owned, Owner};
use drover_protocol::v1::{Access, SecretFile};

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
    #[error("SSH access refused: {0}")]
    BadAccess(String),
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

/// `<runtime>/ssh`: one authorized-keys file per login, named after it; sshd
/// reads it through `AuthorizedKeysFile <runtime>/ssh/%u` (the NixOS module
/// sets this up).
pub fn ssh_dir(runtime: &Path) -> PathBuf {
    runtime.join("ssh")
}

/// A login name as sshd's `%u` would expand it: a Unix account name.
fn check_login(login: &str) -> Result<(), SecretsError> {
    let mut chars = login.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && login.len() <= 32;
    if ok {
        Ok(())
    } else {
        Err(SecretsError::BadAccess(format!("login {login:?} is not an account name")))
    }
}

/// One authorized_keys line as the coordinator writes them: `TYPE BASE64
/// COMMENT`, printable, no options. Anything else (a newline that would
/// start another entry, a leading `command="..."`) is refused.
fn check_key_line(line: &str) -> Result<(), SecretsError> {
    let mut fields = line.split(' ');
    let kind = fields.next().unwrap_or("");
    let blob = fields.next().unwrap_or("");
    let kind_ok = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || "-@.".contains(c));
    let blob_ok = blob.len() >= 16 && blob.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
    if kind_ok && blob_ok && line.len() <= 16 << 10 && !line.chars().any(|c| c.is_control()) {
        Ok(())
    } else {
        Err(SecretsError::BadAccess("a key line is not `TYPE BASE64 COMMENT`".into()))
    }
}

/// Writes `<runtime>/ssh/<login>` for every login (mode 0644, atomically) and
/// removes the files of logins no longer listed, so that a removed key stops
/// working. Everything is checked before anything is written.
pub fn write_access(runtime: &Path, access: &Access) -> Result<(), SecretsError> {
    let mut files = Vec::with_capacity(access.authorized_keys.len());
    let mut logins = BTreeSet::new();
    for entry in &access.authorized_keys {
        check_login(&entry.login)?;
        if !logins.insert(entry.login.as_str()) {
            return Err(SecretsError::BadAccess(format!("login {:?} is listed twice", entry.login)));
        }
        let mut text = String::from("# Written by drover-agent from the coordinator's records; changes here are overwritten.\n");
        for line in &entry.keys {
            check_key_line(line)?;
            text.push_str(line);
            text.push('\n');
        }
        files.push((entry.login.as_str(), text));
    }
    let dir = ssh_dir(runtime);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io(&dir))?;
    for (login, text) in &files {
        let path = dir.join(login);
        write_atomic(&path, text.as_bytes(), 0o644).map_err(io(&path))?;
    }
    for entry in fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !logins.contains(name.as_str()) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

fn ids(secret: &SecretFile) -> Result<(Option<nix::unistd::Uid>, Option<nix::unistd::Gid>), SecretsError> {
    let uid = match &secret.owner {
        Some(name) => {
            Some(nix::unistd::User::from_name(name).ok().flatten().ok_or_else(|| SecretsError::NoUser { secret: secret.name.clone(), name: name.clone() })?.uid)
        }
        None => None,
    };
    let gid = match &secret.group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name).ok().flatten().ok_or_else(|| SecretsError::NoGroup { secret: secret.name.clone(), name: name.clone() })?.gid,
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
        let owner = Owner { uid: uid.map(|u| u.as_raw()), gid: gid.map(|g| g.as_raw()) };
        write_atomic_owned(&path, secret.value.expose(), secret.mode, owner).map_err(io(&path))?;
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
    let value: serde_json::Value = serde_json::from_str(facts_json).map_err(|e| SecretsError::BadFacts(e.to_string()))?;
    if !value.is_object() {
        return Err(SecretsError::BadFacts("not an object".into()));
    }
    fs::create_dir_all(runtime).map_err(io(runtime))?;
    let path = facts_path(runtime);
    let pretty = serde_json::to_string_pretty(&value).map_err(|e| SecretsError::BadFacts(e.to_string()))?;
    write_atomic(&path, pretty.as_bytes(), 0o644).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::v1::SecretBytes;

    fn secret(name: &str, value: &str, mode: u32) -> SecretFile {
        SecretFile { name: name.into(), value: SecretBytes::new(value.as_bytes().to_vec()), owner: None, group: None, mode }
    }

    fn access(entries: &[(&str, &[&str])]) -> Access {
        Access {
            authorized_keys: entries
                .iter()
                .map(|(login, keys)| drover_protocol::v1::LoginKeys { login: login.to_string(), keys: keys.iter().map(|k| k.to_string()).collect() })
                .collect(),
        }
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPOh/A5QIaPMDlSH+Cinr6vjFuuXatuXg/QqHu9fmdxC drover-admin:alice";

    #[test]
    fn access_files_follow_the_assignment() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_access(dir.path(), &access(&[("root", &[KEY]), ("deploy", &[KEY])])).expect("write");
        let root = fs::read_to_string(ssh_dir(dir.path()).join("root")).expect("root keys");
        assert!(root.lines().any(|l| l == KEY), "{root}");
        let mode = fs::metadata(ssh_dir(dir.path()).join("root")).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        write_access(dir.path(), &access(&[("root", &[])])).expect("rewrite");
        assert!(!ssh_dir(dir.path()).join("deploy").exists(), "a login no longer listed loses its file");
        let root = fs::read_to_string(ssh_dir(dir.path()).join("root")).expect("root keys");
        assert!(!root.contains("ssh-ed25519"), "a removed key is gone: {root}");
    }

    #[test]
    fn hostile_access_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_access(dir.path(), &access(&[("root", &[KEY])])).expect("write");
        let injected = format!("{KEY}\ncommand=\"/bin/sh\" {KEY}");
        let options = format!("command=\"/bin/sh\" {KEY}");
        for bad in [
            access(&[("../etc", &[KEY])]),
            access(&[("root", &[injected.as_str()])]),
            access(&[("root", &[options.as_str()])]),
            access(&[("root", &[KEY]), ("root", &[KEY])]),
        ] {
            assert!(write_access(dir.path(), &bad).is_err(), "{bad:?}");
        }
        let root = fs::read_to_string(ssh_dir(dir.path()).join("root")).expect("root keys");
        assert!(root.lines().any(|l| l == KEY), "the files are as before: {root}");
        assert_eq!(fs::read_dir(ssh_dir(dir.path())).expect("dir").count(), 1);
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
