//! The shapes of messages that protocol 10 changed, as peers of protocols 6
//! to 9 encode them, and the conversions at the edge. bincode is not
//! self-describing, so a struct that gains a field needs its old shape kept
//! for older peers: a connection that negotiated an older version encodes
//! and decodes through these types ([`Versioned`]), and the rest of the
//! code only ever sees the current ones.
//!
//! Protocol 10 added [`VolumeMount::fresh`] and [`VolumeMount::overwrite`]
//! and [`DeploymentReport::volumes`]. To an older agent a volume the
//! coordinator does not vouch for as fresh is sent as `formatted` (such an
//! agent then never formats it); from an older coordinator, a volume not
//! `formatted` counts as fresh (what it meant there), and the agent's own
//! checks still apply.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::WireError;
use crate::v1::{
    Access, AdminRequest, AdminResponse, AgentEvent, AgentRequest, AgentResponse, Assignment, DeployStep, DeploymentReport, EnrollRequest, Filesystem,
    HealthCheck, HealthReport, Hello, HelloAck, IssuedCertificate, Request, Response, SecretFile, SwitchGoal, SystemSpec, VolumeMount,
};

/// The first protocol version whose messages have the current shapes.
pub const CURRENT_SHAPES: u16 = 10;

/// A message with an older encoding for peers before [`CURRENT_SHAPES`].
pub trait Versioned: Sized + Clone + Serialize + DeserializeOwned {
    type Legacy: Serialize + DeserializeOwned;
    fn from_legacy(old: Self::Legacy) -> Self;
    fn into_legacy(self) -> Self::Legacy;
}

