//! The etcd backend against a real three-member cluster on loopback: the
//! same contract as sled and memory, then what only a replicated store
//! does — losing a member, losing quorum, mutual TLS.

use std::sync::Arc;
use std::time::Duration;

use drover_store::etcd_cluster::EtcdCluster;
use drover_store::{contract, Backend, Error, EtcdBackend, Tree};

fn write(backend: &EtcdBackend, key: &[u8], value: &[u8]) -> Result<(), Error> {
    backend.transaction(&mut |tx| tx.insert(Tree::Machines, key, value.to_vec()))
}

#[test]
fn a_three_member_etcd_keeps_the_contract() {
    let cluster = EtcdCluster::start(3);
    let mut n = 0;
    contract::run_all(|| {
        n += 1;
        Arc::new(EtcdBackend::connect(cluster.options(&format!("contract-{n}/"))).expect("connect"))
    });
}

#[test]
fn fleets_under_different_prefixes_do_not_see_each_other() {
    let cluster = EtcdCluster::start(1);
    let a = EtcdBackend::connect(cluster.options("fleet-a/")).expect("a");
    let b = EtcdBackend::connect(cluster.options("fleet-b/")).expect("b");
    write(&a, b"m-1", b"a's").expect("write");
    assert_eq!(b.get(Tree::Machines, b"m-1").expect("read"), None);
    assert!(b.scan(Tree::Machines, b"").expect("scan").is_empty());
    assert_eq!(a.scan(Tree::Machines, b"").expect("scan"), vec![(b"m-1".to_vec(), b"a's".to_vec())]);
}

#[test]
fn a_transaction_larger_than_etcd_takes_is_refused_whole() {
    let cluster = EtcdCluster::start(1);
    let backend = EtcdBackend::connect(cluster.options("big/")).expect("connect");
    let result = backend.transaction(&mut |tx| {
        for i in 0..200u32 {
            tx.insert(Tree::Assignments, &i.to_be_bytes(), vec![1])?;
        }
        Ok(())
    });
    assert!(matches!(result, Err(Error::TooLarge(ref why)) if why.contains("128")), "{result:?}");
    assert_eq!(backend.count(Tree::Assignments, &[0], &[0xff]).expect("count"), 0, "nothing of it was written");
}

/// Writes `key` as soon as the cluster takes it (within 30 s).
fn until_written(backend: &EtcdBackend, key: &[u8], cluster: &EtcdCluster) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = write(backend, key, b"x") {
        assert!(std::time::Instant::now() < deadline, "the cluster takes writes again: {e}; {}", cluster.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn one_member_lost_changes_nothing_and_two_lost_refuse_writes_until_quorum_returns() {
    let mut cluster = EtcdCluster::start(3);
    let mut options = cluster.options("quorum/");
    options.timeout = Duration::from_secs(2);
    let backend = EtcdBackend::connect(options).expect("connect");
    write(&backend, b"before", b"1").expect("write");

    cluster.kill(0);
    // If it led, the others elect a leader first (about a second).
    until_written(&backend, b"one-down", &cluster);
    assert_eq!(backend.get(Tree::Machines, b"before").expect("read").as_deref(), Some(&b"1"[..]));

    cluster.kill(1);
    let refused = write(&backend, b"no-quorum", b"3");
    assert!(matches!(refused, Err(Error::Unavailable(_))), "without quorum a write is refused: {refused:?}");
    let text = refused.expect_err("refused").to_string();
    assert!(text.contains("quorum"), "the error says why: {text}");

    cluster.restart(0);
    cluster.restart(1);
    until_written(&backend, b"after", &cluster);
    assert_eq!(backend.get(Tree::Machines, b"no-quorum").expect("read"), None, "the refused write never landed");
    assert_eq!(backend.scan(Tree::Machines, b"").expect("scan").len(), 3, "before, one-down, after");
}
