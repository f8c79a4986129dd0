//! The store's contract, run against every backend: sled in a temporary
//! directory and memory. Each case states what any backend must do.

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::codec;
use super::deployments::generation_key;
use super::*;
use crate::model::{AdminRecord, DeploymentRecord, Labels, MachineRecord, RolloutRecord, S3NodeRecord, TenantRecord, TokenRecord};
use drover_store::Tree;

/// What keeps a test's store alive (a directory, a cluster).
type Keep = Option<Box<dyn std::any::Any>>;

/// A store of each kind, with what keeps it alive (sled's directory, the
/// etcd cluster). With the `system-tests` feature, a real three-member etcd
/// cluster on loopback too.
fn stores() -> Vec<(&'static str, Store, Keep)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = Store::open(dir.path()).expect("open sled");
    #[allow(unused_mut)]
    let mut all: Vec<(&'static str, Store, Keep)> = vec![("sled", sled, Some(Box::new(dir))), ("memory", Store::in_memory(), None)];
    #[cfg(feature = "system-tests")]
    {
        let cluster = drover_store::etcd_cluster::EtcdCluster::start(3);
        let etcd = Store::open_etcd(cluster.options("drover-test/")).expect("open etcd");
        all.push(("etcd", etcd, Some(Box::new(cluster))));
    }
    all
}

pub(crate) fn machine(id: &str) -> MachineRecord {
    MachineRecord {
        id: id.into(),
        hostname: format!("host-{id}"),
        labels: Labels::new(),
        token_id: String::new(),
        enrolled_at: 0,
        revoked_at: None,
        cert_serial: "s".into(),
        cert_not_after: 0,
        previous_cert: None,
        last_seen: None,
        health: None,
        desired_generation: 0,
        current_generation: None,
        current_system: None,
        enrolled_key: None,
        volumes: vec![],
        reported_via: None,
    }
}

fn token(hash: &str) -> TokenRecord {
    TokenRecord {
        id: format!("t-{hash}"),
        hash: hash.into(),
        labels: Labels::from([("tenant".into(), "a".into())]),
        created_at: 0,
        expires_at: 1_000,
        uses_total: 2,
        uses_left: 2,
        revoked: false,
        provision: None,
    }
}

fn put<T: Record>(store: &Store, key: &str, record: &T) {
    store.commit_blocking(|tx| tx.put(key.as_bytes(), record)).expect("put");
}

#[test]
fn records_of_every_kind_round_trip() {
    for (name, store, _dir) in stores() {
        put(&store, "m-1", &machine("m-1"));
        put(&store, "h1", &token("h1"));
        let admin = AdminRecord { name: "alice".into(), role: drover_protocol::v1::Role::Admin, created_at: 1, serials: vec!["s".into()], ssh_keys: vec![] };
        put(&store, "alice", &admin);
        let tenant = TenantRecord {
            domain: "a.example".into(),
            admin_email: "x@a.example".into(),
            admin_user: "owner".into(),
            admin_password: drover_protocol::v1::Secret::new("pw"),
            managers: Default::default(),
            created_at: 2,
        };
        put(&store, "a.example", &tenant);
        let node = S3NodeRecord { admin: "http://n1".into(), rpc: "n1:3901".into(), zone: "z".into(), capacity: 1 << 30, id: None, added_at: 3 };
        put(&store, "http://n1", &node);
        assert_eq!(store.machine("m-1").expect("read"), Some(machine("m-1")), "{name}");
        assert_eq!(store.machines().expect("list").len(), 1, "{name}");
        assert_eq!(store.token_by_hash("h1").expect("read"), Some(token("h1")), "{name}");
        assert_eq!(store.tokens().expect("list"), vec![token("h1")], "{name}");
        assert_eq!(store.admin("alice").expect("read"), Some(admin.clone()), "{name}");
        assert_eq!(store.admins().expect("list"), vec![admin], "{name}");
        assert_eq!(store.tenant("a.example").expect("read"), Some(tenant.clone()), "{name}");
        assert_eq!(store.tenants().expect("list"), vec![tenant], "{name}");
        assert_eq!(store.s3_nodes().expect("list"), vec![node], "{name}");
        assert_eq!(store.machine("m-2").expect("read"), None, "{name}");
    }
}

fn deployment(machine: &str, generation: u64, created_at: u64) -> DeploymentRecord {
    DeploymentRecord {
        id: crate::model::deployment_id(machine, generation),
        machine_id: machine.into(),
        hostname: "h".into(),
        generation,
        system: drover_protocol::v1::SystemSpec::Flake { uri: "path:/f".into(), attribute: "a".into() },
        created_at,
        finished_at: None,
        state: drover_protocol::v1::DeploymentState::Pending,
        rolled_back: false,
        steps: vec![],
        output_tail: String::new(),
        system_path: None,
        secret_names: vec![],
        steps_dropped: 0,
        spec: None,
    }
}

#[test]
fn deployments_are_kept_per_machine_in_order() {
    for (name, store, _dir) in stores() {
        store
            .commit_blocking(|tx| {
                for (m, g, t) in [("m-1", 2, 20), ("m-1", 1, 10), ("m-10", 1, 15), ("m-2", 1, 5)] {
                    tx.put(&generation_key(m, g), &deployment(m, g, t))?;
                }
                Ok::<_, StoreError>(())
            })
            .expect("write");
        let of_m1: Vec<u64> = store.deployments(Some("m-1")).expect("list").iter().map(|d| d.generation).collect();
        assert_eq!(of_m1, vec![1, 2], "{name}: only m-1's, not m-10's, oldest first");
        let all: Vec<String> = store.deployments(None).expect("all").iter().map(|d| d.id.clone()).collect();
        assert_eq!(all, vec!["d-m-2-1", "d-m-1-1", "d-m-10-1", "d-m-1-2"], "{name}");
        assert_eq!(store.deployment("m-1", 2).expect("one").map(|d| d.created_at), Some(20), "{name}");
        assert!(store.assignment("m-1", 2).expect("none").is_none(), "{name}");
    }
}

#[test]
fn a_deployment_record_naming_a_spec_not_kept_keeps_its_system() {
    for (name, store, _dir) in stores() {
        let mut record = deployment("m-1", 1, 10);
        record.spec = Some("0".repeat(64));
        store.commit_blocking(|tx| tx.put(&generation_key("m-1", 1), &record)).expect("write");
        let read = store.deployment("m-1", 1).expect("read").expect("the record");
        assert_eq!(read.system, record.system, "{name}");
        assert_eq!(read.spec, None, "{name}: it names no spec it cannot be read with");
    }
}

/// NixOps4 state events are kept per state, by index, in order: one
/// state's events never mix with another's whose name it starts.
#[test]
fn nixops4_state_events_are_kept_per_state_in_order() {
    use super::nixops4::event_key;
    use crate::model::{NixopsEventRecord, NixopsStateRecord};
    let event = |name: &str, index: u64| NixopsEventRecord {
        name: name.into(),
        index,
        time: index,
        event: "create".into(),
        nixops_version: "0.1.0".into(),
        patch: "[]".into(),
        by: "root".into(),
        applied: true,
        error: None,
    };
    for (name, store, _keep) in stores() {
        store
            .commit_blocking(|tx| {
                for (s, i) in [("social", 10), ("social", 2), ("social-2", 0), ("social", 0)] {
                    tx.put(&event_key(s, i), &event(s, i))?;
                }
                let doc = NixopsStateRecord { name: "social".into(), document: "{}".into(), events: 11, unapplied: vec![], created_at: 0, updated_at: 0 };
                tx.put(b"social", &doc)?;
                Ok::<_, StoreError>(())
            })
            .expect("write");
        let indices: Vec<u64> = store.list::<NixopsEventRecord>(b"social/").expect("list").iter().map(|e| e.index).collect();
        assert_eq!(indices, vec![0, 2, 10], "{name}: in index order, only social's");
        assert_eq!(store.nixops_event("social", 2).expect("read").map(|e| e.index), Some(2), "{name}");
        assert_eq!(store.nixops_state("social").expect("read").map(|s| s.events), Some(11), "{name}");
        assert!(store.nixops_state("social-2").expect("read").is_none(), "{name}");
    }
}

#[test]
fn rollouts_list_oldest_first() {
    for (name, store, _dir) in stores() {
        for (id, at) in [("r-b", 2), ("r-a", 3), ("r-c", 1)] {
            let state = crate::rollout::plan::State::new(
                crate::rollout::plan::Strategy {
                    canary: 0,
                    max_parallel: crate::rollout::plan::Amount::Count(1),
                    max_unavailable: crate::rollout::plan::Amount::Percent(100),
                    max_failures: crate::rollout::plan::Amount::Count(0),
                    healthy_deadline_ms: 1,
                    min_healthy_time_ms: 0,
                    progress_deadline_ms: 1,
                    auto_revert: false,
                    auto_promote: false,
                },
                Default::default(),
                at,
            );
            let spec = drover_protocol::v1::DeploySpec {
                machine: None,
                selector: Labels::from([("a".into(), "b".into())]),
                system: drover_protocol::v1::SystemSpec::Flake { uri: "path:/f".into(), attribute: "a".into() },
                secrets: vec![],
                facts: Labels::new(),
                checks: vec![],
                health_deadline_ms: 1,
                buckets: vec![],
                volumes: vec![],
                goal: Default::default(),
                force_switch: false,
                override_rollout: false,
                reboot: false,
            };
            put(&store, id, &RolloutRecord { id: id.into(), created_at: at, spec, state, snapshot_volumes: false });
        }
        let ids: Vec<String> = store.rollouts().expect("list").into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec!["r-c", "r-b", "r-a"], "{name}");
        assert!(store.rollout("r-a").expect("one").is_some(), "{name}");
    }
}

