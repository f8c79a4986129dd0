//! Admin requests about enrollment tokens, machines and admins.

use std::time::Duration;

use drover_net::identity::Subject;
use drover_protocol::v1::{AdminResponse, CreatedToken, Labels, MachineDetail, MachineInfo, MachinesCursor, Role, TokenSpec, MAX_MACHINES_PER_PAGE};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{AdminRecord, MachineRecord, TokenRecord};
use crate::{registry, tokens};

use super::errors::{invalid, not_found};
use super::{now_ms, Coordinator};

/// Lifetime of admin certificates.
pub const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Longest enrollment token lifetime accepted.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Checks an admin name: 1-64 letters, digits, `-`, `_`, `.`.
pub fn check_admin_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("admin name {name:?} is invalid: use 1-64 letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

fn no_machine(id: &str) -> WireError {
    not_found(format!("machine {id:?} not found; see `drover machines list`"))
}

/// A machine by id, or a clear refusal.
pub fn machine(state: &Coordinator, id: &str) -> Result<MachineRecord, WireError> {
    state.store.machine(id)?.ok_or_else(|| no_machine(id))
}

/// The id of the machine `reference` names: its id, the name of the
/// provision that made it, or its hostname when one live machine has it.
pub fn resolve(state: &Coordinator, reference: &str) -> Result<String, WireError> {
    if state.store.machine(reference)?.is_some() {
        return Ok(reference.to_string());
    }
    if let Some(id) = state.store.provision(reference)?.and_then(|p| p.machine_id) {
        return Ok(id);
    }
    let named: Vec<MachineRecord> = state.store.machines()?.into_iter().filter(|m| m.hostname == reference && m.revoked_at.is_none()).collect();
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(no_machine(reference)),
        many => Err(invalid(format!(
            "{} machines are called {reference:?} ({}); name one by its id",
            many.len(),
            many.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// `request` with every machine it names by provision name or hostname
/// named by id, so that every command takes either.
pub fn resolve_request(state: &Coordinator, request: drover_protocol::v1::AdminRequest) -> Result<drover_protocol::v1::AdminRequest, WireError> {
    use drover_protocol::v1::{AdminRequest as R, S3Request, VolumeRequest};
    let id = |r: String| resolve(state, &r);
    Ok(match request {
        R::MachinesShow { id: r } => R::MachinesShow { id: id(r)? },
        R::MachinesDetail { id: r } => R::MachinesDetail { id: id(r)? },
        R::MachinesLabel { id: r, set, remove } => R::MachinesLabel { id: id(r)?, set, remove },
        R::MachinesRevoke { id: r } => R::MachinesRevoke { id: id(r)? },
        R::MachinesReboot { machine, selector } => R::MachinesReboot { machine: machine.map(id).transpose()?, selector },
        R::DeploymentsList { machine } => R::DeploymentsList { machine: machine.map(id).transpose()? },
        R::Deploy(mut spec) => {
            spec.machine = spec.machine.map(id).transpose()?;
            R::Deploy(spec)
        }
        R::DeployDryRun(mut spec) => {
            spec.machine = spec.machine.map(id).transpose()?;
            R::DeployDryRun(spec)
        }
        R::Volumes(VolumeRequest::Attach { name, machine, mount_point, filesystem }) => {
            R::Volumes(VolumeRequest::Attach { name, machine: id(machine)?, mount_point, filesystem })
        }
        R::S3(S3Request::ClusterAddMachine { machine }) => R::S3(S3Request::ClusterAddMachine { machine: id(machine)? }),
        other => other,
    })
}

pub async fn create_token(state: &Coordinator, by: &str, spec: TokenSpec) -> Result<AdminResponse, WireError> {
    registry::check_labels(&spec.labels).map_err(invalid)?;
    if spec.uses == 0 {
        return Err(invalid("a token needs at least one use (--uses 1 or more)"));
    }
    let ttl = Duration::from_millis(spec.ttl_ms);
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(invalid("token lifetime must be between 1ms and 365 days (--ttl)"));
    }
    let now = now_ms();
    let (text, record) = new_token(spec.labels, now, now.saturating_add(spec.ttl_ms), spec.uses, None);
    state.store.commit(|tx| tx.insert_new(record.hash.as_bytes(), &record, || "token already exists".into())).await.map_err(WireError::from)?;
    tracing::info!(token = %record.id, uses = record.uses_total, by, "enrollment token created");
    Ok(AdminResponse::TokenCreated(CreatedToken { info: record.to_wire(), token: text }))
}

/// A fresh token's text and its record (which holds only its hash).
pub fn new_token(labels: Labels, now: u64, expires_at: u64, uses: u32, provision: Option<String>) -> (drover_protocol::v1::Secret, TokenRecord) {
    let (text, hash) = tokens::generate();
    let id_bytes: [u8; 4] = rand::random();
    let record = TokenRecord {
        id: format!("t-{}", hex::encode(id_bytes)),
        hash,
        labels,
        created_at: now,
        expires_at,
        uses_total: uses,
        uses_left: uses,
        revoked: false,
        provision,
    };
    (text, record)
}

/// Marks the token with id `id` revoked; `false` when there is none.
pub async fn revoke_token_id(state: &Coordinator, id: &str) -> Result<bool, WireError> {
    let Some(token) = state.store.tokens()?.into_iter().find(|t| t.id == id) else { return Ok(false) };
    state
        .store
        .update::<TokenRecord, WireError>(token.hash.as_bytes(), |t| {
            t.revoked = true;
            Ok(())
        })
        .await?;
    Ok(true)
}

pub fn tokens(state: &Coordinator) -> Result<AdminResponse, WireError> {
    let mut tokens = state.store.tokens()?;
    tokens.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(AdminResponse::Tokens(tokens.iter().map(TokenRecord::to_wire).collect()))
}

pub async fn revoke_token(state: &Coordinator, by: &str, id: &str) -> Result<AdminResponse, WireError> {
    if !revoke_token_id(state, id).await? {
        return Err(not_found(format!("token {id:?} not found; see `drover tokens list`")));
    }
    tracing::info!(token = %id, by, "enrollment token revoked");
    Ok(AdminResponse::Done)
}

pub fn list(state: &Coordinator, selector: &Labels) -> Result<AdminResponse, WireError> {
    Ok(AdminResponse::Machines(listed(state, selector, None, usize::MAX)?.0))
}

/// A page of [`list`]: at most `limit` machines after `after`.
pub fn page(state: &Coordinator, selector: &Labels, after: Option<&MachinesCursor>, limit: u32) -> Result<AdminResponse, WireError> {
    if limit == 0 || limit > MAX_MACHINES_PER_PAGE {
        return Err(invalid(format!("a page holds 1 to {MAX_MACHINES_PER_PAGE} machines, not {limit}")));
    }
    let (machines, next) = listed(state, selector, after, limit as usize)?;
    Ok(AdminResponse::MachinesPage { machines, next })
}

/// The machines matching `selector`, by hostname then id, after `after`;
/// at most `limit`, and where the next ones start when there are more.
fn listed(
    state: &Coordinator,
    selector: &Labels,
    after: Option<&MachinesCursor>,
    limit: usize,
) -> Result<(Vec<MachineInfo>, Option<MachinesCursor>), WireError> {
    let cursor = |m: &MachineRecord| MachinesCursor { hostname: m.hostname.clone(), id: m.id.clone() };
    let mut records: Vec<MachineRecord> =
        state.store.machines()?.into_iter().filter(|m| registry::matches(&m.labels, selector) && after.is_none_or(|a| cursor(m) > *a)).collect();
    records.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    let next = (records.len() > limit).then(|| cursor(&records[limit - 1]));
    records.truncate(limit);
    let liveness = super::coordinators::liveness(state);
    Ok((records.into_iter().map(|m| liveness.to_wire(&state.live.newest(m))).collect(), next))
}

pub fn show(state: &Coordinator, id: &str) -> Result<AdminResponse, WireError> {
    let m = state.live.newest(machine(state, id)?);
    Ok(AdminResponse::Machine(super::coordinators::liveness(state).to_wire(&m)))
}

pub fn detail(state: &Coordinator, id: &str) -> Result<AdminResponse, WireError> {
    let m = state.live.newest(machine(state, id)?);
    Ok(AdminResponse::MachineDetail(MachineDetail {
        machine: super::coordinators::liveness(state).to_wire(&m),
        desired_generation: m.desired_generation,
        current_generation: m.current_generation,
        current_system: m.current_system.clone(),
    }))
}

pub async fn label(state: &Coordinator, by: &str, id: &str, set: Labels, remove: Vec<String>) -> Result<AdminResponse, WireError> {
    registry::check_labels(&set).map_err(invalid)?;
    let machine = state
        .store
        .update::<MachineRecord, WireError>(id.as_bytes(), |m| {
            for key in &remove {
                m.labels.remove(key);
            }
            m.labels.extend(set.clone());
            Ok(())
        })
        .await?;
    tracing::info!(machine = %id, by, "machine labels changed");
    Ok(AdminResponse::Machine(super::coordinators::liveness(state).to_wire(&state.live.newest(machine))))
}

pub async fn revoke(state: &Coordinator, by: &str, id: &str) -> Result<AdminResponse, WireError> {
    let now = now_ms();
    let machine = state
        .store
        .update::<MachineRecord, WireError>(id.as_bytes(), |m| {
            m.revoked_at.get_or_insert(now);
            Ok(())
        })
        .await?;
    let closed = state.live.close_machine(id, ErrorCode::Revoked, &format!("machine {id} was revoked"));
    tracing::info!(machine = %id, by, closed, "machine revoked");
    Ok(AdminResponse::Machine(registry::to_wire(&state.live.newest(machine), now, state.config.health_interval)))
}

pub async fn add_admin(state: &Coordinator, by: &str, name: String, role: Role, csr_der: &[u8]) -> Result<AdminResponse, WireError> {
    check_admin_name(&name).map_err(invalid)?;
    let taken = || format!("admin {name:?} already exists");
    if state.store.admin(&name)?.is_some() {
        return Err(WireError::new(ErrorCode::Conflict, taken()));
    }
    let issued =
        state.ca.sign_client(csr_der, &Subject::Admin(name.clone()), ADMIN_CERT_LIFETIME).map_err(|e| WireError::new(ErrorCode::BadCsr, e.to_string()))?;
    let record = AdminRecord { name: name.clone(), role, created_at: now_ms(), serials: vec![issued.serial.clone()], ssh_keys: Vec::new() };
    state.store.commit(|tx| tx.insert_new(name.as_bytes(), &record, taken)).await.map_err(WireError::from)?;
    tracing::info!(admin = %name, role = role.as_str(), by, "admin added");
    Ok(AdminResponse::AdminCreated(issued))
}

pub fn admins(state: &Coordinator) -> Result<AdminResponse, WireError> {
    let mut admins = state.store.admins()?;
    admins.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(AdminResponse::Admins(admins.iter().map(AdminRecord::to_wire).collect()))
}
