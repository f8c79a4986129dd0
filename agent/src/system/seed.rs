//! Where a hypervisor leaves a VM's seed — the QEMU `fw_cfg` entry, a
//! cloud-init NoCloud file, the SMBIOS system serial — and reading it: the
//! machine's firmware and DMI data, read here in the system layer only.

use std::path::PathBuf;

use anyhow::{Context, Result};

use drover_protocol::seed::Seed;

/// Where a seed may be, in the order they are tried.
#[derive(Debug, Clone)]
pub struct SeedSources {
    /// QEMU's `-fw_cfg name=opt/io.drover/seed,file=...`.
    pub fw_cfg: PathBuf,
    /// A cloud-init NoCloud seed directory's file holding the seed text.
    pub nocloud: PathBuf,
    /// The SMBIOS type 1 serial (Proxmox `smbios1: serial=...`).
    pub smbios_serial: PathBuf,
}

impl Default for SeedSources {
    fn default() -> Self {
        SeedSources {
            fw_cfg: PathBuf::from("/sys/firmware/qemu_fw_cfg/by_name/opt/io.drover/seed/raw"),
            nocloud: PathBuf::from("/var/lib/cloud/seed/nocloud/drover-seed"),
            smbios_serial: PathBuf::from("/sys/class/dmi/id/product_serial"),
        }
    }
}

/// A seed and where it was found.
pub struct Found {
    pub seed: Seed,
    pub source: PathBuf,
}

/// The first seed in `sources`. A carrier that exists but does not hold a
/// Drover seed (an SMBIOS serial of another kind) is skipped; one that
/// holds a broken Drover seed is an error naming it.
pub fn find(sources: &SeedSources) -> Result<Option<Found>> {
    for path in [&sources.fw_cfg, &sources.nocloud, &sources.smbios_serial] {
        let Ok(bytes) = std::fs::read(path) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        if !text.trim_start().starts_with(drover_protocol::seed::SEED_MAGIC) {
            continue;
        }
        let seed = Seed::parse(&text).with_context(|| format!("the seed in {}", path.display()))?;
        return Ok(Some(Found { seed, source: path.clone() }));
    }
    Ok(None)
}
