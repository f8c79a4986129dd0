//! The resource types the provider offers, each with create, read, update
//! and destroy, on the coordinator's admin calls. A create finds what an
//! earlier create of the same name made (a provider killed mid-create and
//! started again converges) instead of making a second.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use drover_net::client::ClientError;
use drover_protocol::v1::{
    AdminRequest, AdminResponse, BucketRequest, DeploySpec, DeploymentInfo, DeploymentState, Labels, MachineInfo, MachineStatus, ProvisionInfo,
    ProvisionRequest, ProvisionState, RolloutSpec, S3Request, SecretBytes, SecretFile, StateRequest, SwitchGoal, SystemSpec, TenantSpec, VolumeClaim,
    VolumeRequest, MAX_DEPLOYMENTS_PER_REQUEST,
};
use drover_protocol::ErrorCode;

use crate::client::AdminClient;
use crate::tenancy::TENANT_LABEL;

use super::schema::Properties;

/// The resource types, as NixOps4 names them.
pub const TYPES: [&str; 7] = ["tenant", "machine", "bucket", "s3_key", "volume", "deployment", "state"];

/// How long a volume's machine may take to unmount it before a delete.
const DETACH_TIMEOUT: Duration = Duration::from_secs(600);

/// The pause between two looks at something being waited for.
const POLL: Duration = Duration::from_millis(500);

/// One admin call; a refusal says what was being done.
pub async fn ask(client: &AdminClient, request: AdminRequest, what: &str) -> Result<AdminResponse> {
    client.call(request).await.map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// Whether an admin call was refused as "not found".
fn missing(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::NotFound)
}

/// Typed inputs of a resource type, unknown and missing ones refused with
/// their names.
pub fn inputs<T: DeserializeOwned>(type_: &str, properties: &Properties) -> Result<T> {
    serde_path_to_error::deserialize(Value::Object(properties.clone())).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            anyhow::anyhow!("{type_}: input properties: {inner}")
        } else {
            anyhow::anyhow!("{type_}: input property {path}: {inner}")
        }
    })
}

fn duration(what: &str, text: &str) -> Result<Duration> {
    drover_net::clock::parse_duration(text).map_err(|e| anyhow::anyhow!("{what} {text:?}: {e}"))
}

fn size(what: &str, text: &str) -> Result<u64> {
    crate::fleet::size_bytes(text).map_err(|e| anyhow::anyhow!("{what} {text:?}: {e}"))
}

fn object(value: Value) -> Properties {
    match value {
        Value::Object(map) => map,
        _ => Properties::new(),
    }
}

/// Refuses an update that changes what cannot change in place, naming
/// each such input.
fn fixed(type_: &str, name: &str, before: &Value, after: &Value, keys: &[&str]) -> Result<()> {
    let changed: Vec<&str> = keys.iter().copied().filter(|k| before.get(k) != after.get(k)).collect();
    if changed.is_empty() {
        return Ok(());
    }
    bail!(
        "{type_} {name}: {} cannot change in place; it would need a new {type_}: give the resource a new name (NixOps4 makes the new one), \
         or set the old value back",
        changed.join(", ")
    )
}

