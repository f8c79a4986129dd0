//! What every [`Backend`] must do, as checks a backend's tests call with a
//! fresh, empty backend of their kind (see `tests/contract.rs`). Each check
//! panics with what the backend got wrong.
//!
//! The typed store above (records, envelopes, flush lane) has its own suite
//! in the coordinator, run over every backend too.

use std::sync::Arc;

use crate::{Backend, Error, Tree};

/// Every check, in order, each on its own fresh backend from `fresh`.
pub fn run_all(mut fresh: impl FnMut() -> Arc<dyn Backend>) {
    for (name, check) in CHECKS {
        let backend = fresh();
        check(backend.as_ref());
        eprintln!("store contract: {name} holds");
    }
}

type Check = fn(&dyn Backend);

/// The checks by name.
pub const CHECKS: [(&str, Check); 10] = [
    ("writes are read back from every tree", writes_are_read_back_from_every_tree),
    ("a failed transaction writes nothing", a_failed_transaction_writes_nothing),
    ("a transaction reads its own writes", a_transaction_reads_its_own_writes),
    ("scans return a prefix in key order", scans_return_a_prefix_in_key_order),
    ("ranges are half open, limited and reversible", ranges_are_half_open_limited_and_reversible),
    ("trees are apart", trees_are_apart),
    ("flushes succeed", flushes_succeed),
    ("concurrent transactions are serializable", concurrent_transactions_are_serializable),
    ("keys read ahead read as when asked", keys_read_ahead_read_as_when_asked),
    ("long scans and ranges come whole and in order", long_scans_and_ranges_come_whole_and_in_order),
];

fn put(backend: &dyn Backend, tree: Tree, key: &[u8], value: &[u8]) {
    backend.transaction(&mut |tx| tx.insert(tree, key, value.to_vec())).unwrap_or_else(|e| panic!("a write to {} failed: {e}", tree.name()));
}

fn get(backend: &dyn Backend, tree: Tree, key: &[u8]) -> Option<Vec<u8>> {
    backend.get(tree, key).unwrap_or_else(|e| panic!("a read of {} failed: {e}", tree.name()))
}

pub fn writes_are_read_back_from_every_tree(backend: &dyn Backend) {
    for tree in Tree::ALL {
        assert_eq!(get(backend, tree, b"k"), None, "a fresh backend holds nothing in {}", tree.name());
        put(backend, tree, b"k", tree.name().as_bytes());
        assert_eq!(get(backend, tree, b"k").as_deref(), Some(tree.name().as_bytes()), "{}", tree.name());
        put(backend, tree, b"k", b"again");
        assert_eq!(get(backend, tree, b"k").as_deref(), Some(&b"again"[..]), "a second write replaces the first in {}", tree.name());
        let mut removed = None;
        backend
            .transaction(&mut |tx| {
                removed = tx.remove(tree, b"k")?;
                Ok(())
            })
            .expect("remove");
        assert_eq!(removed.as_deref(), Some(&b"again"[..]), "a removal returns what it removed");
        assert_eq!(get(backend, tree, b"k"), None, "removed from {}", tree.name());
    }
}

pub fn a_failed_transaction_writes_nothing(backend: &dyn Backend) {
    put(backend, Tree::Machines, b"kept", b"before");
    let result = backend.transaction(&mut |tx| {
        tx.insert(Tree::Machines, b"kept", b"after".to_vec())?;
        tx.insert(Tree::Deployments, b"new", b"x".to_vec())?;
        tx.remove(Tree::Machines, b"kept")?;
        Err(Error::Aborted)
    });
    assert!(matches!(result, Err(Error::Aborted)), "the body's refusal comes back: {result:?}");
    assert_eq!(get(backend, Tree::Machines, b"kept").as_deref(), Some(&b"before"[..]), "no write of a failed transaction lands");
    assert_eq!(get(backend, Tree::Deployments, b"new"), None, "not in another tree either");
}

