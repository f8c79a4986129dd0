//! Version 1 of the wire messages.
//!
//! Each bi-stream carries one [`Request`] from the client and one or more
//! [`Response`] frames from the coordinator (one, except for
//! [`AgentRequest::Watch`], whose stream stays open for events).
//!
//! bincode is not self-describing: variants and fields are only ever appended,
//! never reordered or removed. The golden files under `tests/golden/` hold the
//! bytes of every message so that a change that breaks old peers fails a test.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::version::VersionRange;

mod admin;
mod agent;
mod deploy;
mod nixops4;
mod rollout;
mod s3;

pub use crate::provision::{Problem, ProvisionDisk, ProvisionInfo, ProvisionRequest, ProvisionState};
pub use crate::volume::{
    Filesystem, ReplicaInfo, SnapshotInfo, VolumeAttachment, VolumeClaim, VolumeInfo, VolumeMount, VolumeRequest, VolumeResponse, VolumeState,
};
pub use admin::*;
pub use agent::*;
pub use deploy::*;
pub use nixops4::*;
pub use rollout::*;
pub use s3::*;

/// Milliseconds since the Unix epoch.
pub type UnixMillis = u64;

/// Labels attached to machines and tokens (`key=value`).
pub type Labels = BTreeMap<String, String>;

/// A secret string (an enrollment token). Its value never shows in `Debug`
/// output, so it cannot leak into a log line through `{:?}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The first frame of every bi-stream a client opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Request {
    /// Must be the first request on every connection.
    Hello(Hello),
    /// Allowed on a connection without a client certificate.
    Enroll(EnrollRequest),
    /// Requires a machine certificate.
    Agent(AgentRequest),
    /// Requires an admin certificate.
    Admin(AdminRequest),
}

/// What the coordinator answers on a bi-stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Response {
    Hello(HelloAck),
    Enrolled(IssuedCertificate),
    Agent(AgentResponse),
    Admin(AdminResponse),
    Error(WireError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Hello {
    /// The protocol versions the client speaks.
    pub versions: VersionRange,
    /// Free text naming the client software and version, for logs.
    pub software: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct HelloAck {
    /// The version chosen for this connection.
    pub version: u16,
    pub software: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EnrollRequest {
    pub token: Secret,
    /// A PKCS#10 certificate signing request (DER) for the machine's own key.
    /// Only its public key is used: the coordinator decides the identity.
    pub csr_der: Vec<u8>,
    /// The hostname the machine reports for itself (informational).
    pub hostname: String,
}

/// A certificate the coordinator signed for a machine or an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct IssuedCertificate {
    /// The identity the coordinator chose (a machine id or an admin name).
    pub subject: String,
    pub certificate_der: Vec<u8>,
    /// Lowercase hex serial number.
    pub serial: String,
    pub not_after: UnixMillis,
    /// The certificate's lifetime in milliseconds, from which the holder
    /// computes when to renew (at two thirds).
    pub lifetime_ms: u64,
}
