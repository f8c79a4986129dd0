//! The byte-level contract against each backend that runs here.

use std::sync::Arc;

use drover_store::{contract, Backend, MemoryBackend, SledBackend, SledOptions, Tree};

#[test]
fn memory_keeps_the_contract() {
    contract::run_all(|| Arc::new(MemoryBackend::default()));
}

#[test]
fn sled_keeps_the_contract() {
    let dirs = std::cell::RefCell::new(Vec::new());
    contract::run_all(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SledBackend::open(dir.path(), SledOptions { cache_bytes: 1 << 20, min_free_bytes: 0 }).expect("open sled");
        dirs.borrow_mut().push(dir);
        Arc::new(backend)
    });
}

#[test]
fn sled_survives_reopening_with_what_was_flushed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SledOptions { cache_bytes: 1 << 20, min_free_bytes: 0 };
    {
        let backend = SledBackend::open(dir.path(), options).expect("open");
        contract::writes_are_read_back_from_every_tree(&backend);
        backend.transaction(&mut |tx| tx.insert(Tree::Fleet, b"kept", b"yes".to_vec())).expect("write");
        backend.flush_blocking().expect("flush");
    }
    let again = SledBackend::open(dir.path(), options).expect("open again");
    assert_eq!(again.get(Tree::Fleet, b"kept").expect("read").as_deref(), Some(&b"yes"[..]));
}
