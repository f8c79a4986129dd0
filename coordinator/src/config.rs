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
    /// UDP sockets sharing `listen` (`SO_REUSEPORT`: the kernel keeps each
    /// peer address on one of them), each drained by its own endpoint
    /// task. One task receives for all the peers of a socket, and one
    /// socket for 10,000 agents answering a deployment at once held 15 MB
    /// of datagrams waiting. 0 (the default): one per core, at most
    /// [`MAX_LISTEN_SOCKETS`]. A peer whose address changes mid-connection
    /// (a NAT rebinding) may reach another socket; it is reset and
    /// reconnects.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub listen_sockets: usize,
    /// Bounds on what clients without a certificate and bad streams can
    /// make the coordinator hold.
    #[serde(default, skip_serializing_if = "Limits::is_default")]
    pub limits: Limits,
    /// Where the fleet's records live: absent, sled in `state_dir/db`; an
    /// `[store]` section, an etcd cluster shared by several coordinators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
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
    /// TCP address serving the fleet page (read-only, behind `drover web
    /// login`), e.g. 127.0.0.1:9480; absent: no page. Plain HTTP on a
    /// loopback address, HTTPS anywhere else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_listen: Option<SocketAddr>,
    /// The page's address as browsers reach it, used in login links, e.g.
    /// `https://fleet.example.net:9480`; absent: made from `web_listen`
    /// (an unspecified address becomes the first of `server_names`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// A certificate chain (PEM) and its key for the page's HTTPS, e.g. one
    /// browsers already trust; absent: the coordinator's own certificate,
    /// from the fleet CA (`ca.pem` in the state directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_tls_key: Option<PathBuf>,
    /// HTTPS even on a loopback address (plain HTTP there otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub web_https_on_loopback: bool,
    /// Hypervisors `drover machines provision` makes VMs on
    /// (`[[providers]]`, each with a `kind`: `qemu` or `proxmox`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderConfig>,
}

/// A hypervisor VMs are provisioned on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    Qemu(QemuProviderConfig),
    Proxmox(ProxmoxProviderConfig),
}

impl ProviderConfig {
    pub fn name(&self) -> &str {
        match self {
            ProviderConfig::Qemu(q) => &q.name,
            ProviderConfig::Proxmox(p) => &p.name,
        }
    }

    /// Sizes and deadline for VMs this provider makes.
    pub fn shape(&self) -> VmDefaults {
        match self {
            ProviderConfig::Qemu(q) => VmDefaults { cores: q.cores, memory_mib: q.memory_mib, disk_mib: q.disk_mib, boot_timeout: q.boot_timeout },
            ProviderConfig::Proxmox(p) => VmDefaults { cores: p.cores, memory_mib: p.memory_mib, disk_mib: p.disk_mib, boot_timeout: p.boot_timeout },
        }
    }

    /// The address VMs of this provider dial, as written in their seed.
    pub fn guest_coordinator(&self, listen: SocketAddr) -> String {
        match self {
            ProviderConfig::Qemu(q) => q.guest_coordinator.clone().unwrap_or_else(|| format!("10.0.2.2:{}", listen.port())),
            ProviderConfig::Proxmox(p) => p.guest_coordinator.clone(),
        }
    }

