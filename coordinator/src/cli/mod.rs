//! The `drover` command line: global flags and the command enum. Each verb's
//! work lives in a module under [`crate::command`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use drover_net::logging::LogFormat;

use crate::output::OutputFormat;

mod deploy;
mod s3;
mod volumes;
pub use deploy::*;
pub use s3::*;
pub use volumes::*;

#[derive(Debug, Parser)]
#[command(name = "drover", version, about = "Drover coordinator and admin CLI: pull-based deployment for fleets of NixOS VMs")]
pub struct Cli {
    /// Log line format (logs go to standard error).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a state directory: fleet CA, server certificate, config, first admin bundle.
    Init(InitArgs),
    /// Run the coordinator.
    ///
    /// It answers agents and admins until SIGTERM or Ctrl-C; then it stops
    /// accepting, closes every connection, lets the requests it is
    /// answering finish (at most 30 s), writes the newest health reports
    /// and exits. On an etcd store it joins the fleet's coordinators (all
    /// serve, one leads); it exits with an error if its lease ran out and
    /// another took over what it led — start it again to serve again.
    Serve(ServeCommandArgs),
    /// Validate a configuration file without starting anything.
    CheckConfig(CheckConfigArgs),
    /// Enrollment tokens that let new machines join.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The machine registry.
    #[command(subcommand)]
    Machines(MachinesCommand),
    /// Admins, their roles and their SSH keys.
    #[command(subcommand)]
    Admins(AdminsCommand),
    /// Operators (tenants) the fleet hosts services for: their domain, admin
    /// account and the admins who manage their machines.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Record a new generation for machines: what system to run, with which
    /// secrets, facts and health checks. Agents hear of it at once.
    Deploy(DeployArgs),
    /// Deployment history.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// Fleet-wide rollouts: canaries, batches, health gates, automatic revert.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// S3 buckets, keys and permissions on the configured provider (Garage).
    #[command(subcommand)]
    S3(S3Command),
    /// Volumes on the block storage (LINSTOR): made, given to one machine
    /// at a time, mounted by its agent, grown, moved, snapshotted.
    #[command(subcommand)]
    Volumes(VolumesCommand),
    /// What a fleet file would change — tenants, machines, buckets, volumes,
    /// services, in dependency order — without changing anything.
    Plan(PlanArgs),
    /// Carry a fleet file out: provision missing VMs and wait for them,
    /// ensure tenants, buckets and volumes, then deploy each service (with
    /// its rollout strategy) once the services it names in `after` are
    /// healthy. Deletes only with --prune. Applying again finishes an apply
    /// that was cut short.
    Apply(ApplyArgs),
    /// The last applied fleet, and what differs from it now.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Show which admin the bundle authenticates as.
    Whoami(AdminArgs),
    /// Write a consistent snapshot of the coordinator's state (store, fleet
    /// CA, server certificate, configuration) to FILE while it serves.
    /// Needs the admin role; the file holds the CA's key: keep it safe.
    Backup(BackupArgs),
    /// Make a new state directory from a backup; a coordinator started on it
    /// serves the same machines, which reconnect without enrolling.
    Restore(RestoreArgs),
    /// What admins changed (and which secrets they looked at), oldest first.
    Audit(AuditArgs),
    /// The fleet's store: move it from the state directory into etcd.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The fleet's coordinators (several on an etcd store, all serving):
    /// which leads, how many agents each holds.
    #[command(subcommand)]
    Coordinators(CoordinatorsCommand),
    /// The fleet page in a browser (served on the coordinator's
    /// web_listen): a one-time link to log in.
    #[command(subcommand)]
    Web(WebCommand),
    /// Run as a NixOps4 resource provider: NixOps4 starts this and sends
    /// requests as JSON lines on standard input; one response line each on
    /// standard output, logs on standard error. Resource types: tenant,
    /// machine, bucket, s3_key, volume, deployment, state (see
    /// docs/nixops4.md). The admin bundle is found as for other commands
    /// (DROVER_ADMIN_BUNDLE).
    Nixops4(AdminArgs),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to create (must not exist or be empty).
    #[arg(long, env = "DROVER_STATE_DIR")]
    pub state_dir: PathBuf,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Address clients dial, if not the listen address.
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// DNS name or IP address for the server certificate (repeatable); the
    /// listen address is added when it is specific.
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Name of the first admin.
    #[arg(long, default_value = "root")]
    pub admin_name: String,
    /// How often agents report health (e.g. 10s).
    #[arg(long, value_parser = drover_net::clock::parse_duration)]
    pub health_interval: Option<Duration>,
    /// Lifetime of machine certificates (e.g. 7d); agents renew at two thirds.
    #[arg(long, value_parser = drover_net::clock::parse_duration)]
    pub machine_cert_lifetime: Option<Duration>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Add this machine as another coordinator of a fleet already in etcd
    /// (--store): DIR holds the fleet CA's ca.pem and ca.key, copied from
    /// the first coordinator by the operator. Makes this coordinator's own
    /// server certificate; the fleet's records and admins stay as they are.
    #[arg(long, value_name = "DIR", requires = "url")]
    pub join: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a stopped coordinator's sled store into an empty etcd store,
    /// check the copy record by record, and point the configuration at
    /// etcd. The sled store is kept (remove it when satisfied).
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The state directory whose store moves (its coordinator stopped).
    #[arg(long, env = "DROVER_STATE_DIR")]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Print the outcome as JSON.
    #[arg(long, value_enum, default_value_t = crate::output::OutputFormat::Table)]
    pub output: crate::output::OutputFormat,
}

