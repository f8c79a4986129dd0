//! Garage's admin API v2 (Garage >= 2.0): `/v2/<Operation>` with a bearer
//! token. Errors are JSON `{code, message}`; authentication failures are 403.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{check_bucket_name, Bucket, Key, ObjectStoreAdmin, Permissions, S3Error};

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

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn bucket_from(v: &Value) -> Bucket {
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .map(|ks| {
            ks.iter()
                .map(|k| {
                    let p = k.get("permissions").cloned().unwrap_or(Value::Null);
                    let b = |n: &str| p.get(n).and_then(Value::as_bool).unwrap_or(false);
                    (s(k, "accessKeyId"), b("read"), b("write"), b("owner"))
                })
                .collect()
        })
        .unwrap_or_default();
    let quotas = v.get("quotas").cloned().unwrap_or(Value::Null);
    Bucket {
        id: s(v, "id"),
        aliases: v
            .get("globalAliases")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default(),
        website: v.get("websiteAccess").and_then(Value::as_bool).unwrap_or(false),
        objects: v.get("objects").and_then(Value::as_u64).unwrap_or(0),
        bytes: v.get("bytes").and_then(Value::as_u64).unwrap_or(0),
        keys,
        max_size: quotas.get("maxSize").and_then(Value::as_u64),
        max_objects: quotas.get("maxObjects").and_then(Value::as_u64),
    }
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
        let response = request.send().await.map_err(|e| S3Error::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| S3Error::Decode(e.to_string()))?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Some(Value::Null));
            }
            return serde_json::from_str(&text).map(Some).map_err(|e| S3Error::Decode(format!("{op}: {e}")));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = s(&body, "code");
        let message = s(&body, "message");
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

    /// Cluster health (`GetClusterHealth`), as Garage returns it.
    pub async fn health(&self) -> Result<Value, S3Error> {
        self.get("GetClusterHealth", &[]).await?.ok_or(S3Error::Decode("no health".into()))
    }

    /// Cluster status (`GetClusterStatus`): nodes, their roles and state.
    pub async fn status(&self) -> Result<Value, S3Error> {
        self.get("GetClusterStatus", &[]).await?.ok_or(S3Error::Decode("no status".into()))
    }

    /// This node's id (`GetNodeInfo?node=self`).
    pub async fn node_id(&self) -> Result<String, S3Error> {
        let v = self.get("GetNodeInfo", &[("node", "self")]).await?.ok_or(S3Error::Decode("no node info".into()))?;
        v.get("success")
            .and_then(Value::as_object)
            .and_then(|m| m.keys().next().cloned())
            .ok_or_else(|| S3Error::Decode(format!("GetNodeInfo: {v}")))
    }

    /// Connects this node to others (`id@host:port`).
    pub async fn connect(&self, peers: &[String]) -> Result<(), S3Error> {
        let v = self.post("ConnectClusterNodes", &[], json!(peers)).await?.unwrap_or(Value::Null);
        if let Some(errors) = v.as_array().map(|a| a.iter().filter_map(|r| r.get("error").and_then(Value::as_str)).collect::<Vec<_>>()) {
            if !errors.is_empty() {
                return Err(S3Error::Api { status: 200, code: "ConnectClusterNodes".into(), message: errors.join("; ") });
            }
        }
        Ok(())
    }

    /// The applied layout's roles: (node id, zone, capacity).
    pub async fn layout_roles(&self) -> Result<Vec<(String, String, u64)>, S3Error> {
        let layout = self.get("GetClusterLayout", &[]).await?.ok_or(S3Error::Decode("no layout".into()))?;
        Ok(layout
            .get("roles")
            .and_then(Value::as_array)
            .map(|roles| {
                roles
                    .iter()
                    .map(|r| (s(r, "id"), s(r, "zone"), r.get("capacity").and_then(Value::as_u64).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Stages roles (node id, zone, capacity in bytes) and applies the layout.
    pub async fn apply_layout(&self, roles: &[(String, String, u64)]) -> Result<u64, S3Error> {
        let roles: Vec<Value> = roles
            .iter()
            .map(|(id, zone, capacity)| json!({"id": id, "zone": zone, "capacity": capacity, "tags": []}))
            .collect();
        self.post("UpdateClusterLayout", &[], json!({ "roles": roles })).await?;
        let layout = self.get("GetClusterLayout", &[]).await?.ok_or(S3Error::Decode("no layout".into()))?;
        let version = layout.get("version").and_then(Value::as_u64).unwrap_or(0) + 1;
        self.post("ApplyClusterLayout", &[], json!({ "version": version })).await?;
        Ok(version)
    }
}

impl ObjectStoreAdmin for Garage {
    async fn bucket(&self, alias: &str) -> Result<Option<Bucket>, S3Error> {
        Ok(self.get("GetBucketInfo", &[("globalAlias", alias)]).await?.map(|v| bucket_from(&v)))
    }

    async fn buckets(&self) -> Result<Vec<Bucket>, S3Error> {
        let list = self.get("ListBuckets", &[]).await?.unwrap_or(Value::Null);
        let mut out = Vec::new();
        for b in list.as_array().cloned().unwrap_or_default() {
            let id = s(&b, "id");
            if let Some(info) = self.get("GetBucketInfo", &[("id", &id)]).await? {
                out.push(bucket_from(&info));
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
            Ok(Some(v)) => Ok(bucket_from(&v)),
            Ok(None) => Err(S3Error::Decode("CreateBucket answered 404".into())),
            // Created meanwhile by someone else: use it.
            Err(S3Error::Api { code, .. }) if code == "BucketAlreadyExists" => {
                self.bucket(alias).await?.ok_or(S3Error::NotFound { what: "bucket", id: alias.into() })
            }
            Err(S3Error::Api { code, message, .. }) if code == "InvalidBucketName" => {
                Err(S3Error::InvalidBucketName { name: alias.into(), reason: message })
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_bucket(&self, alias: &str) -> Result<(), S3Error> {
        let b = self.bucket(alias).await?.ok_or(S3Error::NotFound { what: "bucket", id: alias.into() })?;
        self.post("DeleteBucket", &[("id", &b.id)], Value::Null).await?;
        Ok(())
    }

    async fn set_website(&self, bucket_id: &str, enabled: bool) -> Result<(), S3Error> {
        let website = if enabled {
            json!({ "enabled": true, "indexDocument": "index.html" })
        } else {
            json!({ "enabled": false })
        };
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
        let list = self.get("ListKeys", &[]).await?.unwrap_or(Value::Null);
        Ok(list
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|k| Key { id: s(k, "id"), name: s(k, "name"), secret: None })
            .collect())
    }

    async fn key(&self, name: &str, with_secret: bool) -> Result<Option<Key>, S3Error> {
        let Some(found) = self.keys().await?.into_iter().find(|k| k.name == name) else {
            return Ok(None);
        };
        if !with_secret {
            return Ok(Some(found));
        }
        let info = self
            .get("GetKeyInfo", &[("id", &found.id), ("showSecretKey", "true")])
            .await?
            .ok_or(S3Error::NotFound { what: "key", id: name.into() })?;
        Ok(Some(Key { id: found.id, name: found.name, secret: info.get("secretAccessKey").and_then(Value::as_str).map(String::from) }))
    }

    async fn ensure_key(&self, name: &str) -> Result<Key, S3Error> {
        if let Some(k) = self.key(name, true).await? {
            return Ok(k);
        }
        let v = self
            .post("CreateKey", &[], json!({ "name": name }))
            .await?
            .ok_or(S3Error::Decode("CreateKey answered 404".into()))?;
        Ok(Key { id: s(&v, "accessKeyId"), name: name.to_string(), secret: v.get("secretAccessKey").and_then(Value::as_str).map(String::from) })
    }

    async fn delete_key(&self, name: &str) -> Result<(), S3Error> {
        let k = self.key(name, false).await?.ok_or(S3Error::NotFound { what: "key", id: name.into() })?;
        self.post("DeleteKey", &[("id", &k.id)], Value::Null).await?;
        Ok(())
    }

    async fn grant(&self, bucket_id: &str, key_id: &str, p: Permissions) -> Result<(), S3Error> {
        let allow = json!({ "bucketId": bucket_id, "accessKeyId": key_id, "permissions": { "read": p.read, "write": p.write, "owner": p.owner } });
        let deny = json!({ "bucketId": bucket_id, "accessKeyId": key_id, "permissions": { "read": !p.read, "write": !p.write, "owner": !p.owner } });
        self.post("AllowBucketKey", &[], allow).await?.ok_or(S3Error::NotFound { what: "bucket or key", id: format!("{bucket_id}/{key_id}") })?;
        self.post("DenyBucketKey", &[], deny).await?.ok_or(S3Error::NotFound { what: "bucket or key", id: format!("{bucket_id}/{key_id}") })?;
        Ok(())
    }
}