#[test]
fn a_transaction_lands_whole_or_not_at_all() {
    for (name, store, _dir) in stores() {
        put(&store, "m-1", &machine("m-1"));
        let refused: Result<(), StoreError> = store.commit_blocking(|tx| {
            let mut m: MachineRecord = tx.require(b"m-1")?;
            m.hostname = "changed".into();
            tx.put(b"m-1", &m)?;
            tx.put(b"m-2", &machine("m-2"))?;
            tx.put(&generation_key("m-1", 1), &deployment("m-1", 1, 1))?;
            Err(StoreError::Conflict("refused by the body".into()))
        });
        assert!(matches!(refused, Err(StoreError::Conflict(_))), "{name}: the body's own error comes back");
        assert_eq!(store.machine("m-1").expect("read").map(|m| m.hostname), Some("host-m-1".into()), "{name}");
        assert!(store.machine("m-2").expect("read").is_none(), "{name}: nothing half-made");
        assert!(store.deployment("m-1", 1).expect("read").is_none(), "{name}");

        // Reads inside a transaction see its own writes; removes too.
        let seen = store
            .commit_blocking(|tx| {
                tx.put(b"m-3", &machine("m-3"))?;
                let seen = tx.get::<MachineRecord>(b"m-3")?.is_some();
                let removed = tx.remove::<MachineRecord>(b"m-1")?.is_some();
                let gone = tx.get::<MachineRecord>(b"m-1")?.is_none();
                Ok::<_, StoreError>(seen && removed && gone)
            })
            .expect("commit");
        assert!(seen, "{name}");
        assert!(store.machine("m-1").expect("read").is_none(), "{name}");
        assert!(store.machine("m-3").expect("read").is_some(), "{name}");
    }
}

