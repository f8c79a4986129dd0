//! Golden bytes: the encoding of every message is pinned in a file, so a
//! change that would break an older peer fails here. Regenerate deliberately
//! with `DROVER_BLESS=1 cargo test -p drover-protocol --test golden` only when
//! adding a message (old files must keep decoding), or together with a
//! protocol version bump (as for version 2, which folded the `...WithAccess`
//! and `...WithBuckets` messages into their base messages and made rollout
//! phases enums, and version 3, which added volumes to assignments, health
//! reports and deployments; older peers are refused by name at Hello).
//! Version 4 only added messages (backup and audit), so version 3 peers
//! were still served; version 5 added switch goals, `force_switch` and
//! `override_rollout` to deployments and assignments and the boot id,
//! booted and pending systems and the Nix store's space to health reports,
//! and refuses older peers. Version 10 added fields to `VolumeMount` and
//! `DeploymentReport`; peers of 6 to 9 are still served through the older
//! shapes in `drover_protocol::compat`, whose bytes are the files of
//! [`legacy`] (the files of before version 10, unchanged).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use drover_protocol::compat::{self, Versioned};
use drover_protocol::frame::{self, MAX_FRAME_LEN};
use drover_protocol::v1::*;
use drover_protocol::{ErrorCode, VersionRange, WireError};

fn labels() -> Labels {
    BTreeMap::from([("role".to_string(), "web".to_string()), ("tenant".to_string(), "a".to_string())])
}

fn health() -> HealthReport {
    HealthReport {
        hostname: "vm-1".into(),
        uptime_secs: 3600,
        load_average: [0.5, 0.25, 0.125],
        cpu_count: 2,
        cpu_usage_percent: 12.5,
        memory_total_bytes: 1 << 30,
        memory_used_bytes: 1 << 29,
        disks: vec![DiskUsage { mount_point: "/".into(), total_bytes: 1 << 34, available_bytes: 1 << 33 }],
        failed_units: Some(vec!["foo.service".into()]),
        agent_version: "0.1.0".into(),
        system_path: Some("/nix/store/abc-nixos-system".into()),
        boot_id: Some("6c1f0e52-8b1d-4c56-9a3e-0d6b1f2a7c11".into()),
        booted_system: Some("/nix/store/abc-nixos-system".into()),
        pending_system: Some("/nix/store/def-nixos-system".into()),
        nix_store: Some(DiskUsage { mount_point: "/nix/store".into(), total_bytes: 1 << 34, available_bytes: 1 << 32 }),
        addresses: vec!["10.0.2.15".into()],
        volumes: vec![volume_state()],
    }
}

fn volume_state() -> VolumeState {
    VolumeState {
        name: "data".into(),
        mount_point: "/srv/data".into(),
        mounted: true,
        formatted: true,
        filesystem: Some("ext4".into()),
        device_bytes: 400 << 20,
        total_bytes: 320 << 20,
        used_bytes: 1 << 20,
        grow_pending: Some("online resize refused".into()),
        error: None,
    }
}

fn volume_info() -> VolumeInfo {
    VolumeInfo {
        name: "data".into(),
        size_bytes: 400 << 20,
        replicas: vec![ReplicaInfo { node: "n1".into(), disk_state: "UpToDate".into(), diskless: false, in_use: true }],
        attached: Some(VolumeAttachment {
            machine_id: "m-0123456789".into(),
            hostname: "vm-1".into(),
            node: "n1".into(),
            mount_point: "/srv/data".into(),
            filesystem: Filesystem::Xfs,
            generation: 3,
            detaching: None,
        }),
        formatted: true,
        state: Some(volume_state()),
        created_at: 1_700_000_000_000,
    }
}

fn issued() -> IssuedCertificate {
    IssuedCertificate {
        subject: "m-0123456789".into(),
        certificate_der: vec![0x30, 0x82, 0x01, 0x00],
        serial: "0a0b".into(),
        not_after: 1_800_000_000_000,
        lifetime_ms: 604_800_000,
    }
}

fn machine() -> MachineInfo {
    MachineInfo {
        id: "m-0123456789".into(),
        hostname: "vm-1".into(),
        labels: labels(),
        status: MachineStatus::Online,
        enrolled_at: 1_700_000_000_000,
        last_seen: Some(1_700_000_010_000),
        cert_serial: "0a0b".into(),
        cert_not_after: 1_800_000_000_000,
        health: Some(health()),
    }
}

fn token_info() -> TokenInfo {
    TokenInfo {
        id: "t-abcdef12".into(),
        labels: labels(),
        created_at: 1_700_000_000_000,
        expires_at: 1_700_003_600_000,
        uses_total: 1,
        uses_left: 1,
        revoked: false,
    }
}

fn closure() -> SystemSpec {
    SystemSpec::Closure {
        store_path: "/nix/store/abc-nixos-system".into(),
        substituters: vec!["http://127.0.0.1:3902".into()],
        trusted_public_keys: vec!["cache:AAAA".into()],
    }
}

fn assignment() -> Assignment {
    Assignment {
        generation: 3,
        system: closure(),
        secrets: vec![SecretFile { name: "s3".into(), value: SecretBytes::new(b"k".to_vec()), owner: Some("mastodon".into()), group: None, mode: 0o400 }],
        facts_json: "{\"tenant\":\"a\"}".into(),
        checks: vec![
            HealthCheck::Unit { name: "nginx.service".into() },
            HealthCheck::Http { url: "http://127.0.0.1:80/".into() },
            HealthCheck::Tcp { host: "127.0.0.1".into(), port: 22 },
        ],
        health_deadline_ms: 60_000,
        volumes: vec![VolumeMount {
            name: "data".into(),
            device: "/dev/drbd/by-res/data/0".into(),
            mount_point: "/srv/data".into(),
            filesystem: Filesystem::Ext4,
            size_bytes: 20 << 30,
            formatted: false,
            restore_snapshot: Some("pre-r-0a1b2c3d".into()),
            fresh: true,
            overwrite: false,
        }],
        goal: SwitchGoal::Boot,
        force_switch: true,
        reboot: true,
    }
}

fn deployment() -> DeploymentInfo {
    DeploymentInfo {
        id: "d-m-0123456789-3".into(),
        machine_id: "m-0123456789".into(),
        hostname: "vm-1".into(),
        generation: 3,
        system: SystemSpec::Flake { uri: "github:acme/fleet".into(), attribute: "web".into() },
        created_at: 1,
        finished_at: Some(2),
        state: DeploymentState::Failed,
        rolled_back: true,
        steps: vec![StepInfo { step: DeployStep::RolledBack, at: 2, message: "rolled back".into() }],
        output_tail: "error".into(),
        system_path: None,
        secret_names: vec!["s3".into()],
    }
}

