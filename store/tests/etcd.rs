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

/// 10,000 machines' records are more than etcd's client takes in one
/// answer (4 MiB): read whole, a page at a time (measured: a fleet of
/// 10,000 could not be listed before).
#[test]
fn a_tree_larger_than_one_answer_is_read_whole() {
    let cluster = EtcdCluster::start(1);
    let backend = EtcdBackend::connect(cluster.options("large/")).expect("connect");
    let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| format!("m-{i:04}").into_bytes()).collect();
    for chunk in keys.chunks(100) {
        backend.transaction(&mut |tx| chunk.iter().try_for_each(|k| tx.insert(Tree::Machines, k, vec![b'x'; 6 << 10]))).expect("write a hundred");
    }
    let all = backend.scan(Tree::Machines, b"").expect("a scan of 6 MiB");
    assert_eq!(all.len(), 1000);
    assert!(all.iter().map(|(k, _)| k).eq(keys.iter()), "in key order");
    assert_eq!(backend.range(Tree::Machines, b"", b"\xff", 900, true).expect("range").len(), 900);
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

/// Several processes join one fleet's store: all write, one leads. A
/// follower whose lease ran out joins again and writes on; a leader whose
/// lease ran out while another took the lead is fenced; and the leader key
/// is on the leader's own lease, so nobody leads before its writes are.
#[test]
fn every_member_writes_one_leads_and_a_leader_whose_lease_ran_out_is_fenced() {
    let cluster = EtcdCluster::start(3);
    let ttl = Duration::from_secs(30);
    let a = EtcdBackend::connect(cluster.options("fleet/")).expect("a");
    let b = EtcdBackend::connect(cluster.options("fleet/")).expect("b");
    a.join("a", "coordinator a", b"{}", ttl).expect("a joins");
    b.join("b", "coordinator b", b"{}", ttl).expect("b joins");
    assert!(a.campaign().expect("campaign"), "the first to campaign leads");
    assert!(!b.campaign().expect("campaign"), "one leads at a time");
    assert_eq!(b.leader().expect("leader").as_deref(), Some("coordinator a"));
    write(&a, b"by-a", b"1").expect("the leader writes");
    write(&b, b"by-b", b"1").expect("a follower writes too");
    let presences = b.presences().expect("presences");
    assert_eq!(presences.iter().map(|p| (p.name.as_str(), p.leads)).collect::<Vec<_>>(), [("a", true), ("b", false)]);

    // Both paused past their leases.
    expire_leases(&cluster);
    assert!(b.campaign().is_err(), "b's lease is gone too: it cannot lead on it");
    write(&b, b"by-b", b"2").expect("a follower whose lease ran out joins again and writes");
    assert!(b.campaign().expect("campaign"), "nobody leads: b does, on its new lease");
    let late = write(&a, b"by-a", b"stale");
    assert!(matches!(late, Err(Error::Fenced)), "the old leader's write is refused: {late:?}");
    assert!(*a.lost().expect("shared").borrow(), "and it knows it lost");
    let later = write(&a, b"by-a", b"later");
    assert!(matches!(later, Err(Error::Fenced)), "and stays fenced: nothing it had in hand is written later: {later:?}");
    assert_eq!(b.get(Tree::Machines, b"by-a").expect("read").as_deref(), Some(&b"1"[..]), "only the successor's decisions stand");
}

/// A watch sees what another process writes to its tree, in order, and
/// nothing of other trees.
#[test]
fn a_watch_sees_every_change_another_process_makes_in_order() {
    let cluster = EtcdCluster::start(3);
    let watcher = EtcdBackend::connect(cluster.options("fleet/")).expect("watcher");
    let writer = EtcdBackend::connect(cluster.options("fleet/")).expect("writer");
    let mut changes = Backend::watch(&watcher, Tree::Machines).expect("etcd watches");
    // The watch starts on the backend's runtime: a first change shows when.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let next = |changes: &mut tokio::sync::mpsc::Receiver<drover_store::Watched>| {
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), changes.recv()).await.ok().flatten() })
    };
    let mut first = None;
    for attempt in 0..50u8 {
        write(&writer, b"m-0", &[attempt]).expect("write");
        if let Some(change) = next(&mut changes) {
            first = Some(change);
            break;
        }
    }
    assert!(matches!(first, Some(drover_store::Watched::Put(ref k, _)) if k == b"m-0"), "{first:?}");
    while let Ok(Some(_)) = runtime.block_on(async { tokio::time::timeout(Duration::from_millis(300), changes.recv()).await }) {}
    write(&writer, b"m-1", b"one").expect("write");
    writer.transaction(&mut |tx| tx.insert(Tree::Assignments, b"m-1/1", b"not watched".to_vec())).expect("write");
    writer.transaction(&mut |tx| tx.insert(Tree::Machines, b"m-2", b"two".to_vec()).and_then(|()| tx.remove(Tree::Machines, b"m-1").map(drop))).expect("write");
    let seen: Vec<_> = (0..3).filter_map(|_| next(&mut changes)).collect();
    use drover_store::Watched::{Deleted, Put};
    assert_eq!(seen, [Put(b"m-1".to_vec(), b"one".to_vec()), Deleted(b"m-1".to_vec()), Put(b"m-2".to_vec(), b"two".to_vec())]);
}

