//! A fleet described in one file: `drover plan` and `drover apply` against
//! a coordinator with a local QEMU provider (real VMs), two adopted
//! process agents and a real Garage.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::garage::GarageNode;
use common::{vm, Options, TestCoordinator};
use drover_protocol::v1::{AdminRequest, AdminResponse, DeploymentInfo, MachineStatus};
use serde_json::Value;

/// A coordinator with Garage as its S3 and a local QEMU provider.
async fn coordinator(node: &GarageNode) -> (TestCoordinator, PathBuf) {
    let mut fleet = common::garage::unserved_with_s3(&node.admin_url, &node.s3_url, &node.admin_token, None).await;
    let work = fleet.dir.path().join("qemu");
    fleet.config.providers.push(vm::qemu_provider("local", vm::image(), work.clone(), Duration::from_secs(180)));
    fleet.serve().await;
    (fleet, work)
}

fn fleet_toml(flake: &Path, web_system: &str, with_backups: bool) -> String {
    let backups = if with_backups { "[buckets.backups]\nmachines = [\"db-a\", \"db-b\"]\n" } else { "" };
    format!(
        r#"
[tenants."a.example"]
admin_email = "ops@a.example"

[tenants."b.example"]
admin_email = "ops@b.example"

[machines.db-a]
provider = "local"
tenant = "a.example"
memory = "256MiB"

[machines.db-b]
provider = "local"
tenant = "b.example"
memory = "256MiB"

[machines.web-a]
adopt = "web-a"
tenant = "a.example"

[machines.web-b]
adopt = "web-b"
tenant = "b.example"

[buckets.media]
public = true
quota = "1GiB"
machines = ["web-a", "web-b"]

{backups}
[volumes.pgdata]
size = "64MiB"
machine = "db-a"
mount = "/srv/pg"

[services.db]
machines = ["db-a", "db-b"]
flake = "path:/etc/fleet#db"
checks = ["file:/run/drover/facts.json"]
health_deadline = "30s"

[services.web]
machines = ["web-a", "web-b"]
flake = "path:{flake}#{web_system}"
secrets = {{ app-key = "app-key.txt" }}
facts = {{ db_host = "${{machines.db-a.address}}", media = "${{buckets.media.name}}" }}
strategy = {{ canary = 1, max_parallel = "1" }}
after = ["db"]
"#,
        flake = flake.display()
    )
}

fn run(fleet: &TestCoordinator, args: &[&str]) -> (bool, Value, String) {
    common::drover_json(fleet, args)
}

