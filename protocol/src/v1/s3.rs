//! S3 through the coordinator: buckets, keys, grants and the Garage cluster.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum S3Request {
    BucketsList,
    BucketCreate {
        name: String,
        public: bool,
        max_size: Option<u64>,
        max_objects: Option<u64>,
    },
    BucketShow {
        name: String,
    },
    BucketDelete {
        name: String,
    },
    KeysList,
    KeyCreate {
        name: String,
    },
    KeyShow {
        name: String,
        show_secret: bool,
    },
    KeyDelete {
        name: String,
    },
    Grant {
        bucket: String,
        key: String,
        read: bool,
        write: bool,
        owner: bool,
    },
    /// Records a Garage node for the cluster (its admin API and RPC address).
    ClusterAddNode {
        admin: String,
        rpc: String,
        zone: String,
        capacity: u64,
    },
    /// Connects the recorded nodes, applies the layout, waits until healthy.
    ClusterApply,
    ClusterStatus,
    /// Records a Garage node that is a Drover machine, from its labels
    /// `garage.admin`, `garage.rpc`, `garage.zone` and `garage.capacity`.
    ClusterAddMachine {
        machine: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum S3Response {
    Buckets(Vec<S3Bucket>),
    Bucket(S3Bucket),
    Keys(Vec<S3Key>),
    Key(S3Key),
    Done,
    Cluster(S3Cluster),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Node {
    pub id: Option<String>,
    pub admin: String,
    pub rpc: String,
    pub zone: String,
    pub capacity: u64,
    /// As the cluster sees it; `false` while the node is down.
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Cluster {
    /// healthy, degraded or unavailable (Garage's words); unknown when no
    /// node answered.
    pub health: String,
    pub layout_version: u64,
    pub partitions: u64,
    pub partitions_all_ok: u64,
    pub nodes: Vec<S3Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Grant {
    pub key_id: String,
    pub read: bool,
    pub write: bool,
    pub owner: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Bucket {
    pub id: String,
    pub aliases: Vec<String>,
    pub website: bool,
    pub public_url: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    pub grants: Vec<S3Grant>,
    pub max_size: Option<u64>,
    pub max_objects: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct S3Key {
    pub id: String,
    pub name: String,
    /// Only when asked for (`--show-secret`).
    pub secret: Option<Secret>,
}

/// A bucket a deployment needs (`--bucket NAME[:public]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BucketRequest {
    pub name: String,
    /// Served publicly through the web endpoint (media).
    pub public: bool,
}
