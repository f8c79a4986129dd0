//! Volumes (`drover volumes ...` and `--volume` on deployments), carried
//! out through [`BlockStorage`]. A volume is held by one machine at a time;
//! the machine's record lists the volumes it holds, and every new
//! generation for it mounts them (see `generations::record_one`), until a
//! detach records a generation without the volume and, once the machine has
//! applied it (the agent unmounted it and reported its final state), takes
//! the volume off its node.
//!
//! Drover touches only block storage resources that carry this fleet's
//! identity (the adapter refuses the rest); one made elsewhere is taken
//! over only by `adopt`. [`attach`] decides what a machine may do with a
//! volume it is given; [`snapshots`] serves rollouts.

mod attach;
mod snapshots;

use std::sync::Arc;

use drover_protocol::v1::{AdminResponse, ReplicaInfo, SnapshotInfo, VolumeAttachment, VolumeClaim, VolumeInfo, VolumeRequest, VolumeResponse};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{MachineRecord, SnapshotRecord, VolumeRecord};
use crate::volume_rules;
use crate::volumes::{self, BlockError, BlockStorage, Volume, VolumeSpec};

use super::errors::{conflict, invalid, not_found};
use super::{now_ms, Coordinator};

/// What to do for a machine without a deployment, when a volume change
/// needs a generation repeating its newest one.
const NO_DEPLOYMENT: &str = "deploy a system to it with `--volume` instead";

pub use attach::{detach_step, drop_refused, finish_detaches, prepare, record_attachments, record_states, release_dropped, DetachStep};
pub use snapshots::{restore, restore_in_revert, rollout_snapshot, snapshot_before_switch};

/// The label that names a machine's LINSTOR node (else its hostname).
pub const NODE_LABEL: &str = "linstor.node";
/// At most this many volumes per machine.
pub const MAX_VOLUMES_PER_MACHINE: usize = 16;

/// A block storage failure as a wire error; each kind keeps its own code.
pub fn wire(e: BlockError) -> WireError {
    let code = match &e {
        BlockError::Unreachable { .. } => ErrorCode::Unavailable,
        BlockError::NotFound { .. } => ErrorCode::NotFound,
        BlockError::Conflict(_) | BlockError::Shrink { .. } | BlockError::NotOurs { .. } => ErrorCode::Conflict,
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
        None => Err(invalid("volumes are not configured on this coordinator; add a [linstor] section (controller = \"http://HOST:3370\") to drover.toml")),
    }
}

/// The LINSTOR node a machine's volumes are made available on.
pub fn node_of(machine: &MachineRecord) -> String {
    machine.labels.get(NODE_LABEL).cloned().unwrap_or_else(|| machine.hostname.clone())
}

/// Checks a mount point (see [`volume_rules::check_mount_point`]).
pub fn check_mount_point(path: &str) -> Result<(), String> {
    volume_rules::check_mount_point(path)
}

/// The placeholder a rollout's volume names may hold.
pub const HOSTNAME: &str = "{hostname}";

/// A rollout's claims for one machine: `{hostname}` in a name becomes the
/// machine's host name, its dots as dashes (LINSTOR names have none).
pub fn expand_claims(claims: &[VolumeClaim], hostname: &str) -> Vec<VolumeClaim> {
    let host = hostname.replace('.', "-");
    claims.iter().map(|c| VolumeClaim { name: c.name.replace(HOSTNAME, &host), ..c.clone() }).collect()
}

/// Checks the volume claims of a deployment before anything is made:
/// names, mount points, sizes (xfs' minimum included), each once — names
/// compared as the block storage does, without regard to case.
pub fn check_claims(claims: &[VolumeClaim]) -> Result<(), String> {
    if claims.len() > MAX_VOLUMES_PER_MACHINE {
        return Err(format!("at most {MAX_VOLUMES_PER_MACHINE} volumes per machine"));
    }
    for (i, c) in claims.iter().enumerate() {
        volume_rules::check_name(&c.name)?;
        check_mount_point(&c.mount_point)?;
        if let Some(size) = c.size_bytes {
            volume_rules::size_kib(size, Some(c.filesystem)).map_err(|e| format!("volume {:?}: {e}", c.name))?;
        }
        if claims[..i].iter().any(|o| volume_rules::same_resource(&o.name, &c.name) || o.mount_point == c.mount_point) {
            return Err(format!("volume {:?} or mount point {:?} is given twice", c.name, c.mount_point));
        }
    }
    Ok(())
}

