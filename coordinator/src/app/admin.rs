//! Admin requests: the one dispatch. The admin's role, as the records hold
//! it now, is checked before anything else; then every request goes to the
//! handler of its concern. The match is exhaustive, so the compiler says
//! when a new request has no handler.

use drover_protocol::v1::{AdminRequest, AdminResponse, Response};
use drover_protocol::{ErrorCode, WireError};

use crate::authz;
use crate::model::AdminRecord;

use super::{audit, deployments, fleet, machines, provisions, rollouts, s3, tenants, volumes, Coordinator};

/// Answers one admin request and records it in the audit log when it
/// changes something or shows a secret.
pub async fn handle(state: &Coordinator, name: &str, serial: &str, request: AdminRequest) -> Response {
    let what = audit::describe(&request);
    let (role, answer) = match authorize(state, name, serial, &request) {
        Ok(admin) => (Some(admin.role), answer(state, admin, request).await),
        Err(e) => (role_of(state, name, serial), Err(e)),
    };
    audit::record(state, name, role, what, answer.as_ref().map(|_| ())).await;
    match answer {
        Ok(answer) => Response::Admin(answer),
        Err(error) => Response::Error(error),
    }
}

/// `drover backup`: a snapshot of the coordinator's state for an admin
/// (it holds the fleet CA's key), recorded in the audit log.
pub async fn backup(state: &Coordinator, name: &str, serial: &str) -> Result<Vec<u8>, WireError> {
    let request = AdminRequest::Backup;
    let what = audit::describe(&request);
    let (role, outcome) = match authorize(state, name, serial, &request) {
        Ok(admin) => (Some(admin.role), super::backup::write(state).await),
        Err(e) => (role_of(state, name, serial), Err(e)),
    };
    audit::record(state, name, role, what, outcome.as_ref().map(|_| ())).await;
    outcome
}

/// The admin record behind the certificate an admin connected with — its
/// name *and* its serial, as the record is now: a removed admin, or one
/// added again under the same name, has no rights on an old connection —
/// and whether its role allows `request`.
fn authorize(state: &Coordinator, name: &str, serial: &str, request: &AdminRequest) -> Result<AdminRecord, WireError> {
    let admin = state.store.admin(name)?.filter(|a| a.serials.iter().any(|s| s == serial)).ok_or_else(|| {
        WireError::new(ErrorCode::Unauthenticated, "this admin certificate is no longer valid (the admin was removed or its certificate replaced)")
    })?;
    if !authz::allowed(admin.role, request) {
        let need = authz::required_role(request);
        tracing::debug!(role = admin.role.as_str(), need = need.as_str(), "admin request denied");
        return Err(WireError::new(
            ErrorCode::PermissionDenied,
            format!("admin {name} has role {}; this request needs {} or higher", admin.role.as_str(), need.as_str()),
        ));
    }
    Ok(admin)
}

/// The role of the admin behind a certificate that is still valid.
fn role_of(state: &Coordinator, name: &str, serial: &str) -> Option<drover_protocol::v1::Role> {
    state.store.admin(name).ok().flatten().filter(|a| a.serials.iter().any(|s| s == serial)).map(|a| a.role)
}

async fn answer(state: &Coordinator, admin: AdminRecord, request: AdminRequest) -> Result<AdminResponse, WireError> {
    let by = admin.name.as_str();
    let request = machines::resolve_request(state, request)?;
    use AdminRequest as R;
    Ok(match request {
        R::WhoAmI => AdminResponse::Identity(admin.to_wire()),
        R::TokensCreate(spec) => machines::create_token(state, by, spec).await?,
        R::TokensList => machines::tokens(state)?,
        R::TokensRevoke { id } => machines::revoke_token(state, by, &id).await?,
        R::MachinesList { selector } => machines::list(state, &selector)?,
        R::MachinesPage { selector, after, limit } => machines::page(state, &selector, after.as_ref(), limit)?,
        R::MachinesShow { id } => machines::show(state, &id)?,
        R::MachinesDetail { id } => machines::detail(state, &id)?,
        R::MachinesLabel { id, set, remove } => machines::label(state, by, &id, set, remove).await?,
        R::MachinesRevoke { id } => machines::revoke(state, by, &id).await?,
        R::AdminsAdd { name, role, csr_der } => machines::add_admin(state, by, name, role, &csr_der).await?,
        R::AdminsList => machines::admins(state)?,
        R::Deploy(spec) => deployments::deploy(state, by, spec).await?,
        R::DeployDryRun(spec) => deployments::dry_run(state, spec).await?,
        R::MachinesReboot { machine, selector } => deployments::reboot(state, by, machine, selector).await?,
        R::DeploymentsList { machine } => deployments::list(state, machine.as_deref())?,
        R::DeploymentsShow { id } => deployments::show(state, &id)?,
        R::DeploymentsShowMany { ids } => deployments::show_many(state, &ids)?,
        R::RolloutStart(spec) => AdminResponse::Rollout(rollouts::start(state, by, spec).await?),
        R::RolloutStatus { id } => rollouts::status(state, &id)?,
        R::RolloutList => rollouts::list(state)?,
        R::RolloutControl { id, action } => AdminResponse::Rollout(rollouts::control(state, by, &id, action).await?),
        R::DeploymentsOfRollout { id } => rollouts::deployments(state, &id)?,
        R::S3(request) => AdminResponse::S3(s3::handle(state, request).await?),
        R::TenantsCreate(spec) => tenants::create(state, by, spec).await?,
        R::TenantsList => tenants::list(state)?,
        R::TenantsShow { domain, show_password } => tenants::show(state, by, &domain, show_password)?,
        R::TenantsRemove { domain } => tenants::remove(state, by, &domain).await?,
        R::TenantsManagers { domain, add, remove } => tenants::managers(state, by, &domain, add, remove).await?,
        R::AdminsAddKey { name, login, key } => tenants::add_key(state, by, &name, &login, &key).await?,
        R::AdminsRemoveKey { name, fingerprint } => tenants::remove_key(state, by, &name, &fingerprint).await?,
        R::AdminsKeys { name } => tenants::keys(state, name.as_deref())?,
        R::AdminsRemove { name } => tenants::remove_admin(state, by, &name).await?,
        R::Volumes(request) => volumes::handle(state, by, request).await?,
        R::Audit { since, admin, limit } => audit::list(state, since, admin.as_deref(), limit)?,
        R::AuditExport { after, limit } => audit::export(state, after.as_deref(), limit)?,
        R::MachinesProvision(request) => AdminResponse::Provision(provisions::provision(state, request).await?),
        R::ProvisionShow { name } => AdminResponse::Provision(provisions::show(state, &name)?),
        R::Provisions => AdminResponse::Provisions(provisions::list(state)?),
        R::ProvisionsCheck { requests } => AdminResponse::Problems(provisions::check(state, &requests)?),
        R::CoordinatorsList => AdminResponse::Coordinators(super::coordinators::list(state)?),
        R::FleetSave { document } => fleet::save(state, by, document).await?,
        R::FleetShow => fleet::show(state)?,
        R::Nixops4State(request) => super::nixops4::handle(state, by, request).await?,
        R::MachinesDestroy { name, keep_volumes } => AdminResponse::Provision(provisions::destroy(state, by, &name, keep_volumes).await?),
        R::WebLogin => AdminResponse::WebLoginLink(super::web::login_link(state, &admin)?),
        R::Backup => return Err(WireError::new(ErrorCode::BadRequest, "a backup is answered in parts; use `drover backup FILE`")),
    })
}
