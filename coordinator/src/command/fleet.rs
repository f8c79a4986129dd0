//! `drover plan`, `drover apply`, `drover fleet show|drift`: a fleet file
//! compared with the coordinator's fleet, and carried out in dependency
//! order — tenants, machines (provisioned VMs awaited until online,
//! adopted ones labelled), buckets, volumes, then each service after those
//! it names in `after` are healthy. Every step is idempotent, so an apply
//! cut short (a coordinator killed) is finished by applying again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use drover_protocol::v1::{
    AdminRequest, AdminResponse, BucketRequest, DeploySpec, Labels, ProvisionDisk, ProvisionRequest, RolloutSpec, S3Request, SecretBytes, SecretFile,
    SystemSpec, TenantSpec, VolumeClaim, VolumeRequest,
};

use crate::cli::{AdminArgs, FleetSource};
use crate::client::AdminClient;
use crate::fleet::plan::{self, Action, Change, Kind, Observed, Plan, PLAN_FORMAT, SERVICE_LABEL};
use crate::fleet::{self, FleetFile, Source};
use crate::output::OutputFormat;
use drover_net::client::ClientError;

use super::{connect, print_json, refused};

/// The directory of a flake on this machine (`./examples#droverFleet`,
/// `path:/srv/fleet#x`, `git+file:///srv/fleet?ref=main#x`); `None` for a
/// remote one (`github:…`), whose secret files are named from the current
/// directory.
fn flake_dir(reference: &str) -> Option<PathBuf> {
    let flake = reference.split_once('#').map_or(reference, |(f, _)| f);
    let flake = flake.split_once('?').map_or(flake, |(f, _)| f);
    let path = if let Some(p) = flake.strip_prefix("path:") {
        p
    } else if let Some(p) = flake.strip_prefix("git+file://").or_else(|| flake.strip_prefix("git+file:")) {
        p
    } else if flake.starts_with('/') || flake.starts_with('.') {
        flake
    } else {
        return None;
    };
    Some(PathBuf::from(if path.is_empty() { "." } else { path }))
}

/// Reads the fleet from a file or a flake, and checks it.
pub fn load(source: &FleetSource) -> Result<(FleetFile, Source, PathBuf)> {
    let (source, base) = match (&source.file, &source.flake) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the fleet file {}", path.display()))?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (Source { name: path.display().to_string(), text }, base)
        }
        (None, Some(reference)) => {
            let output = std::process::Command::new("nix")
                .args(["--extra-experimental-features", "nix-command flakes", "--option", "substituters", "", "eval", "--json", reference])
                .output()
                .context("cannot run nix (install Debian's nix-bin)")?;
            if !output.status.success() {
                bail!("nix eval --json {reference} failed:\n{}", String::from_utf8_lossy(&output.stderr).trim());
            }
            // Secret files are named relative to the flake's directory, as
            // a fleet file's are relative to the file's.
            let base = match flake_dir(reference) {
                Some(dir) => dir,
                None => std::env::current_dir()?,
            };
            (Source { name: reference.clone(), text: String::from_utf8_lossy(&output.stdout).to_string() }, base)
        }
        _ => bail!("give a fleet FILE or --flake REF"),
    };
    let file = fleet::parse(&source)?;
    fleet::validate(&file, &source)?;
    Ok((file, source, base))
}

async fn ask(client: &AdminClient, request: AdminRequest, what: &str) -> Result<AdminResponse> {
    client.call(request).await.map_err(|e| refused(e, what))
}

/// Whether an error answer means "not configured" (no `[s3]` or
/// `[linstor]`): then that part of the fleet is empty.
fn unconfigured(e: &ClientError) -> bool {
    e.to_string().contains("not configured") || e.to_string().contains("no [s3]") || e.to_string().contains("[linstor]")
}

