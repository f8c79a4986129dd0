//! An object store in memory that keeps [`ObjectStoreAdmin`]'s contract the
//! way Garage does: buckets by global alias, keys by name with generated ids
//! and secrets, exact grants, quotas, website access, and a cluster whose
//! nodes, connections and layout versions behave like Garage's. Several
//! clients (one per node endpoint) share one cluster. The contract suite
//! (`drover_testkit::contract::object_store`) runs against it and against real Garage, so
//! the two stay interchangeable behind the trait.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use drover_coordinator::s3::{
    check_bucket_name, Bucket, ClusterHealth, ClusterStatus, Connector, DataAccess, Key, ObjectStoreAdmin, Permissions, Role, S3Error,
};

#[derive(Default)]
struct State {
    buckets: BTreeMap<String, Bucket>,
    keys: BTreeMap<String, Key>,
    next: u64,
    /// endpoint → node id
    nodes: BTreeMap<String, String>,
    down: BTreeSet<String>,
    connected: BTreeSet<String>,
    roles: Vec<Role>,
    version: u64,
    unreachable: bool,
}

/// One fake cluster; [`FakeObjectStore::client`] speaks to one of its nodes.
#[derive(Clone, Default)]
pub struct FakeCluster {
    state: Arc<Mutex<State>>,
}

/// A client of one node of a [`FakeCluster`].
pub struct FakeObjectStore {
    cluster: FakeCluster,
    endpoint: String,
}

impl FakeCluster {
    pub fn new() -> Self {
        FakeCluster::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client of the node at `endpoint` (added to the cluster if new).
    pub fn client(&self, endpoint: &str) -> FakeObjectStore {
        let mut s = self.lock();
        if !s.nodes.contains_key(endpoint) {
            s.next += 1;
            let id = format!("{:064x}", s.next);
            s.nodes.insert(endpoint.to_string(), id);
        }
        FakeObjectStore { cluster: self.clone(), endpoint: endpoint.to_string() }
    }

    /// A connector for the coordinator that hands out this cluster's clients.
    pub fn connector(&self) -> Connector {
        let cluster = self.clone();
        Arc::new(move |endpoint: &str| Ok(Arc::new(cluster.client(endpoint)) as Arc<dyn ObjectStoreAdmin>))
    }

    /// Every call fails as if the admin endpoint were down.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
    }

    /// Stops or starts the node at `endpoint`.
    pub fn set_down(&self, endpoint: &str, down: bool) {
        let mut s = self.lock();
        if down {
            s.down.insert(endpoint.to_string());
        } else {
            s.down.remove(endpoint);
        }
    }
}

impl FakeObjectStore {
    fn state(&self) -> Result<MutexGuard<'_, State>, S3Error> {
        let s = self.cluster.lock();
        if s.unreachable || s.down.contains(&self.endpoint) {
            return Err(S3Error::Unreachable { url: self.endpoint.clone(), reason: "connection refused".into() });
        }
        Ok(s)
    }
}

fn bucket_by_id<'a>(s: &'a mut State, id: &str) -> Result<&'a mut Bucket, S3Error> {
    s.buckets.values_mut().find(|b| b.id == id).ok_or(S3Error::NotFound { what: "bucket", id: id.into() })
}

#[async_trait::async_trait]
impl ObjectStoreAdmin for FakeObjectStore {
    /// As Garage answers: the key must exist with that secret and be
    /// granted read and write on the bucket.
    async fn probe(&self, access: &DataAccess<'_>) -> Result<(), S3Error> {
        let s = self.state()?;
        let denied =
            |why: &str| S3Error::Api { status: 403, code: "AccessDenied".into(), message: format!("the key cannot write to bucket {}: {why}", access.bucket) };
        let key = s.keys.values().find(|k| k.id == access.key_id).ok_or_else(|| denied("no such key"))?;
        if key.secret.as_deref() != Some(access.secret) {
            return Err(denied("wrong secret"));
        }
        let bucket = s.buckets.values().find(|b| b.aliases.iter().any(|a| a == access.bucket)).ok_or_else(|| denied("no such bucket"))?;
        if !bucket.keys.iter().any(|(id, read, write, _)| id == access.key_id && *read && *write) {
            return Err(denied("not granted read and write"));
        }
        Ok(())
    }

    async fn bucket(&self, alias: &str) -> Result<Option<Bucket>, S3Error> {
        Ok(self.state()?.buckets.get(alias).cloned())
    }

    async fn buckets(&self) -> Result<Vec<Bucket>, S3Error> {
        Ok(self.state()?.buckets.values().cloned().collect())
    }

    async fn ensure_bucket(&self, alias: &str) -> Result<Bucket, S3Error> {
        check_bucket_name(alias)?;
        let mut s = self.state()?;
        if let Some(b) = s.buckets.get(alias) {
            return Ok(b.clone());
        }
        s.next += 1;
        let bucket = Bucket {
            id: format!("{:064x}", s.next),
            aliases: vec![alias.to_string()],
            website: false,
            objects: 0,
            bytes: 0,
            keys: Vec::new(),
            max_size: None,
            max_objects: None,
        };
        s.buckets.insert(alias.to_string(), bucket.clone());
        Ok(bucket)
    }