#[derive(Debug, Args)]
pub struct ServeCommandArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub flags: ServeFlags,
}

#[derive(Debug, Args)]
pub struct ServeFlags {
    /// No longer needed (accepted for older scripts): every coordinator of
    /// an etcd store serves at once, and one of them leads.
    #[arg(long, hide = true)]
    pub standby: bool,
}

/// Where an etcd store is: `--store` and its client certificates.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// Keep the fleet's records in etcd instead of the state directory:
    /// etcd://HOST:PORT[,HOST:PORT…][/PREFIX] (default prefix
    /// drover/<fleet id>/). Several coordinators can then serve one fleet.
    #[arg(long = "store", value_name = "URL")]
    pub url: Option<String>,
    /// The CA of the etcd members' certificates (PEM); with --etcd-cert and
    /// --etcd-key, mutual TLS over https endpoints.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_cert", "etcd_key"])]
    pub etcd_ca: Option<PathBuf>,
    /// This coordinator's client certificate for etcd (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// Its key (PEM, mode 0600).
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_cert"])]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    pub fn store(&self) -> Option<crate::init::EtcdStoreArgs> {
        self.url.clone().map(|url| crate::init::EtcdStoreArgs {
            url,
            ca_file: self.etcd_ca.clone(),
            cert_file: self.etcd_cert.clone(),
            key_file: self.etcd_key.clone(),
        })
    }
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the backup (must not exist; written with mode 0600).
    pub file: PathBuf,
    /// The backup key that seals the file, so that `restore` can tell it was
    /// not changed: a file of 64 hex digits, kept apart from the backups
    /// (whoever holds both can change a backup unnoticed).
    #[arg(long, value_name = "KEYFILE", env = "DROVER_BACKUP_KEY")]
    pub key: PathBuf,
    /// Make KEYFILE first (it must not exist): a new random key, mode 0600.
    #[arg(long)]
    pub new_key: bool,
    /// Also encrypt the backup with the key (ChaCha20-Poly1305): the file
    /// then reveals nothing — not the fleet CA's key, not a secret — to
    /// whoever lacks the key.
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file written by `drover backup`.
    pub file: PathBuf,
    /// The state directory to make (must not exist, or be empty).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The backup key the file was sealed with (`drover backup --key`).
    #[arg(long, value_name = "KEYFILE", env = "DROVER_BACKUP_KEY")]
    pub key: Option<PathBuf>,
    /// Restore a backup that is not sealed (taken by a drover before
    /// backups were sealed): nothing then shows it was not changed.
    #[arg(long)]
    pub unauthenticated: bool,
    /// Check the file and print what it holds; write nothing.
    #[arg(long)]
    pub check: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries from this long ago on (e.g. 1h, 7d), or from this
    /// RFC 3339 time on (e.g. 2026-11-24T08:00:00Z).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Since>,
    /// Only what this admin did.
    #[arg(long = "admin", visible_alias = "by-admin", value_name = "NAME")]
    pub by_admin: Option<String>,
    /// At most this many entries (the newest).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Write the whole log, oldest first, to this new file as JSON Lines
    /// (one entry per line), page by page — to keep it before the
    /// coordinator prunes it (limits.audit_days, limits.audit_entries).
    /// `--since` and `--admin` do not apply.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["since", "by_admin"])]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `--since`: an age or a point in time.
