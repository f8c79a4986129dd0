//! The fleet's records in a real etcd cluster (three members on loopback):
//! a sled store moved into etcd with every record intact and served from
//! there, and `drover init --store` refusing a prefix another fleet holds.

use crate::common;

use std::time::Duration;

use common::{drover_json, eventually, until_reported, Options, TestCoordinator};
use drover_coordinator::config::Config;
use drover_coordinator::store::{Store, DB_DIR};
use drover_protocol::v1::{AdminRequest, DeploymentInfo, DeploymentState, MachineStatus};
use drover_store::etcd_cluster::EtcdCluster;

fn url(cluster: &EtcdCluster, prefix: &str) -> String {
    let hosts: Vec<String> = cluster.endpoints().iter().map(|e| e.trim_start_matches("http://").to_string()).collect();
    format!("etcd://{}/{prefix}", hosts.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_moves_into_etcd_with_every_record_and_is_served_from_there() {
    let cluster = EtcdCluster::start(3);
    let mut fleet = TestCoordinator::start().await;
    let (_, token) = fleet.token(3, &[("role", "web"), ("tenant", "a")]).await;
    let mut agents: Vec<_> = (1..=2).map(|i| fleet.spawn_agent(&format!("vm{i}"), Some(&token))).collect();
    for a in &mut agents {
        until_reported(a, 1).await;
    }
    let (made, _, err) = drover_json(&fleet, &["tenants", "create", "a.example", "--admin-email", "owner@a.example"]);
    assert!(made, "{err}");
    let machines_before: Vec<String> = fleet.machines().await.into_iter().map(|m| m.id).collect();
    fleet.stop().await;
    drop(agents);

    let config_path = fleet.state_dir.join("drover.toml");
    let sled = || Store::open(&fleet.state_dir.join(DB_DIR)).expect("open sled");
    let before = sled().snapshot().expect("snapshot");
    let records: usize = before.iter().map(|(_, pairs)| pairs.len()).sum();

    // A coordinator still serving the directory holds sled's lock.
    let held = sled();
    let (ok, _, err) =
        drover_json(&fleet, &["store", "migrate", "--state-dir", fleet.state_dir.to_str().expect("utf-8"), "--store", &url(&cluster, "fleet-a")]);
    assert!(!ok && err.contains("stop its coordinator first"), "refused while the store is open elsewhere: {err}");
    drop(held);
    let store_url = url(&cluster, "fleet-a");
    let (ok, out, err) = drover_json(&fleet, &["store", "migrate", "--state-dir", fleet.state_dir.to_str().expect("utf-8"), "--store", &store_url]);
    assert!(ok, "{err}");
    assert_eq!(out["records"], records, "{out}");
    assert_eq!(out["prefix"], "fleet-a/");

    let etcd = Store::open_etcd(cluster.options("fleet-a/")).expect("open etcd");
    assert_eq!(etcd.snapshot().expect("snapshot"), before, "every record, byte for byte");
    assert_eq!(sled().snapshot().expect("snapshot"), before, "the sled store is kept as it was");
    let config = Config::load(&config_path).expect("config");
    assert_eq!(config.store.as_ref().map(|s| s.prefix.as_str()), Some("fleet-a/"), "the configuration names etcd");

    let (ok, _, err) = drover_json(&fleet, &["store", "migrate", "--state-dir", fleet.state_dir.to_str().expect("utf-8"), "--store", &store_url]);
    assert!(!ok && err.contains("already keeps its records in etcd"), "{err}");
    let other = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let (ok, _, err) = drover_json(&other, &["store", "migrate", "--state-dir", other.state_dir.to_str().expect("utf-8"), "--store", &store_url]);
    assert!(!ok && err.contains("already holds records"), "a non-empty target is refused: {err}");
    assert_eq!(etcd.snapshot().expect("snapshot"), before, "and left as it was");

    // Served from etcd: the same machines, and their agents come back.
    fleet.config = config;
    fleet.serve().await;
    let mut agents: Vec<_> = (1..=2).map(|i| fleet.spawn_agent(&format!("vm{i}"), None)).collect();
    for a in &mut agents {
        until_reported(a, 1).await;
    }
    let mut after: Vec<String> = fleet.machines().await.into_iter().map(|m| m.id).collect();
    after.sort();
    let mut expected = machines_before.clone();
    expected.sort();
    assert_eq!(after, expected, "the same machines, no new enrollment");
    assert!(
        eventually(Duration::from_secs(10), || async { fleet.machines().await.iter().all(|m| m.status == MachineStatus::Online) }).await,
        "both online again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_etcd_refuses_a_prefix_another_fleet_holds() {
    let cluster = EtcdCluster::start(1);
    let first = TestCoordinator::start_with(Options { etcd: Some(url(&cluster, "shared")), ..Default::default() }).await;
    assert_eq!(first.machines().await.len(), 0, "a fleet on etcd serves");
    assert_eq!(first.config.store.as_ref().map(|s| s.prefix.as_str()), Some("shared/"));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["init", "--state-dir"])
        .arg(dir.path().join("second"))
        .args(["--listen", "127.0.0.1:0", "--store", &url(&cluster, "shared")])
        .output()
        .expect("run drover init");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another fleet lives there"), "{err}");
    assert!(!dir.path().join("second").exists(), "nothing is left of the refused init");
    let default_prefix = TestCoordinator::start_with(Options { etcd: Some(url(&cluster, "")), no_server: true, ..Default::default() }).await;
    let prefix = default_prefix.config.store.as_ref().map(|s| s.prefix.clone()).unwrap_or_default();
    assert!(prefix.starts_with("drover/") && prefix.len() > "drover/".len() + 8, "the default prefix names the fleet: {prefix}");
}

/// A second `drover serve` of a fleet in etcd serves at once beside the
/// first, which leads; once the leader is SIGKILLed, the second leads
/// within the lease, and the first, started again, serves its agent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_coordinator_of_a_fleet_in_etcd_serves_and_another_leads_when_the_leader_dies() {
    let cluster = EtcdCluster::start(3);
    let store = url(&cluster, "fleet-b");
    let fleet = TestCoordinator::start_with(Options { etcd: Some(store.clone()), no_server: true, ..Default::default() }).await;
    let mut first = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    let leader = admin_when_serving(&fleet, fleet.addr, Duration::from_secs(30)).await;
    assert!(eventually(Duration::from_secs(20), || async { leading(&leader).await == Some(fleet.addr.to_string()) }).await, "the first leads");
    let (_, token) = fleet.token(1, &[]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token));
    until_reported(&mut agent, 1).await;

    let (second_dir, second_addr) = join(&fleet, &store, "b");
    let _second = serve(&second_dir);
    let second = admin_when_serving(&fleet, second_addr, Duration::from_secs(30)).await;
    let listed = second.call(AdminRequest::CoordinatorsList).await.expect("list").coordinators().expect("Coordinators");
    assert_eq!(listed.iter().filter(|c| c.leading).count(), 1, "one leads: {listed:?}");
    assert_eq!(leading(&second).await, Some(fleet.addr.to_string()), "still the first: {listed:?}");
    leader.close().await;

    first.0.kill().expect("SIGKILL the leader");
    let killed = std::time::Instant::now();
    let _ = first.0.wait();
    assert!(
        eventually(Duration::from_secs(60), || async { leading(&second).await == Some(second_addr.to_string()) }).await,
        "the second leads once the first's lease ran out"
    );
    eprintln!("failover: the second led {:.1} s after the SIGKILL", killed.elapsed().as_secs_f64());
    let _again = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    let reports = agent.status.borrow().reports;
    until_reported(&mut agent, reports + 2).await;
    let machines = fleet.machines().await;
    assert_eq!(machines.len(), 1, "the same machine, not enrolled again");
    assert_eq!(machines[0].status, MachineStatus::Online);
}