/// `(kind, name, action)` of a plan.
fn summary(plan: &Value) -> Vec<(String, String, String)> {
    plan.as_array()
        .unwrap_or_else(|| panic!("a plan: {plan}"))
        .iter()
        .map(|c| (c["kind"].as_str().unwrap_or("").to_string(), c["name"].as_str().unwrap_or("").to_string(), c["action"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn facts(vm: &common::flake::Vm) -> Value {
    serde_json::from_slice(&std::fs::read(vm.runtime().join("facts.json")).expect("facts.json")).expect("json")
}

async fn deployments(fleet: &TestCoordinator) -> Vec<DeploymentInfo> {
    let all = fleet.call(AdminRequest::DeploymentsList { machine: None }).await.deployments().expect("deployments");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_file_is_planned_applied_and_converges() {
    let _heavy = common::heavy().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    let (fleet, work) = coordinator(&node).await;
    let _vms = vm::KillVmsOnDrop(work.clone());
    let flake = common::flake::flake(fleet.dir.path());
    let (_, token) = fleet.token(2, &[]).await;
    let (web_a, _agent_a) = common::flake::spawn_vm(&fleet, "web-a", Some(&token));
    let (web_b, agent_b) = common::flake::spawn_vm(&fleet, "web-b", Some(&token));
    assert!(
        common::eventually(Duration::from_secs(20), || async { fleet.machines().await.iter().filter(|m| m.status == MachineStatus::Online).count() == 2 })
            .await
    );

    let files = fleet.dir.path().join("fleet");
    std::fs::create_dir_all(&files).expect("dir");
    std::fs::write(files.join("app-key.txt"), "k3y-for-web").expect("secret");
    let file = files.join("fleet.toml");
    std::fs::write(&file, fleet_toml(&flake, "good", true)).expect("fleet file");
    let path = file.display().to_string();

    // The first plan: only creations (and the adopted machines' labels).
    let (ok, plan, stderr) = run(&fleet, &["plan", &path]);
    assert!(ok, "{stderr}");
    let want: Vec<(String, String, String)> = [
        ("tenant", "a.example", "create"),
        ("tenant", "b.example", "create"),
        ("machine", "db-a", "create"),
        ("machine", "db-b", "create"),
        ("machine", "web-a", "update"),
        ("machine", "web-b", "update"),
        ("bucket", "backups", "create"),
        ("bucket", "media", "create"),
        ("service", "db", "create"),
        ("service", "web", "create"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(summary(&plan), want, "{plan}");
    assert!(provisions(&fleet).await.is_empty(), "a plan changes nothing");

    // Apply: everything converges.
    let (ok, _, stderr) = run(&fleet, &["apply", &path, "--yes", "--timeout", "10m"]);
    assert!(ok, "apply failed: {stderr}");
    let machines = fleet.machines().await;
    for name in ["db-a", "db-b", "web-a", "web-b"] {
        let m = machines.iter().find(|m| m.hostname == name && m.status != MachineStatus::Revoked).unwrap_or_else(|| panic!("{name}: {machines:?}"));
        assert_eq!(m.status, MachineStatus::Online, "{name}");
        assert_eq!(m.labels.get("tenant").map(String::as_str), Some(if name.ends_with('a') { "a.example" } else { "b.example" }));
    }
    let db_a = machines.iter().find(|m| m.hostname == "db-a").expect("db-a");
    let db_address = db_a.health.as_ref().and_then(|h| h.addresses.first().cloned()).expect("db-a reports its address");
    for web in [&web_a, &web_b] {
        let f = facts(web);
        assert_eq!(f["db_host"], Value::String(db_address.clone()), "{f}");
        assert_eq!(f["media"], "media");
        assert_eq!(f["s3_bucket.media"], "media", "the bucket's facts: {f}");
        assert_eq!(std::fs::read_to_string(web.runtime().join("secrets/app-key")).expect("secret"), "k3y-for-web");
        assert!(web.runtime().join("secrets/s3-media-access-key-id").exists(), "the media credentials");
        assert!(!web.runtime().join("secrets/s3-backups-access-key-id").exists(), "not the db's bucket");
    }
    // The database's data disk is formatted and mounted in db-a.
    let db_a_health = fleet.machine(&db_a.id).await.health.expect("health");
    let pg = db_a_health.volumes.iter().find(|v| v.name == "pgdata").expect("pgdata reported");
    assert!(pg.mounted && pg.formatted && pg.mount_point == "/srv/pg", "{pg:?}");
    // The database was healthy before the web service started.
    let all = deployments(&fleet).await;
    let db_done = all.iter().filter(|d| d.hostname.starts_with("db-")).map(|d| d.finished_at.expect("db finished")).max().expect("db deployments");
    let web_start = all.iter().filter(|d| d.hostname.starts_with("web-")).map(|d| d.created_at).min().expect("web deployments");
    assert!(db_done <= web_start, "db finished at {db_done}, web started at {web_start}");

    // A second plan: nothing.
    let (ok, plan, stderr) = run(&fleet, &["plan", &path]);
    assert!(ok, "{stderr}");
    assert_eq!(summary(&plan), vec![], "{plan}");
    let (ok, drift, _) = run(&fleet, &["fleet", "drift"]);
    assert!(ok && drift.as_array().is_some_and(Vec::is_empty), "{drift}");

    // One service's system changes: only its machines, with its strategy.
    std::fs::write(&file, fleet_toml(&flake, "good2", true)).expect("fleet file");
    let (ok, plan, stderr) = run(&fleet, &["plan", &path]);
    assert!(ok, "{stderr}");
    assert_eq!(summary(&plan), vec![("service".into(), "web".into(), "update".into())], "{plan}");
    let details = plan[0]["details"].to_string();
    assert!(details.contains("web-a") && details.contains("web-b") && details.contains("good2"), "{details}");
    let rollouts_before = rollouts(&fleet).await;
    let (ok, _, stderr) = run(&fleet, &["apply", &path, "--yes"]);
    assert!(ok, "{stderr}");
    assert_eq!(rollouts(&fleet).await, rollouts_before + 1, "the web service rolled out with its strategy");
    for web in [&web_a, &web_b] {
        assert_eq!(web.activations().last().map(String::as_str), Some("good2"));
    }

    // A bucket removed from the file: deleted only with --prune.
    std::fs::write(&file, fleet_toml(&flake, "good2", false)).expect("fleet file");
    let (ok, plan, _) = run(&fleet, &["plan", &path]);
    assert!(ok && !summary(&plan).iter().any(|c| c.2 == "delete"), "{plan}");
    let (ok, plan, _) = run(&fleet, &["plan", &path, "--prune"]);
    assert!(ok && summary(&plan).contains(&("bucket".into(), "backups".into(), "delete".into())), "{plan}");

    // The database VM made again: a new address, so the web machines get
    // a new generation.
    std::fs::write(&file, fleet_toml(&flake, "good2", true)).expect("fleet file");
    let (ok, _, stderr) = run(&fleet, &["machines", "destroy", "db-a"]);
    assert!(ok, "{stderr}");
    let (ok, plan, stderr) = run(&fleet, &["plan", &path]);
    assert!(ok, "{stderr}");
    let s = summary(&plan);
    assert!(s.contains(&("machine".into(), "db-a".into(), "create".into())), "{plan}");
    assert!(s.contains(&("service".into(), "web".into(), "update".into())), "the web machines' facts name db-a: {plan}");
    let (ok, _, stderr) = run(&fleet, &["apply", &path, "--yes", "--timeout", "10m"]);
    assert!(ok, "{stderr}");
    let new_address = fleet
        .machines()
        .await
        .into_iter()
        .find(|m| m.hostname == "db-a" && m.status == MachineStatus::Online)
        .and_then(|m| m.health.and_then(|h| h.addresses.first().cloned()))
        .expect("the new db-a's address");
    assert_ne!(new_address, db_address, "a new VM, a new address");
    assert_eq!(facts(&web_a)["db_host"], Value::String(new_address));
    let (ok, plan, _) = run(&fleet, &["plan", &path]);
    assert!(ok && summary(&plan).is_empty(), "{plan}");
    assert_eq!(vm::vm_dirs(&work).len(), 2, "two VMs: the destroyed one is gone");

    // A broken file is refused with its file, line and key; nothing applied.
    let bad = files.join("bad.toml");
    std::fs::write(&bad, fleet_toml(&flake, "good2", true).replace("after = [\"db\"]", "after = [\"cache\"]")).expect("bad file");
    let (ok, _, stderr) = run(&fleet, &["apply", &bad.display().to_string(), "--yes"]);
    assert!(!ok && stderr.contains("bad.toml:") && stderr.contains("services.web.after") && stderr.contains("cache"), "{stderr}");

    // What was applied, and a machine that went away since: drift.
    let (ok, shown, stderr) = run(&fleet, &["fleet", "show"]);
    assert!(ok && shown["machines"].as_object().is_some_and(|m| m.len() == 4), "{shown} {stderr}");
    assert_eq!(shown["facts"]["web"]["media"], "media");
    agent_b.stop().await.expect("stop web-b's agent");
    assert!(
        common::eventually(Duration::from_secs(20), || async {
            let (_, drift, _) = run(&fleet, &["fleet", "drift"]);
            drift.to_string().contains("web-b") && drift.to_string().contains("offline")
        })
        .await,
        "drift names the machine that went offline"
    );

    for name in ["db-a", "db-b"] {
        let (ok, _, stderr) = run(&fleet, &["machines", "destroy", name]);
        assert!(ok, "{stderr}");
    }
}

async fn provisions(fleet: &TestCoordinator) -> Vec<drover_protocol::v1::ProvisionInfo> {
    let all = fleet.call(AdminRequest::Provisions).await.provisions().expect("provisions");
    all
}

async fn rollouts(fleet: &TestCoordinator) -> usize {
    let all = fleet.call(AdminRequest::RolloutList).await.rollouts().expect("rollouts");
    all.len()
}

/// The same fleet as a flake output, read with `nix eval --json`: the same
/// plan as the TOML file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_written_in_nix_plans_like_its_toml() {
    let fleet = TestCoordinator::start().await;
    let dir = fleet.dir.path().join("nixfleet");
    std::fs::create_dir_all(&dir).expect("dir");
    let toml = r#"
[tenants."a.example"]
admin_email = "ops@a.example"

[machines.web-a]
adopt = "web-a"
tenant = "a.example"

[services.web]
machines = ["web-a"]
flake = "path:/fleet#web"
facts = { greeting = "hello", db = "${machines.web-a.hostname}" }
after = []
"#;
    std::fs::write(dir.join("fleet.toml"), toml).expect("toml");
    let nix = r#"{
  outputs = { self }: {
    droverFleet = {
      tenants."a.example".admin_email = "ops@a.example";
      machines.web-a = { adopt = "web-a"; tenant = "a.example"; };
      services.web = {
        machines = [ "web-a" ];
        flake = "path:/fleet#web";
        facts = { greeting = "hello"; db = "\${machines.web-a.hostname}"; };
        after = [ ];
      };
    };
  };
}
"#;
    std::fs::write(dir.join("flake.nix"), nix).expect("flake.nix");
    let (ok, from_toml, stderr) = run(&fleet, &["plan", &dir.join("fleet.toml").display().to_string()]);
    assert!(ok, "{stderr}");
    let reference = format!("path:{}#droverFleet", dir.display());
    let (ok, from_nix, stderr) = run(&fleet, &["plan", "--flake", &reference]);
    assert!(ok, "nix eval: {stderr}");
    assert_eq!(from_nix, from_toml);
    assert!(!summary(&from_toml).is_empty());
    // An unknown key in the Nix fleet is refused too, naming it.
    std::fs::write(dir.join("flake.nix"), nix.replace("after = [ ];", "after = [ ]; colour = \"blue\";")).expect("flake.nix");
    let (ok, _, stderr) = run(&fleet, &["plan", "--flake", &reference]);
    assert!(!ok && stderr.contains("colour"), "{stderr}");
}

/// A coordinator SIGKILLed in the middle of an apply: applying again
/// converges with one VM a machine and no duplicate bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_cut_short_by_a_sigkill_is_finished_by_applying_again() {
    let _heavy = common::heavy().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = GarageNode::single(dir.path()).await;
    let (mut fleet, work) = coordinator(&node).await;
    let _vms = vm::KillVmsOnDrop(work.clone());
    fleet.stop().await;
    std::fs::write(fleet.state_dir.join("drover.toml"), fleet.config.to_toml()).expect("drover.toml");
    let text = r#"
[machines.one]
provider = "local"
memory = "256MiB"

[machines.two]
provider = "local"
memory = "256MiB"

[buckets.shared]
machines = ["one", "two"]

[volumes.data]
size = "32MiB"
machine = "one"
mount = "/srv/data"

[services.app]
machines = ["one", "two"]
flake = "path:/etc/fleet#app"
"#;
    let file = fleet.dir.path().join("fleet.toml");
    std::fs::write(&file, text).expect("fleet file");
    let path = file.display().to_string();
    let mut server = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    assert!(common::eventually(Duration::from_secs(20), || async { run(&fleet, &["whoami"]).0 }).await);
    let bundle = fleet.bundle_path.clone();
    let apply_path = path.clone();
    let first = std::thread::spawn(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["apply", &apply_path, "--yes"])
            .env("DROVER_ADMIN_BUNDLE", bundle)
            .output()
            .expect("apply")
    });
    // Killed once the VMs are being made.
    assert!(common::eventually(Duration::from_secs(60), || async { !vm::vm_dirs(&work).is_empty() }).await);
    server.0.kill().expect("SIGKILL");
    server.0.wait().expect("reap");
    let out = first.join().expect("thread");
    assert!(!out.status.success(), "the first apply lost its coordinator");
    let _server = common::Serving(common::spawn_coordinator(&fleet.state_dir));
    assert!(common::eventually(Duration::from_secs(20), || async { run(&fleet, &["whoami"]).0 }).await);
    let (ok, _, stderr) = run(&fleet, &["apply", &path, "--yes", "--timeout", "10m"]);
    assert!(ok, "{stderr}");
    assert_eq!(vm::vm_dirs(&work).len(), 2, "one VM a machine");
    let live: Vec<_> = provisions(&fleet).await.into_iter().filter(|p| p.state == drover_protocol::v1::ProvisionState::Online).collect();
    assert_eq!(live.len(), 2);
    use drover_coordinator::s3::ObjectStoreAdmin;
    let buckets = node.admin().buckets().await.expect("buckets");
    assert_eq!(buckets.iter().filter(|b| b.aliases.iter().any(|a| a == "shared")).count(), 1, "one bucket");
    let (ok, plan, _) = run(&fleet, &["plan", &path]);
    assert!(ok && summary(&plan).is_empty(), "converged: {plan}");
    for name in ["one", "two"] {
        assert!(run(&fleet, &["machines", "destroy", name]).0);
    }
}

/// The example fleet (two tenants, Mastodon and Pixelfed with their
/// databases on volumes, a Garage cluster of three VMs) is valid, and its
/// Nix form evaluates to the same fleet.
#[test]
fn the_example_fleet_is_valid_in_toml_and_in_nix() {
    use drover_coordinator::fleet::{parse, service_order, validate, Source};
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for (file, output) in [("fleet.toml", "droverFleet"), ("fleet-proxmox.toml", "droverFleetProxmox")] {
        let text = std::fs::read_to_string(examples.join(file)).expect("example");
        let toml_source = Source { name: format!("examples/{file}"), text };
        let from_toml = parse(&toml_source).expect("parses");
        validate(&from_toml, &toml_source).expect("valid");
        let order = service_order(&from_toml).expect("no cycle");
        let at = |s: &str| order.iter().position(|o| o == s).expect("service");
        assert!(at("social-db") < at("social-web"), "{order:?}");
        let out = std::process::Command::new("nix")
            .args(["--extra-experimental-features", "nix-command flakes", "--option", "substituters", "", "eval", "--json"])
            .arg(format!("path:{}#{output}", examples.canonicalize().expect("path").display()))
            .output()
            .expect("nix (apt-get install nix-bin)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let nix_source = Source { name: format!("examples#{output}"), text: String::from_utf8(out.stdout).expect("utf-8") };
        let from_nix = parse(&nix_source).expect("parses");
        validate(&from_nix, &nix_source).expect("valid");
        assert_eq!(from_nix, from_toml, "{file} and {output}");
    }
}

/// The coordinator's records that an apply would change: provisions,
/// tokens, machines, tenants.
async fn records(fleet: &TestCoordinator) -> String {
    let mut out = String::new();
    for request in [AdminRequest::Provisions, AdminRequest::TokensList, AdminRequest::MachinesList { selector: Default::default() }, AdminRequest::TenantsList]
    {
        out.push_str(&format!("{:?}\n", fleet.call(request).await));
    }
    out
}

/// Every fleet that apply would trip over is refused by plan, naming the
/// file, line and key; apply on it refuses before anything is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_finds_what_apply_would_trip_over_and_apply_then_changes_nothing() {
    let mut fleet = TestCoordinator::start_with(Options { no_server: true, ..Default::default() }).await;
    let work = fleet.dir.path().join("qemu");
    let mut provider = vm::qemu_provider("local", vm::image_without_agent(), work.clone(), Duration::from_secs(60));
    if let drover_coordinator::config::ProviderConfig::Qemu(q) = &mut provider {
        q.max_vms = 2;
    }
    fleet.config.providers.push(provider);
    fleet.serve().await;
    let dir = fleet.dir.path().join("fleets");
    std::fs::create_dir_all(dir.join("secrets")).expect("mkdir");
    std::fs::write(dir.join("secrets/pw"), "secret").expect("secret");
    let many: String = (1..=5).map(|i| format!("[machines.vm-{i}]\nprovider = \"local\"\n\n")).collect();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("no-provider.toml", "[machines.db]\nprovider = \"pve\"\n".into(), "no-provider.toml:2", "no provider \"pve\""),
        ("too-many.toml", many, "too-many.toml:8", "max_vms"),
        ("cores.toml", "[machines.db]\nprovider = \"local\"\ncores = 100000\n".into(), "cores.toml:3", "machines.db.cores"),
        ("alias.toml", "[buckets.media-s3alias]\n".into(), "alias.toml:1", "-s3alias"),
        ("puny.toml", "[buckets.\"xn--bcher-kva\"]\n".into(), "puny.toml:1", "xn--"),
        (
            "secret.toml",
            "[machines.db]\nadopt = \"db\"\n\n[services.db]\nmachines = [\"db\"]\nflake = \"path:/etc/fleet#db\"\nsecrets = { pw = \"secrets/missing\" }\n"
                .into(),
            "secret.toml:7",
            "secrets/missing",
        ),
        ("duplicate.json", r#"{"machines": {"db": {"adopt": "a"}, "db": {"adopt": "b"}}}"#.into(), "duplicate.json:1", "\"db\" is given twice"),
    ];
    let before = records(&fleet).await;
    for (file, text, at, named) in &cases {
        let path = dir.join(file);
        std::fs::write(&path, text).expect("write");
        let (ok, _, err) = common::drover_json(&fleet, &["plan", &path.to_string_lossy()]);
        assert!(!ok && err.contains(at) && err.contains(named), "plan {file}: refused at {at} naming {named:?}: {err}");
        let (ok, _, err) = common::drover_json(&fleet, &["apply", &path.to_string_lossy(), "--yes"]);
        assert!(!ok && err.contains(named), "apply {file} refused: {err}");
    }
    assert_eq!(records(&fleet).await, before, "no record changed");
    assert!(vm::vm_dirs(&work).is_empty(), "no VM was made");
}

/// An apply whose service did not finish is not recorded as applied: the
/// next plan shows the machines that did not finish, and apply deploys them
/// again; `fleet drift` exits non-zero when it finds drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_apply_is_not_recorded_and_the_next_plan_shows_it() {
    let fleet = TestCoordinator::start().await;
    let flake = common::flake::flake(fleet.dir.path());
    let (_, token) = fleet.token(1, &[]).await;
    let (_web, _agent) = common::flake::spawn_vm(&fleet, "web-a", Some(&token));
    assert!(common::eventually(Duration::from_secs(20), || async { fleet.machines().await.iter().any(|m| m.status == MachineStatus::Online) }).await);
    let fail_on = fleet.dir.path().join("vms/fail-on");
    std::fs::write(&fail_on, "web-a\n").expect("fail-on");
    let file = fleet.dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!(
            "[machines.web-a]\nadopt = \"web-a\"\n\n[services.web]\nmachines = [\"web-a\"]\nflake = \"path:{}#flaky\"\nhealth_deadline = \"5s\"\n",
            flake.display()
        ),
    )
    .expect("fleet file");
    let path = file.display().to_string();

    let (ok, _, err) = common::drover_json(&fleet, &["apply", &path, "--yes", "--timeout", "2m"]);
    assert!(!ok && err.contains("did not become healthy"), "{err}");
    assert!(matches!(fleet.call(AdminRequest::FleetShow).await, AdminResponse::Fleet(None)), "not recorded as applied");
    let (ok, plan, err) = common::drover_json(&fleet, &["plan", &path]);
    assert!(ok, "{err}");
    let unfinished = plan.as_array().into_iter().flatten().any(|c| c["kind"] == "service" && c["details"].to_string().contains("not finished"));
    assert!(unfinished, "the plan shows the service unfinished: {plan}");

    std::fs::remove_file(&fail_on).expect("heal");
    let (ok, _, err) = common::drover_json(&fleet, &["apply", &path, "--yes", "--timeout", "2m"]);
    assert!(ok, "apply finishes it: {err}");
    let (ok, plan, _) = common::drover_json(&fleet, &["plan", &path]);
    assert!(ok && plan.as_array().is_some_and(|c| c.is_empty()), "no changes now: {plan}");
    let (ok, _, err) = common::drover_json(&fleet, &["fleet", "drift"]);
    assert!(ok, "no drift: {err}");

    // A deployment outside the fleet file: drift, and a non-zero exit.
    let id = fleet.machines().await.into_iter().find(|m| m.hostname == "web-a").expect("web-a").id;
    // Machines are named by id or by hostname alike.
    let (ok, shown, err) = common::drover_json(&fleet, &["machines", "show", "web-a"]);
    assert!(ok && shown["machine"]["id"] == id.as_str(), "{shown} {err}");
    let (ok, _, err) = common::drover_json(&fleet, &["deploy", "--machine", &id, "--flake", &format!("path:{}#good", flake.display()), "--wait"]);
    assert!(ok, "{err}");
    let (ok, drift, err) = common::drover_json(&fleet, &["fleet", "drift"]);
    assert!(!ok && err.contains("drifted") && drift.as_array().is_some_and(|d| !d.is_empty()), "{drift} {err}");
}

