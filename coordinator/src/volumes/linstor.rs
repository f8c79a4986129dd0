//! LINSTOR's REST API v1 (`http://CONTROLLER:3370/v1/...`, HTTPS on 3371
//! with a client certificate when the controller asks for one).
//!
//! What the controller does where its OpenAPI document is silent: error
//! bodies are arrays of `ApiCallRc`; the severity is in the top two bits of
//! `ret_code` and the code in its low 15 bits; 404 only for "not found",
//! 500 for every other failure, "already exists" included; deleting
//! something missing answers 200 with a warning. So creates read the codes,
//! never only the status.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{BlockError, BlockStorage, Created, Replica, Report, Volume, VolumeSpec, OWNER_PROPERTY};
use crate::config::LinstorConfig;

const MASK_SEVERITY: u64 = 0xC000_0000_0000_0000;
const MASK_ERROR: u64 = 0xC000_0000_0000_0000;
const MASK_CODE: u64 = 0x7FFF;

impl Report {
    pub fn is_error(&self) -> bool {
        (self.ret_code as u64) & MASK_SEVERITY == MASK_ERROR
    }

    /// The code without severity and object bits (e.g. 501 for
    /// FAIL_EXISTS_RSC_DFN).
    pub fn code(&self) -> u64 {
        (self.ret_code as u64) & MASK_CODE
    }

    /// FAIL_EXISTS_* (codes 500 to 599).
    pub fn exists(&self) -> bool {
        self.is_error() && (500..600).contains(&self.code())
    }

    /// FAIL_NOT_FOUND_* (codes 300 to 399).
    pub fn not_found(&self) -> bool {
        self.is_error() && (300..400).contains(&self.code())
    }
}

/// A LINSTOR controller client for one fleet: it creates volumes with the
/// fleet's identity ([`OWNER_PROPERTY`]) and changes only those that carry
/// it.
pub struct Linstor {
    base: String,
    http: reqwest::Client,
    config: LinstorConfig,
    owner: String,
}

impl std::fmt::Debug for Linstor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linstor").field("base", &self.base).finish()
    }
}

#[derive(Deserialize)]
struct ResourceDefinition {
    name: String,
    #[serde(default)]
    props: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    volume_definitions: Vec<VolumeDefinition>,
}

impl ResourceDefinition {
    fn owner(&self) -> Option<String> {
        self.props.get(OWNER_PROPERTY).cloned()
    }

    fn size_kib(&self) -> u64 {
        self.volume_definitions.iter().find(|d| d.volume_number == 0).map(|d| d.size_kib).unwrap_or(0)
    }
}

/// Resources asked for by name in one request of [`Linstor::replicas`]
/// (the names go into the request line, which servers bound).
const NAMES_PER_REQUEST: usize = 50;

fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

#[derive(Deserialize)]
struct VolumeDefinition {
    #[serde(default)]
    volume_number: i32,
    size_kib: u64,
}

#[derive(Deserialize)]
struct Resource {
    name: String,
    node_name: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    state: Option<ResourceState>,
    #[serde(default)]
    volumes: Vec<ResourceVolume>,
}

#[derive(Deserialize)]
struct ResourceState {
    #[serde(default)]
    in_use: Option<bool>,
}

#[derive(Deserialize)]
struct ResourceVolume {
    #[serde(default)]
    volume_number: i32,
    #[serde(default)]
    device_path: Option<String>,
    #[serde(default)]
    state: Option<VolumeState>,
}

#[derive(Deserialize)]
struct VolumeState {
    #[serde(default)]
    disk_state: Option<String>,
}

#[derive(Deserialize)]
struct Snapshot {
    name: String,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, value: Value) -> Result<T, BlockError> {
    serde_json::from_value(value).map_err(|e| BlockError::Decode(format!("{what}: {e}")))
}

