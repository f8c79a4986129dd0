//! NixOps4's state kept by the coordinator: a document per name, changed
//! only by events that each carry an RFC 6902 patch. An event is kept in
//! order in the transaction that applies its patch; one whose patch cannot
//! be applied is kept all the same, marked unapplied, and the answer says
//! why — NixOps4 must never lose an event.

use drover_protocol::v1::{AdminResponse, RecordedEvent, StateDocument, StateEventInfo, StateRequest, StateResponse, MAX_STATE_EVENTS_PER_REQUEST};
use drover_protocol::WireError;

use crate::model::{NixopsEventRecord, NixopsStateRecord};
use crate::store::nixops4::event_key;

use super::errors::{invalid, not_found};
use super::{now_ms, Coordinator};

/// The largest patch an event carries.
pub const MAX_PATCH: usize = 256 << 10;
/// The largest document kept (a patch that would make it larger is kept
/// unapplied).
pub const MAX_DOCUMENT: usize = 1 << 20;

/// NixOps4's empty state document.
pub const EMPTY_DOCUMENT: &str = r#"{"_type":"nixopsState","deployments":{},"resources":{}}"#;

/// A state's name: 1 to 63 of lowercase letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a state name: use 1 to 63 lowercase letters, digits, '-', '_' and '.', starting with a letter or digit"))
    }
}

fn check_word(what: &str, value: &str) -> Result<(), WireError> {
    if value.len() > 64 || value.chars().any(|c| c.is_control()) {
        return Err(invalid(format!("the {what} is at most 64 characters, none of them control characters")));
    }
    Ok(())
}

fn no_state(name: &str) -> WireError {
    not_found(format!("no NixOps4 state {name:?}; a `state` resource of the drover provider makes it"))
}

fn document(r: NixopsStateRecord) -> StateDocument {
    StateDocument { name: r.name, document: r.document, events: r.events, unapplied: r.unapplied, created_at: r.created_at, updated_at: r.updated_at }
}

pub async fn handle(state: &Coordinator, by: &str, request: StateRequest) -> Result<AdminResponse, WireError> {
    let answer = match request {
        StateRequest::Create { name } => StateResponse::Document(create(state, &name).await?),
        StateRequest::Read { name } => {
            check_name(&name).map_err(invalid)?;
            StateResponse::Document(document(state.store.nixops_state(&name)?.ok_or_else(|| no_state(&name))?))
        }
        StateRequest::Event { name, event, nixops_version, patch } => StateResponse::Recorded(record(state, by, &name, &event, &nixops_version, &patch).await?),
        StateRequest::Events { name, from, limit } => {
            check_name(&name).map_err(invalid)?;
            let record = state.store.nixops_state(&name)?.ok_or_else(|| no_state(&name))?;
            let end = record.events.min(from.saturating_add(u64::from(limit.min(MAX_STATE_EVENTS_PER_REQUEST))));
            let mut events = Vec::new();
            for index in from..end {
                let Some(e) = state.store.nixops_event(&name, index)? else { continue };
                events.push(StateEventInfo {
                    index: e.index,
                    time: e.time,
                    event: e.event,
                    nixops_version: e.nixops_version,
                    patch: e.patch,
                    by: e.by,
                    applied: e.applied,
                    error: e.error,
                });
            }
            StateResponse::Events(events)
        }
    };
    Ok(AdminResponse::Nixops4State(answer))
}

async fn create(state: &Coordinator, name: &str) -> Result<StateDocument, WireError> {
    check_name(name).map_err(invalid)?;
    let now = now_ms();
    let record = state
        .store
        .commit(|tx| {
            if let Some(existing) = tx.get::<NixopsStateRecord>(name.as_bytes())? {
                return Ok::<_, WireError>(existing);
            }
            let record =
                NixopsStateRecord { name: name.to_string(), document: EMPTY_DOCUMENT.into(), events: 0, unapplied: vec![], created_at: now, updated_at: now };
            tx.put(name.as_bytes(), &record)?;
            Ok(record)
        })
        .await?;
    Ok(document(record))
}

