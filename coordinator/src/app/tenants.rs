//! Admin requests about tenants, admins' SSH keys and removing admins. What
//! they change reaches machines with their next generation (see
//! [`crate::tenancy`]).

use std::collections::BTreeMap;

use drover_protocol::v1::{AdminResponse, Role, Secret, TenantInfo, TenantSpec};
use drover_protocol::{ErrorCode, WireError};

use crate::model::{AdminRecord, SshKeyRecord, TenantRecord};
use crate::tenancy::{self, TENANT_LABEL};

use super::errors::{conflict, invalid, not_found};
use super::{now_ms, Coordinator};

fn no_admin(name: &str) -> WireError {
    not_found(format!("no admin named {name:?}; see `drover admins list`"))
}

fn no_tenant(domain: &str) -> WireError {
    not_found(format!("no tenant {domain:?}; see `drover tenants list`"))
}

/// A store's "not found" in the words of this module.
fn named(e: WireError, missing: impl FnOnce() -> WireError) -> WireError {
    if e.code == ErrorCode::NotFound {
        missing()
    } else {
        e
    }
}

/// How many machines (not revoked) carry each tenant label.
fn machine_counts(state: &Coordinator) -> Result<BTreeMap<String, u32>, WireError> {
    let mut counts = BTreeMap::new();
    for m in state.store.machines()? {
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
fn one(state: &Coordinator, t: &TenantRecord, show_password: bool) -> Result<AdminResponse, WireError> {
    Ok(AdminResponse::Tenant(info(t, machine_count(state, &t.domain)?, show_password)))
}

/// Every name in `names` is a recorded admin.
fn check_admins_exist(state: &Coordinator, names: &[String]) -> Result<(), WireError> {
    for name in names {
        if state.store.admin(name)?.is_none() {
            return Err(no_admin(name));
        }
    }
    Ok(())
}

pub async fn create(state: &Coordinator, by: &str, spec: TenantSpec) -> Result<AdminResponse, WireError> {
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
    let d = &record.domain;
    state
        .store
        .commit(|tx| tx.insert_new(d.as_bytes(), &record, || format!("tenant {d} already exists; see `drover tenants show {d}`")))
        .await
        .map_err(WireError::from)?;
    tracing::info!(tenant = %record.domain, by, "tenant created");
    one(state, &record, false)
}

pub fn list(state: &Coordinator) -> Result<AdminResponse, WireError> {
    let counts = machine_counts(state)?;
    let tenants = state.store.tenants()?;
    Ok(AdminResponse::Tenants(tenants.iter().map(|t| info(t, counts.get(&t.domain).copied().unwrap_or(0), false)).collect()))
}

pub fn show(state: &Coordinator, by: &str, domain: &str, show_password: bool) -> Result<AdminResponse, WireError> {
    let t = state.store.tenant(domain)?.ok_or_else(|| no_tenant(domain))?;
    if show_password {
        tracing::info!(tenant = %domain, by, "tenant admin password shown");
    }
    one(state, &t, show_password)
}

pub async fn remove(state: &Coordinator, by: &str, domain: &str) -> Result<AdminResponse, WireError> {
    state.store.tenant(domain)?.ok_or_else(|| no_tenant(domain))?;
    let n = machine_count(state, domain)?;
    if n > 0 {
        return Err(conflict(format!(
            "{n} machine(s) are labelled tenant={domain}; revoke them or change their label first \
             (`drover machines list --selector tenant={domain}`)"
        )));
    }
    state.store.commit(|tx| tx.remove::<TenantRecord>(domain.as_bytes())?.map(|_| ()).ok_or_else(|| no_tenant(domain))).await?;
    tracing::info!(tenant = %domain, by, "tenant removed");
    Ok(AdminResponse::Done)
}

pub async fn managers(state: &Coordinator, by: &str, domain: &str, add: Vec<String>, remove: Vec<String>) -> Result<AdminResponse, WireError> {
    check_admins_exist(state, &add)?;
    let t = state
        .store
        .update::<TenantRecord, WireError>(domain.as_bytes(), |t| {
            t.managers.extend(add.iter().cloned());
            for name in &remove {
                t.managers.remove(name);
            }
            Ok(())
        })
        .await
        .map_err(|e| named(e, || no_tenant(domain)))?;
    tracing::info!(tenant = %domain, managers = ?t.managers, by, "tenant managers changed");
    one(state, &t, false)
}

fn keys_of(admin: &AdminRecord) -> AdminResponse {
    AdminResponse::SshKeys(admin.ssh_keys.iter().map(|k| k.to_wire(&admin.name)).collect())
}

pub async fn add_key(state: &Coordinator, by: &str, name: &str, login: &str, key: &str) -> Result<AdminResponse, WireError> {
    tenancy::check_account("--login", login).map_err(invalid)?;
    let parsed = tenancy::parse_ssh_key(key).map_err(invalid)?;
    let record = SshKeyRecord {
        login: login.to_string(),
        key: parsed.key,
        fingerprint: parsed.fingerprint,
        algorithm: parsed.algorithm,
        comment: parsed.comment,
        added_at: now_ms(),
    };
    let updated = state
        .store
        .update::<AdminRecord, WireError>(name.as_bytes(), |a| {
            if a.ssh_keys.iter().any(|k| k.fingerprint == record.fingerprint && k.login == record.login) {
                return Err(conflict(format!("admin {name} already has key {} for login {}", record.fingerprint, record.login)));
            }
            a.ssh_keys.push(record.clone());
            Ok(())
        })
        .await
        .map_err(|e| named(e, || no_admin(name)))?;
    tracing::info!(admin = %name, fingerprint = %record.fingerprint, %login, by, "SSH key added");
    Ok(keys_of(&updated))
}

pub async fn remove_key(state: &Coordinator, by: &str, name: &str, fingerprint: &str) -> Result<AdminResponse, WireError> {
    state.store.admin(name)?.ok_or_else(|| no_admin(name))?;
    let updated = state
        .store
        .update::<AdminRecord, WireError>(name.as_bytes(), |a| {
            let before = a.ssh_keys.len();
            a.ssh_keys.retain(|k| k.fingerprint != fingerprint);
            if a.ssh_keys.len() == before {
                return Err(not_found(format!("admin {name} has no key {fingerprint}; see `drover admins keys {name}`")));
            }
            Ok(())
        })
        .await?;
    tracing::info!(admin = %name, %fingerprint, by, "SSH key removed");
    Ok(keys_of(&updated))
}

pub fn keys(state: &Coordinator, name: Option<&str>) -> Result<AdminResponse, WireError> {
    let admins = match name {
        Some(n) => vec![state.store.admin(n)?.ok_or_else(|| no_admin(n))?],
        None => state.store.admins()?,
    };
    Ok(AdminResponse::SshKeys(admins.iter().flat_map(|a| a.ssh_keys.iter().map(|k| k.to_wire(&a.name))).collect()))
}

/// Removes an admin and takes it off every tenant it managed, together;
/// the last admin with the admin role stays.
pub async fn remove_admin(state: &Coordinator, by: &str, name: &str) -> Result<AdminResponse, WireError> {
    let target = state.store.admin(name)?.ok_or_else(|| no_admin(name))?;
    if target.role == Role::Admin && state.store.admins()?.iter().filter(|a| a.role == Role::Admin).count() <= 1 {
        return Err(conflict(format!("{name} is the last admin with the admin role; add another first (`drover admins add`)")));
    }
    let domains: Vec<String> = state.store.tenants()?.into_iter().map(|t| t.domain).collect();
    state
        .store
        .commit(|tx| {
            tx.remove::<AdminRecord>(name.as_bytes())?.ok_or_else(|| no_admin(name))?;
            for domain in &domains {
                if let Some(mut tenant) = tx.get::<TenantRecord>(domain.as_bytes())? {
                    if tenant.managers.remove(name) {
                        tx.put(domain.as_bytes(), &tenant)?;
                    }
                }
            }
            Ok::<_, WireError>(())
        })
        .await?;
    let closed = state.live.close_admin(name, drover_protocol::ErrorCode::Unauthenticated, "this admin was removed");
    tracing::info!(admin = %name, by, closed, "admin removed; its connections closed");
    Ok(AdminResponse::Done)
}
