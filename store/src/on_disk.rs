//! The embedded default: sled in one directory, with a guard that refuses
//! writes before the filesystem fills up.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError};
use sled::Transactional;

use crate::backend::{Backend, BackendTx, BoxFuture, Pairs, Tree, TxBody};
use crate::Error;

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
    fn check(&self) -> Result<(), Error> {
        if self.min_free == 0 {
            return Ok(());
        }
        let free = nix::sys::statvfs::statvfs(&self.dir)
            .map(|s| s.blocks_available() * s.fragment_size())
            .map_err(|e| Error::Sled(sled::Error::Io(std::io::Error::from(e))))?;
        if free < self.min_free {
            let error = Error::Full { path: self.dir.display().to_string(), free_mib: free >> 20, min_mib: self.min_free >> 20 };
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
    pub fn open(dir: &Path, options: SledOptions) -> Result<Self, Error> {
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
                Err(e) if locked(&e) => return Err(Error::Locked(dir.display().to_string())),
                Err(e) => return Err(Error::Sled(e)),
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
    fn room(&self) -> Result<(), Error> {
        if !self.room.get() {
            self.space.check()?;
            self.room.set(true);
        }
        Ok(())
    }
}

/// sled's conflict travels as [`Error::Retry`] through the typed layer
/// and back, so that sled runs the transaction again.
fn unabortable(e: UnabortableTransactionError) -> Error {
    match e {
        UnabortableTransactionError::Conflict => Error::Retry,
        UnabortableTransactionError::Storage(e) => Error::Sled(e),
    }
}

impl BackendTx for SledTx<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.views[tree.index()].get(key).map_err(unabortable)?.map(|v| v.to_vec()))
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), Error> {
        self.room()?;
        self.views[tree.index()].insert(key, value).map_err(unabortable)?;
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.room()?;
        Ok(self.views[tree.index()].remove(key).map_err(unabortable)?.map(|v| v.to_vec()))
    }
}

impl Backend for SledBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.tree(tree).get(key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Pairs, Error> {
        self.tree(tree).scan_prefix(prefix).map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Error::from)).collect()
    }

    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<Pairs, Error> {
        let pair = |item: sled::Result<(sled::IVec, sled::IVec)>| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Error::from);
        let range = self.tree(tree).range(from..to);
        if newest_first {
            range.rev().take(limit).map(pair).collect()
        } else {
            range.take(limit).map(pair).collect()
        }
    }

    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, Error> {
        let mut n = 0;
        for key in self.tree(tree).range(from..to).keys() {
            key?;
            n += 1;
        }
        Ok(n)
    }

    fn transaction(&self, body: TxBody<'_>) -> Result<(), Error> {
        let trees: Vec<&sled::Tree> = self.trees.iter().collect();
        let body = RefCell::new(body);
        let result = trees.as_slice().transaction(|views| {
            let tx = SledTx { views, space: &self.space, room: Cell::new(false) };
            match (body.borrow_mut())(&tx) {
                Ok(()) => Ok(()),
                Err(Error::Retry) => Err(ConflictableTransactionError::Conflict),
                Err(Error::Sled(e)) => Err(ConflictableTransactionError::Storage(e)),
                Err(other) => Err(ConflictableTransactionError::Abort(other)),
            }
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => Error::Sled(e),
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        // On tokio's blocking pool, not sled's own `flush_async`: that runs
        // the flush on sled's I/O threads, and concurrent flushes can take
        // every one of them while the writes they wait for need one too.
        // Concurrent callers share one flush: see `Store::flush`.
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.flush()).await.map_err(|e| Error::Sled(sled::Error::ReportableBug(format!("flush task: {e}"))))??;
            Ok(())
        })
    }

    fn flush_blocking(&self) -> Result<(), Error> {
        self.db.flush()?;
        Ok(())
    }
}
