//! Which admin role each admin request needs. Viewers read; operators run the
//! fleet (tokens, labels, revocations); admins also manage admins.

use drover_protocol::v1::{AdminRequest, Role, S3Request, StateRequest, VolumeRequest};

pub fn required_role(request: &AdminRequest) -> Role {
    match request {
        AdminRequest::WhoAmI
        | AdminRequest::TokensList
        | AdminRequest::MachinesList { .. }
        | AdminRequest::MachinesPage { .. }
        | AdminRequest::MachinesShow { .. }
        | AdminRequest::AdminsList
        | AdminRequest::DeploymentsList { .. }
        | AdminRequest::DeploymentsShow { .. }
        | AdminRequest::DeploymentsShowMany { .. }
        | AdminRequest::MachinesDetail { .. }
        | AdminRequest::RolloutStatus { .. }
        | AdminRequest::RolloutList
        | AdminRequest::DeploymentsOfRollout { .. }
        | AdminRequest::S3(
            S3Request::BucketsList
            | S3Request::BucketShow { .. }
            | S3Request::KeysList
            | S3Request::KeyShow { show_secret: false, .. }
            | S3Request::ClusterStatus,
        )
        | AdminRequest::Volumes(VolumeRequest::List | VolumeRequest::Show { .. } | VolumeRequest::Snapshots { prune: false, .. })
        | AdminRequest::TenantsList
        | AdminRequest::TenantsShow { show_password: false, .. }
        | AdminRequest::AdminsKeys { .. }
        | AdminRequest::Audit { .. }
        | AdminRequest::AuditExport { .. }
        | AdminRequest::CoordinatorsList
        | AdminRequest::ProvisionShow { .. }
        | AdminRequest::Provisions
        | AdminRequest::FleetShow
        | AdminRequest::Nixops4State(StateRequest::Read { .. } | StateRequest::Events { .. })
        | AdminRequest::ProvisionsCheck { .. }
        // The page shows what a viewer may read; its link is the admin's own.
        | AdminRequest::WebLogin => Role::Viewer,
        // Who may log in to machines is decided by admins only.
        AdminRequest::TenantsCreate(spec) if !spec.managers.is_empty() => Role::Admin,
        // Taking over storage someone else made, and formatting over data
        // the blank rule protects, are admins' decisions.
        AdminRequest::Volumes(VolumeRequest::Adopt { .. } | VolumeRequest::AllowFormat { .. }) => Role::Admin,
        AdminRequest::TokensCreate(_)
        | AdminRequest::TokensRevoke { .. }
        | AdminRequest::MachinesLabel { .. }
        | AdminRequest::MachinesRevoke { .. }
        | AdminRequest::Deploy(_)
        | AdminRequest::DeployDryRun(_)
        | AdminRequest::MachinesReboot { .. }
        | AdminRequest::MachinesProvision(_)
        | AdminRequest::MachinesDestroy { .. }
        | AdminRequest::FleetSave { .. }
        | AdminRequest::Nixops4State(_)
        | AdminRequest::RolloutStart(_)
        | AdminRequest::RolloutControl { .. }
        | AdminRequest::S3(_)
        | AdminRequest::Volumes(_)
        | AdminRequest::TenantsCreate(_)
        | AdminRequest::TenantsShow { .. }
        | AdminRequest::TenantsRemove { .. } => Role::Operator,
        AdminRequest::AdminsAdd { .. }
        | AdminRequest::TenantsManagers { .. }
        | AdminRequest::AdminsAddKey { .. }
        | AdminRequest::AdminsRemoveKey { .. }
        | AdminRequest::AdminsRemove { .. }
        // A backup holds the fleet CA's key.
        | AdminRequest::Backup => Role::Admin,
    }
}

/// Whether `role` may make `request`.
pub fn allowed(role: Role, request: &AdminRequest) -> bool {
    role >= required_role(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_read_operators_change_admins_manage_admins() {
        let revoke = AdminRequest::MachinesRevoke { id: "m".into() };
        let list = AdminRequest::MachinesList { selector: Default::default() };
        let add = AdminRequest::AdminsAdd { name: "a".into(), role: Role::Viewer, csr_der: vec![] };
        assert!(allowed(Role::Viewer, &list));
        assert!(!allowed(Role::Viewer, &revoke));
        assert!(allowed(Role::Operator, &revoke));
        assert!(!allowed(Role::Operator, &add));
        assert!(allowed(Role::Admin, &add));
        let key = AdminRequest::AdminsAddKey { name: "op".into(), login: "root".into(), key: String::new() };
        assert!(!allowed(Role::Operator, &key), "an operator cannot grant itself SSH access");
        let tenant = |managers: Vec<String>| {
            AdminRequest::TenantsCreate(drover_protocol::v1::TenantSpec {
                domain: "a.example".into(),
                admin_email: "a@a.example".into(),
                admin_user: "admin".into(),
                managers,
            })
        };
        assert!(allowed(Role::Operator, &tenant(vec![])));
        assert!(!allowed(Role::Operator, &tenant(vec!["op".into()])));
        assert!(!allowed(Role::Viewer, &AdminRequest::TenantsShow { domain: "a.example".into(), show_password: true }));
        assert!(allowed(Role::Viewer, &AdminRequest::TenantsShow { domain: "a.example".into(), show_password: false }));
    }
}