/// Applies `patch` to `document`, or says why it cannot be.
fn apply(document: &str, patch: &serde_json::Value) -> Result<String, String> {
    let patch: json_patch::Patch = serde_json::from_value(patch.clone()).map_err(|e| format!("not an RFC 6902 patch: {e}"))?;
    let mut doc: serde_json::Value = serde_json::from_str(document).map_err(|e| format!("the stored document is not JSON: {e}"))?;
    json_patch::patch(&mut doc, &patch).map_err(|e| format!("the patch does not apply: {e}"))?;
    let text = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
    if text.len() > MAX_DOCUMENT {
        return Err(format!("the document would be {} bytes, more than the {MAX_DOCUMENT} kept", text.len()));
    }
    Ok(text)
}

async fn record(state: &Coordinator, by: &str, name: &str, event: &str, nixops_version: &str, patch: &str) -> Result<RecordedEvent, WireError> {
    check_name(name).map_err(invalid)?;
    check_word("event", event)?;
    check_word("NixOps version", nixops_version)?;
    if patch.len() > MAX_PATCH {
        return Err(invalid(format!("a patch is at most {MAX_PATCH} bytes; this one is {}", patch.len())));
    }
    // A patch that is not JSON at all is a malformed request: refused, not
    // kept. One that is JSON is kept whether or not it applies.
    let value: serde_json::Value = serde_json::from_str(patch).map_err(|e| invalid(format!("the patch is not JSON: {e}")))?;
    let now = now_ms();
    let recorded = state
        .store
        .commit(|tx| {
            let mut record = tx.get::<NixopsStateRecord>(name.as_bytes())?.ok_or_else(|| no_state(name))?;
            let index = record.events;
            let outcome = apply(&record.document, &value);
            let error = outcome.as_ref().err().cloned();
            match outcome {
                Ok(document) => record.document = document,
                Err(_) => record.unapplied.push(index),
            }
            record.events += 1;
            record.updated_at = now;
            let event = NixopsEventRecord {
                name: name.to_string(),
                index,
                time: now,
                event: event.to_string(),
                nixops_version: nixops_version.to_string(),
                patch: patch.to_string(),
                by: by.to_string(),
                applied: error.is_none(),
                error: error.clone(),
            };
            tx.put(&event_key(name, index), &event)?;
            tx.put(name.as_bytes(), &record)?;
            Ok::<_, WireError>(RecordedEvent { index, applied: error.is_none(), error })
        })
        .await?;
    if let Some(e) = &recorded.error {
        tracing::warn!(state = name, index = recorded.index, error = %e, "a NixOps4 state event is kept unapplied");
    }
    Ok(recorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_applies_or_says_why_and_names_are_checked() {
        let added = apply(EMPTY_DOCUMENT, &serde_json::json!([{"op": "add", "path": "/resources/db", "value": {"type": "machine"}}])).expect("applies");
        assert!(added.contains(r#""db":{"type":"machine"}"#), "{added}");
        let e = apply(EMPTY_DOCUMENT, &serde_json::json!([{"op": "remove", "path": "/resources/nothing"}])).expect_err("no such path");
        assert!(e.contains("does not apply"), "{e}");
        let e = apply(EMPTY_DOCUMENT, &serde_json::json!({"op": "add"})).expect_err("not a patch");
        assert!(e.contains("not an RFC 6902 patch"), "{e}");
        // A failing operation in the middle leaves the document as it was.
        let e =
            apply(EMPTY_DOCUMENT, &serde_json::json!([{"op": "add", "path": "/resources/a", "value": 1}, {"op": "test", "path": "/resources/a", "value": 2}]));
        assert!(e.is_err());
        assert!(check_name("social-prod").is_ok());
        for bad in ["", "Social", "-x", "a/b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
