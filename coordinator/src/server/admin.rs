//! Admin requests: tokens, machines, admins. Every request is checked
//! against the admin's role as the records hold it now.

use std::time::Duration;

use drover_net::identity::Subject;
use drover_protocol::v1::{AdminRequest, AdminResponse, CreatedToken, Response};
use drover_protocol::{ErrorCode, WireError};

use crate::authz;
use crate::model::{AdminRecord, MachineRecord, TokenRecord};
use crate::registry;
use crate::store::StoreError;
use crate::tenancy::Directory;
use crate::tokens;

use super::{now_ms, wire_error, Coordinator};

/// Lifetime of admin certificates.
pub const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Longest enrollment token lifetime accepted.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

fn invalid(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, msg)
}

/// Checks an admin name: 1-64 letters, digits, `-`, `_`, `.`.
pub fn check_admin_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "admin name {name:?} is invalid: use 1-64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

pub(super) async fn handle(state: &Coordinator, name: &str, request: AdminRequest) -> Response {
    let admin = match state.store.admin(name) {
        Ok(Some(admin)) => admin,
        Ok(None) => {
            return Response::Error(WireError::new(ErrorCode::Unauthenticated, "this admin no longer exists"))
        }
        Err(e) => return Response::Error(wire_error(e)),
    };
    if !authz::allowed(admin.role, &request) {
        let need = authz::required_role(&request);
        tracing::info!(role = admin.role.as_str(), need = need.as_str(), "admin request denied");
        return Response::Error(WireError::new(
            ErrorCode::PermissionDenied,
            format!(
                "admin {name} has role {}; this request needs {} or higher",
                admin.role.as_str(),
                need.as_str()
            ),
        ));
    }
    if let AdminRequest::DeployWithBuckets { mut spec, buckets } = request {
        if let Err(e) = crate::deploy::validate(&spec).and_then(|()| crate::s3::provision::check(&buckets)) {
            return Response::Error(invalid(e));
        }
        // Nothing is made for a deployment that has no target.
        if let Err(e) = targets(state, &spec) {
            return Response::Error(e);
        }
        if let Err(e) = crate::s3::provision::provision(state, &mut spec, &buckets).await {
            tracing::info!(code = ?e.code, reason = %e.message, "deployment refused: its buckets are not ready");
            return Response::Error(WireError::new(e.code, format!("deployment refused, nothing recorded: {}", e.message)));
        }
        return match run(state, &admin, AdminRequest::Deploy(spec)) {
            Ok(answer) => Response::Admin(answer),
            Err(error) => Response::Error(error),
        };
    }
    if let AdminRequest::RolloutStartWithBuckets { mut spec, buckets } = request {
        if let Err(e) = crate::s3::provision::check(&buckets) {
            return Response::Error(invalid(e));
        }
        if let Err(e) = crate::s3::provision::provision(state, &mut spec.deploy, &buckets).await {
            return Response::Error(WireError::new(e.code, format!("rollout refused, nothing recorded: {}", e.message)));
        }
        return match crate::rollout::service::start(state, spec).await {
            Ok(info) => Response::Admin(AdminResponse::Rollout(info)),
            Err(e) => Response::Error(e),
        };
    }
    if super::tenants::handles(&request) {
        return match super::tenants::handle(state, &admin, &request) {
            Ok(answer) => Response::Admin(answer),
            Err(e) => Response::Error(e),
        };
    }
    if let AdminRequest::S3(request) = request {
        return match crate::s3::service::handle(state, request).await {
            Ok(answer) => Response::Admin(AdminResponse::S3(answer)),
            Err(e) => Response::Error(e),
        };
    }
    if let AdminRequest::RolloutStart(spec) = request {
        return match crate::rollout::service::start(state, spec).await {
            Ok(info) => Response::Admin(AdminResponse::Rollout(info)),
            Err(e) => Response::Error(e),
        };
    }
    match run(state, &admin, request) {
        Ok(answer) => Response::Admin(answer),
        Err(error) => Response::Error(error),
    }
}

/// The machines a deployment targets: one by id, or all matching the selector
/// (revoked ones never).
fn targets(state: &Coordinator, spec: &drover_protocol::v1::DeploySpec) -> Result<Vec<MachineRecord>, WireError> {
    let store = &state.store;
    let targets: Vec<MachineRecord> = match &spec.machine {
        Some(id) => {
            let m = store
                .machine(id)
                .map_err(wire_error)?
                .ok_or_else(|| wire_error(StoreError::NotFound { what: "machine", id: id.clone() }))?;
            if m.revoked_at.is_some() {
                return Err(wire_error(StoreError::Revoked(id.clone())));
            }
            vec![m]
        }
        None => store
            .machines()
            .map_err(wire_error)?
            .into_iter()
            .filter(|m| m.revoked_at.is_none() && registry::matches(&m.labels, &spec.selector))
            .collect(),
    };
    if targets.is_empty() {
        return Err(WireError::new(ErrorCode::NotFound, "no machine matches the selector; see `drover machines list`"));
    }
    Ok(targets)
}

