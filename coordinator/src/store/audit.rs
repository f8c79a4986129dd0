//! The audit log, in two parts of one tree. Entries by admins are keyed
//! `<at>-<seq>` (20 decimal digits each, so keys sort by time); entries by
//! everyone else — refusal summaries included — have the same key after
//! `~`, so the parts sort apart. Retention ([`AuditRetention`]) is by age,
//! then by count: when the log holds more than its count, the oldest
//! entries of the second part go first, so that nothing an operator or a
//! viewer does can evict an admin's entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::model::AuditRecord;

use super::{Record, Store, StoreError, Tree};

impl Record for AuditRecord {
    const TREE: Tree = Tree::Audit;
    const WHAT: &'static str = "audit entry";
}

/// Which part of the log an entry is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditPart {
    /// Requests by admins (the role that can add and remove admins).
    Admins,
    /// Requests by operators, viewers and unknown certificates.
    Others,
}

impl AuditPart {
    const ALL: [AuditPart; 2] = [AuditPart::Admins, AuditPart::Others];

    /// The keys of this part lie in `start..end`.
    fn start(self) -> &'static [u8] {
        match self {
            AuditPart::Admins => b"0",
            AuditPart::Others => b"~",
        }
    }

    fn end(self) -> &'static [u8] {
        match self {
            AuditPart::Admins => b":",
            AuditPart::Others => b"\x7f",
        }
    }

    fn key(self, suffix: &str) -> Vec<u8> {
        match self {
            AuditPart::Admins => suffix.as_bytes().to_vec(),
            AuditPart::Others => [b"~", suffix.as_bytes()].concat(),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How long and how much of the audit log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// Entries older than this many days are removed.
    pub days: u64,
    /// At most this many entries in all; beyond it the oldest of
    /// [`AuditPart::Others`] go first.
    pub entries: usize,
}

/// An entry with its position in the log (`<at>-<seq>`), which a reader
/// passes back to continue after it.
pub type AuditItem = (String, AuditRecord);

/// Entries written between two prunings.
const PRUNE_EVERY: u64 = 1_000;

/// Entries removed per transaction while pruning.
const PRUNE_BATCH: usize = 10_000;

/// Entries read per step while walking the log.
const WALK: usize = 1_000;

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Entries in each part, counted once and then kept up to date.
#[derive(Default)]
pub(super) struct AuditCounts {
    counts: Mutex<Option<[usize; 2]>>,
}

impl AuditCounts {
    /// Counts again at the next use (the tree was replaced).
    pub(super) fn forget(&self) {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn suffix_of(part: AuditPart, key: &[u8]) -> String {
    let key = if part == AuditPart::Others { &key[1..] } else { key };
    String::from_utf8_lossy(key).into_owned()
}

impl Store {
    fn audit_counts(&self) -> Result<[usize; 2], StoreError> {
        let mut counts = self.audit.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = *counts {
            return Ok(c);
        }
        let mut c = [0; 2];
        for part in AuditPart::ALL {
            c[part.index()] = self.backend.count(Tree::Audit, part.start(), part.end())?;
        }
        *counts = Some(c);
        Ok(c)
    }

    fn adjust_audit_count(&self, part: AuditPart, added: usize, removed: usize) {
        let mut counts = self.audit.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = counts.as_mut() {
            c[part.index()] = (c[part.index()] + added).saturating_sub(removed);
        }
    }

    /// Records one entry durably in `part`, pruning now and then.
    pub async fn record_audit(&self, entry: &AuditRecord, part: AuditPart, retention: AuditRetention) -> Result<(), StoreError> {
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let key = part.key(&format!("{:020}-{n:020}", entry.at));
        self.commit(|tx| tx.put(&key, entry)).await?;
        self.adjust_audit_count(part, 1, 0);
        if n % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune_audit(retention, entry.at)?;
        }
        Ok(())
    }

    /// Entries in each part: (admins', others').
    pub fn audit_len(&self) -> Result<(usize, usize), StoreError> {
        let c = self.audit_counts()?;
        Ok((c[0], c[1]))
    }

    /// Removes what `retention` no longer keeps at time `now`: entries older
    /// than its days, then the oldest beyond its count (others' first).
    /// Returns how many were removed.
    pub fn prune_audit(&self, retention: AuditRetention, now: u64) -> Result<usize, StoreError> {
        let cutoff = now.saturating_sub(retention.days.saturating_mul(86_400_000));
        let mut removed = 0;
        for part in AuditPart::ALL {
            let before = part.key(&format!("{cutoff:020}"));
            removed += self.remove_oldest(part, &before, usize::MAX)?;
        }
        let counts = self.audit_counts()?;
        let mut excess = (counts[0] + counts[1]).saturating_sub(retention.entries);
        for part in [AuditPart::Others, AuditPart::Admins] {
            let gone = self.remove_oldest(part, part.end(), excess)?;
            excess -= gone;
            removed += gone;
        }
        Ok(removed)
    }

    /// Removes up to `max` of the oldest entries of `part` whose keys lie
    /// before `before`.
    fn remove_oldest(&self, part: AuditPart, before: &[u8], max: usize) -> Result<usize, StoreError> {
        let mut removed = 0;
        while removed < max {
            let keys: Vec<Vec<u8>> =
                self.backend.range(Tree::Audit, part.start(), before, PRUNE_BATCH.min(max - removed), false)?.into_iter().map(|(k, _)| k).collect();
            if keys.is_empty() {
                break;
            }
            self.transact(|tx| {
                for key in &keys {
                    tx.remove_raw(Tree::Audit, key)?;
                }
                Ok::<_, StoreError>(())
            })?;
            removed += keys.len();
            self.adjust_audit_count(part, 0, keys.len());
        }
        Ok(removed)
    }

    /// The newest `limit` entries at or after `since` that `keep` accepts,
    /// oldest first.
    pub fn audit_newest(&self, since: u64, limit: usize, keep: impl Fn(&AuditRecord) -> bool) -> Result<Vec<AuditItem>, StoreError> {
        let mut all = Vec::new();
        for part in AuditPart::ALL {
            let from = part.key(&format!("{since:020}"));
            let mut to = part.end().to_vec();
            let mut found = Vec::new();
            while found.len() < limit {
                let pairs = self.backend.range(Tree::Audit, &from, &to, WALK, true)?;
                let Some((last, _)) = pairs.last() else { break };
                to = last.clone();
                let more = pairs.len() == WALK;
                for (k, v) in pairs {
                    if let Some(record) = self.decode_audit(&k, &v).filter(|r| keep(r)) {
                        found.push((suffix_of(part, &k), record));
                    }
                }
                if !more {
                    break;
                }
            }
            all.extend(found);
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let skip = all.len().saturating_sub(limit);
        all.drain(..skip);
        Ok(all)
    }

    /// Up to `limit` entries after position `after` (from the start when
    /// `None`), oldest first: for reading the whole log page by page.
    pub fn audit_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<AuditItem>, StoreError> {
        let mut all = Vec::new();
        for part in AuditPart::ALL {
            let from = match after {
                // Keys have one length, so the first after `a` is at or after `a\0`.
                Some(a) => [part.key(a), vec![0]].concat(),
                None => part.start().to_vec(),
            };
            for (k, v) in self.backend.range(Tree::Audit, &from, part.end(), limit, false)? {
                if let Some(record) = self.decode_audit(&k, &v) {
                    all.push((suffix_of(part, &k), record));
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.truncate(limit);
        Ok(all)
    }

    fn decode_audit(&self, key: &[u8], value: &[u8]) -> Option<AuditRecord> {
        match super::codec::decode(Tree::Audit, key, value) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "unreadable audit entry skipped");
                None
            }
        }
    }
}
