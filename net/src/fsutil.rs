//! Atomic file writes: the one routine both binaries use for keys,
//! certificates, records, secrets and facts.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Who owns a written file (numeric ids; `None` keeps the writer's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically (a temporary file in the same
/// directory, fsync, rename, fsync of the directory) with exactly `mode`.
/// The temporary file is readable by its owner only until its owner and mode
/// are set, so the content is never readable by others, even briefly; a
/// failure leaves the old file in place and no temporary file behind.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_owned(path, bytes, mode, Owner::default())
}

/// [`write_atomic`], with the file handed to `owner` before it appears.
pub fn write_atomic_owned(path: &Path, bytes: &[u8], mode: u32, owner: Owner) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        if owner.uid.is_some() || owner.gid.is_some() {
            std::os::unix::fs::chown(&tmp, owner.uid, owner.gid)?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_atomically_with_the_exact_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o644).expect("write");
        write_atomic(&path, b"two", 0o400).expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o7777, 0o400);
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1, "no temporary file left");
    }

    #[test]
    fn a_failed_write_leaves_what_was_there_and_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory in the way: the final rename fails.
        let path = dir.path().join("taken");
        fs::create_dir(&path).expect("mkdir");
        fs::write(path.join("inside"), b"kept").expect("write");
        assert!(write_atomic(&path, b"lost", 0o600).is_err());
        assert_eq!(fs::read(path.join("inside")).expect("read"), b"kept");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1, "no temporary file left");
    }
}
