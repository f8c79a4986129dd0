//! Giving volumes to machines and taking them back: a deployment's volumes
//! made ready before anything is recorded ([`prepare`]) and claimed inside
//! its transaction ([`record_attachments`]); what agents report of them
//! folded in ([`record_states`], [`drop_refused`]); attach and detach,
//! each a new generation that repeats the machine's newest assignment with
//! its volumes changed.
//!
//! Whether a machine may format a volume is decided here, once, when the
//! volume is given to it: only a volume Drover created whose record is
//! still fresh ([`VolumeRecord::fresh`]) goes out as [`VolumeMount::fresh`],
//! and an admin's overwrite as [`VolumeMount::overwrite`].

use std::time::Duration;

use drover_protocol::v1::{Filesystem, VolumeClaim, VolumeMount, VolumeState};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{MachineRecord, VolumeAttachmentRecord, VolumeRecord};
use crate::store::Tx;
use crate::volume_rules;
use crate::volumes::{self, BlockError, BlockStorage, Volume, VolumeSpec};

use super::super::errors::{conflict, invalid, not_found, revoked};
use super::super::generations::regenerate;
use super::super::{now_ms, Coordinator};
use super::{block_storage, check_claims, check_unique, held_elsewhere, node_of, wire, MAX_VOLUMES_PER_MACHINE};

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

