//! Backups of a coordinator: the store's trees at one moment and the files
//! that make the fleet's identity (its configuration, the fleet CA and the
//! server's certificate, with their keys). A file is a magic line, a
//! bincode payload and the payload's SHA-256, so a damaged or cut file is
//! refused before anything is written. `restore` makes a new state
//! directory from one; a coordinator started there serves the same
//! machines, which reconnect with their certificates.
//!
//! What the coordinator sends is sealed by the `drover backup` client with
//! the operator's backup key ([`seal`]) before it reaches the disk, and
//! `restore` opens only a sealed file that passes its check (or, asked
//! explicitly, an unsealed one).

pub mod seal;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, CONFIG_FILE};
use crate::pki::{CA_CERT_FILE, CA_KEY_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE};
use crate::store::{Snapshot, Store, DB_DIR};

/// The first bytes of every backup file.
const MAGIC: &[u8] = b"DROVER-BACKUP 1\n";

/// The files of a state directory a backup holds, with the mode each is
/// restored with.
const FILES: [(&str, u32); 5] = [(CONFIG_FILE, 0o600), (CA_CERT_FILE, 0o644), (CA_KEY_FILE, 0o600), (SERVER_CERT_FILE, 0o644), (SERVER_KEY_FILE, 0o600)];

#[derive(Serialize, Deserialize)]
struct Contents {
    created_at: u64,
    software: String,
    files: Vec<(String, Vec<u8>)>,
    trees: Snapshot,
}

/// What a backup holds, in numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub created_at: u64,
    pub software: String,
    /// Records per tree.
    pub records: Vec<(String, usize)>,
    /// The key that sealed it (checked), or `None` for an unsealed backup
    /// opened with `--unauthenticated`.
    pub sealed: Option<seal::Seal>,
}

/// How `restore` opens a backup file.
pub struct Opening<'a> {
    /// The backup key, for a sealed file.
    pub key: Option<&'a seal::BackupKey>,
    /// Whether an unsealed file (an older drover's) may be restored.
    pub unauthenticated: bool,
}

/// The backup inside a file, checked as `how` says.
fn unseal(bytes: &[u8], how: &Opening<'_>, file: &Path) -> Result<(Vec<u8>, Option<seal::Seal>)> {
    if let Some(found) = seal::seal_of(bytes) {
        let Some(key) = how.key else {
            bail!("{} is sealed with the backup key whose id is {}; give that key with --key KEYFILE", file.display(), found.key_id);
        };
        return Ok((seal::open(bytes, key, file)?, Some(found)));
    }
    if bytes.starts_with(MAGIC) && !how.unauthenticated {
        bail!(
            "{} is not sealed with a backup key, so nothing shows it was not changed since it was taken \
             (an admin's role raised, a machine added). Restore it only if you know where it has been, \
             with --unauthenticated; take new backups with --key",
            file.display()
        );
    }
    Ok((bytes.to_vec(), None))
}

/// Encodes a backup of `state_dir`'s files and the store's `trees`.
pub fn encode(state_dir: &Path, trees: Snapshot, created_at: u64) -> Result<Vec<u8>> {
    let mut files = Vec::new();
    for (name, _) in FILES {
        let path = state_dir.join(name);
        files.push((name.to_string(), std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?));
    }
    let contents = Contents { created_at, software: format!("drover {}", env!("CARGO_PKG_VERSION")), files, trees };
    let payload = bincode::serde::encode_to_vec(&contents, bincode::config::standard()).context("encoding the backup")?;
    let mut out = Vec::with_capacity(MAGIC.len() + payload.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&payload);
    out.extend_from_slice(&Sha256::digest(&payload));
    Ok(out)
}

