//! Provisioning: VMs made on a hypervisor that enroll themselves.
//!
//! A provision is a record keyed by the machine's name. Asking for a name
//! that has a live provision returns it (one VM a name). The driver
//! ([`run`], spawned by the server) carries each provision through its
//! states, one task a provision:
//!
//! - `provisioning`: any VM an earlier attempt left with this provision's
//!   tag is deleted; a fresh one-time token bound to the provision is
//!   stored; the VM is made with a seed holding it; its id is recorded
//!   (`booting`) in the same step that makes it reachable from the record.
//! - `booting`: the VM is started (again, after a restart) and the driver
//!   waits for the enrollment, which moves the record to `enrolled` inside
//!   the enrollment transaction and names the machine after the provision.
//! - `enrolled` → `online` once the agent has connected.
//!
//! Past its deadline a provision fails: the error carries the VM's console
//! tail; the VM is deleted (or, when that fails, the error says the VM was
//! left and how to delete it), the token revoked and the machine, if any,
//! revoked. At start the driver reconciles every provider's VMs that carry
//! this fleet's and that provider's identity with the records, so that
//! there is never such a VM without a live record nor a live record whose
//! VM is gone; a VM without that identity — another tool's, another
//! provider's, another coordinator's — is never touched. Every call on a
//! VM names the provision whose VM it must be; the hypervisor reads the VM
//! back and refuses another (VM ids are reused).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_protocol::seed::{valid_machine_name, CaPin, Seed};
use drover_protocol::v1::{Problem, ProvisionInfo, ProvisionRequest, ProvisionState, VolumeMount};
use drover_protocol::{ErrorCode, WireError};

use crate::config::ProviderConfig;
use crate::hypervisor::{DataDisk, Hypervisor, HypervisorError, VmSpec};
use crate::model::{ProvisionRecord, TokenRecord};
use crate::registry;
use crate::store::Tx;

use super::errors::{conflict, invalid, not_found};
use super::{now_ms, Coordinator};

/// The hypervisor of each configured provider (or why its client could not
/// be made).
pub type Hypervisors = BTreeMap<String, Result<Arc<dyn Hypervisor>, String>>;

