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
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Create a volume (success if it exists with the same size).
    Create {
        name: String,
        /// Its size, e.g. 20GiB.
        #[arg(long, value_parser = parse_size)]
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
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Give a volume to a machine: it is made available on the machine's
    /// LINSTOR node and mounted by its agent in a new generation (formatted
    /// only if blank). Refused while another machine holds it.
    Attach {
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
    /// Take a volume from its machine: the agent unmounts it (a generation
    /// without it), then it leaves the machine's node. Its data stays.
    Detach {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Take a snapshot.
    Snapshot {
        name: String,
        /// The snapshot's name (default: s<UNIX MILLISECONDS>).
        #[arg(long = "name")]
        snapshot: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List a volume's snapshots; `--prune` deletes them.
    Snapshots {
        name: String,
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Return a detached volume to a snapshot (its later data is lost).
    Rollback {
        name: String,
        snapshot: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a detached volume and its data.
    Delete {
        name: String,
        /// Repeat the volume's name to confirm that its data goes.
        #[arg(long = "yes-delete-data", value_name = "NAME", required = true)]
        confirm: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub fn parse_filesystem(s: &str) -> Result<Filesystem, String> {
    s.parse()
}