fn decode(bytes: &[u8], file: &Path) -> Result<Contents> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        bail!("{} is not a drover backup (it does not start with {:?})", file.display(), String::from_utf8_lossy(MAGIC).trim());
    };
    if rest.len() < 32 {
        bail!("{} is cut short; take the backup again", file.display());
    }
    let (payload, sum) = rest.split_at(rest.len() - 32);
    if Sha256::digest(payload).as_slice() != sum {
        bail!("{} is damaged or cut short (its SHA-256 does not match); take the backup again", file.display());
    }
    let (contents, used): (Contents, usize) = bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .with_context(|| format!("{} cannot be read (a backup from a newer drover?)", file.display()))?;
    if used != payload.len() {
        bail!("{} has {} bytes after the backup; take the backup again", file.display(), payload.len() - used);
    }
    Ok(contents)
}

fn summary(contents: &Contents, sealed: Option<seal::Seal>) -> Summary {
    Summary {
        created_at: contents.created_at,
        software: contents.software.clone(),
        records: contents.trees.iter().map(|(t, pairs)| (t.clone(), pairs.len())).collect(),
        sealed,
    }
}

/// Checks the bytes of a backup as the coordinator sent them and says what
/// they hold.
pub fn check(bytes: &[u8]) -> Result<Summary> {
    Ok(summary(&decode(bytes, Path::new("the backup"))?, None))
}

/// Reads and checks a backup file without restoring it.
pub fn inspect(file: &Path, how: &Opening<'_>) -> Result<Summary> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (inner, sealed) = unseal(&bytes, how, file)?;
    Ok(summary(&decode(&inner, file)?, sealed))
}

/// Makes the new state directory `state_dir` from the backup `file`:
/// refuses a directory that exists and is not empty; writes into a
/// temporary directory beside it and renames it into place, so that a
/// failure leaves nothing half-made. The configuration's `state_dir` is
/// set to the new directory.
pub fn restore(file: &Path, state_dir: &Path, how: &Opening<'_>) -> Result<Summary> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (inner, sealed) = unseal(&bytes, how, file)?;
    let contents = decode(&inner, file)?;
    if state_dir.exists() {
        let empty = std::fs::read_dir(state_dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty {
            bail!("{} exists and is not empty; restore into a new directory (nothing was written)", state_dir.display());
        }
    }
    let state_dir = absolute(state_dir)?;
    let parent = state_dir.parent().context("the state directory needs a parent directory")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = state_dir.file_name().context("the state directory needs a name")?.to_string_lossy();
    let staging = parent.join(format!(".{name}.restoring-{}", std::process::id()));
    let made = (|| -> Result<()> {
        std::fs::DirBuilder::new().mode(0o700).create(&staging).with_context(|| format!("creating {}", staging.display()))?;
        for (name, mode) in FILES {
            let (_, content) = contents.files.iter().find(|(n, _)| n == name).with_context(|| format!("the backup holds no {name}"))?;
            let content = if name == CONFIG_FILE { moved_config(content, &state_dir)? } else { content.clone() };
            drover_net::fsutil::write_atomic(&staging.join(name), &content, mode).with_context(|| format!("writing {name}"))?;
        }
        let store = Store::open(&staging.join(DB_DIR)).context("creating the store")?;
        store.load_snapshot(&contents.trees).context("writing the store")?;
        drop(store);
        if state_dir.exists() {
            std::fs::remove_dir(&state_dir).with_context(|| format!("replacing the empty {}", state_dir.display()))?;
        }
        std::fs::rename(&staging, &state_dir).with_context(|| format!("moving the restored state to {}", state_dir.display()))?;
        Ok(())
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    made?;
    Ok(summary(&contents, sealed))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir().context("the current directory")?.join(path))
    }
}

/// The backed-up configuration with its `state_dir` set to where it is
/// restored.
fn moved_config(content: &[u8], state_dir: &Path) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(content).context("the backup's drover.toml is not UTF-8")?;
    let mut config: Config = toml::from_str(text).context("the backup's drover.toml cannot be read")?;
    config.state_dir = state_dir.to_path_buf();
    Ok(config.to_toml().into_bytes())
}
