//! `drover volumes ...`: volumes through the coordinator, which talks to
//! the block storage and records which machine holds each.

use anyhow::{bail, Result};

use drover_protocol::v1::{AdminRequest, AdminResponse, SnapshotInfo, VolumeInfo, VolumeRequest, VolumeResponse};

use crate::cli::{AdminArgs, VolumesCommand};
use crate::output::{self, OutputFormat};

use super::{call, print_json};

async fn volumes(admin: &AdminArgs, request: VolumeRequest, what: &str) -> Result<VolumeResponse> {
    Ok(call(admin, AdminRequest::Volumes(request), what).await?.volumes()?)
}

fn holder(v: &VolumeInfo) -> String {
    match &v.attached {
        Some(a) if a.detaching.is_some() => format!("{} (detaching)", a.machine_id),
        Some(a) => a.machine_id.clone(),
        None => "-".into(),
    }
}

fn print_volume(v: &VolumeInfo) {
    crate::out!("volume       {}", v.name);
    crate::out!("size         {}", output::bytes(v.size_bytes));
    crate::out!("formatted    {}", if v.formatted { "yes" } else { "no" });
    match &v.attached {
        Some(a) => {
            crate::out!("machine      {} ({}) on node {}, generation {}", a.machine_id, a.hostname, a.node, a.generation);
            crate::out!("mount        {} ({})", a.mount_point, a.filesystem);
            if let Some(g) = a.detaching {
                crate::out!("detaching    the machine unmounts it in generation {g}; then it leaves node {} (`--wait` follows)", a.node);
            }
        }
        None => crate::out!("machine      none (detached)"),
    }
    if let Some(s) = &v.state {
        let state = if s.mounted { "mounted" } else { "NOT MOUNTED" };
        crate::out!("state        {state}, {} used of {}", output::bytes(s.used_bytes), output::bytes(s.total_bytes));
        if let Some(why) = &s.grow_pending {
            crate::out!("grow         pending: {why}");
        }
        if let Some(e) = &s.error {
            crate::out!("error        {e}");
        }
    }
    let mut t = output::table(&["NODE", "DISK STATE", "KIND", "IN USE"]);
    for r in &v.replicas {
        t.add_row(vec![
            r.node.clone(),
            r.disk_state.clone(),
            if r.diskless { "diskless".into() } else { "replica".into() },
            if r.in_use { "yes".into() } else { "no".into() },
        ]);
    }
    crate::out!("{t}");
}

fn print_snapshots(list: &Vec<SnapshotInfo>) {
    let mut t = output::table(&["VOLUME", "SNAPSHOT", "TAKEN"]);
    for s in list {
        t.add_row(vec![s.volume.clone(), s.name.clone(), if s.created_at == 0 { "-".into() } else { output::timestamp(s.created_at) }]);
    }
    crate::out!("{t}");
}

fn show<T: serde::Serialize>(admin: &AdminArgs, value: &T, table: impl FnOnce(&T)) -> Result<()> {
    match admin.output {
        OutputFormat::Json => print_json(value),
        OutputFormat::Table => {
            table(value);
            Ok(())
        }
    }
}

