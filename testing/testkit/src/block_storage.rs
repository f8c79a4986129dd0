//! Block storage in memory that keeps [`BlockStorage`]'s contract the way
//! the LINSTOR client does against a controller: names checked before
//! anything is made, volumes carrying their fleet's identity (several
//! fleets share one [`FakePool`]), resources made by hand left alone, idempotent
//! creates, grow-only resizes, diskless clients on other nodes, snapshots
//! (a volume with snapshots is not deleted) and rollbacks refused while in
//! use. It has no devices: what a volume holds is the LINSTOR double's
//! business (`tests/system/block_storage.rs`). `contract::block_storage` runs
//! against both.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use drover_coordinator::volumes::{self, BlockError, BlockStorage, Created, Replica, Volume, VolumeSpec};

#[derive(Debug, Clone)]
struct Stored {
    size_kib: u64,
    owner: Option<String>,
    /// node → diskless
    nodes: BTreeMap<String, bool>,
    snapshots: Vec<String>,
    in_use: bool,
}

#[derive(Default)]
struct State {
    volumes: BTreeMap<String, Stored>,
    /// Calls made, for tests that count them.
    calls: u64,
    /// The next placements fail (no room), as a controller's can.
    fail_placements: u32,
    /// The next delete waits until released (see [`FakePool::hold_deletes`]).
    held: Option<Arc<tokio::sync::Semaphore>>,
    /// Deletes waiting on `held`.
    waiting: u32,
}

/// One storage cluster, shared by every fleet's client.
#[derive(Clone, Default)]
pub struct FakePool {
    state: Arc<Mutex<State>>,
}

/// A client of a [`FakePool`] for one fleet.
pub struct FakeBlockStorage {
    pool: FakePool,
    fleet: String,
}

impl FakePool {
    pub fn new() -> Self {
        FakePool::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client of fleet `fleet`.
    pub fn client(&self, fleet: &str) -> FakeBlockStorage {
        FakeBlockStorage { pool: self.clone(), fleet: fleet.to_string() }
    }

    /// A resource someone else made (no owner, or another fleet's).
    pub fn make_foreign(&self, name: &str, size_kib: u64, owner: Option<&str>) {
        let nodes = [("node-1".to_string(), false)].into();
        self.lock().volumes.insert(name.to_string(), Stored { size_kib, owner: owner.map(str::to_string), nodes, snapshots: vec![], in_use: false });
    }

    /// Marks a volume in use on its nodes (as a mounted DRBD device is).
    pub fn set_in_use(&self, name: &str, in_use: bool) {
        if let Some(v) = self.lock().volumes.get_mut(name) {
            v.in_use = in_use;
        }
    }

    /// Whether the pool holds a resource of that name, whoever owns it.
    pub fn exists(&self, name: &str) -> bool {
        self.lock().volumes.contains_key(name)
    }

    /// The nodes a volume is available on (replicas and diskless clients).
    pub fn nodes_of(&self, name: &str) -> Vec<String> {
        self.lock().volumes.get(name).map(|v| v.nodes.keys().cloned().collect()).unwrap_or_default()
    }

    /// The next `n` placements fail.
    pub fn fail_next_placements(&self, n: u32) {
        self.lock().fail_placements = n;
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }

    /// Deletes waiting to be released.
    pub fn deletes_waiting(&self) -> u32 {
        self.lock().waiting
    }

    /// Makes deletes wait until the returned semaphore gets a permit.
    pub fn hold_deletes(&self) -> Arc<tokio::sync::Semaphore> {
        let held = Arc::new(tokio::sync::Semaphore::new(0));
        self.lock().held = Some(held.clone());
        held
    }
}

fn volume(name: &str, v: &Stored) -> Volume {
    Volume {
        name: name.to_string(),
        size_kib: v.size_kib,
        owner: v.owner.clone(),
        replicas: v
            .nodes
            .iter()
            .map(|(node, diskless)| Replica {
                node: node.clone(),
                disk_state: if *diskless { "Diskless".into() } else { "UpToDate".into() },
                diskless: *diskless,
                in_use: v.in_use,
                device_path: Some(volumes::device_path(name)),
            })
            .collect(),
    }
}

impl FakeBlockStorage {
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut s = self.pool.lock();
        s.calls += 1;
        s
    }

    /// The volume, when it exists and is this fleet's.
    fn ours<'a>(&self, s: &'a mut State, name: &str) -> Result<&'a mut Stored, BlockError> {
        match s.volumes.get_mut(name) {
            None => Err(BlockError::NotFound { what: "volume", name: name.to_string() }),
            Some(v) if v.owner.as_deref() != Some(self.fleet.as_str()) => Err(BlockError::NotOurs { name: name.to_string(), owner: v.owner.clone() }),
            Some(v) => Ok(v),
        }
    }
}

#[async_trait::async_trait]
impl BlockStorage for FakeBlockStorage {
    fn owner(&self) -> &str {
        &self.fleet
    }

    async fn volume(&self, name: &str) -> Result<Option<Volume>, BlockError> {
        volumes::check_name(name)?;
        Ok(self.lock().volumes.get(name).map(|v| volume(name, v)))
    }