/// The address of the coordinator that leads, as `coordinators list`
/// through `admin` says.
async fn leading(admin: &drover_coordinator::client::AdminClient) -> Option<String> {
    let listed = admin.call(AdminRequest::CoordinatorsList).await.ok()?.coordinators().ok()?;
    listed.into_iter().find(|c| c.leading).map(|c| c.address)
}

/// An admin client of whichever coordinator at `addr`, with the fleet's
/// admin bundle.
async fn admin_at(fleet: &TestCoordinator, addr: std::net::SocketAddr) -> Option<drover_coordinator::client::AdminClient> {
    let mut bundle = drover_coordinator::bundle::AdminBundle::load(&fleet.bundle_path).expect("bundle");
    bundle.coordinator = addr;
    drover_coordinator::client::AdminClient::connect(&bundle).await.ok()
}

/// Deploys `attr` of the test flake to `machine` through the coordinator at
/// `addr` and waits for its outcome.
async fn deploy_through(fleet: &TestCoordinator, addr: std::net::SocketAddr, machine: &str, flake: &std::path::Path, attr: &str) -> DeploymentInfo {
    let admin = admin_at(fleet, addr).await.expect("an admin connection");
    let mut spec = common::deploy_to_role("", common::flake::flake_spec(flake, attr));
    spec.selector = Default::default();
    spec.machine = Some(machine.to_string());
    let targets = admin.call(AdminRequest::Deploy(spec)).await.expect("deploy").deployed().expect("Deployed");
    let id = targets[0].deployment_id.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let last = loop {
        let d = admin.call(AdminRequest::DeploymentsShow { id: id.clone() }).await.expect("show").deployment().expect("Deployment");
        if matches!(d.state, DeploymentState::Succeeded | DeploymentState::Failed | DeploymentState::Superseded) {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "the deployment ends: {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    admin.close().await;
    last
}

/// Three coordinators of one fleet in etcd, all serving, one leading; two
/// agents, each on another coordinator and knowing all three. A deployment
/// through the third reaches both machines (each coordinator learns of it
/// through its watch of the store and tells its own agent). Then the
/// leader is SIGKILLed: its agent moves to another, one of the others
/// leads, and a deployment after the loss reaches both machines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_serve_at_once_and_an_agent_that_knows_them_stays_managed_when_the_leader_dies() {
    let cluster = EtcdCluster::start(3);
    let store = url(&cluster, "fleet-c");
    let fleet = TestCoordinator::start_with(Options { etcd: Some(store.clone()), no_server: true, ..Default::default() }).await;
    let others: Vec<_> = ["b", "c"].into_iter().map(|name| join(&fleet, &store, name)).collect();
    for (dir, _) in &others {
        assert!(!dir.join("admin.bundle").exists(), "joining makes no admin");
    }
    // Joining a fleet the CA is not of is refused.
    let stranger = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["init", "--state-dir"])
        .arg(fleet.dir.path().join("coordinator-x"))
        .args(["--listen", "127.0.0.1:0", "--store", &store, "--join"])
        .arg(&stranger.state_dir)
        .output()
        .expect("drover init --join");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not the fleet of this CA"), "{}", String::from_utf8_lossy(&out.stderr));

    let mut processes = vec![common::Serving(common::spawn_coordinator(&fleet.state_dir))];
    processes.extend(others.iter().map(|(dir, _)| serve(dir)));
    let addrs = [fleet.addr, others[0].1, others[1].1];
    for addr in addrs {
        admin_when_serving(&fleet, addr, Duration::from_secs(30)).await.close().await;
    }

    let flake = common::flake::flake(fleet.dir.path());
    let (_, token) = fleet.token(2, &[]).await;
    // vm1 on the first, vm2 on the second; each knows the other two.
    let knows = |primary: usize| {
        let rest: Vec<drover_net::HostPort> = addrs.iter().enumerate().filter(|(i, _)| *i != primary).map(|(_, a)| (*a).into()).collect();
        move |c: &mut drover_agent::AgentConfig| {
            c.coordinator = addrs[primary].into();
            c.other_coordinators = rest.clone();
        }
    };
    let (_vm1, mut agent1) = common::flake::spawn_vm_with(&fleet, "vm1", Some(&token), knows(0));
    let (_vm2, mut agent2) = common::flake::spawn_vm_with(&fleet, "vm2", Some(&token), knows(1));
    until_reported(&mut agent1, 1).await;
    until_reported(&mut agent2, 1).await;
    let machines: Vec<String> = fleet.machines().await.into_iter().map(|m| m.id).collect();
    assert_eq!(machines.len(), 2);
    // `drover coordinators list`: three, one leading, each with its agents
    // (said again every few seconds).
    let listed = |through: std::net::SocketAddr| {
        let through = through.to_string();
        let (ok, out, err) = drover_json(&fleet, &["coordinators", "list", "--coordinator", &through]);
        assert!(ok, "{err}");
        out.as_array().cloned().unwrap_or_default()
    };
    let roles = |list: &[serde_json::Value]| -> Vec<(String, bool, u64)> {
        list.iter().map(|c| (c["address"].as_str().unwrap_or_default().to_string(), c["leading"] == true, c["agents"].as_u64().unwrap_or(0))).collect()
    };
    let expected_agents = |addr: &std::net::SocketAddr| u64::from(*addr == addrs[0] || *addr == addrs[1]);
    assert!(
        eventually(Duration::from_secs(20), || async {
            let list = roles(&listed(addrs[2]));
            list.len() == 3
                && list.iter().filter(|(_, leads, _)| *leads).count() == 1
                && addrs.iter().all(|a| list.iter().any(|(at, _, agents)| *at == a.to_string() && *agents == expected_agents(a)))
        })
        .await,
        "three coordinators, one leading, an agent on the first and one on the second: {:?}",
        listed(addrs[2])
    );
    assert!(listed(addrs[2]).iter().all(|c| c["lease_left_s"].as_i64().is_some_and(|s| s > 0)), "each present under a lease");

    // Through the third, which holds neither agent.
    let reconnects = |agent: &drover_agent::AgentHandle| agent.status.borrow().connects;
    let connects_before = (reconnects(&agent1), reconnects(&agent2));
    for id in &machines {
        let d = deploy_through(&fleet, addrs[2], id, &flake, "good").await;
        assert_eq!(d.state, DeploymentState::Succeeded, "a deployment through the third reaches {id}: {d:?}");
    }
    assert_eq!((reconnects(&agent1), reconnects(&agent2)), connects_before, "told by their own coordinators, not by connecting again");

    // The leader dies.
    let leader = roles(&listed(addrs[2])).into_iter().find(|(_, leads, _)| *leads).map(|(a, _, _)| a).expect("a leader");
    let index = addrs.iter().position(|a| a.to_string() == leader).expect("one of the three");
    processes[index].0.kill().expect("SIGKILL the leader");
    let _ = processes[index].0.wait();
    let survivor = addrs[(index + 1) % 3];
    // The dead one's presence is gone with its lease; another leads.
    assert!(
        eventually(Duration::from_secs(30), || async {
            let list = roles(&listed(survivor));
            list.len() == 2 && list.iter().filter(|(_, leads, _)| *leads).count() == 1 && !list.iter().any(|(a, _, _)| *a == leader)
        })
        .await,
        "{:?}",
        listed(survivor)
    );
    for agent in [&mut agent1, &mut agent2] {
        let reports = agent.status.borrow().reports;
        agent.wait_for(Duration::from_secs(120), |s| s.reports >= reports + 2).await.expect("each agent reports to a live coordinator");
    }
    // Online again through the survivor, though the dead coordinator had
    // carried one machine's reports.
    let through_survivor = admin_at(&fleet, survivor).await.expect("an admin connection");
    assert!(
        eventually(Duration::from_secs(30), || async {
            let listed = through_survivor.call(AdminRequest::MachinesList { selector: Default::default() }).await.ok().and_then(|a| a.machines().ok());
            listed.is_some_and(|ms| ms.len() == 2 && ms.iter().all(|m| m.status == MachineStatus::Online))
        })
        .await,
        "both machines online again"
    );
    through_survivor.close().await;
    for id in &machines {
        let after = deploy_through(&fleet, survivor, id, &flake, "good2").await;
        assert_eq!(after.state, DeploymentState::Succeeded, "a deployment after the loss reaches {id}: {after:?}");
        assert!(after.system_path.as_deref().is_some_and(|p| p.ends_with("/good2")), "{after:?}");
    }
}

