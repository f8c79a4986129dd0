//! Buckets declared by deployments (`drover deploy --bucket NAME[:public]`):
//! before a generation is recorded the coordinator makes sure each bucket and
//! a key scoped to it exist (read and write on that bucket only), checks with
//! the S3 data plane that the key works, and adds the credentials as secrets
//! and the endpoint, region, bucket and public URL as facts — for the
//! deployment's own targets only. Every step is idempotent: a refused
//! deployment leaves at most reusable pieces, which a retry completes.

use drover_protocol::v1::{BucketRequest, DeploySpec, SecretBytes, SecretFile};
use drover_protocol::WireError;

use crate::s3::{check_bucket_name, DataAccess, Permissions};

use super::super::errors::s3 as wire;
use super::super::Coordinator;
use super::object_store;

/// The name of the key Drover makes for a bucket.
pub fn key_name(bucket: &str) -> String {
    format!("drover-{bucket}")
}

/// Secret names for a bucket's credentials.
pub fn secret_names(bucket: &str) -> (String, String) {
    (format!("s3-{bucket}-access-key-id"), format!("s3-{bucket}-secret-access-key"))
}

/// Checks the bucket requests before anything is made.
pub fn check(buckets: &[BucketRequest]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for b in buckets {
        check_bucket_name(&b.name).map_err(|e| e.to_string())?;
        if !seen.insert(&b.name) {
            return Err(format!("bucket {:?} is given twice", b.name));
        }
    }
    Ok(())
}

/// Ensures the buckets of `spec` and their keys, probes them, and adds their
/// credentials and facts to `spec`.
pub async fn provision(state: &Coordinator, spec: &mut DeploySpec) -> Result<(), WireError> {
    if spec.buckets.is_empty() {
        return Ok(());
    }
    let store = object_store(state)?;
    let config = &store.config;
    let garage = store.admin().map_err(wire)?;
    for request in spec.buckets.clone() {
        let bucket = garage.ensure_bucket(&request.name).await.map_err(wire)?;
        if request.public && !bucket.website {
            garage.set_website(&bucket.id, true).await.map_err(wire)?;
        }
        let key = garage.ensure_key(&key_name(&request.name)).await.map_err(wire)?;
        garage.grant(&bucket.id, &key.id, Permissions { read: true, write: true, owner: false }).await.map_err(wire)?;
        let secret = key.secret.clone().unwrap_or_default();
        let access = DataAccess { endpoint: &config.s3_endpoint, region: &config.region, key_id: &key.id, secret: &secret, bucket: &request.name };
        garage.probe(&access).await.map_err(wire)?;
        let (id_name, secret_name) = secret_names(&request.name);
        for (name, value) in [(id_name, key.id.clone()), (secret_name, secret)] {
            spec.secrets.retain(|s| s.name != name);
            spec.secrets.push(SecretFile { name, value: SecretBytes::new(value.into_bytes()), owner: None, group: None, mode: 0o400 });
        }
        spec.facts.insert("s3_endpoint".into(), config.s3_endpoint.clone());
        spec.facts.insert("s3_region".into(), config.region.clone());
        spec.facts.insert(format!("s3_bucket.{}", request.name), request.name.clone());
        if request.public {
            if let Some(url) = config.public_url_of(&request.name) {
                spec.facts.insert(format!("s3_public_url.{}", request.name), url);
            }
        }
        tracing::info!(bucket = %request.name, key = %key.id, public = request.public, "bucket ready for the deployment");
    }
    Ok(())
}