#[derive(Debug, Clone, Copy)]
pub enum Since {
    Ago(Duration),
    At(std::time::SystemTime),
}

fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(Since::Ago(d));
    }
    humantime::parse_rfc3339_weak(text).map(Since::At).map_err(|_| format!("{text:?} is neither a duration (1h, 7d) nor a time (2026-11-24T08:00:00Z)"))
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Check the values only, not the files they name (the S3 admin token):
    /// for checking a configuration where it is built, e.g. in a Nix build.
    #[arg(long)]
    pub without_files: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (default: STATE_DIR/drover.toml).
    #[arg(long, env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The state directory made by `drover init`.
    #[arg(long, env = "DROVER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// How admin commands find their credentials and print results.
#[derive(Debug, Args, Clone)]
pub struct AdminArgs {
    /// Admin bundle file (default: STATE_DIR/admin.bundle).
    #[arg(long, env = "DROVER_ADMIN_BUNDLE", global = true)]
    pub admin_bundle: Option<PathBuf>,
    /// Dial this coordinator instead of the bundle's (another coordinator
    /// of the same fleet, e.g. the one serving after a failover).
    #[arg(long, env = "DROVER_COORDINATOR", global = true, value_name = "ADDR")]
    pub coordinator: Option<std::net::SocketAddr>,
    /// The coordinator's state directory, to find its admin bundle.
    #[arg(long, env = "DROVER_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; its text is printed once and never stored.
    Create {
        /// Label given to machines that enroll with it (k=v, repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// How long the token can be used.
        #[arg(long, default_value = "1h", value_parser = drover_net::clock::parse_duration)]
        ttl: Duration,
        /// How many machines may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List tokens (never their text).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a token so it enrolls nothing more.
    Revoke {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where a fleet is described.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("fleet_source").required(true).args(["file", "flake"])))]
