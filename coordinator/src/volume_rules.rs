//! The rules a volume's name, size, filesystem and mount point follow,
//! checked before anything is sent to the block storage: by the CLI, by
//! the fleet file's validation and by the coordinator. Pure functions.
//!
//! Names follow LINSTOR's resource names (linstor-server's `ResourceName`):
//! 2 to 48 characters — letters, digits, `_` and `-` — with at least one
//! letter; Drover also asks for a letter first (a name is part of a device
//! path). `all` and `proxy` are reserved by DRBD, and LINSTOR compares
//! names without regard to case, so `DATA` and `data` are one resource.

use drover_protocol::v1::Filesystem;

/// The largest volume Drover asks for (64 TiB), to refuse typing errors.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
/// The smallest (16 MiB keeps ext4 sensible).
pub const MIN_VOLUME_BYTES: u64 = 16 << 20;
/// `mkfs.xfs` refuses filesystems smaller than 300 MB.
pub const MIN_XFS_BYTES: u64 = 300 << 20;
/// LINSTOR's limits on a resource name's length.
pub const NAME_LENGTH: std::ops::RangeInclusive<usize> = 2..=48;
/// Names DRBD reserves (compared without regard to case).
pub const RESERVED_NAMES: [&str; 2] = ["all", "proxy"];

/// Checks a volume (or snapshot) name; `what` says which in the message.
pub fn check_name_of(what: &str, name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{what} name {name:?} is invalid: {why}"));
    if !NAME_LENGTH.contains(&name.len()) {
        return bad(&format!("use {} to {} characters", NAME_LENGTH.start(), NAME_LENGTH.end()));
    }
    if !name.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return bad("it must start with a letter");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return bad("use only letters, digits, '_' and '-'");
    }
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return bad("DRBD reserves it; choose another name");
    }
    Ok(())
}

/// Checks a volume name.
pub fn check_name(name: &str) -> Result<(), String> {
    check_name_of("volume", name)
}

/// Whether two names are one LINSTOR resource (names ignore case).
pub fn same_resource(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Refuses `name` when one of `existing` is the same resource under
/// another spelling.
pub fn check_unique<'a>(name: &str, existing: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    match existing.into_iter().find(|e| *e != name && same_resource(e, name)) {
        Some(other) => {
            Err(format!("volume name {name:?} is the same block storage resource as volume {other:?} (names ignore case); use {other:?} or another name"))
        }
        None => Ok(()),
    }
}

/// Checks a size in bytes for `filesystem` (when known) and turns it into
/// KiB.
pub fn size_kib(bytes: u64, filesystem: Option<Filesystem>) -> Result<u64, String> {
    let size = |b: u64| bytesize::ByteSize::b(b).to_string();
    if !(MIN_VOLUME_BYTES..=MAX_VOLUME_BYTES).contains(&bytes) {
        return Err(format!("volume size {} is out of range: use {} to {}", size(bytes), size(MIN_VOLUME_BYTES), size(MAX_VOLUME_BYTES)));
    }
    if filesystem == Some(Filesystem::Xfs) && bytes < MIN_XFS_BYTES {
        return Err(format!("an xfs volume needs at least {} (mkfs.xfs refuses smaller ones); asked {}", size(MIN_XFS_BYTES), size(bytes)));
    }
    Ok(bytes.div_ceil(1024))
}

/// Directories that hold the system itself, with everything below them:
/// the NixOS store and system, kernel and runtime filesystems, root's home,
/// temporary directories (systemd-tmpfiles deletes old files there) and
/// the system's logs.
pub const SYSTEM_TREES: [&str; 16] =
    ["/boot", "/bin", "/dev", "/etc", "/lib", "/lib64", "/nix", "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var/log", "/var/tmp"];

/// Directories that hold other directories' data: refused themselves (a
/// volume there would hide all of them), allowed below.
pub const SYSTEM_PARENTS: [&str; 5] = ["/", "/home", "/srv", "/var", "/var/lib"];

/// State directories of the system under `/var/lib`: NixOS' user and group
/// ids, systemd's state, the private directories of dynamic users, and the
/// agent's own state.
pub const SYSTEM_STATE: [&str; 4] = ["/var/lib/nixos", "/var/lib/systemd", "/var/lib/private", "/var/lib/drover-agent"];

