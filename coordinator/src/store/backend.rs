//! The key-value seam under the store: a [`Backend`] keeps byte values in
//! named trees and runs all-or-nothing transactions over them. Everything
//! typed (records, envelopes, migrations) lives above it, in one place, so
//! every backend behaves the same for every record; the contract suite in
//! `store/tests.rs` runs the whole typed store against each backend.
//!
//! [`SledBackend`] is the embedded default; [`MemoryBackend`] keeps the same
//! trees in memory. A replicated engine would come in here too.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError};
use sled::Transactional;

use super::StoreError;

/// A future the backend hands back (flushes run off the async workers).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The named trees of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    Meta,
    Machines,
    Tokens,
    Admins,
    Assignments,
    Deployments,
    Rollouts,
    S3Nodes,
    Tenants,
    Enrollments,
    Volumes,
    Audit,
    Provisions,
    Fleet,
}

impl Tree {
    pub const ALL: [Tree; 14] = [
        Tree::Meta,
        Tree::Machines,
        Tree::Tokens,
        Tree::Admins,
        Tree::Assignments,
        Tree::Deployments,
        Tree::Rollouts,
        Tree::S3Nodes,
        Tree::Tenants,
        Tree::Enrollments,
        Tree::Volumes,
        Tree::Audit,
        Tree::Provisions,
        Tree::Fleet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Machines => "machines",
            Tree::Tokens => "tokens",
            Tree::Admins => "admins",
            Tree::Assignments => "assignments",
            Tree::Deployments => "deployments",
            Tree::Rollouts => "rollouts",
            Tree::S3Nodes => "s3_nodes",
            Tree::Tenants => "tenants",
            Tree::Enrollments => "enrollments",
            Tree::Volumes => "volumes",
            Tree::Audit => "audit",
            Tree::Provisions => "provisions",
            Tree::Fleet => "fleet",
        }
    }

    /// The tree of a name, as [`Tree::name`] gives it.
    pub fn named(name: &str) -> Option<Tree> {
        Tree::ALL.into_iter().find(|t| t.name() == name)
    }

    fn index(self) -> usize {
        Tree::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// Key-value pairs, as a scan returns them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads and writes inside one transaction.
pub trait BackendTx {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError>;
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// The transaction body a backend runs; it may run more than once.
pub type TxBody<'a> = &'a mut dyn FnMut(&dyn BackendTx) -> Result<(), StoreError>;

/// Byte storage in named trees with all-or-nothing transactions.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Pairs, StoreError>;
    /// At most `limit` pairs whose keys lie in `from..to`, in key order, or
    /// from the end when `newest_first`.
    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<Pairs, StoreError>;
    /// How many keys lie in `from..to`.
    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, StoreError>;
    /// Runs `body` over all trees: either every write it made lands, or
    /// (when it returns an error) none does.
    fn transaction(&self, body: TxBody<'_>) -> Result<(), StoreError>;
    /// Makes every write so far durable, off the async workers.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The same, blocking the calling thread (startup, shutdown, tools).
    fn flush_blocking(&self) -> Result<(), StoreError>;
}

/// The sled-backed store in one directory.
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    space: SpaceGuard,
}

/// How the sled store is opened.
#[derive(Debug, Clone, Copy)]
pub struct SledOptions {
    /// sled keeps at most this much of the store in memory.
    pub cache_bytes: u64,
    /// Writes are refused while the store's filesystem has less free space
    /// than this: sled treats a failed write as fatal to the open store (every
    /// later write fails until it is opened again), so the store must never
    /// reach the end of its disk.
    pub min_free_bytes: u64,
}

/// Refuses writes while the store's filesystem is nearly full. The free
/// space is read (statvfs, a microsecond) at the first write of every
/// transaction, so refusals start and end with the space itself.
struct SpaceGuard {
    dir: PathBuf,
    min_free: u64,
    /// Whether writes are being refused (to log the change once).
    refusing: AtomicBool,
}

impl SpaceGuard {
    fn check(&self) -> Result<(), StoreError> {
        if self.min_free == 0 {
            return Ok(());
        }
        let free = nix::sys::statvfs::statvfs(&self.dir)
            .map(|s| s.blocks_available() * s.fragment_size())
            .map_err(|e| StoreError::Sled(sled::Error::Io(std::io::Error::from(e))))?;
        if free < self.min_free {
            let error = StoreError::Full { path: self.dir.display().to_string(), free_mib: free >> 20, min_mib: self.min_free >> 20 };
            if !self.refusing.swap(true, Relaxed) {
                tracing::error!("{error}");
            }
            return Err(error);
        }
        if self.refusing.swap(false, Relaxed) {
            tracing::info!(path = %self.dir.display(), free_mib = free >> 20, "the state directory has room again; changes are accepted");
        }
        Ok(())
    }
}

/// How long a held store lock is tried before the store counts as held by
/// another coordinator.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

impl SledBackend {
    pub fn open(dir: &Path, options: SledOptions) -> Result<Self, StoreError> {
        // sled reports a directory another process (or store) holds as an
        // i/o error whose text says so, wrapping the lock's WouldBlock. A
        // store of this process that was just closed holds the lock until
        // sled's flusher thread lets go of it (at most its flush interval):
        // the lock is tried for a while before it counts as held.
        let locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock"));
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        let db = loop {
            match sled::Config::new().path(dir).cache_capacity(options.cache_bytes).open() {
                Ok(db) => break db,
                Err(e) if locked(&e) && std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(50)),
                Err(e) if locked(&e) => return Err(StoreError::Locked(dir.display().to_string())),
                Err(e) => return Err(StoreError::Sled(e)),
            }
        };
        let trees = Tree::ALL.iter().map(|t| db.open_tree(t.name())).collect::<Result<Vec<_>, _>>()?;
        let space = SpaceGuard { dir: dir.to_path_buf(), min_free: options.min_free_bytes, refusing: AtomicBool::new(false) };
        Ok(SledBackend { db, trees, space })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree.index()]
    }
}

