//! Arguments of `drover deploy`, `drover rollout` and `drover deployments`.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::*;

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
    /// A health check: unit:NAME, http://HOST:PORT/PATH, tcp:HOST:PORT,
    /// s3:BUCKET (the bucket answers with the credentials the machine got),
    /// or file:PATH[#sha256=HEX] (the file exists, with that digest).
    #[arg(long = "check")]
    pub checks: Vec<String>,
    /// How long the checks may take to pass after the switch.
    #[arg(long, default_value = "60s", value_parser = drover_net::clock::parse_duration)]
    pub health_deadline: Duration,
    /// What to do with the system: switch (activate it and make it the boot
    /// default), boot (the boot default only; the machine reports "reboot
    /// required"), test (activate it, boot default unchanged: a reboot
    /// returns to the previous system), or dry-activate (report the units
    /// that would start, stop, restart or reload; change nothing).
    #[arg(long, default_value = "switch", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<drover_protocol::v1::SwitchGoal>()))]
    pub goal: drover_protocol::v1::SwitchGoal,
    /// Switch even when NixOS' pre-switch checks refuse (without it, such a
    /// system is installed for the next boot and the machine reports
    /// "reboot required").
    #[arg(long)]
    pub force_switch: bool,
    /// Change nothing: print, per target machine, the generation it would
    /// get and what would change against its current assignment (system,
    /// secrets by name, facts, checks, volumes, buckets), with the closures'
    /// package-level diff where the coordinator's Nix store holds both.
    #[arg(long)]
    pub dry_run: bool,
    /// Reboot each machine after its switch and health gate, and verify it
    /// came back on the system it was given (in a rollout, as part of the
    /// machine's turn; a wrong system or no return fails it).
    #[arg(long)]
    pub reboot: bool,
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
    /// A volume the machine mounts before the switch:
    /// NAME:/MOUNT/POINT[:ext4|xfs][,size=20GiB] (repeatable; with --machine
    /// only). The coordinator creates it if missing (then the size is
    /// needed), makes it available on the machine's LINSTOR node (label
    /// `linstor.node`, else the hostname), and the agent formats it only if
    /// it is blank. The machine keeps it in later generations until
    /// `drover volumes detach`.
    #[arg(long = "volume", value_parser = parse_volume, requires = "machine")]
    pub volumes: Vec<drover_protocol::v1::VolumeClaim>,
    /// Deploy also to machines an active rollout holds (refused without
    /// it, naming the rollout); the rollout records the override and leaves
    /// those machines alone.
    #[arg(long)]
    pub override_rollout: bool,
    /// Wait for every machine to finish, showing progress; exit non-zero if any failed.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30m", value_parser = drover_net::clock::parse_duration)]
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
    #[arg(long, default_value = "1", value_parser = parse_cap)]
    pub max_parallel: drover_protocol::v1::Amount,
    /// Machines updating or unhealthy at once (N or P%).
    #[arg(long, default_value = "100%", value_parser = parse_cap)]
    pub max_unavailable: drover_protocol::v1::Amount,
    /// Failures tolerated before the rollout stops (N or P%).
    #[arg(long, default_value = "0", value_parser = parse_amount)]
    pub max_failures: drover_protocol::v1::Amount,
    /// How long a machine may take to succeed.
    #[arg(long, default_value = "10m", value_parser = drover_net::clock::parse_duration)]
    pub healthy_deadline: Duration,
    /// How long a machine must stay healthy to count.
    #[arg(long, default_value = "10s", value_parser = drover_net::clock::parse_duration)]
    pub min_healthy_time: Duration,
    /// How long offline machines are waited for before they are skipped.
    #[arg(long, default_value = "1h", value_parser = drover_net::clock::parse_duration)]
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
    /// A volume each machine mounts before its switch:
    /// NAME:/MOUNT/POINT[:ext4|xfs][,size=20GiB] (repeatable). A volume
    /// goes to one machine: with several targets, put `{hostname}` in the
    /// name (`pg-{hostname}:/var/lib/postgresql,size=20GiB`) to give each
    /// its own. The volumes are made and attached when the rollout starts.
    #[arg(long = "volume", value_parser = parse_volume_template)]
    pub volumes: Vec<drover_protocol::v1::VolumeClaim>,
    /// Snapshot every volume of a machine before it switches; when the
    /// machine is reverted, its volumes are rolled back to that snapshot
    /// before it switches back (so a one-way migration does not survive
    /// into the old generation). Snapshots stay until `drover volumes
    /// snapshots NAME --prune`.
    #[arg(long)]
    pub snapshot_volumes: bool,
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
    Pause {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Go on after a pause.
    Resume {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop for good, leaving machines as they are.
    Abort {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put every machine it changed back on its previous generation.
    Revert {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Go on after healthy canaries.
    Promote {
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Parses `N` or `P%`.
/// `N` or `P%` as a cap on machines at once: zero would stop every rollout
/// before it starts.
pub fn parse_cap(s: &str) -> Result<drover_protocol::v1::Amount, String> {
    let amount = parse_amount(s)?;
    if matches!(amount, drover_protocol::v1::Amount::Count(0) | drover_protocol::v1::Amount::Percent(0)) {
        return Err(format!("{s} would never start a machine: give at least 1, or a percentage above 0%"));
    }
    Ok(amount)
}

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

/// Parses `NAME` or `NAME:public`.
/// `NAME:/MOUNT/POINT[:ext4|xfs][,size=SIZE]`.
pub fn parse_volume(s: &str) -> Result<drover_protocol::v1::VolumeClaim, String> {
    let usage = "expected NAME:/MOUNT/POINT[:ext4|xfs][,size=20GiB]";
    let (main, size) = match s.split_once(',') {
        Some((main, rest)) => {
            let size = rest.strip_prefix("size=").ok_or_else(|| format!("{s:?}: {usage}"))?;
            (main, Some(super::s3::parse_size(size)?))
        }
        None => (s, None),
    };
    let mut parts = main.splitn(3, ':');
    let name = parts.next().unwrap_or_default();
    let mount_point = parts.next().ok_or_else(|| format!("{s:?}: {usage}"))?;
    let filesystem = match parts.next() {
        Some(fs) => fs.parse()?,
        None => drover_protocol::v1::Filesystem::Ext4,
    };
    crate::volume_rules::check_name(name)?;
    crate::volume_rules::check_mount_point(mount_point)?;
    if let Some(size) = size {
        crate::volume_rules::size_kib(size, Some(filesystem))?;
    }
    Ok(drover_protocol::v1::VolumeClaim { name: name.to_string(), mount_point: mount_point.to_string(), filesystem, size_bytes: size })
}

/// As [`parse_volume`], where the name may hold `{hostname}`.
pub fn parse_volume_template(s: &str) -> Result<drover_protocol::v1::VolumeClaim, String> {
    let probe = s.replacen("{hostname}", "h", usize::MAX);
    parse_volume(&probe)?;
    let name = s.split([':', ',']).next().unwrap_or_default();
    let mut claim = parse_volume(&probe)?;
    claim.name = name.to_string();
    Ok(claim)
}

pub fn parse_bucket(s: &str) -> Result<drover_protocol::v1::BucketRequest, String> {
    let (name, public) = match s.split_once(':') {
        Some((name, "public")) => (name, true),
        Some((_, other)) => return Err(format!("{s:?}: expected NAME or NAME:public, not :{other}")),
        None => (s, false),
    };
    crate::s3::check_bucket_name(name).map_err(|e| e.to_string())?;
    Ok(drover_protocol::v1::BucketRequest { name: name.to_string(), public })
}
