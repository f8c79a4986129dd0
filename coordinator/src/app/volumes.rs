//! Volumes (`drover volumes ...` and `--volume` on deployments), carried
//! out through [`BlockStorage`]. A volume is held by one machine at a time;
//! the machine's record lists the volumes it holds, and every new
//! generation for it mounts them (see `deployments::record_one`), until a
//! detach records a generation without the volume and, once the machine has
//! applied it (the agent unmounted it), takes the volume off its node.

use std::sync::Arc;
use std::time::Duration;

use drover_protocol::v1::{
    AdminResponse, Filesystem, ReplicaInfo, SnapshotInfo, VolumeAttachment, VolumeClaim, VolumeInfo, VolumeMount, VolumeRequest,
    VolumeResponse,
};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{AssignmentRecord, MachineRecord, SnapshotRecord, VolumeAttachmentRecord, VolumeRecord};
use crate::store::deployments::generation_key;
use crate::store::Tx;
use crate::volumes::{self, BlockError, BlockStorage, Volume, VolumeSpec};

use super::deployments::{record_one, Recorded};
use super::errors::{conflict, invalid, not_found, revoked};
use super::{now_ms, Coordinator};

/// The label that names a machine's LINSTOR node (else its hostname).
pub const NODE_LABEL: &str = "linstor.node";
/// At most this many volumes per machine.
pub const MAX_VOLUMES_PER_MACHINE: usize = 16;

/// A block storage failure as a wire error; each kind keeps its own code.
pub fn wire(e: BlockError) -> WireError {
    let code = match &e {
        BlockError::Unreachable { .. } => ErrorCode::Unavailable,
        BlockError::NotFound { .. } => ErrorCode::NotFound,
        BlockError::Conflict(_) | BlockError::Shrink { .. } => ErrorCode::Conflict,
        BlockError::Invalid(_) => ErrorCode::InvalidArgument,
        BlockError::Linstor { status: 404, .. } => ErrorCode::NotFound,
        BlockError::Linstor { .. } | BlockError::Unauthorized(_) | BlockError::Decode(_) | BlockError::Config(_) => ErrorCode::Internal,
    };
    tracing::warn!(error = %e, "block storage call failed");
    WireError::new(code, e.to_string())
}

/// The configured block storage, or a clear refusal.
pub fn block_storage(state: &Coordinator) -> Result<Arc<dyn BlockStorage>, WireError> {
    match &state.block_storage {
        Some(Ok(b)) => Ok(b.clone()),
        Some(Err(e)) => Err(WireError::new(ErrorCode::Internal, format!("block storage is misconfigured: {e}"))),
        None => Err(invalid(
            "volumes are not configured on this coordinator; add a [linstor] section (controller = \"http://HOST:3370\") to drover.toml",
        )),
    }
}

/// The LINSTOR node a machine's volumes are made available on.
pub fn node_of(machine: &MachineRecord) -> String {
    machine.labels.get(NODE_LABEL).cloned().unwrap_or_else(|| machine.hostname.clone())
}

/// Checks a mount point: absolute, normalised, not a system directory.
pub fn check_mount_point(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("mount point {path:?} {why}"));
    if !path.starts_with('/') {
        return bad("must be an absolute path");
    }
    if path.len() > 1024 || path.chars().any(|c| c.is_control()) {
        return bad("is too long or holds control characters");
    }
    if path.split('/').any(|part| part == "." || part == "..") || path.contains("//") || (path.len() > 1 && path.ends_with('/')) {
        return bad("must be normalised (no '.', '..', '//' or trailing '/')");
    }
    const SYSTEM: [&str; 12] = ["/", "/boot", "/dev", "/etc", "/nix", "/nix/store", "/proc", "/run", "/sys", "/usr", "/bin", "/var"];
    if SYSTEM.contains(&path) {
        return bad("is a system directory; mount volumes below it, e.g. /var/lib/NAME");
    }
    Ok(())
}

