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

/// Revokes every lease of the cluster, as their expiry would (a holder
/// paused past its lease), with etcd's own client.
fn expire_leases(cluster: &EtcdCluster) {
    let endpoints = cluster.endpoints().join(",");
    let list = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoints, "lease", "list"])
        .output()
        .expect("etcdctl (apt-get install etcd-client)");
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let ids: Vec<String> = String::from_utf8_lossy(&list.stdout).lines().skip(1).map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    assert!(!ids.is_empty(), "a claim holds a lease");
    for id in ids {
        let revoked =
            std::process::Command::new("etcdctl").env("ETCDCTL_API", "3").args(["--endpoints", &endpoints, "lease", "revoke", &id]).output().expect("etcdctl");
        assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    }
}

#[test]
fn one_claim_at_a_time_and_a_holder_whose_lease_ran_out_cannot_write_over_its_successor() {
    let cluster = EtcdCluster::start(3);
    let first = EtcdBackend::connect(cluster.options("fleet/")).expect("first");
    first.claim("first", Duration::from_secs(30)).expect("the first claim");
    write(&first, b"by-first", b"1").expect("the holder writes");
    let second = EtcdBackend::connect(cluster.options("fleet/")).expect("second");
    let held = second.claim("second", Duration::from_secs(30));
    assert!(matches!(held, Err(Error::Held(ref by)) if by == "first"), "{held:?}");

    // The first holder is paused past its lease: the claim is gone, the
    // second takes it and writes; the first wakes up and writes.
    expire_leases(&cluster);
    second.claim("second", Duration::from_secs(30)).expect("the successor's claim");
    write(&second, b"by-second", b"2").expect("the successor writes");
    let late = write(&first, b"by-first", b"stale");
    assert!(matches!(late, Err(Error::Fenced)), "the old holder's write is refused: {late:?}");
    assert!(late.expect_err("fenced").to_string().contains("lost its claim"));
    assert_eq!(second.get(Tree::Machines, b"by-first").expect("read").as_deref(), Some(&b"1"[..]), "only the successor's decisions stand");

    // A holder that ends lets go at once.
    drop(second);
    let third = EtcdBackend::connect(cluster.options("fleet/")).expect("third");
    third.claim("third", Duration::from_secs(30)).expect("claimed without waiting for the lease");
}

#[test]
fn a_claim_whose_lease_ran_out_with_nobody_taking_it_is_taken_again_at_the_next_write() {
    let cluster = EtcdCluster::start(1);
    let holder = EtcdBackend::connect(cluster.options("fleet/")).expect("holder");
    holder.claim("holder", Duration::from_secs(30)).expect("claim");
    // etcd without quorum for longer than the lease: the lease is gone.
    expire_leases(&cluster);
    write(&holder, b"after", b"1").expect("the holder takes its claim again and writes");
    let other = EtcdBackend::connect(cluster.options("fleet/")).expect("other");
    assert!(matches!(other.claim("other", Duration::from_secs(30)), Err(Error::Held(ref by)) if by == "holder"), "held again");
}