/// The fleet as the coordinator knows it now.
pub async fn observe(client: &AdminClient, fleet: &FleetFile) -> Result<Observed> {
    let mut observed = Observed::default();
    let tenants = ask(client, AdminRequest::TenantsList, "listing tenants").await?.tenants()?;
    observed.tenants = tenants.into_iter().map(|t| t.domain).collect();
    let all = ask(client, AdminRequest::Provisions, "listing provisions").await?.provisions()?;
    observed.provisions = plan::live_provisions(all);
    let machines = client.machines(Labels::new()).await.map_err(|e| refused(e, "listing machines"))?;
    observed.machines = machines.into_iter().filter(|m| m.status != drover_protocol::v1::MachineStatus::Revoked).collect();
    let applied = ask(client, AdminRequest::FleetShow, "reading the last applied fleet")
        .await?
        .fleet()?
        .and_then(|a| serde_json::from_str::<Applied>(&a.document).ok())
        .map(|a| a.file);
    let wants_s3 = !fleet.buckets.is_empty() || applied.as_ref().is_some_and(|a| !a.buckets.is_empty());
    if wants_s3 {
        match client.call(AdminRequest::S3(S3Request::BucketsList)).await {
            Ok(answer) => observed.buckets = answer.s3()?.buckets()?.into_iter().flat_map(|b| b.aliases).collect(),
            Err(e) if unconfigured(&e) && fleet.buckets.is_empty() => {}
            Err(e) => return Err(refused(e, "listing buckets (the fleet has buckets: configure [s3])")),
        }
    }
    let wants_volumes = fleet.volumes.iter().any(|(_, v)| fleet.machines.get(&v.machine).is_some_and(|m| m.adopt.is_some()));
    if wants_volumes {
        let v = ask(client, AdminRequest::Volumes(VolumeRequest::List), "listing volumes").await?.volumes()?.volumes()?;
        observed.volumes = v.into_iter().map(|v| v.name).collect();
    }
    observed.applied = applied;
    Ok(observed)
}

/// What `apply` records: the file and what its references resolved to.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Applied {
    pub file: FleetFile,
    /// Fleet machine → machine id.
    pub machines: BTreeMap<String, String>,
    /// Service → resolved facts.
    pub facts: BTreeMap<String, Labels>,
    /// Machine id → the generation the apply left it on.
    pub generations: BTreeMap<String, u64>,
}

fn system_of(s: &fleet::ServiceDecl) -> SystemSpec {
    match (&s.flake, &s.closure) {
        (Some(f), _) => {
            let (uri, attribute) = f.split_once('#').unwrap_or((f, ""));
            SystemSpec::Flake { uri: uri.into(), attribute: attribute.into() }
        }
        (None, closure) => SystemSpec::Closure {
            store_path: closure.clone().unwrap_or_default(),
            substituters: s.substituters.clone(),
            trusted_public_keys: s.trusted_public_keys.clone(),
        },
    }
}

/// A service's deployment, with its facts resolved.
fn service_spec(fleet: &FleetFile, name: &str, facts: Labels, base: &Path) -> Result<DeploySpec> {
    let s = &fleet.services[name];
    let mut secrets = Vec::new();
    for (secret, file) in &s.secrets {
        let path = base.join(file);
        let value = std::fs::read(&path).with_context(|| format!("services.{name}.secrets.{secret}: cannot read {}", path.display()))?;
        secrets.push(SecretFile { name: secret.clone(), value: SecretBytes::new(value), owner: None, group: None, mode: 0o400 });
    }
    let checks = s.checks.iter().map(|c| crate::deploy::parse_check(c).map_err(anyhow::Error::msg)).collect::<Result<Vec<_>>>()?;
    let buckets = fleet
        .buckets
        .iter()
        .filter(|(_, b)| b.machines.iter().any(|m| s.machines.contains(m)))
        .map(|(n, b)| BucketRequest { name: n.clone(), public: b.public })
        .collect();
    let mut volumes = Vec::new();
    for (v, decl) in fleet.volumes.iter().filter(|(_, v)| s.machines.contains(&v.machine) && fleet.machines[&v.machine].adopt.is_some()) {
        volumes.push(VolumeClaim {
            name: v.clone(),
            mount_point: decl.mount.clone(),
            filesystem: decl.filesystem.parse().map_err(anyhow::Error::msg)?,
            size_bytes: Some(fleet::size_bytes(&decl.size).map_err(anyhow::Error::msg)?),
        });
    }
    Ok(DeploySpec {
        machine: None,
        selector: [(SERVICE_LABEL.to_string(), name.to_string())].into(),
        system: system_of(s),
        secrets,
        facts,
        checks,
        health_deadline_ms: drover_net::clock::parse_duration(&s.health_deadline).map(|d| d.as_millis() as u64).map_err(anyhow::Error::msg)?,
        buckets,
        volumes,
        goal: Default::default(),
        force_switch: false,
        override_rollout: false,
        reboot: false,
    })
}

