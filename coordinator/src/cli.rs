//! The `drover` command line: global flags and the command enum. Each verb's
//! work lives in a module under [`crate::command`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use drover_net::logging::LogFormat;

use crate::output::OutputFormat;

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
    Serve(ServeArgs),
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
    /// Show which admin the bundle authenticates as.
    Whoami(AdminArgs),
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
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
    /// Lifetime of machine certificates (e.g. 7d); agents renew at two thirds.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub machine_cert_lifetime: Option<Duration>,
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
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
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
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    crate::registry::check_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Parses a role name.
pub fn parse_role(s: &str) -> Result<drover_protocol::v1::Role, String> {
    s.parse()
}

/// What to deploy: the system, its secrets, facts and health checks.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("system").required(true).args(["flake", "closure"])))]
pub struct WhatArgs {
    /// A flake output: the agent runs `nixos-rebuild switch --flake URI#ATTR`.
    #[arg(long, value_name = "URI#ATTR")]
    pub flake: Option<String>,
    /// A pre-built system closure (/nix/store/...), fetched from --substituter.
    #[arg(long, value_name = "STORE_PATH", requires_all = ["substituters", "trusted_keys"])]
    pub closure: Option<String>,
    /// Binary cache URL the closure is fetched from (repeatable).
    #[arg(long = "substituter")]
    pub substituters: Vec<String>,
    /// Public key that signed the closure (repeatable).
    #[arg(long = "trusted-key")]
    pub trusted_keys: Vec<String>,
    /// A secret for the machines: NAME=@FILE[,mode=0400][,owner=USER][,group=GROUP].
    #[arg(long = "secret", value_name = "NAME=@FILE")]
    pub secrets: Vec<String>,
    /// A fact for the configuration to read from facts.json (k=v, repeatable).
    #[arg(long = "fact", value_parser = parse_fact)]
    pub facts: Vec<(String, String)>,
    /// A health check: unit:NAME, http://HOST:PORT/PATH, tcp:HOST:PORT, or
    /// s3:BUCKET (the bucket answers with the credentials the machine got).
    #[arg(long = "check")]
    pub checks: Vec<String>,
    /// How long the checks may take to pass after the switch.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub health_deadline: Duration,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["machine", "selector"])))]
pub struct DeployArgs {
    /// The machine to deploy to.
    #[arg(long)]
    pub machine: Option<String>,
    /// Deploy to every machine whose labels match (k=v, repeatable).
    #[arg(long = "selector", short = 's', value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    #[command(flatten)]
    pub what: WhatArgs,
    /// A bucket the machines need: NAME or NAME:public (repeatable). The
    /// coordinator makes it and a key for it, checks the key works, and hands
    /// the credentials and facts to these machines only.
    #[arg(long = "bucket", value_parser = parse_bucket)]
    pub buckets: Vec<drover_protocol::v1::BucketRequest>,
    /// Wait for every machine to finish, showing progress; exit non-zero if any failed.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct RolloutStartArgs {
    /// The machines to roll out to: every machine matching all pairs (k=v,
    /// repeatable). The set is frozen when the rollout starts.
    #[arg(long = "selector", short = 's', value_parser = parse_label, required = true)]
    pub selector: Vec<(String, String)>,
    #[command(flatten)]
    pub what: WhatArgs,
    /// Machines updated first; the rest wait until they are healthy.
    #[arg(long, default_value_t = 0)]
    pub canary: u32,
    /// Machines in transition at once (N or P%).
    #[arg(long, default_value = "1", value_parser = parse_amount)]
    pub max_parallel: drover_protocol::v1::Amount,
    /// Machines updating or unhealthy at once (N or P%).
    #[arg(long, default_value = "100%", value_parser = parse_amount)]
    pub max_unavailable: drover_protocol::v1::Amount,
    /// Failures tolerated before the rollout stops (N or P%).
    #[arg(long, default_value = "0", value_parser = parse_amount)]
    pub max_failures: drover_protocol::v1::Amount,
    /// How long a machine may take to succeed.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub healthy_deadline: Duration,
    /// How long a machine must stay healthy to count.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub min_healthy_time: Duration,
    /// How long offline machines are waited for before they are skipped.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub progress_deadline: Duration,
    /// On stop, put every machine the rollout changed back on its previous generation.
    #[arg(long)]
    pub auto_revert: bool,
    /// Go on after healthy canaries without `drover rollout promote`.
    #[arg(long)]
    pub auto_promote: bool,
    /// A bucket the machines need: NAME or NAME:public (repeatable); made
    /// ready before the rollout starts.
    #[arg(long = "bucket", value_parser = parse_bucket)]
    pub buckets: Vec<drover_protocol::v1::BucketRequest>,
    /// Follow the rollout until it ends; exit non-zero unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Roll a change through the fleet in stages.
    Start(Box<RolloutStartArgs>),
    /// Phase, progress and every machine of a rollout.
    Status {
        id: String,
        /// Follow it live until it stops moving.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// All rollouts.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Start no more machines until resumed.
    Pause { id: String, #[command(flatten)] admin: AdminArgs },
    /// Go on after a pause.
    Resume { id: String, #[command(flatten)] admin: AdminArgs },
    /// Stop for good, leaving machines as they are.
    Abort { id: String, #[command(flatten)] admin: AdminArgs },
    /// Put every machine it changed back on its previous generation.
    Revert { id: String, #[command(flatten)] admin: AdminArgs },
    /// Go on after healthy canaries.
    Promote { id: String, #[command(flatten)] admin: AdminArgs },
}

/// Parses `N` or `P%`.
pub fn parse_amount(s: &str) -> Result<drover_protocol::v1::Amount, String> {
    use crate::rollout::plan::Amount;
    Ok(match Amount::parse(s)? {
        Amount::Count(n) => drover_protocol::v1::Amount::Count(n),
        Amount::Percent(p) => drover_protocol::v1::Amount::Percent(p),
    })
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// List deployments, oldest first.
    List {
        #[arg(long)]
        machine: Option<String>,
        /// Only the deployments (and reverts) of this rollout.
        #[arg(long, conflicts_with = "machine")]
        rollout: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one deployment: its steps with timestamps, outcome and output tail.
    Show {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Parses `key=value` for facts (any non-empty key).
pub fn parse_fact(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[derive(Debug, Subcommand)]
pub enum S3Command {
    /// Buckets.
    #[command(subcommand)]
    Buckets(BucketsCommand),
    /// Access keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The Garage cluster: record nodes, form it, watch it.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Set exactly these permissions of a key on a bucket.
    Grant {
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        read: bool,
        #[arg(long)]
        write: bool,
        #[arg(long)]
        owner: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum BucketsCommand {
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Create a bucket (or find the existing one of that name).
    Create {
        name: String,
        /// Serve it publicly through the web endpoint (media).
        #[arg(long)]
        public: bool,
        /// Largest total size, e.g. 10GiB.
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        /// Most objects.
        #[arg(long)]
        max_objects: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    Show {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete an empty bucket.
    Delete {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Create a key (or find the existing one of that name).
    Create {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    Show {
        name: String,
        /// Also print the secret access key.
        #[arg(long)]
        show_secret: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    Delete {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Parses a size such as `10GiB`, `500 MB` or `1073741824`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size (e.g. 10GiB): {e}"))
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Record a Garage node (it joins at `apply`): by its addresses, or a
    /// Drover machine by its labels (garage.admin, garage.rpc, garage.zone,
    /// garage.capacity).
    #[command(group(clap::ArgGroup::new("node").required(true).args(["admin", "machine"])))]
    AddNode {
        /// The node's admin API, e.g. http://10.0.0.11:3903.
        #[arg(long, requires_all = ["rpc", "zone", "capacity"])]
        admin: Option<String>,
        /// The node's RPC address (rpc_public_addr), e.g. 10.0.0.11:3901.
        #[arg(long)]
        rpc: Option<String>,
        /// Its zone (one per failure domain; three zones for replication 3).
        #[arg(long)]
        zone: Option<String>,
        /// Storage it offers, e.g. 1TiB.
        #[arg(long, value_parser = parse_size)]
        capacity: Option<u64>,
        /// A Drover machine running Garage, described by its labels.
        #[arg(long, conflicts_with_all = ["admin", "rpc", "zone", "capacity"])]
        machine: Option<String>,
        #[command(flatten)]
        admin_args: AdminArgs,
    },
    /// Connect the nodes, apply the layout, wait until healthy.
    Apply {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Nodes, zones, health and partitions.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Parses `NAME` or `NAME:public`.
pub fn parse_bucket(s: &str) -> Result<drover_protocol::v1::BucketRequest, String> {
    let (name, public) = match s.split_once(':') {
        Some((name, "public")) => (name, true),
        Some((_, other)) => return Err(format!("{s:?}: expected NAME or NAME:public, not :{other}")),
        None => (s, false),
    };
    crate::s3::check_bucket_name(name).map_err(|e| e.to_string())?;
    Ok(drover_protocol::v1::BucketRequest { name: name.to_string(), public })
}
