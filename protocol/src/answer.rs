//! Typed answers: each kind of admin answer taken out of its enum in one
//! place, so that no caller matches [`AdminResponse`] (or the S3 and
//! volume answers inside it) with a catch-all arm. `answer.machines()?`
//! is a `Vec<MachineInfo>`, or an [`UnexpectedAnswer`] naming what came.

use crate::v1::*;

/// An answer of another kind than the request names (a coordinator that
/// does not follow the protocol).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected answer from the coordinator: {got} instead of {wanted}")]
pub struct UnexpectedAnswer {
    pub wanted: &'static str,
    pub got: &'static str,
}

macro_rules! answers {
    ($enum:ident { $($variant:ident($ty:ty) => $method:ident),* $(,)? } done: $($done:ident)?; kind: $($all:ident),*) => {
        impl $enum {
            /// The variant's name, for errors.
            pub fn kind(&self) -> &'static str {
                match self {
                    $($enum::$all { .. } => stringify!($all),)*
                }
            }
            $(
                #[doc = concat!("The answer `", stringify!($variant), "`, or what came instead.")]
                pub fn $method(self) -> Result<$ty, UnexpectedAnswer> {
                    match self {
                        $enum::$variant(v) => Ok(v),
                        other => Err(UnexpectedAnswer { wanted: stringify!($variant), got: other.kind() }),
                    }
                }
            )*
            $(
                /// The answer `Done`, or what came instead.
                pub fn $done(self) -> Result<(), UnexpectedAnswer> {
                    match self {
                        $enum::Done => Ok(()),
                        other => Err(UnexpectedAnswer { wanted: "Done", got: other.kind() }),
                    }
                }
            )?
        }
    };
}

answers! {
    AdminResponse {
        Identity(AdminInfo) => identity,
        TokenCreated(CreatedToken) => token_created,
        Tokens(Vec<TokenInfo>) => tokens,
        Machines(Vec<MachineInfo>) => machines,
        Machine(MachineInfo) => machine,
        AdminCreated(IssuedCertificate) => admin_created,
        Admins(Vec<AdminInfo>) => admins,
        Deployed(Vec<DeployedTarget>) => deployed,
        Deployments(Vec<DeploymentInfo>) => deployments,
        Deployment(DeploymentInfo) => deployment,
        MachineDetail(MachineDetail) => machine_detail,
        Rollout(RolloutInfo) => rollout,
        Rollouts(Vec<RolloutInfo>) => rollouts,
        S3(S3Response) => s3,
        Tenant(TenantInfo) => tenant,
        Tenants(Vec<TenantInfo>) => tenants,
        SshKeys(Vec<SshKeyInfo>) => ssh_keys,
        Volumes(VolumeResponse) => volumes,
        BackupChunk(Vec<u8>) => backup_chunk,
        Audit(Vec<AuditEntry>) => audit,
        DeployPlan(Vec<PlannedTarget>) => deploy_plan,
        Provision(ProvisionInfo) => provision,
        Provisions(Vec<ProvisionInfo>) => provisions,
        Fleet(Option<AppliedFleet>) => fleet,
        Problems(Vec<Problem>) => problems,
        Coordinators(Vec<CoordinatorInfo>) => coordinators,
        Nixops4State(StateResponse) => nixops4_state,
        WebLoginLink(WebLoginLink) => web_login_link,
    }
    done: done;
    kind: Done, Identity, TokenCreated, Tokens, Machines, Machine, AdminCreated, Admins, Deployed, Deployments, Deployment, MachineDetail,
        Rollout, Rollouts, S3, Tenant, Tenants, SshKeys, Volumes, BackupChunk, BackupEnd, Audit, DeployPlan, Provision, Provisions, Fleet,
        Problems, AuditPage, Coordinators, Nixops4State, WebLoginLink, MachinesPage
}

impl AdminResponse {
    /// The answer `BackupEnd`: the backup's size and SHA-256 (hex).
    pub fn backup_end(self) -> Result<(u64, String), UnexpectedAnswer> {
        match self {
            AdminResponse::BackupEnd { bytes, sha256 } => Ok((bytes, sha256)),
            other => Err(UnexpectedAnswer { wanted: "BackupEnd", got: other.kind() }),
        }
    }

    /// The answer `MachinesPage`: its machines and where the next page
    /// starts.
    pub fn machines_page(self) -> Result<(Vec<MachineInfo>, Option<MachinesCursor>), UnexpectedAnswer> {
        match self {
            AdminResponse::MachinesPage { machines, next } => Ok((machines, next)),
            other => Err(UnexpectedAnswer { wanted: "MachinesPage", got: other.kind() }),
        }
    }

    /// The answer `AuditPage`: its entries and where the next page starts.
    pub fn audit_page(self) -> Result<(Vec<AuditEntry>, Option<String>), UnexpectedAnswer> {
        match self {
            AdminResponse::AuditPage { entries, next } => Ok((entries, next)),
            other => Err(UnexpectedAnswer { wanted: "AuditPage", got: other.kind() }),
        }
    }
}

answers! {
    S3Response {
        Buckets(Vec<S3Bucket>) => buckets,
        Bucket(S3Bucket) => bucket,
        Keys(Vec<S3Key>) => keys,
        Key(S3Key) => key,
        Cluster(S3Cluster) => cluster,
    }
    done: done;
    kind: Buckets, Bucket, Keys, Key, Done, Cluster
}

answers! {
    StateResponse {
        Document(StateDocument) => document,
        Recorded(RecordedEvent) => recorded,
        Events(Vec<StateEventInfo>) => events,
    }
    done:;
    kind: Document, Recorded, Events
}

answers! {
    VolumeResponse {
        Volume(VolumeInfo) => volume,
        Volumes(Vec<VolumeInfo>) => volumes,
        Snapshots(Vec<SnapshotInfo>) => snapshots,
    }
    done: done;
    kind: Volume, Volumes, Snapshots, Done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_of_the_kind_asked_is_taken_out_and_another_is_named() {
        assert_eq!(AdminResponse::Machines(vec![]).machines(), Ok(vec![]));
        assert_eq!(AdminResponse::Done.machines(), Err(UnexpectedAnswer { wanted: "Machines", got: "Done" }));
        assert_eq!(AdminResponse::Volumes(VolumeResponse::Snapshots(vec![])).volumes().and_then(VolumeResponse::snapshots), Ok(vec![]));
        assert_eq!(AdminResponse::BackupEnd { bytes: 1, sha256: "ab".into() }.backup_end(), Ok((1, "ab".into())));
        assert!(AdminResponse::S3(S3Response::Done).s3().and_then(S3Response::done).is_ok());
        assert_eq!(
            AdminResponse::AuditPage { entries: vec![], next: None }.deployment().expect_err("not a deployment").to_string(),
            "unexpected answer from the coordinator: AuditPage instead of Deployment"
        );
    }
}
