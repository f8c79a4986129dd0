//! The messages of NixOps4's resource provider interface, written from its
//! manual (`doc/manual/src/resource-provider/interface.md`) and its JSON
//! schema `resource-schema-v0.json` as of NixOps4 commit 53d8554 (July
//! 2026): JSON lines, one request in and one response out, each a
//! one-key object naming the message.
//!
//! Schema v0 has create, update, state event and state read. NixOps4's
//! manual speaks of reading and destroying resources, which v0 does not
//! define yet; Drover answers them as `readResourceRequest {resource}` →
//! `readResourceResponse {outputProperties}` and `destroyResourceRequest
//! {resource}` → `destroyResourceResponse {}`, shaped like v0's messages.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The version of NixOps4's resource schema these messages follow.
pub const SCHEMA_VERSION: &str = "v0";

pub type Properties = Map<String, Value>;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Request {
    CreateResourceRequest(CreateResourceRequest),
    UpdateResourceRequest(UpdateResourceRequest),
    StateResourceEvent(StateResourceEvent),
    StateResourceReadRequest(StateResourceReadRequest),
    /// Drover's: the outputs of a resource as it is now.
    ReadResourceRequest(ResourceRequest),
    /// Drover's: removes what a resource made.
    DestroyResourceRequest(ResourceRequest),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateResourceRequest {
    #[serde(rename = "type")]
    pub type_: String,
    pub input_properties: Properties,
    pub is_stateful: bool,
}

/// A resource as NixOps4 knows it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtantResource {
    #[serde(rename = "type")]
    pub type_: String,
    pub input_properties: Properties,
    #[serde(default)]
    pub output_properties: Option<Properties>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateResourceRequest {
    pub resource: ExtantResource,
    pub input_properties: Properties,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateResourceReadRequest {
    pub resource: ExtantResource,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateResourceEvent {
    pub resource: ExtantResource,
    pub event: String,
    pub nixops_version: String,
    /// An RFC 6902 patch; kept as it came (the coordinator applies it).
    pub patch: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequest {
    pub resource: ExtantResource,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Response {
    CreateResourceResponse(Outputs),
    UpdateResourceResponse(Outputs),
    StateResourceEventResponse(Empty),
    StateResourceReadResponse(StateRead),
    ErrorResponse(ErrorMessage),
    ReadResourceResponse(Outputs),
    DestroyResourceResponse(Empty),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outputs {
    pub output_properties: Properties,
}

#[derive(Debug, Clone, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize)]
pub struct StateRead {
    pub state: Properties,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorMessage {
    pub message: String,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response::ErrorResponse(ErrorMessage { message: message.into() })
    }

    /// The response as one line of JSON (no newline inside).
    pub fn line(&self) -> String {
        // Serializing these types cannot fail: string keys, JSON values.
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"errorResponse":{{"message":"cannot write the response: {e}"}}}}"#))
    }
}

/// Parses one request line, or says what is wrong with it.
pub fn parse(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("not a request of NixOps4's resource schema {SCHEMA_VERSION}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_fields_are_refused() {
        let r = parse(r#"{"createResourceRequest":{"type":"bucket","inputProperties":{"name":"media"},"isStateful":true}}"#).expect("create");
        assert!(matches!(r, Request::CreateResourceRequest(c) if c.type_ == "bucket" && c.is_stateful));
        let r = parse(r#"{"stateResourceEvent":{"resource":{"type":"state","inputProperties":{"name":"s"},"outputProperties":{}},"event":"create","nixopsVersion":"0.1","patch":[]}}"#)
            .expect("event");
        assert!(matches!(r, Request::StateResourceEvent(e) if e.event == "create"));
        let e = parse(r#"{"createResourceRequest":{"type":"bucket","inputProperties":{},"isStateful":true,"colour":"red"}}"#).expect_err("unknown");
        assert!(e.contains("colour"), "{e}");
        let e = parse(r#"{"fooRequest":{}}"#).expect_err("unknown request");
        assert!(e.contains("fooRequest"), "{e}");
        assert!(parse("not json").is_err());
    }

    #[test]
    fn responses_are_one_line_objects_named_by_their_message() {
        let line = Response::error("bucket media: no\nnewline").line();
        assert!(!line.contains('\n'));
        assert_eq!(line, r#"{"errorResponse":{"message":"bucket media: no\nnewline"}}"#);
        assert_eq!(Response::StateResourceEventResponse(Empty {}).line(), r#"{"stateResourceEventResponse":{}}"#);
        let out = Response::CreateResourceResponse(Outputs { output_properties: Properties::new() }).line();
        assert_eq!(out, r#"{"createResourceResponse":{"outputProperties":{}}}"#);
    }
}
