//! The audit log: every admin request that changes something, or shows a
//! secret, is recorded with who, when, what and the outcome — never a
//! secret value (a token, a password, a secret file's content, a key).

use std::collections::{BTreeMap, HashMap};

use drover_protocol::text::printable;
use drover_protocol::v1::{self, AdminRequest, AdminResponse, Labels, Role, S3Request, StateRequest, VolumeRequest};
use drover_protocol::{ErrorCode, WireError};

use crate::model::AuditRecord;
use crate::store::audit::{AuditItem, AuditPart};

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
        | R::MachinesPage { .. }
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
        | R::AuditExport { .. }
        | R::CoordinatorsList
        | R::ProvisionShow { .. }
        | R::Provisions
        | R::FleetShow
        | R::ProvisionsCheck { .. } => return None,
        R::WebLogin => ("web login", "a one-time link to the fleet page".to_string()),
        R::FleetSave { document } => ("apply", format!("a fleet of {} bytes", document.len())),
        R::Nixops4State(StateRequest::Read { .. } | StateRequest::Events { .. }) => return None,
        R::Nixops4State(StateRequest::Create { name }) => ("nixops4 state create", name.clone()),
        R::Nixops4State(StateRequest::Event { name, event, patch, .. }) => {
            ("nixops4 state event", format!("{name}: {event}, a patch of {} bytes", patch.len()))
        }
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
            S3Request::Grant { bucket, key, read, write, owner } => ("s3 grant", format!("{key} on {bucket} read={read} write={write} owner={owner}")),
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

/// Refused requests being counted, per admin: the first refusal of an
/// interval is recorded as it came, the rest are summarised in one entry
/// at the interval's end, so that no one can flood the log by asking for
/// what they may not do.
#[derive(Default)]
pub struct Refusals {
    pending: std::sync::Mutex<HashMap<String, Pending>>,
}

/// Admins whose refusals are counted apart; beyond it they are counted
/// together under [`OTHERS`].
const COUNTED_ADMINS: usize = 10_000;
const OTHERS: &str = "(other admins)";

/// Actions named in one summary; beyond it they are counted together.
const NAMED_ACTIONS: usize = 32;

struct Pending {
    /// When the interval began (the first refusal, recorded as it came).
    since: u64,
    part: AuditPart,
    /// Refusals after the first, by action.
    actions: BTreeMap<String, u64>,
    more: u64,
}

impl Pending {
    fn count(&self) -> u64 {
        self.actions.values().sum::<u64>() + self.more
    }

    fn summary(&self, admin: &str, now: u64) -> AuditRecord {
        let mut target = self.actions.iter().map(|(a, n)| format!("{a} ×{n}")).collect::<Vec<_>>().join(", ");
        if self.more > 0 {
            target.push_str(&format!(", other actions ×{}", self.more));
        }
        AuditRecord {
            at: now,
            admin: admin.to_string(),
            action: "refused requests".into(),
            target: crate::model::clean_text(&target, 512),
            outcome: format!("{} more refused since {} (after the first, which has its own entry)", self.count(), crate::output::timestamp(self.since)),
        }
    }
}

fn is_refusal(e: &WireError) -> bool {
    matches!(e.code, ErrorCode::PermissionDenied | ErrorCode::Unauthenticated)
}

impl Refusals {
    /// Counts a refusal; returns whether it is the first of its interval
    /// (to be recorded as it is) and any summary now due.
    fn note(&self, admin: &str, part: AuditPart, action: &str, now: u64, interval: u64) -> (bool, Option<(AuditRecord, AuditPart)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let key = if pending.contains_key(admin) || pending.len() < COUNTED_ADMINS { admin } else { OTHERS };
        let Some(p) = pending.get_mut(key) else {
            pending.insert(key.to_string(), Pending { since: now, part, actions: BTreeMap::new(), more: 0 });
            return (true, None);
        };
        if p.actions.contains_key(action) || p.actions.len() < NAMED_ACTIONS {
            *p.actions.entry(action.to_string()).or_default() += 1;
        } else {
            p.more += 1;
        }
        if now.saturating_sub(p.since) < interval {
            return (false, None);
        }
        let summary = (p.summary(key, now), p.part);
        *p = Pending { since: now, part: p.part, actions: BTreeMap::new(), more: 0 };
        (false, Some(summary))
    }

    /// The summaries of intervals that have ended; admins without refusals
    /// in their last interval are forgotten (their next refusal is recorded
    /// as it comes).
    fn due(&self, now: u64, interval: u64) -> Vec<(AuditRecord, AuditPart)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        pending.retain(|admin, p| {
            if now.saturating_sub(p.since) < interval {
                return true;
            }
            if p.count() == 0 {
                return false;
            }
            out.push((p.summary(admin, now), p.part));
            *p = Pending { since: now, part: p.part, actions: BTreeMap::new(), more: 0 };
            true
        });
        out
    }
}

