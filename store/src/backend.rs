//! The seam: a [`Backend`] keeps byte values in named [`Tree`]s and runs
//! all-or-nothing transactions over them.

use std::future::Future;
use std::pin::Pin;

use crate::Error;

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
    /// NixOps4 state documents, by name.
    NixopsStates,
    /// Their events, by name and index.
    NixopsEvents,
    /// What the machines of a deployment share (its system, secrets,
    /// checks), once, by the SHA-256 of its content.
    Specs,
}

impl Tree {
    pub const ALL: [Tree; 17] = [
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
        Tree::NixopsStates,
        Tree::NixopsEvents,
        Tree::Specs,
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
            Tree::NixopsStates => "nixops_states",
            Tree::NixopsEvents => "nixops_events",
            Tree::Specs => "specs",
        }
    }

    /// The tree of a name, as [`Tree::name`] gives it.
    pub fn named(name: &str) -> Option<Tree> {
        Tree::ALL.into_iter().find(|t| t.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        Tree::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// Key-value pairs, as a scan returns them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A change to a watched tree ([`Backend::watch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// A key (within the tree) and its new value.
    Put(Vec<u8>, Vec<u8>),
    Deleted(Vec<u8>),
    /// Changes may have been missed: read again whatever matters.
    Resync,
}

/// Reads and writes inside one transaction.
pub trait BackendTx {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), Error>;
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// Reads `keys` ahead, in as few round trips as the store allows, so
    /// that the `get`s that follow cost none (a store in this process
    /// reads them when asked).
    fn prefetch(&self, _keys: &[(Tree, &[u8])]) -> Result<(), Error> {
        Ok(())
    }
}

/// The transaction body a backend runs; it may run more than once.
pub type TxBody<'a> = &'a mut dyn FnMut(&dyn BackendTx) -> Result<(), Error>;

/// Byte storage in named trees with all-or-nothing transactions.
pub trait Backend: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Pairs, Error>;
    /// At most `limit` pairs whose keys lie in `from..to`, in key order, or
    /// from the end when `newest_first`.
    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<Pairs, Error>;
    /// How many keys lie in `from..to`.
    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, Error>;
    /// Runs `body` over all trees: either every write it made lands, or
    /// (when it returns an error) none does.
    fn transaction(&self, body: TxBody<'_>) -> Result<(), Error>;
    /// Makes every write so far durable, off the async workers.
    fn flush(&self) -> BoxFuture<'_, Result<(), Error>>;
    /// The same, blocking the calling thread (startup, shutdown, tools).
    fn flush_blocking(&self) -> Result<(), Error>;
    /// Turns true when this process lost its claim on a shared store
    /// (another took it over): it must stop serving. `None` for a store
    /// no other process can take (sled holds a file lock, memory).
    fn lost(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
    /// How many keys one transaction may read, and how many it may write
    /// (etcd's `--max-txn-ops`); `None` when any number fits in memory.
    fn max_txn_ops(&self) -> Option<usize> {
        None
    }
    /// How many bytes of keys and values one transaction may send (etcd's
    /// `--max-request-bytes`); `None` when any size fits.
    fn max_request_bytes(&self) -> Option<usize> {
        None
    }
    /// Replaces what this process announced among the coordinators of a
    /// shared store (see `EtcdBackend::announce`); nothing elsewhere.
    fn reannounce(&self, _value: &[u8]) -> Result<(), Error> {
        Ok(())
    }
    /// The coordinators announced in a shared store; `None` for a store
    /// only one process opens.
    fn presences(&self) -> Result<Option<Vec<crate::Presence>>, Error> {
        Ok(None)
    }
    /// Tries to lead the processes sharing the store (one at a time leads,
    /// until its lease ends); true while this one leads. A store only one
    /// process opens: always true.
    fn campaign(&self) -> Result<bool, Error> {
        Ok(true)
    }
    /// Changes other processes make to `tree`, as they happen; `None` for a
    /// store only one process opens (nobody else changes it).
    fn watch(&self, _tree: Tree) -> Option<tokio::sync::mpsc::Receiver<Watched>> {
        None
    }
    /// Whether this process's claim on a shared store may have run out:
    /// its lease was not renewed in time (the store cut off, or without
    /// quorum), so another process may hold it now. A coordinator stops
    /// serving while it is so.
    fn claim_lapsed(&self) -> bool {
        false
    }
    /// Takes this process's lapsed claim again, when nobody else took it
    /// (or it turns out to live still); [`Error::Fenced`] when another
    /// holds it (and [`Backend::lost`] turns true).
    fn reclaim(&self) -> Result<(), Error> {
        Ok(())
    }
}
