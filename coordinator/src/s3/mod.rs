//! Object storage administration behind [`ObjectStoreAdmin`]: buckets,
//! keys, permissions and the cluster's layout. [`garage::Garage`] implements
//! it over Garage's admin API v2; the test kit's fake (`drover-testkit`) follows the same
//! contract in memory (the contract suite in `tests/system/object_store.rs` runs
//! against both). Every operation that creates something is idempotent: an
//! existing bucket (by global alias) or key (by name) is found and reused.
//! [`probe`] checks a key on the S3 data plane with `aws-sdk-s3`.

pub mod garage;
pub mod probe;

use serde::{Deserialize, Serialize};

/// A bucket as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub id: String,
    pub aliases: Vec<String>,
    pub website: bool,
    pub objects: u64,
    pub bytes: u64,
    /// (access key id, read, write, owner)
    pub keys: Vec<(String, bool, bool, bool)>,
    pub max_size: Option<u64>,
    pub max_objects: Option<u64>,
}

/// An access key. The secret is present only when asked for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub id: String,
    pub name: String,
    pub secret: Option<String>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("id", &self.id).field("name", &self.name).field("secret", &self.secret.as_ref().map(|_| "<redacted>")).finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
    pub owner: bool,
}

/// Why an S3 provisioning call failed. Each has its own remedy.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("the S3 admin endpoint {url} is unreachable: {reason}; is Garage running, and is `s3.admin_endpoint` right?")]
    Unreachable { url: String, reason: String },
    #[error("the S3 admin endpoint refused the admin token (HTTP 403); check `s3.admin_token_file` against Garage's `admin_token`")]
    Unauthorized,
    #[error("bucket name {name:?} is invalid: {reason}")]
    InvalidBucketName { name: String, reason: String },
    #[error("{what} {id:?} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("bucket {0:?} is not empty; delete its objects first")]
    BucketNotEmpty(String),
    #[error("the S3 provider answered {status} {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("the S3 provider's answer was not understood: {0}")]
    Decode(String),
    #[error("{0}")]
    Config(String),
}

/// A cluster role: which node stores how much, in which zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Role {
    pub node: String,
    pub zone: String,
    pub capacity: u64,
}

/// The cluster's health as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterHealth {
    /// `healthy`, `degraded` or `unavailable`.
    pub status: String,
    pub connected_nodes: u64,
    pub partitions: u64,
    pub partitions_all_ok: u64,
}

/// Which nodes are up, and the applied layout's version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub layout_version: u64,
    /// (node id, up)
    pub nodes: Vec<(String, bool)>,
}

/// Checks a bucket name the way S3 does (3-63 characters, lowercase
/// letters, digits, `-` and `.`, starting and ending with a letter or digit),
/// before anything is sent.
pub fn check_bucket_name(name: &str) -> Result<(), S3Error> {
    let invalid = |reason: &str| S3Error::InvalidBucketName { name: name.to_string(), reason: reason.to_string() };
    if name.len() < 3 || name.len() > 63 {
        return Err(invalid("use 3 to 63 characters"));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.') {
        return Err(invalid("use lowercase letters, digits, '-' and '.'"));
    }
    let first = name.chars().next().unwrap_or('-');
    let last = name.chars().last().unwrap_or('-');
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err(invalid("start and end with a letter or digit"));
    }
    if name.contains("..") || name.parse::<std::net::IpAddr>().is_ok() {
        return Err(invalid("no '..' and not an IP address"));
    }
    // Garage's rules beyond S3's: no punycode label, no alias suffix.
    if name.starts_with("xn--") || name.contains(".xn--") {
        return Err(invalid("no label may start with 'xn--' (Garage refuses punycode names)"));
    }
    if name.ends_with("-s3alias") {
        return Err(invalid("it must not end with '-s3alias' (reserved)"));
    }
    Ok(())
}

/// Object storage administration, as Drover needs it: the data the
/// services use (buckets, keys, grants) and the cluster that holds it
/// (node ids, connections, layout, health). One client speaks to one node's
/// admin endpoint.
#[async_trait::async_trait]
pub trait ObjectStoreAdmin: Send + Sync {
    async fn bucket(&self, alias: &str) -> Result<Option<Bucket>, S3Error>;
    async fn buckets(&self) -> Result<Vec<Bucket>, S3Error>;
    /// The bucket with this global alias, created if missing.
    async fn ensure_bucket(&self, alias: &str) -> Result<Bucket, S3Error>;
    async fn delete_bucket(&self, alias: &str) -> Result<(), S3Error>;
    async fn set_website(&self, bucket_id: &str, enabled: bool) -> Result<(), S3Error>;
    async fn set_quotas(&self, bucket_id: &str, max_size: Option<u64>, max_objects: Option<u64>) -> Result<(), S3Error>;
    async fn keys(&self) -> Result<Vec<Key>, S3Error>;
    /// The key with this name (with its secret), created if missing.
    async fn ensure_key(&self, name: &str) -> Result<Key, S3Error>;
    async fn key(&self, name: &str, with_secret: bool) -> Result<Option<Key>, S3Error>;
    async fn delete_key(&self, name: &str) -> Result<(), S3Error>;
    /// Sets exactly these permissions of the key on the bucket.
    async fn grant(&self, bucket_id: &str, key_id: &str, permissions: Permissions) -> Result<(), S3Error>;
    /// Checks on the data plane that a key can put, read back and delete an
    /// object in a bucket, before its credentials are handed out.
    async fn probe(&self, access: &DataAccess<'_>) -> Result<(), S3Error>;

    /// This node's id.
    async fn node_id(&self) -> Result<String, S3Error>;
    /// Connects this node to others (`id@host:port`).
    async fn connect(&self, peers: &[String]) -> Result<(), S3Error>;
    /// The applied layout's roles.
    async fn layout(&self) -> Result<Vec<Role>, S3Error>;
    /// Stages exactly these roles and applies them; returns the new version.
    async fn apply_layout(&self, roles: &[Role]) -> Result<u64, S3Error>;
    async fn health(&self) -> Result<ClusterHealth, S3Error>;
    async fn status(&self) -> Result<ClusterStatus, S3Error>;
}

/// A key's access to a bucket on the data plane.
#[derive(Clone, Copy)]
pub struct DataAccess<'a> {
    /// The S3 endpoint services use.
    pub endpoint: &'a str,
    pub region: &'a str,
    pub key_id: &'a str,
    pub secret: &'a str,
    pub bucket: &'a str,
}

impl std::fmt::Debug for DataAccess<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataAccess").field("endpoint", &self.endpoint).field("key_id", &self.key_id).field("bucket", &self.bucket).finish_non_exhaustive()
    }
}

/// Makes a client for a node's admin endpoint (the coordinator's token is
/// the connector's business).
pub type Connector = std::sync::Arc<dyn Fn(&str) -> Result<std::sync::Arc<dyn ObjectStoreAdmin>, S3Error> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3_and_garage_rules() {
        for ok in ["media", "acme-mastodon-media", "a.b.c", "abc123"] {
            check_bucket_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["ab", "Media", "under_score", "-lead", "trail-", "a..b", "192.168.1.1", &"x".repeat(64), "media-s3alias", "xn--bcher-kva", "a.xn--p1ai"] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }
}