pub fn a_transaction_reads_its_own_writes(backend: &dyn Backend) {
    put(backend, Tree::Tokens, b"a", b"1");
    backend
        .transaction(&mut |tx| {
            assert_eq!(tx.get(Tree::Tokens, b"a")?.as_deref(), Some(&b"1"[..]), "committed values are visible");
            tx.insert(Tree::Tokens, b"a", b"2".to_vec())?;
            assert_eq!(tx.get(Tree::Tokens, b"a")?.as_deref(), Some(&b"2"[..]), "its own write is visible");
            tx.remove(Tree::Tokens, b"a")?;
            assert_eq!(tx.get(Tree::Tokens, b"a")?, None, "its own removal is visible");
            tx.insert(Tree::Tokens, b"b", b"3".to_vec())?;
            Ok(())
        })
        .expect("transaction");
    assert_eq!(get(backend, Tree::Tokens, b"a"), None);
    assert_eq!(get(backend, Tree::Tokens, b"b").as_deref(), Some(&b"3"[..]));
}

pub fn scans_return_a_prefix_in_key_order(backend: &dyn Backend) {
    for key in ["m-2/b", "m-1/b", "m-10/a", "m-1/a", "n-1/a", "m-"] {
        put(backend, Tree::Assignments, key.as_bytes(), key.as_bytes());
    }
    let keys = |prefix: &str| -> Vec<String> {
        backend
            .scan(Tree::Assignments, prefix.as_bytes())
            .expect("scan")
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(k, v, "each key comes with its own value");
                String::from_utf8(k).expect("utf-8")
            })
            .collect()
    };
    assert_eq!(keys("m-1/"), ["m-1/a", "m-1/b"]);
    assert_eq!(keys("m-1"), ["m-1/a", "m-1/b", "m-10/a"]);
    assert_eq!(keys(""), ["m-", "m-1/a", "m-1/b", "m-10/a", "m-2/b", "n-1/a"], "an empty prefix is the whole tree, in byte order");
    assert!(keys("o").is_empty());
}

pub fn ranges_are_half_open_limited_and_reversible(backend: &dyn Backend) {
    for n in 0u8..10 {
        put(backend, Tree::Audit, &[b'a', n], &[n]);
    }
    let values = |from: &[u8], to: &[u8], limit: usize, newest_first: bool| -> Vec<u8> {
        backend.range(Tree::Audit, from, to, limit, newest_first).expect("range").into_iter().map(|(_, v)| v[0]).collect()
    };
    assert_eq!(values(&[b'a', 2], &[b'a', 5], 100, false), [2, 3, 4], "from is included, to is not");
    assert_eq!(values(&[b'a', 2], &[b'a', 9], 3, false), [2, 3, 4], "at most the limit, oldest first");
    assert_eq!(values(&[b'a', 2], &[b'a', 9], 3, true), [8, 7, 6], "newest first from the end");
    assert_eq!(values(&[b'a', 5], &[b'a', 5], 100, false), Vec::<u8>::new(), "an empty range");
    assert_eq!(backend.count(Tree::Audit, &[b'a', 0], &[b'a', 10]).expect("count"), 10);
    assert_eq!(backend.count(Tree::Audit, &[b'a', 3], &[b'a', 6]).expect("count"), 3);
    assert_eq!(backend.count(Tree::Machines, b"", &[0xff]).expect("count"), 0, "another tree counts its own keys");
}

pub fn trees_are_apart(backend: &dyn Backend) {
    put(backend, Tree::Machines, b"same", b"machine");
    put(backend, Tree::Tenants, b"same", b"tenant");
    assert_eq!(get(backend, Tree::Machines, b"same").as_deref(), Some(&b"machine"[..]));
    assert_eq!(get(backend, Tree::Tenants, b"same").as_deref(), Some(&b"tenant"[..]));
    assert_eq!(backend.scan(Tree::Volumes, b"").expect("scan"), vec![], "a tree nobody wrote is empty");
}

pub fn flushes_succeed(backend: &dyn Backend) {
    put(backend, Tree::Meta, b"schema", b"2");
    backend.flush_blocking().expect("a blocking flush");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(backend.flush()).expect("an async flush");
    assert_eq!(get(backend, Tree::Meta, b"schema").as_deref(), Some(&b"2"[..]), "a flush keeps what was written");
}

