//! Persistent state. [`Store`] keeps the coordinator's records (the types in
//! [`crate::model`]) in a [`Backend`]: sled in the state directory, or memory.
//! This is the only module that imports sled.
//!
//! The store records; it decides nothing. What changes together is written
//! in one transaction ([`Store::transact`]), whose body — the decision —
//! comes from the application layer. Lists skip a record that cannot be
//! decoded, with a warning that names its tree and key, so one damaged record
//! never hides the others.
//!
//! Durability: [`Store::commit`] flushes before it returns, off the async
//! workers (on tokio's blocking pool), so nothing a peer was told can be
//! lost by a crash. Progress steps and health reports are written without
//! a flush and wait for sled's periodic one.
//!
//! Flushes and transactions are kept apart ([`Store::write`]): sled holds
//! its one global lock shared through a flush (the disk's time) and alone
//! for a transaction, and every read waits behind a transaction that waits.
//! A transaction that came during a flush would stall every async worker
//! that reads; instead, writers on the async side wait for the flush
//! without blocking a worker, run together after it, and share the next
//! one (group commit).
//!
//! Concerns: [`machines`] (machines, tokens, admins), [`deployments`]
//! (assignments and deployment records), [`rollouts`], [`tenants`], [`s3`].

pub mod audit;
pub(crate) mod codec;
pub mod deployments;
mod groups;
pub mod machines;
pub mod nixops4;
pub mod provisions;
pub mod rollouts;
pub mod s3;
pub mod specs;
pub mod tenants;
#[cfg(test)]
pub(crate) mod tests;
pub mod volumes;

use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

pub use codec::SCHEMA_VERSION;
pub use drover_store::{Backend, MemoryBackend, SledBackend, SledOptions, Tree};

use drover_store::{BackendTx, Pairs};

/// What can go wrong in the store: the backend's failures, and the
/// records' own.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Backend(#[from] drover_store::Error),
    #[error("stored record {key:?} in {tree} is unreadable: {reason}")]
    Corrupt { tree: &'static str, key: String, reason: String },
    #[error("a record could not be encoded: {0}")]
    Encode(String),
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("the store at {path} has schema version {found}, newer than this coordinator's {SCHEMA_VERSION}; upgrade drover")]
    TooNew { path: String, found: u32 },
    /// The store's files exist but hold nothing readable: sled drops a log
    /// it cannot read, which would start an empty fleet.
    #[error("the store at {0} holds no records although its files exist: they are damaged (sled dropped what it could not read). Keep the directory for inspection, restore the last backup into a new directory (`drover restore FILE --state-dir NEW`) and serve from there")]
    Damaged(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(drover_store::Error::Sled(e))
    }
}

