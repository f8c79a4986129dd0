//! `drover s3 buckets|keys|grant`: object storage through the coordinator,
//! which holds the provider's admin token. Secrets are printed only with
//! `--show-secret`.

use anyhow::{bail, Result};

use drover_protocol::v1::{AdminRequest, S3Bucket, S3Cluster, S3Key, S3Request, S3Response};

use crate::cli::{AdminArgs, BucketsCommand, ClusterCommand, KeysCommand, S3Command};
use crate::output::{self, OutputFormat};

use super::{call, print_json};

async fn s3(admin: &AdminArgs, request: S3Request, what: &str) -> Result<S3Response> {
    Ok(call(admin, AdminRequest::S3(request), what).await?.s3()?)
}

fn print_bucket(b: &S3Bucket) {
    crate::out!("bucket       {}", b.aliases.join(", "));
    crate::out!("id           {}", b.id);
    crate::out!("website      {}", if b.website { "public" } else { "private" });
    if let Some(url) = &b.public_url {
        crate::out!("public url   {url}");
    }
    crate::out!("objects      {} ({})", b.objects, output::bytes(b.bytes));
    crate::out!(
        "quotas       size {}, objects {}",
        b.max_size.map(output::bytes).unwrap_or_else(|| "none".into()),
        b.max_objects.map(|n| n.to_string()).unwrap_or_else(|| "none".into())
    );
    for g in &b.grants {
        let rights: Vec<&str> = [(g.read, "read"), (g.write, "write"), (g.owner, "owner")].iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        crate::out!("key          {} {}", g.key_id, rights.join("+"));
    }
}

fn print_key(k: &S3Key) {
    crate::out!("key          {}", k.name);
    crate::out!("access key   {}", k.id);
    if let Some(secret) = &k.secret {
        crate::out!("secret key   {}", secret.expose());
    }
}

fn print_cluster(c: &S3Cluster) {
    crate::out!("health       {} (layout version {}, partitions {}/{} fully available)", c.health, c.layout_version, c.partitions_all_ok, c.partitions);
    let mut t = output::table(&["NODE", "ADMIN", "RPC", "ZONE", "CAPACITY", "STATE"]);
    for n in &c.nodes {
        t.add_row(vec![
            n.id.as_deref().map(|id| id.chars().take(16).collect()).unwrap_or_else(|| "(not applied)".into()),
            n.admin.clone(),
            n.rpc.clone(),
            n.zone.clone(),
            output::bytes(n.capacity),
            if n.up { "up".into() } else { "DOWN".into() },
        ]);
    }
    crate::out!("{t}");
}

fn show<T: serde::Serialize>(admin: &AdminArgs, value: &T, table: impl FnOnce(&T)) -> Result<()> {
    match admin.output {
        OutputFormat::Json => print_json(value),
        OutputFormat::Table => {
            table(value);
            Ok(())
        }
    }
}

pub async fn run(cmd: S3Command) -> Result<()> {
    match cmd {
        S3Command::Buckets(BucketsCommand::List { admin }) => {
            let list = s3(&admin, S3Request::BucketsList, "listing buckets").await?.buckets()?;
            show(&admin, &list, |list| {
                let mut t = output::table(&["BUCKET", "ID", "ACCESS", "OBJECTS", "SIZE", "KEYS"]);
                for b in list {
                    t.add_row(vec![
                        b.aliases.join(","),
                        b.id.chars().take(16).collect(),
                        if b.website { "public".into() } else { "private".into() },
                        b.objects.to_string(),
                        output::bytes(b.bytes),
                        b.grants.len().to_string(),
                    ]);
                }
                crate::out!("{t}");
            })
        }
        S3Command::Buckets(BucketsCommand::Create { name, public, max_size, max_objects, admin }) => {
            let b = s3(&admin, S3Request::BucketCreate { name: name.clone(), public, max_size, max_objects }, &format!("creating bucket {name}"))
                .await?
                .bucket()?;
            show(&admin, &b, print_bucket)
        }
        S3Command::Buckets(BucketsCommand::Show { name, admin }) => {
            let b = s3(&admin, S3Request::BucketShow { name: name.clone() }, &format!("showing bucket {name}")).await?.bucket()?;
            show(&admin, &b, print_bucket)
        }
        S3Command::Buckets(BucketsCommand::Delete { name, admin }) => {
            s3(&admin, S3Request::BucketDelete { name: name.clone() }, &format!("deleting bucket {name}")).await?;
            show(&admin, &serde_json::json!({ "deleted": name }), |_| crate::out!("bucket {name} deleted"))
        }
        S3Command::Keys(KeysCommand::List { admin }) => {
            let list = s3(&admin, S3Request::KeysList, "listing keys").await?.keys()?;
            show(&admin, &list, |list| {
                let mut t = output::table(&["NAME", "ACCESS KEY"]);
                for k in list {
                    t.add_row(vec![k.name.clone(), k.id.clone()]);
                }
                crate::out!("{t}");
            })
        }
        S3Command::Keys(KeysCommand::Create { name, admin }) => {
            let k = s3(&admin, S3Request::KeyCreate { name: name.clone() }, &format!("creating key {name}")).await?.key()?;
            show(&admin, &k, print_key)
        }
        S3Command::Keys(KeysCommand::Show { name, show_secret, admin }) => {
            let k = s3(&admin, S3Request::KeyShow { name: name.clone(), show_secret }, &format!("showing key {name}")).await?.key()?;
            show(&admin, &k, print_key)
        }
        S3Command::Keys(KeysCommand::Delete { name, admin }) => {
            s3(&admin, S3Request::KeyDelete { name: name.clone() }, &format!("deleting key {name}")).await?;
            show(&admin, &serde_json::json!({ "deleted": name }), |_| crate::out!("key {name} deleted"))
        }
        S3Command::Cluster(ClusterCommand::AddNode { admin, rpc, zone, capacity, machine, admin_args }) => {
            let (request, what) = match (machine, admin, rpc, zone, capacity) {
                (Some(machine), ..) => (S3Request::ClusterAddMachine { machine: machine.clone() }, format!("adding machine {machine}")),
                (None, Some(admin), Some(rpc), Some(zone), Some(capacity)) => {
                    let what = format!("adding node {admin}");
                    (S3Request::ClusterAddNode { admin, rpc, zone, capacity }, what)
                }
                _ => bail!("give --machine ID, or --admin, --rpc, --zone and --capacity"),
            };
            let c = s3(&admin_args, request, &what).await?.cluster()?;
            show(&admin_args, &c, print_cluster)
        }
        S3Command::Cluster(ClusterCommand::Apply { admin }) => {
            let c = s3(&admin, S3Request::ClusterApply, "applying the cluster layout").await?.cluster()?;
            show(&admin, &c, print_cluster)
        }
        S3Command::Cluster(ClusterCommand::Status { admin }) => {
            let c = s3(&admin, S3Request::ClusterStatus, "reading the cluster status").await?.cluster()?;
            show(&admin, &c, print_cluster)
        }
        S3Command::Grant { bucket, key, read, write, owner, admin } => {
            let b = s3(&admin, S3Request::Grant { bucket: bucket.clone(), key: key.clone(), read, write, owner }, &format!("granting {key} on {bucket}"))
                .await?
                .bucket()?;
            show(&admin, &b, print_bucket)
        }
    }
}