    fn check(&self) -> Result<()> {
        let name = self.name();
        if !drover_protocol::seed::valid_machine_name(name) {
            bail!("providers: name {name:?} must be lowercase letters, digits and dashes");
        }
        let d = self.shape();
        if d.cores == 0 || d.memory_mib < 128 || d.disk_mib < 64 {
            bail!("provider {name}: cores must be at least 1, memory_mib at least 128 and disk_mib at least 64");
        }
        if d.boot_timeout < Duration::from_secs(5) {
            bail!("provider {name}: boot_timeout must be at least 5s");
        }
        match self {
            ProviderConfig::Qemu(q) => {
                if q.max_vms == 0 {
                    bail!("provider {name}: max_vms must be at least 1");
                }
                if q.isolate && q.guest_coordinator.is_some() {
                    bail!("provider {name}: with isolate = true the guests reach the coordinator only at 10.0.2.2 and its listen port; remove guest_coordinator or set isolate = false");
                }
                if !["tcg", "kvm"].contains(&q.accel.as_str()) {
                    bail!("provider {name}: accel must be \"tcg\" or \"kvm\" (kvm only where /dev/kvm runs normal guests)");
                }
            }
            ProviderConfig::Proxmox(p) => {
                if !p.endpoint.starts_with("https://") {
                    bail!("provider {name}: endpoint {:?} must be an https:// URL (Proxmox VE listens on port 8006)", p.endpoint);
                }
                if p.template.is_empty() || !p.template.bytes().all(|b| b.is_ascii_digit()) {
                    bail!("provider {name}: template must be the template VM's numeric id, e.g. \"9000\"");
                }
                if p.guest_coordinator.parse::<drover_net::HostPort>().is_err() {
                    bail!("provider {name}: guest_coordinator must be host:port as the VMs reach the coordinator");
                }
            }
        }
        Ok(())
    }
}

/// Sizes and deadline of new VMs (a provision can ask for other sizes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VmDefaults {
    pub cores: u32,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub boot_timeout: Duration,
}

fn default_cores() -> u32 {
    1
}
fn default_memory_mib() -> u64 {
    512
}
fn default_disk_mib() -> u64 {
    1024
}
fn default_boot_timeout() -> Duration {
    Duration::from_secs(300)
}

/// Real VMs on this machine with `qemu-system-x86_64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuProviderConfig {
    pub name: String,
    /// The guest image: a directory with `vmlinux` and `initrd.img`, built
    /// by `scripts/guest-image.sh DIR`.
    pub image: PathBuf,
    /// Where VM directories (disks, seed, console log) go (default:
    /// STATE_DIR/vms/NAME).
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// The most VMs this provider holds at once.
    #[serde(default = "default_max_vms")]
    pub max_vms: u32,
    /// `tcg` (works everywhere) or `kvm` (where /dev/kvm runs normal guests).
    #[serde(default = "default_accel")]
    pub accel: String,
    /// Run each VM in a network namespace of its own where it reaches only
    /// the coordinator (a relay on its port); needs root. Off: the guests
    /// reach whatever the host reaches.
    #[serde(default = "default_isolate")]
    pub isolate: bool,
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    /// The coordinator's address as the guests dial it (default: the host
    /// through QEMU user networking, 10.0.2.2 and the listen port; with
    /// `isolate`, only that default is possible).
    #[serde(default)]
    pub guest_coordinator: Option<String>,
    /// Cores of a new VM (a provision may ask for others).
    #[serde(default = "default_cores")]
    pub cores: u32,
    /// Memory of a new VM, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// System disk of a new VM, in MiB.
    #[serde(default = "default_disk_mib")]
    pub disk_mib: u64,
    /// How long a new VM may take to boot and enroll before its provision
    /// fails (and the VM is deleted).
    #[serde(with = "humantime_serde", default = "default_boot_timeout")]
    pub boot_timeout: Duration,
}

fn default_max_vms() -> u32 {
    4
}
fn default_isolate() -> bool {
    true
}
fn default_accel() -> String {
    "tcg".into()
}
fn default_qemu() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}