/// The etcd members under a coordinator fail: one killed and restarted
/// changes nothing; two of three killed make every change fail with an
/// error that says quorum is lost while the agent keeps its connection and
/// its system; when they return, changes work again with no operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_on_etcd_rides_out_a_lost_member_and_refuses_changes_without_quorum() {
    let mut cluster = EtcdCluster::start(3);
    let fleet = TestCoordinator::start_with(Options { etcd: Some(url(&cluster, "fleet-d")), ..Default::default() }).await;
    let (_, token) = fleet.token(1, &[]).await;
    let mut agent = fleet.spawn_agent("vm1", Some(&token));
    until_reported(&mut agent, 1).await;
    let tokens = |fleet: &TestCoordinator| drover_json(fleet, &["tokens", "create", "--uses", "1"]);

    cluster.kill(0);
    let (ok, _, err) = tokens(&fleet);
    if !ok {
        // A change made while the others elect a new etcd leader may be
        // refused once; the next one goes through. Until the coordinator's
        // claim is renewed it refuses connections (suspended): on a machine
        // busy with other tests the election and the renewal have taken
        // over 20 s.
        assert!(err.contains("quorum"), "{err}");
        let last = std::sync::Mutex::new(String::new());
        let went_on = eventually(Duration::from_secs(60), || async {
            let (ok, _, err) = tokens(&fleet);
            *last.lock().expect("last error") = err;
            ok
        })
        .await;
        assert!(went_on, "changes go on with two of three members: {}", last.lock().expect("last error"));
    }
    cluster.restart(0);

    let before = agent.status.borrow().clone();
    cluster.kill(1);
    cluster.kill(2);
    let (ok, _, err) = tokens(&fleet);
    assert!(!ok && err.contains("lost quorum") && err.contains("refused whole"), "without quorum a change is refused, saying why: {err}");
    // Without quorum past its lease, the coordinator cannot know it is
    // still one of the fleet's: it stops serving ...
    assert!(
        eventually(Duration::from_secs(30), || async { admin_at(&fleet, fleet.addr).await.is_none() }).await,
        "past the lease without quorum the coordinator serves nobody"
    );
    // ... while the agent keeps the system it runs (it changes nothing
    // because its coordinator went away).
    let during = agent.status.borrow().clone();
    assert_eq!(
        (during.applies, during.applied_generation, during.applied_step),
        (before.applies, before.applied_generation, before.applied_step),
        "the agent keeps its system: {during:?}"
    );

    cluster.restart(1);
    cluster.restart(2);
    // ... and serves again, with no operator, once quorum is back.
    assert!(eventually(Duration::from_secs(60), || async { tokens(&fleet).0 }).await, "changes work again when quorum returns: {}", cluster.logs());
    let reports = agent.status.borrow().reports;
    until_reported(&mut agent, reports + 2).await;
    let listed = fleet.call(AdminRequest::TokensList).await.tokens().expect("Tokens");
    assert!(listed.len() >= 3, "the tokens made with quorum are there: {listed:?}");
}