/// A CA, and a certificate it signed for `name` (server and client use).
fn issue(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// etcd with mutual TLS (`--client-cert-auth`): a client with a certificate
/// of the members' CA keeps the contract; one without, or with a
/// certificate of another CA, is refused.
#[test]
fn etcd_with_mutual_tls_takes_only_clients_with_a_certificate_of_its_ca() {
    drover_store::etcd_cluster::require_etcd();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).expect("ca").pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let (server_pem, server_key) = issue(&issuer, "127.0.0.1");
    let (client_pem, client_key) = issue(&issuer, "coordinator");
    for (name, body) in [("ca.pem", &ca_pem), ("server.pem", &server_pem), ("server.key", &server_key)] {
        std::fs::write(dir.path().join(name), body).expect("write");
    }
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let (client_port, peer_port) = (port(0), port(1));
    let url = format!("https://127.0.0.1:{client_port}");
    let _etcd = Killed(
        std::process::Command::new("etcd")
            .args(["--name", "tls", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .args(["--initial-cluster", &format!("tls=http://127.0.0.1:{peer_port}")])
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(dir.path().join("ca.pem"))
            .arg("--cert-file")
            .arg(dir.path().join("server.pem"))
            .arg("--key-file")
            .arg(dir.path().join("server.key"))
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).expect("log"))
            .spawn()
            .expect("start etcd"),
    );
    let options = |tls: Option<drover_store::EtcdTls>| {
        let mut o = drover_store::EtcdOptions::new(vec![url.clone()], "tls/");
        o.timeout = Duration::from_secs(2);
        o.tls = tls;
        o
    };
    let ours = drover_store::EtcdTls { ca_pem: ca_pem.clone().into_bytes(), cert_pem: client_pem.into_bytes(), key_pem: client_key.into_bytes() };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let backend = loop {
        match EtcdBackend::connect(options(Some(ours.clone()))) {
            Ok(b) => break b,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "etcd with TLS answers: {e}; {}",
                    std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    contract::writes_are_read_back_from_every_tree(&backend);
    contract::a_failed_transaction_writes_nothing(&backend);

    let stranger_key = rcgen::KeyPair::generate().expect("key");
    let mut stranger_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    stranger_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let stranger_issuer = rcgen::Issuer::new(stranger_params, stranger_key);
    let (other_pem, other_key) = issue(&stranger_issuer, "intruder");
    let intruder = drover_store::EtcdTls { ca_pem: ca_pem.into_bytes(), cert_pem: other_pem.into_bytes(), key_pem: other_key.into_bytes() };
    assert!(EtcdBackend::connect(options(Some(intruder))).is_err(), "a client certificate of another CA is refused");
    let mut plain = options(None);
    plain.endpoints = vec![url.replace("https://", "http://")];
    assert!(EtcdBackend::connect(plain).is_err(), "a client without TLS is refused");
}

/// A process killed when the test ends, passed or failed.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A transaction larger than one etcd request is refused whole, before it
/// is sent, naming the limit; one the cluster refuses although the client
/// thought it fit (its limit set higher than the cluster's) is refused as
/// too large too — not reported as possibly applied.
#[test]
fn a_transaction_larger_than_one_request_is_refused_whole_and_named() {
    let cluster = EtcdCluster::start(1);
    let backend = EtcdBackend::connect(cluster.options("fleet/")).expect("connect");
    let big = vec![b'x'; 600 * 1024];
    let refused = backend.transaction(&mut |tx| {
        tx.insert(Tree::Machines, b"a", big.clone())?;
        tx.insert(Tree::Machines, b"b", big.clone())?;
        tx.insert(Tree::Machines, b"c", big.clone())
    });
    assert!(matches!(refused, Err(Error::TooLarge(ref why)) if why.contains("max-request-bytes")), "{refused:?}");
    assert_eq!(backend.get(Tree::Machines, b"a").expect("read"), None, "nothing of it landed");
    let mut options = cluster.options("fleet/");
    options.max_request_bytes = 16 << 20;
    let unaware = EtcdBackend::connect(options).expect("connect");
    let refused = unaware.transaction(&mut |tx| {
        tx.insert(Tree::Machines, b"a", big.clone())?;
        tx.insert(Tree::Machines, b"b", big.clone())?;
        tx.insert(Tree::Machines, b"c", big.clone())
    });
    assert!(matches!(refused, Err(Error::TooLarge(_))), "{refused:?}");
    assert_eq!(unaware.get(Tree::Machines, b"a").expect("read"), None);
    write(&backend, b"small", &vec![b'y'; 100 * 1024]).expect("a request that fits lands");
}