thread_local! {
    /// Whether this thread runs a transaction's body now.
    static IN_TRANSACTION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as inside a transaction's body while it lives.
struct InTransaction(bool);

impl InTransaction {
    fn enter() -> Self {
        InTransaction(IN_TRANSACTION.with(|f| f.replace(true)))
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        IN_TRANSACTION.with(|f| f.set(self.0));
    }
}

/// A read through the store (not the transaction's [`Tx`]) from inside a
/// transaction's body waits for the lock that transaction holds: a
/// deadlock. Caught in debug builds (every test), at the call that would
/// hang.
fn outside_transactions() {
    debug_assert!(
        !IN_TRANSACTION.with(std::cell::Cell::get),
        "a store read inside a transaction's body would deadlock: read through the transaction (tx.get), or before it"
    );
}

/// A record kept in one tree of the store.
pub trait Record: Serialize + DeserializeOwned {
    const TREE: Tree;
    /// What it is called in errors ("machine", "tenant").
    const WHAT: &'static str;
    /// Whether part of it is kept once for many, in the specs tree.
    const SHARING: specs::Sharing = specs::Sharing::None;
}

/// Reads a stored record of `tree` (of this schema or an older one,
/// migrated) as its record type and writes it again in this schema's form;
/// `None` for the meta tree, which holds no records. Tests hold every
/// record type's stored form to golden files with it.
pub fn recode(tree: Tree, key: &[u8], bytes: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    fn again<T: Record>(key: &[u8], bytes: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        specs::recode::<T>(T::SHARING, key, bytes).map(Some)
    }
    use crate::model::*;
    match tree {
        Tree::Meta => Ok(None),
        Tree::Machines => again::<MachineRecord>(key, bytes),
        Tree::Tokens => again::<TokenRecord>(key, bytes),
        Tree::Admins => again::<AdminRecord>(key, bytes),
        Tree::Assignments => again::<AssignmentRecord>(key, bytes),
        Tree::Deployments => again::<DeploymentRecord>(key, bytes),
        Tree::Rollouts => again::<RolloutRecord>(key, bytes),
        Tree::S3Nodes => again::<S3NodeRecord>(key, bytes),
        Tree::Tenants => again::<TenantRecord>(key, bytes),
        Tree::Enrollments => again::<EnrollmentRecord>(key, bytes),
        Tree::Volumes => again::<VolumeRecord>(key, bytes),
        Tree::Audit => again::<AuditRecord>(key, bytes),
        Tree::Provisions => again::<ProvisionRecord>(key, bytes),
        Tree::Fleet => again::<FleetRecord>(key, bytes),
        Tree::NixopsStates => again::<crate::model::NixopsStateRecord>(key, bytes),
        Tree::NixopsEvents => again::<crate::model::NixopsEventRecord>(key, bytes),
        Tree::Specs => again::<SpecRecord>(key, bytes),
    }
}

/// Directory of the store inside the state directory.
pub const DB_DIR: &str = "db";

/// How an etcd store is named in errors.
fn etcd_place(options: &drover_store::EtcdOptions) -> String {
    format!("etcd {} under {:?}", options.endpoints.join(","), options.prefix)
}

/// The meta key naming the fleet a store belongs to (its CA's fleet id),
/// which another coordinator joining the store must share.
pub const FLEET_ID_KEY: &str = "fleet_id";

/// The coordinator's persistent state.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Transactions hold it shared; a snapshot holds it alone, so that it
    /// sees every tree at one moment.
    gate: Arc<std::sync::RwLock<()>>,
    flushes: Arc<Flushes>,
    audit: Arc<audit::AuditCounts>,
    /// A smaller transaction limit than the backend's (tests of batching).
    txn_limit: Option<usize>,
    /// The most bytes one transaction may send, as a test sets it
    /// ([`Store::limited_to_bytes`]); else the backend's.
    request_limit: Option<usize>,
    /// Deployment specs read so far (they never change).
    specs: Arc<specs::SpecCache>,
    /// Writes waiting to run together ([`Store::write_grouped`]).
    groups: Arc<groups::Groups>,
}

/// Group commit, with flushes kept apart from the async side's
/// transactions. A flush waits for the one in progress, then returns at
/// once when that one covered its writes; otherwise it waits for the
/// transactions running, holds the lane alone and flushes everything
/// written so far.
#[derive(Default)]
struct Flushes {
    /// Transactions committed (in memory) so far.
    written: AtomicU64,
    /// How many of them a finished flush is known to cover; held while a
    /// flush waits or runs.
    flushed: tokio::sync::Mutex<u64>,
    /// [`Store::write`] holds it shared, a flush alone.
    lane: tokio::sync::RwLock<()>,
}

/// sled's page cache when the configuration says nothing (sled's own
/// default, 1 GiB, would let the coordinator grow with its history).
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Every tree's pairs at one moment: (tree name, pairs in key order).
pub type Snapshot = Vec<(String, Pairs)>;

