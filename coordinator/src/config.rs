//! The coordinator's configuration file (`drover.toml` in the state
//! directory), read with `deny_unknown_fields` and checked before anything
//! starts (`drover check-config`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// File name of the configuration inside the state directory.
pub const CONFIG_FILE: &str = "drover.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the coordinator keeps its store, CA and keys (mode 0700).
    pub state_dir: PathBuf,
    /// UDP address the QUIC endpoint listens on.
    pub listen: SocketAddr,
    /// The address agents and admins dial (written into admin bundles).
    pub advertise: SocketAddr,
    /// Names and addresses in the server certificate; the first is the name
    /// clients verify by default.
    pub server_names: Vec<String>,
    /// Lifetime of machine certificates; agents renew at two thirds.
    #[serde(with = "humantime_serde", default = "default_machine_cert_lifetime")]
    pub machine_cert_lifetime: Duration,
    /// How often agents report health; three missed intervals make a
    /// machine offline.
    #[serde(with = "humantime_serde", default = "default_health_interval")]
    pub health_interval: Duration,
    /// A QUIC connection with no traffic for this long is closed.
    #[serde(with = "humantime_serde", default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// The most connections held at once; more are refused at once (the
    /// agents back off and come again). Bounds what clients can make the
    /// coordinator hold.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Bounds on what clients without a certificate and bad streams can
    /// make the coordinator hold.
    #[serde(default, skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
    /// Object storage (Garage) for buckets and keys; absent: no S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
    /// Block storage (LINSTOR) for volumes; absent: no volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linstor: Option<LinstorConfig>,
    /// TCP address serving Prometheus metrics at `/metrics` (plain HTTP,
    /// e.g. 127.0.0.1:9465); absent: no metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Bounds on the resources clients can make the coordinator hold, beside
/// `max_connections`. Enrolled agents and admins have their own share:
/// anonymous connections (enrollment) never take more than their cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections without a certificate held at once, in total.
    pub anonymous_connections: usize,
    /// Connections without a certificate held at once from one source
    /// address (raise it for many new VMs behind one NAT address).
    pub anonymous_per_address: usize,
    /// Concurrent requests (bi-directional streams) on one agent or admin
    /// connection; a connection without a certificate gets 4.
    pub streams_per_connection: u32,
    /// Memory for request frames in flight on all connections together, in
    /// MiB: an eighth for connections without a certificate, a quarter for
    /// admins, the rest for machines. Bytes are reserved as they arrive;
    /// when a share is used up, new requests of its kind are refused with
    /// "unavailable" until frames complete.
    pub frames_in_flight_mib: u64,
    /// Repeated warnings from one peer (bad streams) are summarised once per
    /// this interval ("412 bad streams from 198.51.100.7 in the last 1m").
    #[serde(with = "humantime_serde")]
    pub warning_summary_interval: Duration,
    /// Memory for the store's page cache, in MiB; what does not fit is read
    /// from disk. The store's history (deployments, audit) grows; this
    /// does not.
    pub store_cache_mib: u64,
    /// Changes are refused (with an error saying so; reads keep working)
    /// while the state directory's filesystem has less free space than
    /// this, in MiB, so that the store never reaches the end of its disk.
    pub min_free_disk_mib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            anonymous_connections: 1_000,
            anonymous_per_address: 100,
            streams_per_connection: 64,
            frames_in_flight_mib: 256,
            warning_summary_interval: Duration::from_secs(60),
            store_cache_mib: crate::store::DEFAULT_CACHE_BYTES >> 20,
            min_free_disk_mib: 64,
        }
    }
}

impl Limits {
    fn is_default(&self) -> bool {
        *self == Limits::default()
    }

    fn check(&self) -> Result<()> {
        if self.anonymous_connections == 0 || self.anonymous_per_address == 0 {
            bail!("limits.anonymous_connections and limits.anonymous_per_address must be at least 1, or no machine can enroll");
        }
        if self.streams_per_connection < 2 {
            bail!("limits.streams_per_connection must be at least 2 (an agent's event stream and one request)");
        }
        if self.frames_in_flight_mib < 64 {
            bail!("limits.frames_in_flight_mib must be at least 64 (admins get a quarter of it, which must hold two of the largest frames, 8 MiB each)");
        }
        if !(8..=1 << 20).contains(&self.store_cache_mib) {
            bail!("limits.store_cache_mib must be between 8 and 1048576 (MiB)");
        }
        if self.min_free_disk_mib < 16 {
            bail!("limits.min_free_disk_mib must be at least 16: the store needs room to write its log");
        }
        if self.warning_summary_interval < Duration::from_secs(1) {
            bail!("limits.warning_summary_interval must be at least 1s");
        }
        Ok(())
    }
}