    async fn delete_bucket(&self, alias: &str) -> Result<(), S3Error> {
        let mut s = self.state()?;
        let b = s.buckets.get(alias).ok_or(S3Error::NotFound { what: "bucket", id: alias.into() })?;
        if b.objects > 0 {
            return Err(S3Error::BucketNotEmpty(format!("bucket {alias} is not empty")));
        }
        s.buckets.remove(alias);
        Ok(())
    }

    async fn set_website(&self, bucket_id: &str, enabled: bool) -> Result<(), S3Error> {
        bucket_by_id(&mut *self.state()?, bucket_id)?.website = enabled;
        Ok(())
    }

    async fn set_quotas(&self, bucket_id: &str, max_size: Option<u64>, max_objects: Option<u64>) -> Result<(), S3Error> {
        let mut s = self.state()?;
        let b = bucket_by_id(&mut s, bucket_id)?;
        b.max_size = max_size;
        b.max_objects = max_objects;
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<Key>, S3Error> {
        Ok(self.state()?.keys.values().map(|k| Key { secret: None, ..k.clone() }).collect())
    }

    async fn ensure_key(&self, name: &str) -> Result<Key, S3Error> {
        let mut s = self.state()?;
        if let Some(k) = s.keys.get(name) {
            return Ok(k.clone());
        }
        s.next += 1;
        let key =
            Key { id: format!("GK{:024x}", s.next), name: name.to_string(), secret: Some(format!("{:064x}", s.next.wrapping_mul(0x9e37_79b9_7f4a_7c15))) };
        s.keys.insert(name.to_string(), key.clone());
        Ok(key)
    }

    async fn key(&self, name: &str, with_secret: bool) -> Result<Option<Key>, S3Error> {
        Ok(self.state()?.keys.get(name).map(|k| if with_secret { k.clone() } else { Key { secret: None, ..k.clone() } }))
    }

    async fn delete_key(&self, name: &str) -> Result<(), S3Error> {
        let mut s = self.state()?;
        let key = s.keys.remove(name).ok_or(S3Error::NotFound { what: "key", id: name.into() })?;
        for b in s.buckets.values_mut() {
            b.keys.retain(|(id, ..)| *id != key.id);
        }
        Ok(())
    }

    async fn grant(&self, bucket_id: &str, key_id: &str, p: Permissions) -> Result<(), S3Error> {
        let mut s = self.state()?;
        if !s.keys.values().any(|k| k.id == key_id) {
            return Err(S3Error::NotFound { what: "bucket or key", id: format!("{bucket_id}/{key_id}") });
        }
        let b = bucket_by_id(&mut s, bucket_id).map_err(|_| S3Error::NotFound { what: "bucket or key", id: format!("{bucket_id}/{key_id}") })?;
        b.keys.retain(|(id, ..)| id != key_id);
        if p.read || p.write || p.owner {
            b.keys.push((key_id.to_string(), p.read, p.write, p.owner));
        }
        Ok(())
    }

    async fn node_id(&self) -> Result<String, S3Error> {
        let s = self.state()?;
        s.nodes.get(&self.endpoint).cloned().ok_or(S3Error::Decode("GetNodeInfo: no node".into()))
    }

    async fn connect(&self, peers: &[String]) -> Result<(), S3Error> {
        let mut s = self.state()?;
        let mut errors = Vec::new();
        for peer in peers {
            let id = peer.split_once('@').map(|(id, _)| id).unwrap_or(peer);
            if s.nodes.values().any(|n| n == id) {
                s.connected.insert(id.to_string());
            } else {
                errors.push(format!("{peer}: no such node"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(S3Error::Api { status: 200, code: "ConnectClusterNodes".into(), message: errors.join("; ") })
        }
    }

    async fn layout(&self) -> Result<Vec<Role>, S3Error> {
        Ok(self.state()?.roles.clone())
    }

    async fn apply_layout(&self, roles: &[Role]) -> Result<u64, S3Error> {
        let mut s = self.state()?;
        for role in roles {
            if role.capacity < 1024 {
                return Err(S3Error::Api { status: 400, code: "InvalidRequest".into(), message: "capacity must be at least 1024".into() });
            }
            s.roles.retain(|r| r.node != role.node);
            s.roles.push(role.clone());
        }
        s.roles.sort();
        s.version += 1;
        Ok(s.version)
    }

    async fn health(&self) -> Result<ClusterHealth, S3Error> {
        let s = self.state()?;
        let up = |id: &String| s.nodes.iter().any(|(e, n)| n == id && !s.down.contains(e));
        let own = s.nodes.get(&self.endpoint).cloned().unwrap_or_default();
        let connected = s.nodes.values().filter(|id| up(id) && (**id == own || s.connected.contains(*id))).count() as u64;
        let storing = s.roles.iter().filter(|r| up(&r.node)).count();
        let status = if s.roles.is_empty() || storing == 0 {
            "unavailable"
        } else if storing == s.roles.len() {
            "healthy"
        } else {
            "degraded"
        };
        Ok(ClusterHealth { status: status.into(), connected_nodes: connected, partitions: 256, partitions_all_ok: if status == "healthy" { 256 } else { 0 } })
    }

    async fn status(&self) -> Result<ClusterStatus, S3Error> {
        let s = self.state()?;
        Ok(ClusterStatus { layout_version: s.version, nodes: s.nodes.iter().map(|(endpoint, id)| (id.clone(), !s.down.contains(endpoint))).collect() })
    }
}
