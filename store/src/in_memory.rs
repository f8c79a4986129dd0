//! The same trees in memory, with the same transactions.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::backend::{Backend, BackendTx, BoxFuture, Pairs, Tree, TxBody};
use crate::Error;

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
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(written) = self.writes.borrow().get(&(tree, key.to_vec())) {
            return Ok(written.clone());
        }
        Ok(self.base.get(&tree).and_then(|t| t.get(key)).cloned())
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), Error> {
        self.writes.borrow_mut().insert((tree, key.to_vec()), Some(value));
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
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
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock().get(&tree).and_then(|t| t.get(key)).cloned())
    }

    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Pairs, Error> {
        Ok(self
            .lock()
            .get(&tree)
            .map(|t| t.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<Pairs, Error> {
        let trees = self.lock();
        let Some(t) = trees.get(&tree) else { return Ok(Vec::new()) };
        let range = t.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to)));
        let pair = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if newest_first { range.rev().take(limit).map(pair).collect() } else { range.take(limit).map(pair).collect() })
    }

    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, Error> {
        let trees = self.lock();
        Ok(trees.get(&tree).map_or(0, |t| t.range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to))).count()))
    }

    fn transaction(&self, body: TxBody<'_>) -> Result<(), Error> {
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

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn flush_blocking(&self) -> Result<(), Error> {
        Ok(())
    }
}