fn run(state: &Coordinator, admin: &AdminRecord, request: AdminRequest) -> Result<AdminResponse, WireError> {
    let store = &state.store;
    let fail = wire_error;
    let now = now_ms();
    let interval = state.config.health_interval;
    Ok(match request {
        AdminRequest::WhoAmI => AdminResponse::Identity(admin.to_wire()),
        AdminRequest::TokensCreate(spec) => {
            registry::check_labels(&spec.labels).map_err(invalid)?;
            if spec.uses == 0 {
                return Err(invalid("a token needs at least one use (--uses 1 or more)"));
            }
            let ttl = Duration::from_millis(spec.ttl_ms);
            if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
                return Err(invalid("token lifetime must be between 1ms and 365 days (--ttl)"));
            }
            let (text, hash) = tokens::generate();
            let id_bytes: [u8; 4] = rand::random();
            let record = TokenRecord {
                id: format!("t-{}", hex::encode(id_bytes)),
                hash,
                labels: spec.labels,
                created_at: now,
                expires_at: now.saturating_add(spec.ttl_ms),
                uses_total: spec.uses,
                uses_left: spec.uses,
                revoked: false,
            };
            store.insert_token(&record).map_err(fail)?;
            tracing::info!(token = %record.id, uses = record.uses_total, by = %admin.name, "enrollment token created");
            AdminResponse::TokenCreated(CreatedToken {
                info: record.to_wire(),
                token: text,
            })
        }
        AdminRequest::TokensList => {
            let mut tokens = store.tokens().map_err(fail)?;
            tokens.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            AdminResponse::Tokens(tokens.iter().map(TokenRecord::to_wire).collect())
        }
        AdminRequest::TokensRevoke { id } => {
            store.revoke_token(&id).map_err(fail)?;
            tracing::info!(token = %id, by = %admin.name, "enrollment token revoked");
            AdminResponse::Done
        }
        AdminRequest::MachinesList { selector } => {
            let mut machines: Vec<_> = store
                .machines()
                .map_err(fail)?
                .into_iter()
                .filter(|m| registry::matches(&m.labels, &selector))
                .map(|m| registry::to_wire(&m, now, interval))
                .collect();
            machines.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
            AdminResponse::Machines(machines)
        }
        AdminRequest::MachinesShow { id } => {
            let machine = store.machine(&id).map_err(fail)?.ok_or_else(|| {
                fail(StoreError::NotFound { what: "machine", id: id.clone() })
            })?;
            AdminResponse::Machine(registry::to_wire(&machine, now, interval))
        }
        AdminRequest::MachinesLabel { id, set, remove } => {
            registry::check_labels(&set).map_err(invalid)?;
            let machine = store
                .update_machine(&id, &|m| {
                    for key in &remove {
                        m.labels.remove(key);
                    }
                    m.labels.extend(set.clone());
                    Ok(())
                })
                .map_err(fail)?;
            tracing::info!(machine = %id, by = %admin.name, "machine labels changed");
            AdminResponse::Machine(registry::to_wire(&machine, now, interval))
        }
        AdminRequest::MachinesRevoke { id } => {
            let machine = store
                .update_machine(&id, &|m| {
                    m.revoked_at.get_or_insert(now);
                    Ok(())
                })
                .map_err(fail)?;
            let closed = state
                .live
                .close_machine(&id, ErrorCode::Revoked, &format!("machine {id} was revoked"));
            tracing::info!(machine = %id, by = %admin.name, closed, "machine revoked");
            AdminResponse::Machine(registry::to_wire(&machine, now, interval))
        }
        AdminRequest::AdminsAdd { name, role, csr_der } => {
            check_admin_name(&name).map_err(invalid)?;
            if store.admin(&name).map_err(fail)?.is_some() {
                return Err(WireError::new(ErrorCode::Conflict, format!("admin {name:?} already exists")));
            }
            let issued = state
                .ca
                .sign_client(&csr_der, &Subject::Admin(name.clone()), ADMIN_CERT_LIFETIME)
                .map_err(|e| WireError::new(ErrorCode::BadCsr, e.to_string()))?;
            store
                .insert_admin(&AdminRecord {
                    name: name.clone(),
                    role,
                    created_at: now,
                    serials: vec![issued.serial.clone()],
                    ssh_keys: Vec::new(),
                })
                .map_err(fail)?;
            tracing::info!(admin = %name, role = role.as_str(), by = %admin.name, "admin added");
            AdminResponse::AdminCreated(issued)
        }
        AdminRequest::Deploy(spec) => {
            crate::deploy::validate(&spec).map_err(invalid)?;
            let targets = targets(state, &spec)?;
            let directory = Directory::load(store.as_ref()).map_err(fail)?;
            directory.check_spec(&spec, &targets).map_err(invalid)?;
            let ids: Vec<String> = targets.into_iter().map(|m| m.id).collect();
            let deployed = store
                .record_generation(&ids, &|m, g| crate::deploy::build(&spec, m, g, now, &directory.extras(m)))
                .map_err(fail)?;
            for t in &deployed {
                state.live.notify(&t.machine_id, t.generation);
            }
            tracing::info!(machines = deployed.len(), by = %admin.name, "deployment recorded");
            AdminResponse::Deployed(deployed)
        }
        AdminRequest::DeploymentsList { machine } => {
            AdminResponse::Deployments(store.deployments(machine.as_deref()).map_err(fail)?)
        }
        AdminRequest::DeploymentsShow { id } => {
            let not_found = || fail(StoreError::NotFound { what: "deployment", id: id.clone() });
            let (machine, generation) = crate::model::parse_deployment_id(&id).ok_or_else(not_found)?;
            let d = store.deployment(&machine, generation).map_err(fail)?.ok_or_else(not_found)?;
            AdminResponse::Deployment(d)
        }
        AdminRequest::MachinesDetail { id } => {
            let m = store.machine(&id).map_err(fail)?.ok_or_else(|| {
                fail(StoreError::NotFound { what: "machine", id: id.clone() })
            })?;
            AdminResponse::MachineDetail(drover_protocol::v1::MachineDetail {
                machine: registry::to_wire(&m, now, interval),
                desired_generation: m.desired_generation,
                current_generation: m.current_generation,
                current_system: m.current_system.clone(),
            })
        }
        AdminRequest::RolloutStart(_)
        | AdminRequest::S3(_)
        | AdminRequest::DeployWithBuckets { .. }
        | AdminRequest::RolloutStartWithBuckets { .. }
        | AdminRequest::TenantsCreate(_)
        | AdminRequest::TenantsList
        | AdminRequest::TenantsShow { .. }
        | AdminRequest::TenantsRemove { .. }
        | AdminRequest::TenantsManagers { .. }
        | AdminRequest::AdminsAddKey { .. }
        | AdminRequest::AdminsRemoveKey { .. }
        | AdminRequest::AdminsKeys { .. }
        | AdminRequest::AdminsRemove { .. } => {
            unreachable!("handled before run")
        }
        AdminRequest::RolloutStatus { id } => {
            let r = store.rollout(&id).map_err(fail)?.ok_or_else(|| {
                WireError::new(ErrorCode::NotFound, format!("rollout {id:?} not found; see `drover rollout list`"))
            })?;
            AdminResponse::Rollout(crate::rollout::service::to_wire(state, &r, None))
        }
        AdminRequest::RolloutList => AdminResponse::Rollouts(
            store
                .rollouts()
                .map_err(fail)?
                .iter()
                .map(|r| crate::rollout::service::to_wire(state, r, None))
                .collect(),
        ),
        AdminRequest::RolloutControl { id, action } => {
            AdminResponse::Rollout(crate::rollout::service::control(state, &id, action)?)
        }
        AdminRequest::DeploymentsOfRollout { id } => {
            let r = store.rollout(&id).map_err(fail)?.ok_or_else(|| {
                WireError::new(ErrorCode::NotFound, format!("rollout {id:?} not found; see `drover rollout list`"))
            })?;
            let mut out = Vec::new();
            for (machine, e) in &r.state.machines {
                for g in [e.generation, e.revert_generation].into_iter().flatten() {
                    if let Some(d) = store.deployment(machine, g).map_err(fail)? {
                        out.push(d);
                    }
                }
            }
            out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            AdminResponse::Deployments(out)
        }
        AdminRequest::AdminsList => {
            let mut admins = store.admins().map_err(fail)?;
            admins.sort_by(|a, b| a.name.cmp(&b.name));
            AdminResponse::Admins(admins.iter().map(AdminRecord::to_wire).collect())
        }
    })
}
