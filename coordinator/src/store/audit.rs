//! The audit log, keyed by time (20 decimal digits, so keys sort by time)
//! and a sequence number; the oldest entries beyond [`AUDIT_KEEP`] are
//! removed.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::AuditRecord;

use super::{Record, Store, StoreError, Tree};

impl Record for AuditRecord {
    const TREE: Tree = Tree::Audit;
    const WHAT: &'static str = "audit entry";
}

/// Entries kept; older ones are removed as new ones come.
pub const AUDIT_KEEP: usize = 100_000;

/// Entries written between two prunings.
const PRUNE_EVERY: u64 = 1_000;

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Records one entry durably.
    pub async fn record_audit(&self, entry: &AuditRecord) -> Result<(), StoreError> {
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let key = format!("{:020}-{n:020}", entry.at);
        self.commit(|tx| tx.put(key.as_bytes(), entry)).await?;
        if n % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune_audit(AUDIT_KEEP)?;
        }
        Ok(())
    }

    /// Removes the oldest entries beyond `keep`.
    pub fn prune_audit(&self, keep: usize) -> Result<(), StoreError> {
        let keys: Vec<Vec<u8>> = self.backend.scan(Tree::Audit, b"")?.into_iter().map(|(k, _)| k).collect();
        let excess = keys.len().saturating_sub(keep);
        if excess == 0 {
            return Ok(());
        }
        self.transact(|tx| {
            for key in &keys[..excess] {
                tx.remove_raw(Tree::Audit, key)?;
            }
            Ok::<_, StoreError>(())
        })
    }

    /// Entries from `since` on, oldest first.
    pub fn audit(&self, since: u64) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self.list::<AuditRecord>(b"")?.into_iter().filter(|e| e.at >= since).collect())
    }
}
