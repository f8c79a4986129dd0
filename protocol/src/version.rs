//! Protocol version negotiation, as a pure function over both sides' ranges.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, WireError};

/// The protocol version this build speaks natively. Version 14 keeps the
/// connection an agent enrolled on: an `Enroll` whose CSR is bound to its
/// TLS session makes that connection the new machine's (no message
/// changed shape). Version 13 added
/// `WebLogin` (a link to the fleet page), version 12
/// `Nixops4State` (NixOps4's state kept by the coordinator), version 11
/// `CoordinatorsList` (an older coordinator cannot answer any of them). Version 10 added what
/// keeps volumes safe: the coordinator vouches for a fresh volume and can
/// carry an operator's overwrite (`VolumeMount`), an outcome carries the
/// volumes' states (`DeploymentReport`), and volumes can be adopted; peers
/// of 6 to 9 are served through the older shapes in [`crate::compat`].
/// Version 9 added the
/// `Assigned` event (a new generation's assignment pushed on the watch
/// stream; a version 8 agent is still told `Desired` and fetches). Version 8 added
/// `DeploymentsShowMany` (a version 7 coordinator is still followed one
/// deployment at a time). Version 7 added
/// `ReportDeployments` (several progress reports in one request; a version
/// 6 peer is still served, one report at a time). Version 6 added
/// provisioning (`MachinesProvision`, `ProvisionShow`, `Provisions`,
/// `MachinesDestroy`). Version 5 added the
/// switch goal and `force_switch` to assignments and deployments,
/// `override_rollout` to deployments, and the boot id, booted and pending
/// systems and the Nix store's space to health reports; older peers are
/// refused at Hello, naming both versions (version 4 only added the admin
/// requests `Backup` and `Audit`).
pub const PROTOCOL_VERSION: u16 = 14;

/// The inclusive range of protocol versions this build accepts.
pub const SUPPORTED: VersionRange = VersionRange { min: 6, max: 14 };

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VersionRange {
    pub min: u16,
    pub max: u16,
}

impl std::fmt::Display for VersionRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

/// Picks the highest version both ranges hold, or an error naming both ranges.
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Result<u16, WireError> {
    let low = ours.min.max(theirs.min);
    let high = ours.max.min(theirs.max);
    if theirs.min > theirs.max {
        return Err(WireError::new(
            ErrorCode::VersionMismatch,
            format!("peer sent an empty protocol version range {}..={}; this side speaks {}", theirs.min, theirs.max, ours),
        ));
    }
    if low > high {
        return Err(WireError::new(
            ErrorCode::VersionMismatch,
            format!(
                "protocol version mismatch: peer speaks {theirs}, this side speaks {ours}; \
                 upgrade the older side"
            ),
        ));
    }
    Ok(high)
}
