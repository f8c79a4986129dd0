//! Garage's admin API v2 (Garage >= 2.0): `/v2/<Operation>` with a bearer
//! token. Errors are JSON `{code, message}`; authentication failures are 403.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use serde::Deserialize;

use super::{check_bucket_name, Bucket, ClusterHealth, ClusterStatus, Key, ObjectStoreAdmin, Permissions, Role, S3Error};

/// How often a 503 (no quorum for now) is tried again.
const TRANSIENT_RETRIES: u32 = 5;

/// A Garage admin API client.
pub struct Garage {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Garage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Garage").field("base", &self.base).field("token", &"<redacted>").finish()
    }
}

// Garage's answers, as its admin API v2 documents them. Fields Drover does
// not read are ignored; a field it reads that is missing or of another type
// is an error that names it.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BucketInfo {
    id: String,
    global_aliases: Vec<String>,
    website_access: bool,
    objects: u64,
    bytes: u64,
    keys: Vec<BucketKey>,
    quotas: Quotas,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BucketKey {
    access_key_id: String,
    permissions: KeyPermissions,
}

#[derive(Deserialize)]
struct KeyPermissions {
    read: bool,
    write: bool,
    owner: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Quotas {
    max_size: Option<u64>,
    max_objects: Option<u64>,
}

#[derive(Deserialize)]
struct ListedBucket {
    id: String,
}

#[derive(Deserialize)]
struct ListedKey {
    id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyInfo {
    access_key_id: String,
    secret_access_key: Option<String>,
}

#[derive(Deserialize)]
struct NodeInfo {
    success: std::collections::BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct ConnectResult {
    error: Option<String>,
}

#[derive(Deserialize)]
struct Layout {
    version: u64,
    roles: Vec<LayoutRole>,
}

#[derive(Deserialize)]
struct LayoutRole {
    id: String,
    zone: String,
    /// `null` for a gateway node.
    capacity: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: String,
    connected_nodes: u64,
    partitions: u64,
    partitions_all_ok: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    layout_version: u64,
    nodes: Vec<StatusNode>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusNode {
    id: String,
    is_up: bool,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl From<BucketInfo> for Bucket {
    fn from(b: BucketInfo) -> Self {
        Bucket {
            id: b.id,
            aliases: b.global_aliases,
            website: b.website_access,
            objects: b.objects,
            bytes: b.bytes,
            keys: b.keys.into_iter().map(|k| (k.access_key_id, k.permissions.read, k.permissions.write, k.permissions.owner)).collect(),
            max_size: b.quotas.max_size,
            max_objects: b.quotas.max_objects,
        }
    }
}

/// Reads an answer of operation `op` into `T`; a mismatch names the field.
fn typed<T: serde::de::DeserializeOwned>(op: &str, v: Value) -> Result<T, S3Error> {
    serde_json::from_value(v).map_err(|e| S3Error::Decode(format!("{op}: {e}")))
}

impl Garage {
    /// `base` is the admin endpoint, e.g. `http://127.0.0.1:3903`.
    pub fn new(base: &str, token: String) -> Result<Self, S3Error> {
        // reqwest's rustls needs a process-wide provider; ring, as everywhere.
        drover_net::tls::install_default_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| S3Error::Decode(e.to_string()))?;
        Ok(Garage { base: base.trim_end_matches('/').to_string(), token, http })
    }

    /// One admin API call. `Ok(None)` is a 404 (the caller decides what is
    /// missing).
    async fn call(&self, method: Method, op: &str, query: &[(&str, &str)], body: Option<Value>) -> Result<Option<Value>, S3Error> {
        // 503 is Garage's word for "no quorum right now" (a node restarting,
        // peers reconnecting): worth a few more tries before giving up.
        let mut attempt = 0;
        loop {
            match self.call_once(method.clone(), op, query, body.clone()).await {
                Err(S3Error::Api { status: 503, .. }) if attempt < TRANSIENT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(300 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, method: Method, op: &str, query: &[(&str, &str)], body: Option<Value>) -> Result<Option<Value>, S3Error> {
        let url = format!("{}/v2/{op}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token).query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| S3Error::Unreachable { url: self.base.clone(), reason: e.to_string() })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| S3Error::Decode(e.to_string()))?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Some(Value::Null));
            }
            return serde_json::from_str(&text).map(Some).map_err(|e| S3Error::Decode(format!("{op}: {e}")));
        }
        let ErrorBody { code, message } = serde_json::from_str(&text).unwrap_or_default();
        match (status, code.as_str()) {
            (StatusCode::FORBIDDEN, _) | (StatusCode::UNAUTHORIZED, _) => Err(S3Error::Unauthorized),
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (_, "BucketNotEmpty") => Err(S3Error::BucketNotEmpty(message)),
            _ => Err(S3Error::Api { status: status.as_u16(), code, message: if message.is_empty() { text } else { message } }),
        }
    }

    async fn get(&self, op: &str, query: &[(&str, &str)]) -> Result<Option<Value>, S3Error> {
        self.call(Method::GET, op, query, None).await
    }

    async fn post(&self, op: &str, query: &[(&str, &str)], body: Value) -> Result<Option<Value>, S3Error> {
        self.call(Method::POST, op, query, Some(body)).await
    }

    /// A 404 where there must be an answer.
    fn missing(op: &str) -> S3Error {
        S3Error::Decode(format!("{op} answered 404"))
    }
}

#[async_trait::async_trait]
impl ObjectStoreAdmin for Garage {
    async fn probe(&self, access: &super::DataAccess<'_>) -> Result<(), S3Error> {
        let client = super::probe::client(access.endpoint, access.region, access.key_id, access.secret)
            .map_err(|e| S3Error::Config(format!("cannot make an S3 client for {}: {e}", access.endpoint)))?;
        super::probe::probe(&client, access.bucket).await
    }

    async fn bucket(&self, alias: &str) -> Result<Option<Bucket>, S3Error> {
        match self.get("GetBucketInfo", &[("globalAlias", alias)]).await? {
            Some(v) => Ok(Some(typed::<BucketInfo>("GetBucketInfo", v)?.into())),
            None => Ok(None),
        }
    }

    async fn buckets(&self) -> Result<Vec<Bucket>, S3Error> {
        let list = self.get("ListBuckets", &[]).await?.ok_or_else(|| Self::missing("ListBuckets"))?;
        let mut out = Vec::new();
        for b in typed::<Vec<ListedBucket>>("ListBuckets", list)? {
            // Deleted between the list and now: not listed.
            if let Some(info) = self.get("GetBucketInfo", &[("id", &b.id)]).await? {
                out.push(typed::<BucketInfo>("GetBucketInfo", info)?.into());
            }
        }
        Ok(out)
    }

    async fn ensure_bucket(&self, alias: &str) -> Result<Bucket, S3Error> {
        check_bucket_name(alias)?;
        if let Some(b) = self.bucket(alias).await? {
            return Ok(b);
        }
        match self.post("CreateBucket", &[], json!({ "globalAlias": alias })).await {
            Ok(Some(v)) => Ok(typed::<BucketInfo>("CreateBucket", v)?.into()),
            Ok(None) => Err(Self::missing("CreateBucket")),
            // Created meanwhile by someone else: use it.
            Err(S3Error::Api { code, .. }) if code == "BucketAlreadyExists" => {
                self.bucket(alias).await?.ok_or(S3Error::NotFound { what: "bucket", id: alias.into() })
            }
            Err(S3Error::Api { code, message, .. }) if code == "InvalidBucketName" => Err(S3Error::InvalidBucketName { name: alias.into(), reason: message }),
            Err(e) => Err(e),
        }
    }

    async fn delete_bucket(&self, alias: &str) -> Result<(), S3Error> {
        let b = self.bucket(alias).await?.ok_or(S3Error::NotFound { what: "bucket", id: alias.into() })?;
        self.post("DeleteBucket", &[("id", &b.id)], Value::Null).await?;
        Ok(())
    }

    async fn set_website(&self, bucket_id: &str, enabled: bool) -> Result<(), S3Error> {
        let website = if enabled { json!({ "enabled": true, "indexDocument": "index.html" }) } else { json!({ "enabled": false }) };
        self.post("UpdateBucket", &[("id", bucket_id)], json!({ "websiteAccess": website }))
            .await?
            .ok_or(S3Error::NotFound { what: "bucket", id: bucket_id.into() })?;
        Ok(())
    }

    async fn set_quotas(&self, bucket_id: &str, max_size: Option<u64>, max_objects: Option<u64>) -> Result<(), S3Error> {
        self.post("UpdateBucket", &[("id", bucket_id)], json!({ "quotas": { "maxSize": max_size, "maxObjects": max_objects } }))
            .await?
            .ok_or(S3Error::NotFound { what: "bucket", id: bucket_id.into() })?;
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<Key>, S3Error> {
        let list = self.get("ListKeys", &[]).await?.ok_or_else(|| Self::missing("ListKeys"))?;
        Ok(typed::<Vec<ListedKey>>("ListKeys", list)?.into_iter().map(|k| Key { id: k.id, name: k.name, secret: None }).collect())
    }

    async fn key(&self, name: &str, with_secret: bool) -> Result<Option<Key>, S3Error> {
        let Some(found) = self.keys().await?.into_iter().find(|k| k.name == name) else {
            return Ok(None);
        };
        if !with_secret {
            return Ok(Some(found));
        }
        let info = self.get("GetKeyInfo", &[("id", &found.id), ("showSecretKey", "true")]).await?.ok_or(S3Error::NotFound { what: "key", id: name.into() })?;
        let info: KeyInfo = typed("GetKeyInfo", info)?;
        Ok(Some(Key { id: found.id, name: found.name, secret: info.secret_access_key }))
    }

    async fn ensure_key(&self, name: &str) -> Result<Key, S3Error> {
        if let Some(k) = self.key(name, true).await? {
            return Ok(k);
        }
        let v = self.post("CreateKey", &[], json!({ "name": name })).await?.ok_or_else(|| Self::missing("CreateKey"))?;
        let info: KeyInfo = typed("CreateKey", v)?;
        if info.secret_access_key.is_none() {
            return Err(S3Error::Decode("CreateKey: no secretAccessKey in the answer".into()));
        }
        Ok(Key { id: info.access_key_id, name: name.to_string(), secret: info.secret_access_key })
    }

    async fn delete_key(&self, name: &str) -> Result<(), S3Error> {
        let k = self.key(name, false).await?.ok_or(S3Error::NotFound { what: "key", id: name.into() })?;
        self.post("DeleteKey", &[("id", &k.id)], Value::Null).await?;
        Ok(())
    }

    async fn grant(&self, bucket_id: &str, key_id: &str, p: Permissions) -> Result<(), S3Error> {
        let allow = json!({ "bucketId": bucket_id, "accessKeyId": key_id, "permissions": { "read": p.read, "write": p.write, "owner": p.owner } });
        let deny = json!({ "bucketId": bucket_id, "accessKeyId": key_id, "permissions": { "read": !p.read, "write": !p.write, "owner": !p.owner } });
        let missing = || S3Error::NotFound { what: "bucket or key", id: format!("{bucket_id}/{key_id}") };
        self.post("AllowBucketKey", &[], allow).await?.ok_or_else(missing)?;
        self.post("DenyBucketKey", &[], deny).await?.ok_or_else(missing)?;
        Ok(())
    }

    async fn node_id(&self) -> Result<String, S3Error> {
        let v = self.get("GetNodeInfo", &[("node", "self")]).await?.ok_or_else(|| Self::missing("GetNodeInfo"))?;
        let info: NodeInfo = typed("GetNodeInfo", v)?;
        info.success.into_keys().next().ok_or_else(|| S3Error::Decode("GetNodeInfo: no node in `success`".into()))
    }

    async fn connect(&self, peers: &[String]) -> Result<(), S3Error> {
        let v = self.post("ConnectClusterNodes", &[], json!(peers)).await?.ok_or_else(|| Self::missing("ConnectClusterNodes"))?;
        let errors: Vec<String> = typed::<Vec<ConnectResult>>("ConnectClusterNodes", v)?.into_iter().filter_map(|r| r.error).collect();
        if !errors.is_empty() {
            return Err(S3Error::Api { status: 200, code: "ConnectClusterNodes".into(), message: errors.join("; ") });
        }
        Ok(())
    }

    async fn layout(&self) -> Result<Vec<Role>, S3Error> {
        let v = self.get("GetClusterLayout", &[]).await?.ok_or_else(|| Self::missing("GetClusterLayout"))?;
        let layout: Layout = typed("GetClusterLayout", v)?;
        Ok(layout.roles.into_iter().map(|r| Role { node: r.id, zone: r.zone, capacity: r.capacity.unwrap_or(0) }).collect())
    }

    async fn apply_layout(&self, roles: &[Role]) -> Result<u64, S3Error> {
        let roles: Vec<Value> = roles.iter().map(|r| json!({"id": r.node, "zone": r.zone, "capacity": r.capacity, "tags": []})).collect();
        self.post("UpdateClusterLayout", &[], json!({ "roles": roles })).await?;
        let v = self.get("GetClusterLayout", &[]).await?.ok_or_else(|| Self::missing("GetClusterLayout"))?;
        let version = typed::<Layout>("GetClusterLayout", v)?.version + 1;
        self.post("ApplyClusterLayout", &[], json!({ "version": version })).await?;
        Ok(version)
    }

    async fn health(&self) -> Result<ClusterHealth, S3Error> {
        let v = self.get("GetClusterHealth", &[]).await?.ok_or_else(|| Self::missing("GetClusterHealth"))?;
        let h: Health = typed("GetClusterHealth", v)?;
        Ok(ClusterHealth { status: h.status, connected_nodes: h.connected_nodes, partitions: h.partitions, partitions_all_ok: h.partitions_all_ok })
    }

    async fn status(&self) -> Result<ClusterStatus, S3Error> {
        let v = self.get("GetClusterStatus", &[]).await?.ok_or_else(|| Self::missing("GetClusterStatus"))?;
        let st: Status = typed("GetClusterStatus", v)?;
        Ok(ClusterStatus { layout_version: st.layout_version, nodes: st.nodes.into_iter().map(|n| (n.id, n.is_up)).collect() })
    }
}