/// The provisions the apply would make (machines not there yet).
fn provision_requests(fleet: &FleetFile, observed: &Observed) -> Result<Vec<ProvisionRequest>> {
    let mut out = Vec::new();
    for (name, decl) in fleet.machines.iter().filter(|(_, m)| m.provider.is_some()) {
        if observed.machine(fleet, name).is_some() || observed.provisions.contains_key(name) {
            continue;
        }
        let disks = fleet
            .volumes
            .iter()
            .filter(|(_, v)| &v.machine == name)
            .map(|(v, d)| {
                Ok(ProvisionDisk {
                    name: v.clone(),
                    size_bytes: fleet::size_bytes(&d.size).map_err(anyhow::Error::msg)?,
                    mount_point: d.mount.clone(),
                    filesystem: d.filesystem.parse().map_err(anyhow::Error::msg)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(ProvisionRequest {
            name: name.clone(),
            provider: decl.provider.clone().unwrap_or_default(),
            template: decl.template.clone(),
            cores: decl.cores,
            memory_bytes: decl.memory.as_deref().map(fleet::size_bytes).transpose().map_err(anyhow::Error::msg)?,
            disk_bytes: decl.disk.as_deref().map(fleet::size_bytes).transpose().map_err(anyhow::Error::msg)?,
            labels: plan::labels_of(fleet, name),
            disks,
        });
    }
    Ok(out)
}

/// What would make the apply fail, found before anything is made, each
/// with the file and line it is about: secret files that cannot be read,
/// and what the coordinator says of the provisions (providers that do not
/// exist, their limits, sizes, seeds that do not fit).
async fn problems(client: &AdminClient, fleet: &FleetFile, source: &Source, base: &Path, observed: &Observed) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (name, s) in &fleet.services {
        for (secret, file) in &s.secrets {
            let path = base.join(file);
            let readable = std::fs::File::open(&path).and_then(|f| f.metadata()).map(|m| m.is_file());
            match readable {
                Ok(true) => {}
                Ok(false) => out.push(source.error(&["services", name, "secrets", secret], format!("{} is not a file", path.display())).to_string()),
                Err(e) => out.push(source.error(&["services", name, "secrets", secret], format!("cannot read {}: {e}", path.display())).to_string()),
            }
        }
    }
    let requests = provision_requests(fleet, observed)?;
    if !requests.is_empty() {
        let found = ask(client, AdminRequest::ProvisionsCheck { requests }, "checking the provisions").await?.problems()?;
        for p in found {
            // The key the problem is about, for its line.
            let key = ["cores", "memory", "disk", "template"].into_iter().find(|k| p.message.contains(&format!("--{k}"))).unwrap_or("provider");
            out.push(source.error(&["machines", &p.subject, key], p.message).to_string());
        }
    }
    Ok(out)
}

/// Refuses a plan with problems, listing each.
fn refuse(problems: &[String], doing: &str) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    for p in problems {
        eprintln!("{p}");
    }
    bail!("{} problem(s) in the fleet: {doing} nothing; fix them and plan again", problems.len())
}

/// Each target's hostname, newest generation and the generation it runs.
async fn progress_of(client: &AdminClient, targets: &[drover_protocol::v1::PlannedTarget]) -> Result<Vec<(String, u64, Option<u64>)>> {
    let mut out = Vec::new();
    for t in targets {
        let d = ask(client, AdminRequest::MachinesDetail { id: t.machine_id.clone() }, "reading a machine").await?.machine_detail()?;
        out.push((t.hostname.clone(), d.desired_generation, d.current_generation));
    }
    Ok(out)
}

/// The whole plan: infrastructure first, then services in `after` order.
async fn make_plan(client: &AdminClient, fleet: &FleetFile, observed: &Observed, base: &Path, prune: bool) -> Result<Vec<Change>> {
    let mut changes = plan::infrastructure(fleet, observed, prune);
    for name in fleet::service_order(fleet).map_err(|c| anyhow::anyhow!("a cycle in after: {}", c.join(" -> ")))? {
        let machines = fleet.services[&name].machines.len();
        let facts = plan::facts_of(fleet, observed, &name);
        let ready = plan::service_ready(fleet, observed, &name);
        let change = match (facts, ready) {
            (Ok(facts), true) => {
                let spec = service_spec(fleet, &name, facts, base)?;
                let targets = ask(client, AdminRequest::DeployDryRun(spec), &format!("planning service {name}")).await?.deploy_plan()?;
                match plan::service(&name, machines, Some(&targets), &[]) {
                    Some(change) => Some(change),
                    None => plan::unfinished(&name, &progress_of(client, &targets).await?),
                }
            }
            (Err(open), true) => {
                // The generation each machine would get, with the facts
                // still open left as written.
                let raw = fleet.services[&name].facts.clone();
                let spec = service_spec(fleet, &name, raw, base)?;
                let targets = ask(client, AdminRequest::DeployDryRun(spec), &format!("planning service {name}")).await?.deploy_plan()?;
                plan::service(&name, machines, Some(&targets), &open)
            }
            (Ok(_), false) => plan::service(&name, machines, None, &[]),
            (Err(open), false) => plan::service(&name, machines, None, &open),
        };
        changes.extend(change);
    }
    Ok(changes)
}

fn print_plan(changes: &[Change]) {
    if changes.is_empty() {
        crate::out!("no changes: the fleet is as the file says");
        return;
    }
    for c in changes {
        let sign = match c.action {
            Action::Create => "+",
            Action::Update => "~",
            Action::Delete => "-",
        };
        crate::out!("{sign} {} {}", c.kind.as_str(), c.name);
        for d in &c.details {
            crate::out!("    {d}");
        }
    }
    let count = |a| changes.iter().filter(|c| c.action == a).count();
    crate::out!("{} to create, {} to update, {} to delete", count(Action::Create), count(Action::Update), count(Action::Delete));
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn plan_command(source: FleetSource, prune: bool, out: Option<PathBuf>, admin: AdminArgs) -> Result<()> {
    let (fleet, source, base) = load(&source)?;
    let client = connect(&admin).await?;
    let observed = observe(&client, &fleet).await?;
    refuse(&problems(&client, &fleet, &source, &base, &observed).await?, "an apply would change")?;
    let changes = make_plan(&client, &fleet, &observed, &base, prune).await?;
    client.close().await;
    if let Some(path) = &out {
        let saved =
            Plan { format: PLAN_FORMAT, file_sha256: sha256_hex(&source.text), fleet_state: plan::fleet_state(&observed), prune, changes: changes.clone() };
        let text = serde_json::to_string_pretty(&saved)? + "\n";
        drover_net::fsutil::write_atomic(path, text.as_bytes(), 0o644).with_context(|| format!("cannot write the plan to {}", path.display()))?;
    }
    match admin.output {
        OutputFormat::Json => print_json(&changes)?,
        OutputFormat::Table => {
            print_plan(&changes);
            if let Some(path) = &out {
                crate::out!("plan saved to {}: `drover apply FILE --plan {}` carries out exactly this", path.display(), path.display());
            }
        }
    }
    Ok(())
}

/// Reads a plan `drover plan --out` saved.
fn read_plan(path: &Path) -> Result<Plan> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the plan {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a plan saved by `drover plan --out` (or it was damaged); make it again", path.display()))
}

fn progress(show: bool, line: String) {
    if show {
        eprintln!("==> {line}");
    }
}

pub async fn apply_command(source: FleetSource, prune: bool, yes: bool, plan_file: Option<PathBuf>, timeout: Duration, admin: AdminArgs) -> Result<()> {
    let (fleet, source, base) = load(&source)?;
    let show = admin.output == OutputFormat::Table;
    let client = connect(&admin).await?;
    let observed = observe(&client, &fleet).await?;
    refuse(&problems(&client, &fleet, &source, &base, &observed).await?, "applied")?;
    let changes = make_plan(&client, &fleet, &observed, &base, prune).await?;
    let state = plan::fleet_state(&observed);
    if let Some(path) = &plan_file {
        let saved = read_plan(path)?;
        if let Some(why) = plan::stale(&saved, &sha256_hex(&source.text), prune, &state, &changes) {
            bail!(
                "the plan {} cannot be applied: {why}; nothing was changed. Make it again and check it: drover plan {} --out {}",
                path.display(),
                source.name,
                path.display()
            );
        }
    }
    if show {
        print_plan(&changes);
    }
    if changes.is_empty() {
        return save(&client, &fleet, &observed).await;
    }
    if plan_file.is_none() && !yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            bail!("apply changes the fleet: confirm with --yes (standard input is not a terminal to ask)");
        }
        eprint!("apply these changes? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "yes") {
            bail!("nothing applied");
        }
        // What was shown is what is carried out: not a fleet changed while
        // the question waited.
        let now = observe(&client, &fleet).await?;
        if plan::fleet_state(&now) != state || make_plan(&client, &fleet, &now, &base, prune).await? != changes {
            bail!("the fleet changed while the plan waited for an answer; nothing was changed: run drover apply again to see the new plan");
        }
    }
    execute(&client, &admin, &fleet, &base, &observed, &changes, timeout, show).await?;
    let observed = observe(&client, &fleet).await?;
    save(&client, &fleet, &observed).await?;
    if show {
        crate::out!("applied: the fleet is as the file says");
    }
    Ok(())
}

/// Carries out exactly `changes` (a plan made against `observed`), in
/// dependency order: tenants, provisions (then every machine online),
/// labels, buckets, volumes, services in `after` order, and deletions.
#[allow(clippy::too_many_arguments)]
async fn execute(
    client: &AdminClient,
    admin: &AdminArgs,
    fleet: &FleetFile,
    base: &Path,
    observed: &Observed,
    changes: &[Change],
    timeout: Duration,
    show: bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let named =
        |kind: Kind, action: Action| -> BTreeSet<String> { changes.iter().filter(|c| c.kind == kind && c.action == action).map(|c| c.name.clone()).collect() };
    // Tenants.
    for domain in named(Kind::Tenant, Action::Create) {
        let t = fleet.tenants.get(&domain).with_context(|| format!("the plan creates tenant {domain}, which the file does not declare"))?;
        progress(show, format!("tenant {domain}"));
        let spec = TenantSpec { domain: domain.clone(), admin_email: t.admin_email.clone(), admin_user: t.admin_user.clone(), managers: vec![] };
        ask(client, AdminRequest::TenantsCreate(spec), &format!("creating tenant {domain}")).await?;
    }
    // Machines: provision those the plan creates (all at once), then wait.
    let provisions = named(Kind::Machine, Action::Create);
    for request in provision_requests(fleet, observed)?.into_iter().filter(|r| provisions.contains(&r.name)) {
        progress(show, format!("machine {}: provisioning on {}", request.name, request.provider));
        let name = request.name.clone();
        ask(client, AdminRequest::MachinesProvision(request), &format!("provisioning {name}")).await?;
    }
    let observed = wait_machines(client, fleet, deadline, show).await?;
    // Labels of the machines the plan updates.
    for name in named(Kind::Machine, Action::Update) {
        let Some(m) = observed.machine(fleet, &name) else { continue };
        let want = plan::labels_of(fleet, &name);
        if want.iter().any(|(k, v)| m.labels.get(k) != Some(v)) {
            progress(show, format!("machine {name}: labels"));
            let request = AdminRequest::MachinesLabel { id: m.id.clone(), set: want, remove: vec![] };
            ask(client, request, &format!("labelling {name}")).await?;
        }
    }
    // Buckets (quota and access), volumes.
    for name in named(Kind::Bucket, Action::Create) {
        let b = fleet.buckets.get(&name).with_context(|| format!("the plan creates bucket {name}, which the file does not declare"))?;
        progress(show, format!("bucket {name}"));
        let max_size = b.quota.as_deref().map(fleet::size_bytes).transpose().map_err(anyhow::Error::msg)?;
        let request = AdminRequest::S3(S3Request::BucketCreate { name: name.clone(), public: b.public, max_size, max_objects: None });
        ask(client, request, &format!("creating bucket {name}")).await?;
    }
    for name in named(Kind::Volume, Action::Create) {
        let v = fleet.volumes.get(&name).with_context(|| format!("the plan creates volume {name}, which the file does not declare"))?;
        progress(show, format!("volume {name}"));
        let request = AdminRequest::Volumes(VolumeRequest::Create {
            name: name.clone(),
            size_bytes: fleet::size_bytes(&v.size).map_err(anyhow::Error::msg)?,
            replicas: v.replicas,
            resource_group: None,
        });
        ask(client, request, &format!("creating volume {name}")).await?;
    }
    let observed = observe(client, fleet).await?;
    let services: BTreeSet<String> = changes.iter().filter(|c| c.kind == Kind::Service).map(|c| c.name.clone()).collect();
    // Services, each after those it names are healthy.
    for name in fleet::service_order(fleet).map_err(|c| anyhow::anyhow!("a cycle: {}", c.join(" -> ")))?.into_iter().filter(|n| services.contains(n)) {
        let facts = plan::facts_of(fleet, &observed, &name).map_err(|open| anyhow::anyhow!("service {name}: facts cannot be resolved: {}", open.join(", ")))?;
        let spec = service_spec(fleet, &name, facts, base)?;
        let targets = ask(client, AdminRequest::DeployDryRun(spec.clone()), &format!("planning service {name}")).await?.deploy_plan()?;
        progress(show, format!("service {name}: deploying to {} machine(s)", targets.len()));
        match &fleet.services[&name].strategy {
            None => {
                let deployed = ask(client, AdminRequest::Deploy(spec), &format!("deploying service {name}")).await?.deployed()?;
                let wait_client = connect(admin).await?;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                super::deploy::follow(wait_client, deployed, Some(left), if show { OutputFormat::Table } else { OutputFormat::Json })
                    .await
                    .with_context(|| format!("service {name} did not become healthy; nothing after it was deployed"))?;
            }
            Some(strategy) => {
                let rollout = RolloutSpec {
                    deploy: spec,
                    strategy: super::rollout::declared_strategy(strategy.canary, &strategy.max_parallel, strategy.auto_revert)?,
                    snapshot_volumes: false,
                };
                let r = ask(client, AdminRequest::RolloutStart(rollout), &format!("rolling out service {name}")).await?.rollout()?;
                super::rollout::until_succeeded(client, &r.id, deadline, &format!("service {name}"))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}; nothing after it was deployed"))?;
            }
        }
    }
    // Deletions (a plan has them only with --prune): a volume the file no
    // longer names is detached, never deleted.
    for c in changes {
        let (request, detach) = match (c.kind, c.action) {
            (Kind::Bucket, Action::Delete) => (AdminRequest::S3(S3Request::BucketDelete { name: c.name.clone() }), false),
            (Kind::Machine, Action::Delete) => (AdminRequest::MachinesDestroy { name: c.name.clone(), keep_volumes: false }, false),
            (Kind::Volume, Action::Update) => (AdminRequest::Volumes(VolumeRequest::Detach { name: c.name.clone() }), true),
            _ => continue,
        };
        progress(show, format!("{} {}: {}", c.kind.as_str(), c.name, if detach { "detach" } else { "delete" }));
        let answer = ask(client, request, &format!("pruning {} {}", c.kind.as_str(), c.name)).await?;
        if detach {
            // A detach returns once started; the volume leaves its
            // machine when the machine has unmounted it.
            let v = answer.volumes()?.volume()?;
            super::volumes::wait_detached(client, v, deadline.saturating_duration_since(tokio::time::Instant::now()), show).await?;
        }
    }
    Ok(())
}