/// Makes every claimed volume exist (this fleet's) and be ready on the
/// machine's node; returns what the machine will mount. Records nothing.
pub async fn prepare(state: &Coordinator, claims: &[VolumeClaim], machine: &MachineRecord) -> Result<Vec<VolumeMount>, WireError> {
    check_claims(claims).map_err(invalid)?;
    for claim in claims {
        check_unique(state, &claim.name)?;
    }
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
        let replicas = state.config.linstor.as_ref().map(|l| l.place_count).unwrap_or(1);
        let (volume, made) = match block.volume(&claim.name).await.map_err(wire)? {
            Some(v) if v.owner.as_deref() != Some(block.owner()) => {
                return Err(wire(BlockError::NotOurs { name: v.name, owner: v.owner }));
            }
            Some(v) if v.size_kib > 0 && v.replicas.iter().any(|r| !r.diskless) => {
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
                (v, false)
            }
            existing => {
                // Missing, or a create that stopped half-way: (finish) making it.
                let size = claim
                    .size_bytes
                    .or(record.as_ref().map(|r| r.size_bytes))
                    .or(existing.as_ref().filter(|v| v.size_kib > 0).map(|v| v.size_kib * 1024))
                    .ok_or_else(|| {
                        invalid(format!(
                            "volume {:?} does not exist; give its size (`--volume {}:{},size=20GiB`) or create it with `drover volumes create`",
                            claim.name, claim.name, claim.mount_point
                        ))
                    })?;
                let kib = volume_rules::size_kib(size, Some(claim.filesystem)).map_err(invalid)?;
                let spec = VolumeSpec { name: claim.name.clone(), size_kib: kib, replicas, resource_group: None };
                let created = block.create(&spec).await.map_err(wire)?;
                (created.volume, created.made)
            }
        };
        volume_rules::size_kib(volume.size_kib * 1024, Some(claim.filesystem)).map_err(|e| invalid(format!("volume {:?}: {e}", claim.name)))?;
        block.make_available(&claim.name, &node).await.map_err(wire)?;
        let timeout = state.config.linstor.as_ref().map(|l| l.ready_timeout).unwrap_or(Duration::from_secs(60));
        wait_ready(block.as_ref(), &claim.name, &node, timeout).await?;
        // Fresh only when Drover made it and it has stayed so: by this
        // call, or by its record.
        let fresh = match &record {
            Some(r) => r.fresh && !r.formatted,
            None => made,
        };
        mounts.push(VolumeMount {
            name: claim.name.clone(),
            device: volumes::device_path(&claim.name),
            mount_point: claim.mount_point.clone(),
            filesystem: claim.filesystem,
            size_bytes: volume.size_kib * 1024,
            formatted: record.as_ref().is_some_and(|r| r.formatted),
            restore_snapshot: None,
            fresh,
            overwrite: record.as_ref().is_some_and(|r| r.overwrite),
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
        let mut record: VolumeRecord = tx.get(m.name.as_bytes())?.unwrap_or_else(|| VolumeRecord::new(&m.name, m.size_bytes, now, m.fresh && !m.formatted));
        if let Some(busy) = &record.busy {
            return Err(conflict(format!("volume {:?} is being {busy}; it cannot be attached now", m.name)));
        }
        if let Some(a) = &record.attached {
            if a.machine_id != machine_id {
                return Err(conflict(format!("volume {:?} is attached to machine {}; run `drover volumes detach {}` first", m.name, a.machine_id, m.name)));
            }
        }
        let continuing = record.attached.as_ref().is_some_and(|a| a.detaching.is_none());
        record.size_bytes = m.size_bytes;
        record.attached = Some(VolumeAttachmentRecord {
            machine_id: machine_id.to_string(),
            node: node.to_string(),
            mount_point: m.mount_point.clone(),
            filesystem: m.filesystem,
            generation: if continuing { record.attached.as_ref().map_or(generation, |a| a.generation) } else { generation },
            detaching: None,
        });
        tx.put(m.name.as_bytes(), &record)?;
        let mount = VolumeMount {
            formatted: m.formatted || record.formatted,
            fresh: m.fresh && record.fresh && !record.formatted,
            overwrite: record.overwrite,
            ..m.clone()
        };
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

/// Inside a health or deployment report's transaction: what the agent
/// says about the volumes it holds, or is releasing (and only those). A
/// format is recorded at once and for good: the volume stops being fresh,
/// an allowed overwrite is used up, and every later assignment says
/// `formatted`.
pub fn record_states(tx: &Tx, machine: &mut MachineRecord, states: &[VolumeState]) -> Result<(), WireError> {
    for s in states {
        let held = machine.volumes.iter_mut().find(|v| v.name == s.name);
        let Some(mut record) = tx.get::<VolumeRecord>(s.name.as_bytes())? else {
            // A disk the hypervisor gave the VM (a provision's data disk):
            // the machine's record is its only record.
            if let Some(held) = held {
                if s.formatted {
                    held.formatted = true;
                    held.fresh = false;
                    held.overwrite = false;
                }
            }
            continue;
        };
        if record.attached.as_ref().is_none_or(|a| a.machine_id != machine.id) {
            continue;
        }
        if s.formatted && !record.formatted {
            tracing::info!(volume = %s.name, machine = %machine.id, "volume recorded as formatted");
        }
        if s.formatted {
            record.saw_formatted();
            if let Some(held) = held {
                held.formatted = true;
                held.fresh = false;
                held.overwrite = false;
            }
        }
        record.state = Some(s.clone());
        tx.put(s.name.as_bytes(), &record)?;
    }
    Ok(())
}

/// Inside the transaction of a failed outcome for `generation`: a volume
/// that generation gave the machine and the agent refused (not mounted)
/// leaves the machine's assignment, so that the next deployment does not
/// carry it unless asked again. Returns the volumes dropped, with their
/// nodes, to take them off those nodes.
pub fn drop_refused(tx: &Tx, machine: &mut MachineRecord, generation: u64, states: &[VolumeState]) -> Result<Vec<(String, String)>, WireError> {
    let mut dropped = Vec::new();
    for s in states.iter().filter(|s| !s.mounted && !s.formatted) {
        let Some(mut record) = tx.get::<VolumeRecord>(s.name.as_bytes())? else { continue };
        let Some(a) = record.attached.clone() else { continue };
        if a.machine_id != machine.id || a.generation != generation || a.detaching.is_some() {
            continue;
        }
        machine.volumes.retain(|v| v.name != s.name);
        record.attached = None;
        record.state = Some(s.clone());
        tx.put(s.name.as_bytes(), &record)?;
        tracing::info!(volume = %s.name, machine = %machine.id, generation, reason = s.error.as_deref().unwrap_or(""), "refused volume left the machine's assignment");
        dropped.push((s.name.clone(), a.node));
    }
    Ok(dropped)
}

/// Takes volumes a machine refused off its node, in the background (a
/// diskless client left there is harmless, so a failure is only logged).
pub fn release_dropped(state: &Coordinator, dropped: Vec<(String, String)>) {
    if dropped.is_empty() {
        return;
    }
    let Ok(block) = block_storage(state) else { return };
    tokio::spawn(async move {
        for (name, node) in dropped {
            if let Err(e) = block.remove_from_node(&name, &node).await {
                tracing::warn!(volume = %name, %node, error = %e, "a refused volume could not be taken off its node");
            }
        }
    });
}

pub(super) async fn attach(state: &Coordinator, name: &str, machine_id: &str, mount_point: String, filesystem: Filesystem) -> Result<(), WireError> {
    let claims = [VolumeClaim { name: name.to_string(), mount_point, filesystem, size_bytes: None }];
    check_claims(&claims).map_err(invalid)?;
    let machine = super::super::machines::machine(state, machine_id)?;
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
    regenerate(state, machine_id, super::NO_DEPLOYMENT, |tx, m| {
        tx.put(machine_id.as_bytes(), &*m)?;
        record_attachments(tx, machine_id, &node, &mounts, now)?;
        *m = tx.require(machine_id.as_bytes())?;
        Ok(())
    })
    .await?;
    Ok(())
}

/// What the driver does next for a volume being detached: the holder has
/// a generation without it (`detaching`); once the machine runs that
/// generation (or a newer one) the volume has been unmounted and may leave
/// its node. Pure: the record and the machine as read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetachStep {
    /// Not being detached.
    Nothing,
    /// The machine has not applied the generation yet (or could not:
    /// then it still runs the old one, and its next generation, which
    /// no longer holds the volume, finishes the detach).
    Wait { generation: u64 },
    /// Take it off `node` and record it detached.
    Finish { generation: u64, node: String },
}

pub fn detach_step(volume: &VolumeRecord, machine: Option<&MachineRecord>) -> DetachStep {
    let Some(a) = volume.attached.as_ref() else { return DetachStep::Nothing };
    let Some(generation) = a.detaching else { return DetachStep::Nothing };
    match machine {
        // A machine removed from the registry holds nothing any more.
        None => DetachStep::Finish { generation, node: a.node.clone() },
        Some(m) if m.current_generation.is_some_and(|g| g >= generation) => DetachStep::Finish { generation, node: a.node.clone() },
        Some(_) => DetachStep::Wait { generation },
    }
}

/// Starts a detach: the holder gets a generation without the volume, and
/// the record says `detaching` with that generation. Returns at once; the
/// driver ([`finish_detaches`]) takes the volume off the node once the
/// machine has applied it (`drover volumes detach --wait` follows that).
/// The volume is no longer fresh afterwards: a machine held it.
pub(super) async fn detach(state: &Coordinator, block: &dyn BlockStorage, name: &str) -> Result<Option<VolumeRecord>, WireError> {
    let record = super::known(state, block, name).await?;
    let Some(attached) = record.attached.clone() else {
        return Ok(Some(record));
    };
    if attached.detaching.is_none() {
        let g = regenerate(state, &attached.machine_id, super::NO_DEPLOYMENT, |tx, machine| {
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
    }
    finish_detach(state, block, name).await?;
    Ok(state.store.volume(name)?)
}

/// Carries out [`detach_step`] for one volume; returns whether it finished.
async fn finish_detach(state: &Coordinator, block: &dyn BlockStorage, name: &str) -> Result<bool, WireError> {
    let Some(record) = state.store.volume(name)? else { return Ok(false) };
    let machine = match record.attached.as_ref() {
        Some(a) => state.store.machine(&a.machine_id)?,
        None => return Ok(false),
    };
    let DetachStep::Finish { generation, node } = detach_step(&record, machine.as_ref()) else { return Ok(false) };
    block.remove_from_node(name, &node).await.map_err(wire)?;
    let finished = std::sync::atomic::AtomicBool::new(false);
    let record = state
        .store
        .update::<VolumeRecord, WireError>(name.as_bytes(), |r| {
            // Only the detach this step saw: an attach since is left alone.
            if r.attached.as_ref().is_some_and(|a| a.detaching == Some(generation)) {
                r.attached = None;
                r.state = None;
                r.fresh = false;
                finished.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })
        .await?;
    let finished = finished.into_inner();
    if finished {
        tracing::info!(volume = name, formatted = record.formatted, "volume detached");
    }
    Ok(finished)
}

/// One pass of the detach driver over the volumes being detached; run by
/// the coordinator's driver task, so a detach started before a restart is
/// finished after it.
pub async fn finish_detaches(state: &Coordinator) {
    let Ok(block) = block_storage(state) else { return };
    let detaching: Vec<String> = match state.store.volumes() {
        Ok(list) => list.into_iter().filter(|v| v.attached.as_ref().is_some_and(|a| a.detaching.is_some())).map(|v| v.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read volumes to finish their detaches");
            return;
        }
    };
    for name in detaching {
        if let Err(e) = finish_detach(state, block.as_ref(), &name).await {
            tracing::warn!(volume = %name, error = %e.message, "a detach could not be finished yet; trying again");
        }
    }
}