#[test]
fn insert_new_and_require_say_what_is_wrong() {
    for (name, store, _dir) in stores() {
        put(&store, "h1", &token("h1"));
        let err = store.commit_blocking(|tx| tx.insert_new(b"h1", &token("h1"), || "token already exists".into())).expect_err("taken");
        assert!(matches!(&err, StoreError::Conflict(m) if m == "token already exists"), "{name}: {err}");
        let err = store.commit_blocking(|tx| tx.require::<MachineRecord>(b"m-9")).expect_err("missing");
        assert!(matches!(&err, StoreError::NotFound { what: "machine", id } if id == "m-9"), "{name}: {err}");
    }
}

#[tokio::test]
async fn update_changes_one_record_durably_or_not_at_all() {
    for (name, store, _dir) in stores() {
        put(&store, "m-1", &machine("m-1"));
        let m = store
            .update::<MachineRecord, StoreError>(b"m-1", |m| {
                m.hostname = "renamed".into();
                Ok(())
            })
            .await
            .expect("update");
        assert_eq!(m.hostname, "renamed", "{name}");
        let missing = store.update::<MachineRecord, StoreError>(b"m-9", |_| Ok(())).await;
        assert!(matches!(missing, Err(StoreError::NotFound { .. })), "{name}");
        let refused = store.update::<MachineRecord, StoreError>(b"m-1", |m| {
            m.hostname = "lost".into();
            Err(StoreError::Conflict("no".into()))
        });
        assert!(matches!(refused.await, Err(StoreError::Conflict(_))), "{name}");
        assert_eq!(store.machine("m-1").expect("get").expect("some").hostname, "renamed", "{name}");
    }
}

