//! Which admin role each admin request needs. Viewers read; operators run the
//! fleet (tokens, labels, revocations); admins also manage admins.

use drover_protocol::v1::{AdminRequest, Role, S3Request};

pub fn required_role(request: &AdminRequest) -> Role {
    match request {
        AdminRequest::WhoAmI
        | AdminRequest::TokensList
        | AdminRequest::MachinesList { .. }
        | AdminRequest::MachinesShow { .. }
        | AdminRequest::AdminsList
        | AdminRequest::DeploymentsList { .. }
        | AdminRequest::DeploymentsShow { .. }
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
        ) => Role::Viewer,
        AdminRequest::TokensCreate(_)
        | AdminRequest::TokensRevoke { .. }
        | AdminRequest::MachinesLabel { .. }
        | AdminRequest::MachinesRevoke { .. }
        | AdminRequest::Deploy(_)
        | AdminRequest::DeployWithBuckets { .. }
        | AdminRequest::RolloutStartWithBuckets { .. }
        | AdminRequest::RolloutStart(_)
        | AdminRequest::RolloutControl { .. }
        | AdminRequest::S3(_) => Role::Operator,
        AdminRequest::AdminsAdd { .. } => Role::Admin,
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
    }
}