/// Where the LINSTOR controller is and how volumes are placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinstorConfig {
    /// The controller's REST API, e.g. `http://linstor.internal:3370` or
    /// `https://linstor.internal:3371`.
    pub controller: String,
    /// The CA that signed the controller's HTTPS certificate (PEM); without
    /// it the system's roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A PEM file with Drover's client certificate and key, for a
    /// controller that asks for one.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// Volumes are spawned from this resource group, when set.
    #[serde(default)]
    pub resource_group: Option<String>,
    /// Otherwise placed in this storage pool (LINSTOR's default when unset).
    #[serde(default)]
    pub storage_pool: Option<String>,
    /// Diskful replicas of a new volume.
    #[serde(default = "default_place_count")]
    pub place_count: u8,
    /// The longest one call to the controller may take.
    #[serde(with = "humantime_serde", default = "default_linstor_timeout")]
    pub request_timeout: Duration,
    /// How long a volume may take to become ready on a node.
    #[serde(with = "humantime_serde", default = "default_ready_timeout")]
    pub ready_timeout: Duration,
}

fn default_place_count() -> u8 {
    2
}

fn default_linstor_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_ready_timeout() -> Duration {
    Duration::from_secs(120)
}

impl LinstorConfig {
    /// Defaults for everything but the controller.
    pub fn new(controller: impl Into<String>) -> Self {
        LinstorConfig {
            controller: controller.into(),
            ca_file: None,
            client_certificate: None,
            resource_group: None,
            storage_pool: None,
            place_count: default_place_count(),
            request_timeout: default_linstor_timeout(),
            ready_timeout: default_ready_timeout(),
        }
    }

    fn check(&self) -> Result<()> {
        if !(self.controller.starts_with("http://") || self.controller.starts_with("https://")) {
            bail!("linstor.controller {:?} must be an http:// or https:// URL (port 3370, or 3371 for HTTPS)", self.controller);
        }
        if self.place_count == 0 {
            bail!("linstor.place_count must be at least 1");
        }
        if self.request_timeout < Duration::from_millis(100) {
            bail!("linstor.request_timeout must be at least 100ms");
        }
        Ok(())
    }
}

/// Where the S3 provider (Garage) is and how services reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Garage's admin API, e.g. `http://10.0.0.10:3903`.
    pub admin_endpoint: String,
    /// A file holding Garage's admin token (mode 0600 or stricter).
    pub admin_token_file: PathBuf,
    /// The S3 endpoint services use (the cluster's, never a machine's own
    /// localhost), e.g. `http://s3.internal:3900`.
    pub s3_endpoint: String,
    /// The S3 region (Garage's `s3_region`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Public URL of a bucket with website access; `{bucket}` is replaced,
    /// e.g. `https://{bucket}.web.example.net`.
    #[serde(default)]
    pub public_url: Option<String>,
}

fn default_region() -> String {
    "garage".into()
}

impl S3Config {
    /// Reads the admin token, refusing a file others can read.
    pub fn admin_token(&self) -> Result<String> {
        use std::os::unix::fs::PermissionsExt;
        let path = &self.admin_token_file;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read s3.admin_token_file {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!("s3.admin_token_file {} is readable by others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display());
        }
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read s3.admin_token_file {}", path.display()))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            bail!("s3.admin_token_file {} is empty", path.display());
        }
        Ok(token)
    }

    /// The public URL of a bucket, where one is configured.
    pub fn public_url_of(&self, bucket: &str) -> Option<String> {
        self.public_url.as_ref().map(|t| t.replace("{bucket}", bucket))
    }

    fn check(&self) -> Result<()> {
        for (name, url) in [("admin_endpoint", &self.admin_endpoint), ("s3_endpoint", &self.s3_endpoint)] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("s3.{name} {url:?} must be an http:// or https:// URL");
            }
        }
        Ok(())
    }
}