fn within(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// Checks a mount point: absolute, normalised, and not one of the system's
/// own directories ([`SYSTEM_TREES`], [`SYSTEM_PARENTS`], [`SYSTEM_STATE`],
/// and any `.ssh` directory, where logins' keys live).
pub fn check_mount_point(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("mount point {path:?} {why}"));
    if !path.starts_with('/') {
        return bad("must be an absolute path");
    }
    if path.len() > 1024 || path.chars().any(|c| c.is_control()) {
        return bad("is too long or holds control characters");
    }
    if path.split('/').any(|part| part == "." || part == "..") || path.contains("//") || (path.len() > 1 && path.ends_with('/')) {
        return bad("must be normalised (no '.', '..', '//' or trailing '/')");
    }
    if let Some(tree) = SYSTEM_TREES.iter().chain(SYSTEM_STATE.iter()).find(|t| within(path, t)) {
        return bad(&format!("is in {tree}, which holds the system's own files; mount volumes elsewhere, e.g. /var/lib/NAME or /srv/NAME"));
    }
    if SYSTEM_PARENTS.contains(&path) {
        return bad("would hide every directory below it; mount volumes below it, e.g. /var/lib/NAME or /srv/NAME");
    }
    if path.split('/').any(|part| part == ".ssh") {
        return bad("is an .ssh directory, which holds login keys");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_linstor_and_drbd_rules() {
        for ok in ["data", "acme-pg_1", "ab", "ALLx", "a1"] {
            check_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("a", "2 to 48"),
            ("", "2 to 48"),
            ("all", "reserves"),
            ("ALL", "reserves"),
            ("Proxy", "reserves"),
            ("1data", "start with a letter"),
            ("_data", "start with a letter"),
            ("../x", "start with a letter"),
            ("a/b", "only letters"),
            ("a b", "only letters"),
            (&"x".repeat(49), "2 to 48"),
        ] {
            let e = check_name(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn names_that_differ_only_in_case_are_one_resource() {
        assert!(check_unique("DATA", ["data", "logs"]).expect_err("a case variant").contains("\"data\""));
        assert!(check_unique("data", ["data", "logs"]).is_ok(), "the same name is the same volume");
        assert!(check_unique("media", ["data"]).is_ok());
    }

    #[test]
    fn sizes_are_bounded_rounded_up_and_xfs_needs_its_minimum() {
        assert_eq!(size_kib(20 << 20, None), Ok(20 << 10));
        assert_eq!(size_kib((20 << 20) + 1, Some(Filesystem::Ext4)), Ok((20 << 10) + 1));
        assert!(size_kib(1, None).is_err());
        assert!(size_kib(u64::MAX, None).is_err());
        let e = size_kib(64 << 20, Some(Filesystem::Xfs)).expect_err("xfs below its minimum");
        assert!(e.contains("xfs") && e.contains("300"), "{e}");
        assert!(size_kib(300 << 20, Some(Filesystem::Xfs)).is_ok());
    }

    #[test]
    fn mount_points_must_be_plain_absolute_paths_outside_the_system() {
        for ok in ["/srv/data", "/var/lib/postgresql", "/mnt/a-b_c", "/home/alice", "/mnt", "/opt/app", "/var/lib/mastodon"] {
            check_mount_point(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "srv",
            "/",
            "/nix/store",
            "/nix",
            "/etc",
            "/etc/ssh",
            "/srv/../etc",
            "/srv//x",
            "/srv/",
            "/a\nb",
            "/var/lib",
            "/var/lib/nixos",
            "/var/lib/systemd/x",
            "/root",
            "/root/data",
            "/home",
            "/tmp",
            "/tmp/x",
            "/var/tmp/x",
            "/boot/efi",
            "/usr/local",
            "/run/x",
            "/proc/x",
            "/sys",
            "/dev/x",
            "/var",
            "/var/log",
            "/var/log/journal",
            "/home/alice/.ssh",
            "/var/lib/drover-agent",
            "/srv",
        ] {
            assert!(check_mount_point(bad).is_err(), "{bad:?}");
        }
        assert!(check_mount_point("/etc/ssh").expect_err("system").contains("/etc"), "names the system directory");
    }
}
