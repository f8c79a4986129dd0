//! `drover init`: a new state directory with the fleet CA, the server
//! certificate, the configuration, the store and a first admin bundle.
//!
//! Everything is made in a temporary sibling directory and renamed into place
//! at the end, so a failure leaves nothing half-made; an existing state
//! directory is never overwritten.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use drover_net::identity::{self, Subject};
use drover_protocol::v1::Role;

use crate::app::machines::{check_admin_name, ADMIN_CERT_LIFETIME};
use crate::app::{now_ms, DB_DIR};
use crate::bundle::{AdminBundle, DEFAULT_BUNDLE_FILE};
use crate::config::{Config, CONFIG_FILE};
use crate::model::AdminRecord;
use crate::pki::{self, Ca};
use crate::store::Store;

pub struct InitOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub server_names: Vec<String>,
    pub admin_name: String,
    pub health_interval: Option<Duration>,
    pub machine_cert_lifetime: Option<Duration>,
    /// The fleet's records in etcd instead of the state directory.
    pub store: Option<EtcdStoreArgs>,
    /// Another coordinator for a fleet already in etcd: the directory
    /// holding the fleet CA's certificate and key (handed over from the
    /// first coordinator; the key never goes into etcd).
    pub join: Option<PathBuf>,
}

/// `--store etcd://…` and its client certificates.
#[derive(Debug, Clone)]
pub struct EtcdStoreArgs {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdStoreArgs {
    /// The `[store]` section, with `drover/<fleet id>/` as the default prefix.
    pub fn config(&self, fleet_id: &str) -> Result<crate::config::StoreConfig> {
        let tls = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        let mut store = crate::config::StoreConfig::from_url(&self.url, tls, &format!("drover/{fleet_id}/"))?;
        let absolute_file = |f: &Option<PathBuf>| f.as_deref().map(absolute).transpose();
        store.ca_file = absolute_file(&self.ca_file)?;
        store.cert_file = absolute_file(&self.cert_file)?;
        store.key_file = absolute_file(&self.key_file)?;
        store.check()?;
        Ok(store)
    }
}

pub struct InitOutcome {
    pub config_path: PathBuf,
    pub bundle_path: PathBuf,
    pub config: Config,
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()?.join(path))
}