fn default_machine_cert_lifetime() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_health_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections() -> usize {
    50_000
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    /// A configuration with defaults for everything but the addresses.
    pub fn new(state_dir: PathBuf, listen: SocketAddr, server_names: Vec<String>) -> Self {
        let advertise = if listen.ip().is_unspecified() {
            let ip = if listen.is_ipv6() { "::1" } else { "127.0.0.1" };
            SocketAddr::new(ip.parse().expect("literal address"), listen.port())
        } else {
            listen
        };
        Config {
            state_dir,
            listen,
            advertise,
            server_names,
            machine_cert_lifetime: default_machine_cert_lifetime(),
            health_interval: default_health_interval(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            limits: Limits::default(),
            s3: None,
            linstor: None,
            metrics_listen: None,
        }
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_checked(path, true)
    }

    /// Reads and checks a configuration file; with `files` false, the files
    /// it names (the S3 admin token) are not read, so that a configuration
    /// can be checked where it is built, before its secrets exist.
    pub fn load_checked(path: &Path, files: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid drover configuration", path.display()))?;
        config.check_values().with_context(|| format!("in {}", path.display()))?;
        if files {
            if let Some(s3) = &config.s3 {
                s3.admin_token().with_context(|| format!("in {}", path.display()))?;
            }
        }
        Ok(config)
    }

    /// Checks values and the files they name.
    pub fn check(&self) -> Result<()> {
        self.check_values()?;
        if let Some(s3) = &self.s3 {
            s3.admin_token()?;
        }
        Ok(())
    }

    /// Checks values that parse but make no sense, without reading files.
    pub fn check_values(&self) -> Result<()> {
        if self.server_names.is_empty() {
            bail!("server_names is empty; name at least one DNS name or IP address clients dial");
        }
        if self.machine_cert_lifetime < Duration::from_secs(10) {
            bail!("machine_cert_lifetime must be at least 10s (agents renew at two thirds of it)");
        }
        if self.health_interval < Duration::from_millis(100) {
            bail!("health_interval must be at least 100ms");
        }
        if self.idle_timeout < Duration::from_secs(1) {
            bail!("idle_timeout must be at least 1s");
        }
        if self.max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        self.limits.check()?;
        if self.advertise.ip().is_unspecified() {
            bail!("advertise must be an address clients can dial, not {}", self.advertise);
        }
        if let Some(s3) = &self.s3 {
            s3.check()?;
        }
        if let Some(linstor) = &self.linstor {
            linstor.check()?;
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_can_be_checked_before_its_secret_files_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("drover.toml");
        let mut config = Config::new(dir.path().join("state"), "127.0.0.1:7443".parse().expect("addr"), vec!["coord".into()]);
        config.s3 = Some(S3Config {
            admin_endpoint: "http://127.0.0.1:3903".into(),
            admin_token_file: dir.path().join("missing-token"),
            s3_endpoint: "http://127.0.0.1:3900".into(),
            region: "garage".into(),
            public_url: None,
        });
        std::fs::write(&path, config.to_toml()).expect("write");
        assert!(Config::load_checked(&path, false).is_ok());
        let e = Config::load_checked(&path, true).expect_err("the token file is missing");
        assert!(format!("{e:#}").contains("admin_token_file"), "{e:#}");
        std::fs::write(&path, config.to_toml().replace("http://127.0.0.1:3900", "s3.example")).expect("write");
        let e = Config::load_checked(&path, false).expect_err("bad URL");
        assert!(format!("{e:#}").contains("s3.s3_endpoint"), "{e:#}");
        std::fs::write(&path, format!("{}\nlisten_typo = 1\n", config.to_toml())).expect("write");
        assert!(Config::load_checked(&path, false).is_err(), "unknown keys are refused");
    }

    #[test]
    fn limits_out_of_range_are_refused_by_name() {
        type Change = fn(&mut Limits);
        let cases: [(Change, &str); 4] = [
            (|l| l.anonymous_connections = 0, "limits.anonymous_connections"),
            (|l| l.frames_in_flight_mib = 8, "limits.frames_in_flight_mib"),
            (|l| l.store_cache_mib = 1, "limits.store_cache_mib"),
            (|l| l.min_free_disk_mib = 0, "limits.min_free_disk_mib"),
        ];
        assert!(Limits::default().check().is_ok());
        for (change, name) in cases {
            let mut limits = Limits::default();
            change(&mut limits);
            let e = limits.check().expect_err(name);
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = "state_dir = \"/x\"\nlisten = \"127.0.0.1:1\"\nadvertise = \"127.0.0.1:1\"\nserver_names = [\"a\"]\nbogus = 1\n";
        let err = toml::from_str::<Config>(text).expect_err("unknown field");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn the_s3_admin_token_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "abc\n").expect("write");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let s3 = S3Config {
            admin_endpoint: "http://127.0.0.1:3903".into(),
            admin_token_file: token.clone(),
            s3_endpoint: "http://127.0.0.1:3900".into(),
            region: "garage".into(),
            public_url: Some("https://{bucket}.web.example.net".into()),
        };
        assert!(s3.admin_token().expect_err("readable").to_string().contains("chmod 600"));
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(s3.admin_token().expect("token"), "abc");
        assert_eq!(s3.public_url_of("media").as_deref(), Some("https://media.web.example.net"));
    }

    #[test]
    fn written_config_reads_back_with_defaults() {
        let c = Config::new("/s".into(), "0.0.0.0:7443".parse().expect("addr"), vec!["localhost".into()]);
        assert_eq!(c.advertise.to_string(), "127.0.0.1:7443");
        let back: Config = toml::from_str(&c.to_toml()).expect("parse");
        assert_eq!(back.health_interval, Duration::from_secs(10));
        back.check().expect("valid");
    }
}
