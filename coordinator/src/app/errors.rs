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
        StoreError::Backend(drover_store::Error::Full { free_mib, min_mib, .. }) => WireError::new(
            ErrorCode::Unavailable,
            format!("the coordinator's state directory is nearly full ({free_mib} MiB free, limits.min_free_disk_mib is {min_mib}): changes are refused until its operator frees space there; reads keep working"),
        ),
        StoreError::Backend(drover_store::Error::Fenced) => {
            tracing::error!("{e}");
            WireError::new(ErrorCode::Unavailable, "this coordinator lost its claim on the fleet's store (another coordinator took over): the change was refused; use the coordinator that serves now")
        }
        StoreError::Backend(drover_store::Error::TooLarge(why)) => WireError::new(
            ErrorCode::InvalidArgument,
            format!("the change is larger than the fleet's store takes at once ({why}): change fewer machines at a time (a narrower selector, or a rollout), or raise etcd's --max-txn-ops and store.max_txn_ops together"),
        ),
        StoreError::Backend(drover_store::Error::Uncertain(_)) => {
            tracing::warn!(error = %e, "store write not confirmed");
            WireError::new(
                ErrorCode::Unavailable,
                "the fleet's store did not confirm the change in time (etcd lost quorum or does not answer): it may still be applied, whole or not at all, when the store is back; look before repeating it",
            )
        }
        StoreError::Backend(drover_store::Error::Unavailable(_)) => {
            tracing::warn!(error = %e, "store unavailable");
            WireError::new(
                ErrorCode::Unavailable,
                "the fleet's store is unavailable (etcd has lost quorum or does not answer): the change was refused whole; try again when the store's members are back",
            )
        }
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
    // What Garage said, or could not say, stays in the log: its text is
    // the provider's internals, not the peer's business.
    let message = match &e {
        S3Error::Api { status, code, .. } => format!("the S3 provider refused the call (HTTP {status} {code}); the coordinator's log has its answer"),
        S3Error::Decode(_) => "the S3 provider's answer was not understood; the coordinator's log has it".to_string(),
        _ => e.to_string(),
    };
    WireError::new(code, message)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_s3_providers_own_words_stay_in_the_log() {
        let api =
            s3(S3Error::Api { status: 500, code: "InternalError".into(), message: "panicked at src/garage/block/manager.rs:412 /var/lib/garage/meta".into() });
        assert_eq!(api.code, ErrorCode::Internal);
        assert!(!api.message.contains("manager.rs") && !api.message.contains("/var/lib"), "{}", api.message);
        assert!(api.message.contains("HTTP 500") && api.message.contains("log"), "{}", api.message);
        let decode = s3(S3Error::Decode("expected value at line 1 column 1: <html>internal</html>".into()));
        assert!(!decode.message.contains("<html>"), "{}", decode.message);
        // What the admin can act on is still said.
        let missing = s3(S3Error::NotFound { what: "bucket", id: "media".into() });
        assert!(missing.message.contains("media"));
    }

    #[test]
    fn a_store_without_quorum_is_unavailable_and_says_so_without_its_endpoints() {
        let e = store(StoreError::Backend(drover_store::Error::Unavailable("http://10.0.0.5:2379: connection refused".into())));
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("quorum") && e.message.contains("refused whole"), "{}", e.message);
        assert!(!e.message.contains("10.0.0.5"), "the store's addresses stay in the log: {}", e.message);
    }
}
