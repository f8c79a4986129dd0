//! A store backend for tests of how the application writes: memory
//! underneath, with flushes that wait until the test lets them finish and
//! counters of transactions and flushes. While a flush is held, a writer on
//! the async side must wait for it (the store's flush lane) instead of
//! running a transaction: `transactions_during_flush` says whether one did.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use drover_store::{Backend, BoxFuture, Error as StoreError, MemoryBackend, Pairs, Tree, TxBody};

pub struct GatedBackend {
    inner: MemoryBackend,
    flushing: AtomicBool,
    pub transactions: AtomicUsize,
    /// Transactions that ran while a flush was held.
    pub transactions_during_flush: AtomicUsize,
    pub flushes: AtomicUsize,
    started: tokio::sync::Notify,
    permits: Arc<tokio::sync::Semaphore>,
}

impl GatedBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(GatedBackend {
            inner: MemoryBackend::default(),
            flushing: AtomicBool::new(false),
            transactions: AtomicUsize::new(0),
            transactions_during_flush: AtomicUsize::new(0),
            flushes: AtomicUsize::new(0),
            started: tokio::sync::Notify::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(0)),
        })
    }

    /// Lets flushes finish without waiting from now on (`n` at a time).
    pub fn release_flushes(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Holds every flush from now on (until [`Self::release_flushes`]).
    pub fn hold_flushes(&self) {
        let available = self.permits.available_permits();
        if let Ok(permits) = self.permits.try_acquire_many(u32::try_from(available).unwrap_or(u32::MAX)) {
            permits.forget();
        }
    }

    /// Waits until a flush has started (and is held).
    pub async fn flush_started(&self) {
        loop {
            // Registered before the check, so a flush starting in between
            // is not missed.
            let notified = self.started.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.flushing.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl Backend for GatedBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.inner.scan(tree, prefix)
    }
    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<Pairs, StoreError> {
        self.inner.range(tree, from, to, limit, newest_first)
    }
    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, StoreError> {
        self.inner.count(tree, from, to)
    }
    fn transaction(&self, body: TxBody<'_>) -> Result<(), StoreError> {
        self.transactions.fetch_add(1, Ordering::SeqCst);
        if self.flushing.load(Ordering::SeqCst) {
            self.transactions_during_flush.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.transaction(body)
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            self.flushing.store(true, Ordering::SeqCst);
            self.started.notify_waiters();
            let permit = self.permits.acquire().await;
            self.flushing.store(false, Ordering::SeqCst);
            permit.map_err(|_| StoreError::Aborted)?.forget();
            Ok(())
        })
    }
    fn flush_blocking(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A store backend that stops at a chosen transaction, as a coordinator
/// killed there would: memory underneath; once armed with `n`, the `n`-th
/// transaction from then on and every one after it fail without writing
/// (reads go on), until [`CrashingBackend::revive`] — the next process
/// starting over the same store.
#[derive(Default)]
pub struct CrashingBackend {
    inner: MemoryBackend,
    /// Transactions left before the crash; `usize::MAX` when not armed.
    left: AtomicUsize,
    crashed: AtomicBool,
}

impl CrashingBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(CrashingBackend { inner: MemoryBackend::default(), left: AtomicUsize::new(usize::MAX), crashed: AtomicBool::new(false) })
    }

    /// Fails the `n`-th transaction from now (1: the next) and all after.
    pub fn crash_at(&self, n: usize) {
        self.left.store(n, Ordering::SeqCst);
    }

    /// Whether the crash happened.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Takes transactions again.
    pub fn revive(&self) {
        self.left.store(usize::MAX, Ordering::SeqCst);
        self.crashed.store(false, Ordering::SeqCst);
    }
}

impl Backend for CrashingBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.inner.scan(tree, prefix)
    }
    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<Pairs, StoreError> {
        self.inner.range(tree, from, to, limit, newest_first)
    }
    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, StoreError> {
        self.inner.count(tree, from, to)
    }
    fn transaction(&self, body: TxBody<'_>) -> Result<(), StoreError> {
        let left = self.left.load(Ordering::SeqCst);
        if self.crashed() || left == 1 {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(StoreError::Unavailable("the test stopped the store here".into()));
        }
        if left != usize::MAX {
            self.left.store(left - 1, Ordering::SeqCst);
        }
        self.inner.transaction(body)
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.flush()
    }
    fn flush_blocking(&self) -> Result<(), StoreError> {
        self.inner.flush_blocking()
    }
}
