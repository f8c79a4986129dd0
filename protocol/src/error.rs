//! Errors as they travel over the wire: a stable numeric code and a message
//! meant for a person. Internal details stay in the coordinator's log.

use serde::{Deserialize, Serialize};

/// Stable error codes. Append new codes at the end; never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ErrorCode {
    /// The peer's protocol version range does not overlap ours.
    VersionMismatch,
    /// A frame or message could not be decoded, or came out of order.
    BadRequest,
    /// The connection has no identity that may make this request.
    Unauthenticated,
    /// The identity is known but its role does not allow the request.
    PermissionDenied,
    /// The enrollment token is not known (or was revoked).
    TokenUnknown,
    /// The enrollment token is past its expiry.
    TokenExpired,
    /// The enrollment token has no uses left.
    TokenExhausted,
    /// The machine was revoked.
    Revoked,
    /// The named object does not exist.
    NotFound,
    /// The request conflicts with existing state.
    Conflict,
    /// The request is well-formed but its content is invalid.
    InvalidArgument,
    /// The coordinator failed; details are in its log.
    Internal,
    /// The certificate signing request was unusable.
    BadCsr,
    /// A system the coordinator depends on (e.g. the S3 provider) did not
    /// answer.
    Unavailable,
}

impl ErrorCode {
    /// The QUIC application error code used when a connection or stream is
    /// closed because of this error.
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::VersionMismatch => 1,
            ErrorCode::BadRequest => 2,
            ErrorCode::Unauthenticated => 3,
            ErrorCode::PermissionDenied => 4,
            ErrorCode::TokenUnknown => 5,
            ErrorCode::TokenExpired => 6,
            ErrorCode::TokenExhausted => 7,
            ErrorCode::Revoked => 8,
            ErrorCode::NotFound => 9,
            ErrorCode::Conflict => 10,
            ErrorCode::InvalidArgument => 11,
            ErrorCode::Internal => 12,
            ErrorCode::BadCsr => 13,
            ErrorCode::Unavailable => 14,
        }
    }

    /// The inverse of [`ErrorCode::as_u32`].
    pub fn from_u32(code: u32) -> Option<Self> {
        Some(match code {
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::BadRequest,
            3 => ErrorCode::Unauthenticated,
            4 => ErrorCode::PermissionDenied,
            5 => ErrorCode::TokenUnknown,
            6 => ErrorCode::TokenExpired,
            7 => ErrorCode::TokenExhausted,
            8 => ErrorCode::Revoked,
            9 => ErrorCode::NotFound,
            10 => ErrorCode::Conflict,
            11 => ErrorCode::InvalidArgument,
            12 => ErrorCode::Internal,
            13 => ErrorCode::BadCsr,
            14 => ErrorCode::Unavailable,
            _ => return None,
        })
    }
}

/// An error answer: a code for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[error("{message} ({code:?})")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into() }
    }
}