/// Collects what is logged while `f` runs.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer.0.lock().expect("lock").clone();
    String::from_utf8_lossy(&bytes).to_string()
}

#[test]
fn a_damaged_record_is_skipped_in_lists_with_a_warning_naming_its_key() {
    for (name, store, _dir) in stores() {
        for id in ["m-1", "m-2", "m-3"] {
            put(&store, id, &machine(id));
        }
        store.backend().transaction(&mut |tx| tx.insert(Tree::Machines, b"m-2", b"\x00garbage{".to_vec())).expect("damage");
        let mut listed = Vec::new();
        let log = logged(|| listed = store.machines().expect("list still works"));
        let ids: Vec<String> = listed.into_iter().map(|m| m.id).collect();
        assert_eq!(ids, vec!["m-1", "m-3"], "{name}: every other machine is listed");
        assert!(log.contains("m-2") && log.contains("unreadable record skipped"), "{name}: {log}");
        let err = store.machine("m-2").expect_err("reading it alone names it");
        assert!(err.to_string().contains("\"m-2\""), "{name}: {err}");
    }
}

#[test]
fn version_1_records_with_null_health_floats_are_migrated() {
    for (name, store, _dir) in stores() {
        let mut record = serde_json::to_value(machine("m-1")).expect("json");
        record["health"] = json!({
            "received_at": 1, "hostname": "h", "uptime_secs": 1, "load_average": [null, 0.5, null],
            "cpu_count": 1, "cpu_usage_percent": null, "memory_total_bytes": 1, "memory_used_bytes": 1,
            "disks": [], "failed_units": null, "agent_version": "0", "system_path": null
        });
        store.backend().transaction(&mut |tx| tx.insert(Tree::Machines, b"m-1", codec::encode_as(1, record.clone()))).expect("write v1");
        let m = store.machine("m-1").expect("migrated").expect("present");
        let health = m.health.expect("health");
        assert_eq!(health.load_average, [0.0, 0.5, 0.0], "{name}");
        assert_eq!(health.cpu_usage_percent, 0.0, "{name}");
        let newer = codec::encode_as(SCHEMA_VERSION + 1, serde_json::to_value(machine("m-9")).expect("json"));
        store.backend().transaction(&mut |tx| tx.insert(Tree::Machines, b"m-9", newer.clone())).expect("write");
        let err = store.machine("m-9").expect_err("newer record");
        assert!(err.to_string().contains("newer coordinator"), "{name}: {err}");
    }
}