impl Store {
    /// Opens (or creates) the sled store in `dir`, with the default cache
    /// and no free-space guard (tools, tests).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Store::open_with(dir, SledOptions { cache_bytes: DEFAULT_CACHE_BYTES, min_free_bytes: 0 })
    }

    /// Opens (or creates) the sled store in `dir` with `options`.
    pub fn open_with(dir: &Path, options: SledOptions) -> Result<Self, StoreError> {
        // sled's data file; a store that had one and now reads as empty was
        // damaged, never written to (every state directory holds an admin).
        let had_data = std::fs::metadata(dir.join("db")).is_ok_and(|m| m.len() > 0);
        let store = Store::with_backend(Arc::new(SledBackend::open(dir, options)?));
        if had_data && store.holds_nothing()? {
            return Err(StoreError::Damaged(dir.display().to_string()));
        }
        store.check_schema(dir)?;
        Ok(store)
    }

    /// Copies every record of this store, byte for byte, into `target`,
    /// which must hold nothing yet (at most its schema version), in
    /// transactions of at most `batch` writes; then reads `target` back and
    /// compares. Returns how many keys each tree held. Nothing may write to
    /// this store meanwhile (its coordinator is stopped).
    pub fn copy_into(&self, target: &Store, batch: usize, mut progress: impl FnMut(usize)) -> Result<Vec<(String, usize)>, StoreError> {
        if !target.holds_only_its_schema()? {
            return Err(StoreError::Conflict("the target store already holds records; migrate only into an empty one".into()));
        }
        let snapshot = self.snapshot()?;
        let mut copied = 0;
        for (name, pairs) in &snapshot {
            let tree = Tree::named(name).ok_or_else(|| StoreError::Corrupt { tree: "meta", key: name.clone(), reason: "no such tree".into() })?;
            for chunk in pairs.chunks(batch.max(1)) {
                target.backend.transaction(&mut |tx| {
                    for (k, v) in chunk {
                        tx.insert(tree, k, v.clone())?;
                    }
                    Ok(())
                })?;
                copied += chunk.len();
                progress(copied);
            }
        }
        target.backend.flush_blocking()?;
        if target.snapshot()? != snapshot {
            return Err(StoreError::Conflict("the copy reads back differently from the original; the target holds a partial copy".into()));
        }
        Ok(snapshot.into_iter().map(|(name, pairs)| (name, pairs.len())).collect())
    }

    /// A value of the meta tree (the store's own facts, not records).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.backend.get(Tree::Meta, key.as_bytes())?.map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    /// The meta tree's values whose keys start with `prefix`.
    pub fn metas(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        outside_transactions();
        let pairs = self.backend.scan(Tree::Meta, prefix.as_bytes())?;
        Ok(pairs.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k).to_string(), String::from_utf8_lossy(&v).to_string())).collect())
    }

    /// How many keys one transaction may read, and how many it may write;
    /// `None` when any number fits (sled, memory).
    pub fn max_txn_ops(&self) -> Option<usize> {
        self.txn_limit.or_else(|| self.backend.max_txn_ops())
    }

    /// How many bytes of keys and values one transaction may send; `None`
    /// when any size fits (sled, memory).
    pub fn max_request_bytes(&self) -> Option<usize> {
        self.request_limit.or_else(|| self.backend.max_request_bytes())
    }

    /// This store as if one transaction could send at most `bytes` (what
    /// is refused before it is written, in tests).
    pub fn limited_to_bytes(mut self, bytes: usize) -> Self {
        self.request_limit = Some(bytes);
        self
    }

    /// This store with transactions limited to `ops` keys read and written,
    /// as on etcd (tests of what is recorded in batches).
    pub fn limited_to(mut self, ops: usize) -> Self {
        self.txn_limit = Some(ops);
        self
    }

    /// Sets a value of the meta tree, durably.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.commit_blocking(|tx| tx.put_meta(key, value))
    }

    /// Whether the store holds no record (at most its schema version).
    pub fn holds_only_its_schema(&self) -> Result<bool, StoreError> {
        for tree in Tree::ALL {
            let pairs = self.backend.scan(tree, b"")?;
            if pairs.iter().any(|(k, _)| !(tree == Tree::Meta && k.as_slice() == b"schema_version")) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn holds_nothing(&self) -> Result<bool, StoreError> {
        for tree in Tree::ALL {
            if !self.backend.scan(tree, b"")?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Connects to the store kept in an etcd cluster under its prefix.
    pub fn open_etcd(options: drover_store::EtcdOptions) -> Result<Self, StoreError> {
        let place = etcd_place(&options);
        Store::over_etcd(drover_store::EtcdBackend::connect(options)?, &place)
    }

    /// [`Store::open_etcd`] for a coordinator that serves: joins the
    /// fleet's coordinators as `name` (announcing `presence`, naming
    /// `holder` when it leads) on a lease of `ttl`, which fences every
    /// later write. Whether it leads is decided later
    /// ([`drover_store::Backend::campaign`]).
    pub fn open_etcd_member(
        options: drover_store::EtcdOptions,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
        presence: &[u8],
    ) -> Result<Self, StoreError> {
        let place = etcd_place(&options);
        let backend = drover_store::EtcdBackend::connect(options)?;
        backend.join(name, holder, presence, ttl)?;
        Store::over_etcd(backend, &place)
    }

    fn over_etcd(backend: drover_store::EtcdBackend, place: &str) -> Result<Self, StoreError> {
        let store = Store::with_backend(Arc::new(backend));
        store.check_schema(Path::new(place))?;
        Ok(store)
    }

    /// A store in memory.
    pub fn in_memory() -> Self {
        let store = Store::with_backend(Arc::new(MemoryBackend::default()));
        let _ = store.check_schema(Path::new("<memory>"));
        store
    }

    pub fn with_backend(backend: Arc<dyn Backend>) -> Self {
        Store {
            backend,
            gate: Arc::default(),
            flushes: Arc::default(),
            audit: Arc::default(),
            txn_limit: None,
            request_limit: None,
            specs: Arc::default(),
            groups: Arc::default(),
        }
    }

    /// Every tree at one moment, while the store serves: transactions wait
    /// while the trees are read.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let _alone = self.gate.write().unwrap_or_else(|p| p.into_inner());
        Tree::ALL.iter().map(|t| Ok((t.name().to_string(), self.backend.scan(*t, b"")?))).collect()
    }

    /// Writes a snapshot into this (empty) store, durably. A tree this
    /// build does not know is refused.
    pub fn load_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut trees = Vec::new();
        for (name, pairs) in snapshot {
            let tree = Tree::named(name).ok_or_else(|| StoreError::Corrupt {
                tree: "backup",
                key: name.clone(),
                reason: "a tree this coordinator does not know (a backup from a newer version?)".into(),
            })?;
            trees.push((tree, pairs));
        }
        self.backend.transaction(&mut |tx| {
            for (tree, pairs) in &trees {
                for (k, v) in pairs.iter() {
                    tx.insert(*tree, k, v.clone())?;
                }
            }
            Ok(())
        })?;
        self.backend.flush_blocking()?;
        self.audit.forget();
        self.check_schema(Path::new("<backup>"))
    }

    /// Refuses a store written by a newer coordinator; records the version.
    fn check_schema(&self, dir: &Path) -> Result<(), StoreError> {
        let key = b"schema_version";
        let found = match self.backend.get(Tree::Meta, key)? {
            Some(v) => std::str::from_utf8(&v).ok().and_then(|s| s.parse::<u32>().ok()).ok_or_else(|| StoreError::Corrupt {
                tree: "meta",
                key: "schema_version".into(),
                reason: "not a number".into(),
            })?,
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: dir.display().to_string(), found });
        }
        if found < SCHEMA_VERSION {
            // Older records are migrated as they are read.
            self.backend.transaction(&mut |tx| tx.insert(Tree::Meta, key, SCHEMA_VERSION.to_string().into_bytes()))?;
            self.backend.flush_blocking()?;
        }
        Ok(())
    }

    /// One record by key, if present.
    pub fn get<T: Record>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        outside_transactions();
        self.backend.get(T::TREE, key)?.map(|v| self.decode(key, &v)).transpose()
    }

    /// A stored record of type `T`, with its spec when it refers to one.
    fn decode<T: Record>(&self, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
        specs::join(T::SHARING, key, bytes, &|digest| self.specs.get(digest, |k| Ok(self.backend.get(Tree::Specs, k)?)))
    }

    /// Every record whose key starts with `prefix`, in key order. A record
    /// that cannot be decoded is skipped with a warning naming its key.
    pub fn list<T: Record>(&self, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
        outside_transactions();
        let mut out = Vec::new();
        for (k, v) in self.backend.scan(T::TREE, prefix)? {
            match self.decode(&k, &v) {
                Ok(record) => out.push(record),
                Err(e) => tracing::warn!(
                    tree = T::TREE.name(),
                    key = %String::from_utf8_lossy(&k),
                    error = %e,
                    "unreadable record skipped; repair or remove it (a backup restores it)"
                ),
            }
        }
        Ok(out)
    }

    /// Runs `body` as one transaction: every write it makes lands, or none
    /// (when it returns an error, which is returned). `body` may run more
    /// than once, and reads and writes only through its [`Tx`] (the memory
    /// backend holds its lock while the body runs). Not flushed: see
    /// [`Store::commit`]. On the async side, [`Store::write`] does the same
    /// without running into a flush.
    pub fn transact<T, E: From<StoreError>>(&self, body: impl Fn(&Tx) -> Result<T, E>) -> Result<T, E> {
        let outcome: RefCell<Option<Result<T, E>>> = RefCell::new(None);
        let _shared = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let result = self.backend.transaction(&mut |inner| {
            let tx = Tx { inner, failure: RefCell::new(None), ops: Default::default(), specs: &self.specs, specs_kept: RefCell::default() };
            let _inside = InTransaction::enter();
            let answer = body(&tx);
            if let Some(failure) = tx.failure.into_inner() {
                // The backend's own trouble (a conflict to retry, i/o).
                return Err(failure);
            }
            let (read, written) = tx.ops.get();
            if let Some(limit) = self.txn_limit.filter(|l| answer.is_ok() && (read > *l || written > *l)) {
                return Err(drover_store::Error::TooLarge(format!(
                    "one transaction would read {read} and write {written} keys; this store takes at most {limit} of each"
                )));
            }
            let failed = answer.is_err();
            *outcome.borrow_mut() = Some(answer);
            if failed {
                Err(drover_store::Error::Aborted)
            } else {
                Ok(())
            }
        });
        if result.is_ok() {
            self.flushes.written.fetch_add(1, SeqCst);
        }
        match (result, outcome.into_inner()) {
            (Ok(()), Some(answer)) | (Err(drover_store::Error::Aborted), Some(answer)) => answer,
            (Err(e), _) => Err(StoreError::from(e).into()),
            (Ok(()), None) => Err(StoreError::from(drover_store::Error::Aborted).into()),
        }
    }

    /// [`Store::transact`] for async callers: waits, without blocking a
    /// worker, while a flush runs, so that the transaction never waits for
    /// the disk inside sled's lock (and every read on the workers with it).
    /// Not flushed: see [`Store::commit`].
    pub async fn write<T, E: From<StoreError>>(&self, body: impl Fn(&Tx) -> Result<T, E>) -> Result<T, E> {
        let _lane = self.flushes.lane.read().await;
        self.transact(body)
    }

    /// [`Store::write`], then a flush: when it returns, the writes survive
    /// a crash. The flush runs off the async workers.
    pub async fn commit<T, E: From<StoreError>>(&self, body: impl Fn(&Tx) -> Result<T, E>) -> Result<T, E> {
        let value = self.write(body).await?;
        self.flush().await?;
        Ok(value)
    }

    /// [`Store::commit`] for callers outside the runtime (`drover init`).
    pub fn commit_blocking<T, E: From<StoreError>>(&self, body: impl Fn(&Tx) -> Result<T, E>) -> Result<T, E> {
        let value = self.transact(body)?;
        self.backend.flush_blocking().map_err(StoreError::from)?;
        Ok(value)
    }

    /// Reads, changes and writes back one record, durably; `change` decides
    /// (and may refuse) and may run more than once.
    pub async fn update<T: Record, E: From<StoreError>>(&self, key: &[u8], change: impl Fn(&mut T) -> Result<(), E>) -> Result<T, E> {
        self.commit(|tx| {
            let mut record: T = tx.require(key)?;
            change(&mut record)?;
            tx.put(key, &record)?;
            Ok(record)
        })
        .await
    }

    /// Makes every write so far durable; concurrent callers share one
    /// flush (see [`Flushes`]).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let mine = self.flushes.written.load(SeqCst);
        let mut flushed = self.flushes.flushed.lock().await;
        if *flushed >= mine {
            return Ok(());
        }
        let _alone = self.flushes.lane.write().await;
        let covers = self.flushes.written.load(SeqCst);
        self.backend.flush().await?;
        *flushed = covers;
        Ok(())
    }

    /// The raw backend (tests that damage records on purpose).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
}