/// Follows a detach until the volume has left its machine's node; fails
/// when the machine could not apply the generation that unmounts it, or
/// when `timeout` passes (the detach goes on without the command).
pub(crate) async fn wait_detached(client: &crate::client::AdminClient, mut v: VolumeInfo, timeout: std::time::Duration, show: bool) -> Result<VolumeInfo> {
    use drover_protocol::v1::DeploymentState;
    let deadline = std::time::Instant::now() + timeout;
    let mut told = !show;
    while let Some(a) = v.attached.clone() {
        let Some(generation) = a.detaching else { bail!("volume {} is attached to {} again; nothing to wait for", v.name, a.machine_id) };
        if !told {
            eprintln!("waiting for {} to apply generation {generation}, which unmounts {}...", a.machine_id, v.name);
            told = true;
        }
        let deployment = client.call(AdminRequest::DeploymentsShow { id: crate::model::deployment_id(&a.machine_id, generation) }).await;
        if let Ok(AdminResponse::Deployment(d)) = deployment {
            if d.state == DeploymentState::Failed {
                let why = d.steps.last().map(|s| s.message.clone()).unwrap_or_else(|| "no reason given".into());
                bail!(
                    "machine {} could not apply generation {generation}, which unmounts volume {}: {why}\n\
                     the volume stays mounted there; fix the machine and deploy to it again: its next generation leaves the volume out and finishes the detach",
                    a.machine_id,
                    v.name
                );
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "machine {} has not applied generation {generation} (which unmounts volume {}) within {}; the detach goes on: \
                 `drover volumes show {}` shows when it is done",
                a.machine_id,
                v.name,
                humantime::format_duration(timeout),
                v.name
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        v = client
            .call(AdminRequest::Volumes(VolumeRequest::Show { name: v.name.clone() }))
            .await
            .map_err(|e| super::refused(e, "showing the volume"))?
            .volumes()?
            .volume()?;
    }
    Ok(v)
}

async fn one(admin: &AdminArgs, request: VolumeRequest, what: &str) -> Result<()> {
    show(admin, &volumes(admin, request, what).await?.volume()?, print_volume)
}

pub async fn run(cmd: VolumesCommand) -> Result<()> {
    match cmd {
        VolumesCommand::List { admin } => {
            let list = volumes(&admin, VolumeRequest::List, "listing volumes").await?.volumes()?;
            show(&admin, &list, |list| {
                let mut t = output::table(&["VOLUME", "SIZE", "REPLICAS", "MACHINE", "MOUNT", "USED"]);
                for v in list {
                    t.add_row(vec![
                        v.name.clone(),
                        output::bytes(v.size_bytes),
                        v.replicas.iter().filter(|r| !r.diskless).count().to_string(),
                        holder(v),
                        v.attached.as_ref().map(|a| a.mount_point.clone()).unwrap_or_else(|| "-".into()),
                        v.state.as_ref().filter(|s| s.mounted).map(|s| output::bytes(s.used_bytes)).unwrap_or_else(|| "-".into()),
                    ]);
                }
                crate::out!("{t}");
            })
        }
        VolumesCommand::Show { name, admin } => one(&admin, VolumeRequest::Show { name: name.clone() }, &format!("showing volume {name}")).await,
        VolumesCommand::Create { name, size, replicas, resource_group, admin } => {
            let request = VolumeRequest::Create { name: name.clone(), size_bytes: size, replicas, resource_group };
            one(&admin, request, &format!("creating volume {name}")).await
        }
        VolumesCommand::Resize { name, size, admin } => {
            one(&admin, VolumeRequest::Resize { name: name.clone(), size_bytes: size }, &format!("resizing volume {name}")).await
        }
        VolumesCommand::Attach { name, machine, mount_point, filesystem, admin } => {
            let request = VolumeRequest::Attach { name: name.clone(), machine: machine.clone(), mount_point, filesystem };
            one(&admin, request, &format!("attaching volume {name} to {machine}")).await
        }
        VolumesCommand::Detach { name, wait, wait_timeout, admin } => {
            let started = volumes(&admin, VolumeRequest::Detach { name: name.clone() }, &format!("detaching volume {name}")).await?.volume()?;
            let v = if wait {
                let client = super::connect(&admin).await?;
                let v = wait_detached(&client, started, wait_timeout, admin.output == OutputFormat::Table).await;
                client.close().await;
                v?
            } else {
                started
            };
            show(&admin, &v, print_volume)
        }
        VolumesCommand::Snapshot { name, snapshot, admin } => {
            let list = volumes(&admin, VolumeRequest::Snapshot { name: name.clone(), snapshot }, &format!("snapshotting volume {name}")).await?.snapshots()?;
            show(&admin, &list, print_snapshots)
        }
        VolumesCommand::Snapshots { name, prune, admin } => {
            let list = volumes(&admin, VolumeRequest::Snapshots { name: name.clone(), prune }, &format!("listing snapshots of {name}")).await?.snapshots()?;
            show(&admin, &list, print_snapshots)
        }
        VolumesCommand::Rollback { name, snapshot, admin } => {
            let request = VolumeRequest::Rollback { name: name.clone(), snapshot: snapshot.clone() };
            one(&admin, request, &format!("rolling volume {name} back to {snapshot}")).await
        }
        VolumesCommand::Delete { name, confirm, admin } => {
            volumes(&admin, VolumeRequest::Delete { name: name.clone(), confirm }, &format!("deleting volume {name}")).await?;
            show(&admin, &serde_json::json!({ "deleted": name }), |_| crate::out!("volume {name} deleted with its data"))
        }
        VolumesCommand::Adopt { name, confirm, admin } => {
            one(&admin, VolumeRequest::Adopt { name: name.clone(), confirm }, &format!("adopting volume {name}")).await
        }
        VolumesCommand::AllowFormat { name, confirm, admin } => {
            one(&admin, VolumeRequest::AllowFormat { name: name.clone(), confirm }, &format!("allowing volume {name} to be formatted")).await?;
            if admin.output == OutputFormat::Table {
                eprintln!("the next machine {name} is given to formats it, whatever its device holds");
            }
            Ok(())
        }
    }
}