/// A Proxmox VE node, through its REST API with an API token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxProviderConfig {
    pub name: String,
    /// The API's base, e.g. `https://pve1.internal:8006`.
    pub endpoint: String,
    /// A file (mode 0600) holding `USER@REALM!TOKENID=SECRET`.
    pub token_file: PathBuf,
    /// The CA of the API's certificate (PEM), pinned; without it the
    /// system's roots are used. Certificate checks are never turned off.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The node VMs are made on.
    pub node: String,
    /// Storage for clones and data disks (e.g. `local-lvm`, or a
    /// linstor-proxmox DRBD storage).
    pub storage: String,
    /// The template VM's id to clone (full clones).
    pub template: String,
    /// The template's boot disk, grown to the asked size.
    #[serde(default = "default_root_disk")]
    pub root_disk: String,
    /// The coordinator's address as the VMs dial it.
    pub guest_coordinator: String,
    /// The longest one API call may take.
    #[serde(with = "humantime_serde", default = "default_linstor_timeout")]
    pub request_timeout: Duration,
    /// The longest a task (clone, start, delete) may take.
    #[serde(with = "humantime_serde", default = "default_task_timeout")]
    pub task_timeout: Duration,
    /// Cores of a new VM (a provision may ask for others).
    #[serde(default = "default_cores")]
    pub cores: u32,
    /// Memory of a new VM, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// System disk of a new VM, in MiB.
    #[serde(default = "default_disk_mib")]
    pub disk_mib: u64,
    /// How long a new VM may take to boot and enroll before its provision
    /// fails (and the VM is deleted).
    #[serde(with = "humantime_serde", default = "default_boot_timeout")]
    pub boot_timeout: Duration,
}