/// The leading coordinator is SIGSTOPped in the middle of recording a
/// deployment to many machines, past its lease; the other leads, removes
/// what the paused one left (its plan and staged records) and changes the
/// fleet; then the old one is SIGCONTed. Its recording goes on where it
/// was — its next batch is sent before anything in it can notice the
/// pause — and the fence refuses it: not one of its writes lands (watched
/// in etcd), it steps down (exits naming why), and the store holds only
/// the successor's decisions. Without the fence its next batch lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_paused_past_its_lease_is_fenced_and_steps_down() {
    use drover_coordinator::app::generations::BATCH_PREFIX;
    use drover_coordinator::store::Tree;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    const N: usize = 1000;
    let cluster = EtcdCluster::start(3);
    let store_url = url(&cluster, "fleet-e");
    let fleet = TestCoordinator::start_with(Options { etcd: Some(store_url.clone()), no_server: true, ..Default::default() }).await;
    let store = Store::open_etcd(cluster.options("fleet-e/")).expect("open etcd");
    let ids: Vec<String> = (0..N).map(|_| drover_coordinator::app::enroll::new_machine_id()).collect();
    for chunk in ids.chunks(100) {
        store.commit_blocking(|tx| chunk.iter().try_for_each(|id| tx.put(id.as_bytes(), &big_machine(id)))).expect("machines recorded");
    }
    let assignments = |store: &Store| store.backend().count(Tree::Assignments, b"", b"\xff").expect("count");

    let (second_dir, second_addr) = join(&fleet, &store_url, "b");
    let log = fleet.dir.path().join("first.log");
    let mut first = common::Serving(
        std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["serve", "--state-dir"])
            .arg(&fleet.state_dir)
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("drover serve"),
    );
    let first_admin = admin_when_serving(&fleet, fleet.addr, Duration::from_secs(20)).await;
    assert!(eventually(Duration::from_secs(20), || async { leading(&first_admin).await == Some(fleet.addr.to_string()) }).await, "the first leads");
    let _second = serve(&second_dir);
    let tokens_before = first_admin.call(AdminRequest::TokensList).await.expect("list").tokens().expect("Tokens").len();

    // Paused while it stages the deployment, batch after batch.
    let system = drover_protocol::v1::SystemSpec::Closure {
        store_path: format!("/nix/store/{}-nixos-system-paused", "p".repeat(32)),
        substituters: vec!["http://cache.example.org".into()],
        trusted_public_keys: vec!["cache.example.org-1:AAAA".into()],
    };
    let spec = drover_protocol::v1::DeploySpec { selector: [("fleet".to_string(), "big".to_string())].into(), ..common::deploy_to_role("-", system) };
    let _call = tokio::spawn(async move { first_admin.call(AdminRequest::Deploy(spec)).await });
    let pid = Pid::from_raw(i32::try_from(first.0.id()).expect("pid"));
    let watch = store.clone();
    let paused_at = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            let staged = assignments(&watch);
            if !watch.metas(BATCH_PREFIX).expect("plans").is_empty() && staged >= N / 4 {
                kill(pid, Signal::SIGSTOP).expect("SIGSTOP the first");
                return Some(assignments(&watch));
            }
        }
        None
    })
    .await
    .expect("watcher");
    let staged = paused_at.expect("the first was paused while it staged the deployment");
    assert!(staged < N, "paused with batches still to stage ({staged} of {N})");

    let successor = admin_when_serving(&fleet, second_addr, Duration::from_secs(60)).await;
    assert!(
        eventually(Duration::from_secs(60), || async { leading(&successor).await == Some(second_addr.to_string()) }).await,
        "the second leads once the first's lease ran out"
    );
    assert!(
        eventually(Duration::from_secs(60), || async { store.metas(BATCH_PREFIX).expect("plans").is_empty() && assignments(&store) == 0 }).await,
        "the successor removes what the paused coordinator left"
    );
    let token = |uses| AdminRequest::TokensCreate(drover_protocol::v1::TokenSpec { labels: Default::default(), ttl_ms: 3_600_000, uses });
    successor.call(token(7)).await.expect("the successor changes the fleet");

    // Every write to the assignments from here on is seen: a marker
    // written and seen first says the watch is live.
    let mut changes = store.backend().watch(Tree::Assignments).expect("etcd watches");
    let mark = |name: &[u8]| {
        let (store, name) = (store.clone(), name.to_vec());
        async move {
            tokio::task::spawn_blocking(move || store.backend().transaction(&mut |tx| tx.insert(Tree::Assignments, &name, b"mark".to_vec())))
                .await
                .expect("marker")
                .expect("marker written");
        }
    };
    mark(b"~marker-before").await;
    let before = until_marker(&mut changes, b"~marker-before").await;
    assert!(before.is_empty(), "nothing written to assignments while the first was paused: {before:?}");

    kill(pid, Signal::SIGCONT).expect("SIGCONT the first");
    let exited = eventually(Duration::from_secs(30), || {
        let status = first.0.try_wait().expect("wait");
        async move { status.is_some() }
    })
    .await;
    assert!(exited, "the fenced coordinator steps down: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("stepped down"), "it says why: {said}");
    mark(b"~marker-after").await;
    let landed = until_marker(&mut changes, b"~marker-after").await;
    assert!(landed.is_empty(), "none of the fenced coordinator's writes landed: {} of them did ({:?} ...)", landed.len(), landed.first());

    assert_eq!(assignments(&store), 2, "the store holds only the markers: nothing of the paused deployment");
    assert!(store.metas(BATCH_PREFIX).expect("plans").is_empty(), "and no plan of it");
    let tokens = successor.call(AdminRequest::TokensList).await.expect("list").tokens().expect("Tokens");
    assert_eq!(tokens.len(), tokens_before + 1, "only the successor's token: {tokens:?}");
}

