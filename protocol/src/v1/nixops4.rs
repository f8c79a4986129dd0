//! NixOps4's state kept by the coordinator (protocol 12): a document per
//! name that NixOps4 changes by RFC 6902 patches, each patch kept as an
//! event in order, applied or not.

use serde::{Deserialize, Serialize};

use super::UnixMillis;

/// A request about one NixOps4 state document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum StateRequest {
    /// Makes the state `name` with NixOps4's empty document unless it
    /// exists; answered with [`StateResponse::Document`] either way.
    Create { name: String },
    /// Appends an event (its patch, JSON) and applies the patch to the
    /// document in the same transaction; a patch that cannot be applied is
    /// kept, marked unapplied, and the answer says why. Answered with
    /// [`StateResponse::Recorded`].
    Event { name: String, event: String, nixops_version: String, patch: String },
    /// The document, answered with [`StateResponse::Document`].
    Read { name: String },
    /// At most `limit` events from index `from`, oldest first; answered
    /// with [`StateResponse::Events`].
    Events { name: String, from: u64, limit: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum StateResponse {
    Document(StateDocument),
    Recorded(RecordedEvent),
    Events(Vec<StateEventInfo>),
}

/// A state document as it stands after its applied events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StateDocument {
    pub name: String,
    /// The document, JSON.
    pub document: String,
    /// How many events it has (the next event's index).
    pub events: u64,
    /// The indices of the events whose patch could not be applied.
    pub unapplied: Vec<u64>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RecordedEvent {
    pub index: u64,
    pub applied: bool,
    /// Why the patch was not applied.
    pub error: Option<String>,
}

/// One event as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StateEventInfo {
    pub index: u64,
    pub time: UnixMillis,
    pub event: String,
    pub nixops_version: String,
    /// The patch, JSON, as it came.
    pub patch: String,
    /// The admin whose request recorded it.
    pub by: String,
    pub applied: bool,
    pub error: Option<String>,
}

/// The most events one [`StateRequest::Events`] answers.
pub const MAX_STATE_EVENTS_PER_REQUEST: u32 = 1_000;
