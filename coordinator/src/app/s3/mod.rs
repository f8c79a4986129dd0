//! S3 administration requests (`drover s3 ...`), carried out by the
//! coordinator through [`ObjectStoreAdmin`] with its own admin token (which
//! never leaves it); [`provision`] makes buckets ready for deployments and
//! [`cluster`] forms and watches the Garage cluster.

pub mod cluster;
pub mod provision;

use drover_protocol::v1::{S3Bucket, S3Grant, S3Key, S3Request, S3Response, Secret};
use drover_protocol::WireError;

use crate::config::S3Config;
use crate::s3::{Bucket, Key, Permissions, S3Error};

use super::errors::{invalid, s3 as wire};
use super::{Coordinator, ObjectStore};

/// The configured object store, or a clear refusal.
pub fn object_store(state: &Coordinator) -> Result<&ObjectStore, WireError> {
    state
        .object_store
        .as_ref()
        .ok_or_else(|| invalid("S3 is not configured on this coordinator; add an [s3] section (admin_endpoint, admin_token_file, s3_endpoint) to drover.toml"))
}

fn bucket_wire(config: &S3Config, b: Bucket) -> S3Bucket {
    let public_url = if b.website { b.aliases.first().and_then(|a| config.public_url_of(a)) } else { None };
    S3Bucket {
        id: b.id,
        aliases: b.aliases,
        website: b.website,
        public_url,
        objects: b.objects,
        bytes: b.bytes,
        grants: b.keys.into_iter().map(|(key_id, read, write, owner)| S3Grant { key_id, read, write, owner }).collect(),
        max_size: b.max_size,
        max_objects: b.max_objects,
    }
}

fn key_wire(k: Key, show_secret: bool) -> S3Key {
    S3Key { id: k.id, name: k.name, secret: if show_secret { k.secret.map(Secret::new) } else { None } }
}

pub async fn handle(state: &Coordinator, request: S3Request) -> Result<S3Response, WireError> {
    let store = object_store(state)?;
    let config = &store.config;
    let not_found = |what: &'static str, id: &str| wire(S3Error::NotFound { what, id: id.to_string() });
    let admin = || store.admin().map_err(wire);
    Ok(match request {
        S3Request::ClusterAddNode { admin, rpc, zone, capacity } => S3Response::Cluster(cluster::add_node(state, admin, rpc, zone, capacity).await?),
        S3Request::ClusterApply => S3Response::Cluster(cluster::apply(state).await?),
        S3Request::ClusterAddMachine { machine } => S3Response::Cluster(cluster::add_machine(state, &machine).await?),
        S3Request::ClusterStatus => S3Response::Cluster(cluster::status(state).await?),
        S3Request::BucketsList => S3Response::Buckets(admin()?.buckets().await.map_err(wire)?.into_iter().map(|b| bucket_wire(config, b)).collect()),
        S3Request::BucketShow { name } => {
            let b = admin()?.bucket(&name).await.map_err(wire)?.ok_or_else(|| not_found("bucket", &name))?;
            S3Response::Bucket(bucket_wire(config, b))
        }
        S3Request::BucketCreate { name, public, max_size, max_objects } => {
            let g = admin()?;
            let b = g.ensure_bucket(&name).await.map_err(wire)?;
            if public && !b.website {
                g.set_website(&b.id, true).await.map_err(wire)?;
            }
            if max_size.is_some() || max_objects.is_some() {
                g.set_quotas(&b.id, max_size, max_objects).await.map_err(wire)?;
            }
            let b = g.bucket(&name).await.map_err(wire)?.ok_or_else(|| not_found("bucket", &name))?;
            tracing::info!(bucket = %name, public, "bucket ensured");
            S3Response::Bucket(bucket_wire(config, b))
        }
        S3Request::BucketDelete { name } => {
            admin()?.delete_bucket(&name).await.map_err(wire)?;
            tracing::info!(bucket = %name, "bucket deleted");
            S3Response::Done
        }
        S3Request::KeysList => S3Response::Keys(admin()?.keys().await.map_err(wire)?.into_iter().map(|k| key_wire(k, false)).collect()),
        S3Request::KeyShow { name, show_secret } => {
            let k = admin()?.key(&name, show_secret).await.map_err(wire)?.ok_or_else(|| not_found("key", &name))?;
            S3Response::Key(key_wire(k, show_secret))
        }
        S3Request::KeyCreate { name } => {
            let k = admin()?.ensure_key(&name).await.map_err(wire)?;
            tracing::info!(key = %name, id = %k.id, "key ensured");
            S3Response::Key(key_wire(k, false))
        }
        S3Request::KeyDelete { name } => {
            admin()?.delete_key(&name).await.map_err(wire)?;
            tracing::info!(key = %name, "key deleted");
            S3Response::Done
        }
        S3Request::Grant { bucket, key, read, write, owner } => {
            let g = admin()?;
            let b = g.bucket(&bucket).await.map_err(wire)?.ok_or_else(|| not_found("bucket", &bucket))?;
            let k = g.key(&key, false).await.map_err(wire)?.ok_or_else(|| not_found("key", &key))?;
            g.grant(&b.id, &k.id, Permissions { read, write, owner }).await.map_err(wire)?;
            tracing::info!(%bucket, %key, read, write, owner, "permissions set");
            let b = g.bucket(&bucket).await.map_err(wire)?.ok_or_else(|| not_found("bucket", &bucket))?;
            S3Response::Bucket(bucket_wire(config, b))
        }
    })
}
