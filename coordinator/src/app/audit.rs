//! The audit log: every admin request that changes something, or shows a
//! secret, is recorded with who, when, what and the outcome — never a
//! secret value (a token, a password, a secret file's content, a key).

use drover_protocol::v1::{AdminRequest, AdminResponse, Labels, S3Request, VolumeRequest};
use drover_protocol::WireError;

use crate::model::AuditRecord;

use super::{now_ms, Coordinator};

fn selector(machine: &Option<String>, labels: &Labels) -> String {
    match machine {
        Some(id) => format!("machine {id}"),
        None => labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
    }
}

/// What an admin request does and to what, as the CLI says it; `None` for
/// a request that only reads and shows no secret.
pub fn describe(request: &AdminRequest) -> Option<(String, String)> {
    use AdminRequest as R;
    let (action, target): (&str, String) = match request {
        R::WhoAmI
        | R::DeployDryRun(_)
        | R::TokensList
        | R::MachinesList { .. }
        | R::MachinesShow { .. }
        | R::MachinesDetail { .. }
        | R::AdminsList
        | R::DeploymentsList { .. }
        | R::DeploymentsShow { .. }
        | R::DeploymentsShowMany { .. }
        | R::RolloutStatus { .. }
        | R::RolloutList
        | R::DeploymentsOfRollout { .. }
        | R::TenantsList
        | R::TenantsShow { show_password: false, .. }
        | R::AdminsKeys { .. }
        | R::Audit { .. }
        | R::ProvisionShow { .. }
        | R::Provisions
        | R::FleetShow
        | R::ProvisionsCheck { .. } => return None,
        R::FleetSave { document } => ("apply", format!("a fleet of {} bytes", document.len())),
        R::MachinesProvision(spec) => ("machines provision", format!("{} on {}", spec.name, spec.provider)),
        R::MachinesDestroy { name, keep_volumes } => ("machines destroy", format!("{name}{}", if *keep_volumes { " --keep-volumes" } else { "" })),
        R::TokensCreate(spec) => ("tokens create", format!("{} uses, labels {}", spec.uses, selector(&None, &spec.labels))),
        R::TokensRevoke { id } => ("tokens revoke", id.clone()),
        R::MachinesLabel { id, set, remove } => ("machines label", format!("{id} set {} remove {}", selector(&None, set), remove.join(","))),
        R::MachinesRevoke { id } => ("machines revoke", id.clone()),
        R::MachinesReboot { machine, selector: s } => ("machines reboot", selector(machine, s)),
        R::AdminsAdd { name, role, .. } => ("admins add", format!("{name} as {}", role.as_str())),
        R::Deploy(spec) => ("deploy", selector(&spec.machine, &spec.selector)),
        R::RolloutStart(spec) => ("rollout start", selector(&spec.deploy.machine, &spec.deploy.selector)),
        R::RolloutControl { id, action } => ("rollout control", format!("{id} {action:?}").to_lowercase()),
        R::TenantsCreate(spec) => ("tenants create", spec.domain.clone()),
        R::TenantsShow { domain, show_password: true } => ("tenants show --show-password", domain.clone()),
        R::TenantsRemove { domain } => ("tenants remove", domain.clone()),
        R::TenantsManagers { domain, add, remove } => ("tenants managers", format!("{domain} add {} remove {}", add.join(","), remove.join(","))),
        R::AdminsAddKey { name, login, .. } => ("admins add-key", format!("{name} as {login}")),
        R::AdminsRemoveKey { name, fingerprint } => ("admins remove-key", format!("{name} {fingerprint}")),
        R::AdminsRemove { name } => ("admins remove", name.clone()),
        R::Backup => ("backup", String::new()),
        R::S3(s3) => match s3 {
            S3Request::BucketsList | S3Request::BucketShow { .. } | S3Request::KeysList | S3Request::ClusterStatus => return None,
            S3Request::KeyShow { show_secret: false, .. } => return None,
            S3Request::KeyShow { name, show_secret: true } => ("s3 keys show --show-secret", name.clone()),
            S3Request::BucketCreate { name, .. } => ("s3 buckets create", name.clone()),
            S3Request::BucketDelete { name } => ("s3 buckets delete", name.clone()),
            S3Request::KeyCreate { name } => ("s3 keys create", name.clone()),
            S3Request::KeyDelete { name } => ("s3 keys delete", name.clone()),
            S3Request::Grant { bucket, key, read, write, owner } => {
                ("s3 grant", format!("{key} on {bucket} read={read} write={write} owner={owner}"))
            }
            S3Request::ClusterAddNode { admin, zone, .. } => ("s3 cluster add-node", format!("{admin} zone {zone}")),
            S3Request::ClusterApply => ("s3 cluster apply", String::new()),
            S3Request::ClusterAddMachine { machine } => ("s3 cluster add-machine", machine.clone()),
        },
        R::Volumes(v) => match v {
            VolumeRequest::List | VolumeRequest::Show { .. } | VolumeRequest::Snapshots { prune: false, .. } => return None,
            VolumeRequest::Create { name, size_bytes, .. } => ("volumes create", format!("{name} {size_bytes} bytes")),
            VolumeRequest::Resize { name, size_bytes } => ("volumes resize", format!("{name} {size_bytes} bytes")),
            VolumeRequest::Attach { name, machine, mount_point, .. } => ("volumes attach", format!("{name} to {machine} at {mount_point}")),
            VolumeRequest::Detach { name } => ("volumes detach", name.clone()),
            VolumeRequest::Snapshot { name, snapshot } => ("volumes snapshot", format!("{name} {}", snapshot.as_deref().unwrap_or(""))),
            VolumeRequest::Snapshots { name, prune: true } => ("volumes snapshots --prune", name.clone()),
            VolumeRequest::Rollback { name, snapshot } => ("volumes rollback", format!("{name} to {snapshot}")),
            VolumeRequest::Delete { name, .. } => ("volumes delete", name.clone()),
            VolumeRequest::Adopt { name, .. } => ("volumes adopt", name.clone()),
            VolumeRequest::AllowFormat { name, .. } => ("volumes allow-format", name.clone()),
        },
    };
    Some((action.to_string(), crate::model::clean_text(target.trim(), 512)))
}

/// Records what `admin` asked and how it ended. A failure to record is
/// logged; the request's answer stands.
pub async fn record(state: &Coordinator, admin: &str, what: Option<(String, String)>, outcome: Result<(), &WireError>) {
    let Some((action, target)) = what else { return };
    let outcome = match outcome {
        Ok(()) => "ok".to_string(),
        Err(e) => crate::model::clean_text(&format!("{:?}: {}", e.code, e.message), 512),
    };
    let entry = AuditRecord { at: now_ms(), admin: admin.to_string(), action, target, outcome };
    if let Err(e) = state.store.record_audit(&entry).await {
        tracing::error!(error = %e, admin, action = %entry.action, "the audit log could not record a request");
    }
}

/// `drover audit`: the newest `limit` entries from `since` on, by `admin`
/// when given, oldest first.
pub fn list(state: &Coordinator, since: Option<u64>, admin: Option<&str>, limit: u32) -> Result<AdminResponse, WireError> {
    let mut entries: Vec<_> = state
        .store
        .audit(since.unwrap_or(0))?
        .into_iter()
        .filter(|e| admin.is_none_or(|a| e.admin == a))
        .collect();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX).clamp(1, 10_000);
    let skip = entries.len().saturating_sub(limit);
    entries.drain(..skip);
    Ok(AdminResponse::Audit(entries.iter().map(AuditRecord::to_wire).collect()))
}