fn hypervisor(state: &Coordinator, provider: &str) -> Result<Arc<dyn Hypervisor>, WireError> {
    match state.hypervisors.get(provider) {
        Some(Ok(h)) => Ok(h.clone()),
        Some(Err(e)) => Err(WireError::new(ErrorCode::Unavailable, format!("provider {provider} is not usable: {e}"))),
        None => Err(not_found(format!(
            "no provider {provider:?}; declare it in drover.toml under [[providers]] (known: {})",
            state.hypervisors.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// A data disk's name: `vol-NAME` must fit a virtio serial (20 bytes).
const MAX_DISK_NAME: usize = 16;

fn check_request(state: &Coordinator, r: &ProvisionRequest) -> Result<ProviderConfig, WireError> {
    if !valid_machine_name(&r.name) {
        return Err(invalid(format!("machine name {:?} is invalid: use 1-63 lowercase letters, digits and dashes, starting with a letter", r.name)));
    }
    let provider = state.config.provider(&r.provider).cloned().ok_or_else(|| {
        not_found(format!(
            "no provider {:?}; declare it in drover.toml under [[providers]] (known: {})",
            r.provider,
            state.config.providers.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    registry::check_labels(&r.labels).map_err(invalid)?;
    crate::hypervisor::check_shape(r.cores, r.memory_bytes, r.disk_bytes).map_err(|(key, e)| invalid(format!("--{key} {e}")))?;
    if r.template.as_ref().is_some_and(|t| t.is_empty() || t.len() > 64 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')) {
        return Err(invalid("--template must be the provider's template id (letters, digits, dashes)"));
    }
    let mut seen = HashSet::new();
    for d in &r.disks {
        let name_ok = !d.name.is_empty() && d.name.len() <= MAX_DISK_NAME && d.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(invalid(format!(
                "volume name {:?} must be 1-{MAX_DISK_NAME} lowercase letters, digits or dashes (its disk serial is vol-NAME)",
                d.name
            )));
        }
        if !seen.insert(&d.name) {
            return Err(invalid(format!("volume {} is given twice", d.name)));
        }
        if !(crate::volumes::MIN_VOLUME_BYTES..=crate::volumes::MAX_VOLUME_BYTES).contains(&d.size_bytes) {
            return Err(invalid(format!("volume {}: size must be between 16MiB and 64TiB", d.name)));
        }
        if !d.mount_point.starts_with('/') || d.mount_point == "/" || d.mount_point.contains("..") {
            return Err(invalid(format!("volume {}: mount point {:?} must be an absolute path below /", d.name, d.mount_point)));
        }
    }
    Ok(provider)
}

/// What making these provisions would run into, making nothing: each
/// request's own checks, its provider's readiness, the seed's fit, and
/// `max_vms` with the new ones added to the live ones.
pub fn check(state: &Coordinator, requests: &[ProvisionRequest]) -> Result<Vec<Problem>, WireError> {
    if requests.len() > MAX_CHECKED {
        return Err(invalid(format!("at most {MAX_CHECKED} provisions are checked at once")));
    }
    let live = state.store.provisions()?;
    let mut problems = Vec::new();
    let mut planned: BTreeMap<String, u32> = BTreeMap::new();
    let problem = |subject: &str, message: String| Problem { subject: subject.to_string(), message };
    for r in requests {
        let provider = match check_request(state, r) {
            Ok(p) => p,
            Err(e) => {
                problems.push(problem(&r.name, e.message));
                continue;
            }
        };
        let hv = match hypervisor(state, &r.provider) {
            Ok(hv) => hv,
            Err(e) => {
                problems.push(problem(&r.name, e.message));
                continue;
            }
        };
        let (text, _) = super::machines::new_token(Default::default(), 0, 0, 1, None);
        let spec = VmSpec {
            provision: "p-0000000000".into(),
            name: r.name.clone(),
            template: r.template.clone(),
            cores: r.cores.unwrap_or(provider.shape().cores),
            memory_bytes: r.memory_bytes.unwrap_or(provider.shape().memory_mib << 20),
            disk_bytes: r.disk_bytes.unwrap_or(provider.shape().disk_mib << 20),
            disks: r.disks.iter().map(|d| DataDisk { serial: d.serial(), size_bytes: d.size_bytes }).collect(),
        };
        if let Err(e) = hv.check(&spec, &seed(state, &provider, text, &r.name)) {
            problems.push(problem(&r.name, e.to_string()));
        }
        let already = live.iter().any(|p| p.name == r.name && !matches!(p.state, ProvisionState::Failed | ProvisionState::Destroyed));
        if let (ProviderConfig::Qemu(q), false) = (&provider, already) {
            let count = planned.entry(q.name.clone()).or_insert_with(|| {
                live.iter().filter(|p| p.provider == q.name && !matches!(p.state, ProvisionState::Failed | ProvisionState::Destroyed)).count() as u32
            });
            *count += 1;
            if *count > q.max_vms {
                problems.push(problem(&r.name, format!("provider {} allows {} VMs (max_vms) and would need {count}", q.name, q.max_vms)));
            }
        }
    }
    Ok(problems)
}

/// The most provisions one check takes.
const MAX_CHECKED: usize = 10_000;

/// `drover machines provision`: records the provision (or returns the
/// live one of that name) and wakes the driver.
pub async fn provision(state: &Coordinator, r: ProvisionRequest) -> Result<ProvisionInfo, WireError> {
    let provider = check_request(state, &r)?;
    hypervisor(state, &r.provider)?;
    let shape = provider.shape();
    let now = now_ms();
    let id_bytes: [u8; 5] = rand::random();
    let fresh = ProvisionRecord {
        id: format!("p-{}", hex::encode(id_bytes)),
        name: r.name.clone(),
        provider: r.provider.clone(),
        template: r.template.clone(),
        cores: r.cores.unwrap_or(shape.cores),
        memory_bytes: r.memory_bytes.unwrap_or(shape.memory_mib << 20),
        disk_bytes: r.disk_bytes.unwrap_or(shape.disk_mib << 20),
        labels: r.labels.clone(),
        disks: r.disks.clone(),
        state: ProvisionState::Provisioning,
        vm_id: None,
        token_id: None,
        machine_id: None,
        created_at: now,
        deadline_at: now.saturating_add(shape.boot_timeout.as_millis() as u64),
        error: None,
        vm_gone: false,
        vm_left: None,
    };
    let record = state
        .store
        .commit(|tx| {
            if let Some(existing) = tx.get::<ProvisionRecord>(r.name.as_bytes())? {
                if !matches!(existing.state, ProvisionState::Failed | ProvisionState::Destroyed) {
                    if existing.provider != r.provider {
                        return Err(conflict(format!(
                            "machine {} is already provisioned on {}; destroy it first to make it on {}",
                            r.name, existing.provider, r.provider
                        )));
                    }
                    return Ok(existing);
                }
            }
            tx.put(r.name.as_bytes(), &fresh)?;
            Ok::<_, WireError>(fresh.clone())
        })
        .await?;
    if record.id == fresh.id {
        tracing::info!(provision = %record.id, name = %record.name, provider = %record.provider, "provision recorded");
    }
    state.provision_wake.notify_one();
    Ok(record.to_wire())
}

/// A provision by its name, or the provision of a machine id.
fn find(state: &Coordinator, name: &str) -> Result<ProvisionRecord, WireError> {
    if let Some(p) = state.store.provision(name)? {
        return Ok(p);
    }
    state
        .store
        .provisions()?
        .into_iter()
        .find(|p| p.machine_id.as_deref() == Some(name))
        .ok_or_else(|| not_found(format!("no provision {name:?}; see `drover machines list` (provisioned machines show their provider)")))
}

pub fn show(state: &Coordinator, name: &str) -> Result<ProvisionInfo, WireError> {
    Ok(find(state, name)?.to_wire())
}

pub fn list(state: &Coordinator) -> Result<Vec<ProvisionInfo>, WireError> {
    let mut all = state.store.provisions()?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all.iter().map(ProvisionRecord::to_wire).collect())
}

/// `drover machines destroy`: everything that could refuse is checked
/// first (a provider that cannot keep disks refuses `keep_volumes` before
/// anything changes); then the record is marked destroyed (so the driver
/// stops, and a crash leaves a VM the next start deletes), the machine is
/// revoked, and the provision's own VM stopped and deleted — read back
/// first: a VM id that now holds another VM is left alone. Destroying a
/// provision whose VM is already gone is a no-op.
pub async fn destroy(state: &Coordinator, by: &str, name: &str, keep_volumes: bool) -> Result<ProvisionInfo, WireError> {
    let found = find(state, name)?;
    if found.state == ProvisionState::Destroyed && found.vm_gone {
        tracing::info!(provision = %found.id, name = %found.name, by, "destroy of a provision destroyed before: nothing to do");
        return Ok(found.to_wire());
    }
    let hv = hypervisor(state, &found.provider)?;
    if keep_volumes && !hv.keeps_disks() {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!(
                "provider {} ({}) cannot keep a VM's disks when it deletes the VM; nothing was changed: move the disks to another VM first, or destroy without --keep-volumes",
                found.provider,
                hv.kind()
            ),
        ));
    }
    let record = state
        .store
        .update::<ProvisionRecord, WireError>(found.name.as_bytes(), |p| {
            p.state = ProvisionState::Destroyed;
            Ok(())
        })
        .await?;
    revoke_credentials(state, &record, by).await?;
    let gone = match &record.vm_id {
        None => true,
        Some(vm) => match hv.delete(vm, &record.id, keep_volumes).await {
            Ok(removed) => {
                tracing::info!(provision = %record.id, vm, removed = ?removed, "VM of the destroyed provision deleted");
                true
            }
            Err(HypervisorError::NotOurs { carries, .. }) => {
                tracing::warn!(provision = %record.id, vm, carries = %carries, "VM id now holds another VM; its own is gone; left alone");
                true
            }
            Err(e) => {
                return Err(WireError::new(
                    ErrorCode::Unavailable,
                    format!("machine {} is revoked but its VM {vm} was not deleted: {e}; run destroy again", record.name),
                ))
            }
        },
    };
    let record = state
        .store
        .update::<ProvisionRecord, WireError>(found.name.as_bytes(), |p| {
            if p.id == record.id {
                p.vm_gone = gone;
                p.vm_left = None;
            }
            Ok(())
        })
        .await?;
    tracing::info!(provision = %record.id, name = %record.name, vm = record.vm_id.as_deref().unwrap_or("-"), keep_volumes, by, "provision destroyed");
    Ok(record.to_wire())
}

/// Revokes the provision's token and its machine, if any.
async fn revoke_credentials(state: &Coordinator, p: &ProvisionRecord, by: &str) -> Result<(), WireError> {
    if let Some(token) = &p.token_id {
        super::machines::revoke_token_id(state, token).await?;
    }
    if let Some(machine) = &p.machine_id {
        if state.store.machine(machine)?.is_some_and(|m| m.revoked_at.is_none()) {
            super::machines::revoke(state, by, machine).await?;
        }
    }
    Ok(())
}

/// Inside the enrollment transaction: binds a machine enrolling with a
/// provision's token to the provision. Returns the name it gets, the
/// volumes (its data disks) it holds and the labels.
pub fn bind_enrollment(tx: &Tx, token: &TokenRecord, machine_id: &str) -> Result<Option<(String, Vec<VolumeMount>)>, crate::store::StoreError> {
    let Some(name) = &token.provision else { return Ok(None) };
    let Some(mut p) = tx.get::<ProvisionRecord>(name.as_bytes())? else { return Ok(None) };
    if p.token_id.as_deref() != Some(token.id.as_str()) || p.state != ProvisionState::Booting {
        return Ok(None);
    }
    p.state = ProvisionState::Enrolled;
    p.machine_id = Some(machine_id.to_string());
    tx.put(name.as_bytes(), &p)?;
    let volumes = p
        .disks
        .iter()
        .map(|d| VolumeMount {
            name: d.name.clone(),
            device: format!("/dev/disk/by-id/virtio-{}", d.serial()),
            mount_point: d.mount_point.clone(),
            filesystem: d.filesystem,
            size_bytes: d.size_bytes,
            formatted: false,
            restore_snapshot: None,
            // The provision made the disk with the VM, for this VM alone;
            // the agent still formats it only if it reads as never written.
            fresh: true,
            overwrite: false,
        })
        .collect();
    Ok(Some((p.name.clone(), volumes)))
}

/// The driver: reconciles at start, then keeps one task on each unsettled
/// provision.
pub async fn run(state: Arc<Coordinator>) {
    if state.hypervisors.is_empty() {
        return;
    }
    reconcile(&state).await;
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    // Dropped with this task: the provisions' tasks end with the driver.
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        match state.store.provisions() {
            Ok(all) => {
                for p in all.into_iter().filter(|p| !p.state.settled()) {
                    if running.lock().unwrap_or_else(|e| e.into_inner()).insert(p.name.clone()) {
                        let (state, running) = (state.clone(), running.clone());
                        tasks.spawn(async move {
                            drive(&state, &p.name).await;
                            running.lock().unwrap_or_else(|e| e.into_inner()).remove(&p.name);
                        });
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the provisions"),
        }
        tokio::select! {
            _ = state.provision_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Deletes this fleet's VMs of each provider that no live record holds
/// (only VMs carrying the fleet's and the provider's identity are listed,
/// and each is read back again before it is deleted); fails live records
/// whose VM is gone.
pub async fn reconcile(state: &Coordinator) {
    let records = match state.store.provisions() {
        Ok(r) => r,
        Err(e) => return tracing::warn!(error = %e, "cannot read the provisions to reconcile"),
    };
    for (provider, hv) in &state.hypervisors {
        let Ok(hv) = hv else { continue };
        let vms = match hv.list().await {
            Ok(vms) => vms,
            Err(e) => {
                tracing::warn!(provider = %provider, error = %e, "cannot list the provider's VMs; reconciling later");
                continue;
            }
        };
        for vm in &vms {
            let owner = records.iter().find(|p| p.id == vm.provision && p.provider == *provider);
            let keep = owner.is_some_and(|p| match p.state {
                // A create under way, or cut short: its driver deletes
                // what it left before making the VM again.
                ProvisionState::Provisioning => true,
                ProvisionState::Failed | ProvisionState::Destroyed => false,
                _ => p.vm_id.as_deref() == Some(vm.vm_id.as_str()),
            });
            if !keep {
                tracing::info!(provider = %provider, vm = %vm.vm_id, provision = %vm.provision, "deleting this fleet's VM that no live provision holds");
                match hv.delete(&vm.vm_id, &vm.provision, false).await {
                    Ok(_) => {
                        if let Some(p) = owner.filter(|p| !p.vm_gone) {
                            let (name, id) = (p.name.clone(), p.id.clone());
                            let _ = state
                                .store
                                .update::<ProvisionRecord, WireError>(name.as_bytes(), |r| {
                                    if r.id == id {
                                        r.vm_gone = true;
                                        r.vm_left = None;
                                    }
                                    Ok(())
                                })
                                .await;
                        }
                    }
                    Err(e) => tracing::warn!(provider = %provider, vm = %vm.vm_id, error = %e, "cannot delete an orphan VM"),
                }
            }
        }
        for p in records
            .iter()
            .filter(|p| p.provider == *provider && !matches!(p.state, ProvisionState::Provisioning | ProvisionState::Failed | ProvisionState::Destroyed))
        {
            if vms.iter().any(|vm| Some(&vm.vm_id) == p.vm_id.as_ref() && vm.provision == p.id) {
                continue;
            }
            // A VM made before identities keeps its provision.
            if let Some(vm) = &p.vm_id {
                match hv.migrate(vm, &p.id).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(provider = %provider, vm, error = %e, "cannot read the provision's VM; reconciling later");
                        continue;
                    }
                }
            }
            fail(state, &p.name, format!("its VM {} is gone from provider {provider}", p.vm_id.as_deref().unwrap_or("-")), None).await;
        }
    }
}

/// Carries one provision until it settles.
async fn drive(state: &Coordinator, name: &str) {
    loop {
        let p = match state.store.provision(name) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(provision = name, error = %e, "cannot read the provision");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if p.state.settled() {
            return;
        }
        let hv = match hypervisor(state, &p.provider) {
            Ok(hv) => hv,
            Err(e) => return fail(state, name, e.message, None).await,
        };
        if now_ms() >= p.deadline_at {
            let what = match p.state {
                ProvisionState::Provisioning => "its VM was not made",
                ProvisionState::Booting => "its agent did not enroll",
                _ => "its agent did not connect",
            };
            let secs = p.deadline_at.saturating_sub(p.created_at) / 1000;
            return fail(state, name, format!("{what} within {secs}s"), Some(hv)).await;
        }
        let step = match p.state {
            ProvisionState::Provisioning => create(state, &p, hv.as_ref()).await,
            ProvisionState::Booting => boot(state, &p, hv.as_ref()).await,
            ProvisionState::Enrolled => connected(state, &p).await,
            _ => return,
        };
        if let Err(e) = step {
            return fail(state, name, e, Some(hv)).await;
        }
    }
}

/// Makes the VM with a fresh token, and records it as booting.
async fn create(state: &Coordinator, p: &ProvisionRecord, hv: &dyn Hypervisor) -> Result<(), String> {
    // What an attempt cut short left behind (found by its identity, even
    // a clone whose coordinator died mid-way) goes first: one VM a
    // provision, never two.
    for vm in hv.list().await.map_err(|e| e.to_string())?.into_iter().filter(|vm| vm.provision == p.id) {
        tracing::info!(provision = %p.id, vm = %vm.vm_id, "deleting the VM of an interrupted attempt");
        hv.delete(&vm.vm_id, &p.id, false).await.map_err(|e| e.to_string())?;
    }
    if let Some(old) = &p.token_id {
        super::machines::revoke_token_id(state, old).await.map_err(|e| e.message)?;
    }
    let provider = state.config.provider(&p.provider).ok_or("its provider is no longer configured")?;
    let (text, token) = super::machines::new_token(p.labels.clone(), now_ms(), p.deadline_at, 1, Some(p.name.clone()));
    let seed = seed(state, provider, text, &p.name);
    let spec = spec_of(p);
    // What would make the provider refuse, before any token is stored.
    hv.check(&spec, &seed).map_err(|e| e.to_string())?;
    let stored = state
        .store
        .commit(|tx| {
            let mut current: ProvisionRecord = tx.require(p.name.as_bytes())?;
            if current.id != p.id || current.state != ProvisionState::Provisioning {
                return Ok::<_, WireError>(false);
            }
            current.token_id = Some(token.id.clone());
            tx.put(token.hash.as_bytes(), &token)?;
            tx.put(p.name.as_bytes(), &current)?;
            Ok(true)
        })
        .await
        .map_err(|e| e.message)?;
    if !stored {
        return Ok(());
    }
    let vm_id = hv.create(&spec, &seed).await.map_err(|e| format!("the VM could not be made: {e}"))?;
    let recorded = state
        .store
        .commit(|tx| {
            let mut current: ProvisionRecord = tx.require(p.name.as_bytes())?;
            if current.id != p.id || current.state != ProvisionState::Provisioning {
                return Ok::<_, WireError>(false);
            }
            current.vm_id = Some(vm_id.clone());
            current.state = ProvisionState::Booting;
            tx.put(p.name.as_bytes(), &current)?;
            Ok(true)
        })
        .await
        .map_err(|e| e.message)?;
    if !recorded {
        // Destroyed meanwhile: the VM is nobody's.
        let _ = hv.delete(&vm_id, &p.id, false).await;
        return Ok(());
    }
    tracing::info!(provision = %p.id, name = %p.name, vm = %vm_id, provider = %p.provider, "VM made");
    Ok(())
}

/// The seed a provision's VM is made with: a file seed holds the whole
/// CA; an SMBIOS serial only its digest.
pub fn seed(state: &Coordinator, provider: &ProviderConfig, token: drover_protocol::v1::Secret, name: &str) -> Seed {
    let ca = match provider {
        ProviderConfig::Qemu(_) => CaPin::Certificate(state.ca.cert_der.clone()),
        ProviderConfig::Proxmox(_) => {
            use sha2::{Digest, Sha256};
            CaPin::Sha256(Sha256::digest(&state.ca.cert_der).into())
        }
    };
    Seed {
        coordinator: provider.guest_coordinator(state.config.listen),
        server_name: state.config.server_names.first().cloned().unwrap_or_default(),
        ca,
        token,
        name: name.to_string(),
    }
}

/// What the hypervisor makes for a provision.
fn spec_of(p: &ProvisionRecord) -> VmSpec {
    VmSpec {
        provision: p.id.clone(),
        name: p.name.clone(),
        template: p.template.clone(),
        cores: p.cores,
        memory_bytes: p.memory_bytes,
        disk_bytes: p.disk_bytes,
        disks: p.disks.iter().map(|d| DataDisk { serial: d.serial(), size_bytes: d.size_bytes }).collect(),
    }
}

/// Starts the VM (again, after a restart) and waits for the enrollment.
/// How long a VM's start is tried before its provision fails.
const START_PATIENCE: Duration = Duration::from_secs(30);

async fn boot(state: &Coordinator, p: &ProvisionRecord, hv: &dyn Hypervisor) -> Result<(), String> {
    let vm = p.vm_id.as_deref().ok_or("no VM recorded")?;
    // A start that fails for a while (a provider busy, a relay of the
    // coordinator's previous life not yet let go) is tried again before the
    // provision fails — which deletes its VM; a VM that is gone or not
    // this provision's is not.
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    let mut delay = Duration::from_millis(250);
    loop {
        match hv.start(vm, &p.id).await {
            Ok(()) => break,
            Err(e @ (HypervisorError::NotFound(_) | HypervisorError::NotOurs { .. })) => return Err(format!("VM {vm} did not start: {e}")),
            Err(e) if tokio::time::Instant::now() < deadline && still(state, p, ProvisionState::Booting) => {
                tracing::warn!(provision = %p.id, vm, error = %e, "the VM did not start; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            Err(e) => return Err(format!("VM {vm} did not start: {e}")),
        }
    }
    tracing::info!(provision = %p.id, vm, "VM started; waiting for its agent to enroll");
    wait_until(state, p, |r| r.state != ProvisionState::Booting).await;
    Ok(())
}

/// Waits for the enrolled machine's first connection.
async fn connected(state: &Coordinator, p: &ProvisionRecord) -> Result<(), String> {
    let machine = p.machine_id.clone().ok_or("enrolled without a machine")?;
    loop {
        let seen = state.live.has_unwritten(&machine) || state.store.machine(&machine).map_err(|e| e.to_string())?.is_some_and(|m| m.last_seen.is_some());
        if seen {
            let done = state
                .store
                .update::<ProvisionRecord, WireError>(p.name.as_bytes(), |r| {
                    if r.id == p.id && r.state == ProvisionState::Enrolled {
                        r.state = ProvisionState::Online;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.message)?;
            tracing::info!(provision = %p.id, name = %p.name, machine = %machine, state = done.state.as_str(), "provisioned machine online");
            return Ok(());
        }
        if now_ms() >= p.deadline_at || !still(state, p, ProvisionState::Enrolled) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn still(state: &Coordinator, p: &ProvisionRecord, want: ProvisionState) -> bool {
    matches!(state.store.provision(&p.name), Ok(Some(r)) if r.id == p.id && r.state == want)
}

/// Polls the record until `done` or the deadline.
async fn wait_until(state: &Coordinator, p: &ProvisionRecord, done: impl Fn(&ProvisionRecord) -> bool) {
    while now_ms() < p.deadline_at {
        match state.store.provision(&p.name) {
            Ok(Some(r)) if r.id != p.id || done(&r) => return,
            Ok(None) => return,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fails a provision: deletes its VM (after reading its console's tail),
/// revokes its token and machine, then records why. A crash in between
/// leaves a live record whose VM is gone, which the next start fails too.
async fn fail(state: &Coordinator, name: &str, reason: String, hv: Option<Arc<dyn Hypervisor>>) {
    let Ok(Some(p)) = state.store.provision(name) else { return };
    if p.state.settled() {
        return;
    }
    let mut error = reason;
    let mut left = None;
    if let (Some(hv), Some(vm)) = (&hv, &p.vm_id) {
        let tail = hv.console_tail(vm).await;
        if !tail.is_empty() {
            error = format!("{error}\nthe end of VM {vm}'s console:\n{tail}");
        }
        match hv.delete(vm, &p.id, false).await {
            Ok(_) | Err(HypervisorError::NotOurs { .. }) => {}
            Err(e) => {
                tracing::warn!(provision = %p.id, vm, error = %e, "cannot delete the failed provision's VM");
                left = Some(format!(
                    "its VM {vm} could not be deleted ({e}); `drover machines destroy {name}` deletes it, and the next coordinator start tries again"
                ));
            }
        }
    }
    if let Err(e) = revoke_credentials(state, &p, "provisioning").await {
        tracing::warn!(provision = %p.id, error = %e.message, "cannot revoke the failed provision's credentials");
    }
    let result = state
        .store
        .update::<ProvisionRecord, WireError>(name.as_bytes(), |r| {
            if r.id == p.id && !r.state.settled() {
                r.state = ProvisionState::Failed;
                r.error = Some(error.clone());
                r.vm_gone = left.is_none();
                r.vm_left = left.clone();
            }
            Ok(())
        })
        .await;
    if let Ok(r) = result {
        if r.state == ProvisionState::Failed && r.id == p.id {
            tracing::warn!(provision = %p.id, name, error = %error.lines().next().unwrap_or_default(), "provision failed");
        }
    }
}