/// The domains of the coordinator's tenants.
async fn tenant_domains(fleet: &TestCoordinator) -> Vec<String> {
    let list = fleet.call(AdminRequest::TenantsList).await.tenants().expect("tenants");
    list.into_iter().map(|t| t.domain).collect()
}

/// `drover apply --plan` carries out exactly the plan `drover plan --out`
/// saved, and refuses — changing nothing — a plan that the fleet or the
/// file changed since it was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_carries_out_a_saved_plan_and_refuses_one_made_stale() {
    let fleet = TestCoordinator::start().await;
    let dir = fleet.dir.path();
    let file = dir.join("fleet.toml");
    std::fs::write(&file, "[tenants.\"a.example\"]\nadmin_email = \"ops@a.example\"\n").expect("write");
    let (file_arg, plan) = (file.to_string_lossy().to_string(), dir.join("plan.json"));
    let plan_arg = plan.to_string_lossy().to_string();

    let (ok, changes, err) = run(&fleet, &["plan", &file_arg, "--out", &plan_arg]);
    assert!(ok, "plan: {err}");
    assert_eq!(summary(&changes), [("tenant".to_string(), "a.example".to_string(), "create".to_string())]);
    // Someone changes the fleet between the plan and its apply.
    let (ok, _, err) = run(&fleet, &["tenants", "create", "b.example", "--admin-email", "ops@b.example"]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&fleet, &["apply", &file_arg, "--plan", &plan_arg]);
    assert!(!ok && err.contains("the fleet changed since it was made") && err.contains("drover plan"), "a stale plan is refused with the way on: {err}");
    assert!(!tenant_domains(&fleet).await.contains(&"a.example".to_string()), "nothing of the stale plan was carried out");

    // Made again, it is carried out.
    let (ok, _, err) = run(&fleet, &["plan", &file_arg, "--out", &plan_arg]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&fleet, &["apply", &file_arg, "--plan", &plan_arg]);
    assert!(ok, "apply --plan: {err}");
    assert!(tenant_domains(&fleet).await.contains(&"a.example".to_string()), "the planned tenant was created");
    // Applied, the plan no longer matches the fleet: it cannot be carried out twice.
    let (ok, _, err) = run(&fleet, &["apply", &file_arg, "--plan", &plan_arg]);
    assert!(!ok && err.contains("changed since it was made"), "{err}");

    // A file edited after its plan was made is refused too.
    let (ok, _, err) = run(&fleet, &["plan", &file_arg, "--out", &plan_arg]);
    assert!(ok, "{err}");
    std::fs::write(&file, "[tenants.\"a.example\"]\nadmin_email = \"ops@a.example\"\n\n[tenants.\"c.example\"]\nadmin_email = \"ops@c.example\"\n")
        .expect("write");
    let (ok, _, err) = run(&fleet, &["apply", &file_arg, "--plan", &plan_arg]);
    assert!(!ok && err.contains("the fleet file changed since it was made"), "{err}");
    assert!(!tenant_domains(&fleet).await.contains(&"c.example".to_string()), "nothing applied");
    std::fs::write(&plan, "{ not a plan").expect("write");
    let (ok, _, err) = run(&fleet, &["apply", &file_arg, "--plan", &plan_arg]);
    assert!(!ok && err.contains("is not a plan saved by `drover plan --out`"), "{err}");
}
