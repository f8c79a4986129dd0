//! Authenticated (and optionally encrypted) backup files. A backup holds
//! the fleet CA's key and every record, so a file that was changed — an
//! admin's role raised, a machine added — must not restore. The operator
//! keeps a backup key ([`BackupKey`]) apart from the backups; every file is
//! sealed with it:
//!
//! ```text
//! "DROVER-BACKUP 2\n" | flags (1 byte: 1 = encrypted) | key id (16) | nonce (12)
//! | body | HMAC-SHA256 over everything before it (32)
//! ```
//!
//! The body is the coordinator's backup (`DROVER-BACKUP 1`) as it came, or,
//! encrypted, that backup in chunks of at most 1 MiB, each
//! `length (4, big-endian) | ChaCha20-Poly1305 ciphertext and tag`, the
//! chunk number mixed into the nonce and the last chunk marked in its
//! associated data (so chunks can be neither reordered nor cut off). The
//! keys for the MAC, the cipher and the key id are derived from the backup
//! key with HMAC-SHA256 under distinct labels.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ring::{aead, hmac};

/// The first bytes of a sealed backup.
pub const MAGIC: &[u8] = b"DROVER-BACKUP 2\n";

const KEY_ID_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_ID_LEN + NONCE_LEN;
const ENCRYPTED: u8 = 1;
/// Plaintext per encrypted chunk.
const CHUNK: usize = 1 << 20;

/// The operator's backup key: 32 random bytes, kept in a file as 64 hex
/// digits on one line.
pub struct BackupKey {
    secret: [u8; 32],
    path: PathBuf,
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupKey({}, id {})", self.path.display(), self.id_hex())
    }
}

fn derive(secret: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, label);
    let mut out = [0; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

impl BackupKey {
    /// Reads a key file written by [`BackupKey::create`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the backup key {} (make one with `drover backup FILE --key {} --new-key`)", path.display(), path.display()))?;
        let hex_text = text.trim();
        let bytes = hex::decode(hex_text)
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| format!("{} is not a backup key (one line of 64 hex digits, as `--new-key` writes)", path.display()))?;
        let mut secret = [0; 32];
        secret.copy_from_slice(&bytes);
        Ok(BackupKey { secret, path: path.to_path_buf() })
    }

    /// Writes a new random key to `path` (mode 0600), which must not exist.
    pub fn create(path: &Path) -> Result<Self> {
        let secret: [u8; 32] = rand::random();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating the backup key {} (it must not exist yet)", path.display()))?;
        file.write_all(format!("{}\n", hex::encode(secret)).as_bytes())?;
        file.sync_all()?;
        Ok(BackupKey { secret, path: path.to_path_buf() })
    }

    /// The key's id, as written in each backup it seals: says which key a
    /// backup needs without revealing it.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&derive(&self.secret, b"drover backup key id")[..KEY_ID_LEN]);
        id
    }

    pub fn id_hex(&self) -> String {
        hex::encode(self.id())
    }

    fn mac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &derive(&self.secret, b"drover backup authentication"))
    }

    fn cipher(&self) -> aead::LessSafeKey {
        let key = derive(&self.secret, b"drover backup encryption");
        aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &key).expect("a 32-byte ChaCha20-Poly1305 key"))
    }
}

/// The nonce of chunk `n`: the file's random nonce with `n` added into its
/// last eight bytes.
fn chunk_nonce(base: &[u8; NONCE_LEN], n: u64) -> aead::Nonce {
    let mut nonce = *base;
    for (b, x) in nonce[4..].iter_mut().zip(n.to_be_bytes()) {
        *b ^= x;
    }
    aead::Nonce::assume_unique_for_key(nonce)
}

fn chunk_aad(last: bool) -> aead::Aad<&'static [u8]> {
    aead::Aad::from(if last { b"last".as_slice() } else { b"more".as_slice() })
}

/// Writes a sealed backup as its bytes arrive.
pub struct Sealer<W: Write> {
    out: W,
    mac: hmac::Context,
    cipher: Option<(aead::LessSafeKey, [u8; NONCE_LEN])>,
    pending: Vec<u8>,
    chunks: u64,
}

