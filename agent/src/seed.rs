//! A provisioned VM's first start: when the agent's configuration file does
//! not exist yet, the agent looks for its seed (coordinator, CA, one-time
//! token, name) in the places a hypervisor puts it, in order — the QEMU
//! `fw_cfg` entry `opt/io.drover/seed`, a cloud-init NoCloud file, the
//! SMBIOS system serial — and writes the configuration, the CA and the
//! token file from it. The token goes only into a mode-0600 file; it is
//! never logged and never put on a command line. Where seeds are and how
//! they are read is the system layer's (`system::seed`); this module writes
//! the agent's files from one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use drover_net::fsutil::write_atomic;
use drover_protocol::seed::CaPin;

use crate::config::AgentConfig;
use crate::system::seed::{find, SeedSources};

/// Writes `config_path` (and the CA and token beside the state) from the
/// first seed found, over the settings in `defaults` (the image's). Does
/// nothing and returns `false` when the configuration already exists.
/// A seed that only pins the CA's digest gets the CA from the coordinator,
/// accepted only when its digest matches.
pub async fn materialise(config_path: &Path, defaults: Option<&Path>, sources: &SeedSources) -> Result<bool> {
    if config_path.exists() {
        return Ok(false);
    }
    let Some(found) = find(sources)? else {
        bail!(
            "no agent configuration at {} and no seed found (looked in {}, {} and {}); write the configuration or provision the VM with `drover machines provision`",
            config_path.display(),
            sources.fw_cfg.display(),
            sources.nocloud.display(),
            sources.smbios_serial.display()
        );
    };
    let seed = found.seed;
    let mut table: toml::Table = match defaults {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?
        }
        None => toml::Table::new(),
    };
    let state_dir = table.get("state_dir").and_then(|v| v.as_str()).map(PathBuf::from).unwrap_or_else(crate::config::default_state_dir);
    std::fs::create_dir_all(&state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    let coordinator: drover_net::HostPort = seed.coordinator.parse().map_err(|e| anyhow::anyhow!("the seed's coordinator {:?}: {e}", seed.coordinator))?;
    let ca_der = match &seed.ca {
        CaPin::Certificate(der) => der.clone(),
        CaPin::Sha256(digest) => {
            drover_net::client::fetch_pinned_ca(&coordinator, &seed.server_name, digest).await.context("cannot fetch the fleet CA the seed pins")?
        }
    };
    let ca_file = state_dir.join("fleet-ca.pem");
    let ca_pem = pem::encode(&pem::Pem::new("CERTIFICATE", ca_der));
    write_atomic(&ca_file, ca_pem.as_bytes(), 0o644).with_context(|| format!("cannot write {}", ca_file.display()))?;
    let token_file = state_dir.join("enrollment-token");
    write_atomic(&token_file, seed.token.expose().as_bytes(), 0o600).with_context(|| format!("cannot write {}", token_file.display()))?;
    table.insert("coordinator".into(), coordinator.to_string().into());
    table.insert("server_name".into(), seed.server_name.clone().into());
    table.insert("ca_file".into(), ca_file.display().to_string().into());
    table.insert("enrollment_token_file".into(), token_file.display().to_string().into());
    table.insert("hostname".into(), seed.name.clone().into());
    let text = toml::to_string(&table).context("cannot render the configuration")?;
    // The result must load like any hand-written configuration.
    let _: AgentConfig = toml::from_str(&text).context("the seed and the image defaults make an invalid configuration")?;
    if let Some(dir) = config_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomic(config_path, text.as_bytes(), 0o600).with_context(|| format!("cannot write {}", config_path.display()))?;
    tracing::info!(source = %found.source.display(), coordinator = %coordinator, name = %seed.name, "configuration written from the VM's seed");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::seed::Seed;
    use drover_protocol::v1::Secret;

    fn sources(dir: &Path) -> SeedSources {
        SeedSources { fw_cfg: dir.join("fw_cfg"), nocloud: dir.join("nocloud"), smbios_serial: dir.join("serial") }
    }

    fn seed(name: &str) -> Seed {
        Seed {
            coordinator: "127.0.0.1:7443".into(),
            server_name: "localhost".into(),
            ca: CaPin::Certificate(b"not really DER".to_vec()),
            token: Secret::new(format!("drt_{}", "cd".repeat(32))),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn the_first_seed_in_order_writes_the_configuration_once() {
        let dir = tempfile::tempdir().expect("ok");
        let src = sources(dir.path());
        std::fs::write(&src.smbios_serial, "To be filled by O.E.M.").expect("ok");
        std::fs::write(&src.nocloud, seed("second").encode('\n')).expect("ok");
        std::fs::write(&src.fw_cfg, seed("first").encode('\n')).expect("ok");
        let defaults = dir.path().join("image.toml");
        std::fs::write(&defaults, format!("state_dir = {:?}\nsystemctl = \"/bin/true\"\n", dir.path().join("state"))).expect("ok");
        let config = dir.path().join("etc/agent.toml");
        assert!(materialise(&config, Some(&defaults), &src).await.expect("ok"));
        let loaded = AgentConfig::load(&config).expect("ok");
        assert_eq!(loaded.hostname.as_deref(), Some("first"));
        assert_eq!(loaded.systemctl, PathBuf::from("/bin/true"));
        let token = loaded.enrollment_token_file.expect("ok");
        assert_eq!(std::fs::read_to_string(&token).expect("ok"), seed("x").token.expose());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token).expect("ok").permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&config).expect("ok").permissions().mode() & 0o777, 0o600);
        assert!(!std::fs::read_to_string(&config).expect("ok").contains("drt_"), "the token stays out of the configuration");
        // Present already: left alone.
        std::fs::remove_file(&src.fw_cfg).expect("ok");
        assert!(!materialise(&config, Some(&defaults), &src).await.expect("ok"));
        assert_eq!(AgentConfig::load(&config).expect("ok").hostname.as_deref(), Some("first"));
    }

    #[tokio::test]
    async fn a_foreign_serial_is_skipped_and_a_broken_seed_named() {
        let dir = tempfile::tempdir().expect("ok");
        let src = sources(dir.path());
        std::fs::write(&src.smbios_serial, "VMware-56 4d").expect("ok");
        let e = materialise(&dir.path().join("a.toml"), None, &src).await.expect_err("an error");
        assert!(format!("{e:#}").contains("no seed found"), "{e:#}");
        std::fs::write(&src.nocloud, "drover-seed-1\nname=x\n").expect("ok");
        let e = materialise(&dir.path().join("a.toml"), None, &src).await.expect_err("an error");
        assert!(format!("{e:#}").contains("nocloud") && format!("{e:#}").contains("missing"), "{e:#}");
    }
}