/// Waits until every machine of the file is there and online.
async fn wait_machines(client: &AdminClient, fleet: &FleetFile, deadline: tokio::time::Instant, show: bool) -> Result<Observed> {
    let mut said = BTreeSet::new();
    loop {
        let observed = observe(client, fleet).await?;
        let mut waiting = Vec::new();
        for (name, decl) in &fleet.machines {
            match observed.machine(fleet, name) {
                Some(m) if m.status == drover_protocol::v1::MachineStatus::Online => {
                    if said.insert(name.clone()) {
                        progress(show, format!("machine {name}: online as {}", m.id));
                    }
                }
                _ => {
                    if decl.provider.is_some() {
                        let shown = client.call(AdminRequest::ProvisionShow { name: name.clone() }).await.ok().and_then(|a| a.provision().ok());
                        let failed = shown.filter(|p| p.state == drover_protocol::v1::ProvisionState::Failed).and_then(|p| p.error);
                        if let Some(e) = failed {
                            bail!("machine {name}: its provision failed: {e}");
                        }
                    }
                    waiting.push(name.clone());
                }
            }
        }
        if waiting.is_empty() {
            return Ok(observed);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("machines not online before the deadline: {}", waiting.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn save(client: &AdminClient, fleet: &FleetFile, observed: &Observed) -> Result<()> {
    let mut applied = Applied { file: fleet.clone(), machines: BTreeMap::new(), facts: BTreeMap::new(), generations: BTreeMap::new() };
    for name in fleet.machines.keys() {
        if let Some(m) = observed.machine(fleet, name) {
            applied.machines.insert(name.clone(), m.id.clone());
            let d = ask(client, AdminRequest::MachinesDetail { id: m.id.clone() }, "reading a machine").await?.machine_detail()?;
            applied.generations.insert(m.id.clone(), d.desired_generation);
        }
    }
    for name in fleet.services.keys() {
        if let Ok(facts) = plan::facts_of(fleet, observed, name) {
            applied.facts.insert(name.clone(), facts);
        }
    }
    let document = serde_json::to_string(&applied)?;
    ask(client, AdminRequest::FleetSave { document }, "recording the applied fleet").await?;
    Ok(())
}

/// `drover fleet show`.
pub async fn show(admin: AdminArgs) -> Result<()> {
    let client = connect(&admin).await?;
    let fleet = ask(&client, AdminRequest::FleetShow, "reading the last applied fleet").await?.fleet()?;
    client.close().await;
    let Some(fleet) = fleet else {
        bail!("no fleet has been applied yet; see `drover apply --help`");
    };
    let applied: Applied = serde_json::from_str(&fleet.document).context("the recorded fleet is unreadable")?;
    match admin.output {
        OutputFormat::Json => print_json(&applied)?,
        OutputFormat::Table => {
            crate::out!("applied {} by {}", crate::output::timestamp(fleet.applied_at), fleet.by);
            for (name, id) in &applied.machines {
                crate::out!("machine  {name:<20} {id} generation {}", applied.generations.get(id).copied().unwrap_or(0));
            }
            for (name, facts) in &applied.facts {
                crate::out!("service  {name:<20} {}", crate::output::labels(facts));
            }
            for name in applied.file.buckets.keys() {
                crate::out!("bucket   {name}");
            }
            for (name, v) in &applied.file.volumes {
                crate::out!("volume   {name:<20} {} on {} at {}", v.size, v.machine, v.mount);
            }
        }
    }
    Ok(())
}

/// One difference between the applied fleet and the fleet now.
#[derive(Debug, Serialize)]
pub struct Drift {
    pub kind: &'static str,
    pub name: String,
    pub what: String,
}

/// `drover fleet drift`.
pub async fn drift(admin: AdminArgs) -> Result<()> {
    let client = connect(&admin).await?;
    let Some(record) = ask(&client, AdminRequest::FleetShow, "reading the last applied fleet").await?.fleet()? else {
        bail!("no fleet has been applied yet; see `drover apply --help`");
    };
    let applied: Applied = serde_json::from_str(&record.document).context("the recorded fleet is unreadable")?;
    let observed = observe(&client, &applied.file).await?;
    let mut drifts = Vec::new();
    for (name, id) in &applied.machines {
        match observed.machines.iter().find(|m| &m.id == id) {
            None => drifts.push(Drift { kind: "machine", name: name.clone(), what: format!("{id} is gone or revoked") }),
            Some(m) => {
                if m.status != drover_protocol::v1::MachineStatus::Online {
                    drifts.push(Drift { kind: "machine", name: name.clone(), what: format!("{id} is {}", m.status.as_str()) });
                }
                let d = ask(&client, AdminRequest::MachinesDetail { id: id.clone() }, "reading a machine").await?.machine_detail()?;
                let want = applied.generations.get(id).copied().unwrap_or(0);
                if d.desired_generation != want {
                    drifts.push(Drift { kind: "machine", name: name.clone(), what: format!("generation {} (applied: {want})", d.desired_generation) });
                } else if d.current_generation != Some(want) && want > 0 {
                    drifts.push(Drift {
                        kind: "machine",
                        name: name.clone(),
                        what: format!("runs generation {} of {want}", d.current_generation.map(|g| g.to_string()).unwrap_or_else(|| "none".into())),
                    });
                }
            }
        }
    }
    for name in applied.file.buckets.keys().filter(|b| !observed.buckets.contains(*b)) {
        drifts.push(Drift { kind: "bucket", name: name.clone(), what: "deleted".into() });
    }
    for (name, _) in applied.file.volumes.iter().filter(|(n, v)| applied.file.machines[&v.machine].adopt.is_some() && !observed.volumes.contains(*n)) {
        drifts.push(Drift { kind: "volume", name: name.clone(), what: "deleted".into() });
    }
    client.close().await;
    match admin.output {
        OutputFormat::Json => print_json(&drifts)?,
        OutputFormat::Table if drifts.is_empty() => crate::out!("no drift: the fleet is as it was applied"),
        OutputFormat::Table => {
            for d in &drifts {
                crate::out!("{} {}: {}", d.kind, d.name, d.what);
            }
        }
    }
    if !drifts.is_empty() {
        bail!("the fleet drifted from what was applied: {} difference(s); `drover plan` shows what an apply would change", drifts.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::flake_dir;
    use std::path::PathBuf;

    #[test]
    fn secret_files_of_a_local_flake_are_named_from_its_directory() {
        assert_eq!(flake_dir("./examples#droverFleet"), Some(PathBuf::from("./examples")));
        assert_eq!(flake_dir("path:/srv/fleet#x"), Some(PathBuf::from("/srv/fleet")));
        assert_eq!(flake_dir("git+file:///srv/fleet?ref=main#x"), Some(PathBuf::from("/srv/fleet")));
        assert_eq!(flake_dir(".#x"), Some(PathBuf::from(".")));
        assert_eq!(flake_dir("github:acme/fleet#x"), None);
    }
}