impl<W: Write> Sealer<W> {
    pub fn new(mut out: W, key: &BackupKey, encrypt: bool) -> Result<Self> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.push(if encrypt { ENCRYPTED } else { 0 });
        header.extend_from_slice(&key.id());
        header.extend_from_slice(&nonce);
        out.write_all(&header)?;
        let mut mac = hmac::Context::with_key(&key.mac_key());
        mac.update(&header);
        Ok(Sealer { out, mac, cipher: encrypt.then(|| (key.cipher(), nonce)), pending: Vec::new(), chunks: 0 })
    }

    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.mac.update(bytes);
        self.out.write_all(bytes)
    }

    fn seal_chunk(&mut self, last: bool) -> std::io::Result<()> {
        let Some((cipher, base)) = &self.cipher else { return Ok(()) };
        let mut chunk = std::mem::take(&mut self.pending);
        cipher
            .seal_in_place_append_tag(chunk_nonce(base, self.chunks), chunk_aad(last), &mut chunk)
            .map_err(|_| std::io::Error::other("sealing a backup chunk failed"))?;
        self.chunks += 1;
        let len = u32::try_from(chunk.len()).map_err(std::io::Error::other)?;
        self.emit(&len.to_be_bytes())?;
        self.emit(&chunk)
    }

    /// Writes the last chunk and the MAC; returns the writer.
    pub fn finish(mut self) -> Result<W> {
        if self.cipher.is_some() {
            self.seal_chunk(true)?;
        }
        let tag = self.mac.clone().sign();
        self.out.write_all(tag.as_ref())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cipher.is_none() {
            self.emit(buf)?;
            return Ok(buf.len());
        }
        let room = CHUNK - self.pending.len();
        let take = room.min(buf.len());
        self.pending.extend_from_slice(&buf[..take]);
        if self.pending.len() == CHUNK {
            self.seal_chunk(false)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// What sealed a backup file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Seal {
    /// The id of the key it needs (hex).
    pub key_id: String,
    pub encrypted: bool,
}

/// Reads a sealed file's header (no key needed): which key and whether
/// encrypted; `None` for a file that is not sealed.
pub fn seal_of(bytes: &[u8]) -> Option<Seal> {
    let rest = bytes.strip_prefix(MAGIC)?;
    if rest.len() < 1 + KEY_ID_LEN + NONCE_LEN {
        return None;
    }
    Some(Seal { key_id: hex::encode(&rest[1..1 + KEY_ID_LEN]), encrypted: rest[0] == ENCRYPTED })
}

/// Checks a sealed backup with `key` and returns the backup inside it.
/// Refuses a file made with another key, or changed in any byte.
pub fn open(bytes: &[u8], key: &BackupKey, file: &Path) -> Result<Vec<u8>> {
    let Some(seal) = seal_of(bytes) else {
        bail!("{} is not a sealed drover backup", file.display());
    };
    if seal.key_id != key.id_hex() {
        bail!(
            "{} was sealed with another backup key (id {}; {} has id {}); give the key it was made with",
            file.display(),
            seal.key_id,
            key.path.display(),
            key.id_hex()
        );
    }
    if bytes.len() < HEADER_LEN + TAG_LEN {
        bail!("{} is cut short; take the backup again", file.display());
    }
    let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    if hmac::verify(&key.mac_key(), signed, tag).is_err() {
        bail!("{} fails its authentication: it was changed (or damaged) after it was written. It is not restored; use another backup", file.display());
    }
    let body = &signed[HEADER_LEN..];
    if !seal.encrypted {
        return Ok(body.to_vec());
    }
    let mut base = [0; NONCE_LEN];
    base.copy_from_slice(&signed[HEADER_LEN - NONCE_LEN..HEADER_LEN]);
    let cipher = key.cipher();
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    let mut n = 0u64;
    loop {
        let damaged = || anyhow::anyhow!("{} cannot be decrypted (damaged); use another backup", file.display());
        let (len, after) = rest.split_first_chunk::<4>().ok_or_else(damaged)?;
        let len = usize::try_from(u32::from_be_bytes(*len))?;
        if after.len() < len {
            return Err(damaged());
        }
        let (chunk, after) = after.split_at(len);
        let last = after.is_empty();
        let mut chunk = chunk.to_vec();
        let plain = cipher.open_in_place(chunk_nonce(&base, n), chunk_aad(last), &mut chunk).map_err(|_| damaged())?;
        out.extend_from_slice(plain);
        n += 1;
        rest = after;
        if last {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: &BackupKey, encrypt: bool, inner: &[u8]) -> Vec<u8> {
        let mut s = Sealer::new(Vec::new(), key, encrypt).expect("sealer");
        // In uneven pieces, as a backup arrives.
        for piece in inner.chunks(333_333) {
            s.write_all(piece).expect("write");
        }
        s.finish().expect("finish")
    }

    #[test]
    fn a_sealed_backup_opens_with_its_key_only_and_any_changed_byte_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = BackupKey::create(&dir.path().join("key")).expect("key");
        let other = BackupKey::create(&dir.path().join("other")).expect("key");
        assert!(BackupKey::create(&dir.path().join("key")).is_err(), "an existing key is never replaced");
        let inner: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        for encrypt in [false, true] {
            let file = sealed(&key, encrypt, &inner);
            assert_eq!(seal_of(&file), Some(Seal { key_id: key.id_hex(), encrypted: encrypt }));
            assert_eq!(open(&file, &key, Path::new("f")).expect("opens"), inner);
            let e = open(&file, &other, Path::new("f")).expect_err("another key");
            assert!(e.to_string().contains("another backup key"), "{e}");
            for at in [HEADER_LEN - 1, HEADER_LEN + 10, file.len() / 2, file.len() - 1] {
                let mut changed = file.clone();
                changed[at] ^= 1;
                assert!(open(&changed, &key, Path::new("f")).is_err(), "a change at byte {at} is refused (encrypted: {encrypt})");
            }
            assert!(open(&file[..file.len() - 40], &key, Path::new("f")).is_err(), "a cut file is refused");
        }
        let encrypted = sealed(&key, true, &inner);
        assert!(!encrypted.windows(64).any(|w| inner.windows(64).next() == Some(w)), "the content does not appear in clear");
    }

    #[test]
    fn a_key_file_that_is_not_a_key_is_refused_saying_what_one_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, "not a key\n").expect("write");
        let e = BackupKey::load(&path).expect_err("refused");
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        let e = BackupKey::load(&dir.path().join("missing")).expect_err("refused");
        assert!(format!("{e:#}").contains("--new-key"), "{e:#}");
    }
}