/// Refuses to remove something of this name that is not what the resource
/// made: names are reused (another tool, another deployment), so what the
/// resource recorded when it made it (an id, a creation time) must match
/// what the name holds now. Outputs without it (an older record) are taken
/// as they are.
fn ours(type_: &str, name: &str, outputs: &Option<Properties>, key: &str, now: &Value) -> Result<()> {
    match outputs.as_ref().and_then(|o| o.get(key)) {
        Some(recorded) if recorded != now => bail!(
            "{type_} {name}: what has that name now is not what this resource made ({key} {now}, not {recorded}); \
             left alone — remove the resource from NixOps4's state if it is gone"
        ),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------- tenant

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantInputs {
    pub domain: String,
    pub admin_email: String,
    #[serde(default = "default_admin_user")]
    pub admin_user: String,
}

fn default_admin_user() -> String {
    "admin".into()
}

async fn tenant_outputs(client: &AdminClient, domain: &str) -> Result<Properties> {
    let t = ask(client, AdminRequest::TenantsShow { domain: domain.into(), show_password: false }, &format!("tenant {domain}: reading it")).await?.tenant()?;
    Ok(object(json!({ "domain": t.domain, "admin_user": t.admin_user, "machines": t.machines, "created_at": t.created_at })))
}

async fn tenant_create(client: &AdminClient, i: TenantInputs) -> Result<Properties> {
    match client.call(AdminRequest::TenantsShow { domain: i.domain.clone(), show_password: false }).await {
        Ok(_) => tracing::info!(tenant = %i.domain, "the tenant exists; taken as made"),
        Err(e) if missing(&e) => {
            let spec = TenantSpec { domain: i.domain.clone(), admin_email: i.admin_email.clone(), admin_user: i.admin_user.clone(), managers: vec![] };
            ask(client, AdminRequest::TenantsCreate(spec), &format!("tenant {}: creating it", i.domain)).await?;
        }
        Err(e) => bail!("tenant {}: reading it: {e}", i.domain),
    }
    tenant_outputs(client, &i.domain).await
}

// --------------------------------------------------------------- machine

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineInputs {
    /// The provision's name (and the VM's hostname), or this resource's
    /// name for an adopted machine.
    pub name: String,
    /// The hypervisor provider to make the VM on.
    pub provider: Option<String>,
    /// An existing machine to adopt, by hostname.
    pub adopt: Option<String>,
    pub template: Option<String>,
    pub cores: Option<u32>,
    pub memory: Option<String>,
    pub disk: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    pub tenant: Option<String>,
    /// How long a new VM may take to come online.
    #[serde(default = "default_machine_timeout")]
    pub timeout: String,
}

fn default_machine_timeout() -> String {
    "15m".into()
}

impl MachineInputs {
    fn check(&self) -> Result<()> {
        match (&self.provider, &self.adopt) {
            (Some(_), Some(_)) => bail!("machine {}: give provider (to make a VM) or adopt (an existing machine's hostname), not both", self.name),
            (None, None) => bail!("machine {}: give provider (to make a VM) or adopt (an existing machine's hostname)", self.name),
            (None, Some(_)) if self.template.is_some() || self.cores.is_some() || self.memory.is_some() || self.disk.is_some() => {
                bail!("machine {}: template, cores, memory and disk are for a VM Drover makes; an adopted machine keeps its own", self.name)
            }
            _ => Ok(()),
        }
    }

    fn labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        if let Some(t) = &self.tenant {
            labels.insert(TENANT_LABEL.into(), t.clone());
        }
        labels
    }
}

fn machine_outputs(m: &MachineInfo, provisioned: bool) -> Properties {
    let addresses = m.health.as_ref().map(|h| h.addresses.clone()).unwrap_or_default();
    object(json!({
        "id": m.id,
        "hostname": m.hostname,
        "address": addresses.first().cloned().unwrap_or_default(),
        "addresses": addresses,
        "status": m.status.as_str(),
        "labels": m.labels,
        "provisioned": provisioned,
    }))
}

async fn machine_by_hostname(client: &AdminClient, hostname: &str) -> Result<Option<MachineInfo>> {
    let all = client.machines(Labels::new()).await.map_err(|e| anyhow::anyhow!("listing machines: {e}"))?;
    Ok(all.into_iter().filter(|m| m.hostname == hostname && m.status != MachineStatus::Revoked).max_by_key(|m| m.enrolled_at))
}

async fn machine_by_id(client: &AdminClient, id: &str) -> Result<MachineInfo> {
    Ok(ask(client, AdminRequest::MachinesShow { id: id.into() }, &format!("reading machine {id}")).await?.machine()?)
}

async fn provision_of(client: &AdminClient, name: &str) -> Result<Option<ProvisionInfo>> {
    match client.call(AdminRequest::ProvisionShow { name: name.into() }).await {
        Ok(answer) => Ok(Some(answer.provision()?)),
        Err(e) if missing(&e) => Ok(None),
        Err(e) => bail!("machine {name}: reading its provision: {e}"),
    }
}

/// Waits until the provision `name` is online; its machine.
async fn wait_online(client: &AdminClient, name: &str, timeout: Duration) -> Result<MachineInfo> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut said = None;
    loop {
        let p = provision_of(client, name).await?.with_context(|| format!("machine {name}: its provision is gone"))?;
        if said != Some(p.state) {
            tracing::info!(machine = name, state = p.state.as_str(), "provision");
            said = Some(p.state);
        }
        match p.state {
            ProvisionState::Online => {
                let id = p.machine_id.with_context(|| format!("machine {name}: online without a machine id"))?;
                return machine_by_id(client, &id).await;
            }
            ProvisionState::Failed => bail!("machine {name}: its provision failed: {}", p.error.unwrap_or_default()),
            ProvisionState::Destroyed => bail!("machine {name}: its provision was destroyed while it was awaited"),
            _ if tokio::time::Instant::now() >= deadline => bail!("machine {name}: still {} after {}", p.state.as_str(), humantime::format_duration(timeout)),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

async fn machine_create(client: &AdminClient, i: MachineInputs) -> Result<Properties> {
    i.check()?;
    if let Some(hostname) = &i.adopt {
        let m = machine_by_hostname(client, hostname)
            .await?
            .with_context(|| format!("machine {}: no machine with hostname {hostname:?} is enrolled; enroll it first (see `drover machines list`)", i.name))?;
        let m = label(client, &m, i.labels(), &Labels::new()).await?;
        return Ok(machine_outputs(&m, false));
    }
    let provider = i.provider.clone().unwrap_or_default();
    match provision_of(client, &i.name).await? {
        Some(p) if p.state != ProvisionState::Destroyed && p.state != ProvisionState::Failed => {
            tracing::info!(machine = %i.name, state = p.state.as_str(), "the provision exists; taken as made");
            if p.provider != provider {
                bail!("machine {}: a provision of that name exists on provider {:?}, not {provider:?}", i.name, p.provider);
            }
        }
        _ => {
            let request = ProvisionRequest {
                name: i.name.clone(),
                provider,
                template: i.template.clone(),
                cores: i.cores,
                memory_bytes: i.memory.as_deref().map(|m| size("memory", m)).transpose()?,
                disk_bytes: i.disk.as_deref().map(|d| size("disk", d)).transpose()?,
                labels: i.labels(),
                disks: vec![],
            };
            ask(client, AdminRequest::MachinesProvision(request), &format!("machine {}: provisioning", i.name)).await?;
        }
    }
    let m = wait_online(client, &i.name, duration("timeout", &i.timeout)?).await?;
    Ok(machine_outputs(&m, true))
}

/// Sets `set` on the machine and removes `remove`'s keys that `set` does
/// not have.
async fn label(client: &AdminClient, m: &MachineInfo, set: Labels, remove: &Labels) -> Result<MachineInfo> {
    let remove: Vec<String> = remove.keys().filter(|k| !set.contains_key(*k) && m.labels.contains_key(*k)).cloned().collect();
    if set.iter().all(|(k, v)| m.labels.get(k) == Some(v)) && remove.is_empty() {
        return Ok(m.clone());
    }
    let what = format!("machine {}: labelling", m.hostname);
    Ok(ask(client, AdminRequest::MachinesLabel { id: m.id.clone(), set, remove }, &what).await?.machine()?)
}

fn machine_id_of(outputs: &Option<Properties>) -> Option<String> {
    outputs.as_ref()?.get("id")?.as_str().map(str::to_string)
}

// ---------------------------------------------------------------- bucket

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketInputs {
    pub name: String,
    #[serde(default)]
    pub public: bool,
    pub quota: Option<String>,
}

async fn bucket_outputs(client: &AdminClient, name: &str) -> Result<Properties> {
    let b = ask(client, AdminRequest::S3(S3Request::BucketShow { name: name.into() }), &format!("bucket {name}: reading it")).await?.s3()?.bucket()?;
    Ok(object(json!({ "name": name, "id": b.id, "public_url": b.public_url, "objects": b.objects, "bytes": b.bytes })))
}

async fn bucket_create(client: &AdminClient, i: BucketInputs) -> Result<Properties> {
    match client.call(AdminRequest::S3(S3Request::BucketShow { name: i.name.clone() })).await {
        Ok(_) => tracing::info!(bucket = %i.name, "the bucket exists; taken as made"),
        Err(e) if missing(&e) => {
            let max_size = i.quota.as_deref().map(|q| size("quota", q)).transpose()?;
            let request = S3Request::BucketCreate { name: i.name.clone(), public: i.public, max_size, max_objects: None };
            ask(client, AdminRequest::S3(request), &format!("bucket {}: creating it", i.name)).await?;
        }
        Err(e) => bail!("bucket {}: reading it: {e}", i.name),
    }
    bucket_outputs(client, &i.name).await
}

// ---------------------------------------------------------------- s3_key

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInputs {
    pub name: String,
    pub bucket: String,
    #[serde(default = "yes")]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub owner: bool,
}

fn yes() -> bool {
    true
}

async fn key_create(client: &AdminClient, i: &KeyInputs) -> Result<Properties> {
    let shown = client.call(AdminRequest::S3(S3Request::KeyShow { name: i.name.clone(), show_secret: false })).await;
    let key = match shown {
        Ok(answer) => answer.s3()?.key()?,
        Err(e) if missing(&e) => {
            ask(client, AdminRequest::S3(S3Request::KeyCreate { name: i.name.clone() }), &format!("s3_key {}: creating it", i.name)).await?.s3()?.key()?
        }
        Err(e) => bail!("s3_key {}: reading it: {e}", i.name),
    };
    let grant = S3Request::Grant { bucket: i.bucket.clone(), key: i.name.clone(), read: i.read, write: i.write, owner: i.owner };
    ask(client, AdminRequest::S3(grant), &format!("s3_key {}: granting it on bucket {}", i.name, i.bucket)).await?;
    // The key's id only: its secret goes to machines through Drover.
    Ok(object(json!({ "name": i.name, "id": key.id, "bucket": i.bucket })))
}

// ---------------------------------------------------------------- volume

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeInputs {
    pub name: String,
    pub size: String,
    pub replicas: Option<u8>,
    /// Whether destroying the resource deletes the volume and its data.
    #[serde(default)]
    pub delete_data_on_destroy: bool,
}

async fn volume_outputs(client: &AdminClient, name: &str) -> Result<Properties> {
    let v = ask(client, AdminRequest::Volumes(VolumeRequest::Show { name: name.into() }), &format!("volume {name}: reading it")).await?.volumes()?.volume()?;
    Ok(object(json!({
        "name": v.name,
        "size_bytes": v.size_bytes,
        "replicas": v.replicas.len(),
        "machine": v.attached.as_ref().map(|a| a.hostname.clone()),
        "formatted": v.formatted,
        "created_at": v.created_at,
    })))
}

async fn volume_create(client: &AdminClient, i: VolumeInputs) -> Result<Properties> {
    match client.call(AdminRequest::Volumes(VolumeRequest::Show { name: i.name.clone() })).await {
        Ok(_) => tracing::info!(volume = %i.name, "the volume exists; taken as made"),
        Err(e) if missing(&e) => {
            let request = VolumeRequest::Create { name: i.name.clone(), size_bytes: size("size", &i.size)?, replicas: i.replicas, resource_group: None };
            ask(client, AdminRequest::Volumes(request), &format!("volume {}: creating it", i.name)).await?;
        }
        Err(e) => bail!("volume {}: reading it: {e}", i.name),
    }
    volume_outputs(client, &i.name).await
}

// ------------------------------------------------------------ deployment

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyInputs {
    #[serde(default)]
    pub canary: u32,
    #[serde(default = "one")]
    pub max_parallel: String,
    #[serde(default = "yes")]
    pub auto_revert: bool,
}

fn one() -> String {
    "1".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimInputs {
    pub mount: String,
    #[serde(default = "ext4")]
    pub filesystem: String,
}

fn ext4() -> String {
    "ext4".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentInputs {
    /// One machine, by id or hostname.
    pub machine: Option<String>,
    /// Or every machine with these labels.
    #[serde(default)]
    pub selector: Labels,
    /// `URI#ATTRIBUTE`.
    pub flake: Option<String>,
    /// Or a built system's store path, with where to fetch it from.
    pub closure: Option<String>,
    #[serde(default)]
    pub substituters: Vec<String>,
    #[serde(default)]
    pub trusted_public_keys: Vec<String>,
    #[serde(default)]
    pub facts: Labels,
    /// Secret name → a file on the deploying machine, read at apply time;
    /// the value is never an input, so it stays out of NixOps4's state.
    #[serde(default)]
    pub secret_files: BTreeMap<String, String>,
    #[serde(default)]
    pub checks: Vec<String>,
    #[serde(default = "default_health_deadline")]
    pub health_deadline: String,
    pub goal: Option<String>,
    /// Volume name → where and how it is mounted.
    #[serde(default)]
    pub volumes: BTreeMap<String, ClaimInputs>,
    /// Buckets the machines get keys for.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// A rollout with this strategy instead of one deployment.
    pub strategy: Option<StrategyInputs>,
    #[serde(default = "default_deploy_timeout")]
    pub timeout: String,
}

fn default_health_deadline() -> String {
    "60s".into()
}

fn default_deploy_timeout() -> String {
    "30m".into()
}

impl DeploymentInputs {
    fn what(&self) -> String {
        match &self.machine {
            Some(m) => format!("deployment to {m}"),
            None => format!("deployment to {}", self.selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")),
        }
    }

    /// The deployment, with its secret files read now (relative paths from
    /// `base`, the directory NixOps4 runs the provider in).
    fn spec(&self, base: &Path) -> Result<DeploySpec> {
        let what = self.what();
        if self.machine.is_none() == self.selector.is_empty() {
            bail!("{what}: give machine (one machine's id or hostname) or selector (labels), one of them");
        }
        if self.strategy.is_some() && self.machine.is_some() {
            bail!("{what}: a strategy makes a rollout, which targets machines by selector (labels); give selector instead of machine, or no strategy");
        }
        let system = match (&self.flake, &self.closure) {
            (Some(f), None) => {
                let (uri, attribute) = f.split_once('#').with_context(|| format!("{what}: flake {f:?}: expected URI#ATTRIBUTE"))?;
                SystemSpec::Flake { uri: uri.into(), attribute: attribute.into() }
            }
            (None, Some(c)) => {
                SystemSpec::Closure { store_path: c.clone(), substituters: self.substituters.clone(), trusted_public_keys: self.trusted_public_keys.clone() }
            }
            _ => bail!("{what}: give flake (URI#ATTRIBUTE) or closure (a store path), one of them"),
        };
        let mut secrets = Vec::new();
        for (name, file) in &self.secret_files {
            let path = base.join(file);
            let value = std::fs::read(&path).with_context(|| format!("{what}: secret {name}: cannot read {}", path.display()))?;
            secrets.push(SecretFile { name: name.clone(), value: SecretBytes::new(value), owner: None, group: None, mode: 0o400 });
        }
        let checks =
            self.checks.iter().map(|c| crate::deploy::parse_check(c).map_err(|e| anyhow::anyhow!("{what}: check {c:?}: {e}"))).collect::<Result<_>>()?;
        let goal: SwitchGoal = match &self.goal {
            Some(g) => serde_json::from_value(Value::String(g.clone())).map_err(|_| anyhow::anyhow!("{what}: goal {g:?}: use switch, boot or test"))?,
            None => SwitchGoal::default(),
        };
        let volumes = self
            .volumes
            .iter()
            .map(|(name, c)| {
                Ok(VolumeClaim {
                    name: name.clone(),
                    mount_point: c.mount.clone(),
                    filesystem: c.filesystem.parse().map_err(|e| anyhow::anyhow!("{what}: volume {name}: {e}"))?,
                    size_bytes: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DeploySpec {
            machine: self.machine.clone(),
            selector: self.selector.clone(),
            system,
            secrets,
            facts: self.facts.clone(),
            checks,
            health_deadline_ms: duration("health_deadline", &self.health_deadline)?.as_millis() as u64,
            buckets: self.buckets.iter().map(|b| BucketRequest { name: b.clone(), public: false }).collect(),
            volumes,
            goal,
            force_switch: false,
            override_rollout: false,
            reboot: false,
        })
    }
}

/// The newest deployment of each machine, followed until each is
/// finished, with a line on standard error as each finishes.
async fn wait_deployments(client: &AdminClient, ids: Vec<String>, timeout: Duration) -> Result<Vec<DeploymentInfo>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut done: BTreeMap<String, DeploymentInfo> = BTreeMap::new();
    loop {
        let open: Vec<String> = ids.iter().filter(|id| !done.contains_key(*id)).cloned().collect();
        for chunk in open.chunks(MAX_DEPLOYMENTS_PER_REQUEST) {
            let found = ask(client, AdminRequest::DeploymentsShowMany { ids: chunk.to_vec() }, "following the deployment").await?.deployments()?;
            for d in found.into_iter().filter(super::super::deploy::finished) {
                tracing::info!(machine = %d.hostname, generation = d.generation, outcome = super::super::deploy::state_word(&d), "deployment finished");
                done.insert(d.id.clone(), d);
            }
        }
        if done.len() == ids.len() {
            return Ok(ids.iter().filter_map(|id| done.remove(id)).collect());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{} of {} machine(s) had not finished after {}", ids.len() - done.len(), ids.len(), humantime::format_duration(timeout));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn deployment_outputs(finished: &[DeploymentInfo]) -> Properties {
    let machines: serde_json::Map<String, Value> = finished
        .iter()
        .map(|d| {
            (
                d.machine_id.clone(),
                json!({
                    "hostname": d.hostname,
                    "generation": d.generation,
                    "outcome": super::super::deploy::state_word(d),
                    "system": d.system_path,
                }),
            )
        })
        .collect();
    let generation = finished.iter().map(|d| d.generation).max().unwrap_or(0);
    object(json!({ "generation": generation, "machines": machines }))
}

/// Fails with each machine's reason unless every one succeeded.
fn outcome(what: &str, finished: &[DeploymentInfo]) -> Result<()> {
    let failed: Vec<String> = finished
        .iter()
        .filter(|d| d.state != DeploymentState::Succeeded)
        .map(|d| format!("{} ({}): {}{}", d.hostname, d.machine_id, super::super::deploy::state_word(d), super::super::deploy::last_message(d)))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    bail!("{what}: {} of {} machine(s) did not succeed: {}", failed.len(), finished.len(), failed.join("; "))
}

async fn deploy(client: &AdminClient, i: &DeploymentInputs, base: &Path) -> Result<Properties> {
    let what = i.what();
    let spec = i.spec(base)?;
    let timeout = duration("timeout", &i.timeout)?;
    let plan = ask(client, AdminRequest::DeployDryRun(spec.clone()), &format!("{what}: planning")).await?.deploy_plan()?;
    if plan.is_empty() {
        bail!("{what}: no machine matches");
    }
    // Nothing would change: an earlier apply recorded this deployment
    // (a provider stopped after it deployed); follow it instead of
    // deploying it again.
    if plan.iter().all(|t| t.changes.is_empty()) {
        tracing::info!(%what, "already recorded; following it");
        let ids = plan.iter().map(|t| crate::model::deployment_id(&t.machine_id, t.current_generation)).collect();
        let finished = wait_deployments(client, ids, timeout).await?;
        outcome(&what, &finished)?;
        return Ok(deployment_outputs(&finished));
    }
    tracing::info!(%what, machines = plan.len(), "deploying");
    let ids: Vec<String> = match &i.strategy {
        None => ask(client, AdminRequest::Deploy(spec), &format!("{what}: deploying")).await?.deployed()?.into_iter().map(|t| t.deployment_id).collect(),
        Some(s) => {
            let strategy = super::super::rollout::declared_strategy(s.canary, &s.max_parallel, s.auto_revert).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            let rollout = RolloutSpec { deploy: spec, strategy, snapshot_volumes: false };
            let r = ask(client, AdminRequest::RolloutStart(rollout), &format!("{what}: starting the rollout")).await?.rollout()?;
            super::super::rollout::until_succeeded(client, &r.id, tokio::time::Instant::now() + timeout, &what).await?;
            let done =
                ask(client, AdminRequest::DeploymentsOfRollout { id: r.id.clone() }, &format!("{what}: reading rollout {}", r.id)).await?.deployments()?;
            // The newest deployment of each machine.
            let mut newest: BTreeMap<String, DeploymentInfo> = BTreeMap::new();
            for d in done {
                if newest.get(&d.machine_id).is_none_or(|n| n.generation < d.generation) {
                    newest.insert(d.machine_id.clone(), d);
                }
            }
            newest.into_values().map(|d| d.id).collect()
        }
    };
    let finished = wait_deployments(client, ids, timeout).await?;
    outcome(&what, &finished)?;
    Ok(deployment_outputs(&finished))
}

/// What the deployment's machines run now: each one's newest generation.
async fn deployment_read(client: &AdminClient, outputs: &Option<Properties>) -> Result<Properties> {
    let Some(machines) = outputs.as_ref().and_then(|o| o.get("machines")).and_then(Value::as_object) else { return Ok(Properties::new()) };
    let mut finished = Vec::new();
    for id in machines.keys() {
        let d = ask(client, AdminRequest::MachinesDetail { id: id.clone() }, &format!("reading machine {id}")).await?.machine_detail()?;
        let Some(current) = d.current_generation else { continue };
        let shown = ask(client, AdminRequest::DeploymentsShowMany { ids: vec![crate::model::deployment_id(id, current)] }, "reading a deployment")
            .await?
            .deployments()?;
        finished.extend(shown);
    }
    Ok(deployment_outputs(&finished))
}

// ----------------------------------------------------------------- state

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateInputs {
    pub name: String,
}

fn state_outputs(d: &drover_protocol::v1::StateDocument) -> Properties {
    object(json!({ "name": d.name, "events": d.events, "unapplied": d.unapplied }))
}

pub async fn state_read(client: &AdminClient, properties: &Properties) -> Result<Properties> {
    let i: StateInputs = inputs("state", properties)?;
    let d = ask(client, AdminRequest::Nixops4State(StateRequest::Read { name: i.name.clone() }), &format!("state {}: reading it", i.name))
        .await?
        .nixops4_state()?
        .document()?;
    let value: Value = serde_json::from_str(&d.document).with_context(|| format!("state {}: the stored document is not JSON", i.name))?;
    Ok(object(value))
}

pub async fn state_event(client: &AdminClient, properties: &Properties, event: &str, nixops_version: &str, patch: &Value) -> Result<()> {
    let i: StateInputs = inputs("state", properties)?;
    let request = StateRequest::Event { name: i.name.clone(), event: event.into(), nixops_version: nixops_version.into(), patch: patch.to_string() };
    let recorded =
        ask(client, AdminRequest::Nixops4State(request), &format!("state {}: recording a {event} event", i.name)).await?.nixops4_state()?.recorded()?;
    if let Some(e) = recorded.error {
        bail!("state {}: event {} ({event}) is kept, but its patch was not applied: {e}", i.name, recorded.index);
    }
    Ok(())
}

// ------------------------------------------------------------ operations

/// What a request works on: the client and where relative paths start.
pub struct Cx<'a> {
    pub client: &'a AdminClient,
    pub base: &'a Path,
}

fn known(type_: &str) -> Result<()> {
    if TYPES.contains(&type_) {
        return Ok(());
    }
    bail!("the drover provider has no resource type {type_:?}; it has {}", TYPES.join(", "))
}

/// Whether a type keeps NixOps4 state (every type but `state`, which is
/// where that state is kept).
pub fn requires_state(type_: &str) -> bool {
    type_ != "state"
}

pub async fn create(cx: &Cx<'_>, type_: &str, properties: &Properties, is_stateful: bool) -> Result<Properties> {
    known(type_)?;
    if requires_state(type_) && !is_stateful {
        bail!("{type_}: this resource type needs NixOps4 state (to update and destroy what it made); declare a state for the deployment");
    }
    let client = cx.client;
    match type_ {
        "tenant" => tenant_create(client, inputs(type_, properties)?).await,
        "machine" => machine_create(client, inputs(type_, properties)?).await,
        "bucket" => bucket_create(client, inputs(type_, properties)?).await,
        "s3_key" => key_create(client, &inputs(type_, properties)?).await,
        "volume" => volume_create(client, inputs(type_, properties)?).await,
        "deployment" => deploy(client, &inputs(type_, properties)?, cx.base).await,
        _ => {
            let i: StateInputs = inputs(type_, properties)?;
            let d = ask(client, AdminRequest::Nixops4State(StateRequest::Create { name: i.name.clone() }), &format!("state {}: creating it", i.name))
                .await?
                .nixops4_state()?
                .document()?;
            Ok(state_outputs(&d))
        }
    }
}

pub async fn read(cx: &Cx<'_>, type_: &str, properties: &Properties, outputs: &Option<Properties>) -> Result<Properties> {
    known(type_)?;
    let client = cx.client;
    match type_ {
        "tenant" => tenant_outputs(client, &inputs::<TenantInputs>(type_, properties)?.domain).await,
        "machine" => {
            let i: MachineInputs = inputs(type_, properties)?;
            let m = match machine_id_of(outputs) {
                Some(id) => machine_by_id(client, &id).await?,
                None => machine_by_hostname(client, i.adopt.as_deref().unwrap_or(&i.name)).await?.with_context(|| format!("machine {}: not found", i.name))?,
            };
            Ok(machine_outputs(&m, i.provider.is_some()))
        }
        "bucket" => bucket_outputs(client, &inputs::<BucketInputs>(type_, properties)?.name).await,
        "s3_key" => {
            let i: KeyInputs = inputs(type_, properties)?;
            let key = ask(client, AdminRequest::S3(S3Request::KeyShow { name: i.name.clone(), show_secret: false }), &format!("s3_key {}: reading it", i.name))
                .await?
                .s3()?
                .key()?;
            Ok(object(json!({ "name": i.name, "id": key.id, "bucket": i.bucket })))
        }
        "volume" => volume_outputs(client, &inputs::<VolumeInputs>(type_, properties)?.name).await,
        "deployment" => {
            inputs::<DeploymentInputs>(type_, properties)?;
            deployment_read(client, outputs).await
        }
        _ => {
            let i: StateInputs = inputs(type_, properties)?;
            let d = ask(client, AdminRequest::Nixops4State(StateRequest::Read { name: i.name.clone() }), &format!("state {}: reading it", i.name))
                .await?
                .nixops4_state()?
                .document()?;
            Ok(state_outputs(&d))
        }
    }
}

pub async fn update(cx: &Cx<'_>, type_: &str, before: &Properties, outputs: &Option<Properties>, after: &Properties) -> Result<Properties> {
    known(type_)?;
    let client = cx.client;
    let (old, new) = (Value::Object(before.clone()), Value::Object(after.clone()));
    match type_ {
        "tenant" => {
            let i: TenantInputs = inputs(type_, after)?;
            fixed(type_, &i.domain, &old, &new, &["domain", "admin_email", "admin_user"])?;
            tenant_outputs(client, &i.domain).await
        }
        "machine" => {
            let i: MachineInputs = inputs(type_, after)?;
            i.check()?;
            let was: MachineInputs = inputs(type_, before)?;
            fixed(type_, &i.name, &old, &new, &["name", "provider", "adopt", "template", "cores", "memory", "disk"])?;
            let id = match machine_id_of(outputs) {
                Some(id) => id,
                None => machine_by_hostname(client, i.adopt.as_deref().unwrap_or(&i.name)).await?.with_context(|| format!("machine {}: not found", i.name))?.id,
            };
            let m = machine_by_id(client, &id).await?;
            let m = label(client, &m, i.labels(), &was.labels()).await?;
            Ok(machine_outputs(&m, i.provider.is_some()))
        }
        "bucket" => {
            let i: BucketInputs = inputs(type_, after)?;
            fixed(type_, &i.name, &old, &new, &["name", "public", "quota"])?;
            bucket_outputs(client, &i.name).await
        }
        "s3_key" => {
            let i: KeyInputs = inputs(type_, after)?;
            fixed(type_, &i.name, &old, &new, &["name", "bucket"])?;
            key_create(client, &i).await
        }
        "volume" => {
            let i: VolumeInputs = inputs(type_, after)?;
            fixed(type_, &i.name, &old, &new, &["name", "replicas"])?;
            let now = volume_outputs(client, &i.name).await?;
            let want = size("size", &i.size)?;
            let has = now.get("size_bytes").and_then(Value::as_u64).unwrap_or(0);
            if want < has {
                bail!("volume {}: it is {has} bytes; a volume only grows (shrinking would lose data)", i.name);
            }
            if want > has {
                ask(client, AdminRequest::Volumes(VolumeRequest::Resize { name: i.name.clone(), size_bytes: want }), &format!("volume {}: growing it", i.name))
                    .await?;
            }
            volume_outputs(client, &i.name).await
        }
        "deployment" => {
            let new: DeploymentInputs = inputs(type_, after)?;
            // Inputs that make no deployment change nothing.
            new.spec(cx.base)?;
            let failure = match deploy(client, &new, cx.base).await {
                Ok(outputs) => return Ok(outputs),
                Err(e) => e,
            };
            // The machines rolled back to what they ran; their assignment
            // goes back too, so that what the coordinator gives them next
            // (a regeneration, a detach) is the system NixOps4 still
            // records, not the one that failed.
            let old: DeploymentInputs = inputs(type_, before)?;
            tracing::warn!(what = %new.what(), "the update failed; giving the machines the previous inputs' system again");
            match deploy(client, &old, cx.base).await {
                Ok(_) => bail!("{failure:#}; the machines run the previous inputs' system again"),
                Err(again) => bail!("{failure:#}; giving the machines the previous inputs' system again failed too: {again:#}"),
            }
        }
        _ => {
            let i: StateInputs = inputs(type_, after)?;
            fixed(type_, &i.name, &old, &new, &["name"])?;
            read(cx, type_, after, outputs).await
        }
    }
}

pub async fn destroy(cx: &Cx<'_>, type_: &str, properties: &Properties, outputs: &Option<Properties>) -> Result<()> {
    known(type_)?;
    let client = cx.client;
    match type_ {
        "tenant" => {
            let i: TenantInputs = inputs(type_, properties)?;
            match client.call(AdminRequest::TenantsShow { domain: i.domain.clone(), show_password: false }).await {
                Ok(answer) => ours(type_, &i.domain, outputs, "created_at", &json!(answer.tenant()?.created_at))?,
                Err(e) if missing(&e) => return Ok(()),
                Err(e) => bail!("tenant {}: reading it: {e}", i.domain),
            }
            match client.call(AdminRequest::TenantsRemove { domain: i.domain.clone() }).await {
                Ok(_) => Ok(()),
                Err(e) if missing(&e) => Ok(()),
                Err(e) => bail!("tenant {}: removing it: {e}", i.domain),
            }
        }
        "machine" => {
            let i: MachineInputs = inputs(type_, properties)?;
            if i.provider.is_none() {
                // An adopted machine keeps running; it only loses the
                // labels this resource gave it (those still as given).
                let Some(id) = machine_id_of(outputs) else { return Ok(()) };
                let m = match client.call(AdminRequest::MachinesShow { id: id.clone() }).await {
                    Ok(answer) => answer.machine()?,
                    Err(e) if missing(&e) => return Ok(()),
                    Err(e) => bail!("machine {}: reading it: {e}", i.name),
                };
                let ours: Vec<String> = i.labels().into_iter().filter(|(k, v)| m.labels.get(k) == Some(v)).map(|(k, _)| k).collect();
                if !ours.is_empty() {
                    let request = AdminRequest::MachinesLabel { id, set: Labels::new(), remove: ours };
                    ask(client, request, &format!("machine {}: removing the labels it was given", i.name)).await?;
                }
                tracing::info!(machine = %i.name, "an adopted machine is left running");
                return Ok(());
            }
            match provision_of(client, &i.name).await? {
                None => Ok(()),
                Some(p) if p.state == ProvisionState::Destroyed => Ok(()),
                Some(p) => {
                    if let Some(now) = &p.machine_id {
                        ours(type_, &i.name, outputs, "id", &json!(now))?;
                    }
                    let request = AdminRequest::MachinesDestroy { name: i.name.clone(), keep_volumes: false };
                    ask(client, request, &format!("machine {}: destroying its VM", i.name)).await?;
                    Ok(())
                }
            }
        }
        "bucket" => {
            let i: BucketInputs = inputs(type_, properties)?;
            match client.call(AdminRequest::S3(S3Request::BucketShow { name: i.name.clone() })).await {
                Ok(answer) => ours(type_, &i.name, outputs, "id", &json!(answer.s3()?.bucket()?.id))?,
                Err(e) if missing(&e) => return Ok(()),
                Err(e) => bail!("bucket {}: reading it: {e}", i.name),
            }
            match client.call(AdminRequest::S3(S3Request::BucketDelete { name: i.name.clone() })).await {
                Ok(_) => Ok(()),
                Err(e) if missing(&e) => Ok(()),
                Err(e) => bail!("bucket {}: deleting it: {e}", i.name),
            }
        }
        "s3_key" => {
            let i: KeyInputs = inputs(type_, properties)?;
            match client.call(AdminRequest::S3(S3Request::KeyShow { name: i.name.clone(), show_secret: false })).await {
                Ok(answer) => ours(type_, &i.name, outputs, "id", &json!(answer.s3()?.key()?.id))?,
                Err(e) if missing(&e) => return Ok(()),
                Err(e) => bail!("s3_key {}: reading it: {e}", i.name),
            }
            match client.call(AdminRequest::S3(S3Request::KeyDelete { name: i.name.clone() })).await {
                Ok(_) => Ok(()),
                Err(e) if missing(&e) => Ok(()),
                Err(e) => bail!("s3_key {}: deleting it: {e}", i.name),
            }
        }
        "volume" => {
            let i: VolumeInputs = inputs(type_, properties)?;
            if !i.delete_data_on_destroy {
                bail!(
                    "volume {}: not deleted — it may hold data; set delete_data_on_destroy = true on the resource and apply it first if its data may go, \
                     or remove the resource from NixOps4's state to keep the volume",
                    i.name
                );
            }
            let v = match client.call(AdminRequest::Volumes(VolumeRequest::Show { name: i.name.clone() })).await {
                Ok(answer) => answer.volumes()?.volume()?,
                Err(e) if missing(&e) => return Ok(()),
                Err(e) => bail!("volume {}: reading it: {e}", i.name),
            };
            ours(type_, &i.name, outputs, "created_at", &json!(v.created_at))?;
            if let Some(a) = &v.attached {
                // Its machine unmounts it first (a generation without it).
                tracing::info!(volume = %i.name, machine = %a.hostname, "detaching before the delete");
                let what = format!("volume {}: detaching it from {}", i.name, a.hostname);
                let detaching = ask(client, AdminRequest::Volumes(VolumeRequest::Detach { name: i.name.clone() }), &what).await?.volumes()?.volume()?;
                super::super::volumes::wait_detached(client, detaching, DETACH_TIMEOUT, false)
                    .await
                    .map_err(|e| anyhow::anyhow!("volume {}: {e:#}", i.name))?;
            }
            match client.call(AdminRequest::Volumes(VolumeRequest::Delete { name: i.name.clone(), confirm: i.name.clone() })).await {
                Ok(_) => Ok(()),
                Err(e) if missing(&e) => Ok(()),
                Err(e) => bail!("volume {}: deleting it: {e}", i.name),
            }
        }
        "deployment" => {
            let _ = outputs;
            tracing::info!("a deployment's machines keep the system they run; nothing to remove");
            Ok(())
        }
        _ => {
            let i: StateInputs = inputs(type_, properties)?;
            bail!("state {}: NixOps4's state is kept in the coordinator with every event; it is not deleted by a destroy", i.name)
        }
    }
}
