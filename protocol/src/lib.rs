//! Drover's wire protocol: what goes between agents, admins and the coordinator.
//!
//! This crate holds only types and pure functions: message types ([`v1`]),
//! framing ([`frame`]), version negotiation ([`version`]) and wire errors
//! ([`error`]). It performs no I/O; the transport crate carries its frames over
//! QUIC streams.

pub mod answer;
pub mod compat;
pub mod error;
pub mod frame;
pub mod provision;
pub mod seed;
pub mod text;
// Answers are short-lived values moved once into a frame; boxing their
// larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub mod v1;
pub mod version;
pub mod volume;

pub use answer::UnexpectedAnswer;
pub use error::{ErrorCode, WireError};
pub use frame::{FrameError, MAX_FRAME_LEN};
pub use version::{negotiate, VersionRange, PROTOCOL_VERSION, SUPPORTED};

/// The ALPN protocol identifier every Drover QUIC connection must negotiate.
pub const ALPN: &[u8] = b"drover/1";

#[cfg(test)]
mod tests;