fn default_root_disk() -> String {
    "virtio0".into()
}
fn default_task_timeout() -> Duration {
    Duration::from_secs(600)
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
    /// Concurrent requests (bi-directional streams) on one admin
    /// connection; a connection without a certificate gets 4.
    pub streams_per_connection: u32,
    /// Concurrent requests on one machine's connection, its event stream
    /// included. QUIC keeps a place for every stream a peer may open, for
    /// the connection's life: an agent asks one thing at a time besides its
    /// events, and more would cost every connection of the fleet.
    pub streams_per_machine: u32,
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
    /// QUIC handshakes in progress at once, over all sources; an Initial
    /// beyond it is dropped without any state kept.
    pub handshakes: usize,
    /// Handshakes in progress at once from one source address.
    pub handshakes_per_address: usize,
    /// Above this many handshakes in progress, a client must first prove
    /// its address (QUIC Retry): a flood of Initials from forged or
    /// half-open sources then costs no connection state.
    pub retry_above: usize,
    /// How long a handshake may take before its connection is dropped
    /// (apart from, and shorter than, the idle timeout).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Connections one machine certificate may hold; a newer one replaces
    /// the oldest (an agent that moved networks still gets in).
    pub connections_per_machine: usize,
    /// Connections one admin may hold; a newer one replaces the oldest.
    pub connections_per_admin: usize,
    /// Of `max_connections`, the places only admins may take, so that a
    /// full coordinator can still be administered.
    pub admin_reserve: usize,
    /// Requests one machine may make per second, on average (bursts up to
    /// ten times as many); more are answered "unavailable, retry after".
    pub machine_requests_per_second: u32,
    /// The same for one admin.
    pub admin_requests_per_second: u32,
    /// Steps one deployment records; more are counted, not kept ("... N
    /// more steps dropped").
    pub deployment_steps: usize,
    /// Connections the metrics endpoint holds at once.
    pub metrics_connections: usize,
    /// How long the metrics endpoint waits for a request's headers.
    #[serde(with = "humantime_serde")]
    pub metrics_header_timeout: Duration,
    /// Connections the fleet page holds at once (as for metrics).
    pub web_connections: usize,
    /// How long the fleet page waits for a request's headers (and, over
    /// HTTPS, for the TLS handshake).
    #[serde(with = "humantime_serde")]
    pub web_header_timeout: Duration,
    /// How long a `drover web login` link opens a session.
    #[serde(with = "humantime_serde")]
    pub web_link_lifetime: Duration,
    /// How long a fleet page session lasts.
    #[serde(with = "humantime_serde")]
    pub web_session_lifetime: Duration,
    /// Audit entries older than this many days are removed.
    pub audit_days: u64,
    /// Audit entries kept at most; beyond it the oldest entries of
    /// operators, viewers and refusal summaries go first, admins' last.
    pub audit_entries: usize,
    /// Refused requests are recorded once, then counted and summarised per
    /// admin once per this interval ("refused 104,999 more").
    #[serde(with = "humantime_serde")]
    pub audit_refusal_summary: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            anonymous_connections: 1_000,
            anonymous_per_address: 100,
            streams_per_connection: 64,
            streams_per_machine: 8,
            frames_in_flight_mib: 256,
            warning_summary_interval: Duration::from_secs(60),
            store_cache_mib: crate::store::DEFAULT_CACHE_BYTES >> 20,
            min_free_disk_mib: 64,
            handshakes: 2_000,
            handshakes_per_address: 200,
            retry_above: 200,
            handshake_timeout: Duration::from_secs(10),
            connections_per_machine: 2,
            connections_per_admin: 16,
            admin_reserve: 64,
            machine_requests_per_second: 50,
            admin_requests_per_second: 200,
            deployment_steps: 100,
            metrics_connections: 64,
            metrics_header_timeout: Duration::from_secs(10),
            web_connections: 64,
            web_header_timeout: Duration::from_secs(10),
            web_link_lifetime: Duration::from_secs(5 * 60),
            web_session_lifetime: Duration::from_secs(12 * 60 * 60),
            audit_days: 400,
            audit_entries: 1_000_000,
            audit_refusal_summary: Duration::from_secs(60),
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
            bail!("limits.streams_per_connection must be at least 2, or an admin's requests wait for one another's streams");
        }
        if self.streams_per_machine < 2 {
            bail!("limits.streams_per_machine must be at least 2 (an agent's event stream and one request)");
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
        if self.handshakes == 0 || self.handshakes_per_address == 0 {
            bail!("limits.handshakes and limits.handshakes_per_address must be at least 1, or nobody can connect");
        }
        if self.handshake_timeout < Duration::from_secs(1) {
            bail!("limits.handshake_timeout must be at least 1s (a handshake over a slow network takes a few round trips)");
        }
        if self.connections_per_machine == 0 || self.connections_per_admin == 0 {
            bail!("limits.connections_per_machine and limits.connections_per_admin must be at least 1");
        }
        if self.machine_requests_per_second == 0 || self.admin_requests_per_second == 0 {
            bail!("limits.machine_requests_per_second and limits.admin_requests_per_second must be at least 1");
        }
        if self.deployment_steps < 16 {
            bail!("limits.deployment_steps must be at least 16 (an apply reports about ten)");
        }
        if self.metrics_connections == 0 || self.web_connections == 0 {
            bail!("limits.metrics_connections and limits.web_connections must be at least 1");
        }
        if self.metrics_header_timeout < Duration::from_millis(100) || self.web_header_timeout < Duration::from_millis(100) {
            bail!("limits.metrics_header_timeout and limits.web_header_timeout must be at least 100ms");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.web_link_lifetime) {
            bail!("limits.web_link_lifetime must be between 1s and 1h (a login link is for the next few minutes)");
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * 24 * 3600)).contains(&self.web_session_lifetime) {
            bail!("limits.web_session_lifetime must be between 1m and 30days");
        }
        if self.audit_days == 0 || self.audit_entries < 1_000 {
            bail!("limits.audit_days must be at least 1 and limits.audit_entries at least 1000");
        }
        if self.audit_refusal_summary < Duration::from_secs(1) {
            bail!("limits.audit_refusal_summary must be at least 1s");
        }
        Ok(())
    }

    /// What of the audit log is kept.
    pub fn audit_retention(&self) -> crate::store::audit::AuditRetention {
        crate::store::audit::AuditRetention { days: self.audit_days, entries: self.audit_entries }
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

/// The fleet's records in an etcd cluster (`[store]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The members' client URLs, e.g. `["https://10.0.0.1:2379", …]`.
    pub etcd_endpoints: Vec<String>,
    /// Every key of this fleet starts with it (several fleets can share a
    /// cluster), e.g. `drover/<fleet id>/`.
    pub prefix: String,
    /// Mutual TLS with the members: the CA of their certificates, and this
    /// coordinator's client certificate and key (PEM files; the key mode
    /// 0600 or stricter). All three or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How long one store call may take before the store counts as
    /// unavailable (no quorum answers).
    #[serde(with = "humantime_serde", default = "default_store_timeout")]
    pub timeout: Duration,
    /// The cluster's `--max-txn-ops` (etcd's default, 128): the most keys
    /// one change may write (a deployment writes about three per machine).
    #[serde(default = "default_max_txn_ops")]
    pub max_txn_ops: usize,
    /// The cluster's `--max-request-bytes` (etcd's default, 1.5 MiB): the
    /// largest change, in bytes. A rollout keeps every machine's state in
    /// one record, so it bounds how many machines one rollout takes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
}