/// Records what `admin` (of `role`, when its certificate is still valid)
/// asked and how it ended. Refusals are summarised ([`Refusals`]). A
/// failure to record is logged; the request's answer stands.
pub async fn record(state: &Coordinator, admin: &str, role: Option<Role>, what: Option<(String, String)>, outcome: Result<(), &WireError>) {
    let Some((action, target)) = what else { return };
    let part = if role == Some(Role::Admin) { AuditPart::Admins } else { AuditPart::Others };
    let now = now_ms();
    if let Err(e) = outcome {
        if is_refusal(e) {
            let interval = u64::try_from(state.config.limits.audit_refusal_summary.as_millis()).unwrap_or(u64::MAX);
            let (first, summary) = state.refusals.note(admin, part, &action, now, interval);
            if let Some((summary, part)) = summary {
                write(state, &summary, part).await;
            }
            if !first {
                return;
            }
        }
    }
    let outcome = match outcome {
        Ok(()) => "ok".to_string(),
        Err(e) => crate::model::clean_text(&format!("{:?}: {}", e.code, e.message), 512),
    };
    write(state, &AuditRecord { at: now, admin: admin.to_string(), action, target, outcome }, part).await;
}

async fn write(state: &Coordinator, entry: &AuditRecord, part: AuditPart) {
    if let Err(e) = state.store.record_audit(entry, part, state.config.limits.audit_retention()).await {
        tracing::error!(error = %e, admin = %printable(&entry.admin, 64), action = %entry.action, "the audit log could not record a request");
    }
}

/// Writes the refusal summaries that are due and prunes the log by age,
/// once per summary interval, until the process ends.
pub async fn keep_periodically(state: std::sync::Arc<Coordinator>) {
    let interval = state.config.limits.audit_refusal_summary;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = now_ms();
        for (summary, part) in state.refusals.due(now, u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)) {
            write(&state, &summary, part).await;
        }
        let pruning = state.clone();
        match tokio::task::spawn_blocking(move || pruning.store.prune_audit(pruning.config.limits.audit_retention(), now)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "old audit entries removed (limits.audit_days, limits.audit_entries)"),
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning the audit log failed"),
            Err(e) => tracing::warn!(error = %e, "pruning the audit log failed"),
        }
    }
}

/// The largest audit answer, in bytes: well inside a frame.
const ANSWER_BUDGET: usize = 6 << 20;

fn within_budget(items: Vec<AuditItem>, newest_first_kept: bool) -> (Vec<v1::AuditEntry>, Option<String>) {
    let mut used = 0;
    let mut out = Vec::new();
    let mut last = None;
    let ordered: Box<dyn Iterator<Item = AuditItem>> = if newest_first_kept { Box::new(items.into_iter().rev()) } else { Box::new(items.into_iter()) };
    for (key, record) in ordered {
        let entry = record.to_wire();
        used += entry.admin.len() + entry.action.len() + entry.target.len() + entry.outcome.len() + 16;
        if used > ANSWER_BUDGET {
            break;
        }
        out.push(entry);
        last = Some(key);
    }
    if newest_first_kept {
        out.reverse();
    }
    (out, last)
}

/// `drover audit`: the newest `limit` entries from `since` on, by `admin`
/// when given, oldest first.
pub fn list(state: &Coordinator, since: Option<u64>, admin: Option<&str>, limit: u32) -> Result<AdminResponse, WireError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX).clamp(1, 10_000);
    let items = state.store.audit_newest(since.unwrap_or(0), limit, |e| admin.is_none_or(|a| e.admin == a))?;
    Ok(AdminResponse::Audit(within_budget(items, true).0))
}

/// `drover audit --export`: a page of the whole log, oldest first, after
/// the position a previous page ended at.
pub fn export(state: &Coordinator, after: Option<&str>, limit: u32) -> Result<AdminResponse, WireError> {
    if let Some(a) = after {
        if a.len() != 41 || !a.bytes().enumerate().all(|(i, b)| if i == 20 { b == b'-' } else { b.is_ascii_digit() }) {
            return Err(WireError::new(ErrorCode::BadRequest, "the audit position must be the `next` of an earlier page"));
        }
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX).clamp(1, 10_000);
    let items = state.store.audit_after(after, limit)?;
    let found = items.len();
    let (entries, last) = within_budget(items, false);
    // A full page, or one cut short by the budget, may have more after it.
    let next = if found == limit || entries.len() < found { last } else { None };
    Ok(AdminResponse::AuditPage { entries, next })
}