fn strategy() -> RolloutStrategy {
    RolloutStrategy {
        canary: 1,
        max_parallel: Amount::Percent(25),
        max_unavailable: Amount::Count(3),
        max_failures: Amount::Count(1),
        healthy_deadline_ms: 300_000,
        min_healthy_time_ms: 10_000,
        progress_deadline_ms: 3_600_000,
        auto_revert: true,
        auto_promote: false,
    }
}

fn rollout() -> RolloutInfo {
    RolloutInfo {
        id: "r-0a1b2c3d".into(),
        phase: RolloutPhase::Rolling,
        paused: false,
        reason: None,
        created_at: 1,
        system: closure(),
        selector: labels(),
        strategy: strategy(),
        phases: vec![(RolloutPhase::Canary, 1), (RolloutPhase::Rolling, 2)],
        machines: vec![RolloutMachine {
            machine_id: "m-0123456789".into(),
            hostname: "vm-1".into(),
            state: RolloutMachineState::Done,
            canary: true,
            generation: Some(4),
            revert_generation: None,
            started_at: Some(1),
            settled_at: Some(2),
            reason: None,
        }],
    }
}

fn tenant() -> TenantInfo {
    TenantInfo {
        domain: "acme.example".into(),
        admin_email: "ops@acme.example".into(),
        admin_user: "admin".into(),
        managers: vec!["alice".into()],
        created_at: 1_700_000_000_000,
        machines: 2,
        admin_password: Some(Secret::new("pw")),
    }
}