pub struct FleetSource {
    /// A fleet file (TOML, or JSON).
    pub file: Option<PathBuf>,
    /// A flake output evaluated with `nix eval --json`, e.g. .#droverFleet.
    #[arg(long)]
    pub flake: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub source: FleetSource,
    /// Also plan deleting what the last applied fleet made and this file no
    /// longer names.
    #[arg(long)]
    pub prune: bool,
    /// Save the plan (JSON) for `drover apply --plan FILE`, which carries
    /// out exactly these changes or refuses when the file or the fleet
    /// changed since.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub source: FleetSource,
    /// Delete what the last applied fleet made and this file no longer
    /// names (buckets only when empty; volumes are detached, their data kept).
    #[arg(long)]
    pub prune: bool,
    /// Apply without asking.
    #[arg(long)]
    pub yes: bool,
    /// Carry out a plan saved by `drover plan --out FILE` (no question
    /// asked); refused when the fleet file or the fleet changed since it
    /// was made.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, default_value = "30m", value_parser = drover_net::clock::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum WebCommand {
    /// Print a one-time link that opens a session on the fleet page for
    /// you (any role; the page only shows, it changes nothing). The link
    /// works once, within 5 minutes; the session lasts 12 hours or until
    /// you log out. Open it in a browser that reaches the coordinator's
    /// web_listen; over HTTPS the browser must trust the fleet CA
    /// (ca.pem) or the certificate given as web_tls_cert.
    Login {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CoordinatorsCommand {
    /// Every coordinator announced in the store, the leading one first:
    /// address, role, agents connected, process, since when, when it last
    /// said so, and how long its presence outlives it (on etcd).
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// The fleet `drover apply` applied last: its machines, services' facts,
    /// buckets and volumes.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// What differs from the last applied fleet now: machines offline or on
    /// another generation, buckets or volumes gone.
    Drift {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// List machines, optionally those matching every k=v of a selector.
    List {
        #[arg(long = "selector", short = 's', value_parser = parse_label)]
        selector: Vec<(String, String)>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one machine with its last health report.
    Show {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set labels (k=v) or remove them (k-).
    Label {
        id: String,
        #[arg(required = true)]
        changes: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a machine: its connection is closed and it can never reconnect.
    Revoke {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reboot machines and verify each comes back on its boot default (the
    /// agent compares its boot id and /run/booted-system before and after);
    /// a machine that boots another system or does not come back fails.
    /// After `deploy --goal boot`, this boots the pending system.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "selector"])))]
    Reboot {
        /// The machine to reboot.
        id: Option<String>,
        /// Reboot every machine whose labels match (k=v, repeatable).
        #[arg(long = "selector", short = 's', value_parser = parse_label)]
        selector: Vec<(String, String)>,
        /// Wait until every machine is back and verified, showing progress.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "30m", value_parser = drover_net::clock::parse_duration)]
        wait_timeout: std::time::Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a VM on a provider (`[[providers]]` in drover.toml) that boots
    /// with the agent, enrolls itself with a one-time token from its seed and
    /// becomes the machine NAME. It moves through provisioning, booting,
    /// enrolled and online; a VM that is not online within the provider's
    /// boot_timeout is deleted and the provision fails with its console's
    /// tail. Provisioning a NAME again returns the same provision.
    Provision {
        /// The machine's name (lowercase letters, digits, dashes).
        name: String,
        /// The provider to make the VM on.
        #[arg(long)]
        provider: String,
        /// The provider's template (Proxmox: the template VM's id).
        #[arg(long)]
        template: Option<String>,
        /// Virtual CPUs (default: the provider's).
        #[arg(long)]
        cores: Option<u32>,
        /// Memory, e.g. 4GiB (default: the provider's).
        #[arg(long, value_parser = crate::cli::parse_size, allow_hyphen_values = true)]
        memory: Option<u64>,
        /// System disk, e.g. 32GiB (default: the provider's).
        #[arg(long, value_parser = crate::cli::parse_size, allow_hyphen_values = true)]
        disk: Option<u64>,
        /// A label the machine gets (k=v, repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A data disk, NAME:SIZE:MOUNT[:ext4|xfs] (repeatable): a virtio disk
        /// with serial vol-NAME, formatted only when blank and mounted at MOUNT
        /// with the machine's next deployment.
        #[arg(long = "volume", value_parser = parse_provision_disk)]
        volumes: Vec<drover_protocol::v1::ProvisionDisk>,
        /// Wait until the machine is online, showing its progress.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Destroy a provisioned machine (by name or machine id): it is revoked,
    /// its VM stopped and deleted.
    Destroy {
        /// The provision's name or its machine's id.
        id: String,
        /// Keep the VM's data disks (where the provider can).
        #[arg(long)]
        keep_volumes: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List provisions, failed and destroyed ones included, with why they failed.
    Provisions {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Parses `NAME:SIZE:MOUNT[:FS]`.
pub fn parse_provision_disk(s: &str) -> Result<drover_protocol::v1::ProvisionDisk, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(3..=4).contains(&parts.len()) {
        return Err(format!("{s:?} is not NAME:SIZE:MOUNT[:ext4|xfs], e.g. data:10GiB:/srv/data"));
    }
    Ok(drover_protocol::v1::ProvisionDisk {
        name: parts[0].to_string(),
        size_bytes: crate::cli::parse_size(parts[1])?,
        mount_point: parts[2].to_string(),
        filesystem: match parts.get(3) {
            Some(fs) => crate::cli::parse_filesystem(fs)?,
            None => drover_protocol::v1::Filesystem::Ext4,
        },
    })
}

#[derive(Debug, Subcommand)]
pub enum AdminsCommand {
    /// Add an admin and write their bundle (key made here, never sent).
    Add {
        name: String,
        /// admin, operator or viewer.
        #[arg(long, value_parser = parse_role)]
        role: drover_protocol::v1::Role,
        /// Where to write the new bundle (default: ./NAME.bundle).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List admins and their roles.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Record an SSH public key of an admin. It is installed on the machines
    /// the admin manages (all machines for the admin role, the machines of
    /// their tenants otherwise) with each machine's next generation.
    AddKey {
        name: String,
        /// The public key file, e.g. ~/.ssh/id_ed25519.pub (`-` reads standard input).
        keyfile: PathBuf,
        /// The account on the machines the key logs in to.
        #[arg(long, default_value = crate::tenancy::DEFAULT_LOGIN)]
        login: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove an admin's SSH key; it leaves every machine with the machine's
    /// next generation.
    RemoveKey {
        name: String,
        /// The key's fingerprint (SHA256:..., see `drover admins keys`) or its .pub file.
        key: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List SSH keys, of one admin or of all.
    Keys {
        name: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove an admin: their certificate stops working at once, their SSH
    /// keys leave every machine with its next generation.
    Remove {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Record an operator. Machines labelled tenant=DOMAIN then receive the
    /// facts domain, tenant, admin_user and admin_email, and the generated
    /// admin password as the secret tenant-admin-password, with each new
    /// generation.
    Create {
        /// The operator's domain, e.g. social.example.org.
        domain: String,
        /// The e-mail address of the services' admin account.
        #[arg(long)]
        admin_email: String,
        /// The name of the services' admin account.
        #[arg(long, default_value = crate::tenancy::DEFAULT_ADMIN_USER)]
        admin_user: String,
        /// An admin whose SSH keys reach this tenant's machines (repeatable).
        #[arg(long = "manager")]
        managers: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one tenant.
    Show {
        domain: String,
        /// Also print the generated admin password (operator role needed).
        #[arg(long)]
        show_password: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Forget a tenant (refused while machines carry its label).
    Remove {
        domain: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Change which admins manage a tenant's machines.
    Managers {
        domain: String,
        /// Admins to add (repeatable).
        #[arg(long)]
        add: Vec<String>,
        /// Admins to remove (repeatable).
        #[arg(long)]
        remove: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Parses `key=value`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    crate::registry::parse_label(s)
}

/// Parses a role name.
pub fn parse_role(s: &str) -> Result<drover_protocol::v1::Role, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks: no two arguments with one name, valid aliases.
        super::Cli::command().debug_assert();
    }

    fn error(args: &[&str]) -> String {
        use clap::Parser;
        super::Cli::try_parse_from(args).expect_err("refused").to_string()
    }

    #[test]
    fn bad_durations_and_zero_caps_are_refused_saying_what_to_write() {
        let e = error(&["drover", "tokens", "create", "--ttl", "banana"]);
        assert!(e.contains("'banana' is not a duration") && e.contains("30s, 10m, 1h or 7d"), "{e}");
        for flag in ["--max-parallel", "--max-unavailable"] {
            for zero in ["0", "0%"] {
                let e = error(&["drover", "rollout", "start", "-s", "role=web", "--closure", "/nix/store/x", flag, zero]);
                assert!(e.contains("would never start a machine"), "{flag} {zero}: {e}");
            }
        }
        assert_eq!(drover_protocol::v1::Amount::Percent(25).to_string(), "25%");
        assert_eq!(drover_protocol::v1::Amount::Count(3).to_string(), "3");
    }
}
