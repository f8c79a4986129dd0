//! S3 administration requests, carried out by the coordinator with its own
//! admin token (which never leaves it).

use drover_protocol::v1::{S3Bucket, S3Grant, S3Key, S3Request, S3Response, Secret};
use drover_protocol::{ErrorCode, WireError};

use crate::config::S3Config;
use crate::server::Coordinator;

use super::garage::Garage;
use super::{Bucket, Key, ObjectStoreAdmin, Permissions, S3Error};

/// The wire error for an S3 failure; each kind keeps its own code.
pub fn wire(e: S3Error) -> WireError {
    let code = match &e {
        S3Error::Unreachable { .. } => ErrorCode::Unavailable,
        S3Error::Unauthorized => ErrorCode::Internal,
        S3Error::InvalidBucketName { .. } => ErrorCode::InvalidArgument,
        S3Error::NotFound { .. } => ErrorCode::NotFound,
        S3Error::BucketNotEmpty(_) => ErrorCode::Conflict,
        S3Error::Api { .. } | S3Error::Decode(_) => ErrorCode::Internal,
    };
    tracing::warn!(error = %e, "S3 provider call failed");
    WireError::new(code, e.to_string())
}

/// The configured provider, or a clear refusal.
pub fn provider(state: &Coordinator) -> Result<(&S3Config, Garage), WireError> {
    let config = state.config.s3.as_ref().ok_or_else(|| {
        WireError::new(
            ErrorCode::InvalidArgument,
            "S3 is not configured on this coordinator; add an [s3] section (admin_endpoint, admin_token_file, s3_endpoint) to drover.toml",
        )
    })?;
    let token = config.admin_token().map_err(|e| WireError::new(ErrorCode::Internal, format!("{e:#}")))?;
    let garage = Garage::new(&config.admin_endpoint, token).map_err(wire)?;
    Ok((config, garage))
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
    match request {
        S3Request::ClusterAddNode { admin, rpc, zone, capacity } => {
            return Ok(S3Response::Cluster(super::cluster::add_node(state, admin, rpc, zone, capacity).await?));
        }
        S3Request::ClusterApply => return Ok(S3Response::Cluster(super::cluster::apply(state).await?)),
        S3Request::ClusterAddMachine { machine } => {
            return Ok(S3Response::Cluster(super::cluster::add_machine(state, &machine).await?));
        }
        S3Request::ClusterStatus => return Ok(S3Response::Cluster(super::cluster::status(state).await?)),
        _ => {}
    }
    let (config, g) = provider(state)?;
    let not_found = |what: &'static str, id: &str| wire(S3Error::NotFound { what, id: id.to_string() });
    Ok(match request {
        S3Request::BucketsList => S3Response::Buckets(g.buckets().await.map_err(wire)?.into_iter().map(|b| bucket_wire(config, b)).collect()),
        S3Request::BucketShow { name } => {
            let b = g.bucket(&name).await.map_err(wire)?.ok_or_else(|| not_found("bucket", &name))?;
            S3Response::Bucket(bucket_wire(config, b))
        }
        S3Request::BucketCreate { name, public, max_size, max_objects } => {
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
            g.delete_bucket(&name).await.map_err(wire)?;
            tracing::info!(bucket = %name, "bucket deleted");
            S3Response::Done
        }
        S3Request::KeysList => S3Response::Keys(g.keys().await.map_err(wire)?.into_iter().map(|k| key_wire(k, false)).collect()),
        S3Request::KeyShow { name, show_secret } => {
            let k = g.key(&name, show_secret).await.map_err(wire)?.ok_or_else(|| not_found("key", &name))?;
            S3Response::Key(key_wire(k, show_secret))
        }
        S3Request::KeyCreate { name } => {
            let k = g.ensure_key(&name).await.map_err(wire)?;
            tracing::info!(key = %name, id = %k.id, "key ensured");
            S3Response::Key(key_wire(k, false))
        }
        S3Request::KeyDelete { name } => {
            g.delete_key(&name).await.map_err(wire)?;
            tracing::info!(key = %name, "key deleted");
            S3Response::Done
        }
        S3Request::Grant { bucket, key, read, write, owner } => {
            let b = g.bucket(&bucket).await.map_err(wire)?.ok_or_else(|| not_found("bucket", &bucket))?;
            let k = g.key(&key, false).await.map_err(wire)?.ok_or_else(|| not_found("key", &key))?;
            g.grant(&b.id, &k.id, Permissions { read, write, owner }).await.map_err(wire)?;
            tracing::info!(%bucket, %key, read, write, owner, "permissions set");
            let b = g.bucket(&bucket).await.map_err(wire)?.ok_or_else(|| not_found("bucket", &bucket))?;
            S3Response::Bucket(bucket_wire(config, b))
        }
        S3Request::ClusterAddNode { .. }
        | S3Request::ClusterApply
        | S3Request::ClusterStatus
        | S3Request::ClusterAddMachine { .. } => {
            unreachable!("handled above")
        }
    })
}