/// The placeholder a rollout's volume names may hold.
pub const HOSTNAME: &str = "{hostname}";

/// A rollout's claims for one machine: `{hostname}` in a name becomes the
/// machine's host name, its dots as dashes (LINSTOR names have none).
pub fn expand_claims(claims: &[VolumeClaim], hostname: &str) -> Vec<VolumeClaim> {
    let host = hostname.replace('.', "-");
    claims.iter().map(|c| VolumeClaim { name: c.name.replace(HOSTNAME, &host), ..c.clone() }).collect()
}

/// Checks the volume claims of a deployment before anything is made.
pub fn check_claims(claims: &[VolumeClaim]) -> Result<(), String> {
    if claims.len() > MAX_VOLUMES_PER_MACHINE {
        return Err(format!("at most {MAX_VOLUMES_PER_MACHINE} volumes per machine"));
    }
    for (i, c) in claims.iter().enumerate() {
        volumes::check_name(&c.name).map_err(|e| e.to_string())?;
        check_mount_point(&c.mount_point)?;
        if let Some(size) = c.size_bytes {
            volumes::size_kib(size).map_err(|e| e.to_string())?;
        }
        if claims[..i].iter().any(|o| o.name == c.name || o.mount_point == c.mount_point) {
            return Err(format!("volume {:?} or mount point {:?} is given twice", c.name, c.mount_point));
        }
    }
    Ok(())
}

fn holder_name(state: &Coordinator, machine_id: &str) -> String {
    match state.store.machine(machine_id) {
        Ok(Some(m)) => format!("{} ({})", m.id, m.hostname),
        _ => machine_id.to_string(),
    }
}

fn held_elsewhere(state: &Coordinator, name: &str, holder: &str) -> WireError {
    conflict(format!(
        "volume {name:?} is attached to machine {}; a volume is held by one machine at a time: run `drover volumes detach {name}` first",
        holder_name(state, holder)
    ))
}

