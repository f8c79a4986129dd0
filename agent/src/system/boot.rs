//! The machine's systems and boots: the system running now, the one it
//! booted, the boot default a profile names, and the boot's id. Read by
//! health reports and by the switch alike.

use std::path::Path;

/// Where the running system points, if the link exists.
pub fn current_system(link: &Path) -> Option<String> {
    std::fs::read_link(link).ok().map(|p| p.display().to_string())
}

/// The id of the current boot, from `path`.
pub fn boot_id(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// What the machine booted: `booted-system` beside the current-system link
/// (`/run/booted-system`).
pub fn booted_system(current_system_link: &Path) -> Option<String> {
    current_system(&current_system_link.with_file_name("booted-system"))
}

/// The system the boot default names when it is not the one running: a
/// reboot is required to run it.
pub fn pending_system(current_system_link: &Path, profile: &Path) -> Option<String> {
    let default = resolve_profile(profile)?;
    let running = current_system(current_system_link)?;
    (default != running).then_some(default)
}

/// Follows a profile's links to the store path it names (logical, as Nix
/// records it, also for a chroot store).
pub fn resolve_profile(profile: &Path) -> Option<String> {
    let mut path = profile.to_path_buf();
    for _ in 0..8 {
        let target = std::fs::read_link(&path).ok()?;
        let target = if target.is_relative() { path.parent().unwrap_or(Path::new("/")).join(target) } else { target };
        if target.starts_with("/nix/store") {
            return Some(target.display().to_string());
        }
        path = target;
    }
    None
}