fn default_max_request_bytes() -> usize {
    drover_store::DEFAULT_MAX_REQUEST_BYTES
}

fn default_max_txn_ops() -> usize {
    128
}

fn default_store_timeout() -> Duration {
    Duration::from_secs(5)
}

impl StoreConfig {
    /// Parses `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`; `https` endpoints
    /// when `tls`. Without a prefix, `default_prefix`.
    pub fn from_url(url: &str, tls: bool, default_prefix: &str) -> Result<Self> {
        let Some(rest) = url.strip_prefix("etcd://") else {
            bail!("{url:?} is not an etcd store; write etcd://HOST:PORT[,HOST:PORT…][/PREFIX]");
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, p)) if !p.trim_matches('/').is_empty() => (hosts, format!("{}/", p.trim_end_matches('/'))),
            Some((hosts, _)) => (hosts, default_prefix.to_string()),
            None => (rest, default_prefix.to_string()),
        };
        let scheme = if tls { "https" } else { "http" };
        let etcd_endpoints: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{h}")).collect();
        let config = StoreConfig {
            etcd_endpoints,
            prefix,
            ca_file: None,
            cert_file: None,
            key_file: None,
            timeout: default_store_timeout(),
            max_txn_ops: default_max_txn_ops(),
            max_request_bytes: default_max_request_bytes(),
        };
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<()> {
        if self.etcd_endpoints.is_empty() {
            bail!("store.etcd_endpoints is empty; name at least one etcd member's client URL (three members survive the loss of one)");
        }
        for e in &self.etcd_endpoints {
            let Some(authority) = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://")) else {
                bail!("store.etcd_endpoints: {e:?} is not an http:// or https:// URL");
            };
            if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
                bail!("store.etcd_endpoints: {e:?} must be scheme://HOST:PORT, e.g. https://10.0.0.1:2379");
            }
        }
        if self.prefix.is_empty() || !self.prefix.ends_with('/') || self.prefix.contains(char::is_whitespace) {
            bail!("store.prefix {:?} must be non-empty, end with / and hold no spaces, e.g. \"drover/fleet-a/\"", self.prefix);
        }
        let tls = [&self.ca_file, &self.cert_file, &self.key_file].iter().filter(|f| f.is_some()).count();
        if tls != 0 && tls != 3 {
            bail!("store: give ca_file, cert_file and key_file together (mutual TLS with etcd), or none of them");
        }
        if tls == 3 && self.etcd_endpoints.iter().any(|e| e.starts_with("http://")) {
            bail!("store: with client certificates the endpoints must be https:// URLs");
        }
        if self.timeout < Duration::from_millis(100) {
            bail!("store.timeout must be at least 100ms");
        }
        if self.max_request_bytes < 256 * 1024 {
            bail!(
                "store.max_request_bytes is {}; etcd's default is {} (1.5 MiB) and Drover needs at least 256 KiB",
                self.max_request_bytes,
                default_max_request_bytes()
            );
        }
        if self.max_txn_ops < 16 {
            bail!("store.max_txn_ops is {}; etcd's default is 128 and Drover needs at least 16", self.max_txn_ops);
        }
        Ok(())
    }

    /// The options of the etcd backend, reading the TLS files.
    pub fn etcd_options(&self) -> Result<drover_store::EtcdOptions> {
        let mut options = drover_store::EtcdOptions::new(self.etcd_endpoints.clone(), self.prefix.clone());
        options.timeout = self.timeout;
        options.max_txn_ops = self.max_txn_ops;
        options.max_request_bytes = self.max_request_bytes;
        if let (Some(ca), Some(cert), Some(key)) = (&self.ca_file, &self.cert_file, &self.key_file) {
            use std::os::unix::fs::PermissionsExt;
            let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read store TLS file {}", p.display()));
            let mode = std::fs::metadata(key).with_context(|| format!("cannot read store.key_file {}", key.display()))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!("store.key_file {} is readable by others (mode {mode:o}); run `chmod 600 {}`", key.display(), key.display());
            }
            options.tls = Some(drover_store::EtcdTls { ca_pem: read(ca)?, cert_pem: read(cert)?, key_pem: read(key)? });
        }
        Ok(options)
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
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read s3.admin_token_file {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!("s3.admin_token_file {} is readable by others (mode {mode:o}); run `chmod 600 {}`", path.display(), path.display());
        }
        let token = std::fs::read_to_string(path).with_context(|| format!("cannot read s3.admin_token_file {}", path.display()))?;
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

