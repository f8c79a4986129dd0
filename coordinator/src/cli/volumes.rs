//! Arguments of `drover volumes`.

use clap::Subcommand;

use drover_protocol::v1::Filesystem;

use super::*;

#[derive(Debug, Subcommand)]
pub enum VolumesCommand {
    /// Volumes: size, replicas, which machine holds them.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// One volume: replicas and their disk state, the machine that holds it,
    /// its mount point, filesystem and the used space its agent reports.
    Show {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Create a volume, marked as this fleet's (success if this fleet's
    /// volume exists with the same size; a resource of that name made
    /// elsewhere is refused — see `adopt`). Names: 2 to 48 letters, digits,
    /// '_' and '-', starting with a letter, not `all` or `proxy`; they
    /// ignore case.
    Create {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        /// Its size, e.g. 20GiB (at least 16MiB; 300MiB for xfs).
        #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
        size: u64,
        /// Diskful replicas (default: `linstor.place_count`).
        #[arg(long)]
        replicas: Option<u8>,
        /// Spawn it from this LINSTOR resource group.
        #[arg(long)]
        resource_group: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Grow a volume; the machine that holds it grows its filesystem
    /// (online where the kernel allows, else at the next attach). Shrinking
    /// is refused.
    Resize {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        /// The new size, e.g. 40GiB.
        #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
        size: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Give a volume to a machine: it is made available on the machine's
    /// LINSTOR node and mounted by its agent in a new generation. The agent
    /// formats it only when Drover created it, no machine held it before,
    /// and its device reads as never written; anything else is refused
    /// unchanged. Refused while another machine holds it.
    Attach {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        #[arg(long)]
        machine: String,
        /// Where the machine mounts it.
        #[arg(long = "mount")]
        mount_point: String,
        #[arg(long = "fs", default_value = "ext4", value_parser = parse_filesystem)]
        filesystem: Filesystem,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Take a volume from its machine: the machine gets a generation
    /// without it and unmounts it; then the coordinator takes it off the
    /// machine's node. Its data stays. Returns once the detach has started
    /// (the volume shows "detaching"); `--wait` follows it to the end.
    Detach {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        /// Wait until the volume has left the machine's node.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (the detach goes on).
        #[arg(long, default_value = "10m", value_parser = drover_net::clock::parse_duration)]
        wait_timeout: std::time::Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Take a snapshot.
    Snapshot {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        /// The snapshot's name (default: s<UNIX MILLISECONDS>).
        #[arg(long = "name")]
        snapshot: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List a volume's snapshots; `--prune` deletes them.
    Snapshots {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Return a detached volume to a snapshot (its later data is lost).
    Rollback {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        snapshot: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a detached volume of this fleet and its data (its snapshots
    /// first, with `snapshots NAME --prune`).
    Delete {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        /// Repeat the volume's name to confirm that its data goes.
        #[arg(long = "yes-delete-data", value_name = "NAME", required = true)]
        confirm: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Take over a block storage resource Drover did not make: it is marked
    /// with this fleet's identity and recorded. Drover never formats an
    /// adopted volume unless `allow-format` says so. (Admins only.)
    Adopt {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        /// Repeat the volume's name to confirm the takeover.
        #[arg(long = "yes-adopt", value_name = "NAME", required = true)]
        confirm: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Let the next machine the volume is given to format it whatever its
    /// device holds (once): for a volume you know holds nothing of value
    /// that the blank rule refused. (Admins only; logged and audited.)
    AllowFormat {
        #[arg(value_parser = parse_volume_name)]
        name: String,
        /// Repeat the volume's name to confirm that its data may go.
        #[arg(long = "yes-overwrite", value_name = "NAME", required = true)]
        confirm: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// A volume name, checked before anything is sent (LINSTOR's rules).
pub fn parse_volume_name(s: &str) -> Result<String, String> {
    crate::volume_rules::check_name(s)?;
    Ok(s.to_string())
}

pub fn parse_filesystem(s: &str) -> Result<Filesystem, String> {
    s.parse()
}
