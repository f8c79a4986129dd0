//! Failures as the wire carries them: a code and a clean message. Internal
//! details go to the coordinator's log, never to the peer.

use drover_protocol::{ErrorCode, WireError};

use crate::s3::S3Error;
use crate::store::StoreError;

/// A store failure as a wire error.
pub fn store(e: StoreError) -> WireError {
    match e {
        StoreError::NotFound { .. } => WireError::new(ErrorCode::NotFound, e.to_string()),
        StoreError::Conflict(_) => WireError::new(ErrorCode::Conflict, e.to_string()),
        // Logged once when it starts (by the store), not at every refusal.
        StoreError::Full { free_mib, min_mib, .. } => WireError::new(
            ErrorCode::Unavailable,
            format!("the coordinator's state directory is nearly full ({free_mib} MiB free, limits.min_free_disk_mib is {min_mib}): changes are refused until its operator frees space there; reads keep working"),
        ),
        other => {
            tracing::error!(error = %other, "store failure");
            WireError::new(ErrorCode::Internal, "internal error; see the coordinator's log")
        }
    }
}

/// Lets handlers and transaction bodies use `?` on store calls.
impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        store(e)
    }
}

/// An S3 failure as a wire error; each kind keeps its own code.
pub fn s3(e: S3Error) -> WireError {
    let code = match &e {
        S3Error::Unreachable { .. } => ErrorCode::Unavailable,
        S3Error::InvalidBucketName { .. } => ErrorCode::InvalidArgument,
        S3Error::NotFound { .. } => ErrorCode::NotFound,
        S3Error::BucketNotEmpty(_) => ErrorCode::Conflict,
        S3Error::Unauthorized | S3Error::Api { .. } | S3Error::Decode(_) | S3Error::Config(_) => ErrorCode::Internal,
    };
    tracing::warn!(error = %e, "S3 provider call failed");
    WireError::new(code, e.to_string())
}

pub fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::InvalidArgument, message)
}

pub fn not_found(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::NotFound, message)
}

pub fn conflict(message: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Conflict, message)
}

pub fn revoked(machine: &str) -> WireError {
    WireError::new(ErrorCode::Revoked, format!("machine {machine} was revoked"))
}