/// Typed reads and writes inside one transaction.
pub struct Tx<'a> {
    inner: &'a dyn BackendTx,
    /// A backend failure seen by the body: it decides how the transaction
    /// ends, whatever the body made of it.
    failure: RefCell<Option<drover_store::Error>>,
    /// Keys read and written so far (counted against a store's limit).
    ops: std::cell::Cell<(usize, usize)>,
    specs: &'a specs::SpecCache,
    /// The specs this transaction found or wrote: each is written once.
    specs_kept: RefCell<std::collections::HashSet<String>>,
}

impl Tx<'_> {
    fn backend<T>(&self, result: Result<T, drover_store::Error>) -> Result<T, StoreError> {
        use drover_store::Error;
        Ok(result.inspect_err(|e| match e {
            Error::Retry => *self.failure.borrow_mut() = Some(Error::Retry),
            Error::Sled(inner) => *self.failure.borrow_mut() = Some(Error::Sled(inner.clone())),
            _ => {}
        })?)
    }

    fn counted(&self, read: usize, written: usize) {
        let (r, w) = self.ops.get();
        self.ops.set((r + read, w + written));
    }

    pub fn get<T: Record>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.counted(1, 0);
        self.backend(self.inner.get(T::TREE, key))?.map(|v| self.decode(key, &v)).transpose()
    }

    /// A stored record of type `T`, with its spec (read through this
    /// transaction, or cached) when it refers to one.
    fn decode<T: Record>(&self, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
        specs::join(T::SHARING, key, bytes, &|digest| {
            self.specs.get(digest, |k| {
                self.counted(1, 0);
                self.backend(self.inner.get(Tree::Specs, k))
            })
        })
    }

    /// Reads `keys` ahead in as few round trips as the backend allows (one
    /// etcd request per batch), so that the `get`s that follow cost none.
    pub fn prefetch<K: AsRef<[u8]>>(&self, keys: impl IntoIterator<Item = (Tree, K)>) -> Result<(), StoreError> {
        let keys: Vec<(Tree, K)> = keys.into_iter().collect();
        let keys: Vec<(Tree, &[u8])> = keys.iter().map(|(tree, key)| (*tree, key.as_ref())).collect();
        self.backend(self.inner.prefetch(&keys))
    }

    /// The record under `key`, or [`StoreError::NotFound`] naming `id`.
    pub fn require<T: Record>(&self, key: &[u8]) -> Result<T, StoreError> {
        self.get(key)?.ok_or_else(|| StoreError::NotFound { what: T::WHAT, id: String::from_utf8_lossy(key).to_string() })
    }

    pub fn put<T: Record>(&self, key: &[u8], record: &T) -> Result<(), StoreError> {
        let split = specs::split(T::SHARING, record, &|digest| self.spec_kept(digest))?;
        if let Some((digest, spec)) = split.spec {
            self.keep_spec(&digest, &spec)?;
        }
        self.counted(0, 1);
        self.backend(self.inner.insert(T::TREE, key, split.bytes))
    }

    /// Whether the spec under `digest` is kept: written or found by this
    /// transaction, read before, or in the store.
    fn spec_kept(&self, digest: &str) -> Result<bool, StoreError> {
        if self.specs_kept.borrow().contains(digest) || self.specs.has(digest) {
            return Ok(true);
        }
        self.counted(1, 0);
        let found = self.backend(self.inner.get(Tree::Specs, digest.as_bytes()))?.is_some();
        if found {
            self.specs_kept.borrow_mut().insert(digest.to_string());
        }
        Ok(found)
    }

    /// Writes a spec unless this transaction already did, or the store
    /// holds it (its key is its content: what is there is the same).
    fn keep_spec(&self, digest: &str, spec: &crate::model::SpecRecord) -> Result<(), StoreError> {
        if self.spec_kept(digest)? {
            return Ok(());
        }
        self.counted(0, 1);
        self.backend(self.inner.insert(Tree::Specs, digest.as_bytes(), codec::encode(spec)?))?;
        self.specs_kept.borrow_mut().insert(digest.to_string());
        Ok(())
    }

    /// Inserts under a key not yet taken; otherwise a conflict saying `taken`.
    pub fn insert_new<T: Record>(&self, key: &[u8], record: &T, taken: impl FnOnce() -> String) -> Result<(), StoreError> {
        self.counted(1, 0);
        if self.backend(self.inner.get(T::TREE, key))?.is_some() {
            return Err(StoreError::Conflict(taken()));
        }
        self.put(key, record)
    }

    /// Sets a value of the meta tree (the store's own facts, not records).
    pub fn put_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.counted(0, 1);
        self.backend(self.inner.insert(Tree::Meta, key.as_bytes(), value.as_bytes().to_vec()))
    }

    /// A value of the meta tree.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.counted(1, 0);
        Ok(self.backend(self.inner.get(Tree::Meta, key.as_bytes()))?.map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    /// Removes a key whatever its value holds (a damaged record too).
    pub fn remove_raw(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.counted(1, 1);
        self.backend(self.inner.remove(tree, key)).map(|_| ())
    }

    pub fn remove<T: Record>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.counted(1, 1);
        self.backend(self.inner.remove(T::TREE, key))?.map(|v| self.decode(key, &v)).transpose()
    }
}
