//! Admin bundles: one TOML file with an admin's certificate and key, the
//! fleet CA and the coordinator's address. Written with mode 0600; refused
//! when readable by group or others.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use drover_net::identity;

/// File name of the first admin's bundle in the state directory.
pub const DEFAULT_BUNDLE_FILE: &str = "admin.bundle";

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminBundle {
    pub name: String,
    pub coordinator: SocketAddr,
    pub server_name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for AdminBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminBundle")
            .field("name", &self.name)
            .field("coordinator", &self.coordinator)
            .field("server_name", &self.server_name)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl AdminBundle {
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("serialising the admin bundle")?;
        identity::write_atomic(path, text.as_bytes(), 0o600)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!("cannot read the admin bundle {}; pass --admin-bundle FILE, set DROVER_ADMIN_BUNDLE, or --state-dir of the coordinator", path.display())
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!("the admin bundle {} is readable by others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the admin bundle {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a drover admin bundle", path.display()))
    }

    pub fn ca_der(&self) -> Result<Vec<u8>> {
        identity::cert_der_from_pem(&self.ca_pem).context("the bundle's CA certificate is not valid PEM")
    }

    pub fn cert_der(&self) -> Result<Vec<u8>> {
        identity::cert_der_from_pem(&self.cert_pem).context("the bundle's certificate is not valid PEM")
    }

    pub fn key_der(&self) -> Result<Vec<u8>> {
        let key = rcgen::KeyPair::from_pem(&self.key_pem).context("the bundle's key is not valid PEM")?;
        Ok(key.serialize_der())
    }
}