/// The reports in a body: an array of `ApiCallRc`, or (as the OpenAPI
/// document says) one.
fn reports(body: &Value) -> Vec<Report> {
    match body {
        Value::Array(items) => items.iter().filter_map(|i| serde_json::from_value(i.clone()).ok()).collect(),
        Value::Object(_) => serde_json::from_value(body.clone()).map(|r| vec![r]).unwrap_or_default(),
        _ => Vec::new(),
    }
}

impl Linstor {
    /// A client of `config.controller` for the fleet `owner`.
    pub fn new(config: LinstorConfig, owner: &str) -> Result<Self, BlockError> {
        drover_net::tls::install_default_provider();
        let mut builder = reqwest::Client::builder().timeout(config.request_timeout).connect_timeout(Duration::from_secs(10).min(config.request_timeout));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| BlockError::Config(format!("cannot read linstor.ca_file {}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| BlockError::Config(format!("linstor.ca_file {} is not a PEM certificate: {e}", ca.display())))?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(cert);
        }
        if let Some(path) = &config.client_certificate {
            let pem = std::fs::read(path).map_err(|e| BlockError::Config(format!("cannot read linstor.client_certificate {}: {e}", path.display())))?;
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                BlockError::Config(format!("linstor.client_certificate {} must hold a PEM certificate and its private key: {e}", path.display()))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|e| BlockError::Config(format!("cannot build the LINSTOR client: {e}")))?;
        Ok(Linstor { base: config.controller.trim_end_matches('/').to_string(), http, config, owner: owner.to_string() })
    }

    /// One call. Success is a 2xx whose reports hold no error; anything
    /// else is an error carrying LINSTOR's reports.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, BlockError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| BlockError::Unreachable { url: self.base.clone(), reason: e.to_string() })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| BlockError::Unreachable { url: self.base.clone(), reason: e.to_string() })?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(BlockError::Unauthorized(status.as_u16()));
        }
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| BlockError::Decode(format!("{method} {path} answered {status} with {e}")))?
        };
        let reports = reports(&value);
        if !status.is_success() || reports.iter().any(Report::is_error) {
            tracing::debug!(%method, path, status = status.as_u16(), "LINSTOR refused");
            return Err(BlockError::Linstor { status: status.as_u16(), reports });
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> Result<Option<Value>, BlockError> {
        match self.call(Method::GET, path, None).await {
            Ok(v) => Ok(Some(v)),
            Err(BlockError::Linstor { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A create: "already exists" is success (the caller checks the
    /// parameters).
    async fn create_call(&self, path: &str, body: Value) -> Result<(), BlockError> {
        match self.call(Method::POST, path, Some(body)).await {
            Ok(_) => Ok(()),
            Err(BlockError::Linstor { reports, .. }) if !reports.is_empty() && reports.iter().filter(|r| r.is_error()).all(Report::exists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Resource definitions with their volume definitions, by name (any
    /// owner) or by this fleet's property.
    async fn definitions(&self, filter: &[(&str, &str)]) -> Result<Vec<ResourceDefinition>, BlockError> {
        let mut pairs = vec![("with_volume_definitions", "true")];
        pairs.extend_from_slice(filter);
        let value = self.call(Method::GET, &format!("/v1/resource-definitions?{}", query(&pairs)), None).await?;
        decode("resource definitions", value)
    }

    /// The replicas of each named resource, in one request per
    /// [`NAMES_PER_REQUEST`] names.
    async fn replicas(&self, names: &[String]) -> Result<std::collections::BTreeMap<String, Vec<Replica>>, BlockError> {
        let mut out: std::collections::BTreeMap<String, Vec<Replica>> = names.iter().map(|n| (n.to_ascii_lowercase(), Vec::new())).collect();
        for chunk in names.chunks(NAMES_PER_REQUEST) {
            let pairs: Vec<(&str, &str)> = chunk.iter().map(|n| ("resources", n.as_str())).collect();
            let value = self.call(Method::GET, &format!("/v1/view/resources?{}", query(&pairs)), None).await?;
            let resources: Vec<Resource> = decode("resources", value)?;
            for r in resources {
                let Some(list) = out.get_mut(&r.name.to_ascii_lowercase()) else { continue };
                let volume = r.volumes.iter().find(|v| v.volume_number == 0);
                let diskless = r.flags.iter().any(|f| f == "DISKLESS" || f == "DRBD_DISKLESS");
                let disk_state = volume.and_then(|v| v.state.as_ref()).and_then(|s| s.disk_state.clone()).unwrap_or_else(|| "Unknown".into());
                list.push(Replica {
                    node: r.node_name,
                    disk_state,
                    diskless,
                    in_use: r.state.and_then(|s| s.in_use).unwrap_or(false),
                    device_path: volume.and_then(|v| v.device_path.clone()),
                });
            }
        }
        Ok(out)
    }

    /// The volume, which must be this fleet's; `None` when it is gone.
    async fn ours(&self, name: &str) -> Result<Option<Volume>, BlockError> {
        match self.volume(name).await? {
            Some(v) if v.owner.as_deref() == Some(self.owner.as_str()) => Ok(Some(v)),
            Some(v) => Err(BlockError::NotOurs { name: v.name, owner: v.owner }),
            None => Ok(None),
        }
    }

    /// [`Self::ours`], where a missing volume is an error.
    async fn require_ours(&self, name: &str) -> Result<Volume, BlockError> {
        self.ours(name).await?.ok_or_else(|| BlockError::NotFound { what: "volume", name: name.to_string() })
    }

    /// Makes the definitions, with this fleet's identity, and places them.
    async fn make(&self, spec: &VolumeSpec) -> Result<(), BlockError> {
        let owner = json!({ OWNER_PROPERTY: self.owner });
        let group = spec.resource_group.clone().or_else(|| self.config.resource_group.clone());
        if let Some(group) = group {
            return self
                .call(
                    Method::POST,
                    &format!("/v1/resource-groups/{group}/spawn"),
                    Some(json!({"resource_definition_name": spec.name, "volume_sizes": [spec.size_kib], "resource_definition_props": owner})),
                )
                .await
                .map(drop);
        }
        self.call(Method::POST, "/v1/resource-definitions", Some(json!({"resource_definition": {"name": spec.name, "props": owner}}))).await?;
        let placed = async {
            self.call(
                Method::POST,
                &format!("/v1/resource-definitions/{}/volume-definitions", spec.name),
                Some(json!({"volume_definition": {"volume_number": 0, "size_kib": spec.size_kib}})),
            )
            .await?;
            let mut filter = json!({"place_count": spec.replicas});
            if let Some(pool) = &self.config.storage_pool {
                filter["storage_pool"] = json!(pool);
            }
            self.call(Method::POST, &format!("/v1/resource-definitions/{}/autoplace", spec.name), Some(json!({"select_filter": filter}))).await
        };
        placed.await.map(drop)
    }

    /// After a failed create: deletes what it made (only this fleet's,
    /// read back first), so no half-made volume is left behind.
    async fn delete_made(&self, name: &str) {
        match self.ours(name).await {
            Ok(Some(_)) => match self.call(Method::DELETE, &format!("/v1/resource-definitions/{name}"), None).await {
                Ok(_) => tracing::info!(volume = name, "the failed create's resource definition was deleted"),
                Err(e) => tracing::warn!(volume = name, error = %e, "the failed create's resource definition could not be deleted"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(volume = name, error = %e, "the failed create's resource definition was left alone"),
        }
    }
}

#[async_trait::async_trait]
impl BlockStorage for Linstor {
    fn owner(&self) -> &str {
        &self.owner
    }

    async fn volume(&self, name: &str) -> Result<Option<Volume>, BlockError> {
        super::check_name(name)?;
        let definitions = self.definitions(&[("resource_definitions", name)]).await?;
        let Some(d) = definitions.into_iter().find(|d| d.name.eq_ignore_ascii_case(name)) else {
            return Ok(None);
        };
        let mut replicas = self.replicas(std::slice::from_ref(&d.name)).await?;
        Ok(Some(Volume { size_kib: d.size_kib(), owner: d.owner(), replicas: replicas.remove(&d.name.to_ascii_lowercase()).unwrap_or_default(), name: d.name }))
    }

    async fn volumes(&self) -> Result<Vec<Volume>, BlockError> {
        let filter = format!("{OWNER_PROPERTY}={}", self.owner);
        // The controller filters by the property; what it answers is
        // checked again here.
        let definitions: Vec<ResourceDefinition> = self
            .definitions(&[("props", filter.as_str())])
            .await?
            .into_iter()
            .filter(|d| d.owner().as_deref() == Some(self.owner.as_str()) && super::check_name(&d.name).is_ok())
            .collect();
        let names: Vec<String> = definitions.iter().map(|d| d.name.clone()).collect();
        let mut replicas = if names.is_empty() { Default::default() } else { self.replicas(&names).await? };
        Ok(definitions
            .into_iter()
            .map(|d| Volume {
                size_kib: d.size_kib(),
                owner: d.owner(),
                replicas: replicas.remove(&d.name.to_ascii_lowercase()).unwrap_or_default(),
                name: d.name,
            })
            .collect())
    }

    async fn create(&self, spec: &VolumeSpec) -> Result<Created, BlockError> {
        super::check_name(&spec.name)?;
        let conflict = |v: &Volume| {
            BlockError::Conflict(format!(
                "volume {:?} already exists with {} (asked {}); use `drover volumes resize` to grow it",
                spec.name,
                bytesize::ByteSize::kib(v.size_kib),
                bytesize::ByteSize::kib(spec.size_kib)
            ))
        };
        let existing = self.ours(&spec.name).await?;
        let made = match &existing {
            Some(v) if v.size_kib != spec.size_kib && v.size_kib != 0 => return Err(conflict(v)),
            // A create that stopped after the resource definition (this
            // fleet's): place what is missing.
            Some(v) if v.size_kib == 0 || v.replicas.iter().all(|r| r.diskless) => {
                if v.size_kib == 0 {
                    self.call(
                        Method::POST,
                        &format!("/v1/resource-definitions/{}/volume-definitions", spec.name),
                        Some(json!({"volume_definition": {"volume_number": 0, "size_kib": spec.size_kib}})),
                    )
                    .await?;
                }
                let mut filter = json!({"place_count": spec.replicas});
                if let Some(pool) = &self.config.storage_pool {
                    filter["storage_pool"] = json!(pool);
                }
                self.call(Method::POST, &format!("/v1/resource-definitions/{}/autoplace", spec.name), Some(json!({"select_filter": filter}))).await?;
                false
            }
            Some(_) => false,
            None => {
                if let Err(e) = self.make(spec).await {
                    tracing::warn!(volume = %spec.name, error = %e, "creating the volume failed; removing what the attempt made");
                    self.delete_made(&spec.name).await;
                    return Err(e);
                }
                true
            }
        };
        let volume = self.require_ours(&spec.name).await?;
        if volume.size_kib != spec.size_kib {
            return Err(conflict(&volume));
        }
        Ok(Created { volume, made })
    }

    async fn adopt(&self, name: &str) -> Result<Volume, BlockError> {
        let volume = self.volume(name).await?.ok_or_else(|| BlockError::NotFound { what: "volume", name: name.to_string() })?;
        match volume.owner.as_deref() {
            Some(o) if o == self.owner => return Ok(volume),
            Some(_) => return Err(BlockError::NotOurs { name: volume.name, owner: volume.owner }),
            None => {}
        }
        self.call(Method::PUT, &format!("/v1/resource-definitions/{}", volume.name), Some(json!({"override_props": { OWNER_PROPERTY: self.owner }}))).await?;
        self.require_ours(name).await
    }

    async fn resize(&self, name: &str, size_kib: u64) -> Result<(), BlockError> {
        let current = self.require_ours(name).await?.size_kib;
        if size_kib < current {
            return Err(BlockError::Shrink {
                name: name.to_string(),
                current: bytesize::ByteSize::kib(current).to_string(),
                asked: bytesize::ByteSize::kib(size_kib).to_string(),
            });
        }
        if size_kib == current {
            return Ok(());
        }
        self.call(Method::PUT, &format!("/v1/resource-definitions/{name}/volume-definitions/0"), Some(json!({"size_kib": size_kib}))).await.map(drop)
    }

    async fn make_available(&self, name: &str, node: &str) -> Result<(), BlockError> {
        check_node(node)?;
        self.require_ours(name).await?;
        self.call(Method::POST, &format!("/v1/resource-definitions/{name}/resources/{node}/make-available"), Some(json!({"diskful": false}))).await.map(drop)
    }

    async fn remove_from_node(&self, name: &str, node: &str) -> Result<(), BlockError> {
        check_node(node)?;
        let Some(volume) = self.ours(name).await? else { return Ok(()) };
        match volume.replica(node) {
            Some(r) if r.diskless => self.call(Method::DELETE, &format!("/v1/resource-definitions/{name}/resources/{node}"), None).await.map(drop),
            _ => Ok(()),
        }
    }

    async fn snapshot(&self, name: &str, snapshot: &str) -> Result<(), BlockError> {
        super::check_snapshot_name(snapshot)?;
        self.require_ours(name).await?;
        self.create_call(&format!("/v1/resource-definitions/{name}/snapshots"), json!({"name": snapshot})).await
    }

    async fn snapshots(&self, name: &str) -> Result<Vec<String>, BlockError> {
        self.require_ours(name).await?;
        let value = self
            .get(&format!("/v1/resource-definitions/{name}/snapshots"))
            .await?
            .ok_or_else(|| BlockError::NotFound { what: "volume", name: name.to_string() })?;
        let snapshots: Vec<Snapshot> = decode("snapshots", value)?;
        Ok(snapshots.into_iter().map(|s| s.name).collect())
    }

    async fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<(), BlockError> {
        super::check_snapshot_name(snapshot)?;
        self.require_ours(name).await?;
        self.call(Method::DELETE, &format!("/v1/resource-definitions/{name}/snapshots/{snapshot}"), None).await.map(drop)
    }

    async fn rollback(&self, name: &str, snapshot: &str) -> Result<(), BlockError> {
        super::check_snapshot_name(snapshot)?;
        self.require_ours(name).await?;
        self.call(Method::POST, &format!("/v1/resource-definitions/{name}/snapshot-rollback/{snapshot}"), Some(json!({}))).await.map(drop)
    }

    async fn delete(&self, name: &str) -> Result<(), BlockError> {
        if self.ours(name).await?.is_none() {
            return Ok(());
        }
        self.call(Method::DELETE, &format!("/v1/resource-definitions/{name}"), None).await.map(drop)
    }
}

/// Node names go into paths: LINSTOR's node name rules (letters, digits,
/// `.`, `_` and `-`).
fn check_node(node: &str) -> Result<(), BlockError> {
    let ok = !node.is_empty() && node.len() <= 255 && node.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BlockError::Invalid(format!("LINSTOR node name {node:?} is invalid; set the machine's `linstor.node` label to its node's name")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_and_code_come_from_the_masks() {
        let exists = Report { ret_code: (MASK_ERROR | 0x0000_0000_0004_0000 | 501) as i64, ..Default::default() };
        assert!(exists.is_error() && exists.exists() && !exists.not_found());
        assert_eq!(exists.code(), 501);
        let warn_not_found = Report { ret_code: (0x8000_0000_0000_0000u64 | 301) as i64, ..Default::default() };
        assert!(!warn_not_found.is_error(), "a warning is not an error");
        let created = Report { ret_code: 1, ..Default::default() };
        assert!(!created.is_error());
    }

    #[test]
    fn error_bodies_are_arrays_or_one_object() {
        let array = json!([{"ret_code": -4611686018427387403i64, "message": "exists"}]);
        assert_eq!(reports(&array).len(), 1);
        let one = json!({"ret_code": -4611686018427387403i64, "message": "exists"});
        assert_eq!(reports(&one).len(), 1);
        assert!(reports(&json!("x")).is_empty());
    }
}