/// Refuses a name that is one of Drover's volumes under another spelling
/// (the block storage ignores case).
pub fn check_unique(state: &Coordinator, name: &str) -> Result<(), WireError> {
    let records = state.store.volumes()?;
    volume_rules::check_unique(name, records.iter().map(|r| r.name.as_str())).map_err(invalid)
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

/// The volume as Drover records it and the block storage holds it (this
/// fleet's only: another's is refused by name).
async fn show(state: &Coordinator, block: &dyn BlockStorage, name: &str) -> Result<VolumeInfo, WireError> {
    volumes::check_name(name).map_err(wire)?;
    let record = state.store.volume(name)?;
    let volume = block.volume(name).await.map_err(wire)?;
    if let Some(v) = volume.as_ref().filter(|v| v.owner.as_deref() != Some(block.owner())) {
        return Err(wire(BlockError::NotOurs { name: v.name.clone(), owner: v.owner.clone() }));
    }
    if record.is_none() && volume.is_none() {
        return Err(not_found(format!("volume {name:?} does not exist; see `drover volumes list`")));
    }
    Ok(info(state, record.as_ref(), volume.as_ref(), name))
}

fn require_record(state: &Coordinator, name: &str) -> Result<VolumeRecord, WireError> {
    volumes::check_name(name).map_err(wire)?;
    state.store.volume(name)?.ok_or_else(|| not_found(format!("volume {name:?} is not known to Drover; see `drover volumes list`")))
}

/// [`require_record`], saying why when the block storage holds a volume of
/// that name that Drover has no record of: someone else's, or this
/// fleet's left by an interrupted create (adopt records it).
async fn known(state: &Coordinator, block: &dyn BlockStorage, name: &str) -> Result<VolumeRecord, WireError> {
    match require_record(state, name) {
        Ok(record) => Ok(record),
        Err(e) => match block.volume(name).await.map_err(wire)? {
            Some(v) if v.owner.as_deref() != Some(block.owner()) => Err(wire(BlockError::NotOurs { name: v.name, owner: v.owner })),
            Some(_) => Err(not_found(format!(
                "volume {name:?} is this fleet's in the block storage but Drover has no record of it (a create was cut short); \
                 record it with `drover volumes adopt {name} --yes-adopt {name}`"
            ))),
            None => Err(e),
        },
    }
}

/// Marks volume `name` busy with `what` ("deleted", "rolled back to X") in
/// one transaction that finds it unattached and not busy with something
/// else; an attach refuses it until [`release`]. A volume Drover has no
/// record of gets one for the time being (returns whether it did).
/// `detach_first` says what to do when it is attached.
async fn claim(state: &Coordinator, name: &str, what: &str, detach_first: &str) -> Result<bool, WireError> {
    let now = now_ms();
    // The holder's name is read after the transaction, never inside it.
    let holder = std::sync::Mutex::new(None);
    let claimed = state
        .store
        .commit(|tx| {
            *holder.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let existing: Option<VolumeRecord> = tx.get(name.as_bytes())?;
            let made = existing.is_none();
            let mut record = existing.unwrap_or_else(|| VolumeRecord::new(name, 0, now, false));
            if let Some(a) = &record.attached {
                *holder.lock().unwrap_or_else(|p| p.into_inner()) = Some(a.machine_id.clone());
                return Err(conflict("attached"));
            }
            if let Some(other) = record.busy.as_deref().filter(|b| *b != what) {
                return Err(conflict(format!("volume {name:?} is being {other}; try again when that is done")));
            }
            record.busy = Some(what.to_string());
            tx.put(name.as_bytes(), &record)?;
            Ok(made)
        })
        .await;
    match (claimed, holder.into_inner().unwrap_or_else(|p| p.into_inner())) {
        (Err(_), Some(machine)) => Err(conflict(format!("volume {name:?} is attached to machine {}; {detach_first}", holder_name(state, &machine)))),
        (claimed, _) => claimed,
    }
}

/// Ends what [`claim`] marked; a record `made` only for the claim goes.
async fn release(state: &Coordinator, name: &str, made: bool) -> Result<(), WireError> {
    state
        .store
        .commit(|tx| {
            let Some(mut record) = tx.get::<VolumeRecord>(name.as_bytes())? else { return Ok(()) };
            if made {
                tx.remove::<VolumeRecord>(name.as_bytes())?;
                return Ok(());
            }
            record.busy = None;
            tx.put(name.as_bytes(), &record).map_err(WireError::from)
        })
        .await
}

/// A confirmation that repeats the volume's name.
fn confirmed(name: &str, confirm: &str, flag: &str, what: &str) -> Result<(), WireError> {
    if confirm == name {
        Ok(())
    } else {
        Err(invalid(format!("{what}; confirm with `{flag} {name}`")))
    }
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
                    let i = records.iter().position(|r| volume_rules::same_resource(&r.name, &v.name));
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
            volumes::check_name(&name).map_err(wire)?;
            let kib = volumes::size_kib(size_bytes).map_err(wire)?;
            check_unique(state, &name)?;
            let replicas = replicas.or(state.config.linstor.as_ref().map(|l| l.place_count)).unwrap_or(1);
            if replicas == 0 {
                return Err(invalid("--replicas must be at least 1"));
            }
            let spec = VolumeSpec { name: name.clone(), size_kib: kib, replicas, resource_group };
            let created = block.create(&spec).await.map_err(wire)?;
            let now = now_ms();
            let record = state
                .store
                .commit(|tx| {
                    let record =
                        tx.get::<VolumeRecord>(name.as_bytes())?.unwrap_or_else(|| VolumeRecord::new(&name, created.volume.size_kib * 1024, now, created.made));
                    tx.put(name.as_bytes(), &record)?;
                    Ok::<_, WireError>(record)
                })
                .await?;
            tracing::info!(volume = %name, size_kib = created.volume.size_kib, made = created.made, by, "volume created");
            VolumeResponse::Volume(info(state, Some(&record), Some(&created.volume), &name))
        }
        VolumeRequest::Resize { name, size_bytes } => {
            let record = known(state, block, &name).await?;
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
                super::generations::regenerate(state, &a.machine_id, NO_DEPLOYMENT, |_, m| {
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
            attach::attach(state, &name, &machine, mount_point, filesystem).await?;
            tracing::info!(volume = %name, %machine, by, "volume attached");
            VolumeResponse::Volume(show(state, block, &name).await?)
        }
        VolumeRequest::Detach { name } => {
            let record = attach::detach(state, block, &name).await?;
            VolumeResponse::Volume(info(state, record.as_ref(), block.volume(&name).await.map_err(wire)?.as_ref(), &name))
        }
        VolumeRequest::Snapshot { name, snapshot } => {
            known(state, block, &name).await?;
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
            let record = known(state, block, &name).await?;
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
            known(state, block, &name).await?;
            let what = format!("rolled back to {snapshot}");
            let made = claim(state, &name, &what, "detach it before rolling it back (its filesystem must not be mounted)").await?;
            let done = block.rollback(&name, &snapshot).await.map_err(wire);
            release(state, &name, made).await?;
            done?;
            tracing::info!(volume = %name, %snapshot, by, "volume rolled back");
            VolumeResponse::Volume(show(state, block, &name).await?)
        }
        VolumeRequest::Delete { name, confirm } => {
            volumes::check_name(&name).map_err(wire)?;
            confirmed(&name, &confirm, "--yes-delete-data", "deleting a volume destroys its data")?;
            // Found free and marked in one transaction: no attach can come
            // between the check and the delete.
            let made = claim(state, &name, "deleted", &format!("detach it first (`drover volumes detach {name}`)")).await?;
            let deleted = async {
                let Some(volume) = block.volume(&name).await.map_err(wire)? else {
                    tracing::info!(volume = %name, by, "volume record removed; the block storage held no such volume");
                    return Ok(());
                };
                if volume.owner.as_deref() != Some(block.owner()) {
                    return Err(wire(BlockError::NotOurs { name: volume.name, owner: volume.owner }));
                }
                let snapshots = block.snapshots(&name).await.map_err(wire)?;
                if !snapshots.is_empty() {
                    return Err(conflict(format!(
                        "volume {name:?} has {} snapshot(s) ({}); delete them first with `drover volumes snapshots {name} --prune`",
                        snapshots.len(),
                        snapshots.join(", ")
                    )));
                }
                block.delete(&name).await.map_err(wire)?;
                tracing::info!(volume = %name, by, "volume deleted");
                Ok(())
            }
            .await;
            match deleted {
                Ok(()) => state.store.commit(|tx| tx.remove::<VolumeRecord>(name.as_bytes()).map(drop).map_err(WireError::from)).await?,
                Err(e) => {
                    release(state, &name, made).await?;
                    return Err(e);
                }
            }
            VolumeResponse::Done
        }
        VolumeRequest::Adopt { name, confirm } => {
            volumes::check_name(&name).map_err(wire)?;
            confirmed(&name, &confirm, "--yes-adopt", "adopting puts a resource Drover did not make under this fleet's management")?;
            check_unique(state, &name)?;
            let volume = block.adopt(&name).await.map_err(wire)?;
            let now = now_ms();
            let record = state
                .store
                .commit(|tx| {
                    let mut record = tx.get::<VolumeRecord>(name.as_bytes())?.unwrap_or_else(|| VolumeRecord::new(&name, volume.size_kib * 1024, now, false));
                    record.adopted = true;
                    tx.put(name.as_bytes(), &record)?;
                    Ok::<_, WireError>(record)
                })
                .await?;
            tracing::warn!(volume = %name, size_kib = volume.size_kib, by, "volume adopted: it now carries this fleet's identity");
            VolumeResponse::Volume(info(state, Some(&record), Some(&volume), &name))
        }
        VolumeRequest::AllowFormat { name, confirm } => {
            confirmed(&name, &confirm, "--yes-overwrite", "formatting a volume destroys whatever it holds")?;
            let record = known(state, block, &name).await?;
            if let Some(a) = &record.attached {
                return Err(conflict(format!(
                    "volume {name:?} is attached to machine {}; detach it first, then allow the format and attach it again",
                    holder_name(state, &a.machine_id)
                )));
            }
            let volume = block.volume(&name).await.map_err(wire)?;
            if let Some(v) = volume.as_ref().filter(|v| v.owner.as_deref() != Some(block.owner())) {
                return Err(wire(BlockError::NotOurs { name: v.name.clone(), owner: v.owner.clone() }));
            }
            let record = state
                .store
                .update::<VolumeRecord, WireError>(name.as_bytes(), |r| {
                    r.overwrite = true;
                    Ok(())
                })
                .await?;
            tracing::warn!(volume = %name, by, "volume allowed to be formatted over what it holds, once, by the next machine it is given to");
            VolumeResponse::Volume(info(state, Some(&record), volume.as_ref(), &name))
        }
    };
    Ok(AdminResponse::Volumes(answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::v1::Filesystem;

    #[test]
    fn claims_name_each_volume_and_mount_point_once() {
        let claim = |name: &str, mount: &str| VolumeClaim { name: name.into(), mount_point: mount.into(), filesystem: Filesystem::Ext4, size_bytes: None };
        assert!(check_claims(&[claim("aa", "/srv/a"), claim("bb", "/srv/b")]).is_ok());
        assert!(check_claims(&[claim("aa", "/srv/a"), claim("aa", "/srv/b")]).is_err());
        assert!(check_claims(&[claim("aa", "/srv/a"), claim("AA", "/srv/b")]).is_err(), "names ignore case");
        assert!(check_claims(&[claim("aa", "/srv/a"), claim("bb", "/srv/a")]).is_err());
        assert!(check_claims(&[claim("1a", "/srv/a")]).is_err());
        assert!(check_claims(&[claim("a", "/srv/a")]).is_err(), "LINSTOR names have two characters at least");
        let small_xfs = VolumeClaim { filesystem: Filesystem::Xfs, size_bytes: Some(64 << 20), ..claim("media", "/srv/media") };
        assert!(check_claims(&[small_xfs]).expect_err("xfs below its minimum").contains("300"));
    }
}
