//! The key-value seam under the coordinator's store: a [`Backend`] keeps
//! byte values in named [`Tree`]s and runs all-or-nothing transactions over
//! them. Everything typed (records, envelopes, migrations) lives above it,
//! in the coordinator, so every backend behaves the same for every record.
//!
//! [`SledBackend`] is the embedded default; [`MemoryBackend`] keeps the same
//! trees in memory; [`EtcdBackend`] keeps them in an etcd cluster, for
//! several coordinators over one replicated store. Every backend keeps the byte-level [`contract`]; the
//! coordinator runs its typed store's suite over each one as well.

pub mod backend;
pub mod contract;
pub mod etcd_cluster;
mod in_memory;
mod on_disk;
mod on_etcd;

pub use backend::{Backend, BackendTx, BoxFuture, Pairs, Tree, TxBody, Watched};
pub use in_memory::MemoryBackend;
pub use on_disk::{SledBackend, SledOptions};
pub use on_etcd::{EtcdBackend, EtcdOptions, EtcdTls, CLAIM_KEY, DEFAULT_MAX_REQUEST_BYTES, PRESENCE_PREFIX};

/// A process announced among the coordinators of a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub name: String,
    pub value: Vec<u8>,
    /// Seconds its lease has left (-1: gone or unknown).
    pub ttl_left_s: i64,
    /// Whether it leads (holds the leader key on its lease).
    pub leads: bool,
}

/// What can go wrong below the records: the backend's own failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("store i/o failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("another coordinator holds the store in {0}; stop it first (only one `drover serve` per state directory)")]
    Locked(String),
    /// The store's filesystem is nearly full: writes are refused, reads work.
    #[error("the coordinator's state directory {path} has {free_mib} MiB free, less than limits.min_free_disk_mib ({min_mib} MiB): changes are refused until space is freed there (reads keep working, nothing was written)")]
    Full { path: String, free_mib: u64, min_mib: u64 },
    /// The backend must run the transaction again (a write conflict).
    #[error("transaction conflict")]
    Retry,
    /// The transaction's body refused; the caller keeps its own error.
    #[error("transaction aborted")]
    Aborted,
    /// A replicated store cannot be written or read now: its members do
    /// not answer, or too few of them do to form a quorum.
    #[error("the store is unavailable (etcd has no quorum or does not answer; nothing was sent): {0}")]
    Unavailable(String),
    /// Another process leads the processes sharing the store.
    #[error("another coordinator leads this fleet ({0})")]
    Held(String),
    /// This process's lease ran out and another took what it held (the
    /// lead, or its name): nothing it writes is accepted any more.
    #[error("this coordinator lost its claim on the store (its lease ran out while it was paused or cut off, and another coordinator took over): the write was refused")]
    Fenced,
    /// A transaction was sent to a replicated store and not confirmed in
    /// time (quorum lost while it was on its way): it may still be applied,
    /// whole, when the store answers again.
    #[error("the store did not confirm the change in time (etcd lost quorum or does not answer): it may still be applied, whole or not at all, when the store answers again; check before repeating it ({0})")]
    Uncertain(String),
    /// A transaction larger than the backend takes in one piece.
    #[error("{0}")]
    TooLarge(String),
}