#[test]
fn sled_keeps_records_across_reopening_and_refuses_a_newer_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        put(&store, "h1", &token("h1"));
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.tokens().expect("tokens").len(), 1);
    drop(store);
    {
        let db = sled::open(dir.path()).expect("open");
        db.open_tree("meta").expect("meta").insert("schema_version", "99").expect("insert");
        db.flush().expect("flush");
    }
    assert!(matches!(Store::open(dir.path()), Err(StoreError::TooNew { found: 99, .. })));
}

#[test]
fn a_store_already_open_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Store::open(dir.path()).expect("open");
    let err = Store::open(dir.path()).err().expect("a second open is refused");
    assert!(matches!(err, StoreError::Backend(drover_store::Error::Locked(_))), "{err:?}");
    assert!(err.to_string().contains("another coordinator holds the store"), "{err}");
}

/// Memory underneath; each flush is counted and waits for a permit, so a
/// test can hold one in progress.
struct HeldFlush {
    inner: MemoryBackend,
    flushes: std::sync::atomic::AtomicUsize,
    started: tokio::sync::Notify,
    permits: tokio::sync::Semaphore,
}

impl Backend for HeldFlush {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, drover_store::Error> {
        self.inner.get(tree, key)
    }
    fn scan(&self, tree: Tree, prefix: &[u8]) -> Result<drover_store::Pairs, drover_store::Error> {
        self.inner.scan(tree, prefix)
    }
    fn range(&self, tree: Tree, from: &[u8], to: &[u8], limit: usize, newest_first: bool) -> Result<drover_store::Pairs, drover_store::Error> {
        self.inner.range(tree, from, to, limit, newest_first)
    }
    fn count(&self, tree: Tree, from: &[u8], to: &[u8]) -> Result<usize, drover_store::Error> {
        self.inner.count(tree, from, to)
    }
    fn transaction(&self, body: drover_store::TxBody<'_>) -> Result<(), drover_store::Error> {
        self.inner.transaction(body)
    }
    fn flush(&self) -> drover_store::BoxFuture<'_, Result<(), drover_store::Error>> {
        Box::pin(async move {
            self.flushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.started.notify_one();
            self.permits.acquire().await.expect("permits").forget();
            Ok(())
        })
    }
    fn flush_blocking(&self) -> Result<(), drover_store::Error> {
        Ok(())
    }
}

/// sled holds its lock through a flush and a transaction needs it alone:
/// a write on the async side waits for the flush in progress without
/// blocking the runtime (reads go on), and the writes that waited share
/// the next flush.
#[tokio::test]
async fn writes_during_a_flush_wait_for_it_without_blocking_and_share_the_next() {
    let backend = Arc::new(HeldFlush {
        inner: MemoryBackend::default(),
        flushes: Default::default(),
        started: Default::default(),
        permits: tokio::sync::Semaphore::new(0),
    });
    let store = Store::with_backend(backend.clone());
    store.transact(|tx| tx.put(b"m-0", &machine("m-0"))).expect("write");
    let flushing = tokio::spawn({
        let store = store.clone();
        async move { store.flush().await }
    });
    backend.started.notified().await;

    let commits: Vec<_> = (1..=5)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("m-{i}");
                store.commit(|tx| tx.put(id.as_bytes(), &machine(&id))).await
            })
        })
        .collect();
    // This test runs on one thread: were the writes blocking it, nothing
    // below would run before the flush ended.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(commits.iter().all(|c| !c.is_finished()), "a commit finished while the flush held the lane");
    assert!(store.get::<MachineRecord>(b"m-0").expect("read").is_some(), "reads go on during a flush");
    assert!(store.get::<MachineRecord>(b"m-1").expect("read").is_none(), "a write ran during the flush");

    backend.permits.add_permits(100);
    flushing.await.expect("task").expect("flush");
    for commit in commits {
        commit.await.expect("task").expect("commit");
    }
    for i in 1..=5 {
        assert!(store.get::<MachineRecord>(format!("m-{i}").as_bytes()).expect("read").is_some());
    }
    assert_eq!(backend.flushes.load(std::sync::atomic::Ordering::SeqCst), 2, "the five commits that waited share one flush after the one they waited for");
}