/// The most `listen_sockets`.
pub const MAX_LISTEN_SOCKETS: usize = 64;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Config {
    /// How many sockets share `listen`: `listen_sockets`, or one per core.
    pub fn sockets(&self) -> usize {
        match self.listen_sockets {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_LISTEN_SOCKETS),
            n => n,
        }
    }
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
            listen_sockets: 0,
            limits: Limits::default(),
            store: None,
            s3: None,
            linstor: None,
            metrics_listen: None,
            web_listen: None,
            web_url: None,
            web_tls_cert: None,
            web_tls_key: None,
            web_https_on_loopback: false,
            providers: Vec::new(),
        }
    }

    /// Whether the fleet page is served over HTTPS.
    pub fn web_https(&self) -> bool {
        self.web_listen.is_some_and(|a| !a.ip().is_loopback() || self.web_https_on_loopback)
    }

    /// The fleet page's address as login links name it, served on `addr`
    /// (`web_listen` as bound).
    pub fn web_base_url(&self, addr: SocketAddr) -> String {
        if let Some(url) = &self.web_url {
            return url.trim_end_matches('/').to_string();
        }
        let scheme = if self.web_https() { "https" } else { "http" };
        let host = if addr.ip().is_unspecified() { self.server_names.first().cloned().unwrap_or_else(|| "localhost".into()) } else { addr.ip().to_string() };
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        format!("{scheme}://{host}:{}", addr.port())
    }

    fn check_web(&self) -> Result<()> {
        if let Some(url) = &self.web_url {
            let scheme_ok = url.starts_with("https://") || (url.starts_with("http://") && !self.web_https());
            if !scheme_ok || url.len() > 512 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("web_url {url:?} must be the page's address as browsers reach it, e.g. \"https://fleet.example.net:9480\" (http:// only when the page is plain HTTP on loopback)");
            }
        }
        if self.web_tls_cert.is_some() != self.web_tls_key.is_some() {
            bail!("web_tls_cert and web_tls_key go together: set both (a PEM chain and its key) or neither (the fleet CA's certificate)");
        }
        if (self.web_url.is_some() || self.web_tls_cert.is_some()) && self.web_listen.is_none() {
            bail!("web_url and web_tls_cert are for the fleet page; set web_listen (e.g. \"127.0.0.1:9480\") to serve it");
        }
        Ok(())
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_checked(path, true)
    }

    /// Reads and checks a configuration file; with `files` false, the files
    /// it names (the S3 admin token) are not read, so that a configuration
    /// can be checked where it is built, before its secrets exist.
    pub fn load_checked(path: &Path, files: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the configuration {}", path.display()))?;
        let config: Config = toml::from_str(&text).with_context(|| format!("{} is not a valid drover configuration", path.display()))?;
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
        if self.listen_sockets > MAX_LISTEN_SOCKETS {
            bail!("listen_sockets is {}; at most {MAX_LISTEN_SOCKETS} (0: one per core)", self.listen_sockets);
        }
        self.limits.check()?;
        if self.advertise.ip().is_unspecified() {
            bail!("advertise must be an address clients can dial, not {}", self.advertise);
        }
        if let Some(store) = &self.store {
            store.check()?;
        }
        if let Some(s3) = &self.s3 {
            s3.check()?;
        }
        if let Some(linstor) = &self.linstor {
            linstor.check()?;
        }
        self.check_web()?;
        let mut names = std::collections::BTreeSet::new();
        for p in &self.providers {
            p.check()?;
            if !names.insert(p.name()) {
                bail!("providers: the name {} is used twice", p.name());
            }
        }
        Ok(())
    }

    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name() == name)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etcd_store_url_names_its_members_and_prefix_and_bad_ones_say_how_to_write_them() {
        let s = StoreConfig::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379/fleets/a", false, "drover/x/").expect("valid");
        assert_eq!(s.etcd_endpoints, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert_eq!(s.prefix, "fleets/a/");
        let tls = StoreConfig::from_url("etcd://h:2379", true, "drover/x/").expect("valid");
        assert_eq!((tls.etcd_endpoints[0].as_str(), tls.prefix.as_str()), ("https://h:2379", "drover/x/"));
        let e = StoreConfig::from_url("http://h:2379", false, "p/").expect_err("not etcd://");
        assert!(e.to_string().contains("etcd://HOST:PORT"), "{e}");
        let e = StoreConfig::from_url("etcd://h/p", false, "p/").expect_err("no port");
        assert!(e.to_string().contains("HOST:PORT"), "{e}");
        let e = StoreConfig::from_url("etcd:///p", false, "p/").expect_err("no member");
        assert!(e.to_string().contains("at least one"), "{e}");
        let mut half = s.clone();
        half.ca_file = Some("/ca.pem".into());
        assert!(half.check().expect_err("half TLS").to_string().contains("together"));
        half.cert_file = Some("/c.pem".into());
        half.key_file = Some("/k.pem".into());
        assert!(half.check().expect_err("TLS over http").to_string().contains("https://"));
    }

    #[test]
    fn the_fleet_page_is_https_off_loopback_and_its_settings_are_checked() {
        let mut c = Config::new("/var/lib/drover".into(), "0.0.0.0:7443".parse().expect("addr"), vec!["coord.example.net".into()]);
        c.web_listen = Some("127.0.0.1:9480".parse().expect("addr"));
        assert!(!c.web_https());
        assert_eq!(c.web_base_url("127.0.0.1:9480".parse().expect("addr")), "http://127.0.0.1:9480");
        c.web_listen = Some("0.0.0.0:9480".parse().expect("addr"));
        assert!(c.web_https(), "off loopback: HTTPS");
        assert_eq!(c.web_base_url("0.0.0.0:9480".parse().expect("addr")), "https://coord.example.net:9480");
        c.web_url = Some("http://fleet.example.net".into());
        assert!(c.check_values().expect_err("http off loopback").to_string().contains("web_url"));
        c.web_url = Some("https://fleet.example.net/".into());
        c.check_values().expect("valid");
        assert_eq!(c.web_base_url("0.0.0.0:9480".parse().expect("addr")), "https://fleet.example.net");
        c.web_tls_cert = Some("/etc/fleet.pem".into());
        assert!(c.check_values().expect_err("cert without key").to_string().contains("together"));
        c.web_listen = None;
        c.web_tls_cert = None;
        assert!(c.check_values().expect_err("url without listen").to_string().contains("set web_listen"));
        c.web_url = None;
        c.limits.web_connections = 0;
        assert!(c.check_values().expect_err("no connection").to_string().contains("web_connections"));
    }

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
    fn listen_sockets_default_to_one_per_core_and_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().expect("addr"), vec!["localhost".into()]);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(config.sockets(), cores.min(MAX_LISTEN_SOCKETS));
        config.listen_sockets = 3;
        assert_eq!(config.sockets(), 3);
        config.listen_sockets = MAX_LISTEN_SOCKETS + 1;
        let e = config.check_values().expect_err("too many sockets");
        assert!(e.to_string().contains("listen_sockets"), "{e}");
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