/// Two threads each add 1 to one counter, read inside the transaction, 25
/// times: every increment lands once (a backend that lost a concurrent
/// write, or applied a body's write twice, ends elsewhere).
pub fn concurrent_transactions_are_serializable(backend: &dyn Backend) {
    let increment = || {
        backend
            .transaction(&mut |tx| {
                let now = tx.get(Tree::Meta, b"counter")?.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
                tx.insert(Tree::Meta, b"counter", (now + 1).to_be_bytes().to_vec())
            })
            .expect("increment")
    };
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| (0..25).for_each(|_| increment()));
        }
    });
    let total = get(backend, Tree::Meta, b"counter").map(|v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
    assert_eq!(total, Some(50), "every one of 50 concurrent increments lands exactly once");
}

/// Keys read ahead (`prefetch`) read back as they would have — present,
/// absent, and the transaction's own writes over them — and still count
/// as read: concurrent increments through prefetched keys all land.
pub fn keys_read_ahead_read_as_when_asked(backend: &dyn Backend) {
    put(backend, Tree::Machines, b"m1", b"one");
    put(backend, Tree::Machines, b"m2", b"two");
    backend
        .transaction(&mut |tx| {
            tx.insert(Tree::Machines, b"m2", b"mine".to_vec())?;
            tx.prefetch(&[(Tree::Machines, b"m1"), (Tree::Machines, b"m2"), (Tree::Machines, b"none"), (Tree::Deployments, b"m1")])?;
            assert_eq!(tx.get(Tree::Machines, b"m1")?.as_deref(), Some(&b"one"[..]));
            assert_eq!(tx.get(Tree::Machines, b"m2")?.as_deref(), Some(&b"mine"[..]), "its own write wins over what was read ahead");
            assert_eq!(tx.get(Tree::Machines, b"none")?, None);
            assert_eq!(tx.get(Tree::Deployments, b"m1")?, None, "trees stay apart");
            Ok(())
        })
        .expect("transaction");
    let increment = || {
        backend
            .transaction(&mut |tx| {
                tx.prefetch(&[(Tree::Meta, b"ahead")])?;
                let now = tx.get(Tree::Meta, b"ahead")?.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
                tx.insert(Tree::Meta, b"ahead", (now + 1).to_be_bytes().to_vec())
            })
            .expect("increment")
    };
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| (0..20).for_each(|_| increment()));
        }
    });
    let total = get(backend, Tree::Meta, b"ahead").map(|v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
    assert_eq!(total, Some(40), "a key read ahead is compared like one asked for");
}

/// Scans and ranges over more keys than a store may hand back at once
/// (etcd reads them a page at a time) come whole, in order, limited.
pub fn long_scans_and_ranges_come_whole_and_in_order(backend: &dyn Backend) {
    let keys: Vec<Vec<u8>> = (0..300u32).map(|i| format!("m-{i:04}").into_bytes()).collect();
    for chunk in keys.chunks(100) {
        backend.transaction(&mut |tx| chunk.iter().try_for_each(|k| tx.insert(Tree::Machines, k, k.repeat(20)))).expect("write a hundred");
    }
    put(backend, Tree::Machines, b"n-after", b"outside the prefix");
    let scanned = backend.scan(Tree::Machines, b"m-").expect("scan");
    assert_eq!(scanned.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), keys, "all 300, in key order, nothing outside the prefix");
    assert!(scanned.iter().all(|(k, v)| *v == k.repeat(20)), "each with its value");
    let newest = backend.range(Tree::Machines, b"m-", b"m.", 250, true).expect("range");
    let expected: Vec<Vec<u8>> = keys.iter().rev().take(250).cloned().collect();
    assert_eq!(newest.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), expected, "the last 250, from the end");
    let first = backend.range(Tree::Machines, b"m-0100", b"m-0290", 1000, false).expect("range");
    assert_eq!(first.len(), 190, "a half-open range larger than a page");
    assert_eq!(backend.count(Tree::Machines, b"m-", b"m.").expect("count"), 300);
}