fn audit_entry(at: u64, admin: &str) -> crate::model::AuditRecord {
    crate::model::AuditRecord { at, admin: admin.into(), action: "tokens create".into(), target: String::new(), outcome: "ok".into() }
}

/// Retention: by age in both parts; by count, the others' part first, so
/// an operator's or viewer's entries never evict an admin's.
#[tokio::test]
async fn audit_retention_removes_old_entries_and_others_before_admins() {
    use super::audit::{AuditPart, AuditRetention};
    let store = Store::with_backend(Arc::new(MemoryBackend::default()));
    let day = 86_400_000u64;
    let now = 1_000 * day;
    let keep = AuditRetention { days: 30, entries: 1_000 };
    for i in 0..10 {
        store.record_audit(&audit_entry(now - 100 * day + i, "old-root"), AuditPart::Admins, keep).await.expect("record");
    }
    for i in 0..20 {
        store.record_audit(&audit_entry(now - day + i, "root"), AuditPart::Admins, keep).await.expect("record");
    }
    for i in 0..2_000 {
        store.record_audit(&audit_entry(now - day + 100 + i, "otto"), AuditPart::Others, keep).await.expect("record");
    }
    store.prune_audit(keep, now).expect("prune");
    let (admins, others) = store.audit_len().expect("len");
    assert_eq!(admins, 20, "the admins' old entries went by age, the recent ones all stay");
    assert_eq!(admins + others, 1_000, "the count holds");
    let all = store.audit_after(None, 10_000).expect("read");
    assert_eq!(all.len(), 1_000);
    assert!(all.iter().all(|(_, e)| e.admin != "old-root"));
    assert_eq!(all.iter().filter(|(_, e)| e.admin == "root").count(), 20);
    let otto: Vec<u64> = all.iter().filter(|(_, e)| e.admin == "otto").map(|(_, e)| e.at).collect();
    assert_eq!(otto.first(), Some(&(now - day + 100 + 1_020)), "the others' oldest went first");
    // Beyond what others hold, admins' oldest go too.
    let tight = AuditRetention { days: 30, entries: 10 };
    store.prune_audit(tight, now).expect("prune");
    let all = store.audit_after(None, 10_000).expect("read");
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|(_, e)| e.admin == "root"), "only admins' newest are left");
    // Read page by page, in order, the position carried over.
    let first = store.audit_after(None, 4).expect("page");
    let second = store.audit_after(Some(&first[3].0), 4).expect("page");
    assert_eq!(second[0].1.at, first[3].1.at + 1);
    let newest = store.audit_newest(0, 3, |e| e.admin == "root").expect("newest");
    assert_eq!(newest.iter().map(|(_, e)| e.at).collect::<Vec<_>>(), vec![now - day + 17, now - day + 18, now - day + 19]);
}

/// A read through the store from inside a transaction's body would wait for
/// the lock that transaction holds; debug builds stop it at once.
#[test]
#[should_panic(expected = "would deadlock")]
fn a_store_read_inside_a_transaction_is_caught() {
    let store = Store::with_backend(Arc::new(MemoryBackend::default()));
    let _ = store.transact(|_tx| store.machine("m-0000000000").map(drop));
}