struct SledTx<'a> {
    views: &'a [TransactionalTree],
    space: &'a SpaceGuard,
    /// Whether this transaction's first write found room (the free space is
    /// read once per transaction).
    room: Cell<bool>,
}

impl SledTx<'_> {
    fn room(&self) -> Result<(), StoreError> {
        if !self.room.get() {
            self.space.check()?;
            self.room.set(true);
        }
        Ok(())
    }
}

/// sled's conflict travels as [`StoreError::Retry`] through the typed layer
/// and back, so that sled runs the transaction again.
fn unabortable(e: UnabortableTransactionError) -> StoreError {
    match e {
        UnabortableTransactionError::Conflict => StoreError::Retry,
        UnabortableTransactionError::Storage(e) => StoreError::Sled(e),
    }
}

impl BackendTx for SledTx<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.views[tree.index()].get(key).map_err(unabortable)?.map(|v| v.to_vec()))
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.room()?;
        self.views[tree.index()].insert(key, value).map_err(unabortable)?;
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.room()?;
        Ok(self.views[tree.index()].remove(key).map_err(unabortable)?.map(|v| v.to_vec()))
    }
}

impl Backend for SledBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.tree(tree).scan_prefix(prefix).map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from)).collect()
    }

    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<Pairs, StoreError> {
        let pair = |item: sled::Result<(sled::IVec, sled::IVec)>| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from);
        let range = self.tree(tree).range(from..to);
        if newest_first {
            range.rev().take(limit).map(pair).collect()
        } else {
            range.take(limit).map(pair).collect()
        }
    }

    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, StoreError> {
        let mut n = 0;
        for key in self.tree(tree).range(from..to).keys() {
            key?;
            n += 1;
        }
        Ok(n)
    }

    fn transaction(&self, body: TxBody<'_>) -> Result<(), StoreError> {
        let trees: Vec<&sled::Tree> = self.trees.iter().collect();
        let body = RefCell::new(body);
        let result = trees.as_slice().transaction(|views| {
            let tx = SledTx { views, space: &self.space, room: Cell::new(false) };
            match (body.borrow_mut())(&tx) {
                Ok(()) => Ok(()),
                Err(StoreError::Retry) => Err(ConflictableTransactionError::Conflict),
                Err(StoreError::Sled(e)) => Err(ConflictableTransactionError::Storage(e)),
                Err(other) => Err(ConflictableTransactionError::Abort(other)),
            }
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // On tokio's blocking pool, not sled's own `flush_async`: that runs
        // the flush on sled's I/O threads, and concurrent flushes can take
        // every one of them while the writes they wait for need one too.
        // Concurrent callers share one flush: see `Store::flush`.
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.flush()).await.map_err(|e| StoreError::Sled(sled::Error::ReportableBug(format!("flush task: {e}"))))??;
            Ok(())
        })
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

type Trees = BTreeMap<Tree, BTreeMap<Vec<u8>, Vec<u8>>>;

/// The same trees in memory: for tests, and for tools that need a store
/// without a directory.
#[derive(Default)]
pub struct MemoryBackend {
    trees: Mutex<Trees>,
}

/// A transaction's own writes: a value, or `None` for a removal.
type Writes = BTreeMap<(Tree, Vec<u8>), Option<Vec<u8>>>;

/// A transaction's view: the committed trees plus its own writes.
struct MemoryTx<'a> {
    base: &'a Trees,
    writes: RefCell<Writes>,
}

impl BackendTx for MemoryTx<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(written) = self.writes.borrow().get(&(tree, key.to_vec())) {
            return Ok(written.clone());
        }
        Ok(self.base.get(&tree).and_then(|t| t.get(key)).cloned())
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.writes.borrow_mut().insert((tree, key.to_vec()), Some(value));
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let before = self.get(tree, key)?;
        self.writes.borrow_mut().insert((tree, key.to_vec()), None);
        Ok(before)
    }
}

impl MemoryBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, Trees> {
        // A panic while holding the lock leaves the map as it was before the
        // transaction (writes are applied only after the body returns).
        self.trees.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(&tree).and_then(|t| t.get(key)).cloned())
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Pairs, StoreError> {
        Ok(self
            .lock()
            .get(&tree)
            .map(|t| t.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<Pairs, StoreError> {
        let trees = self.lock();
        let Some(t) = trees.get(&tree) else { return Ok(Vec::new()) };
        let range = t.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to)));
        let pair = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if newest_first { range.rev().take(limit).map(pair).collect() } else { range.take(limit).map(pair).collect() })
    }

    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, StoreError> {
        let trees = self.lock();
        Ok(trees.get(&tree).map_or(0, |t| t.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to))).count()))
    }

    fn transaction(&self, body: TxBody<'_>) -> Result<(), StoreError> {
        let mut trees = self.lock();
        let writes = {
            let tx = MemoryTx { base: &trees, writes: RefCell::new(BTreeMap::new()) };
            body(&tx)?;
            tx.writes.into_inner()
        };
        for ((tree, key), value) in writes {
            let t = trees.entry(tree).or_default();
            match value {
                Some(v) => t.insert(key, v),
                None => t.remove(&key),
            };
        }
        Ok(())
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