/// Waits until the volume is usable on `node`.
async fn wait_ready(block: &dyn BlockStorage, name: &str, node: &str, timeout: Duration) -> Result<Volume, WireError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        let volume = block.volume(name).await.map_err(wire)?.ok_or_else(|| not_found(format!("volume {name:?} vanished from LINSTOR")))?;
        match volume.replica(node) {
            Some(r) if r.ready() => return Ok(volume),
            other => {
                if tokio::time::Instant::now() >= deadline {
                    let seen = other.map(|r| r.disk_state.clone()).unwrap_or_else(|| "absent".into());
                    return Err(WireError::new(
                        ErrorCode::Unavailable,
                        format!("volume {name:?} did not become ready on node {node} within {timeout:?} (its state there: {seen})"),
                    ));
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Makes every claimed volume exist and be ready on the machine's node;
/// returns what the machine will mount. Records nothing.
pub async fn prepare(state: &Coordinator, claims: &[VolumeClaim], machine: &MachineRecord) -> Result<Vec<VolumeMount>, WireError> {
    let block = block_storage(state)?;
    let node = node_of(machine);
    let mut mounts = Vec::new();
    for claim in claims {
        let record = state.store.volume(&claim.name)?;
        if let Some(a) = record.as_ref().and_then(|r| r.attached.as_ref()) {
            if a.machine_id != machine.id {
                return Err(held_elsewhere(state, &claim.name, &a.machine_id));
            }
        }
        let mut existing = block.volume(&claim.name).await.map_err(wire)?;
        if let Some(v) = existing.as_ref().filter(|v| v.size_kib > 0 && v.replicas.iter().all(|r| r.diskless)) {
            // A create that failed after the definitions were made (e.g. at
            // placement): finish it.
            let replicas = state.config.linstor.as_ref().map(|l| l.place_count).unwrap_or(1);
            let spec = VolumeSpec { name: claim.name.clone(), size_kib: v.size_kib, replicas, resource_group: None };
            existing = Some(block.create(&spec).await.map_err(wire)?);
        }
        let volume = match existing {
            Some(v) => {
                if let Some(asked) = claim.size_bytes {
                    if asked.div_ceil(1024) > v.size_kib {
                        return Err(conflict(format!(
                            "volume {:?} exists with {}, smaller than the size asked; grow it with `drover volumes resize {} --size SIZE`",
                            claim.name,
                            bytesize::ByteSize::kib(v.size_kib),
                            claim.name
                        )));
                    }
                }
                v
            }
            None => {
                let size = claim.size_bytes.or(record.as_ref().map(|r| r.size_bytes)).ok_or_else(|| {
                    invalid(format!(
                        "volume {:?} does not exist; give its size (`--volume {}:{},size=20GiB`) or create it with `drover volumes create`",
                        claim.name, claim.name, claim.mount_point
                    ))
                })?;
                let replicas = state.config.linstor.as_ref().map(|l| l.place_count).unwrap_or(1);
                let spec = VolumeSpec { name: claim.name.clone(), size_kib: volumes::size_kib(size).map_err(wire)?, replicas, resource_group: None };
                block.create(&spec).await.map_err(wire)?
            }
        };
        block.make_available(&claim.name, &node).await.map_err(wire)?;
        let timeout = state.config.linstor.as_ref().map(|l| l.ready_timeout).unwrap_or(Duration::from_secs(60));
        let volume = wait_ready(block.as_ref(), &claim.name, &node, timeout).await.map(|_| volume)?;
        mounts.push(VolumeMount {
            name: claim.name.clone(),
            device: volumes::device_path(&claim.name),
            mount_point: claim.mount_point.clone(),
            filesystem: claim.filesystem,
            size_bytes: volume.size_kib * 1024,
            formatted: record.as_ref().is_some_and(|r| r.formatted),
            restore_snapshot: None,
        });
    }
    Ok(mounts)
}

/// Inside the deployment's transaction: the volumes become the machine's
/// (checked again, so two deployments cannot both take one volume).
pub fn record_attachments(tx: &Tx, machine_id: &str, node: &str, mounts: &[VolumeMount], now: u64) -> Result<(), WireError> {
    if mounts.is_empty() {
        return Ok(());
    }
    let mut machine: MachineRecord = tx.require(machine_id.as_bytes())?;
    let generation = machine.desired_generation + 1;
    for m in mounts {
        let mut record: VolumeRecord = tx.get(m.name.as_bytes())?.unwrap_or_else(|| VolumeRecord {
            name: m.name.clone(),
            size_bytes: m.size_bytes,
            created_at: now,
            formatted: false,
            attached: None,
            state: None,
            snapshots: Vec::new(),
        });
        if let Some(a) = &record.attached {
            if a.machine_id != machine_id {
                return Err(conflict(format!(
                    "volume {:?} is attached to machine {}; run `drover volumes detach {}` first",
                    m.name, a.machine_id, m.name
                )));
            }
        }
        record.size_bytes = m.size_bytes;
        record.attached = Some(VolumeAttachmentRecord {
            machine_id: machine_id.to_string(),
            node: node.to_string(),
            mount_point: m.mount_point.clone(),
            filesystem: m.filesystem,
            generation,
            detaching: None,
        });
        tx.put(m.name.as_bytes(), &record)?;
        let mount = VolumeMount { formatted: m.formatted || record.formatted, ..m.clone() };
        machine.volumes.retain(|v| v.name != m.name);
        if machine.volumes.iter().any(|v| v.mount_point == m.mount_point) {
            return Err(conflict(format!("machine {machine_id} already mounts another volume at {}", m.mount_point)));
        }
        machine.volumes.push(mount);
    }
    if machine.volumes.len() > MAX_VOLUMES_PER_MACHINE {
        return Err(invalid(format!("machine {machine_id} would hold more than {MAX_VOLUMES_PER_MACHINE} volumes")));
    }
    tx.put(machine_id.as_bytes(), &machine)?;
    Ok(())
}

/// Inside a health report's transaction: what the agent says about the
/// volumes it holds (and only those).
pub fn record_states(tx: &Tx, machine: &mut MachineRecord, states: &[drover_protocol::v1::VolumeState]) -> Result<(), WireError> {
    for s in states {
        let Some(held) = machine.volumes.iter_mut().find(|v| v.name == s.name) else { continue };
        let Some(mut record) = tx.get::<VolumeRecord>(s.name.as_bytes())? else {
            // A disk the hypervisor gave the VM (a provision's data disk):
            // the machine's record is its only record.
            held.formatted |= s.formatted;
            continue;
        };
        if record.attached.as_ref().is_none_or(|a| a.machine_id != machine.id) {
            continue;
        }
        if s.formatted && !record.formatted {
            tracing::info!(volume = %s.name, machine = %machine.id, "volume recorded as formatted");
        }
        record.formatted |= s.formatted;
        held.formatted |= s.formatted;
        record.state = Some(s.clone());
        tx.put(s.name.as_bytes(), &record)?;
    }
    Ok(())
}

/// Records a new generation for the machine that repeats its newest
/// assignment, after `change` altered its record (its volumes); returns the
/// generation.
async fn regenerate(
    state: &Coordinator,
    machine_id: &str,
    change: impl Fn(&Tx, &mut MachineRecord) -> Result<(), WireError> + Sync,
) -> Result<u64, WireError> {
    let access = super::deployments::directory(state)?;
    let now = now_ms();
    let recorded = state
        .store
        .commit(|tx| {
            let mut machine: MachineRecord = tx.require(machine_id.as_bytes())?;
            if machine.revoked_at.is_some() {
                return Err(revoked(machine_id));
            }
            let previous: AssignmentRecord = tx.get(&generation_key(machine_id, machine.desired_generation))?.ok_or_else(|| {
                invalid(format!("machine {machine_id} has no deployment yet; deploy a system to it with `--volume` instead"))
            })?;
            change(tx, &mut machine)?;
            tx.put(machine_id.as_bytes(), &machine)?;
            let access = access.extras(&machine).access;
            let make = |m: &MachineRecord, g| crate::deploy::rebuild(&previous.assignment, m, g, now, &access);
            match record_one(tx, machine_id, &make)? {
                Ok(recorded) => Ok(recorded),
                Err(_) => Err(revoked(machine_id)),
            }
        })
        .await?;
    recorded.announce(&state.live);
    Ok(recorded.target.generation)
}

fn info(state: &Coordinator, record: Option<&VolumeRecord>, volume: Option<&Volume>, name: &str) -> VolumeInfo {
    let attached = record.and_then(|r| r.attached.as_ref()).map(|a| VolumeAttachment {
        machine_id: a.machine_id.clone(),
        hostname: state.store.machine(&a.machine_id).ok().flatten().map(|m| m.hostname).unwrap_or_default(),
        node: a.node.clone(),
        mount_point: a.mount_point.clone(),
        filesystem: a.filesystem,
        generation: a.generation,
        detaching: a.detaching,
    });
    VolumeInfo {
        name: name.to_string(),
        size_bytes: volume.map(|v| v.size_kib * 1024).or(record.map(|r| r.size_bytes)).unwrap_or(0),
        replicas: volume
            .map(|v| {
                v.replicas
                    .iter()
                    .map(|r| ReplicaInfo { node: r.node.clone(), disk_state: r.disk_state.clone(), diskless: r.diskless, in_use: r.in_use })
                    .collect()
            })
            .unwrap_or_default(),
        attached,
        formatted: record.is_some_and(|r| r.formatted),
        state: record.and_then(|r| r.state.clone()),
        created_at: record.map(|r| r.created_at).unwrap_or(0),
    }
}

async fn show(state: &Coordinator, block: &dyn BlockStorage, name: &str) -> Result<VolumeInfo, WireError> {
    volumes::check_name(name).map_err(wire)?;
    let record = state.store.volume(name)?;
    let volume = block.volume(name).await.map_err(wire)?;
    if record.is_none() && volume.is_none() {
        return Err(not_found(format!("volume {name:?} does not exist; see `drover volumes list`")));
    }
    Ok(info(state, record.as_ref(), volume.as_ref(), name))
}

fn require_record(state: &Coordinator, name: &str) -> Result<VolumeRecord, WireError> {
    volumes::check_name(name).map_err(wire)?;
    state.store.volume(name)?.ok_or_else(|| not_found(format!("volume {name:?} is not known to Drover; see `drover volumes list`")))
}

/// Waits until the machine has applied `generation` (which no longer
/// mounts the volume), or says why not.
async fn wait_applied(state: &Coordinator, machine_id: &str, generation: u64, timeout: Duration) -> Result<(), WireError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let machine = state.store.machine(machine_id)?.ok_or_else(|| not_found(format!("machine {machine_id} not found")))?;
        if machine.current_generation.is_some_and(|g| g >= generation) {
            return Ok(());
        }
        if let Some(d) = state.store.deployment(machine_id, generation)? {
            if d.state == drover_protocol::v1::DeploymentState::Failed {
                return Err(conflict(format!(
                    "machine {machine_id} could not apply generation {generation}, which unmounts the volume: {}",
                    d.steps.last().map(|s| s.message.as_str()).unwrap_or("no reason given")
                )));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!(
                    "machine {machine_id} has not applied generation {generation} (which unmounts the volume) yet; \
                     the detach completes when it has: run the same command again"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a detach waits for the machine to unmount the volume.
const DETACH_WAIT: Duration = Duration::from_secs(120);

async fn detach(state: &Coordinator, block: &dyn BlockStorage, name: &str) -> Result<VolumeInfo, WireError> {
    let record = require_record(state, name)?;
    let Some(attached) = record.attached.clone() else {
        return Ok(info(state, Some(&record), block.volume(name).await.map_err(wire)?.as_ref(), name));
    };
    let generation = match attached.detaching {
        Some(g) => g,
        None => {
            let g = regenerate(state, &attached.machine_id, |tx, machine| {
                machine.volumes.retain(|v| v.name != name);
                let mut r: VolumeRecord = tx.require(name.as_bytes())?;
                if let Some(a) = r.attached.as_mut() {
                    a.detaching = Some(machine.desired_generation + 1);
                }
                tx.put(name.as_bytes(), &r)?;
                Ok(())
            })
            .await?;
            tracing::info!(volume = name, machine = %attached.machine_id, generation = g, "volume detaching");
            g
        }
    };
    wait_applied(state, &attached.machine_id, generation, DETACH_WAIT).await?;
    block.remove_from_node(name, &attached.node).await.map_err(wire)?;
    let record = state
        .store
        .update::<VolumeRecord, WireError>(name.as_bytes(), |r| {
            r.attached = None;
            r.state = None;
            Ok(())
        })
        .await?;
    tracing::info!(volume = name, machine = %attached.machine_id, "volume detached");
    Ok(info(state, Some(&record), block.volume(name).await.map_err(wire)?.as_ref(), name))
}

async fn attach(
    state: &Coordinator,
    name: &str,
    machine_id: &str,
    mount_point: String,
    filesystem: Filesystem,
) -> Result<(), WireError> {
    let claims = [VolumeClaim { name: name.to_string(), mount_point, filesystem, size_bytes: None }];
    check_claims(&claims).map_err(invalid)?;
    let machine = super::machines::machine(state, machine_id)?;
    if machine.revoked_at.is_some() {
        return Err(revoked(machine_id));
    }
    if let Some(a) = state.store.volume(name)?.and_then(|r| r.attached) {
        if a.machine_id != machine_id {
            return Err(held_elsewhere(state, name, &a.machine_id));
        }
    }
    if machine.desired_generation == 0 {
        return Err(invalid(format!(
            "machine {machine_id} has no deployment yet; deploy a system to it with `drover deploy --machine {machine_id} --volume {name}:MOUNT ...` instead"
        )));
    }
    let mounts = prepare(state, &claims, &machine).await?;
    let node = node_of(&machine);
    let now = now_ms();
    regenerate(state, machine_id, |tx, m| {
        tx.put(machine_id.as_bytes(), &*m)?;
        record_attachments(tx, machine_id, &node, &mounts, now)?;
        *m = tx.require(machine_id.as_bytes())?;
        Ok(())
    })
    .await?;
    Ok(())
}

/// The snapshot a rollout takes of each volume before its machine switches.
pub fn rollout_snapshot(rollout: &str) -> String {
    format!("pre-{rollout}")
}

/// Before a rollout switches these machines: a snapshot of every volume
/// they hold (idempotent, so a step retried after a failure takes none
/// twice).
pub async fn snapshot_before_switch(state: &Coordinator, rollout: &str, machines: &[String]) -> Result<(), WireError> {
    let snapshot = rollout_snapshot(rollout);
    let mut names = Vec::new();
    for id in machines {
        if let Some(m) = state.store.machine(id)? {
            names.extend(m.volumes.iter().map(|v| v.name.clone()));
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let block = block_storage(state)?;
    let now = now_ms();
    for name in names {
        block.snapshot(&name, &snapshot).await.map_err(wire)?;
        state
            .store
            .update::<VolumeRecord, WireError>(name.as_bytes(), |r| {
                if !r.snapshots.iter().any(|s| s.name == snapshot) {
                    r.snapshots.push(SnapshotRecord { name: snapshot.clone(), created_at: now });
                }
                Ok(())
            })
            .await?;
        tracing::info!(volume = %name, %snapshot, %rollout, "volume snapshot taken before the switch");
    }
    Ok(())
}

/// Inside a revert's transaction: the revert generation rolls back every
/// volume that has the rollout's snapshot before the machine switches back.
pub fn restore_in_revert(tx: &Tx, recorded: &mut Recorded, snapshot: &str) -> Result<(), WireError> {
    let key = generation_key(&recorded.target.machine_id, recorded.target.generation);
    let Some(mut assignment) = tx.get::<AssignmentRecord>(&key)? else { return Ok(()) };
    let mut changed = false;
    for v in assignment.assignment.volumes.iter_mut() {
        let record: Option<VolumeRecord> = tx.get(v.name.as_bytes())?;
        if record.is_some_and(|r| r.snapshots.iter().any(|s| s.name == snapshot)) {
            v.restore_snapshot = Some(snapshot.to_string());
            changed = true;
        }
    }
    if changed {
        tx.put(&key, &assignment)?;
        // The agent is sent what is recorded.
        recorded.assigned = std::sync::Arc::new((assignment.assignment, assignment.access));
    }
    Ok(())
}

/// An agent asks, having released the volume, that it be rolled back to
/// the snapshot its newest generation names. Only the machine that holds
/// the volume, only for that generation, only to that snapshot.
pub async fn restore(state: &Coordinator, machine_id: &str, generation: u64, name: &str) -> Result<(), WireError> {
    let machine = state.store.machine(machine_id)?.ok_or_else(|| not_found("this machine is not known"))?;
    if machine.revoked_at.is_some() {
        return Err(revoked(machine_id));
    }
    if generation != machine.desired_generation {
        return Err(conflict(format!("generation {generation} is not this machine's newest ({})", machine.desired_generation)));
    }
    let assignment: AssignmentRecord = state
        .store
        .get(&generation_key(machine_id, generation))?
        .ok_or_else(|| not_found(format!("generation {generation} has no assignment")))?;
    let snapshot = assignment
        .assignment
        .volumes
        .iter()
        .find(|v| v.name == name)
        .and_then(|v| v.restore_snapshot.clone())
        .ok_or_else(|| invalid(format!("generation {generation} does not roll volume {name:?} back")))?;
    let record = state.store.volume(name)?.ok_or_else(|| not_found(format!("volume {name:?} is not known")))?;
    if record.attached.as_ref().is_none_or(|a| a.machine_id != machine_id) {
        return Err(conflict(format!("volume {name:?} is not held by this machine")));
    }
    block_storage(state)?.rollback(name, &snapshot).await.map_err(wire)?;
    tracing::info!(volume = name, %snapshot, machine = machine_id, generation, "volume rolled back for a revert");
    Ok(())
}

pub async fn handle(state: &Coordinator, by: &str, request: VolumeRequest) -> Result<AdminResponse, WireError> {
    let block = block_storage(state)?;
    let block = block.as_ref();
    let answer = match request {
        VolumeRequest::List => {
            let mut records = state.store.volumes()?;
            let found = block.volumes().await.map_err(wire)?;
            let mut list: Vec<VolumeInfo> = found
                .iter()
                .map(|v| {
                    let i = records.iter().position(|r| r.name == v.name);
                    let record = i.map(|i| records.swap_remove(i));
                    info(state, record.as_ref(), Some(v), &v.name)
                })
                .collect();
            list.extend(records.iter().map(|r| info(state, Some(r), None, &r.name)));
            list.sort_by(|a, b| a.name.cmp(&b.name));
            VolumeResponse::Volumes(list)
        }
        VolumeRequest::Show { name } => VolumeResponse::Volume(show(state, block, &name).await?),
        VolumeRequest::Create { name, size_bytes, replicas, resource_group } => {
            let replicas = replicas.or(state.config.linstor.as_ref().map(|l| l.place_count)).unwrap_or(1);
            if replicas == 0 {
                return Err(invalid("--replicas must be at least 1"));
            }
            let spec = VolumeSpec { name: name.clone(), size_kib: volumes::size_kib(size_bytes).map_err(wire)?, replicas, resource_group };
            let volume = block.create(&spec).await.map_err(wire)?;
            let now = now_ms();
            let record = state
                .store
                .commit(|tx| {
                    let record = tx.get::<VolumeRecord>(name.as_bytes())?.unwrap_or(VolumeRecord {
                        name: name.clone(),
                        size_bytes: volume.size_kib * 1024,
                        created_at: now,
                        formatted: false,
                        attached: None,
                        state: None,
                        snapshots: Vec::new(),
                    });
                    tx.put(name.as_bytes(), &record)?;
                    Ok::<_, WireError>(record)
                })
                .await?;
            tracing::info!(volume = %name, size_kib = volume.size_kib, by, "volume created");
            VolumeResponse::Volume(info(state, Some(&record), Some(&volume), &name))
        }
        VolumeRequest::Resize { name, size_bytes } => {
            let record = require_record(state, &name)?;
            let kib = volumes::size_kib(size_bytes).map_err(wire)?;
            block.resize(&name, kib).await.map_err(wire)?;
            let size = kib * 1024;
            state
                .store
                .update::<VolumeRecord, WireError>(name.as_bytes(), |r| {
                    r.size_bytes = size;
                    Ok(())
                })
                .await?;
            if let Some(a) = record.attached.filter(|a| a.detaching.is_none()) {
                // The holder grows its filesystem in a new generation.
                regenerate(state, &a.machine_id, |_, m| {
                    for v in m.volumes.iter_mut().filter(|v| v.name == name) {
                        v.size_bytes = size;
                    }
                    Ok(())
                })
                .await?;
            }
            tracing::info!(volume = %name, size_kib = kib, by, "volume resized");
            VolumeResponse::Volume(show(state, block, &name).await?)
        }
        VolumeRequest::Attach { name, machine, mount_point, filesystem } => {
            attach(state, &name, &machine, mount_point, filesystem).await?;
            tracing::info!(volume = %name, %machine, by, "volume attached");
            VolumeResponse::Volume(show(state, block, &name).await?)
        }
        VolumeRequest::Detach { name } => VolumeResponse::Volume(detach(state, block, &name).await?),
        VolumeRequest::Snapshot { name, snapshot } => {
            require_record(state, &name)?;
            let now = now_ms();
            let snapshot = snapshot.unwrap_or_else(|| format!("s{now}"));
            volumes::check_snapshot_name(&snapshot).map_err(wire)?;
            block.snapshot(&name, &snapshot).await.map_err(wire)?;
            state
                .store
                .update::<VolumeRecord, WireError>(name.as_bytes(), |r| {
                    if !r.snapshots.iter().any(|s| s.name == snapshot) {
                        r.snapshots.push(SnapshotRecord { name: snapshot.clone(), created_at: now });
                    }
                    Ok(())
                })
                .await?;
            tracing::info!(volume = %name, %snapshot, by, "snapshot taken");
            VolumeResponse::Snapshots(vec![SnapshotInfo { name: snapshot, volume: name, created_at: now }])
        }
        VolumeRequest::Snapshots { name, prune } => {
            let record = require_record(state, &name)?;
            let mut names = block.snapshots(&name).await.map_err(wire)?;
            if prune {
                for s in &names {
                    block.delete_snapshot(&name, s).await.map_err(wire)?;
                }
                names.clear();
                state
                    .store
                    .update::<VolumeRecord, WireError>(name.as_bytes(), |r| {
                        r.snapshots.clear();
                        Ok(())
                    })
                    .await?;
            }
            let created = |s: &str| record.snapshots.iter().find(|r| r.name == s).map(|r| r.created_at).unwrap_or(0);
            VolumeResponse::Snapshots(names.iter().map(|s| SnapshotInfo { name: s.clone(), volume: name.clone(), created_at: created(s) }).collect())
        }
        VolumeRequest::Rollback { name, snapshot } => {
            let record = require_record(state, &name)?;
            if let Some(a) = &record.attached {
                return Err(conflict(format!(
                    "volume {name:?} is attached to machine {}; detach it before rolling it back (its filesystem must not be mounted)",
                    holder_name(state, &a.machine_id)
                )));
            }
            block.rollback(&name, &snapshot).await.map_err(wire)?;
            tracing::info!(volume = %name, %snapshot, by, "volume rolled back");
            VolumeResponse::Volume(show(state, block, &name).await?)
        }
        VolumeRequest::Delete { name, confirm } => {
            volumes::check_name(&name).map_err(wire)?;
            if confirm != name {
                return Err(invalid(format!("deleting a volume destroys its data; confirm with `--yes-delete-data {name}`")));
            }
            if let Some(a) = state.store.volume(&name)?.and_then(|r| r.attached) {
                return Err(conflict(format!(
                    "volume {name:?} is attached to machine {}; detach it first (`drover volumes detach {name}`)",
                    holder_name(state, &a.machine_id)
                )));
            }
            block.delete(&name).await.map_err(wire)?;
            state.store.commit(|tx| tx.remove::<VolumeRecord>(name.as_bytes()).map_err(WireError::from)).await?;
            tracing::info!(volume = %name, by, "volume deleted");
            VolumeResponse::Done
        }
    };
    Ok(AdminResponse::Volumes(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_must_be_plain_absolute_paths_outside_the_system() {
        for ok in ["/srv/data", "/var/lib/postgresql", "/mnt/a-b_c"] {
            check_mount_point(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["srv", "/", "/nix/store", "/etc", "/srv/../etc", "/srv//x", "/srv/", "/a\nb"] {
            assert!(check_mount_point(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claims_name_each_volume_and_mount_point_once() {
        let claim = |name: &str, mount: &str| VolumeClaim { name: name.into(), mount_point: mount.into(), filesystem: Filesystem::Ext4, size_bytes: None };
        assert!(check_claims(&[claim("a", "/srv/a"), claim("b", "/srv/b")]).is_ok());
        assert!(check_claims(&[claim("a", "/srv/a"), claim("a", "/srv/b")]).is_err());
        assert!(check_claims(&[claim("a", "/srv/a"), claim("b", "/srv/a")]).is_err());
        assert!(check_claims(&[claim("1a", "/srv/a")]).is_err());
    }
}
