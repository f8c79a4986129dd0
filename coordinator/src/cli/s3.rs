//! Arguments of `drover s3`.

use clap::Subcommand;

use super::*;

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
        #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
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
    if s.trim_start().starts_with('-') {
        return Err(format!("{s:?} is negative; a size is a positive amount with a unit, e.g. 20GiB or 512MiB"));
    }
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| format!("{s:?} is not a size (e.g. 10GiB): {e}"))
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
        #[arg(long, value_parser = parse_size, allow_hyphen_values = true)]
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
