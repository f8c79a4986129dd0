//! Admin requests about tenants and admins' SSH keys. What they change
//! reaches machines with their next generation (see [`crate::tenancy`]).

use std::collections::BTreeMap;

use drover_protocol::v1::{AdminRequest, AdminResponse, Role, Secret, TenantInfo, TenantSpec};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{AdminRecord, SshKeyRecord, TenantRecord};
use crate::store::StoreError;
use crate::tenancy::{self, TENANT_LABEL};

use super::{now_ms, wire_error, Coordinator};

fn invalid(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, msg)
}

fn no_admin(name: &str) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("no admin named {name:?}; see `drover admins list`"))
}

fn no_tenant(domain: &str) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("no tenant {domain:?}; see `drover tenants list`"))
}

/// How many machines (not revoked) carry each tenant label.
fn machine_counts(state: &Coordinator) -> Result<BTreeMap<String, u32>, WireError> {
    let mut counts = BTreeMap::new();
    for m in state.store.machines().map_err(wire_error)? {
        if let (None, Some(domain)) = (m.revoked_at, m.labels.get(TENANT_LABEL)) {
            *counts.entry(domain.clone()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

fn machine_count(state: &Coordinator, domain: &str) -> Result<u32, WireError> {
    Ok(machine_counts(state)?.get(domain).copied().unwrap_or(0))
}

fn info(t: &TenantRecord, machines: u32, show_password: bool) -> TenantInfo {
    TenantInfo {
        domain: t.domain.clone(),
        admin_email: t.admin_email.clone(),
        admin_user: t.admin_user.clone(),
        managers: t.managers.iter().cloned().collect(),
        created_at: t.created_at,
        machines,
        admin_password: show_password.then(|| t.admin_password.clone()),
    }
}

/// One tenant with its machine count.
fn one(state: &Coordinator, t: &TenantRecord, show_password: bool) -> Result<TenantInfo, WireError> {
    Ok(info(t, machine_count(state, &t.domain)?, show_password))
}

/// Every name in `names` is a recorded admin.
fn check_admins_exist(state: &Coordinator, names: &[String]) -> Result<(), WireError> {
    for name in names {
        if state.store.admin(name).map_err(wire_error)?.is_none() {
            return Err(no_admin(name));
        }
    }
    Ok(())
}

fn create(state: &Coordinator, spec: TenantSpec) -> Result<TenantRecord, WireError> {
    tenancy::check_domain(&spec.domain).map_err(invalid)?;
    tenancy::check_email(&spec.admin_email).map_err(invalid)?;
    tenancy::check_account("--admin-user", &spec.admin_user).map_err(invalid)?;
    check_admins_exist(state, &spec.managers)?;
    let record = TenantRecord {
        domain: spec.domain,
        admin_email: spec.admin_email,
        admin_user: spec.admin_user,
        admin_password: Secret::new(tenancy::generate_password()),
        managers: spec.managers.into_iter().collect(),
        created_at: now_ms(),
    };
    state.store.insert_tenant(&record).map_err(|e| match e {
        StoreError::Conflict(_) => WireError::new(
            ErrorCode::Conflict,
            format!("tenant {} already exists; see `drover tenants show {}`", record.domain, record.domain),
        ),
        other => wire_error(other),
    })?;
    Ok(record)
}

/// Whether [`handle`] answers `request`.
pub(super) fn handles(request: &AdminRequest) -> bool {
    matches!(
        request,
        AdminRequest::TenantsCreate(_)
            | AdminRequest::TenantsList
            | AdminRequest::TenantsShow { .. }
            | AdminRequest::TenantsRemove { .. }
            | AdminRequest::TenantsManagers { .. }
            | AdminRequest::AdminsAddKey { .. }
            | AdminRequest::AdminsRemoveKey { .. }
            | AdminRequest::AdminsKeys { .. }
            | AdminRequest::AdminsRemove { .. }
    )
}

/// Answers a tenant or SSH-key request.
pub(super) fn handle(state: &Coordinator, admin: &AdminRecord, request: &AdminRequest) -> Result<AdminResponse, WireError> {
    let store = &state.store;
    Ok(match request {
        AdminRequest::TenantsCreate(spec) => {
            let record = create(state, spec.clone())?;
            tracing::info!(tenant = %record.domain, by = %admin.name, "tenant created");
            AdminResponse::Tenant(one(state, &record, false)?)
        }
        AdminRequest::TenantsList => {
            let counts = machine_counts(state)?;
            let tenants = store.tenants().map_err(wire_error)?;
            AdminResponse::Tenants(
                tenants.iter().map(|t| info(t, counts.get(&t.domain).copied().unwrap_or(0), false)).collect(),
            )
        }
        AdminRequest::TenantsShow { domain, show_password } => {
            let t = store.tenant(domain).map_err(wire_error)?.ok_or_else(|| no_tenant(domain))?;
            if *show_password {
                tracing::info!(tenant = %domain, by = %admin.name, "tenant admin password shown");
            }
            AdminResponse::Tenant(one(state, &t, *show_password)?)
        }
        AdminRequest::TenantsRemove { domain } => {
            store.tenant(domain).map_err(wire_error)?.ok_or_else(|| no_tenant(domain))?;
            let n = machine_count(state, domain)?;
            if n > 0 {
                return Err(WireError::new(
                    ErrorCode::Conflict,
                    format!(
                        "{n} machine(s) are labelled tenant={domain}; revoke them or change their label first \
                         (`drover machines list --selector tenant={domain}`)"
                    ),
                ));
            }
            store.remove_tenant(domain).map_err(wire_error)?;
            tracing::info!(tenant = %domain, by = %admin.name, "tenant removed");
            AdminResponse::Done
        }
        AdminRequest::TenantsManagers { domain, add, remove } => {
            check_admins_exist(state, add)?;
            let t = store
                .update_tenant(domain, &|t| {
                    t.managers.extend(add.iter().cloned());
                    for name in remove {
                        t.managers.remove(name);
                    }
                    Ok(())
                })
                .map_err(|e| match e {
                    StoreError::NotFound { .. } => no_tenant(domain),
                    other => wire_error(other),
                })?;
            tracing::info!(tenant = %domain, managers = ?t.managers, by = %admin.name, "tenant managers changed");
            AdminResponse::Tenant(one(state, &t, false)?)
        }
        AdminRequest::AdminsAddKey { name, login, key } => {
            tenancy::check_account("--login", login).map_err(invalid)?;
            let parsed = tenancy::parse_ssh_key(key).map_err(invalid)?;
            let now = now_ms();
            let record = SshKeyRecord {
                login: login.clone(),
                key: parsed.key,
                fingerprint: parsed.fingerprint,
                algorithm: parsed.algorithm,
                comment: parsed.comment,
                added_at: now,
            };
            let updated = store
                .update_admin(name, &|a| {
                    if a.ssh_keys.iter().any(|k| k.fingerprint == record.fingerprint && k.login == record.login) {
                        return Err(StoreError::Conflict(format!(
                            "admin {name} already has key {} for login {}",
                            record.fingerprint, record.login
                        )));
                    }
                    a.ssh_keys.push(record.clone());
                    Ok(())
                })
                .map_err(|e| match e {
                    StoreError::NotFound { .. } => no_admin(name),
                    other => wire_error(other),
                })?;
            tracing::info!(admin = %name, fingerprint = %record.fingerprint, login = %login, by = %admin.name, "SSH key added");
            AdminResponse::SshKeys(updated.ssh_keys.iter().map(|k| k.to_wire(name)).collect())
        }
        AdminRequest::AdminsRemoveKey { name, fingerprint } => {
            let updated = store
                .update_admin(name, &|a| {
                    let before = a.ssh_keys.len();
                    a.ssh_keys.retain(|k| &k.fingerprint != fingerprint);
                    if a.ssh_keys.len() == before {
                        return Err(StoreError::NotFound { what: "SSH key", id: fingerprint.clone() });
                    }
                    Ok(())
                })
                .map_err(|e| match e {
                    StoreError::NotFound { what: "admin", .. } => no_admin(name),
                    StoreError::NotFound { .. } => WireError::new(
                        ErrorCode::NotFound,
                        format!("admin {name} has no key {fingerprint}; see `drover admins keys {name}`"),
                    ),
                    other => wire_error(other),
                })?;
            tracing::info!(admin = %name, fingerprint = %fingerprint, by = %admin.name, "SSH key removed");
            AdminResponse::SshKeys(updated.ssh_keys.iter().map(|k| k.to_wire(name)).collect())
        }
        AdminRequest::AdminsKeys { name } => {
            let admins = match name {
                Some(n) => vec![store.admin(n).map_err(wire_error)?.ok_or_else(|| no_admin(n))?],
                None => store.admins().map_err(wire_error)?,
            };
            AdminResponse::SshKeys(
                admins.iter().flat_map(|a| a.ssh_keys.iter().map(|k| k.to_wire(&a.name))).collect(),
            )
        }
        AdminRequest::AdminsRemove { name } => {
            let target = store.admin(name).map_err(wire_error)?.ok_or_else(|| no_admin(name))?;
            if target.role == Role::Admin {
                let admins = store.admins().map_err(wire_error)?;
                if admins.iter().filter(|a| a.role == Role::Admin).count() <= 1 {
                    return Err(WireError::new(
                        ErrorCode::Conflict,
                        format!("{name} is the last admin with the admin role; add another first (`drover admins add`)"),
                    ));
                }
            }
            store.remove_admin(name).map_err(wire_error)?;
            tracing::info!(admin = %name, by = %admin.name, "admin removed");
            AdminResponse::Done
        }
        _ => return Err(WireError::new(ErrorCode::BadRequest, "not a tenant or SSH key request")),
    })
}