/// The keys of the changes `changes` sees before `name` is written (as a
/// marker, by the test).
async fn until_marker(changes: &mut tokio::sync::mpsc::Receiver<drover_store::Watched>, name: &[u8]) -> Vec<String> {
    use drover_store::Watched;
    let mut others = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), changes.recv()).await.expect("the marker is seen").expect("watching") {
            Watched::Put(key, _) if key == name => return others,
            Watched::Put(key, _) => others.push(String::from_utf8_lossy(&key).to_string()),
            Watched::Deleted(_) | Watched::Resync => {}
        }
    }
}

/// A machine record as enrollment would leave it, labelled `fleet=big`.
fn big_machine(id: &str) -> drover_coordinator::model::MachineRecord {
    drover_coordinator::model::MachineRecord {
        id: id.into(),
        hostname: format!("host-{id}"),
        labels: [("fleet".to_string(), "big".to_string())].into(),
        token_id: "t-test".into(),
        enrolled_at: 1,
        revoked_at: None,
        cert_serial: "00".into(),
        cert_not_after: u64::MAX / 2,
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

/// A deployment to 1,000 machines on etcd (batches of ~30 machines a
/// transaction) whose coordinator is SIGKILLed while it records: once
/// before its commit point, once after. After a coordinator starts again
/// the deployment is absent on every machine, then whole on every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_to_a_thousand_machines_on_etcd_killed_while_it_records_is_whole_or_absent_after_recovery() {
    use drover_coordinator::app::generations::{Batch, BATCH_PREFIX};
    use drover_coordinator::store::Tree;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    const N: usize = 1000;
    let cluster = EtcdCluster::start(3);
    let fleet = TestCoordinator::start_with(Options { etcd: Some(url(&cluster, "fleet-k")), no_server: true, ..Default::default() }).await;
    let store = Store::open_etcd(cluster.options("fleet-k/")).expect("open etcd");
    let ids: Vec<String> = (0..N).map(|_| drover_coordinator::app::enroll::new_machine_id()).collect();
    for chunk in ids.chunks(100) {
        store.commit_blocking(|tx| chunk.iter().try_for_each(|id| tx.put(id.as_bytes(), &big_machine(id)))).expect("machines recorded");
    }
    let system = |name: &str| drover_protocol::v1::SystemSpec::Closure {
        store_path: format!("/nix/store/{}-nixos-system-{name}", name.repeat(32).chars().take(32).collect::<String>()),
        substituters: vec!["http://cache.example.org".into()],
        trusted_public_keys: vec!["cache.example.org-1:AAAA".into()],
    };
    let assignments = |store: &Store| store.backend().count(Tree::Assignments, b"", b"\xff").expect("count");
    let pointed = |store: &Store| store.machines().expect("machines").iter().filter(|m| m.desired_generation == 1).count();

    let mut serving = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    for (system_name, commit_point_passed) in [("a", false), ("b", true)] {
        let admin = admin_when_serving(&fleet, fleet.addr, Duration::from_secs(60)).await;
        let spec =
            drover_protocol::v1::DeploySpec { selector: [("fleet".to_string(), "big".to_string())].into(), ..common::deploy_to_role("-", system(system_name)) };
        let call = tokio::spawn(async move { admin.call(AdminRequest::Deploy(spec)).await });
        // Watched from outside: SIGKILL once the deployment is well into
        // its staging (before the commit point) or into pointing the
        // machines to it (after).
        let pid = Pid::from_raw(i32::try_from(serving.0.id()).expect("pid"));
        let watch = store.clone();
        let at_kill = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while std::time::Instant::now() < deadline {
                let plans = watch.metas(BATCH_PREFIX).expect("read the plan");
                let committed = plans.first().map(|(_, plan)| serde_json::from_str::<Batch>(plan).expect("a plan").committed);
                let progress = if commit_point_passed { pointed(&watch) } else { assignments(&watch) };
                if committed == Some(commit_point_passed) && progress >= N / 4 {
                    kill(pid, Signal::SIGKILL).expect("SIGKILL the coordinator");
                    return Some(());
                }
            }
            None
        })
        .await
        .expect("watcher");
        assert!(at_kill.is_some(), "the deployment reached the point to cut it");
        let _ = serving.0.wait();
        // The admin is not told it succeeded (its connection ends at its
        // idle timeout; not waited for).
        let answer = tokio::time::timeout(Duration::from_secs(1), call).await;
        assert!(!matches!(answer, Ok(Ok(Ok(_)))), "the admin is not told it succeeded: {answer:?}");
        // Cut in the middle: the store holds part of it now.
        let (staged, now_pointed) = (assignments(&store), pointed(&store));
        if commit_point_passed {
            assert!(now_pointed < N, "killed while machines were being pointed to it ({now_pointed} of {N})");
        } else {
            assert!(staged > 0 && staged < N && now_pointed == 0, "killed while staging ({staged} staged, {now_pointed} pointed)");
        }

        // The next coordinator, once it leads, finishes or removes what a
        // coordinator no longer there left.
        serving = common::Serving(common::spawn_coordinator(&fleet.state_dir));
        assert!(eventually(Duration::from_secs(60), || async { admin_at(&fleet, fleet.addr).await.is_some() }).await, "a coordinator serves again");
        assert!(
            eventually(Duration::from_secs(90), || async { store.metas(BATCH_PREFIX).expect("read").is_empty() }).await,
            "no plan left once the next coordinator leads"
        );
        let machines = store.machines().expect("machines");
        if commit_point_passed {
            assert!(machines.iter().all(|m| m.desired_generation == 1), "whole: every machine at generation 1");
            for id in &ids {
                let a = store.assignment(id, 1).expect("read").expect("its assignment");
                assert_eq!(a.assignment.system, system("b"), "{id} runs the deployment that was cut");
            }
            assert_eq!(assignments(&store), N);
        } else {
            assert!(machines.iter().all(|m| m.desired_generation == 0), "absent: no machine points to it");
            assert_eq!(assignments(&store), 0, "and nothing of it is left");
            assert_eq!(store.backend().count(Tree::Deployments, b"", b"\xff").expect("count"), 0);
        }
    }
}

