//! Group commit for transactions: writes from many callers at once run in
//! one backend transaction. On sled every transaction, however small, takes
//! the store's one write lock, opens every tree and seals a batch in the
//! log, which its I/O threads then write out: a deployment to thousands of
//! machines, whose every agent reports at once, spent more of the
//! coordinator's time on that than on the reports. Each caller's body
//! still succeeds or refuses alone: its writes are kept apart
//! ([`Overlay`]) until it returns, and dropped when it refuses. A store
//! that bounds a transaction's operations (etcd) runs each write as its
//! own transaction.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use drover_store::{BackendTx, Tree};

use super::{InTransaction, Store, StoreError, Tx};

/// The most callers' bodies one transaction runs; the rest wait for the
/// next.
pub(super) const MAX_GROUP: usize = 256;

/// One caller's body waiting for its group's transaction.
struct Job {
    /// Runs the body in the group's transaction and keeps its answer; true
    /// when it succeeded (its writes are kept).
    run: Box<dyn for<'t> FnMut(&Tx<'t>) -> bool + Send>,
    /// Told how the group's transaction ended.
    done: tokio::sync::oneshot::Sender<Result<(), drover_store::Error>>,
}

/// The bodies waiting, and the turn to run them.
#[derive(Default)]
pub(super) struct Groups {
    waiting: Mutex<Vec<Job>>,
    turn: tokio::sync::Mutex<()>,
}

impl Groups {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many bodies wait for a transaction (tests).
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.waiting().len()
    }

    /// Takes the turn, so that bodies queue up until it is dropped (tests).
    #[cfg(test)]
    pub(super) async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }
}

impl Store {
    /// [`Store::write`] for bodies that own what they use: it runs in one
    /// transaction with the other callers' waiting meanwhile (at most
    /// [`MAX_GROUP`]), its writes landing only when it succeeds. Whoever
    /// finds bodies waiting runs them; the others find theirs done. A
    /// caller that stops waiting does not stop its body once queued.
    pub async fn write_grouped<T, E>(&self, body: impl Fn(&Tx) -> Result<T, E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        if self.backend.max_txn_ops().is_some() || self.txn_limit.is_some() {
            return self.write(body).await;
        }
        let answer: Arc<Mutex<Option<Result<T, E>>>> = Arc::default();
        let (done, mut ended) = tokio::sync::oneshot::channel();
        let keep = answer.clone();
        let run: Box<dyn for<'t> FnMut(&Tx<'t>) -> bool + Send> = Box::new(move |tx| {
            let result = body(tx);
            let succeeded = result.is_ok();
            *keep.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            succeeded
        });
        self.groups.waiting().push(Job { run, done });
        // Told: the group's transaction ended. Closed: the body was taken
        // and dropped without running (its runner stopped).
        let over = |ended: &mut tokio::sync::oneshot::Receiver<_>| match ended.try_recv() {
            Ok(result) => Some(result),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(Err(drover_store::Error::Aborted)),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
        };
        let ended = loop {
            if let Some(result) = over(&mut ended) {
                break result;
            }
            let _turn = self.groups.turn.lock().await;
            if let Some(result) = over(&mut ended) {
                break result;
            }
            // Nothing is awaited between taking the bodies and running
            // them: a runner cannot stop with bodies taken and not run.
            let _lane = self.flushes.lane.read().await;
            let jobs: Vec<Job> = {
                let mut waiting = self.groups.waiting();
                let take = waiting.len().min(MAX_GROUP);
                waiting.drain(..take).collect()
            };
            self.run_group(jobs);
        };
        ended.map_err(StoreError::from)?;
        let answer = answer.lock().unwrap_or_else(|p| p.into_inner()).take();
        answer.unwrap_or_else(|| Err(StoreError::from(drover_store::Error::Aborted).into()))
    }

    /// [`Store::write_grouped`], then a flush (shared with the others').
    pub async fn commit_grouped<T, E>(&self, body: impl Fn(&Tx) -> Result<T, E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let value = self.write_grouped(body).await?;
        self.flush().await?;
        Ok(value)
    }

    /// Runs `jobs` in one transaction and tells each how it ended.
    fn run_group(&self, mut jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let _shared = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let result = self.backend.transaction(&mut |inner| {
            for job in &mut jobs {
                let overlay = Overlay { under: inner, writes: RefCell::default() };
                let tx = Tx { inner: &overlay, failure: RefCell::new(None), ops: Default::default(), specs: &self.specs, specs_kept: RefCell::default() };
                let succeeded = {
                    let _inside = InTransaction::enter();
                    (job.run)(&tx)
                };
                if let Some(failure) = tx.failure.into_inner() {
                    // The backend's own trouble: the whole group again, or
                    // its error for every body.
                    return Err(failure);
                }
                if succeeded {
                    overlay.apply()?;
                }
            }
            Ok(())
        });
        if result.is_ok() {
            self.flushes.written.fetch_add(1, SeqCst);
        }
        for job in jobs {
            let _ = job.done.send(result.clone());
        }
    }
}

/// Values written by key; `None`: removed.
type Writes = BTreeMap<(Tree, Vec<u8>), Option<Vec<u8>>>;

/// One body's writes within a group's transaction, read back by the body
/// and kept from the transaction until the body succeeds.
struct Overlay<'a> {
    under: &'a dyn BackendTx,
    writes: RefCell<Writes>,
}

impl Overlay<'_> {
    fn apply(self) -> Result<(), drover_store::Error> {
        for ((tree, key), value) in self.writes.into_inner() {
            match value {
                Some(value) => self.under.insert(tree, &key, value)?,
                None => {
                    self.under.remove(tree, &key)?;
                }
            }
        }
        Ok(())
    }
}

impl BackendTx for Overlay<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, drover_store::Error> {
        if let Some(value) = self.writes.borrow().get(&(tree, key.to_vec())) {
            return Ok(value.clone());
        }
        self.under.get(tree, key)
    }

    fn insert(&self, tree: Tree, key: &[u8], value: Vec<u8>) -> Result<(), drover_store::Error> {
        self.writes.borrow_mut().insert((tree, key.to_vec()), Some(value));
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, drover_store::Error> {
        let before = self.get(tree, key)?;
        self.writes.borrow_mut().insert((tree, key.to_vec()), None);
        Ok(before)
    }

    fn prefetch(&self, keys: &[(Tree, &[u8])]) -> Result<(), drover_store::Error> {
        self.under.prefetch(keys)
    }
}