    async fn volumes(&self) -> Result<Vec<Volume>, BlockError> {
        Ok(self.lock().volumes.iter().filter(|(_, v)| v.owner.as_deref() == Some(self.fleet.as_str())).map(|(n, v)| volume(n, v)).collect())
    }

    async fn create(&self, spec: &VolumeSpec) -> Result<Created, BlockError> {
        volumes::check_name(&spec.name)?;
        let mut s = self.lock();
        if let Some(v) = s.volumes.get(&spec.name) {
            if v.owner.as_deref() != Some(self.fleet.as_str()) {
                return Err(BlockError::NotOurs { name: spec.name.clone(), owner: v.owner.clone() });
            }
            if v.size_kib != spec.size_kib {
                return Err(BlockError::Conflict(format!(
                    "volume {:?} exists with {} KiB, not {} KiB; resize it with `drover volumes resize`",
                    spec.name, v.size_kib, spec.size_kib
                )));
            }
            return Ok(Created { volume: volume(&spec.name, v), made: false });
        }
        if s.fail_placements > 0 {
            s.fail_placements -= 1;
            return Err(BlockError::Conflict(format!("not enough free space to place {} replicas of {:?}", spec.replicas, spec.name)));
        }
        let nodes = (1..=spec.replicas.max(1)).map(|i| (format!("node-{i}"), false)).collect();
        let stored = Stored { size_kib: spec.size_kib, owner: Some(self.fleet.clone()), nodes, snapshots: vec![], in_use: false };
        let made = volume(&spec.name, &stored);
        s.volumes.insert(spec.name.clone(), stored);
        Ok(Created { volume: made, made: true })
    }

    async fn adopt(&self, name: &str) -> Result<Volume, BlockError> {
        volumes::check_name(name)?;
        let mut s = self.lock();
        let Some(v) = s.volumes.get_mut(name) else { return Err(BlockError::NotFound { what: "volume", name: name.to_string() }) };
        match v.owner.as_deref() {
            None => v.owner = Some(self.fleet.clone()),
            Some(o) if o == self.fleet => {}
            Some(_) => return Err(BlockError::NotOurs { name: name.to_string(), owner: v.owner.clone() }),
        }
        Ok(volume(name, v))
    }

    async fn resize(&self, name: &str, size_kib: u64) -> Result<(), BlockError> {
        let mut s = self.lock();
        let v = self.ours(&mut s, name)?;
        if size_kib < v.size_kib {
            return Err(BlockError::Shrink { name: name.to_string(), current: format!("{} KiB", v.size_kib), asked: format!("{size_kib} KiB") });
        }
        v.size_kib = size_kib;
        Ok(())
    }

    async fn make_available(&self, name: &str, node: &str) -> Result<(), BlockError> {
        let mut s = self.lock();
        let v = self.ours(&mut s, name)?;
        v.nodes.entry(node.to_string()).or_insert(true);
        Ok(())
    }

    async fn remove_from_node(&self, name: &str, node: &str) -> Result<(), BlockError> {
        let mut s = self.lock();
        let v = self.ours(&mut s, name)?;
        if v.nodes.get(node) == Some(&true) {
            v.nodes.remove(node);
        }
        Ok(())
    }

    async fn snapshot(&self, name: &str, snapshot: &str) -> Result<(), BlockError> {
        volumes::check_snapshot_name(snapshot)?;
        let mut s = self.lock();
        let v = self.ours(&mut s, name)?;
        if !v.snapshots.iter().any(|x| x == snapshot) {
            v.snapshots.push(snapshot.to_string());
        }
        Ok(())
    }

    async fn snapshots(&self, name: &str) -> Result<Vec<String>, BlockError> {
        let mut s = self.lock();
        Ok(self.ours(&mut s, name)?.snapshots.clone())
    }

    async fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<(), BlockError> {
        let mut s = self.lock();
        self.ours(&mut s, name)?.snapshots.retain(|x| x != snapshot);
        Ok(())
    }

    async fn rollback(&self, name: &str, snapshot: &str) -> Result<(), BlockError> {
        let mut s = self.lock();
        let v = self.ours(&mut s, name)?;
        if !v.snapshots.iter().any(|x| x == snapshot) {
            return Err(BlockError::NotFound { what: "snapshot", name: format!("{name}/{snapshot}") });
        }
        if v.in_use {
            return Err(BlockError::Conflict(format!("volume {name:?} is in use; unmount it before a rollback")));
        }
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), BlockError> {
        volumes::check_name(name)?;
        let held = self.lock().held.clone();
        if let Some(held) = held {
            self.pool.lock().waiting += 1;
            let permit = held.acquire().await.map_err(|_| BlockError::Config("the pool was dropped".into()));
            self.pool.lock().waiting -= 1;
            permit?.forget();
        }
        let mut s = self.lock();
        match s.volumes.get(name) {
            None => return Ok(()),
            Some(v) if v.owner.as_deref() != Some(self.fleet.as_str()) => return Err(BlockError::NotOurs { name: name.to_string(), owner: v.owner.clone() }),
            Some(v) if !v.snapshots.is_empty() => {
                return Err(BlockError::Conflict(format!("volume {name:?} has snapshots ({}); delete them first", v.snapshots.join(", "))))
            }
            Some(_) => {}
        }
        s.volumes.remove(name);
        Ok(())
    }
}