pub fn init(opts: InitOptions) -> Result<InitOutcome> {
    check_admin_name(&opts.admin_name).map_err(anyhow::Error::msg)?;
    if opts.join.is_some() && opts.store.is_none() {
        bail!("--join adds a coordinator to a fleet whose records are in etcd: name that store with --store etcd://…");
    }
    let state_dir = absolute(&opts.state_dir)?;
    if state_dir.exists() {
        let empty = fs::read_dir(&state_dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty {
            bail!(
                "{} already exists and is not empty; refusing to overwrite a state directory (choose another --state-dir or remove it yourself)",
                state_dir.display()
            );
        }
    }
    let mut names = opts.server_names.clone();
    if !opts.listen.ip().is_unspecified() && !names.contains(&opts.listen.ip().to_string()) {
        names.push(opts.listen.ip().to_string());
    }
    // A coordinator on the loopback is reached as `localhost` too.
    if opts.listen.ip().is_loopback() && !names.iter().any(|n| n == "localhost") {
        names.push("localhost".into());
    }
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    }
    let mut config = Config::new(state_dir.clone(), opts.listen, names);
    if let Some(advertise) = opts.advertise {
        config.advertise = advertise;
    }
    if let Some(i) = opts.health_interval {
        config.health_interval = i;
    }
    if let Some(l) = opts.machine_cert_lifetime {
        config.machine_cert_lifetime = l;
    }
    config.check()?;

    let parent = state_dir.parent().context("the state directory needs a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = state_dir.file_name().context("the state directory needs a name")?;
    let tmp = parent.join(format!(".{}.init-{}", name.to_string_lossy(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let result = build(&tmp, &mut config, &opts.admin_name, opts.store.as_ref(), opts.join.as_deref());
    match result {
        Ok(()) => {
            if state_dir.exists() {
                fs::remove_dir(&state_dir).with_context(|| format!("replacing the empty {}", state_dir.display()))?;
            }
            fs::rename(&tmp, &state_dir).with_context(|| format!("moving the new state into {}", state_dir.display()))?;
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    }
    Ok(InitOutcome { config_path: state_dir.join(CONFIG_FILE), bundle_path: state_dir.join(DEFAULT_BUNDLE_FILE), config })
}

fn build(dir: &Path, config: &mut Config, admin_name: &str, etcd: Option<&EtcdStoreArgs>, join: Option<&Path>) -> Result<()> {
    fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let (ca, ca_key_pem) = match join {
        Some(from) => {
            let ca =
                Ca::load(from).with_context(|| format!("reading the fleet CA ({} and {}) from {}", pki::CA_CERT_FILE, pki::CA_KEY_FILE, from.display()))?;
            let key = fs::read_to_string(from.join(pki::CA_KEY_FILE))?;
            (ca, key)
        }
        None => Ca::generate(&config.server_names[0])?,
    };
    if let Some(etcd) = etcd {
        config.store = Some(etcd.config(&ca.fleet_id())?);
    }
    let ca_pem = identity::cert_pem(&ca.cert_der);
    identity::write_atomic(&dir.join(pki::CA_CERT_FILE), ca_pem.as_bytes(), 0o644)?;
    identity::write_atomic(&dir.join(pki::CA_KEY_FILE), ca_key_pem.as_bytes(), 0o600)?;
    let (server_der, server_key_pem) = ca.server_certificate(&config.server_names)?;
    identity::write_atomic(&dir.join(pki::SERVER_CERT_FILE), identity::cert_pem(&server_der).as_bytes(), 0o644)?;
    identity::write_atomic(&dir.join(pki::SERVER_KEY_FILE), server_key_pem.as_bytes(), 0o600)?;
    identity::write_atomic(&dir.join(CONFIG_FILE), config.to_toml().as_bytes(), 0o600)?;

    let store = match &config.store {
        Some(etcd) => {
            let store = Store::open_etcd(etcd.etcd_options()?).with_context(|| format!("connecting to etcd at {}", etcd.etcd_endpoints.join(", ")))?;
            if join.is_some() {
                let fleet = store.meta(crate::store::FLEET_ID_KEY)?;
                if fleet.as_deref() != Some(ca.fleet_id().as_str()) {
                    bail!(
                        "etcd under {:?} holds {}, not the fleet of this CA ({}): join the fleet whose CA you were given, under its prefix",
                        etcd.prefix,
                        fleet.map_or("no fleet".to_string(), |f| format!("fleet {f}")),
                        ca.fleet_id()
                    );
                }
                // Its admins, machines and records are the fleet's: none
                // is made here, and no admin bundle (admins use theirs
                // with --coordinator).
                return Ok(());
            }
            if !store.holds_only_its_schema()? {
                bail!(
                    "etcd already holds records under {:?}: another fleet lives there. Choose another prefix (etcd://HOST:PORT/PREFIX), or add this machine to that fleet as another coordinator",
                    etcd.prefix
                );
            }
            store
        }
        None => Store::open(&dir.join(DB_DIR))?,
    };
    let key = identity::generate_key()?;
    let csr = identity::csr_der(&key, admin_name)?;
    let issued = ca.sign_client(&csr, &Subject::Admin(admin_name.to_string()), ADMIN_CERT_LIFETIME)?;
    let admin =
        AdminRecord { name: admin_name.to_string(), role: Role::Admin, created_at: now_ms(), serials: vec![issued.serial.clone()], ssh_keys: Vec::new() };
    // The first admin and the fleet the store belongs to, in one transaction.
    store.commit_blocking(|tx| {
        tx.insert_new(admin.name.as_bytes(), &admin, || "admin exists".to_string())?;
        tx.put_meta(crate::store::FLEET_ID_KEY, &ca.fleet_id())
    })?;
    // The sled store's lock is let go before the directory is moved.
    drop(store);
    AdminBundle {
        name: admin_name.to_string(),
        coordinator: config.advertise,
        server_name: config.server_names[0].clone(),
        ca_pem,
        cert_pem: identity::cert_pem(&issued.certificate_der),
        key_pem: key.serialize_pem(),
    }
    .write(&dir.join(DEFAULT_BUNDLE_FILE))?;
    Ok(())
}

/// Checks that `dir` is a state directory (for error messages that help).
pub fn check_state_dir(dir: &Path) -> Result<()> {
    if !dir.join(pki::CA_CERT_FILE).exists() {
        anyhow::bail!(
            "{} is not a drover state directory (no {}); create one with `drover init --state-dir {}`",
            dir.display(),
            pki::CA_CERT_FILE,
            dir.display()
        );
    }
    Ok(())
}