fn provision_info() -> ProvisionInfo {
    ProvisionInfo {
        name: "web-1".into(),
        provider: "pve".into(),
        state: ProvisionState::Online,
        vm_id: Some("101".into()),
        machine_id: Some("m-0123456789".into()),
        labels: labels(),
        created_at: 1_700_000_000_000,
        deadline_at: 1_700_000_300_000,
        error: None,
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    vec![
        ("request-hello", Request::Hello(Hello { versions: VersionRange { min: 3, max: 3 }, software: "drover-agent 0.1.0".into() })),
        ("request-enroll", Request::Enroll(EnrollRequest { token: Secret::new("drt_00"), csr_der: vec![1, 2, 3], hostname: "vm-1".into() })),
        ("request-agent-watch", Request::Agent(AgentRequest::Watch)),
        ("request-agent-report", Request::Agent(AgentRequest::Report(health()))),
        ("request-agent-renew", Request::Agent(AgentRequest::Renew { csr_der: vec![4, 5] })),
        ("request-admin-whoami", Request::Admin(AdminRequest::WhoAmI)),
        ("request-admin-tokens-create", Request::Admin(AdminRequest::TokensCreate(TokenSpec { labels: labels(), ttl_ms: 3_600_000, uses: 1 }))),
        ("request-admin-tokens-list", Request::Admin(AdminRequest::TokensList)),
        ("request-admin-tokens-revoke", Request::Admin(AdminRequest::TokensRevoke { id: "t-abcdef12".into() })),
        ("request-admin-machines-list", Request::Admin(AdminRequest::MachinesList { selector: labels() })),
        ("request-admin-machines-show", Request::Admin(AdminRequest::MachinesShow { id: "m-0123456789".into() })),
        ("request-admin-machines-label", Request::Admin(AdminRequest::MachinesLabel { id: "m-0123456789".into(), set: labels(), remove: vec!["old".into()] })),
        ("request-admin-machines-revoke", Request::Admin(AdminRequest::MachinesRevoke { id: "m-0123456789".into() })),
        ("request-admin-admins-add", Request::Admin(AdminRequest::AdminsAdd { name: "alice".into(), role: Role::Viewer, csr_der: vec![9] })),
        ("request-admin-admins-list", Request::Admin(AdminRequest::AdminsList)),
        ("request-agent-fetch-assignment", Request::Agent(AgentRequest::FetchAssignment)),
        (
            "request-agent-report-deployment-v10",
            Request::Agent(AgentRequest::ReportDeployment(DeploymentReport {
                generation: 3,
                step: DeployStep::Switched,
                message: "ok".into(),
                output_tail: "tail".into(),
                system_path: Some("/nix/store/abc".into()),
                volumes: vec![volume_state()],
            })),
        ),
        (
            "request-agent-report-deployments-v10",
            Request::Agent(AgentRequest::ReportDeployments(vec![
                DeploymentReport {
                    generation: 3,
                    step: DeployStep::Received,
                    message: String::new(),
                    output_tail: String::new(),
                    system_path: None,
                    volumes: vec![],
                },
                DeploymentReport {
                    generation: 3,
                    step: DeployStep::Succeeded,
                    message: "ok".into(),
                    output_tail: "tail".into(),
                    system_path: Some("/nix/store/abc".into()),
                    volumes: vec![volume_state()],
                },
            ])),
        ),
        (
            "request-admin-deploy",
            Request::Admin(AdminRequest::Deploy(DeploySpec {
                machine: None,
                selector: labels(),
                system: closure(),
                secrets: assignment().secrets,
                facts: labels(),
                checks: assignment().checks,
                health_deadline_ms: 60_000,
                buckets: vec![],
                volumes: vec![],
                goal: Default::default(),
                force_switch: false,
                override_rollout: false,
                reboot: false,
            })),
        ),
        ("request-admin-deployments-list", Request::Admin(AdminRequest::DeploymentsList { machine: Some("m-0123456789".into()) })),
        ("request-admin-deployments-show", Request::Admin(AdminRequest::DeploymentsShow { id: "d-m-0123456789-3".into() })),
        ("request-admin-machines-detail", Request::Admin(AdminRequest::MachinesDetail { id: "m-0123456789".into() })),
        (
            "request-admin-rollout-start",
            Request::Admin(AdminRequest::RolloutStart(RolloutSpec {
                deploy: DeploySpec {
                    machine: None,
                    selector: labels(),
                    system: closure(),
                    secrets: vec![],
                    facts: labels(),
                    checks: vec![],
                    health_deadline_ms: 60_000,
                    buckets: vec![],
                    volumes: vec![],
                    goal: Default::default(),
                    force_switch: false,
                    override_rollout: false,
                    reboot: false,
                },
                strategy: strategy(),
                snapshot_volumes: true,
            })),
        ),
        ("request-admin-rollout-status", Request::Admin(AdminRequest::RolloutStatus { id: "r-0a1b2c3d".into() })),
        ("request-admin-rollout-list", Request::Admin(AdminRequest::RolloutList)),
        ("request-admin-rollout-control", Request::Admin(AdminRequest::RolloutControl { id: "r-0a1b2c3d".into(), action: RolloutAction::Revert })),
        (
            "request-admin-s3-bucket-create",
            Request::Admin(AdminRequest::S3(S3Request::BucketCreate { name: "acme-media".into(), public: true, max_size: Some(1 << 30), max_objects: None })),
        ),
        (
            "request-admin-s3-grant",
            Request::Admin(AdminRequest::S3(S3Request::Grant { bucket: "acme-media".into(), key: "acme".into(), read: true, write: true, owner: false })),
        ),
        ("request-admin-s3-key-show", Request::Admin(AdminRequest::S3(S3Request::KeyShow { name: "acme".into(), show_secret: true }))),
        (
            "request-admin-deploy-s3-check",
            Request::Admin(AdminRequest::Deploy(DeploySpec {
                machine: Some("m-0123456789".into()),
                selector: Default::default(),
                system: closure(),
                secrets: vec![],
                facts: Default::default(),
                checks: vec![HealthCheck::S3 { bucket: "acme-media".into() }],
                health_deadline_ms: 60_000,
                buckets: vec![],
                volumes: vec![],
                goal: Default::default(),
                force_switch: false,
                override_rollout: false,
                reboot: false,
            })),
        ),
        ("request-admin-s3-cluster-add-machine", Request::Admin(AdminRequest::S3(S3Request::ClusterAddMachine { machine: "m-0123456789".into() }))),
        (
            "request-admin-deploy-with-buckets",
            Request::Admin(AdminRequest::Deploy(DeploySpec {
                machine: Some("m-0123456789".into()),
                selector: Default::default(),
                system: closure(),
                secrets: vec![],
                facts: labels(),
                checks: vec![],
                health_deadline_ms: 60_000,
                buckets: vec![BucketRequest { name: "acme-media".into(), public: true }],
                volumes: vec![],
                goal: SwitchGoal::DryActivate,
                force_switch: true,
                override_rollout: true,
                reboot: false,
            })),
        ),
        ("request-admin-deployments-of-rollout", Request::Admin(AdminRequest::DeploymentsOfRollout { id: "r-0a1b2c3d".into() })),
        (
            "request-admin-tenants-create",
            Request::Admin(AdminRequest::TenantsCreate(TenantSpec {
                domain: "acme.example".into(),
                admin_email: "ops@acme.example".into(),
                admin_user: "admin".into(),
                managers: vec!["alice".into()],
            })),
        ),
        ("request-admin-tenants-list", Request::Admin(AdminRequest::TenantsList)),
        ("request-admin-tenants-show", Request::Admin(AdminRequest::TenantsShow { domain: "acme.example".into(), show_password: true })),
        ("request-admin-tenants-remove", Request::Admin(AdminRequest::TenantsRemove { domain: "acme.example".into() })),
        (
            "request-admin-tenants-managers",
            Request::Admin(AdminRequest::TenantsManagers { domain: "acme.example".into(), add: vec!["bob".into()], remove: vec!["alice".into()] }),
        ),
        (
            "request-admin-admins-add-key",
            Request::Admin(AdminRequest::AdminsAddKey { name: "alice".into(), login: "root".into(), key: "ssh-ed25519 AAAA alice@laptop".into() }),
        ),
        ("request-admin-admins-remove-key", Request::Admin(AdminRequest::AdminsRemoveKey { name: "alice".into(), fingerprint: "SHA256:abc".into() })),
        ("request-admin-admins-keys", Request::Admin(AdminRequest::AdminsKeys { name: Some("alice".into()) })),
        ("request-admin-backup", Request::Admin(AdminRequest::Backup)),
        ("request-admin-audit", Request::Admin(AdminRequest::Audit { since: Some(1), admin: Some("root".into()), limit: 100 })),
        (
            "request-admin-deploy-dry-run",
            Request::Admin(AdminRequest::DeployDryRun(DeploySpec {
                machine: None,
                selector: labels(),
                system: closure(),
                secrets: vec![],
                facts: labels(),
                checks: vec![],
                health_deadline_ms: 60_000,
                buckets: vec![],
                volumes: vec![],
                goal: SwitchGoal::Test,
                force_switch: false,
                override_rollout: false,
                reboot: false,
            })),
        ),
        ("request-admin-admins-remove", Request::Admin(AdminRequest::AdminsRemove { name: "alice".into() })),
        (
            "request-admin-deploy-with-volumes",
            Request::Admin(AdminRequest::Deploy(DeploySpec {
                machine: Some("m-0123456789".into()),
                selector: Default::default(),
                system: closure(),
                secrets: vec![],
                facts: labels(),
                checks: vec![],
                health_deadline_ms: 60_000,
                buckets: vec![],
                volumes: vec![VolumeClaim { name: "data".into(), mount_point: "/srv/data".into(), filesystem: Filesystem::Ext4, size_bytes: Some(20 << 30) }],
                goal: Default::default(),
                force_switch: false,
                override_rollout: false,
                reboot: false,
            })),
        ),
        (
            "request-admin-volumes-create",
            Request::Admin(AdminRequest::Volumes(VolumeRequest::Create {
                name: "data".into(),
                size_bytes: 20 << 30,
                replicas: Some(2),
                resource_group: Some("rg".into()),
            })),
        ),
        (
            "request-admin-volumes-attach",
            Request::Admin(AdminRequest::Volumes(VolumeRequest::Attach {
                name: "data".into(),
                machine: "m-0123456789".into(),
                mount_point: "/srv/data".into(),
                filesystem: Filesystem::Xfs,
            })),
        ),
        ("request-agent-restore-volume", Request::Agent(AgentRequest::RestoreVolume { generation: 4, name: "data".into() })),
        (
            "request-admin-machines-provision",
            Request::Admin(AdminRequest::MachinesProvision(ProvisionRequest {
                name: "web-1".into(),
                provider: "local".into(),
                template: None,
                cores: Some(2),
                memory_bytes: Some(1 << 30),
                disk_bytes: Some(4 << 30),
                labels: labels(),
                disks: vec![ProvisionDisk { name: "data".into(), size_bytes: 1 << 30, mount_point: "/srv/data".into(), filesystem: Filesystem::Ext4 }],
            })),
        ),
        (
            "request-admin-deploy-file-check",
            Request::Admin(AdminRequest::Deploy(DeploySpec {
                machine: Some("m-0123456789".into()),
                selector: Default::default(),
                system: closure(),
                secrets: vec![],
                facts: labels(),
                checks: vec![HealthCheck::File { path: "/run/drover/facts.json".into(), sha256: Some("ab".repeat(32)) }],
                health_deadline_ms: 60_000,
                buckets: vec![],
                volumes: vec![],
                goal: Default::default(),
                force_switch: false,
                override_rollout: false,
                reboot: false,
            })),
        ),
        ("request-admin-fleet-save", Request::Admin(AdminRequest::FleetSave { document: "{\"file\":{}}".into() })),
        ("request-admin-machines-destroy", Request::Admin(AdminRequest::MachinesDestroy { name: "web-1".into(), keep_volumes: true })),
        ("request-admin-volumes-delete", Request::Admin(AdminRequest::Volumes(VolumeRequest::Delete { name: "data".into(), confirm: "data".into() }))),
        (
            "request-admin-volumes-adopt",
            Request::Admin(AdminRequest::Volumes(VolumeRequest::Adopt { name: "vm-100-disk-1".into(), confirm: "vm-100-disk-1".into() })),
        ),
        (
            "request-admin-provisions-check",
            Request::Admin(AdminRequest::ProvisionsCheck {
                requests: vec![ProvisionRequest {
                    name: "web-1".into(),
                    provider: "pve".into(),
                    template: Some("9000".into()),
                    cores: Some(2),
                    memory_bytes: Some(1 << 30),
                    disk_bytes: None,
                    labels: labels(),
                    disks: vec![],
                }],
            }),
        ),
        (
            "request-admin-volumes-allow-format",
            Request::Admin(AdminRequest::Volumes(VolumeRequest::AllowFormat { name: "data".into(), confirm: "data".into() })),
        ),
        (
            "request-admin-audit-export",
            Request::Admin(AdminRequest::AuditExport { after: Some(format!("{:020}-{:020}", 1_700_000_000_000u64, 7)), limit: 1000 }),
        ),
        ("request-admin-machines-reboot", Request::Admin(AdminRequest::MachinesReboot { machine: None, selector: labels() })),
        ("request-admin-provision-show", Request::Admin(AdminRequest::ProvisionShow { name: "web-1".into() })),
        ("request-admin-provisions", Request::Admin(AdminRequest::Provisions)),
        ("request-admin-fleet-show", Request::Admin(AdminRequest::FleetShow)),
        ("request-admin-coordinators-list", Request::Admin(AdminRequest::CoordinatorsList)),
        ("request-admin-web-login", Request::Admin(AdminRequest::WebLogin)),
        (
            "request-admin-machines-page",
            Request::Admin(AdminRequest::MachinesPage {
                selector: labels(),
                after: Some(MachinesCursor { hostname: "web-1".into(), id: "m-0123456789".into() }),
                limit: 5000,
            }),
        ),
        ("request-admin-nixops4-state-create", Request::Admin(AdminRequest::Nixops4State(StateRequest::Create { name: "social".into() }))),
        (
            "request-admin-nixops4-state-event",
            Request::Admin(AdminRequest::Nixops4State(StateRequest::Event {
                name: "social".into(),
                event: "create".into(),
                nixops_version: "0.1.0".into(),
                patch: r#"[{"op":"add","path":"/resources/db","value":{"type":"machine"}}]"#.into(),
            })),
        ),
        ("request-admin-nixops4-state-read", Request::Admin(AdminRequest::Nixops4State(StateRequest::Read { name: "social".into() }))),
        ("request-admin-nixops4-state-events", Request::Admin(AdminRequest::Nixops4State(StateRequest::Events { name: "social".into(), from: 3, limit: 100 }))),
        (
            "request-admin-deployments-show-many",
            Request::Admin(AdminRequest::DeploymentsShowMany { ids: vec!["m-0123456789/3".into(), "m-0123456789/4".into()] }),
        ),
        ("request-admin-s3-buckets-list", Request::Admin(AdminRequest::S3(S3Request::BucketsList))),
        ("request-admin-s3-bucket-show", Request::Admin(AdminRequest::S3(S3Request::BucketShow { name: "media".into() }))),
        ("request-admin-s3-bucket-delete", Request::Admin(AdminRequest::S3(S3Request::BucketDelete { name: "media".into() }))),
        ("request-admin-s3-keys-list", Request::Admin(AdminRequest::S3(S3Request::KeysList))),
        ("request-admin-s3-key-create", Request::Admin(AdminRequest::S3(S3Request::KeyCreate { name: "acme".into() }))),
        ("request-admin-s3-key-delete", Request::Admin(AdminRequest::S3(S3Request::KeyDelete { name: "acme".into() }))),
        (
            "request-admin-s3-cluster-add-node",
            Request::Admin(AdminRequest::S3(S3Request::ClusterAddNode {
                admin: "http://10.0.0.21:3903".into(),
                rpc: "10.0.0.21:3901".into(),
                zone: "dc1".into(),
                capacity: 1 << 40,
            })),
        ),
        ("request-admin-s3-cluster-apply", Request::Admin(AdminRequest::S3(S3Request::ClusterApply))),
        ("request-admin-s3-cluster-status", Request::Admin(AdminRequest::S3(S3Request::ClusterStatus))),
        ("request-admin-volumes-list", Request::Admin(AdminRequest::Volumes(VolumeRequest::List))),
        ("request-admin-volumes-show", Request::Admin(AdminRequest::Volumes(VolumeRequest::Show { name: "data".into() }))),
        ("request-admin-volumes-resize", Request::Admin(AdminRequest::Volumes(VolumeRequest::Resize { name: "data".into(), size_bytes: 40 << 30 }))),
        ("request-admin-volumes-detach", Request::Admin(AdminRequest::Volumes(VolumeRequest::Detach { name: "data".into() }))),
        (
            "request-admin-volumes-snapshot",
            Request::Admin(AdminRequest::Volumes(VolumeRequest::Snapshot { name: "data".into(), snapshot: Some("before".into()) })),
        ),
        ("request-admin-volumes-snapshots", Request::Admin(AdminRequest::Volumes(VolumeRequest::Snapshots { name: "data".into(), prune: true }))),
        ("request-admin-volumes-rollback", Request::Admin(AdminRequest::Volumes(VolumeRequest::Rollback { name: "data".into(), snapshot: "before".into() }))),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    vec![
        ("response-hello", Response::Hello(HelloAck { version: 3, software: "drover 0.1.0".into() })),
        ("response-enrolled", Response::Enrolled(issued())),
        ("response-agent-ack", Response::Agent(AgentResponse::Ack)),
        ("response-agent-renewed", Response::Agent(AgentResponse::Renewed(issued()))),
        (
            "response-agent-welcome",
            Response::Agent(AgentResponse::Event(AgentEvent::Welcome { machine_id: "m-0123456789".into(), health_interval_ms: 10_000 })),
        ),
        ("response-admin-done", Response::Admin(AdminResponse::Done)),
        (
            "response-admin-identity",
            Response::Admin(AdminResponse::Identity(AdminInfo { name: "root".into(), role: Role::Admin, created_at: 1_700_000_000_000 })),
        ),
        ("response-admin-token-created", Response::Admin(AdminResponse::TokenCreated(CreatedToken { info: token_info(), token: Secret::new("drt_00") }))),
        ("response-admin-tokens", Response::Admin(AdminResponse::Tokens(vec![token_info()]))),
        ("response-admin-machines", Response::Admin(AdminResponse::Machines(vec![machine()]))),
        ("response-admin-machine", Response::Admin(AdminResponse::Machine(machine()))),
        ("response-admin-admin-created", Response::Admin(AdminResponse::AdminCreated(issued()))),
        ("response-admin-admins", Response::Admin(AdminResponse::Admins(vec![AdminInfo { name: "root".into(), role: Role::Operator, created_at: 1 }]))),
        ("response-error", Response::Error(WireError::new(ErrorCode::TokenExpired, "token expired"))),
        ("response-agent-no-assignment", Response::Agent(AgentResponse::NoAssignment)),
        ("response-agent-desired", Response::Agent(AgentResponse::Event(AgentEvent::Desired { generation: 3 }))),
        ("response-agent-assigned-v10", Response::Agent(AgentResponse::Event(AgentEvent::Assigned { assignment: assignment(), access: access() }))),
        (
            "response-admin-deployed",
            Response::Admin(AdminResponse::Deployed(vec![DeployedTarget {
                machine_id: "m-0123456789".into(),
                hostname: "vm-1".into(),
                generation: 3,
                deployment_id: "d-m-0123456789-3".into(),
            }])),
        ),
        ("response-admin-deployments", Response::Admin(AdminResponse::Deployments(vec![deployment()]))),
        ("response-admin-deployment", Response::Admin(AdminResponse::Deployment(deployment()))),
        ("response-admin-rollout", Response::Admin(AdminResponse::Rollout(rollout()))),
        ("response-admin-rollouts", Response::Admin(AdminResponse::Rollouts(vec![rollout()]))),
        (
            "response-admin-s3-bucket",
            Response::Admin(AdminResponse::S3(S3Response::Bucket(S3Bucket {
                id: "b1".into(),
                aliases: vec!["acme-media".into()],
                website: true,
                public_url: Some("https://acme-media.web.example".into()),
                objects: 2,
                bytes: 10,
                grants: vec![S3Grant { key_id: "GK1".into(), read: true, write: true, owner: false }],
                max_size: None,
                max_objects: Some(5),
            }))),
        ),
        (
            "response-admin-s3-key",
            Response::Admin(AdminResponse::S3(S3Response::Key(S3Key { id: "GK1".into(), name: "acme".into(), secret: Some(Secret::new("s")) }))),
        ),
        (
            "response-admin-machine-detail",
            Response::Admin(AdminResponse::MachineDetail(MachineDetail {
                machine: machine(),
                desired_generation: 3,
                current_generation: Some(2),
                current_system: Some("/nix/store/abc".into()),
            })),
        ),
        ("response-agent-assignment-v10", Response::Agent(AgentResponse::Assignment { assignment: assignment(), access: access() })),
        ("response-admin-tenant", Response::Admin(AdminResponse::Tenant(tenant()))),
        ("response-admin-tenants", Response::Admin(AdminResponse::Tenants(vec![tenant()]))),
        ("response-admin-volume", Response::Admin(AdminResponse::Volumes(VolumeResponse::Volume(volume_info())))),
        (
            "response-admin-volume-snapshots",
            Response::Admin(AdminResponse::Volumes(VolumeResponse::Snapshots(vec![SnapshotInfo {
                name: "before-r-0a1b2c3d".into(),
                volume: "data".into(),
                created_at: 1,
            }]))),
        ),
        ("response-admin-backup-chunk", Response::Admin(AdminResponse::BackupChunk(b"DROVER-BACKUP 1\n".to_vec()))),
        ("response-admin-backup-end", Response::Admin(AdminResponse::BackupEnd { bytes: 4096, sha256: "ab".repeat(32) })),
        (
            "response-admin-audit",
            Response::Admin(AdminResponse::Audit(vec![AuditEntry {
                at: 1,
                admin: "root".into(),
                action: "tokens create".into(),
                target: "1 uses, labels role=web".into(),
                outcome: "ok".into(),
            }])),
        ),
        (
            "response-admin-deploy-plan",
            Response::Admin(AdminResponse::DeployPlan(vec![PlannedTarget {
                machine_id: "m-0123456789".into(),
                hostname: "vm-1".into(),
                generation: 4,
                current_generation: 3,
                system_before: Some("/nix/store/abc-nixos-system".into()),
                system_after: "/nix/store/def-nixos-system".into(),
                goal: SwitchGoal::Switch,
                changes: vec!["secret added: db".into(), "fact changed: tier: \"a\" -> \"b\"".into()],
                closure_diff: Some("openssl: 3.0.13 → 3.0.14, +12.3 KiB".into()),
                refused: None,
            }])),
        ),
        ("response-admin-problems", Response::Admin(AdminResponse::Problems(vec![Problem { subject: "web-1".into(), message: "no provider \"pve\"".into() }]))),
        (
            "response-admin-nixops4-state-document",
            Response::Admin(AdminResponse::Nixops4State(StateResponse::Document(StateDocument {
                name: "social".into(),
                document: r#"{"_type":"nixopsState","deployments":{},"resources":{}}"#.into(),
                events: 4,
                unapplied: vec![2],
                created_at: 1_700_000_000_000,
                updated_at: 1_700_000_005_000,
            }))),
        ),
        (
            "response-admin-nixops4-state-recorded",
            Response::Admin(AdminResponse::Nixops4State(StateResponse::Recorded(RecordedEvent {
                index: 2,
                applied: false,
                error: Some("the path /resources/x does not exist".into()),
            }))),
        ),
        (
            "response-admin-nixops4-state-events",
            Response::Admin(AdminResponse::Nixops4State(StateResponse::Events(vec![StateEventInfo {
                index: 0,
                time: 1_700_000_000_000,
                event: "create".into(),
                nixops_version: "0.1.0".into(),
                patch: r#"[{"op":"add","path":"","value":{}}]"#.into(),
                by: "alice".into(),
                applied: true,
                error: None,
            }]))),
        ),
        (
            "response-admin-machines-page",
            Response::Admin(AdminResponse::MachinesPage {
                machines: vec![machine()],
                next: Some(MachinesCursor { hostname: "web-1".into(), id: "m-0123456789".into() }),
            }),
        ),
        (
            "response-admin-web-login-link",
            Response::Admin(AdminResponse::WebLoginLink(WebLoginLink {
                url: "https://coordinator.example:8443/login?token=0123456789abcdef".into(),
                expires_at: 1_700_000_300_000,
            })),
        ),
        (
            "response-admin-coordinators",
            Response::Admin(AdminResponse::Coordinators(vec![CoordinatorInfo {
                address: "10.0.0.11:7443".into(),
                pid: 4242,
                leading: true,
                since: 1_700_000_000_000,
                agents: 3_400,
                updated_at: 1_700_000_005_000,
                lease_left_s: Some(9),
            }])),
        ),
        (
            "response-admin-audit-page",
            Response::Admin(AdminResponse::AuditPage {
                entries: vec![AuditEntry {
                    at: 1_700_000_000_000,
                    admin: "root".into(),
                    action: "tokens create".into(),
                    target: "1 uses".into(),
                    outcome: "ok".into(),
                }],
                next: Some(format!("{:020}-{:020}", 1_700_000_000_000u64, 7)),
            }),
        ),
        (
            "response-admin-ssh-keys",
            Response::Admin(AdminResponse::SshKeys(vec![SshKeyInfo {
                admin: "alice".into(),
                login: "root".into(),
                fingerprint: "SHA256:abc".into(),
                algorithm: "ssh-ed25519".into(),
                comment: "alice@laptop".into(),
                added_at: 1,
            }])),
        ),
        ("response-admin-provision", Response::Admin(AdminResponse::Provision(provision_info()))),
        ("response-admin-provisions", Response::Admin(AdminResponse::Provisions(vec![provision_info()]))),
        (
            "response-admin-fleet",
            Response::Admin(AdminResponse::Fleet(Some(AppliedFleet { document: "{\"file\":{}}".into(), applied_at: 1_700_000_000_000, by: "root".into() }))),
        ),
        (
            "response-admin-s3-buckets",
            Response::Admin(AdminResponse::S3(S3Response::Buckets(vec![S3Bucket {
                id: "b1".into(),
                aliases: vec!["media".into()],
                website: false,
                public_url: None,
                objects: 1,
                bytes: 2,
                grants: vec![],
                max_size: None,
                max_objects: None,
            }]))),
        ),
        ("response-admin-s3-keys", Response::Admin(AdminResponse::S3(S3Response::Keys(vec![S3Key { id: "GK1".into(), name: "acme".into(), secret: None }])))),
        ("response-admin-s3-done", Response::Admin(AdminResponse::S3(S3Response::Done))),
        (
            "response-admin-s3-cluster",
            Response::Admin(AdminResponse::S3(S3Response::Cluster(S3Cluster {
                health: "healthy".into(),
                layout_version: 2,
                partitions: 256,
                partitions_all_ok: 256,
                nodes: vec![S3Node {
                    id: Some("ab12".into()),
                    admin: "http://10.0.0.21:3903".into(),
                    rpc: "10.0.0.21:3901".into(),
                    zone: "dc1".into(),
                    capacity: 1 << 40,
                    up: true,
                }],
            }))),
        ),
        ("response-admin-volumes", Response::Admin(AdminResponse::Volumes(VolumeResponse::Volumes(vec![volume_info()])))),
        ("response-admin-volumes-done", Response::Admin(AdminResponse::Volumes(VolumeResponse::Done))),
    ]
}

fn access() -> Access {
    Access { authorized_keys: vec![LoginKeys { login: "root".into(), keys: vec!["ssh-ed25519 AAAA alice@laptop".into()] }] }
}

/// The assignment as peers before protocol 10 encode it.
fn assignment_v9() -> compat::AssignmentV9 {
    compat::AssignmentV9::from(assignment())
}

/// Named messages of one shape.
type Named<T> = Vec<(&'static str, T)>;

/// Messages in the shapes of protocols 6 to 9, which protocol 10 changed.
fn legacy() -> (Named<compat::RequestV9>, Named<compat::ResponseV9>) {
    use compat::{AgentEventV9, AgentRequestV9, AgentResponseV9, DeploymentReportV9, RequestV9, ResponseV9};
    let report = |step, message: &str, tail: &str, path: Option<&str>| DeploymentReportV9 {
        generation: 3,
        step,
        message: message.into(),
        output_tail: tail.into(),
        system_path: path.map(str::to_string),
    };
    (
        vec![
            (
                "request-agent-report-deployment",
                RequestV9::Agent(AgentRequestV9::ReportDeployment(report(DeployStep::Switched, "ok", "tail", Some("/nix/store/abc")))),
            ),
            (
                "request-agent-report-deployments",
                RequestV9::Agent(AgentRequestV9::ReportDeployments(vec![
                    report(DeployStep::Received, "", "", None),
                    report(DeployStep::Switched, "ok", "tail", Some("/nix/store/abc")),
                ])),
            ),
        ],
        vec![
            ("response-agent-assigned", ResponseV9::Agent(AgentResponseV9::Event(AgentEventV9::Assigned { assignment: assignment_v9(), access: access() }))),
            ("response-agent-assignment", ResponseV9::Agent(AgentResponseV9::Assignment { assignment: assignment_v9(), access: access() })),
        ],
    )
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check<T: serde::Serialize + serde::de::DeserializeOwned>(name: &str, message: &T) -> Option<String> {
    let bytes = frame::encode(message).expect("encode");
    let path = golden_dir().join(format!("{name}.bin"));
    if std::env::var_os("DROVER_BLESS").is_some() {
        std::fs::write(&path, &bytes).expect("write golden file");
        return None;
    }
    let stored = match std::fs::read(&path) {
        Ok(stored) => stored,
        Err(e) => return Some(format!("{name}: cannot read {}: {e}; run with DROVER_BLESS=1 to create it", path.display())),
    };
    // Old bytes must still decode, and encode to the same bytes.
    let decoded: T = match frame::decode(&stored, MAX_FRAME_LEN) {
        Ok(decoded) => decoded,
        Err(e) => return Some(format!("{name}: stored bytes no longer decode: {e}")),
    };
    if frame::encode(&decoded).expect("re-encode") != stored {
        return Some(format!("{name}: stored bytes re-encode differently"));
    }
    if bytes != stored {
        return Some(format!("{name}: encoding changed (append variants and fields, never reorder)"));
    }
    None
}

#[test]
fn v1_messages_match_their_golden_bytes() {
    let mut failures = Vec::new();
    for (name, message) in requests() {
        failures.extend(check(name, &message));
    }
    for (name, message) in responses() {
        failures.extend(check(name, &message));
    }
    let (requests, responses) = legacy();
    for (name, message) in &requests {
        failures.extend(check(name, message));
    }
    for (name, message) in &responses {
        failures.extend(check(name, message));
    }
    assert!(failures.is_empty(), "golden mismatches:\n{}", failures.join("\n"));
}

/// A peer of protocol 9 reads what the coordinator sends it now, and what
/// it sends is read as the current messages: the bytes of its files decode
/// through the older shapes, and the current messages convert to them.
#[test]
fn older_peers_bytes_decode_through_the_older_shapes() {
    let read = |name: &str| std::fs::read(golden_dir().join(format!("{name}.bin"))).expect("golden file");
    for version in [6, 9] {
        let payload = read("request-agent-report-deployments");
        let request: Request = frame::decode_payload_for(&payload[frame::HEADER_LEN..], version).expect("a protocol 9 report decodes");
        let Request::Agent(AgentRequest::ReportDeployments(reports)) = request else { panic!("{request:?}") };
        assert!(reports.len() == 2 && reports.iter().all(|r| r.volumes.is_empty()), "{reports:?}");

        let payload = read("response-agent-assignment");
        let response: Response = frame::decode_payload_for(&payload[frame::HEADER_LEN..], version).expect("a protocol 9 assignment decodes");
        let Response::Agent(AgentResponse::Assignment { assignment: old, .. }) = response else { panic!("{response:?}") };
        assert!(old.volumes[0].fresh && !old.volumes[0].overwrite, "an older coordinator's unformatted volume counts as fresh");

        // What the coordinator sends a protocol 9 agent now is its shape.
        let sent = frame::encode_for(&Response::Agent(AgentResponse::Assignment { assignment: assignment(), access: access() }), version).expect("encode");
        let old: compat::ResponseV9 = frame::decode(&sent, MAX_FRAME_LEN).expect("a protocol 9 peer reads it");
        assert_eq!(Response::from_legacy(old).into_legacy(), frame::decode::<compat::ResponseV9>(&sent, MAX_FRAME_LEN).expect("again"));
    }
    let current = frame::encode_for(&Response::Agent(AgentResponse::Assignment { assignment: assignment(), access: access() }), 10).expect("encode");
    assert_eq!(current, frame::encode(&Response::Agent(AgentResponse::Assignment { assignment: assignment(), access: access() })).expect("encode"));
}

/// The message kind of each variant — an exhaustive match, so a new variant
/// does not compile until it is named here; `every_message_kind_has_a_golden_file`
/// reads the names from between the markers and requires a golden file for each.
// kinds:begin
// One pattern shape for every variant, whatever its kind.
#[allow(clippy::unneeded_struct_pattern)]
fn request_kind(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "Request::Hello",
        Request::Enroll { .. } => "Request::Enroll",
        Request::Agent(a) => match a {
            AgentRequest::Watch { .. } => "AgentRequest::Watch",
            AgentRequest::Report { .. } => "AgentRequest::Report",
            AgentRequest::Renew { .. } => "AgentRequest::Renew",
            AgentRequest::FetchAssignment { .. } => "AgentRequest::FetchAssignment",
            AgentRequest::ReportDeployment { .. } => "AgentRequest::ReportDeployment",
            AgentRequest::RestoreVolume { .. } => "AgentRequest::RestoreVolume",
            AgentRequest::ReportDeployments { .. } => "AgentRequest::ReportDeployments",
        },
        Request::Admin(a) => match a {
            AdminRequest::WhoAmI { .. } => "AdminRequest::WhoAmI",
            AdminRequest::TokensCreate { .. } => "AdminRequest::TokensCreate",
            AdminRequest::TokensList { .. } => "AdminRequest::TokensList",
            AdminRequest::TokensRevoke { .. } => "AdminRequest::TokensRevoke",
            AdminRequest::MachinesList { .. } => "AdminRequest::MachinesList",
            AdminRequest::MachinesShow { .. } => "AdminRequest::MachinesShow",
            AdminRequest::MachinesLabel { .. } => "AdminRequest::MachinesLabel",
            AdminRequest::MachinesRevoke { .. } => "AdminRequest::MachinesRevoke",
            AdminRequest::AdminsAdd { .. } => "AdminRequest::AdminsAdd",
            AdminRequest::AdminsList { .. } => "AdminRequest::AdminsList",
            AdminRequest::Deploy { .. } => "AdminRequest::Deploy",
            AdminRequest::DeploymentsList { .. } => "AdminRequest::DeploymentsList",
            AdminRequest::DeploymentsShow { .. } => "AdminRequest::DeploymentsShow",
            AdminRequest::MachinesDetail { .. } => "AdminRequest::MachinesDetail",
            AdminRequest::RolloutStart { .. } => "AdminRequest::RolloutStart",
            AdminRequest::RolloutStatus { .. } => "AdminRequest::RolloutStatus",
            AdminRequest::RolloutList { .. } => "AdminRequest::RolloutList",
            AdminRequest::RolloutControl { .. } => "AdminRequest::RolloutControl",
            AdminRequest::DeploymentsOfRollout { .. } => "AdminRequest::DeploymentsOfRollout",
            AdminRequest::S3(s) => match s {
                S3Request::BucketsList { .. } => "S3Request::BucketsList",
                S3Request::BucketCreate { .. } => "S3Request::BucketCreate",
                S3Request::BucketShow { .. } => "S3Request::BucketShow",
                S3Request::BucketDelete { .. } => "S3Request::BucketDelete",
                S3Request::KeysList { .. } => "S3Request::KeysList",
                S3Request::KeyCreate { .. } => "S3Request::KeyCreate",
                S3Request::KeyShow { .. } => "S3Request::KeyShow",
                S3Request::KeyDelete { .. } => "S3Request::KeyDelete",
                S3Request::Grant { .. } => "S3Request::Grant",
                S3Request::ClusterAddNode { .. } => "S3Request::ClusterAddNode",
                S3Request::ClusterApply { .. } => "S3Request::ClusterApply",
                S3Request::ClusterStatus { .. } => "S3Request::ClusterStatus",
                S3Request::ClusterAddMachine { .. } => "S3Request::ClusterAddMachine",
            },
            AdminRequest::TenantsCreate { .. } => "AdminRequest::TenantsCreate",
            AdminRequest::TenantsList { .. } => "AdminRequest::TenantsList",
            AdminRequest::TenantsShow { .. } => "AdminRequest::TenantsShow",
            AdminRequest::TenantsRemove { .. } => "AdminRequest::TenantsRemove",
            AdminRequest::TenantsManagers { .. } => "AdminRequest::TenantsManagers",
            AdminRequest::AdminsAddKey { .. } => "AdminRequest::AdminsAddKey",
            AdminRequest::AdminsRemoveKey { .. } => "AdminRequest::AdminsRemoveKey",
            AdminRequest::AdminsKeys { .. } => "AdminRequest::AdminsKeys",
            AdminRequest::AdminsRemove { .. } => "AdminRequest::AdminsRemove",
            AdminRequest::Volumes(v) => match v {
                VolumeRequest::List { .. } => "VolumeRequest::List",
                VolumeRequest::Show { .. } => "VolumeRequest::Show",
                VolumeRequest::Create { .. } => "VolumeRequest::Create",
                VolumeRequest::Resize { .. } => "VolumeRequest::Resize",
                VolumeRequest::Attach { .. } => "VolumeRequest::Attach",
                VolumeRequest::Detach { .. } => "VolumeRequest::Detach",
                VolumeRequest::Snapshot { .. } => "VolumeRequest::Snapshot",
                VolumeRequest::Snapshots { .. } => "VolumeRequest::Snapshots",
                VolumeRequest::Rollback { .. } => "VolumeRequest::Rollback",
                VolumeRequest::Delete { .. } => "VolumeRequest::Delete",
                VolumeRequest::Adopt { .. } => "VolumeRequest::Adopt",
                VolumeRequest::AllowFormat { .. } => "VolumeRequest::AllowFormat",
            },
            AdminRequest::Backup { .. } => "AdminRequest::Backup",
            AdminRequest::Audit { .. } => "AdminRequest::Audit",
            AdminRequest::DeployDryRun { .. } => "AdminRequest::DeployDryRun",
            AdminRequest::MachinesReboot { .. } => "AdminRequest::MachinesReboot",
            AdminRequest::MachinesProvision { .. } => "AdminRequest::MachinesProvision",
            AdminRequest::ProvisionShow { .. } => "AdminRequest::ProvisionShow",
            AdminRequest::Provisions { .. } => "AdminRequest::Provisions",
            AdminRequest::MachinesDestroy { .. } => "AdminRequest::MachinesDestroy",
            AdminRequest::FleetSave { .. } => "AdminRequest::FleetSave",
            AdminRequest::FleetShow { .. } => "AdminRequest::FleetShow",
            AdminRequest::DeploymentsShowMany { .. } => "AdminRequest::DeploymentsShowMany",
            AdminRequest::ProvisionsCheck { .. } => "AdminRequest::ProvisionsCheck",
            AdminRequest::AuditExport { .. } => "AdminRequest::AuditExport",
            AdminRequest::CoordinatorsList { .. } => "AdminRequest::CoordinatorsList",
            AdminRequest::WebLogin { .. } => "AdminRequest::WebLogin",
            AdminRequest::MachinesPage { .. } => "AdminRequest::MachinesPage",
            AdminRequest::Nixops4State(StateRequest::Create { .. }) => "AdminRequest::Nixops4State::Create",
            AdminRequest::Nixops4State(StateRequest::Event { .. }) => "AdminRequest::Nixops4State::Event",
            AdminRequest::Nixops4State(StateRequest::Read { .. }) => "AdminRequest::Nixops4State::Read",
            AdminRequest::Nixops4State(StateRequest::Events { .. }) => "AdminRequest::Nixops4State::Events",
        },
    }
}

#[allow(clippy::unneeded_struct_pattern)]
fn response_kind(r: &Response) -> &'static str {
    match r {
        Response::Hello { .. } => "Response::Hello",
        Response::Enrolled { .. } => "Response::Enrolled",
        Response::Error { .. } => "Response::Error",
        Response::Agent(a) => match a {
            AgentResponse::Ack { .. } => "AgentResponse::Ack",
            AgentResponse::Renewed { .. } => "AgentResponse::Renewed",
            AgentResponse::Event(e) => match e {
                AgentEvent::Welcome { .. } => "AgentEvent::Welcome",
                AgentEvent::Desired { .. } => "AgentEvent::Desired",
                AgentEvent::Assigned { .. } => "AgentEvent::Assigned",
            },
            AgentResponse::Assignment { .. } => "AgentResponse::Assignment",
            AgentResponse::NoAssignment { .. } => "AgentResponse::NoAssignment",
        },
        Response::Admin(a) => match a {
            AdminResponse::Done { .. } => "AdminResponse::Done",
            AdminResponse::Identity { .. } => "AdminResponse::Identity",
            AdminResponse::TokenCreated { .. } => "AdminResponse::TokenCreated",
            AdminResponse::Tokens { .. } => "AdminResponse::Tokens",
            AdminResponse::Machines { .. } => "AdminResponse::Machines",
            AdminResponse::Machine { .. } => "AdminResponse::Machine",
            AdminResponse::AdminCreated { .. } => "AdminResponse::AdminCreated",
            AdminResponse::Admins { .. } => "AdminResponse::Admins",
            AdminResponse::Deployed { .. } => "AdminResponse::Deployed",
            AdminResponse::Deployments { .. } => "AdminResponse::Deployments",
            AdminResponse::Deployment { .. } => "AdminResponse::Deployment",
            AdminResponse::MachineDetail { .. } => "AdminResponse::MachineDetail",
            AdminResponse::Rollout { .. } => "AdminResponse::Rollout",
            AdminResponse::Rollouts { .. } => "AdminResponse::Rollouts",
            AdminResponse::S3(s) => match s {
                S3Response::Buckets { .. } => "S3Response::Buckets",
                S3Response::Bucket { .. } => "S3Response::Bucket",
                S3Response::Keys { .. } => "S3Response::Keys",
                S3Response::Key { .. } => "S3Response::Key",
                S3Response::Done { .. } => "S3Response::Done",
                S3Response::Cluster { .. } => "S3Response::Cluster",
            },
            AdminResponse::Tenant { .. } => "AdminResponse::Tenant",
            AdminResponse::Tenants { .. } => "AdminResponse::Tenants",
            AdminResponse::SshKeys { .. } => "AdminResponse::SshKeys",
            AdminResponse::Volumes(v) => match v {
                VolumeResponse::Volume { .. } => "VolumeResponse::Volume",
                VolumeResponse::Volumes { .. } => "VolumeResponse::Volumes",
                VolumeResponse::Snapshots { .. } => "VolumeResponse::Snapshots",
                VolumeResponse::Done { .. } => "VolumeResponse::Done",
            },
            AdminResponse::BackupChunk { .. } => "AdminResponse::BackupChunk",
            AdminResponse::BackupEnd { .. } => "AdminResponse::BackupEnd",
            AdminResponse::Audit { .. } => "AdminResponse::Audit",
            AdminResponse::DeployPlan { .. } => "AdminResponse::DeployPlan",
            AdminResponse::Provision { .. } => "AdminResponse::Provision",
            AdminResponse::Provisions { .. } => "AdminResponse::Provisions",
            AdminResponse::Fleet { .. } => "AdminResponse::Fleet",
            AdminResponse::Problems { .. } => "AdminResponse::Problems",
            AdminResponse::AuditPage { .. } => "AdminResponse::AuditPage",
            AdminResponse::Coordinators { .. } => "AdminResponse::Coordinators",
            AdminResponse::Nixops4State(StateResponse::Document(_)) => "AdminResponse::Nixops4State::Document",
            AdminResponse::Nixops4State(StateResponse::Recorded(_)) => "AdminResponse::Nixops4State::Recorded",
            AdminResponse::Nixops4State(StateResponse::Events(_)) => "AdminResponse::Nixops4State::Events",
            AdminResponse::WebLoginLink { .. } => "AdminResponse::WebLoginLink",
            AdminResponse::MachinesPage { .. } => "AdminResponse::MachinesPage",
        },
    }
}
// kinds:end

#[test]
fn every_message_kind_has_a_golden_file() {
    let source = include_str!("golden.rs");
    let begin = source.find("// kinds:begin").expect("marker");
    let end = source.find("// kinds:end").expect("marker");
    let all: BTreeSet<&str> = source[begin..end].split("=> \"").skip(1).filter_map(|s| s.split('"').next()).collect();
    let mut covered: BTreeSet<&str> = requests().iter().map(|(_, r)| request_kind(r)).collect();
    covered.extend(responses().iter().map(|(_, r)| response_kind(r)));
    // The container variants are covered by their leaves.
    let missing: Vec<&&str> = all.iter().filter(|k| !covered.contains(**k)).collect();
    assert!(missing.is_empty(), "message kinds without a golden file (add a sample to requests() or responses()): {missing:?}");
    assert!(all.len() > 120, "the kinds are read from the match: {}", all.len());
}