/// Writes queued while another runs go in one transaction; each body still
/// succeeds or refuses alone, and sees what the bodies before it wrote.
#[tokio::test]
async fn grouped_writes_share_a_transaction_and_a_refusal_drops_only_its_own_writes() {
    let bodies = super::groups::MAX_GROUP + 1;
    let refusing = 7;
    for (name, store, _keep) in stores() {
        let groups = store.backend.max_txn_ops().is_none();
        let held = if groups { Some(store.groups.hold().await) } else { None };
        let written_before = store.flushes.written.load(SeqCst);
        let mut tasks = Vec::new();
        for i in 0..bodies {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .write_grouped(move |tx| {
                        let count: u64 = tx.meta("count")?.map_or(0, |c| c.parse().expect("a number"));
                        tx.put_meta("count", &(count + 1).to_string())?;
                        let id = format!("m-{i}");
                        tx.put(id.as_bytes(), &machine(&id))?;
                        if i == refusing {
                            return Err(StoreError::Conflict(format!("body {i} refuses")));
                        }
                        Ok(count)
                    })
                    .await
            }));
        }
        if let Some(held) = held {
            let queued = tokio::time::timeout(std::time::Duration::from_secs(30), async {
                while store.groups.queued() < bodies {
                    tokio::task::yield_now().await;
                }
            });
            queued.await.expect("every body queues while the turn is held");
            drop(held);
        }
        let mut counts = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.expect("task") {
                Ok(count) => counts.push(count),
                Err(StoreError::Conflict(e)) if i == refusing => assert_eq!(e, format!("body {i} refuses"), "{name}"),
                other => panic!("{name}: body {i}: {other:?}"),
            }
        }
        let transactions = store.flushes.written.load(SeqCst) - written_before;
        counts.sort_unstable();
        let expected: Vec<u64> = (0..bodies as u64 - 1).collect();
        assert_eq!(counts, expected, "{name}: each body saw the ones before it, the refused one's write dropped");
        let stored = store.transact(|tx| tx.meta("count")).expect("read");
        assert_eq!(stored, Some((bodies - 1).to_string()), "{name}");
        assert_eq!(store.machine(&format!("m-{refusing}")).expect("read"), None, "{name}: the refused body's machine");
        assert_eq!(store.machines().expect("list").len(), bodies - 1, "{name}");
        if groups {
            assert_eq!(transactions, 2, "{name}: {bodies} bodies queued together take two transactions of at most {}", super::groups::MAX_GROUP);
        } else {
            assert_eq!(transactions, bodies as u64 - 1, "{name}: a store with bounded transactions runs each alone");
        }
    }
}

/// A body that panics takes its group's transaction down with it; the
/// other bodies of the group are answered with an error, not left waiting.
#[tokio::test]
async fn a_panicking_body_leaves_no_other_caller_waiting() {
    for (name, store, _keep) in stores() {
        let groups = store.backend.max_txn_ops().is_none();
        let held = if groups { Some(store.groups.hold().await) } else { None };
        let panicking = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write_grouped(|tx| {
                        tx.put(b"m-panic", &machine("m-panic"))?;
                        if tx.meta("never").is_ok() {
                            panic!("a body that panics");
                        }
                        Ok::<_, StoreError>(())
                    })
                    .await
            })
        };
        let other = {
            let store = store.clone();
            tokio::spawn(async move { store.write_grouped(|tx| tx.put(b"m-other", &machine("m-other"))).await })
        };
        if let Some(held) = held {
            let queued = tokio::time::timeout(std::time::Duration::from_secs(30), async {
                while store.groups.queued() < 2 {
                    tokio::task::yield_now().await;
                }
            });
            queued.await.expect("both bodies queue while the turn is held");
            drop(held);
        }
        let finished = tokio::time::timeout(std::time::Duration::from_secs(30), async { (panicking.await, other.await) });
        let (first, second) = finished.await.unwrap_or_else(|_| panic!("{name}: a caller was left waiting"));
        let outcomes = [first.map(|r| r.is_ok()), second.map(|r| r.is_ok())];
        assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 1, "{name}: exactly one task panicked: {outcomes:?}");
        assert_eq!(store.machine("m-panic").expect("read"), None, "{name}: nothing of the panicking body landed");
    }
}