/// Whether a connection of `version` uses the older shapes.
pub fn legacy(version: u16) -> bool {
    version < CURRENT_SHAPES
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMountV9 {
    pub name: String,
    pub device: String,
    pub mount_point: String,
    pub filesystem: Filesystem,
    pub size_bytes: u64,
    pub formatted: bool,
    pub restore_snapshot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentV9 {
    pub generation: u64,
    pub system: SystemSpec,
    pub secrets: Vec<SecretFile>,
    pub facts_json: String,
    pub checks: Vec<HealthCheck>,
    pub health_deadline_ms: u64,
    pub volumes: Vec<VolumeMountV9>,
    pub goal: SwitchGoal,
    pub force_switch: bool,
    pub reboot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentReportV9 {
    pub generation: u64,
    pub step: DeployStep,
    pub message: String,
    pub output_tail: String,
    pub system_path: Option<String>,
}

// The shapes mirror the wire's, variant sizes included.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentRequestV9 {
    Watch,
    Report(HealthReport),
    Renew { csr_der: Vec<u8> },
    FetchAssignment,
    ReportDeployment(DeploymentReportV9),
    RestoreVolume { generation: u64, name: String },
    ReportDeployments(Vec<DeploymentReportV9>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentEventV9 {
    Welcome { machine_id: String, health_interval_ms: u64 },
    Desired { generation: u64 },
    Assigned { assignment: AssignmentV9, access: Access },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentResponseV9 {
    Ack,
    Renewed(IssuedCertificate),
    Event(AgentEventV9),
    Assignment { assignment: AssignmentV9, access: Access },
    NoAssignment,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestV9 {
    Hello(Hello),
    Enroll(EnrollRequest),
    Agent(AgentRequestV9),
    Admin(AdminRequest),
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResponseV9 {
    Hello(HelloAck),
    Enrolled(IssuedCertificate),
    Agent(AgentResponseV9),
    Admin(AdminResponse),
    Error(WireError),
}

impl From<VolumeMountV9> for VolumeMount {
    fn from(v: VolumeMountV9) -> Self {
        VolumeMount {
            fresh: !v.formatted,
            name: v.name,
            device: v.device,
            mount_point: v.mount_point,
            filesystem: v.filesystem,
            size_bytes: v.size_bytes,
            formatted: v.formatted,
            restore_snapshot: v.restore_snapshot,
            overwrite: false,
        }
    }
}

impl From<VolumeMount> for VolumeMountV9 {
    fn from(v: VolumeMount) -> Self {
        VolumeMountV9 {
            formatted: v.formatted || !v.fresh,
            name: v.name,
            device: v.device,
            mount_point: v.mount_point,
            filesystem: v.filesystem,
            size_bytes: v.size_bytes,
            restore_snapshot: v.restore_snapshot,
        }
    }
}

impl From<AssignmentV9> for Assignment {
    fn from(a: AssignmentV9) -> Self {
        Assignment {
            generation: a.generation,
            system: a.system,
            secrets: a.secrets,
            facts_json: a.facts_json,
            checks: a.checks,
            health_deadline_ms: a.health_deadline_ms,
            volumes: a.volumes.into_iter().map(Into::into).collect(),
            goal: a.goal,
            force_switch: a.force_switch,
            reboot: a.reboot,
        }
    }
}

impl From<Assignment> for AssignmentV9 {
    fn from(a: Assignment) -> Self {
        AssignmentV9 {
            generation: a.generation,
            system: a.system,
            secrets: a.secrets,
            facts_json: a.facts_json,
            checks: a.checks,
            health_deadline_ms: a.health_deadline_ms,
            volumes: a.volumes.into_iter().map(Into::into).collect(),
            goal: a.goal,
            force_switch: a.force_switch,
            reboot: a.reboot,
        }
    }
}

impl From<DeploymentReportV9> for DeploymentReport {
    fn from(r: DeploymentReportV9) -> Self {
        DeploymentReport {
            generation: r.generation,
            step: r.step,
            message: r.message,
            output_tail: r.output_tail,
            system_path: r.system_path,
            volumes: Vec::new(),
        }
    }
}

impl From<DeploymentReport> for DeploymentReportV9 {
    fn from(r: DeploymentReport) -> Self {
        DeploymentReportV9 { generation: r.generation, step: r.step, message: r.message, output_tail: r.output_tail, system_path: r.system_path }
    }
}

impl From<AgentEventV9> for AgentEvent {
    fn from(e: AgentEventV9) -> Self {
        match e {
            AgentEventV9::Welcome { machine_id, health_interval_ms } => AgentEvent::Welcome { machine_id, health_interval_ms },
            AgentEventV9::Desired { generation } => AgentEvent::Desired { generation },
            AgentEventV9::Assigned { assignment, access } => AgentEvent::Assigned { assignment: assignment.into(), access },
        }
    }
}

impl From<AgentEvent> for AgentEventV9 {
    fn from(e: AgentEvent) -> Self {
        match e {
            AgentEvent::Welcome { machine_id, health_interval_ms } => AgentEventV9::Welcome { machine_id, health_interval_ms },
            AgentEvent::Desired { generation } => AgentEventV9::Desired { generation },
            AgentEvent::Assigned { assignment, access } => AgentEventV9::Assigned { assignment: assignment.into(), access },
        }
    }
}

impl From<AgentRequestV9> for AgentRequest {
    fn from(r: AgentRequestV9) -> Self {
        match r {
            AgentRequestV9::Watch => AgentRequest::Watch,
            AgentRequestV9::Report(h) => AgentRequest::Report(h),
            AgentRequestV9::Renew { csr_der } => AgentRequest::Renew { csr_der },
            AgentRequestV9::FetchAssignment => AgentRequest::FetchAssignment,
            AgentRequestV9::ReportDeployment(d) => AgentRequest::ReportDeployment(d.into()),
            AgentRequestV9::RestoreVolume { generation, name } => AgentRequest::RestoreVolume { generation, name },
            AgentRequestV9::ReportDeployments(ds) => AgentRequest::ReportDeployments(ds.into_iter().map(Into::into).collect()),
        }
    }
}

impl From<AgentRequest> for AgentRequestV9 {
    fn from(r: AgentRequest) -> Self {
        match r {
            AgentRequest::Watch => AgentRequestV9::Watch,
            AgentRequest::Report(h) => AgentRequestV9::Report(h),
            AgentRequest::Renew { csr_der } => AgentRequestV9::Renew { csr_der },
            AgentRequest::FetchAssignment => AgentRequestV9::FetchAssignment,
            AgentRequest::ReportDeployment(d) => AgentRequestV9::ReportDeployment(d.into()),
            AgentRequest::RestoreVolume { generation, name } => AgentRequestV9::RestoreVolume { generation, name },
            AgentRequest::ReportDeployments(ds) => AgentRequestV9::ReportDeployments(ds.into_iter().map(Into::into).collect()),
        }
    }
}

impl From<AgentResponseV9> for AgentResponse {
    fn from(r: AgentResponseV9) -> Self {
        match r {
            AgentResponseV9::Ack => AgentResponse::Ack,
            AgentResponseV9::Renewed(c) => AgentResponse::Renewed(c),
            AgentResponseV9::Event(e) => AgentResponse::Event(e.into()),
            AgentResponseV9::Assignment { assignment, access } => AgentResponse::Assignment { assignment: assignment.into(), access },
            AgentResponseV9::NoAssignment => AgentResponse::NoAssignment,
        }
    }
}

impl From<AgentResponse> for AgentResponseV9 {
    fn from(r: AgentResponse) -> Self {
        match r {
            AgentResponse::Ack => AgentResponseV9::Ack,
            AgentResponse::Renewed(c) => AgentResponseV9::Renewed(c),
            AgentResponse::Event(e) => AgentResponseV9::Event(e.into()),
            AgentResponse::Assignment { assignment, access } => AgentResponseV9::Assignment { assignment: assignment.into(), access },
            AgentResponse::NoAssignment => AgentResponseV9::NoAssignment,
        }
    }
}

impl Versioned for Request {
    type Legacy = RequestV9;

    fn from_legacy(old: RequestV9) -> Self {
        match old {
            RequestV9::Hello(h) => Request::Hello(h),
            RequestV9::Enroll(e) => Request::Enroll(e),
            RequestV9::Agent(a) => Request::Agent(a.into()),
            RequestV9::Admin(a) => Request::Admin(a),
        }
    }

    fn into_legacy(self) -> RequestV9 {
        match self {
            Request::Hello(h) => RequestV9::Hello(h),
            Request::Enroll(e) => RequestV9::Enroll(e),
            Request::Agent(a) => RequestV9::Agent(a.into()),
            Request::Admin(a) => RequestV9::Admin(a),
        }
    }
}

impl Versioned for Response {
    type Legacy = ResponseV9;

    fn from_legacy(old: ResponseV9) -> Self {
        match old {
            ResponseV9::Hello(h) => Response::Hello(h),
            ResponseV9::Enrolled(c) => Response::Enrolled(c),
            ResponseV9::Agent(a) => Response::Agent(a.into()),
            ResponseV9::Admin(a) => Response::Admin(a),
            ResponseV9::Error(e) => Response::Error(e),
        }
    }

    fn into_legacy(self) -> ResponseV9 {
        match self {
            Response::Hello(h) => ResponseV9::Hello(h),
            Response::Enrolled(c) => ResponseV9::Enrolled(c),
            Response::Agent(a) => ResponseV9::Agent(a.into()),
            Response::Admin(a) => ResponseV9::Admin(a),
            Response::Error(e) => ResponseV9::Error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(formatted: bool, fresh: bool) -> VolumeMount {
        VolumeMount {
            name: "data".into(),
            device: "/dev/drbd/by-res/data/0".into(),
            mount_point: "/srv/data".into(),
            filesystem: Filesystem::Ext4,
            size_bytes: 1 << 30,
            formatted,
            restore_snapshot: None,
            fresh,
            overwrite: true,
        }
    }

    #[test]
    fn an_older_agent_is_told_formatted_for_every_volume_not_vouched_fresh() {
        assert!(!VolumeMountV9::from(mount(false, true)).formatted, "a fresh volume may be formatted by an older agent");
        assert!(VolumeMountV9::from(mount(false, false)).formatted, "a volume not vouched fresh is never formatted");
        assert!(VolumeMountV9::from(mount(true, false)).formatted);
    }

    #[test]
    fn an_older_coordinator_s_unformatted_volume_counts_as_fresh_without_overwrite() {
        let back = VolumeMount::from(VolumeMountV9::from(mount(false, true)));
        assert!(back.fresh && !back.formatted && !back.overwrite);
        let back = VolumeMount::from(VolumeMountV9::from(mount(true, false)));
        assert!(!back.fresh && back.formatted);
    }
}