/// The health interval of the test fleets (`Options`' default): every
/// coordinator of a fleet judges liveness by its own, so they share it.
const FLEET_HEALTH_INTERVAL: &str = "300ms";

/// `drover init --join`: a second coordinator of `fleet` on the etcd store
/// at `store`, listening on a free port; its state directory and address.
fn join(fleet: &TestCoordinator, store: &str, name: &str) -> (std::path::PathBuf, std::net::SocketAddr) {
    let dir = fleet.dir.path().join(format!("coordinator-{name}"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_udp_port()).parse().expect("addr");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["init", "--state-dir"])
        .arg(&dir)
        .args(["--listen", &addr.to_string(), "--store", store, "--health-interval", FLEET_HEALTH_INTERVAL, "--join"])
        .arg(&fleet.state_dir)
        .output()
        .expect("drover init --join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (dir, addr)
}

/// `drover serve` on `dir`.
fn serve(dir: &std::path::Path) -> common::Serving {
    common::Serving(
        std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["serve", "--state-dir"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("drover serve"),
    )
}

/// An admin client of whichever coordinator serves at `addr`, waited for.
async fn admin_when_serving(fleet: &TestCoordinator, addr: std::net::SocketAddr, within: Duration) -> drover_coordinator::client::AdminClient {
    tokio::time::timeout(within, async {
        loop {
            if let Some(admin) = admin_at(fleet, addr).await {
                return admin;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no coordinator serves at {addr} within {within:?}"))
}

async fn rollout_status(admin: &drover_coordinator::client::AdminClient, id: &str) -> drover_protocol::v1::RolloutInfo {
    admin.call(AdminRequest::RolloutStatus { id: id.into() }).await.expect("status").rollout().expect("Rollout")
}

/// The leading coordinator, which all six agents use, is SIGKILLed in the
/// middle of a rollout; the agents know the other coordinator too: it
/// leads once the leader's lease runs out, resumes the rollout from the
/// store and finishes it; every machine switched to the rollout's system exactly once, and
/// none changed its system because of the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leading_coordinator_killed_in_the_middle_of_a_rollout_is_replaced_and_the_rollout_completes() {
    use drover_protocol::v1::RolloutSpec;
    const N: usize = 6;
    let cluster = EtcdCluster::start(3);
    let store = url(&cluster, "fleet-r");
    let fleet = TestCoordinator::start_with(Options { etcd: Some(store.clone()), no_server: true, ..Default::default() }).await;
    let (second_dir, second_addr) = join(&fleet, &store, "b");
    let mut first = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    let admin = admin_when_serving(&fleet, fleet.addr, Duration::from_secs(30)).await;
    assert!(eventually(Duration::from_secs(20), || async { leading(&admin).await == Some(fleet.addr.to_string()) }).await, "the first leads");
    let _second = serve(&second_dir);

    let flake = common::flake::flake(fleet.dir.path());
    let (_, token) = fleet.token(N as u32, &[("role", "web")]).await;
    let mut vms = Vec::new();
    for i in 0..N {
        let (vm, mut agent) = common::flake::spawn_vm_with(&fleet, &format!("vm{i}"), Some(&token), |c| c.other_coordinators = vec![second_addr.into()]);
        until_reported(&mut agent, 1).await;
        vms.push((vm, agent));
    }
    let mut first_spec = common::deploy_to_role("web", common::flake::flake_spec(&flake, "good"));
    first_spec.health_deadline_ms = 2_000;
    admin.call(AdminRequest::Deploy(first_spec.clone())).await.expect("deploy").deployed().expect("Deployed");
    assert!(
        eventually(Duration::from_secs(60), || async { vms.iter().all(|(vm, _)| vm.activations() == ["good"]) }).await,
        "every machine runs the first system"
    );

    let strategy = common::one_at_a_time();
    let mut deploy = first_spec;
    deploy.system = common::flake::flake_spec(&flake, "good2");
    deploy.health_deadline_ms = 1_000;
    let rollout =
        admin.call(AdminRequest::RolloutStart(RolloutSpec { deploy, strategy, snapshot_volumes: false })).await.expect("start").rollout().expect("Rollout");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = rollout_status(&admin, &rollout.id).await;
        if r.machines.iter().filter(|m| m.state.as_str() == "done").count() >= 2 {
            assert_eq!(r.phase.as_str(), "rolling", "killed in the middle");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the rollout moves: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.0.kill().expect("SIGKILL the leading coordinator");
    let killed = std::time::Instant::now();
    let _ = first.0.wait();

    let successor = admin_when_serving(&fleet, second_addr, Duration::from_secs(60)).await;
    assert!(
        eventually(Duration::from_secs(60), || async { leading(&successor).await == Some(second_addr.to_string()) }).await,
        "the second leads once the first's lease ran out"
    );
    let took_over = killed.elapsed();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let done = loop {
        let r = rollout_status(&successor, &rollout.id).await;
        if r.phase.as_str() != "rolling" {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the successor finishes the rollout: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("failover: the second led {:.1} s after the SIGKILL", took_over.as_secs_f64());
    assert_eq!(done.phase.as_str(), "succeeded", "{done:?}");
    for m in &done.machines {
        assert_eq!(m.generation, Some(2), "{}: one generation recorded by the rollout", m.hostname);
    }
    for (vm, _) in &vms {
        assert_eq!(vm.activations(), ["good", "good2"], "{}: switched once, and only by the rollout", vm.name);
    }
}

/// The serving coordinator runs in a network namespace and reaches etcd
/// through a veth pair; the test cuts it off from etcd alone (nftables in
/// the namespace drops its TCP to the members) while agents still reach
/// it. Within the claim's lease it stops answering as a coordinator —
/// connections closed, new ones refused — instead of serving what it
/// knew; the other leads, the agent moves to it and a deployment
/// through it reaches the machine. When the link heals, the cut-off
/// coordinator finds its claim taken and steps down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_cut_off_from_etcd_stops_serving_and_its_agents_move_to_the_successor() {
    let ns = super::faults::Namespace::create();
    let host = std::net::IpAddr::V4(ns.host);
    let cluster = EtcdCluster::start_also_on(3, Some(host));
    let fleet = TestCoordinator::start_with(Options { etcd: Some(url(&cluster, "fleet-p")), no_server: true, ..Default::default() }).await;
    // The first coordinator, inside: etcd through the veth.
    let through_veth: Vec<String> = cluster.endpoints_at(host).iter().map(|e| e.trim_start_matches("http://").to_string()).collect();
    let store_inside = format!("etcd://{}/fleet-p", through_veth.join(","));
    let inside_addr = std::net::SocketAddr::new(std::net::IpAddr::V4(ns.inner), common::free_udp_port());
    let inside_dir = fleet.dir.path().join("coordinator-inside");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["init", "--state-dir"])
        .arg(&inside_dir)
        // The admins' bundle verifies the name 127.0.0.1; agents the address they dial.
        .args([
            "--listen",
            &inside_addr.to_string(),
            "--server-name",
            "127.0.0.1",
            "--store",
            &store_inside,
            "--health-interval",
            FLEET_HEALTH_INTERVAL,
            "--join",
        ])
        .arg(&fleet.state_dir)
        .output()
        .expect("drover init --join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut inside = ns.serve(&inside_dir);
    admin_when_serving(&fleet, inside_addr, Duration::from_secs(30)).await;
    let _second = serve(&fleet.state_dir);

    let flake = common::flake::flake(fleet.dir.path());
    let admin = admin_at(&fleet, inside_addr).await.expect("admin");
    let spec = drover_protocol::v1::TokenSpec { labels: Default::default(), ttl_ms: 3_600_000, uses: 1 };
    let created = admin.call(AdminRequest::TokensCreate(spec)).await.expect("token").token_created().expect("TokenCreated");
    let token = fleet.dir.path().join("token-inside");
    std::fs::write(&token, created.token.expose()).expect("token file");
    let (_vm, mut agent) = common::flake::spawn_vm_with(&fleet, "vm1", Some(&token), |c| {
        c.coordinator = inside_addr.into();
        c.other_coordinators = vec![fleet.addr.into()];
    });
    until_reported(&mut agent, 1).await;
    let machine = {
        let machines = admin.call(AdminRequest::MachinesList { selector: Default::default() }).await.expect("list").machines().expect("Machines");
        admin.close().await;
        machines[0].id.clone()
    };
    let before = deploy_through(&fleet, inside_addr, &machine, &flake, "good").await;
    assert_eq!(before.state, DeploymentState::Succeeded, "{before:?}");

    // Cut: the coordinator inside keeps its agents' link, loses etcd.
    let members = through_veth.iter().map(|hp| hp.rsplit(':').next().unwrap_or_default().to_string()).collect::<Vec<_>>().join(", ");
    ns.nft(&format!(
        "table inet etcd_cut {{\n chain output {{ type filter hook output priority 0; ip daddr {} tcp dport {{ {members} }} counter drop; }}\n}}\n",
        ns.host
    ));
    let cut = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(30), || async { admin_at(&fleet, inside_addr).await.is_none() }).await, "the cut-off coordinator stops answering");
    let stopped_after = cut.elapsed();
    let successor = admin_when_serving(&fleet, fleet.addr, Duration::from_secs(60)).await;
    let reports = agent.status.borrow().reports;
    agent.wait_for(Duration::from_secs(60), |s| s.reports >= reports + 2).await.expect("the agent reports to the successor");
    let after = deploy_through(&fleet, fleet.addr, &machine, &flake, "good2").await;
    assert_eq!(after.state, DeploymentState::Succeeded, "a deployment through the successor reaches the machine: {after:?}");
    assert!(
        eventually(Duration::from_secs(30), || async { leading(&successor).await == Some(fleet.addr.to_string()) }).await,
        "the other coordinator leads once the cut-off one's lease ran out"
    );
    eprintln!("cut off: stopped answering {:.1} s after the cut", stopped_after.as_secs_f64());

    // Healed: the claim is another's; the old coordinator steps down.
    ns.nft("delete table inet etcd_cut\n");
    let exited = eventually(Duration::from_secs(30), || {
        let status = inside.0.try_wait().expect("wait");
        async move { status.is_some() }
    })
    .await;
    assert!(exited, "the coordinator that was cut off steps down once it sees its claim taken");
    assert!(admin_at(&fleet, fleet.addr).await.is_some(), "the successor serves on");
}
